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
