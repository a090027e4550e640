//! The proxy's Kafka front: requests decoded and answered here (ApiVersions,
//! Metadata, DescribeCluster, FindCoordinator, reads), split and forwarded
//! (Produce, DeleteRecords, multi-group requests), or forwarded raw to the
//! broker that must answer them (a group's coordinator, any broker for topic
//! admin and producer ids). Clients only ever see proxies.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use floe_common::topic::valid_topic_name;
use floe_common::PartitionId;
use floe_kafka::cluster;
use floe_kafka::dispatch::{FromKind, Request, Router};
use floe_kafka::listener::{api_name, Close, KafkaService, Limits, Peer, Pending};
use floe_kafka::RequestMetrics as Metrics;
use floe_meta::schema::BrokerRecord;
use floe_protocol::kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::{Decodable, Encodable};
use floe_protocol::rules::{partition_for, OFFSETS_TOPIC, TXN_TOPIC};
use floe_protocol::ResponseError;
use futures::FutureExt;

use crate::produce::Connection;
use crate::upstream::{decode_response, encode_request, Pool, UpstreamError};
use crate::Proxy;

/// Per client connection: its own connections to coordinators.
#[derive(Default)]
pub struct Session {
    /// The listener the client came in on (Metadata answers with its
    /// addresses).
    pub listener: Arc<str>,
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

    fn session(&self, peer: &Arc<Peer>) -> Arc<Session> {
        Arc::new(Session {
            listener: peer.listener.clone(),
            connection: Arc::new(Connection::on(peer.listener.clone())),
            pool: Pool::new(self.config.internal_tls.clone(), self.config.dialer.clone()),
        })
    }

    /// Each request is counted in its connection's `outstanding` until
    /// answered: a produce answer held back holds back every answer after
    /// it on this connection.
    fn dispatch(
        self: &Arc<Self>,
        session: &Arc<Session>,
        peer: &Arc<Peer>,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send {
        let counted = Outstanding::new(&session.connection);
        let (proxy, session, peer) = (self.clone(), session.clone(), peer.clone());
        async move {
            let pending = ROUTER
                .dispatch(&proxy, &session, &peer, frame, &proxy.requests)
                .await?;
            Ok(async move {
                let answer = pending.await;
                drop(counted);
                answer
            }
            .boxed())
        }
    }
}

/// Where a forwarded request goes.
#[derive(Clone)]
pub(crate) enum Route {
    /// The coordinator of this group.
    Group(String),
    /// The coordinator of this transactional id.
    Txn(String),
    /// Any live broker.
    Any,
}

impl Route {
    /// The internal topic whose partition owners coordinate this route.
    fn topic(&self) -> &'static str {
        match self {
            Route::Txn(_) => TXN_TOPIC,
            _ => OFFSETS_TOPIC,
        }
    }
}

type P = Arc<Proxy>;
type S = Arc<Session>;

/// A produce request: topics a producer writes before asking for metadata
/// are made first (as a broker would), then its batches go to their
/// owners on a task of its own, so a lane moves on even while this
/// client's earlier answers are still awaited.
async fn produce(proxy: P, session: S, r: Request, q: ProduceRequest) -> Result<Pending, Close> {
    let unknown: Vec<String> = q
        .topic_data
        .iter()
        .map(|t| t.name.0.to_string())
        .filter(|n| proxy.view.topic(n).is_none() && valid_topic_name(n).is_ok())
        .filter(|n| {
            r.peer.may_cluster(floe_kafka::acl::Operation::Create)
                || r.peer.may_topic(floe_kafka::acl::Operation::Create, n)
        })
        .collect();
    if !unknown.is_empty() {
        proxy.auto_create(&unknown).await;
    }
    let pending =
        tokio::spawn(proxy.produce(q, r.version, &r.client_id, session.connection.clone()));
    Ok(async move {
        let resp = pending.await.ok().flatten();
        resp.and_then(|resp| r.respond(resp))
    }
    .boxed())
}

