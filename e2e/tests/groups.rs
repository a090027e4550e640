//! Consumer groups with real librdkafka consumers: partitions split across
//! members, rebalances as members leave and join (eager and cooperative
//! assignors), every record consumed once with committed offsets, and a
//! restarted group resuming where it committed.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, find_coordinator, Standalone};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

const CONFIG: &str = "[broker]\ngroup_initial_rebalance_delay_ms = 500\n";

/// What every member consumed: (partition, offset) → times seen, and the
/// records whose commit failed (those may be seen again by the next owner).
#[derive(Default)]
struct Seen {
    count: HashMap<(i32, i64), usize>,
    uncommitted: HashSet<(i32, i64)>,
}

struct Member {
    stop: Arc<AtomicBool>,
    assigned: Arc<Mutex<Vec<i32>>>,
    /// Errors `poll` returned, as text.
    errors: Arc<Mutex<Vec<String>>>,
    thread: JoinHandle<()>,
}

fn member(
    bootstrap: &str,
    group: &str,
    topic: &str,
    strategy: &str,
    seen: Arc<Mutex<Seen>>,
) -> Member {
    member_with(bootstrap, group, topic, strategy, None, SESSION_MS, seen)
}

/// The members' session timeout: short, so that tests of a member that
/// goes away do not wait long for its expiry.
const SESSION_MS: u32 = 10_000;

/// A member, static (group.instance.id) when `instance` is given.
fn member_with(
    bootstrap: &str,
    group: &str,
    topic: &str,
    strategy: &str,
    instance: Option<&str>,
    session_ms: u32,
    seen: Arc<Mutex<Seen>>,
) -> Member {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("partition.assignment.strategy", strategy)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", "500");
    if let Some(i) = instance {
        // client.id names the member id, which orders members (the first
        // is the leader): instance "a" leads.
        config
            .set("group.instance.id", i)
            .set("client.id", format!("{i}-client"));
    }
    let consumer: BaseConsumer = config.create().unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (s, a, errs) = (stop.clone(), assigned.clone(), errors.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let key = (m.partition(), m.offset());
                    let committed = consumer.commit_message(&m, CommitMode::Sync).is_ok();
                    let mut seen = seen.lock().unwrap();
                    *seen.count.entry(key).or_default() += 1;
                    if !committed {
                        seen.uncommitted.insert(key);
                    }
                }
                Some(Err(e)) => errs.lock().unwrap().push(format!("{e:?}: {e}")),
                None => {}
            }
            let mut now: Vec<i32> = consumer
                .assignment()
                .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            now.sort();
            *a.lock().unwrap() = now;
        }
        // Dropping the consumer leaves the group (LeaveGroup).
        consumer.unsubscribe();
        drop(consumer);
    });
    Member {
        stop,
        assigned,
        errors,
        thread,
    }
}

impl Member {
    fn assigned(&self) -> Vec<i32> {
        self.assigned.lock().unwrap().clone()
    }

    fn leave(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
    }
}

