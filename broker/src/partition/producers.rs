//! Idempotent producers of one partition: the last five batches of each
//! producer (sequence range and offsets), checked on every append
//! (DUPLICATE_SEQUENCE answers with the original offset;
//! OUT_OF_ORDER_SEQUENCE_NUMBER, INVALID_PRODUCER_EPOCH, UNKNOWN_PRODUCER_ID
//! as Kafka), saved with each checkpoint and rebuilt in recovery.

use std::collections::{HashMap, VecDeque};

use floe_meta::schema::{ProducerBatchRecord, ProducerSnapshotRecord, ProducerStateRecord, FORMAT};
use floe_protocol::batch::BatchHeader;
use floe_protocol::ResponseError;

/// Batches remembered per producer (Kafka's max.in.flight limit for
/// idempotence).
pub const BATCHES_KEPT: usize = 5;

/// Producers idle this long are forgotten (producer.id.expiration.ms).
pub const EXPIRATION_MS: i64 = 86_400_000;

/// Producers kept at most per partition (the oldest idle ones go first).
const MAX_PRODUCERS: usize = 10_000;

#[derive(Clone, Debug, PartialEq)]
struct Batch {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Clone, Debug)]
struct Entry {
    epoch: i16,
    batches: VecDeque<Batch>,
    last_ms: i64,
}

/// What to do with an idempotent batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Append,
    /// Already in the log: answer with its offsets, append nothing.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
    },
}

fn seq_add(seq: i32, delta: i32) -> i32 {
    ((seq as i64 + delta as i64) % (i32::MAX as i64 + 1)) as i32
}

#[derive(Default, Debug)]
pub struct Producers {
    map: HashMap<i64, Entry>,
    /// Changed since the last snapshot.
    pub dirty: bool,
}

impl Producers {
    pub fn check(&self, h: &BatchHeader) -> Result<Verdict, ResponseError> {
        let last_seq = seq_add(h.base_sequence, h.last_offset_delta);
        let Some(e) = self.map.get(&h.producer_id) else {
            // A producer this partition has not seen (or has forgotten).
            return if h.base_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(ResponseError::UnknownProducerId)
            };
        };
        if h.producer_epoch < e.epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        if h.producer_epoch > e.epoch {
            return if h.base_sequence == 0 {
                Ok(Verdict::Append)
            } else {
                Err(ResponseError::OutOfOrderSequenceNumber)
            };
        }
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(Verdict::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = e.batches.back().map_or(0, |b| seq_add(b.last_seq, 1));
        if h.base_sequence == expected {
            Ok(Verdict::Append)
        } else {
            Err(ResponseError::OutOfOrderSequenceNumber)
        }
    }

