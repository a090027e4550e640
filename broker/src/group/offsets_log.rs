//! The offsets log: the records a group coordinator keeps in its
//! partition of `__consumer_offsets` (committed offsets, classic groups,
//! consumer-protocol groups) with Kafka's key and value layouts, appended
//! and waited on until durable, replayed into the state they describe when
//! a coordinator takes the partition, and expired. The partition is a
//! compacted topic: the compactor keeps each key's latest record, so a
//! replay reads what a full one would conclude.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_protocol::batch::validate_for_produce;
use floe_protocol::ResponseError;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::classic::{Group, GroupState, Member};
use crate::consumer_group::ConsumerGroup;
use crate::partition::PartitionHandle;

#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// A group's offsets by (topic, partition).
pub(crate) type GroupOffsets = BTreeMap<(String, i32), Committed>;

#[derive(Default)]
pub(crate) struct ShardState {
    pub(crate) groups: HashMap<String, Group>,
    /// Groups of the consumer group protocol.
    pub(crate) consumer: HashMap<String, ConsumerGroup>,
    /// group → (topic, partition) → committed.
    pub(crate) offsets: HashMap<String, BTreeMap<(String, i32), Committed>>,
    /// Offsets committed in a transaction not yet ended (TxnOffsetCommit,
    /// KIP-98): producer id → group → (topic, partition) → offset. The
    /// transaction's marker makes them committed offsets or drops them.
    pub(crate) pending: HashMap<i64, BTreeMap<String, GroupOffsets>>,
    /// Per producer, the guard its TxnOffsetCommit was verified under with
    /// the transaction's coordinator: made before the question, cleared
    /// by the transaction's marker, so offsets verified before a
    /// transaction ended cannot land after it (in memory: a new
    /// coordinator of the group asks again).
    pub(crate) txn_guards: HashMap<i64, u64>,
    /// Per producer, the coordinator epoch of its last marker here: an
    /// older coordinator's late marker is refused (in memory).
    pub(crate) txn_coordinators: HashMap<i64, i32>,
    /// The last guard token handed out.
    pub(crate) txn_guard_seq: u64,
}

/// Tombstones for the offsets of member-less groups older than `retention_ms`.
pub(crate) async fn expire_offsets(
    handle: &PartitionHandle,
    st: &mut ShardState,
    retention_ms: i64,
    now_ms: i64,
) {
    let mut expired: Vec<(String, String, i32)> = Vec::new();
    for (g, m) in &st.offsets {
        if st.groups.get(g).is_some_and(|grp| !grp.members.is_empty())
            || st.consumer.get(g).is_some_and(|grp| !grp.is_empty())
        {
            continue;
        }
        for ((t, p), c) in m {
            if now_ms - c.commit_ms > retention_ms {
                expired.push((g.clone(), t.clone(), *p));
            }
        }
    }
    if expired.is_empty() {
        return;
    }
    let mut tombstones: Vec<(Bytes, Option<Bytes>)> = expired
        .iter()
        .map(|(g, t, p)| (offset_key(g, t, *p), None))
        .collect();
    // An empty consumer group goes with its last offset, as in Kafka.
    let mut gone: HashMap<&str, usize> = HashMap::new();
    for (g, _, _) in &expired {
        *gone.entry(g.as_str()).or_default() += 1;
    }
    let emptied: Vec<String> = gone
        .iter()
        .filter(|&(g, n)| {
            st.offsets.get(*g).is_some_and(|m| m.len() == *n) && st.consumer.contains_key(*g)
        })
        .map(|(g, _)| g.to_string())
        .collect();
    tombstones.extend(emptied.iter().map(|g| (consumer_key(g), None)));
    if append(handle, &tombstones).await.is_err() {
        return;
    }
    for g in &emptied {
        st.consumer.remove(g);
    }
    for (g, t, p) in expired {
        if let Some(m) = st.offsets.get_mut(&g) {
            m.remove(&(t, p));
            if m.is_empty() {
                st.offsets.remove(&g);
                if st.groups.get(&g).is_some_and(|grp| grp.members.is_empty()) {
                    st.groups.remove(&g);
                }
            }
        }
    }
    tracing::info!(partition = %handle.id, offsets = tombstones.len(), "expired committed offsets");
}

