//! Long-running admin operations: rebalances here (drains are in
//! `drain`). An `OperationRecord` under `/floe/operations/{id}` that any
//! controller creates (state "pending"), the leading controller executes
//! with a bounded number of concurrent partition moves, updating the record
//! after every step (so any controller can stream progress), and an
//! operator cancels through a separate key. A new leader resumes what a
//! former one left running.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use floe_common::{PartitionId, Uuid};
use floe_meta::schema::{
    AssignmentRecord, BrokerRecord, LoadRecord, OperationRecord, PartitionStateRecord, PlannedMove,
    FORMAT,
};
use floe_meta::{keys, Condition, MetaError, MetadataStore, Op, Txn};
use futures::StreamExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::rebalance::{self, Placement, Plan, Settings};
use crate::{Controller, MoveError};

pub const REBALANCE: &str = "rebalance";
/// One partition moved through the admin API (`floectl move`, the
/// console), recorded once it is over.
pub const MOVE: &str = "move";

/// Finished operations kept for `floectl op list`.
const KEEP_FINISHED: usize = 20;

/// How long one move may take to be written by its new owner.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn is_finished(state: &str) -> bool {
    matches!(state, "done" | "cancelled" | "failed")
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt(e.to_string())
}

pub(crate) fn now_ms() -> i64 {
    floe_common::wall_ms()
}

/// Where partitions are, their measured load and the brokers that may take
/// partitions (live, not drained), read at one revision.
pub struct Placements {
    pub eligible: Vec<i32>,
    pub placements: Vec<Placement>,
    /// Brokers whose load report is missing (their partitions count as 0).
    pub unreported: Vec<i32>,
}

pub async fn read_placements(meta: &dyn MetadataStore) -> Result<Placements, MetaError> {
    let (kvs, _) = meta.range(keys::ROOT.as_bytes()).await?;
    let mut live = Vec::new();
    let mut drained = HashSet::new();
    let mut loads: HashMap<PartitionId, u64> = HashMap::new();
    let mut reported = HashSet::new();
    let mut assigned = Vec::new();
    for kv in &kvs {
        if keys::parse_broker(&kv.key).is_some() {
            live.push(
                BrokerRecord::decode(kv.value.clone())
                    .map_err(corrupt)?
                    .broker_id,
            );
        } else if let Some(b) = keys::parse_drained(&kv.key) {
            drained.insert(b);
        } else if kv.key.starts_with(&keys::load_prefix()) {
            let r = LoadRecord::decode(kv.value.clone()).map_err(corrupt)?;
            reported.insert(r.broker_id);
            for p in r.partitions {
                if let Ok(t) = Uuid::from_slice(&p.topic_id) {
                    loads.insert(
                        PartitionId::new(t, p.partition),
                        p.bytes_in_per_sec + p.bytes_out_per_sec,
                    );
                }
            }
        } else if let Some(p) = keys::parse_assignment(&kv.key) {
            let a = AssignmentRecord::decode(kv.value.clone()).map_err(corrupt)?;
            assigned.push((p, a.broker_id));
        }
    }
    let eligible: Vec<i32> = live
        .iter()
        .copied()
        .filter(|b| !drained.contains(b))
        .collect();
    let placements = assigned
        .into_iter()
        .map(|(partition, broker)| Placement {
            partition,
            broker,
            load: loads.get(&partition).copied().unwrap_or(0),
        })
        .collect();
    let unreported = eligible
        .iter()
        .copied()
        .filter(|b| !reported.contains(b))
        .collect();
    Ok(Placements {
        eligible,
        placements,
        unreported,
    })
}

/// A rebalance plan for the cluster as it is now.
pub async fn plan_rebalance(
    meta: &dyn MetadataStore,
    settings: Settings,
) -> Result<(Plan, Placements), MetaError> {
    let p = read_placements(meta).await?;
    Ok((rebalance::plan(&p.eligible, &p.placements, settings), p))
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("operation {0} is already {1}; wait for it or cancel it")]
    Busy(String, String),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// Record a rebalance operation carrying `plan` (the leader picks it up).
/// Only one runs at a time, whichever controllers are asked.
pub async fn start_rebalance(
    meta: &dyn MetadataStore,
    plan: &Plan,
    max_in_flight: u32,
) -> Result<OperationRecord, StartError> {
    prepare_rebalance(meta, plan, max_in_flight)
        .await?
        .commit(meta)
        .await
}

