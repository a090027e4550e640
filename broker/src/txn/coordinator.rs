//! The transaction coordinator: the transactional ids of each
//! `__transaction_state` partition this broker writes (a shard, replayed
//! from its log when first asked for, its unfinished ends resumed), the
//! transitions Kafka's APIs make of them (each logged before it is
//! answered), the markers that end a transaction on every partition in it
//! — written through each partition's current owner, retried across moves
//! until durable, before the end is logged as complete — and the timer
//! that aborts transactions past their timeout and forgets idle ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use floe_common::PartitionId;
use floe_kafka::client::InternalClient;
use floe_protocol::control::{Marker, MarkerKind};
use floe_protocol::kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use floe_protocol::kafka_protocol::messages::{
    ApiKey, ProducerId, TopicName, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use floe_protocol::rules::{partition_for, OFFSETS_TOPIC, TXN_TOPIC};
use floe_protocol::ResponseError;
use tokio::sync::watch;

use super::log::{record, tombstone};
use super::metadata::{check_timeout, Then, TxnMetadata, TxnPartition, TxnState, MAX_EPOCH};
use crate::group::{append_records, read_records};
use crate::node::Node;
use crate::partition::{AppendError, PartitionHandle, PartitionState};

/// How long EndTxn and InitProducerId wait for a transaction's markers
/// before answering anyway (EndTxn: the outcome is decided and logged; the
/// markers follow) or asking the client to retry (InitProducerId).
const COMPLETION_WAIT: Duration = Duration::from_secs(10);

/// How long a marker request to another broker may take.
const MARKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The transactional ids of one `__transaction_state` partition while
/// this broker writes it (at one epoch).
struct Shard {
    handle: PartitionHandle,
    state: tokio::sync::Mutex<Option<ShardState>>,
    /// Ids whose markers are being written: done (`true`) once the end is
    /// logged complete; dropped unsent when the shard moved away.
    completing: Mutex<HashMap<String, watch::Sender<bool>>>,
}

#[derive(Default)]
struct ShardState {
    ids: HashMap<String, TxnMetadata>,
}

/// What a listing of transactions shows of one id.
#[derive(Clone, Debug)]
pub struct TxnListing {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: TxnState,
}

/// Every transaction this broker coordinates, and its connections to the
/// other brokers for markers and verification.
pub struct Coordinator {
    shards: Mutex<HashMap<i32, Arc<Shard>>>,
    pub(crate) client: InternalClient,
}

fn now_ms() -> i64 {
    floe_common::wall_ms()
}

async fn log(
    handle: &PartitionHandle,
    records: &[(Bytes, Option<Bytes>)],
) -> Result<(), ResponseError> {
    append_records(handle, records).await.map(|_| ())
}

/// Wait until `rx` says done, up to `wait`; whether it did.
async fn finished(mut rx: watch::Receiver<bool>, wait: Duration) -> bool {
    matches!(
        tokio::time::timeout(wait, rx.wait_for(|d| *d)).await,
        Ok(Ok(_))
    )
}

impl Coordinator {
    pub fn new(tls: Option<Arc<floe_kafka::tls::InternalTls>>) -> Self {
        Self {
            shards: Mutex::new(HashMap::new()),
            client: InternalClient::new(tls, "floe-broker"),
        }
    }

    /// The shard of `id`, loaded if needed: NOT_COORDINATOR if another
    /// broker writes the id's partition.
    async fn shard(&self, node: &Arc<Node>, id: &str) -> Result<Arc<Shard>, ResponseError> {
        if id.is_empty() {
            return Err(ResponseError::InvalidRequest);
        }
        let topic = node
            .topic(TXN_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        self.shard_at(node, partition_for(id, topic.partitions))
            .await
    }

    /// Load, as soon as this broker writes it, every transaction state
    /// partition: its unfinished ends are resumed and its open
    /// transactions' timeouts kept even if no client asks for its ids
    /// (an abandoned transaction would hold its partitions' LSO forever).
    pub async fn run(node: std::sync::Weak<Node>) {
        loop {
            let Some(n) = node.upgrade() else { return };
            let every = Duration::from_millis(n.config.transaction_timeout_check_ms.max(10));
            if let Some(topic) = n.topic(TXN_TOPIC) {
                for p in 0..topic.partitions {
                    let writing = n
                        .partition(PartitionId::new(topic.id, p))
                        .is_some_and(|h| h.state() == PartitionState::Writing);
                    if writing {
                        if let Err(e) = n.txn.shard_at(&n, p).await {
                            tracing::debug!(partition = p, error = ?e, "loading transaction state");
                        }
                    }
                }
            }
            drop(n);
            tokio::time::sleep(every).await;
        }
    }

    /// The shard of transaction state partition `p`, loaded if needed.
    async fn shard_at(&self, node: &Arc<Node>, p: i32) -> Result<Arc<Shard>, ResponseError> {
        let topic = node
            .topic(TXN_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let handle = node
            .partition(PartitionId::new(topic.id, p))
            .ok_or(ResponseError::NotCoordinator)?;
        // A broker whose lease lapsed keeps its partitions until told to
        // release them; it must not answer from memory meanwhile (a
        // verification it says yes to may be for a transaction the next
        // coordinator already aborted).
        if handle.state() != PartitionState::Writing || !node.ctx().lease.is_valid() {
            return Err(ResponseError::NotCoordinator);
        }
        let shard = {
            let mut shards = self.shards.lock().unwrap();
            match shards.get(&p) {
                Some(s) if s.handle.epoch == handle.epoch && s.handle.id == handle.id => s.clone(),
                _ => {
                    let s = Arc::new(Shard {
                        handle,
                        state: tokio::sync::Mutex::new(None),
                        completing: Mutex::new(HashMap::new()),
                    });
                    shards.insert(p, s.clone());
                    tokio::spawn(tick(Arc::downgrade(node), Arc::downgrade(&s)));
                    s
                }
            }
        };
        let mut st = shard.state.lock().await;
        if st.is_none() {
            let started = tokio::time::Instant::now();
            let mut loaded = ShardState::default();
            let mut all = Vec::new();
            read_records(&shard.handle, |k, v| {
                if let Some(k) = k {
                    all.push((k, v));
                }
            })
            .await?;
            loaded.ids = super::log::replay(all.iter().map(|(k, v)| (&k[..], v.as_deref())));
            tracing::info!(partition = %shard.handle.id, epoch = shard.handle.epoch,
                ids = loaded.ids.len(), took_ms = started.elapsed().as_millis() as u64,
                "loaded transaction state");
            // Ends decided by the previous coordinator: finish them.
            for m in loaded.ids.values() {
                if matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
                    start_completion(node, &shard, m.clone());
                }
            }
            *st = Some(loaded);
        }
        drop(st);
        Ok(shard)
    }

    /// InitProducerId with a transactional id: the id's producer id and a
    /// new epoch, fencing every earlier producer of the id; a transaction
    /// it left open is aborted first.
    pub async fn init_producer_id(
        &self,
        node: &Arc<Node>,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        check_timeout(timeout_ms, node.config.transaction_max_timeout_ms)?;
        let shard = self.shard(node, id).await?;
        for _ in 0..2 {
            let rx = {
                let mut guard = shard.state.lock().await;
                let st = guard
                    .as_mut()
                    .ok_or(ResponseError::CoordinatorLoadInProgress)?;
                let now = now_ms();
                let Some(cur) = st.ids.get(id) else {
                    if expected.is_some() {
                        return Err(ResponseError::InvalidProducerIdMapping);
                    }
                    let pid = fresh_id(node).await?;
                    let m = TxnMetadata::new(id, pid, timeout_ms, now);
                    log(&shard.handle, &[record(&m)]).await?;
                    st.ids.insert(id.to_string(), m);
                    tracing::info!(
                        transactional_id = id,
                        producer_id = pid,
                        "new transactional id"
                    );
                    return Ok((pid, 0));
                };
                let fresh = if cur.producer_epoch >= MAX_EPOCH {
                    Some(fresh_id(node).await?)
                } else {
                    None
                };
                let mut m = cur.clone();
                let then = m.init_producer_id(timeout_ms, expected, now, || {
                    fresh.unwrap_or(cur.producer_id)
                })?;
                match then {
                    Then::Answer => {
                        log(&shard.handle, &[record(&m)]).await?;
                        let out = (m.producer_id, m.producer_epoch);
                        st.ids.insert(id.to_string(), m);
                        return Ok(out);
                    }
                    Then::Retry => completion(&shard, id),
                    Then::WriteMarkers => {
                        log(&shard.handle, &[record(&m)]).await?;
                        tracing::info!(
                            transactional_id = id,
                            producer_id = m.producer_id,
                            epoch = m.producer_epoch,
                            "a new producer fenced the old; aborting its open transaction"
                        );
                        st.ids.insert(id.to_string(), m.clone());
                        Some(start_completion(node, &shard, m))
                    }
                }
            };
            let done = match rx {
                Some(rx) => finished(rx, COMPLETION_WAIT).await,
                None => false,
            };
            if !done {
                break;
            }
        }
        Err(ResponseError::ConcurrentTransactions)
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn's offsets partition).
    pub async fn add_partitions(
        &self,
        node: &Arc<Node>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[TxnPartition],
    ) -> Result<(), ResponseError> {
        let shard = self.shard(node, id).await?;
        let mut guard = shard.state.lock().await;
        let st = guard
            .as_mut()
            .ok_or(ResponseError::CoordinatorLoadInProgress)?;
        let cur = st
            .ids
            .get(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        if partitions.is_empty() {
            return Ok(());
        }
        // Already in the transaction (a retry): nothing to log.
        let known = cur.state == TxnState::Ongoing
            && partitions.iter().all(|p| cur.partitions.contains(p))
            && cur.verify(producer_id, epoch, &partitions[0]).is_ok();
        if known {
            return Ok(());
        }
        let mut m = cur.clone();
        m.add_partitions(producer_id, epoch, partitions, now_ms())?;
        log(&shard.handle, &[record(&m)]).await?;
        st.ids.insert(id.to_string(), m);
        Ok(())
    }

    /// Whether `partition` was added to the open transaction of this
    /// producer at this epoch (KIP-890 verification).
    pub async fn verify(
        &self,
        node: &Arc<Node>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partition: &TxnPartition,
    ) -> Result<(), ResponseError> {
        let shard = self.shard(node, id).await?;
        let guard = shard.state.lock().await;
        let st = guard
            .as_ref()
            .ok_or(ResponseError::CoordinatorLoadInProgress)?;
        st.ids
            .get(id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?
            .verify(producer_id, epoch, partition)
    }

    /// EndTxn: the outcome is logged, the markers written, the end logged
    /// complete; answered once complete (or, if the markers take longer
    /// than `COMPLETION_WAIT`, once the outcome is logged: they follow).
    /// The producer id and epoch the client carries on with.
    pub async fn end(
        &self,
        node: &Arc<Node>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        bump: bool,
    ) -> Result<(i64, i16), ResponseError> {
        let shard = self.shard(node, id).await?;
        let (rx, decided, out) = {
            let mut guard = shard.state.lock().await;
            let st = guard
                .as_mut()
                .ok_or(ResponseError::CoordinatorLoadInProgress)?;
            let cur = st
                .ids
                .get(id)
                .ok_or(ResponseError::InvalidProducerIdMapping)?;
            let mut m = cur.clone();
            let then = m.end(producer_id, epoch, commit, bump, now_ms())?;
            let out = (m.producer_id, m.producer_epoch);
            match then {
                Then::Answer => return Ok(out),
                Then::Retry => (completion(&shard, id), false, out),
                Then::WriteMarkers => {
                    log(&shard.handle, &[record(&m)]).await?;
                    st.ids.insert(id.to_string(), m.clone());
                    (Some(start_completion(node, &shard, m)), true, out)
                }
            }
        };
        let done = match rx {
            Some(rx) => finished(rx, COMPLETION_WAIT).await,
            None => false,
        };
        if done || decided {
            Ok(out)
        } else {
            Err(ResponseError::ConcurrentTransactions)
        }
    }

    /// DescribeTransactions of one id.
    pub async fn describe(&self, node: &Arc<Node>, id: &str) -> Result<TxnMetadata, ResponseError> {
        let shard = self.shard(node, id).await?;
        let guard = shard.state.lock().await;
        let st = guard
            .as_ref()
            .ok_or(ResponseError::CoordinatorLoadInProgress)?;
        st.ids
            .get(id)
            .cloned()
            .ok_or(ResponseError::TransactionalIdNotFound)
    }

    /// Every id this broker coordinates now (ListTransactions), loading
    /// the shards of the transaction partitions it writes.
    pub async fn list(&self, node: &Arc<Node>) -> Vec<TxnMetadata> {
        let Some(topic) = node.topic(TXN_TOPIC) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in 0..topic.partitions {
            let Some(h) = node.partition(PartitionId::new(topic.id, p)) else {
                continue;
            };
            if h.state() != PartitionState::Writing {
                continue;
            }
            let Ok(shard) = self.shard_at(node, p).await else {
                continue;
            };
            let guard = shard.state.lock().await;
            if let Some(st) = guard.as_ref() {
                out.extend(st.ids.values().cloned());
            }
        }
        out
    }
}

async fn fresh_id(node: &Node) -> Result<i64, ResponseError> {
    node.next_producer_id().await.map_err(|e| {
        tracing::warn!(error = %e, "allocating a producer id failed");
        ResponseError::CoordinatorNotAvailable
    })
}

/// The completion of `id` in progress, if any.
fn completion(shard: &Shard, id: &str) -> Option<watch::Receiver<bool>> {
    shard
        .completing
        .lock()
        .unwrap()
        .get(id)
        .map(|tx| tx.subscribe())
}

/// Write the markers of `m` (just logged PrepareCommit/PrepareAbort) and
/// then log it complete, in the background; one task per id.
fn start_completion(node: &Arc<Node>, shard: &Arc<Shard>, m: TxnMetadata) -> watch::Receiver<bool> {
    let mut c = shard.completing.lock().unwrap();
    if let Some(tx) = c.get(&m.transactional_id) {
        return tx.subscribe();
    }
    let (tx, rx) = watch::channel(false);
    c.insert(m.transactional_id.clone(), tx);
    tokio::spawn(complete(node.clone(), shard.clone(), m));
    rx
}

async fn complete(node: Arc<Node>, shard: Arc<Shard>, m: TxnMetadata) {
    let id = m.transactional_id.clone();
    let commit = m.state == TxnState::PrepareCommit;
    let marker = Marker {
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch,
        kind: if commit {
            MarkerKind::Commit
        } else {
            MarkerKind::Abort
        },
        coordinator_epoch: shard.handle.epoch,
    };
    let started = tokio::time::Instant::now();
    let mut left: Vec<TxnPartition> = m.partitions.iter().cloned().collect();
    let mut backoff = Duration::from_millis(20);
    let finish = |done: bool| {
        let tx = shard.completing.lock().unwrap().remove(&id);
        if let Some(tx) = tx {
            if done {
                let _ = tx.send(true);
            }
        }
    };
    while !left.is_empty() {
        if shard.handle.state() != PartitionState::Writing {
            // Moved: the next coordinator finishes it from the log.
            finish(false);
            return;
        }
        left = deliver(&node, &marker, left).await;
        if !left.is_empty() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
    loop {
        let mut guard = shard.state.lock().await;
        let Some(st) = guard.as_mut() else { break };
        let Some(cur) = st.ids.get(&id) else { break };
        if cur.producer_id != m.producer_id
            || cur.producer_epoch != m.producer_epoch
            || cur.state != m.state
        {
            break;
        }
        let mut done = cur.clone();
        done.complete(now_ms());
        match log(&shard.handle, &[record(&done)]).await {
            Ok(()) => {
                st.ids.insert(id.clone(), done);
                node.metrics.txn_completed(commit, started.elapsed());
                break;
            }
            Err(e) => {
                drop(guard);
                if shard.handle.state() != PartitionState::Writing {
                    finish(false);
                    return;
                }
                tracing::warn!(transactional_id = %id, error = ?e, "logging a transaction complete failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    finish(true);
}

/// Write `marker` to `partitions` through their owners; those not written
/// yet (owner unknown, moving, unreachable) are returned for a retry.
async fn deliver(
    node: &Arc<Node>,
    marker: &Marker,
    partitions: Vec<TxnPartition>,
) -> Vec<TxnPartition> {
    let mut left = Vec::new();
    let mut local = Vec::new();
    let mut remote: HashMap<i32, Vec<TxnPartition>> = HashMap::new();
    for (t, p) in partitions {
        // A deleted topic or partition needs no marker.
        let Some(topic) = node.topic(&t) else {
            continue;
        };
        if p < 0 || p >= topic.partitions {
            continue;
        }
        match node.leader_of(PartitionId::new(topic.id, p)) {
            Some((b, _)) if b == node.config.node_id => local.push((t, p)),
            Some((b, _)) => remote.entry(b).or_default().push((t, p)),
            None => left.push((t, p)),
        }
    }
    let locals = futures::future::join_all(local.into_iter().map(|(t, p)| async move {
        let r = write_marker(node, marker, &t, p).await;
        (t, p, r)
    }));
    let remotes = futures::future::join_all(
        remote
            .into_iter()
            .map(|(b, parts)| async move { (send_markers(node, b, marker, &parts).await, parts) }),
    );
    let (locals, remotes) = tokio::join!(locals, remotes);
    for (t, p, r) in locals {
        if let Err(e) = r {
            tracing::debug!(topic = %t, partition = p, error = ?e, "marker not written yet");
            left.push((t, p));
        }
    }
    for (r, parts) in remotes {
        match r {
            Ok(failed) => left.extend(failed),
            Err(e) => {
                tracing::debug!(error = %e, "markers not sent yet");
                left.extend(parts);
            }
        }
    }
    left
}

/// WriteTxnMarkers to broker `b` for `parts`; the partitions it did not
/// write.
async fn send_markers(
    node: &Arc<Node>,
    b: i32,
    marker: &Marker,
    parts: &[TxnPartition],
) -> Result<Vec<TxnPartition>, String> {
    let broker = node
        .broker(b)
        .ok_or_else(|| format!("broker {b} is not registered"))?;
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (t, p) in parts {
        by_topic.entry(t).or_default().push(*p);
    }
    let req = WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(marker.producer_id))
        .with_producer_epoch(marker.producer_epoch)
        .with_transaction_result(marker.kind == MarkerKind::Commit)
        .with_coordinator_epoch(marker.coordinator_epoch)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(t.to_string().into()))
                        .with_partition_indexes(ps)
                })
                .collect(),
        )]);
    let resp: WriteTxnMarkersResponse = node
        .txn
        .client
        .call(
            (&broker.host, broker.port),
            ApiKey::WriteTxnMarkers,
            1,
            &req,
            MARKER_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = Vec::new();
    let mut answered = std::collections::HashSet::new();
    for m in resp.markers {
        for t in m.topics {
            for p in t.partitions {
                answered.insert((t.name.0.to_string(), p.partition_index));
                if p.error_code != 0 {
                    failed.push((t.name.0.to_string(), p.partition_index));
                }
            }
        }
    }
    failed.extend(parts.iter().filter(|x| !answered.contains(*x)).cloned());
    Ok(failed)
}

/// Write `marker` to partition `p` of `topic` if this broker owns it: a
/// data partition's control batch, or, for the offsets partition, the
/// transaction's pending offsets committed or dropped. A marker the
/// partition refuses as stale (a newer epoch of the producer wrote there
/// since) is done: the transaction it would end is over.
pub(crate) async fn write_marker(
    node: &Arc<Node>,
    marker: &Marker,
    topic: &str,
    p: i32,
) -> Result<(), ResponseError> {
    let commit = marker.kind == MarkerKind::Commit;
    if topic == OFFSETS_TOPIC {
        return node
            .groups
            .complete_txn(
                &**node,
                p,
                marker.producer_id,
                commit,
                marker.coordinator_epoch,
            )
            .await
            .map_err(|e| match e {
                ResponseError::NotCoordinator => ResponseError::NotLeaderOrFollower,
                e => e,
            });
    }
    let t = node
        .topic(topic)
        .ok_or(ResponseError::UnknownTopicOrPartition)?;
    if p < 0 || p >= t.partitions {
        return Err(ResponseError::UnknownTopicOrPartition);
    }
    let h = node
        .partition(PartitionId::new(t.id, p))
        .ok_or(ResponseError::NotLeaderOrFollower)?;
    let rx = h.write_marker(*marker).await.map_err(|e| e.code())?;
    match rx.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(AppendError::Producer(ResponseError::InvalidProducerEpoch))) => {
            tracing::info!(partition = %h.id, producer_id = marker.producer_id,
                epoch = marker.producer_epoch, "a stale marker was not written");
            Ok(())
        }
        Ok(Err(e)) => Err(e.code()),
        Err(_) => Err(ResponseError::NotLeaderOrFollower),
    }
}

/// The shard's timer: transactions past their timeout are aborted (their
/// producer fenced by an epoch bump), ids idle past
/// `transactional.id.expiration.ms` forgotten (their tombstones let the
/// compactor drop them); until
/// the shard is dropped or its partition stops being written here.
async fn tick(node: Weak<Node>, shard: Weak<Shard>) {
    let every = match node.upgrade() {
        Some(n) => Duration::from_millis(n.config.transaction_timeout_check_ms.max(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let (Some(node), Some(shard)) = (node.upgrade(), shard.upgrade()) else {
            return;
        };
        if shard.handle.state() != PartitionState::Writing {
            return;
        }
        let mut guard = shard.state.lock().await;
        let Some(st) = guard.as_mut() else { continue };
        let now = now_ms();
        let expiration = node.config.transactional_id_expiration_ms;
        let mut aborts = Vec::new();
        let mut gone = Vec::new();
        for m in st.ids.values() {
            if m.state == TxnState::Ongoing && now - m.started_ms > m.timeout_ms as i64 {
                aborts.push(m.clone());
            } else if matches!(
                m.state,
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
            ) && now - m.updated_ms > expiration
            {
                gone.push(m.transactional_id.clone());
            }
        }
        for mut m in aborts {
            if m.expire(now).is_none() {
                continue;
            }
            if log(&shard.handle, &[record(&m)]).await.is_err() {
                break;
            }
            tracing::info!(transactional_id = %m.transactional_id, producer_id = m.producer_id,
                timeout_ms = m.timeout_ms, "a transaction timed out; aborting it");
            node.metrics.txn_timed_out.inc();
            st.ids.insert(m.transactional_id.clone(), m.clone());
            start_completion(&node, &shard, m);
        }
        if !gone.is_empty() {
            let records: Vec<_> = gone.iter().map(|id| tombstone(id)).collect();
            if log(&shard.handle, &records).await.is_ok() {
                for id in &gone {
                    tracing::info!(transactional_id = %id, "forgot an idle transactional id");
                    st.ids.remove(id);
                }
            }
        }
    }
}
