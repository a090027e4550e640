//! Message sets of formats v0 and v1 (magic 0 and 1, Kafka before 0.11):
//! what an old client produces (Produce v0–2) is read into one v2 batch, and
//! what it fetches (Fetch v0–3) is written from the stored v2 batches.
//! Floe stores v2 batches only.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::batch::{BatchError, BatchHeader};

/// One message of a v0/v1 set, after its wrapper (if any) is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub offset: i64,
    /// -1 for magic 0, which has none.
    pub timestamp: i64,
    pub log_append_time: bool,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

const CODEC_MASK: u8 = 0x07;
const LOG_APPEND_TIME: u8 = 0x08;
/// crc, magic, attributes, key length, value length.
const MIN_MESSAGE: usize = 4 + 1 + 1 + 4 + 4;

fn corrupt(m: impl Into<String>) -> BatchError {
    BatchError::Corrupt(m.into())
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// A length-prefixed byte string (-1: null), advancing `b`.
fn take_bytes(b: &mut &[u8]) -> Result<Option<Bytes>, BatchError> {
    if b.len() < 4 {
        return Err(corrupt("message truncated in a length"));
    }
    let len = i32_at(b, 0);
    *b = &b[4..];
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if b.len() < len {
        return Err(corrupt(format!(
            "message field of {len} bytes but only {} remain",
            b.len()
        )));
    }
    let v = Bytes::copy_from_slice(&b[..len]);
    *b = &b[len..];
    Ok(Some(v))
}

fn decompress(codec: Compression, mut value: Bytes) -> Result<Bytes, BatchError> {
    let copy = |b: &mut Bytes| Ok(b.clone());
    match codec {
        Compression::Gzip => Gzip::decompress(&mut value, copy),
        Compression::Snappy => Snappy::decompress(&mut value, copy),
        Compression::Lz4 => Lz4::decompress(&mut value, copy),
        _ => Ok(value),
    }
    .map_err(|e| corrupt(format!("cannot decompress a {codec:?} message: {e}")))
}

/// The messages of a v0/v1 message set, compressed wrappers opened, and the
/// codec of the first compressed one.
pub fn read_message_set(set: &[u8]) -> Result<(Vec<Message>, Compression), BatchError> {
    let mut out = Vec::new();
    let mut codec = Compression::None;
    read_into(set, false, &mut out, &mut codec)?;
    Ok((out, codec))
}

fn read_into(
    mut b: &[u8],
    inner: bool,
    out: &mut Vec<Message>,
    codec: &mut Compression,
) -> Result<(), BatchError> {
    while !b.is_empty() {
        if b.len() < 12 {
            return Err(corrupt(format!(
                "{} trailing bytes are not a message",
                b.len()
            )));
        }
        let offset = i64_at(b, 0);
        let size = i32_at(b, 8);
        if size < MIN_MESSAGE as i32 {
            return Err(corrupt(format!("message size {size} too small")));
        }
        let size = size as usize;
        if b.len() < 12 + size {
            return Err(corrupt(format!(
                "message claims {size} bytes but only {} remain",
                b.len() - 12
            )));
        }
        let msg = &b[12..12 + size];
        b = &b[12 + size..];
        let crc = u32::from_be_bytes(msg[0..4].try_into().unwrap());
        if crc32fast::hash(&msg[4..]) != crc {
            return Err(corrupt("message CRC32 mismatch"));
        }
        let magic = msg[4] as i8;
        let attributes = msg[5];
        let mut rest = &msg[6..];
        let timestamp = match magic {
            0 => -1,
            1 => {
                if rest.len() < 8 + 8 {
                    return Err(corrupt("v1 message truncated in its timestamp"));
                }
                let t = i64_at(rest, 0);
                rest = &rest[8..];
                t
            }
            m => return Err(BatchError::UnsupportedMagic(m)),
        };
        let key = take_bytes(&mut rest)?;
        let value = take_bytes(&mut rest)?;
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "{} bytes after a message's value",
                rest.len()
            )));
        }
        let log_append_time = magic == 1 && attributes & LOG_APPEND_TIME != 0;
        let compression = match attributes & CODEC_MASK {
            0 => None,
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            c => {
                return Err(BatchError::Invalid(format!(
                    "compression codec {c} is not valid in a v{magic} message"
                )))
            }
        };
        let Some(compression) = compression else {
            out.push(Message {
                offset,
                timestamp,
                log_append_time,
                key,
                value,
            });
            continue;
        };
        if inner {
            return Err(corrupt("a compressed message inside a compressed message"));
        }
        if *codec == Compression::None {
            *codec = compression;
        }
        let Some(value) = value else {
            return Err(corrupt("a compressed message without a value"));
        };
        let start = out.len();
        read_into(&decompress(compression, value)?, true, out, codec)?;
        if out.len() == start {
            return Err(corrupt("a compressed message with no messages inside"));
        }
        if magic == 1 {
            // Inner offsets are relative; the wrapper has the last one's.
            let last = out.last().map_or(0, |m| m.offset);
            for m in &mut out[start..] {
                m.offset += offset - last;
                if log_append_time {
                    m.timestamp = timestamp;
                    m.log_append_time = true;
                }
            }
        }
    }
    Ok(())
}

