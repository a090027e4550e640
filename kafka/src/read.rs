//! Read answers written once for both tiers, over a partition's log (a
//! broker's own partitions and a proxy's followed ones are both a
//! `PartitionLog`): the Fetch loop with its long poll, Fetch's
//! down-conversion for old clients, one partition's ListOffsets,
//! OffsetForLeaderEpoch's end of an epoch.

use std::time::Duration;

use bytes::Bytes;
use floe_protocol::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use floe_protocol::kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
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
    /// The topic's name (what ACLs name).
    fn topic(&self) -> &str;
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
    /// one batch if `min_one`), only batches starting before `upper` (the
    /// last stable offset for read_committed).
    fn read(
        &self,
        offset: i64,
        upper: i64,
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
    peer: &crate::listener::Peer,
    resolve: impl Fn(&FetchTopic, &FetchPartition) -> Result<R, ResponseError>,
) -> FetchResponse {
    // READ on each topic, decided once per request (by name; a topic named
    // by id once it is resolved).
    let mut readable: Vec<Option<bool>> = req
        .topics
        .iter()
        .map(|t| (version < 13).then(|| peer.may_topic(crate::acl::Operation::Read, &t.topic)))
        .collect();
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
        for (ti, topic) in req.topics.iter().enumerate() {
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
                if readable[ti] == Some(false) {
                    pr.error_code = ResponseError::TopicAuthorizationFailed.code();
                    pr.records = Some(Bytes::new());
                    tr.partitions.push(pr);
                    continue;
                }
                let r = match resolve(topic, p) {
                    Ok(r) => r,
                    Err(e) => {
                        pr.error_code = e.code();
                        tr.partitions.push(pr);
                        continue;
                    }
                };
                if readable[ti].is_none() {
                    let ok = peer.may_topic(crate::acl::Operation::Read, r.topic());
                    readable[ti] = Some(ok);
                    if !ok {
                        pr.error_code = ResponseError::TopicAuthorizationFailed.code();
                        pr.records = Some(Bytes::new());
                        tr.partitions.push(pr);
                        continue;
                    }
                }
                watchers.push(r.log().subscribe());
                pr.records = Some(Bytes::new());
                if !r.ready() {
                    tr.partitions.push(pr);
                    continue;
                }
                let (start, hw, _) = r.log().offsets();
                let lso = r.log().last_stable_offset();
                pr.high_watermark = hw;
                pr.last_stable_offset = lso;
                pr.log_start_offset = start;
                // read_committed: nothing at or past the last stable
                // offset, and the aborted transactions of what is read.
                let upper = if req.isolation_level == 1 {
                    lso
                } else {
                    i64::MAX
                };
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
                    match r.read(p.fetch_offset, upper, budget, total == 0).await {
                        Ok(records) => {
                            if req.isolation_level == 1 && !records.is_empty() {
                                pr.aborted_transactions = Some(
                                    r.log()
                                        .aborted_in(p.fetch_offset, upper)
                                        .into_iter()
                                        .map(|(producer_id, first_offset)| {
                                            AbortedTransaction::default()
                                                .with_producer_id(producer_id.into())
                                                .with_first_offset(first_offset)
                                        })
                                        .collect(),
                                );
                            }
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

/// ListOffsets for one partition of `log`: the latest (-1: the last
/// stable offset for read_committed, `isolation_level` 1), earliest (-2,
/// -4), max-timestamp (-3) or first-at-or-after-timestamp offset, into `pr`.
pub async fn list_offset(
    log: &floe_storage::log::PartitionLog,
    timestamp: i64,
    isolation_level: i8,
    pr: &mut ListOffsetsPartitionResponse,
) {
    let (start, hw, _) = log.offsets();
    let latest = if isolation_level == 1 {
        log.last_stable_offset()
    } else {
        hw
    };
    let answer = match timestamp {
        -1 => Ok(Some((latest, -1))),
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
    //! The shared cases over a log in memory, with a test `Readable` that
    //! follows each tier's rules as the tiers' own implementations must
    //! (the broker and the proxy run the same cases over theirs).
    use std::sync::Arc;

    use floe_storage::log::PartitionLog;

    use super::*;
    use crate::read_suite::{self, Rules, Subject};

    struct Log {
        log: Arc<PartitionLog>,
        rules: Rules,
        ready: bool,
        live: bool,
    }

    impl Readable for Log {
        fn log(&self) -> &PartitionLog {
            &self.log
        }
        fn topic(&self) -> &str {
            "t"
        }
        fn ready(&self) -> bool {
            self.ready
        }
        fn past_end_is_out_of_range(&self, waited_out: bool) -> bool {
            match self.rules {
                Rules::Broker => true,
                Rules::Proxy => waited_out && self.live,
            }
        }
        fn read(
            &self,
            offset: i64,
            upper: i64,
            budget: usize,
            min_one: bool,
        ) -> BoxFuture<'_, Result<Bytes, ReadError>> {
            Box::pin(async move {
                self.log
                    .read_until(offset, upper, budget, min_one)
                    .await
                    .map(|r| r.records)
            })
        }
        fn served(&self, _bytes: u64) {}
    }

    struct TestSubject(Rules);

    impl Subject for TestSubject {
        type R = Log;
        fn rules(&self) -> Rules {
            self.0
        }
        fn readable(&self, log: Arc<PartitionLog>, ready: bool, live: bool) -> Log {
            Log {
                log,
                rules: self.0,
                ready,
                live,
            }
        }
    }

    #[tokio::test]
    async fn the_shared_cases_with_a_brokers_rules() {
        read_suite::run(&TestSubject(Rules::Broker)).await;
    }

    #[tokio::test]
    async fn the_shared_cases_with_a_proxys_rules() {
        read_suite::run(&TestSubject(Rules::Proxy)).await;
    }
}
