//! Produce through the proxy: a request is split by partition and the
//! batches go, raw, to each partition's owner (one upstream request per
//! owner). A partition between owners (a move, a failover) is held and sent
//! again to the next owner within the client's timeout instead of answering
//! NOT_LEADER. Each partition is a lane: a batch is never sent to a new
//! owner before the batches ahead of it in the lane are answered, so the
//! order the client sent holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use floe_common::PartitionId;
use floe_protocol::batch::BatchHeader;
use floe_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use floe_protocol::kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use floe_protocol::kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, TopicName, TransactionalId,
};
use floe_protocol::ResponseError;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use crate::upstream::{decode_response, UpstreamError};
use crate::Proxy;

type Answer = Result<Arc<ProduceResponse>, UpstreamError>;
type SharedAnswer = Shared<BoxFuture<'static, Answer>>;
type Done = Shared<BoxFuture<'static, ()>>;

/// One partition's order of produce batches through this proxy.
#[derive(Default)]
struct Lane {
    /// Resolves when every batch given to the lane so far is answered.
    last_done: Option<Done>,
    /// Resolves when every batch given to the lane so far has been written
    /// to a broker (or answered).
    last_sent: Option<Done>,
    /// Batches given and not yet answered.
    inflight: usize,
    /// The broker the lane's batches were last written to.
    target: i32,
    /// Batches that failed and wait to be sent again.
    troubled: usize,
    /// Held batches not yet written to a broker.
    waiting: usize,
}

#[derive(Default)]
pub struct Lanes {
    lanes: Mutex<HashMap<PartitionId, Lane>>,
}

/// `own` after everything `prev` waits for: a batch that gives up early
/// does not let the batches behind it overtake the ones ahead of it.
fn chain(prev: Option<Done>, own: oneshot::Receiver<()>) -> Done {
    match prev {
        None => own.map(|_| ()).boxed().shared(),
        Some(p) => async move {
            p.await;
            let _ = own.await;
        }
        .boxed()
        .shared(),
    }
}

