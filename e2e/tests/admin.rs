//! The controller's admin API through `floectl` on a real cluster: JSON
//! output matches what etcd holds, moves take effect, and requests without
//! the bearer token, for unknown topics or to an unreachable controller get
//! clear errors and distinct exit codes.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floectl_reports_the_cluster_as_etcd_has_it_and_moves_partitions() {
    let mut c = Cluster::start(3, 1, 3_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    floe_e2e::create_topic(&c.proxy_bootstrap(), "ops", 6).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while owners(&c, "ops", 6).await.len() < 6 {
        assert!(Instant::now() < deadline, "partitions not writing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    let (code, out, err) = c.floectl(0, &["topic", "ops", "-o", "json"]);
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
    let (code, out, _) = c.floectl(0, &["topic", "ops"]);
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
    let (_, out, _) = c.floectl(0, &["topic", "ops", "-o", "json"]);
    assert_eq!(parse(&out)["partitions"][0]["owner"], to);

    // Errors: unknown topic, unknown broker, bad token, no token, no controller.
    let (code, _, err) = c.floectl(0, &["topic", "nope"]);
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while owners(&c, "drain", 6).await.len() < 6 {
        assert!(Instant::now() < deadline, "partitions not writing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let on_2 = owners(&c, "drain", 6)
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
    let b2 = broker_status(&c, 2).expect("broker 2 in status");
    assert_eq!(b2["partitions"], 0);
    assert_eq!(b2["drained"], true);
    // Nothing left on it: kill -9 costs nothing.
    c.brokers[1].stop_with("-KILL").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    tokio::time::sleep(Duration::from_secs(4)).await;
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