/// Record key of a consumer-protocol group: version 3, group.
pub(crate) fn consumer_key(group: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(3);
    put_str(&mut b, group);
    b.freeze()
}

pub(crate) fn parse_consumer_key(mut k: Bytes) -> Option<String> {
    if k.remaining() < 2 || k.get_u16() != 3 {
        return None;
    }
    get_str(&mut k)
}

pub(crate) fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

pub(crate) fn get_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

/// Record key of a committed offset: version 1, group, topic, partition.
pub(crate) fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(1);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

pub(crate) fn offset_value(c: &Committed) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(1);
    b.put_i64(c.offset);
    b.put_i32(c.leader_epoch);
    b.put_i64(c.commit_ms);
    match &c.metadata {
        Some(m) => {
            b.put_i32(m.len() as i32);
            b.put_slice(m.as_bytes());
        }
        None => b.put_i32(-1),
    }
    b.freeze()
}

/// Record key of an offset committed in an open transaction: version 4,
/// producer id, group, topic, partition (the value is an offset's).
pub(crate) fn pending_key(producer_id: i64, group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(4);
    b.put_i64(producer_id);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

pub(crate) fn parse_pending_key(mut k: Bytes) -> Option<(i64, String, String, i32)> {
    if k.remaining() < 10 || k.get_u16() != 4 {
        return None;
    }
    let pid = k.get_i64();
    let g = get_str(&mut k)?;
    let t = get_str(&mut k)?;
    (k.remaining() >= 4).then(|| (pid, g, t, k.get_i32()))
}

/// Record key of a group's membership: version 2, group.
pub(crate) fn group_key(group: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(2);
    put_str(&mut b, group);
    b.freeze()
}

pub(crate) fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

pub(crate) fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

/// A stable group as a record: generation, protocol, leader, and each
/// member with its timeouts, metadata and assignment.
pub(crate) fn group_value(g: &Group) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(1);
    put_str(&mut b, g.protocol_type.as_deref().unwrap_or(""));
    put_str(&mut b, g.protocol.as_deref().unwrap_or(""));
    b.put_i32(g.generation);
    put_str(&mut b, g.leader.as_deref().unwrap_or(""));
    b.put_u32(g.members.len() as u32);
    for (id, m) in &g.members {
        put_str(&mut b, id);
        put_str(&mut b, m.instance_id.as_deref().unwrap_or(""));
        put_str(&mut b, &m.client_id);
        b.put_u32(m.session_timeout.as_millis() as u32);
        b.put_u32(m.rebalance_timeout.as_millis() as u32);
        let meta = m
            .protocols
            .iter()
            .find(|(n, _)| Some(n) == g.protocol.as_ref())
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        put_bytes(&mut b, &meta);
        put_bytes(&mut b, &m.assignment);
    }
    b.freeze()
}

/// A group rebuilt from its record: Stable at its generation; members must
/// heartbeat within their session timeout from now.
pub(crate) fn parse_group(mut v: Bytes) -> Option<Group> {
    if v.remaining() < 2 || v.get_u16() != 1 {
        return None;
    }
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let protocol_type = non_empty(get_str(&mut v)?);
    let protocol = non_empty(get_str(&mut v)?);
    if v.remaining() < 4 {
        return None;
    }
    let generation = v.get_i32();
    let leader = non_empty(get_str(&mut v)?);
    if v.remaining() < 4 {
        return None;
    }
    let n = v.get_u32();
    let mut g = Group::new();
    g.protocol_type = protocol_type;
    g.protocol = protocol.clone();
    g.generation = generation;
    g.leader = leader;
    let now = Instant::now();
    for _ in 0..n {
        let id = get_str(&mut v)?;
        let instance_id = non_empty(get_str(&mut v)?);
        let client_id = get_str(&mut v)?;
        if v.remaining() < 8 {
            return None;
        }
        let session_timeout = Duration::from_millis(v.get_u32() as u64);
        let rebalance_timeout = Duration::from_millis(v.get_u32() as u64);
        let meta = get_bytes(&mut v)?;
        let assignment = get_bytes(&mut v)?;
        if let Some(i) = &instance_id {
            g.statics.insert(i.clone(), id.clone());
        }
        g.members.insert(
            id,
            Member {
                instance_id,
                client_id,
                session_timeout,
                rebalance_timeout,
                protocols: vec![(protocol.clone().unwrap_or_default(), meta)],
                assignment,
                last_seen: now,
                join_waiter: None,
                sync_waiter: None,
            },
        );
    }
    g.state = if g.members.is_empty() {
        GroupState::Empty
    } else {
        GroupState::Stable
    };
    Some(g)
}

