//! Kafka API handlers: each turns a decoded request into a response, mapping
//! every failure to Kafka's per-partition or per-topic error code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floe_common::{PartitionId, Uuid};
use floe_protocol::batch::validate_for_produce;
use floe_protocol::kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use floe_protocol::kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use floe_protocol::kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use floe_protocol::kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use floe_protocol::kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use floe_protocol::kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use floe_protocol::kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, TopicProduceResponse,
};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::StrBytes;
use floe_protocol::ResponseError;
use floe_storage::log::ReadError;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::config::TOPIC_CONFIGS;
use crate::node::{Node, TopicInfo};
use crate::partition::{AppendError, Appended, PartitionHandle};
use floe_kafka::errors::topic_error;
use floe_meta::topics::TopicError;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub use floe_kafka::read::{epoch_end, legacy_fetch, list_offset};

pub async fn produce(
    node: Arc<Node>,
    req: ProduceRequest,
    version: i16,
    peer: &floe_kafka::listener::Peer,
) -> BoxFuture<'static, Option<ProduceResponse>> {
    type Pending = (
        String,
        i32,
        Result<tokio::sync::oneshot::Receiver<Result<Appended, AppendError>>, ResponseError>,
        Option<String>,
        Vec<(i32, String)>,
    );
    let acks = req.acks;
    let txn_id = req.transactional_id.as_ref().map(|t| t.0.to_string());
    let timeout = Duration::from_millis(req.timeout_ms.max(0) as u64);
    let mut pending: Vec<Pending> = Vec::new();
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let info = if !matches!(acks, -1..=1) {
            Err(ResponseError::InvalidRequiredAcks)
        } else {
            crate::cluster::topic_or_create(&node, &name, peer).await
        };
        for p in topic.partition_data {
            let r = match &info {
                Err(e) => Err(Refused::from(*e)),
                Ok(t) => submit(&node, t, p.index, p.records, version, txn_id.as_deref()).await,
            };
            let (r, msg, record_errors) = match r {
                Ok(rx) => (Ok(rx), None, Vec::new()),
                Err(x) => (Err(x.code), x.message, x.records),
            };
            pending.push((name.clone(), p.index, r, msg, record_errors));
        }
    }
    async move {
        let mut resp = ProduceResponse::default();
        let deadline = tokio::time::Instant::now() + timeout;
        for (name, index, r, msg, record_errors) in pending {
            let mut pr = PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(-1);
            let outcome = match r {
                Err(e) => Err(e),
                Ok(rx) => match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => Err(ResponseError::RequestTimedOut),
                    Ok(Err(_)) => Err(ResponseError::NotLeaderOrFollower),
                    // The producer's previous transaction is still ending
                    // here: a retriable answer Produce clients know.
                    Ok(Ok(Err(AppendError::Producer(ResponseError::ConcurrentTransactions)))) => {
                        Err(ResponseError::NotEnoughReplicas)
                    }
                    Ok(Ok(Err(e))) => Err(e.code()),
                    Ok(Ok(Ok(a))) => Ok(a),
                },
            };
            match outcome {
                Ok(a) => {
                    pr.base_offset = a.base_offset;
                    pr.log_append_time_ms = a.log_append_time;
                    if version >= 5 {
                        pr.log_start_offset = a.log_start_offset;
                    }
                }
                Err(e) => {
                    pr.error_code = e.code();
                    if version >= 8 {
                        pr.error_message = msg.map(s);
                        pr.record_errors = record_errors
                            .into_iter()
                            .map(|(i, m)| {
                                produce_response::BatchIndexAndErrorMessage::default()
                                    .with_batch_index(i)
                                    .with_batch_index_error_message(Some(s(m)))
                            })
                            .collect();
                    }
                }
            }
            match resp
                .responses
                .iter_mut()
                .find(|t| t.name.0.as_str() == name)
            {
                Some(t) => t.partition_responses.push(pr),
                None => resp.responses.push(
                    TopicProduceResponse::default()
                        .with_name(TopicName(s(name)))
                        .with_partition_responses(vec![pr]),
                ),
            }
        }
        (acks != 0).then_some(resp)
    }
    .boxed()
}

