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
use tokio::time::Instant;
use tracing::Instrument;

use bytes::Bytes;
use floe_common::{Epoch, Offset, PartitionId};
use floe_meta::schema::{
    CheckpointRecord, OpenSegmentRecord, ProducerSnapshotRecord, SegmentRecord, FORMAT,
};
use floe_meta::{keys, Condition, Op, Txn, TxnOutcome};
use floe_protocol::batch::Batches;
use floe_storage::chunk;
use floe_storage::chunk_replicas::{self, Settled};
use floe_storage::log::load_chunk;
use floe_storage::log::{ChunkRef, LogState, SealedSegment, SegmentView};
use floe_storage::segment::{SegmentBuilder, DEFAULT_INDEX_INTERVAL};
use floe_storage::{layout, wal_recovery, BlockCache, ReplicaSet, StorageError, StoragePool};
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
    /// Where the time went: reading the metadata store, settling the open
    /// segments' chains on storage (listings, headers, fences), rebuilding
    /// producer state from the chunks past its snapshot, saving the new
    /// checkpoint.
    pub meta_ms: u64,
    pub chains_ms: u64,
    pub producers_ms: u64,
    pub save_ms: u64,
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
    /// Transactions: those open at the checkpoint, then every batch and
    /// marker written after it.
    pub txns: super::txn::Txns,
    pub report: RecoveryReport,
}

/// The object a sealed segment's record names (as sealed, or as its
/// last compaction wrote it).
pub(crate) fn object_path(id: PartitionId, r: &SegmentRecord) -> object_store::path::Path {
    layout::compacted_segment(
        id,
        r.base_offset,
        r.epoch,
        r.sealed_by_epoch,
        r.compactions,
        r.compacted_by_epoch,
    )
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
        path: Arc::from(object_path(id, r).as_ref()),
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
    // A window of chunks at a time: chunks in WAL objects are read
    // together per object when the cache lacks them.
    for window in chunks.chunks(CONSOLIDATE_WINDOW) {
        for payload in floe_storage::log::load_chunks(cache, replicas, window).await? {
            builder.add(&payload)?;
            upload.write(payload).await?;
        }
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
        // The writer adds the segment's aborted transactions when it
        // records the seal.
        aborted: Vec::new(),
        compactions: 0,
        tombstones_until_ms: 0,
        compacted_by_epoch: 0,
    })
}

