//! Every key Floe writes in the metadata store, built and parsed here and
//! nowhere else.

use bytes::Bytes;
use floe_common::{PartitionId, Uuid};

pub const ROOT: &str = "/floe/";

pub fn cluster() -> Bytes {
    Bytes::from_static(b"/floe/cluster")
}

pub fn topics_prefix() -> Bytes {
    Bytes::from_static(b"/floe/topics/")
}

pub fn topic(name: &str) -> Bytes {
    Bytes::from(format!("/floe/topics/{name}"))
}

/// Everything kept for one topic's partitions.
pub fn topic_partitions_prefix(topic_id: Uuid) -> Bytes {
    Bytes::from(format!("/floe/partitions/{}/", topic_id.simple()))
}

fn partition_prefix(p: PartitionId) -> String {
    format!("/floe/partitions/{}/{}/", p.topic_id.simple(), p.partition)
}

pub fn assignment(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "assignment")
}

pub fn owner(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "owner")
}

pub fn checkpoint(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "checkpoint")
}

/// The partition's idempotent-producer state as of a checkpoint.
pub fn producers(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "producers")
}

/// The next unallocated producer id (brokers claim blocks from it).
pub fn producer_id_block() -> Bytes {
    Bytes::from(format!("{ROOT}producer-ids"))
}

pub fn segments_prefix(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "segments/")
}

pub fn segment(p: PartitionId, base_offset: i64) -> Bytes {
    Bytes::from(format!("{}segments/{base_offset:020}", partition_prefix(p)))
}

/// The chunk-list pages of the unsealed WAL segment at `segment_base`
/// (deleted with the segment's seal).
pub fn chunk_pages_prefix(p: PartitionId, segment_base: i64) -> Bytes {
    Bytes::from(format!(
        "{}chunk-pages/{segment_base:020}/",
        partition_prefix(p)
    ))
}

/// The chunk-list page of that segment whose first chunk is at
/// `first_offset`.
pub fn chunk_page(p: PartitionId, segment_base: i64, first_offset: i64) -> Bytes {
    Bytes::from(format!(
        "{}chunk-pages/{segment_base:020}/{first_offset:020}",
        partition_prefix(p)
    ))
}

/// Whether `key` is a chunk-list page (of any partition).
pub fn is_chunk_page(key: &[u8]) -> bool {
    key.starts_with(b"/floe/partitions/")
        && std::str::from_utf8(key).is_ok_and(|k| k.contains("/chunk-pages/"))
}

pub fn brokers_prefix() -> Bytes {
    Bytes::from_static(b"/floe/brokers/")
}

pub fn broker(id: i32) -> Bytes {
    Bytes::from(format!("/floe/brokers/{id}"))
}

/// Brokers an operator drained: no partition is assigned to them (their
/// partitions move off) until undrained. Value: a `DrainRecord`.
pub fn drained_prefix() -> Bytes {
    Bytes::from_static(b"/floe/drained/")
}

pub fn drained(broker: i32) -> Bytes {
    Bytes::from(format!("/floe/drained/{broker}"))
}

/// The broker id of a drained key.
pub fn parse_drained(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/drained/")?
        .parse()
        .ok()
}

/// Brokers whose id a newer process is waiting to register under (the
/// registration still held by an earlier process's live lease: a broker
/// restarted in place). Bound to the waiting process's own lease.
pub fn successors_prefix() -> Bytes {
    Bytes::from_static(b"/floe/successors/")
}

pub fn successor(broker: i32) -> Bytes {
    Bytes::from(format!("/floe/successors/{broker}"))
}

pub fn parse_successor(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/successors/")?
        .parse()
        .ok()
}

pub fn proxies_prefix() -> Bytes {
    Bytes::from_static(b"/floe/proxies/")
}

pub fn proxy(id: i32) -> Bytes {
    Bytes::from(format!("/floe/proxies/{id}"))
}

/// The proxy id of a proxy registration key.
pub fn parse_proxy(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/proxies/")?
        .parse()
        .ok()
}

/// A partition's published state (`PartitionStateRecord`), bound to the
/// owning broker's lease.
pub fn partition_state(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "state")
}

/// The storage pool (`StoragePoolRecord`), seeded by the first controller.
pub fn storage_pool() -> Bytes {
    Bytes::from_static(b"/floe/storage")
}

/// SASL users and their SCRAM credentials (`UserRecord`).
pub fn users_prefix() -> Bytes {
    Bytes::from_static(b"/floe/users/")
}

pub fn user(name: &str) -> Bytes {
    Bytes::from(format!("/floe/users/{name}"))
}

/// The user name of a user key.
pub fn parse_user(key: &[u8]) -> Option<String> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/users/")
        .filter(|n| !n.is_empty())
        .map(str::to_string)
}

/// Kafka ACL bindings (`AclRecord`), one key per binding.
pub fn acls_prefix() -> Bytes {
    Bytes::from_static(b"/floe/acls/")
}

/// The key of an ACL binding, named by a digest of its fields (the same
/// binding created twice is one key).
pub fn acl(id: &str) -> Bytes {
    Bytes::from(format!("/floe/acls/{id}"))
}

