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

use std::collections::BTreeMap;

use crate::wal::{self, WalEntry, WalId, WalKind};
use crate::{layout, PutOutcome, ReplicaSet, StorageError, StoragePool};
use futures::StreamExt;
use object_store::ObjectStoreExt;

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

/// WAL objects a scan reads at once ahead of its walk, and at most in
/// all before it (the rest one at a time, as the walk comes to them).
const READS_AHEAD: usize = 32;
const MAX_READ_AHEAD: usize = 1024;

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
    // Which target holds what at which seq, as listed now: a fence is
    // exactly a footer, a data object always more (it has chunks).
    let mut holders: BTreeMap<i64, BTreeMap<String, Held>> = BTreeMap::new();
    let mut trusted: Vec<crate::StorageTarget> = Vec::new();
    let mut listed = 0;
    let mut last_err = None;
    for (t, listing) in targets.iter().zip(all.list_each(&prefix).await) {
        match listing {
            Ok(keys) => {
                listed += 1;
                // A lost target's listing shows what it holds, but its
                // silence about a key proves nothing.
                if t.absence_trusted().await {
                    trusted.push(t.clone());
                }
                for (path, size) in keys {
                    if let Some(id) = layout::wal_id(&path) {
                        holders
                            .entry(id.seq)
                            .or_default()
                            .insert(t.id.clone(), Held::of_size(size));
                    }
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    let answered = trusted.len();
    let unavailable = |path: &object_store::path::Path, why: String| {
        StorageError::Unavailable(format!(
            "cannot tell whether WAL object {path} exists: {why}{}",
            last_err
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ))
    };
    // Read ahead, many at once, the objects the listing shows standing
    // (data on W targets) from `from_seq` until its first gap: the walk
    // below then finds them read. One read at a time over a few hundred
    // objects took seconds on an S3 server (a take-over's whole budget).
    // What this reads is only shared content; every decision is the
    // walk's, and a read that failed here is tried again there.
    let mut ahead = Vec::new();
    for (seq, here) in holders.range(from_seq..) {
        if *seq != from_seq + ahead.len() as i64 || ahead.len() >= MAX_READ_AHEAD {
            break;
        }
        let data = data_holders(here);
        if data.len() < write_quorum {
            break;
        }
        ahead.push((*seq, data));
    }
    futures::stream::iter(ahead.into_iter().map(|(seq, data)| async move {
        let id = WalId {
            broker,
            stream,
            seq,
        };
        let _ = read_data_once(pool, &layout::wal(id), id, &data).await;
    }))
    .buffer_unordered(READS_AHEAD)
    .collect::<Vec<()>>()
    .await;
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
        let here = holders.get(&seq).cloned().unwrap_or_default();
        let fences = here.values().filter(|h| **h == Held::Fence).count();
        let data = data_holders(&here);
        // The decision at one key (docs/design.md, "Shared WAL objects"):
        // a fence on N−W+1 targets leaves the old writer at most W−1, so
        // whatever data lies beside it was never acknowledged; data on W
        // targets leaves a fence at most N−W, so it stands. Between the
        // two, a fence already begun (its writer raced the old writer for
        // this key and neither won) is completed; data no fence has
        // touched is kept, as chunks are (it may have been acknowledged
        // with copies on targets that do not answer now) — once enough
        // targets answered that no complete fence can hide among the rest.
        let keep = if fences >= need {
            tracing::info!(broker, stream, seq, "WAL stream already fenced");
            return Ok(StreamScan { chunks, end: seq });
        } else if data.len() >= write_quorum {
            true
        } else if !data.is_empty() && fences == 0 {
            if n - listed >= need {
                return Err(unavailable(
                    &path,
                    format!("{listed} of {n} targets listed, {write_quorum} needed"),
                ));
            }
            true
        } else {
            false
        };
        if keep {
            match read_data_once(pool, &path, id, &data).await? {
                Some(entries) => {
                    chunks.extend(entries.iter().filter(|e| want(e)).map(|entry| FoundChunk {
                        id,
                        entry: *entry,
                        holders: data.clone(),
                    }));
                    seq += 1;
                    relooks = 0;
                    continue;
                }
                // Only fences there after all: the stream ends here.
                None => return Ok(StreamScan { chunks, end: seq }),
            }
        }
        let fence = if data.is_empty() && fences == 0 {
            if answered < need {
                return Err(unavailable(
                    &path,
                    format!("{answered} of {n} targets listed, {need} needed"),
                ));
            }
            ReplicaSet::new(targets.clone(), need)
        } else {
            // Completing a fence beside data: only on targets whose
            // absence is trusted, so that no copy of an acknowledged
            // object lost with a target could be replaced by a fence.
            if trusted.len() < need {
                return Err(unavailable(
                    &path,
                    format!(
                        "{} data and {fences} fence copies, {answered} of {n} targets trusted, {need} needed to fence",
                        data.len()
                    ),
                ));
            }
            ReplicaSet::new(trusted.clone(), need)
        };
        match fence.put_create(&path, wal::encode_fence(id)).await? {
            PutOutcome::Created => {
                tracing::info!(broker, stream, seq, "fenced a WAL stream");
                return Ok(StreamScan { chunks, end: seq });
            }
            PutOutcome::AlreadyExists => {
                // Something landed at this key after the listing (the old
                // writer's late object, or another recoverer's fence):
                // look again at who holds what.
                relooks += 1;
                if relooks > MAX_RELOOKS {
                    return Err(StorageError::Unavailable(format!(
                        "{path}: neither fenced nor readable after {MAX_RELOOKS} looks"
                    )));
                }
                // A HEAD per target (a listing with the key as prefix
                // would look under it, not at it).
                let found = futures::future::join_all(
                    targets.iter().map(|t| async { t.store.head(&path).await }),
                )
                .await;
                let set = holders.entry(seq).or_default();
                for (t, head) in targets.iter().zip(found) {
                    match head {
                        Ok(meta) => {
                            set.insert(t.id.clone(), Held::of_size(meta.size));
                        }
                        Err(object_store::Error::NotFound { .. }) => {
                            set.remove(&t.id);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    }
}

/// The targets holding data (not a fence) at one key, as listed.
fn data_holders(here: &BTreeMap<String, Held>) -> Vec<String> {
    here.iter()
        .filter(|(_, h)| **h == Held::Data)
        .map(|(t, _)| t.clone())
        .collect()
}

/// What one target holds at one key of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Data,
    Fence,
}

impl Held {
    fn of_size(size: u64) -> Self {
        if size == wal::FOOTER_LEN as u64 {
            Held::Fence
        } else {
            Held::Data
        }
    }
}

/// [`read_data`] through the pool's cache of WAL indexes: concurrent
/// scans of one object wait for one read, later ones read nothing. Only
/// data is kept (what the scan decided to keep never changes); a fence
/// or a failed read is looked at again next time.
async fn read_data_once(
    pool: &StoragePool,
    path: &object_store::path::Path,
    id: WalId,
    holders: &[String],
) -> Result<Option<std::sync::Arc<Vec<WalEntry>>>, StorageError> {
    enum NotRead {
        Fenced,
        Failed(StorageError),
    }
    let cell = pool.wal_index(id);
    let read = cell
        .get_or_try_init(|| async {
            match read_data(pool, path, id, holders).await {
                Ok(Some(entries)) => Ok(std::sync::Arc::new(entries)),
                Ok(None) => Err(NotRead::Fenced),
                Err(e) => Err(NotRead::Failed(e)),
            }
        })
        .await;
    match read {
        Ok(entries) => Ok(Some(entries.clone())),
        Err(NotRead::Fenced) => Ok(None),
        Err(NotRead::Failed(e)) => Err(e),
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

    /// The partitions of one dead broker recovered together read each of
    /// its WAL objects once: two scans at once and a third after read the
    /// three objects with three GETs in all (each scan lists the stream
    /// itself and decides by its own listing). Without the shared reads:
    /// nine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scans_of_one_stream_read_each_object_once() {
        use crate::counted::requests;
        let targets: Vec<crate::StorageTarget> = (0..3)
            .map(|i| crate::StorageTarget::open(format!("scan-once-{i}"), "memory://").unwrap())
            .collect();
        let pool = Arc::new(StoragePool::with_seed(targets, 3, 2, 5).unwrap());
        let gets = || {
            (0..3)
                .map(|i| requests(&format!("scan-once-{i}"), "get"))
                .sum::<u64>()
        };
        let old = WalStream::start(pool.clone(), 4, 2, 0, config());
        for (partition, base) in [(0, 0), (1, 0), (2, 0)] {
            old.append(meta(partition, base), payload()).await.unwrap();
        }
        // Fenced already (by an earlier recovery): the scans race for no
        // key, whose conditional creates would read what they met.
        let end = WalId {
            broker: 4,
            stream: 2,
            seq: 3,
        };
        for t in pool.targets().iter() {
            t.store
                .put(&layout::wal(end), PutPayload::from(wal::encode_fence(end)))
                .await
                .unwrap();
        }
        let before = gets();
        let (a, b) = tokio::join!(
            scan_and_fence(&pool, 2, 4, 2, 0, |e| e.meta.partition == p(0)),
            scan_and_fence(&pool, 2, 4, 2, 0, |e| e.meta.partition == p(1)),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let c = scan_and_fence(&pool, 2, 4, 2, 0, |e| e.meta.partition == p(2))
            .await
            .unwrap();
        assert_eq!((a.end, b.end, c.end), (3, 3, 3));
        let seqs = |s: &StreamScan| s.chunks.iter().map(|c| c.id.seq).collect::<Vec<_>>();
        assert_eq!((seqs(&a), seqs(&b), seqs(&c)), (vec![0], vec![1], vec![2]));
        assert_eq!(gets() - before, 3, "one GET per object");
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

    fn data_object(id: WalId, partition: i32, base: i64) -> Bytes {
        let mut b = wal::WalBuilder::default();
        b.push(meta(partition, base), &payload());
        b.finish(id).0
    }

    /// Lay out what a race for key `id` left: `data` targets hold the old
    /// writer's object, `fence` targets a recoverer's fence.
    async fn lay(stores: &[Arc<FaultyStore>], id: WalId, data: &[usize], fence: &[usize]) {
        for &i in data {
            stores[i]
                .put(&layout::wal(id), PutPayload::from(data_object(id, 0, 0)))
                .await
                .unwrap();
        }
        for &i in fence {
            stores[i]
                .put(&layout::wal(id), PutPayload::from(wal::encode_fence(id)))
                .await
                .unwrap();
        }
    }

    fn key(stream: i64) -> WalId {
        WalId {
            broker: 6,
            stream,
            seq: 0,
        }
    }

    /// The fence held (N−W+1 copies) and the old writer's object landed
    /// beside it on the rest: that object was never acknowledged, so no
    /// later scan may read it — even the one that lists the data first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_fence_wins_over_the_old_writers_copies_beside_it() {
        let (pool, stores) = faulty_pool();
        let id = key(1);
        lay(&stores, id, &[0], &[1, 2]).await;
        let scan = scan_and_fence(&pool, 2, 6, 1, 0, |_| true).await.unwrap();
        assert_eq!(
            scan,
            StreamScan {
                chunks: vec![],
                end: 0
            }
        );
    }

    /// Data on W targets stands whatever a losing fence left beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn data_on_w_targets_stands_beside_a_fence_that_lost() {
        let (pool, stores) = faulty_pool();
        let id = key(2);
        lay(&stores, id, &[0, 2], &[1]).await;
        let scan = scan_and_fence(&pool, 2, 6, 2, 0, |_| true).await.unwrap();
        assert_eq!(scan.end, 1);
        assert_eq!(scan.chunks.len(), 1);
        assert_eq!(
            scan.chunks[0].holders,
            vec!["t0".to_string(), "t2".to_string()]
        );
    }

    /// Neither won (one copy each, the third target free): the scan
    /// completes the fence rather than read an object whose writer was
    /// told it is fenced; with the third target down it cannot decide
    /// and says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fence_begun_beside_data_is_completed_not_read() {
        let (pool, stores) = faulty_pool();
        let id = key(3);
        lay(&stores, id, &[0], &[1]).await;
        stores[2].set_down(true);
        let e = scan_and_fence(&pool, 2, 6, 3, 0, |_| true)
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Unavailable(_)), "{e}");
        stores[2].set_down(false);
        let scan = scan_and_fence(&pool, 2, 6, 3, 0, |_| true).await.unwrap();
        assert_eq!(
            scan,
            StreamScan {
                chunks: vec![],
                end: 0
            }
        );
        let on_t2 = stores[2]
            .get(&layout::wal(id))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(on_t2, wal::encode_fence(id));
        // Settled: a late retry of the old writer's object cannot land.
        let set = ReplicaSet::new(pool.targets().to_vec(), 2);
        assert_eq!(
            set.put_create(&layout::wal(id), data_object(id, 0, 0))
                .await
                .unwrap(),
            PutOutcome::AlreadyExists
        );
    }

    /// Two writers racing for one WAL key — the old owner's stream still
    /// flushing its next object, a recoverer fencing that key — over five
    /// targets with random latency, many times: the old writer's chunk is
    /// acknowledged exactly when the recovery keeps it, and a second
    /// recoverer scanning the same stream afterwards (the next partition of
    /// the dead broker) sees the same end and the same chunks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_racing_one_wal_key_agree_on_who_won() {
        use rand::{Rng, SeedableRng};
        let (stores, targets) = crate::faulty::test_targets(5);
        for s in &stores {
            s.set_faults(crate::faulty::Faults {
                p50: Duration::from_millis(4),
                p99: Duration::from_millis(25),
                ..Default::default()
            });
        }
        let pool = Arc::new(StoragePool::with_seed(targets, 3, 2, 17).unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(24);
        let (mut won, mut lost) = (0, 0);
        for stream in 0..40 {
            let old = WalStream::start(pool.clone(), 8, stream, 0, config());
            old.append(meta(0, 0), payload()).await.unwrap();
            // Either side may start first, by up to a few store round trips.
            let (late_delay, scan_delay) = (rng.random_range(0..40), rng.random_range(0..40));
            let late = {
                let old = old.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(late_delay)).await;
                    old.append(meta(0, 2), payload()).await
                }
            };
            let scan = async {
                tokio::time::sleep(Duration::from_millis(scan_delay)).await;
                scan_and_fence(&pool, 2, 8, stream, 0, |e| e.meta.partition == p(0)).await
            };
            let (late, first) = tokio::join!(late, scan);
            let first = first.unwrap_or_else(|e| panic!("stream {stream}: {e}"));
            let second = scan_and_fence(&pool, 2, 8, stream, 0, |_| true)
                .await
                .unwrap_or_else(|e| panic!("stream {stream}, second scan: {e}"));
            let offsets = |s: &StreamScan| -> Vec<i64> {
                s.chunks.iter().map(|c| c.entry.meta.base_offset).collect()
            };
            match late {
                Ok(r) => {
                    won += 1;
                    assert_eq!(r.id.seq, 1);
                    assert_eq!(offsets(&first), vec![0, 2], "stream {stream}");
                    assert_eq!(first.end, 2, "stream {stream}");
                }
                Err(e) => {
                    lost += 1;
                    assert!(matches!(e, WalError::Fenced(_)), "stream {stream}: {e}");
                    assert_eq!(offsets(&first), vec![0], "stream {stream}");
                    assert_eq!(first.end, 1, "stream {stream}");
                }
            }
            assert_eq!(offsets(&second), offsets(&first), "stream {stream}");
            assert_eq!(second.end, first.end, "stream {stream}");
        }
        // Both outcomes happened: the race was run, not one side of it.
        assert!(won > 0 && lost > 0, "won {won}, lost {lost}");
    }
}
