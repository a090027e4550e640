//! Chaos on a real cluster, seeded: three file storage targets (R=3, W=2),
//! three brokers (lease TTL 6 s), one controller and two proxies as real
//! processes on a real etcd; an idempotent acks=all librdkafka producer
//! writes ~2,000 records/s to 12 partitions through the proxies while one
//! fault every 3–6 s hits the cluster: kill -9 of a broker restarted at once
//! under the same id (as Kubernetes restarts a pod in place), SIGSTOP of a
//! broker for the lease TTL + 3 s, kill -9 of a proxy restarted at once, a
//! storage target refusing every read and write for 5 s (its directory's
//! permissions removed while the Floe processes run without the capability
//! that overrides them), `floectl move` and `floectl rebalance --wait`.
//!
//! The checker then reads every partition from the start: every acked
//! record at its exact offset with its value, no record twice, offsets
//! dense; and it measures, per partition, the longest time without an ack,
//! split into partitions of a faulty broker (killed or stopped: allowed
//! the lease TTL plus a little) and all others (allowed a short hold).
//!
//! Odd seeds write chunks per partition, even seeds into shared WAL
//! objects (`chunk_layout = "wal"`, issue 24), with the controller's WAL
//! garbage collection every 2 s and a 5 s grace, so that readers race the
//! deletes; `FLOE_CHAOS_LAYOUT=wal|partition` forces one.
//!
//! In CI: two seeds of 40 s each (one per layout), with loose stall
//! bounds for a loaded machine. The long run (figures in docs/benchmarks.md):
//! `cargo build -p floe --bins && FLOE_CHAOS_SEEDS=1-20 FLOE_CHAOS_SECS=150 cargo test -p floe-e2e --test chaos -- --ignored chaos_many_seeds --nocapture`
//! (an hour; `FLOE_CHAOS_HEALTHY_MAX_MS` / `FLOE_CHAOS_FAULTY_MAX_MS` set
//! the stall bounds asserted, `FLOE_CHAOS_LOGS=dir` keeps every process's
//! log per seed).
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, floectl_bin, Cluster, ADMIN_TOKEN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const LEASE_TTL_MS: u64 = 6_000;
const PARTITIONS: i32 = 12;
const TOPIC: &str = "chaos";
const BROKERS: usize = 3;
const PROXIES: usize = 2;

struct Settings {
    secs: u64,
    rate: u64,
    healthy_max_ms: u64,
    faulty_max_ms: u64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings() -> Settings {
    Settings {
        secs: env_u64("FLOE_CHAOS_SECS", 40),
        rate: env_u64("FLOE_CHAOS_RATE", 2_000),
        // CI machines are shared and small: the bounds asserted there are
        // loose; the long run sets the real ones (1 s; TTL + 1 s).
        healthy_max_ms: env_u64("FLOE_CHAOS_HEALTHY_MAX_MS", 5_000),
        faulty_max_ms: env_u64("FLOE_CHAOS_FAULTY_MAX_MS", LEASE_TTL_MS + 8_000),
    }
}

/// `FLOE_CHAOS_SEEDS`: `a-b` or `a,b,c`.
fn seeds(default: &str) -> Vec<u64> {
    let spec = std::env::var("FLOE_CHAOS_SEEDS").unwrap_or_else(|_| default.to_string());
    if let Some((a, b)) = spec.split_once('-') {
        let (a, b): (u64, u64) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
        return (a..=b).collect();
    }
    spec.split(',').map(|s| s.trim().parse().unwrap()).collect()
}

#[derive(Clone, Debug)]
enum Kind {
    KillBroker(i32),
    StopBroker(i32),
    KillProxy(usize),
    TargetDown(usize),
    Move { partition: i32, to: i32 },
    Rebalance,
}

#[derive(Clone, Debug)]
struct Fault {
    kind: Kind,
    start: Instant,
    end: Option<Instant>,
    note: String,
}

impl Fault {
    /// The broker a broker fault is about.
    fn broker(&self) -> Option<i32> {
        match self.kind {
            Kind::KillBroker(b) | Kind::StopBroker(b) => Some(b),
            _ => None,
        }
    }
}

/// Assignments sampled over time: (when, partition → broker).
type Owners = Vec<(Instant, BTreeMap<i32, i32>)>;

async fn owners(meta: &floe_meta::EtcdStore, topic_id: floe_common::Uuid) -> BTreeMap<i32, i32> {
    use floe_meta::MetadataStore;
    use prost::Message as _;
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let id = floe_common::PartitionId::new(topic_id, p);
        if let Ok(Some(kv)) = meta.get(&floe_meta::keys::assignment(id)).await {
            if let Ok(a) = floe_meta::schema::AssignmentRecord::decode(kv.value) {
                out.insert(p, a.broker_id);
            }
        }
    }
    out
}

