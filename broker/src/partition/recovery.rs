//! Recovering, step 2: from the checkpoint to a log ready for writing.
//! Every segment the checkpoint lists as not yet sealed (after a clean
//! release: the previous owner's unsealed tail; after an unclean end: also
//! whatever it wrote since its last checkpoint) becomes a segment to seal in
//! the background. A clean release lists each segment's chunks in the
//! checkpoint, so nothing is read from storage. Otherwise the chunks are
//! recovered from their headers alone: listed on R−W+1 replicas, the
//! contiguous chain from the segment base kept, a fence created at the next
//! chunk key (so an old writer's next chunk can never be created), the end
//! thereby fixed. No data is read or copied here, so a move costs the same
//! for 10 MB or 1 TB. Then a new checkpoint and a fresh open segment.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use floe_common::{Epoch, Offset, PartitionId};
use floe_meta::schema::{
    CheckpointRecord, OpenSegmentRecord, ProducerSnapshotRecord, SegmentRecord, FORMAT,
};
use floe_meta::{keys, Condition, Op, Txn, TxnOutcome};
use floe_protocol::batch::Batches;
use floe_storage::chunk::{self, ChunkKind};
use floe_storage::log::load_chunk;
use floe_storage::log::{ChunkRef, LogState, SealedSegment, SegmentView};
use floe_storage::segment::{SegmentBuilder, DEFAULT_INDEX_INTERVAL};
use floe_storage::{layout, BlockCache, PutOutcome, ReplicaSet, StorageError};
use futures::StreamExt;
use object_store::path::Path;
use prost::Message;

