//! The `MetadataStore` trait: the contract every metadata backend (etcd, the
//! embedded store) honours, in etcd's terms.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// A store-wide, strictly increasing version number; every committed write
/// gets a new one, as in etcd.
pub type Revision = i64;

/// A lease: keys attached to it are deleted when it expires or is revoked.
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key.
    pub mod_revision: Revision,
    /// Number of writes since creation, starting at 1.
    pub version: i64,
    /// The lease the key is bound to, if any.
    pub lease: Option<LeaseId>,
}

/// One condition of a transaction; all must hold for the operations to apply.
#[derive(Clone, Debug)]
pub enum Condition {
    /// The key does not exist.
    Missing(Bytes),
    /// The key exists.
    Exists(Bytes),
    /// The key's last write was at exactly this revision.
    ModRevision(Bytes, Revision),
    /// The key exists and holds exactly this value.
    ValueEquals(Bytes, Bytes),
}

#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Delete(Bytes),
    DeletePrefix(Bytes),
}

impl Op {
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_with_lease(key: impl Into<Bytes>, value: impl Into<Bytes>, lease: LeaseId) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn delete(key: impl Into<Bytes>) -> Self {
        Op::Delete(key.into())
    }
}

/// A compare-and-swap transaction: if every condition holds, apply every
/// operation atomically at one new revision.
#[derive(Clone, Debug, Default)]
pub struct Txn {
    pub conditions: Vec<Condition>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, c: Condition) -> Self {
        self.conditions.push(c);
        self
    }

    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// What a transaction did. A failed comparison is an outcome, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed { revision: Revision },
    Mismatch,
}

impl TxnOutcome {
    pub fn committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEventKind {
    Put(KeyValue),
    /// The key was deleted (explicitly, by prefix, or by its lease expiring).
    Delete(Bytes),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub revision: Revision,
    pub kind: WatchEventKind,
}

impl WatchEvent {
    pub fn key(&self) -> &Bytes {
        match &self.kind {
            WatchEventKind::Put(kv) => &kv.key,
            WatchEventKind::Delete(k) => k,
        }
    }
}

pub type WatchStream = BoxStream<'static, Result<WatchEvent, MetaError>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// The store could not be reached or refused the request; nothing was
    /// written. Retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have been applied (e.g. a timeout after
    /// sending a write). Re-read before deciding.
    #[error("metadata store outcome unknown: {0}")]
    Indeterminate(String),
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    /// A watch asked to resume from a revision the store no longer keeps
    /// history for; re-read the prefix and watch from the returned revision.
    #[error("revision {requested} compacted (oldest kept: {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("invalid metadata request: {0}")]
    Invalid(String),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

/// Cluster metadata storage with etcd's semantics. Implementations: the
/// embedded redb store (one process) and etcd (a cluster); both pass
/// [`crate::conformance`].
#[async_trait]
pub trait MetadataStore: Send + Sync + std::fmt::Debug + 'static {
    /// The value of one key.
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError>;

    /// Every key starting with `prefix`, in key order, and the store revision
    /// the read was made at (a watch from `revision + 1` misses nothing).
    async fn range(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision), MetaError>;

    /// Apply `txn` atomically if all its conditions hold.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError>;

    /// Grant a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError>;

    /// Refresh a lease; returns its TTL. `LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError>;

    /// Revoke a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError>;

    /// Events for keys under `prefix` with revision ≥ `start_revision`
    /// (or from now on, if `None`), in revision order, without gaps.
    async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, MetaError>;

    /// Unconditional put.
    async fn put(&self, key: &[u8], value: Bytes) -> Result<Revision, MetaError> {
        match self
            .txn(Txn::new().then(Op::put(Bytes::copy_from_slice(key), value)))
            .await?
        {
            TxnOutcome::Committed { revision } => Ok(revision),
            TxnOutcome::Mismatch => Err(MetaError::Invalid(
                "unconditional transaction reported a mismatch".into(),
            )),
        }
    }

    /// Unconditional delete.
    async fn delete(&self, key: &[u8]) -> Result<Revision, MetaError> {
        match self
            .txn(Txn::new().then(Op::delete(Bytes::copy_from_slice(key))))
            .await?
        {
            TxnOutcome::Committed { revision } => Ok(revision),
            TxnOutcome::Mismatch => Err(MetaError::Invalid(
                "unconditional transaction reported a mismatch".into(),
            )),
        }
    }
}
