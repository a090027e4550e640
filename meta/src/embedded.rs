//! The embedded `MetadataStore`: a single-process twin of etcd on redb, used by
//! `floe standalone`. Revisions, transactions and the key space persist in one
//! redb file; leases and watch history live in memory, so keys bound to a
//! lease do not outlive the process that held it (as in etcd after the TTL).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use crate::store::*;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const SYS: TableDefinition<&str, i64> = TableDefinition::new("sys");
const REVISION: &str = "revision";
/// Watch events kept in memory for watches that resume from a past revision.
const HISTORY: usize = 100_000;

#[derive(Clone, PartialEq, Message)]
struct StoredKv {
    #[prost(bytes = "bytes", tag = "1")]
    value: Bytes,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "3")]
    mod_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "5")]
    lease: i64,
}

impl StoredKv {
    fn into_kv(self, key: Bytes) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: (self.lease != 0).then_some(self.lease),
        }
    }
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    /// On the store's own clock ([`Inner::now`]).
    deadline: Duration,
    keys: BTreeSet<Bytes>,
}

#[derive(Debug)]
struct State {
    revision: Revision,
    next_lease: LeaseId,
    /// Ordered, so that leases that lapse together end in one order
    /// (a simulation's runs replay).
    leases: BTreeMap<LeaseId, Lease>,
    history: VecDeque<WatchEvent>,
    /// Events with a revision below this are no longer in `history`.
    history_floor: Revision,
}

struct Inner {
    db: Database,
    /// Operations run on the caller's task, not on blocking threads (the
    /// in-memory store of a simulation, whose runs must not depend on
    /// thread timing).
    inline: bool,
    /// The store's clock for lease deadlines: monotonic time since it
    /// opened, or a simulation's (whose hosts' runtimes each have a clock
    /// of their own, while the store is one).
    clock: StoreClock,
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
}

/// Where a store reads the time its leases run on.
enum StoreClock {
    Monotonic(Instant),
    Given(Arc<dyn Fn() -> Duration + Send + Sync>),
}

impl Inner {
    fn now(&self) -> Duration {
        match &self.clock {
            StoreClock::Monotonic(opened) => opened.elapsed(),
            StoreClock::Given(f) => f(),
        }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

/// The embedded store. Cheap to clone; all clones share one database.
#[derive(Clone, Debug)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

fn io_err(e: impl std::fmt::Display) -> MetaError {
    MetaError::Unavailable(format!("embedded store: {e}"))
}

impl EmbeddedStore {
    /// Open (or create) the store in the file `path`. Keys bound to leases of
    /// an earlier process are deleted: those leases ended with it.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        let path = path.as_ref().to_owned();
        let db = tokio::task::spawn_blocking(move || Database::create(&path))
            .await
            .map_err(io_err)?
            .map_err(io_err)?;
        Self::start(db, false, StoreClock::Monotonic(Instant::now())).await
    }

    /// A store held in memory whose operations run inline, on the caller's
    /// task, and whose leases run on `clock` (time elapsed, read wherever
    /// the caller runs): what a deterministic simulation runs on (nothing
    /// survives the process).
    pub async fn in_memory(
        clock: Arc<dyn Fn() -> Duration + Send + Sync>,
    ) -> Result<Self, MetaError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(io_err)?;
        Self::start(db, true, StoreClock::Given(clock)).await
    }

