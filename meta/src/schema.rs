//! The values Floe keeps in the metadata store, as protobuf messages (prost).
//! Each carries a `format` version so a newer Floe can read an older record.
//! New fields get new tags; tags are never reused.

use std::collections::BTreeMap;

use prost::Message;

/// Current format version written into every record.
pub const FORMAT: u32 = 1;

/// Cluster identity, written once by the first process of a cluster.
#[derive(Clone, PartialEq, Message)]
pub struct ClusterRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(string, tag = "2")]
    pub cluster_id: String,
    #[prost(int64, tag = "3")]
    pub created_ms: i64,
}

/// A topic: `/floe/topics/{name}`.
#[derive(Clone, PartialEq, Message)]
pub struct TopicRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// The topic id, 16 bytes (a UUID).
    #[prost(bytes = "vec", tag = "2")]
    pub id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(int32, tag = "4")]
    pub partitions: i32,
    /// Configs set explicitly on the topic; the rest are broker defaults.
    #[prost(btree_map = "string, string", tag = "5")]
    pub configs: BTreeMap<String, String>,
    #[prost(int64, tag = "6")]
    pub created_ms: i64,
}

/// Which broker should own a partition, at which epoch:
/// `/floe/partitions/{topic_id}/{p}/assignment`. Written by the controller.
#[derive(Clone, PartialEq, Message)]
pub struct AssignmentRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(int32, tag = "3")]
    pub epoch: i32,
    /// The broker's registration (its create revision) the assignment was
    /// made for: a broker that restarts gets a new session, hence a new epoch.
    #[prost(int64, tag = "4")]
    pub broker_session: i64,
}

/// A live broker: `/floe/brokers/{id}`, bound to the broker's lease.
#[derive(Clone, PartialEq, Message)]
pub struct BrokerRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(string, tag = "3")]
    pub host: String,
    #[prost(int32, tag = "4")]
    pub port: i32,
    #[prost(string, optional, tag = "5")]
    pub rack: Option<String>,
    #[prost(int64, tag = "6")]
    pub started_ms: i64,
    /// HOST:PORT of its tail push (gRPC) listener, which proxies follow
    /// partitions on.
    #[prost(string, tag = "7")]
    pub tail: String,
    /// How this broker creates topics for clients; a proxy creating one
    /// applies a live broker's (unset: a broker older than the field).
    #[prost(message, optional, tag = "8")]
    pub topic_policy: Option<TopicPolicy>,
    /// Every Kafka listener's advertised address (the first is `host`:`port`).
    #[prost(message, repeated, tag = "9")]
    pub listeners: Vec<Endpoint>,
}

/// A broker's topic-creation settings, as Kafka's brokers have them.
#[derive(Clone, PartialEq, Message)]
pub struct TopicPolicy {
    /// auto.create.topics.enable: Metadata and Produce create unknown topics.
    #[prost(bool, tag = "1")]
    pub auto_create: bool,
    /// num.partitions of an auto-created topic.
    #[prost(int32, tag = "2")]
    pub default_partitions: i32,
    /// offsets.topic.num.partitions: the offsets topic's partitions when
    /// the first FindCoordinator makes it.
    #[prost(int32, tag = "3")]
    pub offsets_partitions: i32,
    /// transaction.state.log.num.partitions: the transaction state
    /// topic's partitions when the first FindCoordinator for a
    /// transactional id makes it (0 from brokers before transactions: 16).
    #[prost(int32, tag = "4")]
    pub txn_partitions: i32,
    /// offsets.topic.segment.bytes (and transaction.state.log.segment.bytes):
    /// the segment size of both internal topics when made (0 from brokers
    /// before compaction: [`crate::topics::INTERNAL_SEGMENT_BYTES`]).
    #[prost(uint64, tag = "5")]
    pub internal_segment_bytes: u64,
}

