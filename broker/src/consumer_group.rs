//! Consumer groups of the consumer group protocol (KIP-848,
//! `group.protocol=consumer`): the coordinator-side state machine behind
//! ConsumerGroupHeartbeat — group and member epochs, the target assignment
//! computed by a server-side assignor, incremental revocation before
//! assignment, static members, regex subscriptions — and the group as one
//! record of the offsets topic, so that a new coordinator continues it.
//!
//! The state machine is pure: `group.rs` feeds it requests, the topic
//! catalog and the clock, and writes the encoded group to the offsets
//! partition before anyone learns of a change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_common::Uuid;
use floe_protocol::ResponseError;

use crate::assignor::{assign, Assignor, MemberSpec};

/// Topic → partitions.
pub type Partitions = BTreeMap<Uuid, BTreeSet<i32>>;

/// The member epoch a member sends to join.
pub const JOIN: i32 = 0;
/// ...to leave.
pub const LEAVE: i32 = -1;
/// ...to leave for a moment, as a static member does when it closes: it
/// keeps its assignment for an instance with its id to take over.
pub const STATIC_LEAVE: i32 = -2;

/// A topic as the assignor needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    pub id: Uuid,
    pub name: String,
    pub partitions: i32,
}

/// One ConsumerGroupHeartbeat, its nullable fields `None` where the member
/// sent null ("unchanged since the last heartbeat").
#[derive(Clone, Debug, Default)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    /// What the member owns now.
    pub topic_partitions: Option<Partitions>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub member_id: String,
    pub member_epoch: i32,
    /// The member's assignment, when it changed or the member must be told.
    pub assignment: Option<Partitions>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Owns its target assignment at the group's assignment epoch.
    Stable,
    /// Must give up partitions first (they are in `revoking`).
    UnrevokedPartitions,
    /// Waits for partitions other members still have to give up.
    UnreleasedPartitions,
}

