//! One partition owned by this broker: its Broker-Partition state machine
//! (Starting → Recovering → Writing → Releasing → Released, or Failed), the
//! handle request handlers use, and the single writer task behind it.

pub(crate) mod compactor;
mod gc;
mod producers;
mod recovery;
pub mod txn;
mod writer;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::Instrument;

use bytes::Bytes;
use floe_common::{Epoch, Offset, PartitionId, SharedClock};
use floe_meta::schema::{AssignmentRecord, OwnerRecord, PartitionStateRecord, FORMAT};
use floe_meta::{keys, Condition, LeaseId, MetaError, MetadataStore, Op, Txn, TxnOutcome};
use floe_protocol::batch::BatchHeader;
use floe_protocol::ResponseError;
use floe_storage::log::PartitionLog;
use floe_storage::{BlockCache, StorageError, StoragePool};
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{BrokerConfig, TopicConfig};
use crate::metrics::Metrics;

pub use recovery::RecoveryReport;

/// Where a partition is in the Broker-Partition state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartitionState {
    Starting,
    Recovering,
    Writing,
    Releasing,
    Released,
    Failed,
}

impl PartitionState {
    pub fn name(&self) -> &'static str {
        match self {
            PartitionState::Starting => "starting",
            PartitionState::Recovering => "recovering",
            PartitionState::Writing => "writing",
            PartitionState::Releasing => "releasing",
            PartitionState::Released => "released",
            PartitionState::Failed => "failed",
        }
    }

    pub const ALL: [PartitionState; 6] = [
        PartitionState::Starting,
        PartitionState::Recovering,
        PartitionState::Writing,
        PartitionState::Releasing,
        PartitionState::Released,
        PartitionState::Failed,
    ];
}

/// The broker's own metadata lease, as seen locally: acks stop the moment
/// it may have lapsed, so a broker cut off from the metadata store fences
/// itself before anyone else can take its partitions.
#[derive(Debug)]
pub struct LeaseGuard {
    pub lease: LeaseId,
    started: Instant,
    /// Milliseconds since `started` until which the lease is surely alive.
    valid_until_ms: AtomicI64,
}

impl LeaseGuard {
    pub fn new(lease: LeaseId) -> Self {
        Self {
            lease,
            started: Instant::now(),
            valid_until_ms: AtomicI64::new(i64::MAX),
        }
    }

    /// Record a successful keep-alive sent at `sent`: the lease lives at
    /// least `ttl` minus a safety margin from then.
    pub fn renewed(&self, sent: Instant, ttl: std::time::Duration) {
        let margin = ttl / 3;
        let until = sent.duration_since(self.started) + ttl - margin;
        self.valid_until_ms
            .store(until.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn is_valid(&self) -> bool {
        (self.started.elapsed().as_millis() as i64) < self.valid_until_ms.load(Ordering::SeqCst)
    }
}

/// Everything a partition needs from its broker.
#[derive(Clone)]
pub struct PartitionContext {
    pub broker_id: i32,
    /// This run of the broker: the revision its registration was created at.
    pub session: i64,
    pub meta: Arc<dyn MetadataStore>,
    pub pool: Arc<StoragePool>,
    pub cache: BlockCache,
    pub clock: SharedClock,
    pub config: Arc<BrokerConfig>,
    pub lease: Arc<LeaseGuard>,
    pub metrics: Arc<Metrics>,
    /// The broker-wide pace of replica repair copies.
    pub repair_pacer: Arc<crate::throttle::Pacer>,
    /// The broker-wide pace of compaction reads.
    pub compaction_pacer: Arc<crate::throttle::Pacer>,
    /// The broker's shared WAL, when chunks go to shared WAL objects.
    pub wal: Option<Arc<crate::wal::BrokerWal>>,
    /// Turns for segment seals (consolidations), `seal_concurrency` of
    /// them broker-wide: a thousand partitions due at once take turns
    /// instead of taking the machine from the produce path.
    pub seals: Arc<tokio::sync::Semaphore>,
}

/// A producer as a partition knows it (DescribeProducers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    pub last_sequence: i32,
    pub last_ms: i64,
    /// The first offset of its transaction open here (-1: none).
    pub txn_start_offset: Offset,
}

/// Result of a successful append.
#[derive(Clone, Copy, Debug)]
pub struct Appended {
    pub base_offset: Offset,
    /// The broker's timestamp for LogAppendTime topics, else -1.
    pub log_append_time: i64,
    pub log_start_offset: Offset,
}

/// Why an append was not acked. Storage and metadata failures keep their
/// kind: unavailable (nothing written; retry), indeterminate (it may have
/// landed: a retry of an idempotent batch is deduplicated), invalid.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("this broker does not own the partition (any more)")]
    NotLeader,
    #[error("storage failed: {0}")]
    Storage(#[from] StorageError),
    #[error("metadata store failed: {0}")]
    Metadata(#[from] MetaError),
    /// A broken invariant of this broker (a task that died, a record it
    /// cannot read back).
    #[error("partition writer failed: {0}")]
    Internal(String),
    #[error("idempotent producer check failed: {0:?}")]
    Producer(ResponseError),
}

impl AppendError {
    /// The Kafka error a producer gets: REQUEST_TIMED_OUT when the batch
    /// may have been written (as for a replication timeout in Kafka),
    /// KAFKA_STORAGE_ERROR when it was not; both are retriable.
    pub fn code(&self) -> ResponseError {
        match self {
            AppendError::NotLeader => ResponseError::NotLeaderOrFollower,
            AppendError::Storage(StorageError::Indeterminate(_))
            | AppendError::Metadata(MetaError::Indeterminate(_)) => ResponseError::RequestTimedOut,
            AppendError::Storage(_) | AppendError::Metadata(_) | AppendError::Internal(_) => {
                ResponseError::KafkaStorageError
            }
            AppendError::Producer(code) => *code,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("partition {0} is no longer assigned to this broker at this epoch")]
    NotAssigned(PartitionId),
    #[error("partition {0} is still held by broker {1}")]
    OwnerBusy(PartitionId, i32),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("corrupt partition metadata: {0}")]
    Corrupt(String),
}

pub(crate) enum Command {
    Append {
        records: Bytes,
        headers: Vec<BatchHeader>,
        /// The verification guard its transactional batches were verified
        /// under (KIP-890: the coordinator said this partition was added
        /// for that producer id and epoch; `TxnGate`). Without one, or
        /// with one the producer's end marker cleared, a transactional
        /// batch joins only a transaction already open here at its epoch.
        guard: Option<u64>,
        reply: oneshot::Sender<Result<Appended, AppendError>>,
        /// The request's span (its chunk's storage writes are traced
        /// under it).
        span: tracing::Span,
    },
    /// Write a transaction's end marker (from its coordinator).
    Marker {
        marker: floe_protocol::control::Marker,
        reply: oneshot::Sender<Result<Appended, AppendError>>,
    },
    UpdateConfig(TopicConfig),
    /// What the partition knows of each producer.
    DescribeProducers(oneshot::Sender<Vec<ProducerInfo>>),
    /// Move the log start offset up to `offset` (-1: the high watermark).
    DeleteRecords(Offset, oneshot::Sender<Result<Offset, ResponseError>>),
    Release(oneshot::Sender<()>),
    /// Stop at once, touching neither storage nor metadata: the broker's
    /// lease is gone and the partition belongs to someone else.
    Abandon(oneshot::Sender<()>),
}

/// What request handlers hold for a partition this broker writes.
#[derive(Clone)]
pub struct PartitionHandle {
    pub id: PartitionId,
    pub epoch: Epoch,
    pub log: Arc<PartitionLog>,
    /// Verification guards of transactional producers (KIP-890).
    pub gate: Arc<txn::TxnGate>,
    tx: mpsc::Sender<Command>,
    state: watch::Receiver<PartitionState>,
}

impl PartitionHandle {
    pub fn state(&self) -> PartitionState {
        *self.state.borrow()
    }

    /// Follow the state machine's moves.
    pub fn state_watch(&self) -> watch::Receiver<PartitionState> {
        self.state.clone()
    }

    /// Queue validated batches for append, in the order of calls; the
    /// returned receiver resolves once they are durable (or failed).
    pub async fn submit(
        &self,
        records: Bytes,
        headers: Vec<BatchHeader>,
    ) -> Result<oneshot::Receiver<Result<Appended, AppendError>>, AppendError> {
        self.append(records, headers, None).await
    }

    /// [`PartitionHandle::submit`] of batches whose transactional ones the
    /// transaction coordinator verified under `guard` (from
    /// [`txn::TxnGate::guard`]; KIP-890: this partition was added to the
    /// producer's transaction at that epoch).
    pub async fn submit_verified(
        &self,
        records: Bytes,
        headers: Vec<BatchHeader>,
        guard: u64,
    ) -> Result<oneshot::Receiver<Result<Appended, AppendError>>, AppendError> {
        self.append(records, headers, Some(guard)).await
    }

    async fn append(
        &self,
        records: Bytes,
        headers: Vec<BatchHeader>,
        guard: Option<u64>,
    ) -> Result<oneshot::Receiver<Result<Appended, AppendError>>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                records,
                headers,
                guard,
                reply,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| AppendError::NotLeader)?;
        Ok(rx)
    }

