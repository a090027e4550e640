//! Kafka transactions (KIP-98, KIP-447, KIP-890) against real clients:
//! librdkafka (the rdkafka crate) and kafka-python producing in
//! transactions that commit and abort, read back by read_committed and
//! read_uncommitted consumers; an open transaction holding the last stable
//! offset; consume-transform-produce with offsets sent to the transaction
//! across a kill -9 of the transformer; zombie fencing; bad input getting
//! Kafka's error codes with nothing written; and a cluster whose
//! coordinator's and data partitions' owners are killed and moved during a
//! stream of transactions (seeded; `FLOE_TXN_SEEDS` runs more).
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, RawClient, Standalone};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::TopicPartitionList;

const T: Duration = Duration::from_secs(30);

fn python() -> String {
    std::env::var("FLOE_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py-venv/bin/python").to_string()
    })
}

fn txn_producer(bootstrap: &str, id: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .set("retry.backoff.ms", "50")
        .create()
        .unwrap()
}

async fn send(p: &FutureProducer, topic: &str, partition: i32, value: &str) {
    p.send(
        FutureRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(value),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
}

/// Every record of `topic` partition `p` a consumer of `isolation` sees
/// from its beginning to its end, or the first `until`: (offset, value).
fn consume(
    bootstrap: &str,
    topic: &str,
    p: i32,
    isolation: &str,
    until: usize,
) -> Vec<(i64, String)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while out.len() < until {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push((
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
                ));
                last = Instant::now();
            }
            // The end of the partition (its last stable offset under
            // read_committed): all there is has been read. A quiet spell
            // is not the end: a busy machine can take seconds to serve
            // the first fetch.
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            _ => assert!(
                last.elapsed() < PATIENCE,
                "{topic}-{p} ({isolation}): the end was not reached in {PATIENCE:?} without a record; read {out:?}"
            ),
        }
    }
    out
}

/// How long a reader waits without progress before a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// ListOffsets for the latest offset of partition `p` under isolation
/// level `isolation` (0: the high watermark, 1: the last stable offset).
fn latest(addr: &str, topic: &str, p: i32, isolation: i8) -> i64 {
    use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut c = RawClient::connect(addr).unwrap();
    let r: ListOffsetsResponse = c
        .call(
            ApiKey::ListOffsets,
            4,
            &ListOffsetsRequest::default()
                .with_replica_id((-1).into())
                .with_isolation_level(isolation)
                .with_topics(vec![ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.into())))
                    .with_partitions(vec![ListOffsetsPartition::default()
                        .with_partition_index(p)
                        .with_timestamp(-1)])]),
        )
        .unwrap();
    let pr = &r.topics[0].partitions[0];
    assert_eq!(pr.error_code, 0, "ListOffsets {topic}-{p}");
    pr.offset
}