/// A drained broker: `/floe/drained/{id}` (not leased: it outlives restarts
/// until the broker is undrained).
#[derive(Clone, PartialEq, Message)]
pub struct DrainRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(int64, tag = "3")]
    pub since_ms: i64,
    /// Decommissioned: once it writes no partition the broker exits and
    /// removes this record (its id is then free for a new broker).
    #[prost(bool, tag = "4")]
    pub decommission: bool,
}

/// A live proxy: `/floe/proxies/{id}`, bound to the proxy's lease. Clients
/// see proxies as Kafka's brokers, under this id.
#[derive(Clone, PartialEq, Message)]
pub struct ProxyRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub proxy_id: i32,
    #[prost(string, tag = "3")]
    pub host: String,
    #[prost(int32, tag = "4")]
    pub port: i32,
    #[prost(int64, tag = "5")]
    pub started_ms: i64,
    /// Every Kafka listener's advertised address (the first is `host`:`port`).
    #[prost(message, repeated, tag = "6")]
    pub listeners: Vec<Endpoint>,
}

/// A Kafka listener's advertised address.
#[derive(Clone, PartialEq, Message)]
pub struct Endpoint {
    /// The listener's name (clients get the addresses of the listener they
    /// came in on).
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(int32, tag = "3")]
    pub port: i32,
}

/// The address of listener `name` among `listeners`, else `default` (a
/// process without that listener, or older than the field).
pub fn endpoint_of(listeners: &[Endpoint], name: &str, default: (&str, i32)) -> (String, i32) {
    listeners
        .iter()
        .find(|e| e.name == name)
        .map_or((default.0.to_string(), default.1), |e| {
            (e.host.clone(), e.port)
        })
}

impl ProxyRecord {
    /// Where clients of listener `name` reach this proxy.
    pub fn endpoint(&self, name: &str) -> (String, i32) {
        endpoint_of(&self.listeners, name, (&self.host, self.port))
    }
}

impl BrokerRecord {
    /// Where clients of listener `name` reach this broker.
    pub fn endpoint(&self, name: &str) -> (String, i32) {
        endpoint_of(&self.listeners, name, (&self.host, self.port))
    }
}

/// The write lease of a partition: `/floe/partitions/{topic_id}/{p}/owner`,
/// bound to the owning broker's metadata lease.
#[derive(Clone, PartialEq, Message)]
pub struct OwnerRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(int32, tag = "3")]
    pub epoch: i32,
    #[prost(int64, tag = "4")]
    pub acquired_ms: i64,
}

/// The open segment of a partition, as recorded before its first chunk is
/// written (a writer never writes a chunk to a segment not recorded here).
#[derive(Clone, PartialEq, Message)]
pub struct OpenSegmentRecord {
    #[prost(int64, tag = "1")]
    pub base_offset: i64,
    #[prost(int32, tag = "2")]
    pub epoch: i32,
    /// Storage target ids holding the segment's chunks.
    #[prost(string, repeated, tag = "3")]
    pub replica_set: Vec<String>,
    #[prost(int64, tag = "4")]
    pub created_ms: i64,
    /// Set by a clean release: `chunks` is the segment's whole committed
    /// chain, so the next owner needs neither a listing nor a fence.
    #[prost(bool, tag = "5")]
    pub chunks_listed: bool,
    #[prost(message, repeated, tag = "6")]
    pub chunks: Vec<ChunkRecord>,
    /// Its chunks go to the writer's shared WAL objects (issue 24): then
    /// `chunks` lists the committed ones in every checkpoint, and a
    /// recovery after an unclean end finds the rest from the checkpoint's
    /// `wal_start` on.
    #[prost(bool, tag = "7")]
    pub wal: bool,
    /// A WAL segment's committed chunks from its base on, in pages of
    /// their own keys (`keys::chunk_page`), each written once; `chunks`
    /// then holds only those after the last page. A checkpoint stays small
    /// however long the segment lives (it seals by size and age, not by
    /// chunk count), and each chunk's record is written to the metadata
    /// store about once.
    #[prost(message, repeated, tag = "8")]
    pub pages: Vec<ChunkPageRef>,
}

