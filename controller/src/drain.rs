//! Broker drains as operations: `start` marks a broker drained
//! (`/floe/drained/{id}`) and records, in the same transaction, an
//! operation listing the partitions it wrote; reconciliation moves them off
//! (each a release and an acquire), and the leading controller's tracker
//! marks each move done as another broker writes the partition, so a drain
//! has an id, progress and a cancel (which undrains) like a rebalance.
//! Drains do not take the one-at-a-time slot of rebalances: scale-in must
//! not wait for one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use floe_common::{PartitionId, Uuid};
use floe_meta::schema::{
    AssignmentRecord, DrainRecord, OperationRecord, PartitionStateRecord, PlannedMove, FORMAT,
};
use floe_meta::{keys, Condition, MetaError, MetadataStore, Op, Txn};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::operations::{corrupt, is_finished, now_ms, prune_finished};
use crate::Controller;

pub const DRAIN_BROKER: &str = "drain-broker";
pub const DECOMMISSION_BROKER: &str = "decommission-broker";

pub fn is_drain(kind: &str) -> bool {
    kind == DRAIN_BROKER || kind == DECOMMISSION_BROKER
}

/// Unfinished drains of `broker` among the operation records.
fn unfinished_drains(kvs: &[floe_meta::KeyValue], broker: i32) -> Vec<OperationRecord> {
    kvs.iter()
        .filter(|kv| keys::parse_operation(&kv.key).is_some())
        .filter_map(|kv| OperationRecord::decode(kv.value.clone()).ok())
        .filter(|op| is_drain(&op.kind) && op.broker == broker && !is_finished(&op.state))
        .collect()
}

/// Drain `broker` (and with `decommission`, retire it once empty): the
/// drained mark and the operation following its partitions off, in one
/// transaction. Draining a broker already being drained returns that
/// operation (the mark is rewritten, so a drain can become a
/// decommission).
pub async fn start(
    meta: &dyn MetadataStore,
    broker: i32,
    decommission: bool,
) -> Result<OperationRecord, MetaError> {
    let now = now_ms();
    let mark = Op::put(
        keys::drained(broker),
        DrainRecord {
            format: FORMAT,
            broker_id: broker,
            since_ms: now,
            decommission,
        }
        .encode_to_vec(),
    );
    let (ops, _) = meta.range(&keys::operations_prefix()).await?;
    if let Some(running) = unfinished_drains(&ops, broker).into_iter().next() {
        meta.txn(Txn::new().then(mark)).await?;
        return Ok(running);
    }
    let (kvs, _) = meta.range(&keys::partitions_prefix()).await?;
    let mut on_broker = Vec::new();
    for kv in &kvs {
        if let Some(p) = keys::parse_assignment(&kv.key) {
            let a = AssignmentRecord::decode(kv.value.clone()).map_err(corrupt)?;
            if a.broker_id == broker {
                on_broker.push(p);
            }
        }
    }
    on_broker.sort_by_key(|p| (p.topic_id, p.partition));
    let id = format!(
        "dr-{}-{}",
        now,
        &floe_common::new_uuid().simple().to_string()[..6]
    );
    let empty = on_broker.is_empty();
    let record = OperationRecord {
        format: FORMAT,
        id: id.clone(),
        kind: if decommission {
            DECOMMISSION_BROKER
        } else {
            DRAIN_BROKER
        }
        .into(),
        state: if empty { "done" } else { "running" }.into(),
        created_ms: now,
        started_ms: now,
        finished_ms: if empty { now } else { 0 },
        max_in_flight: 0,
        moves: on_broker
            .iter()
            .map(|p| PlannedMove {
                topic_id: p.topic_id.as_bytes().to_vec(),
                partition: p.partition,
                from: broker,
                to: 0,
                load: 0,
                status: "pending".into(),
                detail: String::new(),
                took_ms: 0,
            })
            .collect(),
        detail: if empty {
            format!("broker {broker} writes no partition: nothing to move")
        } else {
            format!("broker {broker}: {} partitions to move", on_broker.len())
        },
        executor: String::new(),
        broker,
    };
    let mut txn = Txn::new()
        .when(Condition::Missing(keys::operation(&id)))
        .then(Op::put(keys::operation(&id), record.encode_to_vec()))
        .then(mark);
    for op in prune_finished(&ops) {
        txn = txn.then(op);
    }
    meta.txn(txn).await?;
    tracing::info!(operation = %id, broker, decommission, partitions = on_broker.len(), "broker drain requested");
    Ok(record)
}

/// Make `broker` eligible again; a drain of it still running is cancelled
/// (the partitions already moved stay where they are).
pub async fn undrain(meta: &dyn MetadataStore, broker: i32) -> Result<(), MetaError> {
    let (ops, _) = meta.range(&keys::operations_prefix()).await?;
    let mut txn = Txn::new().then(Op::delete(keys::drained(broker)));
    for op in unfinished_drains(&ops, broker) {
        txn = txn.then(Op::put(keys::operation_cancel(&op.id), "undrained"));
    }
    meta.txn(txn).await?;
    tracing::info!(broker, "broker undrained");
    Ok(())
}

