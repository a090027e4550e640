//! Clients from before Kafka 0.11 — message formats v0 and v1 and the
//! request versions Kafka 4 removed (KIP-896): Debian's kcat with
//! `api.version.request=false broker.version.fallback=0.10.0`, and raw
//! requests of the old versions, against a broker and through a proxy. What
//! they write is read back by a current client as v2 batches, and what a
//! current client writes is read by them as old message sets.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use floe_e2e::{create_topic, read_all, Cluster, RawClient};
use floe_protocol::legacy::{encode_message, gzip_wrapper, read_message_set, Message};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    ApiKey, GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

const OLD: [&str; 4] = [
    "-X",
    "api.version.request=false",
    "-X",
    "broker.version.fallback=0.10.0",
];

fn kcat(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new("kcat")
        .args(args)
        .args(OLD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (scripts/test.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// kcat speaking Kafka 0.10.0 (Produce v2 with message format v1, Fetch v2,
/// ListOffsets v0) writes and reads; a current client reads the same.
async fn kcat_round_trip(bootstrap: &str, topic: &str) {
    create_topic(bootstrap, topic, 1).await;
    let (code, _, err) = kcat(
        &["-P", "-b", bootstrap, "-t", topic, "-p", "0", "-K:"],
        "k1:v1\nk2:v2\nk3:v3\n",
    );
    assert_eq!(code, 0, "kcat produce: {err}");
    let (code, out, err) = kcat(
        &[
            "-C",
            "-b",
            bootstrap,
            "-t",
            topic,
            "-p",
            "0",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k=%s@%o\n",
        ],
        "",
    );
    assert_eq!(code, 0, "kcat consume: {err}");
    assert_eq!(out, "k1=v1@0\nk2=v2@1\nk3=v3@2\n", "{err}");
    let log = read_all(bootstrap, topic, 1);
    let values: Vec<String> = log[&0]
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(values, ["v1", "v2", "v3"], "a current client reads them");
    // And from the end (ListOffsets v0 for the logical offset).
    let (code, out, err) = kcat(
        &[
            "-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "-1", "-e", "-f", "%s@%o\n",
        ],
        "",
    );
    assert_eq!(code, 0, "kcat consume from the end: {err}");
    assert_eq!(out, "v3@2\n", "{err}");
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

/// Produce v`version` of one message set to partition 0; (error, base offset).
fn produce(raw: &mut RawClient, version: i16, topic: &str, set: &[u8]) -> (i16, i64) {
    let mut b = BytesMut::new();
    b.put_i16(-1);
    b.put_i32(10_000);
    b.put_i32(1);
    put_str(&mut b, topic);
    b.put_i32(1);
    b.put_i32(0);
    b.put_i32(set.len() as i32);
    b.put_slice(set);
    let mut r = raw.request_bytes(ApiKey::Produce, version, &b).unwrap();
    assert_eq!(r.get_i32(), 1, "one topic");
    r.advance(2 + topic.len());
    assert_eq!(r.get_i32(), 1, "one partition");
    assert_eq!(r.get_i32(), 0, "partition 0");
    let out = (r.get_i16(), r.get_i64());
    if version >= 2 {
        r.get_i64();
    }
    if version >= 1 {
        r.get_i32();
    }
    assert!(!r.has_remaining(), "nothing after the v{version} answer");
    out
}

/// Fetch v`version` of partition 0 from offset 0; (error, high watermark,
/// message set).
fn fetch(raw: &mut RawClient, version: i16, topic: &str) -> (i16, i64, Bytes) {
    let mut b = BytesMut::new();
    b.put_i32(-1);
    b.put_i32(100);
    b.put_i32(1);
    if version >= 3 {
        b.put_i32(1 << 20);
    }
    b.put_i32(1);
    put_str(&mut b, topic);
    b.put_i32(1);
    b.put_i32(0);
    b.put_i64(0);
    b.put_i32(1 << 20);
    let mut r = raw.request_bytes(ApiKey::Fetch, version, &b).unwrap();
    if version >= 1 {
        r.get_i32();
    }
    assert_eq!(r.get_i32(), 1);
    r.advance(2 + topic.len());
    assert_eq!(r.get_i32(), 1);
    assert_eq!(r.get_i32(), 0);
    let (error, hw) = (r.get_i16(), r.get_i64());
    let len = r.get_i32() as usize;
    let set = r.split_to(len);
    assert!(!r.has_remaining());
    (error, hw, set)
}

fn message_set(magic: i8, first: i64, n: i64, prefix: &str) -> BytesMut {
    let mut b = BytesMut::new();
    for i in 0..n {
        encode_message(
            &mut b,
            magic,
            i,
            1_600_000_000_000 + first + i,
            Some(format!("k{}", first + i).as_bytes()),
            Some(format!("{prefix}{}", first + i).as_bytes()),
        );
    }
    b
}

/// Old message sets in, current batches and old sets out; old offset APIs.
async fn raw_round_trip(bootstrap: &str, topic: &str) {
    create_topic(bootstrap, topic, 1).await;
    let addr = bootstrap.split(',').next().unwrap();
    let mut raw = RawClient::connect(addr).unwrap();
    // v1 messages, v0 messages, a gzip wrapper of v1 messages.
    assert_eq!(
        produce(&mut raw, 2, topic, &message_set(1, 0, 3, "v")),
        (0, 0)
    );
    assert_eq!(
        produce(&mut raw, 0, topic, &message_set(0, 3, 2, "v")),
        (0, 3)
    );
    let mut wrapped = BytesMut::new();
    gzip_wrapper(
        &mut wrapped,
        2,
        1_600_000_000_005,
        &message_set(1, 5, 3, "z"),
    );
    assert_eq!(produce(&mut raw, 1, topic, &wrapped), (0, 5));
    // A corrupt message set is refused with CORRUPT_MESSAGE (2).
    let mut bad = message_set(1, 0, 1, "x");
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert_eq!(produce(&mut raw, 2, topic, &bad).0, 2);

    // A current client (Fetch v4+) reads v2 batches: same keys, values,
    // and the v1 timestamps (magic 0 got the append time).
    let got = records(bootstrap, topic);
    let want: Vec<(String, String)> = (0..8)
        .map(|i| {
            let v = if i < 5 { "v" } else { "z" };
            (format!("k{i}"), format!("{v}{i}"))
        })
        .collect();
    assert_eq!(
        got.iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect::<Vec<_>>(),
        want
    );
    let stamps: Vec<i64> = got.iter().map(|r| r.2).collect();
    assert_eq!(
        &stamps[..3],
        &[1_600_000_000_000, 1_600_000_000_001, 1_600_000_000_002]
    );
    assert_eq!(
        &stamps[5..],
        &[1_600_000_000_005, 1_600_000_000_006, 1_600_000_000_007]
    );
    assert!(stamps[3] > 1_700_000_000_000, "append time: {}", stamps[3]);

    // Fetch v2 answers a v1 message set, Fetch v0 a v0 one.
    let (error, hw, set) = fetch(&mut raw, 2, topic);
    assert_eq!((error, hw), (0, 8));
    let (messages, _) = read_message_set(&set).unwrap();
    let offsets: Vec<i64> = messages.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..8).collect::<Vec<_>>());
    let Message {
        timestamp,
        key,
        value,
        ..
    } = &messages[6];
    assert_eq!(*timestamp, 1_600_000_000_006);
    assert_eq!(key.as_deref(), Some(&b"k6"[..]));
    assert_eq!(value.as_deref(), Some(&b"z6"[..]));
    let (_, _, set) = fetch(&mut raw, 0, topic);
    assert_eq!(set[16], 0, "magic 0");
    let (messages, _) = read_message_set(&set).unwrap();
    assert_eq!(messages.len(), 8);
    assert!(messages.iter().all(|m| m.timestamp == -1));

    // ListOffsets v0: the latest offset in the old list form.
    let mut b = BytesMut::new();
    b.put_i32(-1);
    b.put_i32(1);
    put_str(&mut b, topic);
    b.put_i32(1);
    b.put_i32(0);
    b.put_i64(-1);
    b.put_i32(1);
    let mut r = raw.request_bytes(ApiKey::ListOffsets, 0, &b).unwrap();
    r.advance(4 + 2 + topic.len() + 4 + 4);
    assert_eq!(r.get_i16(), 0);
    assert_eq!(r.get_i32(), 1, "one offset");
    assert_eq!(r.get_i64(), 8);

    // OffsetCommit v1 (a group with no members: generation -1).
    let group = format!("{topic}-g");
    let mut b = BytesMut::new();
    put_str(&mut b, &group);
    b.put_i32(-1);
    put_str(&mut b, "");
    b.put_i32(1);
    put_str(&mut b, topic);
    b.put_i32(1);
    b.put_i32(0);
    b.put_i64(5);
    b.put_i64(-1);
    put_str(&mut b, "meta");
    let mut r = coordinator_request(bootstrap, &group, ApiKey::OffsetCommit, 1, &b);
    r.advance(4 + 2 + topic.len() + 4 + 4);
    assert_eq!(r.get_i16(), 0, "committed");
    // Read back with OffsetFetch v0 (old layout), v1 and v8 (the codec).
    let mut b = BytesMut::new();
    put_str(&mut b, &group);
    b.put_i32(1);
    put_str(&mut b, topic);
    b.put_i32(1);
    b.put_i32(0);
    let mut r = coordinator_request(bootstrap, &group, ApiKey::OffsetFetch, 0, &b);
    r.advance(4 + 2 + topic.len() + 4 + 4);
    assert_eq!(r.get_i64(), 5);
    assert_eq!(r.get_i16(), 4);
    assert_eq!(&r.split_to(4)[..], b"meta");
    assert_eq!(r.get_i16(), 0);
    let v1 = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_indexes(vec![0])]));
    let r: OffsetFetchResponse = coordinator(bootstrap, &group)
        .call(ApiKey::OffsetFetch, 1, &v1)
        .unwrap();
    assert_eq!(r.topics[0].partitions[0].committed_offset, 5);
    let v8 = OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(StrBytes::from_string(group.clone())))
        .with_topics(Some(vec![OffsetFetchRequestTopics::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_indexes(vec![0])]))]);
    let r: OffsetFetchResponse = coordinator(bootstrap, &group)
        .call(ApiKey::OffsetFetch, 8, &v8)
        .unwrap();
    assert_eq!(r.groups[0].topics[0].partitions[0].committed_offset, 5);
    assert_eq!(
        r.groups[0].topics[0].partitions[0].metadata.as_deref(),
        Some("meta")
    );

    // DescribeConfigs v0 of the topic: its configs with is_default.
    let mut b = BytesMut::new();
    b.put_i32(1);
    b.put_i8(2);
    put_str(&mut b, topic);
    b.put_i32(-1);
    let mut r = raw.request_bytes(ApiKey::DescribeConfigs, 0, &b).unwrap();
    r.get_i32();
    assert_eq!(r.get_i32(), 1);
    assert_eq!(r.get_i16(), 0, "no error");
    let names = configs_v0(&mut r, topic);
    assert!(
        names.iter().any(|(n, d)| n == "retention.ms" && *d),
        "retention.ms, a default: {names:?}"
    );
}

