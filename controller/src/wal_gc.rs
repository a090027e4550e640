//! Which shared WAL objects may be deleted (issue 24; docs/design.md,
//! "Shared WAL objects", garbage collection): per broker, the low
//! watermark is the least position any partition's checkpoint still names
//! in that broker's streams — a chunk of an open segment not yet
//! consolidated, or the position its owner's stream stood at when the
//! checkpoint was saved (every chunk written after lies past it). An
//! object before its broker's watermark holds nothing anyone will read;
//! it is deleted once older than the grace period, which covers a writer
//! whose first checkpoint was saved after the checkpoints were read.
//!
//! The leading controller runs a pass every `wal_gc_interval_ms`: the
//! stream registry first, then every checkpoint, then a listing of `wal/`
//! on every target; objects before the watermarks go from every target
//! holding them, and registry entries of streams wholly before their
//! broker's watermark (never a broker's last one) go too. The order makes
//! it safe against writers running meanwhile: a checkpoint saved after
//! the read names a position at or past what the read saw for the same
//! partition, or (a partition's first checkpoint) its broker's current
//! stream, which is at or past the last one the registry showed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use floe_meta::schema::CheckpointRecord;
use floe_meta::{keys, MetaError, Op, Txn};
use floe_storage::wal::WalId;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::Controller;

/// What one collection pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPass {
    /// WAL objects listed (distinct ids over all targets).
    pub listed: usize,
    /// Objects deleted (distinct ids; each from every target listing it).
    pub deleted: usize,
    /// Registry entries of streams deleted.
    pub streams_deleted: usize,
}

impl Controller {
    /// Collect WAL objects every `every` until `stop`, objects younger
    /// than `grace` never (docs/design.md, "Shared WAL objects").
    pub async fn run_wal_gc(
        self: Arc<Self>,
        every: Duration,
        grace: Duration,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.wal_gc_pass(grace).await {
                Ok(p) if p.deleted > 0 || p.streams_deleted > 0 => {
                    tracing::info!(
                        listed = p.listed,
                        deleted = p.deleted,
                        streams_deleted = p.streams_deleted,
                        "deleted WAL objects no partition needs"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "WAL garbage collection failed; retrying at the next pass")
                }
            }
        }
    }

    /// One pass of the WAL garbage collection.
    pub async fn wal_gc_pass(&self, grace: Duration) -> Result<GcPass, MetaError> {
        let m = crate::metrics::metrics();
        let (stream_kvs, _) = self.meta.range(&keys::wal_streams_prefix()).await?;
        let read_ms = floe_common::wall_ms();
        let (partition_kvs, _) = self.meta.range(&keys::partitions_prefix()).await?;
        let mut checkpoints = Vec::new();
        for kv in &partition_kvs {
            if keys::parse_checkpoint(&kv.key).is_some() {
                checkpoints.push(
                    CheckpointRecord::decode(kv.value.clone())
                        .map_err(|e| MetaError::Corrupt(format!("checkpoint: {e}")))?,
                );
            }
        }
        let marks = low_watermarks(&checkpoints);
        // Every target's listing: an object is deleted from each target
        // that holds it; its age is its newest copy's.
        let targets = self.pool.targets().to_vec();
        let mut holders: BTreeMap<WalId, (i64, Vec<usize>)> = BTreeMap::new();
        for (i, t) in targets.iter().enumerate() {
            let mut listing = t.store.list(Some(&"wal".into()));
            while let Some(o) = listing.next().await {
                let o = match o {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::debug!(target_id = %t.id, error = %e, "listing WAL objects failed");
                        break;
                    }
                };
                if let Some(id) = floe_storage::layout::wal_id(&o.location) {
                    let e = holders.entry(id).or_insert((i64::MIN, Vec::new()));
                    e.0 = e.0.max(o.last_modified.timestamp_millis());
                    e.1.push(i);
                }
            }
        }
        let listed: Vec<Listed> = holders
            .iter()
            .map(|(id, (ms, _))| Listed {
                id: *id,
                last_modified_ms: *ms,
            })
            .collect();
        let gone = deletable(&listed, &marks, read_ms, grace.as_millis() as i64);
        let mut pass = GcPass {
            listed: listed.len(),
            ..Default::default()
        };
        for id in &gone {
            let path = floe_storage::layout::wal(*id);
            let mut ok = true;
            for &i in &holders[id].1 {
                if let Err(e) = targets[i].store.delete(&path).await {
                    if !matches!(e, object_store::Error::NotFound { .. }) {
                        tracing::debug!(target_id = %targets[i].id, %path, error = %e, "deleting a WAL object failed");
                        ok = false;
                    }
                }
            }
            if ok {
                pass.deleted += 1;
            }
        }
        m.wal_objects_deleted.inc_by(pass.deleted as u64);
        // The registry: streams wholly before their broker's watermark, or
        // of a broker nothing names, except each broker's last stream.
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        let registered: Vec<(i32, i64)> = stream_kvs
            .iter()
            .filter_map(|kv| keys::parse_wal_stream(&kv.key))
            .collect();
        for (b, s) in &registered {
            let l = last.entry(*b).or_insert(*s);
            *l = (*l).max(*s);
        }
        let mut txn = Txn::new();
        let mut ops = 0;
        for (b, s) in registered {
            let before = match marks.get(&b) {
                Some((stream, _)) => s < *stream,
                None => s < last[&b],
            };
            if before && !wal_objects_remain(&holders, b, s) {
                txn = txn.then(Op::delete(keys::wal_stream(b, s)));
                ops += 1;
                if ops == 64 {
                    self.meta
                        .txn(self.guarded(std::mem::take(&mut txn)))
                        .await?;
                    pass.streams_deleted += ops;
                    ops = 0;
                }
            }
        }
        if ops > 0 {
            self.meta.txn(self.guarded(txn)).await?;
            pass.streams_deleted += ops;
        }
        m.wal_gc_passes.inc();
        Ok(pass)
    }
}

