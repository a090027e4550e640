//! Read answers written once for both tiers, over a partition's log (a
//! broker's own partitions and a proxy's followed ones are both a
//! `PartitionLog`): the Fetch loop with its long poll, Fetch's
//! down-conversion for old clients, one partition's ListOffsets,
//! OffsetForLeaderEpoch's end of an epoch.

use std::time::Duration;

use bytes::Bytes;
use floe_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use floe_protocol::kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, PartitionData,
};
use floe_protocol::kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use floe_protocol::kafka_protocol::messages::{FetchRequest, FetchResponse};
use floe_protocol::ResponseError;
use floe_storage::log::{PartitionLog, ReadError, SegmentView};
use futures::future::BoxFuture;
use tokio::time::Instant;

/// A partition a Fetch reads, as the serving tier resolved it: a broker's
/// own partition or a proxy's followed one.
pub trait Readable: Send + Sync {
    fn log(&self) -> &PartitionLog;
    /// False while the log has no state yet (a proxy's follower waiting for
    /// its first snapshot): answered empty, without an error.
    fn ready(&self) -> bool {
        true
    }
    /// Whether a fetch offset past the high watermark is answered
    /// OFFSET_OUT_OF_RANGE now; `waited_out`: the request's wait is over
    /// (a proxy's pushed high watermark may trail the owner's by a moment).
    fn past_end_is_out_of_range(&self, waited_out: bool) -> bool;
    /// Read up to `budget` bytes of whole batches from `offset` (at least
    /// one batch if `min_one`).
    fn read(
        &self,
        offset: i64,
        budget: usize,
        min_one: bool,
    ) -> BoxFuture<'_, Result<Bytes, ReadError>>;
    /// `bytes` of records were served from this partition.
    fn served(&self, bytes: u64);
}

