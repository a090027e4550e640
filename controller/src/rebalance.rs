//! The rebalance planner: from where partitions are and what each one
//! carries (measured bytes per second), the fewest moves that leave every
//! eligible broker within one partition of the mean count and, when the
//! cluster carries enough traffic for it to matter, within a tolerance of
//! the mean load.

use std::collections::{BTreeMap, HashMap};

use floe_common::PartitionId;

/// Where a partition is and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub partition: PartitionId,
    pub broker: i32,
    /// Bytes in + out per second (0 when unmeasured).
    pub load: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    pub partition: PartitionId,
    pub from: i32,
    pub to: i32,
    pub load: u64,
}

/// A broker's share, before or after a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub broker: i32,
    pub partitions: usize,
    pub load: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Every broker's load should end within this fraction of the mean.
    pub load_tolerance: f64,
    /// Below this mean load per broker (bytes/s), only counts are balanced:
    /// idle clusters are not reshuffled over noise.
    pub min_load: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            load_tolerance: 0.10,
            min_load: 64 << 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub before: Vec<Share>,
    pub after: Vec<Share>,
    /// The mean load per broker and the band the plan aims for.
    pub mean_load: u64,
    pub load_band: (u64, u64),
    /// Whether load was balanced (false: below `min_load`, counts only).
    pub load_balanced: bool,
}

impl Plan {
    /// Whether every broker ends within one partition of every other.
    pub fn counts_within_one(&self) -> bool {
        let min = self.after.iter().map(|s| s.partitions).min().unwrap_or(0);
        let max = self.after.iter().map(|s| s.partitions).max().unwrap_or(0);
        max <= min + 1
    }

    /// Whether every broker ends inside the load band (always true when
    /// load was not balanced).
    pub fn load_within_band(&self) -> bool {
        !self.load_balanced
            || self
                .after
                .iter()
                .all(|s| s.load >= self.load_band.0 && s.load <= self.load_band.1)
    }
}

struct Broker {
    parts: Vec<(PartitionId, u64)>,
    load: u64,
}

fn shares(brokers: &BTreeMap<i32, Broker>) -> Vec<Share> {
    brokers
        .iter()
        .map(|(id, b)| Share {
            broker: *id,
            partitions: b.parts.len(),
            load: b.load,
        })
        .collect()
}

