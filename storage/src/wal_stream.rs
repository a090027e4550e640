//! A broker's WAL stream (docs/design.md, "Shared WAL objects"): the chunks
//! every partition writer hands in are gathered into one WAL object per
//! flush — bounded by `linger` and `max_bytes` — written with conditional
//! create at the stream's next key on a freshly drawn replica set, and
//! acknowledged **in stream order**: a chunk's answer comes only once its
//! object and every earlier object of the stream are durable on W targets,
//! so what a stream acknowledged is always a gap-free prefix of it. An
//! object that cannot be made durable (its key taken by a fence, or too
//! many targets failing after retries) ends the stream: it and everything
//! after it is answered with an error and the caller opens a new stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::wal::{ChunkMeta, WalBuilder, WalEntry, WalId};
use crate::{layout, PutOutcome, StorageError, StoragePool};

/// How a stream flushes.
#[derive(Clone, Copy, Debug)]
pub struct WalConfig {
    /// How long the first chunk of an object waits for company.
    pub linger: Duration,
    /// An object is flushed once its chunks reach this many bytes.
    pub max_bytes: usize,
    /// Objects written at once (the next is gathered meanwhile).
    pub max_in_flight: usize,
    /// Attempts of one object's write before the stream gives up.
    pub attempts: u32,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(100),
            max_bytes: 8 << 20,
            max_in_flight: 4,
            attempts: 3,
        }
    }
}

/// Where a durable chunk is: what a partition's metadata keeps of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalChunkRef {
    pub id: WalId,
    pub entry: WalEntry,
    /// The targets the object was written to.
    pub replica_set: Vec<String>,
}

/// Why a chunk was not made durable by this stream (the stream is over).
#[derive(Clone, Debug, thiserror::Error)]
pub enum WalError {
    /// The stream's next key is taken: a recovering owner fenced it.
    #[error("WAL stream was fenced at {0:?}")]
    Fenced(WalId),
    /// An object could not reach its write quorum.
    #[error("WAL object {0:?} could not be made durable: {1}")]
    Failed(WalId, StorageError),
    /// The stream ended before this chunk was written.
    #[error("WAL stream ended: {0}")]
    Ended(String),
}

type Reply = oneshot::Sender<Result<WalChunkRef, WalError>>;

/// Told of every object a stream writes: how long its write took (to W
/// copies, retries included, or to giving up) and whether it was made
/// durable — a broker's `floe_storage_op_duration_seconds{op="wal_put"}`.
pub type WalObserver = Arc<dyn Fn(Duration, bool) + Send + Sync>;

struct Submit {
    meta: ChunkMeta,
    payload: Bytes,
    reply: Reply,
    /// The span the chunk was handed in under (its first request's).
    span: tracing::Span,
    /// The object its writer held it for (see [`WalStream::hold`]).
    held: Option<i64>,
}

/// A handle on a running stream; cloned by every partition writer.
#[derive(Clone)]
pub struct WalStream {
    tx: mpsc::UnboundedSender<Submit>,
    pub broker: i32,
    pub stream: i64,
    /// The seq the next object flushed will get.
    next_seq: Arc<AtomicI64>,
    /// What writers see of the object being gathered.
    gate: Arc<std::sync::Mutex<Gate>>,
}

/// What a writer does with its filling chunk (see [`WalStream::hold`]);
/// either way the stream counts on it for object `seq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Keep it until then, taking in more batches.
    Until(tokio::time::Instant, i64),
    /// Hand it in now: the cut is near.
    Now(i64),
}

/// The object being gathered, as writers see it (see [`WalStream::hold`]).
#[derive(Debug, Default)]
struct Gate {
    /// When it is cut by the linger, or after a cut the earliest the next
    /// one can be (None: before the first object).
    deadline: Option<tokio::time::Instant>,
    /// The seq it will get.
    seq: i64,
    /// Writers that said they hold a chunk for it.
    holding: usize,
}

impl WalStream {
    /// Start stream `stream` of `broker` at seq `first_seq`, writing to
    /// `pool`'s targets.
    pub fn start(
        pool: Arc<StoragePool>,
        broker: i32,
        stream: i64,
        first_seq: i64,
        config: WalConfig,
    ) -> Self {
        Self::start_observed(pool, broker, stream, first_seq, config, None)
    }

