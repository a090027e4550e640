//! KIP-848 consumer groups (`group.protocol=consumer`) with real librdkafka
//! consumers: the coordinator's server-side assignor splits partitions,
//! members leave and come back (static members to their own partitions),
//! a regex subscription follows new topics, and the group with its
//! committed offsets survives a planned move and a kill -9 of its
//! coordinator; classic and consumer groups side by side in ListGroups and
//! `floectl groups`.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, find_coordinator, Cluster, RawClient, Standalone};
use kafka_protocol::messages::{ApiKey, ListGroupsRequest, ListGroupsResponse};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Short heartbeats, so that reassignments settle in a few hundred ms.
const CONFIG: &str = "group_consumer_heartbeat_interval_ms = 300\n";

#[derive(Default)]
struct Seen {
    /// (topic, partition, offset) → times consumed.
    count: HashMap<(String, i32, i64), usize>,
    /// Records whose commit failed (the next owner may see them again).
    uncommitted: HashSet<(String, i32, i64)>,
}

/// (topic, partition) lists, sorted.
type Assignments = Vec<(String, i32)>;

struct Member {
    stop: Arc<AtomicBool>,
    /// Static close: drop without unsubscribing (librdkafka then sends the
    /// static member's temporary leave, epoch -2).
    close_only: Arc<AtomicBool>,
    /// (topic, partition), sorted.
    assigned: Arc<Mutex<Vec<(String, i32)>>>,
    /// Every assignment this member had, in order.
    history: Arc<Mutex<Vec<Assignments>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<()>,
}

fn member(
    bootstrap: &str,
    group: &str,
    topics: &[&str],
    instance: Option<&str>,
    seen: Arc<Mutex<Seen>>,
) -> Member {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "1000");
    if let Some(i) = instance {
        config.set("group.instance.id", i);
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(topics).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let close_only = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let history = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (s, c, a, h, errs) = (
        stop.clone(),
        close_only.clone(),
        assigned.clone(),
        history.clone(),
        errors.clone(),
    );
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    let key = (m.topic().to_string(), m.partition(), m.offset());
                    let committed = consumer.commit_message(&m, CommitMode::Sync).is_ok();
                    let mut seen = seen.lock().unwrap();
                    *seen.count.entry(key.clone()).or_default() += 1;
                    if !committed {
                        seen.uncommitted.insert(key);
                    }
                }
                Some(Err(e)) => {
                    let mut errs = errs.lock().unwrap();
                    errs.push(format!("{e:?}: {e}"));
                    // A fatal error (e.g. UNRELEASED_INSTANCE_ID) is told
                    // as _FATAL; the cause is asked of the client.
                    if let Some((code, msg)) = consumer.client().fatal_error() {
                        errs.push(format!("fatal {code:?}: {msg}"));
                    }
                }
                None => {}
            }
            let mut now: Vec<(String, i32)> = consumer
                .assignment()
                .map(|tpl| {
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition()))
                        .collect()
                })
                .unwrap_or_default();
            now.sort();
            let mut hist = h.lock().unwrap();
            if hist.last() != Some(&now) {
                hist.push(now.clone());
            }
            *a.lock().unwrap() = now;
        }
        if !c.load(Ordering::SeqCst) {
            consumer.unsubscribe();
        }
        drop(consumer);
    });
    Member {
        stop,
        close_only,
        assigned,
        history,
        errors,
        thread,
    }
}

impl Member {
    fn assigned(&self) -> Vec<(String, i32)> {
        self.assigned.lock().unwrap().clone()
    }

    fn history(&self) -> Vec<Vec<(String, i32)>> {
        self.history.lock().unwrap().clone()
    }

    fn leave(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }

    /// Close as a process that exits would: a static member's temporary
    /// leave, no unsubscribe.
    fn close(self) {
        self.close_only.store(true, Ordering::SeqCst);
        self.leave();
    }
}

