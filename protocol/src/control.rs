//! Transaction markers as Kafka writes them: a control batch (attributes
//! control and transactional) of one record whose key is the marker's
//! version and type (0 abort, 1 commit) and whose value is the version
//! and the coordinator epoch — built for a partition's writer to append,
//! and recognised when a log is replayed.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::batch::{BatchHeader, Batches};

/// Commit or abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerKind {
    Abort,
    Commit,
}

impl MarkerKind {
    fn code(self) -> i16 {
        match self {
            MarkerKind::Abort => 0,
            MarkerKind::Commit => 1,
        }
    }
}

/// A transaction marker read back from a control batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub kind: MarkerKind,
    pub coordinator_epoch: i32,
}

/// The control batch of `marker`, not yet assigned an offset (the writer
/// assigns it like any batch), stamped `timestamp_ms`.
pub fn marker_batch(marker: &Marker, timestamp_ms: i64) -> Bytes {
    let mut key = BytesMut::with_capacity(4);
    key.put_i16(0);
    key.put_i16(marker.kind.code());
    let mut value = BytesMut::with_capacity(6);
    value.put_i16(0);
    value.put_i32(marker.coordinator_epoch);
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: marker.producer_id,
        producer_epoch: marker.producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: timestamp_ms,
        key: Some(key.freeze()),
        value: Some(value.freeze()),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("one uncompressed record encodes");
    buf.freeze()
}

/// The marker a control batch carries (None: not a control batch, or not
/// a transaction marker — Kafka has other control records).
pub fn parse_marker(batch: &[u8]) -> Option<Marker> {
    let (_, h) = Batches::new(batch).next()?;
    if !h.is_control() || h.records_count != 1 {
        return None;
    }
    let mut bytes = Bytes::copy_from_slice(&batch[..h.total_len()]);
    let set = crate::records::decode_next(&mut bytes).ok()?;
    let record = set.records.first()?;
    let (mut key, mut value) = (record.key.clone()?, record.value.clone()?);
    if key.len() < 4 || value.len() < 6 {
        return None;
    }
    let (_version, kind) = (key.get_i16(), key.get_i16());
    let (_vversion, coordinator_epoch) = (value.get_i16(), value.get_i32());
    Some(Marker {
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        kind: match kind {
            0 => MarkerKind::Abort,
            1 => MarkerKind::Commit,
            _ => return None,
        },
        coordinator_epoch,
    })
}

/// Whether `h` heads a transaction marker's batch.
pub fn is_marker(h: &BatchHeader) -> bool {
    h.is_control() && h.is_transactional()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::assign;

    #[test]
    fn a_marker_round_trips_and_reads_as_kafka_writes_it() {
        for kind in [MarkerKind::Commit, MarkerKind::Abort] {
            let m = Marker {
                producer_id: 4_001,
                producer_epoch: 7,
                kind,
                coordinator_epoch: 12,
            };
            let mut b = marker_batch(&m, 1_700_000_000_000).to_vec();
            assign(&mut b, 42, 3, None);
            let (_, h) = Batches::new(&b).next().unwrap();
            assert!(is_marker(&h));
            assert_eq!(
                (
                    h.base_offset,
                    h.producer_id,
                    h.producer_epoch,
                    h.records_count
                ),
                (42, 4_001, 7, 1)
            );
            assert_eq!(parse_marker(&b), Some(m));
            // The codec's decoder sees a control record.
            let mut bytes = Bytes::from(b);
            let set = crate::records::decode_next(&mut bytes).unwrap();
            assert!(set.records[0].control && set.records[0].transactional);
        }
        // A data batch is not a marker.
        let data = crate::batch::synthetic_batch(2, 8, 1_000);
        assert_eq!(parse_marker(&data), None);
    }
}
