//! The controller's metrics (`/metrics` on its HTTP listener): whether it
//! leads, its reconcile passes (count, failures, duration), the partition
//! assignments it writes by kind (`assign`: a partition without a live
//! owner, i.e. new or failed over; `balance`: evening out after brokers
//! joined; `move`: asked through the admin API or an operation), moves
//! until the new owner writes, operations by kind and state, the repair
//! backlog, and its metadata store (etcd) requests. One set per process.

use std::sync::{Arc, LazyLock};

use floe_meta::metered::MetaMetrics;
use floe_meta::schema::OperationRecord;
use floe_meta::{keys, MetadataStore};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use prost::Message;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub kind: String,
    pub state: String,
}

pub struct ControllerMetrics {
    /// The metadata store's requests (wrap the store with
    /// `floe_meta::metered::Metered` over this).
    pub meta: Arc<MetaMetrics>,
    pub leader: Gauge,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    pub assignments: Family<KindLabel, Counter>,
    pub move_duration: Histogram,
    pub wal_gc_passes: Counter,
    pub wal_objects_deleted: Counter,
}

/// This process's controller metrics.
pub fn metrics() -> &'static ControllerMetrics {
    static M: LazyLock<ControllerMetrics> = LazyLock::new(|| ControllerMetrics {
        meta: Arc::default(),
        leader: Gauge::default(),
        reconciles: Counter::default(),
        reconcile_errors: Counter::default(),
        // 1 ms to ~16 s.
        reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        assignments: Family::default(),
        // 10 ms to ~80 s: a planned move takes well under a second.
        move_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
        wal_gc_passes: Counter::default(),
        wal_objects_deleted: Counter::default(),
    });
    &M
}

/// Every controller metric in Prometheus text, operations read from `meta`
/// now.
pub async fn encode(meta: &dyn MetadataStore) -> String {
    let m = metrics();
    let mut r = Registry::with_prefix("floe");
    r.register(
        "controller_leader",
        "1 while this controller leads the cluster, 0 while it stands by",
        m.leader.clone(),
    );
    r.register(
        "controller_reconciles",
        "Reconcile passes run by this controller while leading",
        m.reconciles.clone(),
    );
    r.register(
        "controller_reconcile_errors",
        "Reconcile passes that failed (retried)",
        m.reconcile_errors.clone(),
    );
    r.register(
        "controller_reconcile_duration_seconds",
        "Duration of reconcile passes",
        m.reconcile_duration.clone(),
    );
    r.register(
        "controller_assignments",
        "Partition assignments written, by kind: assign (new or failed over), balance, move",
        m.assignments.clone(),
    );
    r.register(
        "controller_move_duration_seconds",
        "Planned moves through the admin API, from the request to the new owner writing",
        m.move_duration.clone(),
    );
    r.register(
        "controller_wal_gc_passes",
        "Garbage collection passes over the shared WAL objects",
        m.wal_gc_passes.clone(),
    );
    r.register(
        "controller_wal_objects_deleted",
        "Shared WAL objects deleted once no partition needed them (every range consolidated or dropped by retention)",
        m.wal_objects_deleted.clone(),
    );
    let operations: Family<OperationLabel, Gauge> = Family::default();
    if let Ok((kvs, _)) = meta.range(&keys::operations_prefix()).await {
        for kv in kvs {
            if keys::parse_operation(&kv.key).is_none() {
                continue;
            }
            if let Ok(o) = OperationRecord::decode(kv.value) {
                operations
                    .get_or_create(&OperationLabel {
                        kind: o.kind,
                        state: o.state,
                    })
                    .inc();
            }
        }
    }
    r.register(
        "controller_operations",
        "Operations (rebalances, drains, decommissions) recorded, by kind and state",
        operations,
    );
    // The repair backlog as `floectl storage` counts it (targets probed
    // now); absent when the pool cannot be read.
    if let Ok(list) = crate::admin::storage::list(meta).await {
        let g: Gauge = Gauge::default();
        g.set(list.segments_to_repair as i64);
        r.register(
            "controller_segments_to_repair",
            "Sealed and open segments with a replica on a storage target that is down or draining (the repair backlog)",
            g,
        );
    }
    m.meta.register(&mut r);
    floe_storage::counted::register(&mut r);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}
