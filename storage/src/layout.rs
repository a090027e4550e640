//! Object keys of partition data, derived here and nowhere else.
//!
//! `{topic_id}/{partition}/{segment_base:020}-{segment_epoch}/{chunk_base:020}.chunk`
//! holds one flush of an open segment (or the fence at that key);
//! `{topic_id}/{partition}/{segment_base:020}-{segment_epoch}.{sealer_epoch}.seg`
//! is the consolidated segment. Keys are predictable from offsets alone: the
//! next chunk of a segment lives at the segment's next offset.

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
}
