//! Recovery's side of a WAL stream (docs/design.md, "Shared WAL objects",
//! unclean end): walk a dead writer's stream from a known seq, keep the
//! chunks a partition wants, and fence the stream at its first absent key
//! so that the old writer can never make that object — or any later one —
//! durable. Objects lie on random replica sets over the whole pool, so
//! every decision is made against the pool: an object is absent only when
//! N−W+1 targets were listed without it (one of an acked object's W
//! copies would show), and a fence holds once N−W+1 targets have it (any
//! R targets the old writer could draw then have at most W−1 free keys).
//! Data found on any target is kept, as chunks are today: it may have been
//! acked with copies on targets that are unreachable now.

use std::collections::{BTreeMap, BTreeSet};

use crate::wal::{self, WalEntry, WalId, WalKind};
use crate::{layout, PutOutcome, ReplicaSet, StorageError, StoragePool};

/// One chunk a scan kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundChunk {
    pub id: WalId,
    pub entry: WalEntry,
    /// Targets the object was listed on.
    pub holders: Vec<String>,
}

/// What a scan found: the wanted chunks in stream order, and the seq at
/// which the stream now ends (fenced, by this scan or an earlier one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamScan {
    pub chunks: Vec<FoundChunk>,
    pub end: i64,
}

/// Times one key is looked at again when a fence meets an object that
/// landed after the listing.
const MAX_RELOOKS: u32 = 3;

