//! One transactional id's state at its coordinator, and the transitions
//! Kafka's APIs make of it — InitProducerId, AddPartitionsToTxn,
//! EndTxn, the markers' completion and the timeout — as pure functions
//! with Kafka's error codes, so the coordinator only has to log the new
//! state before it answers.
//!
//! KIP-890 part 2: for clients of EndTxn v5 every transaction ends with
//! an epoch bump (the answer hands the producer its next epoch), so a
//! batch or a marker from an ended transaction is fenced by epoch alone.
//! Older clients (librdkafka, kafka-python, Java before transaction
//! version 2) keep their epoch across transactions; their late batches are
//! stopped by part 1, the partition's verification guard
//! (`partition::TxnGate`).

use std::collections::BTreeSet;

use floe_protocol::ResponseError;

/// Where a transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnState {
    /// A producer id and epoch, no transaction yet.
    Empty,
    Ongoing,
    /// Ended by the client (or the timeout): markers being written.
    PrepareCommit,
    PrepareAbort,
    /// Every marker durable.
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    /// Kafka's names (DescribeTransactions, ListTransactions).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    fn preparing(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// A (topic, partition) in a transaction.
pub type TxnPartition = (String, i32);

/// What the coordinator keeps for one transactional id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump (-1: none): a client retrying an
    /// InitProducerId whose answer it lost still gives it (KIP-360).
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TxnPartition>,
    /// When the current transaction started (ms; -1: none).
    pub started_ms: i64,
    pub updated_ms: i64,
}

/// What a transition asks of the coordinator besides logging the new
/// state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Then {
    /// Nothing more: answer.
    Answer,
    /// Write the markers of the transaction that just entered
    /// PrepareCommit/PrepareAbort to its partitions, then complete it.
    WriteMarkers,
    /// The client must retry: an earlier transaction is still being ended
    /// (CONCURRENT_TRANSACTIONS), its markers are on their way.
    Retry,
}

/// The largest epoch before a producer id is replaced (Kafka keeps
/// `Short.MAX_VALUE` for itself).
pub const MAX_EPOCH: i16 = i16::MAX - 1;

