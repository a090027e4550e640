//! The controller process's state as its endpoints see it (its id, its
//! credentials, and the leading controller while this process leads),
//! partition moves made through the leader (a standby forwards them to the
//! leader's internal HTTP call, with the admin token), and the controller's
//! HTTP endpoint: health, readiness, leadership and that internal move
//! call, which takes the admin token (loopback callers only when the
//! controller has none).

use std::sync::Arc;
use std::time::Duration;

use floe_common::{PartitionId, Uuid};
use floe_meta::schema::{ControllerRecord, TopicRecord};
use floe_meta::{keys, MetadataStore};
use prost::Message;
use tokio_util::sync::CancellationToken;

use floe_kafka::tls::{constant_time_eq, InternalTls};

use crate::{Controller, MoveError};

pub struct ControllerState {
    pub meta: Arc<dyn MetadataStore>,
    /// Set while this process leads.
    leader: std::sync::RwLock<Option<Arc<Controller>>>,
    id: String,
    /// The admin API's bearer token: `/v1/move` requires it, and a standby
    /// presents it when it forwards a move.
    token: Option<String>,
    /// The cluster's identity, presented to brokers (ListGroups).
    pub internal_tls: Option<Arc<InternalTls>>,
}

impl ControllerState {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        id: String,
        token: Option<String>,
        internal_tls: Option<Arc<InternalTls>>,
    ) -> Self {
        Self {
            meta,
            leader: Default::default(),
            id,
            token: token.filter(|t| !t.is_empty()),
            internal_tls,
        }
    }

    /// This process leads now, as `c`.
    pub fn lead(&self, c: Arc<Controller>) {
        *self.leader.write().unwrap() = Some(c);
        crate::metrics::metrics().leader.set(1);
    }
}

/// Why a move could not be made.
pub enum MoveFailure {
    NotFound(String),
    Retry(String),
}

/// Move `p` to `broker` through the leading controller: this one if it
/// leads, else the leader named by the election key (its internal HTTP
/// call). Returns the new epoch.
pub async fn move_on_leader(
    state: &ControllerState,
    p: PartitionId,
    topic: &str,
    broker: i32,
) -> Result<i32, MoveFailure> {
    let leader = state.leader.read().unwrap().clone();
    if let Some(c) = leader {
        return match c.move_partition(p, broker).await {
            Ok(epoch) => Ok(epoch),
            Err(e @ MoveError::UnknownBroker(_)) | Err(e @ MoveError::UnknownPartition) => {
                Err(MoveFailure::NotFound(e.to_string()))
            }
            Err(e) => Err(MoveFailure::Retry(e.to_string())),
        };
    }
    let record = floe_meta::election::leader(&*state.meta, &keys::controller_leader())
        .await
        .map_err(|e| MoveFailure::Retry(e.to_string()))?
        .and_then(|kv| ControllerRecord::decode(kv.value).ok())
        .ok_or_else(|| MoveFailure::Retry("no controller leads now; retry".into()))?;
    let path = format!(
        "/v1/move?topic={topic}&partition={}&broker={broker}",
        p.partition
    );
    match http_post(&record.http, &path, state.token.as_deref()).await {
        Ok((200, body)) => body
            .trim()
            .parse()
            .map_err(|_| MoveFailure::Retry(format!("leader answered {body:?}"))),
        Ok((404, body)) => Err(MoveFailure::NotFound(body.trim().to_string())),
        Ok((_, body)) => Err(MoveFailure::Retry(body.trim().to_string())),
        Err(e) => Err(MoveFailure::Retry(format!(
            "leader {} at {}: {e}",
            record.id, record.http
        ))),
    }
}

