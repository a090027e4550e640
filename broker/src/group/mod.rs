//! Consumer groups: which broker coordinates a group (the owner of the
//! group's partition of the internal `__consumer_offsets` topic), in three
//! parts — the classic protocol's state machine (`classic`), the
//! coordinator and its APIs (`coordinator`), and the offsets log its state
//! lives in (`offsets_log`). Groups of the consumer group protocol
//! (KIP-848) live beside the classic ones, their state machine in
//! `consumer_group.rs`. The coordinator reaches its broker through
//! `GroupHost` only.

mod classic;
mod coordinator;
mod offsets_log;

use floe_common::PartitionId;
use floe_protocol::ResponseError;

pub use classic::{GroupState, JoinOutcome, JoinRequest, SyncOutcome};
pub use coordinator::{GroupListing, GroupView, Groups, MemberView};
pub use floe_protocol::rules::{partition_for, OFFSETS_TOPIC};
pub use offsets_log::Committed;
pub(crate) use offsets_log::{append as append_records, read_records};

use crate::config::BrokerConfig;
use crate::consumer_group::TopicMeta;
use crate::node::Node;
use crate::partition::PartitionHandle;

/// The settings the coordinator runs groups with (the broker's).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    pub group_initial_rebalance_delay_ms: u64,
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_consumer_session_timeout_ms: u64,
    pub offsets_retention_ms: i64,
}

impl From<&BrokerConfig> for GroupSettings {
    fn from(c: &BrokerConfig) -> Self {
        Self {
            group_initial_rebalance_delay_ms: c.group_initial_rebalance_delay_ms,
            group_min_session_timeout_ms: c.group_min_session_timeout_ms,
            group_max_session_timeout_ms: c.group_max_session_timeout_ms,
            group_consumer_session_timeout_ms: c.group_consumer_session_timeout_ms,
            offsets_retention_ms: c.offsets_retention_ms,
        }
    }
}

/// What the coordinator needs of the broker it runs in.
pub trait GroupHost: Send + Sync {
    /// The offsets partition holding `group`: its index, and its handle
    /// while this broker writes it (INVALID_GROUP_ID for an empty id,
    /// COORDINATOR_NOT_AVAILABLE without an offsets topic, NOT_COORDINATOR
    /// when another broker writes that partition).
    fn offsets_partition(&self, group: &str) -> Result<(i32, PartitionHandle), ResponseError>;
    /// Offsets partition `p`'s handle while this broker writes it
    /// (NOT_COORDINATOR otherwise).
    fn offsets_partition_at(&self, p: i32) -> Result<PartitionHandle, ResponseError>;
    /// Every topic (consumer-protocol subscriptions).
    fn topics(&self) -> Vec<TopicMeta>;
    /// The partition count of `topic`, if it exists (commits).
    fn partitions_of(&self, topic: &str) -> Option<i32>;
    fn settings(&self) -> GroupSettings;
}

impl GroupHost for Node {
    fn offsets_partition(&self, group: &str) -> Result<(i32, PartitionHandle), ResponseError> {
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let topic = self
            .topic(OFFSETS_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let p = partition_for(group, topic.partitions);
        let handle = self
            .partition(PartitionId::new(topic.id, p))
            .ok_or(ResponseError::NotCoordinator)?;
        Ok((p, handle))
    }

    fn offsets_partition_at(&self, p: i32) -> Result<PartitionHandle, ResponseError> {
        let topic = self
            .topic(OFFSETS_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        self.partition(PartitionId::new(topic.id, p))
            .ok_or(ResponseError::NotCoordinator)
    }

    fn topics(&self) -> Vec<TopicMeta> {
        Node::topics(self)
            .into_iter()
            .map(|t| TopicMeta {
                id: t.id,
                name: t.name,
                partitions: t.partitions,
            })
            .collect()
    }

    fn partitions_of(&self, topic: &str) -> Option<i32> {
        self.topic(topic).map(|t| t.partitions)
    }

    fn settings(&self) -> GroupSettings {
        GroupSettings::from(&*self.config)
    }
}