impl MemberState {
    fn code(self) -> u8 {
        match self {
            MemberState::Stable => 0,
            MemberState::UnrevokedPartitions => 1,
            MemberState::UnreleasedPartitions => 2,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => MemberState::Stable,
            1 => MemberState::UnrevokedPartitions,
            2 => MemberState::UnreleasedPartitions,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    /// What the member has been told it owns.
    pub assigned: Partitions,
    /// What it must give up before anyone else gets it.
    pub revoking: Partitions,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub topic_names: Vec<String>,
    pub topic_regex: Option<String>,
    pub assignor: Option<String>,
    /// Not persisted: a new coordinator gives every member a full session.
    pub last_seen: Instant,
    /// Since when it has had partitions to revoke.
    pub revoking_since: Option<Instant>,
}

/// Where the group stands, as DescribeGroups and ListGroups name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Empty,
    /// A new target assignment is due.
    Assigning,
    /// Members are moving to the target assignment.
    Reconciling,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::Assigning => "Assigning",
            State::Reconciling => "Reconciling",
            State::Stable => "Stable",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConsumerGroup {
    /// Bumped by every change of members, subscriptions or subscribed
    /// topics.
    pub epoch: i32,
    /// The group epoch the target assignment was computed at.
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id → member id.
    pub statics: BTreeMap<String, String>,
    pub target: BTreeMap<String, Partitions>,
    /// The subscribed topics (id → partitions) the target was made for.
    pub subscribed: BTreeMap<Uuid, i32>,
    /// The assignor of the last target assignment.
    pub assignor: Assignor,
}

/// How the coordinator's clock and settings enter the state machine.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub now: Instant,
    pub session_timeout: Duration,
}

fn is_subset(a: &Partitions, b: &Partitions) -> bool {
    a.iter().all(|(t, ps)| {
        ps.is_empty() || b.get(t).is_some_and(|bs| ps.iter().all(|p| bs.contains(p)))
    })
}

fn intersects(a: &Partitions, b: &Partitions) -> bool {
    a.iter()
        .any(|(t, ps)| b.get(t).is_some_and(|bs| ps.iter().any(|p| bs.contains(p))))
}

fn minus(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = Partitions::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = ps
            .iter()
            .filter(|p| !b.get(t).is_some_and(|bs| bs.contains(p)))
            .copied()
            .collect();
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = Partitions::new();
    for (t, ps) in a {
        if let Some(bs) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(bs).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn union(a: &Partitions, b: &Partitions) -> Partitions {
    let mut out = a.clone();
    for (t, ps) in b {
        out.entry(*t).or_default().extend(ps.iter().copied());
    }
    out.retain(|_, ps| !ps.is_empty());
    out
}

/// A subscription regex as Kafka applies it (RE2/J, matching the whole
/// topic name).
pub fn compile_regex(re: &str) -> Result<regex::Regex, ResponseError> {
    regex::Regex::new(&format!("^(?:{re})$")).map_err(|_| ResponseError::InvalidRegularExpression)
}

impl Member {
    fn new(h: &Heartbeat, now: Instant) -> Self {
        Self {
            epoch: 0,
            previous_epoch: -1,
            state: MemberState::Stable,
            assigned: Partitions::new(),
            revoking: Partitions::new(),
            instance_id: h.instance_id.clone(),
            rack_id: h.rack_id.clone(),
            client_id: h.client_id.clone(),
            client_host: h.client_host.clone(),
            rebalance_timeout_ms: h.rebalance_timeout_ms,
            topic_names: Vec::new(),
            topic_regex: None,
            assignor: None,
            last_seen: now,
            revoking_since: None,
        }
    }

    /// Silent past its session, or holding on to partitions past its
    /// rebalance timeout.
    fn expired(&self, t: Timing) -> bool {
        t.now.saturating_duration_since(self.last_seen) > t.session_timeout
            || self.revoking_since.is_some_and(|s| {
                t.now.saturating_duration_since(s)
                    > Duration::from_millis(self.rebalance_timeout_ms.max(0) as u64)
            })
    }

    /// The topics this member subscribes to, among `topics`.
    fn subscribed(&self, topics: &[TopicMeta]) -> BTreeSet<Uuid> {
        let re = self
            .topic_regex
            .as_deref()
            .filter(|r| !r.is_empty())
            .and_then(|r| compile_regex(r).ok());
        topics
            .iter()
            .filter(|t| {
                self.topic_names.contains(&t.name)
                    || re
                        .as_ref()
                        .is_some_and(|re| !t.name.starts_with("__") && re.is_match(&t.name))
            })
            .map(|t| t.id)
            .collect()
    }
}

impl Default for ConsumerGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerGroup {
    pub fn new() -> Self {
        Self {
            epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            statics: BTreeMap::new(),
            target: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            assignor: Assignor::Uniform,
        }
    }

    pub fn state(&self) -> State {
        if self.members.is_empty() {
            State::Empty
        } else if self.assignment_epoch < self.epoch {
            State::Assigning
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            State::Reconciling
        } else {
            State::Stable
        }
    }

    /// Members that still hold on to their partitions (static members gone
    /// for a moment included): a group with any is not empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The assignor most members ask for (ties: by name), the default
    /// without a preference.
    fn chosen_assignor(&self) -> Result<Assignor, ResponseError> {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = m.assignor.as_deref().filter(|a| !a.is_empty()) {
                *votes.entry(a).or_default() += 1;
            }
        }
        let best = votes
            .iter()
            .max_by_key(|(name, n)| (**n, std::cmp::Reverse(**name)))
            .map(|(name, _)| *name);
        Assignor::by_name(best).ok_or(ResponseError::UnsupportedAssignor)
    }

    /// Topics any member subscribes to, with their partition counts.
    fn subscribed_topics(&self, topics: &[TopicMeta]) -> BTreeMap<Uuid, i32> {
        let mut ids = BTreeSet::new();
        for m in self.members.values() {
            ids.extend(m.subscribed(topics));
        }
        topics
            .iter()
            .filter(|t| ids.contains(&t.id))
            .map(|t| (t.id, t.partitions))
            .collect()
    }

    /// Whether the subscribed topics changed (a topic made, deleted or
    /// grown), taking the new ones.
    fn refresh_metadata(&mut self, topics: &[TopicMeta]) -> bool {
        let now = self.subscribed_topics(topics);
        let changed = now != self.subscribed;
        self.subscribed = now;
        changed
    }

    /// A new target assignment if the group epoch moved past it.
    fn maybe_assign(&mut self, topics: &[TopicMeta]) -> Result<(), ResponseError> {
        if self.assignment_epoch >= self.epoch {
            return Ok(());
        }
        let assignor = self.chosen_assignor()?;
        let specs: Vec<MemberSpec> = self
            .members
            .iter()
            .map(|(id, m)| MemberSpec {
                id: id.clone(),
                topics: m.subscribed(topics),
                owned: self.target.get(id).cloned().unwrap_or_default(),
            })
            .collect();
        self.target = assign(assignor, &specs, &self.subscribed);
        self.assignor = assignor;
        self.assignment_epoch = self.epoch;
        Ok(())
    }

    /// Partitions some member other than `id` has been given or still
    /// has to give up.
    fn held_by_others(&self, id: &str) -> Partitions {
        let mut out = Partitions::new();
        for (other, m) in &self.members {
            if other != id {
                out = union(&out, &union(&m.assigned, &m.revoking));
            }
        }
        out
    }

    /// Move a member one step towards its target: revoke first, then take
    /// what nobody else holds. Returns whether its assignment changed.
    fn reconcile(&mut self, id: &str, owned: Option<&Partitions>, now: Instant) -> bool {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let held = self.held_by_others(id);
        let assignment_epoch = self.assignment_epoch;
        let m = self
            .members
            .get_mut(id)
            .expect("reconciling a known member");
        if m.state == MemberState::UnrevokedPartitions {
            // Done once the member says it owns none of them any more.
            match owned {
                Some(o) if !intersects(o, &m.revoking) => {
                    m.revoking.clear();
                    m.revoking_since = None;
                }
                _ => return false,
            }
        }
        if m.epoch == assignment_epoch && m.state == MemberState::Stable {
            return false;
        }
        let before = m.assigned.clone();
        let kept = intersect(&m.assigned, &target);
        let to_revoke = minus(&m.assigned, &target);
        if !to_revoke.is_empty() {
            m.assigned = kept;
            m.revoking = to_revoke;
            m.state = MemberState::UnrevokedPartitions;
            m.revoking_since = Some(now);
            return true;
        }
        let wanted = minus(&target, &kept);
        let free = minus(&wanted, &held);
        m.assigned = union(&kept, &free);
        if m.epoch != assignment_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = assignment_epoch;
        }
        m.state = if minus(&wanted, &free).is_empty() {
            MemberState::Stable
        } else {
            MemberState::UnreleasedPartitions
        };
        m.assigned != before
    }

    fn remove(&mut self, id: &str) {
        if let Some(m) = self.members.remove(id) {
            if let Some(i) = &m.instance_id {
                if self.statics.get(i).is_some_and(|x| x == id) {
                    self.statics.remove(i);
                }
            }
            self.target.remove(id);
            self.epoch += 1;
        }
    }

    /// One heartbeat; `new_member_id` names a member that joins without an
    /// id (ConsumerGroupHeartbeat v0).
    pub fn heartbeat(
        &mut self,
        h: &Heartbeat,
        topics: &[TopicMeta],
        t: Timing,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<HeartbeatAnswer, ResponseError> {
        match h.member_epoch {
            LEAVE | STATIC_LEAVE => return Ok(self.leave(h)),
            e if e < 0 => return Err(ResponseError::InvalidRequest),
            _ => {}
        }
        if let Some(re) = h
            .subscribed_topic_regex
            .as_deref()
            .filter(|r| !r.is_empty())
        {
            compile_regex(re)?;
        }
        if let Some(a) = h.server_assignor.as_deref() {
            Assignor::by_name(Some(a)).ok_or(ResponseError::UnsupportedAssignor)?;
        }
        let joining = h.member_epoch == JOIN;
        let mut changed = false;
        let id = if joining {
            let (id, new) = self.join(h, t.now, new_member_id)?;
            changed = new;
            id
        } else {
            let m = self
                .members
                .get(&h.member_id)
                .ok_or(ResponseError::UnknownMemberId)?;
            if h.instance_id.is_some() && m.instance_id != h.instance_id {
                return Err(ResponseError::FencedInstanceId);
            }
            let stale_ok = h.member_epoch == m.previous_epoch
                && h.topic_partitions
                    .as_ref()
                    .is_none_or(|o| is_subset(o, &m.assigned));
            if h.member_epoch > m.epoch || (h.member_epoch < m.epoch && !stale_ok) {
                return Err(ResponseError::FencedMemberEpoch);
            }
            h.member_id.clone()
        };
        // Subscription changes: a new group epoch.
        let m = self.members.get_mut(&id).expect("known member");
        m.last_seen = t.now;
        if let Some(names) = &h.subscribed_topic_names {
            let mut names = names.clone();
            names.sort();
            names.dedup();
            if names != m.topic_names {
                m.topic_names = names;
                changed = true;
            }
        }
        if let Some(re) = &h.subscribed_topic_regex {
            let re = (!re.is_empty()).then(|| re.clone());
            if re != m.topic_regex {
                m.topic_regex = re;
                changed = true;
            }
        }
        if let Some(a) = &h.server_assignor {
            let a = (!a.is_empty()).then(|| a.clone());
            if a != m.assignor {
                m.assignor = a;
                changed = true;
            }
        }
        if h.rebalance_timeout_ms > 0 {
            m.rebalance_timeout_ms = h.rebalance_timeout_ms;
        }
        if let Some(r) = &h.rack_id {
            m.rack_id = Some(r.clone()).filter(|r| !r.is_empty());
        }
        // One new group epoch for whatever changed.
        if self.refresh_metadata(topics) || changed {
            self.epoch += 1;
        }
        self.maybe_assign(topics)?;
        let assignment_changed = self.reconcile(&id, h.topic_partitions.as_ref(), t.now);
        let m = &self.members[&id];
        let tell = joining || assignment_changed || h.topic_partitions.is_some();
        Ok(HeartbeatAnswer {
            member_id: id,
            member_epoch: m.epoch,
            assignment: tell.then(|| m.assigned.clone()),
        })
    }

    /// A member joins (epoch 0): new, back after being fenced, or a static
    /// member's new instance taking over its old self. Its id, and whether
    /// the group has a new member.
    fn join(
        &mut self,
        h: &Heartbeat,
        now: Instant,
        new_member_id: impl FnOnce() -> String,
    ) -> Result<(String, bool), ResponseError> {
        let id = if h.member_id.is_empty() {
            new_member_id()
        } else {
            h.member_id.clone()
        };
        if let Some(i) = &h.instance_id {
            if let Some(old) = self.statics.get(i).cloned() {
                if old != id {
                    let old_member = &self.members[&old];
                    if old_member.epoch != STATIC_LEAVE {
                        return Err(ResponseError::UnreleasedInstanceId);
                    }
                    // The new instance takes over the old one's partitions
                    // and epoch: nobody else is disturbed.
                    let mut m = self.members.remove(&old).expect("static member");
                    m.epoch = m.previous_epoch;
                    m.last_seen = now;
                    m.client_id = h.client_id.clone();
                    m.client_host = h.client_host.clone();
                    if let Some(t) = self.target.remove(&old) {
                        self.target.insert(id.clone(), t);
                    }
                    self.members.insert(id.clone(), m);
                    self.statics.insert(i.clone(), id.clone());
                    return Ok((id, false));
                }
            }
        }
        match self.members.get_mut(&id) {
            Some(m) => {
                // Back after a fence or a lost session: it owns nothing now.
                m.assigned.clear();
                m.revoking.clear();
                m.revoking_since = None;
                m.state = MemberState::Stable;
                m.previous_epoch = -1;
                m.epoch = 0;
                Ok((id, false))
            }
            None => {
                self.members.insert(id.clone(), Member::new(h, now));
                if let Some(i) = &h.instance_id {
                    self.statics.insert(i.clone(), id.clone());
                }
                Ok((id, true))
            }
        }
    }

    fn leave(&mut self, h: &Heartbeat) -> HeartbeatAnswer {
        let id = match (&h.instance_id, h.member_id.is_empty()) {
            (Some(i), true) => self.statics.get(i).cloned().unwrap_or_default(),
            _ => h.member_id.clone(),
        };
        let answer = HeartbeatAnswer {
            member_id: id.clone(),
            member_epoch: h.member_epoch,
            assignment: None,
        };
        let Some(m) = self.members.get_mut(&id) else {
            return answer;
        };
        if h.member_epoch == STATIC_LEAVE && m.instance_id.is_some() {
            // Keeps its partitions for the next instance; its session
            // timeout still applies.
            if m.epoch != STATIC_LEAVE {
                m.previous_epoch = m.epoch;
            }
            m.epoch = STATIC_LEAVE;
        } else {
            self.remove(&id);
        }
        answer
    }

    /// Whether `expire` would remove anyone.
    pub fn has_expired(&self, t: Timing) -> bool {
        self.members.values().any(|m| m.expired(t))
    }

    /// Members whose session ran out, or who held on to partitions past
    /// their rebalance timeout, are removed; their ids.
    pub fn expire(&mut self, t: Timing) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.expired(t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.remove(id);
        }
        gone
    }

    /// The group as the value of its record in the offsets topic.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u16(1);
        b.put_i32(self.epoch);
        b.put_i32(self.assignment_epoch);
        put_str(&mut b, self.assignor.name());
        b.put_u32(self.subscribed.len() as u32);
        for (t, n) in &self.subscribed {
            b.put_slice(t.as_bytes());
            b.put_i32(*n);
        }
        b.put_u32(self.members.len() as u32);
        for (id, m) in &self.members {
            put_str(&mut b, id);
            b.put_i32(m.epoch);
            b.put_i32(m.previous_epoch);
            b.put_u8(m.state.code());
            put_partitions(&mut b, &m.assigned);
            put_partitions(&mut b, &m.revoking);
            put_partitions(&mut b, self.target.get(id).unwrap_or(&Partitions::new()));
            put_opt(&mut b, m.instance_id.as_deref());
            put_opt(&mut b, m.rack_id.as_deref());
            put_str(&mut b, &m.client_id);
            put_str(&mut b, &m.client_host);
            b.put_i32(m.rebalance_timeout_ms);
            b.put_u32(m.topic_names.len() as u32);
            for n in &m.topic_names {
                put_str(&mut b, n);
            }
            put_opt(&mut b, m.topic_regex.as_deref());
            put_opt(&mut b, m.assignor.as_deref());
        }
        b.freeze()
    }