pub(crate) fn parse_group_key(mut k: Bytes) -> Option<String> {
    if k.remaining() < 2 || k.get_u16() != 2 {
        return None;
    }
    get_str(&mut k)
}

pub(crate) fn parse_key(mut k: Bytes) -> Option<(String, String, i32)> {
    if k.remaining() < 2 || k.get_u16() != 1 {
        return None;
    }
    let g = get_str(&mut k)?;
    let t = get_str(&mut k)?;
    (k.remaining() >= 4).then(|| (g, t, k.get_i32()))
}

pub(crate) fn parse_value(mut v: Bytes) -> Option<Committed> {
    if v.remaining() < 2 + 8 + 4 + 8 + 4 || v.get_u16() != 1 {
        return None;
    }
    let offset = v.get_i64();
    let leader_epoch = v.get_i32();
    let commit_ms = v.get_i64();
    let n = v.get_i32();
    let metadata = if n < 0 {
        None
    } else {
        let n = n as usize;
        if v.remaining() < n {
            return None;
        }
        Some(String::from_utf8(v.split_to(n).to_vec()).ok()?)
    };
    Some(Committed {
        offset,
        leader_epoch,
        metadata,
        commit_ms,
    })
}

/// Append records to the offsets partition and wait until they are durable.
pub(crate) async fn append(
    handle: &PartitionHandle,
    records: &[(Bytes, Option<Bytes>)],
) -> Result<i64, ResponseError> {
    let now = floe_common::wall_ms();
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now,
            key: Some(k.clone()),
            value: v.clone(),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &recs,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|_| ResponseError::UnknownServerError)?;
    let batch = buf.freeze();
    let headers =
        validate_for_produce(&batch, usize::MAX).map_err(|_| ResponseError::UnknownServerError)?;
    let rx = handle
        .submit(batch, headers)
        .await
        .map_err(|_| ResponseError::NotCoordinator)?;
    match rx.await {
        Ok(Ok(a)) => Ok(a.base_offset),
        Ok(Err(e)) => Err(match e.code() {
            ResponseError::NotLeaderOrFollower => ResponseError::NotCoordinator,
            _ => ResponseError::CoordinatorNotAvailable,
        }),
        Err(_) => Err(ResponseError::NotCoordinator),
    }
}

/// Every record of an internal partition from its log start to its high
/// watermark, in order, as (key, value): what a coordinator replays.
pub(crate) async fn read_records(
    handle: &PartitionHandle,
    mut each: impl FnMut(Option<Bytes>, Option<Bytes>),
) -> Result<(), ResponseError> {
    let (start, hw, _) = handle.log.offsets();
    let mut next = start;
    while next < hw {
        let read = handle
            .log
            .read(next, 4 << 20, true)
            .await
            .map_err(|_| ResponseError::CoordinatorLoadInProgress)?;
        let data = read.records.clone();
        if data.is_empty() {
            break;
        }
        let sets = floe_protocol::records::decode_all(&data)
            .map_err(|_| ResponseError::CoordinatorLoadInProgress)?;
        let before = next;
        next = next.max(read.next_offset);
        for set in sets {
            for r in set.records {
                each(r.key, r.value);
            }
        }
        if next == before {
            break;
        }
    }
    Ok(())
}

/// Replay an offsets partition from its start to its high watermark.
pub(crate) async fn load(handle: &PartitionHandle) -> Result<ShardState, ResponseError> {
    let mut st = ShardState::default();
    read_records(handle, |key, value| {
        let r = Rec { key, value };
        apply(&mut st, r);
    })
    .await?;
    Ok(st)
}

/// A record as `apply` reads it.
struct Rec {
    key: Option<Bytes>,
    value: Option<Bytes>,
}

