//! Valid inputs for every target, made with the encoders Floe and its
//! clients use: the corpus a fuzzing run starts from (`seed_corpus`
//! writes them under `fuzz/corpus/<target>/`).

use bytes::{Bytes, BytesMut};
use floe_protocol::kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use floe_protocol::kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, TopicName};
use floe_protocol::kafka_protocol::protocol::{Encodable, StrBytes};
use floe_protocol::kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// (target, name, input) for every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, frame) in kafka_requests() {
        out.push(("kafka_request", name, frame));
    }
    for (name, b) in batches() {
        out.push(("record_batches", name.clone(), prefixed(1, &b)));
        out.push(("chunk", name.clone(), prefixed(1, &chunk_of(&b))));
        out.push(("segment", name, prefixed(1, &segment_tail_of(&b))));
    }
    for magic in [0, 1] {
        let mut set = BytesMut::new();
        for i in 0..3 {
            floe_protocol::legacy::encode_message(
                &mut set,
                magic,
                i,
                1_700_000_000_000 + i,
                Some(b"key"),
                Some(b"value"),
            );
        }
        out.push(("legacy_message_set", format!("v{magic}"), set.to_vec()));
    }
    let mut inner = BytesMut::new();
    for i in 0..2 {
        floe_protocol::legacy::encode_message(&mut inner, 1, i, 0, None, Some(b"v"));
    }
    let mut wrapped = BytesMut::new();
    floe_protocol::legacy::gzip_wrapper(&mut wrapped, 1, 0, &inner);
    out.push(("legacy_message_set", "v1-gzip".into(), wrapped.to_vec()));
    out.push((
        "chunk",
        "fence".into(),
        prefixed(0, &floe_storage::chunk::encode_fence(3, 100)),
    ));
    for (name, object) in wal_objects() {
        out.push(("wal", name, prefixed(1, &object)));
    }
    for (name, msgs) in tail_updates() {
        out.push(("tail_update", name, msgs));
    }
    for (name, req) in admin_requests() {
        out.push(("admin_request", name, req));
    }
    for (name, tokens) in sasl_exchanges() {
        out.push(("sasl", name, tokens));
    }
    out
}

fn prefixed(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(rest.len() + 1);
    v.push(first);
    v.extend_from_slice(rest);
    v
}

/// Messages each behind a 2-byte length, as the tail and SASL targets
/// read them.
fn framed(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend_from_slice(&(m.len() as u16).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn header(api: ApiKey, version: i16) -> BytesMut {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("seed")))
        .encode(&mut buf, api.request_header_version(version))
        .expect("a request header");
    buf
}

/// A frame for every API and version the edge advertises: the shortest
/// body of zeros that decodes (empty strings and arrays), and Produce
/// with real batches (v3+) or message sets (v0–2).
fn kafka_requests() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for api in ApiKey::iter() {
        let Some((lo, hi)) = floe_protocol::versions::supported(api) else {
            continue;
        };
        for version in lo..=hi {
            let h = header(api, version);
            let body = (0..256usize).find_map(|n| {
                let mut b = Bytes::from(vec![0u8; n]);
                floe_kafka::listener::decode_body(api, version, &mut b)
                    .ok()
                    .filter(|_| b.is_empty())
                    .map(|_| vec![0u8; n])
            });
            if let Some(body) = body {
                let mut frame = h.to_vec();
                frame.extend_from_slice(&body);
                out.push((format!("{api:?}-v{version}"), frame));
            }
            if api == ApiKey::Produce {
                let records = if version < 3 {
                    let mut set = BytesMut::new();
                    for i in 0..2 {
                        floe_protocol::legacy::encode_message(
                            &mut set,
                            if version < 2 { 0 } else { 1 },
                            i,
                            0,
                            Some(b"k"),
                            Some(b"v"),
                        );
                    }
                    set.freeze()
                } else {
                    Bytes::from(floe_protocol::batch::synthetic_batch(
                        2,
                        8,
                        1_700_000_000_000,
                    ))
                };
                let req = ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(1000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str("t")))
                        .with_partition_data(vec![PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records))])]);
                let mut frame = h.clone();
                if RequestKind::Produce(req)
                    .encode(&mut frame, version)
                    .is_ok()
                {
                    out.push((format!("Produce-v{version}-records"), frame.to_vec()));
                }
            }
        }
    }
    out
}

fn records(n: i64, keyed: bool) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i,
            key: keyed.then(|| Bytes::from(format!("key-{}", i % 2))),
            value: Some(Bytes::from(format!("value-{i}"))),
            headers: [(
                StrBytes::from_static_str("traceparent"),
                Some(Bytes::from_static(
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )),
            )]
            .into_iter()
            .collect(),
        })
        .collect()
}

