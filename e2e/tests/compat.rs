//! Client compatibility as a new user meets it: a consumer whose position
//! is past the end of the log learns it (OFFSET_OUT_OF_RANGE) or resets by
//! its `auto.offset.reset`, with librdkafka (the `rdkafka` crate) and with
//! kafka-python, against `floe standalone`, through a proxy and directly
//! against a broker of a cluster.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, Cluster, Standalone};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

async fn produce(bootstrap: &str, topic: &str, values: &[String]) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .unwrap();
    for v in values {
        p.send(
            FutureRecord::<(), _>::to(topic).partition(0).payload(v),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    }
}

fn assigned_at(bootstrap: &str, topic: &str, reset: &str, offset: i64) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("oor-{reset}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", reset)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    c.assign(&tpl).unwrap();
    c
}

/// Poll until `want` says done, for at most 20 s; returns what was polled.
fn poll_until(
    c: &BaseConsumer,
    mut want: impl FnMut(&Result<(i64, String), KafkaError>) -> bool,
) -> Vec<Result<(i64, String), KafkaError>> {
    let until = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < until {
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map(|m| {
            (
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )
        });
        let done = want(&m);
        seen.push(m);
        if done {
            return seen;
        }
    }
    panic!("not seen within 20 s; polled {seen:?}");
}

/// Five records; consumers assigned at offset 50: `error` gets librdkafka's
/// auto-offset-reset error (it saw OFFSET_OUT_OF_RANGE from the server),
/// `earliest` reads the five, `latest` reads the next one produced.
async fn out_of_range(bootstrap: &str, topic: &str) {
    let values: Vec<String> = (0..5).map(|i| format!("v{i}")).collect();
    produce(bootstrap, topic, &values).await;

    let c = assigned_at(bootstrap, topic, "error", 50);
    let seen = poll_until(&c, |m| m.is_err());
    match seen.last().unwrap() {
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {}
        other => panic!("expected the out-of-range error, got {other:?} after {seen:?}"),
    }
    assert!(seen.iter().all(|m| m.is_err()), "no record: {seen:?}");
    drop(c);

    let c = assigned_at(bootstrap, topic, "earliest", 50);
    let mut got = Vec::new();
    poll_until(&c, |m| {
        if let Ok(r) = m {
            got.push(r.clone());
        }
        got.len() == 5
    });
    assert_eq!(
        got,
        (0..5).map(|i| (i, format!("v{i}"))).collect::<Vec<_>>(),
        "reset to the start, in order"
    );
    drop(c);

    // `latest`: reset to the end; records written from then on are read
    // (one more every 300 ms until one arrives: the reset's moment is the
    // client's). Record 5 + i holds "late{i}".
    let c = assigned_at(bootstrap, topic, "latest", 50);
    let until = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let first = loop {
        produce(bootstrap, topic, &[format!("late{i}")]).await;
        i += 1;
        if let Some(m) = c.poll(Duration::from_millis(300)) {
            let m = m.expect("no error with auto.offset.reset=latest");
            break (
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            );
        }
        assert!(
            Instant::now() < until,
            "nothing read after the reset to the end"
        );
    };
    assert!(first.0 >= 5, "reset to the end, not the start: {first:?}");
    assert_eq!(first.1, format!("late{}", first.0 - 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_end_gets_the_error_or_resets_on_standalone() {
    let s = Standalone::start().unwrap();
    create_topic(&s.bootstrap(), "oor", 1).await;
    out_of_range(&s.bootstrap(), "oor").await;
    kafka_python_out_of_range(&s.bootstrap(), "oor-py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_end_gets_the_error_or_resets_through_a_proxy_and_at_a_broker() {
    let mut c = Cluster::start(1, 1, 6_000).unwrap();
    c.add_proxy().unwrap();
    create_topic(&c.proxy_bootstrap(), "via-proxy", 1).await;
    out_of_range(&c.proxy_bootstrap(), "via-proxy").await;
    create_topic(&c.bootstrap(), "at-broker", 1).await;
    out_of_range(&c.bootstrap(), "at-broker").await;
    kafka_python_out_of_range(&c.proxy_bootstrap(), "via-proxy-py").await;
}

/// The Python interpreter of the virtualenv `scripts/test.sh` installs
/// kafka-python into (`FLOE_PYTHON`).
fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python");
        venv.to_string()
    })
}

/// kafka-python: with `auto_offset_reset='none'` a position past the end
/// raises OffsetOutOfRangeError; with `earliest` it resets and reads all.
async fn kafka_python_out_of_range(bootstrap: &str, topic: &str) {
    create_topic(bootstrap, topic, 1).await;
    let values: Vec<String> = (0..5).map(|i| format!("v{i}")).collect();
    produce(bootstrap, topic, &values).await;
    let script = r#"
import sys
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import OffsetOutOfRangeError
bootstrap, topic = sys.argv[1], sys.argv[2]
tp = TopicPartition(topic, 0)

c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="none",
                  enable_auto_commit=False, group_id=None)
c.assign([tp])
c.seek(tp, 50)
try:
    for _ in range(50):
        got = c.poll(timeout_ms=200)
        if got:
            print("unexpected records", got)
            sys.exit(1)
    print("no error raised")
    sys.exit(1)
except OffsetOutOfRangeError as e:
    print("out of range:", e)
c.close()

c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                  enable_auto_commit=False, group_id=None)
c.assign([tp])
c.seek(tp, 50)
values = []
for _ in range(100):
    for recs in c.poll(timeout_ms=200).values():
        values += [(r.offset, r.value.decode()) for r in recs]
    if len(values) >= 5:
        break
