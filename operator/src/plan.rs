//! What to do next, as a pure function of the spec and of what the
//! operator observes (the broker StatefulSet and its pods, the cluster as
//! the controller's admin API reports it, the operation in the status).
//! Level-triggered: the same observation gives the same plan, and a plan
//! carried out halfway is finished by the next pass. Scale-in drains the
//! brokers that will go before their pods are removed; scale-out adds
//! pods and then has partitions evened; an upgrade restarts one broker at
//! a time, the next only once every partition writes again; storage
//! targets added or removed in the spec are added, or drained (their
//! segments repaired onto the others) and then removed.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::{FloeClusterSpec, OperationStatus, StorageTarget};

/// A broker pod as Kubernetes reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Its ordinal: the broker id.
    pub ordinal: i32,
    /// Its `floe.dev/template-hash`.
    pub template_hash: String,
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
}

/// A live broker as the controller reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BrokerView {
    pub id: i32,
    pub partitions: u32,
    pub drained: bool,
    pub bytes_in_per_sec: f64,
    /// Whether it has reported its load yet.
    pub load_reported: bool,
}

/// A controller operation (drain, decommission, rebalance).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpView {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub broker: i32,
}

impl OpView {
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "cancelled" | "failed")
    }
}

/// A storage target of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetView {
    pub id: String,
    pub url: String,
    pub zone: String,
    pub weight: u32,
    pub draining: bool,
    /// Segments with a replica on it.
    pub segments: u64,
}

/// The cluster through the admin API.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    pub brokers: Vec<BrokerView>,
    /// Partitions by state (`writing`, `recovering`, `unowned`, …).
    pub partition_states: BTreeMap<String, u32>,
    pub operations: Vec<OpView>,
    pub targets: Vec<TargetView>,
    pub segments_to_repair: u64,
    pub replicas: u32,
    pub write_quorum: u32,
}

impl ClusterView {
    fn broker(&self, id: i32) -> Option<&BrokerView> {
        self.brokers.iter().find(|b| b.id == id)
    }
    /// Every partition writes (and there is at least the state map).
    pub fn all_writing(&self) -> bool {
        self.partition_states
            .iter()
            .all(|(state, n)| state == "writing" || *n == 0)
    }
    fn running(&self, kind: &str) -> Option<&OpView> {
        self.operations
            .iter()
            .find(|o| o.kind == kind && !o.finished())
    }
}

/// Everything observed in one pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// `spec.replicas` of the broker StatefulSet (None: not there yet).
    pub broker_replicas: Option<i32>,
    pub broker_pods: Vec<PodView>,
    /// None: the admin API did not answer.
    pub cluster: Option<ClusterView>,
    /// The operation recorded in the status.
    pub operation: Option<OperationStatus>,
    /// Seconds since the autoscaler last changed the broker count.
    pub since_last_scale_s: Option<u64>,
}

/// A call to make, on the admin API or on Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    DrainBroker(i32),
    UndrainBroker(i32),
    StartRebalance,
    /// Delete the pod of this broker (the StatefulSet makes it again from
    /// the current template).
    RestartBroker(i32),
    AddTarget(StorageTarget),
    DrainTarget(String),
    UndrainTarget(String),
    RemoveTarget(String),
}

/// What one pass should do.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The broker StatefulSet's replicas to apply.
    pub broker_replicas: i32,
    pub actions: Vec<Action>,
    /// The operation to record in the status (None: nothing in progress).
    pub operation: Option<OperationStatus>,
    /// The autoscaler changed the target broker count in this pass.
    pub scaled: bool,
    /// Problems to report (Degraded), e.g. a storage change the pool
    /// cannot make.
    pub problems: Vec<String>,
}

