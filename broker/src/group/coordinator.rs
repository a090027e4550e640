//! The group coordinator: the groups of each offsets partition this
//! broker writes (a shard, loaded from the offsets log when first asked
//! for), the Kafka group APIs on them (join, sync, heartbeat, leave,
//! commit, fetch, list, describe, delete, and KIP-848's heartbeat and
//! describe), and the timers that expire members and offsets. It reaches
//! its broker only through `GroupHost`: the offsets partition a group
//! lives in, the topic catalogue, and the group settings.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use floe_protocol::ResponseError;
use tokio::sync::oneshot;

use super::classic::*;
use super::offsets_log::*;
use super::GroupHost;
use crate::consumer_group::{ConsumerGroup, Heartbeat, HeartbeatAnswer, Timing, TopicMeta};
use crate::partition::{PartitionHandle, PartitionState};

/// Largest metadata string of a committed offset (offset.metadata.max.bytes).
const MAX_OFFSET_METADATA: usize = 4096;

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
    async fn shard(&self, host: &dyn GroupHost, group: &str) -> Resolved {
        let (p, handle) = host.offsets_partition(group)?;
        Ok((self.load_shard(host, p, handle).await?, p))
    }

    /// The shard of offsets partition `p` (a transaction's marker).
    async fn shard_at(&self, host: &dyn GroupHost, p: i32) -> Result<Arc<Shard>, ResponseError> {
        let handle = host.offsets_partition_at(p)?;
        self.load_shard(host, p, handle).await
    }

    async fn load_shard(
        &self,
        host: &dyn GroupHost,
        p: i32,
        handle: PartitionHandle,
    ) -> Result<Arc<Shard>, ResponseError> {
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
                    let delay =
                        Duration::from_millis(host.settings().group_initial_rebalance_delay_ms);
                    let session =
                        Duration::from_millis(host.settings().group_consumer_session_timeout_ms);
                    tokio::spawn(tick(
                        ticker,
                        delay,
                        session,
                        host.settings().offsets_retention_ms,
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
        Ok(shard)
    }

    pub async fn join(&self, host: &dyn GroupHost, req: JoinRequest) -> JoinOutcome {
        let fail = |e: ResponseError, member_id: String| JoinOutcome {
            error: Some(e),
            member_id,
            generation: -1,
            ..Default::default()
        };
        if req.session_timeout_ms < host.settings().group_min_session_timeout_ms
            || req.session_timeout_ms > host.settings().group_max_session_timeout_ms
        {
            return fail(ResponseError::InvalidSessionTimeout, req.member_id);
        }
        if req.protocols.is_empty() || req.protocol_type.is_empty() {
            return fail(ResponseError::InconsistentGroupProtocol, req.member_id);
        }
        let (shard, _) = match self.shard(host, &req.group).await {
            Ok(s) => s,
            Err(e) => return fail(e, req.member_id),
        };
        let now = Instant::now();
        let delay = Duration::from_millis(host.settings().group_initial_rebalance_delay_ms);
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
                member_id = format!("{}-{}", req.client_id, floe_common::new_uuid());
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
        host: &dyn GroupHost,
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
        let (shard, _) = match self.shard(host, group).await {
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
        host: &dyn GroupHost,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        let (shard, _) = match self.shard(host, group).await {
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
        host: &dyn GroupHost,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let (shard, _) = self.shard(host, group).await?;
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
                if let Err(e) = append(&shard.handle, &[(group_key(group), None)]).await {
                    tracing::warn!(group, error = ?e, "recording an emptied group failed");
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
        host: &dyn GroupHost,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Vec<Option<ResponseError>> {
        let member = (member_id, instance_id, generation);
        self.commit_as(host, group, member, None, offsets).await
    }

    /// TxnOffsetCommit: offsets committed in the transaction of
    /// `producer_id`, pending until its marker reaches this partition
    /// (`complete_txn`). The member is checked as for OffsetCommit when the
    /// client gives its generation (KIP-447); the transaction coordinator
    /// has verified the producer before this is called.
    pub async fn txn_commit(
        &self,
        host: &dyn GroupHost,
        group: &str,
        (producer_id, guard): (i64, u64),
        member: (&str, Option<&str>, i32),
        offsets: Vec<(String, i32, Committed)>,
    ) -> Vec<Option<ResponseError>> {
        self.commit_as(host, group, member, Some((producer_id, guard)), offsets)
            .await
    }

    /// The guard to verify a TxnOffsetCommit of `producer_id` under (one
    /// already made for it is shared), before asking its coordinator.
    pub async fn txn_guard(
        &self,
        host: &dyn GroupHost,
        group: &str,
        producer_id: i64,
    ) -> Result<u64, ResponseError> {
        let (shard, _) = self.shard(host, group).await?;
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        if let Some(t) = st.txn_guards.get(&producer_id) {
            return Ok(*t);
        }
        st.txn_guard_seq += 1;
        let t = st.txn_guard_seq;
        st.txn_guards.insert(producer_id, t);
        Ok(t)
    }

    /// Offsets of `member` (id, instance id, generation) written to the
    /// group's partition: committed, or pending in the transaction of
    /// producer `txn`.
    async fn commit_as(
        &self,
        host: &dyn GroupHost,
        group: &str,
        (member_id, instance_id, generation): (&str, Option<&str>, i32),
        txn: Option<(i64, u64)>,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Vec<Option<ResponseError>> {
        let all = |e: ResponseError| offsets.iter().map(|_| Some(e)).collect::<Vec<_>>();
        let (shard, _) = match self.shard(host, group).await {
            Ok(s) => s,
            Err(e) => return all(e),
        };
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        if let Some((pid, token)) = txn {
            // The transaction ended since its coordinator said yes.
            if st.txn_guards.get(&pid) != Some(&token) {
                return all(ResponseError::InvalidTxnState);
            }
        }
        let txn = txn.map(|(pid, _)| pid);
        let checked = check_committer(st, group, member_id, instance_id, generation, txn.is_some());
        if let Err(e) = checked {
            return all(e);
        }
        let (results, records) = offset_records(host, &offsets, |t, p| match txn {
            Some(pid) => pending_key(pid, group, t, p),
            None => offset_key(group, t, p),
        });
        if records.is_empty() {
            return results;
        }
        if let Err(e) = append(&shard.handle, &records).await {
            return all(e);
        }
        let map = match txn {
            Some(pid) => st
                .pending
                .entry(pid)
                .or_default()
                .entry(group.to_string())
                .or_default(),
            None => st.offsets.entry(group.to_string()).or_default(),
        };
        for ((topic, partition, c), r) in offsets.into_iter().zip(&results) {
            if r.is_none() {
                map.insert((topic, partition), c);
            }
        }
        results
    }

    /// A transaction's marker for offsets partition `partition`: the
    /// offsets `producer_id` committed in it become committed offsets
    /// (`commit`) or are dropped, in one batch. Nothing pending: nothing
    /// to do (markers are retried).
    pub async fn complete_txn(
        &self,
        host: &dyn GroupHost,
        partition: i32,
        producer_id: i64,
        commit: bool,
        coordinator_epoch: i32,
    ) -> Result<(), ResponseError> {
        let shard = self.shard_at(host, partition).await?;
        let mut guard = shard.state.lock().await;
        let st = guard.as_mut().expect("loaded");
        let seen = st.txn_coordinators.entry(producer_id).or_insert(i32::MIN);
        if coordinator_epoch < *seen {
            return Err(ResponseError::TransactionCoordinatorFenced);
        }
        *seen = coordinator_epoch;
        st.txn_guards.remove(&producer_id);
        let Some(groups) = st.pending.get(&producer_id) else {
            return Ok(());
        };
        let mut records = Vec::new();
        for (g, m) in groups {
            for ((t, p), c) in m {
                if commit {
                    records.push((offset_key(g, t, *p), Some(offset_value(c))));
                }
                records.push((pending_key(producer_id, g, t, *p), None));
            }
        }
        append(&shard.handle, &records).await?;
        let groups = st.pending.remove(&producer_id).unwrap_or_default();
        if commit {
            for (g, m) in groups {
                st.offsets.entry(g).or_default().extend(m);
            }
        }
        Ok(())
    }

    /// Committed offsets of `group` (all of them with `None`), and the
    /// partitions with offsets pending in an open transaction (OffsetFetch
    /// with require_stable answers UNSTABLE_OFFSET_COMMIT for them,
    /// KIP-447), read together.
    #[allow(clippy::type_complexity)]
    pub async fn fetch_offsets(
        &self,
        host: &dyn GroupHost,
        group: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<
        (
            Vec<(String, Vec<(i32, Option<Committed>)>)>,
            HashSet<(String, i32)>,
        ),
        ResponseError,
    > {
        let (shard, _) = self.shard(host, group).await?;
        let guard = shard.state.lock().await;
        let st = guard.as_ref().expect("loaded");
        let map = st.offsets.get(group);
        let unstable = st
            .pending
            .values()
            .filter_map(|groups| groups.get(group))
            .flat_map(|m| m.keys().cloned())
            .collect();
        let committed = match wanted {
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
        };
        Ok((committed, unstable))
    }

    /// Every committed offset of the groups this broker coordinates:
    /// (group, topic, partition, offset).
    pub async fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let shards: Vec<Arc<Shard>> = self.shards.lock().unwrap().values().cloned().collect();
        let mut out = Vec::new();
        for s in shards {
            if s.handle.state() != PartitionState::Writing {
                continue;
            }
            let guard = s.state.lock().await;
            let Some(st) = guard.as_ref() else { continue };
            for (g, m) in &st.offsets {
                for ((t, p), c) in m {
                    out.push((g.clone(), t.clone(), *p, c.offset));
                }
            }
        }
        out
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
        host: &dyn GroupHost,
        group: &str,
        h: Heartbeat,
    ) -> Result<HeartbeatAnswer, ResponseError> {
        let (shard, _) = self.shard(host, group).await?;
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
        let topics: Vec<TopicMeta> = host.topics();
        let before = st.consumer.get(group);
        let was = before.map(ConsumerGroup::encode);
        let mut g = before.cloned().unwrap_or_default();
        let timing = Timing {
            now: Instant::now(),
            session_timeout: Duration::from_millis(
                host.settings().group_consumer_session_timeout_ms,
            ),
        };
        let answer = g.heartbeat(&h, &topics, timing, || floe_common::new_uuid().to_string())?;
        let now = g.encode();
        if was.as_ref() != Some(&now) {
            records.push((consumer_key(group), Some(now)));
        }
        if !records.is_empty() {
            append(&shard.handle, &records).await?;
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
        host: &dyn GroupHost,
        group: &str,
    ) -> Result<ConsumerGroup, ResponseError> {
        let (shard, _) = self.shard(host, group).await?;
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
        host: &dyn GroupHost,
        group: &str,
    ) -> Result<GroupView, ResponseError> {
        let (shard, _) = self.shard(host, group).await?;
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
    pub async fn delete(&self, host: &dyn GroupHost, group: &str) -> Option<ResponseError> {
        let (shard, _) = match self.shard(host, group).await {
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
        host: &dyn GroupHost,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let (shard, _) = self.shard(host, group).await?;
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

/// Whether a member may commit offsets to `group` (OffsetCommit,
/// TxnOffsetCommit): the generation (a consumer-protocol member's epoch)
/// and member of a live group, or a simple commit to a group without
/// members. `txn`: a transactional commit without a generation (clients
/// before KIP-447) is taken whatever the group's state.
fn check_committer(
    st: &mut ShardState,
    group: &str,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
    txn: bool,
) -> Result<(), ResponseError> {
    let identified = generation >= 0 || !member_id.is_empty();
    if txn && !identified {
        return Ok(());
    }
    if let Some(cg) = st.consumer.get(group) {
        // A consumer-protocol group: the member's epoch is the
        // generation (OffsetCommit v9+).
        if identified {
            let Some(m) = cg.members.get(member_id) else {
                return Err(ResponseError::UnknownMemberId);
            };
            if generation != m.epoch {
                return Err(if txn {
                    ResponseError::IllegalGeneration
                } else {
                    ResponseError::StaleMemberEpoch
                });
            }
        } else if !cg.is_empty() {
            return Err(ResponseError::UnknownMemberId);
        }
    } else if let Some(g) = st.groups.get_mut(group) {
        if identified {
            g.check_member(member_id, instance_id)?;
            if generation != g.generation {
                return Err(ResponseError::IllegalGeneration);
            }
            if g.state == GroupState::CompletingRebalance {
                return Err(ResponseError::RebalanceInProgress);
            }
            g.members.get_mut(member_id).expect("checked").last_seen = Instant::now();
        } else if !g.members.is_empty() {
            // A simple commit to a group with live members.
            return Err(ResponseError::UnknownMemberId);
        }
    } else if generation >= 0 {
        return Err(ResponseError::IllegalGeneration);
    }
    Ok(())
}

/// Per offset, its error or none, and the records of the good ones
/// (`key` of topic and partition).
#[allow(clippy::type_complexity)]
fn offset_records(
    host: &dyn GroupHost,
    offsets: &[(String, i32, Committed)],
    key: impl Fn(&str, i32) -> Bytes,
) -> (Vec<Option<ResponseError>>, Vec<(Bytes, Option<Bytes>)>) {
    let mut results = Vec::with_capacity(offsets.len());
    let mut records = Vec::new();
    for (topic, partition, c) in offsets {
        let known = host
            .partitions_of(topic)
            .is_some_and(|n| *partition >= 0 && *partition < n);
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
            records.push((key(topic, *partition), Some(offset_value(c))));
        }
    }
    (results, records)
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
            let now_ms = floe_common::wall_ms();
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
        for (n, g) in changed {
            st.consumer.insert(n, g);
        }
    }
}
