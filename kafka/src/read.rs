//! Read answers written once for both tiers, over a partition's log (a
//! broker's own partitions and a proxy's followed ones are both a
//! `PartitionLog`): Fetch's down-conversion for old clients, one
//! partition's ListOffsets, OffsetForLeaderEpoch's end of an epoch.

use bytes::Bytes;
use floe_protocol::kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use floe_protocol::ResponseError;
use floe_storage::log::SegmentView;

/// Fetch v0–3 cannot carry v2 batches: the records as a message set of
/// format v0 (Fetch v0–1) or v1 (v2–3).
pub fn legacy_fetch(records: Bytes, version: i16) -> Bytes {
    if version >= 4 || records.is_empty() {
        return records;
    }
    let magic = if version < 2 { 0 } else { 1 };
    floe_protocol::legacy::downconvert(&records, magic).unwrap_or_else(|e| {
        tracing::error!(error = %e, "a stored batch could not be converted for an old fetch");
        Bytes::new()
    })
}

/// ListOffsets for one partition of `log`: the latest (-1), earliest (-2,
/// -4), max-timestamp (-3) or first-at-or-after-timestamp offset, into `pr`.
pub async fn list_offset(
    log: &floe_storage::log::PartitionLog,
    timestamp: i64,
    pr: &mut ListOffsetsPartitionResponse,
) {
    let (start, hw, _) = log.offsets();
    let answer = match timestamp {
        -1 => Ok(Some((hw, -1))),
        -2 | -4 => Ok(Some((start, -1))),
        -3 => log.max_timestamp().await,
        ts if ts < 0 => {
            pr.error_code = ResponseError::InvalidRequest.code();
            Ok(None)
        }
        ts => log.offset_for_timestamp(ts).await,
    };
    match answer {
        Ok(Some((o, ts))) => {
            pr.offset = o;
            pr.timestamp = ts;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(partition = %log.id, error = %e, "timestamp lookup failed");
            pr.error_code = ResponseError::KafkaStorageError.code();
        }
    }
}

/// OffsetForLeaderEpoch for one partition: the largest epoch at or below
/// `leader_epoch` present in the log and the offset where it ended; `None`
/// for a future epoch (undefined, as Kafka answers).
pub fn epoch_end(state: &floe_storage::log::LogState, leader_epoch: i32) -> Option<(i32, i64)> {
    // (epoch, first offset) of each epoch present in the log.
    let mut epochs: Vec<(i32, i64)> = Vec::new();
    for seg in state.segments.values() {
        let e = match seg {
            SegmentView::Open { epoch, .. } => *epoch,
            SegmentView::Sealed(s) => s.epoch,
        };
        if epochs.last().is_none_or(|(le, _)| *le != e) {
            epochs.push((e, seg.base_offset()));
        }
    }
    if leader_epoch > state.leader_epoch {
        None
    } else if let Some(i) = epochs.iter().rposition(|(e, _)| *e <= leader_epoch) {
        Some((
            epochs[i].0,
            epochs.get(i + 1).map_or(state.high_watermark, |(_, o)| *o),
        ))
    } else {
        Some((leader_epoch, state.log_start_offset))
    }
}
