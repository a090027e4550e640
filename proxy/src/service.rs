//! The proxy's Kafka front: requests decoded and answered here (ApiVersions,
//! Metadata, DescribeCluster, FindCoordinator, reads), split and forwarded
//! (Produce, DeleteRecords, multi-group requests), or forwarded raw to the
//! broker that must answer them (a group's coordinator, any broker for topic
//! admin and producer ids). Clients only ever see proxies.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use floe_common::PartitionId;
use floe_kafka::listener::{
    api_name, ready, request_head, respond, Close, KafkaService, Limits, Pending,
};
use floe_kafka::RequestMetrics as Metrics;
use floe_meta::schema::BrokerRecord;
use floe_protocol::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use floe_protocol::kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use floe_protocol::kafka_protocol::messages::find_coordinator_response::Coordinator;
use floe_protocol::kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use floe_protocol::rules::api_versions;
use floe_protocol::rules::{partition_for, OFFSETS_TOPIC};
use floe_protocol::ResponseError;
use futures::FutureExt;

use crate::produce::Connection;
use crate::upstream::{decode_response, encode_request, Pool, UpstreamError};
use crate::view::{broker_key, owner_node_id, partition_key, rendezvous};
use crate::Proxy;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Per client connection: its own connections to coordinators.
#[derive(Default)]
pub struct Session {
    pool: Pool,
    /// Requests of this connection not yet answered (answers go in order,
    /// so an answer held back holds back every one after it).
    connection: Arc<Connection>,
}

/// One request counted in its connection's `outstanding` until dropped.
struct Outstanding(Arc<Connection>);