    async fn start(db: Database, inline: bool, clock: StoreClock) -> Result<Self, MetaError> {
        let (events, _) = broadcast::channel(16_384);
        let store = EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                inline,
                clock,
                state: Mutex::new(State {
                    revision: 0,
                    next_lease: 1,
                    leases: BTreeMap::new(),
                    history: VecDeque::new(),
                    history_floor: 1,
                }),
                events,
            }),
        };
        store.blocking(|inner| inner.recover()).await?;
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let expired: Vec<LeaseId> = {
                    let now = inner.now();
                    let st = inner.state.lock().unwrap();
                    st.leases
                        .iter()
                        .filter(|(_, l)| l.deadline <= now)
                        .map(|(id, _)| *id)
                        .collect()
                };
                let store = EmbeddedStore { inner };
                for id in expired {
                    if let Err(e) = store.blocking(move |inner| inner.end_lease(id)).await {
                        tracing::warn!(lease = id, error = %e, "expiring lease failed");
                    }
                }
            }
        });
        Ok(store)
    }

    /// Run blocking work on the store off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        if self.inner.inline {
            return f(&self.inner);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(io_err)?
    }
}

impl Inner {
    fn recover(&self) -> Result<(), MetaError> {
        let tx = self.db.begin_write().map_err(io_err)?;
        let mut revision = {
            let sys = tx.open_table(SYS).map_err(io_err)?;
            let r = sys.get(REVISION).map_err(io_err)?.map(|v| v.value());
            r.unwrap_or(0)
        };
        let mut leased = Vec::new();
        {
            let kv = tx.open_table(KV).map_err(io_err)?;
            for entry in kv.iter().map_err(io_err)? {
                let (k, v) = entry.map_err(io_err)?;
                let stored =
                    StoredKv::decode(v.value()).map_err(|e| MetaError::Corrupt(e.to_string()))?;
                if stored.lease != 0 {
                    leased.push(k.value().to_vec());
                }
            }
        }
        if !leased.is_empty() {
            revision += 1;
            let mut kv = tx.open_table(KV).map_err(io_err)?;
            for k in &leased {
                kv.remove(k.as_slice()).map_err(io_err)?;
            }
            let mut sys = tx.open_table(SYS).map_err(io_err)?;
            sys.insert(REVISION, revision).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)?;
        let mut st = self.state.lock().unwrap();
        st.revision = revision;
        st.history_floor = revision + 1;
        Ok(())
    }

