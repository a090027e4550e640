//! This broker as a member of the cluster: its registration and lease, the
//! topic catalog it follows, the partitions it runs (started and stopped as
//! the assignments in the metadata store say), and the topic admin
//! operations that write to the metadata store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use floe_common::{Epoch, PartitionId, SharedClock, Uuid};
use floe_meta::schema::{
    AssignmentRecord, BrokerRecord, OwnerRecord, ProducerIdBlockRecord, TopicRecord, FORMAT,
};
use floe_meta::topics::{TopicAdmin, TopicError};
use floe_meta::{
    keys, Condition, Follow, Follower, MetaError, MetadataStore, Op, Txn, TxnOutcome,
    WatchEventKind,
};
use floe_storage::{BlockCache, StoragePool};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, TopicConfig};
use crate::metrics::Metrics;
use crate::partition::{self, LeaseGuard, PartitionContext, PartitionHandle, PartitionState};

/// A topic as the broker knows it.
#[derive(Clone, Debug)]
pub struct TopicInfo {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

#[derive(Default)]
struct Catalog {
    by_name: HashMap<String, TopicInfo>,
    by_id: HashMap<Uuid, String>,
}

/// Who is where in the cluster, as last seen in the metadata store.
#[derive(Default)]
struct ClusterView {
    brokers: BTreeMap<i32, BrokerRecord>,
    /// The broker writing each partition now (its owner key).
    owners: HashMap<PartitionId, OwnerRecord>,
}

pub struct Node {
    pub config: Arc<BrokerConfig>,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub meta: Arc<dyn MetadataStore>,
    pub metrics: Arc<Metrics>,
    pub cache: BlockCache,
    /// What partitions are started with; its session and lease change when
    /// the broker rejoins after its lease expired.
    ctx: RwLock<PartitionContext>,
    catalog: RwLock<Catalog>,
    view: RwLock<ClusterView>,
    partitions: RwLock<HashMap<PartitionId, PartitionHandle>>,
    /// Assignment epochs this broker should run, as last seen.
    wanted: RwLock<HashMap<PartitionId, Epoch>>,
    /// Partitions with a converging task, and whether it must look again.
    converging: std::sync::Mutex<HashMap<PartitionId, bool>>,
    shutdown: CancellationToken,
    /// Cancelled when the broker's lease expired and it could not rejoin.
    pub lease_lapsed: CancellationToken,
    /// This broker's registration (bound to its lease).
    record: BrokerRecord,
    /// The consumer groups this broker coordinates.
    pub groups: crate::group::Groups,
    /// The transactions this broker coordinates.
    pub txn: crate::txn::coordinator::Coordinator,
    /// Topic admin on the metadata store (configs over this broker's
    /// `topic_defaults`).
    pub topic_admin: TopicAdmin,
    /// What keeps the picture above up to date (set once it has loaded).
    follower: std::sync::OnceLock<Arc<Follower<Follows>>>,
    /// Producer ids claimed from the metadata store: [next, end).
    producer_ids: tokio::sync::Mutex<(i64, i64)>,
    /// Produce requests answered (for fault injection).
    pub produce_count: std::sync::atomic::AtomicU64,
}

/// The broker's picture of the cluster as a `floe_meta::Follow` target
/// (weak: the follower's task must not keep a stopped node alive).
struct Follows(std::sync::Weak<Node>);

impl Follow for Follows {
    fn reset(&self, kvs: Vec<floe_meta::KeyValue>, _revision: i64) {
        if let Some(node) = self.0.upgrade() {
            node.load_picture(kvs);
        }
    }