/// Walk stream `stream` of `broker` from `from_seq`, keeping the chunks
/// `want` picks, and fence it at its first absent seq. `write_quorum` is
/// the W the stream's objects were written with.
pub async fn scan_and_fence(
    pool: &StoragePool,
    write_quorum: usize,
    broker: i32,
    stream: i64,
    from_seq: i64,
    want: impl Fn(&WalEntry) -> bool,
) -> Result<StreamScan, StorageError> {
    let targets = pool.targets().to_vec();
    let n = targets.len();
    if write_quorum == 0 || write_quorum > n {
        return Err(StorageError::Invalid(format!(
            "a write quorum of {write_quorum} over {n} targets"
        )));
    }
    let need = n - write_quorum + 1;
    let all = ReplicaSet::new(targets.clone(), write_quorum);
    let prefix = layout::wal_stream_prefix(broker, stream);
    // Which target holds which seq, as listed now.
    let mut holders: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut answered = 0;
    let mut last_err = None;
    for (t, listing) in targets.iter().zip(all.list_each(&prefix).await) {
        match listing {
            Ok(keys) => {
                // A lost target's listing shows what it holds, but its
                // silence about a key proves nothing.
                if t.absence_trusted().await {
                    answered += 1;
                }
                for path in keys.keys() {
                    if let Some(id) = layout::wal_id(path) {
                        holders.entry(id.seq).or_default().insert(t.id.clone());
                    }
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut chunks = Vec::new();
    let mut seq = from_seq;
    let mut relooks = 0;
    loop {
        let id = WalId {
            broker,
            stream,
            seq,
        };
        let path = layout::wal(id);
        let here: Vec<String> = holders
            .get(&seq)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default();
        if !here.is_empty() {
            match read_data(pool, &path, id, &here).await? {
                Some(entries) => {
                    chunks.extend(entries.into_iter().filter(|e| want(e)).map(|entry| {
                        FoundChunk {
                            id,
                            entry,
                            holders: here.clone(),
                        }
                    }));
                    seq += 1;
                    relooks = 0;
                    continue;
                }
                // Only fences there: the stream already ends here.
                None => return Ok(StreamScan { chunks, end: seq }),
            }
        }
        if answered < need {
            return Err(StorageError::Unavailable(format!(
                "cannot tell whether WAL object {path} exists: {answered} of {n} targets listed, {need} needed{}",
                last_err.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        let fence = ReplicaSet::new(targets.clone(), need);
        match fence.put_create(&path, wal::encode_fence(id)).await? {
            PutOutcome::Created => {
                tracing::info!(broker, stream, seq, "fenced a WAL stream");
                return Ok(StreamScan { chunks, end: seq });
            }
            PutOutcome::AlreadyExists => {
                // Something landed at this key after the listing (the old
                // writer's late object, or another recoverer's fence):
                // look again at who holds it.
                relooks += 1;
                if relooks > MAX_RELOOKS {
                    return Err(StorageError::Unavailable(format!(
                        "{path}: neither fenced nor readable after {MAX_RELOOKS} looks"
                    )));
                }
                let found = fence.list_each(&path).await;
                let set = holders.entry(seq).or_default();
                for (t, listing) in targets.iter().zip(found) {
                    if listing.is_ok_and(|keys| keys.contains_key(&path)) {
                        set.insert(t.id.clone());
                    }
                }
            }
        }
    }
}

/// The entries of object `id` if any of `holders` has it as data; `None`
/// if every holder that answered has a fence there.
async fn read_data(
    pool: &StoragePool,
    path: &object_store::path::Path,
    id: WalId,
    holders: &[String],
) -> Result<Option<Vec<WalEntry>>, StorageError> {
    let mut fenced = false;
    let mut last_err = None;
    for t in holders {
        let one = pool.replica_set(std::slice::from_ref(t))?;
        match one.get(path).await {
            Ok(data) => {
                let (footer, entries) = wal::decode(path.as_ref(), &data, id)?;
                match footer.kind {
                    WalKind::Data => return Ok(Some(entries)),
                    WalKind::Fence => fenced = true,
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    if fenced {
        return Ok(None);
    }
    Err(last_err.unwrap_or_else(|| StorageError::NotFound(path.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faulty::FaultyStore;
    use crate::wal::ChunkMeta;
    use crate::wal_stream::{WalConfig, WalError, WalStream};
    use bytes::Bytes;
    use floe_common::{PartitionId, Uuid};
    use object_store::{ObjectStoreExt, PutPayload};
    use std::sync::Arc;
    use std::time::Duration;

    fn faulty_pool() -> (Arc<StoragePool>, Vec<Arc<FaultyStore>>) {
        let (stores, targets) = crate::faulty::test_targets(3);
        (
            Arc::new(StoragePool::with_seed(targets, 3, 2, 5).unwrap()),
            stores,
        )
    }

    fn p(n: i32) -> PartitionId {
        PartitionId::new(Uuid::from_u128(11), n)
    }

    fn meta(partition: i32, base: i64) -> ChunkMeta {
        ChunkMeta {
            partition: p(partition),
            segment_base: 0,
            segment_epoch: 1,
            epoch: 1,
            base_offset: base,
            next_offset: base + 2,
            max_timestamp: 0,
            batch_count: 1,
        }
    }

    fn payload() -> Bytes {
        Bytes::from(floe_protocol::batch::synthetic_batch(2, 8, 0))
    }

    fn config() -> WalConfig {
        WalConfig {
            linger: Duration::from_millis(5),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scan_keeps_the_partitions_chain_and_fences_the_old_writer_out() {
        let (pool, _) = faulty_pool();
        let old = WalStream::start(pool.clone(), 1, 9, 0, config());
        // Objects 0, 1, 2: partition 0 in 0 and 2, partition 1 in 1.
        old.append(meta(0, 0), payload()).await.unwrap();
        old.append(meta(1, 0), payload()).await.unwrap();
        old.append(meta(0, 2), payload()).await.unwrap();
        let scan = scan_and_fence(&pool, 2, 1, 9, 0, |e| e.meta.partition == p(0))
            .await
            .unwrap();
        let got: Vec<(i64, i64)> = scan
            .chunks
            .iter()
            .map(|c| (c.id.seq, c.entry.meta.base_offset))
            .collect();
        assert_eq!(got, vec![(0, 0), (2, 2)]);
        assert_eq!(scan.end, 3);
        // The old writer, still running, can never make object 3 durable.
        let e = old.append(meta(0, 4), payload()).await.unwrap_err();
        assert!(matches!(e, WalError::Fenced(WalId { seq: 3, .. })), "{e}");
        // Another recoverer (partition 1) reaches the same end.
        let again = scan_and_fence(&pool, 2, 1, 9, 0, |e| e.meta.partition == p(1))
            .await
            .unwrap();
        assert_eq!(again.end, 3);
        assert_eq!(again.chunks.len(), 1);
        assert_eq!(again.chunks[0].id.seq, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_on_a_single_target_is_kept() {
        let (pool, stores) = faulty_pool();
        // Object 0 landed on one target only (its writer died mid-flush).
        let id = WalId {
            broker: 2,
            stream: 1,
            seq: 0,
        };
        let mut b = wal::WalBuilder::default();
        b.push(meta(0, 0), &payload());
        let (object, _) = b.finish(id);
        stores[1]
            .put(&layout::wal(id), PutPayload::from(object))
            .await
            .unwrap();
        let scan = scan_and_fence(&pool, 2, 2, 1, 0, |_| true).await.unwrap();
        assert_eq!(scan.chunks.len(), 1);
        assert_eq!(scan.chunks[0].holders, vec!["t1".to_string()]);
        assert_eq!(scan.end, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_too_few_targets_listed_the_scan_waits_rather_than_guess() {
        let (pool, stores) = faulty_pool();
        stores[0].set_down(true);
        stores[2].set_down(true);
        let e = scan_and_fence(&pool, 2, 3, 1, 0, |_| true)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Unavailable(_)), "{e}");
        assert!(
            e.to_string().contains("1 of 3 targets listed, 2 needed"),
            "{e}"
        );
        // Nothing was fenced: with the targets back the stream is whole.
        stores[0].set_down(false);
        stores[2].set_down(false);
        let s = WalStream::start(pool.clone(), 3, 1, 0, config());
        assert_eq!(s.append(meta(0, 0), payload()).await.unwrap().id.seq, 0);
    }
}