/// Plan moves over `eligible` brokers. Partitions placed on other brokers
/// (drained, gone) are ignored: assignment handles those.
pub fn plan(eligible: &[i32], placements: &[Placement], settings: Settings) -> Plan {
    let mut brokers: BTreeMap<i32, Broker> = eligible
        .iter()
        .map(|b| {
            (
                *b,
                Broker {
                    parts: Vec::new(),
                    load: 0,
                },
            )
        })
        .collect();
    let mut sorted = placements.to_vec();
    sorted.sort_by_key(|p| (p.partition.topic_id, p.partition.partition));
    let origin: HashMap<PartitionId, i32> =
        sorted.iter().map(|p| (p.partition, p.broker)).collect();
    for p in &sorted {
        if let Some(b) = brokers.get_mut(&p.broker) {
            b.parts.push((p.partition, p.load));
            b.load += p.load;
        }
    }
    let before = shares(&brokers);
    let total: usize = brokers.values().map(|b| b.parts.len()).sum();
    let total_load: u64 = brokers.values().map(|b| b.load).sum();
    let n = brokers.len().max(1);
    let (floor, ceil) = (total / n, total.div_ceil(n));
    let mean_load = total_load / n as u64;
    let slack = (mean_load as f64 * settings.load_tolerance) as u64;
    let load_band = (mean_load.saturating_sub(slack), mean_load + slack);
    let load_balanced = !brokers.is_empty() && mean_load >= settings.min_load;
    let mut moved: Vec<(PartitionId, i32, u64)> = Vec::new();
    let mut shift = |brokers: &mut BTreeMap<i32, Broker>, from: i32, to: i32, idx: usize| {
        let (p, load) = brokers.get_mut(&from).unwrap().parts.swap_remove(idx);
        brokers.get_mut(&from).unwrap().load -= load;
        let dst = brokers.get_mut(&to).unwrap();
        dst.parts.push((p, load));
        dst.load += load;
        moved.push((p, to, load));
    };

    // 1. Counts: from the fullest broker to the emptiest, each time the
    //    partition whose load best evens the pair's loads.
    if !brokers.is_empty() {
        loop {
            let src = *brokers
                .iter()
                .max_by_key(|(id, b)| (b.parts.len(), b.load, std::cmp::Reverse(**id)))
                .unwrap()
                .0;
            let dst = *brokers
                .iter()
                .min_by_key(|(id, b)| (b.parts.len(), b.load, **id))
                .unwrap()
                .0;
            let (sn, dn) = (brokers[&src].parts.len(), brokers[&dst].parts.len());
            if sn <= dn + 1 || (sn <= ceil && dn >= floor) {
                break;
            }
            let gap = brokers[&src].load.saturating_sub(brokers[&dst].load);
            let ideal = gap / 2;
            let idx = brokers[&src]
                .parts
                .iter()
                .enumerate()
                .min_by_key(|(_, (p, l))| (l.abs_diff(ideal), p.topic_id, p.partition))
                .map(|(i, _)| i)
                .unwrap();
            shift(&mut brokers, src, dst, idx);
        }
    }

    // 2. Load: while a broker is outside the band, the single move (or, if
    //    none keeps counts within bounds, the swap) that most lowers the
    //    heavier side, heaviest broker first. Every step lowers the sum of
    //    squared loads, so this ends; the cap is a guard.
    if load_balanced {
        for _ in 0..(total * 2 + 8) {
            let (&src, s) = brokers
                .iter()
                .max_by_key(|(id, b)| (b.load, std::cmp::Reverse(**id)))
                .unwrap();
            let (_, d) = brokers.iter().min_by_key(|(id, b)| (b.load, **id)).unwrap();
            if s.load <= load_band.1 && d.load >= load_band.0 {
                break;
            }
            let mut dsts: Vec<i32> = brokers.keys().copied().filter(|b| *b != src).collect();
            dsts.sort_by_key(|b| (brokers[b].load, *b));
            let mut step = None;
            for dst in dsts {
                let (s, d) = (&brokers[&src], &brokers[&dst]);
                let mut best: Option<(u64, usize, Option<usize>)> = None;
                // A step must lower the heavier side below the source's load.
                let offer = |best: &mut Option<_>, peak: u64, i: usize, j: Option<usize>| {
                    if peak < s.load && best.is_none_or(|(b, _, _): (u64, _, _)| peak < b) {
                        *best = Some((peak, i, j));
                    }
                };
                if s.parts.len() > floor && d.parts.len() < ceil {
                    for (i, (_, l)) in s.parts.iter().enumerate() {
                        offer(&mut best, (s.load - l).max(d.load + l), i, None);
                    }
                }
                if best.is_none() {
                    for (i, (_, l)) in s.parts.iter().enumerate() {
                        for (j, (_, m)) in d.parts.iter().enumerate() {
                            if l > m {
                                offer(&mut best, (s.load - l + m).max(d.load + l - m), i, Some(j));
                            }
                        }
                    }
                }
                if let Some((_, i, j)) = best {
                    step = Some((dst, i, j));
                    break;
                }
            }
            let Some((dst, i, j)) = step else { break };
            match j {
                None => shift(&mut brokers, src, dst, i),
                Some(j) => {
                    // Take the lighter one first: indices of `src` stay
                    // valid for the heavier one (it is pushed at the end).
                    shift(&mut brokers, dst, src, j);
                    shift(&mut brokers, src, dst, i);
                }
            }
        }
    }

    // A partition moved twice counts once; one that came home not at all.
    let mut last: BTreeMap<(floe_common::Uuid, i32), (i32, u64)> = BTreeMap::new();
    for (p, to, load) in moved {
        last.insert((p.topic_id, p.partition), (to, load));
    }
    let moves = last
        .into_iter()
        .filter_map(|((t, i), (to, load))| {
            let partition = PartitionId::new(t, i);
            let from = origin[&partition];
            (from != to).then_some(Move {
                partition,
                from,
                to,
                load,
            })
        })
        .collect();
    Plan {
        moves,
        before,
        after: shares(&brokers),
        mean_load,
        load_band,
        load_balanced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::Uuid;

    fn p(i: i32) -> PartitionId {
        PartitionId::new(Uuid::from_u128(9), i)
    }

    fn placements(spec: &[(i32, u64)]) -> Vec<Placement> {
        spec.iter()
            .enumerate()
            .map(|(i, (b, l))| Placement {
                partition: p(i as i32),
                broker: *b,
                load: *l,
            })
            .collect()
    }

    fn apply(placements: &[Placement], plan: &Plan) -> HashMap<i32, (usize, u64)> {
        let mut out: HashMap<i32, (usize, u64)> = HashMap::new();
        for pl in placements {
            let to = plan
                .moves
                .iter()
                .find(|m| m.partition == pl.partition)
                .map_or(pl.broker, |m| {
                    assert_eq!(m.from, pl.broker, "a move starts where the partition is");
                    m.to
                });
            let e = out.entry(to).or_default();
            e.0 += 1;
            e.1 += pl.load;
        }
        out
    }

    #[test]
    fn scale_out_moves_exactly_the_new_brokers_share() {
        // 60 equal partitions on 3 brokers; 3 join.
        let spec: Vec<(i32, u64)> = (0..60).map(|i| (1 + i % 3, 1 << 20)).collect();
        let pl = placements(&spec);
        let plan = plan(&[1, 2, 3, 4, 5, 6], &pl, Settings::default());
        assert_eq!(plan.moves.len(), 30, "half of the partitions, no more");
        assert!(plan.moves.iter().all(|m| m.to >= 4 && m.from <= 3));
        let after = apply(&pl, &plan);
        for b in 1..=6 {
            assert_eq!(after[&b].0, 10, "broker {b}: {after:?}");
        }
        assert!(plan.counts_within_one() && plan.load_within_band());
        assert!(plan.load_balanced);
    }

    #[test]
    fn a_balanced_cluster_is_left_alone() {
        let spec: Vec<(i32, u64)> = (0..31).map(|i| (1 + i % 3, 100 << 10)).collect();
        let plan = plan(&[1, 2, 3], &placements(&spec), Settings::default());
        assert!(plan.moves.is_empty(), "{:?}", plan.moves);
    }

    #[test]
    fn hot_partitions_are_spread_even_when_counts_are_even() {
        // Broker 1 holds both hot partitions; counts are already even.
        let mut spec = vec![(1, 10 << 20), (1, 10 << 20)];
        spec.extend((0..4).map(|_| (1, 1 << 20)));
        spec.extend((0..6).map(|_| (2, 1 << 20)));
        spec.extend((0..6).map(|_| (3, 1 << 20)));
        let pl = placements(&spec);
        let plan = plan(&[1, 2, 3], &pl, Settings::default());
        let after = apply(&pl, &plan);
        let hot_owners: std::collections::HashSet<i32> = plan
            .moves
            .iter()
            .filter(|m| m.load == 10 << 20)
            .map(|m| m.to)
            .collect();
        assert_eq!(hot_owners.len(), 1, "one hot partition moves: {plan:?}");
        for b in 1..=3 {
            assert!(
                after[&b].0.abs_diff(6) <= 1,
                "counts stay within one: {after:?}"
            );
        }
        // With counts held at 6 each, one hot partition plus five small
        // ones (15 MiB/s) is the best the heaviest broker can do.
        let max = after.values().map(|v| v.1).max().unwrap();
        assert_eq!(max, 15 << 20, "{after:?}");
        assert_eq!(plan.moves.len(), 2, "one swap: {:?}", plan.moves);
    }

    #[test]
    fn idle_clusters_balance_counts_only() {
        let spec: Vec<(i32, u64)> = (0..10)
            .map(|i| (if i < 8 { 1 } else { 2 }, (i as u64) * 10))
            .collect();
        let pl = placements(&spec);
        let plan = plan(&[1, 2], &pl, Settings::default());
        assert!(!plan.load_balanced);
        assert_eq!(plan.moves.len(), 3);
        let after = apply(&pl, &plan);
        assert_eq!((after[&1].0, after[&2].0), (5, 5));
    }

    #[test]
    fn partitions_on_ineligible_brokers_are_not_planned() {
        let spec = vec![(9, 0), (9, 0), (1, 0), (1, 0), (1, 0), (1, 0)];
        let plan = plan(&[1, 2], &placements(&spec), Settings::default());
        assert_eq!(plan.moves.len(), 2);
        assert!(plan.moves.iter().all(|m| m.from == 1 && m.to == 2));
    }
}
