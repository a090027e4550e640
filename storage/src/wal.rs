//! The shared WAL object (docs/design.md, "Shared WAL objects"): what one
//! flush of a broker writes on object stores — the chunks of every
//! partition it writes, back to back, then an index saying whose each is,
//! then a footer. A reader of one chunk needs only its byte range (kept in
//! the partition's metadata); recovery reads the footer and index with
//! ranged GETs. A fence is an object of kind `Fence` with no chunk, written
//! by a recovering owner at a dead stream's next key.
//!
//! Object: payloads | index (80 bytes an entry) | footer (48 bytes).
//!
//! Entry (big-endian): topic_id [16] | partition i32 | segment_epoch i32 |
//! segment_base i64 | base_offset i64 | next_offset i64 | max_timestamp i64
//! | batch_count u32 | payload_crc32c u32 | payload_pos u64 | payload_len u32
//! | epoch i32
//!
//! Footer: index_pos u64 | entries u32 | index_crc32c u32 | broker i32 |
//! stream i64 | seq i64 | kind u8 | format u8 | reserved u16 | footer_crc32c
//! u32 | magic "FLWL"

use bytes::{BufMut, Bytes, BytesMut};
use floe_common::{Epoch, Offset, PartitionId, Uuid};

use crate::error::StorageError;

pub const MAGIC: &[u8; 4] = b"FLWL";
pub const FORMAT: u8 = 1;
pub const ENTRY_LEN: usize = 80;
pub const FOOTER_LEN: usize = 48;

/// Which object of which stream: the key says it too, and a footer that
/// disagrees with its key is corrupt (a misplaced or stale object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalId {
    pub broker: i32,
    pub stream: i64,
    pub seq: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalKind {
    Data,
    Fence,
}

/// One partition's chunk in a WAL object: what it is, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalEntry {
    pub meta: ChunkMeta,
    pub payload_crc: u32,
    /// Where the chunk's batches are in the object.
    pub pos: u64,
    pub len: u32,
}

impl WalEntry {
    /// The byte range of the chunk's batches in the object.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.pos..self.pos + self.len as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalFooter {
    pub id: WalId,
    pub kind: WalKind,
    pub index_pos: u64,
    pub entries: u32,
    pub index_crc: u32,
}

impl WalFooter {
    /// The byte range of the index in the object.
    pub fn index_range(&self) -> std::ops::Range<u64> {
        self.index_pos..self.index_pos + self.entries as u64 * ENTRY_LEN as u64
    }
}

/// A WAL object being filled by a flush.
#[derive(Debug, Default)]
pub struct WalBuilder {
    buf: BytesMut,
    entries: Vec<WalEntry>,
}

/// What a chunk in a WAL object is, besides its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub partition: PartitionId,
    pub segment_base: Offset,
    pub segment_epoch: Epoch,
    /// Epoch of the writer that appended the chunk.
    pub epoch: Epoch,
    pub base_offset: Offset,
    /// One past the chunk's last offset.
    pub next_offset: Offset,
    pub max_timestamp: i64,
    pub batch_count: u32,
}

impl WalBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(bytes),
            entries: Vec::new(),
        }
    }

    /// Append one partition's chunk (whole batches, offsets assigned);
    /// returns its entry, byte range included.
    pub fn push(&mut self, meta: ChunkMeta, payload: &[u8]) -> WalEntry {
        let entry = WalEntry {
            meta,
            payload_crc: crc32c::crc32c(payload),
            pos: self.buf.len() as u64,
            len: payload.len() as u32,
        };
        self.buf.extend_from_slice(payload);
        self.entries.push(entry);
        entry
    }

    /// Bytes of chunks so far.
    pub fn payload_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The object, with its index and footer, and the entries in it.
    pub fn finish(mut self, id: WalId) -> (Bytes, Vec<WalEntry>) {
        let index_pos = self.buf.len() as u64;
        for e in &self.entries {
            put_entry(&mut self.buf, e);
        }
        let index_crc = crc32c::crc32c(&self.buf[index_pos as usize..]);
        put_footer(
            &mut self.buf,
            &WalFooter {
                id,
                kind: WalKind::Data,
                index_pos,
                entries: self.entries.len() as u32,
                index_crc,
            },
        );
        (self.buf.freeze(), self.entries)
    }
}