/// A record of no producer, with a creation time.
fn plain_record(offset: i64, timestamp: i64, key: Option<Bytes>, value: Option<Bytes>) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

/// Produce v0–2: a message set as one v2 batch of the same keys, values,
/// timestamps and compression, not idempotent. Magic 0 messages carry no
/// timestamp: they get `now_ms`, as a log-append time.
pub fn upconvert(set: &[u8], now_ms: i64) -> Result<Bytes, BatchError> {
    let (messages, compression) = read_message_set(set)?;
    if messages.is_empty() {
        return Err(BatchError::Invalid(
            "produce request carries no message".into(),
        ));
    }
    let log_append = messages[0].log_append_time || messages[0].timestamp < 0;
    let records: Vec<Record> = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let mut r = plain_record(
                i as i64,
                if m.timestamp < 0 { now_ms } else { m.timestamp },
                m.key,
                m.value,
            );
            if m.log_append_time || m.timestamp < 0 {
                r.timestamp_type = TimestampType::LogAppend;
            }
            // One batch: the encoder splits where offset - sequence changes
            // (the sequence is reset to -1 below).
            r.sequence = i as i32;
            r
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| corrupt(format!("cannot write the converted batch: {e}")))?;
    // Not idempotent (base sequence -1), and the timestamp type, which the
    // encoder does not write; then the CRC again.
    buf[53..57].copy_from_slice(&(-1i32).to_be_bytes());
    if log_append {
        buf[22] |= LOG_APPEND_TIME;
    }
    let crc = crc32c::crc32c(&buf[crate::batch::CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(buf.freeze())
}

/// Fetch v0–3: stored v2 batches as a message set of `magic` 0 or 1,
/// uncompressed, each record at its offset. Control batches are left out,
/// as is a trailing partial batch (a fetch's byte budget); record headers
/// are dropped, since the old formats cannot carry them.
pub fn downconvert(batches: &[u8], magic: i8) -> Result<Bytes, BatchError> {
    let mut out = BytesMut::with_capacity(batches.len() + batches.len() / 4);
    let mut pos = 0;
    while pos < batches.len() {
        let rest = &batches[pos..];
        let Some(h) = BatchHeader::parse(rest) else {
            break;
        };
        let len = h.total_len();
        if len > rest.len() {
            break;
        }
        pos += len;
        if h.is_control() {
            continue;
        }
        let mut one = Bytes::copy_from_slice(&rest[..len]);
        let set = crate::records::decode_next(&mut one)
            .map_err(|e| corrupt(format!("stored batch at {}: {e}", h.base_offset)))?;
        for r in set.records.iter().filter(|r| !r.control) {
            write_message(&mut out, magic, r);
        }
    }
    Ok(out.freeze())
}

fn write_message(out: &mut BytesMut, magic: i8, r: &Record) {
    let field = |b: &Option<Bytes>| 4 + b.as_ref().map_or(0, Bytes::len);
    let size = 4 + 1 + 1 + if magic >= 1 { 8 } else { 0 } + field(&r.key) + field(&r.value);
    out.put_i64(r.offset);
    out.put_i32(size as i32);
    let crc_at = out.len();
    out.put_u32(0);
    out.put_i8(magic);
    let log_append = magic >= 1 && r.timestamp_type == TimestampType::LogAppend;
    out.put_u8(if log_append { LOG_APPEND_TIME } else { 0 });
    if magic >= 1 {
        out.put_i64(r.timestamp);
    }
    for b in [&r.key, &r.value] {
        match b {
            None => out.put_i32(-1),
            Some(b) => {
                out.put_i32(b.len() as i32);
                out.put_slice(b);
            }
        }
    }
    let crc = crc32fast::hash(&out[crc_at + 4..]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A message of `magic` 0 or 1, for tests and clients: offset, timestamp
/// (ignored for magic 0), key, value, uncompressed.
pub fn encode_message(
    out: &mut BytesMut,
    magic: i8,
    offset: i64,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) {
    let r = plain_record(
        offset,
        timestamp,
        key.map(Bytes::copy_from_slice),
        value.map(Bytes::copy_from_slice),
    );
    write_message(out, magic, &r);
}

/// A v1 gzip wrapper around `inner` (a message set of magic 1 with relative
/// offsets 0..n), at absolute offset `last_offset`, for tests and clients.
pub fn gzip_wrapper(out: &mut BytesMut, last_offset: i64, timestamp: i64, inner: &[u8]) {
    use kafka_protocol::compression::Compressor;
    let mut compressed = BytesMut::new();
    Gzip::compress(&mut compressed, |b: &mut BytesMut| {
        b.put_slice(inner);
        Ok(())
    })
    .expect("gzip into memory");
    let start = out.len();
    encode_message(out, 1, last_offset, timestamp, None, Some(&compressed));
    // The codec lives in the attributes, under the CRC.
    let attributes_at = start + 8 + 4 + 4 + 1;
    out[attributes_at] = 1;
    let crc = crc32fast::hash(&out[start + 16..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(magic: i8, n: i64) -> BytesMut {
        let mut b = BytesMut::new();
        for i in 0..n {
            encode_message(
                &mut b,
                magic,
                i,
                1_700_000_000_000 + i,
                Some(format!("k{i}").as_bytes()),
                Some(format!("v{i}").as_bytes()),
            );
        }
        b
    }

    #[test]
    fn a_v1_set_becomes_a_v2_batch_with_the_same_records_and_back() {
        let v2 = upconvert(&set(1, 3), 5).unwrap();
        let h = crate::batch::validate_for_produce(&v2, 1 << 20).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].records_count, 3);
        assert_eq!(h[0].producer_id, -1);
        assert_eq!(h[0].base_sequence, -1, "not idempotent");
        let records = crate::records::decode_next(&mut v2.clone())
            .unwrap()
            .records;
        let got: Vec<_> = records
            .iter()
            .map(|r| (r.offset, r.timestamp, r.key.clone(), r.value.clone()))
            .collect();
        assert_eq!(
            got,
            (0..3)
                .map(|i| (
                    i,
                    1_700_000_000_000 + i,
                    Some(Bytes::from(format!("k{i}"))),
                    Some(Bytes::from(format!("v{i}")))
                ))
                .collect::<Vec<_>>()
        );
        // Down again, at the offsets the log gave the batch.
        let (back, codec) = read_message_set(&downconvert(&v2, 1).unwrap()).unwrap();
        assert_eq!(codec, Compression::None);
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].offset, 2);
        assert_eq!(back[2].timestamp, 1_700_000_000_002);
        assert_eq!(back[2].key.as_deref(), Some(&b"k2"[..]));
        let (v0, _) = read_message_set(&downconvert(&v2, 0).unwrap()).unwrap();
        assert_eq!(v0[1].timestamp, -1, "magic 0 has no timestamp");
        assert_eq!(v0[1].value.as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn magic_0_gets_the_append_time_and_gzip_is_kept() {
        let v2 = upconvert(&set(0, 2), 42).unwrap();
        let rs = crate::records::decode_next(&mut v2.clone()).unwrap();
        assert!(rs
            .records
            .iter()
            .all(|r| r.timestamp == 42 && r.timestamp_type == TimestampType::LogAppend));

        let mut wrapped = BytesMut::new();
        gzip_wrapper(&mut wrapped, 9, 7, &set(1, 3));
        let (m, codec) = read_message_set(&wrapped).unwrap();
        assert_eq!(codec, Compression::Gzip);
        assert_eq!(
            m.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [7, 8, 9],
            "relative inner offsets end at the wrapper's"
        );
        let v2 = upconvert(&wrapped, 0).unwrap();
        let h = BatchHeader::parse(&v2).unwrap();
        assert_eq!(h.attributes & 0x07, 1, "gzip, as sent");
        let rs = crate::records::decode_next(&mut v2.clone()).unwrap();
        assert_eq!(rs.records[1].value.as_deref(), Some(&b"v1"[..]));
    }

    #[test]
    fn bad_message_sets_are_refused_with_a_reason() {
        let mut b = set(1, 1);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(upconvert(&b, 0), Err(BatchError::Corrupt(m)) if m.contains("CRC")));
        let b = set(1, 2);
        assert!(matches!(
            upconvert(&b[..b.len() - 3], 0),
            Err(BatchError::Corrupt(_))
        ));
        assert!(matches!(upconvert(&[], 0), Err(BatchError::Invalid(_))));
        let mut b = set(1, 1);
        b[16] = 2;
        assert!(
            upconvert(&b, 0).is_err(),
            "a v2 magic byte inside a message set"
        );
    }
}
