//! The topic catalogue: topic configs (Kafka's names and defaults, how a
//! topic's overrides resolve over the process's defaults, validation), and
//! the topic admin operations on the metadata store — create, delete, alter
//! configs, add partitions — written once with one error type, for the
//! Kafka handlers, the admin API and the proxy's auto-create alike. The
//! controller assigns a new topic's partitions and clears a deleted one's.

use std::collections::BTreeMap;
use std::sync::Arc;

use floe_common::topic::valid_topic_name;
use floe_common::{SharedClock, Uuid};
use prost::Message;

use crate::schema::{TopicRecord, FORMAT};
use crate::{keys, Condition, MetaError, MetadataStore, Op, Revision, Txn, TxnOutcome};

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
    /// cleanup.policy as written (`delete`, `compact`, `compact,delete`).
    pub cleanup_policy: String,
    /// The policy includes `delete`: sealed segments go by retention.
    pub delete: bool,
    /// The policy includes `compact`: the latest record of each key is kept
    /// (records need keys, KIP-467).
    pub compact: bool,
    /// min.cleanable.dirty.ratio: compact once this share of the log is
    /// not compacted yet.
    pub min_cleanable_dirty_ratio: f64,
    /// min.compaction.lag.ms: records younger than this stay uncompacted.
    pub min_compaction_lag_ms: i64,
    /// max.compaction.lag.ms: records older than this are compacted
    /// whatever the dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// delete.retention.ms: how long a tombstone outlives its compaction.
    pub delete_retention_ms: i64,
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
    (
        "cleanup.policy",
        "delete",
        "delete: sealed segments go by retention.ms/retention.bytes; compact: the latest record of each key is kept; compact,delete: both.",
    ),
    (
        "min.cleanable.dirty.ratio",
        "0.5",
        "Compact a partition once this share of its log has not been compacted yet (0 to 1).",
    ),
    (
        "min.compaction.lag.ms",
        "0",
        "Records younger than this are not compacted.",
    ),
    (
        "max.compaction.lag.ms",
        "9223372036854775807",
        "Records older than this are compacted whatever the dirty ratio.",
    ),
    (
        "delete.retention.ms",
        "86400000",
        "How long a tombstone (a null value) is kept after its key was compacted.",
    ),
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
        let (mut delete, mut compact) = (false, false);
        for p in cleanup_policy.split(',').map(str::trim) {
            match p {
                "delete" => delete = true,
                "compact" => compact = true,
                _ => {
                    return Err(ConfigError {
                        name: "cleanup.policy".into(),
                        value: cleanup_policy.clone(),
                        reason: "must be delete, compact or compact,delete".into(),
                    })
                }
            }
        }
        let ratio_text = get("min.cleanable.dirty.ratio");
        let min_cleanable_dirty_ratio = ratio_text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| ConfigError {
                name: "min.cleanable.dirty.ratio".into(),
                value: ratio_text.clone(),
                reason: "must be a number from 0 to 1".into(),
            })?;
        let min_compaction_lag_ms = int("min.compaction.lag.ms", 0)?;
        let max_compaction_lag_ms = int("max.compaction.lag.ms", 1)?;
        if max_compaction_lag_ms < min_compaction_lag_ms {
            return Err(ConfigError {
                name: "max.compaction.lag.ms".into(),
                value: max_compaction_lag_ms.to_string(),
                reason: format!("is below min.compaction.lag.ms {min_compaction_lag_ms}"),
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
            delete,
            compact,
            min_cleanable_dirty_ratio,
            min_compaction_lag_ms,
            max_compaction_lag_ms,
            delete_retention_ms: int("delete.retention.ms", 0)?,
        })
    }
}

/// Kafka's offsets.topic.segment.bytes: 100 MiB.
pub const INTERNAL_SEGMENT_BYTES: u64 = 100 << 20;

/// The config overrides of the coordinators' internal topics (offsets and
/// transaction state): compacted changelogs, each key's latest record
/// kept until the coordinator writes its tombstone, never dropped by time
/// or size.
pub fn offsets_topic_configs(segment_bytes: u64) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cleanup.policy".to_string(), "compact".to_string()),
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "-1".to_string()),
        ("segment.bytes".to_string(), segment_bytes.to_string()),
    ])
}

/// The most partitions a topic may have.
pub const MAX_PARTITIONS: i32 = 100_000;

/// How many times an edit of a topic record is tried again when the record
/// changed between its read and its write.
const CAS_TRIES: usize = 5;

