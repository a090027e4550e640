//! Floe under deterministic simulation: the real controller and brokers
//! (`floe_controller::Controller`, `floe_broker::Node`, the Kafka listener's
//! connection handler) run as turmoil hosts, each on its own paused tokio
//! runtime, over one in-memory metadata store reached through an unreliable
//! twin (`gate::SimMeta`) and memory storage targets behind fault-injecting
//! stores; a seeded idempotent producer writes through turmoil's network;
//! an SRE moves partitions, drains brokers and rebalances; faults chosen by
//! the seed crash, restart and pause hosts, cut them off the network, the
//! metadata store or storage, take targets down, wipe one, and jump
//! clocks; afterwards the checker reads every partition back and holds the
//! history to the design's invariants.
//!
//! Everything that decides behaviour follows the seed: turmoil's network
//! and scheduling, Floe's behaviour-shaping randomness
//! (`floe_common::set_random_seed`), the wall clock (`SimClock`, from the
//! simulation's elapsed time) and tokio's own choices (the build uses
//! `--cfg tokio_unstable`, so turmoil seeds them). A run is a function of
//! its seed: `floe-sim --seed N` replays it.

pub mod client;
pub mod gate;
pub mod net;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use floe_common::Clock;
use floe_meta::MetadataStore;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use client::{Conn, Sent};
use gate::{Commit, Gate, GatedStore, SimMeta, Wipeable};

/// The topic every run writes.
pub const TOPIC: &str = "sim";
/// The simulated wall clock's epoch (2026-01-01T00:00:00Z).
const EPOCH_MS: i64 = 1_767_225_600_000;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub brokers: i32,
    /// Proxies the producer goes through (0: straight to the brokers).
    pub proxies: i32,
    pub partitions: i32,
    /// Batches the producer writes (each acked before the next, per
    /// partition in turn).
    pub batches: usize,
    pub records_per_batch: usize,
    /// Inject faults (crashes, restarts, partitions) while producing.
    pub faults: bool,
    /// A deliberately broken variant, to show the checkers catch it.
    pub broken: Option<Broken>,
    /// Where the brokers' chunks go.
    pub layout: Layout,
}

/// The brokers' chunk layout (`chunk_layout`, docs/storage.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One object per chunk on the segment's replicas.
    Partition,
    /// Shared WAL objects, every partition of a broker in one stream.
    Wal,
}

impl Options {
    /// Seed `seed`'s run; odd seeds run the shared WAL layout, even ones
    /// the per-partition layout, so that any range of seeds tries both.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            brokers: 3,
            proxies: 2,
            partitions: 4,
            batches: 200,
            records_per_batch: 3,
            faults: true,
            broken: None,
            layout: if seed % 2 == 1 {
                Layout::Wal
            } else {
                Layout::Partition
            },
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
    /// What the SRE's moves, drains and rebalances did.
    pub sre: Vec<String>,
    /// Checkpoints and sealed segments the partitions' writers committed.
    pub commits: usize,
    /// Records the consumer read while the producer wrote.
    pub consumed: usize,
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
    /// The simulation's time, shifted by the running host's clock skew.
    fn now_ms(&self) -> i64 {
        EPOCH_MS
            + turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64
            + gate::current_skew_ms()
    }
}

/// What the SRE host is asked to do, through the controller's own code.
#[derive(Clone, Debug)]
enum Sre {
    Move { partition: i32, broker: i32 },
    Drain(i32),
    Undrain(i32),
    Rebalance,
}

/// A fault's end, due at a time.
#[derive(Clone, Debug)]
enum Undo {
    Heal(String),
    HealPair(String, String),
    Resume(String),
    MetaHeal(String),
    StorageHeal(String),
    TargetUp(usize),
    Undrain(i32),
}

impl Undo {
    fn hosts(&self) -> Vec<&str> {
        match self {
            Undo::Heal(h) | Undo::Resume(h) | Undo::MetaHeal(h) | Undo::StorageHeal(h) => vec![h],
            Undo::HealPair(a, b) => vec![a, b],
            _ => Vec::new(),
        }
    }
}

