//! Reads served by the proxy itself: Fetch (long-polled on the pushed high
//! watermark), ListOffsets and OffsetForLeaderEpoch, from the followed logs
//! — the cache for the pushed tail, the storage pool for the rest.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floe_common::PartitionId;
use floe_protocol::kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, PartitionData,
};
use floe_protocol::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use floe_protocol::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::ResponseError;
use floe_storage::log::ReadError;
use floe_storage::StorageError;
use tokio::time::Instant;

use crate::tail::Follower;
use crate::Proxy;

/// How long a read that found a chunk gone (consolidated into a segment)
/// waits for the owner's snapshot before failing.
const REPLAN_WAIT: Duration = Duration::from_secs(2);

impl Proxy {
    fn follower(
        self: &Arc<Self>,
        topic: Option<&crate::view::Topic>,
        partition: i32,
    ) -> Result<Arc<Follower>, ResponseError> {
        match topic {
            None => Err(ResponseError::UnknownTopicOrPartition),
            Some(t) if partition < 0 || partition >= t.partitions => {
                Err(ResponseError::UnknownTopicOrPartition)
            }
            Some(t) => Ok(self.tails.get(PartitionId::new(t.id, partition))),
        }
    }

    /// Read from a followed log; a chunk deleted under the read (its segment
    /// was sealed) is read again once the new state arrived.
    async fn read(
        &self,
        f: &Follower,
        offset: i64,
        budget: usize,
        min_one: bool,
    ) -> Result<Bytes, ReadError> {
        let give_up = Instant::now() + REPLAN_WAIT;
        let mut hw = f.log.subscribe();
        loop {
            match f.log.read(offset, budget, min_one).await {
                Err(ReadError::Storage(StorageError::NotFound(_))) if Instant::now() < give_up => {
                    let _ = tokio::time::timeout_at(give_up, hw.changed()).await;
                }
                other => return other.map(|r| r.records),
            }
        }
    }

    pub(crate) async fn fetch(self: Arc<Self>, req: FetchRequest, version: i16) -> FetchResponse {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(req.max_wait_ms.max(0) as u64);
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
                let t = if version >= 13 {
                    self.view.topic_by_id(topic.topic_id)
                } else {
                    self.view.topic(topic.topic.0.as_str())
                };
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
                    let f = match self.follower(t.as_ref(), p.partition) {
                        Ok(f) => f,
                        Err(e) => {
                            pr.error_code = if t.is_none() && version >= 13 {
                                ResponseError::UnknownTopicId.code()
                            } else {
                                e.code()
                            };
                            tr.partitions.push(pr);
                            continue;
                        }
                    };
                    watchers.push(f.log.subscribe());
                    pr.records = Some(Bytes::new());
                    if !f.is_ready() {
                        // First use: the owner's snapshot is on its way.
                        tr.partitions.push(pr);
                        continue;
                    }
                    let (start, hw, _) = f.log.offsets();
                    pr.high_watermark = hw;
                    pr.last_stable_offset = hw;
                    pr.log_start_offset = start;
                    if p.fetch_offset > hw {
                        // The pushed high watermark may trail the owner's by
                        // a moment: out of range only once it has had the
                        // whole wait to catch up, from a live owner.
                        if waited_out && f.is_live() {
                            pr.error_code = ResponseError::OffsetOutOfRange.code();
                        }
                        tr.partitions.push(pr);
                        continue;
                    }
                    let budget = (p.partition_max_bytes.max(0) as usize)
                        .min(max_bytes.saturating_sub(total));
                    if budget > 0 || total == 0 {
                        match self.read(&f, p.fetch_offset, budget, total == 0).await {
                            Ok(records) => {
                                total += records.len();
                                self.requests.bytes_out(records.len() as u64);
                                pr.records = Some(floe_kafka::read::legacy_fetch(records, version));
                            }
                            Err(ReadError::OffsetOutOfRange { .. }) => {
                                pr.error_code = ResponseError::OffsetOutOfRange.code();
                            }
                            Err(ReadError::Storage(e)) => {
                                tracing::warn!(partition = %f.id, error = %e, "fetch read failed");
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
            // Long poll: until a pushed high watermark moves, or the wait ends
            // (one more pass then decides on out-of-range offsets).
            let changed =
                futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }

    pub(crate) async fn list_offsets(
        self: &Arc<Self>,
        req: ListOffsetsRequest,
        version: i16,
    ) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        for topic in req.topics {
            let t = self.view.topic(topic.name.0.as_str());
            let mut tr = ListOffsetsTopicResponse::default().with_name(topic.name.clone());
            for p in topic.partitions {
                let mut pr = ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(-1)
                    .with_offset(-1);
                let f = match self.follower(t.as_ref(), p.partition_index) {
                    Ok(f) if f.wait_ready(deadline).await => f,
                    Ok(_) => {
                        pr.error_code = ResponseError::LeaderNotAvailable.code();
                        tr.partitions.push(pr);
                        continue;
                    }
                    Err(e) => {
                        pr.error_code = e.code();
                        tr.partitions.push(pr);
                        continue;
                    }
                };
                if version >= 4 {
                    pr.leader_epoch = -1;
                }
                floe_kafka::read::list_offset(&f.log, p.timestamp, &mut pr).await;
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    pub(crate) async fn offset_for_leader_epoch(
        self: &Arc<Self>,
        req: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let mut resp = OffsetForLeaderEpochResponse::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        for topic in req.topics {
            let t = self.view.topic(topic.topic.0.as_str());
            let mut tr = OffsetForLeaderTopicResult::default().with_topic(topic.topic.clone());
            for p in topic.partitions {
                let mut pr = EpochEndOffset::default()
                    .with_partition(p.partition)
                    .with_leader_epoch(-1)
                    .with_end_offset(-1);
                match self.follower(t.as_ref(), p.partition) {
                    Ok(f) if f.wait_ready(deadline).await => {
                        let state = f.log.snapshot();
                        if let Some((e, end)) = floe_kafka::read::epoch_end(&state, p.leader_epoch)
                        {
                            pr.leader_epoch = e;
                            pr.end_offset = end;
                        }
                    }
                    Ok(_) => pr.error_code = ResponseError::LeaderNotAvailable.code(),
                    Err(e) => pr.error_code = e.code(),
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}