/// Why a topic admin operation did not happen. Each caller maps it to its
/// own answer: a Kafka error code, a gRPC status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopicError {
    #[error("{0}")]
    InvalidName(String),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidConfig(String),
    /// A request that cannot be honoured as asked (e.g. an unknown config
    /// operation).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    #[error("topic {0:?} does not exist")]
    Unknown(String),
    /// The record kept changing under the edit.
    #[error("topic {0:?} changed concurrently; retry")]
    Concurrent(String),
    /// The metadata store failed; `Indeterminate` inside means the change
    /// may have been made.
    #[error("{0}")]
    Meta(#[from] MetaError),
}

impl From<ConfigError> for TopicError {
    fn from(e: ConfigError) -> Self {
        TopicError::InvalidConfig(e.to_string())
    }
}

/// A topic record as stored, and the revision it was stored at.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTopic {
    pub record: TopicRecord,
    /// The revision of the write that made this record (0 for a
    /// validate-only answer, which writes nothing).
    pub revision: Revision,
}

impl StoredTopic {
    pub fn id(&self) -> Uuid {
        Uuid::from_slice(&self.record.id).unwrap_or_default()
    }
}

/// Topic admin on a metadata store.
#[derive(Clone)]
pub struct TopicAdmin {
    meta: Arc<dyn MetadataStore>,
    /// Topic config defaults of this process (the broker's
    /// `topic_defaults`): overrides are validated over them.
    defaults: BTreeMap<String, String>,
    clock: SharedClock,
}

impl TopicAdmin {
    pub fn new(
        meta: Arc<dyn MetadataStore>,
        defaults: BTreeMap<String, String>,
        clock: SharedClock,
    ) -> Self {
        Self {
            meta,
            defaults,
            clock,
        }
    }

    /// The defaults overrides are validated over.
    pub fn defaults(&self) -> &BTreeMap<String, String> {
        &self.defaults
    }

    /// A topic's effective config: its overrides over these defaults.
    pub fn resolve(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, ConfigError> {
        TopicConfig::resolve(&self.defaults, overrides)
    }

    /// The stored record of `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<StoredTopic>, TopicError> {
        let Some(kv) = self.meta.get(&keys::topic(name)).await? else {
            return Ok(None);
        };
        let record = TopicRecord::decode(kv.value)
            .map_err(|e| MetaError::Corrupt(format!("topic record of {name:?}: {e}")))?;
        Ok(Some(StoredTopic {
            record,
            revision: kv.mod_revision,
        }))
    }

    async fn existing(&self, name: &str) -> Result<StoredTopic, TopicError> {
        self.get(name)
            .await?
            .ok_or_else(|| TopicError::Unknown(name.to_string()))
    }

