//! The broker: the Kafka protocol server for the partitions it owns, the
//! Broker-Partition state machine and single writer of each, topic admin,
//! and its metrics.

pub mod assignor;
pub mod cluster;
pub mod config;
pub mod consumer_group;
pub mod group;
pub mod group_api;
pub mod handlers;
pub mod lag;
pub mod load;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod server;
pub mod tail;
pub mod throttle;
pub mod txn;
pub mod wal;

pub use config::{BrokerConfig, Faults, TopicConfig};
pub use metrics::Metrics;
pub use node::Node;