/// Mark the moves of drain `op` that have happened: a partition is off the
/// broker once another broker is assigned it and writes it (`to` is that
/// broker); a partition gone (its topic deleted) is skipped. Whether
/// anything changed.
pub fn progress(
    op: &mut OperationRecord,
    assigned: &HashMap<PartitionId, i32>,
    writing: &HashMap<PartitionId, i32>,
    now_ms: i64,
) -> bool {
    let mut changed = false;
    for m in op.moves.iter_mut().filter(|m| !is_finished_move(&m.status)) {
        let Ok(t) = Uuid::from_slice(&m.topic_id) else {
            m.status = "skipped".into();
            m.detail = "bad topic id".into();
            changed = true;
            continue;
        };
        let p = PartitionId::new(t, m.partition);
        let took = (now_ms - op.started_ms).max(0) as u64;
        match assigned.get(&p) {
            None => {
                m.status = "skipped".into();
                m.detail = "the partition no longer exists".into();
                m.took_ms = took;
                changed = true;
            }
            Some(&to) if to != m.from && writing.get(&p) == Some(&to) => {
                m.status = "done".into();
                m.to = to;
                m.took_ms = took;
                changed = true;
            }
            Some(&to) if to != m.from && (m.status != "moving" || m.to != to) => {
                m.status = "moving".into();
                m.to = to;
                changed = true;
            }
            _ => {}
        }
    }
    changed
}

fn is_finished_move(status: &str) -> bool {
    matches!(status, "done" | "skipped" | "failed")
}

/// How often the tracker looks while a drain runs (each look reads the
/// partitions' records, as a reconcile pass does).
const TRACK_EVERY: Duration = Duration::from_millis(250);

