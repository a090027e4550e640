//! The operator's reconcile loop against a twin of the Kubernetes API
//! server (floe_operator::twin: no API server can run here) and a real
//! Floe cluster: real etcd, controller, brokers and proxies as processes.
//! A kubelet twin in this test turns the broker StatefulSet the operator
//! applies into broker processes whose ids are the pod ordinals, stops a
//! process when its pod is deleted or scaled away (SIGTERM, as a kubelet),
//! and reports readiness from the broker's /readyz. A producer writes
//! through the proxies the whole time.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use floe_e2e::{BrokerSpawner, Cluster, Proc, ADMIN_TOKEN};
use floe_operator::crd::FloeCluster;
use floe_operator::reconcile::{reconcile, Context};
use floe_operator::twin::Twin;
use serde_json::{json, Value};

const NS: &str = "streaming";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// What the kubelet twin did: (epoch ms, "start"|"ready"|"stop"|"stopped", broker).
type Events = Arc<Mutex<Vec<(i64, &'static str, i32)>>>;

struct Kubelet {
    twin: Twin,
    spawner: BrokerSpawner,
    procs: BTreeMap<i32, Proc>,
    ready: BTreeSet<i32>,
    /// Started and not yet ready once: their first ready is an event.
    fresh: BTreeSet<i32>,
    runs: u32,
    events: Events,
    proxies: i32,
    controllers: i32,
}

impl Kubelet {
    fn event(&self, what: &'static str, id: i32) {
        self.events.lock().unwrap().push((now_ms(), what, id));
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        // No StatefulSet (deleted): no broker pods.
        let sts = self.twin.get("statefulsets", NS, "floe-broker");
        let replicas = sts
            .as_ref()
            .map_or(0, |s| s["spec"]["replicas"].as_i64().unwrap_or(0) as i32);
        let template = sts
            .as_ref()
            .map_or(Value::Null, |s| s["spec"]["template"].clone());
        // Deleted pods, and pods the StatefulSet no longer has.
        for pod in self.twin.list("pods", NS) {
            let name = pod["metadata"]["name"].as_str().unwrap().to_string();
            let id: i32 = name.rsplit('-').next().unwrap().parse()?;
            if pod["metadata"]["deletionTimestamp"].is_string() || id >= replicas {
                if let Some(mut p) = self.procs.remove(&id) {
                    self.event("stop", id);
                    p.stop_with("-TERM")?;
                    self.event("stopped", id);
                }
                self.ready.remove(&id);
                self.twin.remove("pods", NS, &name);
            }
        }
        for id in 0..replicas {
            let name = format!("floe-broker-{id}");
            if self.twin.get("pods", NS, &name).is_none() {
                self.runs += 1;
                self.event("start", id);
                let p = self.spawner.spawn(id, self.runs)?;
                self.procs.insert(id, p);
                self.fresh.insert(id);
                let mut labels = template["metadata"]["labels"].clone();
                labels["apps.kubernetes.io/pod-index"] = json!(id.to_string());
                self.twin.put(
                    "pods",
                    NS,
                    json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": NS, "labels": labels,
                                     "annotations": template["metadata"]["annotations"]},
                        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
                    }),
                );
            }
        }
        for (id, p) in &self.procs {
            let ready =
                floe_e2e::http_get_within(p.http_port, "/readyz", Duration::from_millis(300))
                    .is_ok();
            let name = format!("floe-broker-{id}");
            if let Some(mut pod) = self.twin.get("pods", NS, &name) {
                pod["status"]["conditions"][0]["status"] =
                    json!(if ready { "True" } else { "False" });
                self.twin.put("pods", NS, pod);
            }
            if ready && self.fresh.remove(id) {
                self.events.lock().unwrap().push((now_ms(), "ready", *id));
            }
            if ready {
                self.ready.insert(*id);
            } else {
                self.ready.remove(id);
            }
        }
        for (name, n) in [
            ("floe-proxy", self.proxies),
            ("floe-controller", self.controllers),
        ] {
            if let Some(mut d) = self.twin.get("deployments", NS, name) {
                d["status"]["readyReplicas"] = json!(n);
                self.twin.put("deployments", NS, d);
            }
        }
        Ok(())
    }
}

fn cluster_object(twin: &Twin) -> Value {
    twin.get("floeclusters", NS, "floe")
        .expect("the FloeCluster")
}

