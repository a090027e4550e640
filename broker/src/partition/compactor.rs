//! The compactor of a partition with `cleanup.policy` compact (issue 21):
//! a background task of the writer, like sealing, over sealed segments only.
//! It decides from the segments' records whether the log is dirty enough
//! (`min.cleanable.dirty.ratio`, `max.compaction.lag.ms`), builds the
//! latest offset of every key over the segments old enough to compact
//! (`min.compaction.lag.ms`), and writes each as a new segment object on a
//! freshly chosen replica set (offsets kept, gaps normal). The writer then
//! swaps the records in one metadata transaction conditioned on its lease
//! (`Writer::compact_done`); what a crash or a move leaves behind is never
//! referenced and garbage collection removes it.

use std::sync::Arc;

use floe_common::{Offset, PartitionId};
use floe_meta::keys;
use floe_meta::schema::SegmentRecord;
use floe_meta::topics::TopicConfig;
use floe_protocol::batch::BatchHeader;
use floe_storage::compact::{compact, index_keys, KeyOffsets, Rules};
use floe_storage::log::{AbortedTxn, SealedSegment};
use floe_storage::segment::{SegmentBuilder, DEFAULT_INDEX_INTERVAL};
use floe_storage::{layout, StorageError};
use prost::Message;

use super::PartitionContext;

/// A sealed segment rewritten: the record to put in place of the one
/// whose object is `old_path`.
#[derive(Debug)]
pub(crate) struct Replacement {
    pub old_path: Arc<str>,
    pub record: SegmentRecord,
    pub kept_records: u64,
    pub dropped_records: u64,
    pub input_bytes: u64,
}

fn meta_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::corrupt("segment record", e.to_string())
}

/// One pass over `sealed` (the partition's sealed segments in offset
/// order) at `now_ms`; nothing when the log is not dirty enough. `aborted`:
/// the aborted transactions whose markers are in those segments.
pub(crate) async fn run(
    ctx: PartitionContext,
    id: PartitionId,
    config: TopicConfig,
    sealed: Vec<Arc<SealedSegment>>,
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
        records.push(SegmentRecord::decode(kv.value).map_err(meta_err)?);
    }
    // Only segments older than min.compaction.lag.ms are compacted.
    let eligible: Vec<usize> = (0..sealed.len())
        .take_while(|&i| now_ms - sealed[i].max_timestamp >= config.min_compaction_lag_ms)
        .collect();
    if eligible.is_empty() {
        return Ok(Vec::new());
    }
    let total: u64 = eligible.iter().map(|&i| sealed[i].data_bytes).sum();
    let dirty: Vec<usize> = eligible
        .iter()
        .copied()
        .filter(|&i| records[i].compactions == 0)
        .collect();
    let dirty_bytes: u64 = dirty.iter().map(|&i| sealed[i].data_bytes).sum();
    let overdue = dirty
        .iter()
        .any(|&i| now_ms - sealed[i].max_timestamp >= config.max_compaction_lag_ms);
    // Tombstones a pass kept whose delete.retention.ms has passed since.
    let tombstones_due = eligible.iter().any(|&i| {
        let t = records[i].tombstones_until_ms;
        t > 0 && now_ms.saturating_sub(config.delete_retention_ms) > t
    });
    let ratio = if total == 0 {
        0.0
    } else {
        dirty_bytes as f64 / total as f64
    };
    let due = !dirty.is_empty() && (ratio >= config.min_cleanable_dirty_ratio || overdue);
    if !(due || tombstones_due) {
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let is_aborted = |h: &BatchHeader| {
        h.is_transactional()
            && aborted.iter().any(|(marker, a)| {
                a.producer_id == h.producer_id
                    && a.first_offset <= h.base_offset
                    && h.base_offset < *marker
            })
    };
    // Pass 1: the latest offset of every key.
    let mut data = Vec::with_capacity(eligible.len());
    let mut latest = KeyOffsets::new();
    for &i in &eligible {
        let s = &sealed[i];
        let path = object_store::path::Path::from(s.path.as_ref());
        let bytes = if s.data_bytes == 0 {
            // Compacted empty before.
            bytes::Bytes::new()
        } else {
            s.replicas.get_range(&path, 0..s.data_bytes).await?
        };
        index_keys(&bytes, &mut latest, &is_aborted)?;
        data.push(bytes);
    }
    // Pass 2: each segment rewritten on a fresh replica set.
    let rules = Rules {
        tombstone_horizon_ms: now_ms.saturating_sub(config.delete_retention_ms),
    };
    let mut out = Vec::new();
    for (k, &i) in eligible.iter().enumerate() {
        let s = &sealed[i];
        let old = &records[i];
        let c = compact(&data[k], &latest, rules, &is_aborted)?;
        let generation = old.compactions + 1;
        let replicas = ctx
            .pool
            .choose_replica_set_for(&[], config.replicas, config.write_quorum);
        let path = layout::compacted_segment(
            id,
            old.base_offset,
            old.epoch,
            old.sealed_by_epoch,
            generation,
        );
        let mut builder = SegmentBuilder::compacted(
            old.base_offset,
            old.end_offset,
            old.epoch,
            DEFAULT_INDEX_INTERVAL,
        );
        builder.add(&c.data)?;
        let (tail, summary) = builder.finish();
        let mut upload = replicas.upload(&path).await?;
        upload.write(c.data.clone()).await?;
        upload.write(tail).await?;
        upload.finish().await?;
        out.push(Replacement {
            old_path: s.path.clone(),
            record: SegmentRecord {
                replica_set: replicas.ids(),
                data_bytes: summary.data_bytes,
                object_bytes: summary.object_bytes,
                max_timestamp: if summary.batch_count > 0 {
                    summary.max_timestamp
                } else {
                    old.max_timestamp
                },
                batch_count: summary.batch_count as i64,
                compactions: generation,
                tombstones_until_ms: c.tombstones_until_ms.max(0),
                ..old.clone()
            },
            kept_records: c.kept_records,
            dropped_records: c.dropped_records,
            input_bytes: s.data_bytes,
        });
    }
    ctx.metrics
        .compaction_seconds
        .inc_by(started.elapsed().as_secs_f64());
    Ok(out)
}