use super::producers::Producers;
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
    /// Recovered segments for the writer to seal in the background.
    pub pending: Vec<PendingSeal>,
    /// Idempotent producers: the checkpoint's snapshot plus every batch
    /// written after it.
    pub producers: Producers,
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
/// fence of ours (or an earlier one) at the next chunk key. Only chunk
/// headers are read (ranged reads, many at once), so this costs a listing
/// and a few dozen bytes per chunk however much data the segment holds.
async fn chain_and_fence(
    id: PartitionId,
    seg: &OpenSegmentRecord,
    replicas: &ReplicaSet,
    epoch: Epoch,
) -> Result<Vec<ChunkRef>, StartError> {
    let prefix = layout::chunk_prefix(id, seg.base_offset, seg.epoch);
    let mut expected = seg.base_offset;
    let mut kept = Vec::new();
    loop {
        let listing = replicas.list(&prefix).await?;
        let candidates: Vec<Path> = listing
            .into_keys()
            .filter(|p| layout::chunk_base(p).is_some_and(|b| b >= expected))
            .collect();
        let mut headers = futures::stream::iter(candidates.into_iter().map(|path| async move {
            let raw = replicas
                .get_range(&path, 0..chunk::HEADER_LEN as u64)
                .await?;
            let (h, _) = chunk::decode_header(path.as_ref(), &raw)?;
            Ok::<_, StorageError>((path, h))
        }))
        .buffered(HEADER_READS_IN_FLIGHT);
        let mut fenced = false;
        while let Some(next) = headers.next().await {
            let (path, h) = next?;
            let base = layout::chunk_base(&path).expect("filtered to chunk keys");
            if base > expected {
                break;
            }
            if h.base_offset != base {
                return Err(StartError::Corrupt(format!(
                    "chunk {path} says it starts at {}",
                    h.base_offset
                )));
            }
            match h.kind {
                ChunkKind::Fence => {
                    fenced = true;
                    break;
                }
                ChunkKind::Data => {
                    kept.push(ChunkRef {
                        base_offset: h.base_offset,
                        next_offset: h.next_offset,
                        max_timestamp: h.max_timestamp,
                        path: Arc::from(path.as_ref()),
                        bytes: h.payload_len as u64,
                    });
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
            PutOutcome::AlreadyExists => {}
        }
    }
}

/// The chunk chain a clean release recorded for `seg`, checked contiguous.
fn listed_chain(id: PartitionId, seg: &OpenSegmentRecord) -> Result<Vec<ChunkRef>, StartError> {
    let mut expected = seg.base_offset;
    let mut out = Vec::with_capacity(seg.chunks.len());
    for c in &seg.chunks {
        if c.base_offset != expected || c.next_offset <= c.base_offset {
            return Err(StartError::Corrupt(format!(
                "segment {}: listed chunk {}..{} where {expected} was expected",
                seg.base_offset, c.base_offset, c.next_offset
            )));
        }
        let path = layout::chunk(id, seg.base_offset, seg.epoch, c.base_offset);
        out.push(ChunkRef {
            base_offset: c.base_offset,
            next_offset: c.next_offset,
            max_timestamp: c.max_timestamp,
            path: Arc::from(path.as_ref()),
            bytes: c.bytes,
        });
        expected = c.next_offset;
    }
    Ok(out)
}

/// Chunk headers read at once during recovery.
const HEADER_READS_IN_FLIGHT: usize = 32;

/// A segment whose end is known but which is not consolidated yet: the
/// writer seals it in the background, readers read its chunks meanwhile.
pub(crate) struct PendingSeal {
    pub record: OpenSegmentRecord,
    pub replicas: ReplicaSet,
    pub chunks: Vec<ChunkRef>,
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
        clean: checkpoint.clean,
        ..Default::default()
    };
    let mut pending: Vec<PendingSeal> = Vec::new();
    let mut empty = Vec::new();
    for seg in &checkpoint.open_segments {
        if sealed.contains_key(&seg.base_offset) {
            continue;
        }
        let replicas = ctx.pool.replica_set(&seg.replica_set)?;
        let chunks = if checkpoint.clean && seg.chunks_listed {
            // A clean release listed the whole chain and wrote nothing after.
            listed_chain(id, seg)?
        } else {
            chain_and_fence(id, seg, &replicas, epoch).await?
        };
        report.segments_recovered += 1;
        report.chunks_recovered += chunks.len();
        match (chunks.first(), chunks.last()) {
            (Some(first), Some(last)) => {
                if first.base_offset != seg.base_offset {
                    return Err(StartError::Corrupt(format!(
                        "segment {} starts at {}",
                        seg.base_offset, first.base_offset
                    )));
                }
                next = next.max(last.next_offset);
                pending.push(PendingSeal {
                    // The list served its purpose; checkpoints stay small.
                    record: OpenSegmentRecord {
                        chunks_listed: false,
                        chunks: Vec::new(),
                        ..seg.clone()
                    },
                    replicas,
                    chunks,
                });
            }
            _ => empty.push((seg.clone(), replicas)),
        }
    }
    // Producer state: the snapshot saved with the checkpoint, then the
    // batches written after it (none after a clean release).
    let snapshot = match ctx.meta.get(&keys::producers(id)).await? {
        Some(kv) => ProducerSnapshotRecord::decode(kv.value)
            .map_err(|e| StartError::Corrupt(e.to_string()))?,
        None => ProducerSnapshotRecord::default(),
    };
    let mut producers = Producers::from_snapshot(&snapshot);
    let now_ms = ctx.clock.now_ms();
    for p in &pending {
        for c in p
            .chunks
            .iter()
            .filter(|c| c.next_offset > snapshot.as_of_offset)
        {
            let payload = load_chunk(&ctx.cache, &p.replicas, c).await?;
            for (_, h) in Batches::new(&payload) {
                if h.base_offset >= snapshot.as_of_offset {
                    producers.record(&h, h.base_offset, now_ms);
                }
            }
        }
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
        ..Default::default()
    };
    // Still-unsealed segments stay listed until the writer seals them.
    let mut open_segments: Vec<OpenSegmentRecord> =
        pending.iter().map(|p| p.record.clone()).collect();
    open_segments.push(open.clone());
    let new_checkpoint = CheckpointRecord {
        format: FORMAT,
        epoch,
        log_start_offset: checkpoint.log_start_offset,
        next_offset: next,
        open_segments,
        clean: false,
        saved_ms: now,
    };
    let txn = Txn::new()
        .when(Condition::ValueEquals(keys::owner(id), owner.clone()))
        .then(Op::put(
            keys::checkpoint(id),
            new_checkpoint.encode_to_vec(),
        ));
    if ctx.meta.txn(txn).await? == TxnOutcome::Mismatch {
        return Err(StartError::NotAssigned(id));
    }
    // Segments that never got a chunk hold only our fence.
    for (seg, replicas) in empty {
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
    for p in &pending {
        state.segments.insert(
            p.record.base_offset,
            SegmentView::Open {
                base_offset: p.record.base_offset,
                epoch: p.record.epoch,
                replicas: p.replicas.clone(),
                chunks: p.chunks.clone(),
            },
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
        tracing::info!(partition = %id, epoch, next_offset = next, unsealed_segments = pending.len(),
            took_ms = report.took_ms, "recovered after a clean release");
    } else {
        tracing::info!(partition = %id, epoch, next_offset = next, segments = report.segments_recovered,
            chunks = report.chunks_recovered, past_checkpoint = report.offsets_past_checkpoint,
            took_ms = report.took_ms, "recovered after an unclean end: fenced, checkpointed");
    }
    Ok(Recovered {
        state,
        checkpoint: new_checkpoint,
        open,
        pending,
        producers,
        report,
    })
}
