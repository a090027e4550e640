//! Broker settings: Kafka's names, Kafka's defaults where they apply (topic
//! configs live with the topic catalogue, `floe_meta::topics`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use floe_meta::topics::{ConfigError, TimestampType, TopicConfig, TOPIC_CONFIGS};

/// Settings of one broker process. Every field has a default, so
/// `floe standalone` needs no file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: i32,
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
    /// Largest request frame accepted (Kafka's socket.request.max.bytes).
    pub max_request_bytes: usize,
    /// Connections beyond this are closed at accept (max.connections).
    pub max_connections: usize,
    /// Requests of one connection processed concurrently (responses stay in order).
    pub max_inflight_per_connection: usize,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// A chunk is flushed once it holds this many bytes...
    pub chunk_bytes: usize,
    /// ...or once its first batch waited this long...
    pub chunk_linger_ms: u64,
    /// ...or at once when no other chunk of the partition is being written
    /// (group commit: low latency when idle, batching under load). Turn off
    /// on a pay-per-request object store to batch by `chunk_linger_ms` only.
    pub flush_when_idle: bool,
    /// Chunk flushes of one partition in flight at once.
    pub max_inflight_flushes: usize,
    /// A chunk write that has not reached its write quorum after this long
    /// fails over to a new segment on other targets.
    pub chunk_put_timeout_ms: u64,
    /// How often each storage target is probed (down after two failures).
    pub storage_probe_interval_ms: u64,
    /// How often a partition checks that its sealed segments still have
    /// every replica (and repairs them).
    pub repair_interval_ms: u64,
    /// Bytes per second this broker copies when repairing segment replicas
    /// (a storage target drained or down), over all its partitions; 0: no
    /// limit.
    pub repair_max_bytes_per_sec: u64,
    /// Bytes per second this broker's compaction passes read, over all its
    /// compacted partitions (log.cleaner.io.max.bytes.per.second); 0: no
    /// limit.
    pub compaction_max_bytes_per_sec: u64,
    /// Memory one compaction pass may spend on its map of keys to latest
    /// offsets (log.cleaner.dedupe.buffer.size): about 40 bytes a key; a
    /// log with more keys is compacted a stretch of segments per pass.
    pub compaction_buffer_bytes: u64,
    /// How often a partition's owner sweeps the partition's storage for
    /// objects nothing refers to (left by failed deletes, repairs,
    /// recoveries); 0: never.
    pub gc_interval_ms: u64,
    /// Roll the open segment after this many chunks (0: by size and age
    /// only; never a WAL segment, whose list is paged and whose recovery
    /// reads no header): bounds what a recovery after an unclean end reads (one header
    /// per chunk), which is most of a take-over after a broker dies: under
    /// the chaos test's load (small chunks, 2 cores shared by the whole
    /// cluster) 540 chunks took 0.8-1.4 s to recover. Also keeps partitions
    /// with little traffic from gathering tiny chunks for days.
    pub segment_max_chunks: u64,
    /// Objects younger than this are never collected (writes in flight,
    /// uploads whose record is not saved yet). Failed deletes schedule a
    /// sweep this long after them.
    pub gc_min_age_ms: u64,
    /// Where chunks go (issue 24): `wal` gathers the chunks of every
    /// partition the broker writes into one shared WAL object per flush
    /// (PUTs per second independent of the partition count: for object
    /// stores); `partition` writes one object per chunk on the segment's
    /// replicas (for local disks); `auto` (the default) picks `wal` when
    /// any storage target is an object store (s3://, gs://, az://).
    pub chunk_layout: ChunkLayout,
    /// How long the first chunk of a WAL object waits for company; under
    /// steady load the broker's objects are cut one per this interval.
    pub wal_linger_ms: u64,
    /// A WAL object is flushed once its chunks reach this many bytes.
    pub wal_bytes: u64,
    /// WAL objects being written at once by the broker.
    pub wal_max_in_flight: u64,
    /// Chunks one partition may have handed to the WAL and not yet
    /// durable (the shared layout's max_inflight_flushes).
    pub wal_inflight_chunks: usize,
    /// The open segment of a partition on the shared WAL is sealed (its
    /// chunks consolidated into a segment object of its own) once it is
    /// this old, whatever segment.ms says, so that slow partitions do not
    /// keep WAL objects alive.
    pub wal_max_age_ms: u64,
    /// Segments a broker consolidates (seals) at once; the rest wait
    /// their turn.
    pub seal_concurrency: usize,
    /// Chunk records per page of a WAL segment's list in the metadata
    /// store (about 80 bytes each): a checkpoint holds fewer than this,
    /// the rest lies in pages written once each.
    pub wal_chunk_page: usize,
    /// An idle partition on the shared WAL re-saves its checkpoint this
    /// often, so that the position it names in the broker's WAL moves on
    /// and older WAL objects can be collected.
    pub wal_idle_checkpoint_ms: u64,
    /// How often the broker publishes its measured load (bytes in and out
    /// per partition) for the controller's rebalance planner.
    pub load_report_interval_ms: u64,
    /// A read that has not answered after this long also asks the next
    /// replica (hedged reads); the first answer wins.
    pub read_hedge_ms: u64,
    /// Bytes of the shared read cache.
    pub cache_bytes: u64,
    /// How often a partition checks retention and segment.ms.
    pub retention_check_interval_ms: u64,
    /// How often an unchanged partition's checkpoint is re-saved.
    pub checkpoint_interval_ms: u64,
    /// TTL of the broker's metadata lease: a broker silent this long loses
    /// its partitions (and stops acking a third of it earlier).
    pub lease_ttl_ms: u64,
    /// Default configs of new topics (Kafka names: retention.ms, ...).
    pub topic_defaults: BTreeMap<String, String>,
    /// Partitions of the internal `__consumer_offsets` topic, made when the
    /// first group looks for its coordinator (offsets.topic.num.partitions).
    /// A group's coordinator is the owner of one of them; do not change it
    /// once groups exist.
    pub offsets_topic_partitions: i32,
    /// Partitions of the internal `__transaction_state` topic, made when
    /// the first transactional id looks for its coordinator
    /// (transaction.state.log.num.partitions; fixed once transactions
    /// exist).
    pub transaction_topic_partitions: i32,
    /// The longest transaction timeout a producer may ask for
    /// (transaction.max.timeout.ms).
    pub transaction_max_timeout_ms: i32,
    /// A transactional id idle this long is forgotten
    /// (transactional.id.expiration.ms).
    pub transactional_id_expiration_ms: i64,
    /// How often the coordinator looks for transactions past their
    /// timeout (transaction.abort.timed.out.transaction.cleanup.interval.ms).
    pub transaction_timeout_check_ms: u64,
    /// A new group waits this long for more members before its first
    /// rebalance completes (group.initial.rebalance.delay.ms).
    pub group_initial_rebalance_delay_ms: u64,
    /// Accepted session timeouts (group.min/max.session.timeout.ms).
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// How often members of consumer-protocol groups (KIP-848) heartbeat
    /// (group.consumer.heartbeat.interval.ms): how soon they learn of a
    /// new assignment.
    pub group_consumer_heartbeat_interval_ms: i32,
    /// A consumer-protocol member silent this long is removed and its
    /// partitions reassigned (group.consumer.session.timeout.ms).
    pub group_consumer_session_timeout_ms: u64,
    /// How often the consumer lag of the groups this broker coordinates is
    /// computed for `/metrics` (0: never).
    pub consumer_lag_interval_ms: u64,
    /// Committed offsets of a group without members expire this long after
    /// their commit (offsets.retention.minutes, in ms).
    pub offsets_retention_ms: i64,
    /// segment.bytes of the internal topics (`__consumer_offsets`,
    /// `__transaction_state`) when they are made, as Kafka's
    /// offsets.topic.segment.bytes: they are compacted, and a new
    /// coordinator's replay reads the compacted segments and at most one
    /// segment not yet compacted.
    pub internal_topic_segment_bytes: u64,
    /// Fault injection for tests (the config file's `[faults]` section,
    /// accepted only with `FLOE_FAULT_INJECTION=1`): never part of `[broker]`.
    #[serde(skip)]
    pub faults: Faults,
    /// The cluster's identity for requests to other brokers (transaction
    /// markers and verification): the config file's `[internal_tls]`.
    #[serde(skip)]
    pub internal_tls: Option<floe_kafka::tls::InternalTls>,
}

