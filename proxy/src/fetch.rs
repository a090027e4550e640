//! Reads served by the proxy itself: Fetch (long-polled on the pushed high
//! watermark), ListOffsets and OffsetForLeaderEpoch, from the followed logs
//! — the cache for the pushed tail, the storage pool for the rest.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floe_common::PartitionId;
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

/// A followed partition, as a Fetch through this proxy reads it: its
/// follower, and the metrics its reads count in.
pub(crate) struct Followed {
    topic: String,
    metrics: Arc<floe_kafka::RequestMetrics>,
    f: Arc<Follower>,
}

impl floe_kafka::read::Readable for Followed {
    fn log(&self) -> &floe_storage::log::PartitionLog {
        &self.f.log
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    /// First use: the owner's snapshot is on its way.
    fn ready(&self) -> bool {
        self.f.is_ready()
    }

    /// The pushed high watermark may trail the owner's by a moment: out of
    /// range only once it has had the whole wait to catch up, from a live
    /// owner.
    fn past_end_is_out_of_range(&self, waited_out: bool) -> bool {
        waited_out && self.f.is_live()
    }

    fn read(
        &self,
        offset: i64,
        upper: i64,
        budget: usize,
        min_one: bool,
    ) -> futures::future::BoxFuture<'_, Result<Bytes, ReadError>> {
        Box::pin(read(&self.f, offset, upper, budget, min_one))
    }

    fn served(&self, bytes: u64) {
        self.metrics.bytes_out(bytes);
    }
}

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
}

/// Read from a followed log; a chunk deleted under the read (its segment
/// was sealed) is read again once the new state arrived.
async fn read(
    f: &Follower,
    offset: i64,
    upper: i64,
    budget: usize,
    min_one: bool,
) -> Result<Bytes, ReadError> {
    let give_up = Instant::now() + REPLAN_WAIT;
    let mut hw = f.log.subscribe();
    loop {
        match f.log.read_until(offset, upper, budget, min_one).await {
            Err(ReadError::Storage(StorageError::NotFound(_))) if Instant::now() < give_up => {
                let _ = tokio::time::timeout_at(give_up, hw.changed()).await;
            }
            other => return other.map(|r| r.records),
        }
    }
}

impl Proxy {
    pub(crate) async fn fetch(
        self: Arc<Self>,
        req: FetchRequest,
        version: i16,
        peer: &floe_kafka::listener::Peer,
    ) -> FetchResponse {
        floe_kafka::read::fetch(&req, version, peer, |topic, p| {
            let t = if version >= 13 {
                self.view.topic_by_id(topic.topic_id)
            } else {
                self.view.topic(topic.topic.0.as_str())
            };
            match self.follower(t.as_ref(), p.partition) {
                Ok(f) => Ok(Followed {
                    topic: t.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
                    metrics: self.requests.clone(),
                    f,
                }),
                Err(_) if t.is_none() && version >= 13 => Err(ResponseError::UnknownTopicId),
                Err(e) => Err(e),
            }
        })
        .await
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
                floe_kafka::read::list_offset(&f.log, p.timestamp, req.isolation_level, &mut pr)
                    .await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use floe_kafka::read_suite::{self, Rules, Subject};
    use floe_storage::log::PartitionLog;

    /// The proxy's followed logs, with its request metrics.
    struct Proxied(Arc<floe_kafka::RequestMetrics>);

    impl Subject for Proxied {
        type R = Followed;
        fn rules(&self) -> Rules {
            Rules::Proxy
        }
        fn readable(&self, log: Arc<PartitionLog>, ready: bool, live: bool) -> Followed {
            Followed {
                topic: "t".into(),
                metrics: self.0.clone(),
                f: Arc::new(Follower::new(log, ready, live)),
            }
        }
    }

    #[tokio::test]
    async fn the_shared_read_cases_over_the_proxys_followed_logs() {
        let metrics = Arc::new(floe_kafka::RequestMetrics::with_prefix("floe_proxy"));
        read_suite::run(&Proxied(metrics.clone())).await;
        // Reads were counted as served.
        let text = metrics.encode();
        assert!(text.contains("floe_proxy_bytes_out_total"), "{text}");
        assert!(!text.contains("floe_proxy_bytes_out_total 0\n"), "{text}");
    }
}
