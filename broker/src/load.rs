//! Load reporting: bytes in and out per partition, counted as they flow and
//! published every report interval as rates to `/floe/load/{broker}` (bound
//! to the broker's lease), where the controller's rebalance planner reads
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Rates over `elapsed` for the partitions this broker writes (those
/// without traffic report zero, so the planner knows they are idle).
pub fn report(
    broker_id: i32,
    now_ms: i64,
    elapsed: Duration,
    counts: HashMap<PartitionId, (u64, u64)>,
    owned: &[PartitionId],
) -> LoadRecord {
    let ms = elapsed.as_millis().max(1) as u64;
    let rate = |bytes: u64| bytes.saturating_mul(1000) / ms;
    let mut partitions: Vec<PartitionLoad> = owned
        .iter()
        .map(|p| {
            let (i, o) = counts.get(p).copied().unwrap_or_default();
            PartitionLoad {
                topic_id: p.topic_id.as_bytes().to_vec(),
                partition: p.partition,
                bytes_in_per_sec: rate(i),
                bytes_out_per_sec: rate(o),
            }
        })
        .collect();
    partitions.sort_by(|a, b| (&a.topic_id, a.partition).cmp(&(&b.topic_id, b.partition)));
    LoadRecord {
        format: FORMAT,
        broker_id,
        reported_ms: now_ms,
        interval_ms: ms,
        bytes_in_per_sec: partitions.iter().map(|p| p.bytes_in_per_sec).sum(),
        bytes_out_per_sec: partitions.iter().map(|p| p.bytes_out_per_sec).sum(),
        partitions,
    }
}

/// Publish this broker's load every `interval` until shutdown.
pub async fn run(node: Arc<crate::Node>, interval: Duration) {
    let mut last = Instant::now();
    node.metrics.load.take();
    loop {
        tokio::select! {
            _ = node.shutdown_token().cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let counts = node.metrics.load.take();
        let elapsed = last.elapsed();
        last = Instant::now();
        let owned = node.writing_partitions();
        let ctx = node.ctx();
        let record = report(
            node.config.node_id,
            ctx.clock.now_ms(),
            elapsed,
            counts,
            &owned,
        );
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
            &[p(0), p(1), p(2)],
        );
        assert_eq!(r.broker_id, 3);
        assert_eq!(r.partitions.len(), 3);
        assert_eq!(
            r.partitions
                .iter()
                .map(|l| (l.partition, l.bytes_in_per_sec, l.bytes_out_per_sec))
                .collect::<Vec<_>>(),
            vec![(0, 2_000, 500), (1, 1_000, 0), (2, 0, 0)]
        );
        assert_eq!((r.bytes_in_per_sec, r.bytes_out_per_sec), (3_000, 500));
        assert!(meter.take().is_empty(), "taking resets");
    }
}
