//! Shared storage of partition logs: storage targets (anything `object_store`
//! opens), replica sets with quorum writes, the chunk and segment object
//! formats, fencing by conditional create, and reads through a shared cache.

pub mod cache;
pub mod chunk;
pub mod chunk_replicas;
pub mod compact;
pub mod conformance;
pub mod counted;
pub mod error;
pub mod faulty;
pub mod layout;
pub mod log;
pub mod replica;
pub mod segment;
pub mod target;
pub mod wal;
pub mod wal_read;
pub mod wal_recovery;
pub mod wal_stream;

pub use cache::BlockCache;
pub use error::StorageError;
pub use replica::{PutOutcome, ReplicaSet};
pub use target::{
    markable, marker_for, marker_incarnation, MarkerCheck, StoragePool, StorageTarget, MARKER_KEY,
};