    /// A group from its record; every member gets a full session from `now`.
    pub fn decode(mut v: Bytes, now: Instant) -> Option<Self> {
        if v.remaining() < 2 || v.get_u16() != 1 || v.remaining() < 8 {
            return None;
        }
        let mut g = ConsumerGroup::new();
        g.epoch = v.get_i32();
        g.assignment_epoch = v.get_i32();
        g.assignor = Assignor::by_name(Some(get_str(&mut v)?.as_str()))?;
        let n = get_u32(&mut v)?;
        for _ in 0..n {
            if v.remaining() < 20 {
                return None;
            }
            let mut id = [0u8; 16];
            v.copy_to_slice(&mut id);
            g.subscribed.insert(Uuid::from_bytes(id), v.get_i32());
        }
        let n = get_u32(&mut v)?;
        for _ in 0..n {
            let id = get_str(&mut v)?;
            if v.remaining() < 9 {
                return None;
            }
            let epoch = v.get_i32();
            let previous_epoch = v.get_i32();
            let state = MemberState::from_code(v.get_u8())?;
            let assigned = get_partitions(&mut v)?;
            let revoking = get_partitions(&mut v)?;
            let target = get_partitions(&mut v)?;
            let instance_id = get_opt(&mut v)?;
            let rack_id = get_opt(&mut v)?;
            let client_id = get_str(&mut v)?;
            let client_host = get_str(&mut v)?;
            if v.remaining() < 4 {
                return None;
            }
            let rebalance_timeout_ms = v.get_i32();
            let k = get_u32(&mut v)?;
            let mut topic_names = Vec::new();
            for _ in 0..k {
                topic_names.push(get_str(&mut v)?);
            }
            let topic_regex = get_opt(&mut v)?;
            let assignor = get_opt(&mut v)?;
            if let Some(i) = &instance_id {
                g.statics.insert(i.clone(), id.clone());
            }
            g.target.insert(id.clone(), target);
            let revoking_since = (!revoking.is_empty()).then_some(now);
            g.members.insert(
                id,
                Member {
                    epoch,
                    previous_epoch,
                    state,
                    assigned,
                    revoking,
                    instance_id,
                    rack_id,
                    client_id,
                    client_host,
                    rebalance_timeout_ms,
                    topic_names,
                    topic_regex,
                    assignor,
                    last_seen: now,
                    revoking_since,
                },
            );
        }
        Some(g)
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_u32(s.len() as u32);
    b.put_slice(s.as_bytes());
}

fn put_opt(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => {
            b.put_u8(1);
            put_str(b, s);
        }
        None => b.put_u8(0),
    }
}

