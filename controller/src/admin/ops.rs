//! The admin API's rebalance and operation calls: plans from the brokers'
//! load reports, operations recorded in etcd (created here, executed by the
//! leading controller), and their progress streamed from etcd watches.

use std::collections::HashMap;
use std::pin::Pin;

use crate::operations::{self, is_finished, StartError};
use crate::rebalance::{Plan, Settings};
use floe_common::Uuid;
use floe_meta::schema::{OperationRecord, PlannedMove, TopicRecord};
use floe_meta::{keys, MetadataStore, WatchEventKind};
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::Status;

use super::unavailable;
use floe_rpc::admin as pb;

/// Topic names by id, for showing moves.
async fn topic_names(meta: &dyn MetadataStore) -> Result<HashMap<Uuid, String>, Status> {
    let (kvs, _) = meta
        .range(&keys::topics_prefix())
        .await
        .map_err(unavailable)?;
    Ok(kvs
        .iter()
        .filter_map(|kv| TopicRecord::decode(kv.value.clone()).ok())
        .filter_map(|t| Some((Uuid::from_slice(&t.id).ok()?, t.name)))
        .collect())
}

fn name_of(names: &HashMap<Uuid, String>, id: Uuid) -> String {
    names
        .get(&id)
        .cloned()
        .unwrap_or_else(|| id.simple().to_string())
}

pub fn settings(r: &pb::RebalanceRequest) -> Result<Settings, Status> {
    let mut s = Settings::default();
    if r.load_tolerance < 0.0 || r.load_tolerance.is_nan() || r.load_tolerance > 10.0 {
        return Err(Status::invalid_argument(format!(
            "load tolerance {} must be a fraction of the mean load between 0 and 10 (0.1 = ±10%)",
            r.load_tolerance
        )));
    }
    if r.load_tolerance > 0.0 {
        s.load_tolerance = r.load_tolerance;
    }
    if r.min_load_bytes_per_sec > 0 {
        s.min_load = r.min_load_bytes_per_sec;
    }
    Ok(s)
}

fn plan_pb(
    plan: &Plan,
    unreported: &[i32],
    names: &HashMap<Uuid, String>,
    tolerance: f64,
) -> pb::RebalancePlan {
    let share = |s: &crate::rebalance::Share| pb::BrokerShare {
        broker: s.broker,
        partitions: s.partitions as u32,
        load_bytes_per_sec: s.load,
    };
    pb::RebalancePlan {
        moves: plan
            .moves
            .iter()
            .map(|m| pb::Move {
                topic: name_of(names, m.partition.topic_id),
                partition: m.partition.partition,
                from: m.from,
                to: m.to,
                load_bytes_per_sec: m.load,
                status: String::new(),
                detail: String::new(),
                took_ms: 0,
            })
            .collect(),
        before: plan.before.iter().map(share).collect(),
        after: plan.after.iter().map(share).collect(),
        mean_load_bytes_per_sec: plan.mean_load,
        load_band_low: plan.load_band.0,
        load_band_high: plan.load_band.1,
        load_balanced: plan.load_balanced,
        counts_within_one: plan.counts_within_one(),
        load_within_band: plan.load_within_band(),
        unreported_brokers: unreported.to_vec(),
        load_tolerance: tolerance,
    }
}

fn move_pb(m: &PlannedMove, names: &HashMap<Uuid, String>) -> pb::Move {
    pb::Move {
        topic: Uuid::from_slice(&m.topic_id)
            .map(|t| name_of(names, t))
            .unwrap_or_default(),
        partition: m.partition,
        from: m.from,
        to: m.to,
        load_bytes_per_sec: m.load,
        status: m.status.clone(),
        detail: m.detail.clone(),
        took_ms: m.took_ms,
    }
}

pub fn operation_pb(op: &OperationRecord, names: &HashMap<Uuid, String>) -> pb::Operation {
    let count = |s: &str| op.moves.iter().filter(|m| m.status == s).count() as u32;
    pb::Operation {
        id: op.id.clone(),
        kind: op.kind.clone(),
        state: op.state.clone(),
        created_ms: op.created_ms,
        started_ms: op.started_ms,
        finished_ms: op.finished_ms,
        max_in_flight: op.max_in_flight,
        moves: op.moves.iter().map(|m| move_pb(m, names)).collect(),
        detail: op.detail.clone(),
        executor: op.executor.clone(),
        total: op.moves.len() as u32,
        done: count("done"),
        failed: count("failed"),
        skipped: count("skipped"),
        moving: count("moving"),
        broker: op.broker,
    }
}