/// The fence of a dead stream at `id` (its next key).
pub fn encode_fence(id: WalId) -> Bytes {
    let mut out = BytesMut::with_capacity(FOOTER_LEN);
    put_footer(
        &mut out,
        &WalFooter {
            id,
            kind: WalKind::Fence,
            index_pos: 0,
            entries: 0,
            index_crc: crc32c::crc32c(&[]),
        },
    );
    out.freeze()
}

fn put_entry(out: &mut BytesMut, e: &WalEntry) {
    let m = &e.meta;
    out.put_slice(m.partition.topic_id.as_bytes());
    out.put_i32(m.partition.partition);
    out.put_i32(m.segment_epoch);
    out.put_i64(m.segment_base);
    out.put_i64(m.base_offset);
    out.put_i64(m.next_offset);
    out.put_i64(m.max_timestamp);
    out.put_u32(m.batch_count);
    out.put_u32(e.payload_crc);
    out.put_u64(e.pos);
    out.put_u32(e.len);
    out.put_i32(m.epoch);
}

fn put_footer(out: &mut BytesMut, f: &WalFooter) {
    let start = out.len();
    out.put_u64(f.index_pos);
    out.put_u32(f.entries);
    out.put_u32(f.index_crc);
    out.put_i32(f.id.broker);
    out.put_i64(f.id.stream);
    out.put_i64(f.id.seq);
    out.put_u8(match f.kind {
        WalKind::Data => 0,
        WalKind::Fence => 1,
    });
    out.put_u8(FORMAT);
    out.put_u16(0);
    let crc = crc32c::crc32c(&out[start..]);
    out.put_u32(crc);
    out.put_slice(MAGIC);
}

fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N]
        .try_into()
        .expect("length checked by the caller")
}

/// Decode and verify the footer of a WAL object of `object_len` bytes from
/// its last [`FOOTER_LEN`] bytes, `tail`; `expected` is the id its key
/// names.
pub fn decode_footer(
    key: &str,
    tail: &[u8],
    object_len: u64,
    expected: WalId,
) -> Result<WalFooter, StorageError> {
    if tail.len() != FOOTER_LEN || object_len < FOOTER_LEN as u64 {
        return Err(StorageError::corrupt(
            key,
            format!("a WAL object of {object_len} bytes cannot hold a {FOOTER_LEN}-byte footer"),
        ));
    }
    if &tail[44..48] != MAGIC {
        return Err(StorageError::corrupt(key, "not a WAL object (bad magic)"));
    }
    let crc = u32::from_be_bytes(be(tail, 40));
    if crc32c::crc32c(&tail[..40]) != crc {
        return Err(StorageError::corrupt(key, "WAL footer checksum mismatch"));
    }
    if tail[37] != FORMAT {
        return Err(StorageError::corrupt(
            key,
            format!("WAL object format {} is not supported", tail[37]),
        ));
    }
    let kind = match tail[36] {
        0 => WalKind::Data,
        1 => WalKind::Fence,
        k => return Err(StorageError::corrupt(key, format!("WAL object kind {k}"))),
    };
    let f = WalFooter {
        index_pos: u64::from_be_bytes(be(tail, 0)),
        entries: u32::from_be_bytes(be(tail, 8)),
        index_crc: u32::from_be_bytes(be(tail, 12)),
        id: WalId {
            broker: i32::from_be_bytes(be(tail, 16)),
            stream: i64::from_be_bytes(be(tail, 20)),
            seq: i64::from_be_bytes(be(tail, 28)),
        },
        kind,
    };
    if f.id != expected {
        return Err(StorageError::corrupt(
            key,
            format!("the footer names {:?}, the key {expected:?}", f.id),
        ));
    }
    // The index ends where the footer starts: no length field can point
    // outside the object.
    let index_len = f.entries as u64 * ENTRY_LEN as u64;
    if f.index_pos.checked_add(index_len) != Some(object_len - FOOTER_LEN as u64) {
        return Err(StorageError::corrupt(
            key,
            format!(
                "an index of {} entries at {} does not end at the footer ({} bytes in)",
                f.entries,
                f.index_pos,
                object_len - FOOTER_LEN as u64
            ),
        ));
    }
    if kind == WalKind::Fence && (f.entries != 0 || object_len != FOOTER_LEN as u64) {
        return Err(StorageError::corrupt(key, "a WAL fence carries chunks"));
    }
    Ok(f)
}

