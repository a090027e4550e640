//! Recovering, step 2: from the checkpoint to a log ready for writing. After
//! a clean release this is a metadata read. After an unclean end every open
//! segment is recovered: its chunks listed on R−W+1 replicas, the contiguous
//! chain from the segment base kept, a fence created at the next chunk key
//! (so an old writer's next chunk can never be created), the segment sealed
//! at its true end; then a new checkpoint and a fresh open segment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use floe_common::{Epoch, Offset, PartitionId};
use floe_meta::schema::{CheckpointRecord, OpenSegmentRecord, SegmentRecord, FORMAT};
use floe_meta::{keys, Condition, Op, Txn, TxnOutcome};
use floe_storage::chunk::{self, ChunkKind};
use floe_storage::log::{chunk_ref, ChunkRef, LogState, SealedSegment, SegmentView};
use floe_storage::segment::{SegmentBuilder, DEFAULT_INDEX_INTERVAL};
use floe_storage::{layout, BlockCache, PutOutcome, ReplicaSet, StorageError};
use prost::Message;

use super::{PartitionContext, StartError};

/// What recovery found and did, for logs and tests.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// The checkpoint was saved by a clean release: nothing to recover.
    pub clean: bool,
    pub segments_recovered: usize,
    pub chunks_recovered: usize,
    /// Offsets recovered past the checkpoint's next offset.
    pub offsets_past_checkpoint: i64,
    pub next_offset: Offset,
    pub took_ms: u64,
}

pub(crate) struct Recovered {
    pub state: LogState,
    pub checkpoint: CheckpointRecord,
    pub open: OpenSegmentRecord,
    pub report: RecoveryReport,
}

pub(crate) fn sealed_view(
    ctx: &PartitionContext,
    id: PartitionId,
    r: &SegmentRecord,
) -> Result<SealedSegment, StorageError> {
    Ok(SealedSegment {
        base_offset: r.base_offset,
        end_offset: r.end_offset,
        epoch: r.epoch,
        path: Arc::from(layout::segment(id, r.base_offset, r.epoch, r.sealed_by_epoch).as_ref()),
        data_bytes: r.data_bytes,
        object_bytes: r.object_bytes,
        max_timestamp: r.max_timestamp,
        sealed_ms: r.sealed_ms,
        replicas: ctx.pool.replica_set(&r.replica_set)?,
    })
}

/// Write one consolidated segment object from `chunks` (in offset order).
pub(crate) async fn consolidate(
    ctx: &PartitionContext,
    id: PartitionId,
    seg: &OpenSegmentRecord,
    replicas: &ReplicaSet,
    chunks: &[ChunkRef],
    cache: &BlockCache,
    sealer_epoch: Epoch,
) -> Result<SegmentRecord, StorageError> {
    let path = layout::segment(id, seg.base_offset, seg.epoch, sealer_epoch);
    let mut upload = replicas.upload(&path).await?;
    let mut builder = SegmentBuilder::new(seg.base_offset, seg.epoch, DEFAULT_INDEX_INTERVAL);
    for c in chunks {
        let payload = floe_storage::log::load_chunk(cache, replicas, c).await?;
        builder.add(&payload)?;
        upload.write(payload).await?;
    }
    let (tail, summary) = builder.finish();
    upload.write(tail).await?;
    upload.finish().await?;
    Ok(SegmentRecord {
        format: FORMAT,
        base_offset: summary.base_offset,
        end_offset: summary.end_offset,
        epoch: seg.epoch,
        replica_set: replicas.ids(),
        data_bytes: summary.data_bytes,
        object_bytes: summary.object_bytes,
        max_timestamp: summary.max_timestamp,
        sealed_ms: ctx.clock.now_ms(),
        batch_count: summary.batch_count as i64,
        sealed_by_epoch: sealer_epoch,
    })
}

/// Delete every chunk object (and fence) of a segment, in the background.
pub(crate) fn delete_chunks(
    id: PartitionId,
    seg: &OpenSegmentRecord,
    replicas: ReplicaSet,
    cache: BlockCache,
) {
    let prefix = layout::chunk_prefix(id, seg.base_offset, seg.epoch);
    tokio::spawn(async move {
        match replicas.list(&prefix).await {
            Ok(objects) => {
                for path in objects.keys() {
                    cache.invalidate_object(&Arc::from(path.as_ref()));
                    if let Err(e) = replicas.delete(path).await {
                        tracing::warn!(%path, error = %e, "deleting a consolidated chunk failed; it is garbage now");
                    }
                }
            }
            Err(e) => tracing::warn!(%prefix, error = %e, "listing chunks to delete failed"),
        }
    });
}