/// Failures a test injects into a broker (the config file's `[faults]`
/// section; `floe` refuses it unless `FLOE_FAULT_INJECTION=1` is set, so a
/// production config cannot carry it by mistake). All off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// After every Nth produce request has been appended, close the
    /// connection instead of answering, as if the response were lost, so
    /// clients must retry.
    pub drop_produce_response_every: u64,
    /// A partition this broker takes waits this long between taking the
    /// write lease and recovering, as a slow recovery would (its state
    /// shows Recovering).
    pub recovery_delay_ms: u64,
    /// The first partition writer of this process to reach this many
    /// records stops as on an error it cannot ride out (once per process;
    /// 0: never), to show that a failed writer's partition is taken again.
    pub fail_writer_at_offset: i64,
    /// A broken broker, for the simulation's test that its checkers catch
    /// one: producers are acked when their batch is buffered, before it
    /// is durable on W replicas (a crash then loses acked records).
    pub ack_before_durable: bool,
}

impl Faults {
    /// Whether any fault is on.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            protocol: Default::default(),
            tls: None,
            sasl_mechanisms: None,
            reauth_ms: None,
            listeners: Vec::new(),
            max_request_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_inflight_per_connection: 64,
            auto_create_topics: true,
            default_partitions: 1,
            chunk_bytes: 4 << 20,
            chunk_linger_ms: 2,
            flush_when_idle: true,
            max_inflight_flushes: 4,
            chunk_put_timeout_ms: 10_000,
            storage_probe_interval_ms: 2_000,
            repair_interval_ms: 60_000,
            repair_max_bytes_per_sec: 0,
            compaction_max_bytes_per_sec: 64 << 20,
            compaction_buffer_bytes: 128 << 20,
            gc_interval_ms: 6 * 3_600_000,
            segment_max_chunks: 256,
            chunk_layout: ChunkLayout::Auto,
            wal_linger_ms: 100,
            wal_bytes: 8 << 20,
            wal_max_in_flight: 4,
            wal_inflight_chunks: 128,
            wal_max_age_ms: 600_000,
            wal_chunk_page: 128,
            seal_concurrency: 4,
            wal_idle_checkpoint_ms: 120_000,
            gc_min_age_ms: 600_000,
            load_report_interval_ms: 5_000,
            read_hedge_ms: 100,
            cache_bytes: 512 << 20,
            retention_check_interval_ms: 30_000,
            checkpoint_interval_ms: 5_000,
            lease_ttl_ms: 10_000,
            topic_defaults: BTreeMap::new(),
            offsets_topic_partitions: 16,
            transaction_topic_partitions: 16,
            transaction_max_timeout_ms: 900_000,
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
            transaction_timeout_check_ms: 1_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            group_consumer_session_timeout_ms: 45_000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            internal_topic_segment_bytes: floe_meta::topics::INTERNAL_SEGMENT_BYTES,
            consumer_lag_interval_ms: 5_000,
            faults: Faults::default(),
            internal_tls: None,
        }
    }
}

impl BrokerConfig {
    pub fn chunk_linger(&self) -> Duration {
        Duration::from_millis(self.chunk_linger_ms)
    }

    /// Whether chunks go to shared WAL objects over a pool of these
    /// targets' URLs.
    pub fn shared_wal<'a>(&self, urls: impl IntoIterator<Item = &'a str>) -> bool {
        match self.chunk_layout {
            ChunkLayout::Wal => true,
            ChunkLayout::Partition => false,
            ChunkLayout::Auto => urls.into_iter().any(|u| {
                ["s3://", "s3a://", "gs://", "az://", "azure://", "abfs://"]
                    .iter()
                    .any(|p| u.starts_with(p))
            }),
        }
    }

    /// How the broker's WAL streams flush.
    pub fn wal_config(&self) -> floe_storage::wal_stream::WalConfig {
        floe_storage::wal_stream::WalConfig {
            linger: Duration::from_millis(self.wal_linger_ms),
            max_bytes: self.wal_bytes.max(1) as usize,
            max_in_flight: self.wal_max_in_flight.max(1) as usize,
            ..Default::default()
        }
    }
}

/// Where a broker's chunks go (`chunk_layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkLayout {
    #[default]
    Auto,
    Wal,
    Partition,
}
