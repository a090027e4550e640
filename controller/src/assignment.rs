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

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::Uuid;

    fn p(i: i32) -> PartitionId {
        PartitionId::new(Uuid::from_u128(1), i)
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
