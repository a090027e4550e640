//! The tail push (proto/tail.proto): a broker shows the proxies following a
//! partition it writes every committed chunk, with its payload, and every
//! high-watermark move; any other change of the log goes out as a snapshot.
//! (The messages and the conversions both ends use: `floe_rpc::tail`.)

use std::pin::Pin;
use std::sync::Arc;

use floe_common::{PartitionId, Uuid};
use floe_storage::log::TailCursor;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::partition::PartitionState;

use floe_rpc::tail::to_update;
pub use floe_rpc::tail::{pb, TailServer, MAX_MESSAGE_BYTES};

/// The broker's side: one stream per following proxy and partition.
pub struct TailService {
    node: Arc<Node>,
}

impl TailService {
    pub fn server(node: Arc<Node>) -> TailServer<Self> {
        TailServer::new(Self { node })
            .max_decoding_message_size(1 << 20)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::LogUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl pb::tail_server::Tail for TailService {
    type FollowStream = UpdateStream;

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let r = request.into_inner();
        let topic = Uuid::from_slice(&r.topic_id)
            .map_err(|_| Status::invalid_argument("topic_id must be 16 bytes"))?;
        let p = PartitionId::new(topic, r.partition);
        let Some(handle) = self.node.partition(p) else {
            return Err(Status::failed_precondition(format!(
                "partition {p} is not written by broker {}",
                self.node.config.node_id
            )));
        };
        let (tx, rx) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut hw = handle.log.subscribe();
            let mut state = handle.state_watch();
            let mut cursor = TailCursor::default();
            node.metrics.tail_followers.inc();
            loop {
                let delta = handle.log.changes(&mut cursor);
                if let Some(update) = to_update(delta, &node.cache) {
                    node.metrics.tail_updates.inc();
                    if let Some(pb::log_update::Kind::Append(a)) = &update.kind {
                        let pushed: usize = a
                            .chunks
                            .iter()
                            .filter_map(|c| c.payload.as_ref().map(|b| b.len()))
                            .sum();
                        node.metrics.load.add_out(p, pushed as u64);
                    }
                    if tx.send(Ok(update)).await.is_err() {
                        break;
                    }
                }
                if *state.borrow_and_update() != PartitionState::Writing {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "partition {p} left this broker"
                        ))))
                        .await;
                    break;
                }
                tokio::select! {
                    r = hw.changed() => if r.is_err() { break },
                    r = state.changed() => if r.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            node.metrics.tail_followers.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serve the tail push on `listener` until `shutdown`; with `tls` (the
/// cluster's `[internal_tls]`) only holders of a certificate the cluster
/// CA signed may subscribe.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
    tls: Option<floe_kafka::tls::InternalTls>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tokio_stream::StreamExt;
    // Pushes are small and latency-bound: no Nagle on accepted streams
    // (tonic's own nodelay setting covers only listeners it binds itself).
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        if let Ok(s) = &s {
            let _ = s.set_nodelay(true);
        }
        s
    });
    serve_incoming(incoming, node, tls, shutdown).await
}

/// [`serve`] on connections from any source (the deterministic
/// simulation's network).
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    node: Arc<Node>,
    tls: Option<floe_kafka::tls::InternalTls>,
    shutdown: tokio_util::sync::CancellationToken,
) where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let config = tls.pem().map(|pem| {
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(pem.cert, pem.key))
                .client_ca_root(tonic::transport::Certificate::from_pem(pem.ca))
        });
        builder = match config.map(|c| builder.tls_config(c)) {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "tail push TLS; not serving");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "tail push TLS files; not serving");
                return;
            }
        };
    }
    if let Err(e) = builder
        .add_service(TailService::server(node))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "tail push listener failed");
    }
}