/// The contiguous chain of committed chunks of an open segment, ended by a
/// fence of ours (or an earlier one) at the next chunk key.
async fn chain_and_fence(
    id: PartitionId,
    seg: &OpenSegmentRecord,
    replicas: &ReplicaSet,
    epoch: Epoch,
    cache: &BlockCache,
) -> Result<Vec<ChunkRef>, StartError> {
    let prefix = layout::chunk_prefix(id, seg.base_offset, seg.epoch);
    let mut expected = seg.base_offset;
    let mut kept = Vec::new();
    let mut listing = replicas.list(&prefix).await?;
    loop {
        let mut fenced = false;
        for path in listing.keys() {
            let Some(base) = layout::chunk_base(path) else {
                continue;
            };
            if base < expected {
                continue;
            }
            if base > expected {
                break;
            }
            let raw = replicas.get(path).await?;
            let (h, payload) = chunk::decode(path.as_ref(), &raw)?;
            match h.kind {
                ChunkKind::Fence => {
                    fenced = true;
                    break;
                }
                ChunkKind::Data => {
                    let r = chunk_ref(path, &h, payload.len() as u64);
                    cache.put_object(r.path.clone(), payload);
                    kept.push(r);
                    expected = h.next_offset;
                }
            }
        }
        if fenced {
            return Ok(kept);
        }
        let fence_key = layout::chunk(id, seg.base_offset, seg.epoch, expected);
        match replicas
            .put_create(&fence_key, chunk::encode_fence(epoch, expected))
            .await?
        {
            PutOutcome::Created => return Ok(kept),
            // An old writer's chunk landed first: it may have been acked,
            // so the chain extends over it; then fence again.
            PutOutcome::AlreadyExists => listing = replicas.list(&prefix).await?,
        }
    }
}

pub(crate) async fn recover(
    ctx: &PartitionContext,
    id: PartitionId,
    epoch: Epoch,
    owner: &Bytes,
) -> Result<Recovered, StartError> {
    let started = Instant::now();
    let checkpoint = match ctx.meta.get(&keys::checkpoint(id)).await? {
        Some(kv) => {
            CheckpointRecord::decode(kv.value).map_err(|e| StartError::Corrupt(e.to_string()))?
        }
        None => CheckpointRecord {
            format: FORMAT,
            clean: true,
            ..Default::default()
        },
    };
    let (kvs, _) = ctx.meta.range(&keys::segments_prefix(id)).await?;
    let mut sealed: BTreeMap<Offset, SegmentRecord> = BTreeMap::new();
    for kv in kvs {
        let r = SegmentRecord::decode(kv.value).map_err(|e| StartError::Corrupt(e.to_string()))?;
        sealed.insert(r.base_offset, r);
    }
    let mut next = sealed
        .values()
        .next_back()
        .map_or(checkpoint.next_offset, |s| {
            s.end_offset.max(checkpoint.next_offset)
        });
    let mut report = RecoveryReport {
        clean: checkpoint.clean && checkpoint.open_segments.is_empty(),
        ..Default::default()
    };
    let mut ops = Vec::new();
    let mut consolidated = Vec::new();
    for seg in &checkpoint.open_segments {
        if sealed.contains_key(&seg.base_offset) {
            continue;
        }
        let replicas = ctx.pool.replica_set(&seg.replica_set)?;
        let chunks = chain_and_fence(id, seg, &replicas, epoch, &ctx.cache).await?;
        report.segments_recovered += 1;
        report.chunks_recovered += chunks.len();
        if let Some(first) = chunks.first() {
            if first.base_offset != seg.base_offset {
                return Err(StartError::Corrupt(format!(
                    "segment {} starts at {}",
                    seg.base_offset, first.base_offset
                )));
            }
            let record = consolidate(ctx, id, seg, &replicas, &chunks, &ctx.cache, epoch).await?;
            next = next.max(record.end_offset);
            ops.push(Op::put(
                keys::segment(id, record.base_offset),
                record.encode_to_vec(),
            ));
            sealed.insert(record.base_offset, record);
        }
        consolidated.push((seg.clone(), replicas));
    }
    report.offsets_past_checkpoint = next - checkpoint.next_offset;
    report.next_offset = next;

    let replicas = ctx.pool.choose_replica_set();
    let now = ctx.clock.now_ms();
    let open = OpenSegmentRecord {
        base_offset: next,
        epoch,
        replica_set: replicas.ids(),
        created_ms: now,
    };
    let new_checkpoint = CheckpointRecord {
        format: FORMAT,
        epoch,
        log_start_offset: checkpoint.log_start_offset,
        next_offset: next,
        open_segments: vec![open.clone()],
        clean: false,
        saved_ms: now,
    };
    let mut txn = Txn::new().when(Condition::ValueEquals(keys::owner(id), owner.clone()));
    for op in ops {
        txn = txn.then(op);
    }
    txn = txn.then(Op::put(
        keys::checkpoint(id),
        new_checkpoint.encode_to_vec(),
    ));
    if ctx.meta.txn(txn).await? == TxnOutcome::Mismatch {
        return Err(StartError::NotAssigned(id));
    }
    for (seg, replicas) in consolidated {
        delete_chunks(id, &seg, replicas, ctx.cache.clone());
    }

    let mut state = LogState {
        log_start_offset: checkpoint.log_start_offset,
        high_watermark: next,
        leader_epoch: epoch,
        segments: BTreeMap::new(),
    };
    for r in sealed.values() {
        state.segments.insert(
            r.base_offset,
            SegmentView::Sealed(Arc::new(sealed_view(ctx, id, r)?)),
        );
    }
    state.segments.insert(
        next,
        SegmentView::Open {
            base_offset: next,
            epoch,
            replicas,
            chunks: Vec::new(),
        },
    );
    report.took_ms = started.elapsed().as_millis() as u64;
    if report.clean {
        tracing::info!(partition = %id, epoch, next_offset = next, "recovered after a clean release (fast path)");
    } else {
        tracing::info!(partition = %id, epoch, next_offset = next, segments = report.segments_recovered,
            chunks = report.chunks_recovered, past_checkpoint = report.offsets_past_checkpoint,
            took_ms = report.took_ms, "recovered after an unclean end: fenced, sealed, checkpointed");
    }
    Ok(Recovered {
        state,
        checkpoint: new_checkpoint,
        open,
        report,
    })
}