/// Decode and verify the index of a WAL object (the bytes of
/// [`WalFooter::index_range`]).
pub fn decode_index(
    key: &str,
    footer: &WalFooter,
    index: &[u8],
) -> Result<Vec<WalEntry>, StorageError> {
    if index.len() as u64 != footer.entries as u64 * ENTRY_LEN as u64 {
        return Err(StorageError::corrupt(
            key,
            format!(
                "the index is {} bytes, the footer says {} entries",
                index.len(),
                footer.entries
            ),
        ));
    }
    if crc32c::crc32c(index) != footer.index_crc {
        return Err(StorageError::corrupt(key, "WAL index checksum mismatch"));
    }
    let mut out = Vec::with_capacity(footer.entries as usize);
    for e in index.chunks_exact(ENTRY_LEN) {
        let entry = WalEntry {
            meta: ChunkMeta {
                partition: PartitionId {
                    topic_id: Uuid::from_bytes(be(e, 0)),
                    partition: i32::from_be_bytes(be(e, 16)),
                },
                segment_epoch: i32::from_be_bytes(be(e, 20)),
                segment_base: i64::from_be_bytes(be(e, 24)),
                base_offset: i64::from_be_bytes(be(e, 32)),
                next_offset: i64::from_be_bytes(be(e, 40)),
                max_timestamp: i64::from_be_bytes(be(e, 48)),
                batch_count: u32::from_be_bytes(be(e, 56)),
                epoch: i32::from_be_bytes(be(e, 76)),
            },
            payload_crc: u32::from_be_bytes(be(e, 60)),
            pos: u64::from_be_bytes(be(e, 64)),
            len: u32::from_be_bytes(be(e, 72)),
        };
        if entry
            .pos
            .checked_add(entry.len as u64)
            .is_none_or(|end| end > footer.index_pos)
        {
            return Err(StorageError::corrupt(
                key,
                format!(
                    "chunk of {} at {}+{} runs into the index at {}",
                    entry.meta.partition, entry.pos, entry.len, footer.index_pos
                ),
            ));
        }
        if entry.meta.next_offset < entry.meta.base_offset {
            return Err(StorageError::corrupt(
                key,
                format!(
                    "chunk of {} ends at {} before it starts at {}",
                    entry.meta.partition, entry.meta.next_offset, entry.meta.base_offset
                ),
            ));
        }
        out.push(entry);
    }
    Ok(out)
}

/// Decode a whole WAL object read at once: its footer and entries.
pub fn decode(
    key: &str,
    data: &[u8],
    expected: WalId,
) -> Result<(WalFooter, Vec<WalEntry>), StorageError> {
    if data.len() < FOOTER_LEN {
        return Err(StorageError::corrupt(
            key,
            format!("a WAL object of {} bytes has no footer", data.len()),
        ));
    }
    let footer = decode_footer(
        key,
        &data[data.len() - FOOTER_LEN..],
        data.len() as u64,
        expected,
    )?;
    let range = footer.index_range();
    let entries = decode_index(
        key,
        &footer,
        &data[range.start as usize..range.end as usize],
    )?;
    Ok((footer, entries))
}

/// Verify one chunk's batches, read from the object at `entry.range()`.
pub fn verify_chunk(key: &str, entry: &WalEntry, payload: &Bytes) -> Result<(), StorageError> {
    verify_range(key, entry.len, entry.payload_crc, payload).map_err(|e| match e {
        StorageError::Corrupt { key, reason } => StorageError::Corrupt {
            key,
            reason: format!("{reason} (a chunk of {})", entry.meta.partition),
        },
        e => e,
    })
}