/// A request forwarded raw to the broker `route` leads to, its answer
/// returned raw under the client's correlation id; a forward that fails
/// closes the client connection (the client reconnects and asks again).
fn forwarded(proxy: P, session: S, r: Request, route: Route, wait_ms: Option<i32>) -> Pending {
    // A JoinGroup is parked by the coordinator up to its rebalance
    // timeout: wait at least that long for the answer.
    let wait = wait_ms.map_or(proxy.config.forward_timeout_ms, |ms| {
        proxy
            .config
            .forward_timeout_ms
            .max(ms.max(0) as u64 + 5_000)
    });
    async move {
        let name = api_name(r.api);
        match proxy
            .forward(&session, route, r.api, r.version, r.frame.clone(), wait)
            .await
        {
            Ok(frame) => {
                let mut out = bytes::BytesMut::with_capacity(frame.len() + 4);
                out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
                out.extend_from_slice(&r.correlation_id.to_be_bytes());
                out.extend_from_slice(&frame[4..]);
                Some(out.freeze())
            }
            Err(e) => {
                tracing::warn!(api = name, error = %e, "forwarding failed; closing the client connection");
                proxy.requests.error(name, "Forward");
                Some(Bytes::new())
            }
        }
    }
    .boxed()
}

/// A request the authorizer took parts out of: encoded anew from what is
/// left, forwarded, and its answer decoded to get the refused parts back.
fn forwarded_typed<
    Q: Encodable + Send + Sync + 'static,
    R: Decodable + Encodable + Send + 'static,
>(
    proxy: P,
    session: S,
    r: Request,
    q: Q,
    route: Route,
) -> Pending {
    async move {
        let name = api_name(r.api);
        let answer = async {
            let frame = encode_request(r.api, r.version, &r.client_id, &q)?.freeze();
            let wait = proxy.config.forward_timeout_ms;
            let resp = proxy
                .forward(&session, route, r.api, r.version, frame, wait)
                .await?;
            decode_response::<R>(r.api, r.version, resp)
        }
        .await;
        match answer {
            Ok(resp) => r.respond(resp),
            Err(e) => {
                tracing::warn!(api = name, error = %e, "forwarding failed; closing the client connection");
                proxy.requests.error(name, "Forward");
                Some(Bytes::new())
            }
        }
    }
    .boxed()
}

/// Register `api` as forwarded to the broker `route` picks for its request
/// (raw, unless the authorizer took parts of it out).
fn forward<Q, R>(
    router: Router<Proxy, Session>,
    api: ApiKey,
    route: fn(&Q) -> (Route, Option<i32>),
) -> Router<Proxy, Session>
where
    Q: FromKind + Encodable + Send + Sync + 'static,
    R: Decodable + Encodable + Send + 'static,
{
    router.custom(api, move |p: P, s: S, r: Request, q: Q| {
        let (to, wait) = route(&q);
        futures::future::ready(Ok(if r.patched() {
            forwarded_typed::<Q, R>(p, s, r, q, to)
        } else {
            forwarded(p, s, r, to, wait)
        }))
    })
}

fn group(id: &GroupId) -> (Route, Option<i32>) {
    (Route::Group(id.0.to_string()), None)
}

fn any<Q>(_: &Q) -> (Route, Option<i32>) {
    (Route::Any, None)
}