/// Wait until the members' assignments of `topic` have these sizes and
/// cover its partitions once.
fn wait_split(members: &[&Member], topic: &str, sizes: &[usize], partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a: Vec<Vec<i32>> = members
            .iter()
            .map(|m| {
                m.assigned()
                    .into_iter()
                    .filter(|(t, _)| t == topic)
                    .map(|(_, p)| p)
                    .collect()
            })
            .collect();
        let mut got: Vec<usize> = a.iter().map(Vec::len).collect();
        got.sort();
        let mut all: Vec<i32> = a.iter().flatten().copied().collect();
        all.sort();
        if got == sizes && all == (0..partitions).collect::<Vec<_>>() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "assignments of {topic} never became {sizes:?}: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn produce(bootstrap: &str, topic: &str, partitions: usize, from: usize, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let sends: Vec<_> = (from..from + n)
        .map(|i| {
            let p = producer.clone();
            let topic = topic.to_string();
            async move {
                p.send(
                    FutureRecord::<(), [u8]>::to(&topic)
                        .partition((i % partitions) as i32)
                        .payload(format!("v{i}").as_bytes()),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap()
            }
        })
        .collect();
    futures::future::join_all(sends).await;
}

fn wait_consumed(seen: &Mutex<Seen>, total: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.lock().unwrap().count.len() < total {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {total}",
            seen.lock().unwrap().count.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every record of `topic` consumed, none twice unless its commit failed.
fn assert_once(seen: &Seen, topic: &str, partitions: i32, per_partition: i64) {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for ((t, p, o), n) in &seen.count {
        if t != topic {
            continue;
        }
        by_partition.entry(*p).or_default().push(*o);
        assert!(
            *n == 1 || seen.uncommitted.contains(&(t.clone(), *p, *o)),
            "{t}-{p} offset {o} consumed {n} times though its commit succeeded"
        );
    }
    assert_eq!(
        by_partition.len() as i32,
        partitions,
        "{topic}: every partition"
    );
    for (p, mut offsets) in by_partition {
        offsets.sort();
        assert_eq!(
            offsets,
            (0..per_partition).collect::<Vec<i64>>(),
            "{topic}-{p}: every offset"
        );
    }
}

/// The only member of a classic group on `topic`, once it has all
/// `partitions` (the group is then Stable).
fn classic_member_of_all(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: usize,
) -> BaseConsumer {
    let classic: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    classic.subscribe(&[topic]).unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while classic.assignment().map(|a| a.count()).unwrap_or(0) < partitions {
        assert!(
            Instant::now() < until,
            "the classic group {group} got no assignment"
        );
        classic.poll(Duration::from_millis(100));
    }
    classic
}

/// (group, protocol type, state, group type) from ListGroups v5.
fn list_groups(bootstrap: &str) -> Vec<(String, String, String, String)> {
    let mut raw = RawClient::connect(bootstrap).unwrap();
    let resp: ListGroupsResponse = raw
        .call(ApiKey::ListGroups, 5, &ListGroupsRequest::default())
        .unwrap();
    assert_eq!(resp.error_code, 0);
    let mut out: Vec<_> = resp
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.protocol_type.to_string(),
                g.group_state.to_string(),
                g.group_type.to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_protocol_members_split_rebalance_and_follow_a_regex() {
    let s = Standalone::start_with_config(&format!("[broker]\n{CONFIG}")).unwrap();
    let b = s.bootstrap();
    create_topic(&b, "orders", 6).await;
    produce(&b, "orders", 6, 0, 300).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let m1 = member(&b, "kg", &["orders"], None, seen.clone());
    let m2 = member(&b, "kg", &["orders"], None, seen.clone());
    let m3 = member(&b, "kg", &["orders"], None, seen.clone());
    wait_split(&[&m1, &m2, &m3], "orders", &[2, 2, 2], 6);
    wait_consumed(&seen, 300);

    // A classic group beside it; ListGroups shows both with their types.
    let classic = classic_member_of_all(&b, "classic-g", "orders", 6);
    let groups = list_groups(&b);
    let kg = groups.iter().find(|g| g.0 == "kg").expect("kg listed");
    assert_eq!((kg.1.as_str(), kg.3.as_str()), ("consumer", "consumer"));
    assert_eq!(kg.2, "Stable");
    let cg = groups
        .iter()
        .find(|g| g.0 == "classic-g")
        .expect("classic listed");
    assert_eq!((cg.1.as_str(), cg.3.as_str()), ("consumer", "classic"));
    drop(classic);

    // One leaves: the other two take over its partitions and keep their
    // own; no committed record is seen again.
    let (a1, a2) = (m1.assigned(), m2.assigned());
    m3.leave();
    wait_split(&[&m1, &m2], "orders", &[3, 3], 6);
    for (before, m) in [(a1, &m1), (a2, &m2)] {
        let now = m.assigned();
        assert!(
            before.iter().all(|p| now.contains(p)),
            "a staying member lost a partition: {before:?} → {now:?}"
        );
    }
    produce(&b, "orders", 6, 300, 300).await;
    wait_consumed(&seen, 600);

    // A regex subscription picks up a topic made after it subscribed.
    create_topic(&b, "logs-a", 2).await;
    let rx = member(&b, "rg", &["^logs-.*"], None, seen.clone());
    let until = Instant::now() + Duration::from_secs(30);
    while rx.assigned().len() < 2 {
        assert!(Instant::now() < until, "regex member: {:?}", rx.assigned());
        std::thread::sleep(Duration::from_millis(50));
    }
    create_topic(&b, "logs-b", 3).await;
    create_topic(&b, "other", 1).await;
    produce(&b, "logs-b", 3, 0, 30).await;
    let until = Instant::now() + Duration::from_secs(60);
    while rx.assigned().len() < 5 {
        assert!(Instant::now() < until, "regex member: {:?}", rx.assigned());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rx.assigned().iter().all(|(t, _)| t.starts_with("logs-")));
    wait_consumed(&seen, 630);

    for m in [m1, m2, rx] {
        m.leave();
    }
    {
        let seen = seen.lock().unwrap();
        assert_once(&seen, "orders", 6, 100);
        assert_once(&seen, "logs-b", 3, 10);
    }
    // The empty group can be deleted, with its offsets.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let deleted = admin
            .delete_groups(&["kg"], &rdkafka::admin::AdminOptions::new())
            .await
            .unwrap();
        if deleted[0].is_ok() {
            break;
        }
        assert!(Instant::now() < until, "{deleted:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!list_groups(&b).iter().any(|g| g.0 == "kg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_consumer_protocol_member_restarts_to_its_own_partitions() {
    let s = Standalone::start_with_config(&format!("[broker]\n{CONFIG}")).unwrap();
    let b = s.bootstrap();
    create_topic(&b, "st", 3).await;
    produce(&b, "st", 3, 0, 60).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let ma = member(&b, "sg", &["st"], Some("a"), seen.clone());
    let mb = member(&b, "sg", &["st"], Some("b"), seen.clone());
    wait_split(&[&ma, &mb], "st", &[1, 2], 3);
    wait_consumed(&seen, 60);
    let (had_a, had_b) = (ma.assigned(), mb.assigned());
    let b_history = mb.history().len();

    // a's process goes away (a static member's temporary leave) and a new
    // one with the same group.instance.id comes: it gets a's partitions;
    // b is not disturbed.
    ma.close();
    let back = Instant::now();
    let ma = member(&b, "sg", &["st"], Some("a"), seen.clone());
    let until = Instant::now() + Duration::from_secs(30);
    while ma.assigned() != had_a {
        assert!(Instant::now() < until, "a got {:?}", ma.assigned());
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "the restarted static member had its partitions back after {:?}",
        back.elapsed()
    );
    produce(&b, "st", 3, 60, 60).await;
    wait_consumed(&seen, 120);
    assert_eq!(mb.assigned(), had_b);
    assert_eq!(
        mb.history().len(),
        b_history,
        "b saw no revocation: {:?}",
        mb.history()
    );

    // A second live instance "a" is turned away (UNRELEASED_INSTANCE_ID).
    let dup = member(&b, "sg", &["st"], Some("a"), seen.clone());
    let until = Instant::now() + Duration::from_secs(30);
    while !dup
        .errors
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.contains("fatal UnreleasedInstanceId"))
    {
        assert!(
            Instant::now() < until,
            "the duplicate was not refused: {:?}",
            dup.errors.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dup.assigned().is_empty());
    assert_eq!((ma.assigned(), mb.assigned()), (had_a, had_b));
    for m in [dup, ma, mb] {
        m.leave();
    }
    assert_once(&seen.lock().unwrap(), "st", 3, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_survives_a_move_and_kill9_of_its_coordinator() {
    let mut cluster = Cluster::start_with(3, 1, 3_000, CONFIG).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    cluster.add_proxy().unwrap();
    let direct = cluster.bootstrap();
    let b = cluster.proxy_bootstrap();
    create_topic(&direct, "events", 6).await;
    produce(&b, "events", 6, 0, 300).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let m1 = member(&b, "mg", &["events"], None, seen.clone());
    let m2 = member(&b, "mg", &["events"], None, seen.clone());
    wait_split(&[&m1, &m2], "events", &[3, 3], 6);
    wait_consumed(&seen, 300);
    let (a1, a2) = (m1.assigned(), m2.assigned());
    let (h1, h2) = (m1.history().len(), m2.history().len());

    // `floectl groups` shows it beside a classic group, each with its type.
    let classic = classic_member_of_all(&b, "classic-mg", "events", 6);
    let (rc, out, err) = cluster.floectl(0, &["groups"]);
    assert_eq!(rc, 0, "{err}");
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed: {out}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    // GROUP TYPE PROTOCOL-TYPE STATE COORDINATOR
    assert_eq!(row("mg")[1..4], ["consumer", "consumer", "Stable"], "{out}");
    assert_eq!(
        row("classic-mg")[1..4],
        ["classic", "consumer", "Stable"],
        "{out}"
    );
    drop(classic);

    // A planned move of the group's offsets partition.
    let coordinator = find_coordinator(&direct, "mg");
    let partition = floe_e2e::offsets_partition("mg");
    let target = (1..=3).find(|b| *b != coordinator).unwrap();
    cluster
        .move_partition("__consumer_offsets", partition, target)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while find_coordinator(&direct, "mg") != target {
        assert!(Instant::now() < until, "the group did not move");
        std::thread::sleep(Duration::from_millis(100));
    }
    produce(&b, "events", 6, 300, 300).await;
    wait_consumed(&seen, 600);

    // kill -9 of its new coordinator's broker.
    cluster.brokers[target as usize - 1]
        .signal("-KILL")
        .unwrap();
    let others = cluster.bootstrap_except(target as usize - 1);
    let until = Instant::now() + Duration::from_secs(60);
    let moved = loop {
        let c = find_coordinator(&others, "mg");
        if c != target {
            break c;
        }
        assert!(
            Instant::now() < until,
            "the group stayed on the dead broker"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    produce(&b, "events", 6, 600, 300).await;
    wait_consumed(&seen, 900);
    // The members kept their partitions through both: the group's state
    // came back from its record.
    assert_eq!((m1.assigned(), m2.assigned()), (a1, a2));
    assert_eq!(
        (m1.history().len(), m2.history().len()),
        (h1, h2),
        "no reassignment: {:?} {:?}",
        m1.history(),
        m2.history()
    );
    let new_log = cluster.brokers[moved as usize - 1].log_text();
    assert!(new_log.contains("loaded group offsets"), "{new_log}");
    for m in [m1, m2] {
        m.leave();
    }
    assert_once(&seen.lock().unwrap(), "events", 6, 150);
}

/// A classic consumer of `group` that reads until it has `n` records, commits
/// each, and leaves; the (partition, offset)s it read.
fn classic_consume(bootstrap: &str, group: &str, topic: &str, n: usize) -> Vec<(i32, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        assert!(Instant::now() < until, "classic member read {got:?}");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            c.commit_message(&m, CommitMode::Sync).unwrap();
            got.push((m.partition(), m.offset()));
        }
    }
    c.unsubscribe();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_group_changes_protocol_and_keeps_its_offsets() {
    let s = Standalone::start_with_config(&format!(
        "[broker]\n{CONFIG}group_initial_rebalance_delay_ms = 0\n"
    ))
    .unwrap();
    let b = s.bootstrap();
    create_topic(&b, "conv", 2).await;
    produce(&b, "conv", 2, 0, 40).await;
    let group_type = |name: &str| {
        list_groups(&b)
            .into_iter()
            .find(|g| g.0 == name)
            .map(|g| g.3)
    };

    // A classic group reads and commits the first 40, then empties.
    let first = classic_consume(&b, "cv", "conv", 40);
    assert_eq!(first.len(), 40);
    assert_eq!(group_type("cv").as_deref(), Some("classic"));

    // A consumer-protocol member joins the empty group: it becomes a
    // consumer group and starts from the classic members' commits.
    produce(&b, "conv", 2, 40, 20).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let m = member(&b, "cv", &["conv"], None, seen.clone());
    wait_consumed(&seen, 20);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(group_type("cv").as_deref(), Some("consumer"));
    m.leave();
    {
        let seen = seen.lock().unwrap();
        let mut got: Vec<(i32, i64)> = seen.count.keys().map(|(_, p, o)| (*p, *o)).collect();
        got.sort();
        let expected: Vec<(i32, i64)> =
            (0..2).flat_map(|p| (20..30).map(move |o| (p, o))).collect();
        assert_eq!(got, expected, "only what came after the classic commits");
    }

    // And back: a classic member of the now empty consumer group resumes
    // from the consumer-protocol member's commits.
    produce(&b, "conv", 2, 60, 10).await;
    let mut again = classic_consume(&b, "cv", "conv", 10);
    again.sort();
    let expected: Vec<(i32, i64)> = (0..2).flat_map(|p| (30..35).map(move |o| (p, o))).collect();
    assert_eq!(again, expected);
    assert_eq!(group_type("cv").as_deref(), Some("classic"));
    assert!(s
        .log_text()
        .contains("empty classic group converted to a consumer group"));
    assert!(s
        .log_text()
        .contains("empty consumer group converted to a classic group"));
}