    fn apply(&self, event: floe_meta::WatchEvent) {
        if let Some(node) = self.0.upgrade() {
            node.apply_change(event);
        }
    }
}

/// The TTL the broker's lease is granted for: `lease_ttl_ms` bounds how
/// long a broker that stops (frozen, killed, cut off) keeps its partitions,
/// and etcd revokes an expired lease only at its next expiry check (every
/// 500 ms) and counts TTLs in whole seconds. So the lease is asked for in
/// whole seconds, at most `lease_ttl_ms` less that interval: with the
/// default 10 s a lease of 9 s, lapsed at most 9.5 s after the last renewal.
/// (etcd raises TTLs below its own minimum, 2 s by default.)
pub(crate) fn lease_ttl(config: &BrokerConfig) -> Duration {
    const STORE_EXPIRY_CHECK_MS: u64 = 500;
    let whole_secs = config.lease_ttl_ms.saturating_sub(STORE_EXPIRY_CHECK_MS) / 1_000;
    Duration::from_secs(whole_secs.max(1))
}

/// Grant a lease and register `record` under it: a new session of this
/// broker, identified by the registration's create revision.
async fn register(
    meta: &dyn MetadataStore,
    record: &BrokerRecord,
    ttl: Duration,
) -> Result<(Arc<LeaseGuard>, i64), MetaError> {
    let key = keys::broker(record.broker_id);
    let mut waiting_since: Option<Instant> = None;
    let mut last_warning = Instant::now();
    let mut last_marked: Option<Instant> = None;
    loop {
        let lease = meta.grant_lease(ttl).await?;
        let guard = Arc::new(LeaseGuard::new(lease));
        guard.renewed(Instant::now(), ttl);
        let register = Txn::new()
            .when(Condition::Missing(key.clone()))
            .then(Op::put_with_lease(
                key.clone(),
                record.encode_to_vec(),
                lease,
            ));
        match meta.txn(register).await {
            Ok(TxnOutcome::Committed { revision }) => {
                if let Some(since) = waiting_since {
                    tracing::info!(
                        broker_id = record.broker_id,
                        waited_ms = since.elapsed().as_millis() as u64,
                        "the earlier registration lapsed; registered"
                    );
                    let _ = meta
                        .txn(Txn::new().then(Op::Delete(keys::successor(record.broker_id))))
                        .await;
                }
                return Ok((guard, revision));
            }
            Ok(TxnOutcome::Mismatch) => {
                let _ = meta.revoke_lease(lease).await;
            }
            Err(e) => {
                let _ = meta.revoke_lease(lease).await;
                return Err(e);
            }
        }
        // Registered by an earlier process of this broker (restarted in
        // place, as Kubernetes does) whose lease has not lapsed yet, or by
        // another live broker with the same id: wait for the key to go.
        let holder = meta
            .get(&key)
            .await?
            .and_then(|kv| BrokerRecord::decode(kv.value).ok());
        let since = *waiting_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_millis(10) {
            tracing::warn!(broker_id = record.broker_id,
                holder = ?holder.as_ref().map(|h| format!("{}:{} started_ms={}", h.host, h.port, h.started_ms)),
                lease_ttl_ms = ttl.as_millis() as u64,
                "this broker id is registered by an earlier process whose lease is still alive; waiting for it to lapse");
        } else if last_warning.elapsed() >= Duration::from_secs(30) {
            last_warning = Instant::now();
            tracing::warn!(broker_id = record.broker_id, waited_ms = since.elapsed().as_millis() as u64,
                holder = ?holder.as_ref().map(|h| format!("{}:{} started_ms={}", h.host, h.port, h.started_ms)),
                "still waiting for this broker id's registration to lapse: if another broker with this id is running, stop one of them");
        }
        if holder.is_some() && last_marked.is_none_or(|t| t.elapsed() >= ttl / 2) {
            // Tell the controller that the holder's process is presumably
            // gone (this one replaces it), so it hands that session no
            // more partitions while its lease runs out. Bound to a lease
            // of its own that lapses if this process dies too.
            last_marked = Some(Instant::now());
            if let Ok(l) = meta.grant_lease(ttl).await {
                let _ = meta
                    .txn(Txn::new().then(Op::put_with_lease(
                        keys::successor(record.broker_id),
                        record.encode_to_vec(),
                        l,
                    )))
                    .await;
            }
        }
        if holder.is_some() {
            tokio::time::sleep(REGISTER_POLL).await;
        }
    }
}

/// How often a broker waiting for its id's old registration to lapse looks.
const REGISTER_POLL: Duration = Duration::from_millis(250);

pub use floe_protocol::rules::valid_topic_name;

impl Node {
    /// Register this broker (bound to a fresh lease kept alive in the
    /// background) and start following topics and assignments.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: BrokerConfig,
        cluster_id: String,
        endpoints: Vec<floe_meta::schema::Endpoint>,
        meta: Arc<dyn MetadataStore>,
        pool: Arc<StoragePool>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        tail: String,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, MetaError> {
        let config = Arc::new(config);
        let cache = BlockCache::new(config.cache_bytes);
        let Some(first) = endpoints.first() else {
            return Err(MetaError::Invalid("a broker needs a Kafka listener".into()));
        };
        let (advertised_host, advertised_port) = (first.host.clone(), first.port);
        let record = BrokerRecord {
            format: FORMAT,
            broker_id: config.node_id,
            host: advertised_host.clone(),
            port: advertised_port,
            rack: None,
            started_ms: clock.now_ms(),
            tail,
            topic_policy: Some(floe_meta::schema::TopicPolicy {
                auto_create: config.auto_create_topics,
                default_partitions: config.default_partitions,
                offsets_partitions: config.offsets_topic_partitions.max(1),
                txn_partitions: config.transaction_topic_partitions.max(1),
                internal_segment_bytes: config.internal_topic_segment_bytes,
            }),
            listeners: endpoints,
        };
        let (guard, session) = register(&*meta, &record, lease_ttl(&config)).await?;
        let wal = open_wal(&meta, &pool, &config, session, &clock, &metrics).await?;
        let ctx = PartitionContext {
            broker_id: config.node_id,
            session,
            meta: meta.clone(),
            pool,
            cache: cache.clone(),
            clock: clock.clone(),
            config: config.clone(),
            lease: guard,
            metrics: metrics.clone(),
            repair_pacer: Arc::new(crate::throttle::Pacer::new(config.repair_max_bytes_per_sec)),
            compaction_pacer: Arc::new(crate::throttle::Pacer::new(
                config.compaction_max_bytes_per_sec,
            )),
            seals: Arc::new(tokio::sync::Semaphore::new(config.seal_concurrency.max(1))),
            wal,
        };
        let node = Arc::new(Self {
            config: config.clone(),
            cluster_id,
            advertised_host: advertised_host.clone(),
            advertised_port,
            meta: meta.clone(),
            metrics,
            cache,
            ctx: RwLock::new(ctx),
            record,
            catalog: RwLock::new(Catalog::default()),
            view: RwLock::new(ClusterView::default()),
            partitions: RwLock::new(HashMap::new()),
            wanted: RwLock::new(HashMap::new()),
            converging: Default::default(),
            shutdown,
            lease_lapsed: CancellationToken::new(),
            groups: Default::default(),
            txn: crate::txn::coordinator::Coordinator::new(
                config.internal_tls.clone().map(Arc::new),
            ),
            topic_admin: TopicAdmin::new(
                meta.clone(),
                config.topic_defaults.clone(),
                clock.clone(),
            ),
            follower: Default::default(),
            producer_ids: tokio::sync::Mutex::new((0, 0)),
            produce_count: Default::default(),
        });
        tokio::spawn(keep_alive(node.clone()));
        tokio::spawn(crate::txn::coordinator::Coordinator::run(Arc::downgrade(
            &node,
        )));
        node.follow().await?;
        tokio::spawn(crate::load::run(
            node.clone(),
            Duration::from_millis(config.load_report_interval_ms.max(100)),
        ));
        if config.consumer_lag_interval_ms > 0 {
            tokio::spawn(crate::lag::run(
                Arc::downgrade(&node),
                Duration::from_millis(config.consumer_lag_interval_ms.max(100)),
            ));
        }
        Ok(node)
    }

