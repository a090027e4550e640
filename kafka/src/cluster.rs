//! The answers a tier gives from what it knows of the cluster, written once
//! for broker and proxy: Metadata (with auto-creation of unknown topics;
//! DescribeTopicPartitions is built on it), DescribeCluster and
//! FindCoordinator, over the `Cluster` each tier implements.

use std::collections::HashMap;
use std::future::Future;

use floe_common::topic::{valid_topic_name, OFFSETS_TOPIC, TXN_TOPIC};
use floe_common::{PartitionId, Uuid};
use floe_protocol::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use floe_protocol::kafka_protocol::messages::find_coordinator_response::Coordinator;
use floe_protocol::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use floe_protocol::kafka_protocol::messages::{
    DescribeClusterResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use floe_protocol::kafka_protocol::protocol::StrBytes;
use floe_protocol::ResponseError;

use crate::listener::Peer;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// A node clients connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

/// A topic as clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
}

/// What a tier knows of the cluster, as the answers above need it.
pub trait Cluster: Send + Sync {
    fn cluster_id(&self) -> String;
    /// The node named as the controller (clients send it nothing Floe
    /// needs; Kafka tools print it).
    fn controller_id(&self) -> i32;
    /// Every node clients of listener `listener` may connect to, at that
    /// listener's addresses.
    fn nodes(&self, listener: &str) -> Vec<Node>;
    /// Every topic, by name.
    fn topics(&self) -> Vec<Topic>;
    fn topic(&self, name: &str) -> Option<Topic>;
    fn topic_by_id(&self, id: Uuid) -> Option<Topic>;
    /// The node leading partition `p` and its leader epoch (-1: none told),
    /// or the error a client gets for it.
    fn leader(&self, p: PartitionId) -> Result<(i32, i32), ResponseError>;
    /// Create the topics of `names` that do not exist, as Kafka's
    /// auto-create does; per name, whether it exists now (an error: the
    /// one its Metadata entry carries).
    fn auto_create(
        &self,
        names: &[String],
    ) -> impl Future<Output = HashMap<String, Result<(), ResponseError>>> + Send;
    /// Make a coordinator's internal topic (`__consumer_offsets`,
    /// `__transaction_state`) if it does not exist (the first
    /// FindCoordinator for a group or a transactional id does).
    fn ensure_coordinator_topic(&self, topic: &'static str) -> impl Future<Output = ()> + Send;
    /// The metadata store (users and ACLs are written there).
    fn metadata_store(&self) -> std::sync::Arc<dyn floe_meta::MetadataStore>;
    /// The node coordinating `key` now — the owner of its partition of
    /// the internal `topic` — at listener `listener`'s address.
    fn coordinator(&self, topic: &str, key: &str, listener: &str) -> Result<Node, ResponseError>;
}

/// The Metadata answer: nodes, and the topics asked for (all when none
/// are named), unknown ones created when the request allows it.
pub async fn metadata<C: Cluster>(
    c: &C,
    req: MetadataRequest,
    version: i16,
    peer: &Peer,
) -> MetadataResponse {
    use crate::acl::Operation::{Create, Describe};
    let listener = &*peer.listener;
    let mut resp = MetadataResponse::default();
    resp.brokers = c
        .nodes(listener)
        .into_iter()
        .map(|n| {
            MetadataResponseBroker::default()
                .with_node_id(n.id.into())
                .with_host(s(n.host))
                .with_port(n.port)
                .with_rack(if version >= 1 { n.rack.map(s) } else { None })
        })
        .collect();
    if version >= 2 {
        resp.cluster_id = Some(s(c.cluster_id()));
    }
    if version >= 1 {
        resp.controller_id = c.controller_id().into();
    }
    let auto_create = version < 4 || req.allow_auto_topic_creation;
    // All topics: those the client may describe.
    let all = |c: &C| -> Vec<(Option<String>, Uuid)> {
        c.topics()
            .into_iter()
            .filter(|t| peer.may_topic(Describe, &t.name))
            .map(|t| (Some(t.name), t.id))
            .collect()
    };
    let wanted: Vec<(Option<String>, Uuid)> = match req.topics {
        None => all(c),
        // v0: an empty list means all topics.
        Some(ts) if ts.is_empty() && version == 0 => all(c),
        Some(ts) => ts
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect(),
    };
    // Unknown topics are made only for a client that may describe and
    // create them (CREATE on the cluster or on the topic).
    let may_create = peer.may_cluster(Create);
    let missing: Vec<String> = wanted
        .iter()
        .filter_map(|(n, _)| n.clone())
        .filter(|n| c.topic(n).is_none() && valid_topic_name(n).is_ok())
        .filter(|n| peer.may_topic(Describe, n) && (may_create || peer.may_topic(Create, n)))
        .collect();
    let created = if auto_create && !missing.is_empty() {
        c.auto_create(&missing).await
    } else {
        HashMap::new()
    };
    for (name, id) in wanted {
        let mut topic = MetadataResponseTopic::default();
        let found = match &name {
            Some(n) if !peer.may_topic(Describe, n) => Err(ResponseError::TopicAuthorizationFailed),
            Some(n)
                if c.topic(n).is_none()
                    && auto_create
                    && valid_topic_name(n).is_ok()
                    && !created.contains_key(n) =>
            {
                // Not allowed to create it.
                Err(ResponseError::TopicAuthorizationFailed)
            }
            Some(n) => c.topic(n).ok_or_else(|| match created.get(n) {
                Some(Err(e)) => *e,
                // Made, not yet seen here: the client asks again.
                Some(Ok(())) => ResponseError::LeaderNotAvailable,
                None if valid_topic_name(n).is_err() => ResponseError::InvalidTopicException,
                None => ResponseError::UnknownTopicOrPartition,
            }),
            None => match c.topic_by_id(id) {
                Some(t) if !peer.may_topic(Describe, &t.name) => {
                    Err(ResponseError::TopicAuthorizationFailed)
                }
                Some(t) => Ok(t),
                None => Err(ResponseError::UnknownTopicId),
            },
        };
        topic.name = name.map(|n| TopicName(s(n)));
        match found {
            Err(e) => {
                topic.error_code = e.code();
                if version >= 10 {
                    topic.topic_id = id;
                }
            }
            Ok(t) => {
                topic.name = Some(TopicName(s(t.name.clone())));
                if version >= 10 {
                    topic.topic_id = t.id;
                }
                for p in 0..t.partitions {
                    let mut part = MetadataResponsePartition::default().with_partition_index(p);
                    match c.leader(PartitionId::new(t.id, p)) {
                        Ok((leader, epoch)) => {
                            part.leader_id = leader.into();
                            if version >= 7 {
                                part.leader_epoch = epoch;
                            }
                            part.replica_nodes = vec![leader.into()];
                            part.isr_nodes = vec![leader.into()];
                        }
                        Err(e) => {
                            part.error_code = e.code();
                            part.leader_id = (-1).into();
                        }
                    }
                    topic.partitions.push(part);
                }
            }
        }
        resp.topics.push(topic);
    }
    resp
}

/// The DescribeCluster answer: the nodes clients see.
pub fn describe_cluster<C: Cluster>(
    c: &C,
    version: i16,
    listener: &str,
) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(s(c.cluster_id()))
        .with_controller_id(c.controller_id().into());
    for n in c.nodes(listener) {
        resp.brokers.push(
            DescribeClusterBroker::default()
                .with_broker_id(n.id.into())
                .with_host(s(n.host))
                .with_port(n.port)
                .with_rack(n.rack.map(s)),
        );
    }
    if version >= 1 {
        // Brokers (2 would be controllers, KIP-919).
        resp.endpoint_type = 1;
    }
    resp
}