/// A rebalance operation read and built, not yet recorded.
pub struct PreparedStart {
    record: OperationRecord,
    txn: Txn,
}

/// Check nothing runs, and build the record of a new operation and the
/// transaction that creates it: it commits only if no other operation took
/// the active slot in between (`/floe/operation-active`).
pub async fn prepare_rebalance(
    meta: &dyn MetadataStore,
    plan: &Plan,
    max_in_flight: u32,
) -> Result<PreparedStart, StartError> {
    let (kvs, _) = meta.range(&keys::operations_prefix()).await?;
    for kv in &kvs {
        if keys::parse_operation(&kv.key).is_none() {
            continue;
        }
        let op = OperationRecord::decode(kv.value.clone()).map_err(corrupt)?;
        // Drains run beside a rebalance (its moves skip drained brokers).
        if op.kind == REBALANCE && !is_finished(&op.state) {
            return Err(StartError::Busy(op.id, op.state));
        }
    }
    // Every operation read is finished: an active slot still naming one
    // (or one since removed) is stale and may be taken, if unchanged.
    let slot = match meta.get(&keys::operation_active()).await? {
        Some(kv) => Condition::ValueEquals(keys::operation_active(), kv.value),
        None => Condition::Missing(keys::operation_active()),
    };
    let now = now_ms();
    let id = format!(
        "rb-{}-{}",
        now,
        &floe_common::new_uuid().simple().to_string()[..6]
    );
    let state = if plan.moves.is_empty() {
        "done"
    } else {
        "pending"
    };
    let record = OperationRecord {
        format: FORMAT,
        id: id.clone(),
        kind: REBALANCE.into(),
        state: state.into(),
        created_ms: now,
        started_ms: 0,
        finished_ms: if plan.moves.is_empty() { now } else { 0 },
        max_in_flight: max_in_flight.max(1),
        moves: plan
            .moves
            .iter()
            .map(|m| PlannedMove {
                topic_id: m.partition.topic_id.as_bytes().to_vec(),
                partition: m.partition.partition,
                from: m.from,
                to: m.to,
                load: m.load,
                status: "pending".into(),
                detail: String::new(),
                took_ms: 0,
            })
            .collect(),
        detail: if plan.moves.is_empty() {
            "already balanced: nothing to move".into()
        } else {
            String::new()
        },
        executor: String::new(),
        broker: 0,
    };
    let mut txn = Txn::new()
        .when(Condition::Missing(keys::operation(&id)))
        .when(slot)
        .then(Op::put(keys::operation(&id), record.encode_to_vec()));
    txn = if is_finished(&record.state) {
        // Nothing to move: recorded as done, the slot stays free.
        txn.then(Op::delete(keys::operation_active()))
    } else {
        txn.then(Op::put(keys::operation_active(), id.clone()))
    };
    for op in prune_finished(&kvs) {
        txn = txn.then(op);
    }
    Ok(PreparedStart { record, txn })
}

/// A move made through the admin API, as it ended.
pub struct MoveOutcome {
    pub id: PartitionId,
    /// The broker assigned before (-1: none).
    pub from: i32,
    pub to: i32,
    /// "done" or "failed".
    pub status: &'static str,
    pub detail: String,
    pub started_ms: i64,
    pub took_ms: u64,
}

/// Record a finished move as an operation of kind [`MOVE`] (with the
/// newest finished operations kept, as for rebalances and drains), so that
/// moves show with the other operations, and who moved what stays on
/// record.
pub async fn record_move(meta: &dyn MetadataStore, m: &MoveOutcome) -> Result<(), MetaError> {
    let (kvs, _) = meta.range(&keys::operations_prefix()).await?;
    let now = now_ms();
    let id = format!(
        "mv-{}-{}",
        now,
        &floe_common::new_uuid().simple().to_string()[..6]
    );
    let record = OperationRecord {
        format: FORMAT,
        id: id.clone(),
        kind: MOVE.into(),
        state: m.status.into(),
        created_ms: m.started_ms,
        started_ms: m.started_ms,
        finished_ms: now,
        max_in_flight: 1,
        moves: vec![PlannedMove {
            topic_id: m.id.topic_id.as_bytes().to_vec(),
            partition: m.id.partition,
            from: m.from,
            to: m.to,
            load: 0,
            status: m.status.into(),
            detail: m.detail.clone(),
            took_ms: m.took_ms,
        }],
        detail: m.detail.clone(),
        executor: String::new(),
        broker: 0,
    };
    let mut txn = Txn::new()
        .when(Condition::Missing(keys::operation(&id)))
        .then(Op::put(keys::operation(&id), record.encode_to_vec()));
    for op in prune_finished(&kvs) {
        txn = txn.then(op);
    }
    meta.txn(txn).await?;
    Ok(())
}