/// Why a partition's records were not queued: Kafka's code, a message
/// (Produce v8+), and the records at fault by index (KIP-467).
struct Refused {
    code: ResponseError,
    message: Option<String>,
    records: Vec<(i32, String)>,
}

impl From<ResponseError> for Refused {
    fn from(code: ResponseError) -> Self {
        Refused {
            code,
            message: None,
            records: Vec::new(),
        }
    }
}

impl From<(ResponseError, Option<String>)> for Refused {
    fn from((code, message): (ResponseError, Option<String>)) -> Self {
        Refused {
            code,
            message,
            records: Vec::new(),
        }
    }
}

type SubmitResult = Result<tokio::sync::oneshot::Receiver<Result<Appended, AppendError>>, Refused>;

/// KIP-467 on a compacted topic: every record needs a key (control
/// batches aside). The records without one, by index in the record set.
fn keyless_records(records: &Bytes, topic: &str, index: i32) -> Vec<(i32, String)> {
    floe_protocol::batch::keyless_records(records)
        .into_iter()
        .map(|i| {
            (
                i,
                format!("Compacted topic cannot accept message without key in topic partition {topic}-{index}."),
            )
        })
        .collect()
}

async fn submit(
    node: &Arc<Node>,
    t: &TopicInfo,
    index: i32,
    records: Option<Bytes>,
    version: i16,
    txn_id: Option<&str>,
) -> SubmitResult {
    if index < 0 || index >= t.partitions {
        return Err(ResponseError::UnknownTopicOrPartition.into());
    }
    let Some(h) = node.partition(PartitionId::new(t.id, index)) else {
        return Err(ResponseError::NotLeaderOrFollower.into());
    };
    let mut records = records.unwrap_or_default();
    if version < 3 {
        // Produce v0–2 carries a message set of format v0 or v1.
        records = floe_protocol::legacy::upconvert(
            &records,
            floe_common::Clock::now_ms(&floe_common::SystemClock),
        )
        .map_err(|e| {
            node.metrics.error("Produce", &format!("{:?}", e.code()));
            (e.code(), Some(e.to_string()))
        })?;
    }
    let headers = validate_for_produce(&records, t.config.max_message_bytes).map_err(|e| {
        node.metrics.error("Produce", &format!("{:?}", e.code()));
        (e.code(), Some(e.to_string()))
    })?;
    if t.config.compact {
        let keyless = keyless_records(&records, &t.name, index);
        if !keyless.is_empty() {
            node.metrics.error("Produce", "InvalidRecord");
            return Err(Refused {
                code: ResponseError::InvalidRecord,
                message: Some("One or more records have been rejected".into()),
                records: keyless,
            });
        }
    }
    let Some(txn) = headers.iter().find(|h| h.is_transactional()).copied() else {
        return h
            .submit(records, headers)
            .await
            .map_err(|e| (e.code(), Some(e.to_string())).into());
    };
    // A transaction's batch: verified with its coordinator before the
    // producer's first batch of the transaction here (KIP-890), under a
    // guard its end marker clears.
    let Some(id) = txn_id.filter(|id| !id.is_empty()) else {
        return Err((
            ResponseError::InvalidTxnState,
            Some("a transactional batch without a transactional id".into()),
        )
            .into());
    };
    let (token, verified) = h.gate.guard(txn.producer_id, txn.producer_epoch);
    if !verified {
        let part = (t.name.clone(), index);
        if let Err(e) =
            crate::txn::api::verify(node, id, txn.producer_id, txn.producer_epoch, &part).await
        {
            h.gate.forget(txn.producer_id, token);
            let msg = format!(
                "transactional id {id:?}: partition {}-{index} is not in the producer's open transaction at epoch {}",
                t.name, txn.producer_epoch
            );
            // Produce's codes for these (KIP-588: a fenced producer's
            // batch is INVALID_PRODUCER_EPOCH, which clients abort on).
            let e = match e {
                ResponseError::ProducerFenced => ResponseError::InvalidProducerEpoch,
                e => e,
            };
            return Err((e, Some(msg)).into());
        }
        h.gate.verified(txn.producer_id, token);
    }
    let rx = h
        .submit_verified(records, headers, token)
        .await
        .map_err(|e| Refused::from((e.code(), Some(e.to_string()))))?;
    Ok(rx)
}