fn floectl(admin: &str, args: &[String]) -> std::thread::JoinHandle<std::io::Result<Output>> {
    let admin = admin.to_string();
    let args = args.to_vec();
    std::thread::spawn(move || {
        Command::new(floectl_bin())
            .arg("--controller")
            .arg(admin)
            .args(args)
            .env("FLOE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env_remove("FLOE_ADMIN_TOKEN_FILE")
            .output()
    })
}

fn set_mode(dir: &PathBuf, mode: u32) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Inject one fault every 3–6 s until `until`, then let every fault end.
fn run_faults(
    cluster: &mut Cluster,
    seed: u64,
    until: Instant,
    targets: &[PathBuf],
    topic_id: floe_common::Uuid,
) -> (Vec<Fault>, Owners) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let meta = rt.block_on(cluster.meta()).unwrap();
    let admin = cluster.admin_url(0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults: Vec<Fault> = Vec::new();
    let mut samples: Owners = Vec::new();
    let mut next = Instant::now() + Duration::from_millis(rng.random_range(3_000..6_000));
    let mut last_sample = Instant::now() - Duration::from_secs(1);
    // (broker index, resume at, fault)
    let mut stopped: Option<(usize, Instant, usize)> = None;
    // (broker index, fault): killed, started again, not answering yet.
    let mut restarting: Option<(usize, usize)> = None;
    let mut down: Option<(usize, Instant, usize)> = None;
    let mut proxy_restarting: Option<(usize, usize)> = None;
    let mut cli: Vec<(usize, std::thread::JoinHandle<std::io::Result<Output>>)> = Vec::new();
    loop {
        let now = Instant::now();
        if now - last_sample >= Duration::from_millis(250) {
            samples.push((now, rt.block_on(owners(&meta, topic_id))));
            last_sample = now;
        }
        if let Some((b, at, f)) = stopped {
            if now >= at {
                cluster.brokers[b].signal("-CONT").unwrap();
                faults[f].end = Some(now);
                stopped = None;
            }
        }
        if let Some((b, f)) = restarting {
            if cluster.brokers[b].healthy() {
                faults[f].end = Some(now);
                faults[f].note = format!(
                    "up again after {:.2} s",
                    (now - faults[f].start).as_secs_f64()
                );
                restarting = None;
            }
        }
        if let Some((t, at, f)) = down {
            if now >= at {
                set_mode(&targets[t], 0o755);
                faults[f].end = Some(now);
                down = None;
            }
        }
        if let Some((p, f)) = proxy_restarting {
            if cluster.proxies[p].healthy() {
                faults[f].end = Some(now);
                proxy_restarting = None;
            }
        }
        let mut i = 0;
        while i < cli.len() {
            if cli[i].1.is_finished() {
                let (f, h) = cli.swap_remove(i);
                let out = h.join().unwrap().unwrap();
                faults[f].end = Some(Instant::now());
                faults[f].note = format!(
                    "exit {}: {}{}",
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            } else {
                i += 1;
            }
        }
        let busy = stopped.is_some()
            || restarting.is_some()
            || down.is_some()
            || proxy_restarting.is_some()
            || !cli.is_empty();
        if now >= until && !busy {
            break;
        }
        if now < until && now >= next {
            next = now + Duration::from_millis(rng.random_range(3_000..6_000));
            let broker_faulty = stopped.is_some() || restarting.is_some();
            let rebalancing = cli
                .iter()
                .any(|(f, _)| matches!(faults[*f].kind, Kind::Rebalance));
            let healthy: Vec<usize> = (0..BROKERS)
                .filter(|b| {
                    stopped.is_none_or(|(s, _, _)| s != *b)
                        && restarting.is_none_or(|(s, _)| s != *b)
                })
                .collect();
            let kind = loop {
                match rng.random_range(0..6) {
                    0 if !broker_faulty => {
                        break Kind::KillBroker(rng.random_range(0..BROKERS) as i32 + 1)
                    }
                    1 if !broker_faulty => {
                        break Kind::StopBroker(rng.random_range(0..BROKERS) as i32 + 1)
                    }
                    2 if proxy_restarting.is_none() => {
                        break Kind::KillProxy(rng.random_range(0..PROXIES))
                    }
                    3 if down.is_none() => {
                        break Kind::TargetDown(rng.random_range(0..targets.len()))
                    }
                    4 => {
                        let partition = rng.random_range(0..PARTITIONS);
                        let to = healthy[rng.random_range(0..healthy.len())] as i32 + 1;
                        break Kind::Move { partition, to };
                    }
                    5 if !rebalancing && !broker_faulty => break Kind::Rebalance,
                    _ => {}
                }
            };
            let f = faults.len();
            faults.push(Fault {
                kind: kind.clone(),
                start: Instant::now(),
                end: None,
                note: String::new(),
            });
            match kind {
                Kind::KillBroker(b) => {
                    let i = b as usize - 1;
                    cluster.brokers[i].stop_with("-KILL").unwrap();
                    cluster.brokers[i].start_nowait().unwrap();
                    restarting = Some((i, f));
                }
                Kind::StopBroker(b) => {
                    let i = b as usize - 1;
                    cluster.brokers[i].signal("-STOP").unwrap();
                    stopped = Some((
                        i,
                        Instant::now() + Duration::from_millis(LEASE_TTL_MS + 3_000),
                        f,
                    ));
                }
                Kind::KillProxy(p) => {
                    cluster.proxies[p].stop_with("-KILL").unwrap();
                    cluster.proxies[p].start_nowait().unwrap();
                    proxy_restarting = Some((p, f));
                }
                Kind::TargetDown(t) => {
                    set_mode(&targets[t], 0o000);
                    down = Some((t, Instant::now() + Duration::from_secs(5), f));
                }
                Kind::Move { partition, to } => cli.push((
                    f,
                    floectl(
                        &admin,
                        &[
                            "move".into(),
                            TOPIC.into(),
                            partition.to_string(),
                            "--to".into(),
                            to.to_string(),
                        ],
                    ),
                )),
                Kind::Rebalance => cli.push((
                    f,
                    floectl(
                        &admin,
                        &[
                            "rebalance".into(),
                            "--wait".into(),
                            "--timeout-ms".into(),
                            "60000".into(),
                        ],
                    ),
                )),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (faults, samples)
}

#[derive(Clone, Copy, Debug)]
struct Ack {
    partition: i32,
    offset: i64,
    seq: u64,
    at: Instant,
}

/// What happened to a record the producer was given.
/// librdkafka's own log of the load producer, with its idempotence
/// decisions (debug context "eos": epoch bumps, sequence resets, retries),
/// to explain a duplicate or a gap when one is found.
#[derive(Clone)]
struct ClientLog {
    t0: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl rdkafka::ClientContext for ClientLog {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        let line = format!(
            "{:9.3}s {level:?} {fac} {msg}",
            self.t0.elapsed().as_secs_f64()
        );
        self.lines.lock().unwrap().push(line);
    }
}

#[derive(Default)]
struct Produced {
    acked: Vec<Ack>,
    failed: Vec<(u64, String)>,
}

/// Processes run without the capabilities that let root ignore file
/// permissions, so that a target directory made unreadable refuses them.
fn wrapper() -> Vec<&'static str> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Vec::new();
    }
    let wrapper = vec![
        "setpriv",
        "--inh-caps=-dac_override,-dac_read_search",
        "--bounding-set=-dac_override,-dac_read_search",
        "--",
    ];
    let works = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        // A container without CAP_SETPCAP: the processes keep the
        // capability, so a target's removed permissions do not stop them.
        println!("warning: setpriv cannot drop capabilities here: the storage-target faults of this run have no effect");
        return Vec::new();
    }
    wrapper
}

/// The longest time a partition went without an ack, per class.
#[derive(Debug, Default)]
struct Stalls {
    /// (ms, partition, gap start relative to the run) of partitions owned
    /// by a killed or stopped broker during the gap.
    faulty: Option<(u64, i32, f64)>,
    /// Gaps in which the partition went from one failing broker to another
    /// failing one (the second still held a live lease when the controller
    /// chose it): up to two lease TTLs, and not bound by one.
    chained: Option<(u64, i32, f64)>,
    /// Every other partition, gaps that overlap a proxy restart excluded.
    healthy: Option<(u64, i32, f64)>,
    /// Gaps overlapping a proxy kill (clients reconnect).
    proxy: Option<(u64, i32, f64)>,
    /// The longest gaps of the healthy class, for the report.
    healthy_top: Vec<(u64, i32, f64)>,
}

fn longer(slot: &mut Option<(u64, i32, f64)>, v: (u64, i32, f64)) {
    if slot.is_none_or(|s| v.0 > s.0) {
        *slot = Some(v);
    }
}

fn stalls(acked: &[Ack], faults: &[Fault], samples: &Owners, t0: Instant) -> Stalls {
    let mut by_partition: HashMap<i32, Vec<Instant>> = HashMap::new();
    for a in acked {
        by_partition.entry(a.partition).or_default().push(a.at);
    }
    let owned_by = |p: i32, b: i32, from: Instant, to: Instant| {
        samples.iter().any(|(at, m)| {
            *at + Duration::from_millis(500) >= from && *at <= to && m.get(&p) == Some(&b)
        })
    };
    let mut out = Stalls::default();
    for (p, mut times) in by_partition {
        times.sort();
        for w in times.windows(2) {
            let (a, b) = (w[0], w[1]);
            let gap = (b - a).as_millis() as u64;
            if gap < 200 {
                continue;
            }
            let overlaps = |f: &Fault| f.start <= b && f.end.unwrap_or(b) >= a;
            let entry = (gap, p, (a - t0).as_secs_f64());
            let faulty_owners = faults
                .iter()
                .filter(|f| {
                    overlaps(f)
                        && f.broker().is_some_and(|broker| {
                            owned_by(p, broker, a.max(f.start), b.min(f.end.unwrap_or(b)))
                        })
                })
                .count();
            // A proxy restart first: clients reconnect to it on their own
            // schedule (librdkafka backs off up to reconnect.backoff.max.ms,
            // 10 s, when one proxy is killed again and again), whatever
            // else is going on.
            if faults
                .iter()
                .any(|f| overlaps(f) && matches!(f.kind, Kind::KillProxy(_)))
            {
                longer(&mut out.proxy, entry);
            } else if faulty_owners >= 2 {
                longer(&mut out.chained, entry);
            } else if faulty_owners == 1 {
                longer(&mut out.faulty, entry);
            } else {
                longer(&mut out.healthy, entry);
                out.healthy_top.push(entry);
            }
        }
    }
    out.healthy_top.sort_by_key(|e| std::cmp::Reverse(e.0));
    out.healthy_top.truncate(5);
    out
}

/// Every record of every partition from offset 0, through the proxies.
fn consume_all(bootstrap: &str, expected: &HashMap<i32, i64>) -> HashMap<i32, Vec<(i64, Vec<u8>)>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "chaos-checker")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut got: HashMap<i32, Vec<(i64, Vec<u8>)>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let done = |got: &HashMap<i32, Vec<(i64, Vec<u8>)>>| {
        expected.iter().all(|(p, hw)| {
            got.get(p)
                .and_then(|v| v.last())
                .is_some_and(|(o, _)| o + 1 >= *hw)
                || *hw == 0
        })
    };
    while !done(&got) && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.entry(m.partition())
                .or_default()
                .push((m.offset(), m.payload().unwrap_or_default().to_vec()));
        }
    }
    got
}