    /// [`WalStream::start`], telling `observer` of every object write.
    pub fn start_observed(
        pool: Arc<StoragePool>,
        broker: i32,
        stream: i64,
        first_seq: i64,
        config: WalConfig,
        observer: Option<WalObserver>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let next_seq = Arc::new(AtomicI64::new(first_seq));
        let gate = Arc::new(std::sync::Mutex::new(Gate {
            seq: first_seq,
            ..Default::default()
        }));
        tokio::spawn(run(
            pool,
            broker,
            stream,
            (next_seq.clone(), gate.clone()),
            (config, observer),
            rx,
        ));
        Self {
            tx,
            broker,
            stream,
            next_seq,
            gate,
        }
    }

    /// When the object now being gathered will be cut by the linger, or
    /// after a cut the earliest the next one will be (a moment in the past
    /// once the stream sits idle): a partition writer holds its filling chunk until just
    /// before then, so that it hands in one chunk per object rather than
    /// one per `chunk_linger_ms` (fewer index entries, checkpoint entries
    /// and segment rolls; the same latency, as every chunk waits for the
    /// cut anyway).
    pub fn gathering_until(&self) -> Option<tokio::time::Instant> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner()).deadline
    }

    /// A writer about to hold its filling chunk for the object being
    /// gathered: when to hand it in (`margin` before the cut), if that is
    /// still ahead, and the object's seq, to pass to
    /// [`WalStream::append_held`]. The first call for a seq (`registered`
    /// is the seq the writer last got) counts the writer as holding; at its
    /// deadline the stream waits for the writers it counted — a thousand
    /// partitions handing in at once take a moment on a busy machine —
    /// for at most a quarter of the linger, rather than leave the late
    /// ones a whole linger for the next object.
    ///
    /// Past that moment but before the cut the writer is counted all the
    /// same and told to hand in now ([`Hold::Now`]), so that what came to
    /// a partition before the cut is in the object however busy the
    /// machine; after the cut (nothing gathered, or the next object not
    /// due yet) it holds for the next one.
    pub fn hold(&self, margin: Duration, registered: Option<i64>) -> Option<Hold> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        let cut = gate.deadline?;
        let now = tokio::time::Instant::now();
        if cut <= now {
            return None;
        }
        if registered != Some(gate.seq) {
            gate.holding += 1;
        }
        let seq = gate.seq;
        Some(match cut.checked_sub(margin) {
            Some(until) if until > now => Hold::Until(until, seq),
            _ => Hold::Now(seq),
        })
    }

    /// The seq the next object flushed will get: a chunk handed in from
    /// now on lands in an object at this seq or later (what a writer's
    /// checkpoint names as the point recovery scans from).
    pub fn next_seq(&self) -> i64 {
        self.next_seq.load(Ordering::Acquire)
    }

    /// Hand in one chunk (whole batches with their offsets); the answer
    /// comes once it is durable in stream order, or the stream ended.
    pub async fn append(&self, meta: ChunkMeta, payload: Bytes) -> Result<WalChunkRef, WalError> {
        self.append_held(meta, payload, None).await
    }

    /// [`WalStream::append`] of a chunk held for object `held` (the seq
    /// [`WalStream::hold`] gave).
    pub async fn append_held(
        &self,
        meta: ChunkMeta,
        payload: Bytes,
        held: Option<i64>,
    ) -> Result<WalChunkRef, WalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Submit {
                meta,
                payload,
                reply,
                span: tracing::Span::current(),
                held,
            })
            .map_err(|_| WalError::Ended("the stream task is gone".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(WalError::Ended("the stream task is gone".into())))
    }
}

struct InFlight {
    id: WalId,
    replica_set: Vec<String>,
    chunks: Vec<(WalEntry, Reply)>,
    task: JoinHandle<Result<PutOutcome, StorageError>>,
}