    /// Load topics, brokers and partition ownership, then follow their
    /// changes (`floe_meta::Follower`: on a watch failure it reads
    /// everything again and resumes; a picture and a change never apply
    /// at once, so a picture older than a change cannot roll it back — a
    /// broker rejoining after a pause lost its first assignments that way).
    async fn follow(self: &Arc<Self>) -> Result<(), MetaError> {
        let f = Follower::start(
            self.meta.clone(),
            vec![
                keys::topics_prefix(),
                keys::partitions_prefix(),
                keys::brokers_prefix(),
            ],
            Arc::new(Follows(Arc::downgrade(self))),
            self.shutdown.clone(),
        )
        .await?;
        let _ = self.follower.set(f);
        Ok(())
    }

    /// The whole picture at one revision.
    fn load_picture(self: &Arc<Self>, all: Vec<floe_meta::KeyValue>) {
        let under = |prefix: Bytes| -> Vec<floe_meta::KeyValue> {
            all.iter()
                .filter(|kv| kv.key.starts_with(&prefix))
                .cloned()
                .collect()
        };
        let topics = under(keys::topics_prefix());
        let names: std::collections::HashSet<String> = topics
            .iter()
            .filter_map(|kv| TopicRecord::decode(kv.value.clone()).ok())
            .map(|t| t.name)
            .collect();
        let stale: Vec<String> = self
            .catalog
            .read()
            .unwrap()
            .by_name
            .keys()
            .filter(|n| !names.contains(*n))
            .cloned()
            .collect();
        for n in stale {
            self.forget_topic(&keys::topic(&n));
        }
        for kv in topics {
            self.apply_topic(Some(kv.value));
        }
        let brokers = under(keys::brokers_prefix());
        {
            let mut v = self.view.write().unwrap();
            v.brokers = brokers
                .iter()
                .filter_map(|kv| BrokerRecord::decode(kv.value.clone()).ok())
                .map(|b| (b.broker_id, b))
                .collect();
        }
        let parts = under(keys::partitions_prefix());
        let mut assigned = std::collections::HashSet::new();
        let mut owners = HashMap::new();
        for kv in parts {
            if let Some(p) = keys::parse_assignment(&kv.key) {
                assigned.insert(p);
                self.apply_assignment(p, Some(kv.value));
            } else if let Some(p) = keys::parse_owner(&kv.key) {
                if let Ok(o) = OwnerRecord::decode(kv.value) {
                    owners.insert(p, o);
                }
            }
        }
        self.view.write().unwrap().owners = owners;
        let gone: Vec<PartitionId> = self
            .wanted
            .read()
            .unwrap()
            .keys()
            .filter(|p| !assigned.contains(p))
            .copied()
            .collect();
        for p in gone {
            self.apply_assignment(p, None);
        }
    }

