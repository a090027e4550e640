//! The proxy's side of the shared cluster answers (`floe_kafka::cluster`):
//! the nodes clients see (every proxy, and one owner node per broker), the
//! node leading each partition and coordinating each group, and the topics
//! a client names before they exist, created by the proxy itself through
//! the topic admin (`floe_meta::topics`) as a broker would create them:
//! under a live broker's topic-creation policy (auto-create on or off, the
//! partition count, the offsets topic's partition count). A request that
//! created a topic waits, on the view's change notifications, until the
//! view shows it with an owner for each partition (bounded), so it is
//! answered with it.

use std::collections::HashMap;
use std::time::Duration;

use floe_common::topic::{valid_topic_name, TXN_TOPIC};
use floe_common::{PartitionId, Uuid};
use floe_kafka::cluster::{Cluster, Node, Topic};
use floe_kafka::errors::topic_error;
use floe_meta::topics::{offsets_topic_configs, TopicError};
use floe_protocol::ResponseError;
use tokio::time::Instant;

use crate::view::{broker_key, owner_node_id, partition_key, rendezvous, View};
use crate::Proxy;

/// How long a request that created a topic waits for the view to show it
/// with its partitions owned.
const SHOW_WAIT: Duration = Duration::from_secs(5);

/// Whether the view shows topic `name` (with id `id` when given) and an
/// owner for each of its partitions.
fn shown(view: &View, name: &str, id: Option<floe_common::Uuid>) -> bool {
    let Some(t) = view.topic(name) else {
        return false;
    };
    id.is_none_or(|id| id == t.id)
        && (0..t.partitions).all(|p| view.owner(PartitionId::new(t.id, p)).is_some())
}

impl Proxy {
    /// Every live proxy at the address of its listener `listener`.
    fn proxy_brokers(&self, listener: &str) -> Vec<(i32, String, i32)> {
        let mut proxies = self.view.proxies();
        if !proxies.iter().any(|p| p.proxy_id == self.record.proxy_id) {
            // Our own registration may not have been seen yet.
            proxies.push(self.record.clone());
        }
        proxies
            .into_iter()
            .map(|p| {
                let (host, port) = p.endpoint(listener);
                (p.proxy_id, host, port)
            })
            .collect()
    }

    /// The nodes clients see: every proxy, and with `owner_nodes` one node
    /// per live broker (its owner node), at the address of the proxy the
    /// broker hashes to, under an id of its own. Clients open a connection
    /// per node id, so the partitions a broker writes share a connection
    /// only with each other, and a broker that freezes holds up only its
    /// own partitions' answers (Kafka answers a connection's requests in
    /// order). One node per broker, not per proxy and broker: a client
    /// opens as many connections as there are brokers and proxies, and
    /// each owner node's connection is in use whenever its broker writes
    /// anything the client produces to (librdkafka connects to a node only
    /// when it needs it, and a partition moved to a node whose connection
    /// is down waits about a second before that connection is made).
    pub(crate) fn client_nodes(&self, listener: &str) -> Vec<(i32, String, i32)> {
        let proxies = self.proxy_brokers(listener);
        let mut nodes = proxies.clone();
        if self.config.owner_nodes {
            let mut brokers: Vec<i32> = self.view.brokers().iter().map(|b| b.broker_id).collect();
            brokers.sort_unstable();
            for b in brokers {
                let proxy = self.leader_for(&broker_key(b));
                if let Some((_, host, port)) = proxies.iter().find(|(id, _, _)| *id == proxy) {
                    nodes.push((owner_node_id(proxy, b), host.clone(), *port));
                }
            }
        }
        nodes
    }

    /// The node clients should treat as the leader of partition `id`: the
    /// owner node of its writer when `owner_nodes` is on and that writer
    /// writes it, else the proxy the partition's key hashes to. Every
    /// proxy forwards to the current owner, so a client that still uses
    /// an older node is served as well.
    fn partition_leader(&self, id: PartitionId) -> i32 {
        self.owner_node(id)
            .unwrap_or_else(|| self.leader_for(&partition_key(id)))
    }

    /// The owner node of partition `id` (see `client_nodes`), when
    /// `owner_nodes` is on and the partition's owner writes it. A partition
    /// between owners (none yet, or one still recovering it) is led by its
    /// plain proxy node meanwhile: its held batches must not share a
    /// connection with the partitions its next owner already writes, whose
    /// answers would wait behind them.
    pub(crate) fn owner_node(&self, id: PartitionId) -> Option<i32> {
        if !self.config.owner_nodes {
            return None;
        }
        let b = self.view.writing_owner(id)?;
        Some(owner_node_id(
            self.leader_for(&broker_key(b.broker_id)),
            b.broker_id,
        ))
    }

    /// The proxy clients should treat as the leader of `key`.
    fn leader_for(&self, key: &[u8]) -> i32 {
        let mut proxies = self.view.proxies();
        if !proxies.iter().any(|p| p.proxy_id == self.record.proxy_id) {
            proxies.push(self.record.clone());
        }
        rendezvous(&proxies, key).map_or(self.record.proxy_id, |p| p.proxy_id)
    }

