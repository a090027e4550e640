//! Assignment planning: which partitions need a (new) owner and which live
//! broker gets each, moving as little as possible and balancing counts.

use std::collections::HashMap;

use floe_common::{Epoch, PartitionId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBroker {
    pub id: i32,
    /// Identifies this run of the broker (its registration's revision).
    pub session: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub broker: i32,
    pub epoch: Epoch,
    pub session: i64,
    pub revision: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub partition: PartitionId,
    pub broker: i32,
    pub epoch: Epoch,
    pub session: i64,
}

/// Changes needed so every partition is owned by a live broker in its
/// current session. A partition keeps its broker while that broker lives;
/// otherwise it goes to the live broker with the fewest partitions. Each
/// change bumps the epoch.
pub fn plan(
    partitions: &[PartitionId],
    current: &HashMap<PartitionId, Current>,
    live: &[LiveBroker],
) -> Vec<Change> {
    if live.is_empty() {
        return Vec::new();
    }
    let session: HashMap<i32, i64> = live.iter().map(|b| (b.id, b.session)).collect();
    let mut load: HashMap<i32, usize> = live.iter().map(|b| (b.id, 0)).collect();
    let mut needs = Vec::new();
    for p in partitions {
        match current.get(p) {
            Some(c) if session.contains_key(&c.broker) => {
                *load.get_mut(&c.broker).unwrap() += 1;
                if session[&c.broker] != c.session {
                    needs.push((*p, Some(c.broker), c.epoch));
                }
            }
            Some(c) => needs.push((*p, None, c.epoch)),
            None => needs.push((*p, None, -1)),
        }
    }
    let mut out = Vec::new();
    for (p, keep, epoch) in needs {
        let broker = keep.unwrap_or_else(|| {
            let (&b, _) = load.iter().min_by_key(|(id, n)| (**n, **id)).unwrap();
            *load.get_mut(&b).unwrap() += 1;
            b
        });
        out.push(Change {
            partition: p,
            broker,
            epoch: epoch + 1,
            session: session[&broker],
        });
    }
    out
}

/// Moves that even out partition counts after brokers joined: partitions
/// leave the fullest brokers for the emptiest, one at a time, until every
/// broker is within one of the mean, so as few partitions move as
/// possible (the rebalance planner without load). Only partitions owned by
/// live brokers in their current session move, and only those `writing`
/// (recovered by their owner): a partition still recovering, e.g. just
/// taken over from a dead broker, is not moved again before its owner has
/// fixed its end (that would cost its clients a second recovery). The
/// second value says whether moves were held back for that reason.
pub fn balance(
    partitions: &[PartitionId],
    current: &HashMap<PartitionId, Current>,
    live: &[LiveBroker],
    writing: &std::collections::HashSet<PartitionId>,
) -> (Vec<Change>, bool) {
    let session: HashMap<i32, i64> = live.iter().map(|b| (b.id, b.session)).collect();
    let placements: Vec<crate::rebalance::Placement> = partitions
        .iter()
        .filter_map(|p| {
            let c = current.get(p)?;
            (session.get(&c.broker) == Some(&c.session)).then_some(crate::rebalance::Placement {
                partition: *p,
                broker: c.broker,
                load: 0,
            })
        })
        .collect();
    let ids: Vec<i32> = live.iter().map(|b| b.id).collect();
    let plan = crate::rebalance::plan(&ids, &placements, crate::rebalance::Settings::default());
    let planned = plan.moves.len();
    let changes: Vec<Change> = plan
        .moves
        .into_iter()
        .filter(|m| writing.contains(&m.partition))
        .map(|m| Change {
            partition: m.partition,
            broker: m.to,
            epoch: current[&m.partition].epoch + 1,
            session: session[&m.to],
        })
        .collect();
    let held = changes.len() < planned;
    (changes, held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::Uuid;

    fn p(i: i32) -> PartitionId {
        PartitionId::new(Uuid::from_u128(1), i)
    }

    fn owned_by(
        broker: i32,
        session: i64,
        parts: std::ops::Range<i32>,
    ) -> HashMap<PartitionId, Current> {
        parts
            .map(|i| {
                (
                    p(i),
                    Current {
                        broker,
                        epoch: 2,
                        session,
                        revision: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_joining_broker_takes_its_share_and_nothing_else_moves() {
        let mut cur = owned_by(1, 10, 0..4);
        cur.extend(owned_by(2, 20, 4..8));
        cur.extend(owned_by(3, 30, 8..12));
        let parts: Vec<_> = (0..12).map(p).collect();
        let live = [
            LiveBroker { id: 1, session: 10 },
            LiveBroker { id: 2, session: 20 },
            LiveBroker { id: 3, session: 30 },
        ];
        let all: std::collections::HashSet<_> = parts.iter().copied().collect();
        assert_eq!(
            balance(&parts, &cur, &live, &all),
            (Vec::new(), false),
            "already balanced"
        );
        let live4 = [live[0], live[1], live[2], LiveBroker { id: 4, session: 40 }];
        let (moves, held) = balance(&parts, &cur, &live4, &all);
        assert!(!held);
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves
            .iter()
            .all(|m| m.broker == 4 && m.session == 40 && m.epoch == 3));
        let from: std::collections::HashSet<i32> =
            moves.iter().map(|m| cur[&m.partition].broker).collect();
        assert_eq!(from.len(), 3, "one from each old broker: {moves:?}");
    }

    #[test]
    fn balance_leaves_an_off_by_one_alone() {
        let mut cur = owned_by(1, 10, 0..3);
        cur.extend(owned_by(2, 20, 3..5));
        let parts: Vec<_> = (0..5).map(p).collect();
        let live = [
            LiveBroker { id: 1, session: 10 },
            LiveBroker { id: 2, session: 20 },
        ];
        let all: std::collections::HashSet<_> = parts.iter().copied().collect();
        assert_eq!(balance(&parts, &cur, &live, &all), (Vec::new(), false));
    }

    #[test]
    fn balance_does_not_move_a_partition_its_owner_is_still_recovering() {
        // Broker 1 just took 0..6 over from a dead broker and is recovering
        // 2..6; broker 2 (restarted) joins with none.
        let cur = owned_by(1, 10, 0..6);
        let parts: Vec<_> = (0..6).map(p).collect();
        let live = [
            LiveBroker { id: 1, session: 10 },
            LiveBroker { id: 2, session: 20 },
        ];
        let none = std::collections::HashSet::new();
        assert_eq!(balance(&parts, &cur, &live, &none), (Vec::new(), true));
        // Three should move; only two may yet: the third waits.
        let writing: std::collections::HashSet<_> = (0..2).map(p).collect();
        let (moves, held) = balance(&parts, &cur, &live, &writing);
        assert!(held);
        assert!(
            moves.len() <= 2
                && moves
                    .iter()
                    .all(|m| writing.contains(&m.partition) && m.broker == 2),
            "{moves:?}"
        );
        // Once all are written again, the full share moves.
        let all: std::collections::HashSet<_> = parts.iter().copied().collect();
        let (full, later) = balance(&parts, &cur, &live, &all);
        assert_eq!(full.len(), 3, "{full:?}");
        assert!(!later);
    }

    #[test]
    fn new_partitions_spread_and_start_at_epoch_zero() {
        let live = [
            LiveBroker { id: 1, session: 10 },
            LiveBroker { id: 2, session: 20 },
        ];
        let parts: Vec<_> = (0..4).map(p).collect();
        let changes = plan(&parts, &HashMap::new(), &live);
        assert_eq!(changes.len(), 4);
        assert!(changes.iter().all(|c| c.epoch == 0));
        assert_eq!(changes.iter().filter(|c| c.broker == 1).count(), 2);
    }

    #[test]
    fn restarted_broker_keeps_partition_with_new_epoch_and_dead_broker_loses_it() {
        let live = [LiveBroker { id: 1, session: 11 }];
        let mut cur = HashMap::new();
        cur.insert(
            p(0),
            Current {
                broker: 1,
                epoch: 3,
                session: 10,
                revision: 5,
            },
        );
        cur.insert(
            p(1),
            Current {
                broker: 9,
                epoch: 7,
                session: 1,
                revision: 6,
            },
        );
        cur.insert(
            p(2),
            Current {
                broker: 1,
                epoch: 2,
                session: 11,
                revision: 7,
            },
        );
        let mut changes = plan(&[p(0), p(1), p(2)], &cur, &live);
        changes.sort_by_key(|c| c.partition.partition);
        assert_eq!(changes.len(), 2, "an up-to-date assignment is left alone");
        assert_eq!(
            (changes[0].broker, changes[0].epoch, changes[0].session),
            (1, 4, 11)
        );
        assert_eq!((changes[1].broker, changes[1].epoch), (1, 8));
    }
}