    /// One change after the last picture.
    fn apply_change(self: &Arc<Self>, ev: floe_meta::WatchEvent) {
        let key = ev.key().clone();
        if key.starts_with(&keys::topics_prefix()) {
            match ev.kind {
                WatchEventKind::Put(kv) => self.apply_topic(Some(kv.value)),
                WatchEventKind::Delete(key) => self.forget_topic(&key),
            }
        } else if let Some(p) = keys::parse_assignment(&key) {
            match ev.kind {
                WatchEventKind::Put(kv) => self.apply_assignment(p, Some(kv.value)),
                WatchEventKind::Delete(_) => self.apply_assignment(p, None),
            }
        } else if let Some(p) = keys::parse_owner(&key) {
            let mut v = self.view.write().unwrap();
            match ev.kind {
                WatchEventKind::Put(kv) => {
                    if let Ok(o) = OwnerRecord::decode(kv.value) {
                        v.owners.insert(p, o);
                    }
                }
                WatchEventKind::Delete(_) => {
                    v.owners.remove(&p);
                }
            }
        } else if key.starts_with(&keys::brokers_prefix()) {
            let mut v = self.view.write().unwrap();
            match ev.kind {
                WatchEventKind::Put(kv) => {
                    if let Ok(b) = BrokerRecord::decode(kv.value) {
                        v.brokers.insert(b.broker_id, b);
                    }
                }
                WatchEventKind::Delete(key) => {
                    if let Some(id) = keys::parse_broker(&key) {
                        v.brokers.remove(&id);
                    }
                }
            }
        }
    }

