//! A replica set: the R storage targets one segment is written to. Writes go
//! to all R in parallel and are durable at W acknowledgements; reads fail
//! over from replica to replica.

use std::collections::BTreeMap;
use std::ops::Range;
use tracing::Instrument;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::error::StorageError;
use crate::target::StorageTarget;

/// After this many milliseconds without an answer, a read also asks the
/// next replica (set from the broker's `read_hedge_ms`).
pub static HEDGE_AFTER_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);

#[derive(Clone, Debug)]
pub struct ReplicaSet {
    targets: Vec<StorageTarget>,
    write_quorum: usize,
}

/// The outcome of a conditional create on a replica set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Created on at least W targets: durable.
    Created,
    /// Another writer holds the key on some target, and W could not be reached.
    AlreadyExists,
}

impl ReplicaSet {
    pub fn new(targets: Vec<StorageTarget>, write_quorum: usize) -> Self {
        Self {
            targets,
            write_quorum,
        }
    }

    pub fn targets(&self) -> &[StorageTarget] {
        &self.targets
    }

    pub fn ids(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.id.clone()).collect()
    }

    pub fn write_quorum(&self) -> usize {
        self.write_quorum
    }

    /// How many replicas a listing must cover to meet every W-durable write.
    pub fn read_quorum(&self) -> usize {
        self.targets.len() - self.write_quorum + 1
    }

    /// Conditional create of `path` on every target. Returns once W targets
    /// hold `data` (the others finish in the background), or once W can no
    /// longer be reached. A target that already holds exactly `data` (an
    /// earlier attempt of this same write, or a repair copying it) counts as
    /// created: the create is idempotent for identical content.
    pub async fn put_create(&self, path: &Path, data: Bytes) -> Result<PutOutcome, StorageError> {
        let mut pending: FuturesUnordered<_> = self
            .targets
            .iter()
            .map(|t| {
                let t = t.clone();
                let path = path.clone();
                let data = data.clone();
                // One span per replica write, under the caller's (a produce
                // request's, when traced): a slow target is the long one.
                let span = tracing::debug_span!(
                    "storage.put",
                    otel.kind = "client",
                    storage.target = %t.id,
                    storage.path = %path,
                    storage.bytes = data.len(),
                );
                tokio::spawn(
                    async move {
                        let r = create_or_match(&t, &path, data).await;
                        if matches!(r, Err(ref e) if !matches!(e, object_store::Error::AlreadyExists { .. })) {
                            // New segments avoid it until a probe sees it answer.
                            t.up.store(false, std::sync::atomic::Ordering::SeqCst);
                        }
                        (t.id, r)
                    }
                    .instrument(span),
                )
            })
            .collect();
        let total = self.targets.len();
        let (mut created, mut exists, mut failed) = (0, 0, 0);
        let mut last_err = None;
        while let Some(joined) = pending.next().await {
            let (id, result) = joined.map_err(|e| StorageError::Unavailable(e.to_string()))?;
            match result {
                Ok(()) => created += 1,
                Err(object_store::Error::AlreadyExists { .. }) => exists += 1,
                Err(e) => {
                    tracing::warn!(target_id = %id, path = %path, error = %e, "storage put failed");
                    failed += 1;
                    last_err = Some(e.to_string());
                }
            }
            if created >= self.write_quorum {
                return Ok(PutOutcome::Created);
            }
            if total - exists - failed < self.write_quorum {
                break;
            }
        }
        let why = format!(
            "{path}: {created} of {total} targets acknowledged, {} needed: {}",
            self.write_quorum,
            last_err.unwrap_or_default()
        );
        if exists > 0 {
            Ok(PutOutcome::AlreadyExists)
        } else if created > 0 {
            // Short of W, but on some replicas: it may yet be read, so it
            // may have landed (recovery keeps data found on any replica).
            Err(StorageError::Indeterminate(why))
        } else {
            Err(StorageError::Unavailable(why))
        }
    }

    /// Replicas to read from: those up first (then the others, in case).
    pub(crate) fn read_order(&self) -> impl Iterator<Item = &StorageTarget> {
        self.targets
            .iter()
            .filter(|t| t.is_up())
            .chain(self.targets.iter().filter(|t| !t.is_up()))
    }

    /// Read from the replicas (up ones first), failing over on errors; a
    /// replica that has not answered after the hedge delay gets company:
    /// the next replica is asked too, and the first good answer wins.
    /// Returns that answer (if any) and the replicas that answered
    /// otherwise before it, with their errors.
    pub(crate) async fn hedged<T, E, F>(&self, read: F) -> (Option<T>, Vec<(StorageTarget, E)>)
    where
        F: Fn(StorageTarget) -> futures::future::BoxFuture<'static, Result<T, E>>,
    {
        let order: Vec<StorageTarget> = self.read_order().cloned().collect();
        let hedge = std::time::Duration::from_millis(
            HEDGE_AFTER_MS.load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut pending = FuturesUnordered::new();
        let mut failed = Vec::new();
        let mut next = 0;
        let ask = |t: StorageTarget| {
            let fut = read(t.clone());
            async move { (t, fut.await) }
        };
        if let Some(t) = order.first() {
            pending.push(ask(t.clone()));
            next = 1;
        }
        loop {
            let more = next < order.len();
            tokio::select! {
                r = pending.next(), if !pending.is_empty() => match r {
                    Some((_, Ok(v))) => return (Some(v), failed),
                    Some((t, Err(e))) => {
                        failed.push((t, e));
                        if more {
                            pending.push(ask(order[next].clone()));
                            next += 1;
                        } else if pending.is_empty() {
                            return (None, failed);
                        }
                    }
                    None => return (None, failed),
                },
                _ = tokio::time::sleep(hedge), if more => {
                    pending.push(ask(order[next].clone()));
                    next += 1;
                }
                else => return (None, failed),
            }
        }
    }

    /// A whole object from a replica that has it (hedged).
    pub async fn get(&self, path: &Path) -> Result<Bytes, StorageError> {
        let (got, failed) = self
            .hedged(|t| {
                let path = path.clone();
                async move {
                    async { t.store.get(&path).await?.bytes().await }
                        .await
                        .map_err(StorageError::from_object_store)
                }
                .boxed()
            })
            .await;
        got.ok_or_else(|| worst(path, failed.into_iter().map(|(_, e)| e)))
    }

    /// A byte range from a replica that has it (hedged).
    pub async fn get_range(&self, path: &Path, range: Range<u64>) -> Result<Bytes, StorageError> {
        let (got, failed) = self
            .hedged(|t| {
                let (path, range) = (path.clone(), range.clone());
                async move {
                    t.store
                        .get_range(&path, range)
                        .await
                        .map_err(StorageError::from_object_store)
                }
                .boxed()
            })
            .await;
        got.ok_or_else(|| worst(path, failed.into_iter().map(|(_, e)| e)))
    }

    /// Objects under `prefix`, merged over enough replicas (R−W+1) to meet
    /// every W-durable write. Key → size.
    pub async fn list(&self, prefix: &Path) -> Result<BTreeMap<Path, u64>, StorageError> {
        let mut out = BTreeMap::new();
        let mut answered = 0;
        let mut last_err = None;
        for t in self.read_order() {
            let listing: Result<Vec<_>, _> = t
                .store
                .list(Some(prefix))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect();
            match listing {
                Ok(objects) => {
                    for o in objects {
                        out.insert(o.location, o.size);
                    }
                    answered += 1;
                    if answered >= self.read_quorum() {
                        return Ok(out);
                    }
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        Err(StorageError::Unavailable(format!(
            "listing {prefix}: {answered} replicas answered, {} needed: {}",
            self.read_quorum(),
            last_err.unwrap_or_default()
        )))
    }

    /// Each replica's own listing of `prefix` (key → size), in replica
    /// order; a replica that does not answer gives its error.
    pub async fn list_each(&self, prefix: &Path) -> Vec<Result<BTreeMap<Path, u64>, StorageError>> {
        futures::future::join_all(self.targets.iter().map(|t| async move {
            let mut out = BTreeMap::new();
            let mut stream = t.store.list(Some(prefix));
            while let Some(o) = stream.next().await {
                let o = o.map_err(StorageError::from_object_store)?;
                out.insert(o.location, o.size);
            }
            Ok(out)
        }))
        .await
    }

    /// Copy `path` from a replica that has it to `to`, streaming (segment
    /// objects can be large). Returns the bytes copied.
    pub async fn copy_to(&self, path: &Path, to: &StorageTarget) -> Result<u64, StorageError> {
        let mut last = StorageError::NotFound(path.to_string());
        for from in self.targets.iter().filter(|t| t.id != to.id && t.is_up()) {
            let got = match from.store.get(path).await {
                Ok(g) => g,
                Err(e) => {
                    last = StorageError::from_object_store(e);
                    continue;
                }
            };
            let up = to
                .store
                .put_multipart(path)
                .await
                .map_err(StorageError::from_object_store)?;
            let mut w = WriteMultipart::new_with_chunk_size(up, UPLOAD_PART_BYTES);
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(part) = stream.next().await {
                let part = part.map_err(StorageError::from_object_store)?;
                n += part.len() as u64;
                w.put(part);
            }
            w.finish().await.map_err(StorageError::from_object_store)?;
            return Ok(n);
        }
        Err(last)
    }

    /// Delete an object from every replica; a missing object is not an error.
    pub async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        let mut last = None;
        for t in &self.targets {
            match t.store.delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => last = Some(StorageError::from_object_store(e)),
            }
        }
        last.map_or(Ok(()), Err)
    }

    /// Start a streamed upload of one large object to every replica that
    /// is up (at least W of them; all when fewer are up). Nothing is sent
    /// until a part's worth has come: an object smaller than one part is
    /// one PUT per replica at [`ReplicatedUpload::finish`] rather than
    /// three requests (start, part, completion) — most seals of a broker
    /// writing many slow partitions.
    pub async fn upload(&self, path: &Path) -> Result<ReplicatedUpload, StorageError> {
        let up: Vec<&StorageTarget> = self.targets.iter().filter(|t| t.is_up()).collect();
        let candidates: Vec<StorageTarget> = if up.len() >= self.write_quorum {
            up.into_iter().cloned().collect()
        } else {
            self.targets.clone()
        };
        if candidates.len() < self.write_quorum {
            return Err(StorageError::Unavailable(format!(
                "upload of {path}: {} replicas, {} needed",
                candidates.len(),
                self.write_quorum
            )));
        }
        Ok(ReplicatedUpload {
            state: UploadState::Gathering {
                targets: candidates,
                held: Vec::new(),
                len: 0,
            },
            write_quorum: self.write_quorum,
            path: path.clone(),
        })
    }
}

/// Create `path` holding `data` on one target; a target that already holds
/// exactly `data` answers as if created.
async fn create_or_match(
    t: &StorageTarget,
    path: &Path,
    data: Bytes,
) -> Result<(), object_store::Error> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match t
        .store
        .put_opts(path, PutPayload::from_bytes(data.clone()), opts)
        .await
    {
        Ok(_) => Ok(()),
        Err(e @ object_store::Error::AlreadyExists { .. }) => match t.store.get(path).await {
            Ok(got) => match got.bytes().await {
                Ok(existing) if existing == data => Ok(()),
                _ => Err(e),
            },
            Err(_) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// The error that tells most about why no replica answered: one that may
/// pass (unavailable) over a corrupt copy over a missing object.
pub(crate) fn worst(path: &Path, errors: impl IntoIterator<Item = StorageError>) -> StorageError {
    let rank = |e: &StorageError| match e {
        StorageError::Unavailable(_) | StorageError::Indeterminate(_) => 3,
        StorageError::Corrupt { .. } => 2,
        StorageError::NotFound(_) | StorageError::AlreadyExists(_) => 1,
        StorageError::Invalid(_) => 4,
    };
    errors
        .into_iter()
        .max_by_key(rank)
        .unwrap_or_else(|| StorageError::NotFound(path.to_string()))
}

/// Part size of multipart uploads (segment seals, compaction, repair
/// copies). Every part is a billed request on an object store: 32 MiB
/// parts make a consolidated GB cost ~30 requests per replica on top of
/// the WAL objects' ~120 (docs/storage.md, "Cost model"); 8 MiB parts
/// cost as much again as the WAL itself.
pub const UPLOAD_PART_BYTES: usize = 32 << 20;

/// Parts of one replica's upload in flight while the next fills: an
/// upload holds at most (1 + this) parts per replica in memory.
const UPLOAD_PARTS_IN_FLIGHT: usize = 1;

/// A large object being written to every replica of a set.
pub struct ReplicatedUpload {
    state: UploadState,
    write_quorum: usize,
    path: Path,
}

enum UploadState {
    /// Less than a part so far: held, nothing sent.
    Gathering {
        targets: Vec<StorageTarget>,
        held: Vec<Bytes>,
        len: usize,
    },
    /// A multipart upload per replica.
    Writing(Vec<WriteMultipart>),
}

impl ReplicatedUpload {
    /// Add bytes on every replica; a replica that fails drops out, as long
    /// as W remain.
    pub async fn write(&mut self, data: Bytes) -> Result<(), StorageError> {
        if let UploadState::Gathering { targets, held, len } = &mut self.state {
            if *len + data.len() < UPLOAD_PART_BYTES {
                *len += data.len();
                held.push(data);
                return Ok(());
            }
            // A part's worth: the multipart uploads start.
            let mut writers = Vec::with_capacity(targets.len());
            let mut last = None;
            for t in targets.iter() {
                match t.store.put_multipart(&self.path).await {
                    Ok(u) => {
                        writers.push(WriteMultipart::new_with_chunk_size(u, UPLOAD_PART_BYTES))
                    }
                    Err(e) => {
                        tracing::warn!(target_id = %t.id, path = %self.path, error = %e, "starting an upload failed");
                        last = Some(e.to_string());
                    }
                }
            }
            if writers.len() < self.write_quorum {
                let started = writers.len();
                for w in writers {
                    drop(w.abort().await);
                }
                return Err(StorageError::Unavailable(format!(
                    "upload of {}: {started} replicas started, {} needed: {}",
                    self.path,
                    self.write_quorum,
                    last.unwrap_or_default()
                )));
            }
            let earlier = std::mem::take(held);
            self.state = UploadState::Writing(writers);
            for b in earlier {
                self.write_parts(b).await?;
            }
        }
        self.write_parts(data).await
    }

    async fn write_parts(&mut self, data: Bytes) -> Result<(), StorageError> {
        let UploadState::Writing(writers) = &mut self.state else {
            unreachable!("parts are written once the uploads started");
        };
        let mut failed = Vec::new();
        for (i, w) in writers.iter_mut().enumerate() {
            match w.wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT).await {
                Ok(()) => w.put(data.clone()),
                Err(e) => {
                    tracing::warn!(path = %self.path, error = %e, "a replica of an upload failed");
                    failed.push(i);
                }
            }
        }
        for i in failed.into_iter().rev() {
            let w = writers.remove(i);
            drop(w.abort().await);
        }
        if writers.len() < self.write_quorum {
            return Err(StorageError::Unavailable(format!(
                "upload of {}: {} replicas left, {} needed",
                self.path,
                writers.len(),
                self.write_quorum
            )));
        }
        Ok(())
    }

    /// Complete the upload; succeeds once W replicas have the object.
    pub async fn finish(self) -> Result<(), StorageError> {
        let path = &self.path;
        let (total, results): (usize, Vec<Result<(), String>>) = match self.state {
            UploadState::Gathering { targets, held, .. } => {
                let payload: PutPayload = held.into_iter().collect();
                let puts = targets.iter().map(|t| {
                    let payload = payload.clone();
                    async move {
                        t.store
                            .put(path, payload)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                });
                (targets.len(), futures::future::join_all(puts).await)
            }
            UploadState::Writing(writers) => (
                writers.len(),
                futures::future::join_all(writers.into_iter().map(|w| async move {
                    w.finish().await.map(|_| ()).map_err(|e| e.to_string())
                }))
                .await,
            ),
        };
        let ok = results.iter().filter(|r| r.is_ok()).count();
        if ok >= self.write_quorum {
            Ok(())
        } else {
            let err = results
                .into_iter()
                .find_map(|r| r.err())
                .unwrap_or_default();
            Err(StorageError::Unavailable(format!(
                "upload of {path}: {ok} of {total} replicas completed: {err}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object smaller than a part is one PUT per replica (not a start,
    /// a part and a completion); a larger one goes in parts; both read
    /// back whole from every replica.
    #[tokio::test]
    async fn a_small_upload_is_one_put_per_replica() {
        use crate::counted::requests;
        let targets: Vec<StorageTarget> = (0..3)
            .map(|i| StorageTarget::open(format!("upl-{i}"), "memory://").unwrap())
            .collect();
        let set = ReplicaSet::new(targets.clone(), 2);
        let count = |op| {
            (0..3)
                .map(|i| requests(&format!("upl-{i}"), op))
                .sum::<u64>()
        };
        let small: Path = "seg/small".into();
        let mut up = set.upload(&small).await.unwrap();
        up.write(Bytes::from_static(b"hello ")).await.unwrap();
        up.write(Bytes::from_static(b"world")).await.unwrap();
        up.finish().await.unwrap();
        assert_eq!((count("put"), count("multipart"), count("part")), (3, 0, 0));

        let large: Path = "seg/large".into();
        let mut up = set.upload(&large).await.unwrap();
        up.write(Bytes::from(vec![7u8; UPLOAD_PART_BYTES - 1]))
            .await
            .unwrap();
        up.write(Bytes::from(vec![8u8; 2])).await.unwrap();
        up.finish().await.unwrap();
        assert_eq!((count("put"), count("multipart")), (3, 3));
        assert!(count("part") >= 3 && count("complete") == 3);
        for t in &targets {
            let got = t.store.get(&small).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], b"hello world");
            let got = t.store.get(&large).await.unwrap().bytes().await.unwrap();
            assert_eq!(got.len(), UPLOAD_PART_BYTES + 1);
            assert_eq!((got[0], got[UPLOAD_PART_BYTES]), (7, 8));
        }
    }

    #[tokio::test]
    async fn conditional_create_is_exclusive() {
        let t = StorageTarget::open("m", "memory://").unwrap();
        let set = ReplicaSet::new(vec![t], 1);
        let p = Path::from("a/b");
        assert_eq!(
            set.put_create(&p, Bytes::from_static(b"1")).await.unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            set.put_create(&p, Bytes::from_static(b"2")).await.unwrap(),
            PutOutcome::AlreadyExists
        );
        assert_eq!(set.get(&p).await.unwrap(), Bytes::from_static(b"1"));
        assert_eq!(
            set.get_range(&p, 0..1).await.unwrap(),
            Bytes::from_static(b"1")
        );
        let listed = set.list(&Path::from("a")).await.unwrap();
        assert_eq!(listed.get(&p), Some(&1));
        set.delete(&p).await.unwrap();
        set.delete(&p).await.unwrap();
        assert!(matches!(set.get(&p).await, Err(StorageError::NotFound(_))));
    }

    #[tokio::test]
    async fn quorum_write_with_one_replica_holding_the_key() {
        let ts: Vec<_> = (0..3)
            .map(|i| StorageTarget::open(format!("t{i}"), "memory://").unwrap())
            .collect();
        let p = Path::from("x");
        // A "zombie" got the key onto two of three replicas first: W=2 is out of reach.
        for t in &ts[..2] {
            t.store
                .put(&p, PutPayload::from_static(b"z"))
                .await
                .unwrap();
        }
        let set = ReplicaSet::new(ts.clone(), 2);
        assert_eq!(
            set.put_create(&p, Bytes::from_static(b"n")).await.unwrap(),
            PutOutcome::AlreadyExists
        );
        let q = Path::from("y");
        ts[0]
            .store
            .put(&q, PutPayload::from_static(b"z"))
            .await
            .unwrap();
        assert_eq!(
            set.put_create(&q, Bytes::from_static(b"n")).await.unwrap(),
            PutOutcome::Created
        );
    }

    /// `n` fault-injecting stores in memory, and a target on each.
    fn faulty(
        n: usize,
    ) -> (
        Vec<std::sync::Arc<crate::faulty::FaultyStore>>,
        Vec<StorageTarget>,
    ) {
        use crate::faulty::FaultyStore;
        use object_store::memory::InMemory;
        let stores: Vec<_> = (0..n)
            .map(|i| {
                FaultyStore::new(
                    format!("f{i}"),
                    std::sync::Arc::new(InMemory::new()),
                    i as u64,
                )
            })
            .collect();
        let targets = stores
            .iter()
            .enumerate()
            .map(|(i, s)| StorageTarget::from_store(format!("f{i}"), s.clone()))
            .collect();
        (stores, targets)
    }

    #[tokio::test]
    async fn a_put_short_of_w_is_indeterminate_if_any_replica_took_it_else_unavailable() {
        let (stores, targets) = faulty(3);
        // W = 3: one replica down, two take it — it may be read later.
        let set = ReplicaSet::new(targets.clone(), 3);
        stores[2].set_down(true);
        let e = set
            .put_create(&Path::from("a"), Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Indeterminate(_)), "{e}");
        // Every replica down: nothing was written anywhere.
        for s in &stores {
            s.set_down(true);
        }
        let e = ReplicaSet::new(targets, 2)
            .put_create(&Path::from("b"), Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(e, StorageError::Unavailable(_)), "{e}");
    }

    #[tokio::test]
    async fn a_hung_replica_is_hedged_and_a_failed_one_failed_over() {
        use crate::faulty::Faults;
        let (stores, targets) = faulty(2);
        let set = ReplicaSet::new(targets, 2);
        let p = Path::from("seg");
        set.put_create(&p, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        // The first replica hangs: the read is answered by the second after
        // the hedge delay instead of never.
        stores[0].set_faults(Faults {
            hang_rate: 1.0,
            ..Default::default()
        });
        let t = tokio::time::Instant::now();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), set.get_range(&p, 0..5))
            .await
            .expect("a hung replica does not hang the read")
            .unwrap();
        assert_eq!(got, "hello");
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
        // The first replica fails: the second answers at once.
        stores[0].set_faults(Faults::default());
        stores[0].set_down(true);
        assert_eq!(set.get(&p).await.unwrap(), "hello");
    }
}