/// Whether a listing showed an object of stream `stream` of `broker` that
/// this pass did not delete.
fn wal_objects_remain(
    holders: &BTreeMap<WalId, (i64, Vec<usize>)>,
    broker: i32,
    stream: i64,
) -> bool {
    // (Deleted ones are still in `holders`: a registry entry goes at the
    // pass after its last object, which keeps the two steps apart.)
    holders
        .range(
            WalId {
                broker,
                stream,
                seq: i64::MIN,
            }..=WalId {
                broker,
                stream,
                seq: i64::MAX,
            },
        )
        .next()
        .is_some()
}

/// (stream, seq): positions compare in stream order.
pub type Position = (i64, i64);

/// Per broker, the least position the checkpoints name in its streams.
pub fn low_watermarks<'a>(
    checkpoints: impl IntoIterator<Item = &'a CheckpointRecord>,
) -> BTreeMap<i32, Position> {
    let mut out: BTreeMap<i32, Position> = BTreeMap::new();
    let mut note = |broker: i32, at: Position| {
        out.entry(broker)
            .and_modify(|p| *p = (*p).min(at))
            .or_insert(at);
    };
    for c in checkpoints {
        if let Some(w) = &c.wal_start {
            note(w.broker_id, (w.stream, w.seq));
        }
        for s in &c.open_segments {
            for chunk in &s.chunks {
                if let Some(w) = &chunk.wal {
                    note(w.broker_id, (w.stream, w.seq));
                }
            }
            // The chunks of its list's pages, by their least positions.
            for w in s.pages.iter().flat_map(|p| &p.wal_low) {
                note(w.broker_id, (w.stream, w.seq));
            }
        }
    }
    out
}

/// A WAL object as a listing shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: WalId,
    pub last_modified_ms: i64,
}

