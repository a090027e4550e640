//! The consolidated segment object, one per sealed segment per replica:
//! the record batches back to back, then a sparse offset index and a time
//! index, then a fixed 64-byte footer.
//!
//! Offset index entry: (offset i64, position u64) for the first batch at or
//! after every `index_interval` bytes. Time index entry: (max timestamp so
//! far i64, offset i64) whenever the running max timestamp grows at such a
//! point. Footer (big-endian): magic "FLSG" | format u8 | pad[3] |
//! base_offset i64 | end_offset i64 | epoch i32 | data_len u64 |
//! offset_entries u32 | time_entries u32 | max_timestamp i64 |
//! batch_count u32 | index_crc32c u32 | footer_crc32c u32

use bytes::{BufMut, Bytes, BytesMut};
use floe_common::{Epoch, Offset};
use floe_protocol::batch::Batches;

use crate::error::StorageError;

pub const MAGIC: &[u8; 4] = b"FLSG";
pub const FORMAT: u8 = 1;
pub const FOOTER_LEN: usize = 64;
pub const DEFAULT_INDEX_INTERVAL: usize = 4096;

/// What a finished segment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub base_offset: Offset,
    pub end_offset: Offset,
    pub epoch: Epoch,
    pub data_bytes: u64,
    pub object_bytes: u64,
    pub max_timestamp: i64,
    pub batch_count: u32,
}

/// Builds the index and footer while the data streams through.
#[derive(Debug)]
pub struct SegmentBuilder {
    base_offset: Offset,
    epoch: Epoch,
    next_offset: Offset,
    data_len: u64,
    max_timestamp: i64,
    batch_count: u32,
    index_interval: usize,
    since_index: usize,
    offset_index: Vec<(Offset, u64)>,
    time_index: Vec<(i64, Offset)>,
    /// A compacted segment: batches may skip offsets, and its end is the
    /// end of the segment it replaces, not its last batch's.
    compacted_end: Option<Offset>,
}

impl SegmentBuilder {
    /// The builder of a compacted segment replacing `[base_offset,
    /// end_offset)`: its batches keep their offsets, with gaps between
    /// them, and the segment still ends at `end_offset` (so the next
    /// segment follows it).
    pub fn compacted(
        base_offset: Offset,
        end_offset: Offset,
        epoch: Epoch,
        index_interval: usize,
    ) -> Self {
        Self {
            compacted_end: Some(end_offset),
            ..Self::new(base_offset, epoch, index_interval)
        }
    }

    pub fn new(base_offset: Offset, epoch: Epoch, index_interval: usize) -> Self {
        Self {
            base_offset,
            epoch,
            next_offset: base_offset,
            data_len: 0,
            max_timestamp: -1,
            batch_count: 0,
            index_interval: index_interval.max(1),
            since_index: usize::MAX,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            compacted_end: None,
        }
    }

    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// Account for whole batches appended to the data part, in offset order.
    pub fn add(&mut self, payload: &[u8]) -> Result<(), StorageError> {
        let mut it = Batches::new(payload);
        for (pos, h) in it.by_ref() {
            let in_place = match self.compacted_end {
                None => h.base_offset == self.next_offset,
                Some(end) => h.base_offset >= self.next_offset && h.next_offset() <= end,
            };
            if !in_place {
                return Err(StorageError::corrupt(
                    "segment",
                    format!(
                        "batch at offset {} where {} was expected",
                        h.base_offset, self.next_offset
                    ),
                ));
            }
            let at = self.data_len + pos as u64;
            if self.since_index >= self.index_interval {
                self.offset_index.push((h.base_offset, at));
                if h.max_timestamp > self.time_index.last().map_or(i64::MIN, |e| e.0) {
                    self.time_index
                        .push((h.max_timestamp.max(self.max_timestamp), h.base_offset));
                }
                self.since_index = 0;
            }
            self.since_index = self.since_index.saturating_add(h.total_len());
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
            self.next_offset = h.next_offset();
            self.batch_count += 1;
        }
        if it.position() != payload.len() {
            return Err(StorageError::corrupt(
                "segment",
                "partial batch in segment data",
            ));
        }
        self.data_len += payload.len() as u64;
        Ok(())
    }