/// (high watermark, last stable offset) of partition `p` once `ok` holds
/// for them, asked for up to 10 s (the last answers otherwise): a proxy
/// answers ListOffsets from the log it follows, which trails the broker's
/// by a tail push.
fn offsets_when(addr: &str, topic: &str, p: i32, ok: impl Fn(i64, i64) -> bool) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (hw, lso) = (latest(addr, topic, p, 0), latest(addr, topic, p, 1));
        if ok(hw, lso) || Instant::now() >= deadline {
            return (hw, lso);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn values(v: &[(i64, String)]) -> Vec<&str> {
    v.iter().map(|(_, s)| s.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_and_aborted_transactions_read_back_by_isolation_level() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    create_topic(&b, "tx", 1).await;

    // librdkafka: commit, abort (flushed, so its records are in the log),
    // commit.
    let p = txn_producer(&b, "rd-1");
    p.init_transactions(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        send(&p, "tx", 0, &format!("rd-c{i}")).await;
    }
    p.commit_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..3 {
        send(&p, "tx", 0, &format!("rd-a{i}")).await;
    }
    p.abort_transaction(T).unwrap();
    p.begin_transaction().unwrap();
    for i in 0..2 {
        send(&p, "tx", 0, &format!("rd-d{i}")).await;
    }
    p.commit_transaction(T).unwrap();

    // An open transaction holds the last stable offset and hides its
    // records from read_committed until it ends.
    let (hw_before, lso) = offsets_when(&b, "tx", 0, |hw, lso| hw == lso);
    assert_eq!(lso, hw_before, "nothing open yet");
    p.begin_transaction().unwrap();
    send(&p, "tx", 0, "rd-open").await;
    let open_at = hw_before;
    let (hw, lso) = offsets_when(&b, "tx", 0, |hw, _| hw > open_at);
    assert!(hw > open_at);
    assert_eq!(
        lso, open_at,
        "the LSO stays at the open transaction's first offset"
    );
    let seen = consume(&b, "tx", 0, "read_committed", 100);
    assert!(
        !values(&seen).contains(&"rd-open"),
        "an open transaction's record is hidden: {seen:?}"
    );

    // The open transaction as kafka-transactions.sh shows it.
    let mut raw = RawClient::connect(&b).unwrap();
    let listed: ListTransactionsResponse = raw
        .call(
            ApiKey::ListTransactions,
            1,
            &ListTransactionsRequest::default()
                .with_state_filters(vec![StrBytes::from_static_str("Ongoing")])
                .with_duration_filter(-1),
        )
        .unwrap();
    let ids: Vec<&str> = listed
        .transaction_states
        .iter()
        .map(|t| t.transactional_id.0.as_str())
        .collect();
    assert_eq!((listed.error_code, ids), (0, vec!["rd-1"]));
    let described: DescribeTransactionsResponse = raw
        .call(
            ApiKey::DescribeTransactions,
            0,
            &DescribeTransactionsRequest::default().with_transactional_ids(vec![
                TransactionalId(StrBytes::from_static_str("rd-1")),
                TransactionalId(StrBytes::from_static_str("nobody")),
            ]),
        )
        .unwrap();
    let d = &described.transaction_states[0];
    assert_eq!(
        (d.error_code, d.transaction_state.as_str(), d.topics.len()),
        (0, "Ongoing", 1)
    );
    assert_eq!(
        (d.topics[0].topic.0.as_str(), d.topics[0].partitions.clone()),
        ("tx", vec![0])
    );
    assert!(d.transaction_start_time_ms > 0 && d.transaction_timeout_ms == 60_000);
    assert_eq!(
        described.transaction_states[1].error_code,
        kafka_protocol::error::ResponseError::TransactionalIdNotFound.code()
    );

    // kafka-python, the same sequence, while librdkafka's transaction is
    // still open.
    let script = r#"
import sys
from kafka import KafkaProducer
p = KafkaProducer(bootstrap_servers=sys.argv[1], transactional_id="py-1")
p.init_transactions()
p.begin_transaction()
for i in range(3): p.send("tx", b"py-c%d" % i, partition=0)
p.commit_transaction()
p.begin_transaction()
for i in range(3): p.send("tx", b"py-a%d" % i, partition=0)
p.flush()
p.abort_transaction()
p.begin_transaction()
for i in range(2): p.send("tx", b"py-d%d" % i, partition=0)
p.commit_transaction()
p.close()
print("ok")
"#;
    let out = Command::new(python())
        .args(["-c", script, &b])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "kafka-python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still held by librdkafka's open transaction.
    assert_eq!(latest(&b, "tx", 0, 1), open_at);
    p.commit_transaction(T).unwrap();
    let (end, lso) = offsets_when(&b, "tx", 0, |hw, lso| hw == lso);
    assert_eq!(lso, end, "the LSO caught up");

    let committed = consume(&b, "tx", 0, "read_committed", 14);
    let mut c = values(&committed);
    // The two producers' records interleave only where kafka-python wrote
    // during librdkafka's open transaction: compare as ordered per producer.
    let rd: Vec<&str> = c.iter().copied().filter(|v| v.starts_with("rd")).collect();
    let py: Vec<&str> = c.iter().copied().filter(|v| v.starts_with("py")).collect();
    assert_eq!(rd, ["rd-c0", "rd-c1", "rd-c2", "rd-d0", "rd-d1", "rd-open"]);
    assert_eq!(py, ["py-c0", "py-c1", "py-c2", "py-d0", "py-d1"]);
    assert_eq!(c.len(), 11, "no aborted record, no control record: {c:?}");
    let offsets: Vec<i64> = committed.iter().map(|(o, _)| *o).collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "in offset order");
    c.sort();

    let all = consume(&b, "tx", 0, "read_uncommitted", 17);
    let all_values = values(&all);
    for a in ["rd-a0", "rd-a1", "rd-a2", "py-a0", "py-a1", "py-a2"] {
        assert!(all_values.contains(&a), "read_uncommitted sees {a}");
    }
    assert_eq!(all.len(), 17, "every data record, no control record");
    // Control records take offsets: the log has gaps only there.
    assert!(end > 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_producer_fences_the_first_and_its_records_stay_invisible() {
    let s = Standalone::start().unwrap();
    let b = s.bootstrap();
    create_topic(&b, "zombie", 1).await;
    let old = txn_producer(&b, "z-1");
    old.init_transactions(T).unwrap();
    old.begin_transaction().unwrap();
    send(&old, "zombie", 0, "old-1").await;

    let new = txn_producer(&b, "z-1");
    new.init_transactions(T).unwrap();
    new.begin_transaction().unwrap();
    send(&new, "zombie", 0, "new-1").await;

    // The zombie's next produce and its commit are refused as fenced.
    let r = old
        .send(
            FutureRecord::<(), str>::to("zombie")
                .partition(0)
                .payload("old-2"),
            Duration::from_secs(10),
        )
        .await;
    let produce_err = r.err().map(|(e, _)| e.to_string()).unwrap_or_default();
    let commit_err = old.commit_transaction(T).err().map(|e| e.to_string());
    let fenced = |m: &str| {
        let m = m.to_lowercase();
        m.contains("fenced") || m.contains("epoch")
    };
    assert!(
        fenced(&produce_err) || commit_err.as_deref().is_some_and(fenced),
        "the old producer is fenced: produce {produce_err:?}, commit {commit_err:?}"
    );
    assert!(commit_err.is_some(), "the zombie cannot commit");
    new.commit_transaction(T).unwrap();

    let seen = consume(&b, "zombie", 0, "read_committed", 10);
    assert_eq!(values(&seen), ["new-1"], "only the new producer's record");
    // The old one's first record was aborted by the fencing.
    let all = consume(&b, "zombie", 0, "read_uncommitted", 10);
    assert!(values(&all).contains(&"old-1"));
    assert!(!values(&all).contains(&"old-2"), "nothing after the fence");
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// A transactional batch of one record.
fn txn_batch(pid: i64, epoch: i16, seq: i32, value: &str) -> bytes::Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let r = Record {
        transactional: true,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: pid,
        producer_epoch: epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: seq,
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(bytes::Bytes::from(value.to_string())),
        headers: Default::default(),
    };
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &[r],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

fn init(c: &mut RawClient, id: &str, timeout_ms: i32) -> InitProducerIdResponse {
    c.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(s(id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1),
    )
    .unwrap()
}

fn add_partitions(
    c: &mut RawClient,
    version: i16,
    id: &str,
    (pid, epoch): (i64, i16),
    topic: &str,
    p: i32,
) -> i16 {
    use add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    let r: AddPartitionsToTxnResponse = c
        .call(
            ApiKey::AddPartitionsToTxn,
            version,
            &AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(TransactionalId(s(id)))
                .with_v3_and_below_producer_id(ProducerId(pid))
                .with_v3_and_below_producer_epoch(epoch)
                .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![p])]),
        )
        .unwrap();
    r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

fn produce(c: &mut RawClient, id: &str, topic: &str, batch: bytes::Bytes) -> i16 {
    use produce_request::{PartitionProduceData, TopicProduceData};
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &ProduceRequest::default()
                .with_transactional_id(Some(TransactionalId(s(id))))
                .with_acks(-1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(s(topic)))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch))])]),
        )
        .unwrap();
    r.responses[0].partition_responses[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactional_requests_get_kafkas_codes_and_write_nothing() {
    use kafka_protocol::error::ResponseError as E;
    let s_ = Standalone::start().unwrap();
    let b = s_.bootstrap();
    create_topic(&b, "bad", 1).await;
    let mut c = RawClient::connect(&b).unwrap();
    // The coordinator's topic is made by the first FindCoordinator.
    let deadline = Instant::now() + T;
    loop {
        let r: FindCoordinatorResponse = c
            .call(
                ApiKey::FindCoordinator,
                3,
                &FindCoordinatorRequest::default()
                    .with_key(s("bad-1"))
                    .with_key_type(1),
            )
            .unwrap();
        if r.error_code == 0 {
            assert_eq!(r.port, s_.port as i32);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no transaction coordinator: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A timeout above transaction.max.timeout.ms (15 min).
    let r = init(&mut c, "bad-1", 900_001);
    assert_eq!(r.error_code, E::InvalidTransactionTimeout.code());
    let r = loop {
        let r = init(&mut c, "bad-1", 60_000);
        if r.error_code != E::CoordinatorLoadInProgress.code()
            && r.error_code != E::NotCoordinator.code()
        {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.error_code, 0);
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);

    // EndTxn with no transaction open.
    let end: EndTxnResponse = c
        .call(
            ApiKey::EndTxn,
            3,
            &EndTxnRequest::default()
                .with_transactional_id(TransactionalId(s("bad-1")))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_committed(true),
        )
        .unwrap();
    assert_eq!(end.error_code, E::InvalidTxnState.code());

    // A transactional batch for a partition not added to a transaction.
    let hw = latest(&b, "bad", 0, 0);
    assert_eq!(
        produce(&mut c, "bad-1", "bad", txn_batch(pid, epoch, 0, "x")),
        E::InvalidTxnState.code()
    );
    // An unknown partition cannot be added.
    assert_eq!(
        add_partitions(&mut c, 3, "bad-1", (pid, epoch), "bad", 7),
        E::UnknownTopicOrPartition.code()
    );

    // A newer producer of the id fences this one: its stale epoch is
    // PRODUCER_FENCED (INVALID_PRODUCER_EPOCH before v2, KIP-588).
    let r2 = init(&mut c, "bad-1", 60_000);
    assert_eq!((r2.error_code, r2.producer_id.0), (0, pid));
    assert_eq!(r2.producer_epoch, epoch + 1);
    assert_eq!(
        add_partitions(&mut c, 3, "bad-1", (pid, epoch), "bad", 0),
        E::ProducerFenced.code()
    );
    assert_eq!(
        add_partitions(&mut c, 1, "bad-1", (pid, epoch), "bad", 0),
        E::InvalidProducerEpoch.code()
    );
    // A producer id the id never had.
    assert_eq!(
        add_partitions(&mut c, 3, "bad-1", (pid + 100, 0), "bad", 0),
        E::InvalidProducerIdMapping.code()
    );
    // The stale producer's batch, for a partition the new one added.
    let current = (pid, epoch + 1);
    assert_eq!(add_partitions(&mut c, 3, "bad-1", current, "bad", 0), 0);
    assert_ne!(
        produce(&mut c, "bad-1", "bad", txn_batch(pid, epoch, 0, "zombie")),
        0,
        "a fenced epoch's batch is refused"
    );
    assert_eq!(latest(&b, "bad", 0, 0), hw, "nothing was written");

    // TxnOffsetCommit: without AddOffsetsToTxn the group's partition is not
    // in the transaction; with it, a wrong generation of a live group is
    // ILLEGAL_GENERATION.
    let group = "bad-group";
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["bad"]).unwrap();
    let deadline = Instant::now() + T;
    while consumer.assignment().unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the consumer never joined");
        consumer.poll(Duration::from_millis(100));
    }
    let described: DescribeGroupsResponse = c
        .call(
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default().with_groups(vec![GroupId(s(group))]),
        )
        .unwrap();
    let member = described.groups[0].members[0].member_id.clone();
    let commit = |c: &mut RawClient, generation: i32| -> i16 {
        use txn_offset_commit_request::{
            TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
        };
        let r: TxnOffsetCommitResponse = c
            .call(
                ApiKey::TxnOffsetCommit,
                3,
                &TxnOffsetCommitRequest::default()
                    .with_transactional_id(TransactionalId(s("bad-1")))
                    .with_group_id(GroupId(s(group)))
                    .with_producer_id(ProducerId(pid))
                    .with_producer_epoch(epoch + 1)
                    .with_generation_id(generation)
                    .with_member_id(member.clone())
                    .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(s("bad")))
                        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(5)
                            .with_committed_leader_epoch(-1)])]),
            )
            .unwrap();
        r.topics[0].partitions[0].error_code
    };
    assert_eq!(commit(&mut c, 9_999), E::InvalidTxnState.code());
    let add: AddOffsetsToTxnResponse = c
        .call(
            ApiKey::AddOffsetsToTxn,
            3,
            &AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(s("bad-1")))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch + 1)
                .with_group_id(GroupId(s(group))),
        )
        .unwrap();
    assert_eq!(add.error_code, 0);
    assert_eq!(commit(&mut c, 9_999), E::IllegalGeneration.code());
    let fetched: OffsetFetchResponse = c
        .call(
            ApiKey::OffsetFetch,
            7,
            &OffsetFetchRequest::default()
                .with_group_id(GroupId(s(group)))
                .with_require_stable(true)
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(TopicName(s("bad")))
                        .with_partition_indexes(vec![0]),
                ])),
        )
        .unwrap();
    let p = &fetched.topics[0].partitions[0];
    assert_eq!(
        (p.error_code, p.committed_offset),
        (0, -1),
        "no offset committed, none pending"
    );
    // WriteTxnMarkers is not advertised to clients.
    let versions: ApiVersionsResponse = c
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .unwrap();
    assert!(versions
        .api_keys
        .iter()
        .all(|k| k.api_key != ApiKey::WriteTxnMarkers as i16));
    assert!(versions
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::EndTxn as i16 && k.max_version == 5));
}

