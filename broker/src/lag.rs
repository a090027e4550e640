//! Consumer lag of the groups this broker coordinates (issue 22): every
//! `consumer_lag_interval_ms`, each committed offset against its
//! partition's high watermark — read from the log when this broker writes
//! the partition, asked of its owner with ListOffsets otherwise — exported
//! as `floe_consumer_group_lag{group,topic,partition}` (records) and
//! `floe_consumer_group_lag_seconds` (how long ago the high watermark
//! passed the committed offset, from the high watermarks sampled each
//! round, interpolated between rounds), with the committed offset and the
//! high watermark themselves. Series of groups and partitions that go
//! away go with them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use floe_common::PartitionId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::partition::PartitionState;

/// High watermark samples kept per partition (at the default interval,
/// an hour): a time lag older than that is reported as that old.
const HISTORY: usize = 720;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabel {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicPartitionLabel {
    pub topic: String,
    pub partition: i32,
}

/// The lag series and what computing them remembers.
#[derive(Default)]
pub struct Lag {
    lag: Family<LagLabel, Gauge>,
    lag_seconds: Family<LagLabel, Gauge<f64, AtomicU64>>,
    committed: Family<LagLabel, Gauge>,
    high_watermark: Family<TopicPartitionLabel, Gauge>,
    state: Mutex<LagState>,
}

#[derive(Default)]
struct LagState {
    /// The series set last round (removed when absent from the next).
    series: HashSet<LagLabel>,
    partitions: HashSet<TopicPartitionLabel>,
    /// (topic, partition) → (ms, high watermark) samples, oldest first.
    history: HashMap<(String, i32), VecDeque<(i64, i64)>>,
}

/// One committed offset and what it lags.
#[derive(Clone, Debug, PartialEq)]
pub struct LagRow {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    pub high_watermark: i64,
    pub lag: i64,
    pub lag_ms: i64,
}

/// When the high watermark first passed `committed`, from `samples`
/// (oldest first): interpolated between the last sample at or below it
/// and the first above; the oldest sample's time when all are above.
fn passed_at(samples: &VecDeque<(i64, i64)>, committed: i64) -> Option<i64> {
    let first_above = samples.iter().position(|(_, hw)| *hw > committed)?;
    if first_above == 0 {
        return Some(samples[0].0);
    }
    let (t0, h0) = samples[first_above - 1];
    let (t1, h1) = samples[first_above];
    // The record at `committed` arrived between the two samples.
    let share = (committed + 1 - h0) as f64 / (h1 - h0).max(1) as f64;
    Some(t0 + ((t1 - t0) as f64 * share.clamp(0.0, 1.0)) as i64)
}

impl Lag {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "consumer_group_lag",
            "Records a group has not consumed: the partition's high watermark minus the group's committed offset (groups this broker coordinates)",
            self.lag.clone(),
        );
        registry.register(
            "consumer_group_lag_seconds",
            "How long ago the partition's high watermark passed the group's committed offset (0: caught up), to the sampling interval",
            self.lag_seconds.clone(),
        );
        registry.register(
            "consumer_group_committed_offset",
            "A group's committed offset per partition",
            self.committed.clone(),
        );
        registry.register(
            "consumer_group_partition_high_watermark",
            "High watermark of a partition some coordinated group has committed offsets for",
            self.high_watermark.clone(),
        );
    }

    /// One round: `committed` (group, topic, partition, offset) against
    /// `hws` (topic, partition) → high watermark at `now_ms`. Returns the
    /// rows set.
    pub fn update(
        &self,
        now_ms: i64,
        committed: &[(String, String, i32, i64)],
        hws: &HashMap<(String, i32), i64>,
    ) -> Vec<LagRow> {
        let mut st = self.state.lock().unwrap();
        for ((t, p), hw) in hws {
            let h = st.history.entry((t.clone(), *p)).or_default();
            // A high watermark only grows; a smaller one is a new log
            // (topic re-created): start over.
            if h.back().is_some_and(|(_, last)| last > hw) {
                h.clear();
            }
            h.push_back((now_ms, *hw));
            if h.len() > HISTORY {
                h.pop_front();
            }
        }
        st.history.retain(|k, _| hws.contains_key(k));
        let mut rows = Vec::new();
        let mut series = HashSet::new();
        for (g, t, p, c) in committed {
            let Some(hw) = hws.get(&(t.clone(), *p)).copied() else {
                continue;
            };
            let lag = (hw - c).max(0);
            let lag_ms = if lag == 0 {
                0
            } else {
                st.history
                    .get(&(t.clone(), *p))
                    .and_then(|h| passed_at(h, *c))
                    .map_or(0, |at| (now_ms - at).max(0))
            };
            let l = LagLabel {
                group: g.clone(),
                topic: t.clone(),
                partition: *p,
            };
            self.lag.get_or_create(&l).set(lag);
            self.lag_seconds
                .get_or_create(&l)
                .set(lag_ms as f64 / 1000.0);
            self.committed.get_or_create(&l).set(*c);
            series.insert(l);
            rows.push(LagRow {
                group: g.clone(),
                topic: t.clone(),
                partition: *p,
                committed: *c,
                high_watermark: hw,
                lag,
                lag_ms,
            });
        }
        let partitions: HashSet<TopicPartitionLabel> = hws
            .iter()
            .map(|((t, p), hw)| {
                let l = TopicPartitionLabel {
                    topic: t.clone(),
                    partition: *p,
                };
                self.high_watermark.get_or_create(&l).set(*hw);
                l
            })
            .collect();
        for gone in st.series.difference(&series) {
            self.lag.remove(gone);
            self.lag_seconds.remove(gone);
            self.committed.remove(gone);
        }
        for gone in st.partitions.difference(&partitions) {
            self.high_watermark.remove(gone);
        }
        st.series = series;
        st.partitions = partitions;
        rows
    }
}