    /// The bytes following the data (indexes and footer), and the summary.
    pub fn finish(self) -> (Bytes, SegmentSummary) {
        let mut out = BytesMut::with_capacity(
            self.offset_index.len() * 16 + self.time_index.len() * 16 + FOOTER_LEN,
        );
        for (o, p) in &self.offset_index {
            out.put_i64(*o);
            out.put_u64(*p);
        }
        for (t, o) in &self.time_index {
            out.put_i64(*t);
            out.put_i64(*o);
        }
        let index_crc = crc32c::crc32c(&out);
        let f = out.len();
        out.put_slice(MAGIC);
        out.put_u8(FORMAT);
        out.put_bytes(0, 3);
        let end_offset = self.compacted_end.unwrap_or(self.next_offset);
        out.put_i64(self.base_offset);
        out.put_i64(end_offset);
        out.put_i32(self.epoch);
        out.put_u64(self.data_len);
        out.put_u32(self.offset_index.len() as u32);
        out.put_u32(self.time_index.len() as u32);
        out.put_i64(self.max_timestamp);
        out.put_u32(self.batch_count);
        out.put_u32(index_crc);
        let footer_crc = crc32c::crc32c(&out[f..]);
        out.put_u32(footer_crc);
        let tail = out.freeze();
        let summary = SegmentSummary {
            base_offset: self.base_offset,
            end_offset,
            epoch: self.epoch,
            data_bytes: self.data_len,
            object_bytes: self.data_len + tail.len() as u64,
            max_timestamp: self.max_timestamp,
            batch_count: self.batch_count,
        };
        (tail, summary)
    }
}

/// A segment's parsed indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentIndex {
    pub summary: SegmentSummary,
    offsets: Vec<(Offset, u64)>,
    times: Vec<(i64, Offset)>,
}

