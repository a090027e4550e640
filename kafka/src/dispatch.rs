//! Request dispatch as a table, for any tier: a handler registered per API
//! (typed by its request), the frame decoded once here (head, header, body,
//! old versions through `legacy_api`), each answer encoded and timed here.
//! A handler is one of three kinds: `inline` (its answer is built before
//! the connection's next request starts: cheap answers, and those whose
//! order with later requests matters), `concurrent` (built while later
//! requests proceed; answers still go out in request order), or `custom`
//! (it returns the pending answer itself: no answer for acks=0, a frame
//! forwarded raw).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::Encodable;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::Instrument;

use crate::listener::{api_name, decode_frame, ready, request_head, respond, Close, Peer, Pending};
use crate::metrics::RequestMetrics;

/// A request as its handler gets it (the body comes typed, beside it).
#[derive(Clone)]
pub struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
    /// The frame as received, header and body: what a proxy forwards.
    pub frame: Bytes,
    /// Who sent it, on which listener.
    pub peer: Arc<Peer>,
    /// Parts the authorizer took out, to be put back with their errors
    /// into the answer (`authz::guard`).
    patch: Arc<std::sync::Mutex<Option<crate::authz::Patch>>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("api", &self.api)
            .field("version", &self.version)
            .field("correlation_id", &self.correlation_id)
            .field("client_id", &self.client_id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl Request {
    /// The answer `body`, encoded for this request (with the parts the
    /// authorizer refused put back).
    pub fn respond<R: Encodable + Send + 'static>(&self, mut body: R) -> Option<Bytes> {
        if let Some(p) = self.patch.lock().unwrap().take() {
            p(&mut body);
        }
        respond(self.api, self.version, self.correlation_id, body)
    }

    /// Whether parts of the request were taken out (its frame is then not
    /// what the handler was given).
    pub fn patched(&self) -> bool {
        self.patch.lock().unwrap().is_some()
    }
}

/// A request body of one API, taken out of the decoded `RequestKind`.
pub trait FromKind: Sized {
    fn from_kind(kind: RequestKind) -> Option<Self>;
}

macro_rules! from_kind {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        $(impl FromKind for $ty {
            fn from_kind(kind: RequestKind) -> Option<Self> {
                match kind {
                    RequestKind::$variant(r) => Some(r),
                    _ => None,
                }
            }
        })*
    };
}

from_kind!(
    Produce => ProduceRequest,
    Fetch => FetchRequest,
    ListOffsets => ListOffsetsRequest,
    Metadata => MetadataRequest,
    OffsetCommit => OffsetCommitRequest,
    OffsetFetch => OffsetFetchRequest,
    FindCoordinator => FindCoordinatorRequest,
    JoinGroup => JoinGroupRequest,
    Heartbeat => HeartbeatRequest,
    LeaveGroup => LeaveGroupRequest,
    SyncGroup => SyncGroupRequest,
    DescribeGroups => DescribeGroupsRequest,
    ListGroups => ListGroupsRequest,
    ApiVersions => ApiVersionsRequest,
    CreateTopics => CreateTopicsRequest,
    DeleteTopics => DeleteTopicsRequest,
    DeleteRecords => DeleteRecordsRequest,
    InitProducerId => InitProducerIdRequest,
    OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
    DescribeConfigs => DescribeConfigsRequest,
    AlterConfigs => AlterConfigsRequest,
    CreatePartitions => CreatePartitionsRequest,
    DeleteGroups => DeleteGroupsRequest,
    IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
    OffsetDelete => OffsetDeleteRequest,
    DescribeCluster => DescribeClusterRequest,
    DescribeProducers => DescribeProducersRequest,
    ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest,
    ConsumerGroupDescribe => ConsumerGroupDescribeRequest,
    DescribeTopicPartitions => DescribeTopicPartitionsRequest,
    SaslHandshake => SaslHandshakeRequest,
    SaslAuthenticate => SaslAuthenticateRequest,
    DescribeAcls => DescribeAclsRequest,
    CreateAcls => CreateAclsRequest,
    DeleteAcls => DeleteAclsRequest,
    DescribeUserScramCredentials => DescribeUserScramCredentialsRequest,
    AlterUserScramCredentials => AlterUserScramCredentialsRequest,
    AddPartitionsToTxn => AddPartitionsToTxnRequest,
    AddOffsetsToTxn => AddOffsetsToTxnRequest,
    EndTxn => EndTxnRequest,
    TxnOffsetCommit => TxnOffsetCommitRequest,
    WriteTxnMarkers => WriteTxnMarkersRequest,
    DescribeTransactions => DescribeTransactionsRequest,
    ListTransactions => ListTransactionsRequest,
);

type Handler<S, X> = Box<
    dyn Fn(Arc<S>, Arc<X>, Request, RequestKind) -> BoxFuture<'static, Result<Pending, Close>>
        + Send
        + Sync,
>;

/// The handlers of a tier `S` with per-connection state `X`, by API.
pub struct Router<S, X> {
    table: HashMap<ApiKey, Handler<S, X>>,
}