/// High watermarks of `wanted` partitions: from the log of those written
/// here, by ListOffsets (latest) to the owners of the others; partitions
/// nobody answers for are left out.
async fn high_watermarks(
    node: &Arc<Node>,
    wanted: &BTreeMap<(String, i32), PartitionId>,
) -> HashMap<(String, i32), i64> {
    let mut out = HashMap::new();
    let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for ((t, p), id) in wanted {
        match node.partition(*id) {
            Some(h) if h.state() == PartitionState::Writing => {
                out.insert((t.clone(), *p), h.log.offsets().1);
            }
            _ => {
                if let Some((b, _)) = node.leader_of(*id) {
                    remote.entry(b).or_default().push((t.clone(), *p));
                }
            }
        }
    }
    let asks = remote.into_iter().map(|(b, parts)| {
        let node = node.clone();
        async move {
            let broker = node.broker(b)?;
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (t, p) in parts {
                by_topic.entry(t).or_default().push(p);
            }
            node.txn
                .client
                .latest_offsets(
                    (&broker.host, broker.port),
                    by_topic,
                    Duration::from_secs(5),
                )
                .await
                .inspect_err(|e| tracing::debug!(broker = b, error = %e, "ListOffsets for consumer lag failed"))
                .ok()
        }
    });
    for answer in futures::future::join_all(asks).await.into_iter().flatten() {
        out.extend(answer);
    }
    out
}

/// Compute the lag every `every` until the node goes.
pub async fn run(node: Weak<Node>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(node) = node.upgrade() else { return };
        let committed = node.groups.committed_offsets().await;
        let mut wanted = BTreeMap::new();
        for (_, t, p, _) in &committed {
            if let Some(topic) = node.topic(t) {
                if *p >= 0 && *p < topic.partitions {
                    wanted.insert((t.clone(), *p), PartitionId::new(topic.id, *p));
                }
            }
        }
        let hws = high_watermarks(&node, &wanted).await;
        let now = node.ctx().clock.now_ms();
        node.metrics.lag.update(now, &committed, &hws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(lag: &Lag) -> String {
        let mut r = Registry::with_prefix("floe");
        lag.register(&mut r);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    #[test]
    fn lag_is_the_high_watermark_minus_the_committed_offset_and_ages_with_it() {
        let lag = Lag::default();
        let c = |o| vec![("g".to_string(), "t".to_string(), 0, o)];
        let hw = |h| HashMap::from([(("t".to_string(), 0), h)]);
        // Caught up at t=0; 100 records arrive by t=10 s, none consumed.
        let rows = lag.update(0, &c(50), &hw(50));
        assert_eq!((rows[0].lag, rows[0].lag_ms), (0, 0));
        let rows = lag.update(10_000, &c(50), &hw(150));
        assert_eq!(rows[0].lag, 100);
        // The record at 50 arrived somewhere in (0, 10 s]: 1/100 of the way.
        assert_eq!(rows[0].lag_ms, 10_000 - 100);
        let rows = lag.update(20_000, &c(50), &hw(250));
        assert_eq!((rows[0].lag, rows[0].lag_ms), (200, 20_000 - 100));
        let out = text(&lag);
        assert!(
            out.contains("floe_consumer_group_lag{group=\"g\",topic=\"t\",partition=\"0\"} 200"),
            "{out}"
        );
        // Consumed up to 200: the oldest unconsumed arrived in (10, 20 s].
        let rows = lag.update(20_000, &c(200), &hw(250));
        assert_eq!((rows[0].lag, rows[0].lag_ms), (50, 20_000 - 10_000 - 5_100));
        // The group goes: its series go.
        lag.update(30_000, &[], &HashMap::new());
        let out = text(&lag);
        assert!(!out.contains("group=\"g\""), "{out}");
    }
}
