//! The storage conformance suite: what Floe needs from a backend (an
//! `object_store` of any kind), checked the same way on memory, the local
//! filesystem and S3-compatible servers: reads, ranged reads, listings with
//! sizes, deletes, multipart uploads, and above all an atomic conditional
//! create (fencing relies on it), also under concurrency and through a
//! replica set spread over the backend.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::replica::{PutOutcome, ReplicaSet};
use crate::target::StorageTarget;

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

async fn create(store: &dyn ObjectStore, path: &Path, data: &'static [u8]) -> Result<bool, String> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(path, PutPayload::from_static(data), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(format!("conditional create of {path}: {e}")),
    }
}

/// Run every check against `store`, under the fresh prefix `run`.
pub async fn run(store: Arc<dyn ObjectStore>, run: &str) -> Result<(), String> {
    let at = |k: &str| Path::from(format!("{run}/{k}"));
    let e = |what: &str| {
        let what = what.to_string();
        move |err: object_store::Error| format!("{what}: {err}")
    };

    // Put, get, ranged get, head.
    let data = Bytes::from((0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    store
        .put(&at("a/obj"), PutPayload::from_bytes(data.clone()))
        .await
        .map_err(e("put"))?;
    let got = store
        .get(&at("a/obj"))
        .await
        .map_err(e("get"))?
        .bytes()
        .await
        .map_err(e("get body"))?;
    check(got == data, "get returns what was put")?;
    let range = store
        .get_range(&at("a/obj"), 100..164)
        .await
        .map_err(e("ranged get"))?;
    check(
        range == data.slice(100..164),
        "a ranged get returns that range",
    )?;
    check(
        matches!(
            store.get(&at("a/missing")).await,
            Err(object_store::Error::NotFound { .. })
        ),
        "a missing object is NotFound",
    )?;

    // Conditional create: one winner, the loser sees AlreadyExists, the
    // object keeps the winner's bytes.
    check(
        create(&*store, &at("c/x"), b"first").await?,
        "a fresh key is created",
    )?;
    check(
        !create(&*store, &at("c/x"), b"second").await?,
        "an existing key is refused",
    )?;
    let kept = store
        .get(&at("c/x"))
        .await
        .map_err(e("get"))?
        .bytes()
        .await
        .map_err(e("body"))?;
    check(
        kept == "first",
        "the refused create left the object as it was",
    )?;

    // Under concurrency, exactly one of many creates of a key wins.
    for round in 0..10 {
        let key = at(&format!("race/{round}"));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move { create(&*store, &key, b"racer").await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            if t.await.map_err(|e| e.to_string())?? {
                wins += 1;
            }
        }
        check(
            wins == 1,
            &format!("round {round}: {wins} of 12 concurrent creates won, not 1"),
        )?;
    }

    // Listing: every key under a prefix with its size, nothing else.
    for k in ["l/0001", "l/0002", "l/0010"] {
        store
            .put(&at(k), PutPayload::from_static(b"12345"))
            .await
            .map_err(e("put"))?;
    }
    let target = StorageTarget::from_store("t", store.clone());
    let set = ReplicaSet::new(vec![target], 1);
    let listed = set.list(&at("l")).await.map_err(|e| e.to_string())?;
    let keys: Vec<String> = listed.keys().map(|p| p.to_string()).collect();
    check(
        keys == ["l/0001", "l/0002", "l/0010"]
            .iter()
            .map(|k| format!("{run}/{k}"))
            .collect::<Vec<_>>(),
        &format!("listing shows exactly the keys, in order: {keys:?}"),
    )?;
    check(listed.values().all(|n| *n == 5), "listing shows sizes")?;

    // Delete.
    store.delete(&at("l/0002")).await.map_err(e("delete"))?;
    let listed = set.list(&at("l")).await.map_err(|e| e.to_string())?;
    check(listed.len() == 2, "a deleted object is no longer listed")?;

    // A multipart upload of more than one part (S3's minimum part is 5 MiB).
    let big = Bytes::from(vec![7u8; 6 << 20]);
    let mut up = set.upload(&at("m/big")).await.map_err(|e| e.to_string())?;
    up.write(big.slice(..4 << 20))
        .await
        .map_err(|e| e.to_string())?;
    up.write(big.slice(4 << 20..))
        .await
        .map_err(|e| e.to_string())?;
    up.finish().await.map_err(|e| e.to_string())?;
    let back = set.get(&at("m/big")).await.map_err(|e| e.to_string())?;
    check(back == big, "a multipart upload reads back whole")?;

    // A replica set of three "targets" carved out of this backend: W=2 is
    // reached; with the key already on two replicas a new writer cannot
    // reach W (this is what makes a fence hold).
    let sub = |name: &str| {
        StorageTarget::from_store(
            name,
            Arc::new(PrefixStore::new(store.clone(), format!("{run}/rs/{name}"))),
        )
    };
    let set = ReplicaSet::new(vec![sub("r1"), sub("r2"), sub("r3")], 2);
    let p = Path::from("chunk");
    let outcome = set
        .put_create(&p, Bytes::from_static(b"data"))
        .await
        .map_err(|e| e.to_string())?;
    check(
        outcome == PutOutcome::Created,
        "a quorum write on a fresh key is created",
    )?;
    let fenced = Path::from("fenced");
    for r in [sub("r1"), sub("r2")] {
        create(&*r.store, &fenced, b"fence").await?;
    }
    let outcome = set
        .put_create(&fenced, Bytes::from_static(b"late"))
        .await
        .map_err(|e| e.to_string())?;
    check(
        outcome == PutOutcome::AlreadyExists,
        "a write that meets a fence on R-W+1 replicas cannot reach W",
    )?;

    layouts(&sub).await
}

/// Both chunk layouts (docs/storage.md) over a pool of three targets
/// carved out of the backend, R=3, W=2: what a partition writes reads back
/// whole, and what fences a dead writer holds against its late writes.
async fn layouts(sub: &dyn Fn(&str) -> StorageTarget) -> Result<(), String> {
    use crate::wal::ChunkMeta;
    use crate::wal_stream::{WalConfig, WalError, WalStream};
    use floe_common::{PartitionId, Uuid};

    let err = |e: crate::StorageError| e.to_string();
    let p = PartitionId::new(Uuid::from_u128(0xC0F), 0);
    // Four chunks of one batch of ten records each, at offsets 0, 10, ...
    let payloads: Vec<Bytes> = (0..4)
        .map(|i| {
            let mut b = floe_protocol::batch::synthetic_batch(10, 30 + i * 10, 1_000);
            floe_protocol::batch::assign(&mut b, i as i64 * 10, 1, None);
            Bytes::from(b)
        })
        .collect();

    // One object per chunk on the segment's replicas; a fence at the next
    // chunk key on R-W+1 of them keeps a late chunk from W.
    let set = ReplicaSet::new(vec![sub("p1"), sub("p2"), sub("p3")], 2);
    let mut base = 0;
    for (i, data) in payloads.iter().enumerate() {
        let key = crate::layout::chunk(p, 0, 1, base);
        let object = crate::chunk::encode_data(1, base, base + 10, i as i64, 1, data);
        let put = set.put_create(&key, object).await.map_err(err)?;
        check(put == PutOutcome::Created, "a chunk object is created")?;
        let (h, back, _) = crate::chunk_replicas::read(&set, &key, base)
            .await
            .map_err(err)?;
        check(
            back == *data && h.next_offset == base + 10,
            "a chunk reads back whole with its offsets",
        )?;
        base += 10;
    }
    let next = crate::layout::chunk(p, 0, 1, base);
    for t in &set.targets()[..2] {
        create(&*t.store, &next, b"fence").await?;
    }
    let late = crate::chunk::encode_data(1, base, base + 10, 0, 1, b"late");
    check(
        set.put_create(&next, late).await.map_err(err)? == PutOutcome::AlreadyExists,
        "partition layout: a late chunk meets the fence",
    )?;

    // Shared WAL objects: chunks of two partitions in one stream, read
    // back by range; a recovery's scan keeps one partition's chunks in
    // order and fences the stream, after which the stream acks nothing.
    let pool = Arc::new(
        crate::StoragePool::new(vec![sub("w1"), sub("w2"), sub("w3")], 3, 2).map_err(err)?,
    );
    let config = WalConfig {
        linger: std::time::Duration::from_millis(2),
        ..Default::default()
    };
    let stream = WalStream::start(pool.clone(), 1, 0, 0, config);
    let other = PartitionId::new(Uuid::from_u128(0xC0F), 1);
    let mut refs = Vec::new();
    for (i, data) in payloads.iter().enumerate() {
        for partition in [p, other] {
            let meta = ChunkMeta {
                partition,
                segment_base: 0,
                segment_epoch: 1,
                epoch: 1,
                base_offset: i as i64 * 10,
                next_offset: i as i64 * 10 + 10,
                max_timestamp: i as i64,
                batch_count: 1,
            };
            let r = stream
                .append(meta, data.clone())
                .await
                .map_err(|e| e.to_string())?;
            if partition == p {
                refs.push(r);
            }
        }
    }
    let back = crate::wal_read::read_chunks(&pool, &refs)
        .await
        .map_err(err)?;
    check(back == payloads, "WAL chunks read back whole by range")?;
    let scan = crate::wal_recovery::scan_and_fence(&pool, 2, 1, 0, 0, |e| e.meta.partition == p)
        .await
        .map_err(err)?;
    let found: Vec<i64> = scan
        .chunks
        .iter()
        .map(|c| c.entry.meta.base_offset)
        .collect();
    check(
        found == [0, 10, 20, 30],
        &format!("a scan keeps one partition's chunks in order: {found:?}"),
    )?;
    let meta = ChunkMeta {
        partition: p,
        segment_base: 0,
        segment_epoch: 1,
        epoch: 1,
        base_offset: 40,
        next_offset: 50,
        max_timestamp: 0,
        batch_count: 1,
    };
    match stream.append(meta, Bytes::from_static(b"late")).await {
        Err(WalError::Fenced(id)) if id.seq == scan.end => {}
        other => {
            return Err(format!(
                "WAL layout: a late object must meet the fence at seq {}: {other:?}",
                scan.end
            ))
        }
    }
    let again = crate::wal_recovery::scan_and_fence(&pool, 2, 1, 0, 0, |e| e.meta.partition == p)
        .await
        .map_err(err)?;
    check(
        again == scan,
        "a second scan of a fenced stream finds the same chunks and end",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_passes_the_storage_conformance_suite() {
        let t = StorageTarget::open("m", "memory://").unwrap();
        run(t.store, "conformance").await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_filesystem_passes_the_storage_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let t = StorageTarget::open("f", &url).unwrap();
        run(t.store, "conformance").await.unwrap();
    }
}