/// Delete every chunk object (and fence) of a segment, in the background.
/// What cannot be deleted now (a target refusing) sets `gc_soon`: the
/// partition's garbage collection removes it later.
pub(crate) fn delete_chunks(
    id: PartitionId,
    seg: &OpenSegmentRecord,
    replicas: ReplicaSet,
    cache: BlockCache,
    gc_soon: Arc<std::sync::atomic::AtomicBool>,
) {
    let prefix = layout::chunk_prefix(id, seg.base_offset, seg.epoch);
    tokio::spawn(async move {
        match replicas.list(&prefix).await {
            Ok(objects) => {
                let mut failed = 0;
                let mut last = None;
                for path in objects.keys() {
                    cache.invalidate_object(&Arc::from(path.as_ref()));
                    if let Err(e) = replicas.delete(path).await {
                        failed += 1;
                        last = Some(e);
                    }
                }
                if let Some(e) = last {
                    gc_soon.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(%prefix, failed, error = %e, "deleting consolidated chunks failed on some replica; garbage collection will remove them");
                }
            }
            Err(e) => {
                gc_soon.store(true, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(%prefix, error = %e, "listing chunks to delete failed; garbage collection will remove them")
            }
        }
    });
}

/// The contiguous chain of chunks of an open segment, up to `limit` (the
/// next segment's base: a roll or a switch ended this one there), ended by
/// fences where no writer can ever complete a chunk. Offsets below
/// `committed_below` (the checkpoint's next offset) were acked, so those
/// chunks are found from each replica's listing and one header read each
/// (ranged, many at once, never taking a fence for the end) and brought back
/// to W copies. Past it, each key is settled on every replica
/// ([`chunk_replicas::settle_deferring_copies`]): data seen anywhere is
/// kept, never fenced; the chain ends only where R−W+1 replicas hold a
/// fence; if too few replicas answer to decide, recovery waits (an error
/// the caller retries). No payload is read: chunks short of W copies (or
/// with a fence beside the data) come back as repairs, which copy them
/// after recovery, in the background, so that a storage fault during
/// recovery costs the partition no extra seconds.
async fn chain_and_fence(
    id: PartitionId,
    seg: &OpenSegmentRecord,
    replicas: &ReplicaSet,
    epoch: Epoch,
    committed_below: Offset,
    limit: Offset,
) -> Result<(Vec<ChunkRef>, Vec<ChunkRepair>), StartError> {
    let prefix = layout::chunk_prefix(id, seg.base_offset, seg.epoch);
    let w = replicas.write_quorum();
    let mut expected = seg.base_offset;
    let mut kept = Vec::new();
    let chunk_ref = |path: &Path, h: &chunk::ChunkHeader| ChunkRef {
        base_offset: h.base_offset,
        next_offset: h.next_offset,
        max_timestamp: h.max_timestamp,
        path: Arc::from(path.as_ref()),
        bytes: h.payload_len as u64,
        wal: None,
    };

    // Every replica's listing, then headers many at a time: the acked part
    // (below `committed_below`), then on through every key the listings show
    // with data on W replicas (in the log whatever the others hold).
    let acked_end = committed_below.min(limit);
    let listings = replicas.list_each(&prefix).await;
    let answered = listings.iter().filter(|l| l.is_ok()).count();
    if answered < replicas.read_quorum() {
        let why = listings
            .iter()
            .find_map(|l| l.as_ref().err())
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(StartError::Storage(StorageError::Unavailable(format!(
            "listing {prefix}: {answered} replicas answered, {} needed: {why}",
            replicas.read_quorum()
        ))));
    }
    // Key → which listed replicas hold data there (a fence is header-only),
    // and which hold a fence.
    let mut holders: BTreeMap<Offset, (Path, Vec<bool>)> = BTreeMap::new();
    let mut fenced: BTreeMap<Offset, Vec<usize>> = BTreeMap::new();
    for (i, l) in listings.iter().enumerate() {
        let Ok(objects) = l else { continue };
        for (path, size) in objects {
            let Some(b) = layout::chunk_base(path) else {
                continue;
            };
            if b < expected || b >= limit {
                continue;
            }
            let e = holders
                .entry(b)
                .or_insert_with(|| (path.clone(), vec![false; listings.len()]));
            e.1[i] = *size > chunk::HEADER_LEN as u64;
            if *size == chunk::HEADER_LEN as u64 {
                fenced.entry(b).or_default().push(i);
            }
        }
    }
    holders.retain(|_, (_, on)| on.iter().any(|d| *d));
    let copies_of = |b: Offset| {
        holders
            .get(&b)
            .map_or(0, |(_, on)| on.iter().filter(|d| **d).count())
    };
    let wanted: Vec<(Offset, Path)> = holders
        .iter()
        .map(|(b, (path, _))| (*b, path.clone()))
        .collect();
    let mut headers = futures::stream::iter(wanted.into_iter().map(|(b, path)| async move {
        let h = chunk_replicas::read_header(replicas, &path, b).await?;
        Ok::<_, StorageError>((b, path, h))
    }))
    .buffered(HEADER_READS_IN_FLIGHT);
    while expected < limit && (expected < acked_end || copies_of(expected) >= w) {
        let Some(next) = headers.next().await else {
            break;
        };
        let (b, path, h) = next?;
        if b < expected {
            continue;
        }
        if b > expected {
            break;
        }
        if h.next_offset <= expected {
            return Err(StartError::Corrupt(format!(
                "chunk {path} says {}..{}",
                h.base_offset, h.next_offset
            )));
        }
        kept.push(chunk_ref(&path, &h));
        expected = h.next_offset;
    }
    drop(headers);
    if expected < acked_end {
        let key = layout::chunk(id, seg.base_offset, seg.epoch, expected);
        return Err(if answered < replicas.targets().len() {
            // The replicas that hold it may be the ones not answering.
            StartError::Storage(StorageError::Unavailable(format!(
                "acked chunk {key} not found on the {answered} replicas that answered"
            )))
        } else {
            StartError::Corrupt(format!(
                "acked chunk {key} is on no replica (the checkpoint says offsets below {committed_below} were acked)"
            ))
        });
    }
    // Back to W copies, and no fence beside data: after recovery, in the
    // background (the chunks are durable where they are; copying hundreds
    // of them must not keep the partition unwritable).
    let mut repairs = Vec::new();
    for c in &kept {
        let (path, on) = &holders[&c.base_offset];
        let have = on.iter().filter(|d| **d).count();
        let fences = fenced.get(&c.base_offset).map_or(&[][..], |f| &f[..]);
        if have >= w && fences.is_empty() {
            continue;
        }
        let mut to: Vec<usize> = fences.to_vec();
        let mut would_have = have;
        for i in 0..on.len() {
            if would_have >= w {
                break;
            }
            if !on[i] && listings[i].is_ok() && !to.contains(&i) {
                to.push(i);
                would_have += 1;
            }
        }
        if !to.is_empty() {
            repairs.push(ChunkRepair {
                path: path.clone(),
                base: c.base_offset,
                to,
            });
        }
    }

    // The uncertain edge: keys some listing shows data at (a chunk short of
    // W copies where it can be seen, e.g. written while a target refused
    // writes and now another is unreachable) are settled many at once, in
    // order, as long as they continue the chain. Every such key holds data,
    // so settling one never writes a fence; one past the true end is only
    // copied forward and stays outside the chain.
    let listed_edge: Vec<(Offset, Path)> = holders
        .range(expected..)
        .map(|(b, (path, _))| (*b, path.clone()))
        .collect();
    let mut settled = futures::stream::iter(listed_edge.into_iter().map(|(b, path)| async move {
        let fence = chunk::encode_fence(epoch, b);
        (
            b,
            path.clone(),
            chunk_replicas::settle_deferring_copies(replicas, &path, b, fence).await,
        )
    }))
    .buffered(SETTLES_IN_FLIGHT);
    while expected < limit {
        let Some((b, path, outcome)) = settled.next().await else {
            break;
        };
        if b != expected {
            break;
        }
        let (outcome, lacking) = outcome?;
        match outcome {
            Settled::InLog(h) => {
                kept.push(chunk_ref(&path, &h));
                expected = h.next_offset;
                if !lacking.is_empty() {
                    repairs.push(ChunkRepair {
                        path,
                        base: b,
                        to: lacking,
                    });
                }
            }
            // Decided otherwise (an end), or undecided: the key-by-key walk
            // below looks at it again and says why.
            _ => break,
        }
    }
    drop(settled);

    // Then key by key, on every replica, until the end is fixed.
    while expected < limit {
        let key = layout::chunk(id, seg.base_offset, seg.epoch, expected);
        let (outcome, lacking) = chunk_replicas::settle_deferring_copies(
            replicas,
            &key,
            expected,
            chunk::encode_fence(epoch, expected),
        )
        .await?;
        match outcome {
            Settled::InLog(h) => {
                kept.push(chunk_ref(&key, &h));
                if !lacking.is_empty() {
                    repairs.push(ChunkRepair {
                        path: key,
                        base: expected,
                        to: lacking,
                    });
                }
                expected = h.next_offset;
            }
            Settled::End => break,
            Settled::Undecided(why) => {
                return Err(StartError::Storage(StorageError::Unavailable(format!(
                    "cannot decide where segment {} ends: {why}",
                    seg.base_offset
                ))))
            }
        }
    }
    Ok((kept, repairs))
}

/// A kept chunk some replicas should hold and do not (or hold a fence).
#[derive(Clone, Debug)]
pub(crate) struct ChunkRepair {
    path: Path,
    base: Offset,
    /// Replica indexes to write the data to.
    to: Vec<usize>,
}

/// Copy recovered chunks to the replicas that lack them (8 at once);
/// returns the copies made. Failures are logged: the chunk is durable on
/// the replicas it is on, and the seal rewrites it into a segment on W.
async fn repair_chunks(replicas: ReplicaSet, repairs: Vec<ChunkRepair>) -> usize {
    let done = futures::stream::iter(repairs.into_iter().map(|r| {
        let replicas = replicas.clone();
        async move {
            let raw = match chunk_replicas::read(&replicas, &r.path, r.base).await {
                Ok((_, _, raw)) => raw,
                Err(e) => {
                    tracing::warn!(path = %r.path, error = %e, "reading a chunk to re-replicate it failed");
                    return 0;
                }
            };
            let mut n = 0;
            for i in r.to {
                let t = &replicas.targets()[i];
                match chunk_replicas::overwrite(t, &r.path, raw.clone()).await {
                    Ok(_) => n += 1,
                    Err(e) => {
                        tracing::warn!(target_id = %t.id, path = %r.path, error = %e, "re-replicating a recovered chunk failed")
                    }
                }
            }
            n
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<usize>>()
    .await;
    done.into_iter().sum()
}

/// The chunk chain a clean release recorded for `seg`, checked contiguous.
fn listed_chain(
    pool: &StoragePool,
    id: PartitionId,
    seg: &OpenSegmentRecord,
) -> Result<Vec<ChunkRef>, StartError> {
    let mut expected = seg.base_offset;
    let mut out = Vec::with_capacity(seg.chunks.len());
    for c in &seg.chunks {
        if c.base_offset != expected || c.next_offset <= c.base_offset {
            return Err(StartError::Corrupt(format!(
                "segment {}: listed chunk {}..{} where {expected} was expected",
                seg.base_offset, c.base_offset, c.next_offset
            )));
        }
        if let Some(r) = crate::wal::listed_chunk(pool, c)? {
            out.push(r);
        } else {
            let path = layout::chunk(id, seg.base_offset, seg.epoch, c.base_offset);
            out.push(ChunkRef {
                base_offset: c.base_offset,
                next_offset: c.next_offset,
                max_timestamp: c.max_timestamp,
                path: Arc::from(path.as_ref()),
                bytes: c.bytes,
                wal: None,
            });
        }
        expected = c.next_offset;
    }
    Ok(out)
}

/// Walk the previous writer's WAL streams from the checkpoint's
/// `wal_start` on (docs/design.md, "Shared WAL objects", unclean end),
/// fencing each at its first absent object, and keep this partition's
/// chunks of the checkpoint's epoch by base offset. A chunk found twice
/// (handed in again after its first stream died) keeps the later copy.
async fn scan_wal(
    ctx: &PartitionContext,
    id: PartitionId,
    checkpoint: &CheckpointRecord,
) -> Result<BTreeMap<Offset, ChunkRef>, StartError> {
    let Some(start) = checkpoint.wal_start else {
        return Err(StartError::Corrupt(
            "a checkpoint with WAL segments names no wal_start".into(),
        ));
    };
    let streams = crate::wal::streams(&*ctx.meta, start.broker_id).await?;
    // The partition's chunks of this epoch went to streams of one broker
    // session: the one that opened `wal_start`'s stream (it and the
    // streams it opened after a stream died). A later session of the same
    // broker id (a new process, or the same after its lease lapsed) never
    // wrote this epoch, and its streams are alive: scanning them would
    // fence a live writer for nothing.
    let session = streams
        .iter()
        .find(|s| s.stream == start.stream)
        .map(|s| s.session);
    let mut found = BTreeMap::new();
    for s in streams
        .iter()
        .filter(|s| s.stream >= start.stream && session.is_none_or(|x| s.session == x))
    {
        let from = if s.stream == start.stream {
            start.seq
        } else {
            s.first_seq
        };
        let scan = wal_recovery::scan_and_fence(
            &ctx.pool,
            ctx.pool.write_quorum(),
            start.broker_id,
            s.stream,
            from,
            |e| e.meta.partition == id && e.meta.epoch == checkpoint.epoch,
        )
        .await?;
        for c in scan.chunks {
            let replicas = ctx.pool.replica_set(&c.holders)?;
            found.insert(
                c.entry.meta.base_offset,
                crate::wal::wal_chunk(c.id, &c.entry, replicas),
            );
        }
    }
    Ok(found)
}

/// A WAL segment's chain after an unclean end: the chunks its checkpoint
/// listed (committed then), continued by those the scan found, from the
/// segment base while the offsets follow on, up to `limit`.
fn wal_chain(
    pool: &StoragePool,
    id: PartitionId,
    seg: &OpenSegmentRecord,
    found: &BTreeMap<Offset, ChunkRef>,
    limit: Offset,
) -> Result<Vec<ChunkRef>, StartError> {
    let mut out = listed_chain(pool, id, seg)?;
    let mut expected = out.last().map_or(seg.base_offset, |c| c.next_offset);
    while expected < limit {
        match found.get(&expected) {
            Some(c) if c.next_offset > c.base_offset => {
                out.push(c.clone());
                expected = c.next_offset;
            }
            _ => break,
        }
    }
    Ok(out)
}

/// Chunks a seal loads at once (read together per WAL object when not
/// cached).
const CONSOLIDATE_WINDOW: usize = 64;

/// Keys of the uncertain edge settled at once during recovery.
const SETTLES_IN_FLIGHT: usize = 16;

/// Chunks read at once to rebuild producer state during recovery.
const CHUNK_READS_IN_FLIGHT: usize = 32;

/// Chunk headers read at once during recovery (ranged GETs of 52 bytes:
/// cheap for any store, and latency-bound on S3).
const HEADER_READS_IN_FLIGHT: usize = 128;

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
    config: &crate::config::TopicConfig,
) -> Result<Recovered, StartError> {
    let started = Instant::now();
    let mut checkpoint = match ctx.meta.get(&keys::checkpoint(id)).await? {
        Some(kv) => {
            CheckpointRecord::decode(kv.value).map_err(|e| StartError::Corrupt(e.to_string()))?
        }
        None => CheckpointRecord {
            format: FORMAT,
            clean: true,
            ..Default::default()
        },
    };
    // A WAL segment's list from its base: its pages, then the rest.
    for seg in checkpoint.open_segments.iter_mut() {
        crate::wal::page_in(&*ctx.meta, id, seg)
            .await
            .map_err(|e| match e {
                crate::wal::PageError::Metadata(e) => StartError::from(e),
                crate::wal::PageError::Corrupt(why) => StartError::Corrupt(why),
            })?;
    }
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
    report.meta_ms = started.elapsed().as_millis() as u64;
    let mut pending: Vec<PendingSeal> = Vec::new();
    let mut empty = Vec::new();
    let mut to_repair: Vec<(ReplicaSet, Vec<ChunkRepair>)> = Vec::new();
    let mut open_segments: Vec<&OpenSegmentRecord> = checkpoint
        .open_segments
        .iter()
        .filter(|s| !sealed.contains_key(&s.base_offset))
        .collect();
    open_segments.sort_by_key(|s| s.base_offset);
    // Shared WAL layout after an unclean end: the chunks written since the
    // checkpoint are in the old writer's WAL streams from `wal_start` on.
    let mut wal_found: Option<BTreeMap<Offset, ChunkRef>> = None;
    for (i, seg) in open_segments.iter().enumerate() {
        // A roll or a switch ended this segment where the next one starts.
        let limit = open_segments
            .get(i + 1)
            .map_or(Offset::MAX, |n| n.base_offset);
        let replicas = ctx.pool.replica_set(&seg.replica_set)?;
        let chunks = if checkpoint.clean && seg.chunks_listed {
            // A clean release listed the whole chain and wrote nothing after.
            listed_chain(&ctx.pool, id, seg)?
        } else if seg.wal {
            if wal_found.is_none() {
                let scan_started = Instant::now();
                let found = scan_wal(ctx, id, &checkpoint)
                    .instrument(tracing::info_span!("recovery.wal_scan"))
                    .await?;
                tracing::info!(partition = %id, chunks = found.len(), took_ms = scan_started.elapsed().as_millis() as u64,
                    "scanned the previous writer's WAL streams");
                wal_found = Some(found);
            }
            wal_chain(
                &ctx.pool,
                id,
                seg,
                wal_found.as_ref().expect("scanned"),
                limit,
            )?
        } else {
            let (chunks, repairs) =
                chain_and_fence(id, seg, &replicas, epoch, checkpoint.next_offset, limit)
                    .instrument(tracing::info_span!(
                        "recovery.chain_and_fence",
                        segment = seg.base_offset
                    ))
                    .await?;
            if !repairs.is_empty() {
                to_repair.push((replicas.clone(), repairs));
            }
            chunks
        };
        report.segments_recovered += 1;
        report.chunks_recovered += chunks.len();
        let end = chunks.last().map_or(seg.base_offset, |c| c.next_offset);
        let chunks_empty = chunks.is_empty();
        let replicas_for_delete = replicas.clone();
        if let Some(first) = chunks.first() {
            if first.base_offset != seg.base_offset {
                return Err(StartError::Corrupt(format!(
                    "segment {} starts at {}",
                    seg.base_offset, first.base_offset
                )));
            }
            next = next.max(end);
            pending.push(PendingSeal {
                // The list served its purpose; checkpoints stay small. A
                // WAL segment's list stays: its chunks may lie in another
                // broker's objects, which no later scan would look at.
                record: OpenSegmentRecord {
                    chunks_listed: false,
                    chunks: if seg.wal {
                        chunks.iter().map(crate::wal::chunk_record).collect()
                    } else {
                        Vec::new()
                    },
                    ..(*seg).clone()
                },
                replicas,
                chunks,
            });
        }
        if chunks_empty {
            // Dropped from the checkpoint; its fence is deleted once the new
            // checkpoint is saved (an old writer completing a chunk there
            // later cannot ack it: its own lease lapsed before ours began).
            empty.push(((*seg).clone(), replicas_for_delete));
        }
        if end < limit && limit != Offset::MAX {
            // The chain ended before the next segment's base: nothing there
            // was acked (acks go in offset order), so later segments are
            // abandoned and the log continues at `end`.
            tracing::warn!(partition = %id, segment = seg.base_offset, end, abandoned = open_segments.len() - i - 1,
                "a segment ended before the next one's base: later unsealed segments are abandoned");
            next = end.max(checkpoint.next_offset);
            break;
        }
    }
    report.chains_ms = started.elapsed().as_millis() as u64 - report.meta_ms;
    // Producer state: the snapshot saved with the checkpoint, then the
    // batches written after it (none after a clean release).
    let producers_started = Instant::now();
    let snapshot = match ctx.meta.get(&keys::producers(id)).await? {
        Some(kv) => ProducerSnapshotRecord::decode(kv.value)
            .map_err(|e| StartError::Corrupt(e.to_string()))?,
        None => ProducerSnapshotRecord::default(),
    };
    let mut producers = Producers::from_snapshot(&snapshot);
    let mut txns = super::txn::Txns::from_saved(&snapshot.open_txns, &snapshot.coordinator_epochs);
    let now_ms = ctx.clock.now_ms();
    // Read many at a time, applied in offset order (a cold cache after a
    // kill: one by one, hundreds of reads were most of a take-over).
    let mut wanted: Vec<(ReplicaSet, ChunkRef)> = Vec::new();
    for p in &pending {
        for c in p
            .chunks
            .iter()
            .filter(|c| c.next_offset > snapshot.as_of_offset)
        {
            wanted.push((p.replicas.clone(), c.clone()));
        }
    }
    let cache = ctx.cache.clone();
    let mut loads = futures::stream::iter(wanted.into_iter().map(move |(replicas, c)| {
        let cache = cache.clone();
        async move { load_chunk(&cache, &replicas, &c).await }
    }))
    .buffered(CHUNK_READS_IN_FLIGHT);
    while let Some(payload) = loads.next().await {
        let payload = payload?;
        for (pos, h) in Batches::new(&payload) {
            if h.base_offset < snapshot.as_of_offset {
                continue;
            }
            if floe_protocol::control::is_marker(&h) {
                if let Some(m) = floe_protocol::control::parse_marker(&payload[pos..]) {
                    producers.fence(m.producer_id, m.producer_epoch);
                    txns.on_marker(&m, h.base_offset);
                }
            } else {
                producers.record(&h, h.base_offset, now_ms);
                txns.on_batch(&h, h.base_offset);
            }
        }
    }
    drop(loads);
    report.producers_ms = producers_started.elapsed().as_millis() as u64;
    let save_started = Instant::now();
    report.offsets_past_checkpoint = next - checkpoint.next_offset;
    report.next_offset = next;

    let replicas = ctx
        .pool
        .choose_replica_set_for(&[], config.replicas, config.write_quorum);
    let now = ctx.clock.now_ms();
    let open = OpenSegmentRecord {
        base_offset: next,
        epoch,
        replica_set: replicas.ids(),
        created_ms: now,
        wal: ctx.wal.is_some(),
        ..Default::default()
    };
    let wal_start = match &ctx.wal {
        Some(wal) => Some(wal.position().await),
        None => None,
    };
    // Still-unsealed segments stay listed until the writer seals them (a
    // WAL segment's list paged: the pages it had stay, the chunks found
    // since may make new ones); the pages of segments dropped or found
    // sealed go.
    let mut page_ops = Vec::new();
    for p in pending.iter_mut() {
        page_ops.extend(crate::wal::page_out(
            id,
            &mut p.record,
            ctx.config.wal_chunk_page,
        ));
    }
    for seg in checkpoint.open_segments.iter().filter(|s| s.wal) {
        if !pending
            .iter()
            .any(|p| p.record.base_offset == seg.base_offset)
        {
            page_ops.push(Op::DeletePrefix(keys::chunk_pages_prefix(
                id,
                seg.base_offset,
            )));
        }
    }
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
        wal_start,
    };
    let mut txn = Txn::new().when(Condition::ValueEquals(keys::owner(id), owner.clone()));
    for op in page_ops {
        txn = txn.then(op);
    }
    let txn = txn.then(Op::put(
        keys::checkpoint(id),
        new_checkpoint.encode_to_vec(),
    ));
    if ctx.meta.txn(txn).await? == TxnOutcome::Mismatch {
        return Err(StartError::NotAssigned(id));
    }
    report.save_ms = save_started.elapsed().as_millis() as u64;
    for (replicas, repairs) in to_repair {
        let wanted = repairs.len();
        tokio::spawn(async move {
            let copies = repair_chunks(replicas, repairs).await;
            tracing::info!(partition = %id, chunks = wanted, copies, "re-replicated recovered chunks to the write quorum (fences beside data replaced)");
        });
    }
    // Segments that never got a chunk hold only our fence.
    for (seg, replicas) in empty {
        // (The new owner's garbage collection runs soon after an unclean
        // recovery anyway.)
        delete_chunks(id, &seg, replicas, ctx.cache.clone(), Default::default());
    }

    let mut state = LogState {
        log_start_offset: checkpoint.log_start_offset,
        high_watermark: next,
        leader_epoch: epoch,
        segments: BTreeMap::new(),
        ..Default::default()
    };
    // Aborted transactions: the sealed segments', the checkpoint's for
    // the segments not sealed, and those replayed past it (all of it
    // durable: it is below the recovered end).
    let mut aborted: BTreeMap<Offset, floe_storage::log::AbortedTxn> = BTreeMap::new();
    for a in sealed
        .values()
        .flat_map(|r| &r.aborted)
        .chain(&snapshot.aborted)
    {
        aborted.insert(
            a.marker_offset,
            floe_storage::log::AbortedTxn {
                producer_id: a.producer_id,
                first_offset: a.first_offset,
            },
        );
    }
    txns.truncate(next);
    aborted.extend(txns.durable(next));
    state.aborted = Arc::new(aborted);
    state.first_unstable = txns.first_unstable();
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
            took_ms = report.took_ms, meta_ms = report.meta_ms, chains_ms = report.chains_ms,
            producers_ms = report.producers_ms, save_ms = report.save_ms,
            "recovered after an unclean end: fenced, checkpointed");
    }
    Ok(Recovered {
        state,
        checkpoint: new_checkpoint,
        open,
        pending,
        producers,
        txns,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::Uuid;
    use floe_storage::faulty::{Faults, FaultyStore};
    use floe_storage::{PutOutcome, StorageTarget};
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    fn data_chunk(epoch: Epoch, base: Offset, n: i32) -> Bytes {
        let mut payload = floe_protocol::batch::synthetic_batch(n, 8, 1_000);
        floe_protocol::batch::assign(&mut payload, base, epoch, None);
        chunk::encode_data(epoch, base, base + n as i64, 1_000, 1, &payload)
    }

    /// An old writer keeps writing chunks (two in flight, acked in order, as
    /// the partition writer does) while a new owner recovers the segment.
    /// Whatever the interleaving, every chunk the old writer acked is in the
    /// recovered chain, and after the fence it can never ack again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_zombie_writer_can_never_ack_after_the_fence() {
        for seed in 0..60u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let stores: Vec<Arc<FaultyStore>> = (0..3)
                .map(|i| FaultyStore::new(format!("t{i}"), Arc::new(InMemory::new()), seed * 7 + i))
                .collect();
            for s in &stores {
                s.set_faults(Faults {
                    p50: Duration::from_micros(rng.random_range(200..2_000)),
                    p99: Duration::from_millis(rng.random_range(3..8)),
                    ..Default::default()
                });
            }
            // Sometimes one replica is down during recovery (R=3, W=2 still
            // lets the fence hold).
            let down = (seed % 4 == 0).then(|| rng.random_range(0..3usize));
            let targets: Vec<StorageTarget> = stores
                .iter()
                .enumerate()
                .map(|(i, s)| StorageTarget::from_store(format!("t{i}"), s.clone()))
                .collect();
            let set = ReplicaSet::new(targets, 2);
            let id = PartitionId::new(Uuid::from_u128(seed as u128 + 1), 0);
            let seg = OpenSegmentRecord {
                base_offset: 0,
                epoch: 1,
                replica_set: set.ids(),
                ..Default::default()
            };
            let zset = set.clone();
            let zombie = tokio::spawn(async move {
                let mut acked: Vec<Offset> = Vec::new();
                let mut base = 0;
                loop {
                    let (ka, kb) = (
                        layout::chunk(id, 0, 1, base),
                        layout::chunk(id, 0, 1, base + 2),
                    );
                    let a = zset.put_create(&ka, data_chunk(1, base, 2));
                    let b = zset.put_create(&kb, data_chunk(1, base + 2, 2));
                    let (a, b) = tokio::join!(a, b);
                    if !matches!(a, Ok(PutOutcome::Created)) {
                        return acked;
                    }
                    acked.push(base);
                    if !matches!(b, Ok(PutOutcome::Created)) {
                        return acked;
                    }
                    acked.push(base + 2);
                    base += 4;
                    if base > 120 {
                        return acked;
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
            if let Some(d) = down {
                stores[d].set_down(true);
            }
            let kept = match chain_and_fence(id, &seg, &set, 2, 0, Offset::MAX).await {
                Ok((kept, _)) => kept,
                // With a replica unreachable the end may be undecidable (the
                // old writer may have completed a chunk there): recovery
                // refuses rather than guess, and succeeds once it is back.
                Err(StartError::Storage(StorageError::Unavailable(_))) if down.is_some() => {
                    stores[down.unwrap()].set_down(false);
                    chain_and_fence(id, &seg, &set, 2, 0, Offset::MAX)
                        .await
                        .unwrap()
                        .0
                }
                Err(e) => panic!("seed {seed}: {e}"),
            };
            if let Some(d) = down {
                stores[d].set_down(false);
            }
            let end = kept.last().map_or(0, |c| c.next_offset);
            let acked = tokio::time::timeout(Duration::from_secs(30), zombie)
                .await
                .expect("the zombie stops")
                .unwrap();
            for b in &acked {
                assert!(
                    kept.iter().any(|c| c.base_offset == *b),
                    "seed {seed}: acked chunk {b} lost (chain ends at {end})"
                );
            }
            // Offsets are dense and the chain is contiguous.
            for (i, c) in kept.iter().enumerate() {
                assert_eq!(c.base_offset, 2 * i as i64, "seed {seed}");
            }
            // The old writer's next chunk, at the fence, cannot be acked.
            let late = set
                .put_create(&layout::chunk(id, 0, 1, end), data_chunk(1, end, 2))
                .await;
            assert!(
                !matches!(late, Ok(PutOutcome::Created)),
                "seed {seed}: a write at the fence {end} was acked"
            );
            // A second recovery finds the same end.
            let again = chain_and_fence(id, &seg, &set, 3, 0, Offset::MAX)
                .await
                .unwrap()
                .0;
            assert_eq!(again.len(), kept.len(), "seed {seed}");
        }
    }

    fn three_targets(seed: u64) -> (Vec<Arc<FaultyStore>>, ReplicaSet) {
        let stores: Vec<Arc<FaultyStore>> = (0..3)
            .map(|i| FaultyStore::new(format!("t{i}"), Arc::new(InMemory::new()), seed + i))
            .collect();
        let targets: Vec<StorageTarget> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| StorageTarget::from_store(format!("t{i}"), s.clone()))
            .collect();
        (stores, ReplicaSet::new(targets, 2))
    }

    /// The open segment at offset 0 of epoch 2 on `set`, as the tests'
    /// checkpoints name it.
    fn epoch_2_segment(set: &ReplicaSet) -> OpenSegmentRecord {
        OpenSegmentRecord {
            base_offset: 0,
            epoch: 2,
            replica_set: set.ids(),
            ..Default::default()
        }
    }

    /// Every offset of `chain` read back through the cache-less path, with
    /// each single replica down in turn: the records are there, dense.
    async fn read_all(
        stores: &[Arc<FaultyStore>],
        set: &ReplicaSet,
        chain: &[ChunkRef],
        end: Offset,
    ) {
        for down in [None, Some(0), Some(1), Some(2)] {
            for (i, s) in stores.iter().enumerate() {
                s.set_down(Some(i) == down);
            }
            let mut expect = 0;
            for c in chain {
                let payload = load_chunk(&BlockCache::new(0), set, c).await.unwrap();
                for (_, h) in Batches::new(&payload) {
                    assert_eq!(h.base_offset, expect, "replica {down:?} down");
                    expect = h.next_offset();
                }
            }
            assert_eq!(expect, end, "replica {down:?} down");
        }
        for s in stores {
            s.set_down(false);
        }
    }

    /// Issue 14's lost record, step by step: chunks 0..4 acked on all
    /// replicas; chunk 4 acked while t2 refused writes (on t0 and t1 only);
    /// the owner dies; t1 becomes unreachable; a new owner recovers (the
    /// checkpoint says only offsets below 4 were acked). An earlier attempt
    /// left a fence on t2 at key 4, as the old code did. Recovery must wait
    /// rather than end the chain, and once t1 answers, keep chunk 4, replace
    /// the fence, and every reader must see offset 4 whichever replica
    /// answers.
    #[tokio::test]
    async fn an_acked_chunk_on_two_of_three_survives_recovery_with_one_unreachable() {
        let (stores, set) = three_targets(100);
        let id = PartitionId::new(Uuid::from_u128(14), 10);
        let seg = epoch_2_segment(&set);
        for base in [0, 2] {
            let key = layout::chunk(id, 0, 2, base);
            assert_eq!(
                set.put_create(&key, data_chunk(2, base, 2)).await.unwrap(),
                PutOutcome::Created
            );
        }
        stores[2].set_down(true);
        let k4 = layout::chunk(id, 0, 2, 4);
        assert_eq!(
            set.put_create(&k4, data_chunk(2, 4, 1)).await.unwrap(),
            PutOutcome::Created,
            "acked on t0 and t1"
        );
        stores[2].set_down(false);

        // Without the stray fence: t1 unreachable, recovery keeps chunk 4,
        // ends the chain after it, and leaves the copy to t2 to the
        // background repair.
        stores[1].set_down(true);
        let (chain, repairs) = chain_and_fence(id, &seg, &set, 3, 4, Offset::MAX)
            .await
            .unwrap();
        assert_eq!(
            chain.iter().map(|c| c.base_offset).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        assert_eq!(
            repairs
                .iter()
                .map(|r| (r.base, r.to.clone()))
                .collect::<Vec<_>>(),
            [(4, vec![2])],
            "chunk 4 is to be copied to t2"
        );
        assert_eq!(
            chunk_replicas::probe(&set.targets()[2], &k4).await,
            chunk_replicas::Held::Absent,
            "recovery itself copied nothing"
        );
        // Before the repair, with t1 still away, the chunk reads from t0.
        let (_, _, raw) = chunk_replicas::read(&set, &k4, 4).await.unwrap();
        assert_eq!(raw, data_chunk(2, 4, 1));
        assert_eq!(repair_chunks(set.clone(), repairs).await, 1);
        assert!(matches!(
            chunk_replicas::probe(&set.targets()[2], &k4).await,
            chunk_replicas::Held::Data(_)
        ));
        stores[1].set_down(false);
        read_all(&stores, &set, &chain, 5).await;

        // The old code's leftover: a fence on t2 at key 4 beside the data.
        let (stores, set) = three_targets(200);
        for base in [0, 2] {
            let key = layout::chunk(id, 0, 2, base);
            set.put_create(&key, data_chunk(2, base, 2)).await.unwrap();
        }
        for t in &set.targets()[..2] {
            t.store
                .put(
                    &k4,
                    object_store::PutPayload::from_bytes(data_chunk(2, 4, 1)),
                )
                .await
                .unwrap();
        }
        set.targets()[2]
            .store
            .put(
                &k4,
                object_store::PutPayload::from_bytes(chunk::encode_fence(3, 4)),
            )
            .await
            .unwrap();
        stores[1].set_down(true);
        match chain_and_fence(id, &seg, &set, 4, 4, Offset::MAX).await {
            Err(StartError::Storage(StorageError::Unavailable(why))) => {
                assert!(why.contains("data on 1, fences on 1"), "{why}")
            }
            other => panic!("recovery must wait, not decide: {other:?}"),
        }
        // Nothing the waiting attempt wrote can end the chain: the next key
        // is untouched.
        stores[1].set_down(false);
        for t in set.targets() {
            assert_eq!(
                chunk_replicas::probe(t, &layout::chunk(id, 0, 2, 5)).await,
                chunk_replicas::Held::Absent
            );
        }
        let (chain, repairs) = chain_and_fence(id, &seg, &set, 4, 4, Offset::MAX)
            .await
            .unwrap();
        assert_eq!(
            chain.iter().map(|c| c.base_offset).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        // Recovery leaves the repair to the background: here, awaited.
        assert_eq!(repair_chunks(set.clone(), repairs.clone()).await, 1);
        assert!(
            matches!(
                chunk_replicas::probe(&set.targets()[2], &k4).await,
                chunk_replicas::Held::Data(_)
            ),
            "the fence beside the data was replaced"
        );
        read_all(&stores, &set, &chain, 5).await;
        // The key after the end is fenced on every replica.
        for t in set.targets() {
            assert_eq!(
                chunk_replicas::probe(t, &layout::chunk(id, 0, 2, 5)).await,
                chunk_replicas::Held::Fence
            );
        }
    }

    /// Seed 4534 (docs/simulation.md), at the recovery level: chunks 4
    /// and 6 acked on t0 and t1 while t2 refused writes; t1 is then
    /// replaced by an empty target under the same name (its identity
    /// marker gone with its contents); the owner dies; recovery runs while
    /// t0 does not answer. t1's "not found" is no answer, so recovery
    /// waits instead of ending the chain at 4; with t0 back it keeps 4 and
    /// 6 and copies them to t2, and every record reads back.
    #[tokio::test]
    async fn a_target_replaced_by_an_empty_one_cannot_cut_acked_chunks() {
        use object_store::ObjectStoreExt;
        let (stores, set) = three_targets(300);
        for t in set.targets() {
            let marker = floe_storage::marker_for("c", &t.id, 1);
            t.write_marker(&marker, false).await.unwrap();
            *t.marker.write().unwrap() = marker;
        }
        let id = PartitionId::new(Uuid::from_u128(4534), 3);
        let seg = epoch_2_segment(&set);
        for base in [0, 2] {
            let key = layout::chunk(id, 0, 2, base);
            set.put_create(&key, data_chunk(2, base, 2)).await.unwrap();
        }
        stores[2].set_down(true);
        for base in [4, 6] {
            let key = layout::chunk(id, 0, 2, base);
            assert_eq!(
                set.put_create(&key, data_chunk(2, base, 2)).await.unwrap(),
                PutOutcome::Created,
                "acked on t0 and t1"
            );
        }
        stores[2].set_down(false);
        // t1 wiped: every object gone, its marker too.
        let t1 = &set.targets()[1];
        let all: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(t1.store.list(None))
            .await
            .unwrap();
        assert!(all.len() >= 5, "four chunks and the marker");
        for o in all {
            t1.store.delete(&o.location).await.unwrap();
        }
        stores[0].set_down(true);
        match chain_and_fence(id, &seg, &set, 3, 4, Offset::MAX).await {
            Err(StartError::Storage(StorageError::Unavailable(_))) => {}
            other => panic!("recovery must wait, not end the chain at 4: {other:?}"),
        }
        assert!(t1.is_lost());
        for t in set.targets() {
            assert_ne!(
                chunk_replicas::probe(t, &layout::chunk(id, 0, 2, 4)).await,
                chunk_replicas::Held::Fence,
                "{} fenced at an acked chunk",
                t.id
            );
        }
        stores[0].set_down(false);
        let (chain, repairs) = chain_and_fence(id, &seg, &set, 3, 4, Offset::MAX)
            .await
            .unwrap();
        assert_eq!(
            chain.iter().map(|c| c.base_offset).collect::<Vec<_>>(),
            [0, 2, 4, 6]
        );
        assert_eq!(repair_chunks(set.clone(), repairs).await, 2);
        read_all(&stores, &set, &chain, 8).await;
    }

    /// Acked chunks (below the checkpoint's next offset) found beside a
    /// fence on one replica are kept whichever replica's header is read
    /// first, and a roll's next segment bounds the walk: a chunk the old
    /// segment got at the next segment's base is not taken twice.
    #[tokio::test]
    async fn acked_chunks_beside_fences_are_kept_and_segments_do_not_overlap() {
        let (stores, set) = three_targets(300);
        let id = PartitionId::new(Uuid::from_u128(15), 0);
        let seg = epoch_2_segment(&set);
        for base in [0, 2, 4] {
            let key = layout::chunk(id, 0, 2, base);
            for (i, t) in set.targets().iter().enumerate() {
                let body = if i == 0 && base == 2 {
                    chunk::encode_fence(3, 2)
                } else {
                    data_chunk(2, base, 2)
                };
                t.store
                    .put(&key, object_store::PutPayload::from_bytes(body))
                    .await
                    .unwrap();
            }
        }
        // t0 (with the fence) answers first; all acked (below 6).
        let (chain, _repairs) = chain_and_fence(id, &seg, &set, 3, 6, Offset::MAX)
            .await
            .unwrap();
        assert_eq!(
            chain.iter().map(|c| c.base_offset).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        read_all(&stores, &set, &chain, 6).await;
        // A later segment starts at 4: the walk stops there, acked or not.
        for committed in [0, 3, 6] {
            let (chain, _repairs) = chain_and_fence(id, &seg, &set, 3, committed, 4)
                .await
                .unwrap();
            assert_eq!(
                chain.last().map(|c| c.next_offset),
                Some(4),
                "committed below {committed}"
            );
        }
    }
}
