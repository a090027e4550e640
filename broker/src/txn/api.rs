//! The Kafka transaction APIs on a broker (InitProducerId with a
//! transactional id, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn,
//! TxnOffsetCommit, WriteTxnMarkers, DescribeTransactions,
//! ListTransactions), mapped onto the coordinator (`coordinator.rs`) and
//! the group coordinator, version by version; and the verification a
//! partition's owner asks of a transaction's coordinator before its first
//! transactional batch (KIP-890), here or on another broker.

use std::sync::Arc;
use std::time::Duration;

use floe_common::PartitionId;
use floe_protocol::control::{Marker, MarkerKind};
use floe_protocol::kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use floe_protocol::kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use floe_protocol::kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use floe_protocol::kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::StrBytes;
use floe_protocol::rules::{partition_for, OFFSETS_TOPIC, TXN_TOPIC};
use floe_protocol::ResponseError;

use super::metadata::TxnPartition;
use crate::group::Committed;
use crate::node::Node;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn now_ms() -> i64 {
    floe_common::wall_ms()
}

/// PRODUCER_FENCED is newer than some request versions (KIP-588): their
/// clients get INVALID_PRODUCER_EPOCH for it, as from Kafka.
fn fenced_as(e: ResponseError, version: i16, since: i16) -> ResponseError {
    if e == ResponseError::ProducerFenced && version < since {
        ResponseError::InvalidProducerEpoch
    } else {
        e
    }
}