fn check_epoch(h: &PartitionHandle, requested: i32) -> Option<ResponseError> {
    if requested < 0 || requested == h.epoch {
        None
    } else if requested > h.epoch {
        Some(ResponseError::UnknownLeaderEpoch)
    } else {
        Some(ResponseError::FencedLeaderEpoch)
    }
}

/// A partition this broker writes, as a Fetch reads it: its log, and the
/// metrics its reads count in.
pub(crate) struct Owned {
    topic: String,
    log: Arc<floe_storage::log::PartitionLog>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl floe_kafka::read::Readable for Owned {
    fn log(&self) -> &floe_storage::log::PartitionLog {
        &self.log
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn past_end_is_out_of_range(&self, _waited_out: bool) -> bool {
        true
    }

    fn read(
        &self,
        offset: i64,
        upper: i64,
        budget: usize,
        min_one: bool,
    ) -> futures::future::BoxFuture<'_, Result<Bytes, ReadError>> {
        async move {
            self.log
                .read_until(offset, upper, budget, min_one)
                .await
                .map(|r| r.records)
        }
        .boxed()
    }

    fn served(&self, bytes: u64) {
        self.metrics.bytes_out(bytes);
        self.metrics.load.add_out(self.log.id, bytes);
    }
}

pub async fn fetch(
    node: Arc<Node>,
    req: FetchRequest,
    version: i16,
    peer: &floe_kafka::listener::Peer,
) -> FetchResponse {
    floe_kafka::read::fetch(&req, version, peer, |topic, p| {
        let t = if version >= 13 {
            node.topic_by_id(topic.topic_id)
        } else {
            node.topic(topic.topic.0.as_str())
        };
        let h = match &t {
            None => Err(if version >= 13 {
                ResponseError::UnknownTopicId
            } else {
                ResponseError::UnknownTopicOrPartition
            }),
            Some(t) if p.partition < 0 || p.partition >= t.partitions => {
                Err(ResponseError::UnknownTopicOrPartition)
            }
            Some(t) => node
                .partition(PartitionId::new(t.id, p.partition))
                .ok_or(ResponseError::NotLeaderOrFollower),
        }?;
        if let Some(e) = check_epoch(&h, p.current_leader_epoch) {
            return Err(e);
        }
        Ok(Owned {
            topic: t.as_ref().map(|t| t.name.clone()).unwrap_or_default(),
            log: h.log.clone(),
            metrics: node.metrics.clone(),
        })
    })
    .await
}

pub async fn list_offsets(
    node: &Node,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    for topic in req.topics {
        let t = node.topic(topic.name.0.as_str());
        let mut tr = ListOffsetsTopicResponse::default().with_name(topic.name.clone());
        for p in topic.partitions {
            let mut pr = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            let h = match &t {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(t) if p.partition_index < 0 || p.partition_index >= t.partitions => {
                    Err(ResponseError::UnknownTopicOrPartition)
                }
                Some(t) => node
                    .partition(PartitionId::new(t.id, p.partition_index))
                    .ok_or(ResponseError::NotLeaderOrFollower),
            }
            .and_then(|h| {
                if version >= 4 {
                    check_epoch(&h, p.current_leader_epoch).map_or(Ok(h), Err)
                } else {
                    Ok(h)
                }
            });
            match h {
                Err(e) => pr.error_code = e.code(),
                Ok(h) => {
                    if version >= 4 {
                        pr.leader_epoch = h.log.offsets().2;
                    }
                    list_offset(&h.log, p.timestamp, req.isolation_level, &mut pr).await;
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}

pub async fn offset_for_leader_epoch(
    node: &Node,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut resp = OffsetForLeaderEpochResponse::default();
    for topic in req.topics {
        let t = node.topic(topic.topic.0.as_str());
        let mut tr = OffsetForLeaderTopicResult::default().with_topic(topic.topic.clone());
        for p in topic.partitions {
            let mut pr = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let h = match &t {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(t) => node
                    .partition(PartitionId::new(t.id, p.partition))
                    .ok_or(ResponseError::NotLeaderOrFollower),
            }
            .and_then(|h| check_epoch(&h, p.current_leader_epoch).map_or(Ok(h), Err));
            match h {
                Err(e) => pr.error_code = e.code(),
                Ok(h) => {
                    if let Some((epoch, end)) = epoch_end(&h.log.snapshot(), p.leader_epoch) {
                        pr.leader_epoch = epoch;
                        pr.end_offset = end;
                    }
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}

pub async fn create_topics(
    node: &Node,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 60_000) as u64);
    let mut created = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default().with_name(t.name.clone());
        let partitions = if t.num_partitions == -1 {
            node.config.default_partitions
        } else {
            t.num_partitions
        };
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let result = if t.replication_factor == 0 || t.replication_factor < -1 {
            Err((
                ResponseError::InvalidReplicationFactor,
                format!("replication factor {} is invalid", t.replication_factor),
            ))
        } else if !t.assignments.is_empty() {
            Err((
                ResponseError::InvalidRequest,
                "manual replica assignment is not supported: storage placement is automatic"
                    .to_string(),
            ))
        } else {
            node.create_topic(&name, partitions, configs, req.validate_only)
                .await
                .map_err(|e| (topic_error(&e), e.to_string()))
        };
        match result {
            Ok(info) => {
                if version >= 7 {
                    r.topic_id = info.id;
                }
                if version >= 5 {
                    r.num_partitions = info.partitions;
                    r.replication_factor = 1;
                    r.configs = Some(
                        describe_topic(node, &info, None)
                            .into_iter()
                            .map(|c| {
                                CreatableTopicConfigs::default()
                                    .with_name(c.name)
                                    .with_value(c.value)
                                    .with_read_only(false)
                                    .with_config_source(c.config_source)
                            })
                            .collect(),
                    );
                }
                if !req.validate_only {
                    created.push(name);
                }
            }
            Err((e, msg)) => {
                r.error_code = e.code();
                if version >= 1 {
                    r.error_message = Some(s(msg));
                }
            }
        }
        resp.topics.push(r);
    }
    for name in created {
        node.wait_topic_ready(&name, timeout).await;
    }
    resp
}

pub async fn delete_topics(
    node: &Node,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut resp = DeleteTopicsResponse::default();
    let targets: Vec<(Option<String>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), Uuid::nil()))
            .collect()
    };
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default();
        let name = name.or_else(|| node.topic_by_id(id).map(|t| t.name));
        match &name {
            None => r.error_code = ResponseError::UnknownTopicId.code(),
            Some(n) => match node.delete_topic(n).await {
                Ok(tid) => {
                    if version >= 6 {
                        r.topic_id = tid;
                    }
                }
                Err(e) => {
                    r.error_code = topic_error(&e).code();
                    if version >= 5 {
                        r.error_message = Some(s(e.to_string()));
                    }
                }
            },
        }
        if version >= 6 && r.topic_id.is_nil() {
            r.topic_id = id;
        }
        r.name = name.map(|n| TopicName(s(n)));
        resp.responses.push(r);
    }
    resp
}

pub async fn create_partitions(
    node: &Node,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 60_000) as u64);
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let result = if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            Err((
                ResponseError::InvalidRequest,
                "manual replica assignment is not supported".to_string(),
            ))
        } else {
            node.create_partitions(&name, t.count, req.validate_only)
                .await
                .map_err(|e| (topic_error(&e), e.to_string()))
        };
        match result {
            Ok(()) => {
                if !req.validate_only {
                    node.wait_topic_ready(&name, timeout).await;
                }
            }
            Err((e, msg)) => {
                r.error_code = e.code();
                r.error_message = Some(s(msg));
            }
        }
        resp.results.push(r);
    }
    resp
}

