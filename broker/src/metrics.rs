//! Broker metrics in Prometheus text format: the listener's request metrics
//! (`floe_kafka::RequestMetrics`: per-API counts, errors and latency, bytes,
//! cache, connections) and the broker's own: storage operation latency,
//! partition states, segments sealed and deleted, repair, tail push.
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use floe_common::PartitionId;
use floe_kafka::metrics::latency_histogram;
use floe_kafka::RequestMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::partition::PartitionState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

/// One partition: its topic's id and its number.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic_id: String,
    pub partition: i32,
}

impl PartitionLabel {
    pub fn of(p: PartitionId) -> Self {
        Self {
            topic_id: p.topic_id.simple().to_string(),
            partition: p.partition,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

pub struct Metrics {
    /// The listener's metrics, whose registry holds the broker's too.
    pub edge: RequestMetrics,
    /// Bytes per partition since the last load report.
    pub load: crate::load::LoadMeter,
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
    /// Proxies following partitions of this broker (tail push streams).
    pub tail_followers: Gauge,
    /// Log updates pushed to following proxies.
    pub tail_updates: Counter,
    /// Transactions ended (markers durable everywhere), by outcome.
    txn_ended: Family<OutcomeLabel, Counter>,
    /// From the end's decision to its markers being durable.
    txn_completion: Histogram,
    /// Transactions aborted by the coordinator's timeout.
    pub txn_timed_out: Counter,
    compaction_bytes: Counter,
    compaction_kept: Counter,
    compaction_dropped: Counter,
    /// Wall time of compaction passes that rewrote segments.
    pub compaction_seconds: Counter<f64, AtomicU64>,
    /// Consumer lag of the groups this broker coordinates (`lag.rs`).
    pub lag: crate::lag::Lag,
    /// Bytes and records appended per partition this broker writes
    /// (series go when the partition leaves).
    partition_bytes_in: Family<crate::lag::TopicPartitionLabel, Counter>,
    partition_records_in: Family<crate::lag::TopicPartitionLabel, Counter>,
    /// Topic names by id, for partition labels (the node's catalogue).
    topic_names: std::sync::RwLock<std::collections::HashMap<floe_common::Uuid, String>>,
    /// The metadata store's requests (the store is wrapped with
    /// `floe_meta::metered::Metered` over this).
    pub meta: std::sync::Arc<floe_meta::metered::MetaMetrics>,
    /// Time compaction reads waited for `compaction_max_bytes_per_sec`.
    pub compaction_throttled_seconds: Counter<f64, AtomicU64>,
    /// Per compacted partition this broker writes: bytes never compacted
    /// over all sealed bytes, and the age of the oldest such record.
    compaction_dirty_ratio: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    compaction_lag: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl std::ops::Deref for Metrics {
    type Target = RequestMetrics;
    fn deref(&self) -> &RequestMetrics {
        &self.edge
    }
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

    /// Metrics named `{prefix}_...`.
    pub fn with_prefix(prefix: &str) -> Self {
        let storage_latency = Family::<OpLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let mut m = Self {
            edge: RequestMetrics::with_prefix(prefix),
            load: Default::default(),
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
            tail_followers: Gauge::default(),
            tail_updates: Counter::default(),
            txn_ended: Family::default(),
            txn_completion: latency_histogram(),
            txn_timed_out: Counter::default(),
            compaction_bytes: Counter::default(),
            compaction_kept: Counter::default(),
            compaction_dropped: Counter::default(),
            compaction_seconds: Counter::default(),
            compaction_dirty_ratio: Family::default(),
            compaction_lag: Family::default(),
            compaction_throttled_seconds: Counter::default(),
            lag: Default::default(),
            meta: Default::default(),
            partition_bytes_in: Family::default(),
            partition_records_in: Family::default(),
            topic_names: Default::default(),
        };
        m.edge.registry.register(
            "partition_bytes_in",
            "Bytes appended per partition this broker writes (Kafka's BytesInPerSec per topic and partition)",
            m.partition_bytes_in.clone(),
        );
        m.edge.registry.register(
            "partition_records_in",
            "Records (offsets) appended per partition this broker writes",
            m.partition_records_in.clone(),
        );
        m.lag.register(&mut m.edge.registry);
        m.meta.register(&mut m.edge.registry);
        floe_storage::counted::register(&mut m.edge.registry);
        m.edge.registry.register(
            "compaction_throttled_seconds",
            "Time compaction reads waited for compaction_max_bytes_per_sec",
            m.compaction_throttled_seconds.clone(),
        );
        m.edge.registry.register(
            "compaction_dirty_ratio",
            "Per compacted partition: bytes of sealed segments never compacted over all sealed bytes (compared with min.cleanable.dirty.ratio)",
            m.compaction_dirty_ratio.clone(),
        );
        m.edge.registry.register(
            "compaction_lag_seconds",
            "Per compacted partition: age of the oldest sealed record never compacted (0: none; compared with max.compaction.lag.ms)",
            m.compaction_lag.clone(),
        );
        m.edge.registry.register(
            "compaction_seconds",
            "Wall time of compaction passes that rewrote segments",
            m.compaction_seconds.clone(),
        );
        m.edge.registry.register(
            "compaction_input_bytes",
            "Bytes of sealed segments read and rewritten by compaction",
            m.compaction_bytes.clone(),
        );
        m.edge.registry.register(
            "compaction_kept_records",
            "Records compaction kept (each key's latest, tombstones within delete.retention.ms)",
            m.compaction_kept.clone(),
        );
        m.edge.registry.register(
            "compaction_dropped_records",
            "Records compaction removed (superseded, expired tombstones, aborted, keyless)",
            m.compaction_dropped.clone(),
        );
        m.edge.registry.register(
            "transactions_ended",
            "Transactions this broker coordinated to their end (every marker durable), by outcome",
            m.txn_ended.clone(),
        );
        m.edge.registry.register(
            "transaction_markers_duration_seconds",
            "Time from a transaction's decided end to its markers being durable on every partition",
            m.txn_completion.clone(),
        );
        m.edge.registry.register(
            "transactions_timed_out",
            "Open transactions aborted by the coordinator after transaction.timeout.ms",
            m.txn_timed_out.clone(),
        );
        m.edge.registry.register(
            "storage_op_duration_seconds",
            "Object store operation latency",
            m.storage_latency.clone(),
        );
        m.edge.registry.register(
            "storage_op_errors",
            "Object store operation failures",
            m.storage_errors.clone(),
        );
        m.edge.registry.register(
            "partitions",
            "Partitions of this broker, by state",
            m.partitions.clone(),
        );
        m.edge.registry.register(
            "segment_switches",
            "Segments sealed early because a chunk could not reach its write quorum (the chunk went to a fresh replica set)",
            m.segment_switches.clone(),
        );
        m.edge.registry.register(
            "replicas_repaired",
            "Segment replicas copied to a fresh target to restore the replication factor",
            m.replicas_repaired.clone(),
        );
        m.edge.registry.register(
            "gc_deleted_objects",
            "Storage objects nothing referred to (left by failed deletes, repairs, recoveries) deleted by partition garbage collection",
            m.gc_deleted.clone(),
        );
        m.edge.registry.register(
            "repair_bytes",
            "Bytes of segment replicas copied by repair (storage targets drained or down)",
            m.repair_bytes.clone(),
        );
        m.edge.registry.register(
            "repair_throttled_seconds",
            "Time repair copies waited for repair_max_bytes_per_sec",
            m.repair_throttled_seconds.clone(),
        );
        m.edge.registry.register(
            "producer_duplicates",
            "Retried idempotent batches answered with their original offsets (nothing appended)",
            m.producer_duplicates.clone(),
        );
        m.edge.registry.register(
            "broker_lease_expirations",
            "Times the broker's metadata lease expired (it then rejoined as a new session)",
            m.lease_expirations.clone(),
        );
        m.edge.registry.register(
            "segments_sealed",
            "Segments sealed",
            m.segments_sealed.clone(),
        );
        m.edge.registry.register(
            "segments_deleted",
            "Segments deleted by retention",
            m.segments_deleted.clone(),
        );
        m.edge.registry.register(
            "tail_followers",
            "Tail push streams open to proxies (one per proxy and partition)",
            m.tail_followers.clone(),
        );
        m.edge.registry.register(
            "tail_updates",
            "Log updates (appends with payloads, snapshots) pushed to proxies",
            m.tail_updates.clone(),
        );
        m
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

    /// A transaction's markers are durable; `took` since its end was
    /// decided.
    pub fn txn_completed(&self, commit: bool, took: Duration) {
        let outcome = if commit { "commit" } else { "abort" };
        self.txn_ended
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        self.txn_completion.observe(took.as_secs_f64());
    }

    /// Topic `id` is called `name` (labels of partition series).
    pub fn name_topic(&self, id: floe_common::Uuid, name: &str) {
        self.topic_names
            .write()
            .unwrap()
            .insert(id, name.to_string());
    }

    fn partition_label(&self, p: PartitionId) -> crate::lag::TopicPartitionLabel {
        let topic = self
            .topic_names
            .read()
            .unwrap()
            .get(&p.topic_id)
            .cloned()
            .unwrap_or_else(|| p.topic_id.simple().to_string());
        crate::lag::TopicPartitionLabel {
            topic,
            partition: p.partition,
        }
    }

    /// A chunk of `bytes` holding `records` offsets made durable in `p`.
    pub fn partition_in(&self, p: PartitionId, bytes: u64, records: u64) {
        let l = self.partition_label(p);
        self.partition_bytes_in.get_or_create(&l).inc_by(bytes);
        self.partition_records_in.get_or_create(&l).inc_by(records);
    }

    /// `p` is no longer written here.
    pub fn partition_gone(&self, p: PartitionId) {
        let l = self.partition_label(p);
        self.partition_bytes_in.remove(&l);
        self.partition_records_in.remove(&l);
    }

    /// A segment of `input_bytes` compacted.
    pub fn compacted(&self, input_bytes: u64, kept: u64, dropped: u64) {
        self.compaction_bytes.inc_by(input_bytes);
        self.compaction_kept.inc_by(kept);
        self.compaction_dropped.inc_by(dropped);
    }

    /// A compacted partition's dirt as its last pass found it; None: the
    /// partition left this broker (its series go).
    pub(crate) fn compaction_dirt(
        &self,
        p: PartitionId,
        dirt: Option<crate::partition::compactor::Dirt>,
    ) {
        let l = PartitionLabel::of(p);
        match dirt {
            Some(d) => {
                self.compaction_dirty_ratio.get_or_create(&l).set(d.ratio);
                self.compaction_lag
                    .get_or_create(&l)
                    .set(d.lag_ms as f64 / 1000.0);
            }
            None => {
                self.compaction_dirty_ratio.remove(&l);
                self.compaction_lag.remove(&l);
            }
        }
    }

    pub fn segment_sealed(&self) {
        self.segments_sealed.inc();
    }

    pub fn segment_deleted(&self) {
        self.segments_deleted.inc();
    }
}
