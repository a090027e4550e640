//! The Kafka listener: one task per connection (bounded by max.connections),
//! plaintext or TLS (`tls.rs`; a client that stalls in the handshake is
//! dropped after `HANDSHAKE_TIMEOUT`), frames read in order, requests
//! started in order, responses written in order while later requests
//! proceed. Each connection knows its `Peer`: the listener it came in on,
//! its address and its principal (a client certificate's, through the
//! mapping rules, or `User:ANONYMOUS`). A malformed frame or an unknown API
//! closes only its own connection, with a log line saying why.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use floe_protocol::frame::{read_frame, FrameError};
use floe_protocol::kafka_protocol::messages::*;
use floe_protocol::kafka_protocol::protocol::{Decodable, Encodable};
use floe_protocol::{legacy_api, versions};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::metrics::RequestMetrics;
use crate::tls::{TlsServer, TlsSettings};

/// How long a TLS client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest frame a client may send before it has authenticated.
pub const SASL_MAX_RECEIVE: usize = 512 << 10;

/// The principal of a client that has not authenticated.
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// How clients connect to a listener (Kafka's security protocols).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    pub fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }
}

/// One Kafka listener of a process, as configured (`listeners` of
/// `[broker]` or `[proxy]`, as Kafka's `listeners` with
/// `listener.security.protocol.map`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The listener's name; Metadata answers a client with the addresses
    /// of the listener it came in on.
    pub name: String,
    /// Address to bind.
    pub listen: SocketAddr,
    /// host:port given to clients (default: `listen`).
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// TLS settings (SSL and SASL_SSL; default: the process's `tls`).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// SASL mechanisms offered (SASL_PLAINTEXT and SASL_SSL; Kafka's
    /// `sasl.enabled.mechanisms`; default: PLAIN, SCRAM-SHA-256,
    /// SCRAM-SHA-512).
    #[serde(default)]
    pub sasl_mechanisms: Option<Vec<String>>,
    /// How long a SASL session lasts before the client must
    /// re-authenticate (Kafka's `connections.max.reauth.ms`; default: for
    /// ever).
    #[serde(default)]
    pub reauth_ms: Option<u64>,
    /// The cluster-internal listener (mutual TLS with the cluster CA,
    /// `[internal_tls]`): its clients are Floe's own processes, trusted
    /// with every request (their own checks were made where the client
    /// is).
    #[serde(skip)]
    pub internal: bool,
}

/// The SASL mechanisms of a listener with none configured.
pub const DEFAULT_MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A listener ready to serve: its name, protocol, TLS and SASL.
#[derive(Clone, Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub protocol: SecurityProtocol,
    pub tls: Option<Arc<TlsServer>>,
    pub sasl: Option<Arc<crate::authn::SaslSettings>>,
    /// The ACLs every request on it is checked against (None: no checks).
    pub authorizer: Option<Arc<crate::acl::Authorizer>>,
    /// Floe's own processes only (see `ListenerConfig::internal`).
    pub internal: bool,
}

impl Listener {
    /// A plaintext listener named PLAINTEXT.
    pub fn plaintext() -> Self {
        Self {
            name: Arc::from("PLAINTEXT"),
            protocol: SecurityProtocol::Plaintext,
            tls: None,
            sasl: None,
            authorizer: None,
            internal: false,
        }
    }
}

/// The client at the other end of a connection.
#[derive(Debug)]
pub struct Peer {
    /// The listener it connected to.
    pub listener: Arc<str>,
    pub protocol: SecurityProtocol,
    pub addr: SocketAddr,
    principal: RwLock<Arc<str>>,
    /// The ACLs its requests are checked against (None: no checks).
    pub authorizer: Option<Arc<crate::acl::Authorizer>>,
    /// A Floe process on the internal listener: trusted.
    pub internal: bool,
}

impl Peer {
    pub fn new(listener: &Listener, addr: SocketAddr, principal: Option<String>) -> Self {
        Self {
            listener: listener.name.clone(),
            protocol: listener.protocol,
            addr,
            principal: RwLock::new(Arc::from(
                principal
                    .map(|p| format!("User:{p}"))
                    .unwrap_or_else(|| ANONYMOUS.to_string()),
            )),
            authorizer: listener.authorizer.clone(),
            internal: listener.internal,
        }
    }