/// InitProducerId for a transactional id.
pub async fn init_producer_id(
    node: &Arc<Node>,
    id: &str,
    req: &InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
    let resp = InitProducerIdResponse::default();
    match node
        .txn
        .init_producer_id(node, id, req.transaction_timeout_ms, expected)
        .await
    {
        Ok((pid, epoch)) => resp
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch),
        Err(e) => resp
            .with_error_code(fenced_as(e, version, 3).code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}

/// Whether every partition named exists: Kafka fails the whole request
/// with UNKNOWN_TOPIC_OR_PARTITION on those that do not and
/// OPERATION_NOT_ATTEMPTED on the others.
fn unknown_partitions(node: &Node, topics: &[AddPartitionsToTxnTopic]) -> bool {
    topics.iter().any(|t| {
        node.topic(&t.name.0)
            .is_none_or(|info| t.partitions.iter().any(|p| *p < 0 || *p >= info.partitions))
    })
}

fn topic_results(
    node: &Node,
    topics: &[AddPartitionsToTxnTopic],
    outcome: Result<(), ResponseError>,
    unknown: bool,
) -> Vec<AddPartitionsToTxnTopicResult> {
    topics
        .iter()
        .map(|t| {
            let info = node.topic(&t.name.0);
            AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = if unknown {
                                if info.as_ref().is_none_or(|i| *p < 0 || *p >= i.partitions) {
                                    ResponseError::UnknownTopicOrPartition.code()
                                } else {
                                    ResponseError::OperationNotAttempted.code()
                                }
                            } else {
                                outcome.err().map_or(0, |e| e.code())
                            };
                            AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(*p)
                                .with_partition_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect()
}

fn flatten(topics: &[AddPartitionsToTxnTopic]) -> Vec<TxnPartition> {
    topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect()
}

/// One transaction's AddPartitionsToTxn (or, `verify_only`, whether its
/// partitions were added: the question a partition's owner asks).
async fn add_one(
    node: &Arc<Node>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    verify_only: bool,
    topics: &[AddPartitionsToTxnTopic],
    version: i16,
) -> Vec<AddPartitionsToTxnTopicResult> {
    if unknown_partitions(node, topics) {
        return topic_results(node, topics, Ok(()), true);
    }
    let parts = flatten(topics);
    let outcome = if verify_only {
        let mut r = Ok(());
        for p in &parts {
            r = node.txn.verify(node, id, producer_id, epoch, p).await;
            if r.is_err() {
                break;
            }
        }
        r
    } else {
        node.txn
            .add_partitions(node, id, producer_id, epoch, &parts)
            .await
    };
    topic_results(
        node,
        topics,
        outcome.map_err(|e| fenced_as(e, version, 2)),
        false,
    )
}

/// AddPartitionsToTxn: one transaction in v0–3 (clients), several in v4+
/// (brokers, KIP-890, possibly verify-only).
pub async fn add_partitions_to_txn(
    node: &Arc<Node>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let mut resp = AddPartitionsToTxnResponse::default();
    if version <= 3 {
        resp.results_by_topic_v3_and_below = add_one(
            node,
            &req.v3_and_below_transactional_id.0,
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            false,
            &req.v3_and_below_topics,
            version,
        )
        .await;
        return resp;
    }
    for t in req.transactions {
        let results = add_one(
            node,
            &t.transactional_id.0,
            t.producer_id.0,
            t.producer_epoch,
            t.verify_only,
            &t.topics,
            version,
        )
        .await;
        resp.results_by_transaction.push(
            AddPartitionsToTxnResult::default()
                .with_transactional_id(t.transactional_id)
                .with_topic_results(results),
        );
    }
    resp
}

/// AddOffsetsToTxn: the group's offsets partition joins the transaction.
pub async fn add_offsets_to_txn(
    node: &Arc<Node>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let resp = AddOffsetsToTxnResponse::default();
    if req.group_id.0.is_empty() {
        return resp.with_error_code(ResponseError::InvalidGroupId.code());
    }
    let Some(offsets) = node.topic(OFFSETS_TOPIC) else {
        return resp.with_error_code(ResponseError::CoordinatorNotAvailable.code());
    };
    let p = partition_for(&req.group_id.0, offsets.partitions);
    let outcome = node
        .txn
        .add_partitions(
            node,
            &req.transactional_id.0,
            req.producer_id.0,
            req.producer_epoch,
            &[(OFFSETS_TOPIC.to_string(), p)],
        )
        .await;
    resp.with_error_code(outcome.err().map_or(0, |e| fenced_as(e, version, 2).code()))
}

/// EndTxn: commit or abort; v5+ (transaction version 2) bumps the epoch
/// and answers the new one.
pub async fn end_txn(node: &Arc<Node>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let outcome = node
        .txn
        .end(
            node,
            &req.transactional_id.0,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
            version >= 5,
        )
        .await;
    let resp = EndTxnResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    match outcome {
        Ok((pid, epoch)) => resp
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch),
        Err(e) => resp.with_error_code(fenced_as(e, version, 2).code()),
    }
}

/// TxnOffsetCommit: offsets committed in a transaction, after its
/// coordinator verified the group's offsets partition is in it.
pub async fn txn_offset_commit(
    node: &Arc<Node>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let now = now_ms();
    let flat: Vec<(String, i32, Committed)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    Committed {
                        offset: p.committed_offset,
                        leader_epoch: if version >= 2 {
                            p.committed_leader_epoch
                        } else {
                            -1
                        },
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_ms: now,
                    },
                )
            })
        })
        .collect();
    let guard = node
        .groups
        .txn_guard(&**node, &req.group_id.0, req.producer_id.0)
        .await;
    let verified = match (node.topic(OFFSETS_TOPIC), &guard) {
        (_, Err(e)) => Err(*e),
        (None, _) => Err(ResponseError::CoordinatorNotAvailable),
        (Some(t), Ok(_)) => {
            let part = (
                OFFSETS_TOPIC.to_string(),
                partition_for(&req.group_id.0, t.partitions),
            );
            verify(
                node,
                &req.transactional_id.0,
                req.producer_id.0,
                req.producer_epoch,
                &part,
            )
            .await
        }
    };
    let results: Vec<Option<ResponseError>> = match verified {
        Err(e) => {
            // A verification the coordinator could not answer is retried.
            let e = match e {
                ResponseError::NotEnoughReplicas => ResponseError::CoordinatorLoadInProgress,
                e => e,
            };
            flat.iter().map(|_| Some(e)).collect()
        }
        Ok(()) => {
            let (generation, member) = if version >= 3 {
                (req.generation_id, req.member_id.to_string())
            } else {
                (-1, String::new())
            };
            node.groups
                .txn_commit(
                    &**node,
                    &req.group_id.0,
                    (req.producer_id.0, guard.unwrap_or_default()),
                    (&member, req.group_instance_id.as_deref(), generation),
                    flat,
                )
                .await
        }
    };
    let mut results = results.into_iter();
    let mut resp = TxnOffsetCommitResponse::default();
    for t in req.topics {
        let mut rt = TxnOffsetCommitResponseTopic::default().with_name(t.name);
        for p in t.partitions {
            rt.partitions.push(
                TxnOffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(
                        results
                            .next()
                            .flatten()
                            .map_or(0, |e| fenced_as(e, version, 3).code()),
                    ),
            );
        }
        resp.topics.push(rt);
    }
    resp
}

