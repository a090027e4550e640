//! The single writer of a partition: appends batches to the open chunk,
//! flushes chunks (size or linger bound) with conditional create, acks once
//! durable, rolls and seals segments, applies retention, saves checkpoints,
//! and releases the partition cleanly.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

use bytes::{Bytes, BytesMut};
use floe_common::{Epoch, Offset, PartitionId};
use floe_meta::schema::{
    CheckpointRecord, ChunkRecord, OpenSegmentRecord, SegmentRecord, WalPositionRecord, FORMAT,
};
use floe_meta::{keys, Condition, MetaError, Op, Txn, TxnOutcome};
use floe_protocol::batch::{self, BatchHeader};
use floe_storage::chunk;
use floe_storage::log::{ChunkRef, PartitionLog, SegmentView};
use floe_storage::wal::ChunkMeta;
use floe_storage::wal_stream::WalChunkRef;
use floe_storage::{layout, PutOutcome, ReplicaSet, StorageError};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::gc::{sweep, GcRun, References};
use super::recovery::{consolidate, delete_chunks, sealed_view, Recovered};
use floe_protocol::ResponseError;

use super::producers::{Producers, Verdict};
use super::{AppendError, Appended, Command, PartitionContext, PartitionState};
use crate::config::{TimestampType, TopicConfig};

type Reply = oneshot::Sender<Result<Appended, AppendError>>;

/// Chunks a clean release lists in its checkpoint (about 25 bytes each in
/// etcd); beyond this the next owner lists them from storage instead.
const MAX_HANDED_OVER_CHUNKS: usize = 20_000;

/// Fresh replica sets tried for one chunk before the partition gives up.
const MAX_SWITCHES_IN_A_ROW: u32 = 3;

struct Waiter {
    reply: Reply,
    base_offset: Offset,
    log_append_time: i64,
}

/// A segment not yet sealed.
struct OpenSeg {
    record: OpenSegmentRecord,
    replicas: ReplicaSet,
    /// Bytes assigned to it so far (committed or in flight).
    bytes: u64,
    /// Chunks assigned to it so far.
    chunks: u64,
    /// Offset after its last assigned batch.
    end: Offset,
}

/// The chunk being filled.
struct Buffer {
    buf: BytesMut,
    base: Offset,
    max_timestamp: i64,
    batches: u32,
    waiters: Vec<Waiter>,
    deadline: tokio::time::Instant,
    /// The span of the request whose batch opened the chunk: its storage
    /// writes are traced under it.
    span: tracing::Span,
}

struct Flush {
    chunk: ChunkRef,
    segment_base: Offset,
    /// The whole chunk object (header and payload), for a re-issue.
    data: Bytes,
    payload: Bytes,
    waiters: Vec<Waiter>,
    task: JoinHandle<Result<Landed, StorageError>>,
    /// Shared WAL layout: what the chunk is, to hand it in again, and the
    /// earliest place in the broker's WAL it can land.
    wal: Option<(ChunkMeta, WalPositionRecord)>,
}

/// Where a flushed chunk went.
enum Landed {
    /// Its own object, on the open segment's replicas.
    Put(PutOutcome),
    /// A shared WAL object.
    Wal(WalChunkRef),
    /// The WAL stream it went to died first; a new one is open.
    Reopened(String),
}

struct Writer {
    ctx: PartitionContext,
    /// The WAL object this writer told the stream it holds a chunk for
    /// (see `wal_hold`); cleared when the chunk is handed in.
    wal_held: Option<i64>,
    id: PartitionId,
    epoch: Epoch,
    owner: Bytes,
    config: TopicConfig,
    log: Arc<PartitionLog>,
    checkpoint: CheckpointRecord,
    checkpoint_saved: Instant,
    open: OpenSeg,
    sealing: VecDeque<OpenSeg>,
    next_offset: Offset,
    buffer: Option<Buffer>,
    inflight: VecDeque<Flush>,
    seal_task: Option<JoinHandle<Result<SegmentRecord, StorageError>>>,
    /// Seals failed in a row, and when the next attempt may start: retries
    /// back off (100 ms doubling to 30 s) instead of spinning.
    seal_failures: u32,
    seal_retry_at: Option<Instant>,
    state: watch::Sender<PartitionState>,
    /// Told to stop without releasing; answered once stopped.
    abandoned: Option<oneshot::Sender<()>>,
    producers: Producers,
    /// Transactions open on this partition (`txn.rs`).
    txns: super::txn::Txns,
    gate: Arc<super::txn::TxnGate>,
    /// Segment switches since the last committed chunk.
    switches_in_a_row: u32,
    /// Checking and restoring the replicas of sealed segments.
    repair_task: Option<JoinHandle<Vec<Repaired>>>,
    /// A compaction pass in the background (compacted topics).
    compact_task: Option<CompactTask>,
    last_repair: Instant,
    /// The garbage collection of the partition's storage (`gc.rs`): the
    /// sweep running, when the next starts, and whether a failed delete
    /// asks for one sooner.
    gc: Option<GcRun>,
    gc_next: Instant,
    gc_soon: Arc<std::sync::atomic::AtomicBool>,
    /// Retried idempotent batches answered once their original commits:
    /// (last offset of the original, waiter).
    duplicates: Vec<(Offset, Waiter)>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    ctx: PartitionContext,
    id: PartitionId,
    epoch: Epoch,
    owner: Bytes,
    config: TopicConfig,
    log: Arc<PartitionLog>,
    gate: Arc<super::txn::TxnGate>,
    recovered: Recovered,
    rx: mpsc::Receiver<Command>,
    state: watch::Sender<PartitionState>,
) {
    let replicas = match log.snapshot().segments.get(&recovered.open.base_offset) {
        Some(SegmentView::Open { replicas, .. }) => replicas.clone(),
        _ => ctx
            .pool
            .replica_set(&recovered.open.replica_set)
            .expect("recovered replica set is in the pool"),
    };
    let next = recovered.state.high_watermark;
    let ctx_config = ctx.config.clone();
    let unclean_was_clean = recovered.report.clean;
    // The previous owner's unsealed segments: sealed here, in the background.
    let sealing: VecDeque<OpenSeg> = recovered
        .pending
        .into_iter()
        .map(|p| OpenSeg {
            bytes: p.chunks.iter().map(|c| c.bytes).sum(),
            chunks: p.chunks.len() as u64,
            end: p
                .chunks
                .last()
                .map_or(p.record.base_offset, |c| c.next_offset),
            record: p.record,
            replicas: p.replicas,
        })
        .collect();
    let mut w = Writer {
        wal_held: None,
        ctx,
        id,
        epoch,
        owner,
        config,
        log,
        checkpoint: recovered.checkpoint,
        checkpoint_saved: Instant::now(),
        open: OpenSeg {
            record: recovered.open,
            replicas,
            bytes: 0,
            chunks: 0,
            end: next,
        },
        sealing,
        next_offset: next,
        buffer: None,
        inflight: VecDeque::new(),
        seal_task: None,
        seal_failures: 0,
        seal_retry_at: None,
        state,
        abandoned: None,
        producers: recovered.producers,
        txns: recovered.txns,
        gate,
        switches_in_a_row: 0,
        repair_task: None,
        compact_task: None,
        last_repair: Instant::now(),
        gc: None,
        gc_next: Instant::now() + first_gc(&ctx_config),
        // An unclean end may leave abandoned or empty segments behind.
        gc_soon: Arc::new(std::sync::atomic::AtomicBool::new(!unclean_was_clean)),
        duplicates: Vec::new(),
    };
    w.maybe_start_seal();
    tokio::spawn(w.run(rx));
}

/// Hand a chunk to the broker's WAL; the answer once its object (and every
/// earlier one of the stream) is durable.
fn spawn_wal_append(
    wal: Arc<crate::wal::BrokerWal>,
    meta: ChunkMeta,
    payload: Bytes,
    held: Option<i64>,
    span: tracing::Span,
) -> JoinHandle<Result<Landed, StorageError>> {
    tokio::spawn(
        async move {
            match wal.append(meta, payload, held).await {
                Ok(r) => Ok(Landed::Wal(r)),
                Err(e @ crate::wal::WalAppendError::Reopened { .. }) => {
                    Ok(Landed::Reopened(e.to_string()))
                }
                Err(e) => Err(StorageError::Unavailable(e.to_string())),
            }
        }
        .instrument(span),
    )
}

/// Await the front flush, if any (pending forever otherwise).
async fn front(
    inflight: &mut VecDeque<Flush>,
) -> Result<Result<Landed, StorageError>, tokio::task::JoinError> {
    match inflight.front_mut() {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}

/// When a partition's first sweep starts: spread over the interval, so
/// that brokers starting together do not sweep every partition at once.
fn first_gc(config: &crate::config::BrokerConfig) -> Duration {
    let interval = config.gc_interval_ms.max(1);
    // RandomState is seeded at random: a jitter without a dependency.
    use std::hash::BuildHasher;
    let jitter = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    Duration::from_millis(interval / 2 + jitter % interval.div_ceil(2))
}

/// How long to wait before the next seal attempt after `failures` in a row.
fn seal_retry_delay(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.saturating_sub(1).min(20));
    Duration::from_millis(ms.min(30_000))
}

