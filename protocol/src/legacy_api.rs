//! Request and response versions older than the codec's (Kafka 4 removed
//! them, KIP-896; clients from before Kafka 0.11 still send them): Produce
//! v0–2, Fetch v0–3, ListOffsets v0, OffsetCommit v0–1, OffsetFetch v0,
//! DescribeConfigs v0. Each is read into the current request struct, so the
//! handlers serve one shape, and the answer is written back in the old
//! layout. None of these versions is flexible (no tagged fields).

use std::any::Any;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// The oldest version of `api` read and written here, below the codec's.
pub fn oldest(api: ApiKey) -> Option<i16> {
    match api {
        ApiKey::Produce
        | ApiKey::Fetch
        | ApiKey::ListOffsets
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::DescribeConfigs => Some(0),
        _ => None,
    }
}

/// This version of `api` is older than the codec's and handled here.
pub fn is_legacy(api: ApiKey, version: i16) -> bool {
    oldest(api).is_some_and(|lo| version >= lo && version < api.valid_versions().min)
}

type R<T> = Result<T, String>;

fn need(b: &Bytes, n: usize, what: &str) -> R<()> {
    if b.remaining() < n {
        Err(format!("request truncated in {what}"))
    } else {
        Ok(())
    }
}

fn i8_(b: &mut Bytes, what: &str) -> R<i8> {
    need(b, 1, what)?;
    Ok(b.get_i8())
}
fn i16_(b: &mut Bytes, what: &str) -> R<i16> {
    need(b, 2, what)?;
    Ok(b.get_i16())
}
fn i32_(b: &mut Bytes, what: &str) -> R<i32> {
    need(b, 4, what)?;
    Ok(b.get_i32())
}
fn i64_(b: &mut Bytes, what: &str) -> R<i64> {
    need(b, 8, what)?;
    Ok(b.get_i64())
}

fn nullable_string(b: &mut Bytes, what: &str) -> R<Option<StrBytes>> {
    let len = i16_(b, what)?;
    if len < 0 {
        return Ok(None);
    }
    need(b, len as usize, what)?;
    let raw = b.split_to(len as usize);
    StrBytes::from_utf8(raw)
        .map(Some)
        .map_err(|_| format!("{what} is not UTF-8"))
}

fn string(b: &mut Bytes, what: &str) -> R<StrBytes> {
    nullable_string(b, what)?.ok_or_else(|| format!("{what} is null"))
}

fn nullable_bytes(b: &mut Bytes, what: &str) -> R<Option<Bytes>> {
    let len = i32_(b, what)?;
    if len < 0 {
        return Ok(None);
    }
    need(b, len as usize, what)?;
    Ok(Some(b.split_to(len as usize)))
}

/// An array's length (-1: null); bounded by the bytes left, so a bad count
/// cannot make us allocate.
fn array_len(b: &mut Bytes, what: &str, min_item: usize) -> R<Option<usize>> {
    let n = i32_(b, what)?;
    if n < 0 {
        return Ok(None);
    }
    let n = n as usize;
    if n.saturating_mul(min_item) > b.remaining() {
        return Err(format!("{what}: {n} entries cannot fit the request"));
    }
    Ok(Some(n))
}

fn array<T>(
    b: &mut Bytes,
    what: &str,
    min_item: usize,
    mut item: impl FnMut(&mut Bytes) -> R<T>,
) -> R<Vec<T>> {
    let n = array_len(b, what, min_item)?.unwrap_or(0);
    (0..n).map(|_| item(b)).collect()
}