    /// A producer id no other producer of the cluster has, from blocks of
    /// 1000 claimed with a compare-and-swap on the metadata store.
    pub async fn next_producer_id(&self) -> Result<i64, MetaError> {
        const BLOCK: i64 = 1000;
        let mut ids = self.producer_ids.lock().await;
        while ids.0 >= ids.1 {
            let key = keys::producer_id_block();
            let current = self.meta.get(&key).await?;
            let (start, condition) = match &current {
                Some(kv) => (
                    ProducerIdBlockRecord::decode(kv.value.clone())
                        .map_err(|e| MetaError::Invalid(e.to_string()))?
                        .next,
                    Condition::ModRevision(key.clone(), kv.mod_revision),
                ),
                None => (0, Condition::Missing(key.clone())),
            };
            let next = ProducerIdBlockRecord {
                next: start + BLOCK,
            };
            let txn = Txn::new()
                .when(condition)
                .then(Op::put(key, next.encode_to_vec()));
            if self.meta.txn(txn).await?.committed() {
                *ids = (start, start + BLOCK);
            }
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// The context partitions start with (this session's lease).
    pub(crate) fn ctx(&self) -> PartitionContext {
        self.ctx.read().unwrap().clone()
    }

    /// After the lease expired: stop every partition of the old session
    /// without touching storage or metadata (they belong to others now),
    /// register again under a new lease as a new session, and take whatever
    /// the controller assigns to that session.
    async fn rejoin(self: &Arc<Self>) -> Result<(), MetaError> {
        self.metrics.lease_expirations.inc();
        self.wanted.write().unwrap().clear();
        let handles: Vec<PartitionHandle> = self
            .partitions
            .write()
            .unwrap()
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in &handles {
            h.abandon().await;
            self.metrics.partition_removed(h.state());
        }
        tracing::warn!(
            partitions = handles.len(),
            "stopped every partition of the expired session"
        );
        let mut delay = Duration::from_millis(200);
        let (guard, session) = loop {
            if self.shutdown.is_cancelled() {
                return Err(MetaError::Unavailable("shutting down".into()));
            }
            let attempt = tokio::select! {
                r = register(&*self.meta, &self.record, lease_ttl(&self.config)) => r,
                _ = self.shutdown.cancelled() => return Err(MetaError::Unavailable("shutting down".into())),
            };
            match attempt {
                Ok(r) => break r,
                Err(MetaError::Invalid(m)) => return Err(MetaError::Invalid(m)),
                Err(e) => {
                    tracing::warn!(error = %e, "registering again failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        // A new session writes a new WAL stream (the old one is fenced by
        // whoever recovers the partitions the old session lost).
        let wal = {
            let ctx = self.ctx();
            match ctx.wal {
                Some(_) => {
                    let mut delay = Duration::from_millis(100);
                    loop {
                        match open_wal(
                            &self.meta,
                            &ctx.pool,
                            &self.config,
                            session,
                            &ctx.clock,
                            &self.metrics,
                        )
                        .await
                        {
                            Ok(w) => break w,
                            Err(e) => {
                                tracing::warn!(error = %e, "opening a WAL stream for the new session failed; retrying");
                                tokio::time::sleep(delay).await;
                                delay = (delay * 2).min(Duration::from_secs(2));
                            }
                        }
                    }
                }
                None => None,
            }
        };
        {
            let mut ctx = self.ctx.write().unwrap();
            ctx.session = session;
            ctx.lease = guard;
            if wal.is_some() {
                ctx.wal = wal;
            }
        }
        // Assignments are per session: none of the old ones apply any more.
        let reloaded = match self.follower.get() {
            Some(f) => f.reload().await.map(|_| ()),
            None => Ok(()),
        };
        if let Err(e) = reloaded {
            tracing::warn!(error = %e, "reloading metadata after rejoining failed; the watch will catch up");
        }
        tracing::info!(session, "rejoined the cluster as a new session");
        Ok(())
    }

    /// Live broker `id`'s registration.
    pub fn broker(&self, id: i32) -> Option<BrokerRecord> {
        self.brokers().into_iter().find(|b| b.broker_id == id)
    }

    /// Live brokers, by id.
    pub fn brokers(&self) -> Vec<BrokerRecord> {
        self.view
            .read()
            .unwrap()
            .brokers
            .values()
            .cloned()
            .collect()
    }

    /// The broker writing `p` now and its epoch, if any broker does (and is
    /// alive).
    pub fn leader_of(&self, p: PartitionId) -> Option<(i32, Epoch)> {
        let v = self.view.read().unwrap();
        let o = v.owners.get(&p)?;
        v.brokers
            .contains_key(&o.broker_id)
            .then_some((o.broker_id, o.epoch))
    }

    /// A topic record as this broker sees it (its config resolved over the
    /// broker's defaults; an invalid one falls back to them).
    fn topic_info(&self, t: TopicRecord) -> Option<TopicInfo> {
        let id = Uuid::from_slice(&t.id).ok()?;
        let config = match self.topic_admin.resolve(&t.configs) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(topic = %t.name, error = %e, "topic has an invalid config; using defaults");
                self.topic_admin
                    .resolve(&BTreeMap::new())
                    .expect("defaults are valid")
            }
        };
        let mut config = config;
        if floe_common::topic::is_internal(&t.name) {
            // The coordinators' changelogs are compacted whatever their
            // record says (those made before compaction existed had no
            // cleanup.policy): one compaction in Floe, the compactor's.
            config.cleanup_policy = "compact".into();
            config.compact = true;
            config.delete = false;
        }
        Some(TopicInfo {
            id,
            name: t.name,
            partitions: t.partitions,
            overrides: t.configs,
            config,
        })
    }

    fn apply_topic(&self, value: Option<Bytes>) {
        let Some(value) = value else { return };
        let Ok(t) = TopicRecord::decode(value) else {
            tracing::error!("undecodable topic record");
            return;
        };
        let Some(info) = self.topic_info(t) else {
            return;
        };
        let (id, config) = (info.id, info.config.clone());
        {
            self.metrics.name_topic(id, &info.name);
            let mut c = self.catalog.write().unwrap();
            c.by_id.insert(id, info.name.clone());
            c.by_name.insert(info.name.clone(), info);
        }
        let handles: Vec<_> = self
            .partitions
            .read()
            .unwrap()
            .values()
            .filter(|h| h.id.topic_id == id)
            .cloned()
            .collect();
        for h in handles {
            let c = config.clone();
            tokio::spawn(async move { h.update_config(c).await });
        }
    }

    fn forget_topic(&self, key: &[u8]) {
        let Some(name) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix("/floe/topics/"))
        else {
            return;
        };
        let mut c = self.catalog.write().unwrap();
        if let Some(t) = c.by_name.remove(name) {
            c.by_id.remove(&t.id);
        }
    }

    /// Start, restart or stop a partition to match its assignment.
    fn apply_assignment(self: &Arc<Self>, p: PartitionId, value: Option<Bytes>) {
        let wanted = value
            .and_then(|v| AssignmentRecord::decode(v).ok())
            .filter(|a| {
                a.broker_id == self.config.node_id && a.broker_session == self.ctx().session
            })
            .map(|a| a.epoch);
        {
            let mut w = self.wanted.write().unwrap();
            match wanted {
                Some(e) => w.insert(p, e),
                None => w.remove(&p),
            };
        }
        self.kick(p);
    }

    /// Converge partition `p` to its wanted state in the background.
    fn kick(self: &Arc<Self>, p: PartitionId) {
        // One converging task per partition: a running one is told to look
        // again instead of a second one racing it.
        {
            let mut c = self.converging.lock().unwrap();
            if let Some(dirty) = c.get_mut(&p) {
                *dirty = true;
                return;
            }
            c.insert(p, false);
        }
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                node.clone().converge(p).await;
                let mut c = node.converging.lock().unwrap();
                match c.get_mut(&p) {
                    Some(dirty) if *dirty && !node.shutdown.is_cancelled() => *dirty = false,
                    _ => {
                        c.remove(&p);
                        return;
                    }
                }
            }
        });
    }

