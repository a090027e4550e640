//! The metadata store timed: a [`MetadataStore`] around another that
//! records each request's latency and failures by operation
//! (`floe_metadata_request_duration_seconds{op}`,
//! `floe_metadata_request_errors_total{op,error}`), for the controller,
//! brokers and proxies alike, and traces it as a `metadata.request` span
//! when it runs within a traced operation. A txn that does not commit is not an error
//! (its conditions failed, as asked); an `Indeterminate` answer is.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::Instrument;

use crate::store::{
    KeyValue, LeaseId, MetaError, MetadataStore, Revision, Txn, TxnOutcome, WatchStream,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetaOpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetaErrorLabel {
    pub op: &'static str,
    pub error: &'static str,
}

/// The series a [`Metered`] store feeds.
pub struct MetaMetrics {
    latency: Family<MetaOpLabel, Histogram>,
    errors: Family<MetaErrorLabel, prometheus_client::metrics::counter::Counter>,
}

impl Default for MetaMetrics {
    fn default() -> Self {
        Self {
            // 0.5 ms to ~8 s: a local etcd answers in a millisecond, one
            // in trouble in seconds.
            latency: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.0005, 2.0, 15,
                ))
            }),
            errors: Family::default(),
        }
    }
}

impl MetaMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metadata_request_duration_seconds",
            "Latency of metadata store (etcd) requests, by operation",
            self.latency.clone(),
        );
        registry.register(
            "metadata_request_errors",
            "Metadata store (etcd) requests that failed, by operation and error kind",
            self.errors.clone(),
        );
    }

    fn record<T>(&self, op: &'static str, took: Duration, r: &Result<T, MetaError>) {
        self.latency
            .get_or_create(&MetaOpLabel { op })
            .observe(took.as_secs_f64());
        if let Err(e) = r {
            let error = match e {
                MetaError::Unavailable(_) => "unavailable",
                MetaError::Indeterminate(_) => "indeterminate",
                MetaError::LeaseNotFound(_) => "lease_not_found",
                MetaError::Compacted { .. } => "compacted",
                MetaError::Invalid(_) => "invalid",
                MetaError::Corrupt(_) => "corrupt",
            };
            let c: Counter = self
                .errors
                .get_or_create(&MetaErrorLabel { op, error })
                .clone();
            c.inc();
        }
    }
}

/// `inner`, timed into `metrics`.
#[derive(Clone)]
pub struct Metered {
    inner: Arc<dyn MetadataStore>,
    metrics: Arc<MetaMetrics>,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Metered {
    pub fn new(inner: Arc<dyn MetadataStore>, metrics: Arc<MetaMetrics>) -> Self {
        Self { inner, metrics }
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        // A span only within a traced operation (a request, a recovery):
        // the background keep-alives and watches would be traces of
        // their own every second.
        let r = if tracing::Span::current().is_none() {
            $call.await
        } else {
            $call
                .instrument(tracing::debug_span!(
                    "metadata.request",
                    otel.name = concat!("metadata.", $op),
                    otel.kind = "client",
                    metadata.op = $op,
                ))
                .await
        };
        $self.metrics.record($op, started.elapsed(), &r);
        r
    }};
}

#[async_trait]
impl MetadataStore for Metered {
    async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, MetaError> {
        timed!(self, "get", self.inner.get(key))
    }

    async fn range(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision), MetaError> {
        timed!(self, "range", self.inner.range(prefix))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, MetaError> {
        timed!(self, "txn", self.inner.txn(txn))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, MetaError> {
        timed!(self, "grant_lease", self.inner.grant_lease(ttl))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, MetaError> {
        timed!(self, "keep_alive", self.inner.keep_alive(lease))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), MetaError> {
        timed!(self, "revoke_lease", self.inner.revoke_lease(lease))
    }

    async fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: Option<Revision>,
    ) -> Result<WatchStream, MetaError> {
        timed!(
            self,
            "watch",
            self.inner.watch_prefix(prefix, start_revision)
        )
    }

    async fn put(&self, key: &[u8], value: Bytes) -> Result<Revision, MetaError> {
        timed!(self, "put", self.inner.put(key, value))
    }

    async fn delete(&self, key: &[u8]) -> Result<Revision, MetaError> {
        timed!(self, "delete", self.inner.delete(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_timed_and_failures_counted_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn MetadataStore> = Arc::new(
            crate::embedded::EmbeddedStore::open(dir.path().join("m.redb"))
                .await
                .unwrap(),
        );
        let metrics = Arc::new(MetaMetrics::default());
        let m = Metered::new(inner, metrics.clone());
        m.put(b"/k", Bytes::from_static(b"v")).await.unwrap();
        assert_eq!(m.get(b"/k").await.unwrap().unwrap().value, "v");
        assert!(m.keep_alive(424242).await.is_err());
        let mut r = Registry::with_prefix("floe");
        metrics.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for want in [
            "floe_metadata_request_duration_seconds_count{op=\"put\"} 1",
            "floe_metadata_request_duration_seconds_count{op=\"get\"} 1",
            "floe_metadata_request_errors_total{op=\"keep_alive\",error=\"lease_not_found\"} 1",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }
}