    fn read_kv(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let kv = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        };
        let v = kv.get(key).map_err(io_err)?;
        match v {
            None => Ok(None),
            Some(v) => {
                let stored =
                    StoredKv::decode(v.value()).map_err(|e| MetaError::Corrupt(e.to_string()))?;
                Ok(Some(stored.into_kv(Bytes::copy_from_slice(key))))
            }
        }
    }

    /// Apply a transaction. The state lock is held across the redb commit so
    /// that revisions, lease bookkeeping and the event order agree.
    fn apply(&self, txn: &Txn) -> Result<TxnOutcome, MetaError> {
        let mut st = self.state.lock().unwrap();
        let tx = self.db.begin_write().map_err(io_err)?;
        let revision = st.revision + 1;
        let mut events = Vec::new();
        let mut lease_adds: Vec<(LeaseId, Bytes)> = Vec::new();
        let mut lease_removes: Vec<(LeaseId, Bytes)> = Vec::new();
        {
            let mut kv = tx.open_table(KV).map_err(io_err)?;
            let load = |kv: &redb::Table<&[u8], &[u8]>,
                        key: &[u8]|
             -> Result<Option<StoredKv>, MetaError> {
                match kv.get(key).map_err(io_err)? {
                    None => Ok(None),
                    Some(v) => StoredKv::decode(v.value())
                        .map(Some)
                        .map_err(|e| MetaError::Corrupt(e.to_string())),
                }
            };
            for c in &txn.conditions {
                let ok = match c {
                    Condition::Missing(k) => load(&kv, k)?.is_none(),
                    Condition::Exists(k) => load(&kv, k)?.is_some(),
                    Condition::ModRevision(k, r) => {
                        load(&kv, k)?.map(|s| s.mod_revision).unwrap_or(0) == *r
                    }
                    Condition::ValueEquals(k, v) => {
                        load(&kv, k)?.map(|s| s.value == *v).unwrap_or(false)
                    }
                };
                if !ok {
                    return Ok(TxnOutcome::Mismatch);
                }
            }
            for op in &txn.ops {
                match op {
                    Op::Put { key, value, lease } => {
                        if let Some(l) = lease {
                            if !st.leases.contains_key(l) {
                                return Err(MetaError::LeaseNotFound(*l));
                            }
                        }
                        let prev = load(&kv, key)?;
                        let (create_revision, version, prev_lease) = match &prev {
                            Some(p) => (p.create_revision, p.version + 1, p.lease),
                            None => (revision, 1, 0),
                        };
                        let stored = StoredKv {
                            value: value.clone(),
                            create_revision,
                            mod_revision: revision,
                            version,
                            lease: lease.unwrap_or(0),
                        };
                        kv.insert(key.as_ref(), stored.encode_to_vec().as_slice())
                            .map_err(io_err)?;
                        if prev_lease != 0 {
                            lease_removes.push((prev_lease, key.clone()));
                        }
                        if let Some(l) = lease {
                            lease_adds.push((*l, key.clone()));
                        }
                        events.push(WatchEvent {
                            revision,
                            kind: WatchEventKind::Put(stored.into_kv(key.clone())),
                        });
                    }
                    Op::Delete(key) => {
                        if let Some(prev) = load(&kv, key)? {
                            kv.remove(key.as_ref()).map_err(io_err)?;
                            if prev.lease != 0 {
                                lease_removes.push((prev.lease, key.clone()));
                            }
                            events.push(WatchEvent {
                                revision,
                                kind: WatchEventKind::Delete(key.clone()),
                            });
                        }
                    }
                    Op::DeletePrefix(prefix) => {
                        let mut doomed = Vec::new();
                        for entry in kv.range::<&[u8]>(prefix.as_ref()..).map_err(io_err)? {
                            let (k, v) = entry.map_err(io_err)?;
                            if !k.value().starts_with(prefix) {
                                break;
                            }
                            let s = StoredKv::decode(v.value())
                                .map_err(|e| MetaError::Corrupt(e.to_string()))?;
                            doomed.push((Bytes::copy_from_slice(k.value()), s.lease));
                        }
                        for (k, lease) in doomed {
                            kv.remove(k.as_ref()).map_err(io_err)?;
                            if lease != 0 {
                                lease_removes.push((lease, k.clone()));
                            }
                            events.push(WatchEvent {
                                revision,
                                kind: WatchEventKind::Delete(k),
                            });
                        }
                    }
                }
            }
            let mut sys = tx.open_table(SYS).map_err(io_err)?;
            sys.insert(REVISION, revision).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)?;
        st.revision = revision;
        for (l, k) in lease_removes {
            if let Some(lease) = st.leases.get_mut(&l) {
                lease.keys.remove(&k);
            }
        }
        for (l, k) in lease_adds {
            if let Some(lease) = st.leases.get_mut(&l) {
                lease.keys.insert(k);
            }
        }
        for ev in events {
            st.history.push_back(ev.clone());
            // No receiver is not an error: nobody watches yet.
            let _ = self.events.send(ev);
        }
        while st.history.len() > HISTORY {
            if let Some(old) = st.history.pop_front() {
                st.history_floor = old.revision + 1;
            }
        }
        Ok(TxnOutcome::Committed { revision })
    }

    /// Remove a lease and delete its keys, as on expiry or revocation.
    fn end_lease(&self, id: LeaseId) -> Result<(), MetaError> {
        let keys = {
            let mut st = self.state.lock().unwrap();
            match st.leases.remove(&id) {
                Some(l) => l.keys,
                None => return Err(MetaError::LeaseNotFound(id)),
            }
        };
        if keys.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new();
        for k in keys {
            txn = txn.then(Op::Delete(k));
        }
        self.apply(&txn).map(|_| ())
    }
}