fn condition(cr: &Value, type_: &str) -> (String, String, String) {
    cr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// Waits until the FloeCluster is Ready with `brokers` brokers and no
/// operation.
async fn wait_ready(twin: &Twin, brokers: i64, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let cr = cluster_object(twin);
        let ready = condition(&cr, "Ready");
        if ready.0 == "True"
            && cr["status"]["brokers"] == brokers
            && cr["status"]["operation"].is_null()
            && cr["status"]["observedGeneration"] == cr["metadata"]["generation"]
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not ready after {timeout:?}: {}",
            serde_json::to_string_pretty(&cr["status"]).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn set_spec(twin: &Twin, f: impl FnOnce(&mut Value)) {
    let mut cr = cluster_object(twin);
    f(&mut cr["spec"]);
    let g = cr["metadata"]["generation"].as_i64().unwrap();
    cr["metadata"]["generation"] = json!(g + 1);
    twin.put("floeclusters", NS, cr);
}

fn partitions_per_broker(c: &Cluster) -> BTreeMap<i64, i64> {
    let (code, out, err) = c.floectl(0, &["status", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    s["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap_or(0),
                b["partitions"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

fn operations(c: &Cluster) -> Vec<Value> {
    let (code, out, err) = c.floectl(0, &["op", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["operations"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_scales_upgrades_and_moves_storage_of_a_real_cluster_without_losing_a_record()
{
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let mut c = Cluster::start(0, 1, 3_000).unwrap();
    // Without balance-on-join, evening partitions after a scale-out is
    // the operator's doing.
    c.restart_controllers_with(&["--balance-on-join", "false"])
        .unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    c.add_proxy().unwrap();
    c.add_proxy().unwrap();
    let (code, out, err) = c.floectl(0, &["storage", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let pool: Value = serde_json::from_str(&out).unwrap();
    let target = &pool["targets"][0];

    // The API-server twin holds the admin token's Secret (as a server
    // keeps it: base64 under data) and the cluster.
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let twin = Twin::new();
    twin.put(
        "secrets",
        NS,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "floe-admin", "namespace": NS},
               "data": {"token": b64(ADMIN_TOKEN)}}),
    );
    twin.put(
        "floeclusters",
        NS,
        json!({
            "apiVersion": "floe.dev/v1alpha1", "kind": "FloeCluster",
            "metadata": {"name": "floe", "namespace": NS, "uid": "uid-floe", "generation": 1},
            "spec": {
                "image": "ghcr.io/floe-streaming/floe:0.1.0",
                "brokers": {"replicas": 4},
                "etcd": {"endpoints": [c.etcd.url()]},
                "storage": {
                    "targets": [{"id": target["id"], "url": target["url"]}],
                    "replicas": pool["replicas"], "writeQuorum": pool["write_quorum"],
                },
                "admin": {"tokenSecret": "floe-admin", "endpoint": c.admin_url(0)},
            },
        }),
    );

    // The kubelet twin, on a thread of its own (it starts and stops processes).
    let stop = Arc::new(AtomicBool::new(false));
    let events: Events = Default::default();
    let kubelet = {
        let mut k = Kubelet {
            twin: twin.clone(),
            spawner: c.broker_spawner(),
            procs: BTreeMap::new(),
            ready: BTreeSet::new(),
            fresh: BTreeSet::new(),
            runs: 0,
            events: events.clone(),
            proxies: 2,
            controllers: 1,
        };
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = k.tick() {
                    eprintln!("kubelet twin: {e:#}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Processes are killed as `k` drops.
        })
    };
    // The operator: reconcile passes, each on the resource as stored now.
    let operator = {
        let ctx = Arc::new(Context {
            client: twin.client(),
        });
        let (twin, stop) = (twin.clone(), stop.clone());
        tokio::spawn(async move {
            let mut passes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Some(cr) = twin.get("floeclusters", NS, "floe") else {
                    break;
                };
                let cr: FloeCluster = serde_json::from_value(cr).unwrap();
                match reconcile(Arc::new(cr), ctx.clone()).await {
                    Ok(o) => tokio::time::sleep(o.requeue.min(Duration::from_millis(300))).await,
                    Err(e) => {
                        eprintln!("reconcile: {e}");
                        tokio::time::sleep(Duration::from_millis(300)).await
                    }
                }
                passes += 1;
            }
            passes
        })
    };

    wait_ready(
        &twin,
        4,
        Duration::from_secs(60),
        "a new cluster of 4 brokers",
    )
    .await;
    let cr = cluster_object(&twin);
    assert_eq!(cr["metadata"]["finalizers"], json!(["floe.dev/cleanup"]));
    for kind in [
        "serviceaccounts",
        "configmaps",
        "services",
        "poddisruptionbudgets",
        "deployments",
    ] {
        assert!(!twin.list(kind, NS).is_empty(), "no {kind} applied");
    }
    let b = c.proxy_bootstrap();
    floe_e2e::create_topic(&b, "op", 12).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while partitions_per_broker(&c).values().sum::<i64>() < 12 {
        assert!(
            Instant::now() < deadline,
            "the topic's partitions not all written"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_ready(&twin, 4, Duration::from_secs(60), "the topic written").await;

    // A producer through the proxies for everything that follows.
    let producer: FutureProducer = floe_e2e::idempotent_producer(&b);
    let acked: Arc<Mutex<Vec<(i32, i64, String)>>> = Default::default();
    let failed: Arc<Mutex<Vec<String>>> = Default::default();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (acked, failed, writing) = (acked.clone(), failed.clone(), writing.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while writing.load(Ordering::Relaxed) {
                let payload = format!("r{i:07}");
                match producer
                    .send(
                        FutureRecord::<(), _>::to("op")
                            .partition((i % 12) as i32)
                            .payload(&payload),
                        Duration::from_secs(120),
                    )
                    .await
                {
                    Ok(d) => acked.lock().unwrap().push((d.partition, d.offset, payload)),
                    Err((e, _)) => failed.lock().unwrap().push(e.to_string()),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Scale in 4 → 2: exactly brokers 2 and 3 drained, through the admin
    // API, before their pods go.
    let log_before = twin.log().len();
    let started = now_ms();
    set_spec(&twin, |s| s["brokers"]["replicas"] = json!(2));
    wait_ready(&twin, 2, Duration::from_secs(120), "scaled in to 2").await;
    let drains: Vec<Value> = operations(&c)
        .into_iter()
        .filter(|o| o["kind"] == "drain-broker" && o["created_ms"].as_i64().unwrap_or(0) >= started)
        .collect();
    let drained: BTreeSet<i64> = drains
        .iter()
        .map(|o| o["broker"].as_i64().unwrap())
        .collect();
    assert_eq!(drained, BTreeSet::from([2, 3]), "{drains:?}");
    for d in &drains {
        assert_eq!(d["state"], "done", "{d}");
        let id = d["broker"].as_i64().unwrap() as i32;
        let stopped = events
            .lock()
            .unwrap()
            .iter()
            .find(|(t, what, b)| *what == "stop" && *b == id && *t >= started)
            .map(|(t, _, _)| *t)
            .unwrap_or_else(|| panic!("broker {id}'s pod was never removed"));
        assert!(
            d["finished_ms"].as_i64().unwrap() <= stopped,
            "broker {id}'s pod went before its drain finished: {d}"
        );
    }
    let log: Vec<String> = twin.log()[log_before..].to_vec();
    assert!(
        log.iter()
            .any(|l| l == "update statefulsets/floe-broker replicas 4 -> 2"),
        "{log:?}"
    );
    let per = partitions_per_broker(&c);
    assert_eq!(
        per.keys().copied().collect::<Vec<_>>(),
        vec![0, 1],
        "{per:?}"
    );
    assert_eq!(per.values().sum::<i64>(), 12);
    println!("scale-in done in {} ms", now_ms() - started);

    // Scale out 2 → 4: partitions evened within one.
    let started = now_ms();
    set_spec(&twin, |s| s["brokers"]["replicas"] = json!(4));
    wait_ready(&twin, 4, Duration::from_secs(120), "scaled out to 4").await;
    let per = partitions_per_broker(&c);
    assert_eq!(per.len(), 4, "{per:?}");
    let (lo, hi) = (per.values().min().unwrap(), per.values().max().unwrap());
    assert!(hi - lo <= 1, "partitions not even after scale-out: {per:?}");
    assert!(
        operations(&c).iter().any(|o| o["kind"] == "rebalance"
            && o["created_ms"].as_i64().unwrap_or(0) >= started
            && o["state"] == "done"),
        "no rebalance after the scale-out"
    );
    println!("scale-out done in {} ms", now_ms() - started);

    // An image change: brokers restarted one at a time, highest first,
    // each back (ready) before the next stops.
    let started = now_ms();
    let old_hash = twin.get("pods", NS, "floe-broker-0").unwrap()["metadata"]["annotations"]
        ["floe.dev/template-hash"]
        .clone();
    set_spec(&twin, |s| {
        s["image"] = json!("ghcr.io/floe-streaming/floe:0.1.1")
    });
    wait_ready(&twin, 4, Duration::from_secs(180), "upgraded").await;
    let upgrade: Vec<(&'static str, i32)> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| *t >= started)
        .map(|(_, what, b)| (*what, *b))
        .collect();
    let expected: Vec<(&'static str, i32)> = [3, 2, 1, 0]
        .iter()
        .flat_map(|b| [("stop", *b), ("stopped", *b), ("start", *b), ("ready", *b)])
        .collect();
    assert_eq!(upgrade, expected, "restarts not one at a time");
    for pod in twin.list("pods", NS) {
        assert_ne!(
            pod["metadata"]["annotations"]["floe.dev/template-hash"],
            old_hash
        );
    }
    println!("upgrade done in {} ms", now_ms() - started);

    // Storage: a new target in the spec, the old one out of it: added,
    // the old one drained (its segments repaired onto the new one), then
    // removed from the pool.
    let started = now_ms();
    let objects2 = c.dir().join("objects2");
    std::fs::create_dir_all(&objects2).unwrap();
    let url2 = format!("file://{}", objects2.display());
    set_spec(&twin, |s| {
        s["storage"]["targets"] = json!([{"id": "t1", "url": url2}]);
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, out, err) = c.floectl(0, &["storage", "list", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let pool: Value = serde_json::from_str(&out).unwrap();
        let ids: Vec<&str> = pool["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap())
            .collect();
        if ids == ["t1"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "t0 not replaced by t1: {out}\n{}",
            serde_json::to_string_pretty(&cluster_object(&twin)["status"]).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_ready(&twin, 4, Duration::from_secs(60), "storage replaced").await;
    assert_eq!(cluster_object(&twin)["status"]["segmentsToRepair"], 0);
    println!("storage target replaced in {} ms", now_ms() - started);

    // A wrong admin token: Degraded, saying which Secret; the right one
    // back: Ready again.
    let secret = twin.get("secrets", NS, "floe-admin").unwrap();
    let mut wrong = secret.clone();
    wrong["data"]["token"] = json!(b64("not-the-token"));
    twin.put("secrets", NS, wrong);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, reason, message) = condition(&cluster_object(&twin), "Degraded");
        if status == "True" {
            assert_eq!(reason, "AdminTokenRefused", "{message}");
            assert!(message.contains("spec.admin.tokenSecret"), "{message}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Degraded condition for a wrong token"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    twin.put("secrets", NS, secret);
    wait_ready(&twin, 4, Duration::from_secs(30), "the token restored").await;

    // A bad spec: Degraded, naming the field; nothing changes.
    let log_before = twin.log().len();
    let good_spec = cluster_object(&twin)["spec"].clone();
    set_spec(&twin, |s| {
        s["storage"]["writeQuorum"] = json!(5);
        s["proxies"] = json!({"replicas": 0});
        s["storage"]["targets"][0]["url"] = json!("gopher://bucket/floe");
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, reason, message) = condition(&cluster_object(&twin), "Degraded");
        if status == "True" {
            assert_eq!(reason, "InvalidSpec");
            for field in [
                "spec.storage.writeQuorum",
                "spec.proxies.replicas",
                "spec.storage.targets[0].url",
            ] {
                assert!(message.contains(field), "{field} not named: {message}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "no Degraded condition for W > R");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(twin.log()[log_before..].to_vec(), Vec::<String>::new());

    // Every acked record is there, nothing failed.
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    assert!(failed.is_empty(), "the producer saw errors: {failed:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 500, "only {} records acked", acked.len());
    let read = floe_e2e::read_all(&b, "op", 12);
    for (p, offset, payload) in &acked {
        let got = read
            .get(p)
            .and_then(|r| r.iter().find(|(o, _)| o == offset))
            .unwrap_or_else(|| panic!("acked record {payload} at {p}/{offset} is missing"));
        assert_eq!(String::from_utf8_lossy(&got.1), *payload);
    }
    println!("{} acked records read back", acked.len());

    // Deletion: proxies, then brokers (each stopped with SIGTERM), then
    // controllers, and only then does the resource go.
    set_spec(&twin, |s| *s = good_spec);
    wait_ready(&twin, 4, Duration::from_secs(30), "the spec fixed").await;
    let log_before = twin.log().len();
    let started = now_ms();
    let crs: floe_operator::kube::Api<FloeCluster> =
        floe_operator::kube::Api::namespaced(twin.client(), NS);
    crs.delete("floe", &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while twin.get("floeclusters", NS, "floe").is_some() {
        assert!(
            Instant::now() < deadline,
            "the FloeCluster was not finalized: {:?}",
            twin.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log: Vec<String> = twin.log()[log_before..].to_vec();
    assert_eq!(
        log,
        vec![
            "delete floeclusters/floe",
            "delete deployments/floe-proxy",
            "delete statefulsets/floe-broker",
            "delete deployments/floe-controller",
            "delete floeclusters/floe",
        ],
        "deletion order"
    );
    let stopped: BTreeSet<i32> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, what, _)| *t >= started && *what == "stopped")
        .map(|(_, _, b)| *b)
        .collect();
    assert_eq!(stopped, BTreeSet::from([0, 1, 2, 3]));

    stop.store(true, Ordering::Relaxed);
    let passes = operator.await.unwrap();
    kubelet.join().unwrap();
    println!("{passes} reconcile passes");
}
