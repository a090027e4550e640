//! Kafka transactions (KIP-98, KIP-447, KIP-890) against real clients:
//! librdkafka (the rdkafka crate) and kafka-python producing in
//! transactions that commit and abort, read back by read_committed and
//! read_uncommitted consumers; an open transaction holding the last stable
//! offset; consume-transform-produce with offsets sent to the transaction
//! across a kill -9 of the transformer; zombie fencing; bad input getting
//! Kafka's error codes with nothing written; and a cluster whose
//! coordinator's and data partitions' owners are killed and moved during a
//! stream of transactions (seeded; `FLOE_TXN_SEEDS` runs more).

use std::process::Command;
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, RawClient, Standalone};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

const T: Duration = Duration::from_secs(30);

fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python").to_string()
    })
}

fn txn_producer(bootstrap: &str, id: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .set("retry.backoff.ms", "50")
        .create()
        .unwrap()
}

async fn send(p: &FutureProducer, topic: &str, partition: i32, value: &str) {
    p.send(
        FutureRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(value),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// Every record of `topic` partition `p` a consumer of `isolation` sees,
/// until `until` records or `quiet` without one: (offset, value).
fn consume(
    bootstrap: &str,
    topic: &str,
    p: i32,
    isolation: &str,
    until: usize,
    quiet: Duration,
) -> Vec<(i64, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while out.len() < until && last.elapsed() < quiet {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push((
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
            ));
            last = Instant::now();
        }
    }
    out
}

/// ListOffsets for the latest offset of partition `p` under isolation
/// level `isolation` (0: the high watermark, 1: the last stable offset).
fn latest(addr: &str, topic: &str, p: i32, isolation: i8) -> i64 {
    use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut c = RawClient::connect(addr).unwrap();
    let r: ListOffsetsResponse = c
        .call(
            ApiKey::ListOffsets,
            4,
            &ListOffsetsRequest::default()
                .with_replica_id((-1).into())
                .with_isolation_level(isolation)
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(p)
                        .with_timestamp(-1)])]),
        )
        .unwrap();
    let pr = &r.topics[0].partitions[0];
    assert_eq!(pr.error_code, 0, "ListOffsets {topic}-{p}");
    pr.offset
}

fn values(v: &[(i64, String)]) -> Vec<&str> {
    v.iter().map(|(_, s)| s.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_aborted_transactions_read_back_by_isolation_level() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    create_topic(&b, "tx", 1).await;

    // librdkafka: commit, abort (flushed, so its records are in the log),
    // commit.
    let p = txn_producer(&b, "rd-1");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        send(&p, "tx", 0, &format!("rd-c{i}")).await;
    }
    p.commit_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        send(&p, "tx", 0, &format!("rd-a{i}")).await;
    }
    p.abort_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..2 {
        send(&p, "tx", 0, &format!("rd-d{i}")).await;
    }
    p.commit_transaction(T).unwrap();

    // An open transaction holds the last stable offset and hides its
    // records from read_committed until it ends.
    let hw_before = latest(&b, "tx", 0, 0);
    assert_eq!(latest(&b, "tx", 0, 1), hw_before, "nothing open yet");
    p.begin_transaction().unwrap();
    send(&p, "tx", 0, "rd-open").await;
    let open_at = hw_before;
    assert!(latest(&b, "tx", 0, 0) > open_at);
    assert_eq!(
        latest(&b, "tx", 0, 1),
        open_at,
        "the LSO stays at the open transaction's first offset"
    );
    let seen = consume(&b, "tx", 0, "read_committed", 100, Duration::from_secs(3));
    assert!(
        !values(&seen).contains(&"rd-open"),
        "an open transaction's record is hidden: {seen:?}"
    );

    // kafka-python, the same sequence, while librdkafka's transaction is
    // still open.
    let script = r#"