    /// Create the topics of `names` that do not exist (the Metadata and
    /// Produce auto-create); per name, whether it now exists (an error:
    /// the Kafka error the client gets for it).
    pub(crate) async fn auto_create(
        &self,
        names: &[String],
    ) -> HashMap<String, Result<(), ResponseError>> {
        let deadline = Instant::now() + SHOW_WAIT;
        let mut out = HashMap::new();
        for name in names {
            let r = if self.view.topic(name).is_some() {
                Ok(())
            } else if valid_topic_name(name).is_err() {
                Err(ResponseError::InvalidTopicException)
            } else {
                match self.view.topic_policy() {
                    // No live broker to write it: the client asks again.
                    None => Err(ResponseError::LeaderNotAvailable),
                    Some(p) if !p.auto_create => Err(ResponseError::UnknownTopicOrPartition),
                    Some(p) => {
                        self.create_and_show(
                            name,
                            p.default_partitions,
                            Default::default(),
                            deadline,
                        )
                        .await
                    }
                }
            };
            out.insert(name.clone(), r);
        }
        out
    }

    /// Make a coordinator's internal topic if it does not exist yet (the
    /// first FindCoordinator for a group or a transactional id does), with
    /// a live broker's partition count for it.
    pub(crate) async fn ensure_coordinator_topic(&self, topic: &'static str) {
        if self.view.topic(topic).is_some() {
            return;
        }
        let Some(p) = self.view.topic_policy() else {
            return;
        };
        let partitions = if topic == TXN_TOPIC {
            // Brokers from before transactions do not say: Floe's default.
            if p.txn_partitions > 0 {
                p.txn_partitions
            } else {
                16
            }
        } else {
            p.offsets_partitions.max(1)
        };
        let segment_bytes = match p.internal_segment_bytes {
            0 => floe_meta::topics::INTERNAL_SEGMENT_BYTES,
            b => b,
        };
        let deadline = Instant::now() + SHOW_WAIT;
        if let Err(e) = self
            .create_and_show(
                topic,
                partitions,
                offsets_topic_configs(segment_bytes),
                deadline,
            )
            .await
        {
            tracing::warn!(topic, error = ?e, "could not make an internal topic");
        }
    }

    async fn create_and_show(
        &self,
        name: &str,
        partitions: i32,
        configs: std::collections::BTreeMap<String, String>,
        deadline: Instant,
    ) -> Result<(), ResponseError> {
        let id = match self
            .topic_admin
            .create(name, partitions, configs, false)
            .await
        {
            Ok(t) => {
                tracing::info!(topic = name, partitions, "auto-created topic");
                Some(t.id())
            }
            // Made meanwhile by another proxy or a broker.
            Err(TopicError::AlreadyExists(_)) => None,
            Err(e) => {
                tracing::warn!(topic = name, error = %e, "auto-creating a topic failed");
                return Err(topic_error(&e));
            }
        };
        self.view.wait_until(deadline, |v| shown(v, name, id)).await;
        // Shown without owners yet: clients still see it (its partitions
        // are led by proxies, and produce to them waits for their owner).
        if self.view.topic(name).is_some() {
            Ok(())
        } else {
            Err(ResponseError::LeaderNotAvailable)
        }
    }
}

fn topic(t: crate::view::Topic) -> Topic {
    Topic {
        id: t.id,
        name: t.name,
        partitions: t.partitions,
    }
}

impl Cluster for Proxy {
    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    fn controller_id(&self) -> i32 {
        self.record.proxy_id
    }

    fn nodes(&self, listener: &str) -> Vec<Node> {
        self.client_nodes(listener)
            .into_iter()
            .map(|(id, host, port)| Node {
                id,
                host,
                port,
                rack: None,
            })
            .collect()
    }

    fn topics(&self) -> Vec<Topic> {
        self.view.topics().into_iter().map(topic).collect()
    }

    fn topic(&self, name: &str) -> Option<Topic> {
        self.view.topic(name).map(topic)
    }

    fn topic_by_id(&self, id: Uuid) -> Option<Topic> {
        self.view.topic_by_id(id).map(topic)
    }

    /// Epochs belong to the brokers behind the proxies; a proxy stays the
    /// leader across moves.
    fn leader(&self, p: PartitionId) -> Result<(i32, i32), ResponseError> {
        Ok((self.partition_leader(p), -1))
    }

    async fn auto_create(&self, names: &[String]) -> HashMap<String, Result<(), ResponseError>> {
        Proxy::auto_create(self, names).await
    }

    async fn ensure_coordinator_topic(&self, topic: &'static str) {
        Proxy::ensure_coordinator_topic(self, topic).await
    }

    fn metadata_store(&self) -> std::sync::Arc<dyn floe_meta::MetadataStore> {
        self.meta.clone()
    }

    /// The proxy a coordinator's key hashes to, once the key's partition
    /// of the internal topic has an owner (every proxy forwards to it).
    fn coordinator(&self, topic: &str, key: &str, listener: &str) -> Result<Node, ResponseError> {
        self.coordinator_owner(topic, key)?;
        let id = self.leader_for(key.as_bytes());
        let (host, port) = self
            .proxy_brokers(listener)
            .into_iter()
            .find(|(p, _, _)| *p == id)
            .map_or((self.record.host.clone(), self.record.port), |(_, h, p)| {
                (h, p)
            });
        Ok(Node {
            id,
            host,
            port,
            rack: None,
        })
    }
}
