//! The records of `__transaction_state`: one per transactional id, keyed
//! by the id (key version 0) with the id's state as its value (a protobuf
//! message; a null value deletes the id, after
//! `transactional.id.expiration.ms`). A new coordinator replays its
//! partition with [`replay`] and carries on from the last record of each
//! id; the partition is compacted by keeping those.

use std::collections::{BTreeSet, HashMap};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use super::metadata::{TxnMetadata, TxnState};

/// Key version of a transaction record.
const KEY_VERSION: i16 = 0;

#[derive(Clone, PartialEq, Message)]
struct TxnValue {
    #[prost(int64, tag = "1")]
    producer_id: i64,
    #[prost(int32, tag = "2")]
    producer_epoch: i32,
    #[prost(int32, tag = "3")]
    timeout_ms: i32,
    /// 0 Empty, 1 Ongoing, 2 PrepareCommit, 3 PrepareAbort, 4
    /// CompleteCommit, 5 CompleteAbort.
    #[prost(uint32, tag = "4")]
    state: u32,
    #[prost(message, repeated, tag = "5")]
    partitions: Vec<TxnPartitionValue>,
    #[prost(int64, tag = "6")]
    started_ms: i64,
    #[prost(int64, tag = "7")]
    updated_ms: i64,
    #[prost(int32, tag = "8")]
    last_epoch: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TxnPartitionValue {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(int32, tag = "2")]
    partition: i32,
}

fn state_code(s: TxnState) -> u32 {
    match s {
        TxnState::Empty => 0,
        TxnState::Ongoing => 1,
        TxnState::PrepareCommit => 2,
        TxnState::PrepareAbort => 3,
        TxnState::CompleteCommit => 4,
        TxnState::CompleteAbort => 5,
    }
}

fn state_of(code: u32) -> Option<TxnState> {
    Some(match code {
        0 => TxnState::Empty,
        1 => TxnState::Ongoing,
        2 => TxnState::PrepareCommit,
        3 => TxnState::PrepareAbort,
        4 => TxnState::CompleteCommit,
        5 => TxnState::CompleteAbort,
        _ => return None,
    })
}

/// The record key of a transactional id.
pub fn key(transactional_id: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(2 + transactional_id.len());
    k.put_i16(KEY_VERSION);
    k.put_slice(transactional_id.as_bytes());
    k.freeze()
}

/// The record of `m`: (key, value).
pub fn record(m: &TxnMetadata) -> (Bytes, Option<Bytes>) {
    let v = TxnValue {
        producer_id: m.producer_id,
        producer_epoch: m.producer_epoch as i32,
        timeout_ms: m.timeout_ms,
        state: state_code(m.state),
        partitions: m
            .partitions
            .iter()
            .map(|(t, p)| TxnPartitionValue {
                topic: t.clone(),
                partition: *p,
            })
            .collect(),
        started_ms: m.started_ms,
        updated_ms: m.updated_ms,
        last_epoch: m.last_epoch as i32,
    };
    (key(&m.transactional_id), Some(v.encode_to_vec().into()))
}

/// The tombstone that deletes `transactional_id`.
pub fn tombstone(transactional_id: &str) -> (Bytes, Option<Bytes>) {
    (key(transactional_id), None)
}

/// What a record says: `Some((id, Some(state)))` for a state,
/// `Some((id, None))` for a tombstone, `None` for a record that is not a
/// transaction record (a control record, another version).
pub fn parse(key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<TxnMetadata>)> {
    let mut k = key;
    if k.len() < 2 || k.get_i16() != KEY_VERSION {
        return None;
    }
    let id = String::from_utf8(k.to_vec()).ok()?;
    let Some(value) = value else {
        return Some((id, None));
    };
    let v = TxnValue::decode(value).ok()?;
    let m = TxnMetadata {
        transactional_id: id.clone(),
        producer_id: v.producer_id,
        producer_epoch: i16::try_from(v.producer_epoch).ok()?,
        last_epoch: i16::try_from(v.last_epoch).ok()?,
        timeout_ms: v.timeout_ms,
        state: state_of(v.state)?,
        partitions: v
            .partitions
            .into_iter()
            .map(|p| (p.topic, p.partition))
            .collect::<BTreeSet<_>>(),
        started_ms: v.started_ms,
        updated_ms: v.updated_ms,
    };
    Some((id, Some(m)))
}

/// The ids' states after `records` (key, value) in log order: the last
/// record of each id wins, a tombstone removes it.
pub fn replay<'a>(
    records: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> HashMap<String, TxnMetadata> {
    let mut out = HashMap::new();
    for (k, v) in records {
        match parse(k, v) {
            Some((id, Some(m))) => {
                out.insert(id, m);
            }
            Some((id, None)) => {
                out.remove(&id);
            }
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_replay_keeps_the_last_of_each_id() {
        let mut a = TxnMetadata::new("app-a", 7, 60_000, 1);
        a.add_partitions(7, 0, &[("t".into(), 0), ("u".into(), 3)], 2)
            .unwrap();
        let b = TxnMetadata::new("app-b", 8, 30_000, 3);
        let r1 = record(&a);
        let r2 = record(&b);
        assert_eq!(
            parse(&r1.0, r1.1.as_deref()),
            Some(("app-a".to_string(), Some(a.clone())))
        );
        a.end(7, 0, true, true, 4).unwrap();
        let r3 = record(&a);
        let t = tombstone("app-b");
        // Another key version (e.g. a control record's key) is skipped.
        let other = (
            Bytes::from_static(&[0, 9, b'x']),
            Some(Bytes::from_static(b"?")),
        );
        let log = [&r1, &r2, &r3, &t, &other];
        let states = replay(log.iter().map(|(k, v)| (&k[..], v.as_deref())));
        assert_eq!(states.len(), 1);
        let got = &states["app-a"];
        assert_eq!(
            (got.state, got.producer_epoch),
            (TxnState::PrepareCommit, 1)
        );
        assert_eq!(got.partitions.len(), 2);
        // Garbage never panics.
        assert_eq!(parse(&[0], None), None);
        assert_eq!(parse(&key("x"), Some(&[0xff, 0xff, 0xff])), None);
    }
}
