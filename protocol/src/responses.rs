//! What Kafka guarantees about response fields the schema lets be null:
//! responses are brought to the shape Kafka's own brokers send before they
//! are encoded, because clients parse to that shape, not to the schema
//! (librdkafka rejects a Fetch partition whose record set is null).

use bytes::Bytes;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, FetchResponse,
    MetadataRequest, MetadataResponse,
};

use crate::ResponseError;

/// The request cursor that asks for the page a response's `next_cursor`
/// names (the two messages have their own cursor types).
pub fn cursor_for_next_page(
    c: &Cursor,
) -> kafka_protocol::messages::describe_topic_partitions_request::Cursor {
    kafka_protocol::messages::describe_topic_partitions_request::Cursor::default()
        .with_topic_name(c.topic_name.clone())
        .with_partition_index(c.partition_index)
}

/// The Metadata request (v12) whose answer a DescribeTopicPartitions
/// request is cut from: the named topics, or every topic when none is
/// named; never creating one.
pub fn metadata_for_describe_topic_partitions(
    req: &DescribeTopicPartitionsRequest,
) -> MetadataRequest {
    let topics = (!req.topics.is_empty()).then(|| {
        req.topics
            .iter()
            .map(|t| MetadataRequestTopic::default().with_name(Some(t.name.clone())))
            .collect()
    });
    MetadataRequest::default()
        .with_topics(topics)
        .with_allow_auto_topic_creation(false)
}

/// DescribeTopicPartitions (KIP-966) from the Metadata answer to
/// [`metadata_for_describe_topic_partitions`]: topics in name order, each
/// topic's partitions in index order, starting at the request's cursor and
/// stopping after `response_partition_limit` partitions (at least one
/// topic's worth is never split below one partition), with `next_cursor`
/// naming where the next page starts (null on the last page), as Kafka's
/// brokers page it.
pub fn describe_topic_partitions(
    req: &DescribeTopicPartitionsRequest,
    meta: MetadataResponse,
) -> DescribeTopicPartitionsResponse {
    let limit = req.response_partition_limit.max(1) as usize;
    let mut topics = meta.topics;
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    topics.dedup_by(|a, b| a.name == b.name);
    let mut out = DescribeTopicPartitionsResponse::default();
    let mut emitted = 0usize;
    for t in topics {
        let Some(name) = t.name.clone() else {
            continue;
        };
        let mut first = 0;
        if let Some(c) = &req.cursor {
            match name.0.as_str().cmp(c.topic_name.0.as_str()) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Equal => first = c.partition_index.max(0),
                std::cmp::Ordering::Greater => {}
            }
        }
        if emitted >= limit {
            out.next_cursor = Some(
                Cursor::default()
                    .with_topic_name(name)
                    .with_partition_index(first),
            );
            return out;
        }
        let mut partitions = t.partitions;
        partitions.sort_by_key(|p| p.partition_index);
        let mut rt = DescribeTopicPartitionsResponseTopic::default()
            .with_error_code(t.error_code)
            .with_name(Some(name.clone()))
            .with_topic_id(t.topic_id)
            .with_is_internal(t.is_internal)
            .with_topic_authorized_operations(t.topic_authorized_operations);
        if t.error_code == ResponseError::UnknownTopicOrPartition.code() {
            out.topics.push(rt);
            continue;
        }
        for p in partitions
            .into_iter()
            .filter(|p| p.partition_index >= first)
        {
            if emitted >= limit {
                out.topics.push(rt);
                out.next_cursor = Some(
                    Cursor::default()
                        .with_topic_name(name)
                        .with_partition_index(p.partition_index),
                );
                return out;
            }
            rt.partitions.push(
                DescribeTopicPartitionsResponsePartition::default()
                    .with_error_code(p.error_code)
                    .with_partition_index(p.partition_index)
                    .with_leader_id(p.leader_id)
                    .with_leader_epoch(p.leader_epoch)
                    .with_replica_nodes(p.replica_nodes)
                    .with_isr_nodes(p.isr_nodes)
                    .with_eligible_leader_replicas(Some(Vec::new()))
                    .with_last_known_elr(Some(Vec::new()))
                    .with_offline_replicas(p.offline_replicas),
            );
            emitted += 1;
        }
        out.topics.push(rt);
    }
    out
}