/// The consume-transform-produce loop of a Kafka Streams-like app in
/// kafka-python: read `ctp-in` read_committed, write each record
/// transformed to `ctp-out` and the consumed offsets in one transaction.
/// It sleeps between flushing a transaction's records and committing it
/// (a window for the test's kill -9), and stops after 6 s without input
/// once it had some (a new member waits for the killed one's session to
/// expire before the group gives it partitions).
const TRANSFORMER: &str = r#"
import sys, time
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata
bs = sys.argv[1]
c = KafkaConsumer("ctp-in", bootstrap_servers=bs, group_id="ctp",
                  isolation_level="read_committed", enable_auto_commit=False,
                  auto_offset_reset="earliest", session_timeout_ms=6000,
                  heartbeat_interval_ms=1000)
p = KafkaProducer(bootstrap_servers=bs, transactional_id="ctp-tx")
p.init_transactions()
print("ready", flush=True)
idle, seen = time.time(), False
while time.time() - idle < (6 if seen else 90):
    batch = c.poll(timeout_ms=300, max_records=40)
    if not batch:
        continue
    idle, seen = time.time(), True
    p.begin_transaction()
    offsets = {}
    for tp, msgs in batch.items():
        for m in msgs:
            p.send("ctp-out", value=b"out-" + m.value, partition=m.partition)
            offsets[tp] = OffsetAndMetadata(m.offset + 1, "", -1)
    p.flush()
    print("flushed", flush=True)
    time.sleep(0.15)
    p.send_offsets_to_transaction(offsets, c.group_metadata())
    p.commit_transaction()
    print("committed", flush=True)