    /// A peer for tests and in-process callers.
    pub fn local() -> Self {
        Self::new(
            &Listener::plaintext(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            None,
        )
    }

    /// The principal the connection acts as ("User:alice").
    pub fn principal(&self) -> Arc<str> {
        self.principal.read().unwrap().clone()
    }

    /// Set once the client authenticated (SASL).
    pub fn set_principal(&self, principal: &str) {
        *self.principal.write().unwrap() = Arc::from(principal);
    }
}

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
    fn session(&self, peer: &Arc<Peer>) -> Arc<Self::Session>;
    /// Decode one request frame and start it; the connection's responses go
    /// out in the order their requests were dispatched.
    fn dispatch(
        self: &Arc<Self>,
        session: &Arc<Self::Session>,
        peer: &Arc<Peer>,
        frame: Bytes,
    ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send;
}

/// Serve a plaintext listener named PLAINTEXT until `shutdown`.
pub async fn serve<S: KafkaService>(
    listener: TcpListener,
    node: Arc<S>,
    shutdown: CancellationToken,
) {
    serve_on(listener, Listener::plaintext(), node, shutdown).await
}

/// Serve `listener` as `spec` (its name, protocol and TLS) until `shutdown`.
pub async fn serve_on<S: KafkaService>(
    listener: TcpListener,
    spec: Listener,
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
        let spec = spec.clone();
        tokio::spawn(async move {
            node.metrics().connections.inc();
            if let Err(reason) = accepted(stream, peer, &spec, node.clone(), shutdown).await {
                tracing::info!(%peer, listener = %spec.name, %reason, "closed connection");
            }
            node.metrics().connections.dec();
            drop(permit);
        });
    }
}

/// Serve one plaintext connection over any stream (a simulation's
/// network, whose streams are not the OS's), as the PLAINTEXT listener
/// serves an accepted one.
pub async fn serve_connection<S, R, W>(
    rd: R,
    wr: W,
    addr: SocketAddr,
    node: Arc<S>,
    shutdown: CancellationToken,
) -> Result<(), Close>
where
    S: KafkaService,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let spec = Listener::plaintext();
    let peer = Arc::new(Peer::new(&spec, addr, None));
    connection(rd, wr, peer, None, node, shutdown).await
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
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("authentication failed: {0}")]
    Authentication(String),
}

/// A connection accepted on `spec`: the TLS handshake if the listener has
/// TLS (bounded by `HANDSHAKE_TIMEOUT`), then its requests.
async fn accepted<S: KafkaService>(
    stream: TcpStream,
    addr: SocketAddr,
    spec: &Listener,
    node: Arc<S>,
    shutdown: CancellationToken,
) -> Result<(), Close> {
    let _ = stream.set_nodelay(true);
    let Some(tls) = spec.tls.as_ref().filter(|_| spec.protocol.tls()) else {
        let peer = Arc::new(Peer::new(spec, addr, None));
        let (rd, wr) = stream.into_split();
        return connection(rd, wr, peer, spec.sasl.clone(), node, shutdown).await;
    };
    let handshake = tls.acceptor().accept(stream);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Close::Handshake(e.to_string())),
        Err(_) => {
            return Err(Close::Handshake(format!(
                "not finished within {HANDSHAKE_TIMEOUT:?}"
            )))
        }
    };
    let certs = stream.get_ref().1.peer_certificates();
    let principal = tls.principal(certs);
    if certs.is_some_and(|c| !c.is_empty()) && principal.is_none() {
        return Err(Close::Authentication(
            "no principal mapping rule applies to the client certificate".into(),
        ));
    }
    let peer = Arc::new(Peer::new(spec, addr, principal));
    let (rd, wr) = tokio::io::split(stream);
    connection(rd, wr, peer, spec.sasl.clone(), node, shutdown).await
}