    /// A writer that stops on an error it cannot ride out (a metadata
    /// request refused, storage failing past its retries) leaves its
    /// partition `Failed` while the assignment still names this broker, so
    /// nothing else would ever start it again. After a pause (a persistent
    /// error must not spin) the broker takes the partition again under the
    /// next epoch: the assignment is rewritten for the same broker and
    /// session with `epoch + 1`, conditioned on it being unchanged (the
    /// controller's own moves bump it the same way, so a race just loses
    /// the condition), and the assignment watch restarts the partition;
    /// recovery under the new epoch fences what the failed writer left,
    /// exactly as after a kill.
    fn restart_when_failed(self: &Arc<Self>, p: PartitionId, handle: &PartitionHandle) {
        let mut state = handle.state_watch();
        let epoch = handle.epoch;
        let node = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match *state.borrow_and_update() {
                    PartitionState::Failed => break,
                    PartitionState::Released => return,
                    _ => {}
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(node) = node.upgrade() else { return };
            if node.shutdown.is_cancelled() {
                return;
            }
            match node.take_again(p, epoch).await {
                Ok(true) => {
                    tracing::warn!(partition = %p, failed_epoch = epoch, "a writer failed: took its partition again under the next epoch")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(partition = %p, epoch, error = %e, "could not take a failed partition again; the controller's next move will")
                }
            }
        });
    }

    /// Bump the assignment of `p` from `epoch` to `epoch + 1` for this
    /// broker and session; false when it no longer names us at `epoch`.
    async fn take_again(&self, p: PartitionId, epoch: Epoch) -> Result<bool, MetaError> {
        let key = keys::assignment(p);
        let Some(kv) = self.meta.get(&key).await? else {
            return Ok(false);
        };
        let a = AssignmentRecord::decode(kv.value.clone())
            .map_err(|e| MetaError::Corrupt(e.to_string()))?;
        if a.broker_id != self.config.node_id
            || a.broker_session != self.ctx().session
            || a.epoch != epoch
        {
            return Ok(false);
        }
        let next = AssignmentRecord {
            epoch: epoch + 1,
            ..a
        };
        let txn = Txn::new()
            .when(Condition::ModRevision(key.clone(), kv.mod_revision))
            .then(Op::put(key, next.encode_to_vec()));
        Ok(self.meta.txn(txn).await?.committed())
    }

