//! The broker's side of the shared cluster answers (`floe_kafka::cluster`):
//! the live brokers as nodes, each partition's leader as the metadata store
//! names its owner, auto-creation under this broker's settings, and the
//! coordinator of a group (the owner of its offsets partition).

use std::collections::HashMap;
use std::time::Duration;

use floe_common::topic::{valid_topic_name, TXN_TOPIC};
use floe_common::{PartitionId, Uuid};
use floe_kafka::cluster::{Cluster, Node as ClientNode, Topic};
use floe_kafka::errors::topic_error;
use floe_meta::topics::{offsets_topic_configs, TopicError};
use floe_protocol::rules::partition_for;
use floe_protocol::ResponseError;

use crate::node::{Node, TopicInfo};

/// How long a Metadata request that auto-created a topic waits for its
/// partitions to be written.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Broker `b` as clients of `listener` reach it.
fn node_at(b: floe_meta::schema::BrokerRecord, listener: &str) -> ClientNode {
    let (host, port) = b.endpoint(listener);
    ClientNode {
        id: b.broker_id,
        host,
        port,
        rack: b.rack,
    }
}

fn topic(t: TopicInfo) -> Topic {
    Topic {
        id: t.id,
        name: t.name,
        partitions: t.partitions,
    }
}

impl Cluster for Node {
    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    fn controller_id(&self) -> i32 {
        self.config.node_id
    }

    fn nodes(&self, listener: &str) -> Vec<ClientNode> {
        let mut brokers = self.brokers();
        if !brokers.iter().any(|b| b.broker_id == self.config.node_id) {
            // Our own registration may not have been seen yet.
            brokers.push(self.registration().clone());
        }
        brokers.into_iter().map(|b| node_at(b, listener)).collect()
    }

    fn topics(&self) -> Vec<Topic> {
        Node::topics(self).into_iter().map(topic).collect()
    }

    fn topic(&self, name: &str) -> Option<Topic> {
        Node::topic(self, name).map(topic)
    }

    fn topic_by_id(&self, id: Uuid) -> Option<Topic> {
        Node::topic_by_id(self, id).map(topic)
    }

    fn leader(&self, p: PartitionId) -> Result<(i32, i32), ResponseError> {
        self.leader_of(p).ok_or(ResponseError::LeaderNotAvailable)
    }

    async fn auto_create(&self, names: &[String]) -> HashMap<String, Result<(), ResponseError>> {
        let mut out = HashMap::new();
        for name in names {
            let r = if Node::topic(self, name).is_some() {
                Ok(())
            } else if valid_topic_name(name).is_err() {
                Err(ResponseError::InvalidTopicException)
            } else if !self.config.auto_create_topics {
                Err(ResponseError::UnknownTopicOrPartition)
            } else {
                match self
                    .create_topic(
                        name,
                        self.config.default_partitions,
                        Default::default(),
                        false,
                    )
                    .await
                {
                    Ok(_) | Err(TopicError::AlreadyExists(_)) => {
                        if self.wait_topic_ready(name, READY_WAIT).await {
                            Ok(())
                        } else {
                            Err(ResponseError::LeaderNotAvailable)
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %name, error = %e, "auto-creating topic failed");
                        Err(topic_error(&e))
                    }
                }
            };
            out.insert(name.clone(), r);
        }
        out
    }

    /// The controller then assigns its partitions like any topic's.
    async fn ensure_coordinator_topic(&self, topic: &'static str) {
        if Node::topic(self, topic).is_some() {
            return;
        }
        let partitions = if topic == TXN_TOPIC {
            self.config.transaction_topic_partitions
        } else {
            self.config.offsets_topic_partitions
        }
        .max(1);
        match self
            .create_topic(
                topic,
                partitions,
                offsets_topic_configs(self.config.internal_topic_segment_bytes),
                false,
            )
            .await
        {
            Ok(_) => tracing::info!(topic, partitions, "created an internal topic"),
            Err(TopicError::AlreadyExists(_)) => {}
            Err(e) => tracing::warn!(topic, error = %e, "creating an internal topic failed"),
        }
    }

    fn metadata_store(&self) -> std::sync::Arc<dyn floe_meta::MetadataStore> {
        self.meta.clone()
    }

    fn coordinator(
        &self,
        topic: &str,
        key: &str,
        listener: &str,
    ) -> Result<ClientNode, ResponseError> {
        if key.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let t = Node::topic(self, topic).ok_or(ResponseError::CoordinatorNotAvailable)?;
        let p = PartitionId::new(t.id, partition_for(key, t.partitions));
        let (broker, _) = self
            .leader_of(p)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        self.broker(broker)
            .map(|b| node_at(b, listener))
            .ok_or(ResponseError::CoordinatorNotAvailable)
    }
}

/// Topic `name`, created first if it does not exist, auto-creation is on
/// and `peer` may create it (a producer may write to a topic before asking
/// for metadata).
pub(crate) async fn topic_or_create(
    node: &Node,
    name: &str,
    peer: &floe_kafka::listener::Peer,
) -> Result<TopicInfo, ResponseError> {
    use floe_kafka::acl::Operation::Create;
    if let Some(t) = Node::topic(node, name) {
        return Ok(t);
    }
    if !(peer.may_cluster(Create) || peer.may_topic(Create, name)) {
        return Err(ResponseError::UnknownTopicOrPartition);
    }
    node.auto_create(&[name.to_string()])
        .await
        .remove(name)
        .unwrap_or(Err(ResponseError::UnknownTopicOrPartition))?;
    Node::topic(node, name).ok_or(ResponseError::LeaderNotAvailable)
}
