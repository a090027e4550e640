//! Floe under deterministic simulation: the real controller and brokers
//! (`floe_controller::Controller`, `floe_broker::Node`, the Kafka listener's
//! connection handler) run as turmoil hosts, each on its own paused tokio
//! runtime, over one in-memory metadata store and shared memory storage
//! targets; a seeded idempotent producer writes through turmoil's network;
//! faults chosen by the seed crash and restart brokers and the controller
//! and cut brokers off the network; afterwards the checker reads every
//! partition back and holds the history to the design's invariants.
//!
//! Everything that decides behaviour follows the seed: turmoil's network
//! and scheduling, Floe's behaviour-shaping randomness
//! (`floe_common::set_random_seed`), the wall clock (`SimClock`, from the
//! simulation's elapsed time) and tokio's own choices (the build uses
//! `--cfg tokio_unstable`, so turmoil seeds them). A run is a function of
//! its seed: `floe-sim --seed N` replays it.

pub mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use floe_common::Clock;
use floe_meta::MetadataStore;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use client::{Conn, Sent};

/// The topic every run writes.
pub const TOPIC: &str = "sim";
/// The simulated wall clock's epoch (2026-01-01T00:00:00Z).
const EPOCH_MS: i64 = 1_767_225_600_000;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub brokers: i32,
    pub partitions: i32,
    /// Batches the producer writes (each acked before the next, per
    /// partition in turn).
    pub batches: usize,
    pub records_per_batch: usize,
    /// Inject faults (crashes, restarts, partitions) while producing.
    pub faults: bool,
    /// A deliberately broken variant, to show the checkers catch it.
    pub broken: Option<Broken>,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            brokers: 3,
            partitions: 4,
            batches: 200,
            records_per_batch: 3,
            faults: true,
            broken: None,
        }
    }
}

/// Variants of the broker that break an invariant on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The writer acks a batch when it is buffered, before it is durable
    /// on W replicas (`Faults::ack_before_durable`): a crash then loses
    /// acked records.
    AckBeforeDurable,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub acked_batches: usize,
    pub acked_records: usize,
    pub faults: Vec<String>,
    /// Hosts whose software ended with an error (then restarted).
    pub exits: Vec<String>,
    pub sim_elapsed: Duration,
    /// Every ack as (partition, first sequence, base offset), in order: two
    /// runs of one seed have the same history.
    pub history: Vec<(i32, i32, i64)>,
    pub violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Wall time from the simulation's elapsed time.
#[derive(Debug)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        EPOCH_MS + turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64
    }
}

/// The shared world of one run: the metadata store (made by the `etcd`
/// host, which never fails), the storage targets, and the producer's
/// record of what was acked.
struct World {
    meta: OnceLock<Arc<dyn MetadataStore>>,
    cluster_id: OnceLock<String>,
    targets: Vec<floe_storage::StorageTarget>,
    acked: Mutex<Vec<(Sent, i64)>>,
    attempted: Mutex<Vec<Sent>>,
    producing_done: AtomicBool,
    checked: Mutex<Option<Vec<String>>>,
    broker_restarts: AtomicUsize,
    /// Hosts whose software ended with an error, as a process exits: the
    /// run restarts them a second later, as Kubernetes would.
    exits: Mutex<Vec<String>>,
}

