//! Broker metrics in Prometheus text format: per-API request counts, errors
//! and latency, bytes in/out, storage operation latency, partition states,
//! segments sealed and deleted, cache hit ratio, connections.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use floe_common::PartitionId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::partition::PartitionState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub api: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

pub struct Metrics {
    pub registry: Registry,
    /// Bytes per partition since the last load report.
    pub load: crate::load::LoadMeter,
    requests: Family<ApiLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    latency: Family<ApiLabel, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    storage_latency: Family<OpLabel, Histogram>,
    storage_errors: Family<OpLabel, Counter>,
    partitions: Family<StateLabel, Gauge>,
    segments_sealed: Counter,
    /// Times this broker found its metadata lease expired and rejoined.
    pub lease_expirations: Counter,
    /// Retried idempotent batches answered with their original offsets.
    pub producer_duplicates: Counter,
    /// Segments sealed early because a chunk could not reach W.
    pub segment_switches: Counter,
    /// Segment replicas copied to restore R.
    pub replicas_repaired: Counter,
    pub gc_deleted: Counter,
    /// Bytes of those copies.
    pub repair_bytes: Counter,
    /// Time repair copies waited for `repair_max_bytes_per_sec`.
    pub repair_throttled_seconds: Counter<f64, AtomicU64>,
    segments_deleted: Counter,
    pub connections: Gauge,
    pub connections_rejected: Counter,
    /// Proxies following partitions of this broker (tail push streams).
    pub tail_followers: Gauge,
    /// Log updates pushed to following proxies.
    pub tail_updates: Counter,
    cache_hits: Gauge<u64, AtomicU64>,
    cache_misses: Gauge<u64, AtomicU64>,
    cache_bytes: Gauge<u64, AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_prefix("floe")
    }

    /// Metrics named `{prefix}_...` (a proxy's are `floe_proxy_...`).
    pub fn with_prefix(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<ApiLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let latency = Family::<ApiLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let storage_latency = Family::<OpLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let m = Self {
            registry: Registry::default(),
            load: Default::default(),
            requests,
            errors,
            latency,
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            storage_latency,
            storage_errors: Family::default(),
            partitions: Family::default(),
            segments_sealed: Counter::default(),
            lease_expirations: Counter::default(),
            producer_duplicates: Counter::default(),
            segment_switches: Counter::default(),
            replicas_repaired: Counter::default(),
            gc_deleted: Counter::default(),
            repair_bytes: Counter::default(),
            repair_throttled_seconds: Counter::default(),
            segments_deleted: Counter::default(),
            connections: Gauge::default(),
            connections_rejected: Counter::default(),
            tail_followers: Gauge::default(),
            tail_updates: Counter::default(),
            cache_hits: Gauge::default(),
            cache_misses: Gauge::default(),
            cache_bytes: Gauge::default(),
        };
        registry.register(
            "kafka_requests",
            "Kafka requests handled, by API",
            m.requests.clone(),
        );
        registry.register(
            "kafka_request_errors",
            "Kafka error codes returned, by API and error",
            m.errors.clone(),
        );
        registry.register(
            "kafka_request_duration_seconds",
            "Kafka request latency, by API",
            m.latency.clone(),
        );
        registry.register(
            "bytes_in",
            "Record bytes appended (committed)",
            m.bytes_in.clone(),
        );
        registry.register(
            "bytes_out",
            "Record bytes returned by fetches",
            m.bytes_out.clone(),
        );
        registry.register(
            "storage_op_duration_seconds",
            "Object store operation latency",
            m.storage_latency.clone(),
        );
        registry.register(
            "storage_op_errors",
            "Object store operation failures",
            m.storage_errors.clone(),
        );
        registry.register(
            "partitions",
            "Partitions of this broker, by state",
            m.partitions.clone(),
        );
        registry.register(
            "segment_switches",
            "Segments sealed early because a chunk could not reach its write quorum (the chunk went to a fresh replica set)",
            m.segment_switches.clone(),
        );
        registry.register(
            "replicas_repaired",
            "Segment replicas copied to a fresh target to restore the replication factor",
            m.replicas_repaired.clone(),
        );
        registry.register(
            "gc_deleted_objects",
            "Storage objects nothing referred to (left by failed deletes, repairs, recoveries) deleted by partition garbage collection",
            m.gc_deleted.clone(),
        );
        registry.register(
            "repair_bytes",
            "Bytes of segment replicas copied by repair (storage targets drained or down)",
            m.repair_bytes.clone(),
        );
        registry.register(
            "repair_throttled_seconds",
            "Time repair copies waited for repair_max_bytes_per_sec",
            m.repair_throttled_seconds.clone(),
        );
        registry.register(
            "producer_duplicates",
            "Retried idempotent batches answered with their original offsets (nothing appended)",
            m.producer_duplicates.clone(),
        );
        registry.register(
            "broker_lease_expirations",
            "Times the broker's metadata lease expired (it then rejoined as a new session)",
            m.lease_expirations.clone(),
        );
        registry.register(
            "segments_sealed",
            "Segments sealed",
            m.segments_sealed.clone(),
        );
        registry.register(
            "segments_deleted",
            "Segments deleted by retention",
            m.segments_deleted.clone(),
        );
        registry.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        registry.register(
            "connections_rejected",
            "Connections closed at accept (max.connections)",
            m.connections_rejected.clone(),
        );
        registry.register(
            "tail_followers",
            "Tail push streams open to proxies (one per proxy and partition)",
            m.tail_followers.clone(),
        );
        registry.register(
            "tail_updates",
            "Log updates (appends with payloads, snapshots) pushed to proxies",
            m.tail_updates.clone(),
        );
        registry.register("cache_hits", "Read cache hits", m.cache_hits.clone());
        registry.register("cache_misses", "Read cache misses", m.cache_misses.clone());
        registry.register(
            "cache_bytes",
            "Bytes held by the read cache",
            m.cache_bytes.clone(),
        );
        Self { registry, ..m }
    }

    pub fn request(&self, api: &str, took: Duration) {
        let l = ApiLabel {
            api: api.to_string(),
        };
        self.requests.get_or_create(&l).inc();
        self.latency.get_or_create(&l).observe(took.as_secs_f64());
    }

    pub fn error(&self, api: &str, error: &str) {
        self.errors
            .get_or_create(&ErrorLabel {
                api: api.to_string(),
                error: error.to_string(),
            })
            .inc();
    }

    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
    }

    pub fn storage_op(&self, op: &str, took: Duration, ok: bool) {
        let l = OpLabel { op: op.to_string() };
        self.storage_latency
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if !ok {
            self.storage_errors.get_or_create(&l).inc();
        }
    }

    /// A partition moved from `old` (None: new) to `new`.
    pub fn partition_state(
        &self,
        _id: PartitionId,
        old: Option<PartitionState>,
        new: PartitionState,
    ) {
        if let Some(old) = old {
            self.partitions
                .get_or_create(&StateLabel {
                    state: old.name().to_string(),
                })
                .dec();
        }
        self.partitions
            .get_or_create(&StateLabel {
                state: new.name().to_string(),
            })
            .inc();
    }

    /// A partition in state `last` is no longer run here.
    pub fn partition_removed(&self, last: PartitionState) {
        self.partitions
            .get_or_create(&StateLabel {
                state: last.name().to_string(),
            })
            .dec();
    }

    pub fn segment_sealed(&self) {
        self.segments_sealed.inc();
    }

    pub fn segment_deleted(&self) {
        self.segments_deleted.inc();
    }

    pub fn set_cache(&self, hits: u64, misses: u64, bytes: u64) {
        self.cache_hits.set(hits);
        self.cache_misses.set(misses);
        self.cache_bytes.set(bytes);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
