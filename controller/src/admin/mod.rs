//! The controller's admin API (proto/admin.proto, served over gRPC with a
//! bearer token, optionally over TLS or mutual TLS): cluster status, topics
//! and their partitions read from etcd at one revision, and partition moves
//! carried out by the leading controller (a standby forwards them); topic
//! admin (`topics`), rebalances and operations (`ops`), storage targets
//! (`storage`), consumer groups (`groups`), SASL users (`users`), ACLs
//! (`acls`); the
//! controller's own HTTP
//! endpoint and its state (`state`). The `floe` binary only starts it.

pub mod acls;
pub mod groups;
pub mod ops;
pub mod state;
pub mod storage;
pub mod topics;
pub mod users;

pub use state::{http, ControllerState, MoveFailure};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use floe_common::{Clock, PartitionId, Uuid};
use floe_meta::schema::{
    AssignmentRecord, BrokerRecord, CheckpointRecord, ClusterRecord, ControllerRecord, OwnerRecord,
    PartitionStateRecord, ProxyRecord, StoragePoolRecord, TopicRecord,
};
use floe_meta::{keys, KeyValue, MetadataStore};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use floe_rpc::admin as pb;

pub struct AdminService {
    state: Arc<ControllerState>,
}

impl AdminService {
    /// The service over a controller's state (what [`server`] serves; the
    /// admin fuzz target calls it directly).
    pub fn new(state: Arc<ControllerState>) -> Self {
        Self { state }
    }
}

/// A metadata store failure as the admin API answers it.
pub(crate) fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("metadata store: {e}"))
}

/// Everything under /floe/ at one revision.
async fn snapshot(meta: &dyn MetadataStore) -> Result<Vec<KeyValue>, Status> {
    Ok(meta
        .range(keys::ROOT.as_bytes())
        .await
        .map_err(unavailable)?
        .0)
}

fn decode<M: Message + Default>(kv: &KeyValue) -> Option<M> {
    M::decode(kv.value.clone()).ok()
}

/// The last path element of a partition key: (topic id, partition, leaf).
fn partition_key(key: &[u8]) -> Option<(Uuid, i32, &str)> {
    let s = std::str::from_utf8(key).ok()?;
    let mut it = s.strip_prefix("/floe/partitions/")?.splitn(3, '/');
    let topic = Uuid::parse_str(it.next()?).ok()?;
    let partition = it.next()?.parse().ok()?;
    Some((topic, partition, it.next()?))
}

/// Per partition, what etcd holds about it.
#[derive(Default)]
struct PartitionFacts {
    owner: Option<OwnerRecord>,
    state: Option<PartitionStateRecord>,
    assignment: Option<AssignmentRecord>,
    checkpoint: Option<CheckpointRecord>,
    /// Sealed segments, by base offset.
    segments: Vec<floe_meta::schema::SegmentRecord>,
}

fn partition_facts(kvs: &[KeyValue]) -> HashMap<PartitionId, PartitionFacts> {
    let mut out: HashMap<PartitionId, PartitionFacts> = HashMap::new();
    for kv in kvs {
        let Some((topic, partition, leaf)) = partition_key(&kv.key) else {
            continue;
        };
        let f = out.entry(PartitionId::new(topic, partition)).or_default();
        match leaf {
            "owner" => f.owner = decode(kv),
            "state" => f.state = decode(kv),
            "assignment" => f.assignment = decode(kv),
            "checkpoint" => f.checkpoint = decode(kv),
            l if l.starts_with("segments/") => {
                if let Some(seg) = decode(kv) {
                    f.segments.push(seg);
                }
            }
            _ => {}
        }
    }
    out
}

fn topic_summary(t: &TopicRecord) -> pb::TopicSummary {
    pb::TopicSummary {
        name: t.name.clone(),
        id: Uuid::from_slice(&t.id)
            .map(|u| u.simple().to_string())
            .unwrap_or_default(),
        partitions: t.partitions,
        configs: t.configs.clone().into_iter().collect(),
    }
}

