//! A partition's transactions as its writer keeps them: which producers
//! have a transaction open here and from which offset, which end markers
//! are appended but not yet durable, and — once a marker is durable — the
//! transaction leaves the open set (and, if aborted, joins the aborted
//! index readers are given). Pure bookkeeping: the writer feeds it batch
//! headers as it assigns offsets and the high watermark as chunks become
//! durable; recovery feeds it the same headers when it replays a log.
//!
//! A transaction counts as open until its end marker is *durable*, so the
//! last stable offset never passes records whose abort is not yet on
//! storage.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use floe_common::Offset;
use floe_protocol::batch::BatchHeader;
use floe_protocol::control::{Marker, MarkerKind};
use floe_protocol::ResponseError;
use floe_storage::log::AbortedTxn;

/// A transaction open on this partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenTxn {
    pub producer_epoch: i16,
    pub first_offset: Offset,
}

/// An end marker appended, waiting to be durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ending {
    producer_id: i64,
    kind: MarkerKind,
    first_offset: Offset,
}

#[derive(Clone, Debug, Default)]
pub struct Txns {
    open: BTreeMap<i64, OpenTxn>,
    /// By the marker's offset.
    ending: BTreeMap<Offset, Ending>,
    /// Per producer, the coordinator epoch of its last marker here: a
    /// marker from an older coordinator (one that lost its partition and
    /// still had markers on their way) is refused, so it cannot end the
    /// producer's next transaction.
    coordinators: BTreeMap<i64, i32>,
}

/// KIP-890 part 1, the verification guard: before a producer's first
/// transactional batch of a transaction is taken here, the broker asks the
/// transaction coordinator whether this partition was added. The guard is
/// made *before* that question and cleared by the producer's end marker, so
/// an answer that raced the transaction's end (the coordinator said yes,
/// then the markers were written, then the batch arrived) is refused: the
/// batch's guard is gone. Shared by the partition's handle (the produce
/// path) and its writer (which checks and clears guards in log order).
#[derive(Debug, Default)]
pub struct TxnGate {
    guards: Mutex<HashMap<i64, Guard>>,
    next: AtomicU64,
}

/// A producer's guard: its epoch, its token, and whether the coordinator
/// has answered yes under it (a guard still being asked about lets no
/// batch in: each request that finds it pending asks on its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Guard {
    epoch: i16,
    token: u64,
    verified: bool,
}

impl TxnGate {
    /// The guard of `producer_id` at `epoch`: one the coordinator already
    /// verified (`true`), or one to verify now (`false`; an existing one
    /// still being asked about is shared).
    pub fn guard(&self, producer_id: i64, epoch: i16) -> (u64, bool) {
        let mut g = self.guards.lock().unwrap();
        match g.get(&producer_id) {
            Some(x) if x.epoch == epoch => (x.token, x.verified),
            _ => {
                let token = self.next.fetch_add(1, Ordering::Relaxed) + 1;
                g.insert(
                    producer_id,
                    Guard {
                        epoch,
                        token,
                        verified: false,
                    },
                );
                (token, false)
            }
        }
    }

    /// The coordinator said yes under `token` (no effect if the guard was
    /// cleared or replaced meanwhile).
    pub fn verified(&self, producer_id: i64, token: u64) {
        if let Some(x) = self.guards.lock().unwrap().get_mut(&producer_id) {
            if x.token == token {
                x.verified = true;
            }
        }
    }

    /// Whether `token` is still the verified guard of `producer_id` at
    /// `epoch`.
    pub fn holds(&self, producer_id: i64, epoch: i16, token: u64) -> bool {
        self.guards
            .lock()
            .unwrap()
            .get(&producer_id)
            .is_some_and(|x| x.epoch == epoch && x.token == token && x.verified)
    }

    /// The verification of `token` failed: forget it (unless replaced).
    pub fn forget(&self, producer_id: i64, token: u64) {
        let mut g = self.guards.lock().unwrap();
        if g.get(&producer_id).is_some_and(|x| x.token == token) {
            g.remove(&producer_id);
        }
    }