    /// Remember a batch appended at `base_offset`.
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        let e = self.map.entry(h.producer_id).or_insert_with(|| Entry {
            epoch: h.producer_epoch,
            batches: VecDeque::new(),
            last_ms: now_ms,
        });
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        e.batches.push_back(Batch {
            first_seq: h.base_sequence,
            last_seq: seq_add(h.base_sequence, h.last_offset_delta),
            base_offset,
            last_offset: base_offset + h.last_offset_delta as i64,
        });
        while e.batches.len() > BATCHES_KEPT {
            e.batches.pop_front();
        }
        e.last_ms = e.last_ms.max(now_ms);
        self.dirty = true;
    }

    /// A transaction marker at `epoch` for `producer_id`: a known producer
    /// at an older epoch moves to it (its sequences restart), so batches
    /// of the older epoch are refused from now on.
    pub fn fence(&mut self, producer_id: i64, epoch: i16) {
        if let Some(e) = self.map.get_mut(&producer_id) {
            if epoch > e.epoch {
                e.epoch = epoch;
                e.batches.clear();
                self.dirty = true;
            }
        }
    }

    /// Forget producers idle past the expiration, and the idlest beyond the
    /// count limit.
    pub fn expire(&mut self, now_ms: i64) {
        let before = self.map.len();
        self.map.retain(|_, e| now_ms - e.last_ms <= EXPIRATION_MS);
        if self.map.len() > MAX_PRODUCERS {
            let mut by_age: Vec<(i64, i64)> =
                self.map.iter().map(|(id, e)| (e.last_ms, *id)).collect();
            by_age.sort();
            for (_, id) in by_age.iter().take(self.map.len() - MAX_PRODUCERS) {
                self.map.remove(id);
            }
        }
        self.dirty |= self.map.len() != before;
    }

    /// The state covering every batch below `as_of` (batches not yet
    /// committed are left out: they may never be).
    pub fn snapshot(&self, as_of: i64) -> ProducerSnapshotRecord {
        let mut producers: Vec<ProducerStateRecord> = self
            .map
            .iter()
            .map(|(id, e)| ProducerStateRecord {
                producer_id: *id,
                epoch: e.epoch as i32,
                batches: e
                    .batches
                    .iter()
                    .filter(|b| b.last_offset < as_of)
                    .map(|b| ProducerBatchRecord {
                        first_sequence: b.first_seq,
                        last_sequence: b.last_seq,
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                    })
                    .collect(),
                last_ms: e.last_ms,
            })
            .filter(|p| !p.batches.is_empty())
            .collect();
        producers.sort_by_key(|p| p.producer_id);
        ProducerSnapshotRecord {
            format: FORMAT,
            as_of_offset: as_of,
            producers,
            // Transactions are added by the writer (`txn.rs`).
            open_txns: Vec::new(),
            coordinator_epochs: Vec::new(),
            aborted: Vec::new(),
        }
    }

    /// The epoch a producer is known with here.
    pub fn epoch_of(&self, producer_id: i64) -> Option<i16> {
        self.map.get(&producer_id).map(|e| e.epoch)
    }

    /// (epoch, the sequence ranges remembered) of one producer, for logs.
    pub fn describe_one(&self, producer_id: i64) -> Option<(i16, Vec<(i32, i32)>)> {
        self.map.get(&producer_id).map(|e| {
            (
                e.epoch,
                e.batches
                    .iter()
                    .map(|b| (b.first_seq, b.last_seq))
                    .collect(),
            )
        })
    }

    /// (producer id, epoch, last sequence, last write ms), by id.
    pub fn describe(&self) -> Vec<(i64, i16, i32, i64)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(id, e)| {
                let last = e.batches.back().map_or(-1, |b| b.last_seq);
                (*id, e.epoch, last, e.last_ms)
            })
            .collect();
        v.sort();
        v
    }

    pub fn from_snapshot(s: &ProducerSnapshotRecord) -> Self {
        let map = s
            .producers
            .iter()
            .map(|p| {
                (
                    p.producer_id,
                    Entry {
                        epoch: p.epoch as i16,
                        batches: p
                            .batches
                            .iter()
                            .map(|b| Batch {
                                first_seq: b.first_sequence,
                                last_seq: b.last_sequence,
                                base_offset: b.base_offset,
                                last_offset: b.last_offset,
                            })
                            .collect(),
                        last_ms: p.last_ms,
                    },
                )
            })
            .collect();
        Self { map, dirty: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pid: i64, epoch: i16, seq: i32, n: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: n,
        }
    }

    #[test]
    fn sequences_are_checked_as_kafka_does() {
        let mut p = Producers::default();
        assert_eq!(
            p.check(&h(7, 0, 5, 1)),
            Err(ResponseError::UnknownProducerId)
        );
        assert_eq!(p.check(&h(7, 0, 0, 3)), Ok(Verdict::Append));
        p.record(&h(7, 0, 0, 3), 100, 1);
        // A retry of the same batch is a duplicate with its original offsets.
        assert_eq!(
            p.check(&h(7, 0, 0, 3)),
            Ok(Verdict::Duplicate {
                base_offset: 100,
                last_offset: 102
            })
        );
        assert_eq!(p.check(&h(7, 0, 3, 2)), Ok(Verdict::Append));
        assert_eq!(
            p.check(&h(7, 0, 4, 2)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        for i in 0..6 {
            p.record(&h(7, 0, 3 + 2 * i, 2), 103 + 2 * i as i64, 2);
        }
        // Only the last five batches are remembered.
        assert_eq!(
            p.check(&h(7, 0, 3, 2)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        assert!(matches!(
            p.check(&h(7, 0, 13, 2)),
            Ok(Verdict::Duplicate { .. })
        ));
        // Epochs: an older one is fenced, a newer one starts at sequence 0.
        assert_eq!(
            p.check(&h(7, -1, 15, 1)),
            Err(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(
            p.check(&h(7, 1, 4, 1)),
            Err(ResponseError::OutOfOrderSequenceNumber)
        );
        assert_eq!(p.check(&h(7, 1, 0, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn snapshots_leave_out_uncommitted_batches_and_restore() {
        let mut p = Producers::default();
        p.record(&h(1, 0, 0, 2), 10, 5);
        p.record(&h(1, 0, 2, 2), 12, 5);
        let s = p.snapshot(12);
        let q = Producers::from_snapshot(&s);
        assert_eq!(q.check(&h(1, 0, 2, 2)), Ok(Verdict::Append));
        assert!(matches!(
            q.check(&h(1, 0, 0, 2)),
            Ok(Verdict::Duplicate {
                base_offset: 10,
                ..
            })
        ));
        let mut q = q;
        q.expire(5 + EXPIRATION_MS + 1);
        assert_eq!(
            q.check(&h(1, 0, 2, 2)),
            Err(ResponseError::UnknownProducerId)
        );
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert_eq!(seq_add(i32::MAX - 1, 3), 1);
    }
}