#[async_trait]
impl MetadataStore for EmbeddedStore {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        let key = key.to_vec();
        self.blocking(move |inner| inner.read_kv(&key)).await
    }

    async fn range(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision), MetaError> {
        let prefix = prefix.to_vec();
        self.blocking(move |inner| {
            // The revision is read under the state lock so no commit can land
            // between it and the read transaction's snapshot.
            let (tx, revision) = {
                let st = inner.state.lock().unwrap();
                (inner.db.begin_read().map_err(io_err)?, st.revision)
            };
            let kv = match tx.open_table(KV) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), revision)),
                Err(e) => return Err(io_err(e)),
            };
            let mut out = Vec::new();
            for entry in kv.range::<&[u8]>(prefix.as_slice()..).map_err(io_err)? {
                let (k, v) = entry.map_err(io_err)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let stored =
                    StoredKv::decode(v.value()).map_err(|e| MetaError::Corrupt(e.to_string()))?;
                out.push(stored.into_kv(Bytes::copy_from_slice(k.value())));
            }
            Ok((out, revision))
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        self.blocking(move |inner| inner.apply(&txn)).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        if ttl.is_zero() {
            return Err(MetaError::Invalid("lease TTL must be positive".into()));
        }
        let mut st = self.inner.state.lock().unwrap();
        let id = st.next_lease;
        st.next_lease += 1;
        st.leases.insert(
            id,
            Lease {
                ttl,
                deadline: self.inner.now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        let now = self.inner.now();
        let mut st = self.inner.state.lock().unwrap();
        match st.leases.get_mut(&lease) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(l.ttl)
            }
            _ => Err(MetaError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.blocking(move |inner| inner.end_lease(lease)).await
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, MetaError> {
        let prefix = Bytes::copy_from_slice(prefix);
        // Subscribe and copy the history under one lock: nothing is missed
        // between the replayed past and the live stream.
        let (backlog, rx, last) = {
            let st = self.inner.state.lock().unwrap();
            let rx = self.inner.events.subscribe();
            let backlog: Vec<WatchEvent> = match start_revision {
                Some(r) if r <= st.revision => {
                    if r < st.history_floor {
                        return Err(MetaError::Compacted {
                            requested: r,
                            oldest: st.history_floor,
                        });
                    }
                    st.history
                        .iter()
                        .filter(|e| e.revision >= r && e.key().starts_with(&prefix))
                        .cloned()
                        .collect()
                }
                _ => Vec::new(),
            };
            (backlog, rx, st.revision)
        };
        let live =
            futures::stream::unfold((rx, prefix.clone()), move |(mut rx, prefix)| async move {
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            if ev.revision > last && ev.key().starts_with(&prefix) {
                                return Some((Ok(ev), (rx, prefix)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            return Some((
                                Err(MetaError::Compacted {
                                    requested: last,
                                    oldest: last + n as i64,
                                }),
                                (rx, prefix),
                            ));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
        use futures::StreamExt;
        Ok(futures::stream::iter(backlog.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("meta.redb"))
            .await
            .unwrap();
        crate::conformance::run(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn data_survives_reopen_but_leased_keys_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let rev = {
            let store = EmbeddedStore::open(&path).await.unwrap();
            store.put(b"a", Bytes::from_static(b"1")).await.unwrap();
            let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
            store
                .txn(Txn::new().then(Op::put_with_lease(&b"owned"[..], &b"x"[..], lease)))
                .await
                .unwrap();
            let (_, rev) = store.range(b"").await.unwrap();
            rev
        };
        let store = EmbeddedStore::open(&path).await.unwrap();
        let a = store.get(b"a").await.unwrap().unwrap();
        assert_eq!(a.value, Bytes::from_static(b"1"));
        assert!(store.get(b"owned").await.unwrap().is_none());
        let (_, rev2) = store.range(b"").await.unwrap();
        assert!(rev2 > rev, "revisions keep increasing across restarts");
    }
}