/// The broker count the spec asks for now (autoscaling: from the load).
pub fn wanted_brokers(spec: &FloeClusterSpec, seen: &Observed) -> (i32, bool) {
    let Some(a) = &spec.brokers.autoscaling else {
        return (spec.brokers.replicas, false);
    };
    let current = seen
        .broker_replicas
        .unwrap_or(a.min_brokers)
        .clamp(a.min_brokers, a.max_brokers);
    let Some(c) = &seen.cluster else {
        return (current, false);
    };
    let cooled = seen
        .since_last_scale_s
        .is_none_or(|s| s >= a.cooldown_seconds.unwrap_or(300));
    let busy = seen.operation.is_some() || c.operations.iter().any(|o| !o.finished());
    if !cooled || busy || c.brokers.iter().any(|b| !b.load_reported) {
        return (current, false);
    }
    let total: f64 = c.brokers.iter().map(|b| b.bytes_in_per_sec).sum();
    let need = (total / a.target_bytes_in_per_broker as f64).ceil() as i32;
    let want = need.clamp(a.min_brokers, a.max_brokers);
    (want, want != current)
}

fn op(kind: &str, phase: String, brokers: Vec<i32>, from: i32, now: &str) -> OperationStatus {
    OperationStatus {
        kind: kind.into(),
        phase,
        brokers,
        controller_operations: Vec::new(),
        from_brokers: Some(from),
        started: now.into(),
    }
}

