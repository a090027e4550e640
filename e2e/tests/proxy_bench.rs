//! Benchmark, not a test (ignored by default): latency through the proxy
//! tier. Run it with release binaries through `scripts/bench-proxy.sh`;
//! figures go to docs/benchmarks.md.
//!
//! 1. End-to-end latency, produce → a tailing consumer's receipt, through a
//!    proxy (fetch served from the pushed tail) and, for reference, straight
//!    to the broker; with each record's produce-ack latency beside it.
//! 2. The produce latency bump of moves: a producer writing one record
//!    every 2 ms through a proxy while a partition is moved `MOVES` times,
//!    then while every broker is restarted in turn.
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, Cluster};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        .create()
        .unwrap()
}

/// (ack ms, end-to-end ms) of `n` records sent every `gap`, read by a
/// consumer tailing the partition through `bootstrap`.
async fn tail_latency(
    bootstrap: &str,
    topic: &str,
    n: usize,
    gap: Duration,
) -> (Vec<f64>, Vec<f64>) {
    let base = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let e2e: Arc<Mutex<Vec<f64>>> = Default::default();
    let reader = {
        let (bootstrap, topic, done, e2e) = (
            bootstrap.to_string(),
            topic.to_string(),
            done.clone(),
            e2e.clone(),
        );
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "bench-tail")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "500")
                .set("fetch.min.bytes", "1")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, rdkafka::Offset::End)
                .unwrap();
            c.assign(&tpl).unwrap();
            while !done.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                    let sent: u64 = std::str::from_utf8(m.payload().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let now = base.elapsed().as_micros() as u64;
                    e2e.lock().unwrap().push((now - sent) as f64 / 1000.0);
                }
            }
        })
    };
    // Let the consumer reach the end of the log first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = producer(bootstrap);
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        let stamp = base.elapsed().as_micros().to_string();
        p.send(
            FutureRecord::<(), _>::to(topic)
                .partition(0)
                .payload(&stamp),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        acks.push(sent.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(gap).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let e2e = std::mem::take(&mut *e2e.lock().unwrap());
    assert_eq!(e2e.len(), n, "every record reached the tailing consumer");
    (acks, e2e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_proxy_latency() {
    let n = env_or("RECORDS", 2_000) as usize;
    let moves = env_or("MOVES", 20) as usize;
    let mut c = Cluster::start(3, 1, 10_000).unwrap();
    c.add_proxy().unwrap();
    c.wait_leader(Duration::from_secs(20)).unwrap();
    let proxy = c.proxy_bootstrap();

    println!("| path | records | produce ack p50 | p99 | end-to-end p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for (i, (name, bootstrap)) in [
        ("through the proxy (tail push)", proxy.clone()),
        ("straight to the broker", c.bootstrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("tail{i}");
        create_topic(&bootstrap, &topic, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (mut acks, mut e2e) =
            tail_latency(&bootstrap, &topic, n, Duration::from_millis(5)).await;
        println!(
            "| {name} | {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            pct(&mut acks, 0.5),
            pct(&mut acks, 0.99),
            pct(&mut e2e, 0.5),
            pct(&mut e2e, 0.99)
        );
    }

    // Moves under a steady producer through the proxy.
    create_topic(&proxy, "bump", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = Arc::new(producer(&proxy));
    let stop = Arc::new(AtomicBool::new(false));
    // 0: warming up (not counted), 1: no move, 2: moves.
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let lat: Arc<Mutex<Vec<(u8, f64)>>> = Default::default();
    let writer = {
        let (p, stop, phase, lat) = (p.clone(), stop.clone(), phase.clone(), lat.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let during = phase.load(Ordering::Relaxed);
                let sent = Instant::now();
                p.send(
                    FutureRecord::<(), _>::to("bump").partition(0).payload("x"),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
                lat.lock()
                    .unwrap()
                    .push((during, sent.elapsed().as_secs_f64() * 1000.0));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase.store(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let meta = c.meta().await.unwrap();
    phase.store(2, Ordering::Relaxed);
    let mut pauses = Vec::new();
    for _ in 0..moves {
        let owner = Cluster::partition_state(&meta, "bump", 0)
            .await
            .unwrap()
            .map_or(1, |s| s.broker_id);
        let before = lat.lock().unwrap().len();
        c.move_partition("bump", 0, owner % 3 + 1).unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let l = lat.lock().unwrap();
        pauses.push(l[before..].iter().map(|x| x.1).fold(0.0, f64::max));
    }
    // A rolling restart of every broker (SIGTERM: partitions released and
    // taken over, then given back when the broker rejoins).
    phase.store(3, Ordering::Relaxed);
    let restart_started = Instant::now();
    for i in 0..c.brokers.len() {
        c.brokers[i].restart().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let writing = Cluster::partition_state(&meta, "bump", 0)
                .await
                .unwrap()
                .is_some_and(|s| s.state == "writing");
            if writing && c.brokers[i].http("/readyz").is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not settle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let restart_secs = restart_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let l = lat.lock().unwrap();
    let mut restarting: Vec<f64> = l.iter().filter(|x| x.0 == 3).map(|x| x.1).collect();
    let mut base: Vec<f64> = l.iter().filter(|x| x.0 == 1).map(|x| x.1).collect();
    let mut during: Vec<f64> = l.iter().filter(|x| x.0 == 2).map(|x| x.1).collect();
    println!();
    println!("| produce through the proxy, one record per 2 ms | records | ack p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| no move | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        base.len(),
        pct(&mut base, 0.5),
        pct(&mut base, 0.99),
        pct(&mut base, 1.0)
    );
    println!(
        "| {moves} moves, one every 0.7 s | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        during.len(),
        pct(&mut during, 0.5),
        pct(&mut during, 0.99),
        pct(&mut during, 1.0)
    );
    println!(
        "| rolling restart of 3 brokers ({restart_secs:.0} s) | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        restarting.len(),
        pct(&mut restarting, 0.5),
        pct(&mut restarting, 0.99),
        pct(&mut restarting, 1.0)
    );
    println!(
        "| slowest ack per move (the bump) | {moves} | {:.1} ms | {:.1} ms | {:.1} ms |",
        pct(&mut pauses, 0.5),
        pct(&mut pauses, 0.99),
        pct(&mut pauses, 1.0)
    );
}