/// `op` with its topics named.
pub async fn named(
    meta: &dyn MetadataStore,
    op: &OperationRecord,
) -> Result<pb::Operation, Status> {
    Ok(operation_pb(op, &topic_names(meta).await?))
}

pub async fn plan(
    meta: &dyn MetadataStore,
    r: &pb::RebalanceRequest,
) -> Result<(Plan, pb::RebalancePlan), Status> {
    let s = settings(r)?;
    let (plan, placements) = operations::plan_rebalance(meta, s)
        .await
        .map_err(unavailable)?;
    let names = topic_names(meta).await?;
    let out = plan_pb(&plan, &placements.unreported, &names, s.load_tolerance);
    Ok((plan, out))
}

pub async fn start(
    meta: &dyn MetadataStore,
    r: &pb::RebalanceRequest,
) -> Result<pb::RebalanceStarted, Status> {
    let (plan, plan_out) = self::plan(meta, r).await?;
    let in_flight = if r.max_in_flight == 0 {
        4
    } else {
        r.max_in_flight.min(64)
    };
    let op = operations::start_rebalance(meta, &plan, in_flight)
        .await
        .map_err(|e| match e {
            StartError::Busy(..) => Status::failed_precondition(e.to_string()),
            StartError::Meta(e) => unavailable(e),
        })?;
    let names = topic_names(meta).await?;
    Ok(pb::RebalanceStarted {
        operation: Some(operation_pb(&op, &names)),
        plan: Some(plan_out),
    })
}

async fn get_record(meta: &dyn MetadataStore, id: &str) -> Result<(OperationRecord, i64), Status> {
    let kv = meta
        .get(&keys::operation(id))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("no operation {id:?}")))?;
    let op = OperationRecord::decode(kv.value)
        .map_err(|e| Status::internal(format!("operation record: {e}")))?;
    Ok((op, kv.mod_revision))
}

pub async fn get(meta: &dyn MetadataStore, id: &str) -> Result<pb::Operation, Status> {
    let (op, _) = get_record(meta, id).await?;
    Ok(operation_pb(&op, &topic_names(meta).await?))
}

pub async fn list(meta: &dyn MetadataStore) -> Result<pb::OperationList, Status> {
    let (kvs, _) = meta
        .range(&keys::operations_prefix())
        .await
        .map_err(unavailable)?;
    let names = topic_names(meta).await?;
    let mut ops: Vec<OperationRecord> = kvs
        .iter()
        .filter(|kv| keys::parse_operation(&kv.key).is_some())
        .filter_map(|kv| OperationRecord::decode(kv.value.clone()).ok())
        .collect();
    ops.sort_by_key(|o| o.created_ms);
    Ok(pb::OperationList {
        operations: ops.iter().map(|o| operation_pb(o, &names)).collect(),
    })
}

pub async fn cancel(meta: &dyn MetadataStore, id: &str) -> Result<pb::Operation, Status> {
    let op = operations::cancel(meta, id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| Status::not_found(format!("no operation {id:?}")))?;
    if is_finished(&op.state) {
        return Err(Status::failed_precondition(format!(
            "operation {id} already {}",
            op.state
        )));
    }
    Ok(operation_pb(&op, &topic_names(meta).await?))
}

pub type OperationStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

/// The operation now, then after every change, until it finishes.
pub async fn watch(
    meta: std::sync::Arc<dyn MetadataStore>,
    id: String,
) -> Result<OperationStream, Status> {
    let (op, rev) = get_record(&*meta, &id).await?;
    let names = topic_names(&*meta).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let first = operation_pb(&op, &names);
        if tx.send(Ok(first)).await.is_err() || is_finished(&op.state) {
            return;
        }
        let mut events = match meta
            .watch_prefix(&keys::operation(&id), Some(rev + 1))
            .await
        {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Err(unavailable(e))).await;
                return;
            }
        };
        while let Some(ev) = events.next().await {
            let kv = match ev {
                Ok(ev) => match ev.kind {
                    WatchEventKind::Put(kv) if kv.key == keys::operation(&id) => kv,
                    WatchEventKind::Put(_) => continue,
                    WatchEventKind::Delete(_) => {
                        let _ = tx
                            .send(Err(Status::not_found(format!(
                                "operation {id} was deleted"
                            ))))
                            .await;
                        return;
                    }
                },
                Err(e) => {
                    let _ = tx.send(Err(unavailable(e))).await;
                    return;
                }
            };
            let Ok(op) = OperationRecord::decode(kv.value) else {
                continue;
            };
            if tx.send(Ok(operation_pb(&op, &names))).await.is_err() || is_finished(&op.state) {
                return;
            }
        }
        let _ = tx
            .send(Err(Status::unavailable("the watch ended; watch again")))
            .await;
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