/// The state a client of the admin API sees: the owner's published state
/// while that owner is alive, "unowned" otherwise.
fn visible_state(f: Option<&PartitionFacts>, live: &BTreeMap<i32, BrokerRecord>) -> String {
    match f.and_then(|f| f.state.as_ref()) {
        Some(s) if live.contains_key(&s.broker_id) => s.state.clone(),
        _ => "unowned".to_string(),
    }
}

/// What a broker's load report says of one partition it writes.
struct Report {
    broker: i32,
    high_watermark: i64,
    reported_ms: i64,
    bytes_in_per_sec: u64,
    bytes_out_per_sec: u64,
}

/// The brokers' load reports, by partition.
type Reported = HashMap<PartitionId, Report>;

/// The brokers' load reports in a snapshot.
fn load_records(kvs: &[KeyValue]) -> impl Iterator<Item = floe_meta::schema::LoadRecord> + '_ {
    kvs.iter()
        .filter(|kv| kv.key.starts_with(&keys::load_prefix()))
        .filter_map(decode::<floe_meta::schema::LoadRecord>)
}

fn reported_offsets(kvs: &[KeyValue]) -> Reported {
    let mut out = Reported::new();
    for l in load_records(kvs) {
        for p in &l.partitions {
            if let Ok(topic) = Uuid::from_slice(&p.topic_id) {
                out.insert(
                    PartitionId::new(topic, p.partition),
                    Report {
                        broker: l.broker_id,
                        high_watermark: p.high_watermark,
                        reported_ms: l.reported_ms,
                        bytes_in_per_sec: p.bytes_in_per_sec,
                        bytes_out_per_sec: p.bytes_out_per_sec,
                    },
                );
            }
        }
    }
    out
}

/// A partition's segments, oldest first: the sealed ones, then the open
/// ones its last checkpoint names (each ending where the next begins, the
/// last at the checkpoint's end).
fn segment_details(f: Option<&PartitionFacts>) -> Vec<pb::SegmentDetail> {
    let Some(f) = f else {
        return Vec::new();
    };
    let mut segments: Vec<pb::SegmentDetail> = f
        .segments
        .iter()
        .map(|s| pb::SegmentDetail {
            base_offset: s.base_offset,
            end_offset: s.end_offset,
            sealed: true,
            replica_set: s.replica_set.clone(),
            bytes: s.object_bytes,
            epoch: s.epoch,
            compactions: s.compactions,
        })
        .collect();
    if let Some(cp) = &f.checkpoint {
        let open = &cp.open_segments;
        for (i, o) in open.iter().enumerate() {
            let end = open.get(i + 1).map_or(cp.next_offset, |n| n.base_offset);
            segments.push(pb::SegmentDetail {
                base_offset: o.base_offset,
                end_offset: end,
                sealed: false,
                replica_set: o.replica_set.clone(),
                bytes: o.chunks.iter().map(|c| c.bytes).sum(),
                epoch: o.epoch,
                compactions: 0,
            });
        }
    }
    segments.sort_by_key(|s| s.base_offset);
    segments
}

fn partition_detail(
    id: PartitionId,
    f: Option<&PartitionFacts>,
    brokers: &BTreeMap<i32, BrokerRecord>,
    reported: &Reported,
    with_segments: bool,
) -> pb::PartitionDetail {
    let owner = f
        .and_then(|f| f.owner.as_ref())
        .filter(|o| brokers.contains_key(&o.broker_id));
    let cp = f.and_then(|f| f.checkpoint.as_ref());
    // Only the current owner's report counts (a former owner's is stale).
    let report = reported
        .get(&id)
        .filter(|r| owner.is_some_and(|o| o.broker_id == r.broker));
    let segments = segment_details(f);
    let p = id.partition;
    pb::PartitionDetail {
        partition: p,
        owner: owner.map_or(-1, |o| o.broker_id),
        epoch: owner.map_or(-1, |o| o.epoch),
        state: visible_state(f, brokers),
        assigned: f
            .and_then(|f| f.assignment.as_ref())
            .map_or(-1, |a| a.broker_id),
        log_start_offset: cp.map_or(0, |c| c.log_start_offset),
        checkpoint_next_offset: cp.map_or(0, |c| c.next_offset),
        sealed_segments: f.map_or(0, |f| f.segments.len() as u32),
        open_segments: cp.map_or(0, |c| c.open_segments.len() as u32),
        high_watermark: report.map_or(-1, |r| r.high_watermark),
        high_watermark_age_ms: report.map_or(0, |r| {
            floe_common::SystemClock
                .now_ms()
                .saturating_sub(r.reported_ms)
                .max(0) as u64
        }),
        bytes_in_per_sec: report.map_or(0, |r| r.bytes_in_per_sec),
        bytes_out_per_sec: report.map_or(0, |r| r.bytes_out_per_sec),
        bytes: segments.iter().map(|s| s.bytes).sum(),
        segments: if with_segments { segments } else { Vec::new() },
    }
}