/// Answer a Fetch: each partition resolved by `resolve` (its error is the
/// partition's error code), records up to the request's limits, and a long
/// poll until `min_bytes` are there, a high watermark moves or the wait is
/// over (then one more pass decides offsets past the end).
pub async fn fetch<R: Readable>(
    req: &FetchRequest,
    version: i16,
    resolve: impl Fn(&FetchTopic, &FetchPartition) -> Result<R, ResponseError>,
) -> FetchResponse {
    let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let max_bytes = if version >= 3 {
        req.max_bytes.max(0) as usize
    } else {
        usize::MAX
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        let mut watchers = Vec::new();
        let mut resp = FetchResponse::default();
        if version >= 7 && req.session_id != 0 {
            resp.error_code = ResponseError::FetchSessionIdNotFound.code();
            return resp;
        }
        let mut total = 0usize;
        let waited_out = Instant::now() >= deadline;
        for topic in &req.topics {
            let mut tr = FetchableTopicResponse::default();
            if version >= 13 {
                tr.topic_id = topic.topic_id;
            } else {
                tr.topic = topic.topic.clone();
            }
            for p in &topic.partitions {
                let mut pr = PartitionData::default()
                    .with_partition_index(p.partition)
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_log_start_offset(-1);
                if req.isolation_level == 1 {
                    pr.aborted_transactions = Some(Vec::new());
                }
                let r = match resolve(topic, p) {
                    Ok(r) => r,
                    Err(e) => {
                        pr.error_code = e.code();
                        tr.partitions.push(pr);
                        continue;
                    }
                };
                watchers.push(r.log().subscribe());
                pr.records = Some(Bytes::new());
                if !r.ready() {
                    tr.partitions.push(pr);
                    continue;
                }
                let (start, hw, _) = r.log().offsets();
                pr.high_watermark = hw;
                pr.last_stable_offset = hw;
                pr.log_start_offset = start;
                if p.fetch_offset > hw {
                    if r.past_end_is_out_of_range(waited_out) {
                        pr.error_code = ResponseError::OffsetOutOfRange.code();
                    }
                    tr.partitions.push(pr);
                    continue;
                }
                let budget =
                    (p.partition_max_bytes.max(0) as usize).min(max_bytes.saturating_sub(total));
                if budget > 0 || total == 0 {
                    match r.read(p.fetch_offset, budget, total == 0).await {
                        Ok(records) => {
                            total += records.len();
                            r.served(records.len() as u64);
                            pr.records = Some(legacy_fetch(records, version));
                        }
                        Err(ReadError::OffsetOutOfRange { .. }) => {
                            pr.error_code = ResponseError::OffsetOutOfRange.code();
                        }
                        Err(ReadError::Storage(e)) => {
                            tracing::warn!(partition = %r.log().id, error = %e, "fetch read failed");
                            pr.error_code = ResponseError::KafkaStorageError.code();
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            resp.responses.push(tr);
        }
        let errors = resp
            .responses
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0);
        if total >= min_bytes || errors || waited_out || watchers.is_empty() {
            return resp;
        }
        // Long poll: until a high watermark moves, or the wait ends.
        let changed =
            futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

/// Fetch v0–3 cannot carry v2 batches: the records as a message set of
/// format v0 (Fetch v0–1) or v1 (v2–3).
pub fn legacy_fetch(records: Bytes, version: i16) -> Bytes {
    if version >= 4 || records.is_empty() {
        return records;
    }
    let magic = if version < 2 { 0 } else { 1 };
    floe_protocol::legacy::downconvert(&records, magic).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stored batch could not be converted for an old fetch");
        Bytes::new()
    })
}

/// ListOffsets for one partition of `log`: the latest (-1), earliest (-2,
/// -4), max-timestamp (-3) or first-at-or-after-timestamp offset, into `pr`.
pub async fn list_offset(
    log: &floe_storage::log::PartitionLog,
    timestamp: i64,
    pr: &mut ListOffsetsPartitionResponse,
) {
    let (start, hw, _) = log.offsets();
    let answer = match timestamp {
        -1 => Ok(Some((hw, -1))),
        -2 | -4 => Ok(Some((start, -1))),
        -3 => log.max_timestamp().await,
        ts if ts < 0 => {
            pr.error_code = ResponseError::InvalidRequest.code();
            Ok(None)
        }
        ts => log.offset_for_timestamp(ts).await,
    };
    match answer {
        Ok(Some((o, ts))) => {
            pr.offset = o;
            pr.timestamp = ts;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(partition = %log.id, error = %e, "timestamp lookup failed");
            pr.error_code = ResponseError::KafkaStorageError.code();
        }
    }
}

/// OffsetForLeaderEpoch for one partition: the largest epoch at or below
/// `leader_epoch` present in the log and the offset where it ended; `None`
/// for a future epoch (undefined, as Kafka answers).
pub fn epoch_end(state: &floe_storage::log::LogState, leader_epoch: i32) -> Option<(i32, i64)> {
    // (epoch, first offset) of each epoch present in the log.
    let mut epochs: Vec<(i32, i64)> = Vec::new();
    for seg in state.segments.values() {
        let e = match seg {
            SegmentView::Open { epoch, .. } => *epoch,
            SegmentView::Sealed(s) => s.epoch,
        };
        if epochs.last().is_none_or(|(le, _)| *le != e) {
            epochs.push((e, seg.base_offset()));
        }
    }
    if leader_epoch > state.leader_epoch {
        None
    } else if let Some(i) = epochs.iter().rposition(|(e, _)| *e <= leader_epoch) {
        Some((
            epochs[i].0,
            epochs.get(i + 1).map_or(state.high_watermark, |(_, o)| *o),
        ))
    } else {
        Some((leader_epoch, state.log_start_offset))
    }
}

#[cfg(test)]
mod tests {
    //! The Fetch loop over a log in memory, with the two ways a tier
    //! resolves a partition: a broker (past the end is out of range at once)
    //! and a proxy (a follower may not be ready yet, and past the end waits
    //! the request out first, then is out of range from a live owner).
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use floe_common::{PartitionId, Uuid};
    use floe_protocol::batch::{assign, synthetic_batch, Batches};
    use floe_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use floe_protocol::kafka_protocol::messages::TopicName;
    use floe_storage::log::{ChunkRef, LogState, PartitionLog, SegmentView};
    use floe_storage::replica::ReplicaSet;
    use floe_storage::target::StorageTarget;
    use floe_storage::{chunk, layout, BlockCache};
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;

    #[derive(Clone, Copy)]
    enum Tier {
        Broker,
        Proxy { ready: bool, live: bool },
    }

    struct Log {
        log: Arc<PartitionLog>,
        tier: Tier,
    }

    impl Readable for Log {
        fn log(&self) -> &PartitionLog {
            &self.log
        }
        fn ready(&self) -> bool {
            !matches!(self.tier, Tier::Proxy { ready: false, .. })
        }
        fn past_end_is_out_of_range(&self, waited_out: bool) -> bool {
            match self.tier {
                Tier::Broker => true,
                Tier::Proxy { live, .. } => waited_out && live,
            }
        }
        fn read(
            &self,
            offset: i64,
            budget: usize,
            min_one: bool,
        ) -> BoxFuture<'_, Result<Bytes, ReadError>> {
            Box::pin(async move {
                self.log
                    .read(offset, budget, min_one)
                    .await
                    .map(|r| r.records)
            })
        }
        fn served(&self, _bytes: u64) {}
    }

    const BROKER: Tier = Tier::Broker;
    const PROXY: Tier = Tier::Proxy {
        ready: true,
        live: true,
    };

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
        t.store.put(&path, PutPayload::from(enc)).await.unwrap();
        let c = ChunkRef {
            base_offset: base,
            next_offset: next,
            max_timestamp: 1_000,
            path: Arc::from(path.as_ref()),
            bytes: payload.len() as u64,
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
        let t = StorageTarget::open("m", "memory://").unwrap();
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

    async fn answer(log: &Arc<PartitionLog>, tier: Tier, req: &FetchRequest) -> PartitionData {
        let resp = fetch(req, 12, |_, _| {
            Ok(Log {
                log: log.clone(),
                tier,
            })
        })
        .await;
        resp.responses[0].partitions[0].clone()
    }

    fn offsets(p: &PartitionData) -> Vec<i64> {
        Batches::new(p.records.as_deref().unwrap_or_default())
            .map(|(_, h)| h.base_offset)
            .collect()
    }

    #[tokio::test]
    async fn records_within_max_bytes_from_the_offset() {
        let (log, _t) = log().await;
        let one = batches(0, 1).len() as i32;
        for tier in [BROKER, PROXY] {
            let p = answer(&log, tier, &request(10, 0, 1, 1 << 20)).await;
            assert_eq!(p.error_code, 0);
            assert_eq!((p.high_watermark, p.log_start_offset), (50, 0));
            assert_eq!(offsets(&p), vec![10, 15, 20, 25, 30, 35, 40, 45]);
            // max_bytes below two batches: one (the first is always whole).
            let p = answer(&log, tier, &request(10, 0, 1, one + 1)).await;
            assert_eq!(offsets(&p), vec![10]);
            let p = answer(&log, tier, &request(10, 0, 1, 1)).await;
            assert_eq!(offsets(&p), vec![10], "KIP-74: at least one batch");
        }
    }

    #[tokio::test]
    async fn past_the_end_is_out_of_range_at_once_at_a_broker_and_after_the_wait_through_a_proxy() {
        let (log, _t) = log().await;
        let req = request(60, 200, 1, 1 << 20);
        let p = answer(&log, BROKER, &req).await;
        assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
        let p = answer(&log, PROXY, &req).await;
        assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
        // A proxy whose owner is gone does not decide it.
        let gone = Tier::Proxy {
            ready: true,
            live: false,
        };
        let p = answer(&log, gone, &req).await;
        assert_eq!(p.error_code, 0);
        assert_eq!(offsets(&p), Vec::<i64>::new());
        // Below the log start: out of range for both.
        log.update(|s| s.log_start_offset = 20);
        for tier in [BROKER, PROXY] {
            let p = answer(&log, tier, &request(5, 0, 1, 1 << 20)).await;
            assert_eq!(p.error_code, ResponseError::OffsetOutOfRange.code());
        }
    }

    #[tokio::test]
    async fn a_long_poll_wakes_when_records_arrive() {
        let (log, t) = log().await;
        for (i, tier) in [BROKER, PROXY].into_iter().enumerate() {
            let base = 50 + i as i64 * 5;
            let writer = {
                let (log, t) = (log.clone(), t.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    add_chunk(&log, &t, base, 1).await;
                })
            };
            // A 60 s wait: only the new records end it.
            let p = answer(&log, tier, &request(base, 60_000, 1, 1 << 20)).await;
            writer.await.unwrap();
            assert_eq!(p.error_code, 0);
            assert_eq!(offsets(&p), vec![base]);
        }
    }

    #[tokio::test]
    async fn a_follower_not_ready_is_empty_and_errors_come_from_resolving() {
        let (log, _t) = log().await;
        let not_ready = Tier::Proxy {
            ready: false,
            live: true,
        };
        let p = answer(&log, not_ready, &request(0, 0, 1, 1 << 20)).await;
        assert_eq!((p.error_code, p.high_watermark), (0, -1));
        assert_eq!(p.records.as_deref(), Some(&[][..]));
        let resp = fetch(&request(0, 0, 1, 1 << 20), 12, |_, _| -> Result<Log, _> {
            Err(ResponseError::FencedLeaderEpoch)
        })
        .await;
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, ResponseError::FencedLeaderEpoch.code());
        assert_eq!(p.high_watermark, -1);
    }

    #[tokio::test]
    async fn read_committed_gets_an_empty_aborted_list_and_sessions_are_refused() {
        let (log, _t) = log().await;
        let mut req = request(0, 0, 1, 1 << 20);
        // (No transactions yet: read_committed sees every record.)
        req.isolation_level = 1;
        let p = answer(&log, BROKER, &req).await;
        assert_eq!(p.aborted_transactions, Some(Vec::new()));
        assert_eq!(offsets(&p).len(), 10);
        req.session_id = 5;
        let resp = fetch(&req, 12, |_, _| {
            Ok(Log {
                log: log.clone(),
                tier: BROKER,
            })
        })
        .await;
        assert_eq!(
            resp.error_code,
            ResponseError::FetchSessionIdNotFound.code()
        );
    }
}