/// The controller election key (value: the leader's `ControllerRecord`).
pub fn controller_leader() -> Bytes {
    Bytes::from_static(b"/floe/controller/leader")
}

pub fn controllers_prefix() -> Bytes {
    Bytes::from_static(b"/floe/controllers/")
}

pub fn controller(id: &str) -> Bytes {
    Bytes::from(format!("/floe/controllers/{id}"))
}

/// Load reports: `/floe/load/{broker}` (`LoadRecord`), bound to the
/// reporting broker's lease.
pub fn load_prefix() -> Bytes {
    Bytes::from_static(b"/floe/load/")
}

pub fn load(broker: i32) -> Bytes {
    Bytes::from(format!("/floe/load/{broker}"))
}

/// Long-running admin operations (`OperationRecord`), by id.
pub fn operations_prefix() -> Bytes {
    Bytes::from_static(b"/floe/operations/")
}

pub fn operation(id: &str) -> Bytes {
    Bytes::from(format!("/floe/operations/{id}"))
}

/// The id of an operation key.
pub fn parse_operation(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/operations/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// A request to cancel operation `id` (kept apart from the record, which
/// only the executing controller writes).
/// The id of the operation that runs now (one at a time): created with the
/// operation, deleted with its final record.
pub fn operation_active() -> Bytes {
    Bytes::from_static(b"/floe/operation-active")
}

pub fn operation_cancel(id: &str) -> Bytes {
    Bytes::from(format!("/floe/operation-cancels/{id}"))
}

pub fn partitions_prefix() -> Bytes {
    Bytes::from_static(b"/floe/partitions/")
}

/// The partition an assignment key belongs to, if `key` is one.
pub fn parse_assignment(key: &[u8]) -> Option<PartitionId> {
    parse_partition_key(key, "assignment")
}

/// The partition a checkpoint key belongs to, if `key` is one.
pub fn parse_checkpoint(key: &[u8]) -> Option<PartitionId> {
    parse_partition_key(key, "checkpoint")
}

/// The partition an owner key belongs to, if `key` is one.
pub fn parse_owner(key: &[u8]) -> Option<PartitionId> {
    parse_partition_key(key, "owner")
}

/// The partition a state key belongs to, if `key` is one.
pub fn parse_partition_state(key: &[u8]) -> Option<PartitionId> {
    parse_partition_key(key, "state")
}

/// The broker id of a broker registration key.
pub fn parse_broker(key: &[u8]) -> Option<i32> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/brokers/")?
        .parse()
        .ok()
}

/// Every broker's WAL streams (`WalStreamRecord`, issue 24): recovery and
/// garbage collection find a dead broker's streams here.
pub fn wal_streams_prefix() -> Bytes {
    Bytes::from_static(b"/floe/wal-streams/")
}

/// One broker's WAL streams, in stream order.
pub fn broker_wal_streams_prefix(broker: i32) -> Bytes {
    Bytes::from(format!("/floe/wal-streams/{broker}/"))
}

/// A WAL stream, recorded before its first object and kept (no lease) until
/// nothing names it.
pub fn wal_stream(broker: i32, stream: i64) -> Bytes {
    Bytes::from(format!("/floe/wal-streams/{broker}/{stream:020}"))
}

/// (broker, stream) of a [`wal_stream`] key.
pub fn parse_wal_stream(key: &[u8]) -> Option<(i32, i64)> {
    let rest = std::str::from_utf8(key)
        .ok()?
        .strip_prefix("/floe/wal-streams/")?;
    let (broker, stream) = rest.split_once('/')?;
    Some((broker.parse().ok()?, stream.parse().ok()?))
}

fn parse_partition_key(key: &[u8], leaf: &str) -> Option<PartitionId> {
    let s = std::str::from_utf8(key).ok()?;
    let rest = s
        .strip_prefix("/floe/partitions/")?
        .strip_suffix(leaf)?
        .strip_suffix('/')?;
    let (topic, partition) = rest.split_once('/')?;
    Some(PartitionId::new(
        Uuid::parse_str(topic).ok()?,
        partition.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_keys_sort_by_offset() {
        let p = PartitionId::new(Uuid::from_u128(7), 3);
        let a = segment(p, 9);
        let b = segment(p, 10);
        assert!(a < b);
        assert!(a.starts_with(&segments_prefix(p)));
        assert!(segments_prefix(p).starts_with(&topic_partitions_prefix(p.topic_id)));
        assert_ne!(owner(p), assignment(p));
        assert_eq!(parse_assignment(&assignment(p)), Some(p));
        assert_eq!(parse_assignment(&owner(p)), None);
    }

    #[test]
    fn wal_stream_keys_sort_by_stream_and_parse_back() {
        assert!(wal_stream(2, 9) < wal_stream(2, 10));
        assert!(wal_stream(2, 9).starts_with(&broker_wal_streams_prefix(2)));
        assert!(!wal_stream(21, 9).starts_with(&broker_wal_streams_prefix(2)));
        assert!(broker_wal_streams_prefix(2).starts_with(&wal_streams_prefix()));
        assert_eq!(parse_wal_stream(&wal_stream(2, 9)), Some((2, 9)));
        assert_eq!(parse_wal_stream(&broker(2)), None);
    }
}