/// Live brokers by id.
fn live_brokers(kvs: &[KeyValue]) -> BTreeMap<i32, BrokerRecord> {
    kvs.iter()
        .filter(|kv| keys::parse_broker(&kv.key).is_some())
        .filter_map(decode::<BrokerRecord>)
        .map(|b| (b.broker_id, b))
        .collect()
}

/// The topic record named `name` in a snapshot.
/// The compaction of a partition of topic `t` from its sealed segments'
/// records, computed as the owner's compactor does; None for a topic that
/// is not compacted.
fn compaction_state(
    t: &TopicRecord,
    segments: &[floe_meta::schema::SegmentRecord],
) -> Option<pb::CompactionState> {
    let config = floe_meta::topics::TopicConfig::resolve(&BTreeMap::new(), &t.configs).ok()?;
    let internal = floe_common::topic::is_internal(&t.name);
    if !config.compact && !internal {
        return None;
    }
    let now = chrono_now_ms();
    let sealed_bytes: u64 = segments.iter().map(|s| s.data_bytes).sum();
    let dirty: Vec<_> = segments.iter().filter(|s| s.compactions == 0).collect();
    let dirty_bytes: u64 = dirty.iter().map(|s| s.data_bytes).sum();
    Some(pb::CompactionState {
        cleanup_policy: if internal {
            "compact".into()
        } else {
            config.cleanup_policy.clone()
        },
        sealed_segments: segments.len() as u32,
        compacted_segments: (segments.len() - dirty.len()) as u32,
        sealed_bytes,
        dirty_bytes,
        dirty_ratio: if sealed_bytes == 0 {
            0.0
        } else {
            dirty_bytes as f64 / sealed_bytes as f64
        },
        min_cleanable_dirty_ratio: config.min_cleanable_dirty_ratio,
        lag_ms: dirty.first().map_or(0, |s| (now - s.max_timestamp).max(0)),
        max_compaction_lag_ms: config.max_compaction_lag_ms,
        tombstones_until_ms: segments
            .iter()
            .map(|s| s.tombstones_until_ms)
            .max()
            .unwrap_or(0),
        delete_retention_ms: config.delete_retention_ms,
    })
}

fn chrono_now_ms() -> i64 {
    floe_common::wall_ms()
}

