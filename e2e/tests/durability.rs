//! Invariant 2 (an acked record is never lost) and 3 (dense offsets, no
//! duplicates) across kill -9 of `floe standalone` during a produce stream.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_e2e::Standalone;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

fn read_all(bootstrap: &str, topic: &str, partitions: i32) -> HashMap<i32, Vec<(i64, Vec<u8>)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
        let (_, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        ends.insert(p, hi);
    }
    c.assign(&tpl).unwrap();
    let mut got: HashMap<i32, Vec<(i64, Vec<u8>)>> = HashMap::new();
    let total: i64 = ends.values().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (got.values().map(Vec::len).sum::<usize>() as i64) < total && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            got.entry(m.partition())
                .or_default()
                .push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_acks_all_stream_loses_no_acked_record() {
    let mut s = Standalone::start().unwrap();
    let b = s.bootstrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.send.max.retries", "0")
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    // Auto-create with the default single partition; make a second topic
    // with more partitions through the admin API.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
    let t = rdkafka::admin::NewTopic::new("dur", 3, rdkafka::admin::TopicReplication::Fixed(1));
    admin
        .create_topics([&t], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();

    let acked = Arc::new(AtomicUsize::new(0));
    let stream = {
        let producer = producer.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for batch in 0..400 {
                let mut futs = Vec::new();
                for j in 0..50 {
                    let i = batch * 50 + j;
                    let payload = format!("m{i}");
                    let rec = FutureRecord::<[u8], [u8]>::to("dur")
                        .partition(i % 3)
                        .payload(payload.as_bytes());
                    match producer.send_result(rec) {
                        Ok(f) => futs.push((payload, f)),
                        Err(_) => break,
                    }
                }
                let mut failed = futs.len() < 50;
                for (payload, f) in futs {
                    match f.await {
                        Ok(Ok(d)) => {
                            acked.fetch_add(1, Ordering::SeqCst);
                            results.push((d.partition, d.offset, payload));
                        }
                        _ => failed = true,
                    }
                }
                if failed {
                    break;
                }
            }
            results
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < 3000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.kill9().unwrap();
    let acked_records = stream.await.unwrap();
    assert!(
        acked_records.len() >= 3000,
        "the stream ran before the kill"
    );

    s.restart().unwrap();
    let log = read_all(&b, "dur", 3);
    let mut seen = HashSet::new();
    for (p, entries) in &log {
        for (i, (off, payload)) in entries.iter().enumerate() {
            assert_eq!(*off, i as i64, "partition {p}: offsets dense from 0");
            assert!(
                seen.insert(payload.clone()),
                "partition {p}: {} appears twice",
                String::from_utf8_lossy(payload)
            );
        }
    }
    for (p, off, payload) in &acked_records {
        let entry = log.get(p).and_then(|e| e.get(*off as usize));
        assert_eq!(
            entry.map(|(_, v)| v.as_slice()),
            Some(payload.as_bytes()),
            "acked {payload} at {p}/{off} is present after kill -9"
        );
    }
    assert!(
        s.log_text().contains("recovered after an unclean end"),
        "the restart took the recovery path"
    );

    // Producing continues after recovery (a new client: the old one is in
    // its reconnect back-off).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .create()
        .unwrap();
    let before: usize = log.values().map(Vec::len).sum();
    for i in 0..30 {
        let rec = FutureRecord::<[u8], [u8]>::to("dur")
            .partition(i % 3)
            .payload(b"after");
        producer.send(rec, Duration::from_secs(10)).await.unwrap();
    }
    let after = read_all(&b, "dur", 3);
    assert_eq!(after.values().map(Vec::len).sum::<usize>(), before + 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_takes_the_fast_path_and_keeps_everything() {
    let mut s = Standalone::start().unwrap();
    let b = s.bootstrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .create()
        .unwrap();
    for i in 0..100 {
        let p = format!("r{i}");
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to("clean").payload(p.as_bytes()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    s.restart().unwrap();
    let log = read_all(&b, "clean", 1);
    let values: Vec<String> = log[&0]
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..100).map(|i| format!("r{i}")).collect::<Vec<_>>()
    );
    assert!(s.log_text().contains("recovered after a clean release"));
    assert!(!s.log_text().contains("recovered after an unclean end"));
    // The released open segment was handed over unsealed (a release copies
    // nothing); the new owner consolidates it in the background, and the
    // log reads the same from the consolidated object after another restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !s.log_text().contains("sealed segment") {
        assert!(
            std::time::Instant::now() < deadline,
            "the handed-over segment was never sealed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.restart().unwrap();
    let again = read_all(&b, "clean", 1);
    assert_eq!(again[&0], log[&0]);
}
