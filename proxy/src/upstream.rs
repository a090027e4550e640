//! Kafka connections from the proxy to brokers: requests written in the
//! order they are given, responses matched by correlation id, reconnected on
//! the next request after a failure. A shared pool carries produce traffic;
//! each client connection gets its own connections for group traffic (a
//! parked JoinGroup must not hold anyone else's responses).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use floe_kafka::tls::InternalTls;
use floe_meta::schema::BrokerRecord;
use floe_protocol::frame::{read_frame, PartsBuf};
use floe_protocol::produce_frame::FrameParts;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A byte stream to a broker, whatever carries it.
pub trait BrokerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BrokerIo for T {}

type DialFuture = futures::future::BoxFuture<'static, std::io::Result<Box<dyn BrokerIo>>>;

/// How the proxy opens connections to brokers (Kafka and the tail push)
/// when not over TCP: the deterministic simulation dials over its own
/// network. `None` in every deployment.
#[derive(Clone)]
pub struct Dialer(pub Arc<dyn Fn(String) -> DialFuture + Send + Sync>);

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialer")
    }
}

impl Dialer {
    pub async fn dial(&self, addr: String) -> std::io::Result<Box<dyn BrokerIo>> {
        (self.0)(addr).await
    }
}

/// Why an upstream request got no answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent: the broker could not be reached.
    #[error("cannot connect to broker {0}: {1}")]
    Connect(i32, String),
    /// The request may or may not have been processed.
    #[error("connection to broker {0} failed: {1}")]
    Lost(i32, String),
}

impl UpstreamError {
    /// Whether the broker surely did not see the request.
    pub fn not_sent(&self) -> bool {
        matches!(self, UpstreamError::Connect(..))
    }
}

type Reply = oneshot::Sender<Result<Bytes, UpstreamError>>;

struct Outgoing {
    /// A request frame without its length prefix, in parts; bytes 4..8 of
    /// the first part are the correlation id, set by the connection.
    frame: FrameParts,
    reply: Reply,
}

/// One connection (re-established on demand) to one broker address.
pub struct Conn {
    broker: i32,
    host: String,
    port: i32,
    /// The cluster's identity, presented over TLS, when it has one.
    tls: Option<Arc<InternalTls>>,
    dialer: Option<Dialer>,
    tx: Mutex<Option<mpsc::UnboundedSender<Outgoing>>>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Conn {
    pub fn new(b: &BrokerRecord, tls: Option<Arc<InternalTls>>, dialer: Option<Dialer>) -> Self {
        Self {
            broker: b.broker_id,
            host: b.host.clone(),
            port: b.port,
            tls,
            dialer,
            tx: Mutex::new(None),
        }
    }

    /// Send a request frame (api key, version, any correlation id, client
    /// id, body). Requests given in order are written in that order.
    pub fn send(&self, frame: BytesMut) -> oneshot::Receiver<Result<Bytes, UpstreamError>> {
        self.send_parts(FrameParts::one(frame.freeze()))
    }

    /// [`Conn::send`] of a frame in parts (a produce request carrying its
    /// client's record sets as they arrived), written with vectored I/O.
    pub fn send_parts(&self, frame: FrameParts) -> oneshot::Receiver<Result<Bytes, UpstreamError>> {
        let (reply, rx) = oneshot::channel();
        let mut out = Outgoing { frame, reply };
        let mut tx = self.tx.lock().unwrap();
        // Unbounded: the order of calls is the order on the wire. What is
        // queued is bounded by the clients' own in-flight limits.
        for _ in 0..2 {
            let sender = tx.get_or_insert_with(|| self.spawn());
            match sender.send(out) {
                Ok(()) => return rx,
                Err(mpsc::error::SendError(o)) => {
                    out = o;
                    *tx = None;
                }
            }
        }
        let _ = out.reply.send(Err(UpstreamError::Connect(
            self.broker,
            "connection task ended".into(),
        )));
        rx
    }

    fn spawn(&self) -> mpsc::UnboundedSender<Outgoing> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(connect_and_run(
            self.broker,
            self.host.clone(),
            self.port,
            self.tls.clone(),
            self.dialer.clone(),
            rx,
        ));
        tx
    }
}

async fn connect_and_run(
    broker: i32,
    host: String,
    port: i32,
    tls: Option<Arc<InternalTls>>,
    dialer: Option<Dialer>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let addr = format!("{host}:{port}");
    let connect = async {
        if let Some(d) = &dialer {
            if tls.is_some() {
                return Err(std::io::Error::other(
                    "internal TLS needs TCP connections, not a custom dialer",
                ));
            }
            return Ok(Either::Dialed(d.dial(addr.clone()).await?));
        }
        let tcp = TcpStream::connect(&addr).await?;
        let _ = tcp.set_nodelay(true);
        match &tls {
            Some(tls) => Ok(Either::Tls(Box::new(tls.connect(tcp, &host).await?))),
            None => Ok(Either::Plain(tcp)),
        }
    };
    let stream: std::io::Result<Either> = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other(format!(
            "connecting to {addr} timed out"
        ))),
    };
    match stream {
        Ok(Either::Plain(s)) => run(broker, s, rx).await,
        Ok(Either::Dialed(s)) => run(broker, s, rx).await,
        Ok(Either::Tls(s)) => run(broker, *s, rx).await,
        Err(e) => fail_all(&mut rx, UpstreamError::Connect(broker, e.to_string())),
    }
}

