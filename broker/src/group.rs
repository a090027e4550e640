//! Consumer groups (Kafka's classic group protocol): which broker
//! coordinates a group (the owner of the group's partition of the internal
//! `__consumer_offsets` topic), the group state machine (join, sync,
//! heartbeat, leave, session and rebalance timeouts, static membership), and
//! committed offsets, stored as records in that partition and rebuilt from
//! it when the partition moves to another broker. Groups of the consumer
//! group protocol (KIP-848) live beside the classic ones, their state
//! machine in `consumer_group.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_common::{PartitionId, Uuid};
use floe_protocol::batch::validate_for_produce;
use floe_protocol::ResponseError;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::oneshot;

use crate::consumer_group::{ConsumerGroup, Heartbeat, HeartbeatAnswer, Timing, TopicMeta};
use crate::node::Node;
use crate::partition::{PartitionHandle, PartitionState};

pub use floe_protocol::rules::{partition_for, OFFSETS_TOPIC};

/// Largest metadata string of a committed offset (offset.metadata.max.bytes).
const MAX_OFFSET_METADATA: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// What a join waits for: the round's outcome for this member.
#[derive(Debug, Clone, Default)]
pub struct JoinOutcome {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// (member id, instance id, metadata): for the leader only.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// A static leader rejoined a stable group: it need not assign
    /// (JoinGroup v9+, KIP-814).
    pub skip_assignment: bool,
}

