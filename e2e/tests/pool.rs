//! A replicated storage pool of real S3-compatible servers (moto): every
//! segment lands on R distinct targets in their share; a target killed
//! mid-stream costs no acked record, new segments avoid it, old segments
//! are read from the other replicas, and once the target is replaced the
//! repair restores R replicas of every segment.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_common::{PartitionId, Uuid};
use floe_e2e::{create_topic_with, read_all_within, Cluster, Moto};
use floe_meta::schema::{SegmentRecord, TopicRecord};
use floe_meta::{keys, MetadataStore};
use floe_storage::{layout, StorageTarget};
use object_store::ObjectStoreExt;
use prost::Message;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "pooled";
const PARTITIONS: i32 = 2;

/// Every sealed segment of the topic: (partition, record).
async fn segments(meta: &dyn MetadataStore) -> Vec<(PartitionId, SegmentRecord)> {
    let t = meta.get(&keys::topic(TOPIC)).await.unwrap().unwrap();
    let t = TopicRecord::decode(t.value).unwrap();
    let topic_id = Uuid::from_slice(&t.id).unwrap();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let id = PartitionId::new(topic_id, p);
        let (kvs, _) = meta.range(&keys::segments_prefix(id)).await.unwrap();
        for kv in kvs {
            out.push((id, SegmentRecord::decode(kv.value).unwrap()));
        }
    }
    out
}

async fn wait_segments(
    meta: &dyn MetadataStore,
    n: usize,
    timeout: Duration,
) -> Vec<(PartitionId, SegmentRecord)> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = segments(meta).await;
        if s.len() >= n {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "only {} segments sealed",
            s.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Acked records: (partition, offset, payload).
type Acked = Arc<Mutex<Vec<(i32, i64, Vec<u8>)>>>;

/// The unsealed segments listed in each partition's checkpoint.
async fn open_segments(
    meta: &dyn MetadataStore,
) -> Vec<(PartitionId, floe_meta::schema::OpenSegmentRecord)> {
    let t = meta.get(&keys::topic(TOPIC)).await.unwrap().unwrap();
    let t = TopicRecord::decode(t.value).unwrap();
    let topic_id = Uuid::from_slice(&t.id).unwrap();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let id = PartitionId::new(topic_id, p);
        if let Some(kv) = meta.get(&keys::checkpoint(id)).await.unwrap() {
            let c = floe_meta::schema::CheckpointRecord::decode(kv.value).unwrap();
            out.extend(c.open_segments.into_iter().map(|o| (id, o)));
        }
    }
    out
}

struct Load {
    stop: Arc<AtomicBool>,
    acked: Acked,
    task: tokio::task::JoinHandle<u64>,
}

