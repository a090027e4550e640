//! Load reporting: bytes in and out per partition, counted as they flow and
//! published every report interval as rates (smoothed across intervals),
//! with each partition's high watermark, to `/floe/load/{broker}` (bound to
//! the broker's lease), where the controller's rebalance planner and admin
//! API read them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use floe_common::PartitionId;
use floe_meta::schema::{LoadRecord, PartitionLoad, FORMAT};
use floe_meta::{keys, Op, Txn};
use prost::Message;

/// Bytes counted per partition since the last report.
#[derive(Default)]
pub struct LoadMeter {
    counts: Mutex<HashMap<PartitionId, (u64, u64)>>,
}

impl LoadMeter {
    /// Record bytes appended to `p`.
    pub fn add_in(&self, p: PartitionId, bytes: u64) {
        self.counts.lock().unwrap().entry(p).or_default().0 += bytes;
    }

    /// Record bytes of `p` served to a reader (a fetch, a tail push).
    pub fn add_out(&self, p: PartitionId, bytes: u64) {
        self.counts.lock().unwrap().entry(p).or_default().1 += bytes;
    }

    /// The counts since the last call, reset.
    pub fn take(&self) -> HashMap<PartitionId, (u64, u64)> {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

/// Rates over `elapsed` for the partitions this broker writes, given with
/// their high watermarks (those without traffic report zero, so the planner
/// knows they are idle).
pub fn report(
    broker_id: i32,
    now_ms: i64,
    elapsed: Duration,
    counts: HashMap<PartitionId, (u64, u64)>,
    owned: &[(PartitionId, i64)],
) -> LoadRecord {
    let ms = elapsed.as_millis().max(1) as u64;
    let rate = |bytes: u64| bytes.saturating_mul(1000) / ms;
    let mut partitions: Vec<PartitionLoad> = owned
        .iter()
        .map(|(p, hw)| {
            let (i, o) = counts.get(p).copied().unwrap_or_default();
            PartitionLoad {
                topic_id: p.topic_id.as_bytes().to_vec(),
                partition: p.partition,
                bytes_in_per_sec: rate(i),
                bytes_out_per_sec: rate(o),
                high_watermark: *hw,
            }
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic_id, a.partition).cmp(&(&b.topic_id, b.partition)));
    let mut record = LoadRecord {
        format: FORMAT,
        broker_id,
        reported_ms: now_ms,
        interval_ms: ms,
        partitions,
        ..Default::default()
    };
    sum_rates(&mut record);
    record
}

/// A broker's rates: its partitions' rates summed.
fn sum_rates(r: &mut LoadRecord) {
    r.bytes_in_per_sec = r.partitions.iter().map(|p| p.bytes_in_per_sec).sum();
    r.bytes_out_per_sec = r.partitions.iter().map(|p| p.bytes_out_per_sec).sum();
}

/// Steadies reported rates: each partition's reported rate is the mean of
/// this interval's and the one reported before (an exponentially weighted
/// average with weight ½), so one burst or lull moves it by half and the
/// planner does not chase noise. A partition new to this broker starts from
/// its first interval.
#[derive(Default)]
pub struct Smoother {
    last: HashMap<(Vec<u8>, i32), (u64, u64)>,
}

impl Smoother {
    pub fn apply(&mut self, record: &mut LoadRecord) {
        let mut next = HashMap::with_capacity(record.partitions.len());
        for p in &mut record.partitions {
            let key = (p.topic_id.clone(), p.partition);
            if let Some((i, o)) = self.last.get(&key) {
                p.bytes_in_per_sec = (p.bytes_in_per_sec + i) / 2;
                p.bytes_out_per_sec = (p.bytes_out_per_sec + o) / 2;
            }
            next.insert(key, (p.bytes_in_per_sec, p.bytes_out_per_sec));
        }
        self.last = next;
        sum_rates(record);
    }
}

/// Publish this broker's load every `interval` until shutdown.
pub async fn run(node: Arc<crate::Node>, interval: Duration) {
    let mut last = Instant::now();
    let mut smoother = Smoother::default();
    node.metrics.load.take();
    loop {
        tokio::select! {
            _ = node.shutdown_token().cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let counts = node.metrics.load.take();
        let elapsed = last.elapsed();
        last = Instant::now();
        let owned: Vec<(PartitionId, i64)> = node
            .partition_handles()
            .into_iter()
            .filter(|h| h.state() == crate::partition::PartitionState::Writing)
            .map(|h| (h.id, h.log.offsets().1))
            .collect();
        let ctx = node.ctx();
        let mut record = report(
            node.config.node_id,
            ctx.clock.now_ms(),
            elapsed,
            counts,
            &owned,
        );
        smoother.apply(&mut record);
        let txn = Txn::new().then(Op::put_with_lease(
            keys::load(node.config.node_id),
            record.encode_to_vec(),
            ctx.lease.lease,
        ));
        if let Err(e) = node.meta.txn(txn).await {
            tracing::debug!(error = %e, "could not publish the load report");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_common::Uuid;

    #[test]
    fn rates_cover_owned_partitions_only() {
        let meter = LoadMeter::default();
        let p = |i| PartitionId::new(Uuid::from_u128(1), i);
        meter.add_in(p(0), 4_000);
        meter.add_out(p(0), 1_000);
        meter.add_in(p(1), 2_000);
        meter.add_in(p(9), 9_999); // moved away meanwhile
        let r = report(
            3,
            77,
            Duration::from_secs(2),
            meter.take(),
            &[(p(0), 40), (p(1), 7), (p(2), 0)],
        );
        assert_eq!(r.broker_id, 3);
        assert_eq!(r.partitions.len(), 3);
        assert_eq!(
            r.partitions
                .iter()
                .map(|l| (
                    l.partition,
                    l.bytes_in_per_sec,
                    l.bytes_out_per_sec,
                    l.high_watermark
                ))
                .collect::<Vec<_>>(),
            vec![(0, 2_000, 500, 40), (1, 1_000, 0, 7), (2, 0, 0, 0)]
        );
        assert_eq!((r.bytes_in_per_sec, r.bytes_out_per_sec), (3_000, 500));
        assert!(meter.take().is_empty(), "taking resets");
    }

    #[test]
    fn smoothing_halves_a_burst_and_starts_new_partitions_from_their_first_rate() {
        let p = |i| PartitionId::new(Uuid::from_u128(1), i);
        let second = Duration::from_secs(1);
        let counts = |v: &[(i32, u64)]| -> HashMap<PartitionId, (u64, u64)> {
            v.iter().map(|(i, b)| (p(*i), (*b, *b / 2))).collect()
        };
        let rates = |r: &LoadRecord| -> Vec<(i32, u64, u64)> {
            r.partitions
                .iter()
                .map(|l| (l.partition, l.bytes_in_per_sec, l.bytes_out_per_sec))
                .collect()
        };
        let mut s = Smoother::default();
        let mut r = report(1, 0, second, counts(&[(0, 1_000)]), &[(p(0), 0)]);
        s.apply(&mut r);
        assert_eq!(rates(&r), vec![(0, 1_000, 500)], "first interval as is");
        // A burst on 0; 1 arrives (a move) and reports its own rate.
        let mut r = report(
            1,
            0,
            second,
            counts(&[(0, 9_000), (1, 4_000)]),
            &[(p(0), 0), (p(1), 0)],
        );
        s.apply(&mut r);
        assert_eq!(rates(&r), vec![(0, 5_000, 2_500), (1, 4_000, 2_000)]);
        assert_eq!((r.bytes_in_per_sec, r.bytes_out_per_sec), (9_000, 4_500));
        // 0 leaves and comes back: it starts afresh.
        let mut r = report(1, 0, second, counts(&[]), &[(p(1), 0)]);
        s.apply(&mut r);
        assert_eq!(rates(&r), vec![(1, 2_000, 1_000)]);
        let mut r = report(1, 0, second, counts(&[(0, 600)]), &[(p(0), 0)]);
        s.apply(&mut r);
        assert_eq!(rates(&r), vec![(0, 600, 300)]);
    }
}
