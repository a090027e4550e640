//! Kafka v2 record batches as bytes: the fixed 61-byte header is read and
//! patched in place; records are never decoded on the write path.
//!
//! Layout: baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
//! magic i8 | crc u32 | attributes i16 | lastOffsetDelta i32 |
//! baseTimestamp i64 | maxTimestamp i64 | producerId i64 | producerEpoch i16 |
//! baseSequence i32 | recordsCount i32 | records...
//! The CRC32C covers everything from `attributes` to the end, so the base
//! offset and leader epoch can be assigned without recomputing it.

use kafka_protocol::error::ResponseError;

pub const HEADER_LEN: usize = 61;
/// baseOffset + batchLength: the part of the header outside `batchLength`.
pub const LOG_OVERHEAD: usize = 12;
pub(crate) const CRC_START: usize = 21;
const ATTR_TIMESTAMP_TYPE: i16 = 1 << 3;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// Timestamp type of a batch (attributes bit 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

impl BatchHeader {
    /// Read the header at the start of `buf`; `None` if fewer than 61 bytes.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        if buf.len() < HEADER_LEN {
            return None;
        }
        Some(Self {
            base_offset: i64_at(buf, 0),
            batch_length: i32_at(buf, 8),
            partition_leader_epoch: i32_at(buf, 12),
            magic: buf[16] as i8,
            crc: u32::from_be_bytes(buf[17..21].try_into().unwrap()),
            attributes: i16_at(buf, 21),
            last_offset_delta: i32_at(buf, 23),
            base_timestamp: i64_at(buf, 27),
            max_timestamp: i64_at(buf, 35),
            producer_id: i64_at(buf, 43),
            producer_epoch: i16_at(buf, 51),
            base_sequence: i32_at(buf, 53),
            records_count: i32_at(buf, 57),
        })
    }

    /// Bytes of the whole batch including the 12-byte log overhead.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }

    /// The last offset the header claims. Wrapping, as Kafka's long
    /// arithmetic: a corrupt header (found by the `record_batches` fuzz
    /// target) gives a nonsense offset that the checks around it refuse,
    /// never an overflow panic.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.wrapping_add(self.last_offset_delta as i64)
    }

    pub fn next_offset(&self) -> i64 {
        self.last_offset().wrapping_add(1)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Compression codec id (attributes bits 0-2): 0 none, 1 gzip, 2 snappy,
    /// 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }
}

/// Why a produced batch was refused, with the Kafka error code it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid record batch: {0}")]
    Invalid(String),
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
}

impl BatchError {
    pub fn code(&self) -> ResponseError {
        match self {
            BatchError::Corrupt(_) => ResponseError::CorruptMessage,
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge,
            BatchError::Invalid(_) => ResponseError::InvalidRecord,
            BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        }
    }
}

/// Check the CRC32C of one complete batch.
pub fn crc_ok(batch: &[u8], header: &BatchHeader) -> bool {
    batch.len() >= HEADER_LEN && crc32c::crc32c(&batch[CRC_START..]) == header.crc
}

/// Validate the records of one partition of a produce request: one or more
/// complete magic-2 batches with good CRCs, within `max_batch_bytes`, whose
/// record count agrees with lastOffsetDelta. Returns the headers in order.
pub fn validate_for_produce(
    records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<BatchHeader>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Invalid(
            "produce request carries no record batch".into(),
        ));
    }
    let mut out = Vec::with_capacity(1);
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        if rest.len() < 17 {
            return Err(BatchError::Corrupt(format!(
                "{} trailing bytes are not a batch",
                rest.len()
            )));
        }
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let h = BatchHeader::parse(rest)
            .ok_or_else(|| BatchError::Corrupt("truncated batch header".into()))?;
        if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(BatchError::Corrupt(format!(
                "batch length {} too small",
                h.batch_length
            )));
        }
        let len = h.total_len();
        if len > rest.len() {
            return Err(BatchError::Corrupt(format!(
                "batch claims {len} bytes but only {} remain",
                rest.len()
            )));
        }
        if len > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size: len,
                max: max_batch_bytes,
            });
        }
        let batch = &rest[..len];
        if !crc_ok(batch, &h) {
            return Err(BatchError::Corrupt("CRC32C mismatch".into()));
        }
        if h.records_count <= 0 {
            return Err(BatchError::Invalid(format!(
                "batch has {} records",
                h.records_count
            )));
        }
        if h.last_offset_delta != h.records_count - 1 {
            return Err(BatchError::Invalid(format!(
                "lastOffsetDelta {} does not match record count {}",
                h.last_offset_delta, h.records_count
            )));
        }
        if h.is_control() {
            return Err(BatchError::Invalid(
                "clients may not produce control batches".into(),
            ));
        }
        if h.compression() == 0 {
            check_record_framing(&batch[HEADER_LEN..], h.records_count)?;
        }
        out.push(h);
        pos += len;
    }
    Ok(out)
}