/// The chunk layout seed `seed` runs: `FLOE_CHAOS_LAYOUT`, else shared
/// WAL objects for even seeds.
fn layout(seed: u64) -> &'static str {
    match std::env::var("FLOE_CHAOS_LAYOUT").as_deref() {
        Ok("wal") => "wal",
        Ok("partition") => "partition",
        _ if seed.is_multiple_of(2) => "wal",
        _ => "partition",
    }
}

/// The WAL objects of the targets' directories: (id, age).
fn wal_listing(targets: &[PathBuf]) -> Vec<(usize, floe_storage::wal::WalId, Duration)> {
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let root = t.join("wal");
        let Ok(brokers) = std::fs::read_dir(&root) else {
            continue;
        };
        for b in brokers.flatten() {
            for s in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
                for o in std::fs::read_dir(s.path()).into_iter().flatten().flatten() {
                    let rel = o.path();
                    let rel = rel.strip_prefix(t).unwrap().to_string_lossy().to_string();
                    let path = object_store::path::Path::from(rel);
                    if let Some(id) = floe_storage::layout::wal_id(&path) {
                        let age = o
                            .metadata()
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|m| m.elapsed().ok())
                            .unwrap_or_default();
                        out.push((i, id, age));
                    }
                }
            }
        }
    }
    out
}