enum Either {
    Plain(TcpStream),
    /// Through a [`Dialer`] (the simulation): boxed, off the TCP path.
    Dialed(Box<dyn BrokerIo>),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn run<S>(broker: i32, stream: S, mut rx: mpsc::UnboundedReceiver<Outgoing>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let pending: Arc<Mutex<HashMap<i32, Reply>>> = Default::default();
    let reader_pending = pending.clone();
    let mut reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd, usize::MAX >> 1).await {
                Ok(Some(frame)) if frame.len() >= 4 => {
                    let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                    if let Some(reply) = reader_pending.lock().unwrap().remove(&id) {
                        let _ = reply.send(Ok(frame));
                    }
                }
                Ok(Some(_)) => return "short response frame".to_string(),
                Ok(None) => return "closed by the broker".to_string(),
                Err(e) => return e.to_string(),
            }
        }
    });
    let mut out = BufWriter::with_capacity(256 << 10, wr);
    let next_id = AtomicI32::new(1);
    let reason = loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            r = &mut reader => break r.unwrap_or_else(|e| e.to_string()),
        };
        let Some(msg) = msg else {
            // Nobody sends any more: let the answers in flight arrive.
            let until = tokio::time::Instant::now() + Duration::from_secs(30);
            while !pending.lock().unwrap().is_empty()
                && !reader.is_finished()
                && tokio::time::Instant::now() < until
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break "idle".to_string();
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let Some(mut buf) = with_length_and_id(msg.frame, id) else {
            let _ = msg.reply.send(Err(UpstreamError::Connect(
                broker,
                "request frame shorter than its header".into(),
            )));
            continue;
        };
        pending.lock().unwrap().insert(id, msg.reply);
        let written = async {
            out.write_all_buf(&mut buf).await?;
            if rx.is_empty() {
                out.flush().await?;
            }
            std::io::Result::Ok(())
        }
        .await;
        if let Err(e) = written {
            break e.to_string();
        }
    };
    reader.abort();
    let err = UpstreamError::Lost(broker, reason);
    for (_, reply) in pending.lock().unwrap().drain() {
        let _ = reply.send(Err(err.clone()));
    }
    // What was queued behind the failure was never written.
    fail_all(
        &mut rx,
        UpstreamError::Connect(broker, "connection lost".into()),
    );
}

/// The frame's parts behind its length prefix, with correlation id `id`:
/// the first 12 bytes are new, every other byte is the caller's part.
fn with_length_and_id(frame: FrameParts, id: i32) -> Option<PartsBuf> {
    let len = frame.len();
    let mut parts = frame.parts.into_iter();
    let first = parts.next()?;
    if first.len() < 8 {
        return None;
    }
    let mut head = BytesMut::with_capacity(12);
    head.put_i32(len as i32);
    head.extend_from_slice(&first[..4]);
    head.put_i32(id);
    Some(PartsBuf::new(
        [head.freeze(), first.slice(8..)].into_iter().chain(parts),
    ))
}

fn fail_all(rx: &mut mpsc::UnboundedReceiver<Outgoing>, err: UpstreamError) {
    rx.close();
    while let Ok(m) = rx.try_recv() {
        let _ = m.reply.send(Err(err.clone()));
    }
}

/// Connections by broker, for one user (the shared produce path, or one
/// client connection).
#[derive(Default)]
pub struct Pool {
    conns: Mutex<HashMap<i32, Arc<Conn>>>,
    tls: Option<Arc<InternalTls>>,
    dialer: Option<Dialer>,
}

impl Pool {
    /// A pool whose connections present the cluster's identity over TLS
    /// (brokers with `[internal_tls]` admit nothing else), or go through
    /// `dialer`.
    pub fn new(tls: Option<Arc<InternalTls>>, dialer: Option<Dialer>) -> Self {
        Self {
            conns: Default::default(),
            tls,
            dialer,
        }
    }

    /// The connection to broker `b` (a new one when the broker came back at
    /// another address; the old one drains what it has in flight).
    pub fn get(&self, b: &BrokerRecord) -> Arc<Conn> {
        let mut c = self.conns.lock().unwrap();
        match c.get(&b.broker_id) {
            Some(conn) if conn.host == b.host && conn.port == b.port => conn.clone(),
            _ => {
                let conn = Arc::new(Conn::new(b, self.tls.clone(), self.dialer.clone()));
                c.insert(b.broker_id, conn.clone());
                conn
            }
        }
    }
}

/// A request frame (without length) for `body` at `version`.
pub fn encode_request<R: floe_protocol::kafka_protocol::protocol::Encodable>(
    api: floe_protocol::kafka_protocol::messages::ApiKey,
    version: i16,
    client_id: &str,
    body: &R,
) -> Result<BytesMut, String> {
    use floe_protocol::kafka_protocol::messages::RequestHeader;
    use floe_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
    let mut buf = BytesMut::with_capacity(512);
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(0)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())))
        // The trace context of the request being served, for the broker's
        // span (flexible header versions carry it).
        .with_unknown_tagged_fields(floe_kafka::trace::header_tags());
    header
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| e.to_string())?;
    body.encode(&mut buf, version).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Decode a response frame (correlation id first) of `api` at `version`.
pub fn decode_response<R: floe_protocol::kafka_protocol::protocol::Decodable>(
    api: floe_protocol::kafka_protocol::messages::ApiKey,
    version: i16,
    mut frame: Bytes,
) -> Result<R, String> {
    use floe_protocol::kafka_protocol::messages::ResponseHeader;
    use floe_protocol::kafka_protocol::protocol::Decodable;
    ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .map_err(|e| e.to_string())?;
    R::decode(&mut frame, version).map_err(|e| e.to_string())
}
