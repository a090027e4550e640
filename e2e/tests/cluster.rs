//! A cluster on a real etcd: controllers elect a leader, partitions spread
//! over brokers and follow brokers that join, fail or get moves; clients
//! see the real owner in Metadata and keep producing and consuming.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, leaders, read_all, Cluster};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const LEASE_TTL_MS: u64 = 3_000;
/// Failover must come within the lease TTL plus this much: the takeover
/// itself is fast (the figures are printed and benchmarked), the slack is
/// for a loaded 2-core test machine, so that a slow run does not fail.
const TAKEOVER_SLACK_MS: u64 = 8_000;

/// Acked records: (partition, offset, payload).
type Acked = Vec<(i32, i64, Vec<u8>)>;

fn counts(l: &BTreeMap<i32, Option<i32>>) -> BTreeMap<i32, usize> {
    let mut c = BTreeMap::new();
    for b in l.values().flatten() {
        *c.entry(*b).or_default() += 1;
    }
    c
}

/// Wait until `pred` holds for the topic's leaders.
fn wait_leaders(
    cluster: &Cluster,
    topic: &str,
    timeout: Duration,
    pred: impl Fn(&BTreeMap<i32, Option<i32>>) -> bool,
) -> BTreeMap<i32, Option<i32>> {
    wait_leaders_via(cluster, &cluster.bootstrap(), topic, timeout, pred)
}

