//! Kafka wire glue without I/O policy: request framing, the table of API
//! versions Floe implements, and the v2 record batch header (validation,
//! offset assignment by patching, iteration). Record batches stay bytes;
//! where records must be read, `records` decodes them with bounded
//! decompression.

pub mod batch;
pub mod control;
pub mod frame;
pub mod legacy;
pub mod legacy_api;
pub mod produce_frame;
pub mod records;
pub mod responses;
pub mod rules;
pub mod versions;

pub use kafka_protocol;
pub use kafka_protocol::error::ResponseError;
