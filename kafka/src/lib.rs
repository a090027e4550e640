//! The Kafka edge both tiers share: the listener (connections, frames,
//! in-order pipelined responses, limits, shutdown) for any `KafkaService`,
//! the request metrics it keeps, and the read answers written once over a
//! partition's log.

pub mod listener;
pub mod metrics;
pub mod read;

pub use metrics::RequestMetrics;