/// The rest of a DescribeConfigs v0 result after its error code: (name,
/// is_default) of each config.
fn configs_v0(r: &mut Bytes, topic: &str) -> Vec<(String, bool)> {
    let msg = r.get_i16();
    if msg > 0 {
        r.advance(msg as usize);
    }
    assert_eq!(r.get_i8(), 2);
    r.advance(2 + topic.len());
    let n = r.get_i32();
    (0..n)
        .map(|_| {
            let len = r.get_i16() as usize;
            let name = String::from_utf8(r.split_to(len).to_vec()).unwrap();
            let vlen = r.get_i16();
            if vlen > 0 {
                r.advance(vlen as usize);
            }
            let (_read_only, is_default, _sensitive) = (r.get_u8(), r.get_u8(), r.get_u8());
            (name, is_default == 1)
        })
        .collect()
}

/// A raw connection to the group's coordinator (the proxy itself, through
/// a proxy).
fn coordinator(bootstrap: &str, group: &str) -> RawClient {
    use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
    let mut raw = RawClient::connect(bootstrap.split(',').next().unwrap()).unwrap();
    // The first group request creates the offsets topic: a moment until
    // its partitions have owners.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r: FindCoordinatorResponse = raw
            .call(
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(StrBytes::from_string(group.to_string())),
            )
            .unwrap();
        if r.error_code == 0 {
            return RawClient::connect(&format!("{}:{}", r.host, r.port)).unwrap();
        }
        assert!(
            std::time::Instant::now() < until,
            "no coordinator for {group}: error {}",
            r.error_code
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn coordinator_request(
    bootstrap: &str,
    group: &str,
    api: ApiKey,
    version: i16,
    body: &[u8],
) -> Bytes {
    coordinator(bootstrap, group)
        .request_bytes(api, version, body)
        .unwrap()
}

/// Each record's key, value and timestamp in partition 0, read by a
/// current client.
fn records(bootstrap: &str, topic: &str) -> Vec<(String, String, i64)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-ts"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < 8 && std::time::Instant::now() < until {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).to_string();
            out.push((
                text(m.key()),
                text(m.payload()),
                m.timestamp().to_millis().unwrap_or(-1),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_clients_round_trip_at_a_broker_and_through_a_proxy() {
    let mut c = Cluster::start(1, 1, 6_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    kcat_round_trip(&c.bootstrap(), "kcat-broker").await;
    kcat_round_trip(&c.proxy_bootstrap(), "kcat-proxy").await;
    raw_round_trip(&c.bootstrap(), "raw-broker").await;
    raw_round_trip(&c.proxy_bootstrap(), "raw-proxy").await;
}
