//! Server-side partition assignors of the consumer group protocol
//! (KIP-848, chosen by a member's `group.remote.assignor`): `uniform`, the
//! default — every member as close to the same count as subscriptions
//! allow, keeping what members own — and `range` — per topic, contiguous
//! ranges in member-id order, so that co-partitioned topics give a member
//! the same partition numbers. The group coordinator computes a target
//! assignment with these whenever the group's members, subscriptions or
//! topics change (`consumer_group.rs`).

use std::collections::{BTreeMap, BTreeSet};

use floe_common::Uuid;

/// What the assignor knows of one member.
#[derive(Clone, Debug, Default)]
pub struct MemberSpec {
    pub id: String,
    /// Topics it subscribes to (resolved from names or a regex).
    pub topics: BTreeSet<Uuid>,
    /// What it owns now (its current assignment), kept where possible.
    pub owned: BTreeMap<Uuid, BTreeSet<i32>>,
}

/// Member id → topic → partitions.
pub type Assignment = BTreeMap<String, BTreeMap<Uuid, BTreeSet<i32>>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    Uniform,
    Range,
}

impl Assignor {
    /// By the name a client asks for (`None`: the default, uniform).
    pub fn by_name(name: Option<&str>) -> Option<Assignor> {
        match name {
            None | Some("") | Some("uniform") => Some(Assignor::Uniform),
            Some("range") => Some(Assignor::Range),
            Some(_) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => "uniform",
            Assignor::Range => "range",
        }
    }
}

/// The target assignment of `members` over `partitions` (topic → count).
/// Every member appears in the answer, with nothing if it gets nothing.
pub fn assign(
    assignor: Assignor,
    members: &[MemberSpec],
    partitions: &BTreeMap<Uuid, i32>,
) -> Assignment {
    let mut out: Assignment = members
        .iter()
        .map(|m| (m.id.clone(), BTreeMap::new()))
        .collect();
    match assignor {
        Assignor::Range => range(members, partitions, &mut out),
        Assignor::Uniform => uniform(members, partitions, &mut out),
    }
    out
}

fn range(members: &[MemberSpec], partitions: &BTreeMap<Uuid, i32>, out: &mut Assignment) {
    for (&topic, &count) in partitions {
        let mut subscribed: Vec<&str> = members
            .iter()
            .filter(|m| m.topics.contains(&topic))
            .map(|m| m.id.as_str())
            .collect();
        subscribed.sort_unstable();
        if subscribed.is_empty() || count <= 0 {
            continue;
        }
        let k = subscribed.len() as i32;
        let (each, extra) = (count / k, count % k);
        let mut next = 0;
        for (i, id) in subscribed.iter().enumerate() {
            let n = each + i32::from((i as i32) < extra);
            if n > 0 {
                let set: BTreeSet<i32> = (next..next + n).collect();
                out.get_mut(*id).unwrap().insert(topic, set);
            }
            next += n;
        }
    }
}