/// The shared WAL's garbage collection, checked against the metadata once
/// the load stopped: every chunk a checkpoint names is still in its
/// object on one of its targets (nothing referenced was deleted), and
/// within a few collection passes no object older than the grace is
/// left before its broker's low watermark (nothing unreferenced stays).
/// Returns the objects left.
async fn wal_objects_settle(
    meta: &floe_meta::EtcdStore,
    targets: &[PathBuf],
    problems: &mut Vec<String>,
) -> usize {
    use floe_meta::MetadataStore;
    use prost::Message as _;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (kvs, _) = meta
            .range(&floe_meta::keys::partitions_prefix())
            .await
            .unwrap();
        // Checkpoints with their WAL segments' lists paged in (one read:
        // the pages a checkpoint names are in the same snapshot).
        let by_key: std::collections::HashMap<&[u8], &bytes::Bytes> =
            kvs.iter().map(|kv| (kv.key.as_ref(), &kv.value)).collect();
        let mut checkpoints: Vec<floe_meta::schema::CheckpointRecord> = Vec::new();
        for kv in &kvs {
            let Some(p) = floe_meta::keys::parse_checkpoint(&kv.key) else {
                continue;
            };
            let mut c = floe_meta::schema::CheckpointRecord::decode(kv.value.clone()).unwrap();
            for seg in c.open_segments.iter_mut() {
                let mut chunks = Vec::new();
                for page in &seg.pages {
                    let key = floe_meta::keys::chunk_page(p, seg.base_offset, page.first_offset);
                    match by_key.get(key.as_ref()) {
                        Some(v) => chunks.extend(
                            floe_meta::schema::ChunkPageRecord::decode((*v).clone())
                                .unwrap()
                                .chunks,
                        ),
                        None => problems.push(format!(
                            "{p:?}: the checkpoint names chunk page {} of segment {}, which is missing",
                            page.first_offset, seg.base_offset
                        )),
                    }
                }
                chunks.append(&mut seg.chunks);
                seg.chunks = chunks;
            }
            checkpoints.push(c);
        }
        let listed = wal_listing(targets);
        let held: std::collections::HashSet<(usize, floe_storage::wal::WalId)> =
            listed.iter().map(|(i, id, _)| (*i, *id)).collect();
        let mut missing = Vec::new();
        for c in &checkpoints {
            for seg in &c.open_segments {
                for chunk in &seg.chunks {
                    let Some(w) = &chunk.wal else { continue };
                    let id = floe_storage::wal::WalId {
                        broker: w.broker_id,
                        stream: w.stream,
                        seq: w.seq,
                    };
                    let somewhere = w.replica_set.iter().any(|t| {
                        t.strip_prefix('t')
                            .and_then(|n| n.parse::<usize>().ok())
                            .is_some_and(|i| held.contains(&(i, id)))
                    });
                    if !somewhere {
                        missing.push(format!("{id:?} (chunk at {})", chunk.base_offset));
                    }
                }
            }
        }
        if !missing.is_empty() {
            problems.push(format!(
                "WAL objects a checkpoint names were deleted: {:?}",
                &missing[..missing.len().min(10)]
            ));
            return listed.len();
        }
        let marks = floe_controller::wal_gc::low_watermarks(&checkpoints);
        // Older than the grace (5 s) and two passes (2 s each), with slack.
        let stale: Vec<_> = listed
            .iter()
            .filter(|(_, id, age)| {
                *age > Duration::from_secs(12)
                    && marks
                        .get(&id.broker)
                        .is_none_or(|w| (id.stream, id.seq) < *w)
            })
            .collect();
        if stale.is_empty() {
            return listed.len();
        }
        if Instant::now() > deadline {
            problems.push(format!(
                "{} WAL objects no checkpoint needs were left behind, e.g. {:?}",
                stale.len(),
                &stale[..stale.len().min(5)]
            ));
            return listed.len();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn run(seed: u64) {
    let s = settings();
    let layout = layout(seed);
    println!("seed {seed}: chunk_layout = {layout}");
    // The controllers started below read these (children inherit them).
    std::env::set_var("FLOE_WAL_GC_INTERVAL_MS", "2000");
    std::env::set_var("FLOE_WAL_DELETE_GRACE_MS", "5000");
    let tmp = tempfile::tempdir().unwrap();
    let targets: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("t{i}"))).collect();
    for t in &targets {
        std::fs::create_dir_all(t).unwrap();
    }
    let urls: Vec<String> = targets
        .iter()
        .map(|t| format!("file://{}", t.display()))
        .collect();
    let mut cluster = Cluster::start_wrapped(
        BROKERS,
        1,
        LEASE_TTL_MS,
        &format!(
            // Garbage collection sweeps every few seconds: whatever it
            // deletes, the checker must still read every acked record.
            "chunk_put_timeout_ms = 2000\ngc_interval_ms = 5000\ngc_min_age_ms = 5000\nchunk_layout = \"{layout}\"\nwal_linger_ms = 10\nwal_chunk_page = 8\nwal_idle_checkpoint_ms = 3000\n[proxy]\nlease_ttl_ms = 3000\n{}",
            std::env::var("FLOE_CHAOS_PROXY_TOML").unwrap_or_default()
        ),
        &urls,
        3,
        2,
        &wrapper(),
    )
    .unwrap();
    for _ in 0..PROXIES {
        cluster.add_proxy().unwrap();
    }
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let bootstrap = cluster.proxy_bootstrap();
    create_topic(&bootstrap, TOPIC, PARTITIONS).await;
    let meta = cluster.meta().await.unwrap();
    let topic_id = {
        use floe_meta::MetadataStore;
        use prost::Message as _;
        let kv = meta
            .get(&floe_meta::keys::topic(TOPIC))
            .await
            .unwrap()
            .expect("the topic exists");
        let t = floe_meta::schema::TopicRecord::decode(kv.value).unwrap();
        floe_common::Uuid::from_slice(&t.id).unwrap()
    };
    // Every partition written once before the faults begin.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let mut states = 0;
        for p in 0..PARTITIONS {
            if let Ok(Some(st)) = Cluster::partition_state(&meta, TOPIC, p).await {
                if st.state == "writing" {
                    states += 1;
                }
            }
        }
        if states == PARTITIONS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let t0 = Instant::now();
    let client_log = ClientLog {
        t0,
        lines: Arc::default(),
    };
    let producer: FutureProducer<ClientLog> = floe_e2e::idempotent_producer_config(&bootstrap)
        .set("debug", "eos")
        // The crate passes on only what the `log` crate would show
        // (nothing, with no logger): ask for librdkafka's debug lines.
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Debug)
        .create_with_context(client_log.clone())
        .unwrap();
    let produced = Arc::new(Mutex::new(Produced::default()));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let until = t0 + Duration::from_secs(s.secs);
    let fault_thread = {
        let targets = targets.clone();
        let mut cluster = cluster;
        std::thread::spawn(move || {
            let (faults, samples) = run_faults(&mut cluster, seed, until, &targets, topic_id);
            (cluster, faults, samples)
        })
    };
    let mut seq = 0u64;
    let per_tick = (s.rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut queue_full = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        for _ in 0..per_tick {
            let partition = (seq % PARTITIONS as u64) as i32;
            let value = format!("{seed}:{seq}");
            let key = seq.to_string();
            match producer.send_result(
                FutureRecord::to(TOPIC)
                    .partition(partition)
                    .key(&key)
                    .payload(&value),
            ) {
                Ok(delivery) => {
                    let produced = produced.clone();
                    let outstanding = outstanding.clone();
                    outstanding.fetch_add(1, Ordering::SeqCst);
                    let this = seq;
                    tokio::spawn(async move {
                        let r = delivery.await;
                        let at = Instant::now();
                        let mut g = produced.lock().unwrap();
                        match r {
                            Ok(Ok(d)) => g.acked.push(Ack {
                                partition: d.partition,
                                offset: d.offset,
                                seq: this,
                                at,
                            }),
                            Ok(Err((e, _))) => g.failed.push((this, e.to_string())),
                            Err(_) => g.failed.push((this, "delivery cancelled".into())),
                        }
                        drop(g);
                        outstanding.fetch_sub(1, Ordering::SeqCst);
                    });
                    seq += 1;
                }
                Err(_) => {
                    queue_full += 1;
                    break;
                }
            }
        }
    }
    let sent = seq;
    tokio::task::block_in_place(|| producer.flush(Duration::from_secs(150))).unwrap();
    let wait = Instant::now() + Duration::from_secs(30);
    while outstanding.load(Ordering::SeqCst) > 0 && Instant::now() < wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cluster, faults, samples) = tokio::task::block_in_place(|| fault_thread.join().unwrap());
    for t in &targets {
        set_mode(t, 0o755);
    }

    let produced = std::mem::take(&mut *produced.lock().unwrap());
    let collected: f64 = cluster
        .brokers
        .iter()
        .filter_map(|b| {
            let m = floe_e2e::http_get(b.http_port, "/metrics").ok()?;
            m.lines()
                .find(|l| l.starts_with("floe_gc_deleted_objects_total"))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        })
        .sum();
    let mut report = format!(
        "seed {seed}: {} s, {sent} records sent, {} acked, {} failed, queue full {queue_full}x\n",
        s.secs,
        produced.acked.len(),
        produced.failed.len()
    );
    for f in &faults {
        report += &format!(
            "  {:7.2}s {:?} for {:.2} s {}\n",
            (f.start - t0).as_secs_f64(),
            f.kind,
            f.end.map_or(f64::NAN, |e| (e - f.start).as_secs_f64()),
            f.note
        );
    }

    // Read everything back through the proxies.
    let mut high: HashMap<i32, i64> = HashMap::new();
    for a in produced.acked.iter().filter(|a| a.offset >= 0) {
        let h = high.entry(a.partition).or_default();
        *h = (*h).max(a.offset + 1);
    }
    let consumed = tokio::task::block_in_place(|| consume_all(&bootstrap, &high));
    let mut problems = Vec::new();
    let mut values: HashMap<Vec<u8>, (i32, i64)> = HashMap::new();
    let mut total = 0;
    for (p, records) in &consumed {
        for (i, (offset, value)) in records.iter().enumerate() {
            total += 1;
            if *offset != i as i64 {
                problems.push(format!(
                    "partition {p}: offset {offset} at position {i} (not dense)"
                ));
                break;
            }
            if let Some(first) = values.insert(value.clone(), (*p, *offset)) {
                let acked = String::from_utf8_lossy(value)
                    .split(':')
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .and_then(|n| produced.acked.iter().find(|a| a.seq == n))
                    .map_or("not acked".to_string(), |a| {
                        format!(
                            "acked at {}/{} {:.3} s",
                            a.partition,
                            a.offset,
                            (a.at - t0).as_secs_f64()
                        )
                    });
                problems.push(format!(
                    "duplicate {:?} at {p}/{offset} and {}/{} ({acked})",
                    String::from_utf8_lossy(value),
                    first.0,
                    first.1
                ));
            }
        }
    }
    let mut lost = 0;
    // librdkafka reports a batch whose own answer was a retriable error as
    // delivered without an offset (-1001) once a later batch of the same
    // partition is acked: the broker appends a producer's batches in
    // sequence order, so it is in the log. Those must be there exactly once.
    let mut implicit = 0;
    for a in &produced.acked {
        let want = format!("{seed}:{}", a.seq).into_bytes();
        if a.offset < 0 {
            implicit += 1;
            if values.get(&want).is_none_or(|(p, _)| *p != a.partition) {
                lost += 1;
                problems.push(format!(
                    "acked (offset unknown) {:?} is not in partition {}",
                    String::from_utf8_lossy(&want),
                    a.partition
                ));
            }
            continue;
        }
        let got = consumed
            .get(&a.partition)
            .and_then(|r| r.get(a.offset as usize));
        if got.is_none_or(|(o, v)| *o != a.offset || *v != want) {
            lost += 1;
            if lost <= 10 {
                problems.push(format!(
                    "acked {}/{} ({:?}) reads back as {:?}",
                    a.partition,
                    a.offset,
                    String::from_utf8_lossy(&want),
                    got.map(|(o, v)| (o, String::from_utf8_lossy(v).to_string()))
                ));
            }
        }
    }
    if layout == "wal" {
        let kept = wal_objects_settle(&meta, &targets, &mut problems).await;
        let deleted: f64 = cluster
            .controllers
            .iter()
            .filter_map(|c| {
                let m = c.http("/metrics").ok()?;
                m.lines()
                    .find(|l| l.starts_with("floe_controller_wal_objects_deleted_total"))
                    .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            })
            .sum();
        report += &format!(
            "  WAL objects at the end: {kept} kept (each at or past its broker's low watermark), {deleted} deleted by the controller\n"
        );
    }
    let st = stalls(&produced.acked, &faults, &samples, t0);
    let fmt = |s: Option<(u64, i32, f64)>| {
        s.map_or("-".to_string(), |(ms, p, at)| {
            format!("{ms} ms (partition {p} at {at:.1} s)")
        })
    };
    report += &format!(
        "  consumed {total}, lost {lost}, problems {}, acked without an offset {implicit}, garbage objects collected {collected}\n  longest without an ack: faulty broker's partitions {}, others {}, around a proxy restart {}, passed from one failing broker to another {}\n",
        problems.len(),
        fmt(st.faulty),
        fmt(st.healthy),
        fmt(st.proxy),
        fmt(st.chained),
    );
    for (ms, p, at) in &st.healthy_top {
        let when = t0 + Duration::from_secs_f64(*at);
        let owner = samples
            .iter()
            .filter(|(t, _)| *t <= when + Duration::from_millis(*ms))
            .filter(|(t, _)| *t + Duration::from_millis(500) >= when)
            .map(|(_, m)| m.get(p).copied().unwrap_or(-1))
            .collect::<Vec<_>>();
        report +=
            &format!("  others' stall {ms} ms: partition {p} at {at:.2} s, owners {owner:?}\n");
    }
    // What librdkafka decided about idempotence (epoch bumps re-number
    // batches: a batch the broker had appended and re-sent under a new
    // epoch is a duplicate no broker can recognise).
    let client_lines = std::mem::take(&mut *client_log.lines.lock().unwrap());
    let notable: Vec<&String> = client_lines
        .iter()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("bump") || l.contains("drain") || l.contains("fatal") || l.contains("reset")
        })
        .collect();
    report += &format!(
        "  producer (librdkafka eos log): {} lines, {} about epoch bumps, drains, resets\n",
        client_lines.len(),
        notable.len()
    );
    for l in notable.iter().take(20) {
        report += &format!("    {l}\n");
    }
    println!("{report}");
    if let Ok(dir) = std::env::var("FLOE_CHAOS_LOGS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            format!("{dir}/seed-{seed}.client.log"),
            client_lines.join("\n"),
        )
        .unwrap();
        // Every process's log, for a run that passed but looks odd.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            format!("{dir}/seed-{seed}.log"),
            format!("{report}\n{}", cluster.logs()),
        )
        .unwrap();
    }
    for (seq, e) in produced.failed.iter().take(5) {
        println!("  failed delivery {seq}: {e}");
    }
    if !problems.is_empty() {
        panic!(
            "{report}{}\n{}",
            problems.join("\n"),
            cluster
                .logs()
                .chars()
                .rev()
                .take(40_000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
    }
    assert!(
        produced.acked.len() as u64 >= sent / 2,
        "{report}: too few acks to mean anything"
    );
    assert!(
        produced.failed.is_empty(),
        "{report}: a client saw delivery failures: {:?}",
        &produced.failed[..produced.failed.len().min(5)]
    );
    if let Some((ms, _, _)) = st.healthy {
        assert!(
            ms <= s.healthy_max_ms,
            "{report}: a healthy broker's partition stalled"
        );
    }
    if let Some((ms, _, _)) = st.faulty {
        assert!(
            ms <= s.faulty_max_ms,
            "{report}: a faulty broker's partition stalled past the bound"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seed_1() {
    run(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_seed_2() {
    run(2).await;
}

/// The long run: `FLOE_CHAOS_SEEDS` (default 1-20), `FLOE_CHAOS_SECS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn chaos_many_seeds() {
    for seed in seeds("1-20") {
        run(seed).await;
    }
}
