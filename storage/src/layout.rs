//! Object keys of partition data, derived here and nowhere else.
//!
//! `{topic_id}/{partition}/{segment_base:020}-{segment_epoch}/{chunk_base:020}.chunk`
//! holds one flush of an open segment (or the fence at that key);
//! `{topic_id}/{partition}/{segment_base:020}-{segment_epoch}.{sealer_epoch}.seg`
//! is the consolidated segment. Keys are predictable from offsets alone: the
//! next chunk of a segment lives at the segment's next offset.
//! `wal/{broker}/{stream:020}/{seq:020}.wal` is object `seq` of a broker's
//! WAL stream (`crate::wal`): the next key of a stream is predictable too.

use floe_common::{Epoch, Offset, PartitionId};
use object_store::path::Path;

pub fn partition_prefix(p: PartitionId) -> Path {
    Path::from(format!("{}/{}", p.topic_id.simple(), p.partition))
}

pub fn chunk_prefix(p: PartitionId, segment_base: Offset, segment_epoch: Epoch) -> Path {
    Path::from(format!(
        "{}/{}/{segment_base:020}-{segment_epoch}",
        p.topic_id.simple(),
        p.partition
    ))
}

pub fn chunk(
    p: PartitionId,
    segment_base: Offset,
    segment_epoch: Epoch,
    chunk_base: Offset,
) -> Path {
    Path::from(format!(
        "{}/{}/{segment_base:020}-{segment_epoch}/{chunk_base:020}.chunk",
        p.topic_id.simple(),
        p.partition
    ))
}

/// The base offset encoded in a chunk key, if `path` is one.
pub fn chunk_base(path: &Path) -> Option<Offset> {
    let name = path.filename()?;
    name.strip_suffix(".chunk")?.parse().ok()
}

pub fn segment(
    p: PartitionId,
    segment_base: Offset,
    segment_epoch: Epoch,
    sealer_epoch: Epoch,
) -> Path {
    compacted_segment(p, segment_base, segment_epoch, sealer_epoch, 0, 0)
}

/// A segment object rewritten by its `generation`th compaction, written
/// by the owner of epoch `compactor_epoch` (generation 0: the object its
/// seal wrote, [`segment`]). A compaction that merged segments is named
/// after the first.
pub fn compacted_segment(
    p: PartitionId,
    segment_base: Offset,
    segment_epoch: Epoch,
    sealer_epoch: Epoch,
    generation: u32,
    compactor_epoch: Epoch,
) -> Path {
    let suffix = if generation == 0 {
        String::new()
    } else {
        format!(".c{generation}.{compactor_epoch}")
    };
    Path::from(format!(
        "{}/{}/{segment_base:020}-{segment_epoch}.{sealer_epoch}{suffix}.seg",
        p.topic_id.simple(),
        p.partition
    ))
}

/// Object `id.seq` of a broker's WAL stream.
pub fn wal(id: crate::wal::WalId) -> Path {
    Path::from(format!(
        "wal/{}/{:020}/{:020}.wal",
        id.broker, id.stream, id.seq
    ))
}

/// Every object of one WAL stream.
pub fn wal_stream_prefix(broker: i32, stream: i64) -> Path {
    Path::from(format!("wal/{broker}/{stream:020}"))
}

/// The id a WAL object key names, if `path` is one.
pub fn wal_id(path: &Path) -> Option<crate::wal::WalId> {
    let mut parts = path.parts();
    if parts.next()?.as_ref() != "wal" {
        return None;
    }
    let broker = parts.next()?.as_ref().parse().ok()?;
    let stream = parts.next()?.as_ref().parse().ok()?;
    let seq = parts.next()?.as_ref().strip_suffix(".wal")?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(crate::wal::WalId {
        broker,
        stream,
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::Uuid;

    #[test]
    fn chunk_keys_round_trip_and_nest() {
        let p = PartitionId::new(Uuid::from_u128(42), 1);
        let k = chunk(p, 100, 3, 12345);
        assert_eq!(chunk_base(&k), Some(12345));
        assert!(k.prefix_matches(&chunk_prefix(p, 100, 3)));
        assert!(!k.prefix_matches(&chunk_prefix(p, 100, 4)));
        assert_eq!(chunk_base(&segment(p, 100, 3, 4)), None);
    }

    #[test]
    fn wal_keys_round_trip_sort_by_seq_and_nest() {
        use crate::wal::WalId;
        let id = |seq| WalId {
            broker: 3,
            stream: 17,
            seq,
        };
        let k = wal(id(9));
        assert_eq!(
            k.as_ref(),
            "wal/3/00000000000000000017/00000000000000000009.wal"
        );
        assert_eq!(wal_id(&k), Some(id(9)));
        assert!(
            wal(id(9)).as_ref() < wal(id(10)).as_ref(),
            "keys list in seq order"
        );
        assert!(k.prefix_matches(&wal_stream_prefix(3, 17)));
        assert!(!k.prefix_matches(&wal_stream_prefix(3, 18)));
        let p = PartitionId::new(Uuid::from_u128(42), 1);
        assert_eq!(wal_id(&chunk(p, 100, 3, 12345)), None);
        assert_eq!(wal_id(&Path::from("wal/3/17/9.wal/x")), None);
    }
}