/// One page of a WAL segment's chunk list, as its checkpoint names it.
#[derive(Clone, PartialEq, Message)]
pub struct ChunkPageRef {
    /// The base offset of its first chunk (also its key's last part).
    #[prost(int64, tag = "1")]
    pub first_offset: i64,
    /// The offset after its last chunk: the next page or the checkpoint's
    /// own list starts there.
    #[prost(int64, tag = "2")]
    pub next_offset: i64,
    #[prost(uint32, tag = "3")]
    pub chunks: u32,
    /// Per broker, the least WAL position its chunks lie at: what garbage
    /// collection must keep, known without reading the page.
    #[prost(message, repeated, tag = "4")]
    pub wal_low: Vec<WalPositionRecord>,
}

/// A page of chunk records (`keys::chunk_page`).
#[derive(Clone, PartialEq, Message)]
pub struct ChunkPageRecord {
    #[prost(message, repeated, tag = "1")]
    pub chunks: Vec<ChunkRecord>,
}

/// One committed chunk of an unsealed segment (its key is derived from the
/// segment and `base_offset`).
#[derive(Clone, PartialEq, Message)]
pub struct ChunkRecord {
    #[prost(int64, tag = "1")]
    pub base_offset: i64,
    #[prost(int64, tag = "2")]
    pub next_offset: i64,
    #[prost(int64, tag = "3")]
    pub max_timestamp: i64,
    /// Payload bytes (the object minus its header).
    #[prost(uint64, tag = "4")]
    pub bytes: u64,
    /// Set when the chunk lies in a shared WAL object (issue 24) rather
    /// than in an object of its own.
    #[prost(message, optional, tag = "5")]
    pub wal: Option<WalRefRecord>,
}

/// Where a chunk lies in a shared WAL object: the object (broker, stream,
/// seq), the chunk's byte range in it, and the object's replica set.
#[derive(Clone, PartialEq, Message)]
pub struct WalRefRecord {
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    #[prost(int64, tag = "2")]
    pub stream: i64,
    #[prost(int64, tag = "3")]
    pub seq: i64,
    #[prost(uint64, tag = "4")]
    pub pos: u64,
    #[prost(uint32, tag = "5")]
    pub len: u32,
    #[prost(uint32, tag = "6")]
    pub payload_crc: u32,
    #[prost(string, repeated, tag = "7")]
    pub replica_set: Vec<String>,
}

/// A broker's WAL stream: `/floe/wal-streams/{broker}/{stream:020}`.
#[derive(Clone, PartialEq, Message)]
pub struct WalStreamRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(int64, tag = "3")]
    pub stream: i64,
    /// The broker session (its registration's revision) that opened it.
    #[prost(int64, tag = "4")]
    pub session: i64,
    /// The seq of its first object.
    #[prost(int64, tag = "5")]
    pub first_seq: i64,
    #[prost(int64, tag = "6")]
    pub created_ms: i64,
}

/// One batch of an idempotent producer, as deduplication needs it.
#[derive(Clone, PartialEq, Message)]
pub struct ProducerBatchRecord {
    #[prost(int32, tag = "1")]
    pub first_sequence: i32,
    #[prost(int32, tag = "2")]
    pub last_sequence: i32,
    #[prost(int64, tag = "3")]
    pub base_offset: i64,
    #[prost(int64, tag = "4")]
    pub last_offset: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProducerStateRecord {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int32, tag = "2")]
    pub epoch: i32,
    /// The last batches (at most five), oldest first.
    #[prost(message, repeated, tag = "3")]
    pub batches: Vec<ProducerBatchRecord>,
    #[prost(int64, tag = "4")]
    pub last_ms: i64,
}

