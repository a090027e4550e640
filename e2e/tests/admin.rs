//! The controller's admin API through `floectl` on a real cluster: JSON
//! output matches what etcd holds, moves take effect, and requests without
//! the bearer token, for unknown topics or to an unreachable controller get
//! clear errors and distinct exit codes; over TLS and mutual TLS only the
//! trusted get through.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use floe_e2e::{Cluster, ADMIN_TOKEN};
use prost::Message;

fn parse(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A broker's entry in `floectl status -o json`.
fn broker_status(c: &Cluster, id: i64) -> Option<serde_json::Value> {
    let (code, out, err) = c.floectl(0, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    parse(&out)["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .cloned()
}

/// Partition → owning broker, from the states owners publish in etcd.
async fn owners(c: &Cluster, topic: &str, partitions: i32) -> BTreeMap<i32, i32> {
    let meta = c.meta().await.unwrap();
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        if let Some(s) = Cluster::partition_state(&meta, topic, p).await.unwrap() {
            if s.state == "writing" {
                out.insert(p, s.broker_id);
            }
        }
    }
    out
}

/// Wait until every partition of `topic` is written by a broker; the owners.
async fn all_writing(c: &Cluster, topic: &str, partitions: i32) -> BTreeMap<i32, i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = owners(c, topic, partitions).await;
        if now.len() == partitions as usize {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "partitions of {topic} not writing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floectl_reports_the_cluster_as_etcd_has_it_and_moves_partitions() {
    let mut c = Cluster::start(3, 1, 3_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    floe_e2e::create_topic(&c.proxy_bootstrap(), "ops", 6).await;
    all_writing(&c, "ops", 6).await;

    // status -o json against etcd.
    let (code, out, err) = c.floectl(0, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let s = parse(&out);
    let meta = c.meta().await.unwrap();
    use floe_meta::MetadataStore;
    let (brokers, _) = meta
        .range(&floe_meta::keys::brokers_prefix())
        .await
        .unwrap();
    let mut etcd_ids: Vec<i64> = brokers
        .iter()
        .map(|kv| {
            floe_meta::schema::BrokerRecord::decode(kv.value.clone())
                .unwrap()
                .broker_id as i64
        })
        .collect();
    etcd_ids.sort();
    let mut ids: Vec<i64> = s["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, etcd_ids);
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(s["topics"], 1);
    assert_eq!(s["partitions"], 6);
    assert_eq!(s["proxies"].as_array().unwrap().len(), 1);
    assert_eq!(
        s["proxies"][0]["address"],
        format!("127.0.0.1:{}", c.proxies[0].port.unwrap())
    );
    assert_eq!(s["controllers"][0]["leader"], true);
    assert_eq!(s["storage_targets"].as_array().unwrap().len(), 1);
    assert_eq!(s["partition_states"][0]["state"], "writing");
    assert_eq!(s["partition_states"][0]["partitions"], 6);
    let owned: i64 = s["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["partitions"].as_i64().unwrap())
        .sum();
    assert_eq!(owned, 6);

    let (code, table, _) = c.floectl(0, &["status"]);
    assert_eq!(code, 0);
    println!("{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["writing", "6"]),
        "{table}"
    );

    // topics and topic -o json against etcd.
    let (code, out, err) = c.floectl(0, &["topics", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let t = parse(&out);
    assert_eq!(t["topics"][0]["name"], "ops");
    assert_eq!(t["topics"][0]["partitions"], 6);
    let (code, out, err) = c.floectl(0, &["topic", "describe", "ops", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let d = parse(&out);
    let now = owners(&c, "ops", 6).await;
    for p in d["partitions"].as_array().unwrap() {
        let i = p["partition"].as_i64().unwrap() as i32;
        assert_eq!(
            p["owner"].as_i64().unwrap() as i32,
            now[&i],
            "partition {i}"
        );
        assert_eq!(p["state"], "writing");
        assert_eq!(p["assigned"], p["owner"]);
    }
    // The human table names every partition.
    let (code, out, _) = c.floectl(0, &["topic", "describe", "ops"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("PARTITION"), "{out}");
    assert_eq!(out.lines().count(), 7, "{out}");

    // A move through floectl: answered once the new owner writes.
    let from = now[&0];
    let to = from % 3 + 1;
    let (code, out, err) = c.floectl(
        0,
        &["move", "ops", "0", "--to", &to.to_string(), "-o", "json"],
    );
    assert_eq!(code, 0, "{err}");
    let m = parse(&out);
    assert!(m["epoch"].as_i64().unwrap() > 0);
    assert_eq!(
        owners(&c, "ops", 6).await[&0],
        to,
        "etcd shows the new owner"
    );
    let (_, out, _) = c.floectl(0, &["topic", "describe", "ops", "-o", "json"]);
    assert_eq!(parse(&out)["partitions"][0]["owner"], to);

    // Errors: unknown topic, unknown broker, bad token, no token, no controller.
    let (code, _, err) = c.floectl(0, &["topic", "describe", "nope"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("unknown topic"), "{err}");
    let (code, _, err) = c.floectl(0, &["move", "ops", "1", "--to", "99"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("99"), "{err}");
    let (code, _, err) = c.floectl(0, &["--token", "wrong", "status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("token"), "{err}");
    let out = std::process::Command::new(floe_e2e::floectl_bin())
        .args(["--controller", &c.admin_url(0), "status"])
        .env_remove("FLOE_ADMIN_TOKEN")
        .env_remove("FLOE_ADMIN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(c.controllers[0]
        .log_text()
        .contains("admin request rejected: missing or wrong bearer token"));
    let out = std::process::Command::new(floe_e2e::floectl_bin())
        .args(["--controller", "http://127.0.0.1:1", "status"])
        .env("FLOE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the controller"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_broker_is_emptied_under_load_and_stopped_with_nothing_lost() {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let mut c = Cluster::start(3, 1, 3_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.proxy_bootstrap();
    floe_e2e::create_topic(&b, "drain", 6).await;
    let on_2 = all_writing(&c, "drain", 6)
        .await
        .values()
        .filter(|b| **b == 2)
        .count();
    assert!(on_2 > 0, "broker 2 writes some partitions before the drain");

    // A producer through the proxy for the whole drain.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Default::default();
    let failed = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("d{i:06}");
                match producer
                    .send(
                        FutureRecord::<(), _>::to("drain")
                            .partition((i % 6) as i32)
                            .payload(&payload),
                        Duration::from_secs(60),
                    )
                    .await
                {
                    Ok(d) => acked.lock().unwrap().push((d.partition, d.offset, payload)),
                    Err((e, _)) => failed.lock().unwrap().push(e.to_string()),
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let (code, out, err) = c.floectl(0, &["broker", "drain", "2", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("drained"), "{out}");
    println!(
        "drained broker 2 ({on_2} partitions) in {:?}",
        started.elapsed()
    );
    assert!(!owners(&c, "drain", 6).await.values().any(|b| *b == 2));
    // The drain is an operation: one move per partition broker 2 wrote,
    // each done to a broker that writes it now; the record in etcd agrees.
    let id = err
        .split("operation ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no operation id in: {err}"))
        .to_string();
    assert!(id.starts_with("dr-"), "{id}");
    let op = drain_op(&c, &id);
    assert_eq!(op["kind"], "drain-broker");
    assert_eq!(op["state"], "done");
    assert_eq!(op["broker"], 2);
    assert_eq!(op["total"], on_2 as i64, "{op}");
    assert_eq!(op["done"], on_2 as i64, "{op}");
    let now = owners(&c, "drain", 6).await;
    for m in op["moves"].as_array().unwrap() {
        assert_eq!(m["from"], 2);
        assert_eq!(m["status"], "done");
        let p = m["partition"].as_i64().unwrap() as i32;
        assert_eq!(m["to"].as_i64().unwrap() as i32, now[&p], "{m}");
    }
    {
        use floe_meta::MetadataStore;
        let meta = c.meta().await.unwrap();
        let kv = meta
            .get(&floe_meta::keys::operation(&id))
            .await
            .unwrap()
            .expect("the operation in etcd");
        let rec = floe_meta::schema::OperationRecord::decode(kv.value).unwrap();
        assert_eq!((rec.state.as_str(), rec.broker), ("done", 2));
        assert_eq!(rec.moves.len(), on_2);
    }
    let (_, list, _) = c.floectl(0, &["op", "list", "-o", "json"]);
    assert!(list.contains(&id), "{list}");
    // Draining it again starts nothing new.
    let (code, out, err) = c.floectl(0, &["broker", "drain", "2", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(again["operation"]["state"], "done");
    assert_eq!(again["operation"]["total"], 0, "{again}");
    let b2 = broker_status(&c, 2).expect("broker 2 in status");
    assert_eq!(b2["partitions"], 0);
    assert_eq!(b2["drained"], true);
    // Nothing left on it: kill -9 costs nothing.
    c.brokers[1].stop_with("-KILL").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Enough load to mean something whatever the store's latency (one
    // send at a time: on S3 each waits for a WAL object).
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() <= 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "sends failed: {failed:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the load ran ({} records)", acked.len());
    let log = floe_e2e::read_all(&b, "drain", 6);
    assert_eq!(log.values().map(Vec::len).sum::<usize>(), acked.len());
    for (p, o, payload) in &acked {
        let rec = log[p].iter().find(|(off, _)| off == o);
        assert_eq!(
            rec.map(|r| String::from_utf8_lossy(&r.1).to_string()),
            Some(payload.clone()),
            "partition {p} offset {o}"
        );
    }
    // Undrained (after it is back), it takes partitions again. Its old
    // registration lapses with its lease (3 s) first.
    c.wait_broker_gone(2, Duration::from_secs(30))
        .await
        .unwrap();
    c.brokers[1].restart().unwrap();
    let (code, _, err) = c.floectl(0, &["broker", "undrain", "2"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if broker_status(&c, 2)
            .is_some_and(|b| b["drained"] == false && b["partitions"].as_i64().unwrap() > 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker 2 got nothing back; controller log:\n{}",
            c.controllers[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floectl_creates_alters_and_deletes_topics_and_shows_segments_as_etcd_has_them() {
    use floe_meta::schema::{SegmentRecord, TopicRecord};
    use floe_meta::{keys, MetadataStore};
    let mut c = Cluster::start(2, 1, 3_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let meta = c.meta().await.unwrap();

    let (code, out, err) = c.floectl(
        0,
        &[
            "topic",
            "create",
            "made",
            "--partitions",
            "3",
            "--config",
            "segment.bytes=65536",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let t = parse(&out);
    let rec =
        TopicRecord::decode(meta.get(&keys::topic("made")).await.unwrap().unwrap().value).unwrap();
    assert_eq!(t["partitions"], 3);
    assert_eq!(rec.partitions, 3);
    assert_eq!(
        rec.configs.get("segment.bytes").map(String::as_str),
        Some("65536")
    );
    assert_eq!(
        t["id"].as_str().unwrap(),
        floe_common::Uuid::from_slice(&rec.id)
            .unwrap()
            .simple()
            .to_string()
    );
    // Kafka's validation: bad names, counts and configs; duplicates.
    for (args, code_wanted, text) in [
        (vec!["topic", "create", "made"], 1, "already exists"),
        (vec!["topic", "create", "bad/name"], 1, "InvalidArgument"),
        (
            vec!["topic", "create", "z", "--partitions", "0"],
            1,
            "partitions",
        ),
        (
            vec!["topic", "create", "z", "--config", "retention.ms=soon"],
            1,
            "retention.ms",
        ),
        (
            vec!["topic", "create", "z", "--config", "no.such=1"],
            1,
            "no.such",
        ),
        (vec!["topic", "delete", "__consumer_offsets"], 1, "internal"),
        (vec!["topic", "delete", "nope"], 4, "unknown topic"),
    ] {
        let (code, _, err) = c.floectl(0, &args);
        assert_eq!(code, code_wanted, "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
    }

    // The partitions get owners; produce enough to seal segments.
    let b = c.proxy_bootstrap();
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payload = vec![b'x'; 4096];
    for i in 0..100 {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to("made")
                    .partition(0)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("record {i}: {e}"));
    }
    // The high watermark the owner reports with its load: what Kafka's
    // ListOffsets says, within a report interval (5 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let d = loop {
        let (code, out, err) = c.floectl(0, &["partition", "made", "0", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let d = parse(&out);
        if d["partition"]["high_watermark"] == 100 {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "high watermark not reported: {d}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(d["partition"]["high_watermark_age_ms"].as_u64().unwrap() < 15_000);
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", "hw-check")
        .create()
        .unwrap();
    let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(
        &consumer,
        "made",
        0,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(high, 100);
    let (code, out, err) = c.floectl(0, &["topic", "describe", "made", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["partitions"][0]["high_watermark"], 100);
    let (kvs, _) = meta
        .range(&keys::segments_prefix(floe_common::PartitionId::new(
            floe_common::Uuid::from_slice(&rec.id).unwrap(),
            0,
        )))
        .await
        .unwrap();
    let sealed: Vec<SegmentRecord> = kvs
        .into_iter()
        .map(|kv| SegmentRecord::decode(kv.value).unwrap())
        .collect();
    assert!(
        sealed.len() >= 3,
        "400 KB in 64 KiB segments: {}",
        sealed.len()
    );
    let shown: Vec<&serde_json::Value> = d["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["sealed"] == true)
        .collect();
    // Sealed segments shown are those in etcd (more may seal in between).
    assert!(shown.len() <= sealed.len() && shown.len() + 2 >= sealed.len());
    for s in &shown {
        let base = s["base_offset"].as_i64().unwrap();
        let r = sealed
            .iter()
            .find(|r| r.base_offset == base)
            .expect("in etcd");
        assert_eq!(s["end_offset"].as_i64().unwrap(), r.end_offset);
        assert_eq!(
            s["replica_set"].as_array().unwrap().len(),
            r.replica_set.len()
        );
        assert_eq!(s["replica_set"][0], r.replica_set[0].as_str());
    }
    assert_eq!(d["partition"]["state"], "writing");
    let (code, table, _) = c.floectl(0, &["partition", "made", "0"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("REPLICAS") && table.contains("t0"),
        "{table}"
    );

    // Alter: set one, remove another; invalid values refused.
    let (code, out, err) = c.floectl(
        0,
        &[
            "topic",
            "alter",
            "made",
            "--set",
            "retention.ms=60000",
            "--delete",
            "segment.bytes",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(parse(&out)["configs"]["retention.ms"], "60000");
    let rec =
        TopicRecord::decode(meta.get(&keys::topic("made")).await.unwrap().unwrap().value).unwrap();
    assert_eq!(
        rec.configs.get("retention.ms").map(String::as_str),
        Some("60000")
    );
    assert!(!rec.configs.contains_key("segment.bytes"));
    let (code, _, err) = c.floectl(0, &["topic", "alter", "made", "--set", "segment.ms=-5"]);
    assert_eq!(code, 1, "{err}");

    // Delete: gone from etcd, partitions' metadata removed by the controller.
    let (code, _, err) = c.floectl(0, &["topic", "delete", "made"]);
    assert_eq!(code, 0, "{err}");
    assert!(meta.get(&keys::topic("made")).await.unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (left, _) = meta
            .range(&keys::topic_partitions_prefix(
                floe_common::Uuid::from_slice(&rec.id).unwrap(),
            ))
            .await
            .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} partition keys left",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, out, _) = c.floectl(0, &["topics", "-o", "json"]);
    assert!(!out.contains("\"made\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_broker_hands_off_its_partitions_exits_and_frees_its_id() {
    use floe_meta::{keys, MetadataStore};
    let mut c = Cluster::start(3, 1, 3_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    floe_e2e::create_topic(&c.proxy_bootstrap(), "dec", 6).await;
    assert!(all_writing(&c, "dec", 6).await.values().any(|b| *b == 3));
    let (code, out, err) = c.floectl(0, &["broker", "decommission", "3", "--wait", "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["operation"]["kind"], "decommission-broker", "{r}");
    assert_eq!(r["operation"]["state"], "done", "{r}");
    assert_eq!(r["operation"]["broker"], 3, "{r}");
    assert!(r["operation"]["total"].as_i64().unwrap() > 0, "{r}");
    // The process exited by itself, cleanly.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.brokers[2].is_running() {
        assert!(Instant::now() < deadline, "broker 3 still running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.brokers[2]
        .log_text()
        .contains("decommissioned: no partition left here; exiting"));
    let meta = c.meta().await.unwrap();
    assert!(meta.get(&keys::broker(3)).await.unwrap().is_none());
    assert!(
        meta.get(&keys::drained(3)).await.unwrap().is_none(),
        "the id is free again"
    );
    let now = owners(&c, "dec", 6).await;
    assert_eq!(now.len(), 6);
    assert!(now.values().all(|b| *b == 1 || *b == 2), "{now:?}");
    let (code, _, err) = c.floectl(0, &["broker", "decommission", "9"]);
    assert_eq!(code, 4, "{err}");
}

/// `floectl op show ID -o json`.
fn drain_op(c: &Cluster, id: &str) -> serde_json::Value {
    let (code, out, err) = c.floectl(0, &["op", "show", id, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cancelled_midway_undrains_the_broker_and_its_waiter_fails() {
    use floe_meta::{keys, MetadataStore};
    // Leases of 10 s: broker 3, frozen, holds its partitions (their new
    // owners wait for its release or its lease) while the drain is
    // cancelled.
    let c = Cluster::start(3, 1, 10_000).unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    floe_e2e::create_topic(&c.bootstrap(), "cx", 6).await;
    let on_3 = all_writing(&c, "cx", 6)
        .await
        .values()
        .filter(|b| **b == 3)
        .count();
    assert!(on_3 > 0);
    c.brokers[2].signal("-STOP").unwrap();
    let (code, out, err, op) = std::thread::scope(|s| {
        let waiter = s.spawn(|| c.floectl(0, &["broker", "drain", "3", "--wait"]));
        // The running drain, as op list shows it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let id = loop {
            let (_, out, _) = c.floectl(0, &["op", "list", "-o", "json"]);
            let l: serde_json::Value = serde_json::from_str(&out).unwrap();
            let running = l["operations"].as_array().and_then(|ops| {
                ops.iter()
                    .find(|o| o["kind"] == "drain-broker" && o["state"] == "running")
                    .cloned()
            });
            if let Some(o) = running {
                assert_eq!(o["broker"], 3);
                assert_eq!(o["total"], on_3 as i64, "{o}");
                break o["id"].as_str().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "no running drain in {out}");
            std::thread::sleep(Duration::from_millis(50));
        };
        let (code, _, err) = c.floectl(0, &["op", "cancel", &id]);
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = waiter.join().unwrap();
        (code, out, err, drain_op(&c, &id))
    });
    assert_eq!(
        code, 1,
        "the waiting drain fails when cancelled: {out}{err}"
    );
    assert!(err.contains("ended cancelled"), "{err}");
    assert_eq!(op["state"], "cancelled", "{op}");
    assert!(
        op["detail"]
            .as_str()
            .unwrap()
            .contains("undrained on cancel"),
        "{op}"
    );
    assert_eq!(
        op["done"].as_i64().unwrap() + op["skipped"].as_i64().unwrap(),
        on_3 as i64,
        "every move finished one way or the other: {op}"
    );
    let meta = c.meta().await.unwrap();
    assert!(
        meta.get(&keys::drained(3)).await.unwrap().is_none(),
        "cancelling the drain undrained the broker"
    );
    assert!(meta
        .get(&keys::operation_cancel(op["id"].as_str().unwrap()))
        .await
        .unwrap()
        .is_none());
    c.brokers[2].signal("-CONT").unwrap();
    let b3 = broker_status(&c, 3).expect("broker 3 still registered");
    assert_eq!(b3["drained"], false);
    // Undrain of a broker with a running drain cancels it the same way.
    let (code, out, err) = c.floectl(0, &["broker", "drain", "1", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let started: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = started["operation"]["id"].as_str().unwrap().to_string();
    let (code, _, err) = c.floectl(0, &["broker", "undrain", "1"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let op = drain_op(&c, &id);
        if op["state"] != "running" {
            // Done if every move landed before the undrain was seen.
            assert!(op["state"] == "cancelled" || op["state"] == "done", "{op}");
            break;
        }
        assert!(Instant::now() < deadline, "the drain still runs: {op}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(meta.get(&keys::drained(1)).await.unwrap().is_none());
}

/// floectl against controller 0 until it answers (the admin listener comes
/// up just after the health endpoint a restart waits for).
fn floectl_when_up(c: &Cluster, args: &[&str]) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c.floectl(0, args);
        if r.0 != 2 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_speaks_tls_and_mutual_tls_and_refuses_what_it_cannot_trust() {
    let mut c = Cluster::start(1, 1, 3_000).unwrap();
    let pki = floe_e2e::TestPki::generate(c.dir()).unwrap();
    let (ca, cert, key) = (
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );

    // A key file that is not there stops the controller at startup, clearly.
    let missing = c.dir().join("missing.key").display().to_string();
    let out = std::process::Command::new(floe_e2e::floe_bin())
        .args([
            "controller",
            "--etcd",
            &c.etcd.url(),
            "--http-listen",
            &format!("127.0.0.1:{}", floe_e2e::free_port()),
            "--admin-listen",
            &format!("127.0.0.1:{}", floe_e2e::free_port()),
            "--admin-tls-cert",
            &pki.server_cert.display().to_string(),
            "--admin-tls-key",
            &missing,
        ])
        .env("FLOE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without its key: {err}");
    assert!(
        err.contains("reading the admin TLS key") && err.contains("missing.key"),
        "{err}"
    );

    c.restart_controllers_with(&[
        "--admin-tls-cert",
        &pki.server_cert.display().to_string(),
        "--admin-tls-key",
        &pki.server_key.display().to_string(),
    ])
    .unwrap();
    assert!(c.admin_url(0).starts_with("https://"));
    c.wait_leader(Duration::from_secs(20)).unwrap();

    // Trusting the CA: the same answers as over plaintext.
    let (code, out, err) = floectl_when_up(&c, &["--ca-cert", &ca, "status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let ids: Vec<i64> = parse(&out)["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1]);
    let log = c.controllers[0].log_text();
    assert!(log.contains("security=\"token over TLS\""), "{log}");
    // Not trusting it: refused before any request, and floectl says why.
    let (code, _, err) = c.floectl(0, &["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot reach the controller") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plaintext to the TLS port gets nothing.
    let plain = c.admin_url(0).replace("https://", "http://");
    let (code, _, err) = c.floectl(0, &["--controller", &plain, "status"]);
    assert_eq!(code, 2, "plaintext answered by a TLS listener: {err}");
    assert!(err.contains("use an https:// --controller"), "{err}");
    // CA flags with a plaintext URL are a usage error.
    let (code, _, err) = c.floectl(0, &["--controller", &plain, "--ca-cert", &ca, "status"]);
    assert_eq!(code, 1);
    assert!(err.contains("need an https:// controller"), "{err}");
    // TLS does not replace the token.
    let (code, _, err) = c.floectl(0, &["--ca-cert", &ca, "--token", "wrong", "status"]);
    assert_eq!(code, 3, "{err}");

    // Mutual TLS: a client certificate signed by the CA is required too.
    c.restart_controllers_with(&["--admin-tls-client-ca", &ca])
        .unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let with_cert = [
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let (code, out, err) =
        floectl_when_up(&c, &[&with_cert[..], &["topics", "-o", "json"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(parse(&out).is_array() || parse(&out).is_object(), "{out}");
    let log = c.controllers[0].log_text();
    assert!(log.contains("security=\"token over mutual TLS\""), "{log}");
    let (code, _, err) = c.floectl(0, &["--ca-cert", &ca, "status"]);
    assert_eq!(code, 2, "answered a client without a certificate: {err}");
    assert!(err.contains("pass --client-cert and --client-key"), "{err}");
    // The server's own certificate is not a client certificate (serverAuth
    // only), and a key without its certificate is a usage error.
    let server_as_client = [
        "--ca-cert",
        &ca,
        "--client-cert",
        &pki.server_cert.display().to_string(),
        "--client-key",
        &pki.server_key.display().to_string(),
        "status",
    ];
    let (code, _, err) = c.floectl(0, &server_as_client);
    assert_eq!(
        code, 2,
        "a serverAuth-only cert accepted as a client: {err}"
    );
    assert!(err.contains("made for client authentication"), "{err}");
    let (code, _, err) = c.floectl(0, &["--ca-cert", &ca, "--client-key", &key, "status"]);
    assert_eq!(code, 2, "clap usage error: {err}");
    // With the certificate, the token is still checked.
    let (code, _, err) = c.floectl(
        0,
        &[&with_cert[..], &["--token", "wrong", "status"]].concat(),
    );
    assert_eq!(code, 3, "{err}");
}