/// The body of a request dispatched under its own API.
fn body<Q: FromKind>(r: &Request, kind: RequestKind) -> Result<Q, Close> {
    Q::from_kind(kind)
        .ok_or_else(|| Close::Malformed(r.api, r.version, "decoded as another API".to_string()))
}

impl<S: Send + Sync + 'static, X: Send + Sync + 'static> Default for Router<S, X> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Send + Sync + 'static, X: Send + Sync + 'static> Router<S, X> {
    /// A table that answers ApiVersions (the same on every tier), and
    /// SaslHandshake and SaslAuthenticate with ILLEGAL_SASL_STATE: they
    /// reach the table only on a listener without SASL, or once the
    /// connection authenticated (a SASL listener's gate takes them before).
    pub fn new() -> Self {
        Self {
            table: HashMap::new(),
        }
        .inline(
            ApiKey::ApiVersions,
            |_, _, r, _: ApiVersionsRequest| async move {
                floe_protocol::rules::api_versions(r.version, false)
            },
        )
        .inline(
            ApiKey::SaslHandshake,
            |_, _, _, _: SaslHandshakeRequest| async move {
                SaslHandshakeResponse::default()
                    .with_error_code(floe_protocol::ResponseError::IllegalSaslState.code())
            },
        )
        .inline(
            ApiKey::SaslAuthenticate,
            |_, _, _, _: SaslAuthenticateRequest| async move {
                SaslAuthenticateResponse::default()
                    .with_error_code(floe_protocol::ResponseError::IllegalSaslState.code())
                    .with_error_message(Some(
                        floe_protocol::kafka_protocol::protocol::StrBytes::from_static_str(
                            "this listener does not authenticate with SASL",
                        ),
                    ))
            },
        )
    }

    fn add(mut self, api: ApiKey, h: Handler<S, X>) -> Self {
        let replaced = self.table.insert(api, h);
        assert!(replaced.is_none(), "two handlers for {api:?}");
        self
    }

