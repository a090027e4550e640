//! Produce through the proxy: a request is split by partition and the
//! batches go, raw, to each partition's owner (one upstream request per
//! owner). A partition between owners (a move, a failover) is held and sent
//! again to the next owner within the client's timeout instead of answering
//! NOT_LEADER. Each partition is a lane: a batch is never sent to a new
//! owner before the batches ahead of it in the lane are answered, so the
//! order the client sent holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use floe_common::PartitionId;
use floe_protocol::batch::BatchHeader;
use floe_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use floe_protocol::kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, PartitionProduceResponse, TopicProduceResponse,
};
use floe_protocol::kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use floe_protocol::ResponseError;
use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::upstream::{decode_response, encode_request, UpstreamError};
use crate::Proxy;

type Answer = Result<Arc<ProduceResponse>, UpstreamError>;
type SharedAnswer = Shared<BoxFuture<'static, Answer>>;
type Done = Shared<BoxFuture<'static, ()>>;

/// One partition's order of produce batches through this proxy.
#[derive(Default)]
struct Lane {
    /// Resolves when the last batch given to the lane is answered.
    last: Option<Done>,
    /// Batches given and not yet answered.
    inflight: usize,
    /// The broker the lane's in-flight first attempts went to.
    target: i32,
    /// Batches of the lane being held or sent again.
    troubled: usize,
}

#[derive(Default)]
pub struct Lanes {
    lanes: Mutex<HashMap<PartitionId, Lane>>,
}

/// A batch's place in its lane: given back (and the batches behind it
/// released) when the batch is answered, or when its request is dropped.
struct Ticket {
    proxy: Arc<Proxy>,
    id: PartitionId,
    troubled: bool,
    done: Option<oneshot::Sender<()>>,
}