/// WriteTxnMarkers from another broker's transaction coordinator: each
/// marker written to the partitions this broker owns.
pub async fn write_txn_markers(
    node: &Arc<Node>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut resp = WriteTxnMarkersResponse::default();
    for m in req.markers {
        let marker = Marker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            kind: if m.transaction_result {
                MarkerKind::Commit
            } else {
                MarkerKind::Abort
            },
            coordinator_epoch: m.coordinator_epoch,
        };
        let mut r = WritableTxnMarkerResult::default().with_producer_id(m.producer_id);
        for t in m.topics {
            let writes = t.partition_indexes.iter().map(|p| {
                let topic = t.name.0.to_string();
                async move {
                    let e = super::coordinator::write_marker(node, &marker, &topic, *p).await;
                    WritableTxnMarkerPartitionResult::default()
                        .with_partition_index(*p)
                        .with_error_code(e.err().map_or(0, |e| e.code()))
                }
            });
            let partitions = futures::future::join_all(writes).await;
            r.topics.push(
                WritableTxnMarkerTopicResult::default()
                    .with_name(t.name)
                    .with_partitions(partitions),
            );
        }
        resp.markers.push(r);
    }
    resp
}

/// DescribeTransactions of the ids this broker coordinates.
pub async fn describe_transactions(
    node: &Arc<Node>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    use describe_transactions_response::{TopicData, TransactionState};
    let mut resp = DescribeTransactionsResponse::default();
    for id in req.transactional_ids {
        let mut st = TransactionState::default()
            .with_transactional_id(id.clone())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_start_time_ms(-1);
        match node.txn.describe(node, &id.0).await {
            Ok(m) => {
                let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
                for (t, p) in &m.partitions {
                    by_topic.entry(t.clone()).or_default().push(*p);
                }
                st = st
                    .with_transaction_state(s(m.state.name()))
                    .with_transaction_timeout_ms(m.timeout_ms)
                    .with_transaction_start_time_ms(m.started_ms)
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_producer_epoch(m.producer_epoch)
                    .with_topics(
                        by_topic
                            .into_iter()
                            .map(|(t, ps)| {
                                TopicData::default()
                                    .with_topic(TopicName(s(t)))
                                    .with_partitions(ps)
                            })
                            .collect(),
                    );
            }
            Err(e) => st.error_code = e.code(),
        }
        resp.transaction_states.push(st);
    }
    resp
}