/// The objects that may be deleted: before their broker's watermark (or of
/// a broker no checkpoint names at all), and last modified more than
/// `grace_ms` before `read_ms`, when the checkpoints were read.
pub fn deletable(
    listed: &[Listed],
    watermarks: &BTreeMap<i32, Position>,
    read_ms: i64,
    grace_ms: i64,
) -> Vec<WalId> {
    listed
        .iter()
        .filter(|o| o.last_modified_ms < read_ms.saturating_sub(grace_ms))
        .filter(|o| match watermarks.get(&o.id.broker) {
            Some(w) => (o.id.stream, o.id.seq) < *w,
            None => true,
        })
        .map(|o| o.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_meta::schema::{ChunkRecord, OpenSegmentRecord, WalPositionRecord, WalRefRecord};

    fn chunk_at(broker: i32, stream: i64, seq: i64) -> ChunkRecord {
        ChunkRecord {
            wal: Some(WalRefRecord {
                broker_id: broker,
                stream,
                seq,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn checkpoint(start: Option<(i32, i64, i64)>, chunks: Vec<ChunkRecord>) -> CheckpointRecord {
        CheckpointRecord {
            wal_start: start.map(|(broker_id, stream, seq)| WalPositionRecord {
                broker_id,
                stream,
                seq,
            }),
            open_segments: vec![OpenSegmentRecord {
                chunks,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn obj(broker: i32, stream: i64, seq: i64, last_modified_ms: i64) -> Listed {
        Listed {
            id: WalId {
                broker,
                stream,
                seq,
            },
            last_modified_ms,
        }
    }

    /// A partition moved from broker 1 to broker 2 still names broker 1's
    /// chunks (stream 3, seqs 7 and 9) until its segment is consolidated;
    /// broker 2's partitions name their own. Only what lies before each
    /// broker's least named position, and is past the grace, goes; a
    /// broker no checkpoint names loses everything past the grace.
    #[test]
    fn only_objects_before_every_named_position_and_past_the_grace_go() {
        let moved = checkpoint(Some((2, 0, 4)), vec![chunk_at(1, 3, 9), chunk_at(1, 3, 7)]);
        let local = checkpoint(Some((2, 0, 5)), vec![chunk_at(2, 0, 5)]);
        let idle = checkpoint(Some((1, 4, 0)), vec![]);
        let marks = low_watermarks([&moved, &local, &idle]);
        assert_eq!(marks[&1], (3, 7));
        assert_eq!(marks[&2], (0, 4));

        let (read, grace) = (100_000, 10_000);
        let old = 50_000;
        let listed = [
            obj(1, 2, 40, old),   // an earlier stream: gone
            obj(1, 3, 6, old),    // before the moved partition's chunk: gone
            obj(1, 3, 7, old),    // named: kept
            obj(1, 3, 8, old),    // after a named one: kept
            obj(1, 4, 0, old),    // the idle partition's start: kept
            obj(2, 0, 3, old),    // before broker 2's start: gone
            obj(2, 0, 3, 95_000), // ... but too young: kept
            obj(2, 0, 4, old),
            obj(3, 0, 0, old),    // a broker no checkpoint names: gone
            obj(3, 0, 1, 99_999), // ... unless young
        ];
        let gone = deletable(&listed, &marks, read, grace);
        let ids: Vec<(i32, i64, i64)> = gone.iter().map(|i| (i.broker, i.stream, i.seq)).collect();
        assert_eq!(ids, [(1, 2, 40), (1, 3, 6), (2, 0, 3), (3, 0, 0)]);
    }

    /// A WAL segment whose list is paged names its pages' chunks by their
    /// least positions: a paged chunk of broker 1 (stream 2, seq 5) and
    /// one of broker 3 hold their objects as a listed chunk would; without
    /// the pages' positions the objects would be collected under them.
    #[test]
    fn paged_chunks_hold_their_objects() {
        use floe_meta::schema::ChunkPageRef;
        let mut paged = checkpoint(Some((2, 0, 9)), vec![chunk_at(1, 3, 1)]);
        paged.open_segments[0].pages = vec![
            ChunkPageRef {
                wal_low: vec![
                    WalPositionRecord {
                        broker_id: 1,
                        stream: 2,
                        seq: 5,
                    },
                    WalPositionRecord {
                        broker_id: 3,
                        stream: 0,
                        seq: 7,
                    },
                ],
                ..Default::default()
            },
            ChunkPageRef {
                wal_low: vec![WalPositionRecord {
                    broker_id: 1,
                    stream: 2,
                    seq: 9,
                }],
                ..Default::default()
            },
        ];
        let marks = low_watermarks([&paged]);
        assert_eq!(marks[&1], (2, 5));
        assert_eq!(marks[&2], (0, 9));
        assert_eq!(marks[&3], (0, 7));
        let listed = [
            obj(1, 2, 4, 0),
            obj(1, 2, 5, 0),
            obj(3, 0, 6, 0),
            obj(3, 0, 7, 0),
        ];
        let gone = deletable(&listed, &marks, 100_000, 10_000);
        let ids: Vec<(i32, i64, i64)> = gone.iter().map(|i| (i.broker, i.stream, i.seq)).collect();
        assert_eq!(ids, [(1, 2, 4), (3, 0, 6)]);
    }

    /// A pass over a real store and pool: WAL objects of two brokers, one
    /// partition's checkpoint naming broker 1's stream 0 at seq 3 (a
    /// listed chunk) and stream 1 at seq 1 (its wal_start). Nothing goes
    /// within the grace; past it, what lies before broker 1's watermark
    /// and all of broker 2's (named by nothing) goes from every target;
    /// once the segment is consolidated (the checkpoint lists no chunk)
    /// stream 0 goes, and at the next pass its registry entry; a broker's
    /// last stream stays registered.
    #[tokio::test]
    async fn a_pass_deletes_what_no_checkpoint_needs_from_every_target() {
        use floe_common::{PartitionId, Uuid};
        use floe_meta::schema::WalStreamRecord;
        use floe_meta::MetadataStore;
        use floe_storage::wal::ChunkMeta;
        use floe_storage::wal_stream::{WalConfig, WalStream};
        use floe_storage::{StoragePool, StorageTarget};

        let (_dir, meta) = crate::operations::tests::store().await;
        let meta: Arc<dyn MetadataStore> = Arc::new(meta);
        let targets = (0..3)
            .map(|i| StorageTarget::open(format!("t{i}"), "memory://").unwrap())
            .collect();
        let pool = Arc::new(StoragePool::new(targets, 2, 2).unwrap());
        let p = PartitionId::new(Uuid::from_u128(5), 0);
        let config = WalConfig {
            linger: Duration::from_millis(1),
            ..Default::default()
        };
        for (broker, stream, objects) in [(1, 0, 5), (1, 1, 3), (2, 0, 2)] {
            let record = WalStreamRecord {
                broker_id: broker,
                stream,
                ..Default::default()
            };
            meta.txn(Txn::new().then(Op::put(
                keys::wal_stream(broker, stream),
                record.encode_to_vec(),
            )))
            .await
            .unwrap();
            let w = WalStream::start(pool.clone(), broker, stream, 0, config);
            for i in 0..objects {
                let m = ChunkMeta {
                    partition: p,
                    segment_base: 0,
                    segment_epoch: 1,
                    epoch: 1,
                    base_offset: i,
                    next_offset: i + 1,
                    max_timestamp: 0,
                    batch_count: 1,
                };
                let r = w.append(m, bytes::Bytes::from_static(b"x")).await.unwrap();
                assert_eq!((r.id.stream, r.id.seq), (stream, i));
            }
        }
        let save = |c: CheckpointRecord| {
            let meta = meta.clone();
            async move {
                meta.txn(Txn::new().then(Op::put(keys::checkpoint(p), c.encode_to_vec())))
                    .await
                    .unwrap();
            }
        };
        save(checkpoint(Some((1, 1, 1)), vec![chunk_at(1, 0, 3)])).await;
        let c = Controller::new(meta.clone(), pool.clone());
        let left = |pool: Arc<StoragePool>| async move {
            let mut out = std::collections::BTreeSet::new();
            for t in pool.targets().iter() {
                let listed: Vec<_> = t.store.list(Some(&"wal".into())).collect().await;
                for o in listed {
                    let id = floe_storage::layout::wal_id(&o.unwrap().location).unwrap();
                    out.insert((id.broker, id.stream, id.seq));
                }
            }
            out.into_iter().collect::<Vec<_>>()
        };
        let all = left(pool.clone()).await;
        assert_eq!(all.len(), 10);

        let pass = c.wal_gc_pass(Duration::from_secs(3600)).await.unwrap();
        assert_eq!((pass.listed, pass.deleted), (10, 0), "all within the grace");

        let pass = c.wal_gc_pass(Duration::ZERO).await.unwrap();
        assert_eq!((pass.deleted, pass.streams_deleted), (5, 0));
        assert_eq!(
            left(pool.clone()).await,
            [(1, 0, 3), (1, 0, 4), (1, 1, 0), (1, 1, 1), (1, 1, 2)]
        );

        // Consolidated: the checkpoint names only where the writer stands.
        save(checkpoint(Some((1, 1, 1)), vec![])).await;
        let pass = c.wal_gc_pass(Duration::ZERO).await.unwrap();
        assert_eq!((pass.deleted, pass.streams_deleted), (3, 0));
        assert_eq!(left(pool.clone()).await, [(1, 1, 1), (1, 1, 2)]);
        let pass = c.wal_gc_pass(Duration::ZERO).await.unwrap();
        assert_eq!((pass.deleted, pass.streams_deleted), (0, 1));
        let (kvs, _) = meta.range(&keys::wal_streams_prefix()).await.unwrap();
        let registered: Vec<(i32, i64)> = kvs
            .iter()
            .filter_map(|kv| keys::parse_wal_stream(&kv.key))
            .collect();
        assert_eq!(registered, [(1, 1), (2, 0)], "each broker's last stays");
    }

    /// Positions compare in stream order: a later stream's first object is
    /// past every object of an earlier stream, whatever their seqs.
    #[test]
    fn a_new_stream_is_past_every_object_of_the_old_one() {
        let c = checkpoint(Some((1, 5, 0)), vec![]);
        let marks = low_watermarks([&c]);
        let gone = deletable(&[obj(1, 4, 1_000_000, 0), obj(1, 5, 0, 0)], &marks, 100, 10);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].stream, 4);
    }
}
