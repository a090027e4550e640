//! The compactor of a partition with `cleanup.policy` compact (issue 21):
//! a background task of the writer, like sealing, over sealed segments
//! below the last stable offset only. It measures how dirty the log is
//! (`min.cleanable.dirty.ratio`, `max.compaction.lag.ms`, tombstones past
//! `delete.retention.ms`), builds the latest offset of every key over the
//! segments old enough to compact (`min.compaction.lag.ms`) in a map of
//! bounded size, and rewrites the segments that lose something — merging
//! neighbours of one epoch up to `segment.bytes` — as new objects on
//! freshly chosen replica sets (offsets kept, gaps normal). Segments are
//! read in windows of whole batches, never whole, at the broker's
//! compaction byte rate. The writer then swaps the records in one metadata
//! transaction conditioned on its lease (`Writer::compact_done`); what a
//! crash or a move leaves behind is never referenced and garbage
//! collection removes it.

use std::sync::Arc;

use bytes::Bytes;
use floe_common::{Epoch, Offset, PartitionId};
use floe_meta::keys;
use floe_meta::schema::SegmentRecord;
use floe_meta::topics::TopicConfig;
use floe_protocol::batch::{BatchHeader, Batches};
use floe_storage::compact::{compact, droppable, index_keys, KeyOffsets, Rules, KEY_ENTRY_BYTES};
use floe_storage::log::{AbortedTxn, SealedSegment};
use floe_storage::segment::{SegmentBuilder, DEFAULT_INDEX_INTERVAL};
use floe_storage::{layout, StorageError};
use object_store::path::Path;
use prost::Message;

use super::PartitionContext;

/// Bytes of batches read at a time (a batch larger than this is read
/// whole).
const WINDOW: u64 = 4 << 20;

/// Segment records one pass may change: its swap is one etcd transaction,
/// and etcd refuses more than 128 operations in one (`--max-txn-ops`).
const MAX_OPS_PER_PASS: usize = 64;

/// Segments merged into one at most.
const MAX_MERGE: usize = 32;

/// Segments rewritten as one: the records to put in place of `olds`.
#[derive(Debug)]
pub(crate) struct Replacement {
    /// The segments replaced, in offset order: (base offset, object path).
    /// The new record takes the first's key; the others' keys go.
    pub olds: Vec<(Offset, Arc<str>)>,
    pub record: SegmentRecord,
    pub kept_records: u64,
    pub dropped_records: u64,
    pub input_bytes: u64,
}

impl Replacement {
    /// The object the replacement wrote.
    pub(crate) fn path(&self, id: PartitionId) -> Path {
        super::recovery::object_path(id, &self.record)
    }
}

/// How dirty a compacted partition's log is, as a pass found it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Dirt {
    /// Bytes of sealed segments never compacted over all sealed bytes.
    pub ratio: f64,
    /// Age of the oldest record never compacted (0: none), in ms.
    pub lag_ms: i64,
}

fn meta_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::corrupt("segment record", e.to_string())
}

async fn pace(ctx: &PartitionContext, bytes: u64) {
    let waited = ctx.compaction_pacer.acquire(bytes).await;
    ctx.metrics
        .compaction_throttled_seconds
        .inc_by(waited.as_secs_f64());
}

/// The whole batches of `s`'s data from byte `pos` (a window of them, or
/// the one batch there when it is larger than a window) and the position
/// after them.
async fn read_batches(
    ctx: &PartitionContext,
    s: &SealedSegment,
    path: &Path,
    pos: u64,
) -> Result<(Bytes, u64), StorageError> {
    let end = s.data_bytes;
    let until = (pos + WINDOW).min(end);
    pace(ctx, until - pos).await;
    let bytes = s.replicas.get_range(path, pos..until).await?;
    let mut it = Batches::new(&bytes);
    it.by_ref().for_each(drop);
    let complete = it.position() as u64;
    if complete > 0 {
        return Ok((bytes.slice(..complete as usize), pos + complete));
    }
    // One batch longer than the window: its length from its header
    // (base offset, then the length of the rest).
    let corrupt = || {
        StorageError::corrupt(
            "segment",
            format!("{path}: no whole batch at byte {pos} of {end}"),
        )
    };
    if bytes.len() < 12 {
        return Err(corrupt());
    }
    let len = i32::from_be_bytes(bytes[8..12].try_into().unwrap());
    let total = 12 + u64::try_from(len).map_err(|_| corrupt())?;
    if total <= 12 || pos + total > end {
        return Err(corrupt());
    }
    pace(ctx, total).await;
    let bytes = s.replicas.get_range(path, pos..pos + total).await?;
    Ok((bytes, pos + total))
}