async fn run(
    pool: Arc<StoragePool>,
    broker: i32,
    stream: i64,
    (next_seq_shared, gate): (Arc<AtomicI64>, Arc<std::sync::Mutex<Gate>>),
    (config, observer): (WalConfig, Option<WalObserver>),
    mut rx: mpsc::UnboundedReceiver<Submit>,
) {
    let gate =
        |f: &mut dyn FnMut(&mut Gate)| f(&mut gate.lock().unwrap_or_else(|e| e.into_inner()));
    let publish = |deadline: Option<tokio::time::Instant>| gate(&mut |g| g.deadline = deadline);
    // A chunk held for the object being gathered has come.
    let arrived = |s: &Submit| {
        if let Some(held) = s.held {
            gate(&mut |g| {
                if g.seq == held {
                    g.holding = g.holding.saturating_sub(1);
                }
            });
        }
    };
    let holding = || {
        let mut n = 0;
        gate(&mut |g| n = g.holding);
        n
    };
    let mut next_seq = next_seq_shared.load(Ordering::Acquire);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut gathering: Vec<Submit> = Vec::new();
    let mut gathered_bytes = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    // Objects cut by the linger are paced from the previous one's
    // deadline, not from when the next chunk happened to come: under
    // steady load a stream writes one object every `linger` however many
    // partitions feed it and however late a busy machine wakes it (the
    // gap between a cut and the next chunk would otherwise add up).
    let mut next_cut: Option<tokio::time::Instant> = None;
    let mut closed = false;
    let end = loop {
        let mut full = gathered_bytes >= config.max_bytes;
        let due = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
        if due && !closed && !full && inflight.len() < config.max_in_flight {
            // Writers hold their chunks until just before the deadline and
            // hand them in together; on a busy machine (a thousand
            // partitions waking at once) some come a little late. Wait for
            // those that said they hold one (see `WalStream::hold`) — at
            // most a quarter of the linger past the deadline, in case one
            // went away — and take in whatever else is queued. The next
            // deadline stays paced from this one's.
            let cap = deadline.expect("due") + config.linger / 4;
            loop {
                let until = if holding() > 0 {
                    cap
                } else {
                    tokio::time::Instant::now()
                };
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(s)) => {
                        arrived(&s);
                        gathered_bytes += s.payload.len();
                        gathering.push(s);
                        if gathered_bytes >= config.max_bytes {
                            full = true;
                            break;
                        }
                    }
                    Ok(None) => {
                        closed = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if !gathering.is_empty() && (full || due || closed) && inflight.len() < config.max_in_flight
        {
            let id = WalId {
                broker,
                stream,
                seq: next_seq,
            };
            next_seq += 1;
            next_seq_shared.store(next_seq, Ordering::Release);
            inflight.push_back(write(
                &pool,
                id,
                std::mem::take(&mut gathering),
                config,
                observer.clone(),
            ));
            gathered_bytes = 0;
            let now = tokio::time::Instant::now();
            next_cut = Some(match deadline {
                Some(d) if d <= now => (d + config.linger).max(now),
                _ => now + config.linger,
            });
            deadline = None;
            // The next object is cut no earlier than this (see next_cut):
            // writers hold their chunks until just before it even while
            // nothing is gathered yet.
            gate(&mut |g| {
                g.deadline = next_cut;
                g.seq = next_seq;
                g.holding = 0;
            });
            continue;
        }
        if closed && gathering.is_empty() && inflight.is_empty() {
            return;
        }
        let sleep_until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + config.linger);
        tokio::select! {
            biased;
            done = async { (&mut inflight.front_mut().expect("guarded").task).await }, if !inflight.is_empty() => {
                let f = inflight.pop_front().expect("guarded");
                let error = match done {
                    Ok(Ok(PutOutcome::Created)) => {
                        for (entry, reply) in f.chunks {
                            let _ = reply.send(Ok(WalChunkRef {
                                id: f.id,
                                entry,
                                replica_set: f.replica_set.clone(),
                            }));
                        }
                        continue;
                    }
                    Ok(Ok(PutOutcome::AlreadyExists)) => WalError::Fenced(f.id),
                    Ok(Err(e)) => WalError::Failed(f.id, e),
                    Err(e) => WalError::Failed(f.id, StorageError::Unavailable(e.to_string())),
                };
                break (f, error);
            }
            s = rx.recv(), if !closed && !full => match s {
                Some(s) => {
                    arrived(&s);
                    gathered_bytes += s.payload.len();
                    gathering.push(s);
                    if deadline.is_none() {
                        let now = tokio::time::Instant::now();
                        let d = match next_cut {
                            Some(n) if n > now => n,
                            _ => now + config.linger,
                        };
                        deadline = Some(d);
                        publish(Some(d));
                    }
                }
                None => closed = true,
            },
            _ = tokio::time::sleep_until(sleep_until),
                if deadline.is_some() && inflight.len() < config.max_in_flight => {}
        }
    };
    // The stream is over: the failed object, every later one and every
    // chunk not yet written get the error; so does anything handed in
    // from now on (the channel closes when this returns).
    let (failed, error) = end;
    publish(None);
    tracing::warn!(broker, stream, seq = failed.id.seq, error = %error, "WAL stream ended");
    for (_, reply) in failed.chunks {
        let _ = reply.send(Err(error.clone()));
    }
    for f in inflight {
        f.task.abort();
        for (_, reply) in f.chunks {
            let _ = reply.send(Err(WalError::Ended(error.to_string())));
        }
    }
    rx.close();
    for s in gathering {
        let _ = s.reply.send(Err(WalError::Ended(error.to_string())));
    }
    while let Some(s) = rx.recv().await {
        let _ = s.reply.send(Err(WalError::Ended(error.to_string())));
    }
}

/// Build object `id` of `chunks` and start writing it to a fresh replica
/// set, retrying a failed write (an identical retry counts the replicas
/// that already hold it).
fn write(
    pool: &StoragePool,
    id: WalId,
    chunks: Vec<Submit>,
    config: WalConfig,
    observer: Option<WalObserver>,
) -> InFlight {
    let bytes: usize = chunks.iter().map(|s| s.payload.len()).sum();
    // The object's write is traced under its first chunk's request and
    // linked (follows-from) to every other one's: one object serves many.
    let first = chunks
        .first()
        .map(|s| s.span.clone())
        .unwrap_or_else(tracing::Span::none);
    let span = tracing::debug_span!(
        parent: &first,
        "wal.write",
        wal.broker = id.broker,
        wal.stream = id.stream,
        wal.seq = id.seq,
        wal.chunks = chunks.len(),
        wal.bytes = bytes,
    );
    for s in chunks.iter().skip(1) {
        span.follows_from(&s.span);
    }
    let mut b = WalBuilder::with_capacity(bytes);
    let mut out = Vec::with_capacity(chunks.len());
    for s in chunks {
        let entry = b.push(s.meta, &s.payload);
        out.push((entry, s.reply));
    }
    let (object, _) = b.finish(id);
    let replicas = pool.choose_replica_set();
    let replica_set = replicas.ids();
    let path = layout::wal(id);
    let task = tokio::spawn(
        async move {
            let started = tokio::time::Instant::now();
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                match replicas.put_create(&path, object.clone()).await {
                    Err(StorageError::Unavailable(e) | StorageError::Indeterminate(e))
                        if attempt < config.attempts =>
                    {
                        tracing::warn!(%path, attempt, error = %e, "WAL object put failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                    other => break other,
                }
            };
            if let Some(observe) = observer {
                observe(
                    started.elapsed(),
                    matches!(outcome, Ok(PutOutcome::Created)),
                );
            }
            outcome
        }
        .instrument(span),
    );
    InFlight {
        id,
        replica_set,
        chunks: out,
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{self, WalKind};
    use crate::StorageTarget;
    use floe_common::{PartitionId, Uuid};

    fn pool() -> Arc<StoragePool> {
        let targets = (0..3)
            .map(|i| StorageTarget::open(format!("t{i}"), "memory://").unwrap())
            .collect();
        Arc::new(StoragePool::with_seed(targets, 3, 2, 9).unwrap())
    }

    fn meta(partition: i32, base: i64, n: i64) -> ChunkMeta {
        ChunkMeta {
            partition: PartitionId::new(Uuid::from_u128(7), partition),
            segment_base: 0,
            segment_epoch: 1,
            epoch: 1,
            base_offset: base,
            next_offset: base + n,
            max_timestamp: 0,
            batch_count: 1,
        }
    }

    fn payload(n: i32) -> Bytes {
        Bytes::from(floe_protocol::batch::synthetic_batch(n, 16, 0))
    }

    async fn objects(pool: &StoragePool) -> Vec<String> {
        let mut keys: Vec<String> = crate::ReplicaSet::new(pool.targets().to_vec(), 2)
            .list(&object_store::path::Path::from("wal"))
            .await
            .unwrap()
            .into_keys()
            .map(|p| p.to_string())
            .collect();
        keys.sort();
        keys
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_of_many_partitions_share_one_object_and_read_back() {
        let pool = pool();
        let config = WalConfig {
            linger: Duration::from_millis(50),
            ..Default::default()
        };
        let s = WalStream::start(pool.clone(), 4, 1, 0, config);
        let writes = (0..10).map(|p| {
            let s = s.clone();
            async move { s.append(meta(p, 100, 2), payload(2)).await }
        });
        let refs: Vec<WalChunkRef> = futures::future::join_all(writes)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        // One flush: one object, seq 0, holding all ten chunks.
        assert!(refs
            .iter()
            .all(|r| r.id.seq == 0 && r.replica_set.len() == 3));
        assert_eq!(
            objects(&pool).await,
            vec![layout::wal(refs[0].id).to_string()]
        );
        let set = pool.replica_set(&refs[0].replica_set).unwrap();
        for r in &refs {
            let chunk = set
                .get_range(&layout::wal(r.id), r.entry.range())
                .await
                .unwrap();
            wal::verify_chunk("k", &r.entry, &chunk).unwrap();
            assert_eq!(chunk, payload(2));
        }
        let whole = set.get(&layout::wal(refs[0].id)).await.unwrap();
        let (footer, entries) = wal::decode("k", &whole, refs[0].id).unwrap();
        assert_eq!(footer.kind, WalKind::Data);
        assert_eq!(entries.len(), 10);
    }

    /// Under steady load the linger paces objects from one deadline to the
    /// next: a chunk every 30 ms with a 100 ms linger makes one object per
    /// 100 ms, not one per 100 ms plus the wait for the next chunk after a
    /// cut (which made a busy broker write fewer, fuller objects than the
    /// linger promises, and more so the later it woke).
    #[tokio::test(start_paused = true)]
    async fn steady_load_makes_one_object_per_linger() {
        let pool = pool();
        let config = WalConfig {
            linger: Duration::from_millis(100),
            ..Default::default()
        };
        let s = WalStream::start(pool.clone(), 4, 5, 0, config);
        let mut answers = Vec::new();
        let start = tokio::time::Instant::now();
        for i in 0..67 {
            tokio::time::sleep_until(start + Duration::from_millis(30 * i)).await;
            let s = s.clone();
            answers.push(tokio::spawn(async move {
                s.append(meta(0, i as i64 * 2, 2), payload(2)).await
            }));
        }
        let mut seqs = Vec::new();
        for a in answers {
            seqs.push(a.await.unwrap().unwrap().id.seq);
        }
        // 2 s of chunks: objects at 100, 200, ... 2,000 ms, the last one
        // also taking the chunk of 1,980 ms.
        assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "{seqs:?}");
        let objects = seqs.last().unwrap() + 1;
        assert_eq!(objects, 20, "{seqs:?}");
        // Each object holds the chunks of its 100 ms.
        let per_object = seqs.iter().filter(|&&q| q == 3).count();
        assert!((3..=4).contains(&per_object), "{seqs:?}");
    }

    /// A writer that said it holds a chunk for the object being gathered
    /// is waited for at the cut when it comes a little late (a busy
    /// machine), up to a quarter of the linger; one that never comes
    /// delays the cut by that much at most; the pace stays.
    #[tokio::test(start_paused = true)]
    async fn the_cut_waits_for_writers_holding_a_chunk_for_it() {
        let pool = pool();
        let config = WalConfig {
            linger: Duration::from_millis(100),
            ..Default::default()
        };
        let s = WalStream::start(pool.clone(), 4, 6, 0, config);
        let t0 = tokio::time::Instant::now();
        let first = {
            let s = s.clone();
            tokio::spawn(async move { s.append(meta(0, 0, 2), payload(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let cut = s.gathering_until().expect("gathering");
        assert_eq!(cut - t0, Duration::from_millis(100));
        let Some(Hold::Until(until, 0)) = s.hold(Duration::from_millis(5), None) else {
            panic!("a hold for object 0 until 95 ms");
        };
        assert_eq!(until - t0, Duration::from_millis(95));
        // Asked again, the same writer is not counted twice; within the
        // margin it hands in at once.
        assert_eq!(
            s.hold(Duration::from_millis(5), Some(0)),
            Some(Hold::Until(until, 0))
        );
        assert_eq!(
            s.hold(Duration::from_millis(95), Some(0)),
            Some(Hold::Now(0))
        );
        // It hands in 10 ms after the deadline: still in object 0.
        tokio::time::sleep_until(t0 + Duration::from_millis(110)).await;
        let late = s
            .append_held(meta(1, 0, 2), payload(2), Some(0))
            .await
            .unwrap();
        assert_eq!(late.id.seq, 0);
        assert_eq!(first.await.unwrap().unwrap().id.seq, 0);
        // The next object is still due at 200 ms (paced from 100 ms).
        assert_eq!(
            s.gathering_until().map(|d| d - t0),
            Some(Duration::from_millis(200))
        );
        // A holder that never comes: the cut waits a quarter of the linger.
        let next = {
            let s = s.clone();
            tokio::spawn(async move { s.append(meta(0, 2, 2), payload(2)).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(s.hold(Duration::from_millis(5), Some(0)).is_some());
        let r = next.await.unwrap().unwrap();
        assert_eq!(r.id.seq, 1);
        assert!(
            tokio::time::Instant::now() - t0 >= Duration::from_millis(225),
            "waited for the holder"
        );
        assert_eq!(
            s.gathering_until().map(|d| d - t0),
            Some(Duration::from_millis(300))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_are_cut_by_bytes_and_keep_stream_order() {
        let pool = pool();
        let one = payload(50).len();
        let config = WalConfig {
            linger: Duration::from_secs(30),
            max_bytes: one * 2,
            ..Default::default()
        };
        let s = WalStream::start(pool.clone(), 4, 2, 5, config);
        let mut answers = Vec::new();
        for i in 0..6 {
            let s = s.clone();
            answers.push(tokio::spawn(async move {
                s.append(meta(i % 2, i as i64 * 50, 50), payload(50)).await
            }));
        }
        let mut seqs = Vec::new();
        for a in answers {
            seqs.push(a.await.unwrap().unwrap().id.seq);
        }
        seqs.sort();
        // Two chunks an object (the byte bound, not the 30 s linger),
        // numbered from the stream's first seq without gaps.
        assert_eq!(seqs, vec![5, 5, 6, 6, 7, 7]);
        assert_eq!(objects(&pool).await.len(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fence_at_the_next_key_ends_the_stream_and_nothing_after_is_acked() {
        let pool = pool();
        // A recovering owner fenced seq 1 on every target.
        let fence_id = WalId {
            broker: 4,
            stream: 3,
            seq: 1,
        };
        let all = crate::ReplicaSet::new(pool.targets().to_vec(), 3);
        all.put_create(&layout::wal(fence_id), wal::encode_fence(fence_id))
            .await
            .unwrap();
        let config = WalConfig {
            linger: Duration::from_millis(20),
            ..Default::default()
        };
        let s = WalStream::start(pool.clone(), 4, 3, 0, config);
        let first = s.append(meta(0, 0, 2), payload(2)).await.unwrap();
        assert_eq!(first.id.seq, 0);
        let e = s.append(meta(0, 2, 2), payload(2)).await.unwrap_err();
        assert!(matches!(e, WalError::Fenced(WalId { seq: 1, .. })), "{e}");
        // The stream is over: later chunks are refused, never written.
        let e = s.append(meta(1, 0, 2), payload(2)).await.unwrap_err();
        assert!(matches!(e, WalError::Ended(_)), "{e}");
        assert_eq!(objects(&pool).await.len(), 2, "seq 0 and the fence only");
    }
}
