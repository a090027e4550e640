//! Broker settings and topic configs: Kafka's names, Kafka's defaults where
//! they apply, validation with Kafka's error codes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of one broker process. Every field has a default, so
/// `floe standalone` needs no file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Largest request frame accepted (Kafka's socket.request.max.bytes).
    pub max_request_bytes: usize,
    /// Connections beyond this are closed at accept (max.connections).
    pub max_connections: usize,
    /// Requests of one connection processed concurrently (responses stay in order).
    pub max_inflight_per_connection: usize,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// A chunk is flushed once it holds this many bytes...
    pub chunk_bytes: usize,
    /// ...or once its first batch waited this long...
    pub chunk_linger_ms: u64,
    /// ...or at once when no other chunk of the partition is being written
    /// (group commit: low latency when idle, batching under load). Turn off
    /// on a pay-per-request object store to batch by `chunk_linger_ms` only.
    pub flush_when_idle: bool,
    /// Chunk flushes of one partition in flight at once.
    pub max_inflight_flushes: usize,
    /// A chunk write that has not reached its write quorum after this long
    /// fails over to a new segment on other targets.
    pub chunk_put_timeout_ms: u64,
    /// How often each storage target is probed (down after two failures).
    pub storage_probe_interval_ms: u64,
    /// How often a partition checks that its sealed segments still have
    /// every replica (and repairs them).
    pub repair_interval_ms: u64,
    /// Bytes per second this broker copies when repairing segment replicas
    /// (a storage target drained or down), over all its partitions; 0: no
    /// limit.
    pub repair_max_bytes_per_sec: u64,
    /// How often a partition's owner sweeps the partition's storage for
    /// objects nothing refers to (left by failed deletes, repairs,
    /// recoveries); 0: never.
    pub gc_interval_ms: u64,
    /// Roll the open segment after this many chunks (0: by size and age
    /// only): bounds what a recovery after an unclean end reads (one header
    /// per chunk), which is most of a take-over after a broker dies: under
    /// the chaos test's load (small chunks, 2 cores shared by the whole
    /// cluster) 540 chunks took 0.8-1.4 s to recover. Also keeps partitions
    /// with little traffic from gathering tiny chunks for days.
    pub segment_max_chunks: u64,
    /// Objects younger than this are never collected (writes in flight,
    /// uploads whose record is not saved yet). Failed deletes schedule a
    /// sweep this long after them.
    pub gc_min_age_ms: u64,
    /// How often the broker publishes its measured load (bytes in and out
    /// per partition) for the controller's rebalance planner.
    pub load_report_interval_ms: u64,
    /// A read that has not answered after this long also asks the next
    /// replica (hedged reads); the first answer wins.
    pub read_hedge_ms: u64,
    /// Bytes of the shared read cache.
    pub cache_bytes: u64,
    /// How often a partition checks retention and segment.ms.
    pub retention_check_interval_ms: u64,
    /// How often an unchanged partition's checkpoint is re-saved.
    pub checkpoint_interval_ms: u64,
    /// TTL of the broker's metadata lease: a broker silent this long loses
    /// its partitions (and stops acking a third of it earlier).
    pub lease_ttl_ms: u64,
    /// Default configs of new topics (Kafka names: retention.ms, ...).
    pub topic_defaults: BTreeMap<String, String>,
    /// Partitions of the internal `__consumer_offsets` topic, made when the
    /// first group looks for its coordinator (offsets.topic.num.partitions).
    /// A group's coordinator is the owner of one of them; do not change it
    /// once groups exist.
    pub offsets_topic_partitions: i32,
    /// A new group waits this long for more members before its first
    /// rebalance completes (group.initial.rebalance.delay.ms).
    pub group_initial_rebalance_delay_ms: u64,
    /// Accepted session timeouts (group.min/max.session.timeout.ms).
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    /// How often members of consumer-protocol groups (KIP-848) heartbeat
    /// (group.consumer.heartbeat.interval.ms): how soon they learn of a
    /// new assignment.
    pub group_consumer_heartbeat_interval_ms: i32,
    /// A consumer-protocol member silent this long is removed and its
    /// partitions reassigned (group.consumer.session.timeout.ms).
    pub group_consumer_session_timeout_ms: u64,
    /// Committed offsets of a group without members expire this long after
    /// their commit (offsets.retention.minutes, in ms).
    pub offsets_retention_ms: i64,
    /// An offsets partition is compacted (live offsets written again, the
    /// log start moved past the older records) once this many records have
    /// been written since the last compaction and they outnumber the live
    /// offsets twice; a new coordinator's replay is bounded by it.
    pub offsets_compact_after_records: u64,
    /// Fault injection for tests, off (0) by default: after every Nth
    /// produce request has been appended, close the connection instead of
    /// answering, as if the response were lost, so clients must retry.
    pub fault_drop_produce_response_every: u64,
    /// Fault injection for tests, off (0) by default: a partition this
    /// broker takes waits this long between taking the write lease and
    /// recovering, as a slow recovery would (its state shows Recovering).
    pub fault_recovery_delay_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            max_request_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_inflight_per_connection: 64,
            auto_create_topics: true,
            default_partitions: 1,
            chunk_bytes: 4 << 20,
            chunk_linger_ms: 2,
            flush_when_idle: true,
            max_inflight_flushes: 4,
            chunk_put_timeout_ms: 10_000,
            storage_probe_interval_ms: 2_000,
            repair_interval_ms: 60_000,
            repair_max_bytes_per_sec: 0,
            gc_interval_ms: 6 * 3_600_000,
            segment_max_chunks: 256,
            gc_min_age_ms: 600_000,
            load_report_interval_ms: 5_000,
            read_hedge_ms: 100,
            cache_bytes: 512 << 20,
            retention_check_interval_ms: 30_000,
            checkpoint_interval_ms: 5_000,
            lease_ttl_ms: 10_000,
            topic_defaults: BTreeMap::new(),
            offsets_topic_partitions: 16,
            group_initial_rebalance_delay_ms: 3_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            group_consumer_session_timeout_ms: 45_000,
            offsets_retention_ms: 7 * 24 * 3_600_000,
            offsets_compact_after_records: 10_000,
            fault_drop_produce_response_every: 0,
            fault_recovery_delay_ms: 0,
        }
    }
}