/// Read a request body of a legacy version into the current struct.
pub fn decode_request(api: ApiKey, version: i16, b: &mut Bytes) -> R<RequestKind> {
    let req = match api {
        ApiKey::Produce => {
            let acks = i16_(b, "acks")?;
            let timeout_ms = i32_(b, "timeout")?;
            let topic_data = array(b, "topics", 6, |b| {
                let name = string(b, "topic name")?;
                let partitions = array(b, "partitions", 8, |b| {
                    let index = i32_(b, "partition")?;
                    let records = nullable_bytes(b, "message set")?;
                    Ok(PartitionProduceData::default()
                        .with_index(index)
                        .with_records(records))
                })?;
                Ok(TopicProduceData::default()
                    .with_name(TopicName(name))
                    .with_partition_data(partitions))
            })?;
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(acks)
                    .with_timeout_ms(timeout_ms)
                    .with_topic_data(topic_data),
            )
        }
        ApiKey::Fetch => {
            let replica_id = i32_(b, "replica id")?;
            let max_wait_ms = i32_(b, "max wait")?;
            let min_bytes = i32_(b, "min bytes")?;
            let max_bytes = if version >= 3 {
                i32_(b, "max bytes")?
            } else {
                i32::MAX
            };
            let topics = array(b, "topics", 6, |b| {
                let topic = string(b, "topic name")?;
                let partitions = array(b, "partitions", 16, |b| {
                    Ok(FetchPartition::default()
                        .with_partition(i32_(b, "partition")?)
                        .with_fetch_offset(i64_(b, "fetch offset")?)
                        .with_partition_max_bytes(i32_(b, "partition max bytes")?)
                        .with_current_leader_epoch(-1)
                        .with_log_start_offset(-1))
                })?;
                Ok(FetchTopic::default()
                    .with_topic(TopicName(topic))
                    .with_partitions(partitions))
            })?;
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_replica_id(BrokerId(replica_id))
                    .with_max_wait_ms(max_wait_ms)
                    .with_min_bytes(min_bytes)
                    .with_max_bytes(max_bytes)
                    .with_session_epoch(-1)
                    .with_topics(topics),
            )
        }
        ApiKey::ListOffsets => {
            let replica_id = i32_(b, "replica id")?;
            let topics = array(b, "topics", 6, |b| {
                let name = string(b, "topic name")?;
                let partitions = array(b, "partitions", 16, |b| {
                    let p = ListOffsetsPartition::default()
                        .with_partition_index(i32_(b, "partition")?)
                        .with_timestamp(i64_(b, "timestamp")?)
                        .with_current_leader_epoch(-1);
                    // max_num_offsets: one offset is answered.
                    i32_(b, "max offsets")?;
                    Ok(p)
                })?;
                Ok(ListOffsetsTopic::default()
                    .with_name(TopicName(name))
                    .with_partitions(partitions))
            })?;
            RequestKind::ListOffsets(
                ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(replica_id))
                    .with_topics(topics),
            )
        }
        ApiKey::OffsetCommit => {
            let group_id = string(b, "group id")?;
            let (generation, member_id) = if version >= 1 {
                (i32_(b, "generation")?, string(b, "member id")?)
            } else {
                (-1, StrBytes::default())
            };
            let topics = array(b, "topics", 6, |b| {
                let name = string(b, "topic name")?;
                let partitions = array(b, "partitions", 14, |b| {
                    let index = i32_(b, "partition")?;
                    let offset = i64_(b, "offset")?;
                    if version >= 1 {
                        // The commit timestamp: retention starts at the
                        // commit, as for later versions.
                        i64_(b, "commit timestamp")?;
                    }
                    let metadata = nullable_string(b, "metadata")?;
                    Ok(OffsetCommitRequestPartition::default()
                        .with_partition_index(index)
                        .with_committed_offset(offset)
                        .with_committed_leader_epoch(-1)
                        .with_committed_metadata(metadata))
                })?;
                Ok(OffsetCommitRequestTopic::default()
                    .with_name(TopicName(name))
                    .with_partitions(partitions))
            })?;
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(group_id))
                    .with_generation_id_or_member_epoch(generation)
                    .with_member_id(member_id)
                    .with_retention_time_ms(-1)
                    .with_topics(topics),
            )
        }
        ApiKey::OffsetFetch => {
            let group_id = string(b, "group id")?;
            let topics = array(b, "topics", 6, |b| {
                let name = string(b, "topic name")?;
                let partitions = array(b, "partitions", 4, |b| i32_(b, "partition"))?;
                Ok(OffsetFetchRequestTopic::default()
                    .with_name(TopicName(name))
                    .with_partition_indexes(partitions))
            })?;
            RequestKind::OffsetFetch(
                OffsetFetchRequest::default()
                    .with_group_id(GroupId(group_id))
                    .with_topics(Some(topics)),
            )
        }
        ApiKey::DescribeConfigs => {
            let resources = array(b, "resources", 7, |b| {
                let resource_type = i8_(b, "resource type")?;
                let resource_name = string(b, "resource name")?;
                let keys = match array_len(b, "config names", 2)? {
                    None => None,
                    Some(n) => Some(
                        (0..n)
                            .map(|_| string(b, "config name"))
                            .collect::<R<Vec<_>>>()?,
                    ),
                };
                Ok(DescribeConfigsResource::default()
                    .with_resource_type(resource_type)
                    .with_resource_name(resource_name)
                    .with_configuration_keys(keys))
            })?;
            RequestKind::DescribeConfigs(
                DescribeConfigsRequest::default().with_resources(resources),
            )
        }
        _ => return Err(format!("{api:?} v{version} is not handled")),
    };
    if b.has_remaining() {
        return Err(format!(
            "{} bytes after the {api:?} v{version} request",
            b.remaining()
        ));
    }
    Ok(req)
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_i16(s.len() as i16);
    out.put_slice(s.as_bytes());
}