/// An uncompressed batch's records must be exactly `count` length-prefixed
/// records filling the batch, as Kafka's validator finds when it iterates
/// them (fewer or more bytes: CORRUPT_MESSAGE). Only the lengths are read,
/// so this costs a few varints per record; compressed batches are not
/// decompressed on the write path, and their framing is checked by readers.
fn check_record_framing(mut records: &[u8], count: i32) -> Result<(), BatchError> {
    for i in 0..count {
        let len = read_varint(&mut records).ok_or_else(|| {
            BatchError::Corrupt(format!(
                "record {i} of {count}: no length (the batch ends first)"
            ))
        })?;
        if len < 0 || len as usize > records.len() {
            return Err(BatchError::Corrupt(format!(
                "record {i} of {count} claims {len} bytes, {} remain in the batch",
                records.len()
            )));
        }
        records = &records[len as usize..];
    }
    if !records.is_empty() {
        return Err(BatchError::Corrupt(format!(
            "{} bytes follow the batch's {count} records",
            records.len()
        )));
    }
    Ok(())
}

/// A zigzag varint (Kafka's record fields), advancing `buf`; `None` when it
/// runs past the end or beyond 5 bytes.
fn read_varint(buf: &mut &[u8]) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..5 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// A zigzag varlong (a record's timestamp delta), advancing `buf`.
fn read_varlong(buf: &mut &[u8]) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// The value of header `name` of the first record of `batch` (a whole v2
/// batch), read in place: nothing is decoded but that record's lengths.
/// `None` for a compressed batch (not decompressed for this), a record
/// without that header, or bytes that do not frame.
pub fn first_record_header<'a>(batch: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let h = BatchHeader::parse(batch)?;
    if h.compression() != 0 || h.records_count < 1 || batch.len() < HEADER_LEN {
        return None;
    }
    let mut buf = &batch[HEADER_LEN..];
    let len = read_varint(&mut buf)?;
    if len < 0 || len as usize > buf.len() {
        return None;
    }
    let mut r = &buf[..len as usize];
    let take = |r: &mut &'a [u8], n: i64| -> Option<&'a [u8]> {
        if n < 0 || n as usize > r.len() {
            return None;
        }
        let (a, b) = r.split_at(n as usize);
        *r = b;
        Some(a)
    };
    take(&mut r, 1)?; // attributes
    read_varlong(&mut r)?; // timestamp delta
    read_varint(&mut r)?; // offset delta
    let key = read_varint(&mut r)?;
    if key > 0 {
        take(&mut r, key)?;
    }
    let value = read_varint(&mut r)?;
    if value > 0 {
        take(&mut r, value)?;
    }
    let headers = read_varint(&mut r)?;
    for _ in 0..headers.max(0) {
        let k = read_varint(&mut r)?;
        let k = take(&mut r, k)?;
        let v = read_varint(&mut r)?;
        let v = if v < 0 { &[][..] } else { take(&mut r, v)? };
        if k == name.as_bytes() {
            return Some(v);
        }
    }
    None
}

/// The indexes (in the request, from 0) of the records without a key in
/// `records` (validated batches): a compacted topic refuses them, as
/// Kafka does. Batches that do not decode count no records.
pub fn keyless_records(records: &bytes::Bytes) -> Vec<i32> {
    let Ok(sets) = crate::records::decode_all(records) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut i = 0;
    for set in sets {
        for r in set.records {
            if !r.control && r.key.is_none() {
                out.push(i);
            }
            i += 1;
        }
    }
    out
}