/// [`wait_leaders`], asking the brokers at `bootstrap` only.
fn wait_leaders_via(
    cluster: &Cluster,
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    pred: impl Fn(&BTreeMap<i32, Option<i32>>) -> bool,
) -> BTreeMap<i32, Option<i32>> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leaders(bootstrap, topic);
        if pred(&l) {
            return l;
        }
        if Instant::now() > deadline {
            panic!(
                "leaders never matched; last {l:?}\n{}",
                cluster
                    .logs()
                    .chars()
                    .rev()
                    .take(20_000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A producer task sending keyed records round-robin over partitions,
/// recording every acked (partition, offset, payload).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Acked>>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn start_load(bootstrap: &str, topic: &str, partitions: i32) -> Load {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let topic = topic.to_string();
    let (s, a, f) = (stop.clone(), acked.clone(), failed.clone());
    let task = tokio::spawn(async move {
        let mut i = 0u64;
        let mut inflight = futures_like::Inflight::default();
        while !s.load(Ordering::SeqCst) {
            let payload = format!("record-{i}").into_bytes();
            let p = (i % partitions as u64) as i32;
            let fut = producer.send_result(
                FutureRecord::<(), [u8]>::to(&topic)
                    .partition(p)
                    .payload(&payload),
            );
            match fut {
                Ok(fut) => inflight.push(payload, fut),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
            i += 1;
            if inflight.len() >= 200 {
                inflight.drain_some(&a, &f).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        inflight.drain_all(&a, &f).await;
    });
    Load {
        stop,
        acked,
        failed,
        task,
    }
}

mod futures_like {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use rdkafka::producer::DeliveryFuture;

    #[derive(Default)]
    pub struct Inflight(VecDeque<(Vec<u8>, DeliveryFuture)>);

    impl Inflight {
        pub fn push(&mut self, payload: Vec<u8>, f: DeliveryFuture) {
            self.0.push_back((payload, f));
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        async fn one(&mut self, acked: &Mutex<Vec<(i32, i64, Vec<u8>)>>, failed: &AtomicU64) {
            let Some((payload, f)) = self.0.pop_front() else {
                return;
            };
            match f.await {
                Ok(Ok(d)) => acked.lock().unwrap().push((d.partition, d.offset, payload)),
                other => {
                    if failed.fetch_add(1, Ordering::SeqCst) < 5 {
                        eprintln!("produce failed: {other:?}");
                    }
                }
            }
        }
        pub async fn drain_some(
            &mut self,
            acked: &Mutex<Vec<(i32, i64, Vec<u8>)>>,
            failed: &AtomicU64,
        ) {
            for _ in 0..100 {
                self.one(acked, failed).await;
            }
        }
        pub async fn drain_all(
            &mut self,
            acked: &Mutex<Vec<(i32, i64, Vec<u8>)>>,
            failed: &AtomicU64,
        ) {
            while !self.0.is_empty() {
                self.one(acked, failed).await;
            }
        }
    }
}

impl Load {
    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> (Acked, u64) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        (acked, self.failed.load(Ordering::SeqCst))
    }
}

/// Every acked record is in the log at its acked offset, and offsets are
/// dense from 0.
fn check_log(log: &HashMap<i32, Vec<(i64, Vec<u8>)>>, acked: &[(i32, i64, Vec<u8>)]) {
    for (p, recs) in log {
        for (i, (o, _)) in recs.iter().enumerate() {
            assert_eq!(*o, i as i64, "partition {p}: offsets dense from 0");
        }
    }
    for (p, o, payload) in acked {
        let recs = log.get(p).map(Vec::as_slice).unwrap_or_default();
        let got = recs.get(*o as usize).map(|(_, v)| v);
        assert_eq!(
            got,
            Some(payload),
            "acked record at partition {p} offset {o} is in the log"
        );
    }
}

async fn wait_acked_growth(load: &Load, by: usize, timeout: Duration) {
    let start = load.acked_count();
    let deadline = Instant::now() + timeout;
    while load.acked_count() < start + by {
        assert!(
            Instant::now() < deadline,
            "producing stalled: {} acked",
            load.acked_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_evenly_and_a_joining_broker_takes_its_share() {
    let mut cluster = Cluster::start(3, 2, LEASE_TTL_MS).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "spread", 12).await;
    let l = wait_leaders(&cluster, "spread", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some)
    });
    assert_eq!(
        counts(&l).values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4],
        "{l:?}"
    );

    let load = start_load(&b, "spread", 12);
    wait_acked_growth(&load, 500, Duration::from_secs(30)).await;

    cluster.add_broker().unwrap();
    let after = wait_leaders(&cluster, "spread", Duration::from_secs(30), |l| {
        let c = counts(l);
        l.values().all(Option::is_some) && c.get(&4).copied().unwrap_or(0) == 3
    });
    let c = counts(&after);
    assert_eq!(
        c.values().copied().collect::<Vec<_>>(),
        vec![3, 3, 3, 3],
        "{after:?}"
    );
    let moved = l.iter().filter(|(p, b)| after[p] != **b).count();
    assert_eq!(
        moved, 3,
        "only the new broker's share moved: {l:?} -> {after:?}"
    );

    // Producing continues on the new layout.
    wait_acked_growth(&load, 500, Duration::from_secs(30)).await;
    let (acked, failed) = load.finish().await;
    assert_eq!(failed, 0, "no produce failed for good");
    let log = read_all(&cluster.bootstrap(), "spread", 12);
    check_log(&log, &acked);
    // (Retries may add duplicates until the idempotent producer exists.)
    assert!(log.values().map(Vec::len).sum::<usize>() >= acked.len());
}

/// Produce one record to every partition; the time until all are acked.
async fn all_writable(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Duration {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("retry.backoff.ms", "50")
        .create()
        .unwrap();
    let start = Instant::now();
    let sends = (0..partitions).map(|p| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::<(), [u8]>::to(topic)
                        .partition(p)
                        .payload(b"probe".as_slice()),
                    timeout,
                )
                .await
                .map_err(|(e, _)| format!("partition {p}: {e}"))
        }
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_broker_loses_no_acked_record_and_its_partitions_move_within_the_lease() {
    let cluster = Cluster::start(3, 1, LEASE_TTL_MS).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "failover", 6).await;
    let before = wait_leaders(&cluster, "failover", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some)
    });
    let load = start_load(&b, "failover", 6);
    wait_acked_growth(&load, 1000, Duration::from_secs(30)).await;

    let victim = 1;
    cluster.brokers[victim - 1].signal("-KILL").unwrap();
    let killed = Instant::now();
    let writable = all_writable(&b, "failover", 6, Duration::from_secs(30)).await;
    let recovered = killed.elapsed();
    println!(
        "broker {victim} killed: every partition writable again after {:.2} s (lease TTL {:.1} s; probe itself {:.2} s)",
        recovered.as_secs_f64(),
        LEASE_TTL_MS as f64 / 1000.0,
        writable.as_secs_f64()
    );
    assert!(
        recovered <= Duration::from_millis(LEASE_TTL_MS + TAKEOVER_SLACK_MS),
        "writable after {recovered:?}, over lease TTL + {TAKEOVER_SLACK_MS} ms"
    );
    let after = leaders(&b, "failover");
    assert!(
        after
            .values()
            .all(|l| l.is_some() && *l != Some(victim as i32)),
        "{before:?} -> {after:?}"
    );

    wait_acked_growth(&load, 500, Duration::from_secs(30)).await;
    let (acked, _failed) = load.finish().await;
    let log = read_all(&b, "failover", 6);
    // The probes are in the log too; check the acked load records and density.
    check_log(&log, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_controller_takes_over_and_still_handles_a_broker_failure() {
    let mut cluster = Cluster::start(2, 2, LEASE_TTL_MS).unwrap();
    let first = cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "ha", 4).await;
    wait_leaders(&cluster, "ha", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some)
    });

    cluster.controllers[first].stop_with("-KILL").unwrap();
    let killed = Instant::now();
    let second = cluster.wait_leader(Duration::from_secs(30)).unwrap();
    let took = killed.elapsed();
    println!(
        "leading controller killed: standby leads after {:.2} s (lease TTL {:.1} s)",
        took.as_secs_f64(),
        LEASE_TTL_MS as f64 / 1000.0
    );
    assert_ne!(first, second);
    assert!(
        took <= Duration::from_millis(LEASE_TTL_MS + TAKEOVER_SLACK_MS),
        "{took:?}"
    );

    // The new leader handles a broker failure right away.
    cluster.brokers[0].signal("-KILL").unwrap();
    let killed = Instant::now();
    all_writable(&b, "ha", 4, Duration::from_secs(30)).await;
    let recovered = killed.elapsed();
    println!(
        "then broker 1 killed: every partition writable after {:.2} s",
        recovered.as_secs_f64()
    );
    assert!(
        recovered <= Duration::from_millis(LEASE_TTL_MS + TAKEOVER_SLACK_MS),
        "{recovered:?}"
    );
    let l = leaders(&b, "ha");
    assert!(l.values().all(|x| *x == Some(2)), "{l:?}");
}

/// Send one produce request (v9, acks=all) with a small batch for each of
/// `partitions` over an already open connection; wait as long as it takes
/// for the answer; return (partition, error code) pairs.
fn raw_produce(raw: &mut floe_e2e::RawClient, topic: &str, partitions: &[i32]) -> Vec<(i32, i16)> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(
                partitions
                    .iter()
                    .map(|p| {
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some(bytes::Bytes::from(
                                floe_protocol::batch::synthetic_batch(3, 16, 1_000),
                            )))
                    })
                    .collect(),
            )]);
    raw.stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let resp: ProduceResponse = raw.call(ApiKey::Produce, 9, &req).unwrap();
    resp.responses[0]
        .partition_responses
        .iter()
        .map(|r| (r.index, r.error_code))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_past_its_lease_acks_nothing_after_waking_and_rejoins() {
    let cluster = Cluster::start(3, 1, LEASE_TTL_MS).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "paused", 6).await;
    let before = wait_leaders(&cluster, "paused", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some)
    });
    let load = start_load(&b, "paused", 6);
    wait_acked_growth(&load, 500, Duration::from_secs(30)).await;

    let victim = 0usize;
    let victim_id = victim as i32 + 1;
    let others = cluster.bootstrap_except(victim);
    let owned: Vec<i32> = before
        .iter()
        .filter(|(_, l)| **l == Some(victim_id))
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(owned.len(), 2, "{before:?}");
    // A connection to the victim, opened while it runs.
    let mut raw = floe_e2e::RawClient::connect(&format!(
        "127.0.0.1:{}",
        cluster.brokers[victim].port.unwrap()
    ))
    .unwrap();

    cluster.brokers[victim].signal("-STOP").unwrap();
    let stopped = Instant::now();
    // Requests reach the frozen broker's socket; it reads them on waking.
    let topic_owned = owned.clone();
    let zombie = std::thread::spawn(move || raw_produce(&mut raw, "paused", &topic_owned));

    // Its lease lapses and its partitions move to the live brokers.
    let moved = wait_leaders_via(&cluster, &others, "paused", Duration::from_secs(30), |l| {
        l.values().all(|x| x.is_some() && *x != Some(victim_id))
    });
    println!(
        "broker {victim_id} stopped: its partitions moved after {:.2} s: {before:?} -> {moved:?}",
        stopped.elapsed().as_secs_f64()
    );
    // (The load's requests already sent to the victim wait for it: they get
    // NOT_LEADER when it wakes and are retried on the new owners.)
    all_writable(&others, "paused", 6, Duration::from_secs(30)).await;

    cluster.brokers[victim].signal("-CONT").unwrap();
    let answers = zombie.join().unwrap();
    assert_eq!(answers.len(), owned.len());
    // Answered by the old session: NOT_LEADER_OR_FOLLOWER. On a loaded
    // machine the woken broker may read the request only after it rejoined
    // and was given the partition again: then its new session, the
    // rightful owner, may write it (checked below against the log).
    let written_by_new_session: Vec<i32> = answers
        .iter()
        .filter(|(_, code)| *code == 0)
        .map(|(p, _)| *p)
        .collect();
    for (p, code) in &answers {
        assert!(
            *code == 6 || *code == 0,
            "partition {p}: a broker whose lease lapsed answers NOT_LEADER_OR_FOLLOWER, got {code}"
        );
    }

    // It rejoins as a new session and the controller gives it a share again.
    let rejoined = wait_leaders_via(&cluster, &others, "paused", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some) && counts(l).get(&victim_id).copied().unwrap_or(0) == 2
    });
    assert!(cluster.brokers[victim]
        .log_text()
        .contains("rejoined the cluster as a new session"));
    let metrics = cluster.brokers[victim].http("/metrics").unwrap();
    assert!(
        metrics.contains("floe_broker_lease_expirations_total 1"),
        "{metrics}"
    );
    println!("broker {victim_id} rejoined: {rejoined:?}");
    for p in &written_by_new_session {
        assert_eq!(
            rejoined.get(p).copied().flatten(),
            Some(victim_id),
            "partition {p} acked by broker {victim_id}, which does not own it: {rejoined:?}"
        );
        assert!(
            cluster.brokers[victim]
                .log_text()
                .contains("rejoined the cluster as a new session"),
            "acked by the old session"
        );
    }

    wait_acked_growth(&load, 500, Duration::from_secs(30)).await;
    let (acked, failed) = load.finish().await;
    assert_eq!(failed, 0, "no produce failed for good");
    let log = read_all(&b, "paused", 6);
    check_log(&log, &acked);
    // Only the load's records and the probes are in the log: the batches
    // sent to the stopped broker are not.
    for (p, recs) in &log {
        let zombie_batch = recs
            .iter()
            .filter(|(_, v)| !(v.starts_with(b"record-") || v == b"probe"))
            .count();
        if written_by_new_session.contains(p) {
            assert_eq!(
                zombie_batch, 3,
                "partition {p}: the batch its new session acked"
            );
            continue;
        }
        for (o, v) in recs {
            assert!(
                v.starts_with(b"record-") || v == b"probe",
                "partition {p} offset {o}: {:?} is not a load record",
                String::from_utf8_lossy(v)
            );
        }
    }
}

