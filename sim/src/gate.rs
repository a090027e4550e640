//! What stands between a simulated host and the shared world: its gate
//! (paused, cut off from the metadata store, cut off from storage, its wall
//! clock's skew), the unreliable metadata store it talks through (a twin of
//! etcd seen over a bad network: delays, refusals, timeouts, transactions
//! that committed but answer "indeterminate"), the storage it sees, and the
//! ledger of commits that invariant 4 is checked against.
//!
//! Turmoil cannot stop one host's clock, so a pause is modelled by its
//! effects: every request the host makes to the metadata store and the
//! storage targets (and every message on the simulated network, held by the
//! fault loop) waits until it resumes, and what it had in flight lands
//! afterwards — past its lease, which is what a SIGSTOP does to a broker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use floe_meta::{
    KeyValue, LeaseId, MetaError, MetadataStore, Op, Revision, Txn, TxnOutcome, WatchStream,
};
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use rand::rngs::StdRng;
use rand::Rng;

/// One host's switches, set by the fault loop.
#[derive(Debug, Default)]
pub struct Gate {
    pub paused: AtomicBool,
    pub meta_cut: AtomicBool,
    pub storage_cut: AtomicBool,
    /// How far this host's wall clock is off the simulation's, in ms.
    pub skew_ms: AtomicI64,
}

impl Gate {
    /// Wait while the host is paused.
    pub async fn running(&self) {
        while self.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

thread_local! {
    /// The gate of each host runtime of the simulation on this thread, so
    /// the wall clock (one for the process) can tell whose time it tells.
    static RUNTIMES: RefCell<HashMap<tokio::runtime::Id, Arc<Gate>>> = RefCell::new(HashMap::new());
}

/// Bind the current runtime (a host's, as it starts) to its gate.
pub fn register(gate: Arc<Gate>) {
    let id = tokio::runtime::Handle::current().id();
    RUNTIMES.with(|r| r.borrow_mut().insert(id, gate));
}

/// Forget every runtime (a new run starts).
pub fn reset() {
    RUNTIMES.with(|r| r.borrow_mut().clear());
}

/// The skew of the host whose runtime is running now (0 outside hosts).
pub fn current_skew_ms() -> i64 {
    let Ok(h) = tokio::runtime::Handle::try_current() else {
        return 0;
    };
    RUNTIMES.with(|r| {
        r.borrow()
            .get(&h.id())
            .map(|g| g.skew_ms.load(Ordering::SeqCst))
            .unwrap_or(0)
    })
}

/// A commit of a partition's writer, as the metadata store applied it.
#[derive(Clone, Debug)]
pub struct Commit {
    pub revision: Revision,
    /// `topic_id/partition`.
    pub partition: String,
    pub epoch: i32,
    /// What was written: `checkpoint` or `segment`.
    pub what: &'static str,
    /// The host and its incarnation (`broker-2#3`).
    pub by: String,
}

/// How unreliable the metadata store is.
#[derive(Clone, Copy, Debug)]
pub struct MetaFaults {
    /// Requests refused before they are applied.
    pub unavailable_rate: f64,
    /// Transactions applied whose answer is lost ("indeterminate").
    pub lost_commit_rate: f64,
    /// Transactions that time out unapplied ("indeterminate" too).
    pub timeout_rate: f64,
    /// Requests that take 100 ms to 1.5 s.
    pub slow_rate: f64,
}

impl Default for MetaFaults {
    fn default() -> Self {
        Self {
            unavailable_rate: 0.002,
            lost_commit_rate: 0.002,
            timeout_rate: 0.002,
            slow_rate: 0.005,
        }
    }
}

/// How long a request waits for a cut-off store before it gives up (the
/// etcd client's request timeout).
const CUT_TIMEOUT: Duration = Duration::from_secs(2);

/// A host's view of the metadata store.
#[derive(Clone)]
pub struct SimMeta {
    pub inner: Arc<dyn MetadataStore>,
    pub gate: Arc<Gate>,
    pub by: String,
    pub faults: MetaFaults,
    pub rng: Arc<Mutex<StdRng>>,
    pub ledger: Arc<Mutex<Vec<Commit>>>,
}

impl fmt::Debug for SimMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimMeta({})", self.by)
    }
}

/// What happens to one request, decided before it is sent.
#[derive(PartialEq)]
enum Fate {
    Answered,
    Refused,
    CommitLost,
    TimedOut,
}

