//! Floe's internal RPC protocols, generated from proto/: the admin API
//! (`floe.admin.v1`, served by controllers, called by floectl) and the tail
//! push (`floe.tail.v1`, brokers to the proxies following a partition),
//! with the tail's conversions between a log's state and the wire, which
//! both of its ends use.

/// The admin API's messages and gRPC stubs (proto/admin.proto).
pub mod admin {
    tonic::include_proto!("floe.admin.v1");
}

/// The tail push (proto/tail.proto) and its codec.
pub mod tail {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use floe_storage::log::{
        AbortedTxn, ChunkRef, LogState, SealedSegment, SegmentView, TailDelta, WalPlace,
    };
    use floe_storage::wal::WalId;
    use floe_storage::{BlockCache, StorageError, StoragePool};

    /// Generated from proto/tail.proto.
    pub mod pb {
        tonic::include_proto!("floe.tail.v1");
    }

    pub use pb::tail_client::TailClient;
    pub use pb::tail_server::TailServer;

    /// Largest message either end accepts (a snapshot of a partition with
    /// many unsealed chunks, or a burst of appends with their payloads).
    pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

    fn chunk_pb(segment_base: i64, c: &ChunkRef, payload: Option<Bytes>) -> pb::Chunk {
        pb::Chunk {
            segment_base,
            base_offset: c.base_offset,
            next_offset: c.next_offset,
            max_timestamp: c.max_timestamp,
            path: c.path.to_string(),
            bytes: c.bytes,
            payload,
            wal: c.wal.as_ref().map(|w| pb::WalPlace {
                broker: w.id.broker,
                stream: w.id.stream,
                seq: w.id.seq,
                pos: w.pos,
                len: w.len,
                payload_crc: w.payload_crc,
                replicas: w.replicas.ids(),
            }),
        }
    }

    fn chunk_ref(c: &pb::Chunk, pool: &StoragePool) -> Result<ChunkRef, StorageError> {
        let wal = match &c.wal {
            Some(w) => Some(Arc::new(WalPlace {
                id: WalId {
                    broker: w.broker,
                    stream: w.stream,
                    seq: w.seq,
                },
                pos: w.pos,
                len: w.len,
                payload_crc: w.payload_crc,
                replicas: pool.replica_set(&w.replicas)?,
            })),
            None => None,
        };
        Ok(ChunkRef {
            base_offset: c.base_offset,
            next_offset: c.next_offset,
            max_timestamp: c.max_timestamp,
            path: Arc::from(c.path.as_str()),
            bytes: c.bytes,
            wal,
        })
    }

    /// A change of a log as sent to followers (`None`: nothing to send).
    pub fn to_update(delta: TailDelta, cache: &BlockCache) -> Option<pb::LogUpdate> {
        let kind = match delta {
            TailDelta::Unchanged => return None,
            TailDelta::Append {
                chunks,
                log_start,
                high_watermark,
                first_unstable,
                aborted,
            } => pb::log_update::Kind::Append(pb::Append {
                log_start_offset: log_start,
                high_watermark,
                first_unstable,
                aborted: aborted.iter().map(aborted_pb).collect(),
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
                    first_unstable: s.first_unstable,
                    aborted: s
                        .aborted
                        .iter()
                        .map(|(k, a)| aborted_pb(&(*k, *a)))
                        .collect(),
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
    pub fn snapshot_state(
        snap: &pb::Snapshot,
        pool: &StoragePool,
    ) -> Result<LogState, StorageError> {
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
                    chunks: o
                        .chunks
                        .iter()
                        .map(|c| chunk_ref(c, pool))
                        .collect::<Result<_, _>>()?,
                },
            );
        }
        Ok(LogState {
            log_start_offset: snap.log_start_offset,
            high_watermark: snap.high_watermark,
            leader_epoch: snap.leader_epoch,
            segments,
            first_unstable: snap.first_unstable,
            aborted: Arc::new(snap.aborted.iter().map(aborted_entry).collect()),
        })
    }

    fn aborted_pb((marker, a): &(i64, AbortedTxn)) -> pb::AbortedTxn {
        pb::AbortedTxn {
            producer_id: a.producer_id,
            first_offset: a.first_offset,
            marker_offset: *marker,
        }
    }

    fn aborted_entry(a: &pb::AbortedTxn) -> (i64, AbortedTxn) {
        (
            a.marker_offset,
            AbortedTxn {
                producer_id: a.producer_id,
                first_offset: a.first_offset,
            },
        )
    }

    /// An append's transaction news: the first unstable offset and the
    /// aborted transactions it indexes.
    pub fn append_txns(a: &pb::Append) -> (Option<i64>, Vec<(i64, AbortedTxn)>) {
        (
            a.first_unstable,
            a.aborted.iter().map(aborted_entry).collect(),
        )
    }

    /// An append's chunks as (segment base, chunk, payload), their WAL
    /// objects' replica sets resolved in `pool`.
    pub fn append_chunks(
        a: pb::Append,
        pool: &StoragePool,
    ) -> Result<Vec<(i64, ChunkRef, Option<Bytes>)>, StorageError> {
        a.chunks
            .into_iter()
            .map(|c| {
                let r = chunk_ref(&c, pool)?;
                Ok((c.segment_base, r, c.payload))
            })
            .collect()
    }
}