import sys
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers=sys.argv[1], transactional_id="py-1")
p.init_transactions()
p.begin_transaction()
for i in range(3): p.send("tx", b"py-c%d" % i, partition=0)
p.commit_transaction()
p.begin_transaction()
for i in range(3): p.send("tx", b"py-a%d" % i, partition=0)
p.flush()
p.abort_transaction()
p.begin_transaction()
for i in range(2): p.send("tx", b"py-d%d" % i, partition=0)
p.commit_transaction()
p.close()
print("ok")
"#;
    let out = Command::new(python())
        .args(["-c", script, &b])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "kafka-python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still held by librdkafka's open transaction.
    assert_eq!(latest(&b, "tx", 0, 1), open_at);
    p.commit_transaction(T).unwrap();
    let end = latest(&b, "tx", 0, 0);
    assert_eq!(latest(&b, "tx", 0, 1), end, "the LSO caught up");

    let committed = consume(&b, "tx", 0, "read_committed", 14, Duration::from_secs(10));
    let mut c = values(&committed);
    // The two producers' records interleave only where kafka-python wrote
    // during librdkafka's open transaction: compare as ordered per producer.
    let rd: Vec<&str> = c.iter().copied().filter(|v| v.starts_with("rd")).collect();
    let py: Vec<&str> = c.iter().copied().filter(|v| v.starts_with("py")).collect();
    assert_eq!(rd, ["rd-c0", "rd-c1", "rd-c2", "rd-d0", "rd-d1", "rd-open"]);
    assert_eq!(py, ["py-c0", "py-c1", "py-c2", "py-d0", "py-d1"]);
    assert_eq!(c.len(), 11, "no aborted record, no control record: {c:?}");
    let offsets: Vec<i64> = committed.iter().map(|(o, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in offset order");
    c.sort();

    let all = consume(&b, "tx", 0, "read_uncommitted", 17, Duration::from_secs(10));
    let all_values = values(&all);
    for a in ["rd-a0", "rd-a1", "rd-a2", "py-a0", "py-a1", "py-a2"] {
        assert!(all_values.contains(&a), "read_uncommitted sees {a}");
    }
    assert_eq!(all.len(), 17, "every data record, no control record");
    // Control records take offsets: the log has gaps only there.
    assert!(end > 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_fences_the_first_and_its_records_stay_invisible() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    create_topic(&b, "zombie", 1).await;
    let old = txn_producer(&b, "z-1");
    old.init_transactions(T).unwrap();
    old.begin_transaction().unwrap();
    send(&old, "zombie", 0, "old-1").await;

    let new = txn_producer(&b, "z-1");
    new.init_transactions(T).unwrap();
    new.begin_transaction().unwrap();
    send(&new, "zombie", 0, "new-1").await;

    // The zombie's next produce and its commit are refused as fenced.
    let r = old
        .send(
            FutureRecord::<(), str>::to("zombie")
                .partition(0)
                .payload("old-2"),
            Duration::from_secs(10),
        )
        .await;
    let produce_err = r.err().map(|(e, _)| e.to_string()).unwrap_or_default();
    let commit_err = old.commit_transaction(T).err().map(|e| e.to_string());
    let fenced = |m: &str| {
        let m = m.to_lowercase();
        m.contains("fenced") || m.contains("epoch")
    };
    assert!(
        fenced(&produce_err) || commit_err.as_deref().is_some_and(fenced),
        "the old producer is fenced: produce {produce_err:?}, commit {commit_err:?}"
    );
    assert!(commit_err.is_some(), "the zombie cannot commit");
    new.commit_transaction(T).unwrap();

    let seen = consume(
        &b,
        "zombie",
        0,
        "read_committed",
        10,
        Duration::from_secs(4),
    );
    assert_eq!(values(&seen), ["new-1"], "only the new producer's record");
    // The old one's first record was aborted by the fencing.
    let all = consume(
        &b,
        "zombie",
        0,
        "read_uncommitted",
        10,
        Duration::from_secs(4),
    );
    assert!(values(&all).contains(&"old-1"));
    assert!(!values(&all).contains(&"old-2"), "nothing after the fence");
}