/// Deletions that keep the newest finished operations (room for one more)
/// among the records `kvs` of the operations prefix.
pub(crate) fn prune_finished(kvs: &[floe_meta::KeyValue]) -> Vec<Op> {
    let mut finished: Vec<(i64, bytes::Bytes)> = kvs
        .iter()
        .filter(|kv| keys::parse_operation(&kv.key).is_some())
        .filter_map(|kv| {
            let op = OperationRecord::decode(kv.value.clone()).ok()?;
            is_finished(&op.state).then(|| (op.created_ms, kv.key.clone()))
        })
        .collect();
    finished.sort();
    let excess = (finished.len() + 1).saturating_sub(KEEP_FINISHED);
    finished
        .into_iter()
        .take(excess)
        .map(|(_, key)| Op::delete(key))
        .collect()
}

impl PreparedStart {
    /// Record it, unless another operation started since it was prepared.
    pub async fn commit(self, meta: &dyn MetadataStore) -> Result<OperationRecord, StartError> {
        if !meta.txn(self.txn).await?.committed() {
            let other = meta
                .get(&keys::operation_active())
                .await?
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_else(|| "another operation".into());
            return Err(StartError::Busy(other, "starting".into()));
        }
        let r = self.record;
        tracing::info!(operation = %r.id, moves = r.moves.len(), max_in_flight = r.max_in_flight, "rebalance requested");
        Ok(r)
    }
}

/// Ask the executing controller to stop operation `id` after the moves in
/// flight. Returns the record, or None if there is no such operation.
pub async fn cancel(
    meta: &dyn MetadataStore,
    id: &str,
) -> Result<Option<OperationRecord>, MetaError> {
    let Some(kv) = meta.get(&keys::operation(id)).await? else {
        return Ok(None);
    };
    let op = OperationRecord::decode(kv.value).map_err(corrupt)?;
    if !is_finished(&op.state) {
        meta.txn(Txn::new().then(Op::put(keys::operation_cancel(id), "cancel")))
            .await?;
        tracing::info!(operation = %id, "cancel requested");
    }
    Ok(Some(op))
}

/// How waiting for a move's new owner ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaited {
    /// The broker writes the partition at the epoch or later.
    Writing,
    TimedOut,
    /// The assignment went to another broker meanwhile (the target died and
    /// the controller reassigned it, or another move).
    Reassigned {
        broker: i32,
        epoch: i32,
    },
}