    /// `api`'s answer is built before the connection's next request starts.
    pub fn inline<Q, R, F, Fut>(self, api: ApiKey, f: F) -> Self
    where
        Q: FromKind + Send + 'static,
        R: Encodable + Send + 'static,
        F: Fn(Arc<S>, Arc<X>, Request, Q) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.add(
            api,
            Box::new(move |s, x, r, kind| {
                let q = body::<Q>(&r, kind);
                let answer = q.map(|q| f(s, x, r.clone(), q));
                async move {
                    let resp = answer?.await;
                    Ok(ready(r.respond(resp)))
                }
                .boxed()
            }),
        )
    }

    /// `api`'s answer is built while the connection's later requests
    /// proceed (answers still go out in request order).
    pub fn concurrent<Q, R, F, Fut>(self, api: ApiKey, f: F) -> Self
    where
        Q: FromKind + Send + 'static,
        R: Encodable + Send + 'static,
        F: Fn(Arc<S>, Arc<X>, Request, Q) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        self.add(
            api,
            Box::new(move |s, x, r, kind| {
                let q = body::<Q>(&r, kind);
                let answer = q.map(|q| f(s, x, r.clone(), q));
                async move {
                    let answer = answer?;
                    Ok(async move { r.respond(answer.await) }.boxed())
                }
                .boxed()
            }),
        )
    }

    /// `api`'s handler returns the pending answer itself (its in-order part
    /// is what it does before returning).
    pub fn custom<Q, F, Fut>(self, api: ApiKey, f: F) -> Self
    where
        Q: FromKind + Send + 'static,
        F: Fn(Arc<S>, Arc<X>, Request, Q) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Pending, Close>> + Send + 'static,
    {
        self.add(
            api,
            Box::new(move |s, x, r, kind| match body::<Q>(&r, kind) {
                Ok(q) => f(s, x, r, q).boxed(),
                Err(e) => futures::future::ready(Err(e)).boxed(),
            }),
        )
    }

    /// The APIs this table answers.
    pub fn apis(&self) -> impl Iterator<Item = ApiKey> + '_ {
        self.table.keys().copied()
    }

    /// Decode one frame, run its handler, and time the request until its
    /// answer is ready. An API without a handler closes the connection, as
    /// Kafka does for a request it does not know.
    pub async fn dispatch(
        &self,
        s: &Arc<S>,
        x: &Arc<X>,
        peer: &Arc<Peer>,
        frame: Bytes,
        metrics: &RequestMetrics,
    ) -> Result<Pending, Close> {
        let (api, version, correlation_id) = match request_head(&frame, metrics) {
            Ok(head) => head,
            Err(answer) => return answer,
        };
        let timer = metrics.timer(api_name(api));
        let (header, kind) = decode_frame(&frame, api, version)?;
        let handler = self
            .table
            .get(&api)
            .ok_or(Close::UnsupportedVersion(api, version))?;
        let mut request = Request {
            api,
            version,
            correlation_id,
            client_id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
            frame,
            peer: peer.clone(),
            patch: Default::default(),
        };
        let kind = match crate::authz::guard(peer, version, kind) {
            crate::authz::Guarded::Pass(kind, patch) => {
                request.patch = Arc::new(std::sync::Mutex::new(patch));
                kind
            }
            crate::authz::Guarded::Deny(answer) => {
                let bytes = answer.encode_for(&request);
                return Ok(async move {
                    drop(timer);
                    bytes
                }
                .boxed());
            }
        };
        let first_records = match &kind {
            RequestKind::Produce(p) => p
                .topic_data
                .first()
                .and_then(|t| t.partition_data.first())
                .and_then(|p| p.records.as_ref()),
            _ => None,
        };
        let span = crate::trace::request_span(
            api_name(api),
            version,
            &request.client_id,
            &header.unknown_tagged_fields,
            first_records,
        );
        let pending = handler(s.clone(), x.clone(), request, kind)
            .instrument(span.clone())
            .await?;
        Ok(async move {
            let answer = pending.await;
            drop(timer);
            answer
        }
        .instrument(span)
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use floe_protocol::kafka_protocol::protocol::Decodable;
    use floe_protocol::kafka_protocol::protocol::StrBytes;

    fn frame<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &R) -> Bytes {
        let mut b = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("c1")))
            .encode(&mut b, api.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        b.freeze()
    }

    /// A tier that counts what it was asked.
    #[derive(Default)]
    struct Tier {
        seen: std::sync::Mutex<Vec<(ApiKey, i16, String)>>,
    }

    fn router() -> Router<Tier, ()> {
        Router::new()
            .inline(
                ApiKey::Metadata,
                |t: Arc<Tier>, _, r, q: MetadataRequest| async move {
                    t.seen.lock().unwrap().push((r.api, r.version, r.client_id));
                    MetadataResponse::default()
                        .with_throttle_time_ms(q.topics.map_or(-1, |t| t.len() as i32))
                },
            )
            .custom(ApiKey::Produce, |_, _, _, _: ProduceRequest| async move {
                // acks=0: no answer at all.
                Ok(ready(None))
            })
    }

    fn decode_answer<R: Decodable>(api: ApiKey, version: i16, b: Bytes) -> (i32, R) {
        let mut b = b.slice(4..);
        let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).unwrap();
        (h.correlation_id, R::decode(&mut b, version).unwrap())
    }

    #[tokio::test]
    async fn each_api_goes_to_its_handler_typed_and_timed() {
        let (t, x, m) = (
            Arc::new(Tier::default()),
            Arc::new(()),
            RequestMetrics::with_prefix("t"),
        );
        let peer = Arc::new(Peer::local());
        let r = router();
        let req = MetadataRequest::default().with_topics(Some(vec![Default::default(); 3]));
        let answer = r
            .dispatch(&t, &x, &peer, frame(ApiKey::Metadata, 9, 77, &req), &m)
            .await
            .unwrap()
            .await
            .unwrap();
        let (cid, resp): (i32, MetadataResponse) = decode_answer(ApiKey::Metadata, 9, answer);
        assert_eq!((cid, resp.throttle_time_ms), (77, 3));
        assert_eq!(
            *t.seen.lock().unwrap(),
            vec![(ApiKey::Metadata, 9, "c1".to_string())]
        );
        // ApiVersions is in every table.
        let answer = r
            .dispatch(
                &t,
                &x,
                &peer,
                frame(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default()),
                &m,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let (_, v): (i32, ApiVersionsResponse) = decode_answer(ApiKey::ApiVersions, 3, answer);
        assert!(v
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16));
        // A custom handler may give no answer.
        let p = r
            .dispatch(
                &t,
                &x,
                &peer,
                frame(ApiKey::Produce, 9, 6, &ProduceRequest::default()),
                &m,
            )
            .await
            .unwrap()
            .await;
        assert_eq!(p, None);
        let text = m.encode();
        assert!(
            text.contains("t_kafka_requests_total{api=\"Metadata\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("t_kafka_requests_total{api=\"Produce\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_api_without_a_handler_or_a_bad_body_closes_the_connection() {
        let (t, x, m) = (
            Arc::new(Tier::default()),
            Arc::new(()),
            RequestMetrics::with_prefix("t"),
        );
        let peer = Arc::new(Peer::local());
        let r = router();
        let e = r
            .dispatch(
                &t,
                &x,
                &peer,
                frame(ApiKey::ListGroups, 4, 1, &ListGroupsRequest::default()),
                &m,
            )
            .await
            .err()
            .unwrap();
        assert!(
            matches!(e, Close::UnsupportedVersion(ApiKey::ListGroups, 4)),
            "{e}"
        );
        let mut f = BytesMut::from(&frame(ApiKey::Metadata, 9, 2, &MetadataRequest::default())[..]);
        f.put_u8(0xff);
        f.truncate(14);
        let e = r
            .dispatch(&t, &x, &peer, f.freeze(), &m)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, Close::Malformed(ApiKey::Metadata, 9, _)), "{e}");
    }
}