static ROUTER: LazyLock<Router<Proxy, Session>> = LazyLock::new(|| {
    let r = cluster::answers(Router::new())
        .custom(ApiKey::Produce, produce)
        .concurrent(ApiKey::Fetch, |p: P, _: S, r, q: FetchRequest| async move {
            let mut resp = p.fetch(q, r.version, &r.peer).await;
            floe_protocol::responses::fetch_as_kafka_sends(&mut resp);
            resp
        })
        .inline(ApiKey::ListOffsets, |p: P, _: S, r, q: ListOffsetsRequest| async move {
            p.list_offsets(q, r.version).await
        })
        .inline(
            ApiKey::OffsetForLeaderEpoch,
            |p: P, _: S, _, q: OffsetForLeaderEpochRequest| async move {
                p.offset_for_leader_epoch(q).await
            },
        )
        .concurrent(ApiKey::DeleteRecords, |p: P, _: S, r: Request, q: DeleteRecordsRequest| async move {
            p.delete_records(q, r.version, &r.client_id).await
        })
        .concurrent(
            ApiKey::DescribeProducers,
            |p: P, _: S, r: Request, q: DescribeProducersRequest| async move {
                p.describe_producers(q, r.version, &r.client_id).await
            },
        )
        .concurrent(
            ApiKey::DescribeGroups,
            |p: P, _: S, r: Request, q: DescribeGroupsRequest| async move {
                let groups = p
                    .per_group(
                        q.groups.clone(),
                        (r.api, r.version, &r.client_id),
                        |g| {
                            let mut one = q.clone();
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
                DescribeGroupsResponse::default().with_groups(groups)
            },
        )
        .concurrent(
            ApiKey::ConsumerGroupDescribe,
            |p: P, _: S, r: Request, q: ConsumerGroupDescribeRequest| async move {
                let groups = p
                    .per_group(
                        q.group_ids.clone(),
                        (r.api, r.version, &r.client_id),
                        |g| {
                            let mut one = q.clone();
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
                ConsumerGroupDescribeResponse::default().with_groups(groups)
            },
        )
        .concurrent(
            ApiKey::DeleteGroups,
            |p: P, _: S, r: Request, q: DeleteGroupsRequest| async move {
                let results = p
                    .per_group(
                        q.groups_names,
                        (r.api, r.version, &r.client_id),
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
                DeleteGroupsResponse::default().with_results(results)
            },
        )
        .concurrent(
            ApiKey::DescribeTransactions,
            |p: P, _: S, r: Request, q: DescribeTransactionsRequest| async move {
                let mut resp = DescribeTransactionsResponse::default();
                for id in q.transactional_ids {
                    let one = DescribeTransactionsRequest::default()
                        .with_transactional_ids(vec![id.clone()]);
                    let answer = p
                        .call::<_, DescribeTransactionsResponse>(
                            Route::Txn(id.0.to_string()),
                            r.api,
                            r.version,
                            &r.client_id,
                            &one,
                        )
                        .await;
                    match answer {
                        Ok(x) => resp.transaction_states.extend(x.transaction_states),
                        Err(e) => resp.transaction_states.push(
                            describe_transactions_response::TransactionState::default()
                                .with_transactional_id(id)
                                .with_error_code(e.code())
                                .with_producer_id((-1).into())
                                .with_producer_epoch(-1),
                        ),
                    }
                }
                resp
            },
        )
        .concurrent(
            ApiKey::ListTransactions,
            |p: P, _: S, r: Request, q: ListTransactionsRequest| async move {
                let mut resp = ListTransactionsResponse::default();
                for b in p.view.brokers() {
                    match p
                        .call_broker::<_, ListTransactionsResponse>(
                            &b,
                            r.api,
                            r.version,
                            &r.client_id,
                            &q,
                        )
                        .await
                    {
                        Ok(x) => {
                            if x.error_code != 0 {
                                resp.error_code = x.error_code;
                            }
                            resp.transaction_states.extend(x.transaction_states);
                            resp.unknown_state_filters = x.unknown_state_filters;
                        }
                        Err(e) => {
                            tracing::warn!(broker = b.broker_id, error = %e, "ListTransactions: a broker did not answer");
                            resp.error_code = ResponseError::CoordinatorNotAvailable.code();
                        }
                    }
                }
                resp.transaction_states
                    .sort_by(|a, b| a.transactional_id.0.cmp(&b.transactional_id.0));
                resp
            },
        )
        .concurrent(ApiKey::ListGroups, |p: P, _: S, r: Request, q: ListGroupsRequest| async move {
            let mut resp = ListGroupsResponse::default();
            for b in p.view.brokers() {
                match p
                    .call_broker::<_, ListGroupsResponse>(&b, r.api, r.version, &r.client_id, &q)
                    .await
                {
                    Ok(x) => resp.groups.extend(x.groups),
                    Err(e) => {
                        tracing::warn!(broker = b.broker_id, error = %e, "ListGroups: a broker did not answer");
                        resp.error_code = ResponseError::CoordinatorNotAvailable.code();
                    }
                }
            }
            resp
        })
        // OffsetFetch v8+ may name several groups: asked of each group's
        // coordinator; older versions name one and are forwarded.
        .custom(ApiKey::OffsetFetch, |p: P, s: S, r: Request, q: OffsetFetchRequest| async move {
            if r.version < 8 {
                let route = Route::Group(q.group_id.0.to_string());
                return Ok(if r.patched() {
                    forwarded_typed::<_, OffsetFetchResponse>(p, s, r, q, route)
                } else {
                    forwarded(p, s, r, route, None)
                });
            }
            Ok(async move {
                let by_id = q.groups.clone();
                let names = by_id.iter().map(|g| g.group_id.clone()).collect();
                let groups = p
                    .per_group(
                        names,
                        (r.api, r.version, &r.client_id),
                        |g| {
                            let asked = by_id.iter().find(|x| &x.group_id == g).cloned();
                            OffsetFetchRequest::default()
                                .with_require_stable(q.require_stable)
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
                r.respond(OffsetFetchResponse::default().with_groups(groups))
            }
            .boxed())
        });
    let r = forward::<_, JoinGroupResponse>(r, ApiKey::JoinGroup, |q: &JoinGroupRequest| {
        let (route, _) = group(&q.group_id);
        (
            route,
            Some(q.rebalance_timeout_ms.max(q.session_timeout_ms)),
        )
    });
    let r = forward::<_, SyncGroupResponse>(r, ApiKey::SyncGroup, |q: &SyncGroupRequest| {
        group(&q.group_id)
    });
    let r = forward::<_, HeartbeatResponse>(r, ApiKey::Heartbeat, |q: &HeartbeatRequest| {
        group(&q.group_id)
    });
    let r = forward::<_, LeaveGroupResponse>(r, ApiKey::LeaveGroup, |q: &LeaveGroupRequest| {
        group(&q.group_id)
    });
    let r =
        forward::<_, OffsetCommitResponse>(r, ApiKey::OffsetCommit, |q: &OffsetCommitRequest| {
            group(&q.group_id)
        });
    let r =
        forward::<_, OffsetDeleteResponse>(r, ApiKey::OffsetDelete, |q: &OffsetDeleteRequest| {
            group(&q.group_id)
        });
    let r = forward::<_, ConsumerGroupHeartbeatResponse>(
        r,
        ApiKey::ConsumerGroupHeartbeat,
        |q: &ConsumerGroupHeartbeatRequest| group(&q.group_id),
    );
    // A transactional id's producer id comes from its coordinator, which
    // may first wait for the id's open transaction to be aborted.
    let r = forward::<_, InitProducerIdResponse>(
        r,
        ApiKey::InitProducerId,
        |q: &InitProducerIdRequest| match q.transactional_id.as_ref().filter(|t| !t.is_empty()) {
            Some(id) => (Route::Txn(id.0.to_string()), Some(TXN_WAIT_MS)),
            None => (Route::Any, None),
        },
    );
    let r = forward::<_, AddPartitionsToTxnResponse>(
        r,
        ApiKey::AddPartitionsToTxn,
        |q: &AddPartitionsToTxnRequest| {
            let id = q
                .transactions
                .first()
                .map_or(&q.v3_and_below_transactional_id, |t| &t.transactional_id);
            (Route::Txn(id.0.to_string()), None)
        },
    );
    let r = forward::<_, AddOffsetsToTxnResponse>(
        r,
        ApiKey::AddOffsetsToTxn,
        |q: &AddOffsetsToTxnRequest| (Route::Txn(q.transactional_id.0.to_string()), None),
    );
    // Answered once the transaction's markers are durable.
    let r = forward::<_, EndTxnResponse>(r, ApiKey::EndTxn, |q: &EndTxnRequest| {
        (
            Route::Txn(q.transactional_id.0.to_string()),
            Some(TXN_WAIT_MS),
        )
    });
    let r = forward::<_, TxnOffsetCommitResponse>(
        r,
        ApiKey::TxnOffsetCommit,
        |q: &TxnOffsetCommitRequest| group(&q.group_id),
    );
    let r = forward::<_, CreateTopicsResponse>(r, ApiKey::CreateTopics, any::<CreateTopicsRequest>);
    let r = forward::<_, DeleteTopicsResponse>(r, ApiKey::DeleteTopics, any::<DeleteTopicsRequest>);
    let r = forward::<_, CreatePartitionsResponse>(
        r,
        ApiKey::CreatePartitions,
        any::<CreatePartitionsRequest>,
    );
    let r = forward::<_, DescribeConfigsResponse>(
        r,
        ApiKey::DescribeConfigs,
        any::<DescribeConfigsRequest>,
    );
    let r = forward::<_, AlterConfigsResponse>(r, ApiKey::AlterConfigs, any::<AlterConfigsRequest>);
    forward::<_, IncrementalAlterConfigsResponse>(
        r,
        ApiKey::IncrementalAlterConfigs,
        any::<IncrementalAlterConfigsRequest>,
    )
});

/// How long a transaction coordinator may take to answer EndTxn or
/// InitProducerId (it waits up to 10 s for a transaction's markers).
const TXN_WAIT_MS: i32 = 10_000;

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
        ApiKey::TxnOffsetCommit => decode_response::<TxnOffsetCommitResponse>(api, version, f)
            .is_ok_and(|r| {
                r.topics
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| moved(p.error_code))
            }),
        ApiKey::InitProducerId => decode_response::<InitProducerIdResponse>(api, version, f)
            .is_ok_and(|r| moved(r.error_code)),
        ApiKey::AddOffsetsToTxn => decode_response::<AddOffsetsToTxnResponse>(api, version, f)
            .is_ok_and(|r| moved(r.error_code)),
        ApiKey::EndTxn => {
            decode_response::<EndTxnResponse>(api, version, f).is_ok_and(|r| moved(r.error_code))
        }
        ApiKey::AddPartitionsToTxn => {
            decode_response::<AddPartitionsToTxnResponse>(api, version, f).is_ok_and(|r| {
                moved(r.error_code)
                    || r.results_by_topic_v3_and_below
                        .iter()
                        .chain(
                            r.results_by_transaction
                                .iter()
                                .flat_map(|t| &t.topic_results),
                        )
                        .flat_map(|t| &t.results_by_partition)
                        .any(|p| moved(p.partition_error_code))
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
            Route::Group(g) => self.coordinator_owner(OFFSETS_TOPIC, g),
            Route::Txn(id) => self.coordinator_owner(TXN_TOPIC, id),
        }
    }

    /// The broker coordinating `key` now: the owner of its partition of
    /// the internal `topic`.
    pub(crate) fn coordinator_owner(
        &self,
        topic: &str,
        key: &str,
    ) -> Result<BrokerRecord, ResponseError> {
        if key.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let t = self
            .view
            .topic(topic)
            .ok_or(ResponseError::CoordinatorNotAvailable)?;
        let p = PartitionId::new(t.id, partition_for(key, t.partitions));
        self.view
            .owner(p)
            .map(|(b, _)| b)
            .ok_or(ResponseError::CoordinatorNotAvailable)
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
                    if self.view.topic(route.topic()).is_none() =>
                {
                    self.target(&Route::Any)
                }
                t => t,
            };
            match target {
                Ok(b) => {
                    let conn = session.pool.get(&b);
                    let rx = conn
                        .send_parts(floe_protocol::produce_frame::FrameParts::one(frame.clone()));
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

/// The APIs the proxy answers.
pub fn apis() -> Vec<ApiKey> {
    ROUTER.apis().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_advertised_api_has_a_handler_and_no_other() {
        let mut apis = super::apis();
        apis.sort_by_key(|a| *a as i16);
        let mut advertised: Vec<_> = floe_protocol::versions::IMPLEMENTED
            .iter()
            .map(|(a, _, _)| *a)
            .collect();
        advertised.sort_by_key(|a| *a as i16);
        assert_eq!(apis, advertised);
    }
}
