//! The cases every tier's `Readable` must pass through the shared Fetch
//! loop (`read::fetch`), run by the broker over its own partitions and by
//! the proxy over its followed logs, the same cases for both: records
//! within the byte limits (KIP-74's first whole batch), offsets out of
//! range (past the end at once at a broker, after the wait through a
//! proxy, and not decided by a proxy whose owner is gone; below the log
//! start for both), the long poll woken by new records, a follower without
//! its first snapshot, a partition the tier refuses (e.g. a fenced epoch),
//! read_committed bounded by the last stable offset with the aborted
//! transactions it must drop, and fetch sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use floe_common::{PartitionId, Uuid};
use floe_protocol::batch::{assign, synthetic_batch, Batches};
use floe_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use floe_protocol::kafka_protocol::messages::fetch_response::PartitionData;
use floe_protocol::kafka_protocol::messages::{FetchRequest, TopicName};
use floe_protocol::ResponseError;
use floe_storage::log::{ChunkRef, LogState, PartitionLog, SegmentView};
use floe_storage::replica::ReplicaSet;
use floe_storage::target::StorageTarget;
use floe_storage::{chunk, layout, BlockCache};
use object_store::{ObjectStoreExt, PutPayload};

use crate::read::{fetch, Readable};

/// Which tier's rules a `Readable` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// The log is the tier's own: a fetch past its end is out of range at
    /// once.
    Broker,
    /// The log is followed: it may have no snapshot yet, and its pushed
    /// high watermark may trail the owner's, so past the end is out of
    /// range only once the wait is over and only from a live owner.
    Proxy,
}

/// A tier's `Readable`, made over a log for the cases.
pub trait Subject {
    type R: Readable;
    fn rules(&self) -> Rules;
    /// A readable over `log`; `ready` (its first snapshot arrived) and
    /// `live` (its owner's stream is open) matter to a proxy only.
    fn readable(&self, log: Arc<PartitionLog>, ready: bool, live: bool) -> Self::R;
}

/// `n` batches of 5 records from `base`.
fn batches(base: i64, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut b = synthetic_batch(5, 100, 1_000);
        assign(&mut b, base + i as i64 * 5, 1, None);
        out.extend(b);
    }
    out
}

/// Write a chunk of `n` batches at `base` of the open segment at 0.
async fn add_chunk(log: &PartitionLog, t: &StorageTarget, base: i64, n: usize) {
    let payload = batches(base, n);
    let next = base + n as i64 * 5;
    let path = layout::chunk(log.id, 0, 1, base);
    let enc = chunk::encode_data(1, base, next, 0, n as u32, &payload);
    t.store
        .put(&path, PutPayload::from(enc))
        .await
        .expect("a memory target takes a put");
    let c = ChunkRef {
        base_offset: base,
        next_offset: next,
        max_timestamp: 1_000,
        path: Arc::from(path.as_ref()),
        bytes: payload.len() as u64,
        wal: None,
    };
    log.append_update(|s| {
        if let Some(SegmentView::Open { chunks, .. }) = s.segments.get_mut(&0) {
            chunks.push(c);
        }
        s.high_watermark = next;
    });
}

/// A log [0, 50) in one open segment on a memory target.
async fn log() -> (Arc<PartitionLog>, StorageTarget) {
    let t = StorageTarget::open("m", "memory://").expect("a memory target");
    let id = PartitionId::new(Uuid::from_u128(7), 0);
    let mut segments = BTreeMap::new();
    segments.insert(
        0,
        SegmentView::Open {
            base_offset: 0,
            epoch: 1,
            replicas: ReplicaSet::new(vec![t.clone()], 1),
            chunks: Vec::new(),
        },
    );
    let state = LogState {
        log_start_offset: 0,
        high_watermark: 0,
        leader_epoch: 1,
        segments,
        ..Default::default()
    };
    let log = PartitionLog::new(id, state, BlockCache::new(16 << 20));
    add_chunk(&log, &t, 0, 10).await;
    (log, t)
}