/// The shared world of one run: the metadata store (made by the `etcd`
/// host, which never fails), the storage targets, each host's gate, and
/// the producer's record of what was acked.
struct World {
    meta: OnceLock<Arc<dyn MetadataStore>>,
    cluster_id: OnceLock<String>,
    /// The targets' contents (each can be wiped), behind the stores that
    /// inject latency, errors, lost answers and late writes.
    wipeable: Vec<Arc<Wipeable>>,
    faulty: Vec<Arc<floe_storage::faulty::FaultyStore>>,
    gates: BTreeMap<String, Arc<Gate>>,
    incarnations: Mutex<BTreeMap<String, u32>>,
    meta_rng: Arc<Mutex<rand::rngs::StdRng>>,
    ledger: Arc<Mutex<Vec<Commit>>>,
    /// The controller that leads now, for the SRE's moves.
    leader: Mutex<Option<(&'static str, Arc<floe_controller::Controller>)>>,
    sre: Mutex<VecDeque<Sre>>,
    sre_log: Mutex<Vec<String>>,
    acked: Mutex<Vec<(Sent, i64)>>,
    attempted: Mutex<Vec<Sent>>,
    producing_done: AtomicBool,
    /// What the consumer read, in order: (partition, offset, value).
    consumed: Mutex<Vec<(i32, i64, Bytes)>>,
    consumer_problems: Mutex<Vec<String>>,
    consumer_done: AtomicBool,
    checked: Mutex<Option<Vec<String>>>,
    broker_restarts: AtomicUsize,
    /// Hosts whose software ended with an error, as a process exits: the
    /// run restarts them a second later, as Kubernetes would.
    exits: Mutex<Vec<String>>,
}

impl World {
    /// The store itself (for the harness: the producer's set-up).
    async fn meta(&self) -> Arc<dyn MetadataStore> {
        loop {
            if let Some(m) = self.meta.get() {
                return m.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A host starting (again): its gate bound to its runtime, and the
    /// metadata store as it sees it, named by host and incarnation.
    async fn host_meta(&self, host: &str) -> Arc<dyn MetadataStore> {
        let gate = self.gates[host].clone();
        gate::register(gate.clone());
        let n = {
            let mut inc = self.incarnations.lock().unwrap();
            let n = inc.entry(host.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        Arc::new(SimMeta {
            inner: self.meta().await,
            gate,
            by: format!("{host}#{n}"),
            faults: Default::default(),
            rng: self.meta_rng.clone(),
            ledger: self.ledger.clone(),
        })
    }

    /// The storage pool as `host` reaches it.
    fn pool(&self, host: &str, seed: u64) -> Arc<floe_storage::StoragePool> {
        let gate = self.gates[host].clone();
        let targets = self
            .faulty
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let t = floe_storage::StorageTarget::from_store(
                    format!("t{i}"),
                    Arc::new(GatedStore {
                        inner: f.clone(),
                        gate: gate.clone(),
                    }),
                );
                *t.marker.write().unwrap() = target_marker(i);
                t
            })
            .collect();
        Arc::new(
            floe_storage::StoragePool::with_seed(targets, 3, 2, seed)
                .expect("a pool of three targets"),
        )
    }
}

/// Target `i`'s identity marker, written when the run starts (as a
/// controller seeding the pool does) and lost with the target's contents
/// when it is wiped.
fn target_marker(i: usize) -> String {
    floe_storage::marker_for("sim", &format!("t{i}"), 1)
}

/// Faults every target injects all the time: object-store latency (median
/// 4 ms, p99 40 ms of simulated time), one request in 200 failing, and one
/// write in 500 landing with its answer lost, one in 500 landing late.
fn target_faults() -> floe_storage::faulty::Faults {
    floe_storage::faulty::Faults {
        p50: Duration::from_millis(4),
        p99: Duration::from_millis(40),
        error_rate: 0.005,
        hang_rate: 0.0,
        lost_answer_rate: 0.002,
        late_rate: 0.002,
    }
}

fn broker_name(id: i32) -> String {
    format!("broker-{id}")
}

/// The controllers: one leads, the other stands by.
const CONTROLLERS: [&str; 2] = ["controller-1", "controller-2"];

fn proxy_name(id: i32) -> String {
    format!("proxy-{id}")
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
    gate::reset();
    let mut faults_rng = rand::rngs::StdRng::seed_from_u64(o.seed ^ 0x5eed_fa17);
    let wipeable: Vec<Arc<Wipeable>> = (0..3).map(|_| Wipeable::new()).collect();
    for (i, w) in wipeable.iter().enumerate() {
        w.mark(&target_marker(i));
    }
    let faulty = wipeable
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let f = floe_storage::faulty::FaultyStore::new(
                format!("t{i}"),
                w.clone(),
                o.seed.wrapping_add(i as u64),
            );
            f.set_faults(target_faults());
            f
        })
        .collect();
    let mut hosts = vec!["sre".to_string()];
    hosts.extend(CONTROLLERS.iter().map(|c| c.to_string()));
    hosts.extend((1..=o.brokers).map(broker_name));
    hosts.extend((1..=o.proxies).map(proxy_name));
    let world = Arc::new(World {
        meta: OnceLock::new(),
        cluster_id: OnceLock::new(),
        wipeable,
        faulty,
        gates: hosts
            .iter()
            .map(|h| (h.clone(), Arc::new(Gate::default())))
            .collect(),
        incarnations: Mutex::new(BTreeMap::new()),
        meta_rng: Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(
            o.seed ^ 0xe7cd,
        ))),
        ledger: Arc::new(Mutex::new(Vec::new())),
        leader: Mutex::new(None),
        sre: Mutex::new(VecDeque::new()),
        sre_log: Mutex::new(Vec::new()),
        acked: Mutex::new(Vec::new()),
        attempted: Mutex::new(Vec::new()),
        producing_done: AtomicBool::new(false),
        consumed: Mutex::new(Vec::new()),
        consumer_problems: Mutex::new(Vec::new()),
        consumer_done: AtomicBool::new(false),
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
    for name in CONTROLLERS {
        let world = world.clone();
        sim.host(name, move || {
            let world = world.clone();
            exits_on_error(world.clone(), "controller", controller(world, name))
        });
    }
    for id in 1..=o.brokers {
        let world = world.clone();
        let (broken, layout) = (o.broken, o.layout);
        sim.host(broker_name(id), move || {
            let world = world.clone();
            exits_on_error(world.clone(), "broker", broker(world, id, broken, layout))
        });
    }
    for id in 1..=o.proxies {
        let world = world.clone();
        sim.host(proxy_name(id), move || {
            let world = world.clone();
            exits_on_error(world.clone(), "proxy", proxy(world, id))
        });
    }
    {
        let world = world.clone();
        sim.host("sre", move || sre(world.clone()));
    }
    {
        let world = world.clone();
        let o = o.clone();
        sim.client("producer", producer(world.clone(), o.clone()));
        sim.client("consumer", consumer(world, o));
    }

    // Faults, chosen by the seed, while the producer works.
    let mut report = Report {
        seed: o.seed,
        ..Default::default()
    };
    let mut next_fault = Duration::from_millis(faults_rng.random_range(1_000..3_000));
    let mut down: BTreeMap<String, Duration> = BTreeMap::new();
    let mut undo: Vec<(Duration, Undo)> = Vec::new();
    let mut wiped = false;
    // Every host but `h`, for cutting `h` off the network.
    let others = |h: &str| -> Vec<String> {
        let mut v = vec!["producer".to_string(), "consumer".to_string()];
        v.extend(CONTROLLERS.iter().map(|c| c.to_string()));
        v.extend((1..=o.brokers).map(broker_name));
        v.extend((1..=o.proxies).map(proxy_name));
        v.retain(|x| x != h);
        v
    };
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
        let mut roles: Vec<String> = CONTROLLERS.iter().map(|c| c.to_string()).collect();
        roles.extend((1..=o.brokers).map(broker_name));
        roles.extend((1..=o.proxies).map(proxy_name));
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
        // Faults whose time is up, undone.
        let (due, later): (Vec<_>, Vec<_>) = undo.drain(..).partition(|(at, _)| *at <= now);
        undo = later;
        for (_, u) in due {
            match u {
                Undo::Heal(h) => {
                    for x in others(&h) {
                        sim.repair(h.as_str(), x.as_str());
                    }
                }
                Undo::HealPair(a, b) => sim.repair(a.as_str(), b.as_str()),
                Undo::Resume(h) => {
                    world.gates[&h].paused.store(false, Ordering::SeqCst);
                    for x in others(&h) {
                        sim.release(h.as_str(), x.as_str());
                    }
                }
                Undo::MetaHeal(h) => world.gates[&h].meta_cut.store(false, Ordering::SeqCst),
                Undo::StorageHeal(h) => world.gates[&h].storage_cut.store(false, Ordering::SeqCst),
                Undo::TargetUp(t) => world.faulty[t].set_down(false),
                Undo::Undrain(b) => world.sre.lock().unwrap().push_back(Sre::Undrain(b)),
            }
        }
        if !o.faults || world.producing_done.load(Ordering::SeqCst) || now < next_fault {
            continue;
        }
        next_fault = now + Duration::from_millis(faults_rng.random_range(1_500..4_000));
        let victim = broker_name(faults_rng.random_range(1..=o.brokers));
        let busy = |h: &str, down: &BTreeMap<String, Duration>, undo: &[(Duration, Undo)]| {
            down.contains_key(h) || undo.iter().any(|(_, u)| u.hosts().contains(&h))
        };
        if busy(&victim, &down, &undo) {
            continue;
        }
        let fault = faults_rng.random_range(0..if o.proxies > 0 { 23 } else { 21 });
        let f = match fault {
            // kill -9 and an immediate restart in place.
            0..=3 => {
                sim.bounce(victim.as_str());
                world.broker_restarts.fetch_add(1, Ordering::SeqCst);
                format!("bounce {victim}")
            }
            // Down for longer than its lease: its partitions move.
            4..=5 => {
                sim.crash(victim.as_str());
                let for_ms = faults_rng.random_range(4_000..12_000);
                down.insert(victim.clone(), now + Duration::from_millis(for_ms));
                format!("crash {victim} for {for_ms} ms")
            }
            // A controller restarted: the leader's restart is a failover
            // to the standby.
            6 => {
                let c = CONTROLLERS[faults_rng.random_range(0..CONTROLLERS.len())];
                if busy(c, &down, &undo) {
                    continue;
                }
                sim.bounce(c);
                format!("bounce {c}")
            }
            // Cut off from the clients and the other brokers (not from
            // the metadata store or storage, which it still reaches).
            7 => {
                for x in others(&victim) {
                    sim.partition(victim.as_str(), x.as_str());
                }
                let for_ms = faults_rng.random_range(2_000..8_000);
                undo.push((
                    now + Duration::from_millis(for_ms),
                    Undo::Heal(victim.clone()),
                ));
                format!("partition {victim} from the network for {for_ms} ms")
            }
            // Paused past its lease (SIGSTOP): nothing it sends arrives,
            // nothing sent to it is read, until it resumes.
            8..=9 => {
                let for_ms = faults_rng.random_range(3_500..9_000);
                pause(&mut sim, &world, &victim, &others(&victim));
                undo.push((
                    now + Duration::from_millis(for_ms),
                    Undo::Resume(victim.clone()),
                ));
                format!("pause {victim} for {for_ms} ms")
            }
            // Cut off from the metadata store only.
            10 => {
                let for_ms = faults_rng.random_range(1_000..8_000);
                world.gates[&victim].meta_cut.store(true, Ordering::SeqCst);
                undo.push((
                    now + Duration::from_millis(for_ms),
                    Undo::MetaHeal(victim.clone()),
                ));
                format!("cut {victim} off the metadata store for {for_ms} ms")
            }
            // Cut off from storage only.
            11 => {
                let for_ms = faults_rng.random_range(1_000..6_000);
                world.gates[&victim]
                    .storage_cut
                    .store(true, Ordering::SeqCst);
                undo.push((
                    now + Duration::from_millis(for_ms),
                    Undo::StorageHeal(victim.clone()),
                ));
                format!("cut {victim} off storage for {for_ms} ms")
            }
            // A controller paused past its lease, or cut off the store.
            12 => {
                let c = CONTROLLERS[faults_rng.random_range(0..CONTROLLERS.len())].to_string();
                if busy(&c, &down, &undo) {
                    continue;
                }
                let for_ms = faults_rng.random_range(2_000..8_000);
                let at = now + Duration::from_millis(for_ms);
                if faults_rng.random_bool(0.5) {
                    pause(&mut sim, &world, &c, &others(&c));
                    let f = format!("pause {c} for {for_ms} ms");
                    undo.push((at, Undo::Resume(c)));
                    f
                } else {
                    world.gates[&c].meta_cut.store(true, Ordering::SeqCst);
                    let f = format!("cut {c} off the metadata store for {for_ms} ms");
                    undo.push((at, Undo::MetaHeal(c)));
                    f
                }
            }
            // A storage target down (refusing every request) for a while.
            13 => {
                let t = faults_rng.random_range(0..world.faulty.len());
                if world.faulty.iter().any(|f| f.is_down()) {
                    continue;
                }
                let for_ms = faults_rng.random_range(2_000..10_000);
                world.faulty[t].set_down(true);
                undo.push((now + Duration::from_millis(for_ms), Undo::TargetUp(t)));
                format!("storage target t{t} down for {for_ms} ms")
            }
            // A storage target lost and replaced by an empty one under the
            // same name (once a run: a second loss before repair is beyond
            // what R=3, W=2 promises).
            14 if !wiped => {
                wiped = true;
                let t = faults_rng.random_range(0..world.wipeable.len());
                world.wipeable[t].wipe();
                format!("storage target t{t} lost and replaced by an empty one")
            }
            // A wall clock jump on a broker.
            14..=15 => {
                let by_ms = faults_rng.random_range(-300_000i64..600_000);
                world.gates[&victim]
                    .skew_ms
                    .fetch_add(by_ms, Ordering::SeqCst);
                format!("{victim}'s clock jumps by {by_ms} ms")
            }
            // Planned moves, drains and rebalances, as an SRE makes them.
            16..=17 => {
                let partition = faults_rng.random_range(0..o.partitions);
                let broker = faults_rng.random_range(1..=o.brokers);
                world
                    .sre
                    .lock()
                    .unwrap()
                    .push_back(Sre::Move { partition, broker });
                format!("move partition {partition} to broker {broker}")
            }
            18 => {
                if undo.iter().any(|(_, u)| matches!(u, Undo::Undrain(_))) {
                    continue;
                }
                let b = faults_rng.random_range(1..=o.brokers);
                let for_ms = faults_rng.random_range(3_000..10_000);
                world.sre.lock().unwrap().push_back(Sre::Drain(b));
                undo.push((now + Duration::from_millis(for_ms), Undo::Undrain(b)));
                format!("drain broker {b} for {for_ms} ms")
            }
            19 => {
                world.sre.lock().unwrap().push_back(Sre::Rebalance);
                "rebalance".to_string()
            }
            // A partition between two hosts only (a broker and a proxy, two
            // brokers, a controller and a broker, ...).
            20 => {
                let mut pool: Vec<String> = CONTROLLERS.iter().map(|c| c.to_string()).collect();
                pool.extend((1..=o.brokers).map(broker_name));
                pool.extend((1..=o.proxies).map(proxy_name));
                let a = pool.remove(faults_rng.random_range(0..pool.len()));
                let b = pool.remove(faults_rng.random_range(0..pool.len()));
                if busy(&a, &down, &undo) || busy(&b, &down, &undo) {
                    continue;
                }
                sim.partition(a.as_str(), b.as_str());
                let for_ms = faults_rng.random_range(1_000..6_000);
                let f = format!("partition {a} from {b} for {for_ms} ms");
                undo.push((now + Duration::from_millis(for_ms), Undo::HealPair(a, b)));
                f
            }
            // A proxy restarted in place, or down for a while.
            _ => {
                let p = proxy_name(faults_rng.random_range(1..=o.proxies));
                if busy(&p, &down, &undo) {
                    continue;
                }
                if fault == 21 {
                    sim.bounce(p.as_str());
                    format!("bounce {p}")
                } else {
                    sim.crash(p.as_str());
                    let for_ms = faults_rng.random_range(1_000..6_000);
                    down.insert(p.clone(), now + Duration::from_millis(for_ms));
                    format!("crash {p} for {for_ms} ms")
                }
            }
        };
        report.faults.push(format!("{now:?}: {f}"));
    }
    report.sim_elapsed = sim.elapsed();
    report.exits = std::mem::take(&mut *world.exits.lock().unwrap());
    report.sre = std::mem::take(&mut *world.sre_log.lock().unwrap());
    report.consumed = world.consumed.lock().unwrap().len();
    {
        let ledger = world.ledger.lock().unwrap();
        report.commits = ledger.len();
        report.violations.extend(check_committers(&ledger));
    }
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

/// Pause host `h`: its requests to the metadata store and storage wait,
/// and the network holds its messages both ways.
fn pause(sim: &mut turmoil::Sim<'_>, world: &World, h: &str, others: &[String]) {
    world.gates[h].paused.store(true, Ordering::SeqCst);
    for x in others {
        sim.hold(h, x.as_str());
    }
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
        targets: (0..world.faulty.len())
            .map(|i| StorageTargetRecord {
                id: format!("t{i}"),
                url: "memory://".into(),
                weight: 1,
                marker: target_marker(i),
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

/// A controller host, wired as `floe controller` is: campaign (the other
/// waits as a standby), then lead; when its lease is found expired (paused
/// or cut off past it) it exits, to be restarted (a restart campaigns
/// again; its old leadership key lapsed with its lease).
async fn controller(world: Arc<World>, name: &'static str) -> HostResult {
    use floe_meta::{keys, Op, Txn};
    let step_down = |world: &World| {
        let mut leader = world.leader.lock().unwrap();
        if leader.as_ref().is_some_and(|(n, _)| *n == name) {
            *leader = None;
        }
    };
    step_down(&world);
    let meta = world.host_meta(name).await;
    let ttl = Duration::from_secs(3);
    let lease = meta.grant_lease(ttl).await?;
    let value = Bytes::from(format!("{name}@{}", SimClock.now_ms()));
    let shutdown = CancellationToken::new();
    let lapsed = CancellationToken::new();
    {
        let meta = meta.clone();
        let stop = shutdown.clone();
        let lapsed = lapsed.clone();
        tokio::spawn(async move {
            let expired = floe_meta::election::keep_lease_alive(
                &*meta,
                lease,
                ttl,
                stop.cancelled(),
                |_, _| {},
            )
            .await;
            if expired {
                lapsed.cancel();
            }
        });
    }
    let lead = {
        let meta = meta.clone();
        let world = world.clone();
        let shutdown = shutdown.clone();
        async move {
            meta.txn(Txn::new().then(Op::put_with_lease(
                keys::controller(name),
                value.clone(),
                lease,
            )))
            .await?;
            floe_meta::election::campaign(&*meta, keys::controller_leader(), value.clone(), lease)
                .await?;
            let c = floe_controller::Controller::leading(
                meta.clone(),
                world.pool(name, 1),
                keys::controller_leader(),
                value,
            );
            *world.leader.lock().unwrap() = Some((name, c.clone()));
            tokio::spawn(c.clone().run_operations(name.into(), shutdown.clone()));
            c.run(shutdown).await?;
            HostResult::Ok(())
        }
    };
    let outcome = tokio::select! {
        _ = lapsed.cancelled() => Err("the controller's lease expired".into()),
        r = lead => r,
    };
    shutdown.cancel();
    step_down(&world);
    outcome
}

/// A broker host: register, follow the assignments, serve Kafka on :9092.
async fn broker(world: Arc<World>, id: i32, broken: Option<Broken>, layout: Layout) -> HostResult {
    let meta = world.host_meta(&broker_name(id)).await;
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
    if layout == Layout::Wal {
        config.chunk_layout = floe_broker::config::ChunkLayout::Wal;
        // The simulated store answers in milliseconds (a local disk's
        // latency): a short linger, as on such a store.
        config.wal_linger_ms = 10;
        // A few chunks a page: the seeds' few hundred records page their
        // segments' lists, so recoveries and seals under faults read and
        // drop pages.
        config.wal_chunk_page = 4;
    }
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
        world.pool(&broker_name(id), id as u64),
        Arc::new(SimClock),
        Arc::new(floe_broker::metrics::Metrics::new()),
        format!("{}:9093", broker_name(id)),
        shutdown.clone(),
    )
    .await?;
    // The tail push the proxies follow, over the simulated network.
    let tail = turmoil::net::TcpListener::bind(("0.0.0.0", 9093)).await?;
    tokio::spawn(floe_broker::tail::serve_incoming(
        futures::stream::unfold(tail, |l| async move {
            let r = l.accept().await.map(|(s, _)| net::SimIo(s));
            Some((r, l))
        }),
        node.clone(),
        None,
        shutdown.clone(),
    ));
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

/// A proxy host, wired as `floe proxy` is: register, follow the cluster,
/// serve Kafka on :9092, reach brokers over the simulated network; when
/// its registration lease is found expired it exits, to be restarted.
async fn proxy(world: Arc<World>, id: i32) -> HostResult {
    let name = proxy_name(id);
    let meta = world.host_meta(&name).await;
    let cluster_id = loop {
        if let Some(c) = world.cluster_id.get() {
            break c.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let config = floe_proxy::ProxyConfig {
        proxy_id: Some(1_000 + id),
        dialer: Some(net::dialer()),
        ..Default::default()
    };
    let endpoints = vec![floe_meta::schema::Endpoint {
        name: "PLAINTEXT".into(),
        host: name.clone(),
        port: 9092,
    }];
    let shutdown = CancellationToken::new();
    let proxy = floe_proxy::Proxy::start(
        config,
        cluster_id,
        endpoints,
        meta,
        world.pool(&name, 100 + id as u64),
        SimClock.now_ms(),
        shutdown.clone(),
    )
    .await?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", 9092)).await?;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => r?,
            _ = shutdown.cancelled() => return Err("the proxy's registration lease expired".into()),
        };
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let (rd, wr) = stream.into_split();
            let _ = floe_kafka::listener::serve_connection(rd, wr, peer, proxy, shutdown).await;
        });
    }
}

/// The SRE: planned moves through the leading controller, drains and
/// rebalances through the controller's operations, as `floectl` makes
/// them; what each did is logged for the report.
async fn sre(world: Arc<World>) -> HostResult {
    let meta = world.host_meta("sre").await;
    let admin =
        floe_meta::topics::TopicAdmin::new(meta.clone(), Default::default(), Arc::new(SimClock));
    loop {
        let next = world.sre.lock().unwrap().pop_front();
        let Some(action) = next else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let at = turmoil::sim_elapsed().unwrap_or_default();
        let outcome = match &action {
            Sre::Move { partition, broker } => {
                let leader = world.leader.lock().unwrap().clone().map(|(_, c)| c);
                match (leader, admin.get(TOPIC).await) {
                    (Some(c), Ok(Some(t))) => {
                        let p = floe_common::PartitionId {
                            topic_id: t.id(),
                            partition: *partition,
                        };
                        match c.move_partition(p, *broker).await {
                            Ok(epoch) => format!("moved, epoch {epoch}"),
                            Err(e) => format!("refused: {e}"),
                        }
                    }
                    (None, _) => "no controller leads".to_string(),
                    (_, r) => format!("topic not read: {r:?}"),
                }
            }
            Sre::Drain(b) => match floe_controller::drain::start(&*meta, *b, false).await {
                Ok(op) => format!("operation {}", op.id),
                Err(e) => format!("refused: {e}"),
            },
            Sre::Undrain(b) => match floe_controller::drain::undrain(&*meta, *b).await {
                Ok(()) => "undrained".to_string(),
                Err(e) => {
                    // An undrain must happen: try again shortly.
                    world.sre.lock().unwrap().push_back(action.clone());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    format!("failed, retrying: {e}")
                }
            },
            Sre::Rebalance => {
                match floe_controller::operations::plan_rebalance(&*meta, Default::default()).await
                {
                    Ok((plan, _)) => {
                        match floe_controller::operations::start_rebalance(&*meta, &plan, 2).await {
                            Ok(op) => format!("operation {}", op.id),
                            Err(e) => format!("refused: {e}"),
                        }
                    }
                    Err(e) => format!("not planned: {e}"),
                }
            }
        };
        world
            .sre_log
            .lock()
            .unwrap()
            .push(format!("{at:?}: sre {action:?}: {outcome}"));
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
    // Clients go through the proxies when there are any.
    let bootstrap: Vec<String> = if o.proxies > 0 {
        (1..=o.proxies)
            .map(|id| format!("{}:9092", proxy_name(id)))
            .collect()
    } else {
        (1..=o.brokers)
            .map(|id| format!("{}:9092", broker_name(id)))
            .collect()
    };
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
    // Faults stop; restarted hosts come back; the consumer catches up.
    // Then read everything.
    tokio::time::sleep(Duration::from_secs(20)).await;
    while !world.consumer_done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    problems.extend(check(&world, &bootstrap, &o).await);
    world
        .checked
        .lock()
        .unwrap()
        .get_or_insert_with(Vec::new)
        .extend(problems);
    Ok(())
}

/// A consumer reading every partition from offset 0 while the producer
/// writes and the faults land, through the proxies as a Kafka client
/// would (Fetch to each partition's leader), until it has read every
/// record acked (or a minute after the faults stopped). What it saw is
/// checked against the final log: nothing read that is later gone or
/// different (no read above what is durable), no offset skipped.
async fn consumer(world: Arc<World>, o: Options) -> HostResult {
    let bootstrap: Vec<String> = if o.proxies > 0 {
        (1..=o.proxies)
            .map(|id| format!("{}:9092", proxy_name(id)))
            .collect()
    } else {
        (1..=o.brokers)
            .map(|id| format!("{}:9092", broker_name(id)))
            .collect()
    };
    let mut next: BTreeMap<i32, i64> = (0..o.partitions).map(|p| (p, 0)).collect();
    let mut conns: BTreeMap<String, Conn> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut done_at = None;
    loop {
        if world.producing_done.load(Ordering::SeqCst) {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            let since = *done_at.get_or_insert(now);
            // Caught up with every acked record?
            let acked = world.acked.lock().unwrap().clone();
            let caught_up = (0..o.partitions).all(|p| {
                let end = acked
                    .iter()
                    .filter(|(s, _)| s.partition == p)
                    .map(|(s, base)| base + s.values.len() as i64)
                    .max()
                    .unwrap_or(0);
                next[&p] >= end
            });
            if caught_up {
                break;
            }
            if now > since + Duration::from_secs(60) {
                problems.push(format!(
                    "liveness: the consumer did not catch up a minute after the faults stopped (at {next:?})"
                ));
                break;
            }
        }
        let layout = match client::layout(&bootstrap, TOPIC).await {
            Ok(l) => l,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for partition in 0..o.partitions {
            let Some(addr) = layout
                .owners
                .get(&partition)
                .and_then(|b| layout.brokers.get(b))
            else {
                continue;
            };
            if !conns.contains_key(addr) {
                match Conn::connect(addr).await {
                    Ok(c) => {
                        conns.insert(addr.clone(), c);
                    }
                    Err(_) => continue,
                }
            }
            let conn = conns.get_mut(addr).expect("just connected");
            let from = next[&partition];
            match client::fetch(conn, TOPIC, partition, from).await {
                Ok((records, _)) => {
                    let mut consumed = world.consumed.lock().unwrap();
                    for (offset, value) in records {
                        let want = next[&partition];
                        if offset != want {
                            problems.push(format!(
                                "consumer skipped: partition {partition} answered offset {offset} where {want} was next"
                            ));
                        }
                        consumed.push((partition, offset, value));
                        next.insert(partition, offset + 1);
                    }
                }
                Err(_) => {
                    conns.remove(addr);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    world.consumer_problems.lock().unwrap().extend(problems);
    world.consumer_done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Invariant 4 against every commit the metadata store applied: at most
/// one committer (a host incarnation) per partition epoch, and no
/// checkpoint of an older epoch committed after one of a newer epoch (a
/// deposed writer must be fenced).
fn check_committers(ledger: &[Commit]) -> Vec<String> {
    let mut v = Vec::new();
    let mut committers: BTreeMap<(String, i32), BTreeSet<String>> = BTreeMap::new();
    let mut newest: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    let mut ordered = ledger.to_vec();
    ordered.sort_by_key(|c| c.revision);
    for c in &ordered {
        committers
            .entry((c.partition.clone(), c.epoch))
            .or_default()
            .insert(c.by.clone());
        if c.what != "checkpoint" {
            continue;
        }
        match newest.get(&c.partition) {
            Some(&(epoch, revision)) if c.epoch < epoch => v.push(format!(
                "deposed writer: partition {} checkpoint of epoch {} by {} at revision {} after epoch {epoch} committed at revision {revision}",
                c.partition, c.epoch, c.by, c.revision
            )),
            Some(&(epoch, _)) if c.epoch == epoch => {}
            _ => {
                newest.insert(c.partition.clone(), (c.epoch, c.revision));
            }
        }
    }
    for ((partition, epoch), by) in committers {
        if by.len() > 1 {
            v.push(format!(
                "two committers: partition {partition} epoch {epoch} committed by {by:?}"
            ));
        }
    }
    v
}

/// The design's invariants against what the producer saw acked:
/// 1. every acked record is present, at the offset it was acked at;
/// 2. offsets are dense (0, 1, 2, ... up to the high watermark);
/// 3. no record appears twice (idempotence);
/// 4. nothing is in the log that the producer did not send.
async fn check(world: &World, bootstrap: &[String], o: &Options) -> Vec<String> {
    let mut v = std::mem::take(&mut *world.consumer_problems.lock().unwrap());
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
        let by_offset: BTreeMap<i64, &Bytes> = log.iter().map(|(o, v)| (*o, v)).collect();
        for (_, offset, value) in world
            .consumed
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| *p == partition)
        {
            if by_offset.get(offset) != Some(&value) {
                v.push(format!(
                    "phantom read: the consumer read {value:?} at partition {partition} offset {offset}, the log holds {:?}",
                    by_offset.get(offset)
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

#[cfg(test)]
mod tests {
    use super::{check_committers, Commit};

    fn commit(revision: i64, epoch: i32, what: &'static str, by: &str) -> Commit {
        Commit {
            revision,
            partition: "t/0".into(),
            epoch,
            what,
            by: by.into(),
        }
    }

    #[test]
    fn one_committer_per_epoch_in_epoch_order_holds() {
        let ledger = vec![
            commit(3, 0, "checkpoint", "broker-1#1"),
            commit(5, 0, "segment", "broker-1#1"),
            commit(9, 1, "checkpoint", "broker-2#1"),
            commit(12, 2, "checkpoint", "broker-1#2"),
        ];
        assert!(check_committers(&ledger).is_empty());
    }

    #[test]
    fn two_committers_of_one_epoch_are_caught() {
        let ledger = vec![
            commit(3, 1, "checkpoint", "broker-1#1"),
            commit(4, 1, "segment", "broker-2#1"),
        ];
        let v = check_committers(&ledger);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].starts_with("two committers: partition t/0 epoch 1"),
            "{v:?}"
        );
    }

    #[test]
    fn a_deposed_writer_committing_after_its_successor_is_caught() {
        // Listed out of order: the check orders by revision.
        let ledger = vec![
            commit(20, 1, "checkpoint", "broker-1#1"),
            commit(10, 2, "checkpoint", "broker-2#1"),
            commit(5, 1, "checkpoint", "broker-1#1"),
        ];
        let v = check_committers(&ledger);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].starts_with(
                "deposed writer: partition t/0 checkpoint of epoch 1 by broker-1#1 at revision 20"
            ),
            "{v:?}"
        );
    }
}