/// `/floe/partitions/{topic_id}/{p}/producers`: idempotent-producer state
/// covering every batch below `as_of_offset`, saved with the checkpoint.
#[derive(Clone, PartialEq, Message)]
pub struct ProducerSnapshotRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int64, tag = "2")]
    pub as_of_offset: i64,
    #[prost(message, repeated, tag = "3")]
    pub producers: Vec<ProducerStateRecord>,
    /// Transactions open as of `as_of_offset` (those opened later are
    /// found by replaying the log from it).
    #[prost(message, repeated, tag = "4")]
    pub open_txns: Vec<OpenTxnRecord>,
    /// Aborted transactions whose abort marker is in a segment not sealed
    /// yet and before `as_of_offset` (sealed segments keep their own).
    #[prost(message, repeated, tag = "5")]
    pub aborted: Vec<AbortedTxnRecord>,
    /// Per producer, the coordinator epoch of the last marker written here
    /// (a marker of an older coordinator is refused).
    #[prost(message, repeated, tag = "6")]
    pub coordinator_epochs: Vec<CoordinatorEpochRecord>,
}

/// The coordinator epoch of the last transaction marker of a producer.
#[derive(Clone, PartialEq, Message)]
pub struct CoordinatorEpochRecord {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int32, tag = "2")]
    pub coordinator_epoch: i32,
}

/// A transaction open on a partition from `first_offset`.
#[derive(Clone, PartialEq, Message)]
pub struct OpenTxnRecord {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int32, tag = "2")]
    pub epoch: i32,
    #[prost(int64, tag = "3")]
    pub first_offset: i64,
}

/// An aborted transaction: its producer, first offset and the offset of
/// its abort marker (Kafka's transaction index entry).
#[derive(Clone, PartialEq, Message)]
pub struct AbortedTxnRecord {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int64, tag = "2")]
    pub first_offset: i64,
    #[prost(int64, tag = "3")]
    pub marker_offset: i64,
}

/// `/floe/producer-ids`: producer ids below `next` are handed out.
#[derive(Clone, PartialEq, Message)]
pub struct ProducerIdBlockRecord {
    #[prost(int64, tag = "1")]
    pub next: i64,
}

/// A partition's checkpoint: `/floe/partitions/{topic_id}/{p}/checkpoint`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckpointRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// Epoch of the writer that saved it.
    #[prost(int32, tag = "2")]
    pub epoch: i32,
    /// Offsets below this are deleted (retention, DeleteRecords).
    #[prost(int64, tag = "3")]
    pub log_start_offset: i64,
    /// The next offset to assign as known at the checkpoint (all offsets below
    /// are durable). After an unclean end the log may extend past it.
    #[prost(int64, tag = "4")]
    pub next_offset: i64,
    /// Segments not yet sealed, oldest first: at most the one being sealed
    /// and the one being written.
    #[prost(message, repeated, tag = "5")]
    pub open_segments: Vec<OpenSegmentRecord>,
    /// True when saved by a clean release: nothing to recover.
    #[prost(bool, tag = "6")]
    pub clean: bool,
    #[prost(int64, tag = "7")]
    pub saved_ms: i64,
    /// With shared WAL objects (issue 24): where the owner's WAL stream
    /// stood when this checkpoint was saved; every chunk it writes after
    /// lies at or past it, so garbage collection keeps everything from it.
    #[prost(message, optional, tag = "8")]
    pub wal_start: Option<WalPositionRecord>,
}

/// A position in a broker's WAL streams: object `seq` of stream `stream`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct WalPositionRecord {
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    #[prost(int64, tag = "2")]
    pub stream: i64,
    #[prost(int64, tag = "3")]
    pub seq: i64,
}