    /// The producer's transaction ended here (its marker was appended).
    pub fn clear(&self, producer_id: i64) {
        self.guards.lock().unwrap().remove(&producer_id);
    }
}

impl Txns {
    /// Whether `producer_id` has a transaction open here at `epoch` (its
    /// later batches need no new verification).
    pub fn is_open(&self, producer_id: i64, epoch: i16) -> bool {
        self.open
            .get(&producer_id)
            .is_some_and(|o| o.producer_epoch == epoch)
    }

    /// Whether a transactional data batch of `h` may be appended: not
    /// from an epoch older than the producer's open transaction
    /// (INVALID_PRODUCER_EPOCH), not while that producer's previous
    /// transaction is still ending here (CONCURRENT_TRANSACTIONS: its
    /// marker is not durable yet).
    pub fn check_batch(&self, h: &BatchHeader) -> Result<(), ResponseError> {
        if let Some(o) = self.open.get(&h.producer_id) {
            if h.producer_epoch < o.producer_epoch {
                return Err(ResponseError::InvalidProducerEpoch);
            }
        }
        if self.ending.values().any(|e| e.producer_id == h.producer_id) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        Ok(())
    }

    /// A transactional data batch of `h` was assigned `base_offset`: the
    /// producer's transaction here starts there unless it is open already.
    pub fn on_batch(&mut self, h: &BatchHeader, base_offset: Offset) {
        if !h.is_transactional() || h.is_control() {
            return;
        }
        let o = self.open.entry(h.producer_id).or_insert(OpenTxn {
            producer_epoch: h.producer_epoch,
            first_offset: base_offset,
        });
        o.producer_epoch = o.producer_epoch.max(h.producer_epoch);
    }

    /// Whether `marker` may be written: its epoch is not older than the
    /// open transaction's (a zombie coordinator's or producer's marker is
    /// refused with INVALID_PRODUCER_EPOCH). A marker for a producer with
    /// nothing open here is accepted and changes nothing (the coordinator
    /// retries markers; Kafka writes them regardless).
    pub fn check_marker(&self, marker: &Marker) -> Result<(), ResponseError> {
        if self
            .coordinators
            .get(&marker.producer_id)
            .is_some_and(|&e| marker.coordinator_epoch < e)
        {
            return Err(ResponseError::TransactionCoordinatorFenced);
        }
        match self.open.get(&marker.producer_id) {
            Some(o) if marker.producer_epoch < o.producer_epoch => {
                Err(ResponseError::InvalidProducerEpoch)
            }
            _ => Ok(()),
        }
    }

    /// `marker` was assigned `offset`: its transaction ends once that
    /// offset is durable.
    pub fn on_marker(&mut self, marker: &Marker, offset: Offset) {
        let e = self.coordinators.entry(marker.producer_id).or_default();
        *e = (*e).max(marker.coordinator_epoch);
        if let Some(o) = self.open.remove(&marker.producer_id) {
            self.ending.insert(
                offset,
                Ending {
                    producer_id: marker.producer_id,
                    kind: marker.kind,
                    first_offset: o.first_offset,
                },
            );
        }
    }

    /// The high watermark reached `hw`: the transactions whose markers are
    /// now durable end; the aborted ones, keyed by marker offset, for the
    /// log's aborted index.
    pub fn durable(&mut self, hw: Offset) -> Vec<(Offset, AbortedTxn)> {
        let still = self.ending.split_off(&hw);
        let ended = std::mem::replace(&mut self.ending, still);
        ended
            .into_iter()
            .filter(|(_, e)| e.kind == MarkerKind::Abort)
            .map(|(offset, e)| {
                (
                    offset,
                    AbortedTxn {
                        producer_id: e.producer_id,
                        first_offset: e.first_offset,
                    },
                )
            })
            .collect()
    }

    /// The first offset of the oldest transaction not ended durably (the
    /// last stable offset is the smaller of it and the high watermark).
    pub fn first_unstable(&self) -> Option<Offset> {
        self.open
            .values()
            .map(|o| o.first_offset)
            .chain(self.ending.values().map(|e| e.first_offset))
            .min()
    }