/// Wait until `partition`'s published state is `writing` on `broker` at
/// `epoch`; returns how long that took.
async fn wait_writing(
    meta: &dyn floe_meta::MetadataStore,
    topic: &str,
    partition: i32,
    broker: i32,
    epoch: i32,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = Cluster::partition_state(meta, topic, partition)
            .await
            .unwrap();
        if s.as_ref()
            .is_some_and(|s| s.broker_id == broker && s.epoch == epoch && s.state == "writing")
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "partition {partition} not writing on broker {broker} at epoch {epoch}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_moves_hand_a_partition_over_under_load_without_copying() {
    let cluster = Cluster::start(2, 1, LEASE_TTL_MS).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "moving", 2).await;
    let l = wait_leaders(&cluster, "moving", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some)
    });
    let meta = cluster.meta().await.unwrap();
    let load = start_load(&b, "moving", 2);
    wait_acked_growth(&load, 300, Duration::from_secs(30)).await;

    let mut owner = l[&0].unwrap();
    let mut took = Vec::new();
    for _ in 0..6 {
        let target = 3 - owner;
        let epoch = cluster.move_partition("moving", 0, target).unwrap();
        took.push(wait_writing(&meta, "moving", 0, target, epoch, Duration::from_secs(20)).await);
        owner = target;
        // Producing goes on, on the new owner too.
        wait_acked_growth(&load, 200, Duration::from_secs(30)).await;
    }
    took.sort();
    println!("6 planned moves under load: to writing on the new owner in {took:?}");

    let (acked, failed) = load.finish().await;
    assert_eq!(failed, 0, "no produce failed for good");
    let log = read_all(&b, "moving", 2);
    check_log(&log, &acked);
    // Every hand-over was a clean release followed by the fast path: no
    // fencing, no recovery of data, nothing copied.
    let logs = cluster.logs();
    // (The offsets topic's partitions, made when a client looked for a
    // group coordinator, add their own clean starts.)
    assert!(logs.matches("recovered after a clean release").count() >= 2 + 6);
    assert!(!logs.contains("recovered after an unclean end"), "{logs}");
    assert_eq!(
        logs.matches("released (flushed, end fixed in a clean checkpoint")
            .count(),
        6
    );
}