/// Wait until broker `broker` writes `p` at `epoch` or later, the
/// partition is assigned elsewhere, or `timeout`.
pub async fn await_owner(
    meta: &dyn MetadataStore,
    p: PartitionId,
    broker: i32,
    epoch: i32,
    timeout: Duration,
) -> Result<Awaited, MetaError> {
    let started = Instant::now();
    loop {
        let writing = meta
            .get(&keys::partition_state(p))
            .await?
            .and_then(|kv| PartitionStateRecord::decode(kv.value).ok())
            .is_some_and(|s| s.broker_id == broker && s.epoch >= epoch && s.state == "writing");
        if writing {
            return Ok(Awaited::Writing);
        }
        let assigned = meta
            .get(&keys::assignment(p))
            .await?
            .and_then(|kv| AssignmentRecord::decode(kv.value).ok());
        if let Some(a) = assigned {
            if a.broker_id != broker && a.epoch > epoch {
                return Ok(Awaited::Reassigned {
                    broker: a.broker_id,
                    epoch: a.epoch,
                });
            }
        }
        if started.elapsed() > timeout {
            return Ok(Awaited::TimedOut);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until broker `broker` writes `p` at `epoch` or later; false on
/// timeout or when the partition went elsewhere.
pub async fn wait_writing(
    meta: &dyn MetadataStore,
    p: PartitionId,
    broker: i32,
    epoch: i32,
    timeout: Duration,
) -> Result<bool, MetaError> {
    Ok(await_owner(meta, p, broker, epoch, timeout).await? == Awaited::Writing)
}

/// What one move came to.
struct Outcome {
    status: &'static str,
    detail: String,
    took_ms: u64,
}

impl Controller {
    /// Execute pending operations (and resume running ones) while leading.
    pub async fn run_operations(self: Arc<Self>, me: String, stop: CancellationToken) {
        loop {
            let rev = match self.execute_pending(&me, &stop).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(error = %e, "operations: could not read or save; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut watch = match self
                .meta
                .watch_prefix(&keys::operations_prefix(), Some(rev + 1))
                .await
            {
                Ok(w) => w,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = watch.next() => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
        }
    }

    /// Run every unfinished operation, oldest first; the revision read at.
    async fn execute_pending(
        self: &Arc<Self>,
        me: &str,
        stop: &CancellationToken,
    ) -> Result<i64, MetaError> {
        let (kvs, rev) = self.meta.range(&keys::operations_prefix()).await?;
        let mut ops: Vec<OperationRecord> = kvs
            .iter()
            .filter(|kv| keys::parse_operation(&kv.key).is_some())
            .filter_map(|kv| OperationRecord::decode(kv.value.clone()).ok())
            .filter(|op| op.kind == REBALANCE && !is_finished(&op.state))
            .collect();
        ops.sort_by_key(|op| op.created_ms);
        for op in ops {
            if stop.is_cancelled() {
                break;
            }
            self.execute(op, me).await?;
        }
        Ok(rev)
    }

    async fn save_operation(&self, op: &OperationRecord) -> Result<(), MetaError> {
        self.save_operation_and(op, &[]).await
    }

    /// Save `op`, and in the same transaction carry out `also`, if this
    /// controller still leads.
    pub(crate) async fn save_operation_and(
        &self,
        op: &OperationRecord,
        also: &[Op],
    ) -> Result<(), MetaError> {
        let mut txn = Txn::new().then(Op::put(keys::operation(&op.id), op.encode_to_vec()));
        for o in also {
            txn = txn.then(o.clone());
        }
        if self.meta.txn(self.guarded(txn)).await?.committed() {
            Ok(())
        } else {
            Err(MetaError::Unavailable(
                "this controller no longer leads; the new leader resumes the operation".into(),
            ))
        }
    }

    async fn execute(self: &Arc<Self>, mut op: OperationRecord, me: &str) -> Result<(), MetaError> {
        if op.state == "running" && !op.executor.is_empty() && op.executor != me {
            tracing::info!(operation = %op.id, former = %op.executor, "resuming an operation a former leader ran");
        }
        op.state = "running".into();
        op.executor = me.to_string();
        if op.started_ms == 0 {
            op.started_ms = now_ms();
        }
        self.save_operation(&op).await?;
        tracing::info!(operation = %op.id, kind = %op.kind, moves = op.moves.len(), max_in_flight = op.max_in_flight, "executing");
        let todo: Vec<usize> = (0..op.moves.len())
            .filter(|i| matches!(op.moves[*i].status.as_str(), "pending" | "moving"))
            .collect();
        let in_flight = op.max_in_flight.max(1) as usize;
        let id = op.id.clone();
        let shared = Arc::new(tokio::sync::Mutex::new(op));
        let results: Vec<Result<(), MetaError>> =
            futures::stream::iter(todo.into_iter().map(|i| {
                let (this, shared, id) = (self.clone(), shared.clone(), id.clone());
                async move { this.step(&shared, &id, i).await }
            }))
            .buffer_unordered(in_flight)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        let mut op = shared.lock().await.clone();
        let count = |s: &str| op.moves.iter().filter(|m| m.status == s).count();
        let (done, failed, skipped) = (count("done"), count("failed"), count("skipped"));
        let cancelled = self
            .meta
            .get(&keys::operation_cancel(&op.id))
            .await?
            .is_some();
        op.state = if cancelled {
            "cancelled"
        } else if failed > 0 {
            "failed"
        } else {
            "done"
        }
        .into();
        op.finished_ms = now_ms();
        op.detail = format!(
            "{done} moved, {failed} failed, {skipped} skipped in {} ms",
            op.finished_ms - op.started_ms
        );
        // The final record and the removal of the cancel request are one
        // transaction: nobody sees a finished operation still being cancelled.
        self.save_operation_and(
            &op,
            &[
                Op::delete(keys::operation_cancel(&op.id)),
                Op::delete(keys::operation_active()),
            ],
        )
        .await?;
        tracing::info!(operation = %op.id, state = %op.state, detail = %op.detail, "operation finished");
        Ok(())
    }

    /// Carry out move `i` of the shared record, saving its progress.
    async fn step(
        &self,
        shared: &tokio::sync::Mutex<OperationRecord>,
        id: &str,
        i: usize,
    ) -> Result<(), MetaError> {
        let m = {
            let mut op = shared.lock().await;
            if self.meta.get(&keys::operation_cancel(id)).await?.is_some() {
                op.moves[i].status = "skipped".into();
                op.moves[i].detail = "cancelled".into();
                return self.save_operation(&op).await;
            }
            op.moves[i].status = "moving".into();
            self.save_operation(&op).await?;
            op.moves[i].clone()
        };
        let started = Instant::now();
        let outcome = self.carry_out(&m).await?;
        let mut op = shared.lock().await;
        let slot = &mut op.moves[i];
        slot.status = outcome.status.into();
        slot.detail = outcome.detail;
        slot.took_ms = if outcome.took_ms > 0 {
            outcome.took_ms
        } else {
            started.elapsed().as_millis() as u64
        };
        self.save_operation(&op).await
    }

    async fn carry_out(&self, m: &PlannedMove) -> Result<Outcome, MetaError> {
        let skipped = |detail: String| Outcome {
            status: "skipped",
            detail,
            took_ms: 0,
        };
        let Ok(topic) = Uuid::from_slice(&m.topic_id) else {
            return Ok(skipped("bad topic id".into()));
        };
        let p = PartitionId::new(topic, m.partition);
        let started = Instant::now();
        let Some(kv) = self.meta.get(&keys::assignment(p)).await? else {
            return Ok(skipped("the partition no longer exists".into()));
        };
        let a = AssignmentRecord::decode(kv.value).map_err(corrupt)?;
        if a.broker_id != m.from && a.broker_id != m.to {
            return Ok(skipped(format!(
                "moved meanwhile: now on broker {}",
                a.broker_id
            )));
        }
        if self.meta.get(&keys::drained(m.to)).await?.is_some() {
            return Ok(skipped(format!("broker {} was drained", m.to)));
        }
        let mut attempts = 0;
        let epoch = loop {
            match self.move_partition(p, m.to).await {
                Ok(e) => break e,
                Err(MoveError::UnknownBroker(b)) => {
                    return Ok(skipped(format!("broker {b} is not alive")))
                }
                Err(MoveError::UnknownPartition) => {
                    return Ok(skipped("the partition no longer exists".into()))
                }
                Err(MoveError::Conflict) if attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50 * attempts)).await;
                }
                Err(e) => {
                    return Ok(Outcome {
                        status: "failed",
                        detail: e.to_string(),
                        took_ms: started.elapsed().as_millis() as u64,
                    })
                }
            }
        };
        let awaited = await_owner(&*self.meta, p, m.to, epoch, MOVE_TIMEOUT).await?;
        let took_ms = started.elapsed().as_millis() as u64;
        Ok(match awaited {
            Awaited::Writing => Outcome {
                status: "done",
                detail: format!("epoch {epoch}"),
                took_ms,
            },
            Awaited::Reassigned { broker, epoch: now } => {
                // Not a failure of the move: the partition has an owner.
                let left = self.meta.get(&keys::broker(m.to)).await?.is_none();
                Outcome {
                    status: "skipped",
                    detail: if left {
                        format!("broker {} left the cluster during the move; the controller reassigned the partition to broker {broker} at epoch {now}", m.to)
                    } else {
                        format!("reassigned during the move to broker {broker} at epoch {now}")
                    },
                    took_ms,
                }
            }
            Awaited::TimedOut => Outcome {
                status: "failed",
                detail: format!(
                    "assigned at epoch {epoch} but broker {} did not write it within {MOVE_TIMEOUT:?}",
                    m.to
                ),
                took_ms,
            },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rebalance::{Move, Plan};
    use floe_meta::embedded::EmbeddedStore;

    pub(crate) fn plan(moves: usize) -> Plan {
        Plan {
            moves: (0..moves as i32)
                .map(|i| Move {
                    partition: PartitionId::new(Uuid::from_u128(7), i),
                    from: 1,
                    to: 2,
                    load: 0,
                })
                .collect(),
            before: vec![],
            after: vec![],
            mean_load: 0,
            load_band: (0, 0),
            load_balanced: false,
        }
    }

    pub(crate) async fn store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let meta = EmbeddedStore::open(dir.path().join("meta.redb"))
            .await
            .unwrap();
        (dir, meta)
    }

    #[tokio::test]
    async fn of_two_rebalances_started_at_once_only_one_is_recorded() {
        let (_dir, meta) = store().await;
        // Both controllers read "nothing runs" before either writes.
        let a = prepare_rebalance(&meta, &plan(3), 2).await.unwrap();
        let b = prepare_rebalance(&meta, &plan(3), 2).await.unwrap();
        let first = a.commit(&meta).await.unwrap();
        match b.commit(&meta).await {
            Err(StartError::Busy(id, _)) => assert_eq!(id, first.id),
            other => panic!("the second start was not refused: {other:?}"),
        }
        let (kvs, _) = meta.range(&keys::operations_prefix()).await.unwrap();
        assert_eq!(kvs.len(), 1, "exactly one operation recorded");
        let active = meta.get(&keys::operation_active()).await.unwrap().unwrap();
        assert_eq!(&active.value[..], first.id.as_bytes());
        // And a third, after the fact, sees it running.
        assert!(matches!(
            start_rebalance(&meta, &plan(1), 1).await,
            Err(StartError::Busy(id, state)) if id == first.id && state == "pending"
        ));
    }

    #[tokio::test]
    async fn an_empty_plan_is_done_at_once_and_a_stale_slot_is_taken() {
        let (_dir, meta) = store().await;
        let done = start_rebalance(&meta, &plan(0), 1).await.unwrap();
        assert_eq!(done.state, "done");
        assert!(meta.get(&keys::operation_active()).await.unwrap().is_none());
        // A slot naming an operation that is no longer there (pruned, or
        // left by an older version) does not block anything.
        meta.txn(Txn::new().then(Op::put(keys::operation_active(), "rb-gone")))
            .await
            .unwrap();
        let next = start_rebalance(&meta, &plan(2), 1).await.unwrap();
        assert_eq!(next.state, "pending");
        let active = meta.get(&keys::operation_active()).await.unwrap().unwrap();
        assert_eq!(&active.value[..], next.id.as_bytes());
    }

    #[tokio::test]
    async fn waiting_for_a_move_ends_when_the_partition_is_reassigned() {
        let (_dir, meta) = store().await;
        let p = PartitionId::new(Uuid::from_u128(9), 0);
        let assign = |broker_id: i32, epoch: i32| {
            Op::put(
                keys::assignment(p),
                AssignmentRecord {
                    format: floe_meta::schema::FORMAT,
                    broker_id,
                    epoch,
                    broker_session: 1,
                }
                .encode_to_vec(),
            )
        };
        meta.txn(Txn::new().then(assign(2, 3))).await.unwrap();
        // Nothing happens: a timeout.
        assert_eq!(
            await_owner(&meta, p, 2, 3, Duration::from_millis(50))
                .await
                .unwrap(),
            Awaited::TimedOut
        );
        // The target dies; the controller gives the partition to broker 1.
        let waiting = {
            let meta = meta.clone();
            tokio::spawn(async move { await_owner(&meta, p, 2, 3, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        meta.txn(Txn::new().then(assign(1, 4))).await.unwrap();
        assert_eq!(
            waiting.await.unwrap().unwrap(),
            Awaited::Reassigned {
                broker: 1,
                epoch: 4
            }
        );
        // The target writes it (at a later epoch of its own, after a restart).
        meta.txn(
            Txn::new().then(assign(2, 5)).then(Op::put(
                keys::partition_state(p),
                PartitionStateRecord {
                    format: floe_meta::schema::FORMAT,
                    broker_id: 2,
                    epoch: 5,
                    state: "writing".into(),
                    updated_ms: 0,
                }
                .encode_to_vec(),
            )),
        )
        .await
        .unwrap();
        assert_eq!(
            await_owner(&meta, p, 2, 3, Duration::from_secs(1))
                .await
                .unwrap(),
            Awaited::Writing
        );
    }
}
