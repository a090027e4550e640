//! Kafka requests from one Floe process to another over the cluster's
//! internal listener (mutual TLS with the cluster's identity when it has
//! one): a connection per address, kept and reused, one request at a time
//! on it, dropped on any failure so the next call connects afresh. Used
//! for transaction markers and verification between brokers and for the
//! controller's group listing; the proxy's request pipelining lives in
//! `floe-proxy` (`upstream.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_protocol::kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use floe_protocol::kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls::InternalTls;

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

type Slot = Arc<tokio::sync::Mutex<Option<Box<dyn Stream>>>>;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent: the address could not be reached.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The request may or may not have been processed.
    #[error("request to {0} failed: {1}")]
    Lost(String, String),
}

/// Connections to other Floe processes' Kafka listeners.
pub struct InternalClient {
    tls: Option<Arc<InternalTls>>,
    client_id: &'static str,
    conns: Mutex<HashMap<(String, i32), Slot>>,
    correlation: AtomicI32,
}

/// The largest answer taken (a request of ours never asks for more).
const MAX_ANSWER: i32 = 64 << 20;

impl InternalClient {
    pub fn new(tls: Option<Arc<InternalTls>>, client_id: &'static str) -> Self {
        Self {
            tls,
            client_id,
            conns: Mutex::new(HashMap::new()),
            correlation: AtomicI32::new(1),
        }
    }

    /// One request to `host:port`, answered within `timeout`.
    pub async fn call<Req: Encodable, Resp: Decodable>(
        &self,
        (host, port): (&str, i32),
        api: ApiKey,
        version: i16,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let addr = format!("{host}:{port}");
        let lost = |e: String| CallError::Lost(addr.clone(), e);
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str(self.client_id)))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| CallError::Connect(addr.clone(), e.to_string()))?;
        req.encode(&mut buf, version)
            .map_err(|e| CallError::Connect(addr.clone(), e.to_string()))?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let slot = self
            .conns
            .lock()
            .unwrap()
            .entry((host.to_string(), port))
            .or_default()
            .clone();
        let exchange = async {
            let mut conn = slot.lock().await;
            if conn.is_none() {
                let tcp = tokio::net::TcpStream::connect((host, port as u16))
                    .await
                    .map_err(|e| CallError::Connect(addr.clone(), e.to_string()))?;
                let _ = tcp.set_nodelay(true);
                *conn = Some(match &self.tls {
                    Some(tls) => Box::new(
                        tls.connect(tcp, host)
                            .await
                            .map_err(|e| CallError::Connect(addr.clone(), e.to_string()))?,
                    ),
                    None => Box::new(tcp),
                });
            }
            let s = conn.as_mut().expect("connected");
            let answer = async {
                s.write_all(&buf).await?;
                let n = s.read_i32().await?;
                if !(0..=MAX_ANSWER).contains(&n) {
                    return Err(std::io::Error::other(format!("an answer of {n} bytes")));
                }
                let mut body = vec![0u8; n as usize];
                s.read_exact(&mut body).await?;
                Ok(Bytes::from(body))
            }
            .await;
            if answer.is_err() {
                *conn = None;
            }
            answer.map_err(|e| lost(e.to_string()))
        };
        let mut body = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                // The connection may hold half an exchange: drop it.
                if let Ok(mut c) = slot.try_lock() {
                    *c = None;
                }
                return Err(lost(format!("no answer within {timeout:?}")));
            }
        };
        let h = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| lost(e.to_string()))?;
        if h.correlation_id != correlation {
            return Err(lost("an answer to another request".into()));
        }
        let r = Resp::decode(&mut body, version).map_err(|e| lost(e.to_string()))?;
        if body.has_remaining() {
            return Err(lost("trailing bytes in the answer".into()));
        }
        Ok(r)
    }

    /// The log end offsets (high watermarks) of `partitions` — topic →
    /// partition numbers — asked of the broker at `addr` with one
    /// ListOffsets (latest); partitions it answers with an error are left
    /// out.
    pub async fn latest_offsets(
        &self,
        addr: (&str, i32),
        partitions: std::collections::BTreeMap<String, Vec<i32>>,
        timeout: Duration,
    ) -> Result<Vec<((String, i32), i64)>, CallError> {
        use floe_protocol::kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        use floe_protocol::kafka_protocol::messages::{
            BrokerId, ListOffsetsRequest, ListOffsetsResponse, TopicName,
        };
        use floe_protocol::kafka_protocol::protocol::StrBytes;
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                partitions
                    .into_iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_timestamp(-1)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp: ListOffsetsResponse = self
            .call(addr, ApiKey::ListOffsets, 7, &req, timeout)
            .await?;
        Ok(resp
            .topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partitions
                    .into_iter()
                    .filter(|p| p.error_code == 0 && p.offset >= 0)
                    .map(move |p| ((name.clone(), p.partition_index), p.offset))
            })
            .collect())
    }
}