#[derive(Debug, Clone, Default)]
pub struct SyncOutcome {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member is first given an id to come back with.
    pub require_known_member_id: bool,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

struct Group {
    state: GroupState,
    protocol_type: Option<String>,
    protocol: Option<String>,
    generation: i32,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// group.instance.id → member id.
    statics: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pending: HashSet<String>,
    /// The join phase ends at this instant even if members are missing.
    rebalance_deadline: Option<Instant>,
    /// ...and not before this one (the initial delay of a new group).
    not_before: Option<Instant>,
}

impl Group {
    /// Every member with its metadata for the chosen protocol: what the
    /// leader assigns from.
    fn member_metadata(&self) -> Vec<(String, Option<String>, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == self.protocol.as_ref())
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (id.clone(), m.instance_id.clone(), meta)
            })
            .collect()
    }

    fn new() -> Self {
        Self {
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            statics: HashMap::new(),
            pending: HashSet::new(),
            rebalance_deadline: None,
            not_before: None,
        }
    }

    /// Enter PreparingRebalance (members must rejoin).
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == GroupState::CompletingRebalance {
            // Members waiting for their assignment must rejoin.
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncOutcome {
                        error: Some(ResponseError::RebalanceInProgress),
                        ..Default::default()
                    });
                }
            }
        }
        if self.state != GroupState::PreparingRebalance {
            let longest = self
                .members
                .values()
                .map(|m| m.rebalance_timeout)
                .max()
                .unwrap_or(Duration::from_secs(60));
            self.rebalance_deadline = Some(now + longest);
            self.not_before = (self.state == GroupState::Empty).then(|| now + initial_delay);
            self.state = GroupState::PreparingRebalance;
        }
    }

    /// End the join phase if everyone is in (or time is up).
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_in = self.members.values().all(|m| m.join_waiter.is_some());
        let delayed = self.not_before.is_some_and(|t| now < t);
        let timed_out = self.rebalance_deadline.is_some_and(|t| now >= t);
        if (all_in && !delayed && !self.members.is_empty()) || timed_out {
            self.complete_join();
        }
    }

    fn complete_join(&mut self) {
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.rebalance_deadline = None;
        self.not_before = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        // The protocol every member supports that most members prefer.
        let common: Vec<String> = self
            .members
            .values()
            .next()
            .map(|m| m.protocols.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        let common: Vec<String> = common
            .into_iter()
            .filter(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == p))
            })
            .collect();
        let mut votes: HashMap<&str, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| common.contains(n)) {
                *votes.entry(n.as_str()).or_default() += 1;
            }
        }
        let protocol = common
            .iter()
            .max_by_key(|p| {
                (
                    votes.get(p.as_str()).copied().unwrap_or(0),
                    std::cmp::Reverse(common.iter().position(|c| c == *p)),
                )
            })
            .cloned();
        self.protocol = protocol.clone();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        let leader = self.leader.clone().unwrap_or_default();
        self.state = GroupState::CompletingRebalance;
        let all = self.member_metadata();
        for (id, m) in self.members.iter_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinOutcome {
                    error: None,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                    skip_assignment: false,
                });
            }
        }
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            if let Some(i) = &m.instance_id {
                if self.statics.get(i).is_some_and(|x| x == id) {
                    self.statics.remove(i);
                }
            }
            if let Some(w) = m.join_waiter {
                let _ = w.send(JoinOutcome {
                    error: Some(ResponseError::UnknownMemberId),
                    ..Default::default()
                });
            }
            if let Some(w) = m.sync_waiter {
                let _ = w.send(SyncOutcome {
                    error: Some(ResponseError::UnknownMemberId),
                    ..Default::default()
                });
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Check a member's identity for heartbeat, sync, commit and leave.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(i) = instance_id {
            match self.statics.get(i) {
                Some(known) if known != member_id => return Err(ResponseError::FencedInstanceId),
                _ => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

#[derive(Default)]
struct ShardState {
    groups: HashMap<String, Group>,
    /// Groups of the consumer group protocol.
    consumer: HashMap<String, ConsumerGroup>,
    /// group → (topic, partition) → committed.
    offsets: HashMap<String, BTreeMap<(String, i32), Committed>>,
    /// Records in the partition from its log start (what a replay reads).
    records: u64,
}

impl ShardState {
    fn live_offsets(&self) -> u64 {
        self.offsets.values().map(|m| m.len() as u64).sum()
    }
}

/// Write every live offset again and move the log start past the older
/// records, so that a new coordinator's replay stays short.
async fn compact(handle: &PartitionHandle, st: &mut ShardState, after: u64) {
    if st.records < after.max(2 * st.live_offsets()) {
        return;
    }
    let mut records: Vec<(Bytes, Option<Bytes>)> = st
        .offsets
        .iter()
        .flat_map(|(g, m)| {
            m.iter()
                .map(move |((t, p), c)| (offset_key(g, t, *p), Some(offset_value(c))))
        })
        .collect();
    records.extend(
        st.groups
            .iter()
            .filter(|(_, g)| g.state == GroupState::Stable)
            .map(|(name, g)| (group_key(name), Some(group_value(g)))),
    );
    records.extend(
        st.consumer
            .iter()
            .map(|(name, g)| (consumer_key(name), Some(g.encode()))),
    );
    let start = if records.is_empty() {
        handle.log.offsets().1
    } else {
        match append(handle, &records).await {
            Ok(base) => base,
            Err(e) => {
                tracing::warn!(partition = %handle.id, error = ?e, "compacting the offsets partition failed");
                return;
            }
        }
    };
    match handle.delete_records(start).await {
        Ok(_) => {
            tracing::info!(partition = %handle.id, live = records.len(), replaced = st.records, "compacted the offsets partition");
            st.records = records.len() as u64;
        }
        Err(e) => {
            tracing::warn!(partition = %handle.id, error = ?e, "moving the offsets log start failed")
        }
    }
}

/// Tombstones for the offsets of member-less groups older than `retention_ms`.
async fn expire_offsets(
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
    st.records += tombstones.len() as u64;
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

/// The groups of one partition of the offsets topic, while this broker
/// writes it (at one epoch).
struct Shard {
    handle: PartitionHandle,
    state: tokio::sync::Mutex<Option<ShardState>>,
}

/// Every group this broker coordinates.
#[derive(Default)]
pub struct Groups {
    shards: Mutex<HashMap<i32, Arc<Shard>>>,
}

type Resolved = Result<(Arc<Shard>, i32), ResponseError>;

impl Groups {
    /// The shard for `group`, loaded (its log replayed) if needed:
    /// NOT_COORDINATOR if another broker writes the group's partition.
    async fn shard(&self, node: &Arc<Node>, group: &str) -> Resolved {
        if group.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let Some(topic) = node.topic(OFFSETS_TOPIC) else {
            return Err(ResponseError::CoordinatorNotAvailable);
        };
        let p = partition_for(group, topic.partitions);
        let Some(handle) = node.partition(PartitionId::new(topic.id, p)) else {
            return Err(ResponseError::NotCoordinator);
        };
        let shard = {
            let mut shards = self.shards.lock().unwrap();
            match shards.get(&p) {
                Some(s) if s.handle.epoch == handle.epoch && s.handle.id == handle.id => s.clone(),
                _ => {
                    let s = Arc::new(Shard {
                        handle: handle.clone(),
                        state: tokio::sync::Mutex::new(None),
                    });
                    shards.insert(p, s.clone());
                    let ticker = Arc::downgrade(&s);
                    let delay = Duration::from_millis(node.config.group_initial_rebalance_delay_ms);
                    let session =
                        Duration::from_millis(node.config.group_consumer_session_timeout_ms);
                    tokio::spawn(tick(
                        ticker,
                        delay,
                        session,
                        node.config.offsets_retention_ms,
                    ));
                    s
                }
            }
        };
        {
            let mut st = shard.state.lock().await;
            if st.is_none() {
                let started = Instant::now();
                let loaded = load(&shard.handle).await?;
                tracing::info!(partition = %shard.handle.id, epoch = shard.handle.epoch,
                    groups = loaded.offsets.len(), took_ms = started.elapsed().as_millis() as u64,
                    "loaded group offsets");
                *st = Some(loaded);
            }
        }
        Ok((shard, p))
    }

    pub async fn join(&self, node: &Arc<Node>, req: JoinRequest) -> JoinOutcome {
        let fail = |e: ResponseError, member_id: String| JoinOutcome {
            error: Some(e),
            member_id,
            generation: -1,
            ..Default::default()
        };
        if req.session_timeout_ms < node.config.group_min_session_timeout_ms
            || req.session_timeout_ms > node.config.group_max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout, req.member_id);
        }
        if req.protocols.is_empty() || req.protocol_type.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol, req.member_id);
        }
        let (shard, _) = match self.shard(node, &req.group).await {
            Ok(s) => s,
            Err(e) => return fail(e, req.member_id),
        };
        let now = Instant::now();
        let delay = Duration::from_millis(node.config.group_initial_rebalance_delay_ms);
        let rx = {
            let mut guard = shard.state.lock().await;
            let st = guard.as_mut().expect("loaded");
            if let Some(cg) = st.consumer.get(&req.group) {
                if !cg.is_empty() {
                    // Members of the consumer protocol are in it: a classic
                    // member cannot join them (no online downgrade).
                    return fail(ResponseError::InconsistentGroupProtocol, req.member_id);
                }
                // An empty consumer group becomes a classic one again; its
                // offsets stay.
                if let Err(e) = append(&shard.handle, &[(consumer_key(&req.group), None)]).await {
                    return fail(e, req.member_id);
                }
                st.records += 1;
                st.consumer.remove(&req.group);
                tracing::info!(group = %req.group, "empty consumer group converted to a classic group");
            }
            let g = st
                .groups
                .entry(req.group.clone())
                .or_insert_with(Group::new);
            if !g.members.is_empty() {
                if g.protocol_type.as_deref() != Some(req.protocol_type.as_str()) {
                    return fail(ResponseError::InconsistentGroupProtocol, req.member_id);
                }
                let supported = g.members.values().all(|m| {
                    m.protocols
                        .iter()
                        .any(|(n, _)| req.protocols.iter().any(|(r, _)| r == n))
                });
                let only_self = g.members.len() == 1 && g.members.contains_key(&req.member_id);
                if !(supported || only_self) {
                    return fail(ResponseError::InconsistentGroupProtocol, req.member_id);
                }
            }
            let mut member_id = req.member_id.clone();
            if member_id.is_empty() {
                member_id = format!("{}-{}", req.client_id, Uuid::new_v4());
                if let Some(i) = &req.instance_id {
                    // A static member coming back replaces its old self. In
                    // a stable group, with the same protocols, it takes over
                    // its assignment without a rebalance (KIP-345), the
                    // leader too: it gets the members to keep assigning from
                    // and, from JoinGroup v9, `skip_assignment` (KIP-814);
                    // an older leader's SyncGroup in the stable group gets
                    // its current assignment back, its new plan ignored, as
                    // Kafka does. The old member id is fenced.
                    if let Some(old) = g.statics.get(i).cloned() {
                        let same = g
                            .members
                            .get(&old)
                            .is_some_and(|m| m.protocols == req.protocols);
                        let leader = g.leader.as_deref() == Some(old.as_str());
                        if g.state == GroupState::Stable && same {
                            let mut m = g.members.remove(&old).expect("known static member");
                            m.last_seen = now;
                            m.session_timeout =
                                Duration::from_millis(req.session_timeout_ms.max(0) as u64);
                            if let Some(w) = m.join_waiter.take() {
                                let _ = w.send(JoinOutcome {
                                    error: Some(ResponseError::FencedInstanceId),
                                    ..Default::default()
                                });
                            }
                            g.members.insert(member_id.clone(), m);
                            g.statics.insert(i.clone(), member_id.clone());
                            if leader {
                                g.leader = Some(member_id.clone());
                            }
                            // Written down, so that a new coordinator knows
                            // the member by its new id.
                            let record = [(group_key(&req.group), Some(group_value(g)))];
                            let recorded = append(&shard.handle, &record).await;
                            if let Err(e) = &recorded {
                                tracing::warn!(group = %req.group, error = %e, "recording a static member's new id failed; a coordinator move will have it rejoin");
                            }
                            tracing::info!(group = %req.group, instance = %i, member = %member_id,
                                leader, "static member rejoined without a rebalance");
                            let out = JoinOutcome {
                                error: None,
                                generation: g.generation,
                                protocol_type: g.protocol_type.clone(),
                                protocol: g.protocol.clone(),
                                leader: g.leader.clone().unwrap_or_default(),
                                member_id,
                                members: if leader {
                                    g.member_metadata()
                                } else {
                                    Vec::new()
                                },
                                skip_assignment: leader,
                            };
                            if recorded.is_ok() {
                                st.records += 1;
                            }
                            return out;
                        }
                        g.remove_member(&old);
                    }
                    g.statics.insert(i.clone(), member_id.clone());
                } else if req.require_known_member_id {
                    g.pending.insert(member_id.clone());
                    return JoinOutcome {
                        error: Some(ResponseError::MemberIdRequired),
                        member_id,
                        generation: -1,
                        ..Default::default()
                    };
                }
            } else {
                if let Some(i) = &req.instance_id {
                    if g.statics.get(i).is_some_and(|known| *known != member_id) {
                        return fail(ResponseError::FencedInstanceId, member_id);
                    }
                }
                if !g.members.contains_key(&member_id) && !g.pending.remove(&member_id) {
                    return fail(ResponseError::UnknownMemberId, member_id);
                }
                if let Some(i) = &req.instance_id {
                    g.statics.insert(i.clone(), member_id.clone());
                }
            }
            let (tx, rx) = oneshot::channel();
            let m = g
                .members
                .entry(member_id.clone())
                .or_insert_with(|| Member {
                    instance_id: req.instance_id.clone(),
                    client_id: req.client_id.clone(),
                    session_timeout: Duration::ZERO,
                    rebalance_timeout: Duration::ZERO,
                    protocols: Vec::new(),
                    assignment: Bytes::new(),
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                });
            m.session_timeout = Duration::from_millis(req.session_timeout_ms.max(0) as u64);
            m.rebalance_timeout = Duration::from_millis(
                req.rebalance_timeout_ms.max(req.session_timeout_ms).max(0) as u64,
            );
            m.protocols = req.protocols.clone();
            m.last_seen = now;
            if let Some(old) = m.join_waiter.replace(tx) {
                let _ = old.send(JoinOutcome {
                    error: Some(ResponseError::UnknownMemberId),
                    ..Default::default()
                });
            }
            g.protocol_type = Some(req.protocol_type.clone());
            g.prepare_rebalance(now, delay);
            g.maybe_complete_join(now);
            rx
        };
        match rx.await {
            Ok(o) => o,
            Err(_) => fail(ResponseError::NotCoordinator, req.member_id),
        }
    }

    pub async fn sync(
        &self,
        node: &Arc<Node>,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncOutcome {
        let fail = |e: ResponseError| SyncOutcome {
            error: Some(e),
            ..Default::default()
        };
        let (shard, _) = match self.shard(node, group).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let rx = {
            let mut guard = shard.state.lock().await;
            let st = guard.as_mut().expect("loaded");
            let Some(g) = st.groups.get_mut(group) else {
                return fail(ResponseError::UnknownMemberId);
            };
            if let Err(e) = g.check_member(member_id, instance_id) {
                return fail(e);
            }
            if generation != g.generation {
                return fail(ResponseError::IllegalGeneration);
            }
            match g.state {
                GroupState::Empty => return fail(ResponseError::UnknownMemberId),
                GroupState::PreparingRebalance => return fail(ResponseError::RebalanceInProgress),
                GroupState::Stable => {
                    let m = g.members.get_mut(member_id).expect("checked");
                    m.last_seen = Instant::now();
                    return SyncOutcome {
                        error: None,
                        protocol_type: g.protocol_type.clone(),
                        protocol: g.protocol.clone(),
                        assignment: m.assignment.clone(),
                    };
                }
                GroupState::CompletingRebalance => {}
            }
            let (tx, rx) = oneshot::channel();
            let m = g.members.get_mut(member_id).expect("checked");
            m.last_seen = Instant::now();
            m.sync_waiter = Some(tx);
            if g.leader.as_deref() == Some(member_id) {
                let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                for (id, m) in g.members.iter_mut() {
                    m.assignment = given.remove(id).unwrap_or_default();
                }
                // The group is written down before anyone learns its
                // assignment, so a new coordinator continues this generation.
                let record = [(group_key(group), Some(group_value(g)))];
                if let Err(e) = append(&shard.handle, &record).await {
                    for m in g.members.values_mut() {
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncOutcome {
                                error: Some(e),
                                ..Default::default()
                            });
                        }
                    }
                    g.prepare_rebalance(Instant::now(), Duration::ZERO);
                    return rx.await.unwrap_or_else(|_| fail(e));
                }
                st.records += 1;
                g.state = GroupState::Stable;
                tracing::info!(
                    group,
                    generation = g.generation,
                    members = g.members.len(),
                    protocol = g.protocol.as_deref().unwrap_or(""),
                    "group stable"
                );
                let (pt, p) = (g.protocol_type.clone(), g.protocol.clone());
                for m in g.members.values_mut() {
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(SyncOutcome {
                            error: None,
                            protocol_type: pt.clone(),
                            protocol: p.clone(),
                            assignment: m.assignment.clone(),
                        });
                    }
                }
            }
            rx
        };
        rx.await
            .unwrap_or_else(|_| fail(ResponseError::NotCoordinator))
    }

    pub async fn heartbeat(
        &self,
        node: &Arc<Node>,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        let (shard, _) = match self.shard(node, group).await {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        let Some(g) = st.groups.get_mut(group) else {
            return Some(ResponseError::UnknownMemberId);
        };
        if let Err(e) = g.check_member(member_id, instance_id) {
            return Some(e);
        }
        g.members.get_mut(member_id).expect("checked").last_seen = Instant::now();
        if generation != g.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        match g.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            _ => None,
        }
    }

    /// Remove members; the error of each (member id, instance id).
    pub async fn leave(
        &self,
        node: &Arc<Node>,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let (shard, _) = self.shard(node, group).await?;
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        let Some(g) = st.groups.get_mut(group) else {
            return Ok(members
                .iter()
                .map(|_| Some(ResponseError::UnknownMemberId))
                .collect());
        };
        let mut out = Vec::new();
        let mut left = 0;
        for (id, instance) in members {
            // A static member may leave by instance id alone.
            let id = match (&instance, id.is_empty()) {
                (Some(i), true) => g.statics.get(i).cloned().unwrap_or_default(),
                _ => id,
            };
            match g.check_member(&id, instance.as_deref()) {
                Ok(()) => {
                    g.remove_member(&id);
                    left += 1;
                    out.push(None);
                }
                Err(e) => out.push(Some(e)),
            }
        }
        if left > 0 {
            let now = Instant::now();
            match g.state {
                GroupState::Stable | GroupState::CompletingRebalance => {
                    g.prepare_rebalance(now, Duration::ZERO);
                    g.not_before = None;
                }
                _ => {}
            }
            if g.members.is_empty() {
                g.state = GroupState::PreparingRebalance;
                g.complete_join();
                // Nobody left: the next coordinator must not restore members.
                if append(&shard.handle, &[(group_key(group), None)])
                    .await
                    .is_ok()
                {
                    st.records += 1;
                }
            } else {
                g.maybe_complete_join(now);
            }
        }
        Ok(out)
    }

    /// Commit offsets: one result per (topic, partition) in request order.
    #[allow(clippy::type_complexity)]
    pub async fn commit(
        &self,
        node: &Arc<Node>,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Vec<Option<ResponseError>> {
        let all = |e: ResponseError| offsets.iter().map(|_| Some(e)).collect::<Vec<_>>();
        let (shard, _) = match self.shard(node, group).await {
            Ok(s) => s,
            Err(e) => return all(e),
        };
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        if let Some(cg) = st.consumer.get(group) {
            // A consumer-protocol group: the member's epoch is the
            // generation (OffsetCommit v9+).
            if generation >= 0 || !member_id.is_empty() {
                let Some(m) = cg.members.get(member_id) else {
                    return all(ResponseError::UnknownMemberId);
                };
                if generation != m.epoch {
                    return all(ResponseError::StaleMemberEpoch);
                }
            } else if !cg.is_empty() {
                return all(ResponseError::UnknownMemberId);
            }
        } else if let Some(g) = st.groups.get_mut(group) {
            if generation >= 0 || !member_id.is_empty() {
                if let Err(e) = g.check_member(member_id, instance_id) {
                    return all(e);
                }
                if generation != g.generation {
                    return all(ResponseError::IllegalGeneration);
                }
                if g.state == GroupState::CompletingRebalance {
                    return all(ResponseError::RebalanceInProgress);
                }
                g.members.get_mut(member_id).expect("checked").last_seen = Instant::now();
            } else if !g.members.is_empty() {
                // A simple commit to a group with live members.
                return all(ResponseError::UnknownMemberId);
            }
        } else if generation >= 0 {
            return all(ResponseError::IllegalGeneration);
        }
        let mut results = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        for (topic, partition, c) in &offsets {
            let known = node
                .topic(topic)
                .is_some_and(|t| *partition >= 0 && *partition < t.partitions);
            if !known {
                results.push(Some(ResponseError::UnknownTopicOrPartition));
            } else if c
                .metadata
                .as_ref()
                .is_some_and(|m| m.len() > MAX_OFFSET_METADATA)
            {
                results.push(Some(ResponseError::OffsetMetadataTooLarge));
            } else {
                results.push(None);
                records.push((offset_key(group, topic, *partition), Some(offset_value(c))));
            }
        }
        if records.is_empty() {
            return results;
        }
        if let Err(e) = append(&shard.handle, &records).await {
            return all(e);
        }
        st.records += records.len() as u64;
        let map = st.offsets.entry(group.to_string()).or_default();
        for ((topic, partition, c), r) in offsets.into_iter().zip(&results) {
            if r.is_none() {
                map.insert((topic, partition), c);
            }
        }
        compact(&shard.handle, st, node.config.offsets_compact_after_records).await;
        results
    }

    /// Committed offsets of `group` (all of them with `None`).
    pub async fn fetch_offsets(
        &self,
        node: &Arc<Node>,
        group: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, Vec<(i32, Option<Committed>)>)>, ResponseError> {
        let (shard, _) = self.shard(node, group).await?;
        let guard = shard.state.lock().await;
        let st = guard.as_ref().expect("loaded");
        let map = st.offsets.get(group);
        Ok(match wanted {
            Some(w) => w
                .into_iter()
                .map(|(t, ps)| {
                    let got = ps
                        .into_iter()
                        .map(|p| (p, map.and_then(|m| m.get(&(t.clone(), p))).cloned()))
                        .collect();
                    (t, got)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, Option<Committed>)>> = BTreeMap::new();
                for ((t, p), c) in map.into_iter().flatten() {
                    by_topic
                        .entry(t.clone())
                        .or_default()
                        .push((*p, Some(c.clone())));
                }
                by_topic.into_iter().collect()
            }
        })
    }

    /// Every group this broker coordinates.
    pub async fn list(&self) -> Vec<GroupListing> {
        let shards: Vec<Arc<Shard>> = self.shards.lock().unwrap().values().cloned().collect();
        let mut out = Vec::new();
        for s in shards {
            if s.handle.state() != PartitionState::Writing {
                continue;
            }
            let guard = s.state.lock().await;
            let Some(st) = guard.as_ref() else { continue };
            let mut names: HashSet<&String> = st.groups.keys().collect();
            names.extend(st.offsets.keys());
            names.extend(st.consumer.keys());
            for name in names {
                let listing = if let Some(g) = st.consumer.get(name) {
                    GroupListing {
                        name: name.clone(),
                        protocol_type: "consumer".to_string(),
                        state: g.state().name(),
                        group_type: "consumer",
                    }
                } else {
                    let (pt, state) = match st.groups.get(name) {
                        Some(g) => (g.protocol_type.clone().unwrap_or_default(), g.state),
                        None => ("consumer".to_string(), GroupState::Empty),
                    };
                    GroupListing {
                        name: name.clone(),
                        protocol_type: pt,
                        state: state.name(),
                        group_type: "classic",
                    }
                };
                out.push(listing);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One ConsumerGroupHeartbeat: the group changes (and its record is
    /// durable) before the member learns anything.
    pub async fn consumer_heartbeat(
        &self,
        node: &Arc<Node>,
        group: &str,
        h: Heartbeat,
    ) -> Result<HeartbeatAnswer, ResponseError> {
        let (shard, _) = self.shard(node, group).await?;
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        let mut records = Vec::new();
        if let Some(classic) = st.groups.get(group) {
            if !classic.members.is_empty() {
                // Classic members are in it (no online upgrade yet).
                return Err(ResponseError::GroupIdNotFound);
            }
            // An empty classic group becomes a consumer group; its offsets
            // stay (the upgrade path of KIP-848).
            records.push((group_key(group), None));
        }
        let topics: Vec<TopicMeta> = node
            .topics()
            .into_iter()
            .map(|t| TopicMeta {
                id: t.id,
                name: t.name,
                partitions: t.partitions,
            })
            .collect();
        let before = st.consumer.get(group);
        let was = before.map(ConsumerGroup::encode);
        let mut g = before.cloned().unwrap_or_default();
        let timing = Timing {
            now: Instant::now(),
            session_timeout: Duration::from_millis(node.config.group_consumer_session_timeout_ms),
        };
        let answer = g.heartbeat(&h, &topics, timing, || Uuid::new_v4().to_string())?;
        let now = g.encode();
        if was.as_ref() != Some(&now) {
            records.push((consumer_key(group), Some(now)));
        }
        if !records.is_empty() {
            append(&shard.handle, &records).await?;
            st.records += records.len() as u64;
            if st.groups.remove(group).is_some() {
                tracing::info!(group, "empty classic group converted to a consumer group");
            }
        }
        if was.is_none() || g.epoch != st.consumer.get(group).map_or(-1, |o| o.epoch) {
            tracing::info!(
                group,
                epoch = g.epoch,
                members = g.members.len(),
                state = g.state().name(),
                "consumer group epoch"
            );
        }
        st.consumer.insert(group.to_string(), g);
        Ok(answer)
    }

    /// A consumer-protocol group as ConsumerGroupDescribe shows it.
    pub async fn consumer_describe(
        &self,
        node: &Arc<Node>,
        group: &str,
    ) -> Result<ConsumerGroup, ResponseError> {
        let (shard, _) = self.shard(node, group).await?;
        let guard = shard.state.lock().await;
        let st = guard.as_ref().expect("loaded");
        st.consumer
            .get(group)
            .cloned()
            .ok_or(ResponseError::GroupIdNotFound)
    }

    /// A group as DescribeGroups shows it.
    pub async fn describe(
        &self,
        node: &Arc<Node>,
        group: &str,
    ) -> Result<GroupView, ResponseError> {
        let (shard, _) = self.shard(node, group).await?;
        let guard = shard.state.lock().await;
        let st = guard.as_ref().expect("loaded");
        if st.consumer.contains_key(group) {
            // As in Kafka: DescribeGroups is for classic groups; a
            // consumer-protocol group is described by ConsumerGroupDescribe.
            return Err(ResponseError::GroupIdNotFound);
        }
        let Some(g) = st.groups.get(group) else {
            return Ok(GroupView {
                state: if st.offsets.contains_key(group) {
                    "Empty"
                } else {
                    "Dead"
                },
                ..Default::default()
            });
        };
        Ok(GroupView {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if g.state == GroupState::Stable {
                g.protocol.clone().unwrap_or_default()
            } else {
                String::new()
            },
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberView {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| Some(n) == g.protocol.as_ref())
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        })
    }

    /// Delete a group without members and its offsets.
    pub async fn delete(&self, node: &Arc<Node>, group: &str) -> Option<ResponseError> {
        let (shard, _) = match self.shard(node, group).await {
            Ok(s) => s,
            Err(e) => return Some(e),
        };
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        if st.groups.get(group).is_some_and(|g| !g.members.is_empty())
            || st.consumer.get(group).is_some_and(|g| !g.is_empty())
        {
            return Some(ResponseError::NonEmptyGroup);
        }
        let consumer = st.consumer.contains_key(group);
        let Some(offsets) = st.offsets.get(group) else {
            if consumer {
                if let Err(e) = append(&shard.handle, &[(consumer_key(group), None)]).await {
                    return Some(e);
                }
                st.records += 1;
                st.consumer.remove(group);
                return None;
            }
            return if st.groups.remove(group).is_some() {
                None
            } else {
                Some(ResponseError::GroupIdNotFound)
            };
        };
        let mut tombstones: Vec<(Bytes, Option<Bytes>)> = offsets
            .keys()
            .map(|(t, p)| (offset_key(group, t, *p), None))
            .collect();
        if consumer {
            tombstones.push((consumer_key(group), None));
        }
        if !tombstones.is_empty() {
            if let Err(e) = append(&shard.handle, &tombstones).await {
                return Some(e);
            }
            st.records += tombstones.len() as u64;
        }
        st.offsets.remove(group);
        st.groups.remove(group);
        st.consumer.remove(group);
        None
    }

    /// Delete some committed offsets of a group (OffsetDelete); per
    /// partition errors in the order given.
    pub async fn delete_offsets(
        &self,
        node: &Arc<Node>,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let (shard, _) = self.shard(node, group).await?;
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        if !st.offsets.contains_key(group)
            && !st.groups.contains_key(group)
            && !st.consumer.contains_key(group)
        {
            return Err(ResponseError::GroupIdNotFound);
        }
        let active = st.groups.get(group).is_some_and(|g| !g.members.is_empty())
            || st.consumer.get(group).is_some_and(|g| !g.is_empty());
        if active {
            return Err(ResponseError::NonEmptyGroup);
        }
        let tombstones: Vec<(Bytes, Option<Bytes>)> = partitions
            .iter()
            .map(|(t, p)| (offset_key(group, t, *p), None))
            .collect();
        if !tombstones.is_empty() {
            append(&shard.handle, &tombstones).await?;
            st.records += tombstones.len() as u64;
        }
        if let Some(m) = st.offsets.get_mut(group) {
            for (t, p) in &partitions {
                m.remove(&(t.clone(), *p));
            }
        }
        Ok(partitions.iter().map(|_| None).collect())
    }
}

/// A group as ListGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    pub name: String,
    pub protocol_type: String,
    pub state: &'static str,
    /// "classic" or "consumer" (ListGroups v5, KIP-848).
    pub group_type: &'static str,
}

#[derive(Default, Debug)]
pub struct GroupView {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberView>,
}

#[derive(Debug)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// Session expiry and rebalance deadlines of a shard's groups, until the
/// shard is dropped or its partition stops being written here.
async fn tick(
    shard: std::sync::Weak<Shard>,
    initial_delay: Duration,
    consumer_session: Duration,
    retention_ms: i64,
) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let retention_every = Duration::from_millis((retention_ms / 4).clamp(100, 60_000) as u64);
    let mut last_retention = Instant::now();
    loop {
        every.tick().await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.handle.state() != PartitionState::Writing {
            // Moved away: waiting members are told to find the coordinator.
            let mut guard = shard.state.lock().await;
            if let Some(st) = guard.as_mut() {
                for g in st.groups.values_mut() {
                    let ids: Vec<String> = g.members.keys().cloned().collect();
                    for id in ids {
                        let m = g.members.get_mut(&id).expect("listed");
                        if let Some(w) = m.join_waiter.take() {
                            let _ = w.send(JoinOutcome {
                                error: Some(ResponseError::NotCoordinator),
                                ..Default::default()
                            });
                        }
                        if let Some(w) = m.sync_waiter.take() {
                            let _ = w.send(SyncOutcome {
                                error: Some(ResponseError::NotCoordinator),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
            return;
        }
        let now = Instant::now();
        let mut guard = shard.state.lock().await;
        let Some(st) = guard.as_mut() else { continue };
        for (name, g) in st.groups.iter_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    // While a join is parked, the rebalance deadline rules.
                    m.join_waiter.is_none() && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                tracing::info!(group = %name, member = %id, "member session expired");
                g.remove_member(id);
            }
            if !expired.is_empty() {
                match g.state {
                    GroupState::Stable | GroupState::CompletingRebalance => {
                        g.prepare_rebalance(now, initial_delay);
                        g.not_before = None;
                    }
                    _ => {}
                }
                if g.members.is_empty() && g.state == GroupState::PreparingRebalance {
                    g.complete_join();
                }
            }
            g.maybe_complete_join(now);
        }
        expire_consumer_members(&shard.handle, st, now, consumer_session).await;
        if last_retention.elapsed() >= retention_every {
            last_retention = Instant::now();
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            expire_offsets(&shard.handle, st, retention_ms, now_ms).await;
        }
    }
}

/// Consumer-protocol members past their session or rebalance timeout are
/// removed, and the changed groups written down.
async fn expire_consumer_members(
    handle: &PartitionHandle,
    st: &mut ShardState,
    now: Instant,
    session_timeout: Duration,
) {
    let t = Timing {
        now,
        session_timeout,
    };
    let mut changed: Vec<(String, ConsumerGroup)> = Vec::new();
    for (name, g) in &st.consumer {
        if !g.has_expired(t) {
            continue;
        }
        let mut next = g.clone();
        let gone = next.expire(t);
        if !gone.is_empty() {
            for id in &gone {
                tracing::info!(group = %name, member = %id, epoch = next.epoch,
                    "consumer group member expired");
            }
            changed.push((name.clone(), next));
        }
    }
    if changed.is_empty() {
        return;
    }
    let records: Vec<(Bytes, Option<Bytes>)> = changed
        .iter()
        .map(|(n, g)| (consumer_key(n), Some(g.encode())))
        .collect();
    // Not written: the members stay until the next tick tries again.
    if append(handle, &records).await.is_ok() {
        st.records += records.len() as u64;
        for (n, g) in changed {
            st.consumer.insert(n, g);
        }
    }
}

/// Record key of a consumer-protocol group: version 3, group.
fn consumer_key(group: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(3);
    put_str(&mut b, group);
    b.freeze()
}

fn parse_consumer_key(mut k: Bytes) -> Option<String> {
    if k.remaining() < 2 || k.get_u16() != 3 {
        return None;
    }
    get_str(&mut k)
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

fn get_str(b: &mut Bytes) -> Option<String> {
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
fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(1);
    put_str(&mut b, group);
    put_str(&mut b, topic);
    b.put_i32(partition);
    b.freeze()
}

fn offset_value(c: &Committed) -> Bytes {
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

/// Record key of a group's membership: version 2, group.
fn group_key(group: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(2);
    put_str(&mut b, group);
    b.freeze()
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(v.len() as u32);
    b.put_slice(v);
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

/// A stable group as a record: generation, protocol, leader, and each
/// member with its timeouts, metadata and assignment.
fn group_value(g: &Group) -> Bytes {
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
fn parse_group(mut v: Bytes) -> Option<Group> {
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

fn parse_group_key(mut k: Bytes) -> Option<String> {
    if k.remaining() < 2 || k.get_u16() != 2 {
        return None;
    }
    get_str(&mut k)
}

fn parse_key(mut k: Bytes) -> Option<(String, String, i32)> {
    if k.remaining() < 2 || k.get_u16() != 1 {
        return None;
    }
    let g = get_str(&mut k)?;
    let t = get_str(&mut k)?;
    (k.remaining() >= 4).then(|| (g, t, k.get_i32()))
}

fn parse_value(mut v: Bytes) -> Option<Committed> {
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
async fn append(
    handle: &PartitionHandle,
    records: &[(Bytes, Option<Bytes>)],
) -> Result<i64, ResponseError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
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

/// Replay an offsets partition from its start to its high watermark.
async fn load(handle: &PartitionHandle) -> Result<ShardState, ResponseError> {
    let mut st = ShardState::default();
    let (start, hw, _) = handle.log.offsets();
    st.records = (hw - start).max(0) as u64;
    let mut next = start;
    while next < hw {
        let read = handle
            .log
            .read(next, 4 << 20, true)
            .await
            .map_err(|_| ResponseError::CoordinatorLoadInProgress)?;
        let mut data = read.records.clone();
        if data.is_empty() {
            break;
        }
        let sets = RecordBatchDecoder::decode_all(&mut data)
            .map_err(|_| ResponseError::CoordinatorLoadInProgress)?;
        let before = next;
        next = next.max(read.next_offset);
        for set in sets {
            for r in set.records {
                if let Some(g) = r.key.clone().and_then(parse_consumer_key) {
                    match r
                        .value
                        .clone()
                        .and_then(|v| ConsumerGroup::decode(v, Instant::now()))
                    {
                        Some(group) => st.consumer.insert(g, group),
                        None => st.consumer.remove(&g),
                    };
                    continue;
                }
                if let Some(g) = r.key.clone().and_then(parse_group_key) {
                    match r.value.clone().and_then(parse_group) {
                        Some(group) => st.groups.insert(g, group),
                        None => st.groups.remove(&g),
                    };
                    continue;
                }
                let Some((g, t, p)) = r.key.clone().and_then(parse_key) else {
                    continue;
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
        }
        if next == before {
            break;
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_partition_matches_kafka() {
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