/// Wait until the members' assignments have these sizes and cover every
/// partition once.
fn wait_split(members: &[&Member], sizes: &[usize], partitions: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a: Vec<Vec<i32>> = members.iter().map(|m| m.assigned()).collect();
        let mut got: Vec<usize> = a.iter().map(Vec::len).collect();
        got.sort();
        let mut all: Vec<i32> = a.iter().flatten().copied().collect();
        all.sort();
        if got == sizes && all == (0..partitions).collect::<Vec<_>>() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "assignments never became {sizes:?}: {a:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn produce(bootstrap: &str, topic: &str, from: usize, n: usize) {
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
                let v = format!("v{i}");
                p.send(
                    FutureRecord::<(), [u8]>::to(&topic)
                        .partition((i % 6) as i32)
                        .payload(v.as_bytes()),
                    Duration::from_secs(10),
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().count.len() < total {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {total}",
            seen.lock().unwrap().count.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn group_rebalances_consume_everything_once(strategy: &str) {
    let s = Standalone::start_with_config(CONFIG).unwrap();
    let b = s.bootstrap();
    create_topic(&b, "orders", 6).await;
    produce(&b, "orders", 0, 300).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let m1 = member(&b, "g", "orders", strategy, seen.clone());
    let m2 = member(&b, "g", "orders", strategy, seen.clone());
    let m3 = member(&b, "g", "orders", strategy, seen.clone());
    wait_split(&[&m1, &m2, &m3], &[2, 2, 2], 6);
    wait_consumed(&seen, 300);
    // ListGroups + DescribeGroups, as librdkafka sees them.
    let admin_consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .create()
        .unwrap();
    let list = admin_consumer
        .fetch_group_list(Some("g"), Duration::from_secs(10))
        .unwrap();
    let g = &list.groups()[0];
    assert_eq!(g.name(), "g");
    assert_eq!(g.state(), "Stable");
    assert_eq!(g.protocol_type(), "consumer");
    assert_eq!(g.protocol(), strategy);
    assert_eq!(g.members().len(), 3);

    // One member leaves: the other two take its partitions.
    m3.leave();
    produce(&b, "orders", 300, 300).await;
    wait_split(&[&m1, &m2], &[3, 3], 6);
    // One joins: back to 2/2/2, while records keep coming.
    let m4 = member(&b, "g", "orders", strategy, seen.clone());
    produce(&b, "orders", 600, 300).await;
    wait_split(&[&m1, &m2, &m4], &[2, 2, 2], 6);
    wait_consumed(&seen, 900);
    for m in [m1, m2, m4] {
        m.leave();
    }
    // The group is empty now: DeleteGroups removes it and its offsets.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &b)
            .create()
            .unwrap();
    let deleted = admin
        .delete_groups(&["g"], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let list = admin_consumer
        .fetch_group_list(Some("g"), Duration::from_secs(10))
        .unwrap();
    assert!(
        list.groups().is_empty() || list.groups()[0].state() == "Dead",
        "deleted"
    );

    let seen = seen.lock().unwrap();
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for ((p, o), n) in &seen.count {
        per_partition.entry(*p).or_default().push(*o);
        if *n > 1 {
            assert!(
                seen.uncommitted.contains(&(*p, *o)),
                "partition {p} offset {o} consumed {n} times though its commit succeeded"
            );
        }
    }
    for (p, mut offsets) in per_partition {
        offsets.sort();
        assert_eq!(
            offsets,
            (0..150).collect::<Vec<i64>>(),
            "partition {p}: no gap"
        );
    }
    println!(
        "{strategy}: 900 records consumed by a changing group; {} seen twice after a failed commit",
        seen.count.values().filter(|n| **n > 1).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_splits_partitions_and_rebalances_with_the_range_assignor() {
    group_rebalances_consume_everything_once("range").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_splits_partitions_and_rebalances_with_cooperative_sticky() {
    group_rebalances_consume_everything_once("cooperative-sticky").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_group_resumes_from_its_committed_offsets() {
    let mut s = Standalone::start_with_config(CONFIG).unwrap();
    let b = s.bootstrap();
    create_topic(&b, "resume", 6).await;
    produce(&b, "resume", 0, 120).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let members: Vec<Member> = (0..2)
        .map(|_| member(&b, "rg", "resume", "range", seen.clone()))
        .collect();
    wait_consumed(&seen, 120);
    for m in members {
        m.leave();
    }
    // The committed offsets survive a broker restart too (they are records
    // of the offsets topic, replayed by its next owner).
    s.restart().unwrap();
    produce(&b, "resume", 120, 60).await;
    let again = Arc::new(Mutex::new(Seen::default()));
    let members: Vec<Member> = (0..2)
        .map(|_| member(&b, "rg", "resume", "range", again.clone()))
        .collect();
    wait_consumed(&again, 60);
    std::thread::sleep(Duration::from_millis(500));
    for m in members {
        m.leave();
    }
    let again = again.lock().unwrap();
    let mut got: Vec<(i32, i64)> = again.count.keys().copied().collect();
    got.sort();
    let expected: Vec<(i32, i64)> = (0..6).flat_map(|p| (20..30).map(move |o| (p, o))).collect();
    assert_eq!(got, expected, "only what was produced after the commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_survives_kill9_of_its_coordinator_with_its_committed_offsets() {
    let cluster = floe_e2e::Cluster::start(3, 1, 3_000).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "events", 6).await;
    produce(&b, "events", 0, 300).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    // Kafka's default session (45 s): the members keep their generation
    // if the group is back within it, and the time it takes here is the
    // lease (3 s), the new owner's recovery of the offsets partition —
    // reading the dead broker's WAL objects, seconds on moto when the
    // machine is loaded — and the group's load.
    let session = 45_000;
    let m1 = member_with(&b, "cg", "events", "range", None, session, seen.clone());
    let m2 = member_with(&b, "cg", "events", "range", None, session, seen.clone());
    wait_split(&[&m1, &m2], &[3, 3], 6);
    wait_consumed(&seen, 300);

    let coordinator = find_coordinator(&b, "cg");
    cluster.brokers[coordinator as usize - 1]
        .signal("-KILL")
        .unwrap();
    let others = cluster.bootstrap_except(coordinator as usize - 1);
    produce(&others, "events", 300, 300).await;
    let moved = find_coordinator(&others, "cg");
    assert_ne!(moved, coordinator, "the group moved to a live broker");
    wait_consumed(&seen, 600);
    wait_split(&[&m1, &m2], &[3, 3], 6);
    // The new coordinator rebuilt the group from its records: the members
    // went on heartbeating in their generation, with no rebalance.
    let new_log = cluster.brokers[moved as usize - 1].log_text();
    assert!(new_log.contains("loaded group offsets"), "{new_log}");
    let group_lines: Vec<&str> = new_log
        .lines()
        .filter(|l| l.contains("group") || l.contains("member") || l.contains("recovered after"))
        .collect();
    assert!(
        !new_log.contains("group stable"),
        "no rebalance on the new coordinator; its group and recovery lines:\n{}",
        group_lines.join("\n")
    );
    for m in [m1, m2] {
        m.leave();
    }
    let seen = seen.lock().unwrap();
    let mut per_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for ((p, o), n) in &seen.count {
        per_partition.entry(*p).or_default().push(*o);
        assert!(
            *n == 1 || seen.uncommitted.contains(&(*p, *o)),
            "partition {p} offset {o} consumed {n} times though its commit succeeded"
        );
    }
    for (p, mut offsets) in per_partition {
        offsets.sort();
        assert_eq!(
            offsets,
            (0..100).collect::<Vec<i64>>(),
            "partition {p}: no gap"
        );
    }
    println!(
        "coordinator {coordinator} killed, group moved to {moved}: 600 records, {} seen twice after a failed commit",
        seen.count.values().filter(|n| **n > 1).count()
    );
}

mod raw {
    use floe_e2e::RawClient;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestGroup, OffsetFetchRequestTopics,
    };
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::StrBytes;

    fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_string())
    }

    pub fn find_coordinator(raw: &mut RawClient, group: &str) -> i16 {
        let req = FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![s(group)]);
        let r: FindCoordinatorResponse = raw.call(ApiKey::FindCoordinator, 4, &req).unwrap();
        r.coordinators[0].error_code
    }

    pub fn commit(
        raw: &mut RawClient,
        group: &str,
        generation: i32,
        member: &str,
        topic: &str,
        offset: i64,
        metadata: &str,
    ) -> i16 {
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(s(member))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(s(metadata)))])]);
        let r: OffsetCommitResponse = raw.call(ApiKey::OffsetCommit, 8, &req).unwrap();
        r.topics[0].partitions[0].error_code
    }

    pub fn fetch(raw: &mut RawClient, group: &str, topic: &str) -> i64 {
        let (code, offset) = fetch_answer(raw, group, topic);
        assert_eq!(code, 0);
        offset
    }

    /// OffsetFetch v8 of partition 0 of `topic`: the group's error code and
    /// the committed offset (-1 with an error).
    pub fn fetch_answer(raw: &mut RawClient, group: &str, topic: &str) -> (i16, i64) {
        let req =
            OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
                .with_group_id(GroupId(s(group)))
                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                    .with_name(TopicName(s(topic)))
                    .with_partition_indexes(vec![0])]))]);
        let r: OffsetFetchResponse = raw.call(ApiKey::OffsetFetch, 8, &req).unwrap();
        let g = &r.groups[0];
        let offset = g
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .map_or(-1, |p| p.committed_offset);
        (g.error_code, offset)
    }

    pub fn join(raw: &mut RawClient, group: &str, session_ms: i32) -> i16 {
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_session_timeout_ms(session_ms)
            .with_rebalance_timeout_ms(session_ms)
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
            )
            .with_name(s("range"))
            .with_metadata(bytes::Bytes::from_static(b"x"))]);
        let r: JoinGroupResponse = raw.call(ApiKey::JoinGroup, 5, &req).unwrap();
        r.error_code
    }

    pub fn heartbeat(raw: &mut RawClient, group: &str) -> i16 {
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_generation_id(1)
            .with_member_id(s("nobody"));
        let r: HeartbeatResponse = raw.call(ApiKey::Heartbeat, 4, &req).unwrap();
        r.error_code
    }

    pub fn offset_delete(raw: &mut RawClient, group: &str, topic: &str) -> (i16, i16) {
        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        let req = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s(group)))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]);
        let r: OffsetDeleteResponse = raw.call(ApiKey::OffsetDelete, 0, &req).unwrap();
        let p = r.topics.first().map_or(0, |t| t.partitions[0].error_code);
        (r.error_code, p)
    }

    pub fn delete_records(raw: &mut RawClient, topic: &str, offset: i64) -> (i16, i64) {
        use kafka_protocol::messages::delete_records_request::{
            DeleteRecordsPartition, DeleteRecordsTopic,
        };
        let req = DeleteRecordsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![DeleteRecordsPartition::default()
                    .with_partition_index(0)
                    .with_offset(offset)])]);
        let r: DeleteRecordsResponse = raw.call(ApiKey::DeleteRecords, 2, &req).unwrap();
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.low_watermark)
    }
}