/// A batch's place in its lane: given back (and the batches behind it
/// released) when the batch is answered, or when its request is dropped.
struct Ticket {
    proxy: Arc<Proxy>,
    id: PartitionId,
    troubled: bool,
    waiting: bool,
    sent: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Ticket {
    /// The batch failed in a way that means "not appended": batches
    /// arriving from now on wait for it.
    fn trouble(&mut self) {
        if !self.troubled {
            self.troubled = true;
            self.proxy.lanes.with(self.id, |l| l.troubled += 1);
        }
    }

    /// The batch was written to `broker`'s connection.
    fn sent_to(&mut self, broker: i32) {
        let waiting = std::mem::take(&mut self.waiting);
        self.proxy.lanes.with(self.id, |l| {
            l.target = broker;
            if waiting {
                l.waiting -= 1;
            }
        });
        if let Some(s) = self.sent.take() {
            let _ = s.send(());
        }
    }

    /// The broker the lane's batches were last written to.
    fn target(&self) -> i32 {
        let mut t = -1;
        self.proxy.lanes.with(self.id, |l| t = l.target);
        t
    }

    fn troubled_ahead(&self) -> bool {
        let mut n = 0;
        self.proxy.lanes.with(self.id, |l| n = l.troubled);
        n > usize::from(self.troubled)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let (troubled, waiting) = (self.troubled, self.waiting);
        let mut l = self.proxy.lanes.lanes.lock().unwrap();
        let remove = match l.get_mut(&self.id) {
            Some(lane) => {
                lane.inflight -= 1;
                lane.troubled -= usize::from(troubled);
                lane.waiting -= usize::from(waiting);
                lane.inflight == 0
            }
            None => false,
        };
        if remove {
            l.remove(&self.id);
        }
        drop(l);
        if let Some(s) = self.sent.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

impl Lanes {
    fn with(&self, p: PartitionId, f: impl FnOnce(&mut Lane)) {
        if let Some(lane) = self.lanes.lock().unwrap().get_mut(&p) {
            f(lane);
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
    /// The client's transactional id: the owner verifies a transaction's
    /// first batch with the id's coordinator (KIP-890).
    txn: Option<TransactionalId>,
}

/// Whether a part's batch is an idempotent producer's (it has a sequence).
fn idempotent(records: &Option<Bytes>) -> bool {
    records
        .as_ref()
        .and_then(|r| BatchHeader::parse(r))
        .is_some_and(|h| h.producer_id >= 0)
}

/// An idempotent batch refused with OUT_OF_ORDER_SEQUENCE_NUMBER reached its
/// owner ahead of an earlier batch of its producer (a sequence gap: the
/// owner appends in sequence and answers a batch it already has with its
/// offsets). Behind proxies that happens whenever the earlier batch is still
/// on its way or being sent again: held by this or another proxy, answered
/// with an error (a cut, a timeout, a proxy that was restarted) and retried
/// by the client, or carried by a connection that broke.
///
/// librdkafka takes that answer, for a batch behind one that failed, to
/// mean the failed one was not written: it bumps the producer epoch and
/// renumbers every unacked record from sequence 0, and any of those records
/// that did land (an error from a proxy never says a batch was not
/// appended: it may have reached the old owner's storage quorum and be
/// recovered) is then written twice, which no broker can detect. So the
/// client is answered NOT_LEADER_OR_FOLLOWER: it sends its unacked batches
/// again, in order, under the same epoch, and the owner's sequence check
/// makes a copy that did land harmless. The refusal means the batch was not
/// appended, so the changed code loses nothing. (The Java client retries an
/// out-of-order batch behind an unresolved one for the same reason.) Gap
/// knowledge cannot be kept per proxy: the earlier batch may have gone
/// through another proxy, or through this one before it restarted.
fn out_of_order(code: i16, idempotent: bool) -> bool {
    idempotent && code == ResponseError::OutOfOrderSequenceNumber.code()
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
        connection: Arc<Connection>,
    ) -> BoxFuture<'static, Option<ProduceResponse>> {
        let arrived = Instant::now();
        let acks = req.acks;
        // Batches go upstream as v2 batches, in a version that carries them.
        let client_version = version;
        let version = version.max(3);
        let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
        // Answer a little before the client gives up on the request.
        let deadline = Instant::now() + timeout.mul_f64(0.9);
        let txn = req.transactional_id.clone();
        let mut parts = Vec::new();
        for t in req.topic_data {
            let name = t.name.0.to_string();
            let topic = self.view.topic(&name);
            for p in t.partition_data {
                let (id, error) = match (&topic, acks) {
                    (_, a) if !(-1..=1).contains(&a) => {
                        (None, Some(ResponseError::InvalidRequiredAcks))
                    }
                    (None, _) if floe_protocol::rules::valid_topic_name(&name).is_err() => {
                        (None, Some(ResponseError::InvalidTopicException))
                    }
                    (None, _) => (None, Some(ResponseError::UnknownTopicOrPartition)),
                    (Some(t), _) if p.index < 0 || p.index >= t.partitions => {
                        (None, Some(ResponseError::UnknownTopicOrPartition))
                    }
                    (Some(t), _) => (Some(PartitionId::new(t.id, p.index)), None),
                };
                let (mut id, mut error, mut records) = (id, error, p.records);
                if client_version < 3 && error.is_none() {
                    // A message set of format v0/v1: one v2 batch upstream.
                    match floe_protocol::legacy::upconvert(
                        records.as_deref().unwrap_or_default(),
                        floe_common::Clock::now_ms(&floe_common::SystemClock),
                    ) {
                        Ok(b) => records = Some(b),
                        Err(e) => (id, error) = (None, Some(e.code())),
                    }
                }
                parts.push(Part {
                    topic: name.clone(),
                    index: p.index,
                    records,
                    error,
                    id,
                    acks: if acks == 0 { 1 } else { acks },
                    txn: txn.clone(),
                });
            }
        }
        connection.saw(parts.iter().filter_map(|p| p.id));
        // Lane bookkeeping and first attempts, grouped by owner.
        let mut by_owner: HashMap<i32, (floe_meta::schema::BrokerRecord, Vec<usize>)> =
            HashMap::new();
        let mut lane_info = Vec::with_capacity(parts.len());
        let mut targets = vec![-1i32; parts.len()];
        {
            let mut lanes = self.lanes.lanes.lock().unwrap();
            for (i, part) in parts.iter().enumerate() {
                let Some(id) = part.id else {
                    lane_info.push(None);
                    continue;
                };
                let lane = lanes.entry(id).or_default();
                let (done_tx, done_rx) = oneshot::channel::<()>();
                let (sent_tx, sent_rx) = oneshot::channel::<()>();
                let prev_done = lane.last_done.clone();
                let prev_sent = lane.last_sent.clone();
                lane.last_done = Some(chain(prev_done.clone(), done_rx));
                lane.last_sent = Some(chain(prev_sent.clone(), sent_rx));
                let owner = self.view.owner(id);
                // Held: no owner now, or a batch ahead failed or is itself
                // held, or batches ahead went to another broker.
                let hold = match &owner {
                    None => true,
                    Some((b, _)) => {
                        lane.troubled > 0
                            || lane.waiting > 0
                            || (lane.inflight > 0 && lane.target != b.broker_id)
                    }
                };
                let prev_pending = prev_done.as_ref().is_some_and(|p| p.peek().is_none());
                // What it waits on: its owner if sent now, else the broker
                // the batches ahead of it went to.
                targets[i] = match (&owner, hold) {
                    (Some((b, _)), false) => b.broker_id,
                    _ if lane.inflight > 0 => lane.target,
                    _ => -1,
                };
                lane.inflight += 1;
                let mut ticket = Ticket {
                    proxy: self.clone(),
                    id,
                    troubled: false,
                    waiting: hold,
                    sent: Some(sent_tx),
                    done: Some(done_tx),
                };
                if hold {
                    lane.waiting += 1;
                    self.metrics.produce_held.inc();
                } else {
                    // Written below, before this function returns.
                    let (b, _) = owner.unwrap();
                    lane.target = b.broker_id;
                    if let Some(s) = ticket.sent.take() {
                        let _ = s.send(());
                    }
                    by_owner
                        .entry(b.broker_id)
                        .or_insert_with(|| (b.clone(), Vec::new()))
                        .1
                        .push(i);
                }
                let prev = (prev_sent, prev_done);
                lane_info.push(Some((prev, ticket, prev_pending)));
            }
        }
        let mut first: Vec<Option<SharedAnswer>> = vec![None; parts.len()];
        for (_, (broker, idx)) in by_owner {
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
                .with_transactional_id(txn.clone())
                .with_acks(if acks == 0 { 1 } else { acks })
                .with_timeout_ms(req.timeout_ms)
                .with_topic_data(topics);
            let answer = self.send_produce(&broker, &up, version, client_id);
            self.metrics.produce_forwarded.inc_by(idx.len() as u64);
            for i in idx {
                first[i] = Some(answer.clone());
            }
        }
        let mut tasks = Vec::with_capacity(parts.len());
        for (((part, info), first), target) in
            parts.into_iter().zip(lane_info).zip(first).zip(targets)
        {
            let proxy = self.clone();
            let client_id = client_id.to_string();
            let flags = Arc::new(PartFlags {
                idempotent: idempotent(&part.records),
                id: part.id,
                sent: AtomicBool::new(first.is_some()),
                answered: AtomicBool::new(false),
                settled: AtomicBool::new(false),
                target: std::sync::atomic::AtomicI32::new(target),
            });
            let (topic, index) = (part.topic.clone(), part.index);
            let task_flags = flags.clone();
            let handle = tokio::spawn(
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
                            &task_flags,
                        )
                        .await;
                    (part.topic, r)
                }
                // Retries and re-sends stay in the request's trace.
                .in_current_span()
                .boxed(),
            );
            tasks.push((topic, index, flags, handle));
        }
        let hold = Duration::from_millis(self.config.produce_hold_ms);
        let metrics = self.metrics.clone();
        let health = self.broker_health.clone();
        let proxy = self.clone();
        let merged = async move {
            let n = tasks.len();
            let mut results: Vec<Option<(String, PartitionProduceResponse)>> = vec![None; n];
            let part_flags: Vec<Arc<PartFlags>> = tasks.iter().map(|t| t.2.clone()).collect();
            let mut waiting: futures::stream::FuturesUnordered<_> = tasks
                .iter_mut()
                .enumerate()
                .map(|(i, t)| {
                    let h = &mut t.3;
                    async move { (i, h.await) }
                })
                .collect();
            // Looked at on arrival: a part waiting on a broker already
            // in trouble gains nothing from the hold (its partitions move
            // only when its lease lapses), and each such request held for
            // the hold holds up the connection's answers behind it.
            let mut check_at = arrived;
            let mut cut: Vec<usize> = Vec::new();
            let registered = connection.register(arrived, part_flags.clone());
            let all_settled = |results: &[Option<_>], cut: &[usize]| {
                (0..n).all(|i| results[i].is_some() || cut.contains(&i))
            };
            loop {
                tokio::select! {
                    r = waiting.next() => match r {
                        Some((i, Ok(v))) => {
                            part_flags[i].settled.store(true, Ordering::SeqCst);
                            results[i] = Some(v);
                        }
                        Some((i, Err(e))) => {
                            part_flags[i].settled.store(true, Ordering::SeqCst);
                            tracing::error!(error = %e, "a produce part failed");
                            results[i] = Some((String::new(), PartitionProduceResponse::default()
                                .with_base_offset(-1)
                                .with_error_code(ResponseError::UnknownServerError.code())));
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(check_at), if !hold.is_zero() => {
                        // Held back by some partitions while other answers are
                        // ready or other requests wait behind this one. Cut:
                        // parts waiting on a broker in trouble (frozen,
                        // unreachable), parts not written anywhere for twice
                        // the hold (no owner yet: the partition's new owner
                        // froze or died before taking it), and idempotent
                        // parts held that long by a hand-over (a new owner
                        // still recovering: their sequence makes the
                        // client's retry safe, and an owner's refusal of
                        // the batches behind is answered as retriable). A planned move answers within that, and
                        // stays invisible.
                        //
                        // Nothing is blocked, and the parts stay held until
                        // their partitions' next owners answer (no client
                        // backoff, no retry), while every other request on
                        // the connection is itself held by a failure and no
                        // healthy partition can be queued behind them
                        // (`Connection::others_wait_on_trouble`).
                        let blocking = results.iter().any(Option::is_some)
                            || (connection.outstanding.load(Ordering::SeqCst) > 1
                                && !connection.others_wait_on_trouble(&proxy, registered.id, hold));
                        let held_long = arrived.elapsed() >= hold * 2;
                        if blocking {
                            for i in 0..n {
                                let t = part_flags[i].target.load(Ordering::SeqCst);
                                let stuck = (t >= 0 && health.in_trouble(t, hold))
                                    || (held_long && !part_flags[i].sent.load(Ordering::SeqCst))
                                    || (held_long && part_flags[i].idempotent);
                                if results[i].is_none() && !cut.contains(&i) && stuck {
                                    // Nothing more is sent for it from now.
                                    part_flags[i].answered.store(true, Ordering::SeqCst);
                                    part_flags[i].settled.store(true, Ordering::SeqCst);
                                    cut.push(i);
                                }
                            }
                        }
                        check_at = Instant::now() + HOLD_RECHECK;
                    }
                }
                if all_settled(&results, &cut) {
                    break;
                }
            }
            drop(waiting);
            if !hold.is_zero() && arrived.elapsed() > hold {
                let waited_on: Vec<i32> = part_flags
                    .iter()
                    .map(|f| f.target.load(Ordering::SeqCst))
                    .collect();
                tracing::debug!(
                    took_ms = arrived.elapsed().as_millis() as u64,
                    parts = n,
                    cut = cut.len(),
                    ?waited_on,
                    "a produce request was answered after the hold"
                );
            }
            for i in cut {
                if results[i].is_some() {
                    continue;
                }
                let (topic, index, flags, _) = &tasks[i];
                flags.answered.store(true, Ordering::SeqCst);
                // The batch is either not appended (it will not be sent now)
                // or idempotent (a retry is answered by its sequence): the
                // client may retry at once. A plain batch already sent may
                // still land: a timeout, as Kafka would answer.
                let code = if flags.idempotent || !flags.sent.load(Ordering::SeqCst) {
                    ResponseError::NotLeaderOrFollower
                } else {
                    ResponseError::RequestTimedOut
                };
                metrics.produce_cut.inc();
                results[i] = Some((
                    topic.clone(),
                    PartitionProduceResponse::default()
                        .with_index(*index)
                        .with_base_offset(-1)
                        .with_error_code(code.code()),
                ));
            }
            let mut resp = ProduceResponse::default();
            let mut told: Vec<i32> = Vec::new();
            for (i, slot) in results.into_iter().enumerate() {
                let (mut topic, mut r) = slot.expect("every part answered or cut");
                if topic.is_empty() {
                    topic = tasks[i].0.clone();
                    r.index = tasks[i].1;
                }
                // The client knows proxies only. A partition's first answer
                // on a connection, and its first after its owner changed,
                // tell the client its owner node (KIP-951's leader
                // discovery, v10+), so a client with an old node moves the
                // partition to the new node's connection with this answer
                // and not at its next Metadata refresh (minutes away): the
                // old connection carries the old owner's partitions, whose
                // stalls it must not share. Told in the answer to the
                // partition's last request in flight here, so the client
                // has nothing to drain when it moves the partition.
                r.current_leader = LeaderIdAndEpoch::default();
                if client_version >= 10 && acks != 0 {
                    if let Some(id) = tasks[i].2.id {
                        if let Some(node) = proxy.owner_node(id) {
                            if !connection.carried_by_another(registered.id, id)
                                && connection.news(id, node)
                            {
                                r.current_leader = LeaderIdAndEpoch::default()
                                    .with_leader_id(node.into())
                                    .with_leader_epoch(-1);
                                metrics.produce_leader_told.inc();
                                if !told.contains(&node) {
                                    told.push(node);
                                }
                            }
                        }
                    }
                }
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
            if !told.is_empty() {
                // Where the told nodes are, for a client that has not met
                // them (a broker that joined since its last Metadata).
                resp.node_endpoints = proxy
                    .client_nodes(&connection.listener)
                    .into_iter()
                    .filter(|(id, _, _)| told.contains(id))
                    .map(|(id, host, port)| {
                        NodeEndpoint::default()
                            .with_node_id(id.into())
                            .with_host(
                                floe_protocol::kafka_protocol::protocol::StrBytes::from_string(
                                    host,
                                ),
                            )
                            .with_port(port)
                    })
                    .collect();
            }
            (acks != 0).then_some(resp)
        };
        if acks == 0 {
            // No answer is sent: the connection's later answers need not
            // wait for this one.
            tokio::spawn(merged);
            return async { None }.boxed();
        }
        merged.boxed()
    }

    fn send_produce(
        &self,
        owner: &floe_meta::schema::BrokerRecord,
        req: &ProduceRequest,
        version: i16,
        client_id: &str,
    ) -> SharedAnswer {
        let broker = owner.broker_id;
        // The client's record sets go out as the bytes they arrived in.
        let frame = floe_protocol::produce_frame::produce_parts(
            version,
            client_id,
            floe_kafka::trace::header_tags(),
            req,
        );
        let rx = frame.map(|f| self.produce_pool.get(owner).send_parts(f));
        let awaiting = self.broker_health.sent(broker, owner.started_ms);
        async move {
            let answer = async {
                let rx = rx.map_err(|e| UpstreamError::Connect(broker, e))?;
                let frame = rx
                    .await
                    .map_err(|_| UpstreamError::Lost(broker, "connection dropped".into()))??;
                decode_response::<ProduceResponse>(ApiKey::Produce, version, frame)
                    .map(Arc::new)
                    .map_err(|e| UpstreamError::Lost(broker, format!("undecodable response: {e}")))
            }
            .await;
            awaiting.answered(answer.is_ok());
            answer
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
        (prev_sent, prev_done): (Option<Done>, Option<Done>),
        mut prev_pending: bool,
        mut ticket: Ticket,
        version: i16,
        client_id: &str,
        deadline: Instant,
        flags: &PartFlags,
    ) -> PartitionProduceResponse {
        let idem = flags.idempotent;
        // The client was answered for this part already (cut): nothing more
        // may be sent; the lane is kept until the attempt out resolves.
        let answered = || flags.answered.load(Ordering::SeqCst);
        let error = |e: ResponseError| {
            PartitionProduceResponse::default()
                .with_index(part.index)
                .with_base_offset(-1)
                .with_error_code(e.code())
        };
        let timed_out = || error(ResponseError::RequestTimedOut);
        let mut changes = self.view.changes();
        let mut backoff = Duration::from_millis(10);
        let mut attempt = first;
        if attempt.is_none() {
            // Held: once every batch ahead is written (and answered, while
            // one of them failed and waits to be sent again), to the owner
            // of now.
            if let Some(p) = &prev_sent {
                if tokio::time::timeout_at(deadline, p.clone()).await.is_err() {
                    return timed_out();
                }
            }
            let Some(mut owner) = self.wait_owner(id, &mut changes, backoff, deadline).await else {
                return timed_out();
            };
            // Batches ahead that went to another broker (or failed) may still
            // land after this one: wait for their answers.
            if let Some(p) = &prev_done {
                if ticket.troubled_ahead() || ticket.target() != owner.broker_id {
                    if tokio::time::timeout_at(deadline, p.clone()).await.is_err() {
                        return timed_out();
                    }
                    prev_pending = false;
                    let Some(now) = self.wait_owner(id, &mut changes, backoff, deadline).await
                    else {
                        return timed_out();
                    };
                    owner = now;
                }
            }
            // Marked sent before it is, then checked for a cut: a cut either
            // sees it sent (and answers as for a batch that may land) or is
            // seen here (and nothing is sent).
            flags.sent.store(true, Ordering::SeqCst);
            if answered() {
                return timed_out();
            }
            attempt = Some(self.resend(part, &owner, version, client_id, deadline));
            flags.target.store(owner.broker_id, Ordering::SeqCst);
            ticket.sent_to(owner.broker_id);
        }
        loop {
            let sent_broker = ticket.target();
            let mut owner_moved = false;
            let outcome: Result<PartitionProduceResponse, (ResponseError, bool)> =
                match attempt.take() {
                    Some(answer) => match self
                        .await_answer(id, sent_broker, answer, &mut changes, deadline)
                        .await
                    {
                        // No answer within the client's time: it may still land.
                        Waited::TimedOut => Err((ResponseError::RequestTimedOut, false)),
                        Waited::Answer(Ok(resp)) => Ok(pick(&resp, &part.topic, part.index)),
                        Waited::Answer(Err(e)) => Err((
                            if e.not_sent() {
                                ResponseError::RequestTimedOut
                            } else {
                                ResponseError::NetworkException
                            },
                            e.not_sent() || idem,
                        )),
                        // The partition has a new owner and the old one does
                        // not answer (frozen, dead): an idempotent batch goes
                        // to the new owner (its sequence makes a copy that did
                        // land harmless); a plain one is answered as a lost
                        // connection would be.
                        Waited::OwnerMoved => {
                            self.metrics.produce_owner_moved.inc();
                            owner_moved = true;
                            Err((ResponseError::NetworkException, idem))
                        }
                    },
                    None => Err((ResponseError::RequestTimedOut, true)),
                };
            let retry = match &outcome {
                Ok(r) if r.error_code == 0 => false,
                // A later batch that overtook one this proxy holds: sent
                // again once the one ahead is answered.
                Ok(r) if out_of_order(r.error_code, idem) && prev_pending => true,
                // Ahead of a batch the client sends again (see
                // `out_of_order`): it sends that one, then this one.
                Ok(r) if out_of_order(r.error_code, idem) => {
                    drop(ticket);
                    self.metrics.produce_behind_gap.inc();
                    return error(ResponseError::NotLeaderOrFollower);
                }
                Ok(r) => retriable(r.error_code),
                Err((_, retry)) => *retry,
            };
            if answered() {
                return timed_out();
            }
            if !retry || Instant::now() >= deadline {
                drop(ticket);
                return match outcome {
                    Ok(r) => r,
                    Err((e, _)) => error(e),
                };
            }
            ticket.trouble();
            // Batches ahead in the lane first; then the next owner.
            if let Some(p) = &prev_done {
                if tokio::time::timeout_at(deadline, p.clone()).await.is_err() {
                    return timed_out();
                }
                prev_pending = false;
            }
            // Give a move a moment to finish before asking again, and a
            // broker that refuses connections (restarting) a moment too:
            // only an owner already seen to change is asked again at once.
            if !owner_moved {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_millis(200));
            }
            let Some(owner) = self.wait_owner(id, &mut changes, backoff, deadline).await else {
                return timed_out();
            };
            if answered() {
                return timed_out();
            }
            self.metrics.produce_retries.inc();
            attempt = Some(self.resend(part, &owner, version, client_id, deadline));
            flags.target.store(owner.broker_id, Ordering::SeqCst);
            ticket.sent_to(owner.broker_id);
        }
    }

    /// Wait for an upstream answer from `sent_broker`, until the deadline,
    /// or until the partition has another owner and a grace period passed
    /// without the answer.
    async fn await_answer(
        &self,
        id: PartitionId,
        sent_broker: i32,
        answer: SharedAnswer,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        deadline: Instant,
    ) -> Waited {
        let moved = async {
            loop {
                if let Some((b, _)) = self.view.owner(id) {
                    if b.broker_id != sent_broker {
                        return;
                    }
                }
                if changes.changed().await.is_err() {
                    futures::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout_at(deadline, answer.clone()) => match r {
                Ok(a) => Waited::Answer(a),
                Err(_) => Waited::TimedOut,
            },
            _ = moved => {
                let grace = (Instant::now() + OWNER_MOVED_GRACE).min(deadline);
                match tokio::time::timeout_at(grace, answer).await {
                    Ok(a) => Waited::Answer(a),
                    Err(_) if Instant::now() >= deadline => Waited::TimedOut,
                    Err(_) => Waited::OwnerMoved,
                }
            }
        }
    }

    /// The partition's owner, once there is one (or `None` at `deadline`).
    async fn wait_owner(
        &self,
        id: PartitionId,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        backoff: Duration,
        deadline: Instant,
    ) -> Option<floe_meta::schema::BrokerRecord> {
        loop {
            changes.borrow_and_update();
            if let Some((b, _)) = self.view.owner(id) {
                return Some(b);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(backoff) => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// One partition's batch, alone, to `owner`.
    fn resend(
        &self,
        part: &Part,
        owner: &floe_meta::schema::BrokerRecord,
        version: i16,
        client_id: &str,
        deadline: Instant,
    ) -> SharedAnswer {
        let one = ProduceRequest::default()
            .with_transactional_id(part.txn.clone())
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
        self.send_produce(owner, &one, version, client_id)
    }
}

/// Per broker: produce requests awaiting an answer, when the last answer
/// came (or the first of the awaited ones was sent), and when a connection
/// to it last failed.
#[derive(Default)]
pub struct BrokerHealth {
    brokers: Mutex<HashMap<i32, Health>>,
}

#[derive(Clone, Copy)]
struct Health {
    /// The broker process it describes (its registration's start time): a
    /// broker restarted in place starts with a clean record, not with the
    /// refused connections of the process before it.
    started_ms: i64,
    outstanding: usize,
    progress: Instant,
    /// Since when every answer has been a failed connection.
    failing_since: Option<Instant>,
}

impl BrokerHealth {
    fn sent(self: &Arc<Self>, broker: i32, started_ms: i64) -> Awaiting {
        let now = Instant::now();
        let mut m = self.brokers.lock().unwrap();
        let h = m.entry(broker).or_insert(Health {
            started_ms,
            outstanding: 0,
            progress: now,
            failing_since: None,
        });
        if h.started_ms != started_ms {
            // A new process: what the old one did says nothing of it (the
            // old one's requests still out keep being counted).
            h.started_ms = started_ms;
            h.progress = now;
            h.failing_since = None;
        }
        if h.outstanding == 0 {
            h.progress = now;
        }
        h.outstanding += 1;
        Awaiting {
            health: self.clone(),
            broker,
        }
    }

    /// The broker is frozen (requests out, nothing back for twice `hold`:
    /// a slow write to a slow store answers sooner) or its connections have
    /// failed for `hold` (dead: a refused connection is never a slow
    /// broker; a clean restart hands its partitions over before it stops
    /// listening).
    fn in_trouble(&self, broker: i32, hold: Duration) -> bool {
        let now = Instant::now();
        self.brokers.lock().unwrap().get(&broker).is_some_and(|h| {
            (h.outstanding > 0 && now - h.progress >= hold * 2)
                || h.failing_since.is_some_and(|f| now - f >= hold)
        })
    }
}

/// One produce request out to a broker, counted until dropped.
struct Awaiting {
    health: Arc<BrokerHealth>,
    broker: i32,
}

impl Awaiting {
    fn answered(&self, ok: bool) {
        let now = Instant::now();
        if let Some(h) = self.health.brokers.lock().unwrap().get_mut(&self.broker) {
            h.progress = now;
            if ok {
                h.failing_since = None;
            } else {
                h.failing_since.get_or_insert(now);
            }
        }
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        if let Some(h) = self.health.brokers.lock().unwrap().get_mut(&self.broker) {
            h.outstanding = h.outstanding.saturating_sub(1);
        }
    }
}

/// How an upstream attempt ended.
enum Waited {
    Answer(Answer),
    TimedOut,
    OwnerMoved,
}

/// What the merged answer and a part's task share about the part.
struct PartFlags {
    /// An idempotent producer's batch (its retry is answered by sequence).
    idempotent: bool,
    id: Option<PartitionId>,
    /// Written to a broker at least once.
    sent: AtomicBool,
    /// The client got an answer for it already (the hold cut it).
    answered: AtomicBool,
    /// Its answer is in the merged response (cut or from a broker).
    settled: AtomicBool,
    /// The broker it waits on (sent to, or the one its lane last wrote to
    /// while it is held); -1: none.
    target: std::sync::atomic::AtomicI32,
}

/// What the hold knows of one client connection: answers go out in
/// request order, so a held answer holds up every one after it.
#[derive(Default)]
pub struct Connection {
    /// The listener the client came in on (node addresses are its).
    pub(crate) listener: Arc<str>,
    /// Requests not yet answered.
    pub(crate) outstanding: AtomicUsize,
    /// Produce requests being answered, by a number of their own: their
    /// parts as the hold sees them.
    produces: Mutex<HashMap<u64, InFlight>>,
    next: std::sync::atomic::AtomicU64,
    /// The partitions produced to on this connection lately, and when.
    seen: Mutex<HashMap<PartitionId, Instant>>,
    /// Of each partition in `seen`, the node its answers here last told
    /// the client of (-1: none yet). All node ids of a proxy share its
    /// address, so the proxy cannot tell which node id a client opened a
    /// connection for: the first answer of a partition on a connection
    /// tells its node (a no-op for a client that knew), and later answers
    /// tell again only when it changes.
    nodes: Mutex<HashMap<PartitionId, i32>>,
}

impl Connection {
    /// The state of a new connection that came in on `listener`.
    pub(crate) fn on(listener: Arc<str>) -> Self {
        Self {
            listener,
            ..Default::default()
        }
    }
}

/// A produce request being answered: when it arrived, and its parts.
type InFlight = (Instant, Arc<[Arc<PartFlags>]>);

/// How long a partition produced to on a connection counts as one of its
/// partitions (a client may have batches of it queued behind the answers
/// it waits for, which the proxy cannot see).
const SEEN_FOR: Duration = Duration::from_secs(60);

impl Connection {
    fn saw(&self, parts: impl Iterator<Item = PartitionId>) {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        let mut nodes = self.nodes.lock().unwrap();
        for p in parts {
            seen.insert(p, now);
            nodes.entry(p).or_insert(-1);
        }
        if seen.len() > 64 {
            seen.retain(|_, t| now - *t < SEEN_FOR);
            nodes.retain(|p, _| seen.contains_key(p));
        }
    }

    /// Whether a request other than `me` still being answered on this
    /// connection carries partition `p`. A partition's new node is told
    /// only in the answer to its last request in flight: an idempotent
    /// librdkafka producer that moves a partition to another connection
    /// first drains the requests in flight on the old one, and the new
    /// connection's thread is not woken when they finish, but sleeps up to
    /// a second (`rd_kafka_broker_produce_toppar` returns early without a
    /// wake-up while `wait_drain` has requests in flight).
    fn carried_by_another(&self, me: u64, p: PartitionId) -> bool {
        self.produces
            .lock()
            .unwrap()
            .iter()
            .any(|(id, (_, parts))| *id != me && parts.iter().any(|f| f.id == Some(p)))
    }

    /// Whether the client should be told that partition `p` is led by
    /// `node` now (not told on this connection yet, or its owner changed
    /// since): from then on the connection counts `node` as told.
    fn news(&self, p: PartitionId, node: i32) -> bool {
        let mut nodes = self.nodes.lock().unwrap();
        nodes.insert(p, node) != Some(node)
    }

    fn register(self: &Arc<Self>, arrived: Instant, parts: Vec<Arc<PartFlags>>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        self.produces
            .lock()
            .unwrap()
            .insert(id, (arrived, parts.into()));
        Registered {
            connection: self.clone(),
            id,
        }
    }

    /// Whether holding request `me` starves nobody: every other request
    /// on the connection is a produce whose every open part is itself held
    /// by a failure (it waits on a broker in trouble, or has waited twice
    /// the hold: a hand-over), none answered and waiting to be sent back;
    /// and every partition produced to here lately either has a part open
    /// here or is owned by a broker in trouble or by none (so no batch of
    /// a healthy partition can be queued in the client behind these
    /// answers). With owner nodes in Metadata a client keeps one owner's
    /// partitions on one connection, so this is the usual case for a
    /// frozen or dead broker: its parts stay held until their next owners
    /// write them, with no client retry.
    fn others_wait_on_trouble(&self, proxy: &Proxy, me: u64, hold: Duration) -> bool {
        let now = Instant::now();
        let mut open: std::collections::HashSet<PartitionId> = Default::default();
        let produces = self.produces.lock().unwrap();
        // A part waiting on a broker one of mine waits on is held by what
        // holds me (answering me would not answer it sooner), even before
        // that broker counts as in trouble: mine can have been held twice
        // the hold (a hand-over) a moment before its broker has gone twice
        // the hold without answering anything.
        let mine: Vec<i32> = produces
            .get(&me)
            .map(|(_, parts)| {
                parts
                    .iter()
                    .filter(|f| !f.settled.load(Ordering::SeqCst))
                    .map(|f| f.target.load(Ordering::SeqCst))
                    .filter(|t| *t >= 0)
                    .collect()
            })
            .unwrap_or_default();
        let troubled =
            |b: i32| b < 0 || mine.contains(&b) || proxy.broker_health.in_trouble(b, hold);
        // Requests of other kinds, and produces already answered (waiting
        // for their turn), are healthy answers held up.
        if self.outstanding.load(Ordering::SeqCst) > produces.len() {
            tracing::debug!(
                outstanding = self.outstanding.load(Ordering::SeqCst),
                produces = produces.len(),
                "held produce: other requests wait behind it"
            );
            return false;
        }
        for (id, (arrived, parts)) in produces.iter() {
            let mut held = true;
            for f in parts.iter() {
                if f.settled.load(Ordering::SeqCst) {
                    held = false;
                    continue;
                }
                if let Some(p) = f.id {
                    open.insert(p);
                }
                if !troubled(f.target.load(Ordering::SeqCst)) && now - *arrived < hold * 2 {
                    held = false;
                }
            }
            if *id != me && !held {
                tracing::debug!(
                    other = id,
                    age_ms = (now - *arrived).as_millis() as u64,
                    "held produce: another request on the connection is not held by trouble"
                );
                return false;
            }
        }
        drop(produces);
        self.all_seen_held(proxy, &open, troubled, now)
    }

    /// Whether every partition produced to on this connection lately has a
    /// part open here or is owned by a broker `troubled` says holds it (or
    /// by none).
    fn all_seen_held(
        &self,
        proxy: &Proxy,
        open: &std::collections::HashSet<PartitionId>,
        troubled: impl Fn(i32) -> bool,
        now: Instant,
    ) -> bool {
        let seen = self.seen.lock().unwrap();
        let healthy = seen
            .iter()
            .filter(|(_, t)| now - **t < SEEN_FOR)
            .find(|(p, _)| {
                !open.contains(p)
                    && match proxy.view.owner(**p) {
                        Some((b, _)) => !troubled(b.broker_id),
                        None => false,
                    }
            });
        if let Some((p, _)) = healthy {
            tracing::debug!(partition = %p, "held produce: a healthy partition produced to here lately");
        }
        healthy.is_none()
    }
}

/// A produce request in its connection's register until its answer is
/// merged.
struct Registered {
    connection: Arc<Connection>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connection.produces.lock().unwrap().remove(&self.id);
    }
}

/// After the owner changed, the old owner's answer is awaited this much
/// longer (a clean move answers in flight batches; a frozen broker never).
const OWNER_MOVED_GRACE: Duration = Duration::from_millis(250);

/// A held request that blocks nothing is looked at again this often.
const HOLD_RECHECK: Duration = Duration::from_millis(100);

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
