//! A partition's log as readers see it: sealed segments and the committed
//! chunks of open segments, bounded by the high watermark. The partition's
//! single writer publishes every change here; any number of readers plan
//! their reads under a short lock and do the I/O outside it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use floe_common::{Epoch, Offset, PartitionId};
use floe_protocol::batch::{BatchHeader, TimestampType, HEADER_LEN};
use object_store::path::Path;
use tokio::sync::watch;

use crate::cache::{BlockCache, BLOCK_SIZE};
use crate::chunk;
use crate::error::StorageError;
use crate::replica::ReplicaSet;
use crate::segment::SegmentIndex;

/// A committed chunk of an open segment.
#[derive(Clone, Debug)]
pub struct ChunkRef {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub max_timestamp: i64,
    /// The chunk's own object, or (when `wal` is set) the key its payload
    /// is cached under: [`WalPlace::cache_key`].
    pub path: Arc<str>,
    pub bytes: u64,
    /// Set when the chunk lies in a shared WAL object (issue 24).
    pub wal: Option<Arc<WalPlace>>,
}

/// Where a chunk lies in a shared WAL object: the object, the byte range
/// of its batches there, their CRC32C (from the object's index), and the
/// targets the object was written to.
#[derive(Clone, Debug)]
pub struct WalPlace {
    pub id: crate::wal::WalId,
    pub pos: u64,
    pub len: u32,
    pub payload_crc: u32,
    pub replicas: ReplicaSet,
}

impl WalPlace {
    /// The key a chunk of a WAL object is cached under (and named by in
    /// logs): the object's path and the chunk's position in it.
    pub fn cache_key(id: crate::wal::WalId, pos: u64) -> Arc<str> {
        Arc::from(format!("{}#{pos}", crate::layout::wal(id)).as_str())
    }
}

#[derive(Clone, Debug)]
pub struct SealedSegment {
    pub base_offset: Offset,
    pub end_offset: Offset,
    pub epoch: Epoch,
    pub path: Arc<str>,
    pub data_bytes: u64,
    pub object_bytes: u64,
    pub max_timestamp: i64,
    pub sealed_ms: i64,
    pub replicas: ReplicaSet,
}

#[derive(Clone, Debug)]
pub enum SegmentView {
    Open {
        base_offset: Offset,
        epoch: Epoch,
        replicas: ReplicaSet,
        chunks: Vec<ChunkRef>,
    },
    Sealed(Arc<SealedSegment>),
}

