//! Observability as operators expect it (issue 22): logs as JSON for log
//! pipelines (`FLOE_LOG_FORMAT=json`), consumer lag per group and
//! partition in `/metrics` and `floectl group`, the controller's and the
//! metadata store's metrics, the alert rules under promtool, the dashboard
//! against a real Prometheus scraping a cluster, and OpenTelemetry traces
//! from proxy to broker to storage received by a test OTLP collector.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

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
    // Partition-level records and bytes in, by topic name.
    for (p, n) in [(0, 80.0), (1, 57.0)] {
        assert_eq!(
            value(
                &m,
                &format!("floe_partition_records_in_total{{topic=\"events\",partition=\"{p}\"}} ")
            ),
            n,
            "{m}"
        );
        assert!(
            value(
                &m,
                &format!("floe_partition_bytes_in_total{{topic=\"events\",partition=\"{p}\"}} ")
            ) > n * 2.0
        );
    }
    assert!(
        m.contains("floe_consumer_group_committed_offset{group=\"lagging\",topic=\"events\",partition=\"0\"} 50"),
        "{m}"
    );
    let describe = || {
        let (code, out, err) = c.floectl(0, &["group", "describe", "lagging", "-o", "json"]);
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
    let (code, out, _) = c.floectl(0, &["group", "list", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"lagging\""), "{out}");
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

/// JSON log lines written inside a traced span carry its trace and span
/// ids, the same the collector receives for that span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_of_their_span() {
    let (endpoint, collector) = otlp::start().await;
    let s = Standalone::start_with_env(
        "",
        &[],
        &[
            ("FLOE_LOG_FORMAT", "json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .unwrap();
    create_topic(&s.bootstrap(), "logged", 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = s.log_text();
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["message"] == "recovered after a clean release"
                    && v["partition"].as_str().is_some_and(|p| p.ends_with("/0"))
                    && v.get("trace_id").is_some()
            });
        if let Some(v) = line {
            let (trace, span) = (
                v["trace_id"].as_str().unwrap().to_string(),
                v["span_id"].as_str().unwrap().to_string(),
            );
            assert_eq!((trace.len(), span.len()), (32, 16), "{v}");
            let spans = collector.spans.lock().unwrap().clone();
            if spans.iter().any(|s| {
                s.name == "partition.recover"
                    && hex(&s.trace_id) == trace
                    && hex(&s.span_id) == span
            }) {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no recovery log line with the ids of its span: {}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

/// A real Prometheus (Debian's `prometheus`) scraping a running cluster —
/// controller, brokers, proxy, each labelled with its `floe_role` as the
/// Helm chart's ServiceMonitor labels them — while clients produce,
/// consume, commit, compact and a partition moves: every query of the
/// Grafana dashboard (deploy/grafana/floe-dashboard.json) returns series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_cluster_and_every_dashboard_query_returns_series() {
    let prometheus = std::env::var("FLOE_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let mut c = Cluster::start_with(2, 1, 3_000, "consumer_lag_interval_ms = 500\n").unwrap();
    c.add_proxy().unwrap();
    let leader = c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.bootstrap();
    let proxy = c.proxy_bootstrap();

    let dir = tempfile::tempdir().unwrap();
    let target = |port: u16| format!("'127.0.0.1:{port}'");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n\
         - job_name: floe-controller\n  static_configs:\n  - targets: [{}]\n    labels: {{floe_role: controller}}\n\
         - job_name: floe-broker\n  static_configs:\n  - targets: [{}]\n    labels: {{floe_role: broker}}\n\
         - job_name: floe-proxy\n  static_configs:\n  - targets: [{}]\n    labels: {{floe_role: proxy}}\n",
        c.controllers
            .iter()
            .map(|p| target(p.http_port))
            .collect::<Vec<_>>()
            .join(", "),
        c.brokers
            .iter()
            .map(|p| target(p.http_port))
            .collect::<Vec<_>>()
            .join(", "),
        c.proxies
            .iter()
            .map(|p| target(p.http_port))
            .collect::<Vec<_>>()
            .join(", "),
    );
    std::fs::write(dir.path().join("prometheus.yml"), &config).unwrap();
    let port = floe_e2e::free_port();
    let prom = std::process::Command::new(&prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {prometheus} (Debian's prometheus package): {e}"));
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Kill(prom);

    // Traffic: produce and consume through the proxy (and a reader of
    // the brokers themselves), a group that commits, a compacted topic, a
    // planned move.
    create_topic(&b, "dash", 2).await;
    produce(&proxy, "dash", 0, 200).await;
    produce(&proxy, "dash", 1, 200).await;
    floe_e2e::read_all(&b, "dash", 2);
    {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &proxy)
            .set("group.id", "dashboard")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        consumer.subscribe(&["dash"]).unwrap();
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while n < 300 && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                n += 1;
            }
        }
        assert!(n >= 300, "consumed {n}");
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        let t = NewTopic::new("dash-compact", 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
            .set("segment.bytes", "4096")
            .set("min.cleanable.dirty.ratio", "0.01");
        admin
            .create_topics(&[t], &AdminOptions::new())
            .await
            .unwrap();
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
        for round in 0..20 {
            for i in 0..50 {
                p.send(
                    FutureRecord::to("dash-compact")
                        .partition(0)
                        .key(&format!("k{i}"))
                        .payload(&format!("v{round}")),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            }
        }
    }
    let owner = floe_e2e::leaders(&b, "dash")[&0].unwrap();
    let (code, _, err) = c.floectl(
        leader,
        &["move", "dash", "0", "--to", &(3 - owner).to_string()],
    );
    assert_eq!(code, 0, "{err}");
    // More traffic while Prometheus takes a few more scrapes.
    produce(&proxy, "dash", 0, 100).await;
    tokio::time::sleep(Duration::from_secs(4)).await;

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/floe-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let query = |expr: &str| -> serde_json::Value {
        let out = std::process::Command::new("curl")
            .args(["-sf", "--get", "--data-urlencode"])
            .arg(format!("query={expr}"))
            .arg(format!("http://127.0.0.1:{port}/api/v1/query"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    // Every target up, then every query with series (a few seconds more
    // for rates that need two scrapes of a new series).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut empty: Vec<String> = exprs.clone();
    loop {
        let up = query("sum(up)");
        let ups = up["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if ups >= 4.0 {
            empty.retain(|e| {
                query(e)["data"]["result"]
                    .as_array()
                    .is_none_or(|r| r.is_empty())
            });
            if empty.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{ups} targets up; queries without series: {empty:#?}\nprometheus log: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The alert rules (deploy/prometheus/floe-alerts.yaml) are valid and
/// pass their unit tests under Debian's promtool: every alert fires when
/// it should and stays quiet when it should not
/// (deploy/prometheus/floe-alerts.test.yaml).
#[test]
fn promtool_checks_and_unit_tests_every_alert() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus");
    let promtool = std::env::var("FLOE_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("running {promtool} (Debian's prometheus package): {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    let check = run(&["check", "rules", "floe-alerts.yaml"]);
    assert!(check.contains("SUCCESS: 9 rules found"), "{check}");
    let rules = std::fs::read_to_string(format!("{dir}/floe-alerts.yaml")).unwrap();
    let tests = std::fs::read_to_string(format!("{dir}/floe-alerts.test.yaml")).unwrap();
    // Every alert has a unit test.
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "no unit test for {alert}"
        );
    }
    let out = run(&["test", "rules", "floe-alerts.test.yaml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A test OTLP collector: the trace service of `opentelemetry-proto`,
/// keeping every span it is sent.
mod otlp {
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;

    #[derive(Clone, Debug)]
    pub struct Got {
        pub service: String,
        pub name: String,
        pub trace_id: Vec<u8>,
        pub span_id: Vec<u8>,
        pub parent: Vec<u8>,
        pub nanos: u64,
        pub attributes: Vec<(String, String)>,
    }

    /// Whether a span whose parent is `parent` is a storage write of
    /// `request`'s: per-partition chunks are written under the request's
    /// span; a shared WAL object (S3 targets) under its `wal.write`, a
    /// child of the first request whose chunk is in it.
    pub fn under(spans: &[Got], parent: &[u8], request: &Got) -> bool {
        parent == request.span_id.as_slice()
            || spans.iter().any(|w| {
                w.name == "wal.write"
                    && w.span_id.as_slice() == parent
                    && w.parent == request.span_id
            })
    }

    #[derive(Clone, Default)]
    pub struct Receiver {
        pub spans: Arc<Mutex<Vec<Got>>>,
    }

    fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
        match v.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            _ => String::new(),
        }
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            r: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock().unwrap();
            for rs in r.into_inner().resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .map(|a| text(&a.value))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        spans.push(Got {
                            service: service.clone(),
                            name: s.name,
                            trace_id: s.trace_id,
                            span_id: s.span_id,
                            parent: s.parent_span_id,
                            nanos: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                            attributes: s
                                .attributes
                                .iter()
                                .map(|a| (a.key.clone(), text(&a.value)))
                                .collect(),
                        });
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    /// Serve on a free loopback port until the test ends.
    pub async fn start() -> (String, Receiver) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver::default();
        let service = TraceServiceServer::new(r.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        (format!("http://{addr}"), r)
    }
}

/// OpenTelemetry traces (OTLP/gRPC to a test collector): one produce
/// through a proxy is one trace, in which the broker's Produce span is a
/// child of the proxy's (the context rides in the forwarded request's
/// header) and the storage writes of its chunk are children of the
/// broker's; a slow storage target is the long span; with sampling off
/// (`OTEL_TRACES_SAMPLER=always_off`) nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_produce_through_a_proxy_is_one_trace_from_proxy_to_broker_to_storage() {
    let (endpoint, collector) = otlp::start().await;
    let endpoint_env = format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}");
    let mut c = Cluster::start_wrapped(
        1,
        1,
        3_000,
        "",
        &[],
        1,
        1,
        &["env", &endpoint_env, "OTEL_BSP_SCHEDULE_DELAY=100"],
    )
    .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    create_topic(&c.bootstrap(), "traced", 1).await;
    let proxy = c.proxy_bootstrap();
    produce(&proxy, "traced", 0, 1).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let (proxy_span, broker_span, puts) = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let found = spans
            .iter()
            .filter(|s| s.service == "floe-proxy" && s.name == "Produce")
            .find_map(|p| {
                let b = spans.iter().find(|b| {
                    b.service == "floe-broker"
                        && b.name == "Produce"
                        && b.trace_id == p.trace_id
                        && b.parent == p.span_id
                })?;
                let puts: Vec<otlp::Got> = spans
                    .iter()
                    .filter(|s| {
                        s.name == "storage.put"
                            && s.trace_id == b.trace_id
                            && otlp::under(&spans, &s.parent, b)
                    })
                    .cloned()
                    .collect();
                (!puts.is_empty()).then(|| (p.clone(), b.clone(), puts))
            });
        if let Some(f) = found {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no proxy → broker → storage trace among {} spans: {:#?}",
            spans.len(),
            spans
                .iter()
                .map(|s| (&s.service, &s.name, hex(&s.trace_id), hex(&s.parent)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(proxy_span.parent.is_empty(), "the proxy's span is the root");
    assert!(
        broker_span
            .attributes
            .iter()
            .any(|(k, v)| k == "kafka.client_id" && !v.is_empty()),
        "{broker_span:?}"
    );
    assert!(
        puts.iter()
            .all(|p| p.attributes.iter().any(
                |(k, v)| k == "storage.path" && (v.ends_with(".chunk") || v.ends_with(".wal"))
            )),
        "{puts:?}"
    );
    assert!(
        broker_span.nanos >= puts[0].nanos,
        "the put inside the request"
    );
    // Metadata requests made while serving a request are its children
    // (CreateTopics writes the topic record); a partition's recovery is
    // an operation of its own, its metadata reads under it.
    let spans = collector.spans.lock().unwrap().clone();
    let create = spans
        .iter()
        .find(|s| s.service == "floe-broker" && s.name == "CreateTopics")
        .expect("a CreateTopics span");
    assert!(
        spans
            .iter()
            .any(|s| s.name == "metadata.txn" && s.parent == create.span_id),
        "CreateTopics's metadata transaction: {:#?}",
        spans
            .iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
    let recover = spans
        .iter()
        .find(|s| s.name == "partition.recover" && s.parent.is_empty())
        .expect("a recovery span");
    assert!(
        spans
            .iter()
            .any(|s| s.name.starts_with("metadata.") && s.parent == recover.span_id),
        "recovery's metadata reads"
    );
    // A client's own trace (the `traceparent` header of its first record,
    // as OpenTelemetry's Kafka instrumentations write it) is the parent.
    {
        use rdkafka::message::{Header, OwnedHeaders};
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &proxy)
            .create()
            .unwrap();
        p.send(
            FutureRecord::<(), str>::to("traced")
                .partition(0)
                .payload("with a trace")
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                })),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    }
    let client_trace = [
        0x0a, 0xf7, 0x65, 0x19, 0x16, 0xcd, 0x43, 0xdd, 0x84, 0x48, 0xeb, 0x21, 0x1c, 0x80, 0x31,
        0x9c,
    ];
    let client_span = [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        let proxy_span = spans.iter().find(|s| {
            s.service == "floe-proxy"
                && s.name == "Produce"
                && s.trace_id == client_trace
                && s.parent == client_span
        });
        // Each process exports on its own schedule: wait for both.
        let broker_continues = proxy_span.is_some_and(|ps| {
            spans.iter().any(|b| {
                b.service == "floe-broker" && b.trace_id == client_trace && b.parent == ps.span_id
            })
        });
        if broker_continues {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no proxy span under the client's traceparent with the broker's span under it (proxy span found: {})",
            proxy_span.is_some()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Over the admin gRPC: a caller's `traceparent` metadata is the
    // parent of the controller's move span.
    {
        let channel = tonic::transport::Endpoint::from_shared(c.admin_url(0))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut admin = floe_rpc::admin::admin_client::AdminClient::with_interceptor(
            channel,
            |mut r: tonic::Request<()>| {
                let bearer = format!("Bearer {}", floe_e2e::ADMIN_TOKEN);
                r.metadata_mut()
                    .insert("authorization", bearer.parse().unwrap());
                r.metadata_mut().insert(
                    "traceparent",
                    "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
                        .parse()
                        .unwrap(),
                );
                Ok(r)
            },
        );
        admin
            .move_partition(floe_rpc::admin::MovePartitionRequest {
                topic: "traced".into(),
                partition: 0,
                broker: 1,
                timeout_ms: 0,
            })
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        if spans.iter().any(|s| {
            s.service == "floe-controller"
                && s.name == "controller.move"
                && hex(&s.trace_id) == "1af7651916cd43dd8448eb211c80319c"
                && hex(&s.parent) == "c7ad6b7169203331"
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no controller.move span under the caller's traceparent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);

    // A slow storage target (the fault-injecting store: 400 ms on every
    // request) among three, W = 2: its replica writes are the long spans
    // of the produce's trace; the other two answer the quorum.
    let (endpoint, collector) = otlp::start().await;
    let endpoint_env = format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}");
    let dirs = tempfile::tempdir().unwrap();
    let urls: Vec<String> = (0..3)
        .map(|i| {
            let d = dirs.path().join(format!("t{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let slow = if i == 2 {
                "?floe_latency_p50_ms=400&floe_latency_p99_ms=400"
            } else {
                ""
            };
            format!("file://{}{slow}", d.display())
        })
        .collect();
    let mut c = Cluster::start_wrapped(
        1,
        1,
        3_000,
        "",
        &urls,
        3,
        2,
        &["env", &endpoint_env, "OTEL_BSP_SCHEDULE_DELAY=100"],
    )
    .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let (code, out, err) = c.floectl(0, &["storage", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let pool: serde_json::Value = serde_json::from_str(&out).unwrap();
    let slow_id = pool["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["url"].as_str().unwrap().contains("floe_latency"))
        .map(|t| t["id"].as_str().unwrap().to_string())
        .expect("the slow target");
    create_topic(&c.bootstrap(), "slow", 1).await;
    produce(&c.proxy_bootstrap(), "slow", 0, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let target_of = |s: &otlp::Got| {
        s.attributes
            .iter()
            .find(|(k, _)| k == "storage.target")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    loop {
        let spans = collector.spans.lock().unwrap().clone();
        // The produce's broker span and its replica writes.
        let found = spans
            .iter()
            .filter(|b| b.service == "floe-broker" && b.name == "Produce" && !b.parent.is_empty())
            .find_map(|b| {
                let puts: Vec<&otlp::Got> = spans
                    .iter()
                    .filter(|s| s.name == "storage.put" && otlp::under(&spans, &s.parent, b))
                    .collect();
                (puts.len() >= 3).then_some(puts)
            });
        if let Some(puts) = found {
            let longest = puts.iter().max_by_key(|s| s.nanos).unwrap();
            assert_eq!(target_of(longest), slow_id, "{puts:#?}");
            assert!(longest.nanos >= 350_000_000, "{puts:#?}");
            assert!(
                puts.iter()
                    .filter(|s| target_of(s) != slow_id)
                    .all(|s| s.nanos < longest.nanos / 2),
                "the others are quick: {puts:#?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no produce trace with three replica writes among {} spans",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(c);

    // Sampling off: spans are neither made nor sent.
    let (endpoint, quiet) = otlp::start().await;
    let s = Standalone::start_with_env(
        "",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .unwrap();
    create_topic(&s.bootstrap(), "untraced", 1).await;
    produce(&s.bootstrap(), "untraced", 0, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        quiet.spans.lock().unwrap().is_empty(),
        "spans sent with sampling off"
    );
    assert!(!s.log_text().contains("OpenTelemetry traces on"));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