fn find_topic(kvs: &[KeyValue], name: &str) -> Result<(TopicRecord, Uuid), Status> {
    let topic_key = keys::topic(name);
    let t = kvs
        .iter()
        .find(|kv| kv.key == topic_key)
        .and_then(decode::<TopicRecord>)
        .ok_or_else(|| Status::not_found(format!("unknown topic {name:?}")))?;
    let id = Uuid::from_slice(&t.id).map_err(|_| Status::internal("bad topic id"))?;
    Ok((t, id))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn get_cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let kvs = snapshot(&*self.state.meta).await?;
        let mut out = pb::ClusterStatus::default();
        let mut brokers = BTreeMap::new();
        let mut topics = Vec::new();
        let mut leader_id = None;
        let drained: std::collections::HashSet<i32> = kvs
            .iter()
            .filter_map(|kv| keys::parse_drained(&kv.key))
            .collect();
        let loads: HashMap<i32, floe_meta::schema::LoadRecord> =
            load_records(&kvs).map(|l| (l.broker_id, l)).collect();
        for kv in &kvs {
            let k = kv.key.as_ref();
            if k == keys::cluster().as_ref() {
                if let Some(c) = decode::<ClusterRecord>(kv) {
                    out.cluster_id = c.cluster_id;
                }
            } else if k == keys::storage_pool().as_ref() {
                if let Some(p) = decode::<StoragePoolRecord>(kv) {
                    out.replicas = p.replicas;
                    out.write_quorum = p.write_quorum;
                    out.storage_targets = p
                        .targets
                        .into_iter()
                        .map(|t| pb::StorageTarget {
                            id: t.id,
                            url: t.url,
                            zone: t.zone.unwrap_or_default(),
                            weight: t.weight,
                            draining: t.draining,
                        })
                        .collect();
                }
            } else if k == keys::controller_leader().as_ref() {
                leader_id = decode::<ControllerRecord>(kv).map(|c| c.id);
            } else if keys::parse_broker(k).is_some() {
                if let Some(b) = decode::<BrokerRecord>(kv) {
                    brokers.insert(b.broker_id, b);
                }
            } else if keys::parse_proxy(k).is_some() {
                if let Some(p) = decode::<ProxyRecord>(kv) {
                    out.proxies.push(pb::Proxy {
                        id: p.proxy_id,
                        address: format!("{}:{}", p.host, p.port),
                        started_ms: p.started_ms,
                    });
                }
            } else if k.starts_with(&keys::controllers_prefix()) {
                if let Some(c) = decode::<ControllerRecord>(kv) {
                    out.controllers.push(pb::Controller {
                        id: c.id,
                        http: c.http,
                        leader: false,
                    });
                }
            } else if k.starts_with(&keys::topics_prefix()) {
                if let Some(t) = decode::<TopicRecord>(kv) {
                    topics.push(t);
                }
            }
        }
        for c in &mut out.controllers {
            c.leader = leader_id.as_deref() == Some(c.id.as_str());
        }
        let facts = partition_facts(&kvs);
        let mut owned: HashMap<i32, u32> = HashMap::new();
        let mut states: BTreeMap<String, u32> = BTreeMap::new();
        for t in &topics {
            let Ok(id) = Uuid::from_slice(&t.id) else {
                continue;
            };
            for p in 0..t.partitions {
                let f = facts.get(&PartitionId::new(id, p));
                let state = visible_state(f, &brokers);
                if let Some(o) = f.and_then(|f| f.owner.as_ref()) {
                    if brokers.contains_key(&o.broker_id) {
                        *owned.entry(o.broker_id).or_default() += 1;
                    }
                }
                *states.entry(state).or_default() += 1;
                out.partitions += 1;
            }
        }
        out.topics = topics.len() as u32;
        out.brokers = brokers
            .values()
            .map(|b| pb::Broker {
                id: b.broker_id,
                address: format!("{}:{}", b.host, b.port),
                tail: b.tail.clone(),
                started_ms: b.started_ms,
                partitions: owned.get(&b.broker_id).copied().unwrap_or(0),
                drained: drained.contains(&b.broker_id),
                bytes_in_per_sec: loads.get(&b.broker_id).map_or(0, |l| l.bytes_in_per_sec),
                bytes_out_per_sec: loads.get(&b.broker_id).map_or(0, |l| l.bytes_out_per_sec),
                load_reported_ms: loads.get(&b.broker_id).map_or(0, |l| l.reported_ms),
            })
            .collect();
        out.partition_states = states
            .into_iter()
            .map(|(state, partitions)| pb::StateCount { state, partitions })
            .collect();
        Ok(Response::new(out))
    }

    async fn list_topics(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::TopicList>, Status> {
        let (kvs, _) = self
            .state
            .meta
            .range(&keys::topics_prefix())
            .await
            .map_err(unavailable)?;
        let mut topics: Vec<pb::TopicSummary> = kvs
            .iter()
            .filter_map(decode::<TopicRecord>)
            .map(|t| topic_summary(&t))
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::TopicList { topics }))
    }

    async fn list_groups(
        &self,
        _: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::GroupList>, Status> {
        Ok(Response::new(
            groups::list(&*self.state.meta, self.state.internal_tls.as_deref()).await?,
        ))
    }

    async fn describe_group(
        &self,
        r: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::GroupDescription>, Status> {
        Ok(Response::new(
            groups::describe(
                &*self.state.meta,
                self.state.internal_tls.as_deref(),
                &r.into_inner().name,
            )
            .await?,
        ))
    }

    async fn describe_topic(
        &self,
        request: Request<pb::DescribeTopicRequest>,
    ) -> Result<Response<pb::TopicDetail>, Status> {
        let r = request.into_inner();
        let name = r.name;
        let kvs = snapshot(&*self.state.meta).await?;
        let (t, id) = find_topic(&kvs, &name)?;
        let brokers = live_brokers(&kvs);
        let facts = partition_facts(&kvs);
        let reported = reported_offsets(&kvs);
        let partitions = (0..t.partitions)
            .map(|p| {
                let pid = PartitionId::new(id, p);
                partition_detail(pid, facts.get(&pid), &brokers, &reported, r.segments)
            })
            .collect();
        Ok(Response::new(pb::TopicDetail {
            topic: Some(topic_summary(&t)),
            partitions,
        }))
    }

    async fn describe_partition(
        &self,
        r: Request<pb::DescribePartitionRequest>,
    ) -> Reply<pb::PartitionSegments> {
        let r = r.into_inner();
        let kvs = snapshot(&*self.state.meta).await?;
        let (t, id) = find_topic(&kvs, &r.topic)?;
        if r.partition < 0 || r.partition >= t.partitions {
            return Err(Status::not_found(format!(
                "topic {:?} has no partition {}",
                r.topic, r.partition
            )));
        }
        let facts = partition_facts(&kvs);
        let f = facts.get(&PartitionId::new(id, r.partition));
        let segments = segment_details(f);
        let compaction = compaction_state(&t, f.map_or(&[][..], |f| &f.segments));
        Ok(Response::new(pb::PartitionSegments {
            topic: r.topic,
            partition: Some(partition_detail(
                PartitionId::new(id, r.partition),
                f,
                &live_brokers(&kvs),
                &reported_offsets(&kvs),
                false,
            )),
            segments,
            compaction,
        }))
    }

    async fn create_topic(&self, r: Request<pb::CreateTopicRequest>) -> Reply<pb::TopicSummary> {
        let t = topics::create(self.state.meta.clone(), r.into_inner()).await?;
        Ok(Response::new(topic_summary(&t)))
    }

    async fn delete_topic(&self, r: Request<pb::DeleteTopicRequest>) -> Reply<pb::TopicSummary> {
        let t = topics::delete(self.state.meta.clone(), &r.into_inner().name).await?;
        Ok(Response::new(topic_summary(&t)))
    }

    async fn alter_topic_configs(
        &self,
        r: Request<pb::AlterTopicConfigsRequest>,
    ) -> Reply<pb::TopicSummary> {
        let t = topics::alter(self.state.meta.clone(), r.into_inner()).await?;
        Ok(Response::new(topic_summary(&t)))
    }

    async fn drain_broker(&self, r: Request<pb::BrokerRequest>) -> Reply<pb::DrainResponse> {
        Ok(Response::new(
            self.drain(r.into_inner().broker, false).await?,
        ))
    }

    async fn decommission_broker(&self, r: Request<pb::BrokerRequest>) -> Reply<pb::DrainResponse> {
        Ok(Response::new(
            self.drain(r.into_inner().broker, true).await?,
        ))
    }

    async fn undrain_broker(&self, r: Request<pb::BrokerRequest>) -> Reply<pb::DrainResponse> {
        let broker = r.into_inner().broker;
        crate::drain::undrain(&*self.state.meta, broker)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::DrainResponse {
            broker,
            drained: false,
            partitions: self.owned_by(broker).await?,
            operation: None,
        }))
    }

    async fn move_partition(
        &self,
        request: Request<pb::MovePartitionRequest>,
    ) -> Result<Response<pb::MovePartitionResponse>, Status> {
        // A caller's trace (W3C `traceparent` in the gRPC metadata, as
        // OpenTelemetry's gRPC instrumentations send it) continues here.
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let r = request.into_inner();
        let span = tracing::info_span!(
            "controller.move",
            topic = %r.topic,
            partition = r.partition,
            to = r.broker
        );
        floe_kafka::trace::adopt(&span, traceparent.as_deref());
        use tracing::Instrument;
        async move {
            let started = Instant::now();
            let timeout = Duration::from_millis(if r.timeout_ms == 0 {
                30_000
            } else {
                r.timeout_ms as u64
            });
            let meta = self.state.meta.clone();
            let Some(t) = meta
                .get(&keys::topic(&r.topic))
                .await
                .map_err(unavailable)?
                .and_then(|kv| decode::<TopicRecord>(&kv))
            else {
                return Err(Status::not_found(format!("unknown topic {:?}", r.topic)));
            };
            if r.partition < 0 || r.partition >= t.partitions {
                return Err(Status::not_found(format!(
                    "topic {:?} has no partition {}",
                    r.topic, r.partition
                )));
            }
            let id = PartitionId::new(
                Uuid::from_slice(&t.id).map_err(|_| Status::internal("bad topic id"))?,
                r.partition,
            );
            // Recorded as a finished operation of kind "move" (what
            // `floectl op list` and the console's operations page show).
            let from = meta
                .get(&keys::assignment(id))
                .await
                .ok()
                .flatten()
                .and_then(|kv| decode::<AssignmentRecord>(&kv))
                .map_or(-1, |a| a.broker_id);
            let started_ms = crate::operations::now_ms();
            let outcome = self.move_and_wait(id, &r, timeout, started).await;
            let (status, detail) = match &outcome {
                Ok(m) => (
                    "done",
                    format!("written by broker {} at epoch {}", r.broker, m.epoch),
                ),
                Err(e) => ("failed", e.message().to_string()),
            };
            let took_ms = started.elapsed().as_millis() as u64;
            let moved = crate::operations::MoveOutcome {
                id,
                from,
                to: r.broker,
                status,
                detail,
                started_ms,
                took_ms,
            };
            if let Err(e) = crate::operations::record_move(&*meta, &moved).await {
                tracing::warn!(error = %e, "recording a move as an operation failed");
            }
            outcome.map(Response::new)
        }
        .instrument(span)
        .await
    }

    async fn plan_rebalance(&self, r: Request<pb::RebalanceRequest>) -> Reply<pb::RebalancePlan> {
        Ok(Response::new(
            ops::plan(&*self.state.meta, &r.into_inner()).await?.1,
        ))
    }

    async fn start_rebalance(
        &self,
        r: Request<pb::RebalanceRequest>,
    ) -> Reply<pb::RebalanceStarted> {
        Ok(Response::new(
            ops::start(&*self.state.meta, &r.into_inner()).await?,
        ))
    }

    async fn list_operations(
        &self,
        r: Request<pb::ListOperationsRequest>,
    ) -> Reply<pb::OperationList> {
        let _ = r;
        Ok(Response::new(ops::list(&*self.state.meta).await?))
    }

    async fn get_operation(&self, r: Request<pb::OperationRequest>) -> Reply<pb::Operation> {
        Ok(Response::new(
            ops::get(&*self.state.meta, &r.into_inner().id).await?,
        ))
    }

    type WatchOperationStream = ops::OperationStream;

    async fn watch_operation(
        &self,
        r: Request<pb::OperationRequest>,
    ) -> Reply<Self::WatchOperationStream> {
        let id = r.into_inner().id;
        Ok(Response::new(
            ops::watch(self.state.meta.clone(), id).await?,
        ))
    }

    async fn cancel_operation(&self, r: Request<pb::OperationRequest>) -> Reply<pb::Operation> {
        Ok(Response::new(
            ops::cancel(&*self.state.meta, &r.into_inner().id).await?,
        ))
    }

    async fn list_storage_targets(
        &self,
        r: Request<pb::ListStorageTargetsRequest>,
    ) -> Reply<pb::StorageTargetList> {
        let _ = r;
        Ok(Response::new(storage::list(&*self.state.meta).await?))
    }

    async fn add_storage_target(
        &self,
        r: Request<pb::AddStorageTargetRequest>,
    ) -> Reply<pb::StorageTargetStatus> {
        Ok(Response::new(
            storage::add(&*self.state.meta, r.into_inner()).await?,
        ))
    }

    async fn drain_storage_target(
        &self,
        r: Request<pb::StorageTargetRequest>,
    ) -> Reply<pb::StorageTargetStatus> {
        Ok(Response::new(
            storage::set_draining(&*self.state.meta, &r.into_inner().id, true).await?,
        ))
    }

    async fn undrain_storage_target(
        &self,
        r: Request<pb::StorageTargetRequest>,
    ) -> Reply<pb::StorageTargetStatus> {
        Ok(Response::new(
            storage::set_draining(&*self.state.meta, &r.into_inner().id, false).await?,
        ))
    }

    async fn remove_storage_target(
        &self,
        r: Request<pb::StorageTargetRequest>,
    ) -> Reply<pb::StorageTargetStatus> {
        Ok(Response::new(
            storage::remove(&*self.state.meta, &r.into_inner().id).await?,
        ))
    }

    async fn list_users(&self, _r: Request<pb::ListUsersRequest>) -> Reply<pb::UserList> {
        Ok(Response::new(users::list(self.state.meta.clone()).await?))
    }

    async fn set_user_password(&self, r: Request<pb::SetUserPasswordRequest>) -> Reply<pb::User> {
        Ok(Response::new(
            users::set_password(self.state.meta.clone(), r.into_inner()).await?,
        ))
    }

    async fn delete_user(&self, r: Request<pb::DeleteUserRequest>) -> Reply<pb::User> {
        Ok(Response::new(
            users::delete(self.state.meta.clone(), r.into_inner()).await?,
        ))
    }
    async fn list_acls(&self, r: Request<pb::AclFilter>) -> Reply<pb::AclList> {
        Ok(Response::new(
            acls::list(self.state.meta.clone(), r.into_inner()).await?,
        ))
    }

    async fn create_acl(&self, r: Request<pb::Acl>) -> Reply<pb::Acl> {
        Ok(Response::new(
            acls::create(self.state.meta.clone(), r.into_inner()).await?,
        ))
    }

    async fn delete_acls(&self, r: Request<pb::AclFilter>) -> Reply<pb::AclList> {
        Ok(Response::new(
            acls::delete(self.state.meta.clone(), r.into_inner()).await?,
        ))
    }
}