/// A sealed segment: `/floe/partitions/{topic_id}/{p}/segments/{base:020}`.
#[derive(Clone, PartialEq, Message)]
pub struct SegmentRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int64, tag = "2")]
    pub base_offset: i64,
    /// One past the last offset in the segment.
    #[prost(int64, tag = "3")]
    pub end_offset: i64,
    #[prost(int32, tag = "4")]
    pub epoch: i32,
    #[prost(string, repeated, tag = "5")]
    pub replica_set: Vec<String>,
    /// Bytes of record batches (the data part of the segment object).
    #[prost(uint64, tag = "6")]
    pub data_bytes: u64,
    /// Size of the whole segment object (data, indexes, footer).
    #[prost(uint64, tag = "7")]
    pub object_bytes: u64,
    #[prost(int64, tag = "8")]
    pub max_timestamp: i64,
    #[prost(int64, tag = "9")]
    pub sealed_ms: i64,
    #[prost(int64, tag = "10")]
    pub batch_count: i64,
    /// Epoch of the writer that sealed it (part of the object key).
    #[prost(int32, tag = "11")]
    pub sealed_by_epoch: i32,
    /// The aborted transactions whose abort marker is in this segment.
    #[prost(message, repeated, tag = "12")]
    pub aborted: Vec<AbortedTxnRecord>,
    /// Times the segment was compacted (part of the object key; 0: as
    /// sealed).
    #[prost(uint32, tag = "13")]
    pub compactions: u32,
    /// The newest timestamp of a batch holding a tombstone compaction kept
    /// (0: none): the segment is compacted again once it is older than
    /// delete.retention.ms.
    #[prost(int64, tag = "14")]
    pub tombstones_until_ms: i64,
    /// Epoch of the writer whose compaction wrote the object (part of the
    /// object key, so two owners compacting the same segment around a
    /// move never write one key).
    #[prost(int32, tag = "15")]
    pub compacted_by_epoch: i32,
}

/// A partition's state as its owner last published it:
/// `/floe/partitions/{topic}/{p}/state`, bound to the owner's lease.
#[derive(Clone, PartialEq, Message)]
pub struct PartitionStateRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(int32, tag = "3")]
    pub epoch: i32,
    /// starting, recovering, writing, releasing, released or failed.
    #[prost(string, tag = "4")]
    pub state: String,
    #[prost(int64, tag = "5")]
    pub updated_ms: i64,
}

/// One storage target of the pool.
#[derive(Clone, PartialEq, Message)]
pub struct StorageTargetRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    /// `file:///dir`, `memory://`, ...; credentials come from each process's
    /// environment, never from here.
    #[prost(string, tag = "2")]
    pub url: String,
    #[prost(string, optional, tag = "3")]
    pub zone: Option<String>,
    #[prost(uint32, tag = "4")]
    pub weight: u32,
    /// Drained by an operator: new segments avoid it and brokers move the
    /// replicas it holds to other targets; removable once it holds none.
    #[prost(bool, tag = "5")]
    pub draining: bool,
    /// The identity marker the target holds at `_floe/target` (written when
    /// it joined the pool); empty for a target never marked. A target whose
    /// marker is missing or different has lost its contents (a new disk, a
    /// recreated bucket) or is another one: its "absent" answers are not
    /// trusted until it is marked again (docs/storage.md, "Lost targets").
    #[prost(string, tag = "6")]
    pub marker: String,
}

/// The storage pool: `/floe/storage`.
#[derive(Clone, PartialEq, Message)]
pub struct StoragePoolRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(message, repeated, tag = "2")]
    pub targets: Vec<StorageTargetRecord>,
    /// R: replicas of every object.
    #[prost(uint32, tag = "3")]
    pub replicas: u32,
    /// W: acknowledgements that make a write durable.
    #[prost(uint32, tag = "4")]
    pub write_quorum: u32,
}

/// A controller process: `/floe/controllers/{id}` (leased), and the value of
/// the election key while it leads.
#[derive(Clone, PartialEq, Message)]
pub struct ControllerRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(string, tag = "2")]
    pub id: String,
    /// Its HTTP address (internal API, metrics).
    #[prost(string, tag = "3")]
    pub http: String,
    #[prost(int64, tag = "4")]
    pub started_ms: i64,
}

/// One partition's measured traffic.
#[derive(Clone, PartialEq, Message)]
pub struct PartitionLoad {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// Record bytes appended per second.
    #[prost(uint64, tag = "3")]
    pub bytes_in_per_sec: u64,
    /// Record bytes served per second (fetches and tail pushes to proxies).
    #[prost(uint64, tag = "4")]
    pub bytes_out_per_sec: u64,
    /// Its high watermark when reported.
    #[prost(int64, tag = "5")]
    pub high_watermark: i64,
}

