//! Log compaction's record-level work (the compactor that runs it over a
//! partition's sealed segments is the broker's `partition::compactor`): the
//! latest offset of every key over a run of batches, and the batches rewritten keeping only
//! what compaction keeps — each key's latest record, a tombstone (null
//! value) only until its delete horizon, nothing of an aborted
//! transaction, no keyless record — with every kept record at its original
//! offset (gaps between batches are normal in a compacted log). A batch
//! whose records all stay is copied byte for byte; one that loses some is
//! encoded anew with the same compression, producer and timestamps; one
//! that loses all is dropped. Control batches (transaction markers) stay.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use floe_common::Offset;
use floe_protocol::batch::{BatchHeader, Batches};
use kafka_protocol::records::{Compression, RecordBatchEncoder, RecordEncodeOptions};

use crate::error::StorageError;

/// A key as the offset map holds it: its MD5 digest, as Kafka's cleaner
/// does, so the map costs the same per key whatever the key's length and
/// holds no reference to the bytes it was read from (a collision, at
/// 2^-128, would only keep a superseded record).
pub type KeyHash = [u8; 16];

/// The latest offset of each key.
pub type KeyOffsets = HashMap<KeyHash, Offset>;

/// What one entry of [`KeyOffsets`] costs in memory, roughly (digest,
/// offset, the table's own overhead): a pass sizes its map by it.
pub const KEY_ENTRY_BYTES: usize = 40;

pub fn key_hash(key: &[u8]) -> KeyHash {
    use md5::Digest;
    md5::Md5::digest(key).into()
}

/// What a compaction pass keeps besides each key's latest record.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Tombstones in batches whose newest timestamp is older than this are
    /// dropped (now - delete.retention.ms); later ones are kept.
    pub tombstone_horizon_ms: i64,
}

/// One pass's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// The kept batches, back to back, in offset order.
    pub data: Bytes,
    pub kept_records: u64,
    pub dropped_records: u64,
    pub batches: u32,
    /// The newest timestamp of a batch holding a kept tombstone (-1:
    /// none): a later pass must run once it is past its horizon.
    pub tombstones_until_ms: i64,
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::corrupt("compaction", e.to_string())
}

fn compression_of(h: &BatchHeader) -> Result<Compression, StorageError> {
    Ok(match h.compression() {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        c => return Err(corrupt(format!("unknown compression codec {c}"))),
    })
}

/// Add the keys of `data` (whole v2 batches in offset order) to `latest`:
/// a later record of a key replaces an earlier one. Control batches and
/// batches `aborted` says belong to an aborted transaction are skipped.
pub fn index_keys(
    data: &Bytes,
    latest: &mut KeyOffsets,
    aborted: &dyn Fn(&BatchHeader) -> bool,
) -> Result<(), StorageError> {
    for (pos, h) in Batches::new(data) {
        if h.is_control() || aborted(&h) {
            continue;
        }
        let b = data.slice(pos..pos + h.total_len());
        for set in floe_protocol::records::decode_all(&b).map_err(corrupt)? {
            for r in set.records {
                if let Some(k) = r.key {
                    latest.insert(key_hash(&k), r.offset);
                }
            }
        }
    }
    Ok(())
}

/// Whether `key`'s record at `offset` is superseded: `latest` holds a
/// later offset of the key. A key `latest` does not hold (the map covers
/// only the segments a pass indexed) is not.
fn superseded(latest: &KeyOffsets, key: &[u8], offset: Offset) -> bool {
    latest.get(&key_hash(key)).is_some_and(|l| *l > offset)
}

/// How many records of `data` a pass with `latest` would drop as
/// superseded or aborted (keyless records too): zero means rewriting it
/// would change nothing but expired tombstones.
pub fn droppable(
    data: &Bytes,
    latest: &KeyOffsets,
    aborted: &dyn Fn(&BatchHeader) -> bool,
) -> Result<u64, StorageError> {
    let mut n = 0;
    for (pos, h) in Batches::new(data) {
        if h.is_control() {
            continue;
        }
        if aborted(&h) {
            n += h.records_count.max(0) as u64;
            continue;
        }
        let b = data.slice(pos..pos + h.total_len());
        for set in floe_protocol::records::decode_all(&b).map_err(corrupt)? {
            n += set
                .records
                .iter()
                .filter(|r| {
                    r.key
                        .as_ref()
                        .is_none_or(|k| superseded(latest, k, r.offset))
                })
                .count() as u64;
        }
    }
    Ok(n)
}