async fn connection<S, R, W>(
    mut rd: R,
    wr: W,
    peer: Arc<Peer>,
    sasl: Option<Arc<crate::authn::SaslSettings>>,
    node: Arc<S>,
    shutdown: CancellationToken,
) -> Result<(), Close>
where
    S: KafkaService,
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let limits = node.limits();
    // A SASL listener without SASL settings lets nobody in.
    let mut auth = peer.protocol.sasl().then(|| {
        crate::authn::Authenticator::new(sasl.unwrap_or_else(|| {
            Arc::new(crate::authn::SaslSettings {
                mechanisms: Vec::new(),
                reauth: None,
                credentials: Arc::new(crate::sasl::UserStore::default()),
                oauth: None,
                secret: crate::sasl::process_secret(),
            })
        }))
    });
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
    let session = node.session(&peer);
    let result = loop {
        // Before authentication frames are held to Kafka's
        // sasl.server.max.receive.size.
        let max = match &auth {
            Some(a) if !a.authenticated() => limits.max_request_bytes.min(SASL_MAX_RECEIVE),
            _ => limits.max_request_bytes,
        };
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            f = read_frame(&mut rd, max) => f,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(Close::from(e)),
        };
        if let Some(a) = auth.as_mut() {
            use crate::authn::Gate;
            match a.gate(&frame, &peer, node.metrics()) {
                Gate::Pass => {}
                Gate::Answer(b) => {
                    if tx.send(ready(Some(b))).await.is_err() {
                        break Ok(());
                    }
                    continue;
                }
                Gate::AnswerAndClose(b, why) => {
                    let _ = tx.send(ready(Some(b))).await;
                    break Err(why);
                }
                Gate::Close(why) => break Err(why),
            }
        }
        match node.dispatch(&session, &peer, frame).await {
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
        // `{:#}`: the codec's error with its causes ("... body: Array
        // length 1701143552 exceeds the 3 bytes left").
        RequestKind::decode(api, frame, version).map_err(|e| format!("{e:#}"))
    }
}

/// The header and body of a request frame whose head [`request_head`]
/// accepted as `api` at `version`: what every tier's dispatch decodes
/// before a handler runs (and what the `kafka_request` fuzz target feeds).
pub fn decode_frame(
    frame: &Bytes,
    api: ApiKey,
    version: i16,
) -> Result<(RequestHeader, RequestKind), Close> {
    let mut rest = frame.clone();
    let header = RequestHeader::decode(&mut rest, api.request_header_version(version))
        .map_err(|e| Close::Malformed(api, version, format!("{e:#}")))?;
    let kind =
        decode_body(api, version, &mut rest).map_err(|e| Close::Malformed(api, version, e))?;
    Ok((header, kind))
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
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        _ => "Other",
    }
}

/// Why a process's listeners cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("listener {name}: {source}")]
    Tls {
        name: String,
        source: crate::tls::TlsError,
    },
    #[error("binding listener {name} on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A process's Kafka listeners: the one of its `--listen` flag (named after
/// its protocol: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) first, then the
/// configured ones; a TLS listener without TLS settings of its own takes
/// the process's. Names and addresses must be distinct.
pub fn plan(
    first: ListenerConfig,
    tls: Option<&TlsSettings>,
    extra: &[ListenerConfig],
) -> Result<Vec<ListenerConfig>, ListenerError> {
    let mut first = first;
    if first.name.is_empty() {
        first.name = first.protocol.name().to_string();
    }
    let mut all = vec![first];
    all.extend(extra.iter().cloned());
    for (i, l) in all.iter_mut().enumerate() {
        let bad = |reason: String| ListenerError::Invalid {
            name: l.name.clone(),
            reason,
        };
        if l.name.is_empty()
            || !l
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "a name of letters, digits, '_' and '-' is needed".into()
            ));
        }
        if l.protocol.tls() && l.tls.is_none() {
            l.tls = Some(tls.cloned().ok_or_else(|| {
                bad(format!(
                    "{} needs TLS settings (`tls` of the listener or of the process)",
                    l.protocol.name()
                ))
            })?);
        }
        if !l.protocol.tls() && l.tls.is_some() && i > 0 {
            return Err(bad(format!(
                "has TLS settings but its protocol is {}",
                l.protocol.name()
            )));
        }
        advertised(l)?;
        if let Some(names) = &l.sasl_mechanisms {
            if let Some(unknown) = names
                .iter()
                .find(|n| crate::sasl::Mechanism::parse(n).is_none())
            {
                return Err(bad(format!(
                    "unknown SASL mechanism {unknown:?} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER)"
                )));
            }
        }
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[..i] {
            if a.name == b.name {
                return Err(ListenerError::Invalid {
                    name: a.name.clone(),
                    reason: "two listeners have this name".into(),
                });
            }
            if a.listen == b.listen {
                return Err(ListenerError::Invalid {
                    name: a.name.clone(),
                    reason: format!("{} is also listener {}'s address", a.listen, b.name),
                });
            }
        }
    }
    Ok(all)
}

