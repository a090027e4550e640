//! The chunk object: what one flush of an open segment writes. A 52-byte
//! header, then record batches that already carry their assigned offsets.
//! A fence is a chunk of kind `Fence` with no payload, written by a
//! recovering owner at the next chunk key so that an old writer's next
//! chunk cannot be created there.
//!
//! Header (big-endian): magic "FLCK" | format u8 | kind u8 | reserved u16 |
//! epoch i32 | base_offset i64 | next_offset i64 | max_timestamp i64 |
//! batch_count u32 | payload_len u32 | payload_crc32c u32 | header_crc32c u32

use bytes::{BufMut, Bytes, BytesMut};
use floe_common::{Epoch, Offset};
use floe_protocol::batch::Batches;

use crate::error::StorageError;

pub const MAGIC: &[u8; 4] = b"FLCK";
pub const FORMAT: u8 = 1;
pub const HEADER_LEN: usize = 52;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkKind {
    Data,
    Fence,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub kind: ChunkKind,
    /// Data: epoch of the writer. Fence: epoch of the fencing owner.
    pub epoch: Epoch,
    pub base_offset: Offset,
    /// One past the last offset in the chunk (= base for a fence).
    pub next_offset: Offset,
    pub max_timestamp: i64,
    pub batch_count: u32,
    pub payload_len: u32,
}

/// Encode a data chunk around `payload` (whole batches, offsets assigned).
pub fn encode_data(
    epoch: Epoch,
    base_offset: Offset,
    next_offset: Offset,
    max_timestamp: i64,
    batch_count: u32,
    payload: &[u8],
) -> Bytes {
    let mut out = new_buffer(payload.len());
    out.extend_from_slice(payload);
    seal_buffer(
        &mut out,
        epoch,
        base_offset,
        next_offset,
        max_timestamp,
        batch_count,
    );
    out.freeze()
}

/// Start a chunk buffer: header space reserved, batches appended after it,
/// then [`seal_buffer`] fills the header in place (no copy of the payload).
pub fn new_buffer(capacity: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER_LEN + capacity);
    b.put_bytes(0, HEADER_LEN);
    b
}

/// Fill in the header of a buffer made by [`new_buffer`].
pub fn seal_buffer(
    buf: &mut BytesMut,
    epoch: Epoch,
    base_offset: Offset,
    next_offset: Offset,
    max_timestamp: i64,
    batch_count: u32,
) {
    let payload_crc = crc32c::crc32c(&buf[HEADER_LEN..]);
    let h = ChunkHeader {
        kind: ChunkKind::Data,
        epoch,
        base_offset,
        next_offset,
        max_timestamp,
        batch_count,
        payload_len: (buf.len() - HEADER_LEN) as u32,
    };
    let mut header = BytesMut::with_capacity(HEADER_LEN);
    put_header(&mut header, &h, payload_crc);
    buf[..HEADER_LEN].copy_from_slice(&header);
}

pub fn encode_fence(epoch: Epoch, at_offset: Offset) -> Bytes {
    let h = ChunkHeader {
        kind: ChunkKind::Fence,
        epoch,
        base_offset: at_offset,
        next_offset: at_offset,
        max_timestamp: -1,
        batch_count: 0,
        payload_len: 0,
    };
    let mut out = BytesMut::with_capacity(HEADER_LEN);
    put_header(&mut out, &h, crc32c::crc32c(&[]));
    out.freeze()
}

fn put_header(out: &mut BytesMut, h: &ChunkHeader, payload_crc: u32) {
    let start = out.len();
    out.put_slice(MAGIC);
    out.put_u8(FORMAT);
    out.put_u8(match h.kind {
        ChunkKind::Data => 0,
        ChunkKind::Fence => 1,
    });
    out.put_u16(0);
    out.put_i32(h.epoch);
    out.put_i64(h.base_offset);
    out.put_i64(h.next_offset);
    out.put_i64(h.max_timestamp);
    out.put_u32(h.batch_count);
    out.put_u32(h.payload_len);
    out.put_u32(payload_crc);
    let crc = crc32c::crc32c(&out[start..]);
    out.put_u32(crc);
}

