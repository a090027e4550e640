//! The broker's Kafka requests: the listener (`floe_kafka::listener`)
//! serving a `Node`, and the table of its handlers (`floe_kafka::dispatch`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use floe_kafka::cluster;
use floe_kafka::dispatch::{Request, Router};
use floe_protocol::kafka_protocol::messages::*;
use futures::FutureExt;

pub use floe_kafka::listener::*;
use floe_kafka::RequestMetrics;

use crate::node::Node;
use crate::{group_api, handlers, txn};

/// WriteTxnMarkers from a client: CLUSTER_AUTHORIZATION_FAILED for every
/// partition, nothing written.
fn deny_markers(q: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    use write_txn_markers_response::*;
    let code = floe_protocol::ResponseError::ClusterAuthorizationFailed.code();
    WriteTxnMarkersResponse::default().with_markers(
        q.markers
            .into_iter()
            .map(|m| {
                WritableTxnMarkerResult::default()
                    .with_producer_id(m.producer_id)
                    .with_topics(
                        m.topics
                            .into_iter()
                            .map(|t| {
                                WritableTxnMarkerTopicResult::default()
                                    .with_name(t.name)
                                    .with_partitions(
                                        t.partition_indexes
                                            .into_iter()
                                            .map(|p| {
                                                WritableTxnMarkerPartitionResult::default()
                                                    .with_partition_index(p)
                                                    .with_error_code(code)
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

impl KafkaService for Node {
    type Session = ();

    fn session(&self, _peer: &Arc<Peer>) -> Arc<()> {
        Arc::new(())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.config.max_connections,
            max_request_bytes: self.config.max_request_bytes,
            max_inflight_per_connection: self.config.max_inflight_per_connection,
        }
    }

    fn metrics(&self) -> &RequestMetrics {
        &self.metrics
    }

    fn dispatch(
        self: &Arc<Self>,
        session: &Arc<()>,
        peer: &Arc<Peer>,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send {
        ROUTER.dispatch(self, session, peer, frame, &self.metrics)
    }
}

type N = Arc<Node>;
type S = Arc<()>;

/// A produce request: appended in order, answered when its batches are
/// committed (or, with fault injection on, its answer lost).
async fn produce(node: N, _: S, r: Request, q: ProduceRequest) -> Result<Pending, Close> {
    let pending = handlers::produce(node.clone(), q, r.version, &r.peer).await;
    let every = node.config.faults.drop_produce_response_every;
    let n = node.produce_count.fetch_add(1, Ordering::Relaxed) + 1;
    let drop_response = every > 0 && n.is_multiple_of(every);
    Ok(async move {
        let resp = pending.await;
        if drop_response {
            // Fault injection: the append happened, the answer is lost.
            return Some(Bytes::new());
        }
        resp.and_then(|resp| r.respond(resp))
    }
    .boxed())
}

static ROUTER: LazyLock<Router<Node, ()>> = LazyLock::new(|| {
    cluster::answers(Router::new())
        .custom(ApiKey::Produce, produce)
        .concurrent(ApiKey::Fetch, |n: N, _: S, r, q: FetchRequest| async move {
            let mut resp = handlers::fetch(n, q, r.version, &r.peer).await;
            floe_protocol::responses::fetch_as_kafka_sends(&mut resp);
            resp
        })
        .inline(ApiKey::ListOffsets, |n: N, _: S, r, q: ListOffsetsRequest| async move {
            handlers::list_offsets(&n, q, r.version).await
        })
        .inline(
            ApiKey::OffsetForLeaderEpoch,
            |n: N, _: S, _, q: OffsetForLeaderEpochRequest| async move {
                handlers::offset_for_leader_epoch(&n, q).await
            },
        )
        .inline(ApiKey::CreateTopics, |n: N, _: S, r, q: CreateTopicsRequest| async move {
            handlers::create_topics(&n, q, r.version).await
        })
        .inline(ApiKey::DeleteTopics, |n: N, _: S, r, q: DeleteTopicsRequest| async move {
            handlers::delete_topics(&n, q, r.version).await
        })
        .inline(
            ApiKey::CreatePartitions,
            |n: N, _: S, _, q: CreatePartitionsRequest| async move {
                handlers::create_partitions(&n, q).await
            },
        )
        .inline(ApiKey::DescribeConfigs, |n: N, _: S, r, q: DescribeConfigsRequest| async move {
            handlers::describe_configs(&n, q, r.version).await
        })
        .inline(
            ApiKey::IncrementalAlterConfigs,
            |n: N, _: S, _, q: IncrementalAlterConfigsRequest| async move {
                handlers::incremental_alter_configs(&n, q).await
            },
        )
        .inline(ApiKey::AlterConfigs, |n: N, _: S, _, q: AlterConfigsRequest| async move {
            handlers::alter_configs(&n, q).await
        })
        .inline(
            ApiKey::DescribeProducers,
            |n: N, _: S, _, q: DescribeProducersRequest| async move {
                handlers::describe_producers(&n, q).await
            },
        )
        .inline(ApiKey::DeleteRecords, |n: N, _: S, _, q: DeleteRecordsRequest| async move {
            handlers::delete_records(&n, q).await
        })
        // A transactional id's may wait for its previous transaction's
        // abort: off the ordered path.
        .concurrent(ApiKey::InitProducerId, |n: N, _: S, r: Request, q: InitProducerIdRequest| async move {
            handlers::init_producer_id(&n, q, r.version).await
        })
        .concurrent(
            ApiKey::AddPartitionsToTxn,
            |n: N, _: S, r: Request, q: AddPartitionsToTxnRequest| async move {
                txn::api::add_partitions_to_txn(&n, q, r.version).await
            },
        )
        .concurrent(ApiKey::AddOffsetsToTxn, |n: N, _: S, r: Request, q: AddOffsetsToTxnRequest| async move {
            txn::api::add_offsets_to_txn(&n, q, r.version).await
        })
        // Waits for the transaction's markers.
        .concurrent(ApiKey::EndTxn, |n: N, _: S, r: Request, q: EndTxnRequest| async move {
            txn::api::end_txn(&n, q, r.version).await
        })
        .concurrent(
            ApiKey::TxnOffsetCommit,
            |n: N, _: S, r: Request, q: TxnOffsetCommitRequest| async move {
                txn::api::txn_offset_commit(&n, q, r.version).await
            },
        )
        .concurrent(ApiKey::WriteTxnMarkers, |n: N, _: S, r: Request, q: WriteTxnMarkersRequest| async move {
            if !r.peer.internal && r.peer.authorizer.is_some() {
                // Only another broker (the internal listener) may end
                // transactions.
                return deny_markers(q);
            }
            txn::api::write_txn_markers(&n, q).await
        })
        .inline(
            ApiKey::DescribeTransactions,
            |n: N, _: S, _, q: DescribeTransactionsRequest| async move {
                txn::api::describe_transactions(&n, q).await
            },
        )
        .inline(
            ApiKey::ListTransactions,
            |n: N, _: S, r: Request, q: ListTransactionsRequest| async move {
                txn::api::list_transactions(&n, q, r.version).await
            },
        )
        // Parks until the rebalance's join phase ends: off the ordered path.
        .concurrent(ApiKey::JoinGroup, |n: N, _: S, r: Request, q: JoinGroupRequest| async move {
            group_api::join_group(&n, q, r.version, r.client_id).await
        })
        .concurrent(ApiKey::SyncGroup, |n: N, _: S, _, q: SyncGroupRequest| async move {
            group_api::sync_group(&n, q).await
        })
        .inline(ApiKey::Heartbeat, |n: N, _: S, _, q: HeartbeatRequest| async move {
            group_api::heartbeat(&n, q).await
        })
        .inline(ApiKey::LeaveGroup, |n: N, _: S, r, q: LeaveGroupRequest| async move {
            group_api::leave_group(&n, q, r.version).await
        })
        .concurrent(ApiKey::OffsetCommit, |n: N, _: S, r, q: OffsetCommitRequest| async move {
            group_api::offset_commit(&n, q, r.version).await
        })
        .inline(ApiKey::OffsetFetch, |n: N, _: S, r, q: OffsetFetchRequest| async move {
            group_api::offset_fetch(&n, q, r.version).await
        })
        .inline(ApiKey::ListGroups, |n: N, _: S, _, q: ListGroupsRequest| async move {
            group_api::list_groups(&n, q).await
        })
        .inline(ApiKey::DescribeGroups, |n: N, _: S, _, q: DescribeGroupsRequest| async move {
            group_api::describe_groups(&n, q).await
        })
        .inline(ApiKey::DeleteGroups, |n: N, _: S, _, q: DeleteGroupsRequest| async move {
            group_api::delete_groups(&n, q).await
        })
        .inline(ApiKey::OffsetDelete, |n: N, _: S, _, q: OffsetDeleteRequest| async move {
            group_api::offset_delete(&n, q).await
        })
        .concurrent(
            ApiKey::ConsumerGroupHeartbeat,
            |n: N, _: S, r: Request, q: ConsumerGroupHeartbeatRequest| async move {
                group_api::consumer_group_heartbeat(&n, q, &r.client_id).await
            },
        )
        .inline(
            ApiKey::ConsumerGroupDescribe,
            |n: N, _: S, _, q: ConsumerGroupDescribeRequest| async move {
                group_api::consumer_group_describe(&n, q).await
            },
        )
});

/// The APIs the broker answers (the compatibility table checks them).
pub fn apis() -> Vec<ApiKey> {
    ROUTER.apis().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_advertised_api_has_a_handler_and_no_other() {
        let mut apis = super::apis();
        apis.sort_by_key(|a| *a as i16);
        let mut advertised: Vec<_> = floe_protocol::versions::IMPLEMENTED
            .iter()
            .chain(floe_protocol::versions::INTERNAL)
            .map(|(a, _, _)| *a)
            .collect();
        advertised.sort_by_key(|a| *a as i16);
        assert_eq!(apis, advertised);
    }
}