/// The host and port clients are given for listener `l`.
pub fn advertised(l: &ListenerConfig) -> Result<(String, i32), ListenerError> {
    let text = l.advertise.clone().unwrap_or_else(|| l.listen.to_string());
    let bad = |reason: String| ListenerError::Invalid {
        name: l.name.clone(),
        reason,
    };
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("advertise must be HOST:PORT, got {text:?}")))?;
    let port = port
        .parse()
        .map_err(|_| bad(format!("advertise must be HOST:PORT, got {text:?}")))?;
    Ok((host.to_string(), port))
}

/// The advertised address of every listener, for a process's registration.
pub fn endpoints(
    listeners: &[ListenerConfig],
) -> Result<Vec<floe_meta::schema::Endpoint>, ListenerError> {
    listeners
        .iter()
        .map(|l| {
            let (host, port) = advertised(l)?;
            Ok(floe_meta::schema::Endpoint {
                name: l.name.clone(),
                host,
                port,
            })
        })
        .collect()
}

/// Bind `listeners` (loading their TLS files; their reloaders run until
/// `shutdown`); SASL listeners check logins against `credentials`.
pub async fn bind(
    listeners: &[ListenerConfig],
    credentials: Arc<dyn crate::sasl::Credentials>,
    oauth: Option<Arc<crate::oauth::OAuthValidator>>,
    authorizer: Option<Arc<crate::acl::Authorizer>>,
    shutdown: &CancellationToken,
) -> Result<Vec<(Listener, TcpListener)>, ListenerError> {
    let mut out = Vec::with_capacity(listeners.len());
    let secret = crate::sasl::process_secret();
    for l in listeners {
        let sasl = l.protocol.sasl().then(|| {
            let names: Vec<String> = l
                .sasl_mechanisms
                .clone()
                .unwrap_or_else(|| DEFAULT_MECHANISMS.iter().map(|s| s.to_string()).collect());
            let mechanisms: Vec<crate::sasl::Mechanism> = names
                .iter()
                .filter_map(|n| crate::sasl::Mechanism::parse(n))
                .collect();
            (mechanisms, l.reauth_ms)
        });
        let sasl = match sasl {
            Some((mechanisms, _))
                if mechanisms.contains(&crate::sasl::Mechanism::OAuthBearer) && oauth.is_none() =>
            {
                return Err(ListenerError::Invalid {
                    name: l.name.clone(),
                    reason: "OAUTHBEARER needs [oauthbearer] jwks (the identity provider's keys)"
                        .into(),
                });
            }
            Some((mechanisms, reauth_ms)) => Some(Arc::new(crate::authn::SaslSettings {
                mechanisms,
                reauth: reauth_ms.filter(|ms| *ms > 0).map(Duration::from_millis),
                credentials: credentials.clone(),
                oauth: oauth.clone(),
                secret: secret.clone(),
            })),
            None => None,
        };
        let tls = match (&l.tls, l.protocol.tls()) {
            (Some(settings), true) => {
                let server =
                    TlsServer::new(settings.clone()).map_err(|source| ListenerError::Tls {
                        name: l.name.clone(),
                        source,
                    })?;
                server.spawn_reloader(shutdown.child_token());
                Some(server)
            }
            _ => None,
        };
        let socket = TcpListener::bind(l.listen)
            .await
            .map_err(|source| ListenerError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
        out.push((
            Listener {
                name: Arc::from(l.name.as_str()),
                protocol: l.protocol,
                tls,
                sasl,
                authorizer: authorizer.clone(),
                internal: l.internal,
            },
            socket,
        ));
    }
    Ok(out)
}

/// Serve every bound listener for `node` until `shutdown`.
pub fn spawn_all<S: KafkaService>(
    bound: Vec<(Listener, TcpListener)>,
    node: Arc<S>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    bound
        .into_iter()
        .map(|(spec, socket)| {
            tracing::info!(listener = %spec.name, protocol = spec.protocol.name(),
                addr = ?socket.local_addr().ok(), "Kafka listener serving");
            tokio::spawn(serve_on(socket, spec, node.clone(), shutdown.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! A TLS listener in-process with rustls clients: certificates made by
    //! rcgen, a tier that records each request's principal.
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use floe_protocol::kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
    use floe_protocol::kafka_protocol::protocol::{Decodable, StrBytes};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::dispatch::Router;
    use crate::tls::ClientAuth;

    /// Records the principal of every request; answers ApiVersions.
    struct Recorder {
        metrics: RequestMetrics,
        router: Router<Recorder, ()>,
        seen: Mutex<Vec<(String, String)>>,
    }

    impl KafkaService for Recorder {
        type Session = ();
        fn limits(&self) -> Limits {
            Limits {
                max_connections: 100,
                max_request_bytes: 1 << 20,
                max_inflight_per_connection: 4,
            }
        }
        fn metrics(&self) -> &RequestMetrics {
            &self.metrics
        }
        fn session(&self, _peer: &Arc<Peer>) -> Arc<()> {
            Arc::new(())
        }
        fn dispatch(
            self: &Arc<Self>,
            session: &Arc<()>,
            peer: &Arc<Peer>,
            frame: Bytes,
        ) -> impl std::future::Future<Output = Result<Pending, Close>> + Send {
            self.seen
                .lock()
                .unwrap()
                .push((peer.listener.to_string(), peer.principal().to_string()));
            let (me, session, peer) = (self.clone(), session.clone(), peer.clone());
            async move {
                me.router
                    .dispatch(&me, &session, &peer, frame, &me.metrics)
                    .await
            }
        }
    }

    struct Pki {
        dir: tempfile::TempDir,
        ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    impl Pki {
        fn new() -> Self {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test-ca");
            let key = rcgen::KeyPair::generate().unwrap();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("ca.pem"),
                params.self_signed(&key).unwrap().pem(),
            )
            .unwrap();
            Self {
                dir,
                ca: rcgen::Issuer::new(params, key),
            }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A certificate for `cn` signed by this CA: (cert, key) paths.
        fn issue(&self, cn: &str, server: bool) -> (PathBuf, PathBuf) {
            let sans = if server {
                vec!["localhost".to_string()]
            } else {
                Vec::new()
            };
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let (c, k) = (
                self.path(&format!("{cn}.pem")),
                self.path(&format!("{cn}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        }
    }

    fn client(ca: &Path, cert: Option<(PathBuf, PathBuf)>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            None => b.with_no_client_auth(),
            Some((c, k)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&c)
                        .unwrap()
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_file(&k).unwrap(),
                )
                .unwrap(),
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    async fn api_versions<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> std::io::Result<i16> {
        let mut b = BytesMut::new();
        b.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(3)
            .with_correlation_id(9)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut b, 2)
            .unwrap();
        ApiVersionsRequest::default().encode(&mut b, 3).unwrap();
        let n = (b.len() - 4) as i32;
        b[..4].copy_from_slice(&n.to_be_bytes());
        s.write_all(&b).await?;
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, 0).unwrap();
        Ok(ApiVersionsResponse::decode(&mut body, 3)
            .unwrap()
            .error_code)
    }

    async fn start(tls: crate::tls::TlsSettings) -> (SocketAddr, Arc<Recorder>, Arc<TlsServer>) {
        let server = TlsServer::new(tls).unwrap();
        let spec = Listener {
            name: Arc::from("CLIENTS"),
            protocol: SecurityProtocol::Ssl,
            tls: Some(server.clone()),
            sasl: None,
            authorizer: None,
            internal: false,
        };
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let rec = Arc::new(Recorder {
            metrics: RequestMetrics::with_prefix("t"),
            router: Router::new(),
            seen: Mutex::new(Vec::new()),
        });
        tokio::spawn(serve_on(
            socket,
            spec,
            rec.clone(),
            CancellationToken::new(),
        ));
        (addr, rec, server)
    }

    #[tokio::test]
    async fn tls_clients_are_served_under_the_principal_of_their_certificate() {
        let pki = Pki::new();
        let rogue = Pki::new();
        let (cert, key) = pki.issue("server", true);
        let alice = pki.issue("alice", false);
        let mallory = rogue.issue("mallory", false);
        let settings = crate::tls::TlsSettings {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            client_ca: Some(pki.path("ca.pem")),
            client_auth: Some(ClientAuth::Requested),
            principal_mapping_rules: vec!["RULE:^CN=(.*)$/$1/U".into()],
            ..Default::default()
        };
        let (addr, rec, server) = start(settings.clone()).await;
        let name = ServerName::try_from("localhost").unwrap();
        // A stalled handshake holds up nobody else.
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        // Without a certificate: anonymous.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut anon = client(&pki.path("ca.pem"), None)
            .connect(name.clone(), tcp)
            .await
            .unwrap();
        assert_eq!(api_versions(&mut anon).await.unwrap(), 0);
        // With one the CA signed: its mapped principal.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut a = client(&pki.path("ca.pem"), Some(alice.clone()))
            .connect(name.clone(), tcp)
            .await
            .unwrap();
        assert_eq!(api_versions(&mut a).await.unwrap(), 0);
        assert_eq!(
            *rec.seen.lock().unwrap(),
            vec![
                ("CLIENTS".to_string(), ANONYMOUS.to_string()),
                ("CLIENTS".to_string(), "User:ALICE".to_string())
            ]
        );
        // One signed by another CA: refused in the handshake, no request
        // reaches the tier.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let refused = match client(&pki.path("ca.pem"), Some(mallory))
            .connect(name.clone(), tcp)
            .await
        {
            Err(_) => true,
            // TLS 1.3: the client learns of the refusal on its first read.
            Ok(mut s) => api_versions(&mut s).await.is_err(),
        };
        assert!(refused, "an untrusted client certificate is refused");
        // Plaintext on a TLS listener: closed, nothing dispatched.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        assert!(api_versions(&mut plain).await.is_err());
        assert_eq!(rec.seen.lock().unwrap().len(), 2);

        // Rotation: a new server certificate for new connections; the
        // open one is unharmed.
        let (cert2, key2) = pki.issue("server-2", true);
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        server.reload().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let fresh = client(&pki.path("ca.pem"), None)
            .connect(name.clone(), tcp)
            .await
            .unwrap();
        let served = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(
            crate::tls::subject_name(&served).as_deref(),
            Some("CN=server-2")
        );
        assert_eq!(api_versions(&mut a).await.unwrap(), 0, "the old connection");
        drop(stalled);

        // Required: a client without a certificate is refused.
        let (addr, rec, _) = start(crate::tls::TlsSettings {
            client_auth: Some(ClientAuth::Required),
            ..settings
        })
        .await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let refused = match client(&pki.path("ca.pem"), None).connect(name, tcp).await {
            Err(_) => true,
            Ok(mut s) => api_versions(&mut s).await.is_err(),
        };
        assert!(refused);
        assert!(rec.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn listeners_are_planned_with_distinct_names_and_tls_where_needed() {
        let tls = crate::tls::TlsSettings {
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..Default::default()
        };
        let extra = |name: &str, port: u16, protocol| ListenerConfig {
            name: name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            advertise: None,
            protocol,
            tls: None,
            sasl_mechanisms: None,
            reauth_ms: None,
            internal: false,
        };
        let first = |addr: &str, advertise: Option<&str>, protocol| ListenerConfig {
            name: String::new(),
            listen: addr.parse().unwrap(),
            advertise: advertise.map(str::to_string),
            ..extra("", 0, protocol)
        };
        let a = "0.0.0.0:9093";
        let all = plan(
            first(a, Some("kafka.example.com:9093"), SecurityProtocol::Ssl),
            Some(&tls),
            &[extra("LOCAL", 9092, SecurityProtocol::Plaintext)],
        )
        .unwrap();
        assert_eq!(all[0].name, "SSL");
        assert_eq!(all[0].tls.as_ref(), Some(&tls));
        assert_eq!(all[1].tls, None);
        let e = endpoints(&all).unwrap();
        assert_eq!(
            (e[0].host.as_str(), e[0].port, e[1].host.as_str(), e[1].port),
            ("kafka.example.com", 9093, "127.0.0.1", 9092)
        );
        // SSL without TLS settings; a duplicate name; a duplicate address;
        // a bad advertised address; an unknown SASL mechanism.
        let plain = SecurityProtocol::Plaintext;
        assert!(plan(first(a, None, SecurityProtocol::Ssl), None, &[]).is_err());
        assert!(plan(first(a, None, plain), None, &[extra("PLAINTEXT", 1, plain)]).is_err());
        assert!(plan(
            first("127.0.0.1:5", None, plain),
            None,
            &[extra("X", 5, plain)]
        )
        .is_err());
        assert!(plan(first(a, Some("no-port"), plain), None, &[]).is_err());
        let mut sasl = extra("S", 7, SecurityProtocol::SaslPlaintext);
        sasl.sasl_mechanisms = Some(vec!["GSSAPI".into()]);
        assert!(plan(first(a, None, plain), None, &[sasl]).is_err());
    }
}