    /// Append a transaction's end marker; the receiver resolves once it is
    /// durable — from then on the transaction has ended on this partition
    /// (the last stable offset passes it; an abort is in the aborted
    /// index).
    pub async fn write_marker(
        &self,
        marker: floe_protocol::control::Marker,
    ) -> Result<oneshot::Receiver<Result<Appended, AppendError>>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Marker { marker, reply })
            .await
            .map_err(|_| AppendError::NotLeader)?;
        Ok(rx)
    }

    pub async fn update_config(&self, config: TopicConfig) {
        let _ = self.tx.send(Command::UpdateConfig(config)).await;
    }

    /// Release the partition (flush, seal, final checkpoint, owner key
    /// deleted) and wait until it is done.
    pub async fn release(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Release(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// DeleteRecords: records below `offset` (-1: the high watermark) are
    /// gone for readers; whole segments below it are deleted. Returns the
    /// new log start offset.
    pub async fn delete_records(&self, offset: Offset) -> Result<Offset, ResponseError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::DeleteRecords(offset, tx))
            .await
            .map_err(|_| ResponseError::NotLeaderOrFollower)?;
        rx.await.unwrap_or(Err(ResponseError::NotLeaderOrFollower))
    }

    /// The idempotent and transactional producers this partition knows.
    pub async fn describe_producers(&self) -> Result<Vec<ProducerInfo>, ResponseError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::DescribeProducers(tx))
            .await
            .map_err(|_| ResponseError::NotLeaderOrFollower)?;
        rx.await.map_err(|_| ResponseError::NotLeaderOrFollower)
    }

    /// Stop writing at once without releasing (the lease that made this
    /// broker the owner has lapsed); pending appends fail NOT_LEADER.
    pub async fn abandon(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Abandon(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Wait for the state machine to leave Starting/Recovering.
    pub async fn wait_started(&self) -> PartitionState {
        let mut rx = self.state.clone();
        loop {
            let s = *rx.borrow_and_update();
            if !matches!(s, PartitionState::Starting | PartitionState::Recovering) {
                return s;
            }
            if rx.changed().await.is_err() {
                return *rx.borrow();
            }
        }
    }
}

/// Start owning partition `id` at assignment epoch `epoch`: take the write
/// lease, recover from the checkpoint, then hand the log to its writer.
pub async fn start(
    ctx: PartitionContext,
    id: PartitionId,
    epoch: Epoch,
    config: TopicConfig,
) -> Result<(PartitionHandle, RecoveryReport), StartError> {
    let (state_tx, state_rx) = watch::channel(PartitionState::Starting);
    ctx.metrics
        .partition_state(id, None, PartitionState::Starting);
    let set_state = |s: PartitionState| {
        let old = *state_tx.borrow();
        ctx.metrics.partition_state(id, Some(old), s);
        state_tx.send_replace(s);
    };

    // Recovering, step 1: the write lease, only if nobody holds it and the
    // assignment still names us at this epoch.
    set_state(PartitionState::Recovering);
    let assigned = ctx.meta.get(&keys::assignment(id)).await?;
    let current = assigned
        .as_ref()
        .and_then(|kv| AssignmentRecord::decode(kv.value.clone()).ok())
        .filter(|a| {
            a.broker_id == ctx.broker_id && a.epoch == epoch && a.broker_session == ctx.session
        });
    let fail = |e: StartError| {
        set_state(PartitionState::Failed);
        ctx.metrics.partition_removed(PartitionState::Failed);
        e
    };
    let (Some(kv), Some(_)) = (assigned, current) else {
        return Err(fail(StartError::NotAssigned(id)));
    };
    let mut owner = Bytes::from(
        OwnerRecord {
            format: FORMAT,
            broker_id: ctx.broker_id,
            epoch,
            acquired_ms: ctx.clock.now_ms(),
        }
        .encode_to_vec(),
    );
    // A planned move: the previous owner is still releasing (flush, seal,
    // checkpoint) and deletes its owner key when done. A failed owner's key
    // goes with its lease. Wait for either, as long as we stay assigned.
    let wait_limit = std::time::Duration::from_millis(ctx.config.lease_ttl_ms.saturating_mul(3));
    let waiting_since = Instant::now();
    loop {
        let acquire = Txn::new()
            .when(Condition::Missing(keys::owner(id)))
            .when(Condition::ModRevision(
                keys::assignment(id),
                kv.mod_revision,
            ))
            .then(Op::put_with_lease(
                keys::owner(id),
                owner.clone(),
                ctx.lease.lease,
            ));
        let outcome = match ctx.meta.txn(acquire).await {
            Ok(o) => o,
            // Maybe applied: the re-read below tells.
            Err(MetaError::Indeterminate(_)) => TxnOutcome::Mismatch,
            Err(e) => return Err(fail(e.into())),
        };
        if outcome.committed() {
            break;
        }
        let still = ctx
            .meta
            .get(&keys::assignment(id))
            .await
            .map_err(|e| fail(e.into()))?;
        if still.map(|a| a.mod_revision) != Some(kv.mod_revision) {
            return Err(fail(StartError::NotAssigned(id)));
        }
        let Some(held) = ctx
            .meta
            .get(&keys::owner(id))
            .await
            .map_err(|e| fail(e.into()))?
        else {
            continue;
        };
        let holder = OwnerRecord::decode(held.value.clone()).ok();
        if held.lease == Some(ctx.lease.lease)
            && holder
                .as_ref()
                .is_some_and(|o| o.broker_id == ctx.broker_id && o.epoch == epoch)
        {
            // Our own earlier attempt landed.
            owner = held.value;
            break;
        }
        if held.lease == Some(ctx.lease.lease)
            && holder
                .as_ref()
                .is_some_and(|o| o.broker_id == ctx.broker_id && o.epoch < epoch)
        {
            // Our own writer of an earlier epoch that failed (a running
            // one deletes its key when released, and the node releases it
            // before starting the next epoch): take the key over.
            let take = Txn::new()
                .when(Condition::ValueEquals(keys::owner(id), held.value.clone()))
                .when(Condition::ModRevision(
                    keys::assignment(id),
                    kv.mod_revision,
                ))
                .then(Op::put_with_lease(
                    keys::owner(id),
                    owner.clone(),
                    ctx.lease.lease,
                ));
            match ctx.meta.txn(take).await {
                Ok(o) if o.committed() => break,
                Ok(_) | Err(MetaError::Indeterminate(_)) => continue,
                Err(e) => return Err(fail(e.into())),
            }
        }
        if waiting_since.elapsed() > wait_limit {
            return Err(fail(StartError::OwnerBusy(
                id,
                holder.map(|o| o.broker_id).unwrap_or(-1),
            )));
        }
        let mut watch = ctx
            .meta
            .watch_prefix(&keys::owner(id), Some(held.mod_revision + 1))
            .await
            .map_err(|e| fail(e.into()))?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            use futures::StreamExt;
            while let Some(Ok(ev)) = watch.next().await {
                if matches!(ev.kind, floe_meta::WatchEventKind::Delete(ref k) if *k == keys::owner(id)) {
                    return;
                }
            }
        })
        .await;
    }
    publish_state(ctx.clone(), id, epoch, owner.clone(), state_rx.clone());
    if ctx.config.faults.recovery_delay_ms > 0 {
        // Tests only: a slow take-over.
        tokio::time::sleep(std::time::Duration::from_millis(
            ctx.config.faults.recovery_delay_ms,
        ))
        .await;
    }

    // Step 2: checkpoint and recovery.
    // Traced as an operation of its own (a root span: nothing asked for
    // it but an assignment), its metadata reads as children.
    let span = tracing::info_span!(
        parent: None,
        "partition.recover",
        partition = %id,
        epoch,
        broker = ctx.broker_id,
    );
    let recovered = match recovery::recover(&ctx, id, epoch, &owner, &config)
        .instrument(span)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let e = fail(e);
            let _ = ctx
                .meta
                .txn(
                    Txn::new()
                        .when(Condition::ValueEquals(keys::owner(id), owner.clone()))
                        .then(Op::delete(keys::owner(id))),
                )
                .await;
            return Err(e);
        }
    };
    let report = recovered.report.clone();
    let log = PartitionLog::new(id, recovered.state.clone(), ctx.cache.clone());
    let (tx, rx) = mpsc::channel(1024);
    set_state(PartitionState::Writing);
    let gate = Arc::new(txn::TxnGate::default());
    let handle = PartitionHandle {
        id,
        epoch,
        log: log.clone(),
        gate: gate.clone(),
        tx,
        state: state_rx,
    };
    writer::spawn(
        ctx, id, epoch, owner, config, log, gate, recovered, rx, state_tx,
    );
    Ok((handle, report))
}

