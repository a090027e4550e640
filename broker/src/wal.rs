//! The broker's shared WAL (issue 24; docs/design.md, "Shared WAL
//! objects"): which stream it writes now, registered in the metadata store
//! before its first object so that recovery can find it after the broker
//! died, and a new stream, registered the same way, whenever the current
//! one dies (a fence at its next key, an object that cannot reach W). The
//! partition writers hand their chunks in through [`BrokerWal::append`];
//! a chunk the dead stream did not make durable comes back as
//! [`WalAppendError::Reopened`], for the writer to hand in again (to the
//! new stream), as it rewrites chunks to a new segment today.
//! Also the conversions between a chunk's place in a WAL object as the
//! partition's log keeps it and as its checkpoint records it, and the
//! paging of a WAL segment's chunk list in the metadata store.

use std::sync::Arc;

use bytes::Bytes;
use floe_common::PartitionId;
use floe_meta::schema::{
    ChunkPageRecord, ChunkPageRef, ChunkRecord, OpenSegmentRecord, WalPositionRecord, WalRefRecord,
    WalStreamRecord, FORMAT,
};
use floe_meta::{keys, Condition, MetaError, MetadataStore, Op, Txn};
use floe_storage::log::{ChunkRef, WalPlace};
use floe_storage::wal::{ChunkMeta, WalEntry, WalId};
use floe_storage::wal_stream::{WalChunkRef, WalConfig, WalError, WalObserver, WalStream};
use floe_storage::{ReplicaSet, StorageError, StoragePool};
use prost::Message;
use std::sync::RwLock;

/// Why a chunk was not appended.
#[derive(Debug, thiserror::Error)]
pub enum WalAppendError {
    /// The stream it went to died before making it durable; a new stream
    /// is open now: hand the chunk in again.
    #[error("the WAL stream {dead} ended ({why}); stream {next} is open: append again")]
    Reopened { dead: i64, next: i64, why: WalError },
    /// No new stream could be registered (the metadata store is away).
    #[error("no WAL stream could be opened: {0}")]
    Metadata(#[from] MetaError),
}

/// A broker session's WAL: the open stream, replaced when it dies.
pub struct BrokerWal {
    meta: Arc<dyn MetadataStore>,
    pool: Arc<StoragePool>,
    broker: i32,
    session: i64,
    config: WalConfig,
    now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Told of every object write (the broker's storage metrics).
    observer: Option<WalObserver>,
    /// The stream written now: read on every hand-in by every partition,
    /// so a plain lock held only to clone a handle (a thousand writers
    /// handing in at one cut queued on an async mutex).
    current: RwLock<WalStream>,
    /// Held while a dead stream is replaced (one new stream however many
    /// hand-ins it failed).
    reopening: tokio::sync::Mutex<()>,
}

impl BrokerWal {
    /// Open a new stream for broker `broker`'s session `session` (its
    /// registration's revision): the next stream number after every one
    /// the broker registered before, registered before its first object.
    pub async fn open(
        meta: Arc<dyn MetadataStore>,
        pool: Arc<StoragePool>,
        broker: i32,
        session: i64,
        config: WalConfig,
        now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
        observer: Option<WalObserver>,
    ) -> Result<Self, MetaError> {
        let stream = register(&*meta, broker, session, now_ms()).await?;
        let current =
            WalStream::start_observed(pool.clone(), broker, stream, 0, config, observer.clone());
        Ok(Self {
            meta,
            pool,
            broker,
            session,
            config,
            now_ms,
            observer,
            current: RwLock::new(current),
            reopening: tokio::sync::Mutex::new(()),
        })
    }

    /// The stream written now.
    pub async fn stream(&self) -> i64 {
        self.with_current(|s| s.stream)
    }

    /// A handle on the current stream (for a hand-in, which awaits).
    fn current(&self) -> WalStream {
        self.with_current(WalStream::clone)
    }

