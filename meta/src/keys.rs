//! Every key Floe writes in the metadata store, built and parsed here and
//! nowhere else.

use bytes::Bytes;
use floe_common::{PartitionId, Uuid};

pub const ROOT: &str = "/floe/";

pub fn cluster() -> Bytes {
    Bytes::from_static(b"/floe/cluster")
}

pub fn topics_prefix() -> Bytes {
    Bytes::from_static(b"/floe/topics/")
}

pub fn topic(name: &str) -> Bytes {
    Bytes::from(format!("/floe/topics/{name}"))
}

/// Everything kept for one topic's partitions.
pub fn topic_partitions_prefix(topic_id: Uuid) -> Bytes {
    Bytes::from(format!("/floe/partitions/{}/", topic_id.simple()))
}

fn partition_prefix(p: PartitionId) -> String {
    format!("/floe/partitions/{}/{}/", p.topic_id.simple(), p.partition)
}

pub fn assignment(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "assignment")
}

pub fn owner(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "owner")
}

pub fn checkpoint(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "checkpoint")
}

pub fn segments_prefix(p: PartitionId) -> Bytes {
    Bytes::from(partition_prefix(p) + "segments/")
}

pub fn segment(p: PartitionId, base_offset: i64) -> Bytes {
    Bytes::from(format!("{}segments/{base_offset:020}", partition_prefix(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_keys_sort_by_offset() {
        let p = PartitionId::new(Uuid::from_u128(7), 3);
        let a = segment(p, 9);
        let b = segment(p, 10);
        assert!(a < b);
        assert!(a.starts_with(&segments_prefix(p)));
        assert!(segments_prefix(p).starts_with(&topic_partitions_prefix(p.topic_id)));
        assert_ne!(owner(p), assignment(p));
    }
}
