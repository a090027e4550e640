//! Request metrics of a Kafka listener, in Prometheus text format: per-API
//! request counts, errors and latency, record bytes in and out, the read
//! cache, connections. The broker adds its own metrics to the same
//! registry; a proxy names them `floe_proxy_...`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabel {
    pub api: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    pub mechanism: String,
    /// "ok" or "failed".
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub api: String,
    pub error: String,
}

pub struct RequestMetrics {
    pub registry: Registry,
    requests: Family<ApiLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    latency: Family<ApiLabel, Histogram>,
    bytes_in: Counter,
    bytes_out: Counter,
    pub connections: Gauge,
    pub connections_rejected: Counter,
    authentications: Family<AuthLabel, Counter>,
    cache_hits: Gauge<u64, AtomicU64>,
    cache_misses: Gauge<u64, AtomicU64>,
    cache_bytes: Gauge<u64, AtomicU64>,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestMetrics")
    }
}

/// Latency buckets: 50 µs .. ~26 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

impl RequestMetrics {
    /// Metrics named `{prefix}_...`.
    pub fn with_prefix(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::<ApiLabel, Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            connections: Gauge::default(),
            connections_rejected: Counter::default(),
            authentications: Family::default(),
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
            "sasl_authentications",
            "SASL authentications, by mechanism and result",
            m.authentications.clone(),
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

    /// Counts a request of `api` and its latency once the timer is dropped
    /// or finished (a timer outlives the request's handler: it goes with
    /// the answer).
    pub fn timer(&self, api: &'static str) -> RequestTimer {
        RequestTimer {
            api,
            started: tokio::time::Instant::now(),
            requests: self.requests.clone(),
            latency: self.latency.clone(),
        }
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

    /// A SASL authentication ended, with `ok` or not.
    pub fn authentication(&self, mechanism: &str, ok: bool) {
        self.authentications
            .get_or_create(&AuthLabel {
                mechanism: mechanism.to_string(),
                result: if ok { "ok" } else { "failed" }.to_string(),
            })
            .inc();
    }

    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
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

/// One request being timed (see [`RequestMetrics::timer`]).
pub struct RequestTimer {
    api: &'static str,
    started: tokio::time::Instant,
    requests: Family<ApiLabel, Counter>,
    latency: Family<ApiLabel, Histogram>,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        let l = ApiLabel {
            api: self.api.to_string(),
        };
        self.requests.get_or_create(&l).inc();
        self.latency
            .get_or_create(&l)
            .observe(self.started.elapsed().as_secs_f64());
    }
}
