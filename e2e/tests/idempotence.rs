//! The idempotent producer against a cluster: librdkafka with
//! enable.idempotence retries requests whose responses are lost (fault
//! injection on the brokers), across a planned move and a kill -9 of a
//! broker; every record lands exactly once, in order.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, read_all, Cluster};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const N: usize = 3_000;

/// Partition → leader broker id (-1: none), as Metadata tells a client.
fn leaders(bootstrap: &str, topic: &str) -> HashMap<i32, i32> {
    floe_e2e::leaders(bootstrap, topic)
        .into_iter()
        .map(|(p, l)| (p, l.unwrap_or(-1)))
        .collect()
}

fn metric(cluster: &Cluster, index: usize, name: &str) -> f64 {
    cluster.brokers[index]
        .http("/metrics")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_retried_across_a_move_and_a_kill9_writes_each_record_once() {
    let cluster =
        Cluster::start_with(3, 1, 3_000, "[faults]\ndrop_produce_response_every = 10\n").unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "idem", 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while leaders(&b, "idem").values().any(|l| *l < 0) {
        assert!(Instant::now() < deadline, "no leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "60000")
        .set("retry.backoff.ms", "50")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "200")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .unwrap();

    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    let mut window = Vec::new();
    let mut killed = None;
    for i in 0..N {
        let payload = format!("r{i:05}");
        let fut = producer.send_result(
            FutureRecord::<(), [u8]>::to("idem")
                .partition((i % 2) as i32)
                .payload(payload.as_bytes()),
        );
        window.push((i, fut.map_err(|(e, _)| e).unwrap()));
        if window.len() == 50 {
            for (i, f) in window.drain(..) {
                match f.await.unwrap() {
                    Ok(d) => delivered.push((d.partition, d.offset, i)),
                    Err((e, _)) => failed.push((i, e.to_string())),
                }
            }
        }
        if i == N / 3 {
            let owner = leaders(&b, "idem")[&0];
            let target = if owner == 1 { 2 } else { 1 };
            let epoch = cluster.move_partition("idem", 0, target).unwrap();
            println!("moved partition 0 from broker {owner} to {target} (epoch {epoch})");
        }
        if i == 2 * N / 3 {
            let victim = leaders(&b, "idem")[&1];
            cluster.brokers[victim as usize - 1]
                .signal("-KILL")
                .unwrap();
            killed = Some(victim as usize - 1);
            println!("killed broker {victim}, the owner of partition 1");
        }
    }
    for (i, f) in window.drain(..) {
        match f.await.unwrap() {
            Ok(d) => delivered.push((d.partition, d.offset, i)),
            Err((e, _)) => failed.push((i, e.to_string())),
        }
    }
    assert!(
        failed.is_empty(),
        "deliveries failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(delivered.len(), N);

    let killed = killed.unwrap();
    let log = read_all(&cluster.bootstrap_except(killed), "idem", 2);
    let mut seen = vec![0usize; N];
    for (p, recs) in &log {
        let mut last = None;
        for (i, (o, v)) in recs.iter().enumerate() {
            assert_eq!(*o, i as i64, "partition {p}: offsets dense");
            let n: usize = std::str::from_utf8(&v[1..]).unwrap().parse().unwrap();
            assert_eq!(n % 2, *p as usize, "record {n} in partition {p}");
            assert!(
                last < Some(n),
                "partition {p}: record {n} after {last:?}: out of order or repeated"
            );
            last = Some(n);
            seen[n] += 1;
        }
    }
    assert!(
        seen.iter().all(|c| *c == 1),
        "every record exactly once: {} missing, {} repeated",
        seen.iter().filter(|c| **c == 0).count(),
        seen.iter().filter(|c| **c > 1).count()
    );
    for (p, o, i) in &delivered {
        assert_eq!(
            log[p][*o as usize].1,
            format!("r{i:05}").into_bytes(),
            "acked offset holds the record"
        );
    }
    let dups: f64 = (0..3)
        .filter(|i| *i != killed)
        .map(|i| metric(&cluster, i, "floe_producer_duplicates_total"))
        .sum();
    println!(
        "{N} records exactly once; the live brokers answered {dups} retried batches as duplicates"
    );
    let logs = cluster.logs();
    assert!(
        dups > 0.0,
        "the lost responses made the producer retry; {} responses dropped",
        logs.matches("fault injection").count()
    );
}

/// A new idempotent producer id through `raw`: (producer id, epoch).
fn init_producer(raw: &mut floe_e2e::RawClient) -> (i64, i16) {
    use kafka_protocol::messages::{ApiKey, InitProducerIdRequest, InitProducerIdResponse};
    let init: InitProducerIdResponse = raw
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id((-1).into())
                .with_producer_epoch(-1),
        )
        .unwrap();
    assert_eq!(init.error_code, 0);
    (init.producer_id.0, init.producer_epoch)
}

/// One idempotent batch of `n` records: (producer id, epoch, first sequence).
fn idempotent_batch(pid: i64, epoch: i16, seq: i32, n: i32) -> bytes::Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: seq + i,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(bytes::Bytes::from(format!("s{}", seq + i))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    buf.freeze()
}

/// Produce `batch` to partition 0 of `topic` through whichever broker owns
/// it now (retrying NOT_LEADER while it moves); (error code, base offset).
fn produce_raw(
    cluster: &Cluster,
    bootstrap: &str,
    topic: &str,
    batch: &bytes::Bytes,
) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "partition 0 never got a writable owner"
        );
        let leader = leaders(bootstrap, topic)[&0];
        if leader > 0 {
            let port = cluster.brokers[leader as usize - 1].port.unwrap();
            // The owner named may have just died (until its lease lapses).
            let Ok(mut raw) = floe_e2e::RawClient::connect(&format!("127.0.0.1:{port}")) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let req = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.clone()))])]);
            let resp: ProduceResponse = raw.call(ApiKey::Produce, 9, &req).unwrap_or_else(|e| {
                panic!("produce to broker {leader}: {e}; logs:\n{}", cluster.logs())
            });
            let r = &resp.responses[0].partition_responses[0];
            if r.error_code != 6 {
                return (r.error_code, r.base_offset);
            }
        }
        assert!(
            Instant::now() < deadline,
            "partition 0 never got a writable owner"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_state_survives_a_move_and_a_kill9_and_sequences_are_checked() {
    use kafka_protocol::messages::ApiKey;
    let cluster = Cluster::start(3, 1, 3_000).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "seq", 1).await;
    let mut raw = floe_e2e::RawClient::connect(b.split(',').next().unwrap()).unwrap();
    let (pid, epoch) = init_producer(&mut raw);
    assert!(pid >= 0);

    let first = idempotent_batch(pid, epoch, 0, 3);
    assert_eq!(produce_raw(&cluster, &b, "seq", &first), (0, 0));
    // A retry is answered with the original offset and appends nothing.
    assert_eq!(produce_raw(&cluster, &b, "seq", &first), (0, 0));
    // DescribeProducers shows the producer and its last sequence.
    {
        use kafka_protocol::messages::describe_producers_request::TopicRequest;
        use kafka_protocol::messages::{
            DescribeProducersRequest, DescribeProducersResponse, TopicName,
        };
        use kafka_protocol::protocol::StrBytes;
        let owner = leaders(&b, "seq")[&0];
        let port = cluster.brokers[owner as usize - 1].port.unwrap();
        let mut raw = floe_e2e::RawClient::connect(&format!("127.0.0.1:{port}")).unwrap();
        let req = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
            .with_name(TopicName(StrBytes::from_static_str("seq")))
            .with_partition_indexes(vec![0])]);
        let r: DescribeProducersResponse = raw.call(ApiKey::DescribeProducers, 0, &req).unwrap();
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code, 0);
        assert_eq!(p.active_producers.len(), 1);
        assert_eq!(p.active_producers[0].producer_id.0, pid);
        assert_eq!(p.active_producers[0].last_sequence, 2);
    }
    // A gap and an old epoch get Kafka's errors.
    assert_eq!(
        produce_raw(&cluster, &b, "seq", &idempotent_batch(pid, epoch, 5, 1)).0,
        45
    );
    assert_eq!(
        produce_raw(&cluster, &b, "seq", &idempotent_batch(pid, epoch - 1, 3, 1)).0,
        47
    );

    // After a planned move, the new owner knows the producer (clean hand-over).
    let owner = leaders(&b, "seq")[&0];
    let target = owner % 3 + 1;
    cluster.move_partition("seq", 0, target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while leaders(&b, "seq")[&0] != target {
        assert!(Instant::now() < deadline, "the move never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        produce_raw(&cluster, &b, "seq", &first),
        (0, 0),
        "deduplicated after the move"
    );
    let second = idempotent_batch(pid, epoch, 3, 2);
    assert_eq!(produce_raw(&cluster, &b, "seq", &second), (0, 3));

    // After kill -9 of that owner, the next one rebuilds the state from the
    // last snapshot and the batches written since.
    cluster.brokers[target as usize - 1]
        .signal("-KILL")
        .unwrap();
    let others = cluster.bootstrap_except(target as usize - 1);
    assert_eq!(
        produce_raw(&cluster, &others, "seq", &second),
        (0, 3),
        "deduplicated after kill -9"
    );
    assert_eq!(produce_raw(&cluster, &others, "seq", &first), (0, 0));
    assert_eq!(
        produce_raw(
            &cluster,
            &others,
            "seq",
            &idempotent_batch(pid, epoch, 5, 1)
        ),
        (0, 5)
    );
    let log = read_all(&others, "seq", 1);
    let values: Vec<String> = log[&0]
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(values, ["s0", "s1", "s2", "s3", "s4", "s5"]);
}

/// One idempotent produce request through `raw`: (partition, batch) pairs of
/// `topic`; the error code and base offset of each, in order.
fn produce_parts(
    raw: &mut floe_e2e::RawClient,
    topic: &str,
    parts: &[(i32, &bytes::Bytes)],
    timeout_ms: i32,
) -> Vec<(i16, i64)> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(
                parts
                    .iter()
                    .map(|(p, b)| {
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some((*b).clone()))
                    })
                    .collect(),
            )]);
    let resp: ProduceResponse = raw.call(ApiKey::Produce, 9, &req).unwrap();
    parts
        .iter()
        .map(|(p, _)| {
            let r = resp.responses[0]
                .partition_responses
                .iter()
                .find(|r| r.index == *p)
                .expect("an answer for every partition sent");
            (r.error_code, r.base_offset)
        })
        .collect()
}

