//! The client-facing proxy tier: proxies register in the metadata store and
//! are the only "brokers" clients see. Produce is forwarded to partition
//! owners (held across moves), reads are served from the proxy's cache and
//! the storage pool with the tail pushed by owners, group and admin requests
//! go to the broker that must answer them.

pub mod cluster;
pub mod fetch;
pub mod metrics;
pub mod produce;
pub mod service;
pub mod tail;
pub mod upstream;
pub mod view;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use floe_kafka::RequestMetrics as Metrics;
use floe_meta::schema::{ProxyRecord, FORMAT};
use floe_meta::{keys, Condition, MetaError, MetadataStore, Op, Txn, TxnOutcome};
use floe_storage::{BlockCache, StoragePool};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::ProxyMetrics;
use crate::tail::Tails;
use crate::view::View;

/// Settings of one proxy process (`[proxy]` in the config file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The id clients see as this proxy's node id (default: derived from
    /// the advertised address, stable across restarts).
    pub proxy_id: Option<i32>,
    /// Security of the `--listen` listener (named after it).
    pub protocol: floe_kafka::listener::SecurityProtocol,
    /// TLS of the SSL and SASL_SSL listeners without settings of their own.
    pub tls: Option<floe_kafka::tls::TlsSettings>,
    /// SASL mechanisms of the `--listen` listener when it is SASL_*
    /// (default: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    pub sasl_mechanisms: Option<Vec<String>>,
    /// Session lifetime of SASL logins on it (connections.max.reauth.ms).
    pub reauth_ms: Option<u64>,
    /// More Kafka listeners (Kafka's `listeners` with
    /// `listener.security.protocol.map`).
    pub listeners: Vec<floe_kafka::listener::ListenerConfig>,
    pub max_request_bytes: usize,
    pub max_connections: usize,
    pub max_inflight_per_connection: usize,
    /// Bytes of the read cache (pushed chunks, segment blocks).
    pub cache_bytes: u64,
    /// A forwarded group or admin request whose broker cannot be reached
    /// (or whose coordinator is moving) is retried this long.
    pub forward_timeout_ms: u64,
    /// TTL of the proxy's registration: a dead proxy leaves the metadata
    /// answers this long after it stopped.
    pub lease_ttl_ms: u64,
    /// A produce request whose answer waits on some partitions while other
    /// answers are ready (or while the same connection has requests queued
    /// behind it) is answered this long after it arrived if those wait on a
    /// broker in trouble (frozen for twice this, or unreachable): they get
    /// a retriable NOT_LEADER_OR_FOLLOWER (REQUEST_TIMED_OUT for a
    /// non-idempotent batch already sent), so one broker's failure never
    /// stalls the acks of partitions other brokers own. 0: never.
    pub produce_hold_ms: u64,
    /// Lead each partition in Metadata by an owner node of its proxy (one
    /// node id per proxy and broker, at the proxy's address) rather than by
    /// the proxy itself, so clients keep one owner's partitions on one
    /// connection: a frozen broker then holds up only the answers of its
    /// own partitions, which the proxy holds until their next owner writes
    /// them (no client retry). Off: every partition is led by a proxy node.
    pub owner_nodes: bool,
    /// The cluster's identity for connections to brokers (`[internal_tls]`
    /// of the config file, not of `[proxy]`).
    #[serde(skip)]
    pub internal_tls: Option<Arc<floe_kafka::tls::InternalTls>>,
    /// How connections to brokers are opened when not over TCP (the
    /// deterministic simulation's network); never set by a config file.
    #[serde(skip)]
    pub dialer: Option<upstream::Dialer>,
    /// Export the process's storage request counts as
    /// `floe_proxy_storage_requests_total` (off in a standalone, whose
    /// broker exports the same counts).
    #[serde(skip)]
    pub storage_request_metrics: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            proxy_id: None,
            protocol: Default::default(),
            tls: None,
            sasl_mechanisms: None,
            reauth_ms: None,
            listeners: Vec::new(),
            max_request_bytes: 100 << 20,
            max_connections: 10_000,
            max_inflight_per_connection: 32,
            cache_bytes: 512 << 20,
            forward_timeout_ms: 30_000,
            lease_ttl_ms: 5_000,
            produce_hold_ms: 250,
            owner_nodes: true,
            internal_tls: None,
            dialer: None,
            storage_request_metrics: true,
        }
    }
}

pub struct Proxy {
    pub config: ProxyConfig,
    pub cluster_id: String,
    pub record: ProxyRecord,
    pub view: Arc<View>,
    pub tails: Arc<Tails>,
    /// Shared request metrics (per-API counts and latency, connections).
    pub requests: Arc<Metrics>,
    pub metrics: Arc<ProxyMetrics>,
    lanes: produce::Lanes,
    produce_pool: upstream::Pool,
    /// How each broker's produce connection is doing (the hold cuts only
    /// parts waiting on a broker in trouble).
    broker_health: Arc<produce::BrokerHealth>,
    admin_pool: upstream::Pool,
    round_robin: AtomicUsize,
    lease: floe_meta::LeaseId,
    meta: Arc<dyn MetadataStore>,
    /// Creates the topics clients name before they exist.
    topic_admin: floe_meta::topics::TopicAdmin,
    pub shutdown: CancellationToken,
}

/// A node id from an address: stable for a proxy that restarts at the
/// same address, in a range apart from broker ids.
pub fn derived_id(host: &str, port: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in format!("{host}:{port}").bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    1_000_000 + (h % 1_000_000_000) as i32
}