impl SegmentView {
    pub fn base_offset(&self) -> Offset {
        match self {
            SegmentView::Open { base_offset, .. } => *base_offset,
            SegmentView::Sealed(s) => s.base_offset,
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            SegmentView::Open { chunks, .. } => chunks.iter().map(|c| c.bytes).sum(),
            SegmentView::Sealed(s) => s.data_bytes,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LogState {
    pub log_start_offset: Offset,
    /// End of the durable, acked prefix: the next offset to be committed.
    pub high_watermark: Offset,
    pub leader_epoch: Epoch,
    pub segments: BTreeMap<Offset, SegmentView>,
    /// The first offset of the oldest transaction still open (its end
    /// marker not durable yet), if any: the last stable offset is the
    /// smaller of it and the high watermark.
    pub first_unstable: Option<Offset>,
    /// Aborted transactions whose abort marker is durable, by the marker's
    /// offset: what a read_committed fetch is told to drop.
    pub aborted: Arc<BTreeMap<Offset, AbortedTxn>>,
}

/// A transaction that ended in an abort: its producer and first offset;
/// the key it is kept under is its abort marker's offset (its last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: Offset,
}

impl LogState {
    /// The last stable offset (LSO): below it every transaction has ended.
    pub fn last_stable_offset(&self) -> Offset {
        self.first_unstable
            .map_or(self.high_watermark, |f| f.min(self.high_watermark))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is outside [{log_start}, {high_watermark}]")]
    OffsetOutOfRange {
        offset: Offset,
        log_start: Offset,
        high_watermark: Offset,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Record batches read from the log.
#[derive(Clone, Debug, Default)]
pub struct ReadResult {
    pub records: Bytes,
    /// The offset after the last batch returned.
    pub next_offset: Offset,
}

/// Bytes in parts (slices of chunks and cached blocks) read as one run:
/// batch headers are parsed across the parts' edges and whole batches are
/// sliced out without joining anything; a read joins its parts once, at
/// the end.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pieces {
    parts: Vec<Bytes>,
    len: usize,
}

impl Pieces {
    fn one(b: Bytes) -> Self {
        let mut p = Self::default();
        p.push(b);
        p
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push(b);
        }
    }

    fn extend(&mut self, other: Pieces) {
        self.len += other.len;
        self.parts.extend(other.parts);
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part holding byte `pos`, searched from `from` (a part index at
    /// or before it, with the byte position where that part starts).
    fn locate(&self, pos: usize, from: (usize, usize)) -> Option<(usize, usize)> {
        let (mut i, mut start) = from;
        while i < self.parts.len() {
            if pos < start + self.parts[i].len() {
                return Some((i, start));
            }
            start += self.parts[i].len();
            i += 1;
        }
        None
    }

    /// The batch header at `pos` (copied out only when it spans parts).
    fn header_at(&self, pos: usize) -> Option<BatchHeader> {
        self.header_from(pos, (0, 0)).map(|(h, _)| h)
    }

    fn header_from(
        &self,
        pos: usize,
        from: (usize, usize),
    ) -> Option<(BatchHeader, (usize, usize))> {
        if pos + HEADER_LEN > self.len {
            return None;
        }
        let at = self.locate(pos, from)?;
        let (i, start) = at;
        let first = &self.parts[i][pos - start..];
        if first.len() >= HEADER_LEN {
            return BatchHeader::parse(first).map(|h| (h, at));
        }
        let mut buf = [0u8; HEADER_LEN];
        let mut filled = 0;
        for p in std::iter::once(first).chain(self.parts[i + 1..].iter().map(|b| &b[..])) {
            let n = p.len().min(HEADER_LEN - filled);
            buf[filled..filled + n].copy_from_slice(&p[..n]);
            filled += n;
            if filled == HEADER_LEN {
                break;
            }
        }
        BatchHeader::parse(&buf).map(|h| (h, at))
    }

    /// Whole batches from the start: (position, header), as
    /// `floe_protocol::batch::Batches` walks one buffer.
    fn batches(&self) -> impl Iterator<Item = (usize, BatchHeader)> + '_ {
        let mut pos = 0;
        let mut at = (0, 0);
        std::iter::from_fn(move || {
            let (h, found) = self.header_from(pos, at)?;
            let len = h.total_len();
            if h.batch_length < (HEADER_LEN - floe_protocol::batch::LOG_OVERHEAD) as i32
                || pos + len > self.len
            {
                return None;
            }
            at = found;
            let here = pos;
            pos += len;
            Some((here, h))
        })
    }

    /// Bytes [range) as slices of the parts.
    fn slice(&self, range: std::ops::Range<usize>) -> Pieces {
        let mut out = Pieces::default();
        let mut start = 0;
        for p in &self.parts {
            let end = start + p.len();
            let lo = range.start.max(start);
            let hi = range.end.min(end);
            if lo < hi {
                out.push(p.slice(lo - start..hi - start));
            }
            start = end;
        }
        out
    }

    /// The bytes in one buffer: the part itself when there is one.
    fn join(mut self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts.pop().unwrap(),
            _ => {
                let mut b = BytesMut::with_capacity(self.len);
                for p in self.parts {
                    b.extend_from_slice(&p);
                }
                b.freeze()
            }
        }
    }
}

enum Plan {
    Empty,
    Chunks {
        replicas: ReplicaSet,
        chunks: Vec<ChunkRef>,
    },
    Segment(Arc<SealedSegment>),
}

/// The shared, readable state of one partition's log.
#[derive(Debug)]
pub struct PartitionLog {
    pub id: PartitionId,
    state: RwLock<LogState>,
    cache: BlockCache,
    hw: watch::Sender<Offset>,
    /// Bumped (under the state's write lock) by every change that is not
    /// an append of committed chunks: followers then need a snapshot.
    shape: std::sync::atomic::AtomicU64,
}

impl PartitionLog {
    pub fn new(id: PartitionId, state: LogState, cache: BlockCache) -> Arc<Self> {
        let (hw, _) = watch::channel(state.high_watermark);
        Arc::new(Self {
            id,
            state: RwLock::new(state),
            cache,
            hw,
            shape: Default::default(),
        })
    }

    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Wakes whenever the high watermark moves (or the log start does).
    pub fn subscribe(&self) -> watch::Receiver<Offset> {
        self.hw.subscribe()
    }

    /// (log start offset, high watermark, leader epoch).
    pub fn offsets(&self) -> (Offset, Offset, Epoch) {
        let s = self.state.read().unwrap();
        (s.log_start_offset, s.high_watermark, s.leader_epoch)
    }

    /// The last stable offset (the high watermark when no transaction is
    /// open).
    pub fn last_stable_offset(&self) -> Offset {
        self.state.read().unwrap().last_stable_offset()
    }

    /// The aborted transactions whose abort marker is in `[from, to)`, by
    /// marker offset (what a sealed segment or a checkpoint records).
    /// Empty when `from` is not before `to` (a follower's state may say
    /// so: found by the tail_update fuzz target).
    pub fn aborted_markers(&self, from: Offset, to: Offset) -> Vec<(Offset, AbortedTxn)> {
        if from >= to {
            return Vec::new();
        }
        let s = self.state.read().unwrap();
        s.aborted.range(from..to).map(|(k, a)| (*k, *a)).collect()
    }

    /// The aborted transactions a read_committed reader of `[from, upper)`
    /// must know: those whose abort marker is at or after `from` and whose
    /// first offset is before `upper`, in marker order, as (producer id,
    /// first offset).
    pub fn aborted_in(&self, from: Offset, upper: Offset) -> Vec<(i64, Offset)> {
        let s = self.state.read().unwrap();
        s.aborted
            .range(from..)
            .filter(|(_, a)| a.first_offset < upper)
            .map(|(_, a)| (a.producer_id, a.first_offset))
            .collect()
    }

    pub fn snapshot(&self) -> LogState {
        self.state.read().unwrap().clone()
    }

    /// Change the state (the writer only) and wake waiting readers.
    pub fn update<R>(&self, f: impl FnOnce(&mut LogState) -> R) -> R {
        self.change(true, f)
    }

    /// [`PartitionLog::update`] for a change that only appends committed
    /// chunks to open segments and moves the high watermark (followers are
    /// shown just the new chunks).
    pub fn append_update<R>(&self, f: impl FnOnce(&mut LogState) -> R) -> R {
        self.change(false, f)
    }

    fn change<R>(&self, reshaped: bool, f: impl FnOnce(&mut LogState) -> R) -> R {
        let (r, hw) = {
            let mut s = self.state.write().unwrap();
            let r = f(&mut s);
            if reshaped {
                self.shape
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (r, s.high_watermark)
        };
        self.hw.send_replace(hw);
        r
    }

    fn plan(&self, offset: Offset) -> Result<Plan, ReadError> {
        let s = self.state.read().unwrap();
        if offset < s.log_start_offset || offset > s.high_watermark {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start: s.log_start_offset,
                high_watermark: s.high_watermark,
            });
        }
        if offset == s.high_watermark {
            return Ok(Plan::Empty);
        }
        let Some((_, seg)) = s.segments.range(..=offset).next_back() else {
            return Ok(Plan::Empty);
        };
        Ok(match seg {
            SegmentView::Sealed(seg) if offset < seg.end_offset => Plan::Segment(seg.clone()),
            SegmentView::Sealed(_) => Plan::Empty,
            SegmentView::Open {
                replicas, chunks, ..
            } => {
                let first = chunks.partition_point(|c| c.next_offset <= offset);
                Plan::Chunks {
                    replicas: replicas.clone(),
                    chunks: chunks[first..].iter().take(64).cloned().collect(),
                }
            }
        })
    }

    /// Read whole batches from `offset`, about `max_bytes` of them. The
    /// batch containing `offset` comes first (a fetch in the middle of a
    /// batch gets the whole batch). With `min_one`, that first batch is
    /// returned even when larger than `max_bytes` (KIP-74).
    pub async fn read(
        &self,
        offset: Offset,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, ReadError> {
        self.read_until(offset, Offset::MAX, max_bytes, min_one)
            .await
    }

    /// [`PartitionLog::read`] of the batches that start before `upper` (a
    /// read_committed fetch reads up to the last stable offset).
    pub async fn read_until(
        &self,
        offset: Offset,
        upper: Offset,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, ReadError> {
        let mut pieces = Pieces::default();
        let mut next = offset;
        // A reader that raced with a seal may find a chunk already deleted:
        // plan again from the fresh state.
        let mut retries = 0;
        loop {
            let plan = self.plan(next)?;
            if next >= upper {
                break;
            }
            let budget = max_bytes.saturating_sub(pieces.len());
            let got = match plan {
                Plan::Empty => break,
                Plan::Chunks { replicas, chunks } => {
                    self.read_chunks(
                        &replicas,
                        &chunks,
                        next,
                        upper,
                        budget,
                        min_one && pieces.is_empty(),
                    )
                    .await
                }
                Plan::Segment(seg) => {
                    self.read_segment(&seg, next, upper, budget, min_one && pieces.is_empty())
                        .await
                }
            };
            let (bytes, after) = match got {
                Ok(v) => v,
                Err(StorageError::NotFound(_)) if retries < 3 => {
                    retries += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if bytes.is_empty() {
                if after > next {
                    // Offsets compaction removed: step over them.
                    next = after;
                    continue;
                }
                break;
            }
            pieces.extend(bytes);
            next = after;
            if pieces.len() >= max_bytes {
                break;
            }
        }
        // The one join of the read (none when it is one slice).
        Ok(ReadResult {
            records: pieces.join(),
            next_offset: next,
        })
    }

    /// Take whole batches from `data` (which starts at a batch boundary):
    /// skip those before `offset`, stop before exceeding `budget` or at a
    /// batch starting at `upper` or later.
    fn take(
        data: &Pieces,
        offset: Offset,
        upper: Offset,
        budget: usize,
        min_one: bool,
    ) -> (Pieces, Offset, bool) {
        let mut start = None;
        let mut end = 0;
        let mut next = offset;
        let mut exhausted = true;
        for (pos, h) in data.batches() {
            if h.next_offset() <= offset {
                continue;
            }
            if h.base_offset >= upper {
                exhausted = false;
                break;
            }
            let s = *start.get_or_insert(pos);
            let len = pos + h.total_len() - s;
            if len > budget && !(min_one && end == 0) {
                exhausted = false;
                break;
            }
            end = pos + h.total_len();
            next = h.next_offset();
        }
        match start {
            Some(s) if end > s => (data.slice(s..end), next, exhausted),
            _ => (Pieces::default(), offset, exhausted),
        }
    }

    async fn chunk_payload(
        &self,
        replicas: &ReplicaSet,
        c: &ChunkRef,
    ) -> Result<Bytes, StorageError> {
        load_chunk(&self.cache, replicas, c).await
    }

    async fn read_chunks(
        &self,
        replicas: &ReplicaSet,
        chunks: &[ChunkRef],
        offset: Offset,
        upper: Offset,
        budget: usize,
        min_one: bool,
    ) -> Result<(Pieces, Offset), StorageError> {
        let mut pieces = Pieces::default();
        let mut next = offset;
        for c in chunks {
            let payload = Pieces::one(self.chunk_payload(replicas, c).await?);
            let (bytes, after, exhausted) = Self::take(
                &payload,
                next,
                upper,
                budget - pieces.len(),
                min_one && pieces.is_empty(),
            );
            if !bytes.is_empty() {
                pieces.extend(bytes);
                next = after;
            }
            if !exhausted || pieces.len() >= budget {
                break;
            }
        }
        Ok((pieces, next))
    }

    async fn segment_index(&self, seg: &SealedSegment) -> Result<Arc<SegmentIndex>, StorageError> {
        if let Some(i) = self.cache.get_index(&seg.path) {
            return Ok(i);
        }
        let tail = seg
            .replicas
            .get_range(
                &Path::from(seg.path.as_ref()),
                seg.data_bytes..seg.object_bytes,
            )
            .await?;
        let idx = Arc::new(SegmentIndex::parse(&seg.path, &tail)?);
        self.cache.put_index(seg.path.clone(), idx.clone());
        Ok(idx)
    }

    /// Bytes [start, end) of a segment's data, through the block cache, as
    /// slices of the cached blocks.
    async fn segment_span(
        &self,
        seg: &SealedSegment,
        start: u64,
        end: u64,
    ) -> Result<Pieces, StorageError> {
        let end = end.min(seg.data_bytes);
        if start >= end {
            return Ok(Pieces::default());
        }
        let path = Path::from(seg.path.as_ref());
        let first = start / BLOCK_SIZE;
        let last = (end - 1) / BLOCK_SIZE;
        let mut blocks = Vec::with_capacity((last - first + 1) as usize);
        for b in first..=last {
            let block = match self.cache.get_block(&seg.path, b) {
                Some(x) => x,
                None => {
                    let from = b * BLOCK_SIZE;
                    let to = ((b + 1) * BLOCK_SIZE).min(seg.data_bytes);
                    let x = seg.replicas.get_range(&path, from..to).await?;
                    if x.len() as u64 != to - from {
                        return Err(StorageError::corrupt(seg.path.as_ref(), "short read"));
                    }
                    self.cache.put_block(seg.path.clone(), b, x.clone());
                    x
                }
            };
            blocks.push(block);
        }
        let lo = (start - first * BLOCK_SIZE) as usize;
        let mut out = Pieces::default();
        let n = blocks.len();
        for (i, b) in blocks.iter().enumerate() {
            let from = if i == 0 { lo } else { 0 };
            let to = if i == n - 1 {
                (end - last * BLOCK_SIZE) as usize
            } else {
                b.len()
            };
            out.push(b.slice(from..to));
        }
        Ok(out)
    }

    async fn read_segment(
        &self,
        seg: &SealedSegment,
        offset: Offset,
        upper: Offset,
        budget: usize,
        min_one: bool,
    ) -> Result<(Pieces, Offset), StorageError> {
        let idx = self.segment_index(seg).await?;
        let pos = idx.position_for(offset);
        // Read past the budget by the index interval so the batch holding
        // `offset` is in the span even when the index entry is before it.
        let mut want = budget as u64 + 2 * crate::segment::DEFAULT_INDEX_INTERVAL as u64;
        loop {
            let span = self.segment_span(seg, pos, pos + want).await?;
            let mut tail = 0usize;
            let mut found = None;
            for (p, h) in span.batches() {
                tail = p + h.total_len();
                if h.next_offset() > offset {
                    found = Some(h);
                    break;
                }
            }
            match found {
                Some(h) => {
                    if !min_one && h.total_len() > budget {
                        return Ok((Pieces::default(), offset));
                    }
                    let (bytes, next, _) = Self::take(&span, offset, upper, budget, min_one);
                    return Ok((bytes, next));
                }
                None => {
                    if pos + span.len() as u64 >= seg.data_bytes {
                        // Nothing at or after `offset` here: compaction
                        // removed the segment's tail; the read goes on at
                        // the next segment.
                        return Ok((Pieces::default(), seg.end_offset.max(offset)));
                    }
                    // The wanted batch starts at `tail` and was cut off.
                    let len = span.header_at(tail).map_or(HEADER_LEN, |h| h.total_len());
                    if !min_one && len > budget {
                        return Ok((Pieces::default(), offset));
                    }
                    want = (tail + len).max(want as usize + 1) as u64;
                }
            }
        }
    }

    /// The first offset whose record timestamp is at or after `ts`, with that
    /// timestamp; `None` if every record is older.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(Offset, i64)>, ReadError> {
        let state = self.snapshot();
        for seg in state.segments.values() {
            match seg {
                SegmentView::Sealed(s) => {
                    if s.max_timestamp < ts || s.end_offset <= state.log_start_offset {
                        continue;
                    }
                    let idx = self.segment_index(s).await?;
                    let start = idx.scan_start_for_time(ts).max(state.log_start_offset);
                    let pos = idx.position_for(start);
                    let data = self.segment_span(s, pos, s.data_bytes).await?;
                    if let Some(hit) = first_at_or_after(&data, ts, state.log_start_offset) {
                        return Ok(Some(hit));
                    }
                }
                SegmentView::Open {
                    replicas, chunks, ..
                } => {
                    for c in chunks {
                        if c.max_timestamp < ts || c.next_offset <= state.log_start_offset {
                            continue;
                        }
                        let payload = Pieces::one(self.chunk_payload(replicas, c).await?);
                        if let Some(hit) = first_at_or_after(&payload, ts, state.log_start_offset) {
                            return Ok(Some(hit));
                        }
                    }
                }
            }
        }
        Ok(None)
    }

    /// The offset after the last record whose batch timestamp is the
    /// greatest in the log, with that timestamp (ListOffsets MAX_TIMESTAMP).
    pub async fn max_timestamp(&self) -> Result<Option<(Offset, i64)>, ReadError> {
        let state = self.snapshot();
        let mut best: Option<(i64, &SegmentView)> = None;
        for seg in state.segments.values() {
            let ts = match seg {
                SegmentView::Sealed(s) => s.max_timestamp,
                SegmentView::Open { chunks, .. } => {
                    chunks.iter().map(|c| c.max_timestamp).max().unwrap_or(-1)
                }
            };
            if best.is_none_or(|(b, _)| ts > b) && ts >= 0 {
                best = Some((ts, seg));
            }
        }
        let Some((ts, _)) = best else { return Ok(None) };
        Ok(self.offset_for_timestamp(ts).await?.map(|(o, _)| (o, ts)))
    }
}

/// What a follower of a partition's log (a proxy) has been shown: enough of
/// the log's shape to tell appends to the open segments from any other
/// change (a seal, a roll, retention), which needs a full snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TailCursor {
    shown: bool,
    /// The log's shape counter when last shown.
    shape: u64,
    segments: usize,
    first_base: Offset,
    /// The last few segments: (base, sealed, chunks shown).
    tail: Vec<(Offset, bool, usize)>,
    log_start: Offset,
    high_watermark: Offset,
    leader_epoch: Epoch,
    first_unstable: Option<Offset>,
    /// The last abort marker shown.
    aborted_last: Option<Offset>,
}

/// The change since a follower's cursor.
#[derive(Clone, Debug)]
pub enum TailDelta {
    Unchanged,
    /// New committed chunks of open segments (segment base, chunk), and the
    /// offsets after them.
    Append {
        chunks: Vec<(Offset, ChunkRef)>,
        log_start: Offset,
        high_watermark: Offset,
        /// The log's first unstable offset now, and the aborted
        /// transactions indexed since the cursor last looked.
        first_unstable: Option<Offset>,
        aborted: Vec<(Offset, AbortedTxn)>,
    },
    Snapshot(LogState),
}

/// Segments whose shape a cursor follows closely (an open segment being
/// consolidated, the one being written, and a margin).
const TAIL_SEGMENTS: usize = 3;

impl TailCursor {
    fn shape(s: &LogState, shape: u64) -> Self {
        let n = s.segments.len();
        TailCursor {
            shown: true,
            shape,
            segments: n,
            first_base: s.segments.keys().next().copied().unwrap_or(-1),
            tail: s
                .segments
                .iter()
                .skip(n.saturating_sub(TAIL_SEGMENTS))
                .map(|(base, seg)| match seg {
                    SegmentView::Sealed(_) => (*base, true, 0),
                    SegmentView::Open { chunks, .. } => (*base, false, chunks.len()),
                })
                .collect(),
            log_start: s.log_start_offset,
            high_watermark: s.high_watermark,
            leader_epoch: s.leader_epoch,
            first_unstable: s.first_unstable,
            aborted_last: s.aborted.keys().next_back().copied(),
        }
    }
}

impl PartitionLog {
    /// What changed since `cursor` (which is moved to now): usually the
    /// chunks committed since, otherwise the whole state.
    pub fn changes(&self, cursor: &mut TailCursor) -> TailDelta {
        let s = self.state.read().unwrap();
        let now = TailCursor::shape(&s, self.shape.load(std::sync::atomic::Ordering::Relaxed));
        if *cursor == now {
            return TailDelta::Unchanged;
        }
        let appends_only = cursor.shown
            && cursor.shape == now.shape
            && cursor.segments == now.segments
            && cursor.first_base == now.first_base
            && cursor.leader_epoch == now.leader_epoch
            && cursor.tail.len() == now.tail.len()
            && cursor
                .tail
                .iter()
                .zip(&now.tail)
                .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2 <= b.2);
        let delta = if appends_only {
            let mut chunks = Vec::new();
            for ((base, _, seen), (_, _, n)) in cursor.tail.iter().zip(&now.tail) {
                if n > seen {
                    if let Some(SegmentView::Open { chunks: c, .. }) = s.segments.get(base) {
                        chunks.extend(c[*seen..*n].iter().map(|c| (*base, c.clone())));
                    }
                }
            }
            let aborted = s
                .aborted
                .range(cursor.aborted_last.map_or(Offset::MIN, |l| l + 1)..)
                .map(|(k, a)| (*k, *a))
                .collect();
            TailDelta::Append {
                chunks,
                log_start: s.log_start_offset,
                high_watermark: s.high_watermark,
                first_unstable: s.first_unstable,
                aborted,
            }
        } else {
            TailDelta::Snapshot(s.clone())
        };
        *cursor = now;
        delta
    }

    /// Apply what a followed writer showed (the follower's side of
    /// [`PartitionLog::changes`]); payloads shown with chunks go to the cache.
    pub fn apply_append(
        &self,
        chunks: Vec<(Offset, ChunkRef, Option<Bytes>)>,
        log_start: Offset,
        high_watermark: Offset,
        first_unstable: Option<Offset>,
        aborted: Vec<(Offset, AbortedTxn)>,
    ) {
        self.update(|s| {
            for (base, c, payload) in chunks {
                if let Some(p) = payload {
                    self.cache.put_object(c.path.clone(), p);
                }
                if let Some(SegmentView::Open { chunks, .. }) = s.segments.get_mut(&base) {
                    if chunks.last().is_none_or(|l| l.next_offset <= c.base_offset) {
                        chunks.push(c);
                    }
                }
            }
            s.log_start_offset = s.log_start_offset.max(log_start);
            s.high_watermark = s.high_watermark.max(high_watermark);
            // Shown with the chunks that made them so: never ahead of them.
            s.first_unstable = first_unstable;
            if !aborted.is_empty() {
                Arc::make_mut(&mut s.aborted).extend(aborted);
            }
        });
    }

    /// Replace the whole state (a follower's snapshot).
    pub fn replace(&self, state: LogState) {
        self.update(|s| *s = state);
    }
}

/// Scan batches in `data` for the first record with timestamp ≥ `ts`.
fn first_at_or_after(data: &Pieces, ts: i64, log_start: Offset) -> Option<(Offset, i64)> {
    for (pos, h) in data.batches() {
        if h.max_timestamp < ts || h.next_offset() <= log_start {
            continue;
        }
        if h.timestamp_type() == TimestampType::LogAppendTime {
            return Some((h.base_offset.max(log_start), h.max_timestamp));
        }
        let mut batch = data.slice(pos..pos + h.total_len()).join();
        match floe_protocol::records::decode_next(&mut batch) {
            Ok(set) => {
                for r in set.records {
                    if r.offset >= log_start && r.timestamp >= ts {
                        return Some((r.offset, r.timestamp));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(offset = h.base_offset, error = %e, "undecodable batch in timestamp lookup");
                return Some((h.base_offset.max(log_start), h.max_timestamp));
            }
        }
    }
    None
}

/// A chunk's verified payload, from the cache or from its replicas.
pub async fn load_chunk(
    cache: &BlockCache,
    replicas: &ReplicaSet,
    c: &ChunkRef,
) -> Result<Bytes, StorageError> {
    if let Some(b) = cache.get_object(&c.path) {
        return Ok(b);
    }
    if let Some(w) = &c.wal {
        let payload = crate::wal_read::read_one(w).await?;
        cache.put_object(c.path.clone(), payload.clone());
        return Ok(payload);
    }
    // Never a fence or a missing copy for the data another replica holds.
    let (_, payload, _) =
        crate::chunk_replicas::read(replicas, &Path::from(c.path.as_ref()), c.base_offset).await?;
    cache.put_object(c.path.clone(), payload.clone());
    Ok(payload)
}

/// The payloads of `chunks` (of one open segment on `replicas`), in their
/// order: from the cache where it has them; chunks in WAL objects read
/// together per object (one ranged GET for neighbours, not one each);
/// chunk objects one by one.
pub async fn load_chunks(
    cache: &BlockCache,
    replicas: &ReplicaSet,
    chunks: &[ChunkRef],
) -> Result<Vec<Bytes>, StorageError> {
    let mut out: Vec<Option<Bytes>> = chunks.iter().map(|c| cache.get_object(&c.path)).collect();
    let missing_wal: Vec<usize> = (0..chunks.len())
        .filter(|i| out[*i].is_none() && chunks[*i].wal.is_some())
        .collect();
    if !missing_wal.is_empty() {
        let places: Vec<&WalPlace> = missing_wal
            .iter()
            .map(|i| chunks[*i].wal.as_deref().expect("filtered"))
            .collect();
        let got = crate::wal_read::read_places(&places).await?;
        for (i, b) in missing_wal.into_iter().zip(got) {
            cache.put_object(chunks[i].path.clone(), b.clone());
            out[i] = Some(b);
        }
    }
    let mut done = Vec::with_capacity(chunks.len());
    for (c, b) in chunks.iter().zip(out) {
        done.push(match b {
            Some(b) => b,
            None => load_chunk(cache, replicas, c).await?,
        });
    }
    Ok(done)
}

/// Rebuild a chunk reference from its decoded header (recovery).
pub fn chunk_ref(path: &Path, h: &chunk::ChunkHeader, bytes: u64) -> ChunkRef {
    ChunkRef {
        base_offset: h.base_offset,
        next_offset: h.next_offset,
        max_timestamp: h.max_timestamp,
        path: Arc::from(path.as_ref()),
        bytes,
        wal: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_protocol::batch::Batches;

    /// An inverted range (a follower's log start past its high watermark)
    /// has no aborted transactions, rather than a panic.
    #[test]
    fn aborted_markers_of_an_inverted_range_are_none() {
        let mut state = LogState::default();
        Arc::make_mut(&mut state.aborted).insert(
            5,
            AbortedTxn {
                producer_id: 1,
                first_offset: 3,
            },
        );
        let log = PartitionLog::new(
            PartitionId::new(floe_common::Uuid::from_u128(1), 0),
            state,
            BlockCache::new(1 << 20),
        );
        assert!(log.aborted_markers(9, 2).is_empty());
        assert!(log.aborted_markers(5, 5).is_empty());
        assert_eq!(log.aborted_markers(0, 9).len(), 1);
    }

    #[test]
    fn pieces_read_batches_across_part_edges_as_one_buffer_would() {
        use floe_protocol::batch::{assign, synthetic_batch};
        let mut all = Vec::new();
        for i in 0..6 {
            let mut b = synthetic_batch(3 + i, 40 + 13 * i as usize, 1_000);
            assign(&mut b, i as i64 * 10, 1, None);
            all.extend(b);
        }
        let all = Bytes::from(all);
        let want: Vec<(usize, i64)> = Batches::new(&all)
            .map(|(p, h)| (p, h.base_offset))
            .collect();
        assert_eq!(want.len(), 6);
        // Every way to cut the run in three, including cuts inside headers.
        for a in (0..all.len()).step_by(7) {
            for b in (a..all.len()).step_by(11) {
                let mut p = Pieces::default();
                p.push(all.slice(..a));
                p.push(all.slice(a..b));
                p.push(all.slice(b..));
                let got: Vec<(usize, i64)> = p.batches().map(|(p, h)| (p, h.base_offset)).collect();
                assert_eq!(got, want, "cut at {a}, {b}");
                let (s, e) = (want[1].0, want[4].0);
                assert_eq!(p.slice(s..e).join(), all.slice(s..e));
                assert_eq!(p.clone().join(), all);
            }
        }
        // One part: the join is the part itself, not a copy.
        let one = Pieces::one(all.clone());
        assert_eq!(one.join().as_ptr(), all.as_ptr());
    }
    use crate::segment::SegmentBuilder;
    use crate::target::StorageTarget;
    use floe_common::Uuid;
    use floe_protocol::batch::{assign, synthetic_batch};
    use object_store::{ObjectStoreExt, PutPayload};

    /// `n` batches of 5 records of 200 bytes from `base`.
    fn batches(base: i64, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut b = synthetic_batch(5, 200, 1_000 + (base + i as i64 * 5) * 10);
            assign(&mut b, base + i as i64 * 5, 1, None);
            out.extend(b);
        }
        out
    }

    fn offsets(b: &Bytes) -> Vec<i64> {
        Batches::new(b).map(|(_, h)| h.base_offset).collect()
    }

    /// A log with a sealed segment [0, 500) and an open one [500, 600) in two chunks.
    async fn log() -> Arc<PartitionLog> {
        let t = StorageTarget::open("m", "memory://").unwrap();
        let replicas = ReplicaSet::new(vec![t.clone()], 1);
        let id = PartitionId::new(Uuid::from_u128(9), 0);
        let data = batches(0, 100);
        let mut b = SegmentBuilder::new(0, 1, 4096);
        b.add(&data).unwrap();
        let (tail, sum) = b.finish();
        let mut obj = data.clone();
        obj.extend_from_slice(&tail);
        let seg_path = crate::layout::segment(id, 0, 1, 1);
        t.store.put(&seg_path, PutPayload::from(obj)).await.unwrap();
        let mut chunks = Vec::new();
        for (base, n) in [(500, 10), (550, 10)] {
            let payload = batches(base, n);
            let path = crate::layout::chunk(id, 500, 1, base);
            let enc = chunk::encode_data(1, base, base + n as i64 * 5, 0, n as u32, &payload);
            t.store.put(&path, PutPayload::from(enc)).await.unwrap();
            chunks.push(ChunkRef {
                base_offset: base,
                next_offset: base + n as i64 * 5,
                max_timestamp: 1_000 + (base + 49) * 10,
                path: Arc::from(path.as_ref()),
                bytes: payload.len() as u64,
                wal: None,
            });
        }
        let mut state = LogState {
            log_start_offset: 0,
            high_watermark: 600,
            leader_epoch: 1,
            segments: BTreeMap::new(),
            ..Default::default()
        };
        state.segments.insert(
            0,
            SegmentView::Sealed(Arc::new(SealedSegment {
                base_offset: 0,
                end_offset: 500,
                epoch: 1,
                path: Arc::from(seg_path.as_ref()),
                data_bytes: sum.data_bytes,
                object_bytes: sum.object_bytes,
                max_timestamp: sum.max_timestamp,
                sealed_ms: 0,
                replicas: replicas.clone(),
            })),
        );
        state.segments.insert(
            500,
            SegmentView::Open {
                base_offset: 500,
                epoch: 1,
                replicas,
                chunks,
            },
        );
        PartitionLog::new(id, state, BlockCache::new(64 << 20))
    }

    #[tokio::test]
    async fn reads_whole_batches_across_segments_and_chunks() {
        let log = log().await;
        let batch_len = batches(0, 1).len();
        // Middle of a batch: the whole batch comes back, from its base.
        let r = log.read(7, batch_len, true).await.unwrap();
        assert_eq!(offsets(&r.records), vec![5]);
        assert_eq!(r.next_offset, 10);
        // Across the sealed/open boundary and into the second chunk.
        let r = log.read(490, 5 * batch_len, true).await.unwrap();
        assert_eq!(offsets(&r.records), vec![490, 495, 500, 505, 510]);
        let r = log.read(545, 3 * batch_len, true).await.unwrap();
        assert_eq!(offsets(&r.records), vec![545, 550, 555]);
        // Up to a bound (a read_committed fetch's last stable offset): in
        // the sealed segment, across into the chunks, and at the bound.
        let r = log.read_until(480, 495, 1 << 20, true).await.unwrap();
        assert_eq!(offsets(&r.records), vec![480, 485, 490]);
        assert_eq!(r.next_offset, 495);
        let r = log.read_until(490, 510, 1 << 20, true).await.unwrap();
        assert_eq!(offsets(&r.records), vec![490, 495, 500, 505]);
        assert!(log
            .read_until(510, 510, 1 << 20, true)
            .await
            .unwrap()
            .records
            .is_empty());
        // A budget below one batch: nothing unless min_one (KIP-74).
        assert!(log.read(100, 10, false).await.unwrap().records.is_empty());
        assert_eq!(
            offsets(&log.read(100, 10, true).await.unwrap().records),
            vec![100]
        );
        // At the high watermark: empty; beyond it: out of range.
        assert!(log
            .read(600, 1 << 20, true)
            .await
            .unwrap()
            .records
            .is_empty());
        assert!(matches!(
            log.read(601, 1, true).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        // Everything, in order, dense.
        let mut next = 0;
        let mut all = Vec::new();
        while next < 600 {
            let r = log.read(next, 7_000, true).await.unwrap();
            all.extend(offsets(&r.records));
            next = r.next_offset;
        }
        assert_eq!(all, (0..120).map(|i| i * 5).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_follower_sees_appends_as_appends_and_other_changes_as_snapshots() {
        let log = log().await;
        let mut cursor = TailCursor::default();
        // First: the whole state.
        let TailDelta::Snapshot(first) = log.changes(&mut cursor) else {
            panic!("a new follower gets a snapshot");
        };
        assert!(matches!(log.changes(&mut cursor), TailDelta::Unchanged));
        let follower = PartitionLog::new(log.id, first, BlockCache::new(1 << 20));
        // A committed chunk: an append of just that chunk.
        let chunk = ChunkRef {
            base_offset: 600,
            next_offset: 650,
            max_timestamp: 0,
            path: Arc::from("x/chunk-600"),
            bytes: 10,
            wal: None,
        };
        log.append_update(|s| {
            if let Some(SegmentView::Open { chunks, .. }) = s.segments.get_mut(&500) {
                chunks.push(chunk.clone());
            }
            s.high_watermark = 650;
        });
        match log.changes(&mut cursor) {
            TailDelta::Append {
                chunks,
                high_watermark,
                ..
            } => {
                assert_eq!(high_watermark, 650);
                assert_eq!(chunks.len(), 1);
                assert_eq!(chunks[0].0, 500);
                assert_eq!(chunks[0].1.base_offset, 600);
                follower.apply_append(
                    chunks.into_iter().map(|(b, c)| (b, c, None)).collect(),
                    0,
                    650,
                    None,
                    Vec::new(),
                );
            }
            other => panic!("expected an append, got {other:?}"),
        }
        assert_eq!(follower.offsets().1, 650);
        let SegmentView::Open { chunks, .. } = &follower.snapshot().segments[&500] else {
            panic!("open segment");
        };
        assert_eq!(chunks.len(), 3);
        // The same append shown twice is applied once.
        follower.apply_append(vec![(500, chunk.clone(), None)], 0, 650, None, Vec::new());
        let SegmentView::Open { chunks, .. } = &follower.snapshot().segments[&500] else {
            panic!("open segment");
        };
        assert_eq!(chunks.len(), 3);
        // Transactions ride on appends: the first unstable offset and the
        // aborts made durable with the chunk, each abort shown once.
        let aborted = AbortedTxn {
            producer_id: 9,
            first_offset: 640,
        };
        let next = ChunkRef {
            base_offset: 650,
            next_offset: 660,
            path: Arc::from("x/chunk-650"),
            ..chunk.clone()
        };
        log.append_update(|s| {
            if let Some(SegmentView::Open { chunks, .. }) = s.segments.get_mut(&500) {
                chunks.push(next.clone());
            }
            s.high_watermark = 660;
            s.first_unstable = Some(655);
            Arc::make_mut(&mut s.aborted).insert(652, aborted);
        });
        match log.changes(&mut cursor) {
            TailDelta::Append {
                chunks,
                log_start,
                high_watermark,
                first_unstable,
                aborted: shown,
            } => {
                assert_eq!(
                    (first_unstable, shown.clone()),
                    (Some(655), vec![(652, aborted)])
                );
                follower.apply_append(
                    chunks.into_iter().map(|(b, c)| (b, c, None)).collect(),
                    log_start,
                    high_watermark,
                    first_unstable,
                    shown,
                );
            }
            other => panic!("expected an append, got {other:?}"),
        }
        assert_eq!(follower.last_stable_offset(), 655);
        assert_eq!(follower.aborted_in(600, 700), vec![(9, 640)]);
        log.append_update(|s| {
            s.high_watermark = 660;
            s.first_unstable = None;
        });
        match log.changes(&mut cursor) {
            TailDelta::Append {
                first_unstable,
                aborted,
                ..
            } => assert_eq!((first_unstable, aborted), (None, vec![])),
            other => panic!("expected an append, got {other:?}"),
        }
        // Any other change, even one outside the last segments (a repair
        // moving a sealed segment's replicas, retention): a snapshot.
        log.update(|s| s.log_start_offset = 100);
        assert!(matches!(
            log.changes(&mut cursor),
            TailDelta::Snapshot(ref x) if x.log_start_offset == 100
        ));
        // A segment gone (or sealed): a snapshot.
        log.update(|s| {
            s.segments.remove(&0);
            s.log_start_offset = 500;
        });
        let TailDelta::Snapshot(now) = log.changes(&mut cursor) else {
            panic!("a removed segment needs a snapshot");
        };
        // A snapshot carries them too.
        assert_eq!(now.first_unstable, None);
        assert_eq!(now.aborted.len(), 1);
        follower.replace(now);
        assert_eq!(follower.offsets(), (500, 660, 1));
        assert_eq!(follower.snapshot().segments.len(), 1);
    }

    #[tokio::test]
    async fn timestamp_lookup_finds_the_first_record_at_or_after() {
        let log = log().await;
        // Record at offset o has timestamp 1000 + base*10 + (o - base).
        assert_eq!(
            log.offset_for_timestamp(1_000 + 250 * 10)
                .await
                .unwrap()
                .map(|x| x.0),
            Some(250)
        );
        assert_eq!(
            log.offset_for_timestamp(1_000 + 250 * 10 + 2)
                .await
                .unwrap()
                .map(|x| x.0),
            Some(252)
        );
        assert_eq!(
            log.offset_for_timestamp(1_000 + 520 * 10)
                .await
                .unwrap()
                .map(|x| x.0),
            Some(520)
        );
        assert_eq!(
            log.offset_for_timestamp(0).await.unwrap().map(|x| x.0),
            Some(0)
        );
        assert_eq!(log.offset_for_timestamp(i64::MAX).await.unwrap(), None);
    }
}