/// One pass over `sealed` (the partition's sealed segments below its last
/// stable offset, in offset order) at `now_ms` by the writer of `epoch`;
/// nothing to replace when the log is not dirty enough. `hold_last`: the
/// last of them is measured but not compacted (nothing follows it yet).
/// `aborted`: the aborted transactions whose markers are in the log.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    ctx: PartitionContext,
    id: PartitionId,
    epoch: Epoch,
    config: TopicConfig,
    sealed: Vec<Arc<SealedSegment>>,
    hold_last: bool,
    aborted: Vec<(Offset, AbortedTxn)>,
    now_ms: i64,
) -> Result<Vec<Replacement>, StorageError> {
    // The records: which segments were compacted before.
    let mut records = Vec::with_capacity(sealed.len());
    for s in &sealed {
        let kv = ctx
            .meta
            .get(&keys::segment(id, s.base_offset))
            .await
            .map_err(meta_err)?;
        let Some(kv) = kv else {
            return Ok(Vec::new()); // deleted by retention meanwhile
        };
        let r = SegmentRecord::decode(kv.value).map_err(meta_err)?;
        if r.end_offset != s.end_offset {
            return Ok(Vec::new()); // rewritten meanwhile
        }
        records.push(r);
    }
    // The dirt, over every sealed segment.
    let total: u64 = sealed.iter().map(|s| s.data_bytes).sum();
    let dirty: Vec<usize> = (0..sealed.len())
        .filter(|&i| records[i].compactions == 0)
        .collect();
    let dirty_bytes: u64 = dirty.iter().map(|&i| sealed[i].data_bytes).sum();
    let dirt = Dirt {
        ratio: if total == 0 {
            0.0
        } else {
            dirty_bytes as f64 / total as f64
        },
        lag_ms: dirty
            .first()
            .map_or(0, |&i| (now_ms - sealed[i].max_timestamp).max(0)),
    };
    ctx.metrics.compaction_dirt(id, Some(dirt));
    // Only segments older than min.compaction.lag.ms are compacted.
    let limit = sealed.len() - usize::from(hold_last && !sealed.is_empty());
    let eligible: Vec<usize> = (0..limit)
        .take_while(|&i| now_ms - sealed[i].max_timestamp >= config.min_compaction_lag_ms)
        .collect();
    if eligible.is_empty() {
        return Ok(Vec::new());
    }
    let overdue = dirty.first().is_some_and(|&i| {
        eligible.contains(&i) && now_ms - sealed[i].max_timestamp >= config.max_compaction_lag_ms
    });
    let horizon = now_ms.saturating_sub(config.delete_retention_ms);
    // Tombstones a pass kept whose delete.retention.ms has passed since.
    let tombstones_due = |r: &SegmentRecord| {
        let t = r.tombstones_until_ms;
        t > 0 && horizon > t
    };
    let any_dirty_eligible = dirty.iter().any(|i| eligible.contains(i));
    let due = any_dirty_eligible && (dirt.ratio >= config.min_cleanable_dirty_ratio || overdue);
    if !(due || eligible.iter().any(|&i| tombstones_due(&records[i]))) {
        return Ok(Vec::new());
    }
    let started = tokio::time::Instant::now();
    let is_aborted = |h: &BatchHeader| {
        h.is_transactional()
            && aborted.iter().any(|(marker, a)| {
                a.producer_id == h.producer_id
                    && a.first_offset <= h.base_offset
                    && h.base_offset < *marker
            })
    };

    // Pass 1, as Kafka's cleaner: the latest offset of every key over the
    // dirty segments (from the first never compacted), as many as the
    // map's budget holds. The clean segments before them hold no key
    // twice (each pass leaves them so), so only the dirty ones' keys can
    // supersede their records.
    let first_dirty = eligible
        .iter()
        .position(|&i| records[i].compactions == 0)
        .unwrap_or(eligible.len());
    let mut latest = KeyOffsets::new();
    let max_keys = (ctx.config.compaction_buffer_bytes as usize / KEY_ENTRY_BYTES).max(1024);
    let mut indexed = first_dirty;
    for (k, &i) in eligible.iter().enumerate().skip(first_dirty) {
        let s = &sealed[i];
        let path = Path::from(s.path.as_ref());
        let mut pos = 0;
        while pos < s.data_bytes {
            let (bytes, next) = read_batches(&ctx, s, &path, pos).await?;
            index_keys(&bytes, &mut latest, &is_aborted)?;
            pos = next;
        }
        indexed = k + 1;
        if latest.len() >= max_keys {
            break;
        }
    }
    // Which clean segments the map supersedes records of (read, not
    // rewritten, when it supersedes none).
    let mut superseded = vec![0u64; indexed];
    if !latest.is_empty() {
        for (k, &i) in eligible.iter().enumerate().take(first_dirty) {
            let s = &sealed[i];
            let path = Path::from(s.path.as_ref());
            let mut pos = 0;
            while pos < s.data_bytes {
                let (bytes, next) = read_batches(&ctx, s, &path, pos).await?;
                superseded[k] += droppable(&bytes, &latest, &is_aborted)?;
                pos = next;
            }
        }
    }

    // What to rewrite: segments never compacted, holding superseded
    // records or tombstones past their horizon; small neighbours of one
    // epoch merged (up to segment.bytes, and not across an epoch change,
    // which OffsetForLeaderEpoch reads from segment boundaries).
    let needs = |k: usize| {
        let r = &records[eligible[k]];
        r.compactions == 0 || superseded[k] > 0 || tombstones_due(r)
    };
    let cap = config.segment_bytes.max(1);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut cur_bytes = 0;
    let worth = |g: &[usize]| g.len() >= 2 || g.iter().any(|&k| needs(k));
    for k in 0..indexed {
        let s = &sealed[eligible[k]];
        let joinable = needs(k) || s.data_bytes < cap / 4;
        let fits = cur.first().is_some_and(|&f| {
            cur_bytes + s.data_bytes <= cap
                && cur.len() < MAX_MERGE
                && sealed[eligible[f]].epoch == s.epoch
        });
        if joinable && fits {
            cur.push(k);
            cur_bytes += s.data_bytes;
            continue;
        }
        if worth(&cur) {
            groups.push(std::mem::take(&mut cur));
        }
        cur = if joinable { vec![k] } else { Vec::new() };
        cur_bytes = if joinable { s.data_bytes } else { 0 };
    }
    if worth(&cur) {
        groups.push(cur);
    }
    let mut ops = 0;
    groups.retain(|g| {
        ops += g.len();
        ops <= MAX_OPS_PER_PASS
    });

    // Pass 2: each group rewritten on a fresh replica set, window by
    // window.
    let rules = Rules {
        tombstone_horizon_ms: horizon,
    };
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let olds: Vec<&SegmentRecord> = g.iter().map(|&k| &records[eligible[k]]).collect();
        let (first, last) = (olds[0], olds[olds.len() - 1]);
        let generation = olds.iter().map(|r| r.compactions).max().unwrap_or(0) + 1;
        let replicas = ctx
            .pool
            .choose_replica_set_for(&[], config.replicas, config.write_quorum);
        let path = layout::compacted_segment(
            id,
            first.base_offset,
            first.epoch,
            first.sealed_by_epoch,
            generation,
            epoch,
        );
        let mut builder = SegmentBuilder::compacted(
            first.base_offset,
            last.end_offset,
            first.epoch,
            DEFAULT_INDEX_INTERVAL,
        );
        let mut upload = replicas.upload(&path).await?;
        let (mut kept, mut dropped, mut input) = (0, 0, 0);
        let mut tombstones_until = -1;
        for &k in &g {
            let s = &sealed[eligible[k]];
            let from = Path::from(s.path.as_ref());
            let mut pos = 0;
            while pos < s.data_bytes {
                let (bytes, next) = read_batches(&ctx, s, &from, pos).await?;
                let c = compact(&bytes, &latest, rules, &is_aborted)?;
                builder.add(&c.data)?;
                if !c.data.is_empty() {
                    upload.write(c.data).await?;
                }
                kept += c.kept_records;
                dropped += c.dropped_records;
                tombstones_until = tombstones_until.max(c.tombstones_until_ms);
                pos = next;
            }
            input += s.data_bytes;
        }
        let (tail, summary) = builder.finish();
        upload.write(tail).await?;
        upload.finish().await?;
        out.push(Replacement {
            olds: g
                .iter()
                .map(|&k| {
                    let s = &sealed[eligible[k]];
                    (s.base_offset, s.path.clone())
                })
                .collect(),
            record: SegmentRecord {
                end_offset: last.end_offset,
                replica_set: replicas.ids(),
                data_bytes: summary.data_bytes,
                object_bytes: summary.object_bytes,
                max_timestamp: if summary.batch_count > 0 {
                    summary.max_timestamp
                } else {
                    olds.iter().map(|r| r.max_timestamp).max().unwrap_or(-1)
                },
                sealed_ms: olds.iter().map(|r| r.sealed_ms).max().unwrap_or(0),
                batch_count: summary.batch_count as i64,
                aborted: olds.iter().flat_map(|r| r.aborted.clone()).collect(),
                compactions: generation,
                tombstones_until_ms: tombstones_until.max(0),
                compacted_by_epoch: epoch,
                ..first.clone()
            },
            kept_records: kept,
            dropped_records: dropped,
            input_bytes: input,
        });
    }
    ctx.metrics
        .compaction_seconds
        .inc_by(started.elapsed().as_secs_f64());
    Ok(out)
}
