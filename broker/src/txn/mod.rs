//! The transaction coordinator (KIP-98, KIP-890): what it keeps per
//! `transactional.id` and the rules of its state machine (`metadata.rs`).
//! The coordinator of an id is the owner of its `__transaction_state`
//! partition (docs/design.md, "Coordinators"); its log, its markers and
//! its Kafka APIs build on these rules and on its records (`log.rs`).

pub mod api;
pub mod coordinator;
pub mod log;
pub mod metadata;