/// The FindCoordinator answer: per key, the coordinator of a group (key
/// type 0) or a transactional id (key type 1); one key in top-level fields
/// before v4.
pub async fn find_coordinator<C: Cluster>(
    c: &C,
    req: FindCoordinatorRequest,
    version: i16,
    peer: &Peer,
) -> FindCoordinatorResponse {
    let listener = &*peer.listener;
    let topic = match req.key_type {
        0 => Some(OFFSETS_TOPIC),
        1 => Some(TXN_TOPIC),
        _ => None,
    };
    if let Some(t) = topic {
        c.ensure_coordinator_topic(t).await;
    }
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys
    } else {
        vec![req.key]
    };
    let mut resp = FindCoordinatorResponse::default();
    for key in keys {
        let mut coordinator = Coordinator::default().with_key(key.clone());
        let describe = crate::acl::Operation::Describe;
        let found = match topic {
            None => Err((
                ResponseError::InvalidRequest,
                format!("unknown coordinator key type {}", req.key_type),
            )),
            Some(OFFSETS_TOPIC) if !peer.may_group(describe, &key) => Err((
                ResponseError::GroupAuthorizationFailed,
                "Authorization failed.".to_string(),
            )),
            Some(TXN_TOPIC)
                if !peer.may(describe, crate::acl::resource::TRANSACTIONAL_ID, &key) =>
            {
                Err((
                    ResponseError::TransactionalIdAuthorizationFailed,
                    "Authorization failed.".to_string(),
                ))
            }
            Some(TXN_TOPIC) if key.is_empty() => Err((
                ResponseError::InvalidRequest,
                "an empty transactional id".to_string(),
            )),
            Some(t) => c.coordinator(t, &key, listener).map_err(|e| {
                let what = if t == TXN_TOPIC {
                    "transactional id"
                } else {
                    "group"
                };
                (e, format!("no coordinator for {what} {key:?} yet"))
            }),
        };
        match found {
            Ok(n) => {
                coordinator.node_id = n.id.into();
                coordinator.host = s(n.host);
                coordinator.port = n.port;
            }
            Err((e, m)) => {
                coordinator.node_id = (-1).into();
                coordinator.port = -1;
                coordinator.error_code = e.code();
                coordinator.error_message = Some(s(m));
            }
        }
        resp.coordinators.push(coordinator);
    }
    if version < 4 {
        // One key, in top-level fields.
        let c = resp.coordinators.pop().unwrap_or_default();
        resp.error_code = c.error_code;
        resp.error_message = c.error_message;
        resp.node_id = c.node_id;
        resp.host = c.host;
        resp.port = c.port;
    }
    resp
}