/// A sealed segment whose replica set changed in a repair.
#[derive(Debug)]
pub(crate) struct Repaired {
    base_offset: Offset,
    replica_set: Vec<String>,
}

type CompactTask = JoinHandle<Result<Vec<super::compactor::Replacement>, StorageError>>;

async fn compacted(
    task: &mut Option<CompactTask>,
) -> Result<Result<Vec<super::compactor::Replacement>, StorageError>, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

async fn repaired(task: &mut Option<JoinHandle<Vec<Repaired>>>) -> Vec<Repaired> {
    match task {
        Some(t) => t.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// Give every sealed segment R live replicas again: a replica on a target
/// that is down moves to a fresh healthy target (the segment's recorded
/// set changes); a replica missing from a live target (replaced, emptied)
/// is copied back to it.
async fn repair_segments(
    ctx: PartitionContext,
    segments: Vec<Arc<floe_storage::log::SealedSegment>>,
    id: PartitionId,
) -> Vec<Repaired> {
    use futures::StreamExt;
    futures::stream::iter(segments.into_iter().map(|s| {
        let ctx = &ctx;
        async move { repair_segment(ctx, &s, id).await }
    }))
    .buffer_unordered(REPAIRS_IN_FLIGHT)
    .filter_map(|r| async move { r })
    .collect()
    .await
}

/// Copy segment `s` to target `to` at the broker's repair pace, counted in
/// the repair metrics (a copy that fails has used its turn).
async fn paced_copy(
    ctx: &PartitionContext,
    s: &floe_storage::log::SealedSegment,
    path: &object_store::path::Path,
    to: &floe_storage::StorageTarget,
) -> Result<u64, floe_storage::StorageError> {
    let waited = ctx.repair_pacer.acquire(s.object_bytes).await;
    ctx.metrics
        .repair_throttled_seconds
        .inc_by(waited.as_secs_f64());
    let copied = s.replicas.copy_to(path, to).await;
    if let Ok(bytes) = copied {
        ctx.metrics.replicas_repaired.inc();
        ctx.metrics.repair_bytes.inc_by(bytes);
    }
    copied
}

/// Segments of one partition repaired at once.
const REPAIRS_IN_FLIGHT: usize = 8;

async fn repair_segment(
    ctx: &PartitionContext,
    s: &floe_storage::log::SealedSegment,
    id: PartitionId,
) -> Option<Repaired> {
    let pool = &ctx.pool;
    let path = object_store::path::Path::from(s.path.as_ref());
    let mut ids = s.replicas.ids();
    let mut changed = false;
    for t in s.replicas.targets() {
        if !t.is_up() || t.is_draining() {
            let Some(to) = pool.replacement_for(&ids) else {
                tracing::warn!(partition = %id, segment = s.base_offset, target_id = %t.id, "a replica is on a down or draining target and no other target is free");
                continue;
            };
            match paced_copy(ctx, s, &path, &to).await {
                Ok(bytes) => {
                    tracing::info!(partition = %id, segment = s.base_offset, from = %t.id, to = %to.id, bytes, "moved a segment replica off a down or draining target");
                    if let Some(slot) = ids.iter_mut().find(|i| **i == t.id) {
                        *slot = to.id.clone();
                    }
                    changed = true;
                }
                Err(e) => {
                    tracing::warn!(partition = %id, segment = s.base_offset, error = %e, "repair copy failed; will retry")
                }
            }
            continue;
        }
        match object_store::ObjectStoreExt::head(&t.store, &path).await {
            Err(object_store::Error::NotFound { .. }) => match paced_copy(ctx, s, &path, t).await {
                Ok(bytes) => {
                    tracing::info!(partition = %id, segment = s.base_offset, to = %t.id, bytes, "restored a missing segment replica");
                }
                Err(e) => {
                    tracing::warn!(partition = %id, segment = s.base_offset, error = %e, "repair copy failed; will retry")
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(partition = %id, target_id = %t.id, error = %e, "repair check failed")
            }
        }
    }
    changed.then_some(Repaired {
        base_offset: s.base_offset,
        replica_set: ids,
    })
}

async fn sealed(
    task: &mut Option<JoinHandle<Result<SegmentRecord, StorageError>>>,
) -> Result<Result<SegmentRecord, StorageError>, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

#[derive(Debug)]
enum Stop {
    Fenced,
    Failed(AppendError),
}

impl<E: Into<AppendError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Failed(e.into())
    }
}

/// A task of the writer that died (panicked or was cancelled).
fn task_died(e: tokio::task::JoinError) -> Stop {
    Stop::Failed(AppendError::Internal(e.to_string()))
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let interval =
            Duration::from_millis(self.ctx.config.retention_check_interval_ms.clamp(10, 1000));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_housekeeping = Instant::now();
        let outcome: Result<Option<oneshot::Sender<()>>, Stop> = loop {
            // A chunk handed to the shared WAL waits for the broker's next
            // object (wal_linger_ms): many may be on their way at once.
            let max_inflight = if self.ctx.wal.is_some() {
                self.ctx.config.wal_inflight_chunks.max(1)
            } else {
                self.ctx.config.max_inflight_flushes.max(1)
            };
            // Group commit: with nothing being written and nothing queued,
            // the filling chunk goes now rather than at its linger deadline.
            if self.ctx.config.flush_when_idle
                && self.inflight.is_empty()
                && self.buffer.is_some()
                && rx.is_empty()
                && self.wal_hold().is_none()
            {
                if let Err(stop) = self.start_flush().await {
                    break Err(stop);
                }
            }
            let linger = self.buffer.as_ref().map(|b| b.deadline);
            let step: Result<Option<Option<oneshot::Sender<()>>>, Stop> = tokio::select! {
                biased;
                done = front(&mut self.inflight) => self.flush_done(done).await.map(|_| None),
                done = sealed(&mut self.seal_task) => {
                    self.seal_task = None;
                    self.seal_done(done).await.map(|_| None)
                }
                done = repaired(&mut self.repair_task) => {
                    self.repair_task = None;
                    self.repair_done(done).await.map(|_| None)
                }
                done = compacted(&mut self.compact_task) => {
                    self.compact_task = None;
                    self.compact_done(done).await.map(|_| None)
                }
                cmd = rx.recv(), if self.inflight.len() < max_inflight => match cmd {
                    Some(Command::Append { records, headers, guard, reply, span }) => self.append(records, headers, guard, reply, span).await.map(|_| None),
                    Some(Command::Marker { marker, reply }) => self.append_marker(marker, reply).await.map(|_| None),
                    Some(Command::UpdateConfig(c)) => {
                        self.config = c;
                        Ok(None)
                    }
                    Some(Command::DeleteRecords(offset, reply)) => self.delete_records(offset, reply).await.map(|_| None),
                    Some(Command::DescribeProducers(reply)) => {
                        let open: std::collections::HashMap<i64, Offset> = self
                            .txns
                            .unended()
                            .into_iter()
                            .map(|t| (t.producer_id, t.first_offset))
                            .collect();
                        let list = self
                            .producers
                            .describe()
                            .into_iter()
                            .map(|(producer_id, epoch, last_sequence, last_ms)| super::ProducerInfo {
                                producer_id,
                                epoch,
                                last_sequence,
                                last_ms,
                                txn_start_offset: open.get(&producer_id).copied().unwrap_or(-1),
                            })
                            .collect();
                        let _ = reply.send(list);
                        Ok(None)
                    }
                    Some(Command::Release(done)) => Ok(Some(Some(done))),
                    Some(Command::Abandon(done)) => {
                        self.abandoned = Some(done);
                        Err(Stop::Fenced)
                    }
                    None => Ok(Some(None)),
                },
                // A lingering chunk waits for a free flush slot like any other.
                _ = async { tokio::time::sleep_until(linger.unwrap()).await }, if linger.is_some() && self.inflight.len() < max_inflight => match self.wal_hold() {
                    // The broker's WAL object is still gathering: hand
                    // this chunk in just before it is cut, with whatever
                    // else comes meanwhile.
                    Some(until) => {
                        if let Some(b) = self.buffer.as_mut() {
                            b.deadline = until;
                        }
                        Ok(None)
                    }
                    None => self.start_flush().await.map(|_| None),
                },
                _ = tick.tick() => {
                    let every = Duration::from_millis(self.ctx.config.retention_check_interval_ms);
                    if last_housekeeping.elapsed() >= every {
                        last_housekeeping = Instant::now();
                        self.housekeeping().await.map(|_| None)
                    } else {
                        match self.leave_draining_targets().await {
                            Ok(()) => self.maybe_checkpoint().await.map(|_| None),
                            Err(e) => Err(e),
                        }
                    }
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(release)) => break Ok(release),
                Err(stop) => break Err(stop),
            }
        };
        if let Some(t) = self.compact_task.take() {
            t.abort();
        }
        self.ctx.metrics.compaction_dirt(self.id, None);
        self.ctx.metrics.partition_gone(self.id);
        match outcome {
            Ok(done) => {
                self.set_state(PartitionState::Releasing);
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    if let Command::Append { reply, .. } | Command::Marker { reply, .. } = cmd {
                        let _ = reply.send(Err(AppendError::NotLeader));
                    }
                }
                match self.release().await {
                    Ok(()) => {
                        tracing::info!(partition = %self.id, epoch = self.epoch, next_offset = self.next_offset, "released (flushed, end fixed in a clean checkpoint, owner key deleted)");
                        self.set_state(PartitionState::Released);
                    }
                    Err(e) => {
                        tracing::error!(partition = %self.id, error = ?e, "release failed; the next owner will recover");
                        self.set_state(PartitionState::Failed);
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                // Keep answering stragglers until every handle is gone.
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Command::Append { reply, .. } | Command::Marker { reply, .. } => {
                            let _ = reply.send(Err(AppendError::NotLeader));
                        }
                        Command::Release(done) | Command::Abandon(done) => {
                            let _ = done.send(());
                        }
                        Command::UpdateConfig(_) => {}
                        Command::DeleteRecords(_, reply) => {
                            let _ = reply.send(Err(ResponseError::NotLeaderOrFollower));
                        }
                        Command::DescribeProducers(_) => {}
                    }
                }
            }
            Err(stop) => {
                tracing::error!(partition = %self.id, epoch = self.epoch, reason = ?stop, "partition writer stopped");
                let err = match stop {
                    Stop::Fenced => AppendError::NotLeader,
                    Stop::Failed(e) => e,
                };
                self.fail_all(&err);
                self.set_state(PartitionState::Failed);
                if let Some(t) = self.seal_task.take() {
                    t.abort();
                }
                if let Some(done) = self.abandoned.take() {
                    let _ = done.send(());
                }
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        Command::Append { reply, .. } | Command::Marker { reply, .. } => {
                            let _ = reply.send(Err(err.clone()));
                        }
                        Command::Release(done) | Command::Abandon(done) => {
                            let _ = done.send(());
                        }
                        Command::UpdateConfig(_) => {}
                        Command::DeleteRecords(_, reply) => {
                            let _ = reply.send(Err(ResponseError::NotLeaderOrFollower));
                        }
                        Command::DescribeProducers(_) => {}
                    }
                }
            }
        }
    }

    fn set_state(&self, s: PartitionState) {
        let old = *self.state.borrow();
        self.ctx.metrics.partition_state(self.id, Some(old), s);
        self.state.send_replace(s);
    }

    fn fail_all(&mut self, err: &AppendError) {
        for f in self.inflight.drain(..) {
            f.task.abort();
            for w in f.waiters {
                let _ = w.reply.send(Err(err.clone()));
            }
        }
        if let Some(b) = self.buffer.take() {
            for w in b.waiters {
                let _ = w.reply.send(Err(err.clone()));
            }
        }
        for (_, w) in self.duplicates.drain(..) {
            let _ = w.reply.send(Err(err.clone()));
        }
    }

    async fn append(
        &mut self,
        records: Bytes,
        headers: Vec<BatchHeader>,
        guard: Option<u64>,
        reply: Reply,
        span: tracing::Span,
    ) -> Result<(), Stop> {
        if !self.ctx.lease.is_valid() {
            let _ = reply.send(Err(AppendError::NotLeader));
            return Ok(());
        }
        if let Some(e) = self.injected_failure() {
            let _ = reply.send(Err(e.clone()));
            return Err(Stop::Failed(e));
        }
        let now = self.ctx.clock.now_ms();
        // Idempotent producers: a retried batch is answered with its
        // original offsets, a gap or an old epoch with Kafka's error.
        let mut duplicate = None;
        for h in headers.iter().filter(|h| h.producer_id >= 0) {
            if h.is_transactional() {
                // A transaction's batch joins only a transaction open here
                // at its epoch, or under a guard its coordinator verified
                // the partition was added with and no end marker cleared
                // since (KIP-890).
                let verified = self.txns.is_open(h.producer_id, h.producer_epoch)
                    || guard.is_some_and(|g| self.gate.holds(h.producer_id, h.producer_epoch, g));
                let checked = if verified {
                    self.txns.check_batch(h)
                } else {
                    Err(ResponseError::InvalidTxnState)
                };
                if let Err(code) = checked {
                    let _ = reply.send(Err(AppendError::Producer(code)));
                    return Ok(());
                }
            }
            match self.producers.check(h) {
                Ok(Verdict::Append) => {
                    if let Some(old) = self.producers.epoch_of(h.producer_id) {
                        if old != h.producer_epoch {
                            tracing::info!(partition = %self.id, producer_id = h.producer_id, old_epoch = old,
                                epoch = h.producer_epoch, "an idempotent producer continues with a new epoch (its sequences restart at 0)");
                        }
                    }
                }
                Ok(Verdict::Duplicate {
                    base_offset,
                    last_offset,
                }) if headers.len() == 1 => duplicate = Some((base_offset, last_offset)),
                Ok(Verdict::Duplicate { .. }) => {
                    let _ = reply.send(Err(AppendError::Producer(
                        ResponseError::OutOfOrderSequenceNumber,
                    )));
                    return Ok(());
                }
                Err(code) => {
                    tracing::info!(partition = %self.id, producer_id = h.producer_id, epoch = h.producer_epoch,
                        base_sequence = h.base_sequence, records = h.records_count, expected = ?self.producers.describe_one(h.producer_id),
                        error = ?code, "an idempotent batch is refused");
                    let _ = reply.send(Err(AppendError::Producer(code)));
                    return Ok(());
                }
            }
        }
        if let Some((base_offset, last_offset)) = duplicate {
            self.ctx.metrics.producer_duplicates.inc();
            let w = Waiter {
                reply,
                base_offset,
                log_append_time: -1,
            };
            let (log_start, hw, _) = self.log.offsets();
            if last_offset < hw {
                let _ = w.reply.send(Ok(Appended {
                    base_offset,
                    log_append_time: -1,
                    log_start_offset: log_start,
                }));
            } else {
                self.duplicates.push((last_offset, w));
            }
            return Ok(());
        }
        self.buffer_batches(records, headers, reply, now, span)
            .await
    }

    /// A transaction's end marker, appended as a control batch like any
    /// batch; the transaction ends here once it is durable.
    async fn append_marker(
        &mut self,
        marker: floe_protocol::control::Marker,
        reply: Reply,
    ) -> Result<(), Stop> {
        if !self.ctx.lease.is_valid() {
            let _ = reply.send(Err(AppendError::NotLeader));
            return Ok(());
        }
        // A marker at an epoch older than the producer's here is a
        // zombie's (a fenced producer's coordinator round).
        let stale = self
            .producers
            .epoch_of(marker.producer_id)
            .is_some_and(|e| marker.producer_epoch < e);
        let checked = if stale {
            Err(ResponseError::InvalidProducerEpoch)
        } else {
            self.txns.check_marker(&marker)
        };
        if let Err(code) = checked {
            let _ = reply.send(Err(AppendError::Producer(code)));
            return Ok(());
        }
        // Guards verified before this end belong to the transaction it
        // ends: a batch still carrying one is late, not the next
        // transaction's.
        self.gate.clear(marker.producer_id);
        // A marker at a newer epoch (a fencing abort) fences the producer's
        // older epoch here too, whatever a late verification says.
        self.producers
            .fence(marker.producer_id, marker.producer_epoch);
        let now = self.ctx.clock.now_ms();
        let records = floe_protocol::control::marker_batch(&marker, now);
        let headers: Vec<BatchHeader> = batch::Batches::new(&records).map(|(_, h)| h).collect();
        self.txns.on_marker(&marker, self.next_offset);
        self.buffer_batches(records, headers, reply, now, tracing::Span::current())
            .await
    }

    /// Copy checked batches into the filling chunk at the next offsets;
    /// `reply` is answered once they are durable.
    async fn buffer_batches(
        &mut self,
        records: Bytes,
        headers: Vec<BatchHeader>,
        reply: Reply,
        now: i64,
        span: tracing::Span,
    ) -> Result<(), Stop> {
        let log_append_time =
            (self.config.timestamp_type == TimestampType::LogAppendTime).then_some(now);
        let linger = self.ctx.config.chunk_linger();
        let buffer = self.buffer.get_or_insert_with(|| Buffer {
            buf: chunk::new_buffer(records.len()),
            base: self.next_offset,
            max_timestamp: -1,
            batches: 0,
            waiters: Vec::new(),
            deadline: tokio::time::Instant::now() + linger,
            span: span.clone(),
        });
        let base_offset = self.next_offset;
        let mut pos = 0;
        for h in &headers {
            let len = h.total_len();
            let at = buffer.buf.len();
            buffer.buf.extend_from_slice(&records[pos..pos + len]);
            batch::assign(
                &mut buffer.buf[at..at + len],
                self.next_offset,
                self.epoch,
                log_append_time,
            );
            if !h.is_control() {
                self.producers.record(h, self.next_offset, now);
            }
            self.txns.on_batch(h, self.next_offset);
            self.next_offset += h.records_count as i64;
            buffer.max_timestamp = buffer
                .max_timestamp
                .max(log_append_time.unwrap_or(h.max_timestamp));
            buffer.batches += 1;
            pos += len;
        }
        let reply = if self.ctx.config.faults.ack_before_durable {
            // The broken variant: acked now; the flush answers no one.
            let _ = reply.send(Ok(Appended {
                base_offset,
                log_append_time: log_append_time.unwrap_or(-1),
                log_start_offset: self.log.offsets().0,
            }));
            tokio::sync::oneshot::channel().0
        } else {
            reply
        };
        buffer.waiters.push(Waiter {
            reply,
            base_offset,
            log_append_time: log_append_time.unwrap_or(-1),
        });
        if buffer.buf.len() >= self.ctx.config.chunk_bytes {
            self.start_flush().await?;
        }
        Ok(())
    }

    /// On the shared WAL, while the broker's next object is being
    /// gathered: the moment just before it is cut (a few ms, so that a
    /// chunk handed in then reaches the stream in time), if still ahead;
    /// None to hand the chunk in now. Until then the filling chunk waits
    /// and takes in more batches: one chunk per partition per WAL object.
    fn wal_hold(&mut self) -> Option<tokio::time::Instant> {
        use floe_storage::wal_stream::Hold;
        let margin = Duration::from_millis((self.ctx.config.wal_linger_ms / 20).max(2));
        // Either way the stream now counts on this writer's chunk for the
        // object and waits for it at the cut (the hand-in names it).
        match self.ctx.wal.as_ref()?.hold(margin, self.wal_held)? {
            Hold::Until(until, seq) => {
                self.wal_held = Some(seq);
                Some(until)
            }
            Hold::Now(seq) => {
                self.wal_held = Some(seq);
                None
            }
        }
    }

    /// Flush the filling chunk: to a new segment first if the open one is full.
    async fn start_flush(&mut self) -> Result<(), Stop> {
        let Some(buffer) = self.buffer.take() else {
            return Ok(());
        };
        let payload_len = (buffer.buf.len() - chunk::HEADER_LEN) as u64;
        // Full: by size, or by chunk count (what a recovery after an unclean
        // end reads the headers of, and a clean release lists). Not a WAL
        // segment by count: its list is paged, its recovery scans the WAL
        // objects and reads no header, and a segment sealed every few
        // hundred chunks would make a busy broker's consolidation cost
        // more requests than its WAL (it seals by size, segment.ms and
        // wal_max_age_ms).
        let max_chunks = if self.open.record.wal {
            0
        } else {
            self.ctx.config.segment_max_chunks
        };
        if self.open.bytes > 0
            && (self.open.bytes + payload_len > self.config.segment_bytes
                || (max_chunks > 0 && self.open.chunks >= max_chunks))
        {
            self.roll(buffer.base).await?;
        }
        let Buffer {
            mut buf,
            base,
            max_timestamp,
            batches,
            waiters,
            span,
            ..
        } = buffer;
        chunk::seal_buffer(
            &mut buf,
            self.epoch,
            base,
            self.next_offset,
            max_timestamp,
            batches,
        );
        let data = buf.freeze();
        let path = layout::chunk(
            self.id,
            self.open.record.base_offset,
            self.open.record.epoch,
            base,
        );
        self.open.bytes += payload_len;
        self.open.chunks += 1;
        self.open.end = self.next_offset;
        let chunk = ChunkRef {
            base_offset: base,
            next_offset: self.next_offset,
            max_timestamp,
            path: Arc::from(path.as_ref()),
            bytes: payload_len,
            wal: None,
        };
        let payload = data.slice(chunk::HEADER_LEN..);
        let (task, wal) = match self.ctx.wal.clone() {
            Some(wal) => {
                let meta = ChunkMeta {
                    partition: self.id,
                    segment_base: self.open.record.base_offset,
                    segment_epoch: self.open.record.epoch,
                    epoch: self.epoch,
                    base_offset: base,
                    next_offset: self.next_offset,
                    max_timestamp,
                    batch_count: batches,
                };
                let from = wal.position().await;
                (
                    spawn_wal_append(wal, meta, payload.clone(), self.wal_held.take(), span),
                    Some((meta, from)),
                )
            }
            None => (self.spawn_put(path, data.clone(), span), None),
        };
        self.inflight.push_back(Flush {
            chunk,
            segment_base: self.open.record.base_offset,
            payload,
            data,
            waiters,
            task,
            wal,
        });
        Ok(())
    }

    /// Write one chunk object to the open segment's replicas (retrying a
    /// few times, each attempt bounded by the put timeout).
    fn spawn_put(
        &self,
        path: object_store::path::Path,
        put_data: Bytes,
        span: tracing::Span,
    ) -> JoinHandle<Result<Landed, StorageError>> {
        let replicas = self.open.replicas.clone();
        let metrics = self.ctx.metrics.clone();
        let timeout = Duration::from_millis(self.ctx.config.chunk_put_timeout_ms.max(1));
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                let t = Instant::now();
                let r = match tokio::time::timeout(
                    timeout,
                    replicas.put_create(&path, put_data.clone()),
                )
                .await
                {
                    Ok(r) => r,
                    // Sent and not answered in time: it may have landed.
                    Err(_) => Err(StorageError::Indeterminate(format!(
                        "{path}: no write quorum within {timeout:?}"
                    ))),
                };
                metrics.storage_op("put", t.elapsed(), r.is_ok());
                match r {
                    Err(StorageError::Unavailable(e) | StorageError::Indeterminate(e))
                        if attempt < 2 =>
                    {
                        attempt += 1;
                        tracing::warn!(%path, attempt, error = %e, "chunk put failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                    // (A retry finding its own earlier attempt's object on a
                    // replica counts that replica: put_create compares.)
                    other => return other.map(Landed::Put),
                }
            }
        }.instrument(span))
    }

    /// A chunk of the open segment could not reach its write quorum: seal
    /// the segment where the failed chunk starts and write that chunk and
    /// every later one again, unchanged, into a new segment on a fresh
    /// replica set that avoids the failing targets (BMQ's switch to new
    /// nodes). Producers wait a little longer and see no error.
    async fn switch_segment(&mut self, failed: Flush, error: &str) -> Result<(), Stop> {
        let base = failed.chunk.base_offset;
        let avoid: Vec<String> = self
            .open
            .replicas
            .targets()
            .iter()
            .filter(|t| !t.is_up())
            .map(|t| t.id.clone())
            .collect();
        let mut redo = vec![failed];
        for f in self.inflight.drain(..) {
            f.task.abort();
            redo.push(f);
        }
        let replicas = self.ctx.pool.choose_replica_set_for(
            &avoid,
            self.config.replicas,
            self.config.write_quorum,
        );
        tracing::warn!(partition = %self.id, segment = self.open.record.base_offset, at = base,
            avoid = ?avoid, new_replicas = ?replicas.ids(), error,
            "a chunk could not reach its write quorum: sealing the segment early and writing on a fresh replica set");
        self.ctx.metrics.segment_switches.inc();
        let record = OpenSegmentRecord {
            base_offset: base,
            epoch: self.epoch,
            replica_set: replicas.ids(),
            created_ms: self.ctx.clock.now_ms(),
            ..Default::default()
        };
        let mut old = std::mem::replace(
            &mut self.open,
            OpenSeg {
                record: record.clone(),
                replicas: replicas.clone(),
                bytes: redo.iter().map(|f| f.chunk.bytes).sum(),
                chunks: redo.len() as u64,
                end: self.next_offset,
            },
        );
        old.end = base;
        if old.end > old.record.base_offset {
            self.sealing.push_back(old);
        } else {
            // Nothing of it was committed: it simply never existed.
            let (id, cache) = (self.id, self.ctx.cache.clone());
            delete_chunks(id, &old.record, old.replicas, cache, self.gc_soon.clone());
            self.log.update(|s| {
                s.segments.remove(&old.record.base_offset);
            });
        }
        self.save_checkpoint(Vec::new()).await?;
        self.show_open_segment();
        for f in redo {
            let path = layout::chunk(self.id, base, self.epoch, f.chunk.base_offset);
            let task = self.spawn_put(path.clone(), f.data.clone(), tracing::Span::none());
            self.inflight.push_back(Flush {
                chunk: ChunkRef {
                    path: Arc::from(path.as_ref()),
                    ..f.chunk
                },
                segment_base: base,
                data: f.data,
                payload: f.payload,
                waiters: f.waiters,
                task,
                wal: None,
            });
        }
        Ok(())
    }

    /// The WAL stream a chunk went to died before making it durable (a
    /// fence at its next key, an object short of W): hand that chunk and
    /// every later one in flight in again, in order, to the broker's new
    /// stream. A later chunk may already be in the new stream, ahead of
    /// this one: recovery keeps one copy of a chunk found twice, and acks
    /// still go in offset order.
    async fn wal_reappend(&mut self, failed: Flush, why: &str) -> Result<(), Stop> {
        let Some(wal) = self.ctx.wal.clone() else {
            return Err(Stop::Failed(AppendError::Storage(
                StorageError::Unavailable(why.to_string()),
            )));
        };
        tracing::warn!(partition = %self.id, at = failed.chunk.base_offset, error = why,
            "the WAL stream ended before the chunk was durable: handing it in again");
        let mut redo = vec![failed];
        for f in self.inflight.drain(..) {
            f.task.abort();
            redo.push(f);
        }
        for mut f in redo {
            let (meta, _) = f.wal.expect("a WAL flush");
            let from = wal.position().await;
            f.task = spawn_wal_append(
                wal.clone(),
                meta,
                f.payload.clone(),
                None,
                tracing::Span::none(),
            );
            f.wal = Some((meta, from));
            self.inflight.push_back(f);
        }
        Ok(())
    }

    /// The earliest place in the broker's WAL where a chunk of this
    /// partition not yet committed can be: recovery after an unclean end
    /// scans from there (the committed ones are listed in the checkpoint).
    async fn wal_start(&self) -> Option<WalPositionRecord> {
        let wal = self.ctx.wal.as_ref()?;
        let now = wal.position().await;
        Some(
            self.inflight
                .iter()
                .filter_map(|f| f.wal.map(|(_, from)| from))
                .fold(now, |a, b| {
                    if (b.stream, b.seq) < (a.stream, a.seq) {
                        b
                    } else {
                        a
                    }
                }),
        )
    }

    async fn flush_done(
        &mut self,
        done: Result<Result<Landed, StorageError>, tokio::task::JoinError>,
    ) -> Result<(), Stop> {
        let mut flush = self.inflight.pop_front().expect("a flush completed");
        match done {
            Ok(Ok(Landed::Put(PutOutcome::Created))) => {}
            Ok(Ok(Landed::Wal(r))) => match super::super::wal::chunk_ref(&self.ctx.pool, &r) {
                Ok(c) => flush.chunk = c,
                Err(e) => {
                    let e = AppendError::Storage(e);
                    for w in flush.waiters {
                        let _ = w.reply.send(Err(e.clone()));
                    }
                    return Err(Stop::Failed(e));
                }
            },
            Ok(Ok(Landed::Reopened(why))) if self.switches_in_a_row < MAX_SWITCHES_IN_A_ROW => {
                self.switches_in_a_row += 1;
                return self.wal_reappend(flush, &why).await;
            }
            Ok(Ok(Landed::Reopened(why))) => {
                let e = AppendError::Storage(StorageError::Unavailable(why));
                for w in flush.waiters {
                    let _ = w.reply.send(Err(e.clone()));
                }
                return Err(Stop::Failed(e));
            }
            Ok(Ok(Landed::Put(PutOutcome::AlreadyExists))) => {
                for w in flush.waiters {
                    let _ = w.reply.send(Err(AppendError::NotLeader));
                }
                return Err(Stop::Fenced);
            }
            Ok(Err(StorageError::Unavailable(e) | StorageError::Indeterminate(e)))
                if flush.wal.is_none()
                    && flush.segment_base == self.open.record.base_offset
                    && self.switches_in_a_row < MAX_SWITCHES_IN_A_ROW =>
            {
                self.switches_in_a_row += 1;
                return self.switch_segment(flush, &e).await;
            }
            Ok(Err(e)) => {
                let e = AppendError::Storage(e);
                for w in flush.waiters {
                    let _ = w.reply.send(Err(e.clone()));
                }
                return Err(Stop::Failed(e));
            }
            Err(e) => return Err(task_died(e)),
        }
        if !self.ctx.lease.is_valid() {
            for w in flush.waiters {
                let _ = w.reply.send(Err(AppendError::NotLeader));
            }
            return Err(Stop::Fenced);
        }
        self.switches_in_a_row = 0;
        let chunk = flush.chunk;
        self.ctx.cache.put_object(chunk.path.clone(), flush.payload);
        let seg_base = flush.segment_base;
        let next = chunk.next_offset;
        let bytes = chunk.bytes;
        let records = (chunk.next_offset - chunk.base_offset).max(0) as u64;
        // Transactions whose end markers are durable now end: the last
        // stable offset moves with the high watermark, aborts are indexed.
        let aborted = self.txns.durable(next);
        let first_unstable = self.txns.first_unstable();
        let log_start = self.log.append_update(move |s| {
            if let Some(SegmentView::Open { chunks, .. }) = s.segments.get_mut(&seg_base) {
                chunks.push(chunk);
            }
            s.high_watermark = next;
            s.first_unstable = first_unstable;
            if !aborted.is_empty() {
                std::sync::Arc::make_mut(&mut s.aborted).extend(aborted);
            }
            s.log_start_offset
        });
        self.ctx.metrics.bytes_in(bytes);
        self.ctx.metrics.load.add_in(self.id, bytes);
        self.ctx.metrics.partition_in(self.id, bytes, records);
        if !self.duplicates.is_empty() {
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.duplicates)
                .into_iter()
                .partition(|(last, _)| *last < next);
            self.duplicates = waiting;
            for (_, w) in ready {
                let _ = w.reply.send(Ok(Appended {
                    base_offset: w.base_offset,
                    log_append_time: -1,
                    log_start_offset: log_start,
                }));
            }
        }
        for w in flush.waiters {
            let _ = w.reply.send(Ok(Appended {
                base_offset: w.base_offset,
                log_append_time: w.log_append_time,
                log_start_offset: log_start,
            }));
        }
        self.maybe_start_seal();
        Ok(())
    }

    /// Start a new segment at `base` on a fresh replica set; the current one
    /// joins the queue of segments to seal.
    async fn roll(&mut self, base: Offset) -> Result<(), Stop> {
        let replicas = self.ctx.pool.choose_replica_set_for(
            &[],
            self.config.replicas,
            self.config.write_quorum,
        );
        let record = OpenSegmentRecord {
            base_offset: base,
            epoch: self.epoch,
            replica_set: replicas.ids(),
            created_ms: self.ctx.clock.now_ms(),
            wal: self.ctx.wal.is_some(),
            ..Default::default()
        };
        let old = std::mem::replace(
            &mut self.open,
            OpenSeg {
                record: record.clone(),
                replicas: replicas.clone(),
                bytes: 0,
                chunks: 0,
                end: base,
            },
        );
        self.sealing.push_back(old);
        // Recorded before its first chunk is written.
        self.save_checkpoint(Vec::new()).await?;
        self.show_open_segment();
        tracing::debug!(partition = %self.id, base, "rolled to a new segment");
        Ok(())
    }

    /// Make the (new, empty) open segment visible to readers.
    fn show_open_segment(&self) {
        let view = SegmentView::Open {
            base_offset: self.open.record.base_offset,
            epoch: self.open.record.epoch,
            replicas: self.open.replicas.clone(),
            chunks: Vec::new(),
        };
        self.log.update(|s| {
            s.segments.insert(self.open.record.base_offset, view);
        });
    }

    /// Seal the oldest rolled segment once all its chunks are committed.
    fn maybe_start_seal(&mut self) {
        if self.seal_task.is_some() {
            return;
        }
        if self.seal_retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Some(seg) = self.sealing.front() else {
            return;
        };
        let (_, hw, _) = self.log.offsets();
        if hw < seg.end {
            return;
        }
        let chunks = match self.log.snapshot().segments.get(&seg.record.base_offset) {
            Some(SegmentView::Open { chunks, .. }) => chunks.clone(),
            _ => Vec::new(),
        };
        let ctx = self.ctx.clone();
        let id = self.id;
        let record = seg.record.clone();
        let replicas = seg.replicas.clone();
        let epoch = self.epoch;
        self.seal_task = Some(tokio::spawn(async move {
            if chunks.is_empty() {
                return Ok(SegmentRecord::default());
            }
            // A bounded number at once per broker (seal_concurrency).
            let _turn = ctx.seals.clone().acquire_owned().await;
            let cache = ctx.cache.clone();
            consolidate(&ctx, id, &record, &replicas, &chunks, &cache, epoch).await
        }));
    }

    async fn seal_done(
        &mut self,
        done: Result<Result<SegmentRecord, StorageError>, tokio::task::JoinError>,
    ) -> Result<(), Stop> {
        let mut record = match done {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.seal_failures += 1;
                let delay = seal_retry_delay(self.seal_failures);
                self.seal_retry_at = Some(Instant::now() + delay);
                tracing::warn!(partition = %self.id, error = %e, failures = self.seal_failures,
                    retry_in_ms = delay.as_millis() as u64, "sealing a segment failed; will retry");
                return Ok(());
            }
            Err(e) => return Err(task_died(e)),
        };
        self.seal_failures = 0;
        self.seal_retry_at = None;
        let seg = self
            .sealing
            .pop_front()
            .expect("a segment was being sealed");
        // A WAL segment's chunk pages go with its checkpoint entry.
        let pages: Vec<Op> = if seg.record.wal {
            vec![Op::DeletePrefix(keys::chunk_pages_prefix(
                self.id,
                seg.record.base_offset,
            ))]
        } else {
            Vec::new()
        };
        if record.batch_count == 0 {
            // Nothing was committed to it: no segment to record.
            self.save_checkpoint(pages).await?;
            self.log.update(|s| {
                s.segments.remove(&seg.record.base_offset);
            });
        } else {
            // Its markers are durable: the aborted transactions whose
            // abort marker it holds go with its record.
            record.aborted = aborted_records(&self.log, record.base_offset, record.end_offset);
            let view = sealed_view(&self.ctx, self.id, &record)?;
            let mut ops = pages;
            ops.push(Op::put(
                keys::segment(self.id, record.base_offset),
                record.encode_to_vec(),
            ));
            self.save_checkpoint(ops).await?;
            self.log.update(|s| {
                s.segments
                    .insert(record.base_offset, SegmentView::Sealed(Arc::new(view)));
            });
            self.ctx.metrics.segment_sealed();
            tracing::info!(partition = %self.id, base = record.base_offset, end = record.end_offset, bytes = record.data_bytes, "sealed segment");
        }
        delete_chunks(
            self.id,
            &seg.record,
            seg.replicas,
            self.ctx.cache.clone(),
            self.gc_soon.clone(),
        );
        self.maybe_start_seal();
        Ok(())
    }

    /// Save the checkpoint (and `ops`) only while we still own the partition.
    async fn save_checkpoint(&mut self, ops: Vec<Op>) -> Result<(), Stop> {
        let wal_start = self.wal_start().await;
        let (log_start, hw, _) = self.log.offsets();
        let mut open_segments: Vec<OpenSegmentRecord> =
            self.sealing.iter().map(|s| s.record.clone()).collect();
        open_segments.push(self.open.record.clone());
        self.list_wal_chunks(&mut open_segments);
        let mut ops = ops;
        for seg in open_segments.iter_mut() {
            ops.extend(super::super::wal::page_out(
                self.id,
                seg,
                self.ctx.config.wal_chunk_page,
            ));
        }
        let checkpoint = CheckpointRecord {
            format: FORMAT,
            epoch: self.epoch,
            log_start_offset: log_start,
            next_offset: hw,
            open_segments,
            clean: false,
            saved_ms: self.ctx.clock.now_ms(),
            wal_start,
        };
        self.commit_meta(ops, &checkpoint).await?;
        self.note_pages(&checkpoint);
        self.checkpoint = checkpoint;
        self.checkpoint_saved = Instant::now();
        Ok(())
    }

    /// The chunk pages `checkpoint` (now saved) names are written: later
    /// checkpoints page on from them.
    fn note_pages(&mut self, checkpoint: &CheckpointRecord) {
        for saved in checkpoint.open_segments.iter().filter(|s| s.wal) {
            for seg in self
                .sealing
                .iter_mut()
                .chain(std::iter::once(&mut self.open))
            {
                if seg.record.base_offset == saved.base_offset {
                    seg.record.pages.clone_from(&saved.pages);
                }
            }
        }
    }

    /// Shared WAL layout: a checkpoint lists the committed chunks of every
    /// WAL segment (their objects may be another broker's, from before a
    /// move), so that recovery needs to scan only from `wal_start` on.
    fn list_wal_chunks(&self, open_segments: &mut [OpenSegmentRecord]) {
        if !open_segments.iter().any(|s| s.wal) {
            return;
        }
        let snapshot = self.log.snapshot();
        for seg in open_segments.iter_mut().filter(|s| s.wal) {
            seg.chunks = match snapshot.segments.get(&seg.base_offset) {
                Some(SegmentView::Open { chunks, .. }) => {
                    chunks.iter().map(super::super::wal::chunk_record).collect()
                }
                _ => Vec::new(),
            };
        }
    }

    async fn commit_meta(
        &mut self,
        ops: Vec<Op>,
        checkpoint: &CheckpointRecord,
    ) -> Result<(), Stop> {
        // The producer state as of the checkpoint travels with it, with the
        // transactions not ended by then and the aborted ones of segments
        // not sealed yet (sealed ones keep theirs in their records).
        let mut producers = self.producers.snapshot(checkpoint.next_offset);
        producers.open_txns = self.txns.unended();
        let known = &self.producers;
        producers.coordinator_epochs = self
            .txns
            .coordinator_epochs(|p| known.epoch_of(p).is_some());
        let unsealed_from = self
            .sealing
            .front()
            .map_or(self.open.record.base_offset, |s| s.record.base_offset);
        producers.aborted = aborted_records(&self.log, unsealed_from, checkpoint.next_offset);
        let was_dirty = std::mem::take(&mut self.producers.dirty);
        let mut attempt = 0;
        loop {
            let mut txn = Txn::new().when(Condition::ValueEquals(
                keys::owner(self.id),
                self.owner.clone(),
            ));
            txn = txn.then(Op::put(keys::producers(self.id), producers.encode_to_vec()));
            for op in ops.iter().cloned() {
                txn = txn.then(op);
            }
            txn = txn.then(Op::put(
                keys::checkpoint(self.id),
                checkpoint.encode_to_vec(),
            ));
            match self.ctx.meta.txn(txn).await {
                Ok(TxnOutcome::Committed { .. }) => return Ok(()),
                Ok(TxnOutcome::Mismatch) => {
                    self.producers.dirty |= was_dirty;
                    return Err(Stop::Fenced);
                }
                Err(MetaError::Unavailable(e)) | Err(MetaError::Indeterminate(e))
                    if attempt < 5 =>
                {
                    attempt += 1;
                    tracing::warn!(partition = %self.id, attempt, error = %e, "metadata write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn maybe_checkpoint(&mut self) -> Result<(), Stop> {
        let (_, hw, _) = self.log.offsets();
        let every = Duration::from_millis(self.ctx.config.checkpoint_interval_ms);
        if hw != self.checkpoint.next_offset && self.checkpoint_saved.elapsed() >= every {
            self.save_checkpoint(Vec::new()).await?;
        } else if let Some(wal) = &self.ctx.wal {
            // An idle partition's checkpoint names where the broker's WAL
            // stood when it was saved, which pins every WAL object since:
            // moved on now and then, so the garbage collection can go on.
            let idle = Duration::from_millis(self.ctx.config.wal_idle_checkpoint_ms);
            if self.checkpoint_saved.elapsed() >= idle
                && self.inflight.is_empty()
                && self.checkpoint.wal_start != Some(wal.position().await)
            {
                self.save_checkpoint(Vec::new()).await?;
            }
        }
        Ok(())
    }

    /// segment.ms rolls, retention, periodic checkpoint.
    /// Start a compaction pass over the sealed segments of a compacted
    /// topic (the pass itself decides whether the log is dirty enough).
    fn maybe_start_compaction(&mut self, now: i64) {
        if !self.config.compact
            || self.compact_task.is_some()
            || self.repair_task.is_some()
            || !self.ctx.lease.is_valid()
        {
            return;
        }
        let state = self.log.snapshot();
        // Nothing at or past the last stable offset: a transaction still
        // open there may yet abort, and its records must not supersede
        // anything.
        let stable = state.last_stable_offset();
        let sealed: Vec<_> = state
            .segments
            .values()
            .map_while(|s| match s {
                SegmentView::Sealed(s) if s.end_offset <= stable => Some(s.clone()),
                _ => None,
            })
            .collect();
        // As Kafka never cleans the active segment: a last segment that
        // nothing follows (rolled idle by segment.ms) stays as written
        // until a record arrives after it, so the log's last offset —
        // where consumers' positions end, librdkafka's included — is never
        // compacted away.
        let hold_last = sealed
            .last()
            .is_some_and(|s| s.end_offset >= state.high_watermark);
        let Some(first) = sealed.first() else { return };
        // Every abort marker after the first segment: a transaction's
        // records can be sealed long before its marker.
        let aborted = self.log.aborted_markers(first.base_offset, Offset::MAX);
        self.compact_task = Some(tokio::spawn(super::compactor::run(
            self.ctx.clone(),
            self.id,
            self.epoch,
            self.config.clone(),
            sealed,
            hold_last,
            aborted,
            now,
        )));
    }

    /// A compaction pass finished: its segments replace the ones they were
    /// made from (those still in the log as they were), in one metadata
    /// transaction under the lease; the old objects are deleted a little
    /// later (readers that planned with them finish first).
    async fn compact_done(
        &mut self,
        done: Result<
            Result<Vec<super::compactor::Replacement>, StorageError>,
            tokio::task::JoinError,
        >,
    ) -> Result<(), Stop> {
        let replacements = match done {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(partition = %self.id, error = %e, "compaction failed; the next pass tries again");
                return Ok(());
            }
            Err(e) => return Err(task_died(e)),
        };
        if replacements.is_empty() {
            return Ok(());
        }
        let state = self.log.snapshot();
        let mut ops = Vec::new();
        let mut swapped = Vec::new();
        let mut old = Vec::new();
        let mut stale = Vec::new();
        for r in replacements {
            // Every segment it replaces still in the log as it was (not
            // deleted by retention, not rewritten meanwhile).
            let current: Option<Vec<_>> = r
                .olds
                .iter()
                .map(|(base, path)| match state.segments.get(base) {
                    Some(SegmentView::Sealed(s)) if s.path == *path => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let Some(current) = current else {
                stale.push(r);
                continue;
            };
            ops.push(Op::put(
                keys::segment(self.id, r.record.base_offset),
                r.record.encode_to_vec(),
            ));
            for (base, _) in &r.olds[1..] {
                ops.push(Op::delete(keys::segment(self.id, *base)));
            }
            self.ctx
                .metrics
                .compacted(r.input_bytes, r.kept_records, r.dropped_records);
            let view = sealed_view(&self.ctx, self.id, &r.record)?;
            swapped.push((r.olds.iter().map(|(b, _)| *b).collect::<Vec<_>>(), view));
            old.extend(current);
        }
        if !ops.is_empty() {
            self.save_checkpoint(ops).await?;
            let merged = swapped.len();
            self.log.update(|s| {
                for (bases, v) in swapped {
                    for b in bases {
                        s.segments.remove(&b);
                    }
                    s.segments
                        .insert(v.base_offset, SegmentView::Sealed(Arc::new(v)));
                }
            });
            tracing::info!(partition = %self.id, segments = old.len(), into = merged, "compacted segments");
        }
        let cache = self.ctx.cache.clone();
        let gc_soon = self.gc_soon.clone();
        let ctx = self.ctx.clone();
        let id = self.id;
        tokio::spawn(async move {
            // Replaced objects go once readers that planned with them are
            // done; objects of a replacement that lost its race go at once.
            for r in stale {
                let Ok(replicas) = ctx.pool.replica_set(&r.record.replica_set) else {
                    continue;
                };
                let _ = replicas.delete(&r.path(id)).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            for s in old {
                let path = object_store::path::Path::from(s.path.as_ref());
                cache.invalidate_object(&s.path);
                if let Err(e) = s.replicas.delete(&path).await {
                    gc_soon.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(%path, error = %e, "deleting a compacted-away segment object failed; garbage collection will remove it");
                }
            }
        });
        Ok(())
    }

    async fn repair_done(&mut self, repaired: Vec<Repaired>) -> Result<(), Stop> {
        for r in repaired {
            let Some(kv) = self
                .ctx
                .meta
                .get(&keys::segment(self.id, r.base_offset))
                .await?
            else {
                continue; // deleted by retention meanwhile
            };
            let mut record = SegmentRecord::decode(kv.value).map_err(|e| {
                AppendError::Metadata(MetaError::Corrupt(format!("segment record: {e}")))
            })?;
            record.replica_set = r.replica_set;
            let view = sealed_view(&self.ctx, self.id, &record)?;
            self.save_checkpoint(vec![Op::put(
                keys::segment(self.id, record.base_offset),
                record.encode_to_vec(),
            )])
            .await?;
            self.log.update(|s| {
                if s.segments.contains_key(&record.base_offset) {
                    s.segments
                        .insert(record.base_offset, SegmentView::Sealed(Arc::new(view)));
                }
            });
        }
        Ok(())
    }

    /// Move off storage targets an operator drains: sealed segments with a
    /// replica there are repaired at once (not at the next periodic
    /// repair), and an open segment there rolls to a fresh replica set.
    async fn leave_draining_targets(&mut self) -> Result<(), Stop> {
        if !self.ctx.pool.targets().iter().any(|t| t.is_draining()) {
            return Ok(());
        }
        if self.repair_task.is_none() && self.last_repair.elapsed() >= Duration::from_secs(1) {
            let on_draining: Vec<_> = self
                .log
                .snapshot()
                .segments
                .values()
                .filter_map(|s| match s {
                    SegmentView::Sealed(s)
                        if s.replicas.targets().iter().any(|t| t.is_draining()) =>
                    {
                        Some(s.clone())
                    }
                    _ => None,
                })
                .collect();
            if !on_draining.is_empty() {
                self.last_repair = Instant::now();
                self.repair_task = Some(tokio::spawn(repair_segments(
                    self.ctx.clone(),
                    on_draining,
                    self.id,
                )));
            }
        }
        let open = self.open.replicas.targets();
        if !open.iter().any(|t| t.is_draining()) {
            return Ok(());
        }
        // Only if the pool can do without the draining targets.
        let usable = self
            .ctx
            .pool
            .targets()
            .iter()
            .filter(|t| t.takes_new_replicas())
            .count();
        if usable < open.len() {
            return Ok(());
        }
        if self.open.bytes > 0 {
            self.start_flush().await?;
            if self.open.bytes > 0 {
                let base = self.next_offset;
                self.roll(base).await?;
                self.maybe_start_seal();
            }
        } else if self.inflight.is_empty() && self.buffer.is_none() {
            // Nothing written there yet: just pick another set.
            let replicas = self.ctx.pool.choose_replica_set_for(
                &[],
                self.config.replicas,
                self.config.write_quorum,
            );
            self.open.record.replica_set = replicas.ids();
            self.open.replicas = replicas;
            self.save_checkpoint(Vec::new()).await?;
            self.show_open_segment();
        }
        Ok(())
    }

    /// The fault `fail_writer_at_offset`: the first append that finds the
    /// log at or past that offset stops the writer (once per process), in
    /// the middle of a produce load rather than at a timer's whim.
    fn injected_failure(&self) -> Option<AppendError> {
        let at = self.ctx.config.faults.fail_writer_at_offset;
        if at > 0 && self.next_offset >= at {
            static FAILED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !FAILED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Some(AppendError::Internal(
                    "fault injection: fail_writer_at_offset".into(),
                ));
            }
        }
        None
    }

    async fn housekeeping(&mut self) -> Result<(), Stop> {
        let now = self.ctx.clock.now_ms();
        self.producers.expire(now);
        self.garbage_collection(now).await;
        self.maybe_start_compaction(now);
        let every = Duration::from_millis(self.ctx.config.repair_interval_ms.max(100));
        // Repair and compaction both rewrite sealed segment records: one
        // at a time.
        if self.repair_task.is_none()
            && self.compact_task.is_none()
            && self.last_repair.elapsed() >= every
        {
            self.last_repair = Instant::now();
            let segments: Vec<_> = self
                .log
                .snapshot()
                .segments
                .values()
                .filter_map(|s| match s {
                    SegmentView::Sealed(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            self.repair_task = Some(tokio::spawn(repair_segments(
                self.ctx.clone(),
                segments,
                self.id,
            )));
        }
        // segment.ms, and on the shared WAL layout wal_max_age_ms: a slow
        // partition's chunks are consolidated into its own segment object
        // soon enough that they do not pin WAL objects for long.
        // Up to a fifth sooner, by segment: partitions whose segments began
        // together (a broker's start, a mass move) do not all seal at once.
        let max_age = match self.ctx.wal {
            Some(_) => {
                use std::hash::{Hash, Hasher};
                let wal_age = self.ctx.config.wal_max_age_ms.min(i64::MAX as u64) as i64;
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (self.id, self.open.record.base_offset).hash(&mut h);
                let spread = (h.finish() % 1000) as i64;
                self.config
                    .segment_ms
                    .min(wal_age - wal_age / 5 * spread / 1000)
            }
            None => self.config.segment_ms,
        };
        if self.open.bytes > 0 && now - self.open.record.created_ms >= max_age {
            self.start_flush().await?;
            if self.open.bytes > 0 {
                let base = self.next_offset;
                self.roll(base).await?;
                self.maybe_start_seal();
            }
        }
        if self.seal_task.is_none() {
            self.maybe_start_seal();
        }
        self.apply_retention(now).await?;
        self.maybe_checkpoint().await
    }

    /// Start a sweep when one is due (periodically, sooner after a failed
    /// delete), and report one that finished.
    async fn garbage_collection(&mut self, now_ms: i64) {
        let interval = self.ctx.config.gc_interval_ms;
        if interval == 0 {
            return;
        }
        let min_age = Duration::from_millis(self.ctx.config.gc_min_age_ms);
        if let Some(run) = &self.gc {
            if !run.0.is_finished() {
                return;
            }
            let mut run = self.gc.take().expect("a sweep");
            if let Ok(r) = (&mut run.0).await {
                self.ctx.metrics.gc_deleted.inc_by(r.deleted as u64);
                if r.deleted > 0 || r.failed > 0 {
                    tracing::info!(partition = %self.id, listed = r.listed, deleted = r.deleted,
                        young = r.young, failed = r.failed, "garbage collection swept the partition's storage");
                }
                if r.young > 0 || r.failed > 0 {
                    // Left-overs: look again once they are old enough.
                    self.gc_next = self.gc_next.min(Instant::now() + min_age);
                }
            }
        }
        if self
            .gc_soon
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            self.gc_next = self.gc_next.min(Instant::now() + min_age);
        }
        if Instant::now() < self.gc_next || !self.ctx.lease.is_valid() {
            return;
        }
        self.gc_next = Instant::now() + Duration::from_millis(interval);
        let snapshot = self.log.snapshot();
        let mut refs = References::default();
        for seg in self
            .sealing
            .iter()
            .map(|s| &s.record)
            .chain([&self.open.record])
        {
            refs.open_prefixes
                .push(layout::chunk_prefix(self.id, seg.base_offset, seg.epoch));
        }
        for seg in snapshot.segments.values() {
            match seg {
                SegmentView::Sealed(s) => {
                    refs.sealed.insert(
                        object_store::path::Path::from(s.path.as_ref()),
                        s.replicas.ids().into_iter().collect(),
                    );
                }
                SegmentView::Open {
                    base_offset, epoch, ..
                } => refs
                    .open_prefixes
                    .push(layout::chunk_prefix(self.id, *base_offset, *epoch)),
            }
        }
        let targets = self.ctx.pool.targets();
        let prefix = layout::partition_prefix(self.id);
        let cutoff = now_ms - min_age.as_millis() as i64;
        let lease = self.ctx.lease.clone();
        self.gc = Some(GcRun(tokio::spawn(async move {
            sweep(&targets, &prefix, &refs, cutoff, Some(lease)).await
        })));
    }

    async fn delete_records(
        &mut self,
        offset: Offset,
        reply: oneshot::Sender<Result<Offset, ResponseError>>,
    ) -> Result<(), Stop> {
        let (log_start, hw, _) = self.log.offsets();
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            let _ = reply.send(Err(ResponseError::OffsetOutOfRange));
            return Ok(());
        }
        if target <= log_start {
            let _ = reply.send(Ok(log_start));
            return Ok(());
        }
        let state = self.log.snapshot();
        let doomed: Vec<Arc<floe_storage::log::SealedSegment>> = state
            .segments
            .values()
            .map_while(|seg| match seg {
                SegmentView::Sealed(s) if s.end_offset <= target => Some(s.clone()),
                _ => None,
            })
            .collect();
        let deleted = doomed.len();
        self.drop_segments(doomed, target).await?;
        tracing::info!(partition = %self.id, log_start_offset = target, segments_deleted = deleted, "deleted records");
        let _ = reply.send(Ok(target));
        Ok(())
    }

    /// Move the log start to `new_start` and delete the sealed segments
    /// wholly below it: their records, the checkpoint, then their objects.
    async fn drop_segments(
        &mut self,
        doomed: Vec<Arc<floe_storage::log::SealedSegment>>,
        new_start: Offset,
    ) -> Result<(), Stop> {
        let ops: Vec<Op> = doomed
            .iter()
            .map(|s| Op::delete(keys::segment(self.id, s.base_offset)))
            .collect();
        self.log.update(|s| {
            for d in &doomed {
                s.segments.remove(&d.base_offset);
            }
            s.log_start_offset = new_start;
            // No read starts below the log start: aborts indexed there are
            // never asked for again.
            if s.aborted.keys().next().is_some_and(|k| *k < new_start) {
                let kept = Arc::make_mut(&mut s.aborted).split_off(&new_start);
                s.aborted = Arc::new(kept);
            }
        });
        self.save_checkpoint(ops).await?;
        for s in &doomed {
            tracing::info!(partition = %self.id, base = s.base_offset, end = s.end_offset, bytes = s.data_bytes, "deleted segment");
            self.ctx.metrics.segment_deleted();
        }
        let gc_soon = self.gc_soon.clone();
        tokio::spawn(async move {
            for s in doomed {
                let path = object_store::path::Path::from(s.path.as_ref());
                if let Err(e) = s.replicas.delete(&path).await {
                    gc_soon.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!(%path, error = %e, "deleting a segment object below the log start failed; garbage collection will remove it");
                }
            }
        });
        Ok(())
    }

    async fn apply_retention(&mut self, now: i64) -> Result<(), Stop> {
        // A compact-only topic keeps every key's latest record forever.
        if !self.config.delete {
            return Ok(());
        }
        let state = self.log.snapshot();
        let mut total: u64 = state.segments.values().map(|s| s.bytes()).sum();
        let mut doomed = Vec::new();
        for seg in state.segments.values() {
            let SegmentView::Sealed(s) = seg else { break };
            let by_time =
                self.config.retention_ms >= 0 && now - s.max_timestamp > self.config.retention_ms;
            let by_size = self.config.retention_bytes >= 0
                && total - s.data_bytes >= self.config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            total -= s.data_bytes;
            doomed.push(s.clone());
        }
        let Some(last) = doomed.last() else {
            return Ok(());
        };
        let new_start = last.end_offset.max(state.log_start_offset);
        self.drop_segments(doomed, new_start).await
    }

    /// Releasing: flush, wait for every chunk, fix the end of every unsealed
    /// segment in a final clean checkpoint, give up the write lease.
    /// Consolidation is not part of a move: a running one is abandoned and
    /// the next owner consolidates in the background, so releasing costs a
    /// flush and one metadata write however large the open segment is.
    async fn release(&mut self) -> Result<(), Stop> {
        self.start_flush().await?;
        while !self.inflight.is_empty() {
            let done = front(&mut self.inflight).await;
            self.flush_done(done).await?;
        }
        if let Some(t) = self.seal_task.take() {
            // Its partial object (named with our epoch) is never referenced.
            t.abort();
        }
        let mut open_segments: Vec<OpenSegmentRecord> =
            self.sealing.iter().map(|s| s.record.clone()).collect();
        if self.open.bytes > 0 {
            open_segments.push(self.open.record.clone());
        }
        // Every chunk is committed now: hand their list over, so that the
        // next owner needs no listing (within a bound on the record size;
        // a WAL segment's list always, paged: without it the next owner
        // would scan, and fence, this broker's live WAL stream).
        let snapshot = self.log.snapshot();
        let listed: Vec<Vec<ChunkRecord>> = open_segments
            .iter()
            .map(|seg| match snapshot.segments.get(&seg.base_offset) {
                Some(SegmentView::Open { chunks, .. }) => {
                    chunks.iter().map(super::super::wal::chunk_record).collect()
                }
                _ => Vec::new(),
            })
            .collect();
        let unpaged: usize = open_segments
            .iter()
            .zip(&listed)
            .filter(|(seg, _)| !seg.wal)
            .map(|(_, l)| l.len())
            .sum();
        let mut ops = vec![Op::delete(keys::owner(self.id))];
        for (seg, chunks) in open_segments.iter_mut().zip(listed) {
            if seg.wal || unpaged <= MAX_HANDED_OVER_CHUNKS {
                seg.chunks_listed = true;
                seg.chunks = chunks;
                ops.extend(super::super::wal::page_out(
                    self.id,
                    seg,
                    self.ctx.config.wal_chunk_page,
                ));
            }
        }
        let wal_start = self.wal_start().await;
        let (log_start, hw, _) = self.log.offsets();
        let checkpoint = CheckpointRecord {
            format: FORMAT,
            epoch: self.epoch,
            log_start_offset: log_start,
            next_offset: hw,
            open_segments,
            clean: true,
            saved_ms: self.ctx.clock.now_ms(),
            wal_start,
        };
        self.commit_meta(ops, &checkpoint).await
    }
}

/// The log's aborted transactions whose marker is in `[from, to)`, as
/// records.
fn aborted_records(
    log: &PartitionLog,
    from: Offset,
    to: Offset,
) -> Vec<floe_meta::schema::AbortedTxnRecord> {
    log.aborted_markers(from, to)
        .into_iter()
        .map(|(marker, a)| floe_meta::schema::AbortedTxnRecord {
            producer_id: a.producer_id,
            first_offset: a.first_offset,
            marker_offset: marker,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_retries_back_off_to_thirty_seconds() {
        let ms: Vec<u64> = (1..=12)
            .map(|n| seal_retry_delay(n).as_millis() as u64)
            .collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000, 30_000]
        );
        assert_eq!(seal_retry_delay(u32::MAX), Duration::from_secs(30));
    }
}
