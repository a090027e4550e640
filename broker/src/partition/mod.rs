//! One partition owned by this broker: its Broker-Partition state machine
//! (Starting → Recovering → Writing → Releasing → Released, or Failed), the
//! handle request handlers use, and the single writer task behind it.

mod recovery;
mod writer;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use floe_common::{Epoch, Offset, PartitionId, SharedClock};
use floe_meta::schema::{AssignmentRecord, OwnerRecord, FORMAT};
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
}

/// Result of a successful append.
#[derive(Clone, Copy, Debug)]
pub struct Appended {
    pub base_offset: Offset,
    /// The broker's timestamp for LogAppendTime topics, else -1.
    pub log_append_time: i64,
    pub log_start_offset: Offset,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("this broker does not own the partition (any more)")]
    NotLeader,
    #[error("storage failed: {0}")]
    Storage(String),
    #[error("metadata store failed: {0}")]
    Metadata(String),
}

impl AppendError {
    pub fn code(&self) -> ResponseError {
        match self {
            AppendError::NotLeader => ResponseError::NotLeaderOrFollower,
            AppendError::Storage(_) => ResponseError::KafkaStorageError,
            AppendError::Metadata(_) => ResponseError::KafkaStorageError,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("partition {0} is owned by another writer or its assignment changed")]
    NotAssigned(PartitionId),
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
        reply: oneshot::Sender<Result<Appended, AppendError>>,
    },
    UpdateConfig(TopicConfig),
    Release(oneshot::Sender<()>),
}

/// What request handlers hold for a partition this broker writes.
#[derive(Clone)]
pub struct PartitionHandle {
    pub id: PartitionId,
    pub epoch: Epoch,
    pub log: Arc<PartitionLog>,
    tx: mpsc::Sender<Command>,
    state: watch::Receiver<PartitionState>,
}

impl PartitionHandle {
    pub fn state(&self) -> PartitionState {
        *self.state.borrow()
    }

    /// Queue validated batches for append, in the order of calls; the
    /// returned receiver resolves once they are durable (or failed).
    pub async fn submit(
        &self,
        records: Bytes,
        headers: Vec<BatchHeader>,
    ) -> Result<oneshot::Receiver<Result<Appended, AppendError>>, AppendError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                records,
                headers,
                reply,
            })
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
    let (Some(kv), Some(_)) = (assigned, current) else {
        set_state(PartitionState::Failed);
        ctx.metrics.partition_removed(PartitionState::Failed);
        return Err(StartError::NotAssigned(id));
    };
    let owner = Bytes::from(
        OwnerRecord {
            format: FORMAT,
            broker_id: ctx.broker_id,
            epoch,
            acquired_ms: ctx.clock.now_ms(),
        }
        .encode_to_vec(),
    );
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
    if ctx.meta.txn(acquire).await? == TxnOutcome::Mismatch {
        set_state(PartitionState::Failed);
        ctx.metrics.partition_removed(PartitionState::Failed);
        return Err(StartError::NotAssigned(id));
    }

    // Step 2: checkpoint and recovery.
    let recovered = match recovery::recover(&ctx, id, epoch, &owner).await {
        Ok(r) => r,
        Err(e) => {
            set_state(PartitionState::Failed);
            ctx.metrics.partition_removed(PartitionState::Failed);
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
    let handle = PartitionHandle {
        id,
        epoch,
        log: log.clone(),
        tx,
        state: state_rx,
    };
    writer::spawn(ctx, id, epoch, owner, config, log, recovered, rx, state_tx);
    Ok((handle, report))
}