/// The effective configs of a topic, as DescribeConfigs entries.
fn describe_topic(
    node: &Node,
    t: &TopicInfo,
    keys: Option<&[StrBytes]>,
) -> Vec<DescribeConfigsResourceResult> {
    let mut out = Vec::new();
    for &(name, kafka_default, doc) in TOPIC_CONFIGS {
        if keys.is_some_and(|k| !k.iter().any(|x| x.as_str() == name)) {
            continue;
        }
        let (value, source) = match t.overrides.get(name) {
            Some(v) => (v.clone(), 1i8),
            None => match node.config.topic_defaults.get(name) {
                Some(v) => (v.clone(), 4i8),
                None => (kafka_default.to_string(), 5i8),
            },
        };
        let config_type = match name {
            "message.timestamp.type" => 2,
            "cleanup.policy" => 7,
            "min.cleanable.dirty.ratio" => 6,
            "max.message.bytes" | "segment.bytes" => 3,
            _ => 5,
        };
        out.push(
            DescribeConfigsResourceResult::default()
                .with_name(s(name))
                .with_value(Some(s(value)))
                .with_config_source(source)
                .with_config_type(config_type)
                .with_documentation(Some(s(doc))),
        );
    }
    out
}

pub async fn describe_configs(
    node: &Node,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for r in req.resources {
        let mut result = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let keys = r.configuration_keys.as_deref();
        match r.resource_type {
            2 => match node.topic(r.resource_name.as_str()) {
                Some(t) => result.configs = describe_topic(node, &t, keys),
                None => {
                    result.error_code = ResponseError::UnknownTopicOrPartition.code();
                    result.error_message = Some(s(format!(
                        "topic {:?} does not exist",
                        r.resource_name.as_str()
                    )));
                }
            },
            4 => {
                if r.resource_name.as_str() != node.config.node_id.to_string()
                    && !r.resource_name.is_empty()
                {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message =
                        Some(s(format!("this is broker {}", node.config.node_id)));
                } else {
                    let c = &node.config;
                    let entries = [
                        ("node.id", c.node_id.to_string(), "This broker's id."),
                        ("broker.id", c.node_id.to_string(), "This broker's id."),
                        (
                            "auto.create.topics.enable",
                            c.auto_create_topics.to_string(),
                            "Create unknown topics on Metadata and Produce.",
                        ),
                        (
                            "num.partitions",
                            c.default_partitions.to_string(),
                            "Partitions of auto-created topics.",
                        ),
                        (
                            "socket.request.max.bytes",
                            c.max_request_bytes.to_string(),
                            "Largest request accepted.",
                        ),
                        (
                            "max.connections",
                            c.max_connections.to_string(),
                            "Connections accepted at once.",
                        ),
                    ];
                    for (name, value, doc) in entries {
                        if keys.is_some_and(|k| !k.iter().any(|x| x.as_str() == name)) {
                            continue;
                        }
                        result.configs.push(
                            DescribeConfigsResourceResult::default()
                                .with_name(s(name))
                                .with_value(Some(s(value)))
                                .with_read_only(true)
                                .with_config_source(4)
                                .with_documentation(Some(s(doc))),
                        );
                    }
                }
            }
            other => {
                result.error_code = ResponseError::InvalidRequest.code();
                result.error_message = Some(s(format!("resource type {other} is not supported")));
            }
        }
        if version < 3 {
            for c in &mut result.configs {
                c.config_type = 0;
                c.documentation = None;
            }
        }
        if !req.include_synonyms {
            for c in &mut result.configs {
                c.synonyms.clear();
            }
        }
        resp.results.push(result);
    }
    resp
}