fn uniform(members: &[MemberSpec], partitions: &BTreeMap<Uuid, i32>, out: &mut Assignment) {
    let exists = |t: &Uuid, p: i32| partitions.get(t).is_some_and(|&n| p >= 0 && p < n);
    let mut owner: BTreeMap<(Uuid, i32), String> = BTreeMap::new();
    let mut load: BTreeMap<String, usize> = members.iter().map(|m| (m.id.clone(), 0)).collect();
    let by_id: BTreeMap<&str, &MemberSpec> = members.iter().map(|m| (m.id.as_str(), m)).collect();
    // Keep what members own and still may own (the first claim wins).
    for m in by_id.values() {
        for (t, ps) in &m.owned {
            if !m.topics.contains(t) {
                continue;
            }
            for &p in ps {
                if exists(t, p) && !owner.contains_key(&(*t, p)) {
                    owner.insert((*t, p), m.id.clone());
                    *load.get_mut(&m.id).unwrap() += 1;
                }
            }
        }
    }
    // The rest to the least loaded member that subscribes (ties: by id).
    for (&t, &n) in partitions {
        for p in 0..n.max(0) {
            if owner.contains_key(&(t, p)) {
                continue;
            }
            let best = by_id
                .values()
                .filter(|m| m.topics.contains(&t))
                .min_by_key(|m| (load[&m.id], m.id.clone()));
            if let Some(m) = best {
                owner.insert((t, p), m.id.clone());
                *load.get_mut(&m.id).unwrap() += 1;
            }
        }
    }
    // Even out: move a partition from a member with two or more than
    // another that could take it, until none can move. Each move lowers
    // the sum of squared loads, so this ends.
    loop {
        let mut moved = false;
        let keys: Vec<(Uuid, i32)> = owner.keys().copied().collect();
        for key in keys {
            let from = owner[&key].clone();
            let to = by_id
                .values()
                .filter(|m| m.topics.contains(&key.0) && load[&m.id] + 1 < load[&from])
                .min_by_key(|m| (load[&m.id], m.id.clone()));
            if let Some(to) = to {
                *load.get_mut(&from).unwrap() -= 1;
                *load.get_mut(&to.id).unwrap() += 1;
                owner.insert(key, to.id.clone());
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    for ((t, p), id) in owner {
        out.get_mut(&id).unwrap().entry(t).or_default().insert(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn member(id: &str, topics: &[Uuid]) -> MemberSpec {
        MemberSpec {
            id: id.into(),
            topics: topics.iter().copied().collect(),
            owned: BTreeMap::new(),
        }
    }

    fn counts(a: &Assignment) -> Vec<usize> {
        a.values()
            .map(|ts| ts.values().map(BTreeSet::len).sum())
            .collect()
    }

    /// Every partition of `partitions` is assigned exactly once.
    fn covers(a: &Assignment, partitions: &BTreeMap<Uuid, i32>) {
        let mut seen = BTreeSet::new();
        for ts in a.values() {
            for (t, ps) in ts {
                for p in ps {
                    assert!(seen.insert((*t, *p)), "{t}/{p} assigned twice");
                }
            }
        }
        let all: BTreeSet<(Uuid, i32)> = partitions
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |p| (*t, p)))
            .collect();
        assert_eq!(seen, all);
    }

    #[test]
    fn uniform_balances_and_keeps_what_members_own() {
        let t = topic(1);
        let parts = BTreeMap::from([(t, 6)]);
        let ms = vec![member("a", &[t]), member("b", &[t]), member("c", &[t])];
        let first = assign(Assignor::Uniform, &ms, &parts);
        covers(&first, &parts);
        assert_eq!(counts(&first), [2, 2, 2]);
        // c leaves: a and b keep their two and share c's.
        let ms: Vec<MemberSpec> = ["a", "b"]
            .iter()
            .map(|id| MemberSpec {
                owned: first[*id].clone(),
                ..member(id, &[t])
            })
            .collect();
        let second = assign(Assignor::Uniform, &ms, &parts);
        covers(&second, &parts);
        assert_eq!(counts(&second), [3, 3]);
        for id in ["a", "b"] {
            assert!(
                first[id][&t].is_subset(&second[id][&t]),
                "{id} kept its own"
            );
        }
        // c comes back: it gets two, a and b give up one each.
        let mut ms = ms;
        for m in &mut ms {
            m.owned = second[&m.id].clone();
        }
        ms.push(member("c", &[t]));
        let third = assign(Assignor::Uniform, &ms, &parts);
        covers(&third, &parts);
        assert_eq!(counts(&third), [2, 2, 2]);
        for id in ["a", "b"] {
            assert!(
                third[id][&t].is_subset(&second[id][&t]),
                "{id} moved nothing else"
            );
        }
    }

    #[test]
    fn uniform_respects_subscriptions() {
        let (t1, t2) = (topic(1), topic(2));
        let parts = BTreeMap::from([(t1, 2), (t2, 4)]);
        let ms = vec![member("a", &[t1]), member("b", &[t1, t2])];
        let a = assign(Assignor::Uniform, &ms, &parts);
        covers(&a, &parts);
        assert!(!a["a"].contains_key(&t2), "a does not subscribe to t2");
        // b must take all of t2; a takes what balance allows of t1.
        assert_eq!(a["b"][&t2].len(), 4);
        assert_eq!(a["a"][&t1].len(), 2);
        // A member owning a partition of a topic it left loses it.
        let ms = vec![
            MemberSpec {
                owned: BTreeMap::from([(t2, BTreeSet::from([0]))]),
                ..member("a", &[t1])
            },
            member("b", &[t1, t2]),
        ];
        let a = assign(Assignor::Uniform, &ms, &parts);
        covers(&a, &parts);
        assert!(!a["a"].contains_key(&t2));
        // Nobody subscribes: nothing assigned, every member still listed.
        let a = assign(Assignor::Uniform, &[member("z", &[])], &parts);
        assert_eq!(a.len(), 1);
        assert!(a["z"].is_empty());
    }

    #[test]
    fn range_gives_co_partitioned_topics_the_same_numbers() {
        let (t1, t2) = (topic(1), topic(2));
        let parts = BTreeMap::from([(t1, 5), (t2, 5)]);
        let ms = vec![member("b", &[t1, t2]), member("a", &[t1, t2])];
        let a = assign(Assignor::Range, &ms, &parts);
        covers(&a, &parts);
        assert_eq!(a["a"][&t1], BTreeSet::from([0, 1, 2]));
        assert_eq!(a["b"][&t1], BTreeSet::from([3, 4]));
        assert_eq!(a["a"][&t1], a["a"][&t2]);
        assert_eq!(a["b"][&t1], a["b"][&t2]);
        assert_eq!(Assignor::by_name(Some("range")), Some(Assignor::Range));
        assert_eq!(Assignor::by_name(None), Some(Assignor::Uniform));
        assert_eq!(Assignor::by_name(Some("sticky")), None);
    }
}