impl Outstanding {
    fn new(c: &Arc<Connection>) -> Self {
        c.outstanding.fetch_add(1, Ordering::SeqCst);
        Self(c.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl KafkaService for Proxy {
    type Session = Session;

    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.config.max_connections,
            max_request_bytes: self.config.max_request_bytes,
            max_inflight_per_connection: self.config.max_inflight_per_connection,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.requests
    }

    fn session(&self) -> Arc<Session> {
        Arc::new(Session::default())
    }

    fn dispatch(
        self: &Arc<Self>,
        session: &Arc<Session>,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send {
        dispatch(self.clone(), session.clone(), frame)
    }
}

/// Where a forwarded request goes.
#[derive(Clone)]
enum Route {
    /// The coordinator of this group.
    Group(String),
    /// Any live broker.
    Any,
}

async fn dispatch(
    proxy: Arc<Proxy>,
    session: Arc<Session>,
    frame: Bytes,
) -> Result<Pending, Close> {
    let (api, version, correlation_id) = match request_head(&frame, &proxy.requests) {
        Ok(head) => head,
        Err(answer) => return answer,
    };
    // Counted until answered: a produce answer held back holds back every
    // answer after it on this connection.
    let counted = Outstanding::new(&session.connection);
    let started = Instant::now();
    let raw = frame.clone();
    let mut body = frame;
    let malformed =
        |e: floe_kafka::listener::anyhow_like::Error| Close::Malformed(api, version, e.to_string());
    let header = RequestHeader::decode(&mut body, api.request_header_version(version))
        .map_err(|e| malformed(e.into()))?;
    let client_id = header.client_id.map(|c| c.to_string()).unwrap_or_default();
    let request = floe_kafka::listener::decode_body(api, version, &mut body)
        .map_err(|e| Close::Malformed(api, version, e))?;
    let name = api_name(api);
    let metrics = proxy.requests.clone();
    let done = move |b: Option<Bytes>| {
        metrics.request(name, started.elapsed());
        b
    };
    let out: Pending = match request {
        RequestKind::ApiVersions(_) => ready(done(respond(
            api,
            version,
            correlation_id,
            api_versions(version, false),
        ))),
        RequestKind::Metadata(r) => {
            let resp = proxy.metadata(r, version, &client_id).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeTopicPartitions(r) => {
            use floe_protocol::responses::{
                describe_topic_partitions, metadata_for_describe_topic_partitions,
            };
            let meta = proxy
                .metadata(metadata_for_describe_topic_partitions(&r), 12, &client_id)
                .await;
            let resp = describe_topic_partitions(&r, meta);
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DescribeCluster(_) => ready(done(respond(
            api,
            version,
            correlation_id,
            proxy.describe_cluster(),
        ))),
        RequestKind::Produce(r) => {
            // Topics a producer writes before asking for metadata are made
            // (as a broker would) before anything is forwarded.
            let unknown: Vec<String> = r
                .topic_data
                .iter()
                .map(|t| t.name.0.to_string())
                .filter(|n| {
                    proxy.view.topic(n).is_none()
                        && floe_protocol::rules::valid_topic_name(n).is_ok()
                })
                .collect();
            if !unknown.is_empty() {
                proxy.auto_create(&unknown, &client_id).await;
            }
            // Driven on its own task: a batch's lane moves on even while
            // this client's earlier responses are still being waited for.
            let pending =
                tokio::spawn(proxy.produce(r, version, &client_id, session.connection.clone()));
            async move {
                let resp = pending.await.ok().flatten();
                done(resp.and_then(|resp| respond(api, version, correlation_id, resp)))
            }
            .boxed()
        }
        RequestKind::Fetch(r) => {
            let proxy = proxy.clone();
            async move {
                let mut resp = proxy.fetch(r, version).await;
                floe_protocol::responses::fetch_as_kafka_sends(&mut resp);
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::ListOffsets(r) => {
            let resp = proxy.list_offsets(r, version).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            let resp = proxy.offset_for_leader_epoch(r).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::FindCoordinator(r) => {
            let resp = proxy.find_coordinator(r, version, &client_id, raw).await;
            ready(done(respond(api, version, correlation_id, resp)))
        }
        RequestKind::DeleteRecords(r) => {
            let proxy = proxy.clone();
            async move {
                let resp = proxy.delete_records(r, version, &client_id).await;
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::DescribeProducers(r) => {
            let proxy = proxy.clone();
            async move {
                let resp = proxy.describe_producers(r, version, &client_id).await;
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::DescribeGroups(r) => {
            let proxy = proxy.clone();
            async move {
                let names: Vec<GroupId> = r.groups.clone();
                let groups = proxy
                    .per_group(
                        names,
                        (api, version, &client_id),
                        |g| {
                            let mut one = r.clone();
                            one.groups = vec![g.clone()];
                            one
                        },
                        |x: DescribeGroupsResponse| x.groups,
                        |e| e.error_code,
                        |g, code| {
                            describe_groups_response::DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(code)
                        },
                    )
                    .await;
                let resp = DescribeGroupsResponse::default().with_groups(groups);
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::ConsumerGroupDescribe(r) => {
            let proxy = proxy.clone();
            async move {
                let names: Vec<GroupId> = r.group_ids.clone();
                let groups = proxy
                    .per_group(
                        names,
                        (api, version, &client_id),
                        |g| {
                            let mut one = r.clone();
                            one.group_ids = vec![g.clone()];
                            one
                        },
                        |x: ConsumerGroupDescribeResponse| x.groups,
                        |e| e.error_code,
                        |g, code| {
                            consumer_group_describe_response::DescribedGroup::default()
                                .with_group_id(g)
                                .with_error_code(code)
                        },
                    )
                    .await;
                let resp = ConsumerGroupDescribeResponse::default().with_groups(groups);
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::DeleteGroups(r) => {
            let proxy = proxy.clone();
            async move {
                let results = proxy
                    .per_group(
                        r.groups_names,
                        (api, version, &client_id),
                        |g| DeleteGroupsRequest::default().with_groups_names(vec![g.clone()]),
                        |x: DeleteGroupsResponse| x.results,
                        |e| e.error_code,
                        |g, code| {
                            delete_groups_response::DeletableGroupResult::default()
                                .with_group_id(g)
                                .with_error_code(code)
                        },
                    )
                    .await;
                let resp = DeleteGroupsResponse::default().with_results(results);
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::ListGroups(r) => {
            let proxy = proxy.clone();
            async move {
                let mut resp = ListGroupsResponse::default();
                for b in proxy.view.brokers() {
                    match proxy
                        .call_broker::<_, ListGroupsResponse>(&b, api, version, &client_id, &r)
                        .await
                    {
                        Ok(x) => resp.groups.extend(x.groups),
                        Err(e) => {
                            tracing::warn!(broker = b.broker_id, error = %e, "ListGroups: a broker did not answer");
                            resp.error_code = ResponseError::CoordinatorNotAvailable.code();
                        }
                    }
                }
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        RequestKind::OffsetFetch(r) if version >= 8 => {
            let proxy = proxy.clone();
            async move {
                let by_id: Vec<_> = r.groups.clone();
                let names = by_id.iter().map(|g| g.group_id.clone()).collect();
                let groups = proxy
                    .per_group(
                        names,
                        (api, version, &client_id),
                        |g| {
                            let asked = by_id.iter().find(|x| &x.group_id == g).cloned();
                            OffsetFetchRequest::default()
                                .with_require_stable(r.require_stable)
                                .with_groups(asked.into_iter().collect())
                        },
                        |x: OffsetFetchResponse| x.groups,
                        |e| e.error_code,
                        |g, code| {
                            offset_fetch_response::OffsetFetchResponseGroup::default()
                                .with_group_id(g)
                                .with_error_code(code)
                        },
                    )
                    .await;
                let resp = OffsetFetchResponse::default().with_groups(groups);
                done(respond(api, version, correlation_id, resp))
            }
            .boxed()
        }
        other => {
            let route = match &other {
                RequestKind::JoinGroup(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::SyncGroup(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::Heartbeat(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::LeaveGroup(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::OffsetCommit(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::OffsetFetch(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::OffsetDelete(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::ConsumerGroupHeartbeat(r) => Route::Group(r.group_id.0.to_string()),
                RequestKind::InitProducerId(_)
                | RequestKind::CreateTopics(_)
                | RequestKind::DeleteTopics(_)
                | RequestKind::CreatePartitions(_)
                | RequestKind::DescribeConfigs(_)
                | RequestKind::AlterConfigs(_)
                | RequestKind::IncrementalAlterConfigs(_) => Route::Any,
                _ => return Err(Close::UnsupportedVersion(api, version)),
            };
            // A JoinGroup is parked by the coordinator up to its rebalance
            // timeout: wait at least that long for the answer.
            let wait = match &other {
                RequestKind::JoinGroup(r) => Some(r.rebalance_timeout_ms.max(r.session_timeout_ms)),
                _ => None,
            }
            .map_or(proxy.config.forward_timeout_ms, |ms| {
                proxy
                    .config
                    .forward_timeout_ms
                    .max(ms.max(0) as u64 + 5_000)
            });
            let proxy = proxy.clone();
            async move {
                let answer = proxy
                    .forward(&session, route, api, version, raw, wait)
                    .await;
                match answer {
                    Ok(frame) => {
                        let mut out = bytes::BytesMut::with_capacity(frame.len() + 4);
                        out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
                        out.extend_from_slice(&correlation_id.to_be_bytes());
                        out.extend_from_slice(&frame[4..]);
                        done(Some(out.freeze()))
                    }
                    Err(e) => {
                        tracing::warn!(api = name, error = %e, "forwarding failed; closing the client connection");
                        proxy.requests.error(name, "Forward");
                        // An empty frame closes the connection: the client
                        // reconnects and asks again.
                        done(Some(Bytes::new()))
                    }
                }
            }
            .boxed()
        }
    };
    Ok(async move {
        let answer = out.await;
        drop(counted);
        answer
    }
    .boxed())
}

/// Requests that must not be applied twice (a lost answer is not retried).
fn creates(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::CreateTopics | ApiKey::DeleteTopics | ApiKey::CreatePartitions
    )
}

/// How long a request answered "not me (yet)" by a group's coordinator is
/// asked again while the coordinator moves, before that answer goes to the
/// client.
const COORDINATOR_MOVE_WAIT: Duration = Duration::from_secs(5);

/// A coordinator's "not me (yet)".
fn coordinator_moving(c: i16) -> bool {
    c == ResponseError::NotCoordinator.code()
        || c == ResponseError::CoordinatorNotAvailable.code()
        || c == ResponseError::CoordinatorLoadInProgress.code()
}

/// Requests whose response the coordinator answered with "not me (yet)":
/// sent again once the coordinator moved.
fn coordinator_moved(api: ApiKey, version: i16, frame: &Bytes) -> bool {
    let moved = coordinator_moving;
    let f = frame.clone();
    match api {
        ApiKey::JoinGroup => {
            decode_response::<JoinGroupResponse>(api, version, f).is_ok_and(|r| moved(r.error_code))
        }
        ApiKey::SyncGroup => {
            decode_response::<SyncGroupResponse>(api, version, f).is_ok_and(|r| moved(r.error_code))
        }
        ApiKey::Heartbeat => {
            decode_response::<HeartbeatResponse>(api, version, f).is_ok_and(|r| moved(r.error_code))
        }
        ApiKey::LeaveGroup => decode_response::<LeaveGroupResponse>(api, version, f)
            .is_ok_and(|r| moved(r.error_code)),
        ApiKey::OffsetFetch => decode_response::<OffsetFetchResponse>(api, version, f)
            .is_ok_and(|r| moved(r.error_code)),
        ApiKey::ConsumerGroupHeartbeat => {
            decode_response::<ConsumerGroupHeartbeatResponse>(api, version, f)
                .is_ok_and(|r| moved(r.error_code))
        }
        ApiKey::OffsetCommit => {
            decode_response::<OffsetCommitResponse>(api, version, f).is_ok_and(|r| {
                r.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| moved(p.error_code))
            })
        }
        _ => false,
    }
}

impl Proxy {
    /// The broker a route leads to now.
    fn target(&self, route: &Route) -> Result<BrokerRecord, ResponseError> {
        match route {
            Route::Any => {
                let brokers = self.view.brokers();
                if brokers.is_empty() {
                    return Err(ResponseError::CoordinatorNotAvailable);
                }
                let n = self
                    .round_robin
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(brokers[n % brokers.len()].clone())
            }
            Route::Group(g) => {
                if g.is_empty() {
                    return Err(ResponseError::InvalidGroupId);
                }
                let t = self
                    .view
                    .topic(OFFSETS_TOPIC)
                    .ok_or(ResponseError::CoordinatorNotAvailable)?;
                let p = PartitionId::new(t.id, partition_for(g, t.partitions));
                self.view
                    .owner(p)
                    .map(|(b, _)| b)
                    .ok_or(ResponseError::CoordinatorNotAvailable)
            }
        }
    }

    /// Forward a raw request frame and return the raw response frame. A
    /// broker that cannot be reached is waited for (up to the forward
    /// timeout); a coordinator that answers "not me" is asked again after
    /// the group's coordinator moved, for a few seconds, then its answer
    /// goes to the client. Requests no coordinator can take (an empty group
    /// id, no offsets topic yet) go to any broker, which answers them.
    async fn forward(
        &self,
        session: &Session,
        route: Route,
        api: ApiKey,
        version: i16,
        frame: Bytes,
        timeout_ms: u64,
    ) -> Result<Bytes, String> {
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(timeout_ms);
        let moved_deadline = started + COORDINATOR_MOVE_WAIT.min(deadline - started);
        let mut changes = self.view.changes();
        let mut last;
        self.metrics.group_forwarded.inc();
        loop {
            changes.borrow_and_update();
            let target = match self.target(&route) {
                Err(ResponseError::InvalidGroupId) => self.target(&Route::Any),
                Err(ResponseError::CoordinatorNotAvailable)
                    if self.view.topic(OFFSETS_TOPIC).is_none() =>
                {
                    self.target(&Route::Any)
                }
                t => t,
            };
            match target {
                Ok(b) => {
                    let conn = session.pool.get(&b);
                    let rx = conn.send(bytes::BytesMut::from(&frame[..]));
                    let Ok(answer) = tokio::time::timeout_at(deadline, rx).await else {
                        return Err(format!(
                            "broker {} did not answer within {timeout_ms} ms",
                            b.broker_id
                        ));
                    };
                    match answer {
                        Ok(Ok(resp)) => {
                            if tokio::time::Instant::now() >= moved_deadline
                                || !coordinator_moved(api, version, &resp)
                            {
                                return Ok(resp);
                            }
                            last = "the coordinator moved".to_string();
                        }
                        // Sent again only if it surely was not processed,
                        // or doing it twice is harmless.
                        Ok(Err(e)) if e.not_sent() || !creates(api) => last = e.to_string(),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => last = "connection dropped".into(),
                    }
                }
                Err(e) => last = format!("{e:?}"),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// A decoded call to the broker a route leads to (shared connections).
    async fn call<Req: Encodable, Resp: Decodable>(
        &self,
        route: Route,
        api: ApiKey,
        version: i16,
        client_id: &str,
        req: &Req,
    ) -> Result<Resp, ResponseError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.config.forward_timeout_ms);
        loop {
            let r = match self.target(&route) {
                Ok(b) => self
                    .call_broker(&b, api, version, client_id, req)
                    .await
                    .map_err(|_| ResponseError::CoordinatorNotAvailable),
                Err(e) => Err(e),
            };
            match r {
                Err(ResponseError::CoordinatorNotAvailable)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => return other,
            }
        }
    }

    async fn call_broker<Req: Encodable, Resp: Decodable>(
        &self,
        b: &BrokerRecord,
        api: ApiKey,
        version: i16,
        client_id: &str,
        req: &Req,
    ) -> Result<Resp, UpstreamError> {
        let frame = encode_request(api, version, client_id, req)
            .map_err(|e| UpstreamError::Connect(b.broker_id, e))?;
        let conn = self.admin_pool.get(b);
        let timeout = Duration::from_millis(self.config.forward_timeout_ms);
        let resp = tokio::time::timeout(timeout, conn.send(frame))
            .await
            .map_err(|_| UpstreamError::Lost(b.broker_id, "no answer in time".into()))?
            .map_err(|_| UpstreamError::Lost(b.broker_id, "connection dropped".into()))??;
        decode_response(api, version, resp).map_err(|e| UpstreamError::Lost(b.broker_id, e))
    }

    fn proxy_brokers(&self) -> Vec<(i32, String, i32)> {
        let mut v: Vec<(i32, String, i32)> = self
            .view
            .proxies()
            .into_iter()
            .map(|p| (p.proxy_id, p.host, p.port))
            .collect();
        if !v.iter().any(|(id, _, _)| *id == self.record.proxy_id) {
            // Our own registration may not have been seen yet.
            v.push((
                self.record.proxy_id,
                self.record.host.clone(),
                self.record.port,
            ));
        }
        v
    }

    /// The nodes clients see: every proxy, and with `owner_nodes` one node
    /// per live broker (its owner node), at the address of the proxy the
    /// broker hashes to, under an id of its own. Clients open a connection
    /// per node id, so the partitions a broker writes share a connection
    /// only with each other, and a broker that freezes holds up only its
    /// own partitions' answers (Kafka answers a connection's requests in
    /// order). One node per broker, not per proxy and broker: a client
    /// opens as many connections as there are brokers and proxies, and
    /// each owner node's connection is in use whenever its broker writes
    /// anything the client produces to (librdkafka connects to a node only
    /// when it needs it, and a partition moved to a node whose connection
    /// is down waits about a second before that connection is made).
    pub(crate) fn client_nodes(&self) -> Vec<(i32, String, i32)> {
        let proxies = self.proxy_brokers();
        let mut nodes = proxies.clone();
        if self.config.owner_nodes {
            let mut brokers: Vec<i32> = self.view.brokers().iter().map(|b| b.broker_id).collect();
            brokers.sort_unstable();
            for b in brokers {
                let proxy = self.leader_for(&broker_key(b));
                if let Some((_, host, port)) = proxies.iter().find(|(id, _, _)| *id == proxy) {
                    nodes.push((owner_node_id(proxy, b), host.clone(), *port));
                }
            }
        }
        nodes
    }

    /// The node clients should treat as the leader of partition `id`: the
    /// owner node of its writer when `owner_nodes` is on and that writer
    /// writes it, else the proxy the partition's key hashes to. Every
    /// proxy forwards to the current owner, so a client that still uses
    /// an older node is served as well.
    fn partition_leader(&self, id: PartitionId) -> i32 {
        self.owner_node(id)
            .unwrap_or_else(|| self.leader_for(&partition_key(id)))
    }

    /// The owner node of partition `id` (see `client_nodes`), when
    /// `owner_nodes` is on and the partition's owner writes it. A partition
    /// between owners (none yet, or one still recovering it) is led by its
    /// plain proxy node meanwhile: its held batches must not share a
    /// connection with the partitions its next owner already writes, whose
    /// answers would wait behind them.
    pub(crate) fn owner_node(&self, id: PartitionId) -> Option<i32> {
        if !self.config.owner_nodes {
            return None;
        }
        let b = self.view.writing_owner(id)?;
        Some(owner_node_id(
            self.leader_for(&broker_key(b.broker_id)),
            b.broker_id,
        ))
    }

    /// The proxy clients should treat as the leader of `key`.
    fn leader_for(&self, key: &[u8]) -> i32 {
        let mut proxies = self.view.proxies();
        if !proxies.iter().any(|p| p.proxy_id == self.record.proxy_id) {
            proxies.push(self.record.clone());
        }
        rendezvous(&proxies, key).map_or(self.record.proxy_id, |p| p.proxy_id)
    }

    async fn metadata(
        self: &Arc<Self>,
        req: MetadataRequest,
        version: i16,
        client_id: &str,
    ) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        resp.brokers = self
            .client_nodes()
            .into_iter()
            .map(|(id, host, port)| {
                MetadataResponseBroker::default()
                    .with_node_id(id.into())
                    .with_host(s(host))
                    .with_port(port)
            })
            .collect();
        if version >= 2 {
            resp.cluster_id = Some(s(self.cluster_id.clone()));
        }
        if version >= 1 {
            resp.controller_id = self.record.proxy_id.into();
        }
        let auto_create = version < 4 || req.allow_auto_topic_creation;
        let wanted: Vec<(Option<String>, floe_common::Uuid)> = match &req.topics {
            None => self
                .view
                .topics()
                .into_iter()
                .map(|t| (Some(t.name), t.id))
                .collect(),
            Some(ts) if ts.is_empty() && version == 0 => self
                .view
                .topics()
                .into_iter()
                .map(|t| (Some(t.name), t.id))
                .collect(),
            Some(ts) => ts
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id))
                .collect(),
        };
        // Unknown names: a broker creates them (auto-create), and the view
        // shows them a moment later.
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|(n, _)| n.clone())
            .filter(|n| self.view.topic(n).is_none())
            .collect();
        let created_errors = if !missing.is_empty() && auto_create {
            self.auto_create(&missing, client_id).await
        } else {
            Default::default()
        };
        for (name, id) in wanted {
            let mut topic = MetadataResponseTopic::default();
            let found = match &name {
                Some(n) => self
                    .view
                    .topic(n)
                    .ok_or_else(|| match created_errors.get(n) {
                        Some(&c) if c != 0 => ResponseError::try_from_code(c)
                            .unwrap_or(ResponseError::UnknownTopicOrPartition),
                        _ if floe_protocol::rules::valid_topic_name(n).is_err() => {
                            ResponseError::InvalidTopicException
                        }
                        _ if auto_create => ResponseError::LeaderNotAvailable,
                        _ => ResponseError::UnknownTopicOrPartition,
                    }),
                None => self
                    .view
                    .topic_by_id(id)
                    .ok_or(ResponseError::UnknownTopicId),
            };
            topic.name = name.clone().map(|n| TopicName(s(n)));
            match found {
                Err(e) => {
                    topic.error_code = e.code();
                    if version >= 10 {
                        topic.topic_id = id;
                    }
                }
                Ok(t) => {
                    topic.name = Some(TopicName(s(t.name.clone())));
                    if version >= 10 {
                        topic.topic_id = t.id;
                    }
                    for p in 0..t.partitions {
                        let leader = self.partition_leader(PartitionId::new(t.id, p));
                        let part = MetadataResponsePartition::default()
                            .with_partition_index(p)
                            .with_leader_id(leader.into())
                            // Epochs belong to the brokers behind the proxies;
                            // a proxy stays the leader across moves.
                            .with_leader_epoch(-1)
                            .with_replica_nodes(vec![leader.into()])
                            .with_isr_nodes(vec![leader.into()]);
                        topic.partitions.push(part);
                    }
                }
            }
            resp.topics.push(topic);
        }
        resp
    }

    /// Have a broker auto-create `names` (as a Metadata request would) and
    /// wait until the view shows them; the error code of each.
    pub(crate) async fn auto_create(
        &self,
        names: &[String],
        client_id: &str,
    ) -> std::collections::HashMap<String, i16> {
        let mut errors = std::collections::HashMap::new();
        let up = MetadataRequest::default()
            .with_allow_auto_topic_creation(true)
            .with_topics(Some(
                names
                    .iter()
                    .map(|n| {
                        metadata_request::MetadataRequestTopic::default()
                            .with_name(Some(TopicName(s(n.clone()))))
                    })
                    .collect(),
            ));
        match self
            .call::<_, MetadataResponse>(Route::Any, ApiKey::Metadata, 9, client_id, &up)
            .await
        {
            Ok(r) => {
                for t in r.topics {
                    if let Some(n) = t.name {
                        errors.insert(n.0.to_string(), t.error_code);
                    }
                }
            }
            Err(e) => tracing::warn!(error = ?e, "auto-creating topics through a broker failed"),
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && names
                .iter()
                .any(|n| errors.get(n) == Some(&0) && self.view.topic(n).is_none())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        errors
    }

    fn describe_cluster(&self) -> DescribeClusterResponse {
        let mut resp = DescribeClusterResponse::default()
            .with_cluster_id(s(self.cluster_id.clone()))
            .with_controller_id(self.record.proxy_id.into());
        for (id, host, port) in self.client_nodes() {
            resp.brokers.push(
                DescribeClusterBroker::default()
                    .with_broker_id(id.into())
                    .with_host(s(host))
                    .with_port(port),
            );
        }
        resp
    }

    async fn find_coordinator(
        self: &Arc<Self>,
        req: FindCoordinatorRequest,
        version: i16,
        client_id: &str,
        raw: Bytes,
    ) -> FindCoordinatorResponse {
        if self.view.topic(OFFSETS_TOPIC).is_none() && req.key_type == 0 {
            // A broker makes the offsets topic on its first FindCoordinator.
            let r: Result<FindCoordinatorResponse, _> = match self.target(&Route::Any) {
                Ok(b) => {
                    let conn = self.admin_pool.get(&b);
                    let answer = tokio::time::timeout(
                        Duration::from_millis(self.config.forward_timeout_ms),
                        conn.send(bytes::BytesMut::from(&raw[..])),
                    )
                    .await;
                    match answer {
                        Ok(Ok(Ok(f))) => decode_response(ApiKey::FindCoordinator, version, f),
                        _ => Err("no answer".into()),
                    }
                }
                Err(e) => Err(format!("{e:?}")),
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, client = client_id, "could not have the offsets topic made");
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.view.topic(OFFSETS_TOPIC).is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let keys: Vec<StrBytes> = if version >= 4 {
            req.coordinator_keys
        } else {
            vec![req.key]
        };
        let mut resp = FindCoordinatorResponse::default();
        let proxies = self.proxy_brokers();
        for key in keys {
            let mut c = Coordinator::default().with_key(key.clone());
            let found = if req.key_type != 0 {
                Err((
                    ResponseError::CoordinatorNotAvailable,
                    "transaction coordinators are not supported".to_string(),
                ))
            } else {
                self.target(&Route::Group(key.to_string()))
                    .map_err(|e| (e, format!("no coordinator for group {key:?} yet")))
            };
            match found {
                Ok(_) => {
                    let id = self.leader_for(key.as_bytes());
                    let (_, host, port) = proxies
                        .iter()
                        .find(|(p, _, _)| *p == id)
                        .cloned()
                        .unwrap_or((id, self.record.host.clone(), self.record.port));
                    c.node_id = id.into();
                    c.host = s(host);
                    c.port = port;
                }
                Err((e, m)) => {
                    c.node_id = (-1).into();
                    c.port = -1;
                    c.error_code = e.code();
                    c.error_message = Some(s(m));
                }
            }
            resp.coordinators.push(c);
        }
        if version < 4 {
            floe_protocol::rules::single_coordinator(&mut resp);
        }
        resp
    }

    /// DeleteRecords, split by the partitions' owners.
    async fn delete_records(
        self: &Arc<Self>,
        req: DeleteRecordsRequest,
        version: i16,
        client_id: &str,
    ) -> DeleteRecordsResponse {
        let mut resp = DeleteRecordsResponse::default();
        for t in req.topics {
            let mut tr = DeleteRecordsTopicResult::default().with_name(t.name.clone());
            for p in t.partitions {
                let mut pr = DeleteRecordsPartitionResult::default()
                    .with_partition_index(p.partition_index)
                    .with_low_watermark(-1);
                let one = DeleteRecordsRequest::default()
                    .with_timeout_ms(req.timeout_ms)
                    .with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(vec![p.clone()])]);
                let answer = self
                    .ask_owner(
                        (t.name.0.as_str(), p.partition_index),
                        ApiKey::DeleteRecords,
                        version,
                        client_id,
                        &one,
                        |r: DeleteRecordsResponse| {
                            r.topics.into_iter().flat_map(|t| t.partitions).next()
                        },
                    )
                    .await;
                match answer {
                    Ok(x) => pr = x,
                    Err(e) => pr.error_code = e.code(),
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}

impl Proxy {
    /// Ask each group's coordinator about that group alone (`one` builds
    /// the request); the entries of the answers in the groups' order, or
    /// `failed` for a group whose coordinator could not be asked.
    async fn per_group<Req: Encodable, Resp: Decodable, Entry>(
        &self,
        groups: Vec<GroupId>,
        (api, version, client_id): (ApiKey, i16, &str),
        one: impl Fn(&GroupId) -> Req,
        entries: impl Fn(Resp) -> Vec<Entry>,
        code: impl Fn(&Entry) -> i16,
        failed: impl Fn(GroupId, i16) -> Entry,
    ) -> Vec<Entry> {
        let mut out = Vec::new();
        for g in groups {
            let route = Route::Group(g.0.to_string());
            // A group whose coordinator is moving is asked again once it
            // moved, as `forward` does for single-group requests: an
            // answer of NOT_COORDINATOR for OffsetFetch v8+ reaches a
            // librdkafka consumer's application as an error.
            let moved_deadline = tokio::time::Instant::now() + COORDINATOR_MOVE_WAIT;
            let mut changes = self.view.changes();
            loop {
                changes.borrow_and_update();
                match self
                    .call::<_, Resp>(route.clone(), api, version, client_id, &one(&g))
                    .await
                {
                    Ok(x) => {
                        let e = entries(x);
                        if tokio::time::Instant::now() < moved_deadline
                            && e.iter().any(|x| coordinator_moving(code(x)))
                        {
                            tokio::select! {
                                _ = changes.changed() => {}
                                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                            }
                            continue;
                        }
                        out.extend(e);
                    }
                    Err(e) => out.push(failed(g, e.code())),
                }
                break;
            }
        }
        out
    }

    /// The broker writing partition `index` of `topic` now.
    fn owner_of(&self, topic: &str, index: i32) -> Result<BrokerRecord, ResponseError> {
        match self.view.topic(topic) {
            Some(t) if index >= 0 && index < t.partitions => self
                .view
                .owner(PartitionId::new(t.id, index))
                .map(|(b, _)| b)
                .ok_or(ResponseError::NotLeaderOrFollower),
            _ => Err(ResponseError::UnknownTopicOrPartition),
        }
    }

    /// Ask a partition's owner `one` (a request for that partition alone)
    /// and take the partition's answer out of its response.
    #[allow(clippy::too_many_arguments)]
    async fn ask_owner<Req: Encodable, Resp: Decodable, Part>(
        &self,
        (topic, index): (&str, i32),
        api: ApiKey,
        version: i16,
        client_id: &str,
        one: &Req,
        take: impl FnOnce(Resp) -> Option<Part>,
    ) -> Result<Part, ResponseError> {
        let b = self.owner_of(topic, index)?;
        let r = self
            .call_broker::<_, Resp>(&b, api, version, client_id, one)
            .await
            .map_err(|_| ResponseError::NotLeaderOrFollower)?;
        take(r).ok_or(ResponseError::UnknownServerError)
    }

    /// DescribeProducers, asked of each partition's owner.
    async fn describe_producers(
        self: &Arc<Self>,
        req: DescribeProducersRequest,
        version: i16,
        client_id: &str,
    ) -> DescribeProducersResponse {
        use describe_producers_response::{PartitionResponse, TopicResponse};
        let mut resp = DescribeProducersResponse::default();
        for t in req.topics {
            let mut tr = TopicResponse::default().with_name(t.name.clone());
            for index in t.partition_indexes {
                let mut pr = PartitionResponse::default().with_partition_index(index);
                let one = DescribeProducersRequest::default().with_topics(vec![
                    describe_producers_request::TopicRequest::default()
                        .with_name(t.name.clone())
                        .with_partition_indexes(vec![index]),
                ]);
                let answer = self
                    .ask_owner(
                        (t.name.0.as_str(), index),
                        ApiKey::DescribeProducers,
                        version,
                        client_id,
                        &one,
                        |r: DescribeProducersResponse| {
                            r.topics.into_iter().flat_map(|t| t.partitions).next()
                        },
                    )
                    .await;
                match answer {
                    Ok(x) => pr = x,
                    Err(e) => pr.error_code = e.code(),
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }
}
