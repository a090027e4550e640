//! The Kafka edge both tiers share: the listener (connections, frames,
//! in-order pipelined responses, limits, shutdown) for any `KafkaService`,
//! request dispatch as a table of handlers (decoding and timing once),
//! the request metrics it keeps, the answers written once over what a tier
//! knows of the cluster (Metadata, DescribeCluster, FindCoordinator) and
//! over a partition's log (Fetch, ListOffsets, OffsetForLeaderEpoch), and
//! the Kafka error codes of the domain errors below the edge.

pub mod acl;
pub mod authn;
pub mod authz;
pub mod client;
pub mod cluster;
pub mod dispatch;
pub mod errors;
pub mod listener;
pub mod metrics;
pub mod oauth;
pub mod read;
pub mod read_suite;
pub mod sasl;
pub mod tls;
pub mod trace;
pub mod users;

pub use metrics::RequestMetrics;