type Reply<T> = Result<Response<T>, Status>;

impl AdminService {
    /// Partitions `broker` writes now (live owner records).
    async fn owned_by(&self, broker: i32) -> Result<u32, Status> {
        let (kvs, _) = self
            .state
            .meta
            .range(&keys::partitions_prefix())
            .await
            .map_err(unavailable)?;
        Ok(kvs
            .iter()
            .filter(|kv| keys::parse_owner(&kv.key).is_some())
            .filter_map(decode::<OwnerRecord>)
            .filter(|o| o.broker_id == broker)
            .count() as u32)
    }

    /// Drain `broker` (retire it with `decommission`): the operation that
    /// follows its partitions off.
    async fn drain(&self, broker: i32, decommission: bool) -> Result<pb::DrainResponse, Status> {
        let meta = &*self.state.meta;
        if meta
            .get(&keys::broker(broker))
            .await
            .map_err(unavailable)?
            .is_none()
        {
            return Err(Status::not_found(format!("broker {broker} is not alive")));
        }
        let op = crate::drain::start(meta, broker, decommission)
            .await
            .map_err(unavailable)?;
        Ok(pb::DrainResponse {
            broker,
            drained: true,
            partitions: self.owned_by(broker).await?,
            operation: Some(ops::named(meta, &op).await?),
        })
    }
}

