//! Record batches decoded into records, the one way Floe does it: through
//! the codec's decoder, with Floe's own decompression, which stops a batch
//! at [`MAX_DECOMPRESSED_BATCH`] bytes (a few kilobytes of zstd, gzip or
//! lz4 can claim gigabytes: a decompression bomb must be an error, not an
//! out-of-memory abort). Everything that reads records out of a batch —
//! a compacted topic's key check, compaction, transaction markers,
//! down-conversion for old clients, the offsets log, a record's trace
//! context — goes through here (clippy refuses the codec's decoder
//! elsewhere).

use std::io::Read;

use bytes::{Buf, Bytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordSet};

/// The most a batch's records may take once decompressed. Kafka's limits
/// count compressed bytes (`max.message.bytes`, 1 MiB by default); 64 MiB
/// leaves room for records that compress 64 to 1 at that size.
pub const MAX_DECOMPRESSED_BATCH: usize = 64 << 20;

/// Why a batch's records could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(String);

/// Every batch in `buf`, records decoded.
pub fn decode_all(buf: &Bytes) -> Result<Vec<RecordSet>, DecodeError> {
    let mut b = buf.clone();
    let mut out = Vec::new();
    while b.has_remaining() {
        out.push(decode_next(&mut b)?);
    }
    Ok(out)
}

/// The next batch of `buf` (advanced past it), records decoded.
pub fn decode_next(buf: &mut Bytes) -> Result<RecordSet, DecodeError> {
    #[allow(clippy::disallowed_methods)] // the one call of the codec's decoder
    RecordBatchDecoder::decode_with_custom_compression(buf, Some(decompress))
        .map_err(|e| DecodeError(format!("{e:#}")))
}

/// Decompress a batch's records, refusing to go past
/// [`MAX_DECOMPRESSED_BATCH`].
fn decompress(data: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    let input = data.copy_to_bytes(data.remaining());
    match compression {
        Compression::None => Ok(input),
        Compression::Gzip => bounded(flate2::read::GzDecoder::new(input.reader()), "gzip"),
        Compression::Lz4 => bounded(lz4::Decoder::new(input.reader())?, "lz4"),
        Compression::Zstd => bounded(zstd::stream::read::Decoder::new(input.reader())?, "zstd"),
        Compression::Snappy => snappy(&input),
    }
}

fn too_large(codec: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{codec} records decompress to more than {MAX_DECOMPRESSED_BATCH} bytes (the most a batch may hold)"
    )
}

/// Read a decompressing reader to its end, or fail past the bound.
fn bounded(reader: impl Read, codec: &str) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED_BATCH as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| anyhow::anyhow!("{codec} records do not decompress: {e}"))?;
    if out.len() > MAX_DECOMPRESSED_BATCH {
        return Err(too_large(codec));
    }
    Ok(out.into())
}

/// The start of snappy-java's framing, which Kafka's clients write:
/// then blocks, each a 4-byte compressed length and a raw snappy block.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER: usize = 16;

/// Snappy as Kafka's clients write it (snappy-java's framing), or a raw
/// snappy block as some clients do. Each block's own header says its
/// decompressed size: checked against the bound before anything is
/// allocated for it.
fn snappy(input: &Bytes) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    let block = |b: &[u8], out: &mut Vec<u8>| -> anyhow::Result<()> {
        let n = snap::raw::decompress_len(b)
            .map_err(|e| anyhow::anyhow!("snappy records do not decompress: {e}"))?;
        if out.len() + n > MAX_DECOMPRESSED_BATCH {
            return Err(too_large("snappy"));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[start..])
            .map_err(|e| anyhow::anyhow!("snappy records do not decompress: {e}"))?;
        Ok(())
    };
    if input.len() >= XERIAL_HEADER && input.starts_with(XERIAL_MAGIC) {
        let mut rest = &input[XERIAL_HEADER..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                anyhow::bail!("snappy records end inside a block's length");
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest = &rest[4..];
            if len > rest.len() {
                anyhow::bail!(
                    "a snappy block of {len} bytes where {} are left",
                    rest.len()
                );
            }
            block(&rest[..len], &mut out)?;
            rest = &rest[len..];
        }
    } else {
        block(input, &mut out)?;
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    fn records(n: i64, value: &[u8]) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i,
                sequence: -1,
                timestamp: 1_000 + i,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::copy_from_slice(value)),
                headers: [(StrBytes::from_static_str("h"), None)]
                    .into_iter()
                    .collect(),
            })
            .collect()
    }

    fn batch(rs: &[Record], compression: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            rs,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn every_codec_round_trips() {
        let rs = records(20, b"some value");
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let sets = decode_all(&batch(&rs, c)).unwrap();
            assert!(sets.iter().all(|s| s.compression == c), "{c:?}");
            let got: Vec<Record> = sets.into_iter().flat_map(|s| s.records).collect();
            assert_eq!(got, rs, "{c:?}");
        }
    }

    #[test]
    fn a_batch_that_decompresses_past_the_bound_is_an_error() {
        // A record of 80 MiB of zeros compresses to a few megabytes at
        // most with every codec.
        let big = vec![0u8; 80 << 20];
        let rs = records(1, &big);
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = batch(&rs, c);
            assert!(b.len() < 8 << 20, "{c:?}: {} bytes compressed", b.len());
            let e = decode_all(&b).unwrap_err().to_string();
            assert!(e.contains("decompress to more than"), "{c:?}: {e}");
        }
    }

    #[test]
    fn a_raw_snappy_block_claiming_gigabytes_is_refused_before_allocating() {
        // A raw snappy block whose header claims 0xFFFFFFFF bytes.
        let mut b = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
        let e = decompress(&mut b, Compression::Snappy)
            .unwrap_err()
            .to_string();
        assert!(e.contains("decompress to more than"), "{e}");
    }
}
