//! Bad input gets Kafka's error code or a logged connection close; the
//! broker keeps serving everyone else and stores nothing corrupt.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use bytes::Bytes;
use floe_e2e::{RawClient, Standalone};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn produce(raw: &mut RawClient, topic: &str, records: Vec<u8>) -> i16 {
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    let resp: ProduceResponse = raw.call(ApiKey::Produce, 9, &req).unwrap();
    resp.responses[0].partition_responses[0].error_code
}

fn still_serving(s: &Standalone) {
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    let r: ApiVersionsResponse = raw
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    assert_eq!(r.error_code, 0);
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn malformed_unknown_and_unsupported_requests_close_only_their_connection() {
    let s = Standalone::start().unwrap();
    // A frame whose body is garbage.
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    raw.send_raw(&[0, 0, 0, 12, 0, 3, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0x7f])
        .unwrap();
    assert!(
        raw.closed_by_server(),
        "malformed Metadata closes the connection"
    );
    // An API key Kafka does not have.
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    raw.send_raw(&[0, 0, 0, 10, 0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0, 0])
        .unwrap();
    assert!(
        raw.closed_by_server(),
        "unknown API key closes the connection"
    );
    // A version of Produce beyond what we implement.
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    raw.send_raw(&[0, 0, 0, 10, 0, 0, 0, 99, 0, 0, 0, 1, 0, 0])
        .unwrap();
    assert!(
        raw.closed_by_server(),
        "unsupported version closes the connection"
    );
    // ApiVersions of a version from the future: error 35 and the ranges, at v0.
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    let mut b = raw
        .request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    let _ = &mut b;
    raw.send_raw(&[0, 0, 0, 10, 0, 18, 0, 99, 0, 0, 0, 7, 0, 0])
        .unwrap();
    let mut len = [0u8; 4];
    std::io::Read::read_exact(&mut raw.stream, &mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    std::io::Read::read_exact(&mut raw.stream, &mut body).unwrap();
    assert_eq!(&body[..4], &7i32.to_be_bytes(), "correlation id echoed");
    assert_eq!(
        i16::from_be_bytes([body[4], body[5]]),
        35,
        "UNSUPPORTED_VERSION"
    );
    still_serving(&s);
    assert!(s.wait_log("unknown API key 9999"));
}

/// Found by the `kafka_request` fuzz target: a request whose array count
/// is far beyond its frame (a 20-byte CreateAcls v1 declaring 2^31 ACL
/// creations; a Metadata v0 declaring 54 million topics) made the decoder
/// ask for hundreds of gigabytes up front, and the process aborted. Now
/// the frame is malformed: its connection closes, nothing else notices.
#[test]
fn array_counts_beyond_the_frame_close_only_their_connection() {
    let s = Standalone::start().unwrap();
    let frames: [&[u8]; 2] = [
        // CreateAcls v1, correlation 30, client id "\0", 0x65656400 creations.
        &[
            0, 0x1e, 0, 1, 0, 0, 0, 0x1e, 0, 1, 0, 0x65, 0x65, 0x64, 0, 0, 0, 0,
        ],
        // Metadata v0, correlation 1, no client id, 0x033c0c00 topics.
        &[
            0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x03, 0x3c, 0x0c, 0x00, 0xb6,
        ],
    ];
    for frame in frames {
        let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
        let mut sized = (frame.len() as i32).to_be_bytes().to_vec();
        sized.extend_from_slice(frame);
        raw.send_raw(&sized).unwrap();
        assert!(
            raw.closed_by_server(),
            "a malformed frame closes its connection"
        );
        still_serving(&s);
    }
    assert!(
        s.wait_log("exceeds the"),
        "the refusal says why:\n{}",
        s.log_text()
    );
}

#[test]
fn oversized_requests_and_too_many_connections_are_refused() {
    let s = Standalone::start_with_config(
        "[broker]\nmax_request_bytes = 1048576\nmax_connections = 2\n",
    )
    .unwrap();
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    raw.send_raw(&(2 * 1048576i32).to_be_bytes()).unwrap();
    assert!(
        raw.closed_by_server(),
        "a 2 MiB frame over a 1 MiB limit closes the connection"
    );
    assert!(s.wait_log("exceeds the limit"), "the close is logged");

    let mut a = RawClient::connect(&s.bootstrap()).unwrap();
    let mut b = RawClient::connect(&s.bootstrap()).unwrap();
    let _: ApiVersionsResponse = a
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    let _: ApiVersionsResponse = b
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    let mut c = RawClient::connect(&s.bootstrap()).unwrap();
    assert!(
        c.closed_by_server(),
        "the third connection is over max_connections"
    );
    assert!(s.metric("floe_proxy_connections_rejected_total").unwrap() >= 1.0);
    drop(a);
    // The slot frees once the server has seen the close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r: ApiVersionsResponse = loop {
        let answered = RawClient::connect(&s.bootstrap())
            .and_then(|mut d| d.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()));
        match answered {
            Ok(r) => break r,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "no slot freed up: {e}"
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(r.error_code, 0, "a slot freed up");
}

#[test]
fn bad_batches_get_kafka_error_codes_and_nothing_is_stored() {
    let s = Standalone::start().unwrap();
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    let good = floe_protocol::batch::synthetic_batch(3, 10, 1_000);
    assert_eq!(
        produce(&mut raw, "bad", good.clone()),
        0,
        "a good batch is accepted (auto-created topic)"
    );
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 0x55;
    assert_eq!(produce(&mut raw, "bad", bad_crc), 2, "CORRUPT_MESSAGE");
    let mut magic1 = good.clone();
    magic1[16] = 1;
    assert_eq!(
        produce(&mut raw, "bad", magic1),
        43,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT"
    );
    assert_eq!(
        produce(&mut raw, "bad", good[..30].to_vec()),
        2,
        "truncated batch: CORRUPT_MESSAGE"
    );
    let mut wrong_count = good.clone();
    wrong_count[57..61].copy_from_slice(&9i32.to_be_bytes());
    let crc = crc32c::crc32c(&wrong_count[21..]);
    wrong_count[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        produce(&mut raw, "bad", wrong_count),
        87,
        "INVALID_RECORD: count vs lastOffsetDelta"
    );
    let big = floe_protocol::batch::synthetic_batch(2, 600_000, 1_000);
    assert_eq!(
        produce(&mut raw, "bad", big),
        10,
        "MESSAGE_TOO_LARGE over max.message.bytes"
    );
    // Only the good batch is in the log.
    let req = ListOffsetsRequest::default().with_topics(vec![
        kafka_protocol::messages::list_offsets_request::ListOffsetsTopic::default()
            .with_name(name("bad"))
            .with_partitions(vec![
                kafka_protocol::messages::list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ]),
    ]);
    let r: ListOffsetsResponse = raw.call(ApiKey::ListOffsets, 5, &req).unwrap();
    assert_eq!(r.topics[0].partitions[0].offset, 3);
    // Fetch beyond the end: OFFSET_OUT_OF_RANGE.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(name("bad"))
                .with_partitions(vec![
                    kafka_protocol::messages::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(50)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &fetch).unwrap();
    assert_eq!(r.responses[0].partitions[0].error_code, 1);
    // Fetch in the middle of a batch returns the whole batch.
    let mid = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            kafka_protocol::messages::fetch_request::FetchTopic::default()
                .with_topic(name("bad"))
                .with_partitions(vec![
                    kafka_protocol::messages::fetch_request::FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(1)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let r: FetchResponse = raw.call(ApiKey::Fetch, 11, &mid).unwrap();
    let recs = r.responses[0].partitions[0].records.clone().unwrap();
    assert_eq!(recs.len(), good.len());
    assert_eq!(&recs[..8], &0i64.to_be_bytes(), "batch starts at offset 0");
}

#[test]
fn invalid_topic_names_and_disabled_auto_creation() {
    let s = Standalone::start_with_config("[broker]\nauto_create_topics = false\n").unwrap();
    let mut raw = RawClient::connect(&s.bootstrap()).unwrap();
    let req = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name("bad/name"))
                .with_num_partitions(1)
                .with_replication_factor(1),
            CreatableTopic::default()
                .with_name(name(&"x".repeat(250)))
                .with_num_partitions(1)
                .with_replication_factor(1),
            CreatableTopic::default()
                .with_name(name("zero"))
                .with_num_partitions(0)
                .with_replication_factor(1),
            CreatableTopic::default()
                .with_name(name("ok"))
                .with_num_partitions(2)
                .with_replication_factor(1),
        ]);
    let r: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 5, &req).unwrap();
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        codes,
        vec![17, 17, 37, 0],
        "INVALID_TOPIC_EXCEPTION x2, INVALID_PARTITIONS, ok"
    );
    let r: CreateTopicsResponse = raw.call(ApiKey::CreateTopics, 5, &req).unwrap();
    assert_eq!(r.topics[3].error_code, 36, "TOPIC_ALREADY_EXISTS");

    let md = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("bad name"))),
            MetadataRequestTopic::default().with_name(Some(name("missing"))),
            MetadataRequestTopic::default().with_name(Some(name("ok"))),
        ]));
    let r: MetadataResponse = raw.call(ApiKey::Metadata, 12, &md).unwrap();
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        codes,
        vec![17, 3, 0],
        "invalid name, unknown topic with auto-create off, ok"
    );
    assert_eq!(r.topics[2].partitions.len(), 2);
    assert!(
        !r.topics[2].topic_id.is_nil(),
        "Metadata v12 carries topic ids"
    );

    let good = floe_protocol::batch::synthetic_batch(1, 10, 1_000);
    assert_eq!(
        produce(&mut raw, "missing", good),
        3,
        "UNKNOWN_TOPIC_OR_PARTITION with auto-creation off"
    );
}