fn start_load(bootstrap: &str) -> Load {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (s, a) = (stop.clone(), acked.clone());
    let task = tokio::spawn(async move {
        let mut failed = 0;
        let mut i = 0u64;
        while !s.load(Ordering::SeqCst) {
            let mut sends = Vec::new();
            for k in 0..20 {
                let payload = format!("{:06}-{}", i + k, "x".repeat(1000)).into_bytes();
                let p = ((i + k) % PARTITIONS as u64) as i32;
                loop {
                    match producer.send_result(
                        FutureRecord::<(), [u8]>::to(TOPIC)
                            .partition(p)
                            .payload(&payload),
                    ) {
                        Ok(f) => break sends.push((f, payload.clone())),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
            for (f, payload) in sends {
                match f.await {
                    Ok(Ok(d)) => a.lock().unwrap().push((d.partition, d.offset, payload)),
                    _ => failed += 1,
                }
            }
            i += 20;
            // A steady stream, not a flood: the reads and repairs after it
            // go through a Python S3 server.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        failed
    });
    Load { stop, acked, task }
}

/// Four moto servers as the pool (R=3, W=2), one controller, one broker,
/// the topic created and a steady load running.
async fn pool_cluster() -> (Vec<Moto>, Cluster, floe_meta::EtcdStore, Load, String) {
    let motos: Vec<Moto> = (0..4)
        .map(|i| Moto::start(&format!("target{i}")).unwrap())
        .collect();
    let urls: Vec<String> = motos.iter().map(|m| m.url("floe")).collect();
    let cluster = Cluster::start_with_pool(
        1,
        1,
        3_000,
        "storage_probe_interval_ms = 300\nrepair_interval_ms = 1000\n",
        &urls,
        3,
        2,
    )
    .unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    create_topic_with(&b, TOPIC, PARTITIONS, &[("segment.bytes", "5000")]).await;
    let meta = cluster.meta().await.unwrap();
    let load = start_load(&b);
    (motos, cluster, meta, load, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_segment_lands_on_r_distinct_targets_in_their_share() {
    let (_motos, _cluster, meta, load, _b) = pool_cluster().await;
    // Placement: R=3 distinct targets per segment, each target in its share
    // (equal weights: 3/4 of the segments each).
    let placed = wait_segments(&meta, 300, Duration::from_secs(400)).await;
    load.stop.store(true, Ordering::SeqCst);
    let mut share: HashMap<String, usize> = HashMap::new();
    for (_, s) in &placed {
        let mut ids = s.replica_set.clone();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            3,
            "segment {} on {:?}",
            s.base_offset,
            s.replica_set
        );
        for id in ids {
            *share.entry(id).or_default() += 1;
        }
    }
    for (id, n) in &share {
        let f = *n as f64 / placed.len() as f64;
        assert!(
            (0.65..=0.85).contains(&f),
            "target {id} holds {f:.2} of {} segments",
            placed.len()
        );
    }
    println!("{} segments placed: {share:?}", placed.len());
    assert_eq!(load.task.await.unwrap(), 0, "no produce failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_mid_stream_costs_no_record_and_repair_restores_r() {
    let (mut motos, cluster, meta, load, b) = pool_cluster().await;
    wait_segments(&meta, 40, Duration::from_secs(300)).await;
    // Kill one target in the middle of the stream.
    let victim = 1usize;
    let victim_id = format!("t{victim}");
    motos[victim].kill();
    let killed = Instant::now();
    // Once the probes have marked it down (two failed probes of up to 1 s
    // each, or at once after a failed write), every new segment avoids it:
    // those starting past what was acked five seconds after the kill.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut marked: HashMap<i32, i64> = HashMap::new();
    for (p, o, _) in load.acked.lock().unwrap().iter() {
        let m = marked.entry(*p).or_insert(-1);
        *m = (*m).max(*o);
    }
    let is_fresh = |id: &PartitionId, s: &SegmentRecord| {
        s.base_offset > marked.get(&id.partition).copied().unwrap_or(i64::MAX)
    };
    // Segments whose replica set was chosen since: sealed ones and the
    // unsealed ones listed in the checkpoints.
    let deadline = Instant::now() + Duration::from_secs(120);
    let fresh: Vec<(i64, Vec<String>)> = loop {
        let mut all: Vec<(i64, Vec<String>)> = segments(&meta)
            .await
            .into_iter()
            .filter(|(id, s)| is_fresh(id, s))
            .map(|(_, s)| (s.base_offset, s.replica_set))
            .collect();
        all.extend(
            open_segments(&meta)
                .await
                .into_iter()
                .filter_map(|(id, o)| {
                    (o.base_offset > marked.get(&id.partition).copied().unwrap_or(i64::MAX))
                        .then_some((o.base_offset, o.replica_set))
                }),
        );
        if all.len() >= 6 {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "too few segments started after the kill"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let on_victim: Vec<_> = fresh
        .iter()
        .filter(|(_, set)| set.contains(&victim_id))
        .map(|(base, _)| *base)
        .collect();
    assert!(
        on_victim.is_empty(),
        "new segments avoid the dead target: {on_victim:?} of {}",
        fresh.len()
    );

    // Everything acked so far reads back (old segments from the other replicas).
    load.stop.store(true, Ordering::SeqCst);
    let failed = load.task.await.unwrap();
    let acked = std::mem::take(&mut *load.acked.lock().unwrap());
    let reading = Instant::now();
    let log = read_all_within(&b, TOPIC, PARTITIONS, Duration::from_secs(240));
    println!("read back in {:?}", reading.elapsed());
    let read: usize = log.values().map(Vec::len).sum();
    assert!(
        read >= acked.len(),
        "read {read} records, {} were acked",
        acked.len()
    );
    let mut by_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for (p, o, payload) in &acked {
        let got = log.get(p).and_then(|r| r.get(*o as usize)).map(|(_, v)| v);
        assert!(got == Some(payload), "acked record at {p}/{o} is readable");
        *by_partition.entry(*p).or_default() += 1;
    }
    println!(
        "{} records acked ({failed} failed for good) across the kill: {by_partition:?}",
        acked.len()
    );
    assert_eq!(failed, 0, "produce saw at most retriable errors");

    // The target is replaced by an empty one: repair restores R replicas.
    motos[victim].restart().unwrap();
    let stores: HashMap<String, StorageTarget> = motos
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                format!("t{i}"),
                StorageTarget::open(format!("t{i}"), &m.url("floe")).unwrap(),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let all = segments(&meta).await;
        let mut missing = 0;
        for (id, s) in &all {
            let path = layout::segment(*id, s.base_offset, s.epoch, s.sealed_by_epoch);
            for r in &s.replica_set {
                if stores[r].store.head(&path).await.is_err() {
                    missing += 1;
                }
            }
        }
        if missing == 0 {
            println!(
                "every one of {} segments has its 3 replicas again after {:?}",
                all.len(),
                killed.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} segment replicas still missing"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = cluster.brokers[0].http("/metrics").unwrap();
    let repaired: f64 = metrics
        .lines()
        .find(|l| l.starts_with("floe_replicas_repaired_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(repaired > 0.0, "repair copied replicas: {repaired}");
}