/// Batches as clients send them: every codec, keyed and keyless, and a
/// transaction marker.
fn batches() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, compression) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records(4, true),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("a batch");
        out.push((format!("keyed-{name}"), buf.to_vec()));
    }
    out.push((
        "keyless-two".into(),
        [
            floe_protocol::batch::synthetic_batch(3, 10, 0),
            floe_protocol::batch::synthetic_batch(2, 4, 5),
        ]
        .concat(),
    ));
    let marker = floe_protocol::control::Marker {
        producer_id: 9,
        producer_epoch: 1,
        kind: floe_protocol::control::MarkerKind::Commit,
        coordinator_epoch: 2,
    };
    out.push((
        "marker".into(),
        floe_protocol::control::marker_batch(&marker, 0).to_vec(),
    ));
    out
}

/// Batches with offsets assigned from 0, and where they end.
fn assigned(b: &[u8]) -> (Vec<u8>, i64, u32) {
    let mut v = b.to_vec();
    let mut next = 0;
    let mut count = 0;
    let mut pos = 0;
    while let Some((at, h)) = floe_protocol::batch::Batches::new(&v[pos..]).next() {
        let start = pos + at;
        let end = start + h.total_len();
        floe_protocol::batch::assign(&mut v[start..end], next, 0, None);
        next += h.last_offset_delta as i64 + 1;
        count += 1;
        pos = end;
    }
    (v, next, count)
}

/// Shared WAL objects as a broker's flush writes them: chunks of several
/// partitions (every batch shape of [`batches`]), and a fence.
fn wal_objects() -> Vec<(String, Vec<u8>)> {
    use floe_storage::wal::{encode_fence, ChunkMeta, WalBuilder, WalId};
    let id = WalId {
        broker: 2,
        stream: 7,
        seq: 41,
    };
    let mut builder = WalBuilder::with_capacity(1 << 16);
    let mut next = 0i64;
    for (i, (_, b)) in batches().into_iter().take(6).enumerate() {
        let count = floe_protocol::batch::Batches::new(&b).count() as u32;
        let end = next + 10;
        builder.push(
            ChunkMeta {
                partition: floe_common::PartitionId::new(
                    floe_common::Uuid::from_u128(9),
                    i as i32 % 3,
                ),
                segment_epoch: 1,
                segment_base: 0,
                base_offset: next,
                next_offset: end,
                max_timestamp: 1_700_000_000_000,
                batch_count: count,
                epoch: 1,
            },
            &b,
        );
        next = end;
    }
    let (object, _) = builder.finish(id);
    vec![
        ("flush-of-six-chunks".into(), object.to_vec()),
        (
            "fence".into(),
            encode_fence(WalId { seq: 42, ..id }).to_vec(),
        ),
    ]
}

fn chunk_of(b: &[u8]) -> Vec<u8> {
    let (v, next, count) = assigned(b);
    floe_storage::chunk::encode_data(1, 0, next, 0, count, &v).to_vec()
}

fn segment_tail_of(b: &[u8]) -> Vec<u8> {
    let (v, _, _) = assigned(b);
    let mut s = floe_storage::segment::SegmentBuilder::new(0, 1, 1);
    for (at, h) in floe_protocol::batch::Batches::new(&v) {
        s.add(&v[at..at + h.total_len()]).expect("a batch in order");
    }
    s.finish().0.to_vec()
}

fn tail_updates() -> Vec<(String, Vec<u8>)> {
    use floe_rpc::tail::pb;
    use prost::Message;
    let chunk = |base: i64, next: i64| pb::Chunk {
        segment_base: 0,
        base_offset: base,
        next_offset: next,
        max_timestamp: 0,
        path: format!("t/0/{base:020}.chunk"),
        bytes: 100,
        payload: Some(Bytes::from(chunk_of(
            &floe_protocol::batch::synthetic_batch((next - base) as i32, 4, 0),
        ))),
        wal: None,
    };
    let snapshot = pb::LogUpdate {
        kind: Some(pb::log_update::Kind::Snapshot(pb::Snapshot {
            log_start_offset: 0,
            high_watermark: 20,
            leader_epoch: 1,
            sealed: vec![pb::SealedSegment {
                base_offset: 0,
                end_offset: 10,
                epoch: 1,
                path: "t/0/seg".into(),
                data_bytes: 100,
                object_bytes: 200,
                max_timestamp: 0,
                sealed_ms: 0,
                replicas: vec!["t0".into(), "t1".into()],
            }],
            open: vec![pb::OpenSegment {
                base_offset: 10,
                epoch: 1,
                replicas: vec!["t0".into(), "t1".into()],
                chunks: vec![chunk(10, 20)],
            }],
            first_unstable: None,
            aborted: vec![],
        })),
    };
    let append = pb::LogUpdate {
        kind: Some(pb::log_update::Kind::Append(pb::Append {
            log_start_offset: 0,
            high_watermark: 25,
            chunks: vec![chunk(20, 25)],
            first_unstable: Some(22),
            aborted: vec![pb::AbortedTxn {
                producer_id: 4,
                first_offset: 21,
                marker_offset: 24,
            }],
        })),
    };
    vec![(
        "snapshot-append".into(),
        framed(&[snapshot.encode_to_vec(), append.encode_to_vec()]),
    )]
}