impl SimMeta {
    /// Get the request to the store: wait out a pause, the network's
    /// delay, a cut (up to the client's timeout).
    async fn send(&self, is_txn: bool) -> Result<Fate, MetaError> {
        self.gate.running().await;
        let (latency, fate) = {
            let mut rng = self.rng.lock().unwrap();
            let latency = if rng.random::<f64>() < self.faults.slow_rate {
                Duration::from_millis(rng.random_range(100..1_500))
            } else {
                Duration::from_micros(rng.random_range(300..3_000))
            };
            let r: f64 = rng.random();
            let f = self.faults;
            let fate = if r < f.unavailable_rate {
                Fate::Refused
            } else if is_txn && r < f.unavailable_rate + f.lost_commit_rate {
                Fate::CommitLost
            } else if is_txn && r < f.unavailable_rate + f.lost_commit_rate + f.timeout_rate {
                Fate::TimedOut
            } else {
                Fate::Answered
            };
            (latency, fate)
        };
        tokio::time::sleep(latency).await;
        if self.gate.meta_cut.load(Ordering::SeqCst) {
            let mut waited = Duration::ZERO;
            while self.gate.meta_cut.load(Ordering::SeqCst) {
                if waited >= CUT_TIMEOUT {
                    return Err(MetaError::Unavailable(format!(
                        "{}: no answer from the metadata store (network partition)",
                        self.by
                    )));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += Duration::from_millis(10);
            }
        }
        if fate == Fate::Refused {
            return Err(MetaError::Unavailable("injected: request refused".into()));
        }
        // Paused with the request on the wire: it is applied when the host
        // runs again (its sending side resumes).
        self.gate.running().await;
        Ok(fate)
    }

    /// The answer's way back: a pause holds it.
    async fn receive(&self) {
        self.gate.running().await;
    }

    fn record(&self, txn: &Txn, revision: Revision) {
        use floe_meta::keys;
        use floe_meta::schema::{CheckpointRecord, SegmentRecord};
        use prost::Message;
        let mut ledger = self.ledger.lock().unwrap();
        for op in &txn.ops {
            let Op::Put { key, value, .. } = op else {
                continue;
            };
            if let Some(p) = keys::parse_checkpoint(key) {
                if let Ok(c) = CheckpointRecord::decode(value.clone()) {
                    ledger.push(Commit {
                        revision,
                        partition: format!("{}/{}", p.topic_id, p.partition),
                        epoch: c.epoch,
                        what: "checkpoint",
                        by: self.by.clone(),
                    });
                }
            } else if let Some((p, _)) = parse_segment(key) {
                if let Ok(s) = SegmentRecord::decode(value.clone()) {
                    if s.compactions == 0 {
                        ledger.push(Commit {
                            revision,
                            partition: p,
                            epoch: s.sealed_by_epoch,
                            what: "segment",
                            by: self.by.clone(),
                        });
                    }
                }
            }
        }
    }
}

/// `(topic_id/partition, base)` of a segment key.
fn parse_segment(key: &[u8]) -> Option<(String, i64)> {
    let s = std::str::from_utf8(key).ok()?;
    let rest = s.strip_prefix("/floe/partitions/")?;
    let mut parts = rest.split('/');
    let (topic, partition, kind, base) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if kind != "segments" || parts.next().is_some() {
        return None;
    }
    Some((format!("{topic}/{partition}"), base.parse().ok()?))
}

#[async_trait]
impl MetadataStore for SimMeta {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        self.send(false).await?;
        let r = self.inner.get(key).await;
        self.receive().await;
        r
    }

    async fn range(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision), MetaError> {
        self.send(false).await?;
        let r = self.inner.range(prefix).await;
        self.receive().await;
        r
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        let fate = self.send(true).await?;
        if fate == Fate::TimedOut {
            return Err(MetaError::Indeterminate(
                "injected: the transaction timed out".into(),
            ));
        }
        let r = self.inner.txn(txn.clone()).await;
        if let Ok(TxnOutcome::Committed { revision }) = &r {
            self.record(&txn, *revision);
        }
        if fate == Fate::CommitLost {
            return Err(MetaError::Indeterminate(
                "injected: the answer to a transaction was lost".into(),
            ));
        }
        self.receive().await;
        r
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        self.send(false).await?;
        let r = self.inner.grant_lease(ttl).await;
        self.receive().await;
        r
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        self.send(false).await?;
        let r = self.inner.keep_alive(lease).await;
        self.receive().await;
        r
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        self.send(false).await?;
        let r = self.inner.revoke_lease(lease).await;
        self.receive().await;
        r
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, MetaError> {
        self.send(false).await?;
        let inner = self.inner.watch_prefix(prefix, start_revision).await?;
        self.receive().await;
        // Events reach the host over the same network: a pause holds them,
        // a cut longer than the client's keepalive breaks the stream.
        let gate = self.gate.clone();
        Ok(futures::stream::unfold(
            (inner, gate, false),
            |(mut inner, gate, broken)| async move {
                if broken {
                    return None;
                }
                let event = inner.next().await?;
                gate.running().await;
                let mut waited = Duration::ZERO;
                while gate.meta_cut.load(Ordering::SeqCst) {
                    if waited >= CUT_TIMEOUT {
                        return Some((
                            Err(MetaError::Unavailable(
                                "the watch stream broke (network partition)".into(),
                            )),
                            (inner, gate, true),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    waited += Duration::from_millis(10);
                }
                Some((event, (inner, gate, false)))
            },
        )
        .boxed())
    }
}

/// A storage target that can lose everything it holds (a disk replaced by
/// an empty one under the same name).
#[derive(Debug)]
pub struct Wipeable {
    inner: RwLock<Arc<object_store::memory::InMemory>>,
}

impl Wipeable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: RwLock::new(Arc::new(object_store::memory::InMemory::new())),
        })
    }