fn put_partitions(b: &mut BytesMut, p: &Partitions) {
    b.put_u32(p.len() as u32);
    for (t, ps) in p {
        b.put_slice(t.as_bytes());
        b.put_u32(ps.len() as u32);
        for &i in ps {
            b.put_i32(i);
        }
    }
}

fn get_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

fn get_str(b: &mut Bytes) -> Option<String> {
    let n = get_u32(b)? as usize;
    if b.remaining() < n {
        return None;
    }
    String::from_utf8(b.split_to(n).to_vec()).ok()
}

fn get_opt(b: &mut Bytes) -> Option<Option<String>> {
    if b.remaining() < 1 {
        return None;
    }
    match b.get_u8() {
        0 => Some(None),
        1 => Some(Some(get_str(b)?)),
        _ => None,
    }
}

fn get_partitions(b: &mut Bytes) -> Option<Partitions> {
    let n = get_u32(b)?;
    let mut out = Partitions::new();
    for _ in 0..n {
        if b.remaining() < 20 {
            return None;
        }
        let mut id = [0u8; 16];
        b.copy_to_slice(&mut id);
        let k = b.get_u32() as usize;
        if b.remaining() < 4 * k {
            return None;
        }
        let ps: BTreeSet<i32> = (0..k).map(|_| b.get_i32()).collect();
        out.insert(Uuid::from_bytes(id), ps);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u128, name: &str, partitions: i32) -> TopicMeta {
        TopicMeta {
            id: Uuid::from_u128(n),
            name: name.to_string(),
            partitions,
        }
    }

    fn timing(now: Instant) -> Timing {
        Timing {
            now,
            session_timeout: Duration::from_secs(45),
        }
    }

    fn join(id: &str, topics: &[&str]) -> Heartbeat {
        Heartbeat {
            member_id: id.to_string(),
            member_epoch: JOIN,
            rebalance_timeout_ms: 300_000,
            subscribed_topic_names: Some(topics.iter().map(|s| s.to_string()).collect()),
            topic_partitions: Some(Partitions::new()),
            client_id: format!("{id}-client"),
            ..Default::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Partitions) -> Heartbeat {
        Heartbeat {
            member_id: id.to_string(),
            member_epoch: epoch,
            topic_partitions: Some(owned.clone()),
            ..Default::default()
        }
    }

    fn count(p: &Partitions) -> usize {
        p.values().map(|s| s.len()).sum()
    }

    /// Heartbeats every member (each acting on what it was told) until the
    /// group is stable; the members' assignments then.
    fn settle(
        g: &mut ConsumerGroup,
        topics: &[TopicMeta],
        owned: &mut BTreeMap<String, (i32, Partitions)>,
        now: Instant,
    ) {
        for _ in 0..20 {
            let ids: Vec<String> = owned.keys().cloned().collect();
            for id in ids {
                let (epoch, o) = owned[&id].clone();
                let a = g
                    .heartbeat(
                        &beat(&id, epoch, &o),
                        topics,
                        timing(now),
                        || unreachable!(),
                    )
                    .unwrap();
                let mine = a.assignment.unwrap_or(o);
                owned.insert(id, (a.member_epoch, mine));
            }
            // No partition is ever owned by two members at once.
            let mut all = BTreeSet::new();
            for (_, o) in owned.values() {
                for (t, ps) in o {
                    for p in ps {
                        assert!(all.insert((*t, *p)), "{t} {p} owned twice");
                    }
                }
            }
            if g.state() == State::Stable {
                return;
            }
        }
        panic!("group did not settle: {g:?}");
    }

    #[test]
    fn three_members_split_six_partitions_and_rebalance_incrementally() {
        let topics = [topic(1, "orders", 6)];
        let now = Instant::now();
        let mut g = ConsumerGroup::new();
        let mut owned = BTreeMap::new();
        let a = g
            .heartbeat(
                &join("a", &["orders"]),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap();
        assert_eq!(a.member_epoch, 1);
        assert_eq!(count(a.assignment.as_ref().unwrap()), 6);
        owned.insert("a".to_string(), (a.member_epoch, a.assignment.unwrap()));
        for id in ["b", "c"] {
            let a = g
                .heartbeat(
                    &join(id, &["orders"]),
                    &topics,
                    timing(now),
                    || unreachable!(),
                )
                .unwrap();
            // Nothing is free yet: a still owns everything.
            assert_eq!(a.assignment, Some(Partitions::new()));
            owned.insert(id.to_string(), (a.member_epoch, Partitions::new()));
        }
        settle(&mut g, &topics, &mut owned, now);
        for (id, (epoch, o)) in &owned {
            assert_eq!(count(o), 2, "{id}: {o:?}");
            assert_eq!(*epoch, g.epoch);
        }
        // b leaves: its two are split between a and c, who keep theirs.
        let before = owned.clone();
        let left = g
            .heartbeat(
                &beat("b", LEAVE, &Partitions::new()),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap();
        assert_eq!(left.member_epoch, LEAVE);
        owned.remove("b");
        settle(&mut g, &topics, &mut owned, now);
        for id in ["a", "c"] {
            assert_eq!(count(&owned[id].1), 3);
            assert!(
                is_subset(&before[id].1, &owned[id].1),
                "{id} lost a partition"
            );
        }
    }

    #[test]
    fn epochs_fence_zombies_and_unknown_members() {
        let topics = [topic(1, "t", 2)];
        let now = Instant::now();
        let mut g = ConsumerGroup::new();
        let a = g
            .heartbeat(&join("a", &["t"]), &topics, timing(now), || unreachable!())
            .unwrap();
        let owned = a.assignment.unwrap();
        let e = g
            .heartbeat(
                &beat("a", a.member_epoch + 1, &owned),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap_err();
        assert_eq!(e, ResponseError::FencedMemberEpoch);
        let e = g
            .heartbeat(
                &beat("zz", 1, &owned),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap_err();
        assert_eq!(e, ResponseError::UnknownMemberId);
        // A join without an id gets one.
        let b = g
            .heartbeat(&join("", &["t"]), &topics, timing(now), || "b-1".into())
            .unwrap();
        assert_eq!(b.member_id, "b-1");
        // a heartbeats with its previous epoch and what it owns: accepted.
        let again = g
            .heartbeat(
                &beat("a", a.member_epoch, &owned),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap();
        assert_eq!(
            again.member_epoch, a.member_epoch,
            "revoking first keeps the epoch"
        );
        assert_eq!(count(again.assignment.as_ref().unwrap()), 1);
        // A stale epoch that owns more than it was given is fenced.
        let mut extra = owned.clone();
        extra.entry(Uuid::from_u128(1)).or_default().insert(7);
        g.members.get_mut("a").unwrap().epoch = 5;
        g.members.get_mut("a").unwrap().previous_epoch = a.member_epoch;
        let e = g
            .heartbeat(
                &beat("a", a.member_epoch, &extra),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap_err();
        assert_eq!(e, ResponseError::FencedMemberEpoch);
    }

    #[test]
    fn a_static_member_comes_back_to_its_partitions_without_a_new_epoch() {
        let topics = [topic(1, "t", 3)];
        let now = Instant::now();
        let mut g = ConsumerGroup::new();
        let mut owned = BTreeMap::new();
        for (id, inst) in [("a", "ia"), ("b", "ib")] {
            let mut h = join(id, &["t"]);
            h.instance_id = Some(inst.to_string());
            let a = g
                .heartbeat(&h, &topics, timing(now), || unreachable!())
                .unwrap();
            owned.insert(id.to_string(), (a.member_epoch, a.assignment.unwrap()));
        }
        settle(&mut g, &topics, &mut owned, now);
        let epoch = g.epoch;
        let a_had = owned["a"].clone();
        // a closes: a static leave.
        let mut h = beat("a", STATIC_LEAVE, &Partitions::new());
        h.instance_id = Some("ia".into());
        g.heartbeat(&h, &topics, timing(now), || unreachable!())
            .unwrap();
        assert_eq!(g.epoch, epoch);
        // A second live instance with b's id is refused.
        let mut dup = join("b2", &["t"]);
        dup.instance_id = Some("ib".into());
        let e = g
            .heartbeat(&dup, &topics, timing(now), || unreachable!())
            .unwrap_err();
        assert_eq!(e, ResponseError::UnreleasedInstanceId);
        // a's new instance takes over a's partitions and epoch.
        let mut back = join("a2", &["t"]);
        back.instance_id = Some("ia".into());
        let r = g
            .heartbeat(&back, &topics, timing(now), || unreachable!())
            .unwrap();
        assert_eq!(r.member_epoch, a_had.0);
        assert_eq!(r.assignment.as_ref(), Some(&a_had.1));
        assert_eq!(g.epoch, epoch, "nobody else rebalances");
        assert!(!g.members.contains_key("a"));
        assert_eq!(g.state(), State::Stable);
        // The old id is gone for good.
        let mut old = beat("a", a_had.0, &a_had.1);
        old.instance_id = Some("ia".into());
        let e = g
            .heartbeat(&old, &topics, timing(now), || unreachable!())
            .unwrap_err();
        assert_eq!(e, ResponseError::UnknownMemberId);
    }

    #[test]
    fn a_regex_subscription_follows_new_topics() {
        let mut topics = vec![topic(1, "logs-a", 2), topic(2, "other", 2)];
        let now = Instant::now();
        let mut g = ConsumerGroup::new();
        let mut h = join("a", &[]);
        h.subscribed_topic_regex = Some("(.*logs-.*)".into());
        let a = g
            .heartbeat(&h, &topics, timing(now), || unreachable!())
            .unwrap();
        let got = a.assignment.unwrap();
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            vec![Uuid::from_u128(1)]
        );
        topics.push(topic(3, "logs-b", 1));
        topics.push(topic(4, "__logs-internal", 1));
        let r = g
            .heartbeat(
                &beat("a", a.member_epoch, &got),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap();
        assert_eq!(r.member_epoch, a.member_epoch + 1);
        let got = r.assignment.unwrap();
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            vec![Uuid::from_u128(1), Uuid::from_u128(3)]
        );
        let mut bad = join("b", &[]);
        bad.subscribed_topic_regex = Some("(unclosed".into());
        assert_eq!(
            g.heartbeat(&bad, &topics, timing(now), || unreachable!()),
            Err(ResponseError::InvalidRegularExpression)
        );
        let mut bad = join("b", &["logs-a"]);
        bad.server_assignor = Some("sticky-nonsense".into());
        assert_eq!(
            g.heartbeat(&bad, &topics, timing(now), || unreachable!()),
            Err(ResponseError::UnsupportedAssignor)
        );
    }

    #[test]
    fn sessions_and_revocations_time_out() {
        let topics = [topic(1, "t", 4)];
        let now = Instant::now();
        let mut g = ConsumerGroup::new();
        let mut ha = join("a", &["t"]);
        ha.rebalance_timeout_ms = 1_000;
        let a = g
            .heartbeat(&ha, &topics, timing(now), || unreachable!())
            .unwrap();
        g.heartbeat(&join("b", &["t"]), &topics, timing(now), || unreachable!())
            .unwrap();
        // a is asked to revoke two and never does: after its rebalance
        // timeout (1 s) it is out; b, silent, after its session (45 s).
        let r = g
            .heartbeat(
                &beat("a", a.member_epoch, a.assignment.as_ref().unwrap()),
                &topics,
                timing(now),
                || unreachable!(),
            )
            .unwrap();
        assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
        assert_eq!(count(r.assignment.as_ref().unwrap()), 2);
        assert!(g
            .expire(timing(now + Duration::from_millis(500)))
            .is_empty());
        let epoch = g.epoch;
        assert_eq!(g.expire(timing(now + Duration::from_secs(2))), vec!["a"]);
        assert_eq!(g.epoch, epoch + 1);
        assert!(g.expire(timing(now + Duration::from_secs(40))).is_empty());
        assert_eq!(g.expire(timing(now + Duration::from_secs(46))), vec!["b"]);
        assert_eq!(g.state(), State::Empty);
    }

    #[test]
    fn the_record_round_trips() {
        let topics = [topic(1, "t", 3), topic(2, "u", 2)];
        let now = Instant::now();
        let mut g = ConsumerGroup::new();
        let mut owned = BTreeMap::new();
        for (id, inst) in [("a", Some("ia")), ("b", None)] {
            let mut h = join(id, &["t", "u"]);
            h.instance_id = inst.map(String::from);
            h.server_assignor = Some("range".into());
            h.subscribed_topic_regex = inst.map(|_| "x.*".to_string());
            let a = g
                .heartbeat(&h, &topics, timing(now), || unreachable!())
                .unwrap();
            owned.insert(id.to_string(), (a.member_epoch, a.assignment.unwrap()));
        }
        // Mid-rebalance, with partitions being revoked.
        let (epoch, o) = owned["a"].clone();
        let mut h = beat("a", epoch, &o);
        h.instance_id = Some("ia".into());
        let r = g
            .heartbeat(&h, &topics, timing(now), || unreachable!())
            .unwrap();
        owned.insert("a".into(), (r.member_epoch, r.assignment.unwrap()));
        assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
        assert_eq!(g.state(), State::Reconciling);
        let back = ConsumerGroup::decode(g.encode(), now).unwrap();
        assert_eq!(back, g);
        settle(&mut g, &topics, &mut owned, now);
        assert_eq!(g.assignor, Assignor::Range);
        let back = ConsumerGroup::decode(g.encode(), now).unwrap();
        assert_eq!(back, g);
        // Truncated records are refused, not misread.
        let bytes = g.encode();
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(ConsumerGroup::decode(bytes.slice(..cut), now).is_none());
        }
    }
}