    async fn converge(self: Arc<Self>, p: PartitionId) {
        let mut delay = Duration::from_millis(50);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let wanted = self.wanted.read().unwrap().get(&p).copied();
            let running = self.partitions.read().unwrap().get(&p).cloned();
            match (wanted, running) {
                (None, None) => return,
                (Some(e), Some(h))
                    if h.epoch == e
                        && !matches!(
                            h.state(),
                            PartitionState::Failed | PartitionState::Released
                        ) =>
                {
                    return
                }
                (_, Some(h)) => {
                    h.release().await;
                    let removed = {
                        let mut parts = self.partitions.write().unwrap();
                        let same = parts.get(&p).is_some_and(|x| x.epoch == h.epoch);
                        if same {
                            parts.remove(&p);
                        }
                        same
                    };
                    if removed {
                        self.metrics.partition_removed(h.state());
                    }
                }
                (Some(e), None) => {
                    let Some(config) = self.topic_by_id(p.topic_id).map(|t| t.config) else {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        continue;
                    };
                    match partition::start(self.ctx(), p, e, config).await {
                        Ok((handle, _)) => {
                            self.restart_when_failed(p, &handle);
                            self.partitions.write().unwrap().insert(p, handle);
                            continue;
                        }
                        Err(partition::StartError::NotAssigned(_)) => {
                            // A newer assignment is on its way through the watch.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(err) => {
                            tracing::warn!(partition = %p, epoch = e, error = %err, "could not start partition; retrying");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            }
        }
    }

    pub fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.catalog.read().unwrap().by_name.get(name).cloned()
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<TopicInfo> {
        let c = self.catalog.read().unwrap();
        c.by_id.get(&id).and_then(|n| c.by_name.get(n)).cloned()
    }

    pub fn topics(&self) -> Vec<TopicInfo> {
        let mut v: Vec<_> = self
            .catalog
            .read()
            .unwrap()
            .by_name
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Resolves once an operator decommissioned this broker (its drain
    /// record says so) and it writes no partition any more.
    pub async fn decommissioned(&self) {
        loop {
            let flagged = match self.meta.get(&keys::drained(self.config.node_id)).await {
                Ok(Some(kv)) => {
                    floe_meta::schema::DrainRecord::decode(kv.value).is_ok_and(|d| d.decommission)
                }
                _ => false,
            };
            if flagged && self.writing_partitions().is_empty() && self.readiness(false).1 == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The partitions this broker writes now.
    pub fn writing_partitions(&self) -> Vec<PartitionId> {
        self.partitions
            .read()
            .unwrap()
            .values()
            .filter(|h| h.state() == PartitionState::Writing)
            .map(|h| h.id)
            .collect()
    }

    /// Cancelled when the broker shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// This broker's registration, as it wrote it.
    pub fn registration(&self) -> &BrokerRecord {
        &self.record
    }

    /// The running partition, if this broker writes it now.
    pub fn partition(&self, p: PartitionId) -> Option<PartitionHandle> {
        self.partitions
            .read()
            .unwrap()
            .get(&p)
            .filter(|h| h.state() == PartitionState::Writing)
            .cloned()
    }

    /// Create a topic (the controller assigns its partitions); this
    /// broker's catalogue shows it at once.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<TopicInfo, TopicError> {
        let t = self
            .topic_admin
            .create(name, partitions, overrides, validate_only)
            .await?;
        if !validate_only {
            self.apply_topic(Some(Bytes::from(t.record.encode_to_vec())));
        }
        Ok(self
            .topic_info(t.record)
            .expect("a record just made has an id"))
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Uuid, TopicError> {
        let t = self.topic_admin.delete(name).await?;
        self.forget_topic(&keys::topic(name));
        Ok(t.id())
    }

    /// Change a topic's config overrides with `edit` (validated as a whole;
    /// written with a compare-and-swap); partitions pick it up through the
    /// watch. Returns the new overrides.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        edit: impl Fn(&mut BTreeMap<String, String>) -> Result<(), TopicError>,
        validate_only: bool,
    ) -> Result<BTreeMap<String, String>, TopicError> {
        let t = self
            .topic_admin
            .alter_configs(name, edit, validate_only)
            .await?;
        if !validate_only {
            self.apply_topic(Some(Bytes::from(t.record.encode_to_vec())));
        }
        Ok(t.record.configs)
    }

    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let t = self
            .topic_admin
            .create_partitions(name, count, validate_only)
            .await?;
        if !validate_only {
            self.apply_topic(Some(Bytes::from(t.record.encode_to_vec())));
        }
        Ok(())
    }

    /// Wait (up to `timeout`) until every partition of `topic` is being
    /// written by a live broker (this one or another).
    pub async fn wait_topic_ready(&self, topic: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.topic(topic) {
                if (0..t.partitions).all(|p| {
                    let id = PartitionId::new(t.id, p);
                    match self.leader_of(id) {
                        Some((b, _)) if b == self.config.node_id => self.partition(id).is_some(),
                        Some(_) => true,
                        None => false,
                    }
                }) {
                    return true;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Graceful shutdown: release every partition (seal, clean checkpoint).
    pub async fn release_all(&self) {
        self.shutdown.cancel();
        let handles: Vec<_> = self.partitions.read().unwrap().values().cloned().collect();
        futures::future::join_all(handles.iter().map(|h| h.release())).await;
        let _ = self.meta.revoke_lease(self.ctx().lease.lease).await;
        tracing::info!(partitions = handles.len(), "released all partitions");
    }

    /// (partitions writing here, partitions that should be): this broker is
    /// ready when they are equal. Standalone (`all_partitions`), that is
    /// every partition of every topic; in a cluster, those assigned here.
    pub fn readiness(&self, all_partitions: bool) -> (usize, usize) {
        let total: usize = if all_partitions {
            self.topics()
                .iter()
                .map(|t| t.partitions.max(0) as usize)
                .sum()
        } else {
            self.wanted
                .read()
                .unwrap()
                .keys()
                .filter(|p| self.topic_by_id(p.topic_id).is_some())
                .count()
        };
        let writing = self
            .partitions
            .read()
            .unwrap()
            .values()
            .filter(|h| {
                h.state() == PartitionState::Writing && self.topic_by_id(h.id.topic_id).is_some()
            })
            .count();
        (writing, total)
    }

    pub fn partition_handles(&self) -> Vec<PartitionHandle> {
        self.partitions.read().unwrap().values().cloned().collect()
    }
}

/// Keep this broker's lease alive; when it is found expired, rejoin as a
/// new session (the partitions' own checks have stopped acks long before).
async fn keep_alive(node: Arc<Node>) {
    let ttl = lease_ttl(&node.config);
    loop {
        let guard = node.ctx().lease;
        let expired = floe_meta::election::keep_lease_alive(
            &*node.meta,
            guard.lease,
            ttl,
            node.shutdown.cancelled(),
            |sent, granted| guard.renewed(sent, granted),
        )
        .await;
        if !expired {
            return;
        }
        tracing::error!("this broker's lease expired: its partitions belong to others now; rejoining as a new session");
        if let Err(e) = node.rejoin().await {
            if !node.shutdown.is_cancelled() {
                tracing::error!(error = %e, "could not rejoin the cluster; stopping");
                node.lease_lapsed.cancel();
            }
            return;
        }
    }
}

/// The broker session's shared WAL, when chunks go to shared WAL objects
/// (`chunk_layout`).
async fn open_wal(
    meta: &Arc<dyn MetadataStore>,
    pool: &Arc<StoragePool>,
    config: &BrokerConfig,
    session: i64,
    clock: &SharedClock,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<crate::wal::BrokerWal>>, MetaError> {
    if !config.shared_wal(pool.targets().iter().map(|t| t.url.as_str())) {
        return Ok(None);
    }
    let clock = clock.clone();
    let metrics = metrics.clone();
    let wal = crate::wal::BrokerWal::open(
        meta.clone(),
        pool.clone(),
        config.node_id,
        session,
        config.wal_config(),
        Arc::new(move || clock.now_ms()),
        Some(Arc::new(move |took, ok| {
            metrics.storage_op("wal_put", took, ok)
        })),
    )
    .await?;
    let stream = wal.stream().await;
    tracing::info!(
        stream,
        linger_ms = config.wal_linger_ms,
        "chunks go to shared WAL objects"
    );
    Ok(Some(Arc::new(wal)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_with_etcds_expiry_check_fits_in_lease_ttl_ms() {
        let ttl = |ms| {
            lease_ttl(&BrokerConfig {
                lease_ttl_ms: ms,
                ..Default::default()
            })
        };
        assert_eq!(ttl(10_000), Duration::from_secs(9));
        assert_eq!(ttl(6_000), Duration::from_secs(5));
        assert_eq!(ttl(6_499), Duration::from_secs(5));
        assert_eq!(ttl(6_500), Duration::from_secs(6));
        assert_eq!(ttl(3_000), Duration::from_secs(2));
        assert_eq!(ttl(500), Duration::from_secs(1));
        for ms in (1_500..60_000).step_by(250) {
            assert!(ttl(ms).as_millis() as u64 + 500 <= ms, "{ms}");
        }
    }
}