impl Ticket {
    fn trouble(&mut self) {
        if !self.troubled {
            self.troubled = true;
            self.proxy.lanes.trouble(self.id);
            self.proxy.metrics.produce_held.inc();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.proxy.lanes.finish(self.id, self.troubled);
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

impl Lanes {
    fn finish(&self, p: PartitionId, troubled: bool) {
        let mut l = self.lanes.lock().unwrap();
        let remove = match l.get_mut(&p) {
            Some(lane) => {
                lane.inflight -= 1;
                if troubled {
                    lane.troubled -= 1;
                }
                lane.inflight == 0
            }
            None => false,
        };
        if remove {
            l.remove(&p);
        }
    }

    fn trouble(&self, p: PartitionId) {
        if let Some(lane) = self.lanes.lock().unwrap().get_mut(&p) {
            lane.troubled += 1;
        }
    }
}

/// One partition's part of a client's produce request.
struct Part {
    topic: String,
    index: i32,
    records: Option<Bytes>,
    /// Known outcome without forwarding (an unknown topic, ...).
    error: Option<ResponseError>,
    id: Option<PartitionId>,
    /// acks sent upstream (acks=0 is forwarded as 1 and not answered).
    acks: i16,
}

fn idempotent(records: &Option<Bytes>) -> bool {
    records
        .as_ref()
        .and_then(|r| BatchHeader::parse(r))
        .is_some_and(|h| h.producer_id >= 0)
}

/// Errors after which the batch was surely not appended and the next owner
/// (or the same one, later) can take it.
fn retriable(code: i16) -> bool {
    [
        ResponseError::NotLeaderOrFollower,
        ResponseError::LeaderNotAvailable,
        ResponseError::NotEnoughReplicas,
        ResponseError::UnknownTopicOrPartition,
    ]
    .iter()
    .any(|e| e.code() == code)
}

impl Proxy {
    /// Start forwarding a produce request now (in the order of the client's
    /// requests); the returned future is the merged answer.
    pub(crate) fn produce(
        self: &Arc<Self>,
        req: ProduceRequest,
        version: i16,
        client_id: &str,
    ) -> BoxFuture<'static, Option<ProduceResponse>> {
        let acks = req.acks;
        let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
        // Answer a little before the client gives up on the request.
        let deadline = Instant::now() + timeout.mul_f64(0.9);
        let mut parts = Vec::new();
        for t in req.topic_data {
            let name = t.name.0.to_string();
            let topic = self.view.topic(&name);
            for p in t.partition_data {
                let (id, error) = match (&topic, acks) {
                    (_, a) if !(-1..=1).contains(&a) => {
                        (None, Some(ResponseError::InvalidRequiredAcks))
                    }
                    (None, _) if floe_broker::node::valid_topic_name(&name).is_err() => {
                        (None, Some(ResponseError::InvalidTopicException))
                    }
                    (None, _) => (None, Some(ResponseError::UnknownTopicOrPartition)),
                    (Some(t), _) if p.index < 0 || p.index >= t.partitions => {
                        (None, Some(ResponseError::UnknownTopicOrPartition))
                    }
                    (Some(t), _) => (Some(PartitionId::new(t.id, p.index)), None),
                };
                parts.push(Part {
                    topic: name.clone(),
                    index: p.index,
                    records: p.records,
                    error,
                    id,
                    acks: if acks == 0 { 1 } else { acks },
                });
            }
        }
        // Lane bookkeeping and first attempts, grouped by owner.
        let mut by_owner: HashMap<i32, (String, Vec<usize>)> = HashMap::new();
        let mut lane_info = Vec::with_capacity(parts.len());
        {
            let mut lanes = self.lanes.lanes.lock().unwrap();
            for (i, part) in parts.iter().enumerate() {
                let Some(id) = part.id else {
                    lane_info.push(None);
                    continue;
                };
                let lane = lanes.entry(id).or_default();
                let (tx, rx) = oneshot::channel::<()>();
                let done: Done = rx.map(|_| ()).boxed().shared();
                let prev = lane.last.replace(done);
                let owner = self.view.owner(id);
                let hold = match &owner {
                    None => true,
                    Some((b, _)) => {
                        lane.troubled > 0 || (lane.inflight > 0 && lane.target != b.broker_id)
                    }
                };
                let prev_pending = prev.as_ref().is_some_and(|p| p.peek().is_none());
                if !hold {
                    let (b, _) = owner.unwrap();
                    lane.target = b.broker_id;
                    by_owner
                        .entry(b.broker_id)
                        .or_insert_with(|| (format!("{}:{}", b.host, b.port), Vec::new()))
                        .1
                        .push(i);
                }
                lane.inflight += 1;
                let mut ticket = Ticket {
                    proxy: self.clone(),
                    id,
                    troubled: false,
                    done: Some(tx),
                };
                if hold {
                    // Counted now, so that batches arriving next wait too.
                    lane.troubled += 1;
                    ticket.troubled = true;
                    self.metrics.produce_held.inc();
                }
                lane_info.push(Some((prev, ticket, prev_pending)));
            }
        }
        let mut first: Vec<Option<SharedAnswer>> = vec![None; parts.len()];
        for (broker, (addr, idx)) in by_owner {
            let mut topics: Vec<TopicProduceData> = Vec::new();
            for &i in &idx {
                let p = &parts[i];
                let data = PartitionProduceData::default()
                    .with_index(p.index)
                    .with_records(p.records.clone());
                match topics.iter_mut().find(|t| t.name.0.as_str() == p.topic) {
                    Some(t) => t.partition_data.push(data),
                    None => topics.push(
                        TopicProduceData::default()
                            .with_name(TopicName(p.topic.clone().into()))
                            .with_partition_data(vec![data]),
                    ),
                }
            }
            let up = ProduceRequest::default()
                .with_acks(if acks == 0 { 1 } else { acks })
                .with_timeout_ms(req.timeout_ms)
                .with_topic_data(topics);
            let answer = self.send_produce(broker, &addr, &up, version, client_id);
            self.metrics.produce_forwarded.inc_by(idx.len() as u64);
            for i in idx {
                first[i] = Some(answer.clone());
            }
        }
        let mut futures = Vec::with_capacity(parts.len());
        for ((part, info), first) in parts.into_iter().zip(lane_info).zip(first) {
            let proxy = self.clone();
            let client_id = client_id.to_string();
            futures.push(
                async move {
                    let Some((prev, ticket, prev_pending)) = info else {
                        let r = PartitionProduceResponse::default()
                            .with_index(part.index)
                            .with_base_offset(-1)
                            .with_error_code(part.error.map_or(0, |e| e.code()));
                        return (part.topic, r);
                    };
                    let id = part.id.expect("lane implies a partition");
                    let r = proxy
                        .run_part(
                            &part,
                            id,
                            first,
                            prev,
                            prev_pending,
                            ticket,
                            version,
                            &client_id,
                            deadline,
                        )
                        .await;
                    (part.topic, r)
                }
                .boxed(),
            );
        }
        async move {
            let results = futures::future::join_all(futures).await;
            let mut resp = ProduceResponse::default();
            for (topic, mut r) in results {
                // The client knows proxies only.
                r.current_leader = LeaderIdAndEpoch::default();
                match resp
                    .responses
                    .iter_mut()
                    .find(|t| t.name.0.as_str() == topic)
                {
                    Some(t) => t.partition_responses.push(r),
                    None => resp.responses.push(
                        TopicProduceResponse::default()
                            .with_name(TopicName(topic.into()))
                            .with_partition_responses(vec![r]),
                    ),
                }
            }
            (acks != 0).then_some(resp)
        }
        .boxed()
    }

    fn send_produce(
        &self,
        broker: i32,
        addr: &str,
        req: &ProduceRequest,
        version: i16,
        client_id: &str,
    ) -> SharedAnswer {
        let frame = encode_request(ApiKey::Produce, version, client_id, req);
        let rx = frame.map(|f| self.produce_pool.get(broker, addr).send(f));
        async move {
            let rx = rx.map_err(|e| UpstreamError::Connect(broker, e))?;
            let frame = rx
                .await
                .map_err(|_| UpstreamError::Lost(broker, "connection dropped".into()))??;
            decode_response::<ProduceResponse>(ApiKey::Produce, version, frame)
                .map(Arc::new)
                .map_err(|e| UpstreamError::Lost(broker, format!("undecodable response: {e}")))
        }
        .boxed()
        .shared()
    }

    /// Drive one partition's batch to an answer: its first attempt (if it
    /// was sent), then, while it failed in a way that means "not appended",
    /// again to the partition's next owner once the batches ahead of it in
    /// the lane are answered, until the deadline.
    #[allow(clippy::too_many_arguments)]
    async fn run_part(
        self: &Arc<Self>,
        part: &Part,
        id: PartitionId,
        first: Option<SharedAnswer>,
        prev: Option<Done>,
        mut prev_pending: bool,
        mut ticket: Ticket,
        version: i16,
        client_id: &str,
        deadline: Instant,
    ) -> PartitionProduceResponse {
        let idem = idempotent(&part.records);
        let mut attempt = first;
        let mut changes = self.view.changes();
        let mut backoff = Duration::from_millis(10);
        let outcome = loop {
            let outcome: Result<PartitionProduceResponse, (ResponseError, bool)> =
                match attempt.take() {
                    Some(answer) => match tokio::time::timeout_at(deadline, answer).await {
                        // No answer within the client's time: it may still land.
                        Err(_) => Err((ResponseError::RequestTimedOut, false)),
                        Ok(Ok(resp)) => Ok(pick(&resp, &part.topic, part.index)),
                        Ok(Err(e)) => Err((
                            if e.not_sent() {
                                ResponseError::RequestTimedOut
                            } else {
                                ResponseError::NetworkException
                            },
                            e.not_sent() || idem,
                        )),
                    },
                    None => Err((ResponseError::RequestTimedOut, true)),
                };
            let retry = match &outcome {
                Ok(r) if r.error_code == 0 => false,
                Ok(r) if retriable(r.error_code) => true,
                // A later batch that overtook one being held.
                Ok(r) => {
                    r.error_code == ResponseError::OutOfOrderSequenceNumber.code() && prev_pending
                }
                Err((_, retry)) => *retry,
            };
            if !retry || Instant::now() >= deadline {
                break outcome;
            }
            ticket.trouble();
            // Batches ahead in the lane first; then wait for an owner.
            if let Some(p) = &prev {
                if tokio::time::timeout_at(deadline, p.clone()).await.is_err() {
                    break outcome;
                }
                prev_pending = false;
            }
            let owner = loop {
                changes.borrow_and_update();
                if let Some((b, _)) = self.view.owner(id) {
                    break Some(b);
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::time::sleep_until(deadline) => break None,
                }
            };
            let Some(owner) = owner else { break outcome };
            // Give a move a moment to finish before asking again.
            if outcome.is_ok() {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            self.metrics.produce_retries.inc();
            let one = ProduceRequest::default()
                .with_acks(part.acks)
                .with_timeout_ms(
                    (deadline - Instant::now())
                        .as_millis()
                        .clamp(1, i32::MAX as u128) as i32,
                )
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(part.topic.clone().into()))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(part.index)
                        .with_records(part.records.clone())])]);
            let addr = format!("{}:{}", owner.host, owner.port);
            attempt = Some(self.send_produce(owner.broker_id, &addr, &one, version, client_id));
        };
        drop(ticket);
        match outcome {
            Ok(r) => r,
            Err((e, _)) => PartitionProduceResponse::default()
                .with_index(part.index)
                .with_base_offset(-1)
                .with_error_code(e.code()),
        }
    }
}

/// A partition's answer in an upstream response.
fn pick(resp: &ProduceResponse, topic: &str, index: i32) -> PartitionProduceResponse {
    resp.responses
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| &t.partition_responses)
        .find(|p| p.index == index)
        .cloned()
        .unwrap_or_else(|| {
            PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(-1)
                .with_error_code(ResponseError::UnknownServerError.code())
        })
}