    /// Producers with a transaction open here: (producer id, epoch, first
    /// offset), for DescribeProducers and the producer snapshot.
    pub fn open(&self) -> impl Iterator<Item = (i64, OpenTxn)> + '_ {
        self.open.iter().map(|(p, o)| (*p, *o))
    }

    /// The transactions not ended durably — open, or with an end marker
    /// not yet durable — as saved with a checkpoint: a replay from the
    /// checkpoint's offset meets their markers again.
    pub fn unended(&self) -> Vec<floe_meta::schema::OpenTxnRecord> {
        let mut out: Vec<_> = self
            .open
            .iter()
            .map(|(p, o)| floe_meta::schema::OpenTxnRecord {
                producer_id: *p,
                epoch: o.producer_epoch as i32,
                first_offset: o.first_offset,
            })
            .chain(
                self.ending
                    .values()
                    .map(|e| floe_meta::schema::OpenTxnRecord {
                        producer_id: e.producer_id,
                        epoch: -1,
                        first_offset: e.first_offset,
                    }),
            )
            .collect();
        out.sort_by_key(|r| (r.first_offset, r.producer_id));
        out
    }

    /// Recovery found the log ending at `end`: a transaction whose first
    /// batch is not in it was never written here, and one whose end marker
    /// is not in it is open again (its coordinator writes the marker anew).
    pub fn truncate(&mut self, end: Offset) {
        self.open.retain(|_, o| o.first_offset < end);
        for (_, e) in self.ending.split_off(&end) {
            if e.first_offset < end {
                self.open.insert(
                    e.producer_id,
                    OpenTxn {
                        producer_epoch: 0,
                        first_offset: e.first_offset,
                    },
                );
            }
        }
    }

    /// Coordinator epochs to save with a checkpoint: those of producers
    /// the partition still knows (`known`) or with a transaction open.
    pub fn coordinator_epochs(
        &mut self,
        known: impl Fn(i64) -> bool,
    ) -> Vec<floe_meta::schema::CoordinatorEpochRecord> {
        let (open, ending) = (&self.open, &self.ending);
        self.coordinators.retain(|p, _| {
            known(*p) || open.contains_key(p) || ending.values().any(|e| e.producer_id == *p)
        });
        self.coordinators
            .iter()
            .map(|(p, e)| floe_meta::schema::CoordinatorEpochRecord {
                producer_id: *p,
                coordinator_epoch: *e,
            })
            .collect()
    }

    /// The state saved with a checkpoint, as recovery starts from it.
    pub fn from_saved(
        open: &[floe_meta::schema::OpenTxnRecord],
        coordinators: &[floe_meta::schema::CoordinatorEpochRecord],
    ) -> Txns {
        let mut t = Txns {
            coordinators: coordinators
                .iter()
                .map(|r| (r.producer_id, r.coordinator_epoch))
                .collect(),
            ..Default::default()
        };
        for r in open {
            t.open.insert(
                r.producer_id,
                OpenTxn {
                    producer_epoch: r.epoch.max(0) as i16,
                    first_offset: r.first_offset,
                },
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_protocol::batch::{assign, Batches};
    use floe_protocol::control::marker_batch;

    fn txn_header(pid: i64, epoch: i16, offset: Offset) -> BatchHeader {
        use floe_protocol::kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let r = Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: 0,
            timestamp: 1_000,
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[r],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        let mut b = buf.to_vec();
        assign(&mut b, offset, 1, None);
        Batches::new(&b).next().unwrap().1
    }

    fn marker(pid: i64, epoch: i16, kind: MarkerKind) -> Marker {
        Marker {
            producer_id: pid,
            producer_epoch: epoch,
            kind,
            coordinator_epoch: 1,
        }
    }

    /// Two producers interleaved: one commits, one aborts. The LSO holds
    /// at the first open transaction until its marker is durable; only the
    /// abort joins the aborted index, under its marker's offset.
    #[test]
    fn transactions_end_when_their_markers_are_durable() {
        let mut t = Txns::default();
        // p1 at 10, p2 at 11, p1 again at 12 (same transaction).
        for (pid, off) in [(1, 10), (2, 11), (1, 12)] {
            let h = txn_header(pid, 0, off);
            t.check_batch(&h).unwrap();
            t.on_batch(&h, off);
        }
        assert_eq!(t.first_unstable(), Some(10));
        // p1 commits at 13: appended, not yet durable.
        let c = marker(1, 0, MarkerKind::Commit);
        t.check_marker(&c).unwrap();
        t.on_marker(&c, 13);
        assert_eq!(t.first_unstable(), Some(10), "open until durable");
        // p1 cannot start its next transaction here before that.
        assert_eq!(
            t.check_batch(&txn_header(1, 1, 14)),
            Err(ResponseError::ConcurrentTransactions)
        );
        // p2 aborts at 14.
        let a = marker(2, 0, MarkerKind::Abort);
        t.on_marker(&a, 14);
        // Durable up to 14 (exclusive): the commit ends, the abort not yet.
        assert_eq!(t.durable(14), vec![]);
        assert_eq!(t.first_unstable(), Some(11));
        // Durable past 14: the abort ends and is indexed.
        assert_eq!(
            t.durable(15),
            vec![(
                14,
                AbortedTxn {
                    producer_id: 2,
                    first_offset: 11
                }
            )]
        );
        assert_eq!(t.first_unstable(), None);
        assert_eq!(t.open().count(), 0);
    }

    /// Random interleavings of four producers' batches, markers and the
    /// high watermark's moves, against what must hold: the last stable
    /// offset never passes a transaction whose end is not durable, and the
    /// aborted index holds exactly the aborts whose markers are durable.
    #[test]
    fn the_lso_never_passes_an_unended_transaction_in_random_interleavings() {
        use rand::{Rng, SeedableRng};
        for seed in 0..400u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = Txns::default();
            let mut next: Offset = 0;
            let mut hw: Offset = 0;
            // Model: per producer, the open transaction's first offset;
            // ended ones as (marker offset, producer, abort?, first).
            let mut open: std::collections::HashMap<i64, Offset> = Default::default();
            let mut ended: Vec<(Offset, i64, bool, Offset)> = Vec::new();
            let mut aborted: Vec<(Offset, AbortedTxn)> = Vec::new();
            for _ in 0..60 {
                let pid = rng.random_range(0..4i64);
                match rng.random_range(0..3) {
                    0 => {
                        let h = txn_header(pid, 0, next);
                        if t.check_batch(&h).is_ok() {
                            t.on_batch(&h, next);
                            open.entry(pid).or_insert(next);
                            next += 1;
                        } else {
                            // Refused only while its last end is not durable.
                            assert!(
                                ended.iter().any(|(m, p, ..)| *p == pid && *m >= hw),
                                "seed {seed}"
                            );
                        }
                    }
                    1 => {
                        let kind = if rng.random_bool(0.5) {
                            MarkerKind::Abort
                        } else {
                            MarkerKind::Commit
                        };
                        let m = marker(pid, 0, kind);
                        t.check_marker(&m).unwrap();
                        t.on_marker(&m, next);
                        if let Some(first) = open.remove(&pid) {
                            ended.push((next, pid, kind == MarkerKind::Abort, first));
                        }
                        next += 1;
                    }
                    _ => {
                        hw = rng.random_range(hw..=next);
                        aborted.extend(t.durable(hw));
                    }
                }
                let lso = t.first_unstable().map_or(hw, |f| f.min(hw));
                let unended_firsts = open
                    .values()
                    .copied()
                    .chain(ended.iter().filter(|(m, ..)| *m >= hw).map(|e| e.3));
                for first in unended_firsts {
                    assert!(
                        lso <= first.max(0),
                        "seed {seed}: LSO {lso} passes a transaction from {first}"
                    );
                }
                let mut want: Vec<(Offset, AbortedTxn)> = ended
                    .iter()
                    .filter(|(m, _, abort, _)| *abort && *m < hw)
                    .map(|(m, p, _, first)| {
                        (
                            *m,
                            AbortedTxn {
                                producer_id: *p,
                                first_offset: *first,
                            },
                        )
                    })
                    .collect();
                want.sort_by_key(|(m, _)| *m);
                let mut got = aborted.clone();
                got.sort_by_key(|(m, _)| *m);
                assert_eq!(got, want, "seed {seed}");
            }
        }
    }

    #[test]
    fn a_marker_of_an_older_coordinator_is_refused_also_after_a_checkpoint() {
        let with_epoch = |pid, epoch, kind, coordinator_epoch| Marker {
            coordinator_epoch,
            ..marker(pid, epoch, kind)
        };
        let mut t = Txns::default();
        t.on_batch(&txn_header(5, 0, 10), 10);
        // The coordinator moved (epoch 4 to 7) while its abort was on its
        // way; the new one's abort lands first.
        let new = with_epoch(5, 0, MarkerKind::Abort, 7);
        t.check_marker(&new).unwrap();
        t.on_marker(&new, 11);
        t.durable(12);
        // The producer's next transaction (same epoch: no EndTxn v5).
        t.on_batch(&txn_header(5, 0, 12), 12);
        let late = with_epoch(5, 0, MarkerKind::Abort, 4);
        assert_eq!(
            t.check_marker(&late),
            Err(ResponseError::TransactionCoordinatorFenced)
        );
        // Saved with a checkpoint and restored by recovery.
        let saved = t.coordinator_epochs(|_| false);
        assert_eq!(saved.len(), 1, "kept: a transaction is open");
        let r = Txns::from_saved(&t.unended(), &saved);
        assert_eq!(
            r.check_marker(&late),
            Err(ResponseError::TransactionCoordinatorFenced)
        );
        r.check_marker(&with_epoch(5, 0, MarkerKind::Commit, 7))
            .unwrap();
        // Forgotten with the producer once nothing is open.
        let mut done = Txns::default();
        done.on_marker(&new, 1);
        done.durable(2);
        let mut kept = done.clone();
        assert!(done.coordinator_epochs(|_| false).is_empty());
        assert_eq!(
            kept.coordinator_epochs(|p| p == 5).len(),
            1,
            "kept while the partition knows the producer"
        );
    }

    #[test]
    fn old_epochs_are_fenced_and_stray_markers_change_nothing() {
        let mut t = Txns::default();
        let h = txn_header(5, 3, 100);
        t.on_batch(&h, 100);
        // A zombie's batch and marker at an older epoch.
        assert_eq!(
            t.check_batch(&txn_header(5, 2, 101)),
            Err(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(
            t.check_marker(&marker(5, 2, MarkerKind::Abort)),
            Err(ResponseError::InvalidProducerEpoch)
        );
        // A marker for a producer with nothing open here (a retried one).
        let stray = marker(9, 0, MarkerKind::Commit);
        t.check_marker(&stray).unwrap();
        t.on_marker(&stray, 101);
        assert_eq!(t.durable(200), vec![]);
        assert_eq!(t.first_unstable(), Some(100));
        // The producer's own marker (a bumped epoch is fine) ends it.
        let end = marker(5, 4, MarkerKind::Abort);
        t.check_marker(&end).unwrap();
        t.on_marker(&end, 102);
        assert_eq!(t.durable(103).len(), 1);
        assert_eq!(t.first_unstable(), None);
        // Non-transactional and control headers open nothing.
        let mut b = marker_batch(&marker(7, 0, MarkerKind::Commit), 1).to_vec();
        assign(&mut b, 200, 1, None);
        let (_, mh) = Batches::new(&b).next().unwrap();
        t.on_batch(&mh, 200);
        let mut d = floe_protocol::batch::synthetic_batch(1, 4, 1);
        assign(&mut d, 201, 1, None);
        let (_, dh) = Batches::new(&d).next().unwrap();
        t.on_batch(&dh, 201);
        assert_eq!(t.first_unstable(), None);
    }
}