impl TxnMetadata {
    /// A new id's state with `producer_id` (just allocated).
    pub fn new(id: &str, producer_id: i64, timeout_ms: i32, now_ms: i64) -> TxnMetadata {
        TxnMetadata {
            transactional_id: id.into(),
            producer_id,
            producer_epoch: 0,
            last_epoch: -1,
            timeout_ms,
            state: TxnState::Empty,
            partitions: BTreeSet::new(),
            started_ms: -1,
            updated_ms: now_ms,
        }
    }

    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), ResponseError> {
        if producer_id != self.producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch < self.producer_epoch {
            return Err(ResponseError::ProducerFenced);
        }
        if epoch > self.producer_epoch {
            return Err(ResponseError::InvalidProducerEpoch);
        }
        Ok(())
    }

    /// Bump the epoch (a new id when it would overflow: `fresh_id`).
    fn bump(&mut self, fresh_id: impl FnOnce() -> i64) {
        if self.producer_epoch >= MAX_EPOCH {
            self.producer_id = fresh_id();
            self.producer_epoch = 0;
            self.last_epoch = -1;
        } else {
            self.last_epoch = self.producer_epoch;
            self.producer_epoch += 1;
        }
    }

    /// Fence the producer of the open transaction before aborting it: the
    /// epoch goes up but the producer id stays, so the abort markers end
    /// that producer's transaction (at the last epoch the fence uses
    /// `i16::MAX`, which Kafka keeps for it; the next bump takes a new
    /// id).
    fn fence(&mut self) {
        self.last_epoch = self.producer_epoch;
        self.producer_epoch = self.producer_epoch.saturating_add(1);
    }

    /// InitProducerId for this id (an existing one): a new epoch fences
    /// every earlier producer of the id. A transaction still open is
    /// aborted first (the client retries until it is done); one being
    /// ended makes the client retry. `expected`: the producer id and epoch
    /// a client resuming after an error gives (KIP-360), which must be the
    /// current ones.
    pub fn init_producer_id(
        &mut self,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        now_ms: i64,
        fresh_id: impl FnOnce() -> i64,
    ) -> Result<Then, ResponseError> {
        if let Some((pid, epoch)) = expected {
            let settled = matches!(
                self.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            );
            if pid == self.producer_id && epoch == self.last_epoch && settled {
                // A retry of a bump already made: its answer again.
                return Ok(Then::Answer);
            }
            if pid != self.producer_id || epoch != self.producer_epoch {
                return Err(ResponseError::ProducerFenced);
            }
        }
        match self.state {
            s if s.preparing() => Ok(Then::Retry),
            TxnState::Ongoing => {
                // Fence the old producer and abort what it left open.
                self.fence();
                self.state = TxnState::PrepareAbort;
                self.updated_ms = now_ms;
                Ok(Then::WriteMarkers)
            }
            _ => {
                self.bump(fresh_id);
                self.timeout_ms = timeout_ms;
                self.state = TxnState::Empty;
                self.partitions.clear();
                self.started_ms = -1;
                self.updated_ms = now_ms;
                Ok(Then::Answer)
            }
        }
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn's offsets partition): the
    /// first call after a transaction ended starts the next one.
    pub fn add_partitions(
        &mut self,
        producer_id: i64,
        epoch: i16,
        partitions: &[TxnPartition],
        now_ms: i64,
    ) -> Result<(), ResponseError> {
        self.check_producer(producer_id, epoch)?;
        match self.state {
            s if s.preparing() => return Err(ResponseError::ConcurrentTransactions),
            TxnState::Ongoing => {}
            _ => {
                self.state = TxnState::Ongoing;
                self.partitions.clear();
                self.started_ms = now_ms;
            }
        }
        self.partitions.extend(partitions.iter().cloned());
        self.updated_ms = now_ms;
        Ok(())
    }

    /// Whether a partition's owner may take a transactional batch of this
    /// producer (KIP-890 verification): the partition was added to the
    /// open transaction at this epoch.
    pub fn verify(
        &self,
        producer_id: i64,
        epoch: i16,
        partition: &TxnPartition,
    ) -> Result<(), ResponseError> {
        self.check_producer(producer_id, epoch)?;
        if self.state == TxnState::Ongoing && self.partitions.contains(partition) {
            Ok(())
        } else {
            Err(ResponseError::InvalidTxnState)
        }
    }

    /// EndTxn: commit or abort the open transaction. A retry of an end
    /// already made (same outcome) is answered again (CONCURRENT_TRANSACTIONS
    /// while its markers are on their way); ending with nothing open, or
    /// the other way round, is INVALID_TXN_STATE. `bump` (EndTxn v5, the
    /// transaction protocol of KIP-890 part 2): the end bumps the epoch and
    /// the client carries on with the new one; older clients keep theirs.
    pub fn end(
        &mut self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        bump: bool,
        now_ms: i64,
    ) -> Result<Then, ResponseError> {
        let same_outcome = matches!(
            (self.state, commit),
            (TxnState::CompleteCommit | TxnState::PrepareCommit, true)
                | (TxnState::CompleteAbort | TxnState::PrepareAbort, false)
        );
        // A retry after the end: with a bump the client still holds the
        // epoch before it.
        let ended_epoch = if bump { epoch.saturating_add(1) } else { epoch };
        if producer_id == self.producer_id && ended_epoch == self.producer_epoch && same_outcome {
            return Ok(if self.state.preparing() {
                Then::Retry
            } else {
                Then::Answer
            });
        }
        self.check_producer(producer_id, epoch)?;
        match self.state {
            TxnState::Ongoing => {
                self.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                if bump {
                    self.last_epoch = epoch;
                    self.producer_epoch = epoch.saturating_add(1).min(MAX_EPOCH);
                }
                self.updated_ms = now_ms;
                Ok(Then::WriteMarkers)
            }
            s if s.preparing() => Err(ResponseError::ConcurrentTransactions),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// Every marker of the prepared transaction is durable.
    pub fn complete(&mut self, now_ms: i64) {
        self.state = match self.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            s => s,
        };
        self.updated_ms = now_ms;
    }

    /// The coordinator's timer: an open transaction past its timeout is
    /// aborted, its producer fenced by an epoch bump.
    pub fn expire(&mut self, now_ms: i64) -> Option<Then> {
        if self.state == TxnState::Ongoing && now_ms - self.started_ms > self.timeout_ms as i64 {
            self.fence();
            self.state = TxnState::PrepareAbort;
            self.updated_ms = now_ms;
            Some(Then::WriteMarkers)
        } else {
            None
        }
    }
}

/// The transaction timeout a client asks for, against
/// `transaction.max.timeout.ms`.
pub fn check_timeout(timeout_ms: i32, max_ms: i32) -> Result<(), ResponseError> {
    if timeout_ms <= 0 || timeout_ms > max_ms {
        Err(ResponseError::InvalidTransactionTimeout)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, n: i32) -> TxnPartition {
        (t.into(), n)
    }

    fn no_id() -> i64 {
        panic!("no new producer id expected")
    }

    #[test]
    fn a_transaction_commits_and_the_next_starts_at_the_bumped_epoch() {
        let mut m = TxnMetadata::new("app-1", 1000, 60_000, 0);
        assert_eq!(m.init_producer_id(60_000, None, 1, no_id), Ok(Then::Answer));
        assert_eq!(
            (m.producer_id, m.producer_epoch, m.state),
            (1000, 1, TxnState::Empty)
        );
        m.add_partitions(1000, 1, &[p("t", 0), p("t", 1)], 10)
            .unwrap();
        m.add_partitions(1000, 1, &[p("t", 1), p("u", 0)], 11)
            .unwrap();
        assert_eq!(m.state, TxnState::Ongoing);
        assert_eq!(m.partitions.len(), 3);
        assert_eq!(m.started_ms, 10);
        assert_eq!(m.verify(1000, 1, &p("u", 0)), Ok(()));
        assert_eq!(
            m.verify(1000, 1, &p("u", 1)),
            Err(ResponseError::InvalidTxnState)
        );
        assert_eq!(m.end(1000, 1, true, true, 20), Ok(Then::WriteMarkers));
        assert_eq!((m.state, m.producer_epoch), (TxnState::PrepareCommit, 2));
        // While the markers are written: a retry of the same EndTxn waits,
        // a new AddPartitions is concurrent.
        assert_eq!(m.end(1000, 1, true, true, 21), Ok(Then::Retry));
        assert_eq!(
            m.add_partitions(1000, 2, &[p("t", 0)], 21),
            Err(ResponseError::ConcurrentTransactions)
        );
        m.complete(22);
        assert_eq!(m.state, TxnState::CompleteCommit);
        assert_eq!(
            m.end(1000, 1, true, true, 23),
            Ok(Then::Answer),
            "a late retry is answered"
        );
        // A late batch of the ended transaction cannot be verified.
        assert_eq!(
            m.verify(1000, 1, &p("t", 0)),
            Err(ResponseError::ProducerFenced)
        );
        // The next transaction, at epoch 2.
        m.add_partitions(1000, 2, &[p("t", 0)], 30).unwrap();
        assert_eq!(
            (m.state, m.partitions.len(), m.started_ms),
            (TxnState::Ongoing, 1, 30)
        );
        assert_eq!(m.end(1000, 2, false, true, 31), Ok(Then::WriteMarkers));
        m.complete(32);
        assert_eq!((m.state, m.producer_epoch), (TxnState::CompleteAbort, 3));
    }

    #[test]
    fn clients_before_end_txn_v5_keep_their_epoch_across_transactions() {
        let mut m = TxnMetadata::new("app-1", 1000, 60_000, 0);
        m.init_producer_id(60_000, None, 1, no_id).unwrap();
        m.add_partitions(1000, 1, &[p("t", 0)], 10).unwrap();
        assert_eq!(m.end(1000, 1, true, false, 20), Ok(Then::WriteMarkers));
        assert_eq!((m.state, m.producer_epoch), (TxnState::PrepareCommit, 1));
        assert_eq!(m.end(1000, 1, true, false, 21), Ok(Then::Retry));
        m.complete(22);
        // A retry after the end is answered again; the other outcome is not.
        assert_eq!(m.end(1000, 1, true, false, 23), Ok(Then::Answer));
        assert_eq!(
            m.end(1000, 1, false, false, 23),
            Err(ResponseError::InvalidTxnState)
        );
        m.add_partitions(1000, 1, &[p("u", 0)], 30).unwrap();
        assert_eq!(
            (m.state, m.partitions.len(), m.started_ms),
            (TxnState::Ongoing, 1, 30)
        );
    }

    #[test]
    fn a_new_producer_fences_the_old_and_aborts_its_open_transaction() {
        let mut m = TxnMetadata::new("app-1", 1000, 60_000, 0);
        m.add_partitions(1000, 0, &[p("t", 0)], 1).unwrap();
        // A second producer with the same id.
        assert_eq!(
            m.init_producer_id(60_000, None, 2, no_id),
            Ok(Then::WriteMarkers)
        );
        assert_eq!((m.state, m.producer_epoch), (TxnState::PrepareAbort, 1));
        // The old one is fenced from now on.
        assert_eq!(
            m.add_partitions(1000, 0, &[p("t", 1)], 3),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            m.end(1000, 0, true, true, 3),
            Err(ResponseError::ProducerFenced)
        );
        // The new one retries until the abort is complete.
        assert_eq!(m.init_producer_id(60_000, None, 3, no_id), Ok(Then::Retry));
        m.complete(4);
        assert_eq!(m.init_producer_id(60_000, None, 5, no_id), Ok(Then::Answer));
        assert_eq!((m.state, m.producer_epoch), (TxnState::Empty, 2));
    }

    #[test]
    fn bad_calls_get_kafkas_codes() {
        let mut m = TxnMetadata::new("app-1", 1000, 60_000, 0);
        // Ending with nothing open.
        assert_eq!(
            m.end(1000, 0, true, true, 1),
            Err(ResponseError::InvalidTxnState)
        );
        // Another producer id, a stale epoch, a future epoch.
        assert_eq!(
            m.add_partitions(999, 0, &[p("t", 0)], 1),
            Err(ResponseError::InvalidProducerIdMapping)
        );
        m.init_producer_id(60_000, None, 1, no_id).unwrap();
        assert_eq!(
            m.add_partitions(1000, 0, &[p("t", 0)], 1),
            Err(ResponseError::ProducerFenced)
        );
        assert_eq!(
            m.add_partitions(1000, 5, &[p("t", 0)], 1),
            Err(ResponseError::InvalidProducerEpoch)
        );
        // KIP-360 resume with the wrong pair (the epoch before the last
        // bump is a retry, see below; an older one or another id is not).
        assert_eq!(
            m.init_producer_id(60_000, Some((999, 1)), 2, no_id),
            Err(ResponseError::ProducerFenced)
        );
        // Commit after abort is not a retry.
        m.add_partitions(1000, 1, &[p("t", 0)], 3).unwrap();
        m.end(1000, 1, false, true, 4).unwrap();
        m.complete(5);
        assert_eq!(
            m.end(1000, 1, true, true, 6),
            Err(ResponseError::ProducerFenced)
        );
        // Timeouts against transaction.max.timeout.ms.
        assert_eq!(
            check_timeout(900_001, 900_000),
            Err(ResponseError::InvalidTransactionTimeout)
        );
        assert_eq!(
            check_timeout(0, 900_000),
            Err(ResponseError::InvalidTransactionTimeout)
        );
        assert_eq!(check_timeout(60_000, 900_000), Ok(()));
    }

    #[test]
    fn an_expired_transaction_is_aborted_and_an_exhausted_epoch_gets_a_new_id() {
        let mut m = TxnMetadata::new("app-1", 1000, 1_000, 0);
        m.add_partitions(1000, 0, &[p("t", 0)], 100).unwrap();
        assert_eq!(m.expire(1_000), None, "within its timeout");
        assert_eq!(m.expire(1_101), Some(Then::WriteMarkers));
        assert_eq!((m.state, m.producer_epoch), (TxnState::PrepareAbort, 1));
        m.complete(1_102);
        // At the last epoch, the next bump takes a new producer id.
        m.producer_epoch = MAX_EPOCH;
        assert_eq!(
            m.init_producer_id(1_000, None, 2_000, || 2000),
            Ok(Then::Answer)
        );
        assert_eq!((m.producer_id, m.producer_epoch), (2000, 0));
        // A transaction open at the last epoch is aborted under the same
        // producer id (its markers must end it), at i16::MAX; only the
        // next bump takes a new id.
        let mut m = TxnMetadata::new("app-2", 3000, 60_000, 0);
        m.producer_epoch = MAX_EPOCH;
        m.add_partitions(3000, MAX_EPOCH, &[p("t", 0)], 1).unwrap();
        assert_eq!(
            m.init_producer_id(60_000, None, 2, no_id),
            Ok(Then::WriteMarkers)
        );
        assert_eq!((m.producer_id, m.producer_epoch), (3000, i16::MAX));
        m.complete(3);
        assert_eq!(
            m.init_producer_id(60_000, None, 4, || 4000),
            Ok(Then::Answer)
        );
        assert_eq!((m.producer_id, m.producer_epoch), (4000, 0));
    }

    #[test]
    fn a_retried_init_producer_id_gets_the_same_answer() {
        // KIP-360: a client gives its producer id and epoch; it loses the
        // answer and asks again with the same ones.
        let mut m = TxnMetadata::new("app-1", 1000, 60_000, 0);
        assert_eq!(
            m.init_producer_id(60_000, Some((1000, 0)), 1, no_id),
            Ok(Then::Answer)
        );
        assert_eq!(m.producer_epoch, 1);
        assert_eq!(
            m.init_producer_id(60_000, Some((1000, 0)), 2, no_id),
            Ok(Then::Answer)
        );
        assert_eq!(m.producer_epoch, 1, "no second bump");
        // With a transaction open: fenced and aborted; the retry once the
        // abort is complete is answered with the fenced epoch.
        m.add_partitions(1000, 1, &[p("t", 0)], 3).unwrap();
        assert_eq!(
            m.init_producer_id(60_000, Some((1000, 1)), 4, no_id),
            Ok(Then::WriteMarkers)
        );
        m.complete(5);
        assert_eq!(
            m.init_producer_id(60_000, Some((1000, 1)), 6, no_id),
            Ok(Then::Answer)
        );
        assert_eq!((m.producer_epoch, m.state), (2, TxnState::CompleteAbort));
        // An epoch older than that is a zombie's.
        assert_eq!(
            m.init_producer_id(60_000, Some((1000, 0)), 7, no_id),
            Err(ResponseError::ProducerFenced)
        );
    }
}