/// Register the answers written here (Metadata, DescribeTopicPartitions,
/// DescribeCluster, FindCoordinator, and the SCRAM user APIs) in a tier's
/// handler table, over the tier's `Cluster`.
pub fn answers<S, X>(router: crate::dispatch::Router<S, X>) -> crate::dispatch::Router<S, X>
where
    S: Cluster + 'static,
    X: Send + Sync + 'static,
{
    use crate::dispatch::Request;
    use floe_protocol::kafka_protocol::messages::{
        AlterUserScramCredentialsRequest, ApiKey, DescribeClusterRequest,
        DescribeTopicPartitionsRequest, DescribeUserScramCredentialsRequest,
    };
    use floe_protocol::responses::{
        describe_topic_partitions, metadata_for_describe_topic_partitions,
    };
    use std::sync::Arc;
    router
        .inline(
            ApiKey::Metadata,
            |c: Arc<S>, _, r: Request, q: MetadataRequest| async move {
                metadata(&*c, q, r.version, &r.peer).await
            },
        )
        .inline(
            ApiKey::DescribeTopicPartitions,
            |c: Arc<S>, _, r: Request, q: DescribeTopicPartitionsRequest| async move {
                let asked = metadata_for_describe_topic_partitions(&q);
                let meta = metadata(&*c, asked, 12, &r.peer).await;
                describe_topic_partitions(&q, meta)
            },
        )
        .inline(
            ApiKey::DescribeCluster,
            |c: Arc<S>, _, r: Request, _: DescribeClusterRequest| async move {
                describe_cluster(&*c, r.version, &r.peer.listener)
            },
        )
        .inline(
            ApiKey::FindCoordinator,
            |c: Arc<S>, _, r: Request, q: FindCoordinatorRequest| async move {
                find_coordinator(&*c, q, r.version, &r.peer).await
            },
        )
        .inline(
            ApiKey::DescribeUserScramCredentials,
            |c: Arc<S>, _, _, q: DescribeUserScramCredentialsRequest| async move {
                crate::users::describe(&crate::users::UserAdmin::new(c.metadata_store()), q).await
            },
        )
        .concurrent(
            ApiKey::CreateAcls,
            |c: Arc<S>, _, _, q: floe_protocol::kafka_protocol::messages::CreateAclsRequest| async move {
                crate::acl::api::create(&crate::acl::AclAdmin::new(c.metadata_store()), q).await
            },
        )
        .inline(
            ApiKey::DescribeAcls,
            |c: Arc<S>, _, _, q: floe_protocol::kafka_protocol::messages::DescribeAclsRequest| async move {
                crate::acl::api::describe(&crate::acl::AclAdmin::new(c.metadata_store()), q).await
            },
        )
        .concurrent(
            ApiKey::DeleteAcls,
            |c: Arc<S>, _, _, q: floe_protocol::kafka_protocol::messages::DeleteAclsRequest| async move {
                crate::acl::api::delete(&crate::acl::AclAdmin::new(c.metadata_store()), q).await
            },
        )
        .concurrent(
            ApiKey::AlterUserScramCredentials,
            |c: Arc<S>, _, _, q: AlterUserScramCredentialsRequest| async move {
                crate::users::alter(&crate::users::UserAdmin::new(c.metadata_store()), q).await
            },
        )
}