/// Assign offsets to a validated batch in place: the base offset and the
/// partition leader epoch (both outside the CRC). With `log_append_time`,
/// also mark the batch LogAppendTime with that max timestamp and recompute
/// the CRC, as Kafka does.
pub fn assign(batch: &mut [u8], base_offset: i64, leader_epoch: i32, log_append_time: Option<i64>) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(ts) = log_append_time {
        let attrs = i16_at(batch, 21) | ATTR_TIMESTAMP_TYPE;
        batch[21..23].copy_from_slice(&attrs.to_be_bytes());
        batch[35..43].copy_from_slice(&ts.to_be_bytes());
        let crc = crc32c::crc32c(&batch[CRC_START..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Iterate the complete batches stored in a buffer, yielding each batch's
/// position and header. Stops at the end or at a partial trailing batch.
#[derive(Clone)]
pub struct Batches<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Batches<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Where iteration stopped: bytes consumed by complete batches so far.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl Iterator for Batches<'_> {
    type Item = (usize, BatchHeader);

    fn next(&mut self) -> Option<Self::Item> {
        let h = BatchHeader::parse(&self.buf[self.pos..])?;
        let len = h.total_len();
        if h.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 || self.pos + len > self.buf.len() {
            return None;
        }
        let at = self.pos;
        self.pos += len;
        Some((at, h))
    }
}

use bytes::{BufMut, BytesMut};

/// Build a valid, uncompressed, not yet assigned batch of `n` records with
/// null keys and `value_len`-byte values (tests and load generators).
pub fn synthetic_batch(n: i32, value_len: usize, base_ts: i64) -> Vec<u8> {
    let mut records = BytesMut::new();
    for i in 0..n {
        let mut body = BytesMut::new();
        body.put_i8(0); // attributes
        put_varint(&mut body, i as i64); // timestamp delta
        put_varint(&mut body, i as i64); // offset delta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, value_len as i64);
        body.put_bytes(b'v', value_len);
        put_varint(&mut body, 0); // headers
        put_varint(&mut records, body.len() as i64);
        records.put(body);
    }
    let mut b = BytesMut::new();
    b.put_i64(0);
    b.put_i32((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32);
    b.put_i32(-1);
    b.put_i8(2);
    b.put_u32(0);
    b.put_i16(0);
    b.put_i32(n - 1);
    b.put_i64(base_ts);
    b.put_i64(base_ts + n as i64 - 1);
    b.put_i64(-1);
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i32(n);
    b.put(records);
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.to_vec()
}

fn put_varint(b: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        b.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    b.put_u8(z as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first record's header is found in place; later records' and
    /// other names are not; a compressed batch is not looked into; a
    /// batch cut short is `None`, never a panic.
    #[test]
    fn the_first_records_header_is_read_in_place() {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = |i: i64, header: &'static [u8]| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i,
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::from(vec![b'v'; 300])),
            headers: [
                ("a".into(), None),
                (
                    "traceparent".into(),
                    Some(bytes::Bytes::from_static(header)),
                ),
            ]
            .into_iter()
            .collect(),
        };
        let encode = |compression| {
            let mut buf = bytes::BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &[record(0, b"first"), record(1, b"second")],
                &RecordEncodeOptions {
                    version: 2,
                    compression,
                },
            )
            .unwrap();
            buf.freeze()
        };
        let plain = encode(Compression::None);
        assert_eq!(
            first_record_header(&plain, "traceparent"),
            Some(&b"first"[..])
        );
        assert_eq!(first_record_header(&plain, "a"), Some(&b""[..]));
        assert_eq!(first_record_header(&plain, "missing"), None);
        assert_eq!(
            first_record_header(&encode(Compression::Gzip), "traceparent"),
            None
        );
        for cut in [0, 30, 61, 70, 100] {
            assert_eq!(first_record_header(&plain[..cut], "traceparent"), None);
        }
    }

    #[test]
    fn validates_and_assigns() {
        let mut two = synthetic_batch(3, 10, 1000);
        two.extend(synthetic_batch(2, 5, 2000));
        let hs = validate_for_produce(&two, 1 << 20).unwrap();
        assert_eq!(hs.len(), 2);
        assert_eq!(hs[0].records_count, 3);
        let len0 = hs[0].total_len();
        assign(&mut two[..len0], 100, 7, None);
        let h = BatchHeader::parse(&two).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.partition_leader_epoch),
            (100, 102, 7)
        );
        assert!(
            crc_ok(&two[..len0], &h),
            "offset and epoch are outside the CRC"
        );
        assign(&mut two[len0..], 103, 7, Some(99_999));
        let h2 = BatchHeader::parse(&two[len0..]).unwrap();
        assert_eq!(h2.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(h2.max_timestamp, 99_999);
        assert!(
            crc_ok(&two[len0..], &h2),
            "CRC recomputed after LogAppendTime"
        );
        let offsets: Vec<_> = Batches::new(&two).map(|(_, h)| h.base_offset).collect();
        assert_eq!(offsets, vec![100, 103]);
    }

    /// A batch whose header and CRC are right but whose records do not fill
    /// it as counted: corrupt, as Kafka's validator finds.
    #[test]
    fn record_framing_must_match_the_count() {
        let reframe = |mut b: Vec<u8>, count: i32, extra: &[u8]| {
            b.extend_from_slice(extra);
            let len = (b.len() - LOG_OVERHEAD) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            b[57..61].copy_from_slice(&count.to_be_bytes());
            b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
            let crc = crc32c::crc32c(&b[CRC_START..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let good = synthetic_batch(3, 5, 0);
        assert!(validate_for_produce(&reframe(good.clone(), 3, &[]), 1 << 20).is_ok());
        // Claims 4 records, holds 3.
        let e = validate_for_produce(&reframe(good.clone(), 4, &[]), 1 << 20).unwrap_err();
        assert_eq!(e.code(), ResponseError::CorruptMessage, "{e}");
        assert!(e.to_string().contains("record 3 of 4"), "{e}");
        // Claims 2 records, holds 3.
        let e = validate_for_produce(&reframe(good.clone(), 2, &[]), 1 << 20).unwrap_err();
        assert_eq!(e.code(), ResponseError::CorruptMessage, "{e}");
        assert!(
            e.to_string().contains("follow the batch's 2 records"),
            "{e}"
        );
        // A record length beyond the batch.
        let e = validate_for_produce(&reframe(good.clone(), 4, &[0x7e]), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("claims 63 bytes"), "{e}");
        // A negative length.
        let e = validate_for_produce(&reframe(good, 4, &[0x01]), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("claims -1 bytes"), "{e}");
    }

    #[test]
    fn rejects_bad_batches_with_kafka_codes() {
        let good = synthetic_batch(2, 4, 0);
        let mut bad_crc = good.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert_eq!(
            validate_for_produce(&bad_crc, 1 << 20).unwrap_err().code(),
            ResponseError::CorruptMessage
        );
        assert_eq!(
            validate_for_produce(&good, 10).unwrap_err().code(),
            ResponseError::MessageTooLarge
        );
        let mut magic1 = good.clone();
        magic1[16] = 1;
        assert_eq!(
            validate_for_produce(&magic1, 1 << 20).unwrap_err().code(),
            ResponseError::UnsupportedForMessageFormat
        );
        let mut bad_count = good.clone();
        bad_count[57..61].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&bad_count[CRC_START..]);
        bad_count[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate_for_produce(&bad_count, 1 << 20)
                .unwrap_err()
                .code(),
            ResponseError::InvalidRecord
        );
        assert_eq!(
            validate_for_produce(&good[..40], 1 << 20)
                .unwrap_err()
                .code(),
            ResponseError::CorruptMessage
        );
        assert_eq!(
            validate_for_produce(&good[..good.len() - 1], 1 << 20)
                .unwrap_err()
                .code(),
            ResponseError::CorruptMessage
        );
        assert_eq!(
            validate_for_produce(&[], 1 << 20).unwrap_err().code(),
            ResponseError::InvalidRecord
        );
    }

    proptest::proptest! {
        #[test]
        fn validation_never_panics_on_garbage(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = validate_for_produce(&data, 1 << 20);
            let _ = Batches::new(&data).count();
        }

        #[test]
        fn batches_iterates_what_was_concatenated(sizes in proptest::collection::vec((1i32..20, 0usize..50), 1..10)) {
            let mut buf = Vec::new();
            let mut next = 0i64;
            for (n, len) in &sizes {
                let mut b = synthetic_batch(*n, *len, 5);
                assign(&mut b, next, 1, None);
                next += *n as i64;
                buf.extend(b);
            }
            let hs = validate_for_produce(&buf, 1 << 20).unwrap();
            proptest::prop_assert_eq!(hs.len(), sizes.len());
            let it: Vec<_> = Batches::new(&buf).collect();
            proptest::prop_assert_eq!(it.len(), sizes.len());
            proptest::prop_assert_eq!(it.last().unwrap().1.next_offset(), next);
            // A truncated tail is not yielded.
            let cut = &buf[..buf.len() - 1];
            proptest::prop_assert_eq!(Batches::new(cut).count(), sizes.len() - 1);
        }
    }
}
