//! The tail push (proto/tail.proto): a broker shows the proxies following a
//! partition it writes every committed chunk, with its payload, and every
//! high-watermark move; any other change of the log goes out as a snapshot.
//! Also the conversions both ends use between a log's state and the wire.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use floe_common::{PartitionId, Uuid};
use floe_storage::log::{ChunkRef, LogState, SealedSegment, SegmentView, TailCursor, TailDelta};
use floe_storage::{BlockCache, StorageError, StoragePool};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::node::Node;
use crate::partition::PartitionState;

/// Generated from proto/tail.proto.
pub mod pb {
    tonic::include_proto!("floe.tail.v1");
}

pub use pb::tail_client::TailClient;
pub use pb::tail_server::TailServer;

/// Largest message either end accepts (a snapshot of a partition with
/// many unsealed chunks, or a burst of appends with their payloads).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

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

fn chunk_pb(segment_base: i64, c: &ChunkRef, payload: Option<Bytes>) -> pb::Chunk {
    pb::Chunk {
        segment_base,
        base_offset: c.base_offset,
        next_offset: c.next_offset,
        max_timestamp: c.max_timestamp,
        path: c.path.to_string(),
        bytes: c.bytes,
        payload,
    }
}

fn chunk_ref(c: &pb::Chunk) -> ChunkRef {
    ChunkRef {
        base_offset: c.base_offset,
        next_offset: c.next_offset,
        max_timestamp: c.max_timestamp,
        path: Arc::from(c.path.as_str()),
        bytes: c.bytes,
    }
}

/// A change of a log as sent to followers (`None`: nothing to send).
pub fn to_update(delta: TailDelta, cache: &BlockCache) -> Option<pb::LogUpdate> {
    let kind = match delta {
        TailDelta::Unchanged => return None,
        TailDelta::Append {
            chunks,
            log_start,
            high_watermark,
        } => pb::log_update::Kind::Append(pb::Append {
            log_start_offset: log_start,
            high_watermark,
            chunks: chunks
                .iter()
                .map(|(base, c)| chunk_pb(*base, c, cache.get_object(&c.path)))
                .collect(),
        }),
        TailDelta::Snapshot(s) => {
            let mut snap = pb::Snapshot {
                log_start_offset: s.log_start_offset,
                high_watermark: s.high_watermark,
                leader_epoch: s.leader_epoch,
                ..Default::default()
            };
            for (base, seg) in &s.segments {
                match seg {
                    SegmentView::Sealed(x) => snap.sealed.push(pb::SealedSegment {
                        base_offset: x.base_offset,
                        end_offset: x.end_offset,
                        epoch: x.epoch,
                        path: x.path.to_string(),
                        data_bytes: x.data_bytes,
                        object_bytes: x.object_bytes,
                        max_timestamp: x.max_timestamp,
                        sealed_ms: x.sealed_ms,
                        replicas: x.replicas.ids(),
                    }),
                    SegmentView::Open {
                        base_offset,
                        epoch,
                        replicas,
                        chunks,
                    } => snap.open.push(pb::OpenSegment {
                        base_offset: *base_offset,
                        epoch: *epoch,
                        replicas: replicas.ids(),
                        // Payloads only ride with appends: a snapshot stays small.
                        chunks: chunks.iter().map(|c| chunk_pb(*base, c, None)).collect(),
                    }),
                }
            }
            pb::log_update::Kind::Snapshot(snap)
        }
    };
    Some(pb::LogUpdate { kind: Some(kind) })
}

/// A snapshot as a log state, its replica sets resolved in `pool`.
pub fn snapshot_state(snap: &pb::Snapshot, pool: &StoragePool) -> Result<LogState, StorageError> {
    let mut segments = BTreeMap::new();
    for x in &snap.sealed {
        segments.insert(
            x.base_offset,
            SegmentView::Sealed(Arc::new(SealedSegment {
                base_offset: x.base_offset,
                end_offset: x.end_offset,
                epoch: x.epoch,
                path: Arc::from(x.path.as_str()),
                data_bytes: x.data_bytes,
                object_bytes: x.object_bytes,
                max_timestamp: x.max_timestamp,
                sealed_ms: x.sealed_ms,
                replicas: pool.replica_set(&x.replicas)?,
            })),
        );
    }
    for o in &snap.open {
        segments.insert(
            o.base_offset,
            SegmentView::Open {
                base_offset: o.base_offset,
                epoch: o.epoch,
                replicas: pool.replica_set(&o.replicas)?,
                chunks: o.chunks.iter().map(chunk_ref).collect(),
            },
        );
    }
    Ok(LogState {
        log_start_offset: snap.log_start_offset,
        high_watermark: snap.high_watermark,
        leader_epoch: snap.leader_epoch,
        segments,
    })
}

/// An append's chunks as (segment base, chunk, payload).
pub fn append_chunks(a: pb::Append) -> Vec<(i64, ChunkRef, Option<Bytes>)> {
    a.chunks
        .into_iter()
        .map(|c| {
            let r = chunk_ref(&c);
            (c.segment_base, r, c.payload)
        })
        .collect()
}

/// Serve the tail push on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<Node>,
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
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(TailService::server(node))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "tail push listener failed");
    }
}