/// Rewrite `data` keeping what compaction keeps (see the module's doc).
pub fn compact(
    data: &Bytes,
    latest: &KeyOffsets,
    rules: Rules,
    aborted: &dyn Fn(&BatchHeader) -> bool,
) -> Result<Compacted, StorageError> {
    let mut out = BytesMut::with_capacity(data.len());
    let mut c = Compacted {
        tombstones_until_ms: -1,
        ..Default::default()
    };
    let mut it = Batches::new(data);
    for (pos, h) in it.by_ref() {
        let raw = &data[pos..pos + h.total_len()];
        if h.is_control() {
            out.extend_from_slice(raw);
            c.batches += 1;
            continue;
        }
        if aborted(&h) {
            c.dropped_records += h.records_count.max(0) as u64;
            continue;
        }
        let b = data.slice(pos..pos + h.total_len());
        let mut records = Vec::new();
        for set in floe_protocol::records::decode_all(&b).map_err(corrupt)? {
            records.extend(set.records);
        }
        let total = records.len();
        let tombstones_expire = h.max_timestamp < rules.tombstone_horizon_ms;
        records.retain(|r| {
            let Some(k) = &r.key else { return false };
            let expired = r.value.is_none() && tombstones_expire;
            !(superseded(latest, k, r.offset) || expired)
        });
        if records.iter().any(|r| r.value.is_none()) {
            c.tombstones_until_ms = c.tombstones_until_ms.max(h.max_timestamp);
        }
        c.kept_records += records.len() as u64;
        c.dropped_records += (total - records.len()) as u64;
        if records.is_empty() {
            continue;
        }
        c.batches += 1;
        if records.len() == total {
            out.extend_from_slice(raw);
            continue;
        }
        RecordBatchEncoder::encode(
            &mut out,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: compression_of(&h)?,
            },
        )
        .map_err(corrupt)?;
    }
    if it.position() != data.len() {
        return Err(corrupt("a partial batch at the end of the data"));
    }
    c.data = out.freeze();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Record, TimestampType};

    /// A batch of (offset, key, value) records at `ts`, compressed or not.
    fn batch(
        recs: &[(i64, Option<&str>, Option<&str>)],
        ts: i64,
        compression: Compression,
    ) -> Vec<u8> {
        let records: Vec<Record> = recs
            .iter()
            .map(|(o, k, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id: 7,
                producer_epoch: 1,
                timestamp_type: TimestampType::Creation,
                offset: *o,
                sequence: *o as i32,
                timestamp: ts + o,
                key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
                value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
            })
            .collect();
        let mut b = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut b,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        b.to_vec()
    }

    fn read(data: &Bytes) -> Vec<(i64, Option<String>, Option<String>)> {
        floe_protocol::records::decode_all(data)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.records)
            .map(|r| {
                let s = |x: Option<Bytes>| x.map(|x| String::from_utf8(x.to_vec()).unwrap());
                (r.offset, s(r.key), s(r.value))
            })
            .collect()
    }

    fn none(_: &BatchHeader) -> bool {
        false
    }

    #[test]
    fn the_latest_record_of_each_key_stays_at_its_offset() {
        let mut data = batch(
            &[
                (0, Some("a"), Some("a1")),
                (1, Some("b"), Some("b1")),
                (2, Some("a"), Some("a2")),
            ],
            1_000,
            Compression::None,
        );
        // A compressed batch, and one whose records all stay.
        data.extend(batch(
            &[(3, Some("c"), Some("c1")), (4, Some("b"), Some("b2"))],
            1_000,
            Compression::Zstd,
        ));
        let whole = batch(&[(5, Some("d"), Some("d1"))], 1_000, Compression::None);
        data.extend(&whole);
        let data = Bytes::from(data);
        let mut latest = KeyOffsets::new();
        index_keys(&data, &mut latest, &none).unwrap();
        assert_eq!(latest.len(), 4);
        let c = compact(
            &data,
            &latest,
            Rules {
                tombstone_horizon_ms: 0,
            },
            &none,
        )
        .unwrap();
        assert_eq!(
            read(&c.data),
            vec![
                (2, Some("a".into()), Some("a2".into())),
                (3, Some("c".into()), Some("c1".into())),
                (4, Some("b".into()), Some("b2".into())),
                (5, Some("d".into()), Some("d1".into())),
            ]
        );
        assert_eq!((c.kept_records, c.dropped_records, c.batches), (4, 2, 3));
        // A batch kept whole is the same bytes; a rewritten one keeps its
        // compression, producer and leader epoch.
        assert!(c.data.ends_with(&whole));
        let headers: Vec<BatchHeader> = Batches::new(&c.data).map(|(_, h)| h).collect();
        assert_eq!(headers[1].compression(), 4);
        assert_eq!(
            (
                headers[0].base_offset,
                headers[0].records_count,
                headers[0].producer_id
            ),
            (2, 1, 7)
        );
        assert_eq!(headers[0].partition_leader_epoch, 3);
        // Compacting again changes nothing.
        let again = compact(
            &c.data,
            &latest,
            Rules {
                tombstone_horizon_ms: 0,
            },
            &none,
        )
        .unwrap();
        assert_eq!(again.data, c.data);
    }

    /// A pass indexes only the dirty segments: a record whose key the map
    /// does not hold stays, one the map holds a later offset of goes;
    /// `droppable` counts exactly what `compact` drops.
    #[test]
    fn a_map_of_later_segments_drops_only_what_they_supersede() {
        let clean = Bytes::from(batch(
            &[
                (0, Some("a"), Some("a1")),
                (1, Some("b"), Some("b1")),
                (2, Some("c"), Some("c1")),
            ],
            1_000,
            Compression::None,
        ));
        let dirty = Bytes::from(batch(
            &[(3, Some("a"), Some("a2")), (4, Some("d"), Some("d1"))],
            1_000,
            Compression::Lz4,
        ));
        let mut latest = KeyOffsets::new();
        index_keys(&dirty, &mut latest, &none).unwrap();
        assert_eq!(droppable(&clean, &latest, &none).unwrap(), 1);
        assert_eq!(droppable(&dirty, &latest, &none).unwrap(), 0);
        let rules = Rules {
            tombstone_horizon_ms: 0,
        };
        let c = compact(&clean, &latest, rules, &none).unwrap();
        assert_eq!(
            read(&c.data),
            vec![
                (1, Some("b".into()), Some("b1".into())),
                (2, Some("c".into()), Some("c1".into())),
            ]
        );
        assert_eq!((c.kept_records, c.dropped_records), (2, 1));
        // An empty map (a pass only for expired tombstones) keeps every
        // keyed record.
        let c = compact(&clean, &KeyOffsets::new(), rules, &none).unwrap();
        assert_eq!(c.data, clean, "nothing to drop: the batch copied whole");
    }

    #[test]
    fn tombstones_stay_until_their_horizon_and_keyless_or_aborted_records_go() {
        let mut data = batch(&[(0, Some("a"), Some("a1"))], 1_000, Compression::None);
        // The tombstone of "a" in a batch of time 2_001.
        data.extend(batch(&[(1, Some("a"), None)], 2_000, Compression::None));
        // A keyless record (a topic made compact after it was written).
        data.extend(batch(&[(2, None, Some("x"))], 2_000, Compression::None));
        // An aborted transaction's batch (producer 7's batch at 3).
        let aborted_at = 3;
        data.extend(batch(
            &[(3, Some("b"), Some("b-aborted"))],
            2_000,
            Compression::None,
        ));
        let aborted = |h: &BatchHeader| h.base_offset == aborted_at;
        let data = Bytes::from(data);
        let mut latest = KeyOffsets::new();
        index_keys(&data, &mut latest, &aborted).unwrap();
        assert!(
            !latest.contains_key(&key_hash(b"b")),
            "aborted keys are not indexed"
        );
        let before = compact(
            &data,
            &latest,
            Rules {
                tombstone_horizon_ms: 2_001,
            },
            &aborted,
        )
        .unwrap();
        assert_eq!(
            read(&before.data),
            vec![(1, Some("a".into()), None)],
            "the tombstone stays"
        );
        assert_eq!(before.tombstones_until_ms, 2_001);
        let after = compact(
            &data,
            &latest,
            Rules {
                tombstone_horizon_ms: 2_002,
            },
            &aborted,
        )
        .unwrap();
        assert!(
            after.data.is_empty(),
            "past its horizon the tombstone goes too"
        );
        assert_eq!(after.tombstones_until_ms, -1);
        assert_eq!((after.kept_records, after.dropped_records), (0, 4));
    }

    #[test]
    fn control_batches_stay_and_garbage_is_refused() {
        let marker = floe_protocol::control::marker_batch(
            &floe_protocol::control::Marker {
                producer_id: 7,
                producer_epoch: 1,
                kind: floe_protocol::control::MarkerKind::Commit,
                coordinator_epoch: 1,
            },
            1_000,
        );
        let latest = KeyOffsets::new();
        let c = compact(
            &marker,
            &latest,
            Rules {
                tombstone_horizon_ms: 0,
            },
            &none,
        )
        .unwrap();
        assert_eq!(c.data, marker);
        let mut cut = batch(&[(0, Some("a"), Some("a1"))], 1_000, Compression::None);
        cut.truncate(cut.len() - 3);
        assert!(compact(
            &Bytes::from(cut),
            &latest,
            Rules {
                tombstone_horizon_ms: 0
            },
            &none
        )
        .is_err());
    }
}
