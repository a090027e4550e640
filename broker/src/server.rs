//! The broker's Kafka requests: the listener (`floe_kafka::listener`)
//! serving a `Node`, and the dispatch of each request to its handler.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::Decodable;
use futures::FutureExt;

pub use floe_kafka::listener::*;
use floe_kafka::RequestMetrics;

use crate::node::Node;
use crate::{group_api, handlers};

impl KafkaService for Node {
    type Session = ();

    fn session(&self) -> Arc<()> {
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
        _session: &Arc<()>,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send {
        dispatch(self, frame)
    }
}

/// Accept connections until `shutdown`.
async fn dispatch(node: &Arc<Node>, mut frame: Bytes) -> Result<Pending, Close> {
    let (api, version, correlation_id) = match request_head(&frame, &node.metrics) {
        Ok(head) => head,
        Err(answer) => return answer,
    };
    let started = Instant::now();
    let malformed = |e: anyhow_like::Error| Close::Malformed(api, version, e.to_string());
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| malformed(e.into()))?;
    let request = decode_body(api, version, &mut frame).map_err(malformed_msg(api, version))?;
    let name = api_name(api);
    let metrics = node.metrics.clone();
    let done = move |b: Option<Bytes>| {
        metrics.request(name, started.elapsed());
        b
    };
    let out: Pending = match request {
        RequestKind::ApiVersions(_) => ready(done(respond(
            api,
            version,
            correlation_id,
            handlers::api_versions(version, false),
        ))),
        RequestKind::Metadata(r) => {
            let resp = handlers::metadata(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeTopicPartitions(r) => {
            use floe_protocol::responses::{
                describe_topic_partitions, metadata_for_describe_topic_partitions,
            };
            let meta =
                handlers::metadata(node, metadata_for_describe_topic_partitions(&r), 12).await;
            let resp = describe_topic_partitions(&r, meta);
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::Produce(r) => {
            let pending = handlers::produce(node.clone(), r, version).await;
            let every = node.config.fault_drop_produce_response_every;
            let n = node
                .produce_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let drop_response = every > 0 && n.is_multiple_of(every);
            async move {
                let resp = pending.await;
                if drop_response {
                    // Fault injection: the append happened, the answer is lost.
                    return done(Some(Bytes::new()));
                }
                done(resp.and_then(|resp| respond(api, version, correlation_id, resp)))
            }
            .boxed()
        }
        RequestKind::IncrementalAlterConfigs(r) => {
            let resp = handlers::incremental_alter_configs(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::AlterConfigs(r) => {
            let resp = handlers::alter_configs(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeProducers(r) => {
            let resp = handlers::describe_producers(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DeleteRecords(r) => {
            let resp = handlers::delete_records(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::InitProducerId(r) => {
            let resp = handlers::init_producer_id(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::Fetch(r) => {
            let node = node.clone();
            async move {
                let mut resp = handlers::fetch(node, r, version).await;
                floe_protocol::responses::fetch_as_kafka_sends(&mut resp);
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::ListOffsets(r) => {
            let resp = handlers::list_offsets(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            let resp = handlers::offset_for_leader_epoch(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::CreateTopics(r) => {
            let resp = handlers::create_topics(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DeleteTopics(r) => {
            let resp = handlers::delete_topics(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::CreatePartitions(r) => {
            let resp = handlers::create_partitions(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeConfigs(r) => {
            let resp = handlers::describe_configs(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeCluster(_) => ready(done(respond(
            api,
            version,
            correlation_id,
            handlers::describe_cluster(node, version),
        ))),
        RequestKind::FindCoordinator(r) => {
            let resp = group_api::find_coordinator(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::JoinGroup(r) => {
            // Parks until the rebalance's join phase ends: off the ordered path.
            let node = node.clone();
            let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
            async move {
                let resp = group_api::join_group(&node, r, version, client_id).await;
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::SyncGroup(r) => {
            let node = node.clone();
            async move {
                let resp = group_api::sync_group(&node, r).await;
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::Heartbeat(r) => {
            let resp = group_api::heartbeat(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::LeaveGroup(r) => {
            let resp = group_api::leave_group(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::OffsetCommit(r) => {
            let node = node.clone();
            async move {
                let resp = group_api::offset_commit(&node, r, version).await;
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::OffsetFetch(r) => {
            let resp = group_api::offset_fetch(node, r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::ListGroups(r) => {
            let resp = group_api::list_groups(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeGroups(r) => {
            let resp = group_api::describe_groups(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DeleteGroups(r) => {
            let resp = group_api::delete_groups(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::OffsetDelete(r) => {
            let resp = group_api::offset_delete(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::ConsumerGroupHeartbeat(r) => {
            let node = node.clone();
            let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
            async move {
                let resp = group_api::consumer_group_heartbeat(&node, r, &client_id).await;
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::ConsumerGroupDescribe(r) => {
            let resp = group_api::consumer_group_describe(node, r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        _ => return Err(Close::UnsupportedVersion(api, version)),
    };
    Ok(out)
}
