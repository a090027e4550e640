//! Real Kafka clients against `floe standalone`: librdkafka (the `rdkafka`
//! crate, a current librdkafka) and Debian's kcat (librdkafka 2.0.2).
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use floe_e2e::Standalone;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let r = admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    assert!(r[0].is_ok(), "create {name}: {:?}", r[0]);
}

pub fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "false")
        .set("group.id", "unused");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

type Rec = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Vec<u8>)>,
    i64,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdkafka_round_trip_with_every_codec() {
    let s = Standalone::start().unwrap();
    let bootstrap = s.bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("rt-{codec}");
        create_topic(&bootstrap, &topic, 3, &[]).await;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("compression.codec", codec)
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let mut expected: HashMap<i32, Vec<Rec>> = HashMap::new();
        let mut acks = Vec::new();
        for i in 0..300i64 {
            let p = (i % 3) as i32;
            let key = (i % 7 != 0).then(|| format!("key-{i}").into_bytes());
            let value = (i % 11 != 0).then(|| {
                format!("value-{i}-")
                    .repeat((i % 13 + 1) as usize)
                    .into_bytes()
            });
            let headers: Vec<(String, Vec<u8>)> = if i % 3 == 0 {
                vec![
                    ("h1".into(), b"x".to_vec()),
                    ("idx".into(), i.to_string().into_bytes()),
                ]
            } else {
                vec![]
            };
            let ts = 1_700_000_000_000 + i * 1000;
            let mut oh = OwnedHeaders::new();
            for (k, v) in &headers {
                oh = oh.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut rec = FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(p)
                .timestamp(ts)
                .headers(oh);
            if let Some(k) = &key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &value {
                rec = rec.payload(v.as_slice());
            }
            acks.push(producer.send_result(rec).unwrap());
            expected
                .entry(p)
                .or_default()
                .push((key, value, headers, ts));
        }
        for (i, a) in acks.into_iter().enumerate() {
            let delivery = a.await.unwrap();
            assert!(
                delivery.is_ok(),
                "{codec}: record {i} not acked: {:?}",
                delivery.err()
            );
        }
        let c = consumer(&bootstrap, &[]);
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut got: HashMap<i32, Vec<(i64, Rec)>> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.values().map(Vec::len).sum::<usize>() < 300 && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.unwrap();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                let rec = (
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                    m.timestamp().to_millis().unwrap(),
                );
                got.entry(m.partition())
                    .or_default()
                    .push((m.offset(), rec));
            }
        }
        for p in 0..3 {
            let g = got.remove(&p).unwrap_or_default();
            let offsets: Vec<i64> = g.iter().map(|(o, _)| *o).collect();
            assert_eq!(
                offsets,
                (0..100).collect::<Vec<_>>(),
                "{codec}: partition {p} offsets dense from 0"
            );
            let recs: Vec<Rec> = g.into_iter().map(|(_, r)| r).collect();
            assert_eq!(
                recs, expected[&p],
                "{codec}: partition {p} content and order"
            );
        }
    }
}

fn kcat(args: &[&str], input: Option<&str>) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is installed (apt-get install kcat)");
    if let Some(i) = input {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn kcat_old_librdkafka_round_trip_with_every_codec() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kc-{codec}");
        let input: String = (0..200)
            .map(|i| format!("k{i}\tvalue number {i} {}\n", "x".repeat(i % 50)))
            .collect();
        // Auto-created on produce.
        kcat(
            &[
                "-P", "-b", &b, "-t", &topic, "-K", "\t", "-p", "0", "-z", codec, "-H", "app=floe",
                "-H", "n=1",
            ],
            Some(&input),
        );
        let out = kcat(
            &[
                "-C",
                "-b",
                &b,
                "-t",
                &topic,
                "-p",
                "0",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%k\t%s\t%h\t%o\n",
            ],
            None,
        );
        let expected: String = (0..200)
            .map(|i| {
                format!(
                    "k{i}\tvalue number {i} {}\tapp=floe,n=1\t{i}\n",
                    "x".repeat(i % 50)
                )
            })
            .collect();
        assert_eq!(out, expected, "{codec}");
    }
    let meta = kcat(&["-L", "-b", &b, "-t", "kc-zstd"], None);
    assert!(meta.contains("partition 0, leader 0"), "{meta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_time_and_long_poll_wakeup() {
    let mut s = Standalone::start().unwrap();
    let b = s.bootstrap();
    create_topic(&b, "lo", 1, &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .create()
        .unwrap();
    let t0 = 1_700_000_000_000i64;
    for i in 0..10i64 {
        let rec = FutureRecord::<[u8], [u8]>::to("lo")
            .partition(0)
            .timestamp(t0 + i * 1000)
            .payload(b"x");
        producer.send(rec, Duration::from_secs(10)).await.unwrap();
    }
    let check = |c: &BaseConsumer| {
        let (lo, hi) = c
            .fetch_watermarks("lo", 0, Duration::from_secs(10))
            .unwrap();
        assert_eq!((lo, hi), (0, 10), "earliest and latest");
        for (ts, want) in [
            (t0 + 3500, Offset::Offset(4)),
            (t0, Offset::Offset(0)),
            (t0 - 5, Offset::Offset(0)),
            (t0 + 9000, Offset::Offset(9)),
            (t0 + 99_000, Offset::End),
        ] {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset("lo", 0, Offset::Offset(ts))
                .unwrap();
            let r = c.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
            assert_eq!(
                r.find_partition("lo", 0).unwrap().offset(),
                want,
                "timestamp {ts}"
            );
        }
    };
    check(&consumer(&b, &[]));
    // After a clean restart the data lives in a sealed segment: same answers.
    s.restart().unwrap();
    check(&consumer(&b, &[]));

    // A consumer at the end waits in a long poll and wakes on the produce.
    let c = consumer(&b, &[("fetch.wait.max.ms", "10000")]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("lo", 0, Offset::Offset(10))
        .unwrap();
    c.assign(&tpl).unwrap();
    assert!(c.poll(Duration::from_millis(1500)).is_none());
    let fetches_before = s
        .metric("floe_proxy_kafka_requests_total{api=\"Fetch\"}")
        .unwrap();
    assert!(c.poll(Duration::from_millis(2000)).is_none());
    let fetches_idle = s
        .metric("floe_proxy_kafka_requests_total{api=\"Fetch\"}")
        .unwrap()
        - fetches_before;
    assert!(
        fetches_idle <= 2.0,
        "an idle long poll is not a busy poll: {fetches_idle} fetches in 2 s"
    );
    let sent = Instant::now();
    let rec = FutureRecord::<[u8], [u8]>::to("lo")
        .partition(0)
        .payload(b"wake");
    producer.send(rec, Duration::from_secs(10)).await.unwrap();
    let m = loop {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            break m.unwrap();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(8),
            "the waiting fetch did not wake up"
        );
    };
    assert_eq!((m.offset(), m.payload()), (10, Some(&b"wake"[..])));
    assert!(
        sent.elapsed() < Duration::from_secs(8),
        "woke after {:?}, before the 10 s max wait",
        sent.elapsed()
    );
}