print("read", values)
assert values == [(i, "v%d" % i) for i in range(5)], values
c.close()
"#;
    let bootstrap = bootstrap.split(',').next().unwrap().to_string();
    let topic = topic.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg("-c")
            .arg(script)
            .arg(bootstrap)
            .arg(topic)
            .output()
            .expect("kafka-python's virtualenv (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kafka-python: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("out of range:"), "{stdout}");
    assert!(stdout.contains("read [(0, 'v0')"), "{stdout}");
}

/// DescribeTopicPartitions (KIP-966) page by page answers what Metadata
/// answers: a topic of 1,000 partitions on standalone, and a smaller one
/// through a proxy (whose leaders are proxies).
fn describe_matches_metadata(bootstrap: &str, topics: &[&str], limit: i32) -> usize {
    use floe_e2e::RawClient;
    use floe_protocol::kafka_protocol::messages::describe_topic_partitions_request::TopicRequest;
    use floe_protocol::kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use floe_protocol::kafka_protocol::messages::{
        ApiKey, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, MetadataRequest,
        MetadataResponse, TopicName,
    };
    use floe_protocol::kafka_protocol::protocol::StrBytes;
    let name = |t: &str| TopicName(StrBytes::from_string(t.to_string()));
    let mut raw = RawClient::connect(bootstrap.split(',').next().unwrap()).unwrap();
    let meta: MetadataResponse = raw
        .call(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(
                topics
                    .iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(name(t))))
                    .collect(),
            )),
        )
        .unwrap();
    let mut want: Vec<(String, i32, i32, i32)> = Vec::new();
    let mut sorted = meta.topics.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for t in &sorted {
        assert_eq!(t.error_code, 0);
        let mut ps: Vec<_> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    t.name.as_ref().unwrap().0.to_string(),
                    p.partition_index,
                    p.leader_id.0,
                    p.leader_epoch,
                )
            })
            .collect();
        ps.sort();
        want.extend(ps);
    }
    let mut req = DescribeTopicPartitionsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|t| TopicRequest::default().with_name(name(t)))
                .collect(),
        )
        .with_response_partition_limit(limit);
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let page: DescribeTopicPartitionsResponse =
            raw.call(ApiKey::DescribeTopicPartitions, 0, &req).unwrap();
        pages += 1;
        let n: usize = page.topics.iter().map(|t| t.partitions.len()).sum();
        assert!(n <= limit as usize, "a page of {n} over the limit {limit}");
        for t in &page.topics {
            assert_eq!(t.error_code, 0);
            let m = meta.topics.iter().find(|m| m.name == t.name).unwrap();
            assert_eq!(t.topic_id, m.topic_id);
            for p in &t.partitions {
                got.push((
                    t.name.as_ref().unwrap().0.to_string(),
                    p.partition_index,
                    p.leader_id.0,
                    p.leader_epoch,
                ));
            }
        }
        match page.next_cursor {
            Some(c) => req.cursor = Some(floe_protocol::responses::cursor_for_next_page(&c)),
            None => break,
        }
    }
    assert_eq!(got, want);
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_topic_partitions_pages_match_metadata() {
    let s = Standalone::start().unwrap();
    create_topic(&s.bootstrap(), "thousand", 1000).await;
    create_topic(&s.bootstrap(), "another", 5).await;
    let b = s.bootstrap();
    let pages = tokio::task::spawn_blocking(move || {
        describe_matches_metadata(&b, &["thousand", "another"], 300)
    })
    .await
    .unwrap();
    assert_eq!(pages, 4, "1,005 partitions by 300");

    let mut c = Cluster::start(1, 1, 6_000).unwrap();
    c.add_proxy().unwrap();
    create_topic(&c.proxy_bootstrap(), "paged", 12).await;
    let b = c.proxy_bootstrap();
    let pages = tokio::task::spawn_blocking(move || describe_matches_metadata(&b, &["paged"], 5))
        .await
        .unwrap();
    assert_eq!(pages, 3);
}
