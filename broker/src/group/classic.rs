//! The classic group protocol's state machine: members joining and
//! syncing, generations, the leader's assignment, session and rebalance
//! timeouts, static membership. No I/O: the coordinator drives it and
//! writes what it decides to the offsets log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use floe_protocol::ResponseError;
use tokio::sync::oneshot;

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

pub(crate) struct Member {
    pub(crate) instance_id: Option<String>,
    pub(crate) client_id: String,
    pub(crate) session_timeout: Duration,
    pub(crate) rebalance_timeout: Duration,
    pub(crate) protocols: Vec<(String, Bytes)>,
    pub(crate) assignment: Bytes,
    pub(crate) last_seen: Instant,
    pub(crate) join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    pub(crate) sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

pub(crate) struct Group {
    pub(crate) state: GroupState,
    pub(crate) protocol_type: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) generation: i32,
    pub(crate) leader: Option<String>,
    pub(crate) members: BTreeMap<String, Member>,
    /// group.instance.id → member id.
    pub(crate) statics: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet.
    pub(crate) pending: HashSet<String>,
    /// The join phase ends at this instant even if members are missing.
    pub(crate) rebalance_deadline: Option<Instant>,
    /// ...and not before this one (the initial delay of a new group).
    pub(crate) not_before: Option<Instant>,
}

impl Group {
    /// Every member with its metadata for the chosen protocol: what the
    /// leader assigns from.
    pub(crate) fn member_metadata(&self) -> Vec<(String, Option<String>, Bytes)> {
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

    pub(crate) fn new() -> Self {
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
    pub(crate) fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
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
    pub(crate) fn maybe_complete_join(&mut self, now: Instant) {
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

    pub(crate) fn complete_join(&mut self) {
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

    pub(crate) fn remove_member(&mut self, id: &str) {
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
    pub(crate) fn check_member(
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
