//! Segment rolls by size and by time, retention by bytes and by time
//! (objects and metadata go), and OFFSET_OUT_OF_RANGE below the log start.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use floe_e2e::{RawClient, Standalone};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

async fn create(b: &str, name: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", b)
        .create()
        .unwrap();
    let mut t = NewTopic::new(name, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = admin
        .create_topics([&t], &AdminOptions::new())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{:?}", r[0]);
}

fn watermarks(b: &str, topic: &str) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b)
        .set("group.id", "unused")
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
}

fn fetch_error(b: &str, topic: &str, offset: i64) -> i16 {
    let mut raw = RawClient::connect(b).unwrap();
    let req = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20)])]);
    let resp: FetchResponse = raw.call(ApiKey::Fetch, 11, &req).unwrap();
    resp.responses[0].partitions[0].error_code
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_rolls_and_byte_retention_delete_old_segments() {
    let mut s = Standalone::start_with_config(
        "[broker]\nretention_check_interval_ms = 200\nchunk_linger_ms = 1\n",
    )
    .unwrap();
    let b = s.bootstrap();
    create(
        &b,
        "sized",
        &[("segment.bytes", "20000"), ("retention.bytes", "60000")],
    )
    .await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let value = vec![b'v'; 1000];
    for _ in 0..300 {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to("sized").payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // ~300 KB in 20 KB segments: many rolls; retention keeps about 60 KB.
    // Retention runs every 200 ms, one pass at a time: wait for it to
    // settle at about retention.bytes (plus at most a segment and the open one).
    wait_until(
        "retention to delete old segments",
        Duration::from_secs(20),
        || watermarks(&b, "sized").0 >= 200,
    );
    wait_until(
        "segment objects to be deleted",
        Duration::from_secs(20),
        || s.object_keys(".seg").unwrap().len() <= 5,
    );
    // Settled: the log start stays put over several retention passes.
    let mut lo = watermarks(&b, "sized").0;
    wait_until("retention to settle", Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(1_000));
        let now = watermarks(&b, "sized").0;
        std::mem::replace(&mut lo, now) == now
    });
    let (lo, hi) = watermarks(&b, "sized");
    assert_eq!(hi, 300);
    assert!(
        lo >= 200,
        "log start {lo}: about 60 KB of 1 KB records remain"
    );
    assert!(
        s.metric("floe_segments_sealed_total").unwrap() >= 10.0,
        "size bound rolled segments"
    );
    assert!(s.metric("floe_segments_deleted_total").unwrap() >= 5.0);
    assert_eq!(
        fetch_error(&b, "sized", 0),
        1,
        "OFFSET_OUT_OF_RANGE below the log start"
    );
    assert_eq!(fetch_error(&b, "sized", lo), 0);
    // The deletion is in the metadata too: a restart does not bring it back.
    s.restart().unwrap();
    assert_eq!(watermarks(&b, "sized").0, lo);
    assert_eq!(fetch_error(&b, "sized", 0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_rolls_and_time_retention() {
    let s = Standalone::start_with_config("[broker]\nretention_check_interval_ms = 200\n").unwrap();
    let b = s.bootstrap();
    create(
        &b,
        "timed",
        &[("segment.ms", "500"), ("retention.ms", "60000")],
    )
    .await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .create()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Five records an hour old, then five fresh ones once the first segment rolled.
    for _ in 0..5 {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to("timed")
                    .payload(b"old")
                    .timestamp(now - 3_600_000),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    wait_until(
        "the old records' segment to roll by time and expire",
        Duration::from_secs(20),
        || watermarks(&b, "timed").0 == 5,
    );
    for _ in 0..5 {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to("timed")
                    .payload(b"new")
                    .timestamp(now),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(watermarks(&b, "timed"), (5, 10), "fresh records are kept");
    assert!(
        s.metric("floe_segments_sealed_total").unwrap() >= 2.0,
        "segment.ms rolled the open segment"
    );
    assert_eq!(fetch_error(&b, "timed", 2), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_topic_configs_take_effect() {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let s = Standalone::start_with_config("[broker]\nretention_check_interval_ms = 200\n").unwrap();
    let b = s.bootstrap();
    create(&b, "altered", &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let value = vec![b'v'; 1000];
    let produce = |n: usize| {
        let producer = producer.clone();
        let value = value.clone();
        async move {
            for _ in 0..n {
                producer
                    .send(
                        FutureRecord::<[u8], [u8]>::to("altered").payload(&value),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
            }
        }
    };
    produce(50).await;
    assert_eq!(
        watermarks(&b, "altered"),
        (0, 50),
        "defaults: one segment, nothing deleted"
    );

    // AlterConfigs through librdkafka: small segments and a byte limit.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .create()
        .unwrap();
    let r = admin
        .alter_configs(
            &[AlterConfig::new(ResourceSpecifier::Topic("altered"))
                .set("segment.bytes", "10000")
                .set("retention.bytes", "30000")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    // IncrementalAlterConfigs with an invalid value: INVALID_CONFIG, and
    // the topic keeps its configs.
    {
        use kafka_protocol::messages::incremental_alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        use kafka_protocol::messages::{
            IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
        };
        let mut raw = RawClient::connect(&b).unwrap();
        let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("altered"))
                .with_configs(vec![AlterableConfig::default()
                    .with_name(StrBytes::from_static_str("segment.bytes"))
                    .with_config_operation(0)
                    .with_value(Some(StrBytes::from_static_str("-5")))]),
        ]);
        let r: IncrementalAlterConfigsResponse =
            raw.call(ApiKey::IncrementalAlterConfigs, 1, &req).unwrap();
        assert_eq!(
            r.responses[0].error_code, 40,
            "{:?}",
            r.responses[0].error_message
        );
    }
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic("altered")], &AdminOptions::new())
        .await
        .unwrap();
    let cfg = described[0].as_ref().unwrap();
    assert_eq!(
        cfg.get("segment.bytes")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("10000")
    );

    produce(100).await;
    // New segments roll at 10 KB and retention keeps about 30 KB.
    wait_until(
        "retention by the altered limit",
        Duration::from_secs(20),
        || watermarks(&b, "altered").0 >= 80,
    );
    assert!(s.metric("floe_segments_sealed_total").unwrap() >= 5.0);
}

/// A partition with little traffic gathers one tiny chunk per flush: its
/// open segment rolls after `segment_max_chunks` chunks (bounding what a
/// recovery after kill -9 reads), and every record stays readable. The
/// per-partition layout's rule (a WAL segment's list is paged and its
/// recovery reads no chunk header: it rolls by size and age only, as the
/// broker's `a_long_wal_segment_keeps_its_list_in_pages` shows), so the
/// layout is set whatever storage the suite runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_segment_rolls_after_segment_max_chunks() {
    let s = Standalone::start_with_config(
        "[broker]\nretention_check_interval_ms = 200\nchunk_linger_ms = 0\nsegment_max_chunks = 10\nchunk_layout = \"partition\"\n",
    )
    .unwrap();
    let b = s.bootstrap();
    create(&b, "trickle", &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // One record per request, one chunk each: 50 chunks.
    for i in 0..50 {
        let v = format!("r{i}");
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to("trickle").payload(v.as_bytes()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    wait_until(
        "the rolled segments to be sealed",
        Duration::from_secs(20),
        || s.metric("floe_segments_sealed_total").unwrap_or(0.0) >= 4.0,
    );
    assert_eq!(watermarks(&b, "trickle"), (0, 50));
    let got = floe_e2e::read_all(&b, "trickle", 1);
    let values: Vec<String> = got[&0]
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        .collect();
    assert_eq!(values, (0..50).map(|i| format!("r{i}")).collect::<Vec<_>>());
}