/// Publish the partition's state at `/floe/partitions/{topic}/{p}/state`
/// (bound to the broker's lease) on every change while we own it, so
/// operators and tests can see where each partition is.
fn publish_state(
    ctx: PartitionContext,
    id: PartitionId,
    epoch: Epoch,
    owner: Bytes,
    mut state: watch::Receiver<PartitionState>,
) {
    tokio::spawn(async move {
        loop {
            let s = *state.borrow_and_update();
            let record = PartitionStateRecord {
                format: FORMAT,
                broker_id: ctx.broker_id,
                epoch,
                state: s.name().to_string(),
                updated_ms: ctx.clock.now_ms(),
            };
            let txn = Txn::new()
                .when(Condition::ValueEquals(keys::owner(id), owner.clone()))
                .then(Op::put_with_lease(
                    keys::partition_state(id),
                    record.encode_to_vec(),
                    ctx.lease.lease,
                ));
            if let Err(e) = ctx.meta.txn(txn).await {
                tracing::debug!(partition = %id, error = %e, "publishing partition state failed");
            }
            if matches!(s, PartitionState::Released | PartitionState::Failed) {
                return;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod append_error_tests {
    use super::*;

    #[test]
    fn an_append_that_may_have_landed_is_a_timeout_and_one_that_did_not_a_storage_error() {
        let cases = [
            (AppendError::NotLeader, ResponseError::NotLeaderOrFollower),
            (
                AppendError::Storage(StorageError::Indeterminate("late".into())),
                ResponseError::RequestTimedOut,
            ),
            (
                AppendError::Metadata(MetaError::Indeterminate("late".into())),
                ResponseError::RequestTimedOut,
            ),
            (
                AppendError::Storage(StorageError::Unavailable("down".into())),
                ResponseError::KafkaStorageError,
            ),
            (
                AppendError::Metadata(MetaError::Unavailable("down".into())),
                ResponseError::KafkaStorageError,
            ),
            (
                AppendError::Internal("task died".into()),
                ResponseError::KafkaStorageError,
            ),
            (
                AppendError::Producer(ResponseError::OutOfOrderSequenceNumber),
                ResponseError::OutOfOrderSequenceNumber,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
        }
    }
}

/// A partition context for tests: an embedded metadata store in `dir`
/// with a long lease held, broker 1, session 1, `pool`, and the broker's
/// WAL when `wal` opens one.
#[cfg(test)]
pub(crate) async fn test_context(
    dir: &tempfile::TempDir,
    pool: Arc<StoragePool>,
    config: BrokerConfig,
    wal: Option<floe_storage::wal_stream::WalConfig>,
) -> PartitionContext {
    use std::time::Duration;
    let meta: Arc<dyn MetadataStore> = Arc::new(
        floe_meta::embedded::EmbeddedStore::open(dir.path().join("meta"))
            .await
            .unwrap(),
    );
    let ttl = Duration::from_secs(120);
    let guard = Arc::new(LeaseGuard::new(meta.grant_lease(ttl).await.unwrap()));
    guard.renewed(Instant::now(), ttl);
    let wal = match wal {
        Some(c) => Some(Arc::new(
            crate::wal::BrokerWal::open(
                meta.clone(),
                pool.clone(),
                1,
                1,
                c,
                Arc::new(|| 1_000),
                None,
            )
            .await
            .unwrap(),
        )),
        None => None,
    };
    let config_seals = config.seal_concurrency.max(1);
    PartitionContext {
        broker_id: 1,
        session: 1,
        meta,
        pool,
        cache: BlockCache::new(16 << 20),
        clock: Arc::new(floe_common::SystemClock),
        config: Arc::new(config),
        lease: guard,
        metrics: Arc::new(Metrics::new()),
        repair_pacer: Arc::new(crate::throttle::Pacer::new(0)),
        compaction_pacer: Arc::new(crate::throttle::Pacer::new(0)),
        seals: Arc::new(tokio::sync::Semaphore::new(config_seals)),
        wal,
    }
}

/// (Re)start partition `id` at `epoch` under a test context: assigned to
/// broker 1 again, as a new owner would take it.
#[cfg(test)]
pub(crate) async fn test_start(
    ctx: &PartitionContext,
    id: PartitionId,
    epoch: Epoch,
) -> (PartitionHandle, RecoveryReport) {
    let assignment = AssignmentRecord {
        format: FORMAT,
        broker_id: 1,
        epoch,
        broker_session: 1,
    };
    ctx.meta
        .txn(Txn::new().then(Op::put(keys::assignment(id), assignment.encode_to_vec())))
        .await
        .unwrap();
    let config = TopicConfig::resolve(&Default::default(), &Default::default()).unwrap();
    start(ctx.clone(), id, epoch, config).await.unwrap()
}

#[cfg(test)]
mod transaction_tests {
    //! Transactions on a real partition writer (embedded metadata store,
    //! a memory storage target): verification, markers, the last stable
    //! offset and the aborted index as readers see them.
    use super::*;
    use floe_common::Uuid;
    use floe_protocol::batch::{validate_for_produce, Batches};
    use floe_protocol::control::{Marker, MarkerKind};
    use floe_protocol::kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use std::time::Duration;

    async fn started() -> (PartitionHandle, tempfile::TempDir) {
        let (h, ctx, dir) = started_with_ctx().await;
        drop(ctx);
        (h, dir)
    }

    async fn started_with_ctx() -> (PartitionHandle, PartitionContext, tempfile::TempDir) {
        started_with_config(BrokerConfig::default()).await
    }

    async fn started_with_config(
        config: BrokerConfig,
    ) -> (PartitionHandle, PartitionContext, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(
            StoragePool::new(
                vec![floe_storage::StorageTarget::open("t0", "memory://").unwrap()],
                1,
                1,
            )
            .unwrap(),
        );
        let ctx = test_context(&dir, pool, config, None).await;
        let h = restart(&ctx, 1).await;
        (h, ctx, dir)
    }

    /// (Re)start the test partition at `epoch`: assigned to us again, as
    /// a new owner would take it.
    async fn restart(ctx: &PartitionContext, epoch: Epoch) -> PartitionHandle {
        test_start(ctx, PartitionId::new(Uuid::from_u128(77), 0), epoch)
            .await
            .0
    }

    /// A batch of `n` records of producer `pid` at `epoch` from sequence
    /// `seq`, transactional or not.
    fn batch(pid: i64, epoch: i16, seq: i32, n: i32, transactional: bool) -> Bytes {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: pid,
                producer_epoch: epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: seq + i,
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(Bytes::from(format!("{pid}-{}", seq + i))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    }

    async fn append(
        h: &PartitionHandle,
        b: Bytes,
        verified: bool,
    ) -> Result<Appended, AppendError> {
        let headers = validate_for_produce(&b, usize::MAX).unwrap();
        let rx = if verified {
            // The coordinator said yes for every producer in it.
            let pid = headers[0].producer_id;
            let (token, _) = h.gate.guard(pid, headers[0].producer_epoch);
            h.gate.verified(pid, token);
            h.submit_verified(b, headers, token).await?
        } else {
            h.submit(b, headers).await?
        };
        rx.await.unwrap()
    }

    async fn end(
        h: &PartitionHandle,
        pid: i64,
        epoch: i16,
        kind: MarkerKind,
    ) -> Result<Appended, AppendError> {
        let m = Marker {
            producer_id: pid,
            producer_epoch: epoch,
            kind,
            coordinator_epoch: 1,
        };
        h.write_marker(m).await?.await.unwrap()
    }

    fn code(r: Result<Appended, AppendError>) -> ResponseError {
        match r {
            Err(AppendError::Producer(c)) => c,
            other => panic!("expected a producer error, got {other:?}"),
        }
    }

    /// KIP-890's verification guard: a batch verified before its
    /// transaction's end marker, arriving after it, is refused (it would
    /// open a transaction nothing ends); the next transaction's batch,
    /// verified under a new guard, is taken; later batches of an open
    /// transaction need no guard.
    #[tokio::test]
    async fn a_batch_verified_before_its_transactions_end_is_refused_after_it() {
        let (h, _dir) = started().await;
        let submit = |b: Bytes, guard: Option<u64>| {
            let h = h.clone();
            async move {
                let headers = validate_for_produce(&b, usize::MAX).unwrap();
                let rx = match guard {
                    Some(g) => h.submit_verified(b, headers, g).await.unwrap(),
                    None => h.submit(b, headers).await.unwrap(),
                };
                rx.await.unwrap()
            }
        };
        let (first, known) = h.gate.guard(7, 0);
        assert!(!known, "a new guard: ask the coordinator");
        // While the question is out, another request asks too, and a batch
        // under the unanswered guard is refused.
        assert_eq!(h.gate.guard(7, 0), (first, false));
        assert_eq!(
            code(submit(batch(7, 0, 0, 1, true), Some(first)).await),
            ResponseError::InvalidTxnState
        );
        h.gate.verified(7, first);
        submit(batch(7, 0, 0, 1, true), Some(first)).await.unwrap();
        // The same transaction goes on without asking again.
        assert_eq!(h.gate.guard(7, 0), (first, true));
        submit(batch(7, 0, 1, 1, true), None).await.unwrap();
        // A batch verified now (the coordinator still says yes) ...
        let (late, known) = h.gate.guard(7, 0);
        assert!(known);
        // ... but the transaction ends before it arrives.
        end(&h, 7, 0, MarkerKind::Commit).await.unwrap();
        let hw = h.log.offsets().1;
        assert_eq!(
            code(submit(batch(7, 0, 2, 1, true), Some(late)).await),
            ResponseError::InvalidTxnState
        );
        assert_eq!(
            code(submit(batch(7, 0, 2, 1, true), None).await),
            ResponseError::InvalidTxnState
        );
        assert_eq!(h.log.offsets().1, hw, "nothing written");
        assert_eq!(h.log.last_stable_offset(), hw, "no transaction left open");
        // The next transaction (same epoch: a client before EndTxn v5)
        // verifies afresh.
        let (next, known) = h.gate.guard(7, 0);
        assert!(!known && next != late);
        h.gate.verified(7, next);
        submit(batch(7, 0, 2, 1, true), Some(next)).await.unwrap();
        assert_eq!(h.log.last_stable_offset(), hw);
        // A failed verification forgets its guard.
        let (other, _) = h.gate.guard(8, 0);
        h.gate.forget(8, other);
        assert!(!h.gate.holds(8, 0, other));
    }

    /// Transactions survive a clean release (the checkpoint's open
    /// transactions and aborted index) and an unclean end (the replay of
    /// the chunks past the checkpoint), identical after each.
    #[tokio::test]
    async fn open_transactions_and_aborts_are_the_same_after_a_release_and_after_a_crash() {
        let (h, ctx, _dir) = started_with_ctx().await;
        append(&h, batch(11, 0, 0, 2, true), true).await.unwrap(); // 0..1
        append(&h, batch(-1, -1, -1, 1, false), false)
            .await
            .unwrap(); // 2
        end(&h, 11, 0, MarkerKind::Abort).await.unwrap(); // 3
        append(&h, batch(12, 0, 0, 1, true), true).await.unwrap(); // 4, open
                                                                   // DescribeProducers shows 12's open transaction, not 11's ended one.
        let starts: Vec<(i64, Offset)> = h
            .describe_producers()
            .await
            .unwrap()
            .iter()
            .map(|p| (p.producer_id, p.txn_start_offset))
            .collect();
        assert_eq!(starts, vec![(11, -1), (12, 4)]);
        let before = (
            h.log.offsets().1,
            h.log.last_stable_offset(),
            h.log.aborted_in(0, 100),
        );
        assert_eq!(before, (5, 4, vec![(11, 0)]));
        // A clean release and a new owner.
        h.release().await;
        let h = restart(&ctx, 2).await;
        let after = (
            h.log.offsets().1,
            h.log.last_stable_offset(),
            h.log.aborted_in(0, 100),
        );
        assert_eq!(after, before, "after a clean release");
        // More after it, then an unclean end: the new owner replays.
        append(&h, batch(13, 0, 0, 1, true), true).await.unwrap(); // 5
        end(&h, 13, 0, MarkerKind::Abort).await.unwrap(); // 6
        end(&h, 12, 0, MarkerKind::Commit).await.unwrap(); // 7
        append(&h, batch(14, 0, 0, 1, true), true).await.unwrap(); // 8, open
        let before = (
            h.log.offsets().1,
            h.log.last_stable_offset(),
            h.log.aborted_in(0, 100),
        );
        assert_eq!(before, (9, 8, vec![(11, 0), (13, 5)]));
        h.abandon().await;
        ctx.meta
            .txn(Txn::new().then(Op::Delete(keys::owner(h.id))))
            .await
            .unwrap();
        let h = restart(&ctx, 3).await;
        let after = (
            h.log.offsets().1,
            h.log.last_stable_offset(),
            h.log.aborted_in(0, 100),
        );
        assert_eq!(after, before, "after an unclean end");
        // The recovered writer still knows who is open: 14's commit ends it.
        end(&h, 14, 0, MarkerKind::Commit).await.unwrap();
        assert_eq!(h.log.last_stable_offset(), h.log.offsets().1);
    }

    /// A sealed segment keeps the aborted transactions whose marker it
    /// holds in its record; a new owner reads them from there.
    #[tokio::test]
    async fn a_sealed_segment_carries_its_aborted_transactions() {
        let (h, ctx, _dir) = started_with_config(BrokerConfig {
            segment_max_chunks: 2,
            ..BrokerConfig::default()
        })
        .await;
        append(&h, batch(21, 0, 0, 1, true), true).await.unwrap(); // 0
        end(&h, 21, 0, MarkerKind::Abort).await.unwrap(); // 1: segment [0, 2) full
        append(&h, batch(-1, -1, -1, 1, false), false)
            .await
            .unwrap(); // 2
        append(&h, batch(-1, -1, -1, 1, false), false)
            .await
            .unwrap(); // 3
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(
            h.log.snapshot().segments.get(&0),
            Some(floe_storage::log::SegmentView::Sealed(_))
        ) {
            assert!(Instant::now() < deadline, "segment 0 never sealed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let kv = ctx
            .meta
            .get(&keys::segment(h.id, 0))
            .await
            .unwrap()
            .unwrap();
        let record = floe_meta::schema::SegmentRecord::decode(kv.value).unwrap();
        assert_eq!(record.aborted.len(), 1);
        assert_eq!(
            (
                record.aborted[0].producer_id,
                record.aborted[0].first_offset,
                record.aborted[0].marker_offset
            ),
            (21, 0, 1)
        );
        h.release().await;
        let h = restart(&ctx, 2).await;
        assert_eq!(h.log.aborted_in(0, 100), vec![(21, 0)]);
        assert_eq!(h.log.last_stable_offset(), h.log.offsets().1);
        // Records deleted past the abort: its entry goes with them.
        assert_eq!(h.delete_records(2).await, Ok(2));
        assert_eq!(h.log.aborted_in(0, 100), vec![]);
    }

    #[tokio::test]
    async fn transactions_hold_the_last_stable_offset_until_their_markers_are_durable() {
        let (h, _dir) = started().await;
        // Unverified transactional batches are refused, nothing written.
        assert_eq!(
            code(append(&h, batch(10, 0, 0, 2, true), false).await),
            ResponseError::InvalidTxnState
        );
        assert_eq!(h.log.offsets().1, 0);
        // Producer 10 opens a transaction at 0; a plain record at 2;
        // producer 11 opens one at 3.
        assert_eq!(
            append(&h, batch(10, 0, 0, 2, true), true)
                .await
                .unwrap()
                .base_offset,
            0
        );
        assert_eq!(
            append(&h, batch(-1, -1, -1, 1, false), false)
                .await
                .unwrap()
                .base_offset,
            2
        );
        assert_eq!(
            append(&h, batch(11, 0, 0, 1, true), true)
                .await
                .unwrap()
                .base_offset,
            3
        );
        assert_eq!(h.log.offsets().1, 4);
        assert_eq!(h.log.last_stable_offset(), 0);
        // read_committed sees nothing yet.
        let r = h
            .log
            .read_until(0, h.log.last_stable_offset(), 1 << 20, true)
            .await
            .unwrap();
        assert!(r.records.is_empty());
        // 10 commits (marker at 4): the LSO moves to 11's first offset.
        assert_eq!(
            end(&h, 10, 0, MarkerKind::Commit)
                .await
                .unwrap()
                .base_offset,
            4
        );
        assert_eq!((h.log.offsets().1, h.log.last_stable_offset()), (5, 3));
        // 11 aborts (marker at 5): everything is stable; the abort is
        // indexed under its marker.
        assert_eq!(
            end(&h, 11, 0, MarkerKind::Abort).await.unwrap().base_offset,
            5
        );
        assert_eq!((h.log.offsets().1, h.log.last_stable_offset()), (6, 6));
        assert_eq!(h.log.aborted_in(0, 6), vec![(11, 3)]);
        assert_eq!(h.log.aborted_in(6, 10), vec![]);
        // The log holds the markers as control batches where they were
        // assigned.
        let r = h.log.read(0, 1 << 20, true).await.unwrap();
        let kinds: Vec<(i64, bool)> = Batches::new(&r.records)
            .map(|(_, b)| (b.base_offset, b.is_control()))
            .collect();
        assert_eq!(
            kinds,
            vec![(0, false), (2, false), (3, false), (4, true), (5, true)]
        );
        assert_eq!(
            floe_protocol::control::parse_marker(
                &r.records[Batches::new(&r.records).nth(4).unwrap().0..]
            ),
            Some(Marker {
                producer_id: 11,
                producer_epoch: 0,
                kind: MarkerKind::Abort,
                coordinator_epoch: 1,
            })
        );
        // A zombie's marker at an older epoch than the producer's own.
        assert_eq!(
            append(&h, batch(10, 1, 0, 1, true), true)
                .await
                .unwrap()
                .base_offset,
            6
        );
        assert_eq!(
            code(end(&h, 10, 0, MarkerKind::Abort).await),
            ResponseError::InvalidProducerEpoch
        );
        assert_eq!(h.log.last_stable_offset(), 6);
        assert_eq!(
            end(&h, 10, 1, MarkerKind::Commit)
                .await
                .unwrap()
                .base_offset,
            7
        );
        assert_eq!(h.log.last_stable_offset(), 8);
    }
}

#[cfg(test)]
mod wal_tests {
    //! The partition writer over the broker's shared WAL (issue 24): a
    //! real writer, the embedded metadata store, three memory targets.
    use super::*;
    use floe_common::Uuid;
    use floe_meta::schema::CheckpointRecord;
    use floe_protocol::batch::{synthetic_batch, validate_for_produce, Batches};
    use floe_storage::log::SegmentView;

    async fn wal_ctx(dir: &tempfile::TempDir) -> PartitionContext {
        wal_ctx_with_linger(dir, 5).await
    }

    async fn wal_ctx_with_linger(dir: &tempfile::TempDir, linger_ms: u64) -> PartitionContext {
        wal_ctx_with(
            dir,
            BrokerConfig {
                wal_linger_ms: linger_ms,
                ..Default::default()
            },
        )
        .await
    }

    async fn wal_ctx_with(dir: &tempfile::TempDir, config: BrokerConfig) -> PartitionContext {
        let targets = (0..3)
            .map(|i| floe_storage::StorageTarget::open(format!("t{i}"), "memory://").unwrap())
            .collect();
        let pool = Arc::new(StoragePool::new(targets, 2, 2).unwrap());
        let config = BrokerConfig {
            chunk_layout: crate::config::ChunkLayout::Wal,
            ..config
        };
        let wal = config.wal_config();
        test_context(dir, pool, config, Some(wal)).await
    }

    async fn restart(ctx: &PartitionContext, epoch: Epoch) -> PartitionHandle {
        restart_report(ctx, epoch).await.0
    }

    async fn restart_report(
        ctx: &PartitionContext,
        epoch: Epoch,
    ) -> (PartitionHandle, RecoveryReport) {
        test_start(ctx, PartitionId::new(Uuid::from_u128(78), 0), epoch).await
    }

    /// `n` batches of 3 records each, produced one after another; their
    /// base offsets.
    async fn produce(h: &PartitionHandle, n: usize) -> Vec<Offset> {
        let mut out = Vec::new();
        for i in 0..n {
            let b = Bytes::from(synthetic_batch(3, 40 + i, 1_700_000_000_000));
            let headers = validate_for_produce(&b, usize::MAX).unwrap();
            let rx = h.submit(b, headers).await.unwrap();
            out.push(rx.await.unwrap().unwrap().base_offset);
        }
        out
    }

    /// Every batch's base offset, read through a cold cache (from the WAL
    /// objects or the sealed segments, not from memory).
    async fn bases(h: &PartitionHandle) -> Vec<Offset> {
        let r = h.log.read(0, 64 << 20, true).await.unwrap();
        Batches::new(&r.records)
            .map(|(_, b)| b.base_offset)
            .collect()
    }

    fn cold(ctx: &PartitionContext) -> PartitionContext {
        PartitionContext {
            cache: BlockCache::new(16 << 20),
            ..ctx.clone()
        }
    }

    fn wal_chunks(h: &PartitionHandle) -> usize {
        h.log
            .snapshot()
            .segments
            .values()
            .map(|s| match s {
                SegmentView::Open { chunks, .. } => {
                    chunks.iter().filter(|c| c.wal.is_some()).count()
                }
                SegmentView::Sealed(_) => 0,
            })
            .sum()
    }

    /// A partition busier than its chunk linger hands in one chunk per WAL
    /// object, not one per `chunk_linger_ms`: batches every 5 ms with a
    /// 100 ms WAL linger gather into one chunk per object, two when a
    /// batch comes in the last moments before the cut (it goes at once
    /// rather than wait a whole linger), three in the first object (the
    /// first batch's chunk started it); before: one chunk a batch, forty
    /// over a handful of objects.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_partition_hands_in_one_chunk_per_wal_object() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = wal_ctx_with_linger(&dir, 100).await;
        let h = restart(&ctx, 1).await;
        let mut acks = Vec::new();
        for i in 0..40 {
            let b = Bytes::from(synthetic_batch(3, 40 + i, 1_700_000_000_000));
            let headers = validate_for_produce(&b, usize::MAX).unwrap();
            acks.push(h.submit(b, headers).await.unwrap());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let mut bases_acked = Vec::new();
        for a in acks {
            bases_acked.push(a.await.unwrap().unwrap().base_offset);
        }
        assert_eq!(bases_acked, (0..40).map(|i| i * 3).collect::<Vec<_>>());
        let snapshot = h.log.snapshot();
        let places: Vec<(i64, i64)> = snapshot
            .segments
            .values()
            .flat_map(|s| match s {
                SegmentView::Open { chunks, .. } => chunks
                    .iter()
                    .filter_map(|c| c.wal.as_ref().map(|w| (w.id.stream, w.id.seq)))
                    .collect(),
                SegmentView::Sealed(_) => Vec::new(),
            })
            .collect();
        let objects: std::collections::BTreeSet<_> = places.iter().collect();
        assert!(
            places.len() <= 2 * objects.len() + 1,
            "{} chunks in {} WAL objects: {places:?}",
            places.len(),
            objects.len()
        );
        assert_eq!(bases(&cold_start(&ctx, &h).await).await, bases_acked);
    }

    /// `h` released and taken again through a cold cache.
    async fn cold_start(ctx: &PartitionContext, h: &PartitionHandle) -> PartitionHandle {
        h.release().await;
        restart(&cold(ctx), 2).await
    }

    /// Chunks go to shared WAL objects and read back from them; a clean
    /// release hands their places over in the checkpoint (no scan); after
    /// an unclean end the new owner finds the chunks written since the
    /// last checkpoint in the old writer's stream, fences the stream (the
    /// writer sharing it hands its chunk in again to a new stream), and
    /// every acked record reads back at its offset.
    #[tokio::test]
    async fn wal_chunks_survive_a_release_and_an_unclean_end() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = wal_ctx(&dir).await;
        let h = restart(&ctx, 1).await;
        let mut want = produce(&h, 5).await;
        assert_eq!(want, vec![0, 3, 6, 9, 12]);
        assert!(wal_chunks(&h) >= 1, "chunks lie in WAL objects");

        h.release().await;
        let checkpoint = CheckpointRecord::decode(
            ctx.meta
                .get(&keys::checkpoint(h.id))
                .await
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        let seg = checkpoint.open_segments.last().unwrap();
        assert!(seg.wal && seg.chunks_listed);
        assert!(seg.chunks.iter().all(|c| c.wal.is_some()));
        assert!(checkpoint.wal_start.is_some());

        let ctx2 = cold(&ctx);
        let h = restart(&ctx2, 2).await;
        assert_eq!(bases(&h).await, want, "after a clean release");
        want.extend(produce(&h, 4).await);
        assert_eq!(want[5..], [15, 18, 21, 24]);
        // Killed: no release, the owner key goes as the lease would.
        h.abandon().await;
        ctx.meta
            .txn(Txn::new().then(Op::Delete(keys::owner(h.id))))
            .await
            .unwrap();
        let stream_before = ctx.wal.as_ref().unwrap().stream().await;
        // The same broker id back as a new process (a later session) has
        // a stream of its own before the recovery: it never wrote this
        // epoch, so the recovery leaves it alone.
        let later = crate::wal::BrokerWal::open(
            ctx.meta.clone(),
            ctx.pool.clone(),
            1,
            2,
            ctx.config.wal_config(),
            Arc::new(|| 1_000),
            None,
        )
        .await
        .unwrap();
        let later_stream = later.stream().await;
        assert!(later_stream > stream_before);
        let ctx3 = cold(&ctx);
        let (h, report) = restart_report(&ctx3, 3).await;
        assert!(!report.clean);
        assert_eq!(
            report.offsets_past_checkpoint, 12,
            "the four batches since the checkpoint came from the scan"
        );
        assert_eq!(bases(&h).await, want, "after an unclean end");
        let meta = |base: Offset| floe_storage::wal::ChunkMeta {
            partition: PartitionId::new(Uuid::from_u128(79), 0),
            segment_base: 0,
            segment_epoch: 1,
            epoch: 1,
            base_offset: base,
            next_offset: base + 3,
            max_timestamp: 0,
            batch_count: 1,
        };
        let b = Bytes::from(synthetic_batch(3, 40, 1_700_000_000_000));
        let r = later.append(meta(0), b.clone(), None).await.unwrap();
        assert_eq!((r.id.stream, r.id.seq), (later_stream, 0), "not fenced");
        // The recovery fenced the stream the (shared) WAL wrote: the next
        // chunk goes to a new stream, handed in again, and is acked.
        want.extend(produce(&h, 2).await);
        assert_eq!(want[9..], [27, 30]);
        assert!(ctx.wal.as_ref().unwrap().stream().await > stream_before);
        let h4ctx = cold(&ctx);
        h.release().await;
        let h = restart(&h4ctx, 4).await;
        assert_eq!(bases(&h).await, want, "after the fenced stream's successor");
    }

    async fn checkpoint_of(ctx: &PartitionContext, id: PartitionId) -> CheckpointRecord {
        let kv = ctx.meta.get(&keys::checkpoint(id)).await.unwrap().unwrap();
        CheckpointRecord::decode(kv.value).unwrap()
    }

    async fn pages_stored(ctx: &PartitionContext, id: PartitionId, base: Offset) -> usize {
        let (kvs, _) = ctx
            .meta
            .range(&keys::chunk_pages_prefix(id, base))
            .await
            .unwrap();
        kvs.len()
    }

    /// A WAL segment is not rolled by chunk count (300 chunks, past
    /// segment_max_chunks' 256, stay in one segment): its checkpoint keeps
    /// whole pages of its list under keys of their own, each written once,
    /// and only the rest itself (a checkpoint of a few KB, not one growing
    /// with the segment). A clean release and an unclean end both read the
    /// whole list back through the pages; the seal deletes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_wal_segment_keeps_its_list_in_pages() {
        const PAGE_CHUNKS: usize = 128;
        let dir = tempfile::tempdir().unwrap();
        let ctx = wal_ctx_with(
            &dir,
            BrokerConfig {
                wal_linger_ms: 1,
                checkpoint_interval_ms: 20,
                wal_chunk_page: PAGE_CHUNKS,
                ..Default::default()
            },
        )
        .await;
        let h = restart(&ctx, 1).await;
        let id = h.id;
        let mut want = produce(&h, 300).await;
        assert_eq!(wal_chunks(&h), 300, "one chunk a batch");
        h.release().await;
        let c = checkpoint_of(&ctx, id).await;
        assert_eq!(c.open_segments.len(), 1, "not rolled by chunk count");
        let seg = &c.open_segments[0];
        assert!(seg.chunks_listed);
        assert_eq!(seg.pages.len(), 300 / PAGE_CHUNKS);
        assert_eq!(seg.chunks.len(), 300 % PAGE_CHUNKS);
        assert_eq!(seg.pages[1].first_offset, seg.pages[0].next_offset);
        assert_eq!(seg.chunks[0].base_offset, seg.pages[1].next_offset);
        assert_eq!(pages_stored(&ctx, id, 0).await, 2);
        let size = c.encode_to_vec().len();
        assert!(size < 8 << 10, "the checkpoint holds {size} bytes");

        // A clean release: the whole list from pages and checkpoint, no
        // scan. The segment is then sealed, and its pages go with it.
        let h = restart(&cold(&ctx), 2).await;
        assert_eq!(bases(&h).await, want, "after a clean release");
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while ctx.meta.get(&keys::segment(id, 0)).await.unwrap().is_none()
            || pages_stored(&ctx, id, 0).await > 0
        {
            assert!(
                Instant::now() < deadline,
                "the segment was not sealed, or its pages stayed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }

        // Killed with a checkpoint of pages behind it: the recovery pages
        // the list in and finds the rest in the WAL.
        want.extend(produce(&h, 300).await);
        let base = want[300];
        while checkpoint_of(&ctx, id)
            .await
            .open_segments
            .last()
            .is_none_or(|s| s.pages.len() < 2)
        {
            assert!(
                Instant::now() < deadline,
                "no checkpoint with pages was saved"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        want.extend(produce(&h, 20).await);
        h.abandon().await;
        ctx.meta
            .txn(Txn::new().then(Op::Delete(keys::owner(id))))
            .await
            .unwrap();
        let (h, report) = restart_report(&cold(&ctx), 3).await;
        assert!(!report.clean);
        assert_eq!(bases(&h).await, want, "after an unclean end");
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        while ctx
            .meta
            .get(&keys::segment(id, base))
            .await
            .unwrap()
            .is_none()
            || pages_stored(&ctx, id, base).await > 0
        {
            assert!(
                Instant::now() < deadline,
                "the segment was not sealed, or its pages stayed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(checkpoint_of(&ctx, id)
            .await
            .open_segments
            .iter()
            .all(|s| s.base_offset != base));
        assert_eq!(
            bases(&cold_start(&ctx, &h).await).await,
            want,
            "from the sealed segment"
        );
    }
}