fn list(ids: &[i32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The next step towards `spec`. `broker_hash` is the template hash
/// broker pods should carry; `now` (RFC 3339) stamps a new operation.
pub fn plan(spec: &FloeClusterSpec, seen: &Observed, broker_hash: &str, now: &str) -> Plan {
    let (wanted, scaled) = wanted_brokers(spec, seen);
    let current = seen.broker_replicas.unwrap_or(wanted);
    let mut p = Plan {
        broker_replicas: current,
        actions: Vec::new(),
        operation: seen.operation.clone(),
        scaled,
        problems: Vec::new(),
    };
    let Some(c) = &seen.cluster else {
        // Without the admin API nothing that needs it moves; a new
        // cluster's objects are still created.
        return p;
    };
    storage(spec, c, &mut p);
    let pods: BTreeSet<i32> = seen.broker_pods.iter().map(|p| p.ordinal).collect();
    let previous = seen.operation.clone();
    match previous.as_ref().map(|o| o.kind.as_str()) {
        // Scale-in under way, or a new one.
        Some("scale-in") => scale_in(
            previous.as_ref().unwrap(),
            wanted,
            current,
            c,
            &pods,
            now,
            &mut p,
        ),
        _ if wanted < current => {
            let going: Vec<i32> = (wanted..current).collect();
            let o = op("scale-in", String::new(), going, current, now);
            scale_in(&o, wanted, current, c, &pods, now, &mut p)
        }
        Some("scale-out") => scale_out(previous.as_ref().unwrap(), wanted, current, c, &mut p),
        _ if wanted > current => {
            p.broker_replicas = wanted;
            let new: Vec<i32> = (current..wanted).collect();
            p.operation = Some(op(
                "scale-out",
                format!("starting brokers {}", list(&new)),
                new,
                current,
                now,
            ));
        }
        _ => upgrade(seen, c, current, broker_hash, now, &mut p),
    }
    p
}

fn scale_in(
    o: &OperationStatus,
    wanted: i32,
    current: i32,
    c: &ClusterView,
    pods: &BTreeSet<i32>,
    now: &str,
    p: &mut Plan,
) {
    let _ = now;
    let from = o.from_brokers.unwrap_or(current);
    // The brokers that go: those the operation named (a spec changed
    // again mid-way keeps them going; a later pass scales again).
    let going: Vec<i32> = o.brokers.clone();
    let target = from - going.len() as i32;
    let mut o = o.clone();
    if current > target {
        // Phase 1: drain, then shrink the StatefulSet.
        let mut left = 0u32;
        let mut draining = Vec::new();
        for &id in &going {
            match c.broker(id) {
                Some(b) if !b.drained => {
                    p.actions.push(Action::DrainBroker(id));
                    draining.push(id);
                    left += b.partitions;
                }
                Some(b) if b.partitions > 0 => {
                    draining.push(id);
                    left += b.partitions;
                }
                _ => {}
            }
        }
        let ops_running = c.operations.iter().any(|op| {
            going.contains(&op.broker)
                && (op.kind == "drain-broker" || op.kind == "decommission-broker")
                && !op.finished()
        });
        if draining.is_empty() && !ops_running {
            p.broker_replicas = target;
            o.phase = format!("removing the pods of brokers {}", list(&going));
        } else {
            o.phase = format!(
                "draining brokers {} ({left} partitions left)",
                list(if draining.is_empty() {
                    &going
                } else {
                    &draining
                })
            );
        }
        p.operation = Some(o);
        return;
    }
    // Phase 2: once their pods are gone and they no longer run, clear
    // their drain marks, so that an id that comes back later (a
    // scale-out) is a broker like any other.
    let gone = going
        .iter()
        .all(|id| !pods.contains(id) && c.broker(*id).is_none());
    if !gone {
        o.phase = format!("waiting for the pods of brokers {} to go", list(&going));
        p.operation = Some(o);
        return;
    }
    p.actions
        .extend(going.iter().map(|id| Action::UndrainBroker(*id)));
    p.operation = None;
    let _ = wanted;
}

fn scale_out(o: &OperationStatus, wanted: i32, current: i32, c: &ClusterView, p: &mut Plan) {
    let mut o = o.clone();
    if wanted > current {
        p.broker_replicas = wanted;
        // More asked for mid-way: the operation waits for them too.
        let from = o.from_brokers.unwrap_or(current);
        o.brokers = (from..wanted).collect();
    }
    let new = &o.brokers;
    let live: Vec<i32> = new
        .iter()
        .copied()
        .filter(|id| c.broker(*id).is_some())
        .collect();
    if live.len() < new.len() {
        let missing: Vec<i32> = new.iter().copied().filter(|i| !live.contains(i)).collect();
        o.phase = format!("waiting for brokers {} to join", list(&missing));
        p.operation = Some(o);
        return;
    }
    if c.running("rebalance").is_some() {
        o.phase = "rebalancing".into();
        p.operation = Some(o);
        return;
    }
    let counts: Vec<u32> = c
        .brokers
        .iter()
        .filter(|b| !b.drained)
        .map(|b| b.partitions)
        .collect();
    let even = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0) <= 1;
    if even && c.all_writing() {
        p.operation = None;
    } else if !even && o.controller_operations.is_empty() {
        p.actions.push(Action::StartRebalance);
        o.phase = "rebalancing".into();
        p.operation = Some(o);
    } else if !even {
        // One rebalance ran and left counts uneven (load-weighted plans
        // may): the operation ends; the status shows the counts.
        p.operation = None;
    } else {
        o.phase = "waiting for every partition to write".into();
        p.operation = Some(o);
    }
}

fn upgrade(
    seen: &Observed,
    c: &ClusterView,
    current: i32,
    broker_hash: &str,
    now: &str,
    p: &mut Plan,
) {
    let outdated: Vec<&PodView> = seen
        .broker_pods
        .iter()
        .filter(|pod| pod.template_hash != broker_hash)
        .collect();
    let previous = seen.operation.as_ref().filter(|o| o.kind == "upgrade");
    if outdated.is_empty() {
        // Done once the last restarted broker is back and writing.
        let back = (0..current).all(|id| {
            seen.broker_pods
                .iter()
                .any(|pod| pod.ordinal == id && pod.ready && !pod.terminating)
                && c.broker(id).is_some()
        });
        p.operation = match previous {
            Some(o) if !(back && c.all_writing()) => {
                let mut o = o.clone();
                o.phase = "waiting for the last restarted broker to write again".into();
                Some(o)
            }
            _ => None,
        };
        return;
    }
    let mut o = previous
        .cloned()
        .unwrap_or_else(|| op("upgrade", String::new(), Vec::new(), current, now));
    // An outdated pod that is not ready or not live serves nothing and
    // will not become ready by waiting (a bad image, a crash loop, a
    // rollback of either): it is replaced at once, one per pass.
    if let Some(broken) = outdated
        .iter()
        .filter(|pod| !pod.terminating && (!pod.ready || c.broker(pod.ordinal).is_none()))
        .map(|pod| pod.ordinal)
        .max()
    {
        p.actions.push(Action::RestartBroker(broken));
        o.brokers.push(broken);
        o.phase = format!("replacing broker {broken}, which is not ready on its old template");
        p.operation = Some(o);
        return;
    }
    // One at a time: every broker pod present, ready and live, every
    // partition writing, before the next restart.
    let settled = (0..current).all(|id| {
        seen.broker_pods
            .iter()
            .any(|pod| pod.ordinal == id && pod.ready && !pod.terminating)
            && c.broker(id).is_some()
    }) && c.all_writing();
    if !settled {
        o.phase =
            "waiting for every broker and partition to be back before the next restart".into();
        p.operation = Some(o);
        return;
    }
    let next = outdated.iter().map(|pod| pod.ordinal).max().unwrap();
    p.actions.push(Action::RestartBroker(next));
    o.brokers.push(next);
    o.phase = format!(
        "restarting broker {next} ({} still to restart)",
        outdated.len() - 1
    );
    p.operation = Some(o);
}

fn storage(spec: &FloeClusterSpec, c: &ClusterView, p: &mut Plan) {
    let wanted: BTreeMap<&str, &StorageTarget> = spec
        .storage
        .targets
        .iter()
        .map(|t| (t.id.as_str(), t))
        .collect();
    if spec.storage.replicas != c.replicas || spec.storage.write_quorum != c.write_quorum {
        p.problems.push(format!(
            "spec.storage.replicas and writeQuorum are fixed when the cluster is made (R={}, W={}); they cannot change to R={}, W={}",
            c.replicas, c.write_quorum, spec.storage.replicas, spec.storage.write_quorum
        ));
    }
    for t in &spec.storage.targets {
        match c.targets.iter().find(|have| have.id == t.id) {
            // The pool refuses a second target on a URL it has: say so.
            None => match c.targets.iter().find(|have| have.url == t.url) {
                Some(other) => p.problems.push(format!(
                    "spec.storage.targets: {}'s url is target {} of the pool already (a new cluster's first targets are seeded as t0, t1, … in order); give it that id or another url",
                    t.id, other.id
                )),
                None => p.actions.push(Action::AddTarget(t.clone())),
            },
            // Back in the spec while draining: it stays in the pool.
            Some(have) if have.draining => p.actions.push(Action::UndrainTarget(t.id.clone())),
            Some(have) => {
                let zone = t.zone.clone().unwrap_or_default();
                if have.url != t.url || have.zone != zone {
                    p.problems.push(format!(
                        "spec.storage.targets: target {} is {} (zone {:?}) in the pool; a target's url and zone cannot change — add a target with a new id and remove this one",
                        t.id, have.url, have.zone
                    ));
                }
            }
        }
    }
    for have in &c.targets {
        if wanted.contains_key(have.id.as_str()) {
            continue;
        }
        if !have.draining {
            p.actions.push(Action::DrainTarget(have.id.clone()));
        } else if have.segments == 0 {
            p.actions.push(Action::RemoveTarget(have.id.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    const HASH: &str = "h1";
    const NOW: &str = "2026-12-06T07:00:00Z";

    fn pods(n: i32, hash: &str) -> Vec<PodView> {
        (0..n)
            .map(|i| PodView {
                ordinal: i,
                template_hash: hash.into(),
                ready: true,
                terminating: false,
            })
            .collect()
    }

    fn targets() -> Vec<TargetView> {
        spec()
            .storage
            .targets
            .iter()
            .map(|t| TargetView {
                id: t.id.clone(),
                url: t.url.clone(),
                zone: t.zone.clone().unwrap_or_default(),
                weight: 1,
                draining: false,
                segments: 10,
            })
            .collect()
    }

    fn cluster(parts: &[u32]) -> ClusterView {
        ClusterView {
            brokers: parts
                .iter()
                .enumerate()
                .map(|(i, p)| BrokerView {
                    id: i as i32,
                    partitions: *p,
                    load_reported: true,
                    ..Default::default()
                })
                .collect(),
            partition_states: BTreeMap::from([("writing".into(), parts.iter().sum())]),
            operations: Vec::new(),
            targets: targets(),
            segments_to_repair: 0,
            replicas: 2,
            write_quorum: 2,
        }
    }

    fn seen(replicas: i32, c: ClusterView) -> Observed {
        Observed {
            broker_replicas: Some(replicas),
            broker_pods: pods(replicas, HASH),
            cluster: Some(c),
            operation: None,
            since_last_scale_s: None,
        }
    }

    #[test]
    fn a_steady_cluster_needs_nothing() {
        let p = plan(&spec(), &seen(3, cluster(&[4, 4, 4])), HASH, NOW);
        assert_eq!(p.broker_replicas, 3);
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.operation, None);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
    }

    #[test]
    fn a_new_cluster_starts_at_the_spec_and_a_silent_controller_moves_nothing() {
        let mut s = seen(3, cluster(&[4, 4, 4]));
        s.broker_replicas = None;
        s.cluster = None;
        let mut sp = spec();
        sp.brokers.replicas = 4;
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.broker_replicas, 4);
        assert_eq!(p.actions, vec![]);
        // An existing cluster whose controller does not answer keeps its
        // broker count.
        s.broker_replicas = Some(3);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.broker_replicas, p.actions.len()), (3, 0));
    }

    /// Scale-in 4 → 2, pass by pass: drain exactly brokers 2 and 3, wait
    /// for their partitions to leave, shrink the StatefulSet, wait for
    /// the pods to go, clear the drain marks.
    #[test]
    fn scale_in_drains_the_brokers_that_go_before_their_pods_are_removed() {
        let mut sp = spec();
        sp.brokers.replicas = 2;
        // Pass 1: drains start; the StatefulSet keeps 4.
        let mut s = seen(4, cluster(&[3, 3, 3, 3]));
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.broker_replicas, 4);
        assert_eq!(
            p.actions,
            vec![Action::DrainBroker(2), Action::DrainBroker(3)]
        );
        let o = p.operation.clone().unwrap();
        assert_eq!(
            (o.kind.as_str(), o.brokers.clone()),
            ("scale-in", vec![2, 3])
        );
        assert_eq!(o.phase, "draining brokers 2, 3 (6 partitions left)");
        // Pass 2: draining (marked, partitions moving, operations running).
        s.operation = Some(o);
        let mut c = cluster(&[5, 5, 1, 1]);
        c.brokers[2].drained = true;
        c.brokers[3].drained = true;
        c.operations = vec![
            OpView {
                id: "dr-1".into(),
                kind: "drain-broker".into(),
                state: "running".into(),
                broker: 2,
            },
            OpView {
                id: "dr-2".into(),
                kind: "drain-broker".into(),
                state: "running".into(),
                broker: 3,
            },
        ];
        s.cluster = Some(c.clone());
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.broker_replicas, p.actions.clone()), (4, vec![]));
        assert_eq!(
            p.operation.as_ref().unwrap().phase,
            "draining brokers 2, 3 (2 partitions left)"
        );
        // Pass 3: drained; the StatefulSet shrinks to 2.
        c.brokers[0].partitions = 6;
        c.brokers[1].partitions = 6;
        c.brokers[2].partitions = 0;
        c.brokers[3].partitions = 0;
        for o in &mut c.operations {
            o.state = "done".into();
        }
        s.cluster = Some(c.clone());
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.broker_replicas, p.actions.clone()), (2, vec![]));
        assert_eq!(
            p.operation.as_ref().unwrap().phase,
            "removing the pods of brokers 2, 3"
        );
        // Pass 4: the StatefulSet says 2 but the pods are still going.
        s.operation = p.operation.clone();
        s.broker_replicas = Some(2);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.broker_replicas, p.actions.clone()), (2, vec![]));
        assert_eq!(
            p.operation.as_ref().unwrap().phase,
            "waiting for the pods of brokers 2, 3 to go"
        );
        // Pass 5: gone; the marks are cleared and the operation ends.
        s.broker_pods = pods(2, HASH);
        c.brokers.truncate(2);
        s.cluster = Some(c);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.broker_replicas, 2);
        assert_eq!(
            p.actions,
            vec![Action::UndrainBroker(2), Action::UndrainBroker(3)]
        );
        assert_eq!(p.operation, None);
    }

    /// Scale-out 2 → 4: pods first, then a rebalance once they joined,
    /// done when counts are within one.
    #[test]
    fn scale_out_adds_pods_then_rebalances() {
        let mut sp = spec();
        sp.brokers.replicas = 4;
        let mut s = seen(2, cluster(&[6, 6]));
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.broker_replicas, p.actions.clone()), (4, vec![]));
        let o = p.operation.clone().unwrap();
        assert_eq!(
            (o.kind.as_str(), o.brokers.clone()),
            ("scale-out", vec![2, 3])
        );
        // Pods made, brokers not yet live.
        s.operation = Some(o);
        s.broker_replicas = Some(4);
        s.broker_pods = pods(4, HASH);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![]);
        assert_eq!(
            p.operation.as_ref().unwrap().phase,
            "waiting for brokers 2, 3 to join"
        );
        // Joined, empty: a rebalance starts.
        s.cluster = Some(cluster(&[6, 6, 0, 0]));
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![Action::StartRebalance]);
        let mut o = p.operation.clone().unwrap();
        o.controller_operations.push("rb-1".into());
        s.operation = Some(o);
        // Running: wait.
        let mut c = cluster(&[4, 4, 2, 2]);
        c.operations = vec![OpView {
            id: "rb-1".into(),
            kind: "rebalance".into(),
            state: "running".into(),
            broker: 0,
        }];
        s.cluster = Some(c.clone());
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(
            (
                p.actions.clone(),
                p.operation.as_ref().unwrap().phase.as_str()
            ),
            (vec![], "rebalancing")
        );
        // Even: done.
        let mut c = cluster(&[3, 3, 3, 3]);
        c.operations = vec![OpView {
            id: "rb-1".into(),
            kind: "rebalance".into(),
            state: "done".into(),
            broker: 0,
        }];
        s.cluster = Some(c);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.actions, p.operation), (vec![], None));
    }

    /// An image change: one broker at a time, highest first, the next
    /// only when every broker is back and every partition writes.
    #[test]
    fn an_upgrade_restarts_one_broker_at_a_time() {
        let sp = spec();
        let mut s = seen(3, cluster(&[4, 4, 4]));
        s.broker_pods = pods(3, "old");
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![Action::RestartBroker(2)]);
        let o = p.operation.clone().unwrap();
        assert_eq!(o.kind, "upgrade");
        assert_eq!(o.phase, "restarting broker 2 (2 still to restart)");
        s.operation = Some(o);
        // Broker 2's pod is terminating: nothing else restarts.
        s.broker_pods[2].terminating = true;
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![]);
        // Back with the new template, but a partition is still recovering.
        s.broker_pods[2] = PodView {
            ordinal: 2,
            template_hash: HASH.into(),
            ready: true,
            terminating: false,
        };
        let mut c = cluster(&[6, 6, 0]);
        c.partition_states = BTreeMap::from([("writing".into(), 11), ("recovering".into(), 1)]);
        s.cluster = Some(c);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![]);
        // All writing: the next one.
        s.cluster = Some(cluster(&[6, 6, 0]));
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![Action::RestartBroker(1)]);
        assert_eq!(p.operation.as_ref().unwrap().brokers, vec![2, 1]);
        // After the last: the operation ends once it is back and writing.
        s.operation = p.operation.clone();
        s.broker_pods = pods(3, HASH);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!((p.actions, p.operation), (vec![], None));
    }

    #[test]
    fn a_broken_outdated_broker_is_replaced_without_waiting_for_it() {
        let sp = spec();
        let mut s = seen(3, cluster(&[6, 6, 0]));
        s.broker_pods = pods(3, "bad");
        // Broker 2 runs a bad template and never got ready; 0 and 1 are
        // outdated too but healthy.
        s.broker_pods[2].ready = false;
        s.cluster.as_mut().unwrap().brokers.truncate(2);
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.actions, vec![Action::RestartBroker(2)]);
        assert!(p.operation.unwrap().phase.contains("not ready"));
    }

    #[test]
    fn a_url_the_pool_has_under_another_id_and_a_target_put_back_while_draining() {
        let mut sp = spec();
        sp.storage.targets[0].id = "t9".into();
        let mut c = cluster(&[4, 4, 4]);
        c.targets[1].draining = true;
        let p = plan(&sp, &seen(3, c), HASH, NOW);
        // t9 is t0's url: a problem, no call; t0 leaves the spec: drained;
        // t1 is back in the spec while draining: undrained.
        assert_eq!(
            p.actions,
            vec![
                Action::UndrainTarget("t1".into()),
                Action::DrainTarget("t0".into())
            ]
        );
        assert_eq!(p.problems.len(), 1);
        assert!(
            p.problems[0].contains("target t0 of the pool"),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn storage_targets_are_added_and_removed_after_draining() {
        let mut sp = spec();
        // t2 leaves the spec; t3 joins.
        sp.storage.targets.remove(2);
        sp.storage.targets.push(StorageTarget {
            id: "t3".into(),
            url: "s3://floe-d/c1".into(),
            zone: Some("c".into()),
            weight: None,
        });
        let mut s = seen(3, cluster(&[4, 4, 4]));
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(
            p.actions,
            vec![
                Action::AddTarget(sp.storage.targets[2].clone()),
                Action::DrainTarget("t2".into())
            ]
        );
        // Added; t2 draining with segments left: wait.
        let mut c = cluster(&[4, 4, 4]);
        c.targets[2].draining = true;
        c.targets.push(TargetView {
            id: "t3".into(),
            url: "s3://floe-d/c1".into(),
            zone: "c".into(),
            weight: 1,
            draining: false,
            segments: 0,
        });
        s.cluster = Some(c.clone());
        assert_eq!(plan(&sp, &s, HASH, NOW).actions, vec![]);
        // Repaired off it: removed.
        c.targets[2].segments = 0;
        s.cluster = Some(c);
        assert_eq!(
            plan(&sp, &s, HASH, NOW).actions,
            vec![Action::RemoveTarget("t2".into())]
        );
    }

    #[test]
    fn a_target_whose_url_changed_is_a_problem_not_an_action() {
        let mut sp = spec();
        sp.storage.targets[0].url = "s3://elsewhere/c1".into();
        let p = plan(&sp, &seen(3, cluster(&[4, 4, 4])), HASH, NOW);
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.problems.len(), 1);
        assert!(p.problems[0].contains("target t0"), "{:?}", p.problems);
    }

    #[test]
    fn the_autoscaler_follows_load_within_bounds_and_after_the_cool_down() {
        let mut sp = spec();
        sp.brokers.autoscaling = Some(crate::crd::Autoscaling {
            min_brokers: 2,
            max_brokers: 5,
            target_bytes_in_per_broker: 10_000_000,
            cooldown_seconds: Some(60),
        });
        let mut c = cluster(&[4, 4, 4]);
        for b in &mut c.brokers {
            b.bytes_in_per_sec = 14_000_000.0;
        }
        let mut s = seen(3, c.clone());
        // 42 MB/s at 10 MB/s a broker: 5.
        assert_eq!(wanted_brokers(&sp, &s), (5, true));
        let p = plan(&sp, &s, HASH, NOW);
        assert_eq!(p.broker_replicas, 5);
        assert!(p.scaled);
        // Not before the cool-down.
        s.since_last_scale_s = Some(30);
        assert_eq!(wanted_brokers(&sp, &s), (3, false));
        // Far more load: capped at 5; none at all: floored at 2.
        s.since_last_scale_s = Some(600);
        for b in &mut c.brokers {
            b.bytes_in_per_sec = 100_000_000.0;
        }
        s.cluster = Some(c.clone());
        assert_eq!(wanted_brokers(&sp, &s), (5, true));
        for b in &mut c.brokers {
            b.bytes_in_per_sec = 0.0;
        }
        s.cluster = Some(c.clone());
        assert_eq!(wanted_brokers(&sp, &s), (2, true));
        // A broker without a load report yet: no decision.
        c.brokers[1].load_reported = false;
        s.cluster = Some(c);
        assert_eq!(wanted_brokers(&sp, &s), (3, false));
    }
}
