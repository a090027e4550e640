//! Cluster metadata: the `MetadataStore` seam (shaped after etcd: revisions,
//! compare-and-swap transactions, leases, prefix watches), its embedded
//! single-node implementation on redb, the conformance suite every
//! implementation passes, the follower that keeps a process's picture of it
//! up to date, the typed keys and values Floe stores in it, and the topic
//! catalogue (topic configs and the topic admin operations).

pub mod conformance;
pub mod election;
pub mod embedded;
pub mod etcd;
pub mod follow;
pub mod keys;
pub mod metered;
pub mod schema;
pub mod store;
pub mod topics;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdSecurity, EtcdStore};
pub use follow::{Follow, Follower};
pub use store::{
    Condition, KeyValue, LeaseId, MetaError, MetadataStore, Op, Revision, Txn, TxnOutcome,
    WatchEvent, WatchEventKind, WatchStream,
};