impl World {
    async fn meta(&self) -> Arc<dyn MetadataStore> {
        loop {
            if let Some(m) = self.meta.get() {
                return m.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn broker_name(id: i32) -> String {
    format!("broker-{id}")
}

type HostResult = turmoil::Result;

/// Run a host's software; an error ends it as a process exits (the run
/// restarts the host), noted for the report.
async fn exits_on_error(
    world: Arc<World>,
    role: &'static str,
    software: impl std::future::Future<Output = HostResult>,
) -> HostResult {
    if let Err(e) = software.await {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        world
            .exits
            .lock()
            .unwrap()
            .push(format!("{at:?}: a {role} exited: {e}"));
    }
    Ok(())
}

/// Run one seed.
pub fn run(o: &Options) -> Report {
    floe_common::set_random_seed(o.seed);
    floe_common::set_wall_clock(Arc::new(SimClock));
    let mut faults_rng = rand::rngs::StdRng::seed_from_u64(o.seed ^ 0x5eed_fa17);
    let world = Arc::new(World {
        meta: OnceLock::new(),
        cluster_id: OnceLock::new(),
        targets: (0..3)
            .map(|i| {
                // Object-store-like latency (median 4 ms, p99 40 ms of
                // simulated time) and one request in 200 failing.
                floe_storage::StorageTarget::open(
                    format!("t{i}"),
                    "memory://?floe_latency_p50_ms=4&floe_latency_p99_ms=40&floe_error_rate=0.005",
                )
                .expect("a memory target")
            })
            .collect(),
        acked: Mutex::new(Vec::new()),
        attempted: Mutex::new(Vec::new()),
        producing_done: AtomicBool::new(false),
        checked: Mutex::new(None),
        broker_restarts: AtomicUsize::new(0),
        exits: Mutex::new(Vec::new()),
    });
    let mut sim = turmoil::Builder::new()
        .rng_seed(o.seed)
        .simulation_duration(Duration::from_secs(1_800))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(5))
        .build();

    // The metadata store: in memory, on a host no fault touches.
    {
        let world = world.clone();
        sim.host("etcd", move || {
            let world = world.clone();
            async move {
                if world.meta.get().is_none() {
                    // Leases run on the simulation's time, which every
                    // host shares (each host's runtime has a clock of its
                    // own).
                    let store = floe_meta::EmbeddedStore::in_memory(Arc::new(|| {
                        turmoil::sim_elapsed().unwrap_or_default()
                    }))
                    .await
                    .map_err(|e| e.to_string())?;
                    let meta: Arc<dyn MetadataStore> = Arc::new(store);
                    seed_cluster(&*meta, &world).await?;
                    let _ = world.meta.set(meta);
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    {
        let world = world.clone();
        sim.host("controller", move || {
            let world = world.clone();
            exits_on_error(world.clone(), "controller", controller(world))
        });
    }
    for id in 1..=o.brokers {
        let world = world.clone();
        let broken = o.broken;
        sim.host(broker_name(id), move || {
            let world = world.clone();
            exits_on_error(world.clone(), "broker", broker(world, id, broken))
        });
    }
    {
        let world = world.clone();
        let o = o.clone();
        sim.client("producer", producer(world, o));
    }

    // Faults, chosen by the seed, while the producer works.
    let mut report = Report {
        seed: o.seed,
        ..Default::default()
    };
    let mut next_fault = Duration::from_millis(faults_rng.random_range(1_000..3_000));
    let mut down: BTreeMap<String, Duration> = BTreeMap::new();
    let mut cut: BTreeMap<String, Duration> = BTreeMap::new();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                report
                    .violations
                    .push(format!("the simulation failed: {e}"));
                break;
            }
        }
        let now = sim.elapsed();
        // A host whose software ended (with an error, as a process exits):
        // its tasks die with it, and it restarts a second later.
        let mut roles = vec!["controller".to_string()];
        roles.extend((1..=o.brokers).map(broker_name));
        for h in roles {
            if !down.contains_key(&h) && !sim.is_host_running(h.as_str()) {
                sim.crash(h.as_str());
                down.insert(h.clone(), now + Duration::from_secs(1));
                report
                    .faults
                    .push(format!("{now:?}: {h} exited; restart in 1 s"));
            }
        }
        // Hosts brought back after their downtime.
        let back: Vec<String> = down
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(h, _)| h.clone())
            .collect();
        for h in back {
            down.remove(&h);
            sim.bounce(h.as_str());
        }
        let healed: Vec<String> = cut
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(h, _)| h.clone())
            .collect();
        for h in healed {
            cut.remove(&h);
            sim.repair(h.as_str(), "producer");
            for other in 1..=o.brokers {
                let b = broker_name(other);
                if b != h {
                    sim.repair(h.as_str(), b.as_str());
                }
            }
        }
        if !o.faults || world.producing_done.load(Ordering::SeqCst) || now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(faults_rng.random_range(1_500..4_000));
        let victim = broker_name(faults_rng.random_range(1..=o.brokers));
        if down.contains_key(&victim) || cut.contains_key(&victim) {
            continue;
        }
        match faults_rng.random_range(0..10) {
            // kill -9 and an immediate restart in place.
            0..=3 => {
                sim.bounce(victim.as_str());
                world.broker_restarts.fetch_add(1, Ordering::SeqCst);
                report.faults.push(format!("{now:?}: bounce {victim}"));
            }
            // Down for longer than its lease: its partitions move.
            4..=5 => {
                sim.crash(victim.as_str());
                let for_ms = faults_rng.random_range(4_000..12_000);
                down.insert(victim.clone(), now + Duration::from_millis(for_ms));
                report
                    .faults
                    .push(format!("{now:?}: crash {victim} for {for_ms} ms"));
            }
            // The controller fails over to itself (restart).
            6 => {
                sim.bounce("controller");
                report.faults.push(format!("{now:?}: bounce controller"));
            }
            // Cut off from the clients and the other brokers (not from
            // the metadata store, which it still reaches).
            _ => {
                sim.partition(victim.as_str(), "producer");
                for other in 1..=o.brokers {
                    let b = broker_name(other);
                    if b != victim {
                        sim.partition(victim.as_str(), b.as_str());
                    }
                }
                let for_ms = faults_rng.random_range(2_000..8_000);
                cut.insert(victim.clone(), now + Duration::from_millis(for_ms));
                report
                    .faults
                    .push(format!("{now:?}: partition {victim} for {for_ms} ms"));
            }
        }
    }
    report.sim_elapsed = sim.elapsed();
    report.exits = std::mem::take(&mut *world.exits.lock().unwrap());
    let acked = world.acked.lock().unwrap();
    report.acked_batches = acked.len();
    report.acked_records = acked.iter().map(|(s, _)| s.values.len()).sum();
    report.history = acked
        .iter()
        .map(|(s, base)| (s.partition, s.sequence, *base))
        .collect();
    match world.checked.lock().unwrap().take() {
        Some(v) => report.violations.extend(v),
        None => report
            .violations
            .push("the checker did not finish (liveness: the cluster never settled)".into()),
    }
    report
}

/// What the first controller does: the cluster id and the storage pool.
async fn seed_cluster(meta: &dyn MetadataStore, world: &World) -> Result<(), String> {
    use floe_meta::schema::{StoragePoolRecord, StorageTargetRecord, FORMAT};
    use prost::Message;
    let id = floe_controller::ensure_cluster_id(meta, SimClock.now_ms())
        .await
        .map_err(|e| e.to_string())?;
    let _ = world.cluster_id.set(id);
    let pool = StoragePoolRecord {
        format: FORMAT,
        targets: world
            .targets
            .iter()
            .map(|t| StorageTargetRecord {
                id: t.id.clone(),
                url: "memory://".into(),
                weight: 1,
                ..Default::default()
            })
            .collect(),
        replicas: 3,
        write_quorum: 2,
    };
    meta.put(
        &floe_meta::keys::storage_pool(),
        pool.encode_to_vec().into(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

fn pool(world: &World, seed: u64) -> Arc<floe_storage::StoragePool> {
    Arc::new(
        floe_storage::StoragePool::with_seed(world.targets.clone(), 3, 2, seed)
            .expect("a pool of three targets"),
    )
}

/// The controller host: campaign, then lead (a restart campaigns again;
/// its old leadership key lapses with its lease).
async fn controller(world: Arc<World>) -> HostResult {
    use floe_meta::{keys, Op, Txn};
    let meta = world.meta().await;
    let ttl = Duration::from_secs(3);
    let lease = meta.grant_lease(ttl).await?;
    let value = Bytes::from(format!("controller@{}", SimClock.now_ms()));
    let shutdown = CancellationToken::new();
    {
        let meta = meta.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            floe_meta::election::keep_lease_alive(&*meta, lease, ttl, stop.cancelled(), |_, _| {})
                .await;
        });
    }
    let _ = meta
        .txn(Txn::new().then(Op::put_with_lease(
            keys::controller("sim"),
            value.clone(),
            lease,
        )))
        .await?;
    floe_meta::election::campaign(&*meta, keys::controller_leader(), value.clone(), lease).await?;
    let c = floe_controller::Controller::leading(
        meta.clone(),
        pool(&world, 1),
        keys::controller_leader(),
        value,
    );
    tokio::spawn(c.clone().run_operations("sim".into(), shutdown.clone()));
    c.run(shutdown).await?;
    Ok(())
}

/// A broker host: register, follow the assignments, serve Kafka on :9092.
async fn broker(world: Arc<World>, id: i32, broken: Option<Broken>) -> HostResult {
    let meta = world.meta().await;
    let cluster_id = loop {
        if let Some(c) = world.cluster_id.get() {
            break c.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut config = floe_broker::config::BrokerConfig {
        node_id: id,
        lease_ttl_ms: 3_000,
        auto_create_topics: false,
        ..Default::default()
    };
    config.faults.ack_before_durable = broken == Some(Broken::AckBeforeDurable);
    let endpoints = vec![floe_meta::schema::Endpoint {
        name: "PLAINTEXT".into(),
        host: broker_name(id),
        port: 9092,
    }];
    let shutdown = CancellationToken::new();
    let node = floe_broker::node::Node::start(
        config,
        cluster_id,
        endpoints,
        meta,
        pool(&world, id as u64),
        Arc::new(SimClock),
        Arc::new(floe_broker::metrics::Metrics::new()),
        String::new(),
        shutdown.clone(),
    )
    .await?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", 9092)).await?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let node = node.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let _ = floe_kafka::listener::serve_connection(rd, wr, peer, node, shutdown).await;
        });
    }
}

/// The producer: an idempotent producer writing `batches` batches across
/// the partitions, each retried with its sequence until acked; then, once
/// faults have stopped, the checker.
async fn producer(world: Arc<World>, o: Options) -> HostResult {
    let meta = world.meta().await;
    // Wait for every broker, then create the topic.
    loop {
        let (brokers, _) = meta.range(&floe_meta::keys::brokers_prefix()).await?;
        if brokers.len() as i32 >= o.brokers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin =
        floe_meta::topics::TopicAdmin::new(meta.clone(), Default::default(), Arc::new(SimClock));
    admin
        .create(TOPIC, o.partitions, Default::default(), false)
        .await
        .map_err(|e| e.to_string())?;
    let bootstrap: Vec<String> = (1..=o.brokers)
        .map(|id| format!("{}:9092", broker_name(id)))
        .collect();
    let (pid, epoch) = loop {
        match client::init_producer_id(&bootstrap).await {
            Ok(x) => break x,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // The producer's pace, from the seed: a batch every 20–80 ms, so the
    // faults land while it writes.
    let mut pace = rand::rngs::StdRng::seed_from_u64(o.seed ^ 0x9ace);
    let mut seqs: BTreeMap<i32, i32> = BTreeMap::new();
    let mut conns: BTreeMap<i32, Conn> = BTreeMap::new();
    let mut problems = Vec::new();
    for n in 0..o.batches {
        let partition = (n as i32) % o.partitions;
        let seq = *seqs.entry(partition).or_insert(0);
        let sent = Sent {
            partition,
            sequence: seq,
            values: (0..o.records_per_batch)
                .map(|i| Bytes::from(format!("p{partition}-s{}", seq + i as i32)))
                .collect(),
        };
        world.attempted.lock().unwrap().push(sent.clone());
        let records = client::batch(pid, epoch, &sent, SimClock.now_ms());
        let mut tries = 0;
        let Some(base) = (loop {
            tries += 1;
            if tries > 2_000 {
                problems.push(format!(
                    "liveness: partition {partition} sequence {seq} never acked"
                ));
                break None;
            }
            let owner = match client::layout(&bootstrap, TOPIC).await {
                Ok(l) => l
                    .owners
                    .get(&partition)
                    .copied()
                    .and_then(|b| l.brokers.get(&b).map(|a| (b, a.clone()))),
                Err(_) => None,
            };
            let Some((owner, addr)) = owner else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if let std::collections::btree_map::Entry::Vacant(e) = conns.entry(owner) {
                match Conn::connect(&addr).await {
                    Ok(c) => {
                        e.insert(c);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let conn = conns.get_mut(&owner).expect("just connected");
            match client::produce(conn, TOPIC, partition, records.clone()).await {
                Ok(base) => break Some(base),
                Err(e) if e == "produce error 45" => {
                    // OUT_OF_ORDER_SEQUENCE: the partition lacks a batch
                    // of this producer that it acked.
                    problems.push(format!(
                        "sequence gap: partition {partition} refused sequence {seq} as out of order (an acked batch is missing)"
                    ));
                    break None;
                }
                Err(_) => {
                    conns.remove(&owner);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }) else {
            break;
        };
        seqs.insert(partition, seq + o.records_per_batch as i32);
        world.acked.lock().unwrap().push((sent, base));
        tokio::time::sleep(Duration::from_millis(pace.random_range(20..80))).await;
    }
    world.producing_done.store(true, Ordering::SeqCst);
    // Faults stop; restarted hosts come back. Then read everything.
    tokio::time::sleep(Duration::from_secs(20)).await;
    problems.extend(check(&world, &bootstrap, &o).await);
    world
        .checked
        .lock()
        .unwrap()
        .get_or_insert_with(Vec::new)
        .extend(problems);
    Ok(())
}

/// The design's invariants against what the producer saw acked:
/// 1. every acked record is present, at the offset it was acked at;
/// 2. offsets are dense (0, 1, 2, ... up to the high watermark);
/// 3. no record appears twice (idempotence);
/// 4. nothing is in the log that the producer did not send.
async fn check(world: &World, bootstrap: &[String], o: &Options) -> Vec<String> {
    let mut v = Vec::new();
    let acked = world.acked.lock().unwrap().clone();
    let attempted: BTreeSet<Bytes> = world
        .attempted
        .lock()
        .unwrap()
        .iter()
        .flat_map(|s| s.values.clone())
        .collect();
    for partition in 0..o.partitions {
        let mut log = None;
        for _ in 0..100 {
            let Ok(l) = client::layout(bootstrap, TOPIC).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Some(addr) = l.owners.get(&partition).and_then(|b| l.brokers.get(b)) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Ok(mut c) = Conn::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            match client::read_all(&mut c, TOPIC, partition).await {
                Ok(records) => {
                    log = Some(records);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let Some(log) = log else {
            v.push(format!(
                "liveness: partition {partition} could not be read back"
            ));
            continue;
        };
        let mut seen = BTreeMap::new();
        for (i, (offset, value)) in log.iter().enumerate() {
            if *offset != i as i64 {
                v.push(format!(
                    "dense offsets: partition {partition} has offset {offset} at position {i}"
                ));
                break;
            }
            if let Some(first) = seen.insert(value.clone(), *offset) {
                v.push(format!(
                    "duplicate: partition {partition} holds {value:?} at {first} and {offset}"
                ));
            }
            if !attempted.contains(value) {
                v.push(format!(
                    "unknown record: partition {partition} offset {offset} holds {value:?}"
                ));
            }
        }
        for (sent, base) in acked.iter().filter(|(s, _)| s.partition == partition) {
            for (i, value) in sent.values.iter().enumerate() {
                let at = seen.get(value);
                if at.is_none() {
                    v.push(format!(
                        "lost acked record: partition {partition} {value:?} (acked at {})",
                        base + i as i64
                    ));
                } else if at != Some(&(base + i as i64)) {
                    v.push(format!(
                        "moved acked record: partition {partition} {value:?} acked at {} but at {:?}",
                        base + i as i64,
                        at
                    ));
                }
            }
        }
    }
    v
}