/// A minimal HTTP/1.1 POST (status, body) to a controller's internal API,
/// with the admin token when there is one.
async fn http_post(addr: &str, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

#[derive(serde::Deserialize)]
struct MoveRequest {
    topic: String,
    partition: i32,
    broker: i32,
}

/// The controller's HTTP endpoint: health, whether it leads (nothing that
/// needs a credential), and the internal move call, which does: the admin
/// token as `Authorization: Bearer`, or, on a controller without one, a
/// caller on loopback. Operators move partitions through the admin API
/// (`floectl move`); this call is how a standby hands a move to the leader.
pub async fn http(
    listener: tokio::net::TcpListener,
    state: Arc<ControllerState>,
    shutdown: CancellationToken,
) {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let leader_state = state.clone();
    let ready_state = state.clone();
    let move_state = state.clone();
    let metrics_state = state.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let state = metrics_state.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        crate::metrics::encode(&*state.meta).await,
                    )
                }
            }),
        )
        // Serving once registered: a standby is ready too (it forwards
        // admin requests to the leader and takes over when it goes).
        .route(
            "/readyz",
            get(move || {
                let state = ready_state.clone();
                async move {
                    let role = if state.leader.read().unwrap().is_some() {
                        "leads"
                    } else {
                        "stands by"
                    };
                    format!("ready: {} {role}\n", state.id)
                }
            }),
        )
        .route(
            "/v1/leader",
            get(move || {
                let state = leader_state.clone();
                async move {
                    if state.leader.read().unwrap().is_some() {
                        (StatusCode::OK, format!("{} leads\n", state.id))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{} stands by\n", state.id),
                        )
                    }
                }
            }),
        )
        .route(
            "/v1/move",
            post(
                move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >,
                      headers: axum::http::HeaderMap,
                      axum::extract::Query(q): axum::extract::Query<MoveRequest>| {
                    let state = move_state.clone();
                    async move {
                        let given = headers
                            .get(axum::http::header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok());
                        if let Err(refused) = may_move(&state, peer, given) {
                            return refused;
                        }
                        move_partition(&state, q).await
                    }
                },
            ),
        );
    let _ = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await;
}

/// Whether `peer`, presenting `authorization`, may move partitions: with
/// the admin token (compared in constant time) when the controller has one,
/// from loopback when it has none.
fn may_move(
    state: &ControllerState,
    peer: std::net::SocketAddr,
    authorization: Option<&str>,
) -> Result<(), (axum::http::StatusCode, String)> {
    use axum::http::StatusCode;
    match &state.token {
        Some(token) => {
            let given = authorization
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                return Ok(());
            }
            tracing::warn!(%peer, token_given = authorization.is_some(), "move refused: missing or wrong bearer token");
            Err((
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (the admin API's; or use floectl move)\n".into(),
            ))
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => {
            tracing::warn!(%peer, "move refused: this controller has no admin token, so only loopback callers may move");
            Err((
                StatusCode::FORBIDDEN,
                "this controller has no admin token: moves are taken from loopback only\n".into(),
            ))
        }
    }
}

async fn move_partition(
    state: &ControllerState,
    q: MoveRequest,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let Some(c) = state.leader.read().unwrap().clone() else {
        return (
            StatusCode::CONFLICT,
            format!("controller {} does not lead; ask the leader\n", state.id),
        );
    };
    let topic = match state.meta.get(&keys::topic(&q.topic)).await {
        Ok(Some(kv)) => match TopicRecord::decode(kv.value) {
            Ok(t) => t,
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown topic {:?}\n", q.topic),
            )
        }
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    };
    let Ok(topic_id) = Uuid::from_slice(&topic.id) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "bad topic id\n".into());
    };
    if q.partition < 0 || q.partition >= topic.partitions {
        return (
            StatusCode::NOT_FOUND,
            format!("topic {:?} has no partition {}\n", q.topic, q.partition),
        );
    }
    match c
        .move_partition(PartitionId::new(topic_id, q.partition), q.broker)
        .await
    {
        Ok(epoch) => (StatusCode::OK, format!("{epoch}\n")),
        Err(e @ MoveError::UnknownBroker(_)) | Err(e @ MoveError::UnknownPartition) => {
            (StatusCode::NOT_FOUND, format!("{e}\n"))
        }
        Err(e @ MoveError::Conflict) => (StatusCode::CONFLICT, format!("{e}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}