/// InitProducerId: a new producer id (epoch 0), or, for a producer that
/// gives its id and epoch (KIP-360), the same id with the epoch bumped; a
/// transactional id's from its coordinator (`txn::api`).
pub async fn init_producer_id(
    node: &Arc<Node>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    if let Some(id) = req.transactional_id.as_ref().filter(|t| !t.is_empty()) {
        return crate::txn::api::init_producer_id(node, &id.0, &req, version).await;
    }
    let resp = InitProducerIdResponse::default()
        .with_producer_id((-1).into())
        .with_producer_epoch(-1);
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        tracing::info!(
            producer_id = req.producer_id.0,
            epoch = req.producer_epoch,
            "an idempotent producer bumps its epoch (KIP-360)"
        );
        return resp
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match node.next_producer_id().await {
        Ok(id) => resp.with_producer_id(id.into()).with_producer_epoch(0),
        Err(e) => {
            tracing::warn!(error = %e, "allocating a producer id failed");
            resp.with_error_code(ResponseError::CoordinatorNotAvailable.code())
        }
    }
}

/// DeleteRecords: move each partition's log start offset up.
pub async fn delete_records(node: &Node, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    use kafka_protocol::messages::delete_records_response::{
        DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
    };
    let mut resp = DeleteRecordsResponse::default();
    for t in req.topics {
        let mut rt = DeleteRecordsTopicResult::default().with_name(t.name.clone());
        let info = node.topic(&t.name.0);
        for p in t.partitions {
            let mut r = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let outcome = match &info {
                None => Err(ResponseError::UnknownTopicOrPartition),
                Some(t) if p.partition_index < 0 || p.partition_index >= t.partitions => {
                    Err(ResponseError::UnknownTopicOrPartition)
                }
                Some(t) => match node.partition(PartitionId::new(t.id, p.partition_index)) {
                    None => Err(ResponseError::NotLeaderOrFollower),
                    Some(h) => h.delete_records(p.offset).await,
                },
            };
            match outcome {
                Ok(low) => r.low_watermark = low,
                Err(e) => r.error_code = e.code(),
            }
            rt.partitions.push(r);
        }
        resp.topics.push(rt);
    }
    resp
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn known_topic_config(name: &str) -> Result<(), TopicError> {
    if crate::config::TOPIC_CONFIGS
        .iter()
        .any(|(n, _, _)| *n == name)
    {
        Ok(())
    } else {
        Err(TopicError::InvalidConfig(format!(
            "unknown or unsupported topic config {name:?}"
        )))
    }
}

/// (error code, message) for one resource of an Alter request.
async fn alter_resource(
    node: &Node,
    resource_type: i8,
    name: &str,
    edit: impl Fn(&mut BTreeMap<String, String>) -> Result<(), TopicError>,
    validate_only: bool,
) -> (i16, Option<StrBytes>) {
    let r = match resource_type {
        RESOURCE_TOPIC => node
            .alter_topic_configs(name, edit, validate_only)
            .await
            .map(|_| ())
            .map_err(|e| (topic_error(&e), e.to_string())),
        RESOURCE_BROKER => Err((
            ResponseError::InvalidRequest,
            "broker configs are static: set them in the broker's config file".to_string(),
        )),
        _ => Err((
            ResponseError::InvalidRequest,
            format!("resource type {resource_type} has no configs"),
        )),
    };
    match r {
        Ok(()) => (0, None),
        Err((e, m)) => (e.code(), Some(s(m))),
    }
}

/// IncrementalAlterConfigs: SET/DELETE of topic configs (APPEND and
/// SUBTRACT apply to list configs, which Floe's topic configs are not).
pub async fn incremental_alter_configs(
    node: &Node,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut resp = IncrementalAlterConfigsResponse::default();
    for r in req.resources {
        let ops: Vec<(String, i8, Option<String>)> = r
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let edit = move |m: &mut BTreeMap<String, String>| {
            for (name, op, value) in &ops {
                known_topic_config(name)?;
                match (op, value) {
                    (0, Some(v)) => {
                        m.insert(name.clone(), v.clone());
                    }
                    (0, None) => {
                        return Err(TopicError::InvalidConfig(format!(
                            "SET of {name} needs a value"
                        )))
                    }
                    (1, _) => {
                        m.remove(name);
                    }
                    (2 | 3, _) => {
                        return Err(TopicError::InvalidConfig(format!(
                            "{name} is not a list config: APPEND/SUBTRACT do not apply"
                        )))
                    }
                    (op, _) => {
                        return Err(TopicError::InvalidRequest(format!(
                            "unknown config operation {op}"
                        )))
                    }
                }
            }
            Ok(())
        };
        let (code, msg) = alter_resource(
            node,
            r.resource_type,
            &r.resource_name,
            edit,
            req.validate_only,
        )
        .await;
        resp.responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(msg)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    resp
}

/// AlterConfigs: the resource's overrides become exactly those given.
pub async fn alter_configs(node: &Node, req: AlterConfigsRequest) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut resp = AlterConfigsResponse::default();
    for r in req.resources {
        let set: Vec<(String, Option<String>)> = r
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let edit = move |m: &mut BTreeMap<String, String>| {
            let mut next = BTreeMap::new();
            for (name, value) in &set {
                known_topic_config(name)?;
                if let Some(v) = value {
                    next.insert(name.clone(), v.clone());
                }
            }
            *m = next;
            Ok(())
        };
        let (code, msg) = alter_resource(
            node,
            r.resource_type,
            &r.resource_name,
            edit,
            req.validate_only,
        )
        .await;
        resp.responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(msg)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    resp
}

/// DescribeProducers: the idempotent and transactional producers each
/// partition knows, with the start of each one's open transaction.
pub async fn describe_producers(
    node: &Node,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    use kafka_protocol::messages::describe_producers_response::{
        PartitionResponse, ProducerState, TopicResponse,
    };
    let mut resp = DescribeProducersResponse::default();
    for t in req.topics {
        let info = node.topic(&t.name.0);
        let mut rt = TopicResponse::default().with_name(t.name.clone());
        for p in t.partition_indexes {
            let mut pr = PartitionResponse::default().with_partition_index(p);
            let handle = match &info {
                Some(i) if p >= 0 && p < i.partitions => node
                    .partition(PartitionId::new(i.id, p))
                    .ok_or(ResponseError::NotLeaderOrFollower),
                _ => Err(ResponseError::UnknownTopicOrPartition),
            };
            match handle {
                Err(e) => pr.error_code = e.code(),
                Ok(h) => match h.describe_producers().await {
                    Err(e) => pr.error_code = e.code(),
                    Ok(list) => {
                        pr.active_producers = list
                            .into_iter()
                            .map(|p| {
                                ProducerState::default()
                                    .with_producer_id(p.producer_id.into())
                                    .with_producer_epoch(p.epoch as i32)
                                    .with_last_sequence(p.last_sequence)
                                    .with_last_timestamp(p.last_ms)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(p.txn_start_offset)
                            })
                            .collect()
                    }
                },
            }
            rt.partitions.push(pr);
        }
        resp.topics.push(rt);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_kafka::read_suite::{self, Rules, Subject};

    /// The broker's own partitions, with its metrics.
    struct Broker(Arc<crate::metrics::Metrics>);

    impl Subject for Broker {
        type R = Owned;
        fn rules(&self) -> Rules {
            Rules::Broker
        }
        fn readable(&self, log: Arc<floe_storage::log::PartitionLog>, _: bool, _: bool) -> Owned {
            Owned {
                topic: "t".into(),
                log,
                metrics: self.0.clone(),
            }
        }
    }

    #[tokio::test]
    async fn the_shared_read_cases_over_the_brokers_partitions() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        read_suite::run(&Broker(metrics.clone())).await;
        // Reads were counted as served.
        assert!(metrics.encode().contains("floe_bytes_out_total"));
        assert!(!metrics.encode().contains("floe_bytes_out_total 0\n"));
    }
}