/// Verify bytes read from a WAL object against the length and CRC32C its
/// index gave for them.
pub fn verify_range(key: &str, len: u32, crc: u32, payload: &Bytes) -> Result<(), StorageError> {
    if payload.len() != len as usize {
        return Err(StorageError::corrupt(
            key,
            format!("chunk is {} bytes, the index says {len}", payload.len()),
        ));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(StorageError::corrupt(key, "chunk checksum mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: i32) -> PartitionId {
        PartitionId {
            topic_id: Uuid::from_u128(0x1234_5678_9abc_def0_0fed_cba9_8765_4321),
            partition: n,
        }
    }

    fn meta(partition: i32, base: Offset, next: Offset) -> ChunkMeta {
        ChunkMeta {
            partition: p(partition),
            segment_base: 0,
            segment_epoch: 3,
            epoch: 4,
            base_offset: base,
            next_offset: next,
            max_timestamp: 1_000 + base,
            batch_count: 1,
        }
    }

    const ID: WalId = WalId {
        broker: 2,
        stream: 7,
        seq: 41,
    };

    #[test]
    fn chunks_of_many_partitions_round_trip() {
        let mut b = WalBuilder::with_capacity(1024);
        let a = floe_protocol::batch::synthetic_batch(3, 10, 0);
        let c = floe_protocol::batch::synthetic_batch(2, 20, 0);
        let ea = b.push(meta(0, 100, 103), &a);
        let ec = b.push(meta(5, 7, 9), &c);
        assert_eq!(b.payload_bytes(), a.len() + c.len());
        let (object, entries) = b.finish(ID);
        assert_eq!(entries, vec![ea, ec]);
        let (footer, decoded) = decode("k", &object, ID).unwrap();
        assert_eq!(footer.kind, WalKind::Data);
        assert_eq!(decoded, entries);
        // Each chunk read alone by its range, as a catch-up read does.
        for (e, want) in decoded.iter().zip([&a, &c]) {
            let r = e.range();
            let chunk = object.slice(r.start as usize..r.end as usize);
            verify_chunk("k", e, &chunk).unwrap();
            assert_eq!(&chunk[..], &want[..]);
        }
        // Footer then index by ranged reads, as recovery does.
        let tail = &object[object.len() - FOOTER_LEN..];
        let f = decode_footer("k", tail, object.len() as u64, ID).unwrap();
        let ir = f.index_range();
        let idx = decode_index("k", &f, &object[ir.start as usize..ir.end as usize]).unwrap();
        assert_eq!(idx, entries);
    }

    #[test]
    fn a_fence_is_a_footer_alone() {
        let fence = encode_fence(ID);
        assert_eq!(fence.len(), FOOTER_LEN);
        let (f, entries) = decode("k", &fence, ID).unwrap();
        assert_eq!(f.kind, WalKind::Fence);
        assert!(entries.is_empty());
    }

    #[test]
    fn damage_and_misplacement_are_corruption_not_panics() {
        let mut b = WalBuilder::default();
        b.push(
            meta(1, 0, 3),
            &floe_protocol::batch::synthetic_batch(3, 10, 0),
        );
        let (object, entries) = b.finish(ID);
        // Stored under another key.
        let other = WalId { seq: 42, ..ID };
        assert!(decode("k", &object, other)
            .unwrap_err()
            .to_string()
            .contains("the footer names"));
        // Every single flipped byte is caught, in the chunk by its CRC,
        // elsewhere by the index's or the footer's.
        for i in 0..object.len() {
            let mut bad = object.to_vec();
            bad[i] ^= 0x40;
            let caught = match decode("k", &bad, ID) {
                Err(_) => true,
                Ok((_, es)) => {
                    let r = es[0].range();
                    let chunk = Bytes::copy_from_slice(&bad[r.start as usize..r.end as usize]);
                    verify_chunk("k", &es[0], &chunk).is_err()
                }
            };
            assert!(caught, "byte {i} flipped went unnoticed");
        }
        // Truncated anywhere.
        for n in [0, 10, FOOTER_LEN, object.len() - 1] {
            assert!(decode("k", &object[..n], ID).is_err(), "truncated to {n}");
        }
        // A footer whose index would lie outside the object.
        let tail = &object[object.len() - FOOTER_LEN..];
        assert!(decode_footer("k", tail, object.len() as u64 + 80, ID).is_err());
        assert_eq!(entries.len(), 1);
    }
}
