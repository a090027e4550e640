//! Which shared WAL objects may be deleted (issue 24; docs/design.md,
//! "Shared WAL objects", garbage collection): per broker, the low
//! watermark is the least position any partition's checkpoint still names
//! in that broker's streams — a chunk of an open segment not yet
//! consolidated, or the position its owner's stream stood at when the
//! checkpoint was saved (every chunk written after lies past it). An
//! object before its broker's watermark holds nothing anyone will read;
//! it is deleted once older than the grace period, which covers a writer
//! whose first checkpoint was saved after the checkpoints were read.
//!
//! Pure decisions over what was read; not yet run by the controller (the
//! writer does not write WAL objects yet).

use std::collections::BTreeMap;

use floe_meta::schema::CheckpointRecord;
use floe_storage::wal::WalId;

/// (stream, seq): positions compare in stream order.
pub type Position = (i64, i64);

/// Per broker, the least position the checkpoints name in its streams.
pub fn low_watermarks<'a>(
    checkpoints: impl IntoIterator<Item = &'a CheckpointRecord>,
) -> BTreeMap<i32, Position> {
    let mut out: BTreeMap<i32, Position> = BTreeMap::new();
    let mut note = |broker: i32, at: Position| {
        out.entry(broker)
            .and_modify(|p| *p = (*p).min(at))
            .or_insert(at);
    };
    for c in checkpoints {
        if let Some(w) = &c.wal_start {
            note(w.broker_id, (w.stream, w.seq));
        }
        for s in &c.open_segments {
            for chunk in &s.chunks {
                if let Some(w) = &chunk.wal {
                    note(w.broker_id, (w.stream, w.seq));
                }
            }
        }
    }
    out
}

/// A WAL object as a listing shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub id: WalId,
    pub last_modified_ms: i64,
}

/// The objects that may be deleted: before their broker's watermark (or of
/// a broker no checkpoint names at all), and last modified more than
/// `grace_ms` before `read_ms`, when the checkpoints were read.
pub fn deletable(
    listed: &[Listed],
    watermarks: &BTreeMap<i32, Position>,
    read_ms: i64,
    grace_ms: i64,
) -> Vec<WalId> {
    listed
        .iter()
        .filter(|o| o.last_modified_ms < read_ms.saturating_sub(grace_ms))
        .filter(|o| match watermarks.get(&o.id.broker) {
            Some(w) => (o.id.stream, o.id.seq) < *w,
            None => true,
        })
        .map(|o| o.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_meta::schema::{ChunkRecord, OpenSegmentRecord, WalPositionRecord, WalRefRecord};

    fn chunk_at(broker: i32, stream: i64, seq: i64) -> ChunkRecord {
        ChunkRecord {
            wal: Some(WalRefRecord {
                broker_id: broker,
                stream,
                seq,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn checkpoint(start: Option<(i32, i64, i64)>, chunks: Vec<ChunkRecord>) -> CheckpointRecord {
        CheckpointRecord {
            wal_start: start.map(|(broker_id, stream, seq)| WalPositionRecord {
                broker_id,
                stream,
                seq,
            }),
            open_segments: vec![OpenSegmentRecord {
                chunks,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn obj(broker: i32, stream: i64, seq: i64, last_modified_ms: i64) -> Listed {
        Listed {
            id: WalId {
                broker,
                stream,
                seq,
            },
            last_modified_ms,
        }
    }

    /// A partition moved from broker 1 to broker 2 still names broker 1's
    /// chunks (stream 3, seqs 7 and 9) until its segment is consolidated;
    /// broker 2's partitions name their own. Only what lies before each
    /// broker's least named position, and is past the grace, goes; a
    /// broker no checkpoint names loses everything past the grace.
    #[test]
    fn only_objects_before_every_named_position_and_past_the_grace_go() {
        let moved = checkpoint(Some((2, 0, 4)), vec![chunk_at(1, 3, 9), chunk_at(1, 3, 7)]);
        let local = checkpoint(Some((2, 0, 5)), vec![chunk_at(2, 0, 5)]);
        let idle = checkpoint(Some((1, 4, 0)), vec![]);
        let marks = low_watermarks([&moved, &local, &idle]);
        assert_eq!(marks[&1], (3, 7));
        assert_eq!(marks[&2], (0, 4));

        let (read, grace) = (100_000, 10_000);
        let old = 50_000;
        let listed = [
            obj(1, 2, 40, old),   // an earlier stream: gone
            obj(1, 3, 6, old),    // before the moved partition's chunk: gone
            obj(1, 3, 7, old),    // named: kept
            obj(1, 3, 8, old),    // after a named one: kept
            obj(1, 4, 0, old),    // the idle partition's start: kept
            obj(2, 0, 3, old),    // before broker 2's start: gone
            obj(2, 0, 3, 95_000), // ... but too young: kept
            obj(2, 0, 4, old),
            obj(3, 0, 0, old),    // a broker no checkpoint names: gone
            obj(3, 0, 1, 99_999), // ... unless young
        ];
        let gone = deletable(&listed, &marks, read, grace);
        let ids: Vec<(i32, i64, i64)> = gone.iter().map(|i| (i.broker, i.stream, i.seq)).collect();
        assert_eq!(ids, [(1, 2, 40), (1, 3, 6), (2, 0, 3), (3, 0, 0)]);
    }

    /// Positions compare in stream order: a later stream's first object is
    /// past every object of an earlier stream, whatever their seqs.
    #[test]
    fn a_new_stream_is_past_every_object_of_the_old_one() {
        let c = checkpoint(Some((1, 5, 0)), vec![]);
        let marks = low_watermarks([&c]);
        let gone = deletable(&[obj(1, 4, 1_000_000, 0), obj(1, 5, 0, 0)], &marks, 100, 10);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].stream, 4);
    }
}