/// Every partition of a Fetch answer carries a record set, empty when the
/// partition has an error or nothing to return: Kafka's brokers never send
/// a null one (their error answers carry `MemoryRecords.EMPTY`), and
/// librdkafka fails to parse the whole response on a null one ("invalid
/// MessageSetSize -1"), so a consumer would never see the partition's error
/// (e.g. OFFSET_OUT_OF_RANGE, and so never reset its position).
pub fn fetch_as_kafka_sends(resp: &mut FetchResponse) {
    for t in &mut resp.responses {
        for p in &mut t.partitions {
            if p.records.is_none() {
                p.records = Some(Bytes::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::supported;
    use crate::ResponseError;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{ApiKey, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn with_errors() -> FetchResponse {
        let mut t = FetchableTopicResponse::default();
        t.topic = TopicName(StrBytes::from_static_str("t"));
        for (i, code) in [
            ResponseError::OffsetOutOfRange,
            ResponseError::KafkaStorageError,
            ResponseError::NotLeaderOrFollower,
            ResponseError::UnknownTopicOrPartition,
        ]
        .into_iter()
        .enumerate()
        {
            t.partitions.push(
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_error_code(code.code())
                    .with_high_watermark(-1),
            );
        }
        t.partitions.push(
            PartitionData::default()
                .with_partition_index(9)
                .with_records(Some(Bytes::from_static(b"batch"))),
        );
        FetchResponse::default().with_responses(vec![t])
    }

    fn metadata_of(topics: &[(&str, i32)]) -> MetadataResponse {
        use kafka_protocol::messages::metadata_response::{
            MetadataResponsePartition, MetadataResponseTopic,
        };
        use kafka_protocol::messages::BrokerId;
        let mut m = MetadataResponse::default();
        for (name, n) in topics {
            let mut t = MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(name.to_string()))));
            // Deliberately out of order: pages come in index order.
            for p in (0..*n).rev() {
                t.partitions.push(
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(p % 3))
                        .with_leader_epoch(p)
                        .with_replica_nodes(vec![BrokerId(p % 3)])
                        .with_isr_nodes(vec![BrokerId(p % 3)]),
                );
            }
            m.topics.push(t);
        }
        m
    }

    /// Pages of DescribeTopicPartitions, followed by cursor, cover every
    /// partition of every topic once, in order, each page within the
    /// limit, with Metadata's leaders and epochs.
    #[test]
    fn describe_topic_partitions_pages_by_cursor_through_everything() {
        let meta = metadata_of(&[("b", 1000), ("a", 7), ("c", 3)]);
        for limit in [1, 2, 7, 999, 1000, 2000] {
            let mut req =
                DescribeTopicPartitionsRequest::default().with_response_partition_limit(limit);
            let mut seen: Vec<(String, i32, i32, i32)> = Vec::new();
            let mut pages = 0;
            loop {
                let page = describe_topic_partitions(&req, meta.clone());
                pages += 1;
                let n: usize = page.topics.iter().map(|t| t.partitions.len()).sum();
                assert!(n <= limit as usize && n > 0, "limit {limit}: page of {n}");
                for t in &page.topics {
                    for p in &t.partitions {
                        seen.push((
                            t.name.as_ref().unwrap().0.to_string(),
                            p.partition_index,
                            p.leader_id.0,
                            p.leader_epoch,
                        ));
                    }
                }
                match page.next_cursor {
                    Some(c) => req.cursor = Some(cursor_for_next_page(&c)),
                    None => break,
                }
                assert!(pages < 2000, "limit {limit}: no end");
            }
            let want: Vec<(String, i32, i32, i32)> = [("a", 7), ("b", 1000), ("c", 3)]
                .iter()
                .flat_map(|(t, n)| (0..*n).map(move |p| (t.to_string(), p, p % 3, p)))
                .collect();
            assert_eq!(seen, want, "limit {limit}");
            assert_eq!(pages, want.len().div_ceil(limit as usize), "limit {limit}");
        }
    }

    /// For every Fetch version we advertise: on the wire, each error
    /// partition's record set is present and empty (size 0, not -1), and
    /// records that were there are untouched.
    #[test]
    fn fetch_error_partitions_carry_an_empty_record_set_in_every_version() {
        let (lo, hi) = supported(ApiKey::Fetch).unwrap();
        for version in lo..=hi {
            let mut resp = with_errors();
            fetch_as_kafka_sends(&mut resp);
            let mut buf = bytes::BytesMut::new();
            if crate::legacy_api::is_legacy(ApiKey::Fetch, version) {
                // The old layout: every record set's length is >= 0.
                use bytes::Buf;
                crate::legacy_api::encode_response(&resp, version, &mut buf).unwrap();
                let mut b = buf.freeze();
                if version >= 1 {
                    b.get_i32();
                }
                assert_eq!(b.get_i32(), 1);
                let name = b.get_i16() as usize;
                b.advance(name);
                let n = b.get_i32();
                assert_eq!(n, 5, "v{version}");
                for i in 0..n {
                    b.advance(4 + 2 + 8);
                    let len = b.get_i32();
                    assert!(len >= 0, "v{version} partition {i}: a null record set");
                    b.advance(len as usize);
                }
                assert!(!b.has_remaining());
                continue;
            }
            resp.encode(&mut buf, version).unwrap();
            let back = FetchResponse::decode(&mut buf.freeze(), version).unwrap();
            let parts = &back.responses[0].partitions;
            assert_eq!(parts.len(), 5, "v{version}");
            for p in &parts[..4] {
                assert_ne!(p.error_code, 0);
                assert_eq!(
                    p.records.as_deref(),
                    Some(&b""[..]),
                    "v{version} partition {}: a null record set",
                    p.partition_index
                );
            }
            assert_eq!(
                parts[4].records.as_deref(),
                Some(&b"batch"[..]),
                "v{version}"
            );
        }
    }
}