fn low_watermark(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_compact_and_expire_and_bad_group_requests_get_kafka_errors() {
    let mut s = Standalone::start_with_config(
        "[broker]\noffsets_topic_partitions = 1\ninternal_topic_segment_bytes = 4096\n\
         retention_check_interval_ms = 300\n\
         offsets_retention_ms = 8000\ngroup_initial_rebalance_delay_ms = 0\n",
    )
    .unwrap();
    let b = s.bootstrap();
    create_topic(&b, "t", 1).await;
    let mut raw = floe_e2e::RawClient::connect(&b).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw::find_coordinator(&mut raw, "simple") != 0 {
        assert!(Instant::now() < deadline, "no coordinator");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Simple (member-less) commits, many of them: the offsets partition is
    // a compacted topic, so the compactor drops the superseded commits and
    // a replay stays short.
    for i in 0..200 {
        assert_eq!(raw::commit(&mut raw, "simple", -1, "", "t", i, "m"), 0);
    }
    assert_eq!(raw::fetch(&mut raw, "simple", "t"), 199);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .metric("floe_compaction_dropped_records_total")
        .unwrap_or(0.0)
        < 100.0
    {
        assert!(
            Instant::now() < deadline,
            "the offsets partition was never compacted: {}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.restart().unwrap();
    let mut raw = floe_e2e::RawClient::connect(&b).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw::find_coordinator(&mut raw, "simple") != 0 {
        assert!(Instant::now() < deadline, "no coordinator after restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        raw::fetch(&mut raw, "simple", "t"),
        199,
        "replayed from the compacted log"
    );

    // Bad input gets Kafka's error codes.
    assert_eq!(raw::join(&mut raw, "g", 10), 26, "INVALID_SESSION_TIMEOUT");
    assert_eq!(raw::join(&mut raw, "", 10_000), 24, "INVALID_GROUP_ID");
    assert_eq!(raw::heartbeat(&mut raw, "nogroup"), 25, "UNKNOWN_MEMBER_ID");
    assert_eq!(
        raw::commit(&mut raw, "nogroup", 3, "x", "t", 1, ""),
        22,
        "ILLEGAL_GENERATION"
    );
    let big = "m".repeat(5000);
    assert_eq!(
        raw::commit(&mut raw, "simple", -1, "", "t", 1, &big),
        12,
        "OFFSET_METADATA_TOO_LARGE"
    );
    assert_eq!(
        raw::commit(&mut raw, "simple", -1, "", "missing", 1, ""),
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    // A new member of a v4+ JoinGroup is first given an id to come back with.
    assert_eq!(raw::join(&mut raw, "g", 10_000), 79, "MEMBER_ID_REQUIRED");

    // OffsetDelete removes one partition's committed offset of a group
    // without members; an unknown group gets GROUP_ID_NOT_FOUND.
    assert_eq!(raw::commit(&mut raw, "od", -1, "", "t", 7, ""), 0);
    assert_eq!(raw::fetch(&mut raw, "od", "t"), 7);
    assert_eq!(raw::offset_delete(&mut raw, "od", "t"), (0, 0));
    assert_eq!(raw::fetch(&mut raw, "od", "t"), -1);
    assert_eq!(
        raw::offset_delete(&mut raw, "never", "t").0,
        69,
        "GROUP_ID_NOT_FOUND"
    );

    // DeleteRecords moves a topic's log start.
    produce_to(&b, "t", 10).await;
    assert_eq!(raw::delete_records(&mut raw, "t", 5), (0, 5));
    assert_eq!(low_watermark(&b, "t"), 5);
    assert_eq!(
        raw::delete_records(&mut raw, "t", 50).0,
        1,
        "OFFSET_OUT_OF_RANGE"
    );

    // Offsets of a group without members expire (offsets_retention_ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw::fetch(&mut raw, "simple", "t") != -1 {
        assert!(Instant::now() < deadline, "offsets never expired");
        std::thread::sleep(Duration::from_millis(250));
    }
}

async fn produce_to(bootstrap: &str, topic: &str, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in 0..n {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(topic)
                    .partition(0)
                    .payload(format!("p{i}").as_bytes()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_within_its_session_gets_its_partitions_back_without_a_rebalance(
) {
    let s = Standalone::start_with_config(CONFIG).unwrap();
    let b = s.bootstrap();
    create_topic(&b, "static", 6).await;
    produce(&b, "static", 0, 120).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let m1 = member_with(
        &b,
        "sg",
        "static",
        "range",
        Some("a"),
        SESSION_MS,
        seen.clone(),
    );
    let m2 = member_with(
        &b,
        "sg",
        "static",
        "range",
        Some("b"),
        SESSION_MS,
        seen.clone(),
    );
    wait_split(&[&m1, &m2], &[3, 3], 6);
    wait_consumed(&seen, 120);
    let (a1, b1) = (m1.assigned(), m2.assigned());
    let rebalances = s.log_text().matches("group stable").count();

    // A static member (not the leader) closes without leaving the group
    // and comes back.
    m2.leave();
    let m2 = member_with(
        &b,
        "sg",
        "static",
        "range",
        Some("b"),
        SESSION_MS,
        seen.clone(),
    );
    wait_split(&[&m1, &m2], &[3, 3], 6);
    assert_eq!(
        (m1.assigned(), m2.assigned()),
        (a1.clone(), b1.clone()),
        "same partitions"
    );
    produce(&b, "static", 120, 60).await;
    wait_consumed(&seen, 180);
    assert_eq!(
        s.log_text().matches("group stable").count(),
        rebalances,
        "no rebalance"
    );
    assert!(s
        .log_text()
        .contains("static member rejoined without a rebalance"));

    // The leader does the same: it gets its partitions back, the other
    // member keeps its own, and nobody rebalances (KIP-345, KIP-814).
    m1.leave();
    let back = Instant::now();
    let m1 = member_with(
        &b,
        "sg",
        "static",
        "range",
        Some("a"),
        SESSION_MS,
        seen.clone(),
    );
    wait_split(&[&m1, &m2], &[3, 3], 6);
    let took = back.elapsed();
    assert_eq!((m1.assigned(), m2.assigned()), (a1.clone(), b1.clone()));
    assert!(
        took < Duration::from_secs(5),
        "the leader's partitions came back after {took:?}"
    );
    produce(&b, "static", 180, 60).await;
    wait_consumed(&seen, 240);
    assert_eq!(
        s.log_text().matches("group stable").count(),
        rebalances,
        "no rebalance when the leader comes back"
    );
    assert!(
        s.log_text()
            .lines()
            .any(|l| l.contains("static member rejoined without a rebalance")
                && l.contains("leader=true")),
        "the leader rejoined as a static member"
    );

    // A second live instance with "b": it takes b's place, and the first
    // learns it has been fenced (FENCED_INSTANCE_ID, fatal in librdkafka).
    let m3 = member_with(
        &b,
        "sg",
        "static",
        "range",
        Some("b"),
        SESSION_MS,
        seen.clone(),
    );
    let until = Instant::now() + Duration::from_secs(30);
    while !m2
        .errors
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.contains("FencedInstanceId"))
    {
        assert!(
            Instant::now() < until,
            "the replaced instance was not fenced: {:?}",
            m2.errors.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_split(&[&m1, &m3], &[3, 3], 6);
    assert_eq!((m1.assigned(), m3.assigned()), (a1, b1));
    for m in [m1, m2, m3] {
        m.leave();
    }
}

/// OffsetFetch v8+ answers per group, and librdkafka hands a group's
/// NOT_COORDINATOR there to the application as a consumer error (CI saw it
/// during a rolling restart). Through a proxy, fetches made while the
/// group's coordinator moves twice all get the committed offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_fetches_through_a_proxy_wait_out_coordinator_moves() {
    let mut c = floe_e2e::Cluster::start_with(
        2,
        1,
        3_000,
        "[proxy]\nlease_ttl_ms = 2000\nforward_timeout_ms = 20000\n",
    )
    .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    create_topic(&c.bootstrap(), "fetched", 1).await;
    let proxy = c.proxy_bootstrap();
    let mut client = floe_e2e::RawClient::connect(&proxy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // FindCoordinator creates the offsets topic.
    loop {
        let found = raw::find_coordinator(&mut client, "mover");
        let code = if found == 0 {
            raw::commit(&mut client, "mover", -1, "", "fetched", 42, "m")
        } else {
            found
        };
        if code == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "never committed: {code}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = {
        let (stop, proxy) = (stop.clone(), proxy.clone());
        std::thread::spawn(move || {
            let mut client = floe_e2e::RawClient::connect(&proxy).unwrap();
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                answers.push(raw::fetch_answer(&mut client, "mover", "fetched"));
            }
            answers
        })
    };
    let meta = c.meta().await.unwrap();
    let partition = floe_e2e::offsets_partition("mover");
    for _ in 0..2 {
        let owner = floe_e2e::Cluster::partition_state(&meta, "__consumer_offsets", partition)
            .await
            .unwrap()
            .map_or(0, |s| s.broker_id);
        let target = 3 - owner;
        c.move_partition("__consumer_offsets", partition, target)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = floe_e2e::Cluster::partition_state(&meta, "__consumer_offsets", partition)
                .await
                .unwrap();
            if s.is_some_and(|s| s.broker_id == target && s.state == "writing") {
                break;
            }
            assert!(Instant::now() < deadline, "the move did not complete");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let answers = fetcher.join().unwrap();
    let wrong: Vec<_> = answers.iter().filter(|a| **a != (0, 42)).collect();
    println!("{} fetches across two moves", answers.len());
    assert!(answers.len() > 10, "{answers:?}");
    assert!(
        wrong.is_empty(),
        "{} of {} fetches answered {:?}",
        wrong.len(),
        answers.len(),
        &wrong[..wrong.len().min(5)]
    );
}