fn request(offset: i64, max_wait_ms: i32, min_bytes: i32, max_bytes: i32) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName("t".to_string().into()))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])])
}

async fn answer<S: Subject>(
    s: &S,
    log: &Arc<PartitionLog>,
    (ready, live): (bool, bool),
    req: &FetchRequest,
) -> PartitionData {
    let peer = crate::listener::Peer::local();
    let resp = fetch(req, 12, &peer, |_, _| {
        Ok(s.readable(log.clone(), ready, live))
    })
    .await;
    resp.responses[0].partitions[0].clone()
}

fn offsets(p: &PartitionData) -> Vec<i64> {
    Batches::new(p.records.as_deref().unwrap_or_default())
        .map(|(_, h)| h.base_offset)
        .collect()
}

const UP: (bool, bool) = (true, true);

/// Run every case against `s`.
pub async fn run<S: Subject>(s: &S) {
    records_within_max_bytes_from_the_offset(s).await;
    offsets_out_of_range(s).await;
    a_long_poll_wakes_when_records_arrive(s).await;
    a_follower_not_ready_is_empty_and_errors_come_from_resolving(s).await;
    read_committed_stops_at_the_last_stable_offset_and_sessions_are_refused(s).await;
}

pub async fn records_within_max_bytes_from_the_offset<S: Subject>(s: &S) {
    let (log, _t) = log().await;
    let one = batches(0, 1).len() as i32;
    let p = answer(s, &log, UP, &request(10, 0, 1, 1 << 20)).await;
    assert_eq!(p.error_code, 0);
    assert_eq!((p.high_watermark, p.log_start_offset), (50, 0));
    assert_eq!(offsets(&p), vec![10, 15, 20, 25, 30, 35, 40, 45]);
    // max_bytes below two batches: one (the first is always whole).
    let p = answer(s, &log, UP, &request(10, 0, 1, one + 1)).await;
    assert_eq!(offsets(&p), vec![10]);
    let p = answer(s, &log, UP, &request(10, 0, 1, 1)).await;
    assert_eq!(offsets(&p), vec![10], "KIP-74: at least one batch");
    // In the middle of a batch: the whole batch holding the offset.
    let p = answer(s, &log, UP, &request(12, 0, 1, 1 << 20)).await;
    assert_eq!(offsets(&p).first(), Some(&10));
}

pub async fn offsets_out_of_range<S: Subject>(s: &S) {
    let (log, _t) = log().await;
    let req = request(60, 200, 1, 1 << 20);
    let started = tokio::time::Instant::now();
    let p = answer(s, &log, UP, &req).await;
    assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
    match s.rules() {
        // At once at a broker (the 200 ms wait is not taken).
        Rules::Broker => assert!(started.elapsed() < Duration::from_millis(200)),
        // After the wait through a proxy.
        Rules::Proxy => assert!(started.elapsed() >= Duration::from_millis(200)),
    }
    // A proxy whose owner is gone does not decide it.
    let p = answer(s, &log, (true, false), &req).await;
    match s.rules() {
        Rules::Broker => assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code()),
        Rules::Proxy => {
            assert_eq!(p.error_code, 0);
            assert_eq!(offsets(&p), Vec::<i64>::new());
        }
    }
    // Below the log start: out of range for both.
    log.update(|st| st.log_start_offset = 20);
    let p = answer(s, &log, UP, &request(5, 0, 1, 1 << 20)).await;
    assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
    assert_eq!(p.log_start_offset, 20);
}

pub async fn a_long_poll_wakes_when_records_arrive<S: Subject>(s: &S) {
    let (log, t) = log().await;
    let writer = {
        let (log, t) = (log.clone(), t.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            add_chunk(&log, &t, 50, 1).await;
        })
    };
    // A 60 s wait: only the new records end it.
    let p = answer(s, &log, UP, &request(50, 60_000, 1, 1 << 20)).await;
    writer.await.expect("the writer task");
    assert_eq!(p.error_code, 0);
    assert_eq!(offsets(&p), vec![50]);
    assert_eq!(p.high_watermark, 55);
}