    /// Create topic `name` with `partitions` partitions and config
    /// `overrides` (validated whole); with `validate_only` nothing is
    /// written. The controller assigns its partitions.
    pub async fn create(
        &self,
        name: &str,
        partitions: i32,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<StoredTopic, TopicError> {
        valid_topic_name(name).map_err(TopicError::InvalidName)?;
        if partitions <= 0 || partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions(format!(
                "{partitions} partitions: must be between 1 and {MAX_PARTITIONS}"
            )));
        }
        self.resolve(&overrides)?;
        let record = TopicRecord {
            format: FORMAT,
            id: floe_common::new_uuid().as_bytes().to_vec(),
            name: name.to_string(),
            partitions,
            configs: overrides,
            created_ms: self.clock.now_ms(),
        };
        if validate_only {
            if self.get(name).await?.is_some() {
                return Err(TopicError::AlreadyExists(name.to_string()));
            }
            return Ok(StoredTopic {
                record,
                revision: 0,
            });
        }
        let txn = Txn::new()
            .when(Condition::Missing(keys::topic(name)))
            .then(Op::put(keys::topic(name), record.encode_to_vec()));
        match self.meta.txn(txn).await? {
            TxnOutcome::Committed { revision } => {
                tracing::info!(topic = name, partitions, "created topic");
                Ok(StoredTopic { record, revision })
            }
            TxnOutcome::Mismatch => Err(TopicError::AlreadyExists(name.to_string())),
        }
    }

    /// Delete topic `name`; the controller removes its partitions'
    /// metadata and objects. Returns the record deleted.
    pub async fn delete(&self, name: &str) -> Result<StoredTopic, TopicError> {
        for _ in 0..CAS_TRIES {
            let t = self.existing(name).await?;
            let txn = Txn::new()
                .when(Condition::ModRevision(keys::topic(name), t.revision))
                .then(Op::delete(keys::topic(name)));
            if let TxnOutcome::Committed { revision } = self.meta.txn(txn).await? {
                tracing::info!(topic = name, "deleted topic");
                return Ok(StoredTopic {
                    record: t.record,
                    revision,
                });
            }
        }
        Err(TopicError::Concurrent(name.to_string()))
    }

    /// Change the config overrides of `name` with `edit` (the result is
    /// validated whole, then written with a compare-and-swap; an edit that
    /// raced another is applied again to the newer record). Partitions pick
    /// the change up through their watch.
    pub async fn alter_configs(
        &self,
        name: &str,
        edit: impl Fn(&mut BTreeMap<String, String>) -> Result<(), TopicError>,
        validate_only: bool,
    ) -> Result<StoredTopic, TopicError> {
        self.edit(name, validate_only, |t| {
            edit(&mut t.configs)?;
            self.resolve(&t.configs)?;
            Ok(())
        })
        .await
    }

    /// Grow `name` to `count` partitions.
    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<StoredTopic, TopicError> {
        self.edit(name, validate_only, |t| {
            if count <= t.partitions {
                return Err(TopicError::InvalidPartitions(format!(
                    "topic {name:?} has {} partitions; the new count {count} must be larger",
                    t.partitions
                )));
            }
            if count > MAX_PARTITIONS {
                return Err(TopicError::InvalidPartitions(format!(
                    "{count} partitions is over the limit of {MAX_PARTITIONS}"
                )));
            }
            t.partitions = count;
            Ok(())
        })
        .await
    }

    async fn edit(
        &self,
        name: &str,
        validate_only: bool,
        edit: impl Fn(&mut TopicRecord) -> Result<(), TopicError>,
    ) -> Result<StoredTopic, TopicError> {
        for _ in 0..CAS_TRIES {
            let mut t = self.existing(name).await?;
            edit(&mut t.record)?;
            if validate_only {
                return Ok(StoredTopic {
                    record: t.record,
                    revision: 0,
                });
            }
            let txn = Txn::new()
                .when(Condition::ModRevision(keys::topic(name), t.revision))
                .then(Op::put(keys::topic(name), t.record.encode_to_vec()));
            if let TxnOutcome::Committed { revision } = self.meta.txn(txn).await? {
                tracing::info!(topic = name, partitions = t.record.partitions, configs = ?t.record.configs, "changed topic");
                return Ok(StoredTopic {
                    record: t.record,
                    revision,
                });
            }
        }
        Err(TopicError::Concurrent(name.to_string()))
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
    fn cleanup_policies_and_compaction_settings() {
        let d = BTreeMap::new();
        let o = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = TopicConfig::resolve(&d, &d).unwrap();
        assert!(c.delete && !c.compact);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.5);
        assert_eq!(c.delete_retention_ms, 86_400_000);
        assert_eq!(c.max_compaction_lag_ms, i64::MAX);
        let c = TopicConfig::resolve(&d, &o(&[("cleanup.policy", "compact")])).unwrap();
        assert!(!c.delete && c.compact);
        for both in ["compact,delete", "delete,compact", "delete, compact"] {
            let c = TopicConfig::resolve(&d, &o(&[("cleanup.policy", both)])).unwrap();
            assert!(c.delete && c.compact, "{both}");
        }
        let c = TopicConfig::resolve(
            &d,
            &o(&[
                ("min.cleanable.dirty.ratio", "0.1"),
                ("min.compaction.lag.ms", "1000"),
                ("max.compaction.lag.ms", "60000"),
                ("delete.retention.ms", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (
                c.min_cleanable_dirty_ratio,
                c.min_compaction_lag_ms,
                c.max_compaction_lag_ms,
                c.delete_retention_ms
            ),
            (0.1, 1000, 60_000, 0)
        );
        for (name, bad) in [
            ("cleanup.policy", "compactt"),
            ("cleanup.policy", ""),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("min.cleanable.dirty.ratio", "-0.1"),
            ("min.cleanable.dirty.ratio", "half"),
            ("delete.retention.ms", "-5"),
            ("min.compaction.lag.ms", "-1"),
        ] {
            let e = TopicConfig::resolve(&d, &o(&[(name, bad)])).unwrap_err();
            assert_eq!(e.name, name, "{name}={bad}");
        }
        let e = TopicConfig::resolve(
            &d,
            &o(&[
                ("min.compaction.lag.ms", "100"),
                ("max.compaction.lag.ms", "50"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.name, "max.compaction.lag.ms");
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

    async fn admin() -> (TopicAdmin, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::EmbeddedStore::open(dir.path().join("m.redb"))
            .await
            .unwrap();
        let defaults = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        (
            TopicAdmin::new(Arc::new(meta), defaults, Arc::new(floe_common::SystemClock)),
            dir,
        )
    }

    fn set(k: &str, v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(k.to_string(), v.to_string())])
    }

    #[tokio::test]
    async fn create_validates_then_writes_once() {
        let (a, _d) = admin().await;
        assert!(matches!(
            a.create("bad name", 1, BTreeMap::new(), false).await,
            Err(TopicError::InvalidName(_))
        ));
        for n in [0, -1, MAX_PARTITIONS + 1] {
            assert!(matches!(
                a.create("t", n, BTreeMap::new(), false).await,
                Err(TopicError::InvalidPartitions(_))
            ));
        }
        let bad = a.create("t", 1, set("retention.ms", "soon"), false).await;
        assert!(
            matches!(&bad, Err(TopicError::InvalidConfig(m)) if m.contains("retention.ms")),
            "{bad:?}"
        );
        // Validate-only writes nothing.
        let v = a
            .create("t", 3, set("retention.ms", "5"), true)
            .await
            .unwrap();
        assert_eq!((v.revision, v.record.partitions), (0, 3));
        assert_eq!(a.get("t").await.unwrap(), None);
        let t = a
            .create("t", 3, set("retention.ms", "5"), false)
            .await
            .unwrap();
        assert!(t.revision > 0);
        assert_eq!(a.get("t").await.unwrap().unwrap(), t);
        assert_eq!(
            a.create("t", 1, BTreeMap::new(), false).await,
            Err(TopicError::AlreadyExists("t".into()))
        );
        assert_eq!(
            a.create("t", 1, BTreeMap::new(), true).await,
            Err(TopicError::AlreadyExists("t".into()))
        );
    }

    #[tokio::test]
    async fn alter_partitions_and_delete_edit_the_stored_record() {
        let (a, _d) = admin().await;
        let t = a.create("t", 2, BTreeMap::new(), false).await.unwrap();
        let altered = a
            .alter_configs(
                "t",
                |m| {
                    m.insert("segment.ms".into(), "60000".into());
                    Ok(())
                },
                false,
            )
            .await
            .unwrap();
        assert!(altered.revision > t.revision);
        assert_eq!(altered.record.configs, set("segment.ms", "60000"));
        // The whole result is validated: W over R is refused.
        let r = a
            .alter_configs(
                "t",
                |m| {
                    m.insert("floe.replicas".into(), "1".into());
                    m.insert("floe.write.quorum".into(), "2".into());
                    Ok(())
                },
                false,
            )
            .await;
        assert!(matches!(r, Err(TopicError::InvalidConfig(_))), "{r:?}");
        assert_eq!(
            a.get("t").await.unwrap().unwrap().record.configs,
            set("segment.ms", "60000")
        );
        // An edit's own refusal comes back as it is.
        let r = a
            .alter_configs("t", |_| Err(TopicError::InvalidRequest("no".into())), false)
            .await;
        assert_eq!(r, Err(TopicError::InvalidRequest("no".into())));
        assert!(matches!(
            a.create_partitions("t", 2, false).await,
            Err(TopicError::InvalidPartitions(_))
        ));
        assert_eq!(a.create_partitions("t", 5, true).await.unwrap().revision, 0);
        assert_eq!(a.get("t").await.unwrap().unwrap().record.partitions, 2);
        assert_eq!(
            a.create_partitions("t", 5, false)
                .await
                .unwrap()
                .record
                .partitions,
            5
        );
        let gone = a.delete("t").await.unwrap();
        assert_eq!(gone.id(), t.id());
        assert_eq!(a.get("t").await.unwrap(), None);
        assert_eq!(a.delete("t").await, Err(TopicError::Unknown("t".into())));
        assert_eq!(
            a.create_partitions("t", 9, false).await,
            Err(TopicError::Unknown("t".into()))
        );
    }

    #[tokio::test]
    async fn concurrent_edits_both_land() {
        let (a, _d) = admin().await;
        a.create("t", 1, BTreeMap::new(), false).await.unwrap();
        let (x, y) = tokio::join!(
            a.alter_configs(
                "t",
                |m| {
                    m.insert("segment.ms".into(), "1000".into());
                    Ok(())
                },
                false
            ),
            a.alter_configs(
                "t",
                |m| {
                    m.insert("retention.bytes".into(), "10".into());
                    Ok(())
                },
                false
            ),
        );
        x.unwrap();
        y.unwrap();
        let c = a.get("t").await.unwrap().unwrap().record.configs;
        assert_eq!(c.len(), 2, "{c:?}");
    }
}