impl Controller {
    /// Follow every running drain while leading: progress saved as the
    /// partitions move, the operation finished when none is left, or
    /// cancelled (and the broker undrained) on request.
    pub async fn run_drain_tracking(self: Arc<Self>, me: String, stop: CancellationToken) {
        loop {
            let pause = match self.track_drains(&me).await {
                Ok(true) => TRACK_EVERY,
                Ok(false) => Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "drain tracking: could not read or save; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One look at the running drains; whether any runs.
    async fn track_drains(&self, me: &str) -> Result<bool, MetaError> {
        let (ops, _) = self.meta.range(&keys::operations_prefix()).await?;
        let mut running: Vec<OperationRecord> = ops
            .iter()
            .filter(|kv| keys::parse_operation(&kv.key).is_some())
            .filter_map(|kv| OperationRecord::decode(kv.value.clone()).ok())
            .filter(|op| is_drain(&op.kind) && !is_finished(&op.state))
            .collect();
        if running.is_empty() {
            return Ok(false);
        }
        let (kvs, _) = self.meta.range(&keys::partitions_prefix()).await?;
        let mut assigned = HashMap::new();
        let mut writing = HashMap::new();
        for kv in &kvs {
            if let Some(p) = keys::parse_assignment(&kv.key) {
                let a = AssignmentRecord::decode(kv.value.clone()).map_err(corrupt)?;
                assigned.insert(p, a.broker_id);
            } else if let Some(p) = keys::parse_partition_state(&kv.key) {
                let s = PartitionStateRecord::decode(kv.value.clone()).map_err(corrupt)?;
                if s.state == "writing" {
                    writing.insert(p, s.broker_id);
                }
            }
        }
        for op in &mut running {
            let now = now_ms();
            let mut changed = op.executor != me;
            op.executor = me.to_string();
            changed |= progress(op, &assigned, &writing, now);
            let cancel = self.meta.get(&keys::operation_cancel(&op.id)).await?;
            let left = op
                .moves
                .iter()
                .filter(|m| !is_finished_move(&m.status))
                .count();
            let count =
                |op: &OperationRecord, s: &str| op.moves.iter().filter(|m| m.status == s).count();
            let mut also = Vec::new();
            if left == 0 {
                op.state = "done".into();
                op.detail = format!(
                    "broker {}: {} moved, {} skipped in {} ms",
                    op.broker,
                    count(op, "done"),
                    count(op, "skipped"),
                    now - op.started_ms
                );
            } else if let Some(c) = cancel {
                for m in op.moves.iter_mut().filter(|m| !is_finished_move(&m.status)) {
                    m.detail = if m.status == "moving" {
                        format!("cancelled after reassignment to broker {}", m.to)
                    } else {
                        "cancelled".into()
                    };
                    m.status = "skipped".into();
                }
                op.state = "cancelled".into();
                op.detail = format!(
                    "broker {} {}: {} moved, {} left on it",
                    op.broker,
                    if &c.value[..] == b"undrained" {
                        "undrained"
                    } else {
                        "undrained on cancel"
                    },
                    count(op, "done"),
                    left
                );
                // Cancelling a drain makes the broker eligible again.
                also.push(Op::delete(keys::drained(op.broker)));
            } else if changed {
                self.save_operation_and(op, &[]).await?;
                continue;
            } else {
                continue;
            }
            op.finished_ms = now;
            also.push(Op::delete(keys::operation_cancel(&op.id)));
            self.save_operation_and(op, &also).await?;
            tracing::info!(operation = %op.id, state = %op.state, detail = %op.detail, "operation finished");
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::tests::{plan, store};
    use floe_meta::embedded::EmbeddedStore;

    fn pid(i: i32) -> PartitionId {
        PartitionId::new(Uuid::from_u128(9), i)
    }

    async fn assign(meta: &EmbeddedStore, p: PartitionId, broker: i32) {
        let a = AssignmentRecord {
            format: FORMAT,
            broker_id: broker,
            epoch: 1,
            broker_session: 1,
        };
        meta.txn(Txn::new().then(Op::put(keys::assignment(p), a.encode_to_vec())))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_drain_records_the_brokers_partitions_with_the_mark_and_is_not_doubled() {
        let (_dir, meta) = store().await;
        for i in 0..4 {
            assign(&meta, pid(i), if i % 2 == 0 { 1 } else { 2 }).await;
        }
        let op = start(&meta, 1, false).await.unwrap();
        assert_eq!(op.kind, DRAIN_BROKER);
        assert_eq!(op.state, "running");
        assert_eq!(op.broker, 1);
        let moved: Vec<i32> = op.moves.iter().map(|m| m.partition).collect();
        assert_eq!(moved, [0, 2]);
        assert!(op
            .moves
            .iter()
            .all(|m| m.from == 1 && m.status == "pending"));
        let mark = meta.get(&keys::drained(1)).await.unwrap().unwrap();
        assert!(!DrainRecord::decode(mark.value).unwrap().decommission);
        // Asked again (now to decommission): the same operation, the mark
        // rewritten.
        let again = start(&meta, 1, true).await.unwrap();
        assert_eq!(again.id, op.id);
        let mark = meta.get(&keys::drained(1)).await.unwrap().unwrap();
        assert!(DrainRecord::decode(mark.value).unwrap().decommission);
        let (kvs, _) = meta.range(&keys::operations_prefix()).await.unwrap();
        assert_eq!(kvs.len(), 1);
        // A rebalance is not refused because a drain runs.
        let rebalance = crate::operations::start_rebalance(&meta, &plan(2), 1)
            .await
            .unwrap();
        assert_eq!(rebalance.state, "pending");
        // An empty broker's drain is done at once.
        let empty = start(&meta, 3, false).await.unwrap();
        assert_eq!(empty.state, "done");
        assert!(empty.moves.is_empty());
    }

    #[tokio::test]
    async fn undrain_removes_the_mark_and_asks_the_running_drain_to_stop() {
        let (_dir, meta) = store().await;
        assign(&meta, pid(0), 1).await;
        let op = start(&meta, 1, false).await.unwrap();
        undrain(&meta, 1).await.unwrap();
        assert!(meta.get(&keys::drained(1)).await.unwrap().is_none());
        let c = meta
            .get(&keys::operation_cancel(&op.id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&c.value[..], b"undrained");
    }

    #[test]
    fn progress_marks_a_move_done_only_once_the_new_owner_writes() {
        let mut op = OperationRecord {
            started_ms: 1_000,
            moves: (0..3)
                .map(|i| PlannedMove {
                    topic_id: pid(i).topic_id.as_bytes().to_vec(),
                    partition: i,
                    from: 1,
                    status: "pending".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // 0: reassigned to 2, not yet written; 1: still on 1; 2: deleted.
        let mut assigned = HashMap::from([(pid(0), 2), (pid(1), 1)]);
        let mut writing = HashMap::from([(pid(0), 1), (pid(1), 1)]);
        assert!(progress(&mut op, &assigned, &writing, 1_050));
        let status: Vec<&str> = op.moves.iter().map(|m| m.status.as_str()).collect();
        assert_eq!(status, ["moving", "pending", "skipped"]);
        assert_eq!(op.moves[0].to, 2);
        // Nothing new: nothing changed.
        assert!(!progress(&mut op, &assigned, &writing, 1_060));
        // Broker 2 writes 0; 1 goes to 3 and is written there.
        writing.insert(pid(0), 2);
        assigned.insert(pid(1), 3);
        writing.insert(pid(1), 3);
        assert!(progress(&mut op, &assigned, &writing, 1_200));
        let status: Vec<&str> = op.moves.iter().map(|m| m.status.as_str()).collect();
        assert_eq!(status, ["done", "done", "skipped"]);
        assert_eq!((op.moves[0].to, op.moves[1].to), (2, 3));
        assert_eq!(op.moves[1].took_ms, 200);
    }
}