impl SegmentIndex {
    /// Parse the tail of a segment object: everything from `data_bytes` to
    /// the end.
    pub fn parse(key: &str, tail: &[u8]) -> Result<Self, StorageError> {
        if tail.len() < FOOTER_LEN {
            return Err(StorageError::corrupt(
                key,
                "segment tail shorter than its footer",
            ));
        }
        let f = &tail[tail.len() - FOOTER_LEN..];
        if &f[0..4] != MAGIC || f[4] != FORMAT {
            return Err(StorageError::corrupt(
                key,
                "bad segment footer magic or format",
            ));
        }
        if crc32c::crc32c(&f[..60]) != u32::from_be_bytes(f[60..64].try_into().unwrap()) {
            return Err(StorageError::corrupt(key, "segment footer CRC mismatch"));
        }
        let i64_at = |at: usize| i64::from_be_bytes(f[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_be_bytes(f[at..at + 4].try_into().unwrap());
        let base_offset = i64_at(8);
        let end_offset = i64_at(16);
        let epoch = i32::from_be_bytes(f[24..28].try_into().unwrap());
        let data_bytes = u64::from_be_bytes(f[28..36].try_into().unwrap());
        let n_off = u32_at(36) as usize;
        let n_time = u32_at(40) as usize;
        let max_timestamp = i64_at(44);
        let batch_count = u32_at(52);
        let index_crc = u32_at(56);
        let index = &tail[..tail.len() - FOOTER_LEN];
        if index.len() != (n_off + n_time) * 16 {
            return Err(StorageError::corrupt(
                key,
                "segment index length disagrees with footer",
            ));
        }
        if crc32c::crc32c(index) != index_crc {
            return Err(StorageError::corrupt(key, "segment index CRC mismatch"));
        }
        let pair = |at: usize| {
            (
                i64::from_be_bytes(index[at..at + 8].try_into().unwrap()),
                i64::from_be_bytes(index[at + 8..at + 16].try_into().unwrap()),
            )
        };
        let offsets = (0..n_off)
            .map(|i| pair(i * 16))
            .map(|(o, p)| (o, p as u64))
            .collect();
        let times = (0..n_time).map(|i| pair((n_off + i) * 16)).collect();
        let object_bytes = data_bytes
            .checked_add(tail.len() as u64)
            .ok_or_else(|| StorageError::corrupt(key, "segment footer: data length overflows"))?;
        Ok(Self {
            summary: SegmentSummary {
                base_offset,
                end_offset,
                epoch,
                data_bytes,
                object_bytes,
                max_timestamp,
                batch_count,
            },
            offsets,
            times,
        })
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.offsets.len() + self.times.len()
    }

    /// Position of the batch from which a scan for `offset` should start.
    pub fn position_for(&self, offset: Offset) -> u64 {
        match self.offsets.partition_point(|(o, _)| *o <= offset) {
            0 => 0,
            i => self.offsets[i - 1].1,
        }
    }

    /// An offset from which a scan finds the first batch whose max timestamp
    /// is at or after `ts` (the scan itself checks each batch).
    pub fn scan_start_for_time(&self, ts: i64) -> Offset {
        match self.times.partition_point(|(t, _)| *t < ts) {
            0 => self.summary.base_offset,
            i => self.times[i - 1].1,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use floe_protocol::batch::{assign, synthetic_batch};

    /// `n` batches of 10 records each, offsets from `base`, timestamps rising.
    pub fn data(base: i64, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let mut b = synthetic_batch(10, 100, 1_000 + i as i64 * 10);
            assign(&mut b, base + i as i64 * 10, 1, None);
            out.extend(b);
        }
        out
    }

    /// Found by the `segment` fuzz target: a footer (with good CRCs)
    /// whose data length is near u64::MAX overflowed the object's size.
    #[test]
    fn a_footer_whose_data_length_overflows_is_corrupt() {
        let d = data(0, 2);
        let mut b = SegmentBuilder::new(0, 1, 1);
        for (pos, h) in Batches::new(&d) {
            b.add(&d[pos..pos + h.total_len()]).unwrap();
        }
        let mut tail = b.finish().0.to_vec();
        let f = tail.len() - FOOTER_LEN;
        tail[f + 28..f + 36].copy_from_slice(&u64::MAX.to_be_bytes());
        let crc = crc32c::crc32c(&tail[f..f + 60]);
        tail[f + 60..].copy_from_slice(&crc.to_be_bytes());
        let e = SegmentIndex::parse("k", &tail).unwrap_err();
        assert!(e.to_string().contains("data length overflows"), "{e}");
    }

    #[test]
    fn a_compacted_segment_keeps_offsets_with_gaps_and_its_end() {
        // Batches at 500, 520, 560 (of 10 records each) out of [500, 600).
        let d = data(500, 10);
        let kept: Vec<u8> = Batches::new(&d)
            .filter(|(_, h)| [500, 520, 560].contains(&h.base_offset))
            .flat_map(|(pos, h)| d[pos..pos + h.total_len()].to_vec())
            .collect();
        let mut b = SegmentBuilder::compacted(500, 600, 3, 1);
        b.add(&kept).unwrap();
        let (tail, summary) = b.finish();
        assert_eq!((summary.end_offset, summary.batch_count), (600, 3));
        let idx = SegmentIndex::parse("s", &tail).unwrap();
        assert_eq!(idx.summary.end_offset, 600);
        // A scan for a compacted-away offset starts at the batch before it.
        let second = Batches::new(&kept).nth(1).unwrap().0 as u64;
        assert_eq!(idx.position_for(530), second);
        // Out of order, or past the end, is refused.
        let mut b = SegmentBuilder::compacted(500, 550, 3, 1);
        assert!(b.add(&kept).is_err(), "a batch past the segment's end");
        let mut b = SegmentBuilder::new(500, 3, 1);
        assert!(b.add(&kept).is_err(), "a plain segment has no gaps");
    }

    #[test]
    fn index_finds_positions_and_times() {
        let d = data(500, 200);
        let mut b = SegmentBuilder::new(500, 3, 4096);
        let (a, c) =
            d.split_at(d.len() / 3 - d.len() / 3 % Batches::new(&d).next().unwrap().1.total_len());
        b.add(a).unwrap();
        b.add(c).unwrap();
        let (tail, summary) = b.finish();
        assert_eq!(summary.end_offset, 2500);
        assert_eq!(summary.batch_count, 200);
        assert_eq!(summary.data_bytes, d.len() as u64);
        let idx = SegmentIndex::parse("s", &tail).unwrap();
        assert_eq!(idx.summary, summary);
        for target in [500, 501, 1234, 2499] {
            let pos = idx.position_for(target) as usize;
            let (_, h) = Batches::new(&d[pos..]).next().unwrap();
            assert!(h.base_offset <= target, "scan starts at or before {target}");
            assert!(target - h.base_offset < 600, "index is reasonably dense");
        }
        let start = idx.scan_start_for_time(1_000 + 150 * 10);
        assert!(start <= 500 + 150 * 10);
        let mut bad = tail.to_vec();
        bad[0] ^= 1;
        assert!(SegmentIndex::parse("s", &bad).is_err());
    }

    #[test]
    fn builder_rejects_gaps() {
        let mut b = SegmentBuilder::new(0, 1, 4096);
        assert!(b.add(&data(10, 1)).is_err());
    }
}