/// One record of the offsets log, replayed into `st`.
fn apply(st: &mut ShardState, r: Rec) {
    if let Some(g) = r.key.clone().and_then(parse_consumer_key) {
        match r
            .value
            .clone()
            .and_then(|v| ConsumerGroup::decode(v, Instant::now()))
        {
            Some(group) => st.consumer.insert(g, group),
            None => st.consumer.remove(&g),
        };
        return;
    }
    if let Some((pid, g, t, p)) = r.key.clone().and_then(parse_pending_key) {
        match r.value.clone().and_then(parse_value) {
            Some(c) => {
                st.pending
                    .entry(pid)
                    .or_default()
                    .entry(g)
                    .or_default()
                    .insert((t, p), c);
            }
            None => {
                if let Some(groups) = st.pending.get_mut(&pid) {
                    if let Some(m) = groups.get_mut(&g) {
                        m.remove(&(t, p));
                        if m.is_empty() {
                            groups.remove(&g);
                        }
                    }
                    if groups.is_empty() {
                        st.pending.remove(&pid);
                    }
                }
            }
        }
        return;
    }
    if let Some(g) = r.key.clone().and_then(parse_group_key) {
        match r.value.clone().and_then(parse_group) {
            Some(group) => st.groups.insert(g, group),
            None => st.groups.remove(&g),
        };
        return;
    }
    let Some((g, t, p)) = r.key.clone().and_then(parse_key) else {
        return;
    };
    match r.value.clone() {
        Some(v) => {
            if let Some(c) = parse_value(v) {
                st.offsets.entry(g).or_default().insert((t, p), c);
            }
        }
        None => {
            if let Some(m) = st.offsets.get_mut(&g) {
                m.remove(&(t, p));
                if m.is_empty() {
                    st.offsets.remove(&g);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_partition_matches_kafka() {
        use floe_protocol::rules::partition_for;
        // Java: "my-group".hashCode() = -1906497762; abs % 50 = 12.
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(partition_for("", 50), 0);
        for g in ["a", "group-1", "ümlaut", "x".repeat(300).as_str()] {
            let p = partition_for(g, 16);
            assert!((0..16).contains(&p));
        }
    }

    #[test]
    fn group_records_round_trip() {
        let mut g = Group::new();
        g.protocol_type = Some("consumer".into());
        g.protocol = Some("range".into());
        g.generation = 7;
        g.leader = Some("m1".into());
        for (id, inst) in [("m1", None), ("m2", Some("i2".to_string()))] {
            g.members.insert(
                id.into(),
                Member {
                    instance_id: inst,
                    client_id: "c".into(),
                    session_timeout: Duration::from_secs(10),
                    rebalance_timeout: Duration::from_secs(30),
                    protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
                    assignment: Bytes::from(id.as_bytes().to_vec()),
                    last_seen: Instant::now(),
                    join_waiter: None,
                    sync_waiter: None,
                },
            );
        }
        let back = parse_group(group_value(&g)).unwrap();
        assert_eq!(back.state, GroupState::Stable);
        assert_eq!(back.generation, 7);
        assert_eq!(back.leader.as_deref(), Some("m1"));
        assert_eq!(back.protocol.as_deref(), Some("range"));
        assert_eq!(back.statics.get("i2").map(String::as_str), Some("m2"));
        let m2 = &back.members["m2"];
        assert_eq!(m2.assignment, Bytes::from_static(b"m2"));
        assert_eq!(m2.session_timeout, Duration::from_secs(10));
        assert_eq!(m2.protocols[0].1, Bytes::from_static(b"meta"));
        assert_eq!(parse_group_key(group_key("cg")), Some("cg".into()));
        assert_eq!(
            parse_key(group_key("cg")),
            None,
            "offset and group keys differ"
        );
        assert!(parse_group(Bytes::from_static(b"\x00\x01")).is_none());
    }

    #[test]
    fn offset_records_round_trip() {
        let c = Committed {
            offset: 42,
            leader_epoch: 3,
            metadata: Some("meta".into()),
            commit_ms: 1_700_000_000_000,
        };
        assert_eq!(
            parse_key(offset_key("g", "t", 7)),
            Some(("g".into(), "t".into(), 7))
        );
        assert_eq!(parse_value(offset_value(&c)), Some(c));
        assert_eq!(parse_value(Bytes::from_static(b"\x00\x01short")), None);
    }
}
