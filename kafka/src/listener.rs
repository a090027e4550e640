//! The Kafka listener: one task per connection (bounded by max.connections),
//! frames read in order, requests started in order, responses written in
//! order while later requests proceed. A malformed frame or an unknown API
//! closes only its own connection, with a log line saying why.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use floe_protocol::frame::{read_frame, FrameError};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::Encodable;
use floe_protocol::{legacy_api, versions};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::RequestMetrics;

/// A response on its way: `None` for no response (acks=0), an empty frame
/// to close the connection (fault injection).
pub type Pending = BoxFuture<'static, Option<Bytes>>;

/// Limits of a Kafka listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_request_bytes: usize,
    pub max_inflight_per_connection: usize,
}

/// What serves Kafka requests on a listener: the broker's `Node`, or a proxy.
pub trait KafkaService: Send + Sync + 'static {
    /// What the service keeps per client connection.
    type Session: Send + Sync + 'static;
    fn limits(&self) -> Limits;
    fn metrics(&self) -> &RequestMetrics;
    fn session(&self) -> Arc<Self::Session>;
    /// Decode one request frame and start it; the connection's responses go
    /// out in the order their requests were dispatched.
    fn dispatch(
        self: &Arc<Self>,
        session: &Arc<Self::Session>,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send;
}

pub async fn serve<S: KafkaService>(
    listener: TcpListener,
    node: Arc<S>,
    shutdown: CancellationToken,
) {
    let limits = node.limits();
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            node.metrics().connections_rejected.inc();
            tracing::warn!(%peer, limit = limits.max_connections, "connection refused: max.connections reached");
            drop(stream);
            continue;
        };
        let node = node.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            node.metrics().connections.inc();
            if let Err(reason) = connection(stream, node.clone(), shutdown).await {
                tracing::info!(%peer, %reason, "closed connection");
            }
            node.metrics().connections.dec();
            drop(permit);
        });
    }
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum Close {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("unsupported version {1} of {0:?}")]
    UnsupportedVersion(ApiKey, i16),
    #[error("malformed {0:?} v{1} request: {2}")]
    Malformed(ApiKey, i16, String),
    #[error("write failed: {0}")]
    Write(std::io::Error),
}

async fn connection<S: KafkaService>(
    stream: TcpStream,
    node: Arc<S>,
    shutdown: CancellationToken,
) -> Result<(), Close> {
    let _ = stream.set_nodelay(true);
    let limits = node.limits();
    let (mut rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Pending>(limits.max_inflight_per_connection.max(1));
    let writer = tokio::spawn(async move {
        let mut out = BufWriter::with_capacity(256 << 10, wr);
        while let Some(mut pending) = rx.recv().await {
            // Responses go out in request order; what is written stays in the
            // buffer only while the next response is already there to join it.
            let bytes = match (&mut pending).now_or_never() {
                Some(b) => b,
                None => {
                    out.flush().await?;
                    pending.await
                }
            };
            if let Some(bytes) = bytes {
                if bytes.is_empty() {
                    // A dropped response (fault injection): close.
                    out.flush().await?;
                    return Err(std::io::Error::other("response dropped by fault injection"));
                }
                out.write_all(&bytes).await?;
            }
            if rx.is_empty() {
                out.flush().await?;
            }
        }
        out.flush().await
    });
    let max = limits.max_request_bytes;
    let session = node.session();
    let result = loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            f = read_frame(&mut rd, max) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(Close::from(e)),
        };
        match node.dispatch(&session, frame).await {
            Ok(p) => {
                if tx.send(p).await.is_err() {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    // Answer what was accepted before closing.
    match writer.await {
        Ok(Err(e)) if result.is_ok() => Err(Close::Write(e)),
        _ => result,
    }
}

/// Encode a response frame (length, header, body).
pub fn respond<R: Encodable + Send + 'static>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: R,
) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let encoded = header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|_| {
            if legacy_api::is_legacy(api, version) {
                match legacy_api::encode_response(&body, version, &mut buf) {
                    Some(()) => Ok(()),
                    None => Err(std::io::Error::other("no layout for this old version").into()),
                }
            } else {
                body.encode(&mut buf, version)
            }
        });
    if let Err(e) = encoded {
        tracing::error!(?api, version, error = %e, "encoding a response failed");
        return None;
    }
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Some(buf.freeze())
}

/// A request body: through the codec, or, for a version older than the
/// codec's, through `legacy_api`.
pub fn decode_body(api: ApiKey, version: i16, frame: &mut Bytes) -> Result<RequestKind, String> {
    if legacy_api::is_legacy(api, version) {
        legacy_api::decode_request(api, version, frame)
    } else {
        RequestKind::decode(api, frame, version).map_err(|e| e.to_string())
    }
}

pub fn ready(b: Option<Bytes>) -> Pending {
    futures::future::ready(b).boxed()
}

/// The API, version and correlation id at the head of a request frame; an
/// unsupported version of ApiVersions is answered (`Err(Ok(pending))`)
/// with v0 and the supported ranges so the client can retry.
pub fn request_head(
    frame: &Bytes,
    metrics: &RequestMetrics,
) -> Result<(ApiKey, i16, i32), Result<Pending, Close>> {
    if frame.len() < 8 {
        return Err(Err(Close::Malformed(
            ApiKey::ApiVersions,
            -1,
            format!("{}-byte frame", frame.len()),
        )));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| Err(Close::UnknownApi(key)))?;
    if !versions::is_supported(api, version) {
        if api == ApiKey::ApiVersions {
            metrics.error("ApiVersions", "UnsupportedVersion");
            return Err(Ok(ready(respond(
                api,
                0,
                correlation_id,
                floe_protocol::rules::api_versions(0, true),
            ))));
        }
        return Err(Err(Close::UnsupportedVersion(api, version)));
    }
    Ok((api, version, correlation_id))
}

pub fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::DescribeTopicPartitions => "DescribeTopicPartitions",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::ConsumerGroupHeartbeat => "ConsumerGroupHeartbeat",
        ApiKey::ConsumerGroupDescribe => "ConsumerGroupDescribe",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::DescribeProducers => "DescribeProducers",
        _ => "Other",
    }
}