    /// Put the target's identity marker in place (before the run, with no
    /// fault in the way).
    pub fn mark(&self, marker: &str) {
        let store = self.store();
        let marker = bytes::Bytes::from(marker.to_string());
        futures::executor::block_on(async move {
            use object_store::ObjectStoreExt;
            store
                .put(
                    &object_store::path::Path::from(floe_storage::MARKER_KEY),
                    marker.into(),
                )
                .await
                .expect("a memory store takes a put")
        });
    }

    pub fn wipe(&self) {
        *self.inner.write().unwrap() = Arc::new(object_store::memory::InMemory::new());
    }

    fn store(&self) -> Arc<object_store::memory::InMemory> {
        self.inner.read().unwrap().clone()
    }
}

impl fmt::Display for Wipeable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wipeable")
    }
}

/// One host's way to a storage target: a pause holds its requests and
/// their answers, a cut fails them.
#[derive(Debug)]
pub struct GatedStore {
    pub inner: Arc<dyn ObjectStore>,
    pub gate: Arc<Gate>,
}

impl fmt::Display for GatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

fn cut_error() -> object_store::Error {
    object_store::Error::Generic {
        store: "sim",
        source: "cut off from storage (network partition)".into(),
    }
}

impl GatedStore {
    /// A request on its way: held by a pause, refused by a cut.
    async fn before(&self) -> object_store::Result<()> {
        self.gate.running().await;
        if self.gate.storage_cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Err(cut_error());
        }
        Ok(())
    }
}

/// The calls every wrapper forwards, written once for both.
macro_rules! forward_store {
    ($ty:ty) => {
        #[async_trait]
        impl ObjectStore for $ty {
            async fn put_opts(
                &self,
                location: &Path,
                payload: PutPayload,
                opts: PutOptions,
            ) -> object_store::Result<PutResult> {
                self.before().await?;
                let r = self.inner().put_opts(location, payload, opts).await;
                self.after().await;
                r
            }

            async fn put_multipart_opts(
                &self,
                location: &Path,
                opts: PutMultipartOptions,
            ) -> object_store::Result<Box<dyn MultipartUpload>> {
                self.before().await?;
                self.inner().put_multipart_opts(location, opts).await
            }

            async fn get_opts(
                &self,
                location: &Path,
                options: GetOptions,
            ) -> object_store::Result<GetResult> {
                self.before().await?;
                let r = self.inner().get_opts(location, options).await;
                self.after().await;
                r
            }

            async fn get_ranges(
                &self,
                location: &Path,
                ranges: &[Range<u64>],
            ) -> object_store::Result<Vec<Bytes>> {
                self.before().await?;
                let r = self.inner().get_ranges(location, ranges).await;
                self.after().await;
                r
            }

            fn delete_stream(
                &self,
                locations: BoxStream<'static, object_store::Result<Path>>,
            ) -> BoxStream<'static, object_store::Result<Path>> {
                self.wrap_stream(self.inner().delete_stream(locations))
            }

            fn list(
                &self,
                prefix: Option<&Path>,
            ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
                self.wrap_stream(self.inner().list(prefix))
            }

            async fn list_with_delimiter(
                &self,
                prefix: Option<&Path>,
            ) -> object_store::Result<ListResult> {
                self.before().await?;
                self.inner().list_with_delimiter(prefix).await
            }

            async fn copy_opts(
                &self,
                from: &Path,
                to: &Path,
                options: CopyOptions,
            ) -> object_store::Result<()> {
                self.before().await?;
                self.inner().copy_opts(from, to, options).await
            }
        }
    };
}

impl Wipeable {
    fn inner(&self) -> Arc<dyn ObjectStore> {
        self.store()
    }

    async fn before(&self) -> object_store::Result<()> {
        Ok(())
    }

    async fn after(&self) {}

    fn wrap_stream<T: Send + 'static>(
        &self,
        s: BoxStream<'static, object_store::Result<T>>,
    ) -> BoxStream<'static, object_store::Result<T>> {
        s
    }
}

impl GatedStore {
    fn inner(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// The answer on its way back: held by a pause.
    async fn after(&self) {
        self.gate.running().await;
    }

    /// A listing or a batch of deletes: refused when cut, held by a pause.
    fn wrap_stream<T: Send + 'static>(
        &self,
        s: BoxStream<'static, object_store::Result<T>>,
    ) -> BoxStream<'static, object_store::Result<T>> {
        if self.gate.storage_cut.load(Ordering::SeqCst) {
            return futures::stream::once(async { Err(cut_error()) }).boxed();
        }
        let gate = self.gate.clone();
        futures::stream::once(async move {
            gate.running().await;
            s
        })
        .flatten()
        .boxed()
    }
}

forward_store!(Wipeable);
forward_store!(GatedStore);