pub async fn a_follower_not_ready_is_empty_and_errors_come_from_resolving<S: Subject>(s: &S) {
    let (log, _t) = log().await;
    if s.rules() == Rules::Proxy {
        let p = answer(s, &log, (false, true), &request(0, 0, 1, 1 << 20)).await;
        assert_eq!((p.error_code, p.high_watermark), (0, -1));
        assert_eq!(p.records.as_deref(), Some(&[][..]));
    }
    let peer = crate::listener::Peer::local();
    let resp = fetch(
        &request(0, 0, 1, 1 << 20),
        12,
        &peer,
        |_, _| -> Result<S::R, _> { Err(ResponseError::FencedLeaderEpoch) },
    )
    .await;
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, ResponseError::FencedLeaderEpoch.code());
    assert_eq!(p.high_watermark, -1);
    assert_eq!(p.records.as_deref(), Some(&[][..]));
}

pub async fn read_committed_stops_at_the_last_stable_offset_and_sessions_are_refused<S: Subject>(
    s: &S,
) {
    let (log, _t) = log().await;
    let mut req = request(0, 0, 1, 1 << 20);
    // No transaction: read_committed sees every record, the LSO is the HW.
    req.isolation_level = 1;
    let p = answer(s, &log, UP, &req).await;
    assert_eq!(p.aborted_transactions, Some(Vec::new()));
    assert_eq!(offsets(&p).len(), 10);
    assert_eq!(p.last_stable_offset, 50);
    // A transaction open from 25, one aborted over [10, 19]: read_committed
    // gets the batches below 25 and the aborted one to drop;
    // read_uncommitted everything, with the same LSO.
    log.update(|st| {
        st.first_unstable = Some(25);
        st.aborted = Arc::new(BTreeMap::from([(
            19,
            floe_storage::log::AbortedTxn {
                producer_id: 7,
                first_offset: 10,
            },
        )]));
    });
    let p = answer(s, &log, UP, &req).await;
    assert_eq!(offsets(&p), vec![0, 5, 10, 15, 20]);
    assert_eq!((p.high_watermark, p.last_stable_offset), (50, 25));
    let aborted = p.aborted_transactions.clone().unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!((aborted[0].producer_id.0, aborted[0].first_offset), (7, 10));
    // From past the abort marker the aborted one is not listed.
    let mut later = request(20, 0, 1, 1 << 20);
    later.isolation_level = 1;
    let p = answer(s, &log, UP, &later).await;
    assert_eq!(offsets(&p), vec![20]);
    assert_eq!(p.aborted_transactions, Some(Vec::new()));
    // At the LSO: nothing yet, and no error.
    let mut at = request(25, 0, 1, 1 << 20);
    at.isolation_level = 1;
    let p = answer(s, &log, UP, &at).await;
    assert_eq!((p.error_code, offsets(&p).len()), (0, 0));
    let p = answer(s, &log, UP, &request(0, 0, 1, 1 << 20)).await;
    assert_eq!(offsets(&p).len(), 10);
    assert_eq!(p.last_stable_offset, 25);
    assert!(p.aborted_transactions.unwrap_or_default().is_empty());
    // The transaction ends: the LSO is the HW again.
    log.update(|st| st.first_unstable = None);
    let p = answer(s, &log, UP, &at).await;
    assert_eq!(offsets(&p), vec![25, 30, 35, 40, 45]);
    req.session_id = 5;
    let peer = crate::listener::Peer::local();
    let resp = fetch(&req, 12, &peer, |_, _| {
        Ok(s.readable(log.clone(), true, true))
    })
    .await;
    assert_eq!(
        resp.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );
}