/// A broker's load report: `/floe/load/{id}`, bound to its lease, rewritten
/// every report interval with its rates (each an average of the last
/// interval and the rate reported before, so one noisy interval moves it by
/// half).
#[derive(Clone, PartialEq, Message)]
pub struct LoadRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub broker_id: i32,
    #[prost(int64, tag = "3")]
    pub reported_ms: i64,
    #[prost(uint64, tag = "4")]
    pub interval_ms: u64,
    #[prost(uint64, tag = "5")]
    pub bytes_in_per_sec: u64,
    #[prost(uint64, tag = "6")]
    pub bytes_out_per_sec: u64,
    /// The partitions it writes.
    #[prost(message, repeated, tag = "7")]
    pub partitions: Vec<PartitionLoad>,
}

/// One partition move of an operation.
#[derive(Clone, PartialEq, Message)]
pub struct PlannedMove {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int32, tag = "3")]
    pub from: i32,
    #[prost(int32, tag = "4")]
    pub to: i32,
    /// Its measured load (bytes in + out per second) when planned.
    #[prost(uint64, tag = "5")]
    pub load: u64,
    /// pending, moving, done, skipped, failed.
    #[prost(string, tag = "6")]
    pub status: String,
    #[prost(string, tag = "7")]
    pub detail: String,
    #[prost(uint64, tag = "8")]
    pub took_ms: u64,
}

/// A long-running admin operation: `/floe/operations/{id}`. Created by any
/// controller (state "pending"), executed and updated only by the leading
/// one.
#[derive(Clone, PartialEq, Message)]
pub struct OperationRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(string, tag = "2")]
    pub id: String,
    /// "rebalance" (the leader carries out its moves), "drain-broker" or
    /// "decommission-broker" (the controller's reconciliation moves the
    /// broker's partitions; the record follows them).
    #[prost(string, tag = "3")]
    pub kind: String,
    /// pending, running, done, cancelled, failed.
    #[prost(string, tag = "4")]
    pub state: String,
    #[prost(int64, tag = "5")]
    pub created_ms: i64,
    #[prost(int64, tag = "6")]
    pub started_ms: i64,
    #[prost(int64, tag = "7")]
    pub finished_ms: i64,
    /// Moves carried out at once.
    #[prost(uint32, tag = "8")]
    pub max_in_flight: u32,
    #[prost(message, repeated, tag = "9")]
    pub moves: Vec<PlannedMove>,
    #[prost(string, tag = "10")]
    pub detail: String,
    /// The controller executing it.
    #[prost(string, tag = "11")]
    pub executor: String,
    /// The broker a drain empties (0 for a rebalance).
    #[prost(int32, tag = "12")]
    pub broker: i32,
}

/// A SASL user: `/floe/users/{name}`, with its salted SCRAM credentials
/// (RFC 5802: never the password). PLAIN logins are checked against them.
#[derive(Clone, PartialEq, Message)]
pub struct UserRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "3")]
    pub scram: Vec<ScramCredentialRecord>,
}

/// One SCRAM credential of a user.
#[derive(Clone, PartialEq, Message)]
pub struct ScramCredentialRecord {
    /// Kafka's ScramMechanism: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512.
    #[prost(int32, tag = "1")]
    pub mechanism: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub salt: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub iterations: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub stored_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub server_key: Vec<u8>,
}

/// A Kafka ACL binding: `/floe/acls/{id}`. Codes are Kafka's
/// (ResourceType, PatternType, AclOperation, AclPermissionType).
#[derive(Clone, PartialEq, Message)]
pub struct AclRecord {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(int32, tag = "2")]
    pub resource_type: i32,
    #[prost(string, tag = "3")]
    pub resource_name: String,
    #[prost(int32, tag = "4")]
    pub pattern_type: i32,
    #[prost(string, tag = "5")]
    pub principal: String,
    #[prost(string, tag = "6")]
    pub host: String,
    #[prost(int32, tag = "7")]
    pub operation: i32,
    #[prost(int32, tag = "8")]
    pub permission: i32,
}
