//! Compacted topics (issue 21): `cleanup.policy` and the compaction
//! settings as Kafka clients set and read them (librdkafka's and
//! kafka-python's admin clients, DescribeConfigs with its sources), bad
//! values refused with INVALID_CONFIG, KIP-467's refusal of keyless records
//! as librdkafka reports it record by record, and the compactor: 200,000
//! records over 1,000 keys read back as each key's last value at original
//! offsets, tombstones kept until delete.retention.ms and gone after, and
//! `compact,delete` still trimmed by retention.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::Duration;

use floe_e2e::Standalone;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python").to_string()
    })
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

fn opts() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_topics_are_created_described_and_validated_by_kafka_clients() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    let a = admin(&b);

    // librdkafka: a compacted topic with settings, and bad values refused.
    let t = NewTopic::new("connect-configs", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.cleanable.dirty.ratio", "0.2")
        .set("delete.retention.ms", "1000");
    let r = a.create_topics(&[t], &opts()).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    for (name, value) in [
        ("cleanup.policy", "compacted"),
        ("min.cleanable.dirty.ratio", "1.5"),
        ("max.compaction.lag.ms", "0"),
    ] {
        let t = NewTopic::new("bad-config", 1, TopicReplication::Fixed(1)).set(name, value);
        let r = a.create_topics(&[t], &opts()).await.unwrap();
        match &r[0] {
            Err((_, code)) => assert_eq!(*code, RDKafkaErrorCode::InvalidConfig, "{name}={value}"),
            Ok(_) => panic!("{name}={value} was accepted"),
        }
    }
    // IncrementalAlterConfigs turns a topic compact,delete.
    let t = NewTopic::new("cdc", 1, TopicReplication::Fixed(1));
    assert!(a.create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    let alter =
        AlterConfig::new(ResourceSpecifier::Topic("cdc")).set("cleanup.policy", "compact,delete");
    let r = a.alter_configs(&[alter], &opts()).await.unwrap();
    assert!(r[0].is_ok(), "{r:?}");

    // kafka-python: creates one, reads the others' configs with sources,
    // gets INVALID_CONFIG with a message for a bad policy.
    let script = r#"
import sys
from kafka.admin import KafkaAdminClient, NewTopic, ConfigResource, ConfigResourceType
from kafka.errors import InvalidConfigurationError
a = KafkaAdminClient(bootstrap_servers=sys.argv[1])
a.create_topics([NewTopic("schemas", 1, 1, topic_configs={"cleanup.policy": "compact"})])
try:
    a.create_topics([NewTopic("bad-py", 1, 1, topic_configs={"cleanup.policy": "shred"})])
    print("bad accepted")
except InvalidConfigurationError as e:
    print("invalid", "cleanup.policy" in str(e))
for topic in ["schemas", "connect-configs", "cdc"]:
    r = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy", "min.cleanable.dirty.ratio", "delete.retention.ms"])], config_filter="all")
    for name, c in r["topic"][topic].items():
        print(topic, name, c["value"], c["config_source"], c["config_type"])
"#;
    let out = Command::new(python())
        .args(["-c", script, &b])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kafka-python: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"invalid True"), "{text}");
    // Sources: the topic's own setting or Kafka's default; types as Kafka's.
    for want in [
        "schemas cleanup.policy compact DYNAMIC_TOPIC_CONFIG LIST",
        "schemas min.cleanable.dirty.ratio 0.5 DEFAULT_CONFIG DOUBLE",
        "connect-configs cleanup.policy compact DYNAMIC_TOPIC_CONFIG LIST",
        "connect-configs min.cleanable.dirty.ratio 0.2 DYNAMIC_TOPIC_CONFIG DOUBLE",
        "connect-configs delete.retention.ms 1000 DYNAMIC_TOPIC_CONFIG LONG",
        "cdc cleanup.policy compact,delete DYNAMIC_TOPIC_CONFIG LIST",
        "cdc delete.retention.ms 86400000 DEFAULT_CONFIG LONG",
    ] {
        assert!(lines.contains(&want), "{want:?} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_on_a_compacted_topic_are_refused_record_by_record() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    let t = NewTopic::new("keyed", 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    assert!(admin(&b).create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    // One batch: a long linger.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "200")
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap();
    // Two keyless records among keyed ones: librdkafka marks the records
    // the broker names INVALID_RECORD and the rest of the batch
    // INVALID_DIFFERENT_RECORD (with a single record error it reports the
    // partition's INVALID_RECORD for every record of the batch).
    let keys = [Some("k1"), None, Some("k2"), None];
    let mut sends = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let value = format!("v{i}");
        let mut r = FutureRecord::<str, str>::to("keyed")
            .partition(0)
            .payload(&value);
        if let Some(k) = k {
            r = r.key(*k);
        }
        sends.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
    }
    let mut codes = Vec::new();
    for f in sends {
        match f.await.unwrap() {
            Ok(_) => codes.push(None),
            Err((e, _)) => codes.push(e.rdkafka_error_code()),
        }
    }
    assert_eq!(
        codes,
        vec![
            Some(RDKafkaErrorCode::InvalidDifferentRecord),
            Some(RDKafkaErrorCode::InvalidRecord),
            Some(RDKafkaErrorCode::InvalidDifferentRecord),
            Some(RDKafkaErrorCode::InvalidRecord),
        ],
        "the keyless records are named; the others of their batch are not written"
    );
    // Keyed records alone are taken.
    let d = p
        .send(
            FutureRecord::to("keyed")
                .partition(0)
                .key("k3")
                .payload("v3"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    assert_eq!(d.offset, 0, "nothing of the refused batch was written");
    // A topic that is not compacted takes keyless records.
    floe_e2e::create_topic(&b, "plain", 1).await;
    p.send(
        FutureRecord::<(), str>::to("plain")
            .partition(0)
            .payload("no key"),
        Duration::from_secs(10),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// Everything a consumer reads from the start of partition 0: (offset,
/// key, value), until `quiet` passes without a record.
fn read_from_start(
    bootstrap: &str,
    topic: &str,
    quiet: Duration,
) -> Vec<(i64, String, Option<String>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while last.elapsed() < quiet {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                m.payload().map(|v| String::from_utf8_lossy(v).to_string()),
            ));
            last = std::time::Instant::now();
        }
    }
    out
}

fn metric(s: &Standalone, name: &str) -> f64 {
    s.metric(name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_last_value_of_every_key() {
    const N: usize = 200_000;
    const KEYS: usize = 1_000;
    let s = Standalone::start_with_config(
        "[broker]\nretention_check_interval_ms = 300\nsegment_max_chunks = 16\n",
    )
    .unwrap();
    let b = s.bootstrap();
    let t = NewTopic::new("latest", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "262144")
        .set("min.cleanable.dirty.ratio", "0.01")
        // Long enough that the first read below (after the passes, on a
        // loaded machine) still finds the tombstones.
        .set("delete.retention.ms", "15000");
    assert!(admin(&b).create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    // Key k gets values k-0, k-1, ... in turn; the last 10 keys end with a
    // tombstone.
    let mut futures = Vec::with_capacity(N);
    for i in 0..N {
        let k = format!("k{:04}", i % KEYS);
        let v = format!("{k}-{}", i / KEYS);
        futures.push(
            p.send_result(FutureRecord::to("latest").partition(0).key(&k).payload(&v))
                .map_err(|(e, _)| e)
                .unwrap(),
        );
    }
    for f in futures {
        f.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    for k in 0..10 {
        p.send(
            FutureRecord::<str, str>::to("latest")
                .partition(0)
                .key(&format!("k{k:04}")),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    // Some more records so the tombstones' segment is sealed too.
    for i in 0..5_000 {
        let k = format!("k{:04}", 500 + i % 100);
        p.send_result(
            FutureRecord::to("latest")
                .partition(0)
                .key(&k)
                .payload(&format!("{k}-late")),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let originals: std::collections::HashSet<i64> = (0..(N as i64 + 10 + 5_000)).collect();

    // Compaction ran: far fewer records than written, and the tombstones
    // are still there (delete.retention.ms has not passed for them).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&s, "floe_compaction_dropped_records_total") < (N / 2) as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction: {}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let check = |records: &[(i64, String, Option<String>)], tombstones: bool| {
        let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offset order");
        assert!(
            offsets.iter().all(|o| originals.contains(o)),
            "original offsets only"
        );
        let mut last: std::collections::HashMap<&str, Option<&str>> = Default::default();
        for (_, k, v) in records {
            last.insert(k, v.as_deref());
        }
        for k in 0..KEYS {
            let key = format!("k{k:04}");
            let want_last = if k < 10 {
                None
            } else if (500..600).contains(&k) {
                Some(format!("{key}-late"))
            } else {
                Some(format!(
                    "{key}-{}",
                    (N - 1 - ((KEYS - 1 - k) % KEYS)) / KEYS
                ))
            };
            match (&want_last, last.get(key.as_str())) {
                (None, Some(None)) if tombstones => {}
                (None, None) if !tombstones => {}
                (Some(w), Some(Some(v))) => assert_eq!(w, v, "{key}"),
                (w, got) => {
                    panic!("{key}: want {w:?}, got {got:?} (tombstones kept: {tombstones})")
                }
            }
        }
    };
    let before = read_from_start(&b, "latest", Duration::from_secs(3));
    assert!(before.len() < N / 2, "compacted: {} records", before.len());
    check(&before, true);
    // Past delete.retention.ms the tombstones go too.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let after = read_from_start(&b, "latest", Duration::from_secs(2));
        if after.iter().all(|r| r.2.is_some()) {
            check(&after, false);
            // Nothing changes any more: kafka-python reads the same.
            kafka_python_reads_to_the_end(&b, &after);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tombstones were never dropped"
        );
    }
}

/// Kafka Connect's KafkaBasedLog reads a compacted topic the way this
/// script does: end offsets first, then poll until the position reaches
/// them. kafka-python must see exactly the records librdkafka saw
/// (`expected`), its position must land on the end offset although the
/// offsets have gaps, and a seek into a compacted-away offset must resume
/// at the next surviving record.
fn kafka_python_reads_to_the_end(bootstrap: &str, expected: &[(i64, String, Option<String>)]) {
    let script = r#"
import sys, time
from kafka import KafkaConsumer, TopicPartition
tp = TopicPartition("latest", 0)
c = KafkaConsumer(bootstrap_servers=sys.argv[1], enable_auto_commit=False, max_partition_fetch_bytes=1048576)
c.assign([tp])
c.seek_to_beginning(tp)
end = c.end_offsets([tp])[tp]
got = []
deadline = time.time() + 60
while c.position(tp) < end and time.time() < deadline:
    for recs in c.poll(timeout_ms=500).values():
        for r in recs:
            got.append("%d %s %s" % (r.offset, r.key.decode(), "-" if r.value is None else r.value.decode()))
print("end", end, "position", c.position(tp), "records", len(got))
for g in got:
    print("rec", g)
gap = int(sys.argv[2])
c.seek(tp, gap)
first = None
while first is None and time.time() < deadline:
    for recs in c.poll(timeout_ms=500).values():
        if recs and first is None:
            first = recs[0].offset
print("seek", gap, "first", first)
"#;
    // A compacted-away offset: the first hole between surviving offsets.
    let gap = expected
        .windows(2)
        .find(|w| w[1].0 > w[0].0 + 1)
        .map(|w| (w[0].0 + 1, w[1].0))
        .expect("a compacted topic has gaps");
    let out = Command::new(python())
        .args(["-c", script, bootstrap, &gap.0.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kafka-python: {}{}",
        &text[..text.len().min(2000)],
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(' ').collect();
    let end: i64 = head[1].parse().unwrap();
    assert_eq!(
        head[3], head[1],
        "position reaches the end offset: {head:?}"
    );
    assert!(end > expected.last().unwrap().0, "{head:?}");
    let got: Vec<String> = lines
        .clone()
        .filter_map(|l| l.strip_prefix("rec ").map(str::to_string))
        .collect();
    let want: Vec<String> = expected
        .iter()
        .map(|(o, k, v)| format!("{o} {k} {}", v.as_deref().unwrap_or("-")))
        .collect();
    assert_eq!(got.len(), want.len(), "kafka-python record count");
    assert!(got == want, "kafka-python reads what librdkafka read");
    let seek = lines.find(|l| l.starts_with("seek ")).unwrap();
    assert_eq!(
        seek,
        format!("seek {} first {}", gap.0, gap.1),
        "a seek into a compacted-away offset resumes at the next record"
    );
}

/// `compact,delete`: compacted, and old segments still go by retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_delete_also_drops_by_retention() {
    let s = Standalone::start_with_config(
        "[broker]\nretention_check_interval_ms = 300\nsegment_max_chunks = 16\n",
    )
    .unwrap();
    let b = s.bootstrap();
    let t = NewTopic::new("both", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact,delete")
        .set("segment.bytes", "65536")
        .set("retention.ms", "3000");
    assert!(admin(&b).create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..20_000 {
        let k = format!("k{}", i % 100);
        p.send_result(
            FutureRecord::to("both")
                .partition(0)
                .key(&k)
                .payload(&format!("{i}")),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    // Retention moves the log start past the old segments.
    let mut start = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while start == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention never applied; log:\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        use rdkafka::consumer::Consumer;
        start = c
            .fetch_watermarks("both", 0, Duration::from_secs(5))
            .unwrap()
            .0;
    }
    assert!(start > 0, "records older than retention.ms are gone");
    assert!(metric(&s, "floe_segments_deleted_total") >= 1.0);
}

/// What the producer of the fault test knows of one record.
#[derive(Clone, Debug, PartialEq)]
struct Acked {
    key: String,
    /// None: a tombstone.
    value: Option<String>,
}

/// One read of the whole partition from its start: the records seen and
/// the high watermark the read went up to.
struct Scan {
    hw: i64,
    records: Vec<(i64, String, Option<String>)>,
}

/// Read partition 0 of `topic` from the start up to its high watermark
/// at the time of the call (None when it cannot within the time).
fn scan(bootstrap: &str, topic: &str) -> Option<Scan> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "compaction-scan")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()
        .ok()?;
    let (_, hw) = c.fetch_watermarks(topic, 0, Duration::from_secs(5)).ok()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        // Nothing more for a while: everything below the high watermark
        // was read (its last offsets may be compacted away).
        if last.elapsed() > Duration::from_secs(3) {
            return Some(Scan { hw, records });
        }
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            last = std::time::Instant::now();
            if m.offset() >= hw {
                return Some(Scan { hw, records });
            }
            records.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                m.payload().map(|v| String::from_utf8_lossy(v).to_string()),
            ));
            if m.offset() == hw - 1 {
                return Some(Scan { hw, records });
            }
        }
        let position = c
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, 0).map(|e| e.offset()));
        if let Some(rdkafka::Offset::Offset(o)) = position {
            if o >= hw {
                return Some(Scan { hw, records });
            }
        }
    }
    None
}

/// Check one scan against what was acked: records where they were acked,
/// in order; every offset missing below the high watermark a record that
/// compaction may drop (a later record of its key exists, or it is a
/// tombstone); every key's latest record below the high watermark present
/// (unless a tombstone that may have expired). Returns the offsets the
/// scan shows gone.
fn check_scan(
    seed: u64,
    n: usize,
    s: &Scan,
    acked: &std::collections::BTreeMap<i64, Acked>,
) -> std::collections::BTreeSet<i64> {
    let offsets: Vec<i64> = s.records.iter().map(|r| r.0).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "seed {seed} scan {n}: offsets out of order"
    );
    let mut gone = std::collections::BTreeSet::new();
    let mut next = 0;
    let seen: std::collections::HashSet<i64> = offsets.iter().copied().collect();
    // The last offset of each key below the scan's high watermark, among
    // the acked records and the ones the scan saw.
    let mut latest: std::collections::HashMap<&str, i64> = Default::default();
    for (o, a) in acked.range(..s.hw) {
        latest.insert(&a.key, *o);
    }
    for (o, k, v) in &s.records {
        if let Some(a) = acked.get(o) {
            assert_eq!(
                (&a.key, &a.value),
                (k, v),
                "seed {seed} scan {n}: offset {o} holds another record than was acked"
            );
        }
        let l = latest.entry(k).or_insert(*o);
        *l = (*l).max(*o);
    }
    for (o, _, _) in &s.records {
        for hole in next..*o {
            gone.insert(hole);
        }
        next = o + 1;
    }
    for hole in &gone {
        let Some(a) = acked.get(hole) else {
            panic!("seed {seed} scan {n}: a hole at offset {hole}, which was never acked");
        };
        assert!(
            a.value.is_none() || latest.get(a.key.as_str()).is_some_and(|l| l > hole),
            "seed {seed} scan {n}: offset {hole} ({a:?}) is gone but is its key's latest record"
        );
    }
    for (k, l) in &latest {
        let a = acked.get(l);
        if seen.contains(l) || *l >= next || a.is_some_and(|a| a.value.is_none()) {
            continue;
        }
        panic!("seed {seed} scan {n}: key {k}'s latest record at {l} ({a:?}) is lost");
    }
    gone
}

async fn compaction_under_faults(seed: u64) {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    const TOPIC: &str = "changelog";
    const KEYS: usize = 200;
    let secs = std::env::var("FLOE_COMPACTION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = floe_e2e::Cluster::start_with(
        3,
        1,
        4_000,
        "segment_max_chunks = 16\n[proxy]\nlease_ttl_ms = 3000\n",
    )
    .unwrap();
    cluster.add_proxy().unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let bootstrap = cluster.proxy_bootstrap();
    let brokers = cluster.bootstrap();
    let t = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "32768")
        .set("segment.ms", "1500")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "3000");
    let r = admin(&bootstrap)
        .create_topics(&[t], &opts())
        .await
        .unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();

    // Scans from the start, all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scans: Arc<Mutex<Vec<Scan>>> = Default::default();
    let scanner = {
        let (stop, scans, bootstrap) = (stop.clone(), scans.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(s) = scan(&bootstrap, TOPIC) {
                    scans.lock().unwrap().push(s);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };

    let mut acked: BTreeMap<i64, Acked> = BTreeMap::new();
    let mut failed = 0;
    let mut faults = Vec::new();
    let started = std::time::Instant::now();
    let mut next_fault =
        std::time::Instant::now() + Duration::from_millis(rng.random_range(2_000..4_000));
    let mut kinds: Vec<u32> = Vec::new();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        if std::time::Instant::now() >= next_fault {
            next_fault =
                std::time::Instant::now() + Duration::from_millis(rng.random_range(3_000..5_000));
            if kinds.is_empty() {
                kinds = if rng.random_bool(0.5) {
                    vec![0, 1]
                } else {
                    vec![1, 0]
                };
            }
            let kind = kinds.pop().unwrap();
            if let Some(b) = floe_e2e::leaders(&brokers, TOPIC)[&0] {
                if kind == 0 {
                    let i = b as usize - 1;
                    cluster.brokers[i].stop_with("-KILL").unwrap();
                    cluster.brokers[i].start_nowait().unwrap();
                    faults.push(format!("kill -9 broker {b}"));
                } else {
                    let to = (b % 3) + 1;
                    let r = match cluster.move_partition(TOPIC, 0, to) {
                        Ok(epoch) => format!("epoch {epoch}"),
                        Err(e) => e.to_string(),
                    };
                    faults.push(format!("move from {b} to {to}: {r}"));
                }
            }
        }
        // A round of 200 records over the keys, some of them tombstones.
        let mut round = Vec::new();
        for _ in 0..200 {
            let key = format!("key-{:03}", rng.random_range(0..KEYS));
            let value = (!rng.random_ratio(1, 20)).then(|| format!("{key}={i}"));
            i += 1;
            let mut rec = FutureRecord::<String, String>::to(TOPIC)
                .partition(0)
                .key(&key);
            if let Some(v) = &value {
                rec = rec.payload(v);
            }
            let f = producer.send_result(rec).map_err(|(e, _)| e).unwrap();
            round.push((key, value, f));
        }
        // A steady load rather than a flood: a few thousand records a second.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (key, value, f) in round {
            match f.await.unwrap() {
                Ok(d) => {
                    assert_eq!(d.partition, 0);
                    let prev = acked.insert(d.offset, Acked { key, value });
                    assert!(
                        prev.is_none(),
                        "seed {seed}: offset {} acked twice",
                        d.offset
                    );
                }
                Err((e, _)) => {
                    if failed == 0 {
                        eprintln!(
                            "seed {seed}: at {:?} a record failed: {e}",
                            started.elapsed()
                        );
                    }
                    failed += 1
                }
            }
        }
    }
    eprintln!(
        "seed {seed}: {} records acked, {failed} failed, faults: {faults:#?}",
        acked.len()
    );
    assert!(acked.len() > 2_000, "seed {seed}: the load made progress");
    if failed > 0 {
        let _ = std::fs::write("/tmp/compaction-fault-logs.txt", cluster.logs());
    }
    assert_eq!(
        failed, 0,
        "seed {seed}: an idempotent producer with a long timeout loses nothing"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    scanner.join().unwrap();
    // The last segment, rolled idle by segment.ms, is compacted only once
    // a record follows it (as Kafka's active segment): one more.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let d = producer
        .send(
            FutureRecord::to(TOPIC)
                .partition(0)
                .key("sentinel")
                .payload("end"),
            Duration::from_secs(60),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    acked.insert(
        d.offset,
        Acked {
            key: "sentinel".into(),
            value: Some("end".into()),
        },
    );

    // Every scan made under faults against the model, and nothing a scan
    // saw gone comes back in a later one.
    let scans = std::mem::take(&mut *scans.lock().unwrap());
    assert!(scans.len() >= 3, "seed {seed}: only {} scans", scans.len());
    let mut gone = std::collections::BTreeSet::new();
    for (n, s) in scans.iter().enumerate() {
        for (o, _, _) in &s.records {
            assert!(
                !gone.contains(o),
                "seed {seed} scan {n}: offset {o} came back"
            );
        }
        gone.extend(check_scan(seed, n, s, &acked));
    }
    let compacted = gone.len();

    // Once the last segment is sealed and compacted and the tombstones'
    // delete.retention.ms has passed: exactly each key's last value.
    let mut last: BTreeMap<&str, (i64, &Option<String>)> = BTreeMap::new();
    for (o, a) in &acked {
        last.insert(&a.key, (*o, &a.value));
    }
    let mut want: Vec<(i64, String, Option<String>)> = last
        .iter()
        .filter(|(_, (_, v))| v.is_some())
        .map(|(k, (o, v))| (*o, k.to_string(), (*v).clone()))
        .collect();
    want.sort();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut n = scans.len();
    loop {
        let Some(s) = scan(&bootstrap, TOPIC) else {
            assert!(
                std::time::Instant::now() < deadline,
                "seed {seed}: no final read"
            );
            continue;
        };
        for (o, _, _) in &s.records {
            assert!(
                !gone.contains(o),
                "seed {seed} scan {n}: offset {o} came back"
            );
        }
        gone.extend(check_scan(seed, n, &s, &acked));
        n += 1;
        if s.records == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: compaction never reached each key's last value: {} records, want {}; logs:\n{}",
            s.records.len(),
            want.len(),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "seed {seed}: {n} scans, {compacted} offsets compacted away under faults, final {} records",
        want.len()
    );

    // floectl shows the partition's compaction; the owner exports the
    // same dirty ratio as a metric.
    let (code, out, err) = cluster.floectl(0, &["partition", TOPIC, "0", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let c = &d["compaction"];
    assert_eq!(c["cleanup_policy"], "compact", "{out}");
    // Every sealed segment compacted but the last, the sentinel's, which
    // nothing follows (it waits, as Kafka's active segment).
    let sealed = c["sealed_segments"].as_u64().unwrap();
    assert!(sealed >= 2, "{out}");
    assert_eq!(
        c["compacted_segments"].as_u64().unwrap(),
        sealed - 1,
        "{out}"
    );
    let last = d["segments"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|s| s["sealed"] == true)
        .unwrap();
    assert_eq!(last["compactions"], 0, "{out}");
    let dirty = c["dirty_ratio"].as_f64().unwrap();
    assert!(dirty > 0.0 && dirty < 0.2, "{out}");
    assert!(
        d["segments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["compactions"].as_u64().unwrap() >= 2),
        "segments compacted more than once: {out}"
    );
    let (code, table, _) = cluster.floectl(0, &["partition", TOPIC, "0"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("compaction (compact): ") && table.contains("COMPACTED"),
        "{table}"
    );
    let meta = cluster.meta().await.unwrap();
    let owner = floe_e2e::Cluster::partition_state(&meta, TOPIC, 0)
        .await
        .unwrap()
        .expect("an owner")
        .broker_id;
    // The owner's next pass (each housekeeping tick) measures it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = cluster.brokers[owner as usize - 1]
            .http("/metrics")
            .unwrap();
        let ratio = metrics
            .lines()
            .find(|l| l.starts_with("floe_compaction_dirty_ratio{"))
            .map(str::to_string);
        let value = ratio
            .as_deref()
            .and_then(|r| r.rsplit(' ').next()?.parse::<f64>().ok());
        if value.is_some_and(|v| (v - dirty).abs() < 1e-9) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "broker {owner}'s dirty ratio: {ratio:?}; logs:\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Compaction while a producer writes, the partition moves and its owner
/// (which runs the compactor) is killed with SIGKILL, checked against a
/// model of what was acked. Seeds: `FLOE_COMPACTION_SEEDS` (e.g. `1-10`),
/// seconds of load each: `FLOE_COMPACTION_SECS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_survives_load_moves_and_kill9_of_the_owner() {
    let spec = std::env::var("FLOE_COMPACTION_SEEDS").unwrap_or_else(|_| "1".to_string());
    let seeds: Vec<u64> = match spec.split_once('-') {
        Some((a, b)) => (a.trim().parse().unwrap()..=b.trim().parse().unwrap()).collect(),
        None => spec.split(',').map(|s| s.trim().parse().unwrap()).collect(),
    };
    for seed in seeds {
        compaction_under_faults(seed).await;
    }
}

/// `compaction_max_bytes_per_sec`: a broker's compaction reads no faster
/// than its rate (each pass reads its segments twice, once to index the
/// keys and once to rewrite them), waiting when it would; the lower bound
/// on time holds however slow the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_reads_no_faster_than_its_byte_rate() {
    const RATE: f64 = 512.0 * 1024.0;
    let s = Standalone::start_with_config(
        "[broker]\nretention_check_interval_ms = 300\nsegment_max_chunks = 16\n\
         compaction_max_bytes_per_sec = 524288\n",
    )
    .unwrap();
    let b = s.bootstrap();
    let t = NewTopic::new("paced", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "131072")
        .set("min.cleanable.dirty.ratio", "0.01")
        // Nothing compacts until the records are all in (they all carry
        // one timestamp): one pass, whose first window (the pacer's one
        // burst) is a small part of it.
        .set("min.compaction.lag.ms", "8000");
    assert!(admin(&b).create_topics(&[t], &opts()).await.unwrap()[0].is_ok());
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // Rounds of 250 records, so that chunks and segments stay small
    // (under 200 KB).
    let value = "v".repeat(200);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for round in 0..40 {
        for i in 0..250 {
            let k = format!("k{}", (round * 250 + i) % 500);
            p.send_result(
                FutureRecord::to("paced")
                    .partition(0)
                    .key(&k)
                    .payload(&value)
                    .timestamp(t0),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        }
        p.flush(Duration::from_secs(30)).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metric(&s, "floe_compaction_input_bytes_total") < 1_000_000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction did not get through the segments: {}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let input = metric(&s, "floe_compaction_input_bytes_total");
    let secs = metric(&s, "floe_compaction_seconds_total");
    let throttled = metric(&s, "floe_compaction_throttled_seconds_total");
    // Two reads of every input byte, the first window (a segment) free.
    let paced = 2.0 * input - 256.0 * 1024.0;
    assert!(
        paced / secs <= RATE * 1.05,
        "compaction read {:.0} B/s, over its rate of {RATE} B/s ({input} bytes in {secs:.2} s)",
        paced / secs
    );
    assert!(
        throttled > 1.0,
        "the reads waited for the rate: {throttled} s"
    );
}