/// Decode and verify a chunk object; returns its header and payload (a
/// zero-copy slice of `data`).
pub fn decode(key: &str, data: &Bytes) -> Result<(ChunkHeader, Bytes), StorageError> {
    let (h, payload_crc) = decode_header(key, data)?;
    if data.len() != HEADER_LEN + h.payload_len as usize {
        return Err(StorageError::corrupt(
            key,
            format!(
                "payload is {} bytes, header says {}",
                data.len() - HEADER_LEN,
                h.payload_len
            ),
        ));
    }
    let payload = data.slice(HEADER_LEN..);
    if crc32c::crc32c(&payload) != payload_crc {
        return Err(StorageError::corrupt(key, "chunk payload CRC mismatch"));
    }
    if h.kind == ChunkKind::Data {
        let mut it = Batches::new(&payload);
        let mut count = 0u32;
        let mut expect = h.base_offset;
        for (_, b) in it.by_ref() {
            if b.base_offset != expect {
                return Err(StorageError::corrupt(
                    key,
                    format!(
                        "batch at offset {} where {expect} was expected",
                        b.base_offset
                    ),
                ));
            }
            expect = b.next_offset();
            count += 1;
        }
        if it.position() != payload.len() || count != h.batch_count || expect != h.next_offset {
            return Err(StorageError::corrupt(
                key,
                "chunk batches disagree with its header",
            ));
        }
    }
    Ok((h, payload))
}

/// Decode and verify only a chunk's header (its first [`HEADER_LEN`]
/// bytes, e.g. from a ranged read); returns it with the payload's CRC.
pub fn decode_header(key: &str, hb: &[u8]) -> Result<(ChunkHeader, u32), StorageError> {
    if hb.len() < HEADER_LEN {
        return Err(StorageError::corrupt(
            key,
            format!("{} bytes is shorter than a chunk header", hb.len()),
        ));
    }
    let hb = &hb[..HEADER_LEN];
    if &hb[0..4] != MAGIC {
        return Err(StorageError::corrupt(key, "bad chunk magic"));
    }
    if hb[4] != FORMAT {
        return Err(StorageError::corrupt(
            key,
            format!("unknown chunk format {}", hb[4]),
        ));
    }
    let stored_crc = u32::from_be_bytes(hb[48..52].try_into().unwrap());
    if crc32c::crc32c(&hb[..48]) != stored_crc {
        return Err(StorageError::corrupt(key, "chunk header CRC mismatch"));
    }
    let kind = match hb[5] {
        0 => ChunkKind::Data,
        1 => ChunkKind::Fence,
        k => {
            return Err(StorageError::corrupt(
                key,
                format!("unknown chunk kind {k}"),
            ))
        }
    };
    let i32_at = |at: usize| i32::from_be_bytes(hb[at..at + 4].try_into().unwrap());
    let i64_at = |at: usize| i64::from_be_bytes(hb[at..at + 8].try_into().unwrap());
    let u32_at = |at: usize| u32::from_be_bytes(hb[at..at + 4].try_into().unwrap());
    let h = ChunkHeader {
        kind,
        epoch: i32_at(8),
        base_offset: i64_at(12),
        next_offset: i64_at(20),
        max_timestamp: i64_at(28),
        batch_count: u32_at(36),
        payload_len: u32_at(40),
    };
    Ok((h, u32_at(44)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_protocol::batch::{assign, validate_for_produce};

    fn batch(n: i32, base: i64) -> Vec<u8> {
        let mut b = floe_protocol::batch::synthetic_batch(n, 8, 1_000);
        validate_for_produce(&b, 1 << 20).unwrap();
        assign(&mut b, base, 1, None);
        b
    }

    #[test]
    fn round_trip_and_corruption_detected() {
        let mut payload = batch(3, 10);
        payload.extend(batch(2, 13));
        let c = encode_data(4, 10, 15, 1_002, 2, &payload);
        let (h, p) = decode("k", &c).unwrap();
        assert_eq!(
            (h.kind, h.epoch, h.base_offset, h.next_offset, h.batch_count),
            (ChunkKind::Data, 4, 10, 15, 2)
        );
        assert_eq!(&p[..], &payload[..]);

        let mut buf = new_buffer(payload.len());
        buf.extend_from_slice(&payload);
        seal_buffer(&mut buf, 4, 10, 15, 1_002, 2);
        assert_eq!(buf.freeze(), c, "in-place sealing equals encode_data");

        let mut bad = c.to_vec();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(decode("k", &Bytes::from(bad)).is_err());
        assert!(decode("k", &c.slice(..c.len() - 1)).is_err());
        let wrong_next = encode_data(4, 10, 16, 1_002, 2, &payload);
        assert!(
            decode("k", &wrong_next).is_err(),
            "header must agree with batches"
        );

        let f = encode_fence(9, 15);
        let (h, p) = decode("f", &f).unwrap();
        assert_eq!((h.kind, h.epoch, h.base_offset), (ChunkKind::Fence, 9, 15));
        assert!(p.is_empty());
    }
}
