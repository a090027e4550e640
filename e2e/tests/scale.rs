//! Scaling through `floectl` on a real cluster: scale-out with a measured
//! rebalance under produce load through proxies, and storage targets added,
//! drained (with repair progress) and removed while data stays readable.
//! Every JSON answer is checked against what etcd holds.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::Cluster;
use floe_meta::schema::{CheckpointRecord, LoadRecord, SegmentRecord, StoragePoolRecord};
use floe_meta::{keys, MetadataStore};
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn parse(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Broker → partitions it writes, from the owners' published states.
async fn written_by(meta: &dyn MetadataStore) -> BTreeMap<i32, usize> {
    let (kvs, _) = meta.range(&keys::partitions_prefix()).await.unwrap();
    let mut out = BTreeMap::new();
    for kv in kvs {
        if keys::parse_partition_state(&kv.key).is_some() {
            let s = floe_meta::schema::PartitionStateRecord::decode(kv.value).unwrap();
            if s.state == "writing" {
                *out.entry(s.broker_id).or_default() += 1;
            }
        }
    }
    out
}

async fn loads(meta: &dyn MetadataStore) -> BTreeMap<i32, LoadRecord> {
    let (kvs, _) = meta.range(&keys::load_prefix()).await.unwrap();
    kvs.into_iter()
        .map(|kv| LoadRecord::decode(kv.value).unwrap())
        .map(|l| (l.broker_id, l))
        .collect()
}

/// (partition, offset, payload) of an acknowledged record.
type Acked = (i32, i64, Vec<u8>);

/// A pipelined idempotent producer through the proxies writing `size`-byte
/// records round-robin over `partitions` at about `per_sec` records a
/// second until stopped; acked (partition, offset, payload) and failures.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    failed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(bootstrap: &str, topic: &str, partitions: i32, size: usize, per_sec: u64) -> Self {
        let producer: FutureProducer = floe_e2e::idempotent_producer(bootstrap);
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Default::default();
        let failed: Arc<Mutex<Vec<String>>> = Default::default();
        let topic = topic.to_string();
        let task = {
            let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
            tokio::spawn(async move {
                let mut pending = futures::stream::FuturesUnordered::new();
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
                let mut i = 0u64;
                use futures::StreamExt;
                while !stop.load(Ordering::Relaxed) {
                    tokio::select! {
                        _ = tick.tick() => {
                            let mut payload = format!("r{i:09}-").into_bytes();
                            payload.resize(size, b'x');
                            let p = (i % partitions as u64) as i32;
                            let producer = producer.clone();
                            let topic = topic.clone();
                            pending.push(async move {
                                let r = producer
                                    .send(
                                        FutureRecord::<(), _>::to(&topic).partition(p).payload(&payload),
                                        Duration::from_secs(120),
                                    )
                                    .await;
                                (r.map(|d| (d.partition, d.offset)).map_err(|(e, _)| e.to_string()), payload)
                            });
                            i += 1;
                        }
                        Some((r, payload)) = pending.next(), if !pending.is_empty() => match r {
                            Ok((p, o)) => acked.lock().unwrap().push((p, o, payload)),
                            Err(e) => failed.lock().unwrap().push(e),
                        },
                    }
                }
                while let Some((r, payload)) = pending.next().await {
                    match r {
                        Ok((p, o)) => acked.lock().unwrap().push((p, o, payload)),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            })
        };
        Self {
            stop,
            acked,
            failed,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> (Vec<Acked>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        let failed = self.failed.lock().unwrap().clone();
        (acked, failed)
    }
}

/// Every acked record is in the log at the offset its ack named.
fn assert_all_readable(bootstrap: &str, topic: &str, partitions: i32, acked: &[Acked]) {
    let log = floe_e2e::read_all(bootstrap, topic, partitions);
    let total: usize = log.values().map(Vec::len).sum();
    assert_eq!(total, acked.len(), "records in the log vs acked");
    let by_offset: HashMap<(i32, i64), &Vec<u8>> = log
        .iter()
        .flat_map(|(p, recs)| recs.iter().map(move |(o, v)| ((*p, *o), v)))
        .collect();
    for (p, o, payload) in acked {
        if *o < 0 {
            // librdkafka acked it without an offset (-1001, as the chaos
            // checker also sees now and then): it must be in its partition.
            assert!(
                log[p].iter().any(|(_, v)| v == payload),
                "partition {p}: a record acked without an offset is missing"
            );
            continue;
        }
        assert_eq!(
            by_offset.get(&(*p, *o)).map(|v| v.as_slice()),
            Some(payload.as_slice()),
            "partition {p} offset {o}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_rebalance_evens_partitions_and_load_under_traffic() {
    const PARTITIONS: i32 = 60;
    let mut c = Cluster::start_with(3, 1, 3_000, "load_report_interval_ms = 2000\n").unwrap();
    // Joining brokers wait for the operator's rebalance.
    c.restart_controllers_with(&["--balance-on-join", "false"])
        .unwrap();
    c.add_proxy().unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.proxy_bootstrap();
    floe_e2e::create_topic(&b, "scale", PARTITIONS).await;
    let meta = c.meta().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while written_by(&meta).await.values().sum::<usize>() < PARTITIONS as usize {
        assert!(Instant::now() < deadline, "partitions not all writing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // For the benchmark (scripts/bench-scale.sh): data written before the
    // scale-out, to show the rebalance does not depend on it.
    let prefill_mb: usize = std::env::var("FLOE_SCALE_PREFILL_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if prefill_mb > 0 {
        let started = Instant::now();
        let fill = Load::start(&b, "scale", PARTITIONS, 16 << 10, 2_000);
        while fill.acked() * (16 << 10) < prefill_mb << 20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (acked, failed) = fill.finish().await;
        assert!(failed.is_empty(), "{failed:?}");
        println!(
            "prefilled {} MiB in {:.1} s",
            acked.len() * 16 / 1024,
            started.elapsed().as_secs_f64()
        );
    }
    // ~1 MB/s of 1 KiB records over all 60 partitions through both proxies
    // (~33 records per partition per report window: little quantization
    // noise in the measured per-partition load).
    let load = Load::start(&b, "scale", PARTITIONS, 1024, 1_000);
    // Every broker reports traffic.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = loads(&meta).await;
        if (1..=3).all(|b| l.get(&b).is_some_and(|r| r.bytes_in_per_sec > 64 << 10)) {
            break;
        }
        assert!(Instant::now() < deadline, "no load reports: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // status shows each broker's load report (a report may land between
    // status and the test's own read: it shows the one before or after).
    let mut tries = 0;
    loop {
        let earlier = loads(&meta).await;
        let (code, out, err) = c.floectl(0, &["status", "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        let later = loads(&meta).await;
        let status = parse(&out);
        let shown: Vec<(i32, u64)> = status["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["id"].as_i64().unwrap() as i32,
                    b["bytes_in_per_sec"].as_u64().unwrap(),
                )
            })
            .collect();
        let matches = shown.iter().all(|(id, rate)| {
            [&earlier, &later]
                .iter()
                .any(|l| l.get(id).is_some_and(|r| r.bytes_in_per_sec == *rate))
        });
        if matches {
            break;
        }
        tries += 1;
        assert!(tries < 5, "status {shown:?} vs reports {later:?}");
    }

    // Scale out: three more brokers; they take nothing until the rebalance.
    for _ in 0..3 {
        c.add_broker().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = c.floectl(0, &["status", "-o", "json"]);
        let s = parse(&out);
        let l = loads(&meta).await;
        if s["brokers"].as_array().unwrap().len() == 6 && (4..=6).all(|b| l.contains_key(&b)) {
            break;
        }
        assert!(Instant::now() < deadline, "new brokers not registered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = written_by(&meta).await;
    assert_eq!(
        (4..=6)
            .map(|b| before.get(&b).copied().unwrap_or(0))
            .sum::<usize>(),
        0,
        "with --balance-on-join false the new brokers wait: {before:?}"
    );

    // The plan (a dry run changes nothing): 30 moves to the new brokers; a
    // few swaps between old ones may follow when measurement noise leaves
    // a broker just outside the ±10% band (on S3 targets a partition's
    // bytes land in bursts, one WAL object at a time, so its measured
    // rate is noisier).
    let (code, out, err) = c.floectl(0, &["rebalance", "--dry-run", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let plan = parse(&out);
    let planned = plan["moves"].as_array().unwrap();
    assert!((30..=34).contains(&planned.len()), "{plan}");
    // Net 30 partitions to the new brokers (a noise swap may involve one).
    let onto_new = |field: &str| {
        planned
            .iter()
            .filter(|m| m[field].as_i64().unwrap() >= 4)
            .count()
    };
    assert_eq!(onto_new("to") - onto_new("from"), 30, "{plan}");
    assert_eq!(plan["counts_within_one"], true);
    assert_eq!(
        plan["load_balanced"], true,
        "the traffic is above the threshold: {plan}"
    );
    assert_eq!(plan["load_within_band"], true, "{plan}");
    assert_eq!(written_by(&meta).await, before, "a dry run moves nothing");
    // The table says the same (each dry run plans afresh: 30 to 32 moves).
    let (code, table, err) = c.floectl(0, &["rebalance", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        (30..=32).any(|n| table.contains(&format!("{n} moves"))) && table.contains("LOAD AFTER"),
        "{table}"
    );

    // Execute and wait.
    let acked_before = load.acked();
    let started = Instant::now();
    let (code, out, err) = c.floectl(
        0,
        &["rebalance", "--wait", "--max-in-flight", "6", "-o", "json"],
    );
    let wall = started.elapsed();
    assert_eq!(
        code,
        0,
        "{out}{err}\ncontroller:\n{}",
        c.controllers[0].log_text()
    );
    let op = parse(&out);
    assert_eq!(op["state"], "done", "{op}");
    let total = op["total"].as_u64().unwrap() as usize;
    assert!((30..=32).contains(&total), "{op}");
    assert_eq!(op["done"].as_u64().unwrap() as usize, total, "{op}");
    assert_eq!(op["failed"], 0);
    let took: Vec<u64> = op["moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["took_ms"].as_u64().unwrap())
        .collect();
    let mut sorted = took.clone();
    sorted.sort();
    println!(
        "scale-out rebalance: {total} moves of 60 partitions in {:.2} s wall time (floectl rebalance --wait, 6 in flight); per move p50 {} ms, max {} ms; {} records acked meanwhile",
        wall.as_secs_f64(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        load.acked() - acked_before
    );
    // The operation's record in etcd is what floectl showed.
    let id = op["id"].as_str().unwrap();
    let rec = floe_meta::schema::OperationRecord::decode(
        meta.get(&keys::operation(id)).await.unwrap().unwrap().value,
    )
    .unwrap();
    assert_eq!(rec.state, "done");
    assert_eq!(
        rec.moves.iter().filter(|m| m.status == "done").count(),
        total
    );
    let (code, out, _) = c.floectl(0, &["op", "list", "-o", "json"]);
    assert_eq!(code, 0);
    assert!(parse(&out)["operations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["id"] == id && o["state"] == "done"));

    // Every broker within ±1 of 10 partitions, per etcd.
    let after = written_by(&meta).await;
    assert_eq!(after.values().sum::<usize>(), 60, "{after:?}");
    for b in 1..=6 {
        let n = after.get(&b).copied().unwrap_or(0);
        assert!((9..=11).contains(&n), "broker {b} writes {n}: {after:?}");
    }
    // Measured load after two fresh reports: every broker within ±25% of
    // the mean (the planner aims at ±10%; two-second windows are noisy).
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // A report whose whole two-second window is after the rebalance.
    let settled_ms = now_ms() + 2_500;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let l = loads(&meta).await;
        if !(1..=6).all(|b| l.get(&b).is_some_and(|r| r.reported_ms > settled_ms)) {
            assert!(Instant::now() < deadline, "no fresh load reports");
            continue;
        }
        let rates: Vec<u64> = (1..=6).map(|b| l[&b].bytes_in_per_sec).collect();
        let mean = rates.iter().sum::<u64>() / 6;
        let within = rates
            .iter()
            .all(|r| (*r as f64 - mean as f64).abs() <= mean as f64 * 0.25);
        println!("measured bytes in per broker after the rebalance: {rates:?} (mean {mean})");
        if within {
            break;
        }
        assert!(Instant::now() < deadline, "load not within ±25%: {rates:?}");
    }
    // A second rebalance finds nothing to move by count.
    let (code, out, err) = c.floectl(
        0,
        &[
            "rebalance",
            "--dry-run",
            "-o",
            "json",
            "--min-load",
            "1000000000",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        parse(&out)["moves"].as_array().map_or(0, Vec::len),
        0,
        "{out}"
    );

    // Clients going through the proxies saw no error, and nothing is lost.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, failed) = load.finish().await;
    assert!(failed.is_empty(), "sends failed: {failed:?}");
    assert!(
        acked.len() > 1_000,
        "the load ran ({} records)",
        acked.len()
    );
    if prefill_mb == 0 {
        assert_all_readable(&b, "scale", PARTITIONS, &acked);
    }
}

/// Per target: segment replicas held, from the segment records and the
/// checkpoints' open segments.
async fn held_per_target(meta: &dyn MetadataStore) -> BTreeMap<String, u32> {
    let (kvs, _) = meta.range(&keys::partitions_prefix()).await.unwrap();
    let mut out = BTreeMap::new();
    for kv in kvs {
        let key = String::from_utf8_lossy(&kv.key).to_string();
        let sets: Vec<Vec<String>> = if key.contains("/segments/") {
            vec![SegmentRecord::decode(kv.value).unwrap().replica_set]
        } else if key.ends_with("/checkpoint") {
            CheckpointRecord::decode(kv.value)
                .unwrap()
                .open_segments
                .into_iter()
                .map(|o| o.replica_set)
                .collect()
        } else {
            continue;
        };
        for set in sets {
            for t in set {
                *out.entry(t).or_default() += 1;
            }
        }
    }
    out
}

/// The storage pool as etcd has it.
async fn pool_record(meta: &dyn MetadataStore) -> StoragePoolRecord {
    let kv = meta.get(&keys::storage_pool()).await.unwrap().unwrap();
    StoragePoolRecord::decode(kv.value).unwrap()
}

fn targets_json(c: &Cluster) -> BTreeMap<String, serde_json::Value> {
    let (code, out, err) = c.floectl(0, &["storage", "list", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    parse(&out)["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_targets_are_added_drained_with_progress_and_removed_without_losing_data() {
    let dirs = tempfile::tempdir().unwrap();
    let url = |t: &str| format!("file://{}", dirs.path().join(t).display());
    let urls: Vec<String> = ["t0", "t1", "t2"].iter().map(|t| url(t)).collect();
    let mut c = Cluster::start_with_pool(2, 1, 3_000, "", &urls, 2, 2).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.proxy_bootstrap();
    // Small segments: many sealed ones to move.
    floe_e2e::create_topic_with(&b, "st", 4, &[("segment.bytes", "65536")]).await;
    let meta = c.meta().await.unwrap();

    let load = Load::start(&b, "st", 4, 1024, 400);
    let deadline = Instant::now() + Duration::from_secs(60);
    while load.acked() < 1_500 {
        assert!(Instant::now() < deadline, "producing stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The list matches etcd: ids, URLs, health, replicas held.
    let held_before = held_per_target(&meta).await;
    let t = targets_json(&c);
    let held_after = held_per_target(&meta).await;
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), ["t0", "t1", "t2"]);
    for (id, v) in &t {
        assert_eq!(v["health"], "up", "{id}: {v}");
        assert_eq!(v["url"], url(id));
    }
    // Segments roll meanwhile: floectl's count lies between what etcd held
    // just before and just after it (give or take a roll in flight), and
    // every target holds some.
    for id in ["t0", "t1", "t2"] {
        let listed = t[id]["segments"].as_u64().unwrap() as i64;
        let count = |h: &BTreeMap<String, u32>| h.get(id).copied().unwrap_or(0) as i64;
        let (lo, hi) = (count(&held_before), count(&held_after));
        assert!(listed > 0, "{id} holds segments");
        assert!(
            lo.min(hi) - 2 <= listed && listed <= lo.max(hi) + 2,
            "{id}: floectl {listed}, etcd {lo} before and {hi} after"
        );
    }

    // Add a fourth target; new segments use it.
    let (code, out, err) = c.floectl(0, &["storage", "add", "t3", &url("t3"), "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(parse(&out)["health"], "up");
    let pool = pool_record(&meta).await;
    assert_eq!(
        pool.targets
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["t0", "t1", "t2", "t3"]
    );
    let (code, _, err) = c.floectl(0, &["storage", "add", "t3", &url("t9")]);
    assert_eq!(code, 1, "a duplicate id is refused: {err}");
    assert!(err.contains("exists"), "{err}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_per_target(&meta).await.get("t3").copied().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "no new segment went to t3");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Removing a target that is not drained is refused.
    let (code, _, err) = c.floectl(0, &["storage", "remove", "t1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("drain it first"), "{err}");
    let (code, _, err) = c.floectl(0, &["storage", "drain", "nope"]);
    assert_eq!(code, 4, "{err}");

    // Drain t1 under load, with progress.
    let on_t1 = held_per_target(&meta).await.get("t1").copied().unwrap_or(0);
    assert!(on_t1 > 0);
    let started = Instant::now();
    let (code, out, err) = c.floectl(0, &["storage", "drain", "t1", "--wait"]);
    assert_eq!(
        code,
        0,
        "{out}{err}\nbroker logs:\n{}",
        c.brokers.iter().map(|b| b.log_text()).collect::<String>()
    );
    println!(
        "drained storage target t1 ({on_t1} segment replicas) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("draining storage target t1: "))
        .collect();
    assert!(progress.len() >= 2, "repair progress shown: {err}");
    assert!(
        progress
            .last()
            .unwrap()
            .contains("segment replicas moved off"),
        "{err}"
    );
    assert!(out.contains("holds no segment"), "{out}");
    assert_eq!(
        held_per_target(&meta).await.get("t1"),
        None,
        "etcd: nothing names t1"
    );
    let t = targets_json(&c);
    assert_eq!(t["t1"]["draining"], true);
    assert_eq!(t["t1"]["segments"], 0);

    // Remove it, then delete its directory: every record is still there.
    let (code, out, err) = c.floectl(0, &["storage", "remove", "t1"]);
    assert_eq!(code, 0, "{out}{err}");
    let pool = pool_record(&meta).await;
    assert!(!pool.targets.iter().any(|t| t.id == "t1"));
    assert!(!targets_json(&c).contains_key("t1"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (acked, failed) = load.finish().await;
    assert!(failed.is_empty(), "sends failed: {failed:?}");
    std::fs::remove_dir_all(dirs.path().join("t1")).unwrap();
    // A fresh proxy (empty cache) reads everything from the remaining
    // targets.
    c.proxies[0].restart().unwrap();
    assert_all_readable(&b, "st", 4, &acked);
}

/// A storage target emptied under load (a new disk, a recreated bucket:
/// here its directory deleted and made again): its identity marker goes
/// with its contents, so `floectl storage list` shows it lost; undraining
/// it is refused while segments still name it; a drain moves them off
/// (copied from the replicas that kept them); undrain then marks it anew
/// and it is healthy again. No acked record is lost on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_target_emptied_under_load_is_lost_until_drained_and_marked_anew() {
    let dirs = tempfile::tempdir().unwrap();
    let url = |t: &str| format!("file://{}", dirs.path().join(t).display());
    let urls: Vec<String> = ["t0", "t1", "t2"].iter().map(|t| url(t)).collect();
    let mut c = Cluster::start_with_pool(
        2,
        1,
        3_000,
        "storage_probe_interval_ms = 300\n",
        &urls,
        2,
        2,
    )
    .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.proxy_bootstrap();
    floe_e2e::create_topic_with(&b, "lost", 4, &[("segment.bytes", "65536")]).await;
    let meta = c.meta().await.unwrap();

    // Every target holds the marker its pool record names.
    let pool = pool_record(&meta).await;
    for t in &pool.targets {
        assert!(t.marker.contains(&format!("target={}", t.id)), "{t:?}");
        let on_disk =
            std::fs::read_to_string(dirs.path().join(&t.id).join("_floe/target")).unwrap();
        assert_eq!(on_disk, t.marker, "{}", t.id);
    }

    let load = Load::start(&b, "lost", 4, 1024, 400);
    let wait_acked = |n: usize| {
        let load = &load;
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while load.acked() < n {
                assert!(Instant::now() < deadline, "producing stalled");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_acked(1_000).await;
    assert!(held_per_target(&meta).await.get("t1").copied().unwrap_or(0) > 0);

    // t1 loses everything: its directory swapped for an empty one at once
    // (deleting it file by file would race the writers).
    let t1_dir = dirs.path().join("t1");
    std::fs::rename(&t1_dir, dirs.path().join("t1-old")).unwrap();
    std::fs::create_dir_all(&t1_dir).unwrap();
    let _ = std::fs::remove_dir_all(dirs.path().join("t1-old"));
    let t = targets_json(&c);
    let health = t["t1"]["health"].as_str().unwrap().to_string();
    assert!(
        health.starts_with("lost: ") && health.contains("identity marker"),
        "{health}"
    );
    assert_eq!(t["t0"]["health"], "up");
    assert_eq!(t["t2"]["health"], "up");
    let acked_at_wipe = load.acked();
    wait_acked(acked_at_wipe + 500).await;

    // Not trusted again while segments still name it.
    let (code, _, err) = c.floectl(0, &["storage", "undrain", "t1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("lost its contents") && err.contains("drain it"),
        "{err}"
    );

    let (code, out, err) = c.floectl(0, &["storage", "drain", "t1", "--wait"]);
    assert_eq!(
        code,
        0,
        "{out}{err}\nbroker logs:\n{}",
        c.brokers.iter().map(|b| b.log_text()).collect::<String>()
    );
    assert_eq!(held_per_target(&meta).await.get("t1"), None);
    let (code, out, err) = c.floectl(0, &["storage", "undrain", "t1", "-o", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(parse(&out)["health"], "up", "{out}");
    let marker = pool_record(&meta)
        .await
        .targets
        .into_iter()
        .find(|t| t.id == "t1")
        .unwrap()
        .marker;
    assert!(marker.ends_with("incarnation=2"), "{marker}");
    assert_eq!(
        std::fs::read_to_string(t1_dir.join("_floe/target")).unwrap(),
        marker
    );
    // Brokers see the new marker and place new segments on t1 again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_per_target(&meta).await.get("t1").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no new segment went to t1");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (acked, failed) = load.finish().await;
    assert!(failed.is_empty(), "sends failed: {failed:?}");
    c.proxies[0].restart().unwrap();
    assert_all_readable(&b, "lost", 4, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_rebalance_stops_after_the_moves_in_flight() {
    let mut c = Cluster::start_with(2, 1, 3_000, "load_report_interval_ms = 1000\n").unwrap();
    c.restart_controllers_with(&["--balance-on-join", "false"])
        .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    floe_e2e::create_topic(&c.proxy_bootstrap(), "cx", 40).await;
    let meta = c.meta().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while written_by(&meta).await.values().sum::<usize>() < 40 {
        assert!(Instant::now() < deadline, "partitions not all writing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.add_broker().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !loads(&meta).await.contains_key(&3) {
        assert!(Instant::now() < deadline, "broker 3 did not report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Broker 3 paused (well within its lease): the first move cannot
    // finish before the second request and the cancel below are in.
    c.brokers[2].signal("-STOP").unwrap();
    let (code, out, err) = c.floectl(0, &["rebalance", "--max-in-flight", "1", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let started = parse(&out);
    let id = started["operation"]["id"].as_str().unwrap().to_string();
    let total = started["operation"]["total"].as_u64().unwrap();
    assert_eq!(
        total, 13,
        "40 partitions over 3 brokers: 13 move to broker 3"
    );
    // A second rebalance is refused while this one runs.
    let (code, _, err) = c.floectl(0, &["rebalance"]);
    assert!(
        code == 1 && err.contains("already"),
        "a concurrent rebalance: {code} {err}"
    );
    let (code, _, err) = c.floectl(0, &["op", "cancel", &id]);
    assert_eq!(code, 0, "{err}");
    c.brokers[2].signal("-CONT").unwrap();
    let (code, out, err) = c.floectl(0, &["op", "watch", &id, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let op = parse(&out);
    assert_eq!(op["state"], "cancelled", "{op}");
    let done = op["done"].as_u64().unwrap();
    let skipped = op["skipped"].as_u64().unwrap();
    assert!(skipped > 0 && done < total, "{op}");
    assert_eq!(done + skipped + op["failed"].as_u64().unwrap(), total);
    // etcd: the record says cancelled, and broker 3 writes what was moved.
    let rec = floe_meta::schema::OperationRecord::decode(
        meta.get(&keys::operation(&id))
            .await
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(rec.state, "cancelled");
    assert!(meta
        .get(&keys::operation_cancel(&id))
        .await
        .unwrap()
        .is_none());
    assert!(
        meta.get(&keys::operation_active()).await.unwrap().is_none(),
        "a finished operation frees the active slot"
    );
    assert_eq!(
        written_by(&meta).await.get(&3).copied().unwrap_or(0) as u64,
        done
    );
    let (code, _, err) = c.floectl(0, &["op", "cancel", &id]);
    assert_eq!(code, 1, "cancelling a finished operation: {err}");
    let (code, _, _) = c.floectl(0, &["op", "show", "nope"]);
    assert_eq!(code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_drain_copies_no_faster_than_repair_max_bytes_per_sec() {
    const RATE: u64 = 250_000;
    let dirs = tempfile::tempdir().unwrap();
    let urls: Vec<String> = ["t0", "t1", "t2"]
        .iter()
        .map(|t| format!("file://{}", dirs.path().join(t).display()))
        .collect();
    let c = Cluster::start_with_pool(
        1,
        1,
        3_000,
        &format!("repair_max_bytes_per_sec = {RATE}\n"),
        &urls,
        2,
        2,
    )
    .unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.bootstrap();
    floe_e2e::create_topic_with(&b, "pace", 1, &[("segment.bytes", "65536")]).await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("acks", "all")
        .set("linger.ms", "5")
        // Small batches: segments roll between them.
        .set("batch.size", "16384")
        .create()
        .unwrap();
    let payload = |i: usize| format!("{i:06}").repeat(170).into_bytes();
    // In groups of 40 (about one 64 KiB segment each): chunks, and so
    // segment rolls, come between groups.
    let mut offsets = Vec::new();
    for group in 0..30 {
        let sends: Vec<_> = (group * 40..(group + 1) * 40)
            .map(|i| {
                let p = payload(i);
                let producer = producer.clone();
                async move {
                    producer
                        .send(
                            rdkafka::producer::FutureRecord::<(), _>::to("pace")
                                .partition(0)
                                .payload(&p),
                            Duration::from_secs(30),
                        )
                        .await
                        .map(|d| d.offset)
                        .map_err(|(e, _)| e.to_string())
                }
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            offsets.push(r.unwrap());
        }
    }
    assert_eq!(offsets.iter().max(), Some(&1_199));

    // What t0 holds in sealed segments, and the largest one (the burst).
    let meta = c.meta().await.unwrap();
    let (kvs, _) = meta.range(&keys::partitions_prefix()).await.unwrap();
    let on_t0: Vec<u64> = kvs
        .iter()
        .filter(|kv| String::from_utf8_lossy(&kv.key).contains("/segments/"))
        .map(|kv| SegmentRecord::decode(kv.value.clone()).unwrap())
        .filter(|s| s.replica_set.iter().any(|t| t == "t0"))
        .map(|s| s.object_bytes)
        .collect();
    let bytes: u64 = on_t0.iter().sum();
    let largest = on_t0.iter().copied().max().unwrap_or(0);
    assert!(
        on_t0.len() >= 4,
        "sealed segments on t0: {} of {:?}",
        on_t0.len(),
        kvs.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).to_string())
            .collect::<Vec<_>>()
    );

    let started = Instant::now();
    let (code, out, err) = c.floectl(0, &["storage", "drain", "t0", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    let took = started.elapsed().as_secs_f64();
    // The first copy may start at once; every later byte waits its turn.
    let floor = (bytes - largest) as f64 / RATE as f64;
    println!(
        "drained {} segment replicas ({bytes} bytes) at {RATE} B/s in {took:.2} s (floor {floor:.2} s)",
        on_t0.len()
    );
    assert!(
        took >= floor * 0.95,
        "{bytes} bytes copied in {took:.2} s: faster than {RATE} B/s allows"
    );
    let metrics = c.brokers[0].http("/metrics").unwrap();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(metric("floe_repair_bytes_total") >= bytes as f64);
    assert!(metric("floe_repair_throttled_seconds_total") > 0.0);
    assert_eq!(held_per_target(&meta).await.get("t0"), None);

    // Every record, in order, from the two targets left.
    let read = floe_e2e::read_all(&b, "pace", 1);
    let got = &read[&0];
    assert_eq!(got.len(), 1_200);
    for (i, (offset, value)) in got.iter().enumerate() {
        assert_eq!((*offset, value), (i as i64, &payload(i)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_is_finished_by_the_next_leader_when_the_leading_controller_is_killed() {
    let mut c = Cluster::start_with(2, 2, 2_000, "load_report_interval_ms = 1000\n").unwrap();
    c.restart_controllers_with(&["--balance-on-join", "false"])
        .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.proxy_bootstrap();
    floe_e2e::create_topic(&b, "fo", 60).await;
    let meta = c.meta().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while written_by(&meta).await.values().sum::<usize>() < 60 {
        assert!(Instant::now() < deadline, "partitions not all writing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = Load::start(&b, "fo", 60, 512, 300);
    c.add_broker().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !loads(&meta).await.contains_key(&3) {
        assert!(Instant::now() < deadline, "broker 3 did not report");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Asked of the standby; the leader executes it, one move at a time.
    // Counts only (a min load above the traffic): exactly 20 moves.
    let leader = c.leading_controller().unwrap();
    let standby = 1 - leader;
    let (code, out, err) = c.floectl(
        standby,
        &[
            "rebalance",
            "--max-in-flight",
            "1",
            "--min-load",
            "1000000000",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = parse(&out)["operation"]["id"].as_str().unwrap().to_string();
    let record = || async {
        floe_meta::schema::OperationRecord::decode(
            meta.get(&keys::operation(&id))
                .await
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap()
    };
    assert_eq!(record().await.moves.len(), 20, "60 over 3: 20 to broker 3");
    let done = |r: &floe_meta::schema::OperationRecord| {
        r.moves.iter().filter(|m| m.status == "done").count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = record().await;
        if done(&r) >= 2 {
            assert_eq!(r.state, "running");
            assert_eq!(r.executor, c.controllers[leader].name);
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {r:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.controllers[leader].stop_with("-KILL").unwrap();
    let killed_at = done(&record().await);
    assert!(killed_at < 20, "the operation ended before the kill");

    // The standby takes over when the lease lapses and resumes it.
    let (code, out, err) = c.floectl(standby, &["op", "watch", &id, "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let op = parse(&out);
    assert_eq!(op["state"], "done", "{op}");
    assert_eq!(op["done"], 20, "{op}");
    let r = record().await;
    assert_eq!(r.state, "done");
    assert_eq!(r.executor, c.controllers[standby].name);
    assert!(done(&r) == 20 && r.moves.iter().all(|m| m.to == 3));
    assert!(c.controllers[standby]
        .log_text()
        .contains("resuming an operation a former leader ran"));
    assert!(meta.get(&keys::operation_active()).await.unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = written_by(&meta).await;
        if w.get(&3) == Some(&20) && w.values().sum::<usize>() == 60 {
            break;
        }
        assert!(Instant::now() < deadline, "placement: {w:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("killed the leading controller after {killed_at} of 20 moves; the standby finished the rest");

    // Producers through the proxies saw no error; every ack is readable.
    let (acked, failed) = load.finish().await;
    assert!(failed.is_empty(), "sends failed: {failed:?}");
    assert_all_readable(&b, "fo", 60, &acked);
}