/// Kubernetes restarts a pod in place with the same identity: a broker
/// killed and started again at once finds its id still registered (the old
/// process's lease has not lapsed). It waits for the lease, saying why, and
/// comes up without any supervisor retrying it; then serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_in_place_waits_for_its_old_lease_to_lapse() {
    let mut cluster = Cluster::start(1, 1, LEASE_TTL_MS).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "in-place", 2).await;
    wait_leaders(&cluster, "in-place", Duration::from_secs(30), |l| {
        l.values().all(Option::is_some)
    });
    use floe_meta::MetadataStore as _;
    let meta = cluster.meta().await.unwrap();
    let successor = floe_meta::keys::successor(1);
    cluster.brokers[0].stop_with("-KILL").unwrap();
    let killed = Instant::now();
    cluster.brokers[0].start_nowait().unwrap();
    // While it waits it marks its id as replaced, so the controller hands
    // the dead process's session no partitions meanwhile.
    let mut marked = false;
    while !cluster.brokers[0].healthy() {
        marked |= meta.get(&successor).await.unwrap().is_some();
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the restarted broker did not come up by itself"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let up = killed.elapsed();
    assert!(marked, "the waiting process marks its id as replaced");
    assert!(
        meta.get(&successor).await.unwrap().is_none(),
        "the mark goes once the new process registered"
    );
    let log = cluster.brokers[0].log_text();
    assert!(
        log.contains(
            "registered by an earlier process whose lease is still alive; waiting for it to lapse"
        ),
        "{log}"
    );
    assert!(
        log.contains("the earlier registration lapsed; registered"),
        "{log}"
    );
    assert!(!log.contains("already registered"), "{log}");
    println!(
        "broker restarted in place: registered {:.2} s after the kill (lease TTL {:.1} s)",
        up.as_secs_f64(),
        LEASE_TTL_MS as f64 / 1000.0
    );
    // And it takes its partitions back and acks writes.
    let writable = all_writable(&b, "in-place", 2, Duration::from_secs(30)).await;
    println!("writable again {:.2} s later", writable.as_secs_f64());
}
