//! Benchmark, not a test (ignored by default): how long a planned move of a
//! partition takes when it holds 10 MB and when it holds 1 GB. Run it with
//! release binaries through `scripts/bench-move.sh`; figures go to
//! docs/benchmarks.md.
//!
//! For each size, `MOVES` moves (default 20) alternate the partition between
//! two brokers on a real etcd. Two figures per move:
//! - hand-over: from the controller's move request to the new owner's
//!   published state `writing` at the new epoch (read from etcd);
//! - write pause: the longest gap between two consecutive acks seen by a
//!   librdkafka producer writing to the partition one record at a time
//!   through the move (what an application feels, including its re-route).
// Tests run real processes in real time: outside the time seam.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_e2e::{create_topic, Cluster};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Write `bytes` of 16 KiB records to partition 0 of `topic`.
async fn fill(bootstrap: &str, topic: &str, bytes: u64) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    let value = vec![b'x'; 16 * 1024];
    let n = bytes / value.len() as u64;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(2048);
    for i in 0..n {
        loop {
            match producer.send_result(
                FutureRecord::<(), [u8]>::to(topic)
                    .partition(0)
                    .payload(&value),
            ) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        if pending.len() >= 2048 || i + 1 == n {
            for f in pending.drain(..) {
                f.await.unwrap().unwrap();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "filled {topic}: {} MB in {secs:.1} s ({:.0} MB/s)",
        bytes / 1_000_000,
        bytes as f64 / 1e6 / secs
    );
}

fn high_watermark(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    c.fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
        .1
}

/// Acks of a producer writing one record at a time, until stopped.
struct Trickle {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<u64>,
}

fn trickle(bootstrap: &str, topic: &str) -> Trickle {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "10")
        .set("retry.backoff.max.ms", "100")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let topic = topic.to_string();
    let (s, a) = (stop.clone(), acks.clone());
    let task = tokio::spawn(async move {
        let mut failed = 0;
        while !s.load(Ordering::SeqCst) {
            let r = producer
                .send(
                    FutureRecord::<(), [u8]>::to(&topic)
                        .partition(0)
                        .payload(b"tick".as_slice()),
                    Duration::from_secs(30),
                )
                .await;
            match r {
                Ok(_) => a.lock().unwrap().push(Instant::now()),
                Err(_) => failed += 1,
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        failed
    });
    Trickle { stop, acks, task }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The value of `field=` in a log line (colour codes stripped).
fn log_field(line: &str, field: &str) -> Option<u64> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let at = plain.find(&format!("{field}="))? + field.len() + 1;
    plain[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

/// Move `topic`'s partition 0 to the other broker; (hand-over, write pause)
/// in milliseconds.
async fn move_once(
    cluster: &Cluster,
    meta: &dyn floe_meta::MetadataStore,
    topic: &str,
    trickle: &Trickle,
) -> (f64, f64) {
    let state = Cluster::partition_state(meta, topic, 0)
        .await
        .unwrap()
        .expect("the partition has an owner");
    let target = 3 - state.broker_id;
    let t0 = Instant::now();
    let epoch = cluster.move_partition(topic, 0, target).unwrap();
    loop {
        let s = Cluster::partition_state(meta, topic, 0).await.unwrap();
        if s.is_some_and(|s| s.broker_id == target && s.epoch == epoch && s.state == "writing") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "move never completed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let writing = t0.elapsed();
    // Let the producer settle on the new owner, then look at its gaps.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acks = trickle.acks.lock().unwrap().clone();
    let window: Vec<Instant> = acks
        .into_iter()
        .filter(|a| *a + Duration::from_millis(200) >= t0)
        .collect();
    let gap = window
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (writing.as_secs_f64() * 1000.0, gap.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run scripts/bench-move.sh"]
async fn planned_move_time_does_not_depend_on_partition_size() {
    let moves = env_or("MOVES", 20);
    let sizes = [
        ("small", env_or("SMALL_MB", 10) * 1_000_000),
        ("big", env_or("BIG_MB", 1_000) * 1_000_000),
    ];
    let cluster = Cluster::start(2, 1, 10_000).unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let b = cluster.bootstrap();
    let meta = cluster.meta().await.unwrap();
    for (topic, bytes) in sizes {
        create_topic(&b, topic, 1).await;
        fill(&b, topic, bytes).await;
    }
    let trickles: Vec<Trickle> = sizes.iter().map(|(t, _)| trickle(&b, t)).collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Interleaved, so that both sizes see the same machine.
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); sizes.len()];
    for _ in 0..moves {
        for (i, (topic, _)) in sizes.iter().enumerate() {
            let (h, p) = move_once(&cluster, &meta, topic, &trickles[i]).await;
            results[i].0.push(h);
            results[i].1.push(p);
        }
    }
    for t in trickles {
        t.stop.store(true, Ordering::SeqCst);
        assert_eq!(t.task.await.unwrap(), 0, "a trickle producer saw failures");
    }
    // The new owners' own account of recovery (listing, chunk headers,
    // fence, checkpoint), from their logs, in order.
    let logs = cluster.logs();
    let recoveries: Vec<(u64, u64)> = logs
        .lines()
        .filter(|l| l.contains("recovered after a clean release"))
        .filter_map(|l| Some((log_field(l, "took_ms")?, log_field(l, "unsealed_segments")?)))
        .collect();
    println!();
    println!("| partition | records | moves | hand-over p50 | hand-over p99 | write pause p50 | write pause p99 |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (topic, bytes)) in sizes.iter().enumerate() {
        let (h, p) = &mut results[i];
        println!("{topic}: hand-over ms {h:.1?}");
        println!("{topic}: write pause ms {p:.1?}");
        h.sort_by(f64::total_cmp);
        p.sort_by(f64::total_cmp);
        println!(
            "| {} MB | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            bytes / 1_000_000,
            high_watermark(&b, topic),
            h.len(),
            percentile(h, 50.0),
            percentile(h, 99.0),
            percentile(p, 50.0),
            percentile(p, 99.0)
        );
    }
    let mut took: Vec<u64> = recoveries.iter().map(|r| r.0).collect();
    took.sort();
    println!(
        "recovery on the new owner (all moves): took_ms {took:?}; moves that handed over an unsealed segment: {}",
        recoveries.iter().filter(|r| r.1 > 0).count()
    );
    assert!(
        !logs.contains("recovered after an unclean end"),
        "every move was a clean hand-over"
    );
}