fn put_nullable_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        None => out.put_i16(-1),
        Some(s) => put_str(out, s),
    }
}

fn put_len(out: &mut BytesMut, n: usize) {
    out.put_i32(n as i32);
}

/// Kafka's DEFAULT_CONFIG source: what DescribeConfigs v0 calls is_default.
const DEFAULT_CONFIG: i8 = 5;

/// Write `body`, a response to a legacy version, in that version's layout.
/// `None`: not a response this module writes.
pub fn encode_response(body: &dyn Any, version: i16, out: &mut BytesMut) -> Option<()> {
    if let Some(r) = body.downcast_ref::<ProduceResponse>() {
        put_len(out, r.responses.len());
        for t in &r.responses {
            put_str(out, &t.name.0);
            put_len(out, t.partition_responses.len());
            for p in &t.partition_responses {
                out.put_i32(p.index);
                out.put_i16(p.error_code);
                out.put_i64(p.base_offset);
                if version >= 2 {
                    out.put_i64(p.log_append_time_ms);
                }
            }
        }
        if version >= 1 {
            out.put_i32(r.throttle_time_ms);
        }
    } else if let Some(r) = body.downcast_ref::<FetchResponse>() {
        if version >= 1 {
            out.put_i32(r.throttle_time_ms);
        }
        put_len(out, r.responses.len());
        for t in &r.responses {
            put_str(out, &t.topic.0);
            put_len(out, t.partitions.len());
            for p in &t.partitions {
                out.put_i32(p.partition_index);
                out.put_i16(p.error_code);
                out.put_i64(p.high_watermark);
                let records = p.records.as_deref().unwrap_or_default();
                put_len(out, records.len());
                out.put_slice(records);
            }
        }
    } else if let Some(r) = body.downcast_ref::<ListOffsetsResponse>() {
        put_len(out, r.topics.len());
        for t in &r.topics {
            put_str(out, &t.name.0);
            put_len(out, t.partitions.len());
            for p in &t.partitions {
                out.put_i32(p.partition_index);
                out.put_i16(p.error_code);
                if p.error_code == 0 && p.offset >= 0 {
                    put_len(out, 1);
                    out.put_i64(p.offset);
                } else {
                    put_len(out, 0);
                }
            }
        }
    } else if let Some(r) = body.downcast_ref::<OffsetCommitResponse>() {
        put_len(out, r.topics.len());
        for t in &r.topics {
            put_str(out, &t.name.0);
            put_len(out, t.partitions.len());
            for p in &t.partitions {
                out.put_i32(p.partition_index);
                out.put_i16(p.error_code);
            }
        }
    } else if let Some(r) = body.downcast_ref::<OffsetFetchResponse>() {
        put_len(out, r.topics.len());
        for t in &r.topics {
            put_str(out, &t.name.0);
            put_len(out, t.partitions.len());
            for p in &t.partitions {
                out.put_i32(p.partition_index);
                out.put_i64(p.committed_offset);
                put_nullable_str(out, p.metadata.as_deref());
                // v0 has no group-level error: a group error is every
                // partition's.
                out.put_i16(if p.error_code != 0 {
                    p.error_code
                } else {
                    r.error_code
                });
            }
        }
    } else if let Some(r) = body.downcast_ref::<DescribeConfigsResponse>() {
        out.put_i32(r.throttle_time_ms);
        put_len(out, r.results.len());
        for res in &r.results {
            out.put_i16(res.error_code);
            put_nullable_str(out, res.error_message.as_deref());
            out.put_i8(res.resource_type);
            put_str(out, &res.resource_name);
            put_len(out, res.configs.len());
            for c in &res.configs {
                put_str(out, &c.name);
                put_nullable_str(out, c.value.as_deref());
                out.put_u8(c.read_only as u8);
                out.put_u8((c.config_source == DEFAULT_CONFIG) as u8);
                out.put_u8(c.is_sensitive as u8);
            }
        }
    } else {
        return None;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce_v2(topic: &str, partition: i32, set: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(-1);
        b.put_i32(5000);
        b.put_i32(1);
        put_str(&mut b, topic);
        b.put_i32(1);
        b.put_i32(partition);
        b.put_i32(set.len() as i32);
        b.put_slice(set);
        b.freeze()
    }

    #[test]
    fn legacy_versions_are_those_below_the_codec() {
        assert!(is_legacy(ApiKey::Produce, 2));
        assert!(!is_legacy(ApiKey::Produce, 3));
        assert!(is_legacy(ApiKey::Fetch, 3));
        assert!(is_legacy(ApiKey::ListOffsets, 0));
        assert!(is_legacy(ApiKey::OffsetCommit, 1));
        assert!(is_legacy(ApiKey::OffsetFetch, 0));
        assert!(is_legacy(ApiKey::DescribeConfigs, 0));
        assert!(!is_legacy(ApiKey::Metadata, 0), "the codec reads it");
        assert!(!is_legacy(ApiKey::Produce, -1));
    }

    #[test]
    fn a_produce_v2_request_reads_into_the_current_struct() {
        let RequestKind::Produce(r) =
            decode_request(ApiKey::Produce, 2, &mut produce_v2("t", 3, b"abc")).unwrap()
        else {
            panic!("not a produce request")
        };
        assert_eq!(r.acks, -1);
        assert_eq!(r.timeout_ms, 5000);
        assert_eq!(r.topic_data[0].name.0.as_str(), "t");
        let p = &r.topic_data[0].partition_data[0];
        assert_eq!(p.index, 3);
        assert_eq!(p.records.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn truncated_or_oversized_requests_are_refused() {
        let full = produce_v2("t", 0, b"abc");
        for cut in 0..full.len() {
            assert!(
                decode_request(ApiKey::Produce, 2, &mut full.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
        let mut extra = BytesMut::from(&full[..]);
        extra.put_u8(0);
        assert!(decode_request(ApiKey::Produce, 2, &mut extra.freeze()).is_err());
        let mut huge = BytesMut::new();
        huge.put_i16(1);
        huge.put_i32(1);
        huge.put_i32(i32::MAX);
        let e = decode_request(ApiKey::Produce, 0, &mut huge.freeze()).unwrap_err();
        assert!(e.contains("cannot fit"), "{e}");
    }

    #[test]
    fn responses_are_written_in_the_old_layout() {
        use kafka_protocol::messages::produce_response::{
            PartitionProduceResponse, TopicProduceResponse,
        };
        let r = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_responses(vec![PartitionProduceResponse::default()
                .with_index(1)
                .with_base_offset(42)
                .with_log_append_time_ms(-1)])]);
        let mut v0 = BytesMut::new();
        encode_response(&r, 0, &mut v0).unwrap();
        // topics(1) name(1 + "t") partitions(1) index error offset
        let expect: &[u8] = &[
            0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 42,
        ];
        assert_eq!(&v0[..], expect);
        let mut v2 = BytesMut::new();
        encode_response(&r, 2, &mut v2).unwrap();
        assert_eq!(v2.len(), expect.len() + 8 + 4, "append time, throttle");

        use kafka_protocol::messages::list_offsets_response::{
            ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
        };
        let r =
            ListOffsetsResponse::default().with_topics(vec![ListOffsetsTopicResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![ListOffsetsPartitionResponse::default()
                    .with_partition_index(0)
                    .with_offset(7)])]);
        let mut out = BytesMut::new();
        encode_response(&r, 0, &mut out).unwrap();
        assert_eq!(
            &out[out.len() - 12..],
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]
        );
        assert!(encode_response(&MetadataResponse::default(), 0, &mut out).is_none());
    }
}