/// The proxy answers a batch waiting on a frozen broker early (NOT_LEADER)
/// so the rest of the request is not held up. The producer's next batch
/// then reaches the partition's next owner before the client sends the
/// early-answered one again, and the owner refuses it as out of order.
/// Passed on as OUT_OF_ORDER_SEQUENCE_NUMBER, that answer makes librdkafka
/// bump its epoch and renumber every unacked record, writing twice any that
/// did land (the chaos run's duplicates). The proxy answers it as NOT_LEADER:
/// the client re-sends both, in order, under the same epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_behind_one_the_proxy_answered_early_is_retried_not_out_of_order() {
    let mut c = Cluster::start_with(
        2,
        1,
        3_000,
        "[proxy]\nlease_ttl_ms = 2000\nforward_timeout_ms = 20000\n",
    )
    .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.bootstrap();
    let proxy = c.proxy_bootstrap();
    create_topic(&b, "gap", 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while leaders(&b, "gap").values().any(|l| *l < 0) {
        assert!(Instant::now() < deadline, "no leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Partition 0 on one broker, partition 1 on the other.
    let owner = leaders(&b, "gap")[&0];
    let other = 3 - owner;
    if leaders(&b, "gap")[&1] != other {
        c.move_partition("gap", 1, other).unwrap();
        while leaders(&b, "gap")[&1] != other {
            assert!(Instant::now() < deadline, "the move never completed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut raw = floe_e2e::RawClient::connect(&proxy).unwrap();
    let (pid, epoch) = init_producer(&mut raw);
    // The proxy knows both owners before the fault.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s0 = idempotent_batch(pid, epoch, 0, 2);
    let p1 = idempotent_batch(pid, epoch, 0, 1);
    loop {
        let r = produce_parts(&mut raw, "gap", &[(0, &s0), (1, &p1)], 10_000);
        if r == [(0, 0), (0, 0)] {
            break;
        }
        assert!(Instant::now() < deadline, "never writable: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Partition 0's owner freezes; its lease lapses and the other broker
    // takes the partition over.
    let frozen = &c.brokers[owner as usize - 1];
    frozen.signal("-STOP").unwrap();
    let s2 = idempotent_batch(pid, epoch, 2, 2);
    let s4 = idempotent_batch(pid, epoch, 4, 2);
    let p1b = idempotent_batch(pid, epoch, 1, 1);
    // Partition 1 answers; partition 0 waits on the frozen broker and is cut.
    let r = produce_parts(&mut raw, "gap", &[(0, &s2), (1, &p1b)], 15_000);
    assert_eq!(
        r,
        [(6, -1), (0, 1)],
        "the part waiting on the frozen broker is answered NOT_LEADER, the other written"
    );
    // The next batch reaches the new owner before sequence 2 is sent again.
    let r = produce_parts(&mut raw, "gap", &[(0, &s4)], 15_000);
    assert_eq!(
        r,
        [(6, -1)],
        "NOT_LEADER_OR_FOLLOWER (retried in order), not OUT_OF_ORDER_SEQUENCE_NUMBER (45, \
         which makes librdkafka bump its epoch); logs:\n{}",
        c.logs()
    );
    assert_eq!(leaders(&b, "gap")[&0], other, "partition 0 moved");
    // The client sends both again, in order: each is written once.
    assert_eq!(
        produce_parts(&mut raw, "gap", &[(0, &s2)], 15_000),
        [(0, 2)]
    );
    assert_eq!(
        produce_parts(&mut raw, "gap", &[(0, &s4)], 15_000),
        [(0, 4)]
    );
    // A gap this proxy knows nothing of (the batch ahead went through
    // another proxy, or through this one before it restarted): the owner
    // refuses it as out of order, the client is told to send it again.
    let s8 = idempotent_batch(pid, epoch, 8, 2);
    let owner_port = c.brokers[other as usize - 1].port.unwrap();
    let mut direct = floe_e2e::RawClient::connect(&format!("127.0.0.1:{owner_port}")).unwrap();
    assert_eq!(
        produce_parts(&mut direct, "gap", &[(0, &s8)], 15_000),
        [(45, -1)],
        "the owner refuses a sequence gap"
    );
    assert_eq!(
        produce_parts(&mut raw, "gap", &[(0, &s8)], 15_000),
        [(6, -1)],
        "through the proxy: NOT_LEADER_OR_FOLLOWER, not OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    frozen.signal("-CONT").unwrap();
    let log = read_all(&proxy, "gap", 2);
    let values: Vec<String> = log[&0]
        .iter()
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        .collect();
    assert_eq!(values, ["s0", "s1", "s2", "s3", "s4", "s5"]);
    let metrics = c.proxies[0].http("/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("floe_proxy_produce_behind_gap_total 2")),
        "counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("behind_gap"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A partition handed to a broker that takes long to recover it (the
/// fault `recovery_delay_ms`: 3 s in Recovering, as after a lease
/// lapse with a slow storage listing) must not hold up the partitions of
/// other brokers in the same request: after twice `produce_hold_ms` the
/// idempotent part still held is answered NOT_LEADER_OR_FOLLOWER (its
/// sequence makes the retry safe) and the other part gets its ack. Before
/// this rule both were answered only once the new owner wrote (3 s later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_new_owner_is_slow_to_take_it_does_not_hold_up_the_others() {
    let mut c = Cluster::start_with(
        2,
        1,
        3_000,
        "[faults]\nrecovery_delay_ms = 3000\n[proxy]\nlease_ttl_ms = 2000\nforward_timeout_ms = 20000\n",
    )
    .unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let b = c.bootstrap();
    let proxy = c.proxy_bootstrap();
    create_topic(&b, "slow", 2).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while leaders(&b, "slow").values().any(|l| *l < 0) {
        assert!(Instant::now() < deadline, "no leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Partition 0 on one broker, partition 1 on the other.
    let owner = leaders(&b, "slow")[&0];
    let other = 3 - owner;
    if leaders(&b, "slow")[&1] != other {
        c.move_partition("slow", 1, other).unwrap();
        while leaders(&b, "slow")[&1] != other {
            assert!(Instant::now() < deadline, "the move never completed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut raw = floe_e2e::RawClient::connect(&proxy).unwrap();
    let (pid, epoch) = init_producer(&mut raw);
    let s0 = idempotent_batch(pid, epoch, 0, 2);
    let p1 = idempotent_batch(pid, epoch, 0, 1);
    loop {
        let r = produce_parts(&mut raw, "slow", &[(0, &s0), (1, &p1)], 10_000);
        if r == [(0, 0), (0, 0)] {
            break;
        }
        assert!(Instant::now() < deadline, "never writable: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Partition 0 goes to the other broker, which sits 3 s in Recovering.
    c.move_partition("slow", 0, other).unwrap();
    let meta = c.meta().await.unwrap();
    loop {
        let st = Cluster::partition_state(&meta, "slow", 0).await.unwrap();
        if st
            .as_ref()
            .is_some_and(|s| s.broker_id == other && s.state == "recovering")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovering on {other}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s2 = idempotent_batch(pid, epoch, 2, 2);
    let p1b = idempotent_batch(pid, epoch, 1, 1);
    let r = produce_parts(&mut raw, "slow", &[(0, &s2), (1, &p1b)], 15_000);
    assert_eq!(
        r,
        [(6, -1), (0, 1)],
        "the part held by the slow take-over is answered NOT_LEADER, the other written; logs:\n{}",
        c.logs()
    );
    // The client sends it again until the new owner writes it: once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = produce_parts(&mut raw, "slow", &[(0, &s2)], 15_000);
        if r == [(0, 2)] {
            break;
        }
        assert_eq!(r[0].0, 6, "only NOT_LEADER while it recovers: {r:?}");
        assert!(Instant::now() < deadline, "never written: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = read_all(&proxy, "slow", 2);
    let values: Vec<String> = log[&0]
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        .collect();
    assert_eq!(values, ["s0", "s1", "s2", "s3"]);
}

/// A partition writer that stops on an error it cannot ride out (the
/// fault `fail_writer_at_offset`: the writer fails once it has 500
/// records) is not left dead while the assignment still names its broker:
/// the broker takes the partition again under the next epoch, recovery
/// fences what the failed writer left, and an idempotent producer's
/// records all land once, in order, at the offsets they were acked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_writer_is_taken_again_under_the_next_epoch() {
    const COUNT: usize = 2_000;
    let cluster =
        Cluster::start_with(1, 1, 3_000, "[faults]\nfail_writer_at_offset = 500\n").unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic(&b, "fails", 1).await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &b)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let mut acked = Vec::with_capacity(COUNT);
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(100) {
        let futures: Vec<_> = chunk
            .iter()
            .map(|i| {
                let v = format!("r{i:05}");
                p.send_result(
                    FutureRecord::<(), String>::to("fails")
                        .partition(0)
                        .payload(&v),
                )
                .map_err(|(e, _)| e)
                .unwrap()
            })
            .collect();
        for (i, f) in chunk.iter().zip(futures) {
            let d = f
                .await
                .unwrap()
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("record {i} failed: {e}"));
            acked.push((*i, d.offset));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fault fires on the append that finds the log at offset 500, so
    // the records after it were acked by the writer of the next epoch;
    // the log lines may still be on their way to the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut logs = cluster.logs();
    while !logs.contains("took its partition again") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        logs = cluster.logs();
    }
    assert!(
        logs.contains("partition writer stopped") && logs.contains("fault injection"),
        "the fault fired:\n{logs}"
    );
    assert!(
        logs.contains("took its partition again under the next epoch"),
        "the broker took the partition again:\n{logs}"
    );
    let meta = cluster.meta().await.unwrap();
    let st = Cluster::partition_state(&meta, "fails", 0)
        .await
        .unwrap()
        .expect("a state");
    assert_eq!((st.epoch, st.state.as_str()), (1, "writing"), "{st:?}");

    let log = read_all(&b, "fails", 1);
    let recs = &log[&0];
    assert_eq!(recs.len(), COUNT, "every record once");
    for (o, (offset, v)) in recs.iter().enumerate() {
        assert_eq!(*offset, o as i64, "offsets dense");
        assert_eq!(v, &format!("r{o:05}").into_bytes(), "in order, once");
    }
    for (i, offset) in acked {
        assert_eq!(offset, i as i64, "record {i} acked at the offset it holds");
    }
}