fn admin_requests() -> Vec<(String, Vec<u8>)> {
    use floe_rpc::admin::*;
    use prost::Message;
    let topic = CreateTopicRequest {
        name: "orders".into(),
        partitions: 3,
        configs: [("cleanup.policy".to_string(), "compact".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let alter = AlterTopicConfigsRequest {
        name: "orders".into(),
        set: [("retention.ms".to_string(), "1000".to_string())]
            .into_iter()
            .collect(),
        delete: vec!["cleanup.policy".into()],
    };
    let acl = Acl {
        resource_type: "topic".into(),
        resource_name: "orders".into(),
        pattern_type: "prefixed".into(),
        principal: "User:alice".into(),
        host: "*".into(),
        operation: "write".into(),
        permission: "allow".into(),
    };
    let msgs: Vec<(u8, &str, Vec<u8>)> = vec![
        (0, "create-topic", topic.encode_to_vec()),
        (1, "alter-configs", alter.encode_to_vec()),
        (
            2,
            "delete-topic",
            DeleteTopicRequest {
                name: "orders".into(),
            }
            .encode_to_vec(),
        ),
        (
            3,
            "describe-topic",
            DescribeTopicRequest {
                name: "orders".into(),
                segments: true,
            }
            .encode_to_vec(),
        ),
        (
            4,
            "describe-partition",
            DescribePartitionRequest {
                topic: "orders".into(),
                partition: 1,
            }
            .encode_to_vec(),
        ),
        (
            5,
            "add-target",
            AddStorageTargetRequest {
                id: "t9".into(),
                url: "memory://".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (6, "create-acl", acl.encode_to_vec()),
        (7, "delete-acls", AclFilter::default().encode_to_vec()),
        (8, "list-acls", AclFilter::default().encode_to_vec()),
        (
            9,
            "get-operation",
            OperationRequest { id: "op-1".into() }.encode_to_vec(),
        ),
        (
            10,
            "plan-rebalance",
            RebalanceRequest::default().encode_to_vec(),
        ),
        (
            11,
            "list-topics",
            ListTopicsRequest::default().encode_to_vec(),
        ),
    ];
    msgs.into_iter()
        .map(|(which, name, body)| (name.to_string(), prefixed(which, &body)))
        .collect()
}

fn sasl_exchanges() -> Vec<(String, Vec<u8>)> {
    vec![
        ("plain".into(), prefixed(0, &framed(&[b"\0fuzz\0secret".to_vec()]))),
        (
            "scram-256".into(),
            prefixed(
                1,
                &framed(&[
                    b"n,,n=fuzz,r=fyko+d2lbbFgONRv9qkxdawL".to_vec(),
                    b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL,p=dHpbZ2VyY29kZQ==".to_vec(),
                ]),
            ),
        ),
        (
            "scram-512".into(),
            prefixed(2, &framed(&[b"n,a=fuzz,n=fuzz,r=abcdef".to_vec()])),
        ),
        (
            "oauthbearer".into(),
            prefixed(
                3,
                &framed(&[b"n,a=fuzz,\x01auth=Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enoifQ.eyJzdWIiOiJmdXp6IiwiYXVkIjoiZmxvZSJ9.c2ln\x01\x01".to_vec()]),
            ),
        ),
    ]
}

/// Keep the corpus's producer honest: it must make something for every
/// target.
#[doc(hidden)]
pub fn targets() -> [&'static str; 9] {
    [
        "kafka_request",
        "record_batches",
        "legacy_message_set",
        "chunk",
        "segment",
        "wal",
        "tail_update",
        "admin_request",
        "sasl",
    ]
}