    /// `f` on the current stream, under the lock only as long as `f`.
    fn with_current<R>(&self, f: impl FnOnce(&WalStream) -> R) -> R {
        f(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where a chunk handed in from now on will land at the earliest: the
    /// current stream and the seq of its next object (a later stream, if
    /// this one dies first). A writer's checkpoint names it as the point
    /// recovery scans the broker's streams from.
    pub async fn position(&self) -> WalPositionRecord {
        self.with_current(|current| WalPositionRecord {
            broker_id: self.broker,
            stream: current.stream,
            seq: current.next_seq(),
        })
    }

    /// When the current stream's object being gathered is cut (see
    /// [`WalStream::gathering_until`]); None while nothing is gathered.
    pub fn gathering_until(&self) -> Option<tokio::time::Instant> {
        self.with_current(|s| s.gathering_until())
    }

    /// [`WalStream::hold`] on the current stream.
    pub fn hold(
        &self,
        margin: std::time::Duration,
        registered: Option<i64>,
    ) -> Option<floe_storage::wal_stream::Hold> {
        self.with_current(|s| s.hold(margin, registered))
    }

    pub fn broker(&self) -> i32 {
        self.broker
    }

    /// Hand in one chunk; the answer comes once it is durable in stream
    /// order. If the stream died first, a new one is opened (once, however
    /// many chunks the dead one fails) and the chunk comes back
    /// [`WalAppendError::Reopened`].
    pub async fn append(
        &self,
        meta: ChunkMeta,
        payload: Bytes,
        held: Option<i64>,
    ) -> Result<WalChunkRef, WalAppendError> {
        let stream = self.current();
        match stream.append_held(meta, payload, held).await {
            Ok(r) => Ok(r),
            Err(why) => {
                let _reopening = self.reopening.lock().await;
                if self.with_current(|s| s.stream) == stream.stream {
                    let next =
                        register(&*self.meta, self.broker, self.session, (self.now_ms)()).await?;
                    tracing::warn!(broker = self.broker, dead = stream.stream, next, error = %why, "WAL stream ended; opened a new one");
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                        WalStream::start_observed(
                            self.pool.clone(),
                            self.broker,
                            next,
                            0,
                            self.config,
                            self.observer.clone(),
                        );
                }
                Err(WalAppendError::Reopened {
                    dead: stream.stream,
                    next: self.with_current(|s| s.stream),
                    why,
                })
            }
        }
    }
}

/// A chunk's record in a checkpoint, with its place in a WAL object when
/// it lies in one.
pub fn chunk_record(c: &ChunkRef) -> ChunkRecord {
    ChunkRecord {
        base_offset: c.base_offset,
        next_offset: c.next_offset,
        max_timestamp: c.max_timestamp,
        bytes: c.bytes,
        wal: c.wal.as_ref().map(|w| WalRefRecord {
            broker_id: w.id.broker,
            stream: w.id.stream,
            seq: w.id.seq,
            pos: w.pos,
            len: w.len,
            payload_crc: w.payload_crc,
            replica_set: w.replicas.ids(),
        }),
    }
}

/// A chunk a WAL stream made durable, as the partition's log keeps it.
pub fn chunk_ref(pool: &StoragePool, r: &WalChunkRef) -> Result<ChunkRef, StorageError> {
    Ok(wal_chunk(r.id, &r.entry, pool.replica_set(&r.replica_set)?))
}

/// The chunk `entry` of WAL object `id` on `replicas`, as the partition's
/// log keeps it.
pub fn wal_chunk(id: WalId, entry: &WalEntry, replicas: ReplicaSet) -> ChunkRef {
    let m = &entry.meta;
    ChunkRef {
        base_offset: m.base_offset,
        next_offset: m.next_offset,
        max_timestamp: m.max_timestamp,
        path: WalPlace::cache_key(id, entry.pos),
        bytes: entry.len as u64,
        wal: Some(Arc::new(WalPlace {
            id,
            pos: entry.pos,
            len: entry.len,
            payload_crc: entry.payload_crc,
            replicas,
        })),
    }
}

/// Page out the list of WAL segment `seg` of partition `id`, `per_page`
/// chunk records a page (`wal_chunk_page`): `seg.chunks`
/// holds its committed chunks from the base on (or from some point before
/// the end of its pages); whole pages of them past `seg.pages` become new
/// pages (returned as the puts to save with the checkpoint, and named in
/// `seg.pages`), and `seg.chunks` keeps the rest. A page once written is
/// never rewritten: the list only grows at its end.
pub fn page_out(id: PartitionId, seg: &mut OpenSegmentRecord, per_page: usize) -> Vec<Op> {
    let per_page = per_page.max(1);
    if !seg.wal {
        return Vec::new();
    }
    let paged_until = seg.pages.last().map_or(seg.base_offset, |p| p.next_offset);
    let mut tail: Vec<ChunkRecord> = std::mem::take(&mut seg.chunks)
        .into_iter()
        .filter(|c| c.base_offset >= paged_until)
        .collect();
    let mut ops = Vec::new();
    while tail.len() >= per_page {
        let rest = tail.split_off(per_page);
        let page = std::mem::replace(&mut tail, rest);
        let mut low: std::collections::BTreeMap<i32, (i64, i64)> = Default::default();
        for w in page.iter().filter_map(|c| c.wal.as_ref()) {
            let at = (w.stream, w.seq);
            low.entry(w.broker_id)
                .and_modify(|l| *l = (*l).min(at))
                .or_insert(at);
        }
        let first_offset = page[0].base_offset;
        seg.pages.push(ChunkPageRef {
            first_offset,
            next_offset: page[page.len() - 1].next_offset,
            chunks: page.len() as u32,
            wal_low: low
                .into_iter()
                .map(|(broker_id, (stream, seq))| WalPositionRecord {
                    broker_id,
                    stream,
                    seq,
                })
                .collect(),
        });
        ops.push(Op::put(
            keys::chunk_page(id, seg.base_offset, first_offset),
            ChunkPageRecord { chunks: page }.encode_to_vec(),
        ));
    }
    seg.chunks = tail;
    ops
}

/// Page in the list of WAL segment `seg` of partition `id`: its pages'
/// chunks put back before `seg.chunks` (one range read per segment with
/// pages). A page missing or not as its reference says is an error (the
/// metadata does not hold what the checkpoint that names it promised).
pub async fn page_in(
    meta: &dyn MetadataStore,
    id: PartitionId,
    seg: &mut OpenSegmentRecord,
) -> Result<(), PageError> {
    if seg.pages.is_empty() {
        return Ok(());
    }
    let (kvs, _) = meta
        .range(&keys::chunk_pages_prefix(id, seg.base_offset))
        .await?;
    let found: std::collections::HashMap<Bytes, Bytes> =
        kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut chunks = Vec::new();
    for p in &seg.pages {
        let key = keys::chunk_page(id, seg.base_offset, p.first_offset);
        let value = found.get(&key).ok_or_else(|| {
            PageError::Corrupt(format!(
                "segment {}: chunk page {} is missing",
                seg.base_offset, p.first_offset
            ))
        })?;
        let page = ChunkPageRecord::decode(value.clone())
            .map_err(|e| PageError::Corrupt(e.to_string()))?;
        let first = page.chunks.first().map(|c| c.base_offset);
        let next = page.chunks.last().map(|c| c.next_offset);
        if page.chunks.len() != p.chunks as usize
            || first != Some(p.first_offset)
            || next != Some(p.next_offset)
        {
            return Err(PageError::Corrupt(format!(
                "segment {}: chunk page {} holds {} chunks {first:?}..{next:?}, its reference says {} chunks to {}",
                seg.base_offset,
                p.first_offset,
                page.chunks.len(),
                p.chunks,
                p.next_offset
            )));
        }
        chunks.extend(page.chunks);
    }
    chunks.append(&mut seg.chunks);
    seg.chunks = chunks;
    Ok(())
}

/// Why a segment's chunk pages could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error(transparent)]
    Metadata(#[from] MetaError),
    #[error("{0}")]
    Corrupt(String),
}

/// A listed chunk of a WAL segment, from its checkpoint record.
pub fn listed_chunk(pool: &StoragePool, c: &ChunkRecord) -> Result<Option<ChunkRef>, StorageError> {
    let Some(w) = &c.wal else {
        return Ok(None);
    };
    let id = WalId {
        broker: w.broker_id,
        stream: w.stream,
        seq: w.seq,
    };
    Ok(Some(ChunkRef {
        base_offset: c.base_offset,
        next_offset: c.next_offset,
        max_timestamp: c.max_timestamp,
        path: WalPlace::cache_key(id, w.pos),
        bytes: c.bytes,
        wal: Some(Arc::new(WalPlace {
            id,
            pos: w.pos,
            len: w.len,
            payload_crc: w.payload_crc,
            replicas: pool.replica_set(&w.replica_set)?,
        })),
    }))
}

/// The streams broker `broker` registered, in order.
pub async fn streams(
    meta: &dyn MetadataStore,
    broker: i32,
) -> Result<Vec<WalStreamRecord>, MetaError> {
    let (kvs, _) = meta.range(&keys::broker_wal_streams_prefix(broker)).await?;
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let r = WalStreamRecord::decode(kv.value)
            .map_err(|e| MetaError::Corrupt(format!("WAL stream record: {e}")))?;
        out.push(r);
    }
    out.sort_by_key(|r| r.stream);
    Ok(out)
}

/// Register the broker's next stream: one past the last registered,
/// created only if no other process took that number meanwhile (a broker
/// restarted in place races its old self only until the old lease lapses,
/// but the condition makes any race harmless).
async fn register(
    meta: &dyn MetadataStore,
    broker: i32,
    session: i64,
    now_ms: i64,
) -> Result<i64, MetaError> {
    loop {
        let next = streams(meta, broker)
            .await?
            .last()
            .map(|r| r.stream + 1)
            .unwrap_or(0);
        let record = WalStreamRecord {
            format: FORMAT,
            broker_id: broker,
            stream: next,
            session,
            first_seq: 0,
            created_ms: now_ms,
        };
        let key = keys::wal_stream(broker, next);
        let txn = Txn::new()
            .when(Condition::Missing(key.clone()))
            .then(Op::put(key, record.encode_to_vec()));
        if meta.txn(txn).await?.committed() {
            return Ok(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::{PartitionId, Uuid};
    use floe_storage::faulty::FaultyStore;
    use floe_storage::StorageTarget;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;
    use std::time::Duration;

    fn meta_of(base: i64) -> ChunkMeta {
        ChunkMeta {
            partition: PartitionId::new(Uuid::from_u128(24), 0),
            segment_epoch: 1,
            segment_base: 0,
            base_offset: base,
            next_offset: base + 1,
            max_timestamp: 0,
            batch_count: 1,
            epoch: 1,
        }
    }

    /// Streams are registered in order, before their first object; a
    /// fence at the stream's next key (a recovering owner's) ends it: the
    /// chunk comes back "append again", one new stream is registered, and
    /// the chunk handed in again is durable there. A second session of the
    /// broker continues the numbering.
    #[tokio::test]
    async fn a_fenced_stream_is_replaced_by_a_newly_registered_one() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetadataStore> = Arc::new(
            floe_meta::embedded::EmbeddedStore::open(dir.path().join("meta"))
                .await
                .unwrap(),
        );
        let stores: Vec<Arc<FaultyStore>> = (0..3)
            .map(|i| FaultyStore::new(format!("t{i}"), Arc::new(InMemory::new()), i))
            .collect();
        let targets = stores
            .iter()
            .enumerate()
            .map(|(i, s)| StorageTarget::from_store(format!("t{i}"), s.clone()))
            .collect();
        let pool = Arc::new(StoragePool::with_seed(targets, 2, 2, 3).unwrap());
        let config = WalConfig {
            linger: Duration::from_millis(5),
            ..Default::default()
        };
        let clock: Arc<dyn Fn() -> i64 + Send + Sync> = Arc::new(|| 1_000);
        let wal = BrokerWal::open(
            meta.clone(),
            pool.clone(),
            7,
            100,
            config,
            clock.clone(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(wal.stream().await, 0);
        let first = wal
            .append(meta_of(0), Bytes::from_static(b"zero"), None)
            .await
            .unwrap();
        assert_eq!((first.id.stream, first.id.seq), (0, 0));

        // A recoverer fences seq 1 of stream 0 on every target.
        let fence_id = floe_storage::wal::WalId {
            broker: 7,
            stream: 0,
            seq: 1,
        };
        let path = floe_storage::layout::wal(fence_id);
        for s in &stores {
            s.put(&path, floe_storage::wal::encode_fence(fence_id).into())
                .await
                .unwrap();
        }
        match wal
            .append(meta_of(1), Bytes::from_static(b"one"), None)
            .await
        {
            Err(WalAppendError::Reopened {
                dead: 0, next: 1, ..
            }) => {}
            other => panic!("the fenced stream must end: {other:?}"),
        }
        let again = wal
            .append(meta_of(1), Bytes::from_static(b"one"), None)
            .await
            .unwrap();
        assert_eq!((again.id.stream, again.id.seq), (1, 0));
        let got = floe_storage::wal_read::read_chunks(&pool, &[first, again])
            .await
            .unwrap();
        assert_eq!(
            got,
            [Bytes::from_static(b"zero"), Bytes::from_static(b"one")]
        );

        let listed = streams(&*meta, 7).await.unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|r| (r.stream, r.session))
                .collect::<Vec<_>>(),
            [(0, 100), (1, 100)]
        );
        let next_session = BrokerWal::open(meta.clone(), pool, 7, 200, config, clock, None)
            .await
            .unwrap();
        assert_eq!(next_session.stream().await, 2);
        assert!(streams(&*meta, 8).await.unwrap().is_empty(), "per broker");
    }
}
