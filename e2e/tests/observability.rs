//! Observability as operators expect it (issue 22): logs as JSON for log
//! pipelines (`FLOE_LOG_FORMAT=json`), consumer lag per group and
//! partition in `/metrics`.

use std::time::{Duration, Instant};

use floe_e2e::{create_topic, Cluster, Standalone};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// `FLOE_LOG_FORMAT=json`: every line of the log is one JSON object with
/// a timestamp, a level, a target and the event's fields at the top
/// level; a bad value stops the process with a message naming the
/// variable.
#[test]
fn json_logs_are_one_object_a_line() {
    let s = Standalone::start_with_env("", &[], &[("FLOE_LOG_FORMAT", "json")]).unwrap();
    let text = s.log_text();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 3, "{text}");
    let mut started = false;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v.get(field).is_some(), "no {field}: {l}");
        }
        if v["message"] == "floe standalone started" {
            started = true;
            assert_eq!(v["level"], "INFO");
            assert!(
                v["listen"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.1:")),
                "fields flattened: {l}"
            );
        }
    }
    assert!(started, "the start-up line: {text}");
    drop(s);

    let out = std::process::Command::new(floe_e2e::floe_bin())
        .args(["standalone", "--help"])
        .env("FLOE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FLOE_LOG_FORMAT must be text or json, not \"xml\""),
        "{err}"
    );
}

async fn produce(bootstrap: &str, topic: &str, partition: i32, n: usize) {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in 0..n {
        p.send(
            FutureRecord::<(), String>::to(topic)
                .partition(partition)
                .payload(&format!("r{i}")),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
}

/// The lag of `group` on each partition of `topic` in a broker's
/// `/metrics` text.
fn lag_in(metrics: &str, group: &str, topic: &str) -> Vec<(i32, i64)> {
    let head = format!("floe_consumer_group_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"");
    let mut out: Vec<(i32, i64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&head))
        .filter_map(|rest| {
            let (p, v) = rest.split_once("\"} ")?;
            Some((p.parse().ok()?, v.trim().parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// Consumer lag, the first number a Kafka operator asks for: a group that
/// consumed everything and stopped shows lag 0, then grows by exactly the
/// records produced since, per partition, in the coordinator's /metrics
/// and in `floectl group NAME -o json` (which asks Kafka's own APIs, like
/// kafka-consumer-groups.sh --describe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_group_lags_by_exactly_the_records_produced_since() {
    let c = Cluster::start_with(1, 1, 3_000, "consumer_lag_interval_ms = 300\n").unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.bootstrap();
    create_topic(&b, "events", 2).await;
    produce(&b, "events", 0, 50).await;
    produce(&b, "events", 1, 50).await;

    // The group reads everything, commits, and stops.
    {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .set("group.id", "lagging")
            .set("client.id", "lag-reader")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&["events"]).unwrap();
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while n < 100 {
            assert!(Instant::now() < deadline, "read {n} of 100");
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                n += 1;
            }
        }
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    let wait_lag = |want: Vec<(i32, i64)>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = c.brokers[0].http("/metrics").unwrap();
            let got = lag_in(&m, "lagging", "events");
            if got == want {
                return m;
            }
            assert!(Instant::now() < deadline, "lag {got:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_lag(vec![(0, 0), (1, 0)]);

    produce(&b, "events", 0, 30).await;
    produce(&b, "events", 1, 7).await;
    let m = wait_lag(vec![(0, 30), (1, 7)]);
    assert!(
        m.contains("floe_consumer_group_committed_offset{group=\"lagging\",topic=\"events\",partition=\"0\"} 50"),
        "{m}"
    );
    let describe = || {
        let (code, out, err) = c.floectl(0, &["group", "lagging", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let d: serde_json::Value = serde_json::from_str(&out).unwrap();
        let lags: Vec<(i64, i64, i64, i64)> = d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["partition"].as_i64().unwrap(),
                    p["committed_offset"].as_i64().unwrap(),
                    p["high_watermark"].as_i64().unwrap(),
                    p["lag"].as_i64().unwrap(),
                )
            })
            .collect();
        (d, lags)
    };
    let (d, lags) = describe();
    assert_eq!(lags, vec![(0, 50, 80, 30), (1, 50, 57, 7)], "{d}");
    assert_eq!(d["total_lag"], 37, "{d}");
    assert_eq!(d["state"], "Empty", "{d}");

    // Still stopped: ten more records, ten more lag.
    produce(&b, "events", 0, 10).await;
    let m = wait_lag(vec![(0, 40), (1, 7)]);
    let (_, lags) = describe();
    assert_eq!(lags, vec![(0, 50, 90, 40), (1, 50, 57, 7)]);
    // The time lag: the oldest unconsumed record waits since the produce.
    let secs: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "floe_consumer_group_lag_seconds{group=\"lagging\",topic=\"events\",partition=\"0\"} ",
            )
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0.0, "time lag {secs}");
    let (code, table, _) = c.floectl(0, &["group", "lagging"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("LOG-END-OFFSET") && table.contains("total lag 47"),
        "{table}"
    );
}

/// A number from a Prometheus text line starting with `head` (0 when
/// absent).
fn value(metrics: &str, head: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(head))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The controller's /metrics: leadership, reconcile passes, assignments
/// by kind (a new topic's partitions are assigned, a floectl move is a
/// move with its duration), operations, and its etcd requests; brokers
/// time their etcd requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_exports_leadership_reconciles_moves_and_etcd_latency() {
    let c = Cluster::start(2, 1, 3_000).unwrap();
    let leader = c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.bootstrap();
    create_topic(&b, "watched", 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        if let Some(Some(o)) = floe_e2e::leaders(&b, "watched").get(&0) {
            break *o;
        }
        assert!(Instant::now() < deadline, "no owner");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to = 3 - owner;
    let (code, _, err) = c.floectl(0, &["move", "watched", "0", "--to", &to.to_string()]);
    assert_eq!(code, 0, "{err}");
    let m = c.controllers[leader].http("/metrics").unwrap();
    assert_eq!(value(&m, "floe_controller_leader "), 1.0, "{m}");
    assert!(value(&m, "floe_controller_reconciles_total ") >= 1.0, "{m}");
    assert!(
        value(&m, "floe_controller_reconcile_duration_seconds_count ") >= 1.0,
        "{m}"
    );
    assert!(
        value(&m, "floe_controller_assignments_total{kind=\"assign\"} ") >= 2.0,
        "the new topic's partitions were assigned: {m}"
    );
    assert_eq!(
        value(&m, "floe_controller_assignments_total{kind=\"move\"} "),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(&m, "floe_controller_move_duration_seconds_count "),
        1.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "floe_metadata_request_duration_seconds_count{op=\"range\"} "
        ) >= 1.0,
        "{m}"
    );
    assert!(
        value(
            &m,
            "floe_metadata_request_duration_seconds_count{op=\"txn\"} "
        ) >= 1.0,
        "{m}"
    );
    let bm = c.brokers[0].http("/metrics").unwrap();
    assert!(
        value(
            &bm,
            "floe_metadata_request_duration_seconds_count{op=\"txn\"} "
        ) >= 1.0,
        "brokers time their etcd requests: {bm}"
    );
}