/// ListTransactions: the ids this broker coordinates, filtered by state,
/// producer id, id pattern (v2) and running time (v1).
pub async fn list_transactions(
    node: &Arc<Node>,
    req: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    use list_transactions_response::TransactionState;
    let known = [
        "Empty",
        "Ongoing",
        "PrepareCommit",
        "PrepareAbort",
        "CompleteCommit",
        "CompleteAbort",
    ];
    let mut resp = ListTransactionsResponse::default();
    resp.unknown_state_filters = req
        .state_filters
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .cloned()
        .collect();
    let pattern = match req
        .transactional_id_pattern
        .as_deref()
        .filter(|_| version >= 2)
    {
        Some(p) if !p.is_empty() => match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(r) => Some(r),
            Err(_) => return resp.with_error_code(ResponseError::InvalidRegularExpression.code()),
        },
        _ => None,
    };
    let now = now_ms();
    for m in node.txn.list(node).await {
        let state_ok = req.state_filters.is_empty()
            || req
                .state_filters
                .iter()
                .any(|f| f.as_str() == m.state.name());
        let pid_ok = req.producer_id_filters.is_empty()
            || req.producer_id_filters.iter().any(|p| p.0 == m.producer_id);
        // v1: only transactions running longer than this.
        let duration_ok = version < 1
            || req.duration_filter < 0
            || (m.state == super::metadata::TxnState::Ongoing
                && now - m.started_ms > req.duration_filter);
        let id_ok = pattern
            .as_ref()
            .is_none_or(|r| r.is_match(&m.transactional_id));
        if state_ok && pid_ok && duration_ok && id_ok {
            resp.transaction_states.push(
                TransactionState::default()
                    .with_transactional_id(TransactionalId(s(m.transactional_id)))
                    .with_producer_id(ProducerId(m.producer_id))
                    .with_transaction_state(s(m.state.name())),
            );
        }
    }
    resp.transaction_states
        .sort_by(|a, b| a.transactional_id.0.cmp(&b.transactional_id.0));
    resp
}

/// KIP-890 verification: whether `partition` was added to the open
/// transaction of `id` at this producer id and epoch, asked of the id's
/// coordinator here or on its broker. A coordinator that cannot answer
/// (moving, loading, unreachable) gives NOT_ENOUGH_REPLICAS, which a
/// producer retries.
pub(crate) async fn verify(
    node: &Arc<Node>,
    id: &str,
    producer_id: i64,
    epoch: i16,
    partition: &TxnPartition,
) -> Result<(), ResponseError> {
    let retriable = |e: ResponseError| match e {
        ResponseError::NotCoordinator
        | ResponseError::CoordinatorNotAvailable
        | ResponseError::CoordinatorLoadInProgress => ResponseError::NotEnoughReplicas,
        e => e,
    };
    let topic = node
        .topic(TXN_TOPIC)
        .ok_or(ResponseError::NotEnoughReplicas)?;
    let p = partition_for(id, topic.partitions);
    let (broker, _) = node
        .leader_of(PartitionId::new(topic.id, p))
        .ok_or(ResponseError::NotEnoughReplicas)?;
    if broker == node.config.node_id {
        return node
            .txn
            .verify(node, id, producer_id, epoch, partition)
            .await
            .map_err(retriable);
    }
    let b = node
        .broker(broker)
        .ok_or(ResponseError::NotEnoughReplicas)?;
    let req = AddPartitionsToTxnRequest::default().with_transactions(vec![
        AddPartitionsToTxnTransaction::default()
            .with_transactional_id(TransactionalId(s(id)))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_verify_only(true)
            .with_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(TopicName(s(partition.0.clone())))
                .with_partitions(vec![partition.1])]),
    ]);
    let resp: AddPartitionsToTxnResponse = node
        .txn
        .client
        .call(
            (&b.host, b.port),
            ApiKey::AddPartitionsToTxn,
            4,
            &req,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| {
            tracing::debug!(broker, error = %e, "verifying a transaction failed");
            ResponseError::NotEnoughReplicas
        })?;
    if resp.error_code != 0 {
        return Err(retriable(
            ResponseError::try_from_code(resp.error_code)
                .unwrap_or(ResponseError::UnknownServerError),
        ));
    }
    let code = resp
        .results_by_transaction
        .iter()
        .flat_map(|t| &t.topic_results)
        .flat_map(|t| &t.results_by_partition)
        .map(|p| p.partition_error_code)
        .find(|c| *c != 0)
        .unwrap_or(0);
    if code == 0 {
        Ok(())
    } else {
        Err(retriable(
            ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError),
        ))
    }
}