/// The admin API's TLS settings from PEM files: `cert` and `key` make it
/// TLS-only; `client_ca` also requires a client certificate signed by it.
pub fn server_tls(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use anyhow::Context;
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("reading the admin TLS {what} {}", p.display()))
    };
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (read("certificate", c)?, read("key", k)?),
        (None, None) if client_ca.is_none() => return Ok(None),
        _ => anyhow::bail!("the admin API's TLS needs both --admin-tls-cert and --admin-tls-key"),
    };
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(
            "client CA",
            ca,
        )?));
    }
    Ok(Some(tls))
}

impl AdminService {
    /// Move partition `id` to `r.broker` through the leader and wait until
    /// the new owner writes it (or `timeout`).
    async fn move_and_wait(
        &self,
        id: PartitionId,
        r: &pb::MovePartitionRequest,
        timeout: Duration,
        started: Instant,
    ) -> Result<pb::MovePartitionResponse, Status> {
        let meta = &self.state.meta;
        let epoch = match state::move_on_leader(&self.state, id, &r.topic, r.broker).await {
            Ok(e) => e,
            Err(state::MoveFailure::NotFound(m)) => return Err(Status::not_found(m)),
            Err(state::MoveFailure::Retry(m)) => return Err(Status::unavailable(m)),
        };
        // Answer once the new owner writes.
        loop {
            let writing = meta
                .get(&keys::partition_state(id))
                .await
                .map_err(unavailable)?
                .and_then(|kv| decode::<PartitionStateRecord>(&kv))
                .is_some_and(|s| {
                    s.broker_id == r.broker && s.epoch >= epoch && s.state == "writing"
                });
            if writing {
                break;
            }
            if started.elapsed() > timeout {
                return Err(Status::deadline_exceeded(format!(
                    "partition {} of {:?} was assigned to broker {} at epoch {epoch} but is not written there after {timeout:?}",
                    r.partition, r.topic, r.broker
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        crate::metrics::metrics()
            .move_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(pb::MovePartitionResponse {
            epoch,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }
}

/// A gRPC server for the admin API, with TLS if configured. Bad
/// certificates or keys are refused here, at startup.
pub fn server(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    Ok(match tls {
        Some(tls) => builder.tls_config(tls).map_err(|e| {
            anyhow::anyhow!(
                "the admin TLS certificate or key: {}",
                floe_common::error_chain(&e)
            )
        })?,
        None => builder,
    })
}

/// Serve the admin API on `listener` until `shutdown`; requests without
/// `authorization: Bearer <token>` are refused (and logged). With a
/// `console`, the web console is served beside it (HTTP/1.1 accepted too,
/// for browsers on plaintext).
pub async fn serve(
    server: tonic::transport::Server,
    listener: tokio::net::TcpListener,
    state: Arc<ControllerState>,
    token: String,
    console: Option<Arc<crate::console::Console>>,
    shutdown: CancellationToken,
) {
    let check = move |req: Request<()>| -> Result<Request<()>, Status> {
        let given = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let presented = given.and_then(|g| g.strip_prefix("Bearer ")).unwrap_or("");
        // Compared in constant time: how long a refusal takes says
        // nothing about how much of the token was right.
        if given.is_some()
            && floe_kafka::tls::constant_time_eq(presented.as_bytes(), token.as_bytes())
        {
            return Ok(req);
        }
        let peer = req
            .remote_addr()
            .map_or("unknown".to_string(), |a| a.to_string());
        tracing::warn!(%peer, token_given = given.is_some(), "admin request rejected: missing or wrong bearer token");
        Err(Status::unauthenticated(
            "missing or wrong bearer token (floectl: --token, --token-file or FLOE_ADMIN_TOKEN)",
        ))
    };
    let service = pb::admin_server::AdminServer::with_interceptor(AdminService::new(state), check);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (mut server, routes) = match console {
        Some(console) => (
            server.accept_http1(true),
            tonic::service::Routes::from(console.router()).add_service(service),
        ),
        None => (server, tonic::service::Routes::new(service)),
    };
    if let Err(e) = server
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin API listener failed");
    }
}