p.close()
c.close()
print("done", flush=True)
"#;

fn spawn_transformer(bootstrap: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(python())
        .args(["-c", TRANSFORMER, bootstrap])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l == want => return,
            Ok(_) => {}
            Err(e) => panic!("the transformer never printed {want:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_is_exactly_once_across_a_kill9_of_the_transformer() {
    const N: usize = 600;
    let s_ = Standalone::start().unwrap();
    let b = s_.bootstrap();
    create_topic(&b, "ctp-in", 2).await;
    create_topic(&b, "ctp-out", 2).await;
    let input = floe_e2e::idempotent_producer(&b);
    for i in 0..N {
        input
            .send(
                FutureRecord::<(), str>::to("ctp-in")
                    .partition((i % 2) as i32)
                    .payload(&format!("i{i:04}")),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    // Killed with SIGKILL after three transactions, while the fourth has
    // its records flushed but is not committed.
    let (mut first, rx) = spawn_transformer(&b);
    wait_line(&rx, "ready", T);
    for _ in 0..3 {
        wait_line(&rx, "committed", T);
    }
    wait_line(&rx, "flushed", T);
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let uncommitted_out = loop {
        let n: i64 = (0..2)
            .map(|p| latest(&b, "ctp-out", p, 0) - latest(&b, "ctp-out", p, 1))
            .sum();
        if n > 0 || Instant::now() >= deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        uncommitted_out > 0,
        "the killed transformer left an open transaction"
    );

    // The next instance fences the dead one (its open transaction is
    // aborted) and carries on from the committed offsets.
    let (mut second, rx) = spawn_transformer(&b);
    wait_line(&rx, "done", Duration::from_secs(120));
    assert!(second.wait().unwrap().success());

    let mut out = Vec::new();
    for p in 0..2 {
        let (hw, lso) = offsets_when(&b, "ctp-out", p, |hw, lso| hw == lso);
        assert_eq!(lso, hw, "no transaction left open");
        out.extend(consume(&b, "ctp-out", p, "read_committed", N));
    }
    let got: Vec<&str> = values(&out);
    let unique: std::collections::HashSet<&str> = got.iter().copied().collect();
    assert_eq!(got.len(), N, "exactly one output per input");
    assert_eq!(unique.len(), N, "no duplicate output");
    for i in 0..N {
        assert!(
            unique.contains(format!("out-i{i:04}").as_str()),
            "out-i{i:04}"
        );
    }
    // Per partition, outputs keep the input's order.
    for p in 0..2 {
        let part = consume(&b, "ctp-out", p, "read_committed", N);
        let nums: Vec<usize> = part
            .iter()
            .map(|(_, v)| v.trim_start_matches("out-i").parse().unwrap())
            .collect();
        assert!(
            nums.windows(2).all(|w| w[0] < w[1]),
            "partition {p} in order"
        );
    }
    // The group's committed offsets are the input's ends.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("group.id", "ctp")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("ctp-in", 0);
    tpl.add_partition("ctp-in", 1);
    let committed = c.committed_offsets(tpl, T).unwrap();
    for p in 0..2 {
        let end = latest(&b, "ctp-in", p, 0);
        assert_eq!(
            committed.find_partition("ctp-in", p).unwrap().offset(),
            rdkafka::Offset::Offset(end),
            "partition {p}'s committed offset"
        );
    }
}

/// What a transaction of the stream ended as, as its producer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Committed,
    Aborted,
    /// The producer failed fatally around the end: all or nothing.
    Unknown,
}

fn seeds(default: &str) -> Vec<u64> {
    let spec = std::env::var("FLOE_TXN_SEEDS").unwrap_or_else(|_| default.to_string());
    if let Some((a, b)) = spec.split_once('-') {
        return (a.trim().parse().unwrap()..=b.trim().parse().unwrap()).collect();
    }
    spec.split(',').map(|s| s.trim().parse().unwrap()).collect()
}

const STREAM_PARTITIONS: i32 = 4;
const PER_TXN: usize = 8;

/// One transaction of the stream: `PER_TXN` records over the partitions,
/// ended as `commit` says; its outcome as the producer saw it.
async fn one_transaction(p: &FutureProducer, n: usize, commit: bool) -> Outcome {
    use rdkafka::error::KafkaError;
    let requires_abort = |e: &KafkaError| match e {
        KafkaError::Transaction(r) => r.txn_requires_abort(),
        _ => false,
    };
    let fatal = |e: &KafkaError| match e {
        KafkaError::Transaction(r) => r.is_fatal(),
        _ => false,
    };
    if let Err(e) = p.begin_transaction() {
        panic!("begin_transaction: {e}");
    }
    let values: Vec<String> = (0..PER_TXN).map(|k| format!("t{n:05}-{k}")).collect();
    let mut sends = Vec::new();
    for (k, value) in values.iter().enumerate() {
        let partition = ((n + k) % STREAM_PARTITIONS as usize) as i32;
        sends.push(
            p.send_result(
                FutureRecord::<(), str>::to("txs")
                    .partition(partition)
                    .payload(value.as_str()),
            ),
        );
    }
    let mut failed = false;
    for s in sends {
        match s {
            Ok(f) => failed |= !matches!(f.await, Ok(Ok(_))),
            Err(_) => failed = true,
        }
    }
    let end = |commit: bool| {
        if commit {
            p.commit_transaction(T)
        } else {
            p.abort_transaction(T)
        }
    };
    let mut attempts = 0;
    loop {
        let want = commit && !failed;
        match end(want) {
            Ok(()) => {
                return if want {
                    Outcome::Committed
                } else {
                    Outcome::Aborted
                }
            }
            Err(e) if fatal(&e) => return Outcome::Unknown,
            Err(e) if requires_abort(&e) => {
                failed = true;
                if !want {
                    return Outcome::Unknown;
                }
            }
            Err(_) if attempts < 10 => attempts += 1,
            Err(_) => return Outcome::Unknown,
        }
    }
}

/// Seeded faults while a producer streams transactions through the
/// proxies: kill -9 (restarted at once) of the broker coordinating the
/// transactional id and of a data partition's owner, planned moves of the
/// coordinator's partition and of a data partition; meanwhile a second
/// producer leaves transactions open to time out. Then read_committed
/// through the proxies: every committed transaction whole, nothing of an
/// aborted or timed-out one, all or nothing of one whose producer failed
/// fatally at its end; and every partition's LSO reaches its high
/// watermark (no hanging transaction).
async fn stream_under_faults(seed: u64) {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let secs = std::env::var("FLOE_TXN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = floe_e2e::Cluster::start_with(
        3,
        1,
        4_000,
        "transaction_timeout_check_ms = 200\n[proxy]\nlease_ttl_ms = 3000\n",
    )
    .unwrap();
    cluster.add_proxy().unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let bootstrap = cluster.proxy_bootstrap();
    let brokers = cluster.bootstrap();
    create_topic(&bootstrap, "txs", STREAM_PARTITIONS).await;
    let id = format!("stream-{seed}");
    let txn_partition = floe_e2e::offsets_partition(&id);
    let mut producer = txn_producer(&bootstrap, &id);
    producer.init_transactions(T).unwrap();
    // Transactions left open by a producer that stops: aborted by the
    // coordinator after their timeout.
    let abandoner: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("abandoned-{seed}"))
        .set("transaction.timeout.ms", "3000")
        .create()
        .unwrap();
    abandoner.init_transactions(T).unwrap();
    abandoner.begin_transaction().unwrap();
    for p in 0..STREAM_PARTITIONS {
        abandoner
            .send(
                FutureRecord::<(), str>::to("txs")
                    .partition(p)
                    .payload("abandoned"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let owner = |topic: &str, p: i32| -> Option<i32> {
        floe_e2e::leaders(&brokers, topic)
            .get(&p)
            .copied()
            .flatten()
    };
    // Its coordinator moves while nobody asks for the id again: the new
    // one must still abort it on time.
    let abandoned_p = floe_e2e::offsets_partition(&format!("abandoned-{seed}"));
    if let Some(b) = owner("__transaction_state", abandoned_p) {
        cluster
            .move_partition("__transaction_state", abandoned_p, (b % 3) + 1)
            .unwrap();
    }
    let started = Instant::now();
    let mut next_fault = Instant::now() + Duration::from_millis(rng.random_range(1_500..3_000));
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut faults = Vec::new();
    let mut kinds: Vec<u32> = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        if Instant::now() >= next_fault {
            next_fault = Instant::now() + Duration::from_millis(rng.random_range(2_500..5_000));
            // Every kind in each run, in a seeded order.
            if kinds.is_empty() {
                kinds = vec![0, 1, 2, 3];
                for i in (1..kinds.len()).rev() {
                    kinds.swap(i, rng.random_range(0..=i));
                }
            }
            let kind = kinds.pop().unwrap();
            let data_p = rng.random_range(0..STREAM_PARTITIONS);
            let (topic, p) = if kind.is_multiple_of(2) {
                ("__transaction_state", txn_partition)
            } else {
                ("txs", data_p)
            };
            if let Some(b) = owner(topic, p) {
                if kind < 2 {
                    let i = b as usize - 1;
                    cluster.brokers[i].stop_with("-KILL").unwrap();
                    cluster.brokers[i].start_nowait().unwrap();
                    faults.push(format!("kill -9 broker {b} (owner of {topic}-{p})"));
                } else {
                    let to = (b % 3) + 1;
                    let r = match cluster.move_partition(topic, p, to) {
                        Ok(epoch) => format!("epoch {epoch}"),
                        Err(e) => e.to_string(),
                    };
                    faults.push(format!("move {topic}-{p} from {b} to {to}: {r}"));
                }
            }
        }
        let n = outcomes.len();
        let commit = rng.random_range(0..10) < 8;
        let outcome = one_transaction(&producer, n, commit).await;
        if outcome == Outcome::Unknown {
            // A fatal error: a new producer fences the old and goes on.
            producer = txn_producer(&bootstrap, &id);
            producer.init_transactions(T).unwrap();
        }
        outcomes.push(outcome);
    }
    drop(abandoner);
    let committed = outcomes
        .iter()
        .filter(|o| **o == Outcome::Committed)
        .count();
    let unknown = outcomes.iter().filter(|o| **o == Outcome::Unknown).count();
    eprintln!(
        "seed {seed}: {} transactions ({committed} committed, {unknown} failed at their end), faults: {faults:#?}",
        outcomes.len()
    );
    assert!(committed > 5, "the stream made progress: {outcomes:?}");

    // No hanging transaction: every LSO reaches its high watermark.
    let addr = bootstrap.split(',').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in 0..STREAM_PARTITIONS {
        loop {
            let (hw, lso) = (latest(&addr, "txs", p, 0), latest(&addr, "txs", p, 1));
            if hw == lso {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: partition {p} LSO {lso} stays below HW {hw}; logs:\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let committed_view: Vec<Vec<(i64, String)>> = (0..STREAM_PARTITIONS)
        .map(|p| consume(&bootstrap, "txs", p, "read_committed", usize::MAX))
        .collect();
    let mut by_txn: std::collections::BTreeMap<usize, usize> = Default::default();
    for (_, v) in committed_view.iter().flatten() {
        assert_ne!(
            v, "abandoned",
            "seed {seed}: a timed-out transaction is invisible"
        );
        let n: usize = v[1..6].parse().unwrap();
        *by_txn.entry(n).or_default() += 1;
    }
    let mut wrong = Vec::new();
    for (n, o) in outcomes.iter().enumerate() {
        let got = by_txn.get(&n).copied().unwrap_or(0);
        let right = match o {
            Outcome::Committed => got == PER_TXN,
            Outcome::Aborted => got == 0,
            // The producer failed fatally around the end: all or nothing.
            Outcome::Unknown => got == 0 || got == PER_TXN,
        };
        if !right {
            wrong.push(format!(
                "transaction {n} {o:?}: {got} of {PER_TXN} read_committed"
            ));
        }
    }
    if !wrong.is_empty() {
        // Where each wrong transaction's records sit, as both isolation
        // levels read them: tells a lost record from a wrongly filtered one.
        let mut views = String::new();
        for (p, committed) in committed_view.iter().enumerate() {
            let all = consume(&bootstrap, "txs", p as i32, "read_uncommitted", usize::MAX);
            views += &format!(
                "txs-{p}: read_committed {committed:?}\n       read_uncommitted {all:?}\n"
            );
        }
        panic!(
            "seed {seed}: {wrong:#?}\noutcomes {outcomes:?}\n{views}(FLOE_E2E_KEEP_LOGS=dir keeps the processes' logs)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_survive_kills_and_moves_of_coordinator_and_partitions() {
    for seed in seeds("1,2") {
        stream_under_faults(seed).await;
    }
}

/// transactional.id.expiration.ms: an id idle that long is forgotten (its
/// next InitProducerId gets a new producer id); an id with a transaction
/// open is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transactional_ids_expire() {
    use kafka_protocol::error::ResponseError as E;
    let s_ = Standalone::start_with_config(
        "[broker]\ntransactional_id_expiration_ms = 1500\ntransaction_timeout_check_ms = 100\n",
    )
    .unwrap();
    let b = s_.bootstrap();
    create_topic(&b, "exp", 1).await;
    let open = txn_producer(&b, "exp-open");
    open.init_transactions(T).unwrap();
    open.begin_transaction().unwrap();
    send(&open, "exp", 0, "kept open").await;
    let mut c = RawClient::connect(&b).unwrap();
    let first = init(&mut c, "exp-idle", 60_000);
    assert_eq!(first.error_code, 0);
    let describe = |c: &mut RawClient, id: &'static str| -> (i16, String) {
        let r: DescribeTransactionsResponse = c
            .call(
                ApiKey::DescribeTransactions,
                0,
                &DescribeTransactionsRequest::default()
                    .with_transactional_ids(vec![TransactionalId(StrBytes::from_static_str(id))]),
            )
            .unwrap();
        let t = &r.transaction_states[0];
        (t.error_code, t.transaction_state.to_string())
    };
    assert_eq!(describe(&mut c, "exp-idle"), (0, "Empty".to_string()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while describe(&mut c, "exp-idle").0 == 0 {
        assert!(Instant::now() < deadline, "the idle id was never forgotten");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        describe(&mut c, "exp-idle").0,
        E::TransactionalIdNotFound.code()
    );
    assert_eq!(describe(&mut c, "exp-open"), (0, "Ongoing".to_string()));
    let again = init(&mut c, "exp-idle", 60_000);
    assert_eq!(again.error_code, 0);
    assert_ne!(
        again.producer_id, first.producer_id,
        "a forgotten id starts over with a new producer id"
    );
    open.commit_transaction(T).unwrap();
}