impl BrokerConfig {
    pub fn chunk_linger(&self) -> Duration {
        Duration::from_millis(self.chunk_linger_ms)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// A topic's effective configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub max_message_bytes: usize,
    pub timestamp_type: TimestampType,
    pub cleanup_policy: String,
    /// Per-topic R and W (0: the pool's).
    pub replicas: usize,
    pub write_quorum: usize,
}

/// (name, Kafka default, documentation) of every topic config Floe honours.
pub const TOPIC_CONFIGS: &[(&str, &str, &str)] = &[
    (
        "retention.ms",
        "604800000",
        "Delete sealed segments whose newest record is older than this (-1: keep forever).",
    ),
    (
        "retention.bytes",
        "-1",
        "Delete the oldest sealed segments while the partition is larger than this (-1: no limit).",
    ),
    (
        "segment.bytes",
        "1073741824",
        "Seal the open segment once it holds this many bytes.",
    ),
    (
        "segment.ms",
        "604800000",
        "Seal the open segment once it is this old.",
    ),
    (
        "max.message.bytes",
        "1048588",
        "Largest record batch accepted.",
    ),
    (
        "message.timestamp.type",
        "CreateTime",
        "CreateTime keeps the producer's timestamps; LogAppendTime stamps batches on append.",
    ),
    ("cleanup.policy", "delete", "Only delete is supported."),
    (
        "floe.replicas",
        "0",
        "Storage targets each new segment of the topic is written to (R); 0: the pool's.",
    ),
    (
        "floe.write.quorum",
        "0",
        "Targets that must acknowledge a chunk (W); 0: the pool's (capped by R).",
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {name}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

impl TopicConfig {
    /// Resolve `overrides` (topic) over `defaults` (broker) over Kafka's
    /// defaults. Unknown names and bad values are errors.
    pub fn resolve(
        defaults: &BTreeMap<String, String>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| -> String {
            overrides
                .get(name)
                .or_else(|| defaults.get(name))
                .cloned()
                .unwrap_or_else(|| {
                    TOPIC_CONFIGS
                        .iter()
                        .find(|c| c.0 == name)
                        .map(|c| c.1.to_string())
                        .unwrap_or_default()
                })
        };
        for (k, v) in defaults.iter().chain(overrides.iter()) {
            if !TOPIC_CONFIGS.iter().any(|c| c.0 == k) {
                return Err(ConfigError {
                    name: k.clone(),
                    value: v.clone(),
                    reason: "unknown topic config".into(),
                });
            }
        }
        let int = |name: &str, min: i64| -> Result<i64, ConfigError> {
            let v = get(name);
            let n: i64 = v.trim().parse().map_err(|_| ConfigError {
                name: name.into(),
                value: v.clone(),
                reason: "not an integer".into(),
            })?;
            if n < min {
                return Err(ConfigError {
                    name: name.into(),
                    value: v,
                    reason: format!("must be at least {min}"),
                });
            }
            Ok(n)
        };
        let timestamp_type = match get("message.timestamp.type").as_str() {
            "CreateTime" => TimestampType::CreateTime,
            "LogAppendTime" => TimestampType::LogAppendTime,
            other => {
                return Err(ConfigError {
                    name: "message.timestamp.type".into(),
                    value: other.into(),
                    reason: "must be CreateTime or LogAppendTime".into(),
                })
            }
        };
        let cleanup_policy = get("cleanup.policy");
        if cleanup_policy != "delete" {
            return Err(ConfigError {
                name: "cleanup.policy".into(),
                value: cleanup_policy,
                reason: "only delete is supported".into(),
            });
        }
        let replicas = int("floe.replicas", 0)? as usize;
        let write_quorum = int("floe.write.quorum", 0)? as usize;
        if replicas > 0 && write_quorum > replicas {
            return Err(ConfigError {
                name: "floe.write.quorum".into(),
                value: write_quorum.to_string(),
                reason: format!("exceeds floe.replicas {replicas}"),
            });
        }
        Ok(Self {
            replicas,
            write_quorum,
            retention_ms: int("retention.ms", -1)?,
            retention_bytes: int("retention.bytes", -1)?,
            segment_bytes: int("segment.bytes", 14)? as u64,
            segment_ms: int("segment.ms", 1)?,
            max_message_bytes: int("max.message.bytes", 0)? as usize,
            timestamp_type,
            cleanup_policy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_defaults_and_overrides() {
        let none = BTreeMap::new();
        let c = TopicConfig::resolve(&none, &none).unwrap();
        assert_eq!(c.retention_ms, 604_800_000);
        assert_eq!(c.segment_bytes, 1 << 30);
        assert_eq!(c.max_message_bytes, 1_048_588);
        assert_eq!(c.timestamp_type, TimestampType::CreateTime);
        let mut o = BTreeMap::new();
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        o.insert("retention.bytes".to_string(), "1000".to_string());
        let c = TopicConfig::resolve(&none, &o).unwrap();
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(c.retention_bytes, 1000);
        o.insert("retention.ms".to_string(), "soon".to_string());
        assert_eq!(
            TopicConfig::resolve(&none, &o).unwrap_err().name,
            "retention.ms"
        );
        let mut u = BTreeMap::new();
        u.insert("no.such".to_string(), "1".to_string());
        assert!(TopicConfig::resolve(&none, &u).is_err());
    }

    #[test]
    fn per_topic_replication_is_validated() {
        let d = BTreeMap::new();
        let o = |r: &str, w: &str| {
            BTreeMap::from([
                ("floe.replicas".to_string(), r.to_string()),
                ("floe.write.quorum".to_string(), w.to_string()),
            ])
        };
        let c = TopicConfig::resolve(&d, &o("3", "2")).unwrap();
        assert_eq!((c.replicas, c.write_quorum), (3, 2));
        assert!(TopicConfig::resolve(&d, &o("1", "2")).is_err(), "W > R");
        assert!(TopicConfig::resolve(&d, &o("-1", "0")).is_err());
        let c = TopicConfig::resolve(&d, &BTreeMap::new()).unwrap();
        assert_eq!((c.replicas, c.write_quorum), (0, 0), "the pool's");
    }
}
