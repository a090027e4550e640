//! Reading partitions' chunks out of shared WAL objects (issue 24): the
//! byte ranges the partitions' metadata keeps, fetched with ranged GETs
//! from the object's replicas (hedged, as every read), coalesced per object
//! — chunks of one object that lie close together come back in one GET —
//! and each checked against the CRC the object's index gave. A replica
//! whose bytes do not check is skipped for the next one, as a corrupt
//! chunk copy is.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::FutureExt;
use object_store::ObjectStoreExt;

use crate::log::WalPlace;
use crate::replica::worst;
use crate::wal::{self, WalId};
use crate::wal_stream::WalChunkRef;
use crate::{layout, ReplicaSet, StorageError, StoragePool};

/// Chunks of one object closer than this are fetched by one GET (the
/// bytes between them are read and dropped): a request costs about as
/// much as this many bytes on an object store.
pub const COALESCE_GAP: u64 = 1 << 20;

/// The payloads of `refs`, in their order. Each distinct object is read
/// with as few ranged GETs as [`COALESCE_GAP`] allows.
pub async fn read_chunks(
    pool: &StoragePool,
    refs: &[WalChunkRef],
) -> Result<Vec<Bytes>, StorageError> {
    let places = refs
        .iter()
        .map(|r| {
            Ok(WalPlace {
                id: r.id,
                pos: r.entry.pos,
                len: r.entry.len,
                payload_crc: r.entry.payload_crc,
                replicas: pool.replica_set(&r.replica_set)?,
            })
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    read_places(&places.iter().collect::<Vec<_>>()).await
}

/// Chunks of WAL objects as a partition's log names them, in their order:
/// those of one object are read together, with as few ranged GETs as
/// [`COALESCE_GAP`] allows (a partition's chunks gathered into one object
/// lie side by side).
pub async fn read_places(places: &[&WalPlace]) -> Result<Vec<Bytes>, StorageError> {
    let mut by_object: BTreeMap<WalId, Vec<usize>> = BTreeMap::new();
    for (i, p) in places.iter().enumerate() {
        by_object.entry(p.id).or_default().push(i);
    }
    let mut reads: Vec<Vec<usize>> = Vec::new();
    for (_, mut idx) in by_object {
        idx.sort_by_key(|i| places[*i].pos);
        let mut group: Vec<usize> = Vec::new();
        let mut end = 0u64;
        for i in idx {
            let p = places[i];
            if !group.is_empty() && p.pos > end.saturating_add(COALESCE_GAP) {
                reads.push(std::mem::take(&mut group));
            }
            end = end.max(p.pos + p.len as u64);
            group.push(i);
        }
        if !group.is_empty() {
            reads.push(group);
        }
    }
    let results = futures::future::join_all(reads.iter().map(|group| {
        let first = places[group[0]];
        let entries = group
            .iter()
            .map(|i| (places[*i].pos, places[*i].len, places[*i].payload_crc))
            .collect();
        read_ranges(&first.replicas, first.id, entries)
    }))
    .await;
    let mut out: Vec<Option<Bytes>> = vec![None; places.len()];
    for (group, got) in reads.iter().zip(results) {
        for (i, b) in group.iter().zip(got?) {
            out[*i] = Some(b);
        }
    }
    Ok(out
        .into_iter()
        .map(|b| b.expect("every chunk read"))
        .collect())
}

/// One chunk of a WAL object, as a partition's log names it.
pub async fn read_one(place: &WalPlace) -> Result<Bytes, StorageError> {
    let mut got = read_ranges(
        &place.replicas,
        place.id,
        vec![(place.pos, place.len, place.payload_crc)],
    )
    .await?;
    Ok(got.pop().expect("one chunk read"))
}

/// The chunks (position, length, CRC32C) of object `id`, sorted by
/// position, by one ranged GET from `replicas` (hedged), each checked.
async fn read_ranges(
    replicas: &ReplicaSet,
    id: WalId,
    entries: Vec<(u64, u32, u32)>,
) -> Result<Vec<Bytes>, StorageError> {
    let path = layout::wal(id);
    let start = entries.first().map(|e| e.0).unwrap_or(0);
    let end = entries
        .iter()
        .map(|(pos, len, _)| pos + *len as u64)
        .max()
        .unwrap_or(start);
    let (got, failed) = replicas
        .hedged(|t| {
            let (path, entries) = (path.clone(), entries.clone());
            async move {
                let span = t
                    .store
                    .get_range(&path, start..end)
                    .await
                    .map_err(StorageError::from_object_store)?;
                if span.len() as u64 != end - start {
                    return Err(StorageError::corrupt(
                        path.as_ref(),
                        format!("{} bytes read of {}..{end}", span.len(), start),
                    ));
                }
                entries
                    .iter()
                    .map(|(pos, len, crc)| {
                        let at = (pos - start) as usize;
                        let b = span.slice(at..at + *len as usize);
                        wal::verify_range(path.as_ref(), *len, *crc, &b).map(|()| b)
                    })
                    .collect::<Result<Vec<Bytes>, StorageError>>()
            }
            .boxed()
        })
        .await;
    got.ok_or_else(|| worst(&path, failed.into_iter().map(|(_, e)| e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::ChunkMeta;
    use crate::wal_stream::{WalConfig, WalStream};
    use floe_common::{PartitionId, Uuid};
    use std::sync::Arc;
    use std::time::Duration;

    fn meta(partition: i32, base: i64) -> ChunkMeta {
        ChunkMeta {
            partition: PartitionId::new(Uuid::from_u128(24), partition),
            segment_epoch: 1,
            segment_base: 0,
            base_offset: base,
            next_offset: base + 1,
            max_timestamp: 0,
            batch_count: 1,
            epoch: 1,
        }
    }

    fn stream(pool: &Arc<StoragePool>) -> WalStream {
        WalStream::start(
            pool.clone(),
            1,
            1,
            0,
            WalConfig {
                linger: Duration::from_millis(20),
                ..Default::default()
            },
        )
    }

    async fn append_all(stream: &WalStream, payloads: &[Bytes]) -> Vec<WalChunkRef> {
        futures::future::join_all(
            payloads
                .iter()
                .enumerate()
                .map(|(i, p)| stream.append(meta(i as i32 % 3, i as i64), p.clone())),
        )
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
    }

    fn gets(stores: &[Arc<crate::faulty::FaultyStore>]) -> u64 {
        stores.iter().map(|s| s.gets()).sum()
    }

    /// Chunks of three partitions written through one stream come back
    /// whole, in the asked order, with one GET per object whatever their
    /// number; a corrupt copy on the replica read first is skipped for the
    /// other; corrupt everywhere is an error, never the bad bytes.
    #[tokio::test]
    async fn chunks_come_back_checked_and_coalesced_per_object() {
        let (stores, targets) = crate::faulty::test_targets(3);
        let pool = Arc::new(StoragePool::with_seed(targets, 2, 2, 5).unwrap());
        let payloads: Vec<Bytes> = (0..6)
            .map(|i| Bytes::from(vec![b'a' + i as u8; 100 + i * 10]))
            .collect();
        let refs = append_all(&stream(&pool), &payloads).await;
        assert!(refs.iter().all(|r| r.id == refs[0].id), "one object");
        let before = gets(&stores);
        let mut asked: Vec<WalChunkRef> = refs.clone();
        asked.reverse();
        let got = read_chunks(&pool, &asked).await.unwrap();
        let want: Vec<Bytes> = payloads.iter().rev().cloned().collect();
        assert_eq!(got, want);
        assert_eq!(gets(&stores) - before, 1, "one GET for six chunks");

        let path = layout::wal(refs[0].id);
        let set = pool.replica_set(&refs[0].replica_set).unwrap();
        let mut bad = set.get(&path).await.unwrap().to_vec();
        bad[refs[2].entry.pos as usize] ^= 0xff;
        let bad = Bytes::from(bad);
        for t in set.targets() {
            t.store.put(&path, bad.clone().into()).await.unwrap();
            let got = read_chunks(&pool, &refs[2..3]).await;
            if t.id == set.targets().last().unwrap().id {
                let e = got.unwrap_err();
                assert!(e.to_string().contains("checksum"), "{e}");
            } else {
                assert_eq!(got.unwrap()[0], payloads[2], "the good copy");
            }
        }
        // The other chunks of the object still read.
        assert_eq!(
            read_chunks(&pool, &refs[3..4]).await.unwrap()[0],
            payloads[3]
        );
    }

    /// Chunks of one object farther apart than [`COALESCE_GAP`] take a GET
    /// each; with the chunk between them asked too, one GET again.
    #[tokio::test]
    async fn chunks_far_apart_are_read_apart() {
        let (stores, targets) = crate::faulty::test_targets(3);
        let pool = Arc::new(StoragePool::with_seed(targets, 2, 2, 6).unwrap());
        let payloads = vec![
            Bytes::from(vec![1u8; 10]),
            Bytes::from(vec![2u8; (COALESCE_GAP + 4096) as usize]),
            Bytes::from(vec![3u8; 10]),
        ];
        let refs = append_all(&stream(&pool), &payloads).await;
        assert!(refs.iter().all(|r| r.id == refs[0].id), "one object");
        let ends = [refs[0].clone(), refs[2].clone()];
        let before = gets(&stores);
        let got = read_chunks(&pool, &ends).await.unwrap();
        assert_eq!(got, [payloads[0].clone(), payloads[2].clone()]);
        assert_eq!(gets(&stores) - before, 2);
        let before = gets(&stores);
        assert_eq!(read_chunks(&pool, &refs).await.unwrap(), payloads);
        assert_eq!(gets(&stores) - before, 1);
    }
}