impl Proxy {
    /// Register (under a lease kept alive until `shutdown`) and start
    /// following the cluster.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: ProxyConfig,
        cluster_id: String,
        endpoints: Vec<floe_meta::schema::Endpoint>,
        meta: Arc<dyn MetadataStore>,
        pool: Arc<StoragePool>,
        now_ms: i64,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, MetaError> {
        let cache = BlockCache::new(config.cache_bytes);
        Self::start_with_cache(
            config, cluster_id, endpoints, meta, pool, now_ms, cache, shutdown,
        )
        .await
    }

    /// [`Proxy::start`] reading through `cache` (`config.cache_bytes` is not
    /// used): `floe standalone` gives its proxy the broker's cache, whose
    /// keys (storage paths) are the same, so each byte is cached once.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with_cache(
        config: ProxyConfig,
        cluster_id: String,
        endpoints: Vec<floe_meta::schema::Endpoint>,
        meta: Arc<dyn MetadataStore>,
        pool: Arc<StoragePool>,
        now_ms: i64,
        cache: BlockCache,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, MetaError> {
        let metrics = Arc::new(ProxyMetrics::default());
        let meta: Arc<dyn MetadataStore> =
            Arc::new(floe_meta::metered::Metered::new(meta, metrics.meta.clone()));
        let Some(first) = endpoints.first() else {
            return Err(MetaError::Invalid("a proxy needs a Kafka listener".into()));
        };
        let (host, port) = (first.host.clone(), first.port);
        let id = config.proxy_id.unwrap_or_else(|| derived_id(&host, port));
        let record = ProxyRecord {
            format: FORMAT,
            proxy_id: id,
            host,
            port,
            started_ms: now_ms,
            listeners: endpoints,
        };
        let ttl = Duration::from_millis(config.lease_ttl_ms.max(1_000));
        let lease = meta.grant_lease(ttl).await?;
        // A registration of the same id at another address is another live
        // proxy; at this address it is this proxy's previous life.
        let existing = meta.get(&keys::proxy(id)).await?;
        let condition = match existing {
            Some(kv) => {
                let other = ProxyRecord::decode(kv.value.clone())
                    .map_err(|e| MetaError::Invalid(e.to_string()))?;
                if (other.host.as_str(), other.port) != (record.host.as_str(), record.port) {
                    let _ = meta.revoke_lease(lease).await;
                    return Err(MetaError::Invalid(format!(
                        "proxy id {id} is registered by a live proxy at {}:{}; set proxy_id",
                        other.host, other.port
                    )));
                }
                Condition::ModRevision(keys::proxy(id), kv.mod_revision)
            }
            None => Condition::Missing(keys::proxy(id)),
        };
        let txn = Txn::new().when(condition).then(Op::put_with_lease(
            keys::proxy(id),
            record.encode_to_vec(),
            lease,
        ));
        if !matches!(meta.txn(txn).await?, TxnOutcome::Committed { .. }) {
            let _ = meta.revoke_lease(lease).await;
            return Err(MetaError::Invalid(format!(
                "proxy id {id} was registered concurrently"
            )));
        }
        let view = View::follow(meta.clone(), shutdown.child_token()).await?;
        let mut requests = Metrics::with_prefix("floe_proxy");
        metrics.register(&mut requests.registry);
        if config.storage_request_metrics {
            floe_storage::counted::register(&mut requests.registry);
        }
        let tails = Tails::new(
            view.clone(),
            pool,
            config.internal_tls.clone(),
            config.dialer.clone(),
            cache,
            metrics.clone(),
            shutdown.child_token(),
        );
        let proxy = Arc::new(Self {
            config: config.clone(),
            cluster_id,
            record,
            view,
            tails,
            requests: Arc::new(requests),
            metrics,
            lanes: Default::default(),
            produce_pool: upstream::Pool::new(config.internal_tls.clone(), config.dialer.clone()),
            broker_health: Default::default(),
            admin_pool: upstream::Pool::new(config.internal_tls.clone(), config.dialer.clone()),
            round_robin: AtomicUsize::new(0),
            lease,
            meta: meta.clone(),
            topic_admin: floe_meta::topics::TopicAdmin::new(
                meta.clone(),
                Default::default(),
                Arc::new(floe_common::SystemClock),
            ),
            shutdown: shutdown.clone(),
        });
        let keep = proxy.clone();
        tokio::spawn(async move {
            let expired = floe_meta::election::keep_lease_alive(
                &*keep.meta,
                keep.lease,
                ttl,
                keep.shutdown.cancelled(),
                |_, _| {},
            )
            .await;
            if expired {
                tracing::error!("the proxy's registration lease expired; stopping");
                keep.shutdown.cancel();
            }
        });
        tracing::info!(id, "proxy registered");
        Ok(proxy)
    }

    /// Metrics text, with the cache figures of now.
    pub fn encode_metrics(&self) -> String {
        let (hits, misses) = self.tails.cache.stats();
        self.requests
            .set_cache(hits, misses, self.tails.cache.weighted_bytes());
        self.metrics.storage_reads.set(misses);
        let total = hits + misses;
        self.metrics.cache_hit_ratio.set(if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        });
        self.requests.encode()
    }

    /// Leave the cluster: registration removed at once.
    pub async fn stop(&self) {
        let _ = self.meta.revoke_lease(self.lease).await;
        self.shutdown.cancel();
    }
}
