//! Proxy-only metrics, registered beside the shared request metrics: the
//! partitions followed, the push traffic, produce forwarding and holds, and
//! the read cache's hit ratio (every miss is one storage read).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Default)]
pub struct ProxyMetrics {
    pub followed: Gauge,
    pub snapshots: Counter,
    pub pushed_chunks: Counter,
    pub produce_forwarded: Counter,
    pub produce_held: Counter,
    pub produce_retries: Counter,
    pub produce_cut: Counter,
    pub produce_leader_told: Counter,
    pub produce_owner_moved: Counter,
    pub produce_behind_gap: Counter,
    pub group_forwarded: Counter,
    pub storage_reads: Gauge<u64, AtomicU64>,
    pub cache_hit_ratio: Gauge<f64, AtomicU64>,
    /// The metadata store's requests (the proxy's store is wrapped with
    /// `floe_meta::metered::Metered` over this).
    pub meta: std::sync::Arc<floe_meta::metered::MetaMetrics>,
}

impl ProxyMetrics {
    pub fn register(&self, r: &mut Registry) {
        self.meta.register(r);
        r.register(
            "followed_partitions",
            "Partitions this proxy follows (tail push streams to owners)",
            self.followed.clone(),
        );
        r.register(
            "snapshots",
            "Log snapshots received from owning brokers",
            self.snapshots.clone(),
        );
        r.register(
            "pushed_chunks",
            "Committed chunks pushed by owning brokers",
            self.pushed_chunks.clone(),
        );
        r.register(
            "produce_forwarded",
            "Partition produce requests forwarded to owning brokers (first attempts)",
            self.produce_forwarded.clone(),
        );
        r.register(
            "produce_held",
            "Partition produce requests held while their partition was between owners",
            self.produce_held.clone(),
        );
        r.register(
            "produce_retries",
            "Partition produce requests sent again to a partition's next owner",
            self.produce_retries.clone(),
        );
        r.register(
            "produce_cut",
            "Partition produce answers given early (a retriable error) because the rest of the request or connection was waiting on them",
            self.produce_cut.clone(),
        );
        r.register(
            "produce_leader_told",
            "Produce answers that told the client a partition's new owner node (KIP-951 current leader) because its owner changed since the client sent it on that connection",
            self.produce_leader_told.clone(),
        );
        r.register(
            "produce_behind_gap",
            "OUT_OF_ORDER_SEQUENCE_NUMBER answers (an idempotent batch ahead of an earlier one of its producer still on its way) given to the client as NOT_LEADER_OR_FOLLOWER, so it sends its batches again in order instead of bumping its epoch",
            self.produce_behind_gap.clone(),
        );
        r.register(
            "produce_owner_moved",
            "Partition produce attempts given up on because the partition got a new owner while its old owner did not answer",
            self.produce_owner_moved.clone(),
        );
        r.register(
            "group_forwarded",
            "Group, producer-id and admin requests forwarded to brokers",
            self.group_forwarded.clone(),
        );
        r.register(
            "storage_reads",
            "Reads from the storage pool for fetches (read cache misses)",
            self.storage_reads.clone(),
        );
        r.register(
            "cache_hit_ratio",
            "Share of fetch reads served from the proxy's cache",
            self.cache_hit_ratio.clone(),
        );
    }
}
