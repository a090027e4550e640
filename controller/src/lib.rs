//! The controller: keeps every partition of every topic assigned to a live
//! broker, bumping the partition epoch whenever ownership must change (a new
//! partition, a dead or restarted broker), and removes deleted topics'
//! metadata and data. Several controllers may run; the one holding the
//! election key acts, and every write it makes is conditional on still
//! holding it. Moves: on a broker joining, counts are evened out; a single
//! partition can be moved on request (`move_partition`); a drained broker
//! (`/floe/drained/{id}`) is given no partition and its own move off. The
//! controller also serves the admin API (`admin`: gRPC, what floectl
//! speaks), the web console over it (`console`) and its HTTP endpoint.

pub mod admin;
pub mod assignment;
pub mod console;
pub mod drain;
pub mod metrics;
pub mod operations;
pub mod rebalance;
pub mod wal_gc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use floe_common::{PartitionId, Uuid};
use floe_meta::schema::{AssignmentRecord, BrokerRecord, TopicRecord, FORMAT};
use floe_meta::{keys, Condition, Follow, Follower, MetaError, MetadataStore, Op, Txn};
use floe_storage::StoragePool;
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use prost::Message;
use tokio_util::sync::CancellationToken;

use assignment::{plan, Current, LiveBroker};

/// How soon a pass that held balancing moves back looks again.
const RECHECK: Duration = Duration::from_millis(250);

pub struct Controller {
    meta: Arc<dyn MetadataStore>,
    pool: Arc<StoragePool>,
    /// (election key, our value): every write requires it to be unchanged.
    leadership: Option<(Bytes, Bytes)>,
    /// Topics whose partitions' keys were already removed.
    deleted: std::sync::Mutex<std::collections::HashSet<Uuid>>,
    /// Broker sessions seen live at the last reconcile (None before the first).
    seen: std::sync::Mutex<Option<std::collections::HashSet<(i32, i64)>>>,
    /// A broker joined; balance once nothing else needs assigning.
    balance_due: std::sync::atomic::AtomicBool,
    /// Whether a joining broker triggers balancing (else: `floectl
    /// rebalance`).
    balance_on_join: std::sync::atomic::AtomicBool,
    /// The last pass held moves back: reconcile again soon.
    recheck: std::sync::atomic::AtomicBool,
    /// When each live broker session was first seen.
    joined: std::sync::Mutex<HashMap<(i32, i64), tokio::time::Instant>>,
    /// How long a broker session must have been live before balancing
    /// gives it partitions (milliseconds).
    balance_settle_ms: std::sync::atomic::AtomicU64,
}

/// Wakes the reconcile loop on any change it follows (a reconcile pass
/// reads everything it needs itself).
#[derive(Default)]
struct Changes(tokio::sync::Notify);

impl Follow for Changes {
    fn reset(&self, _kvs: Vec<floe_meta::KeyValue>, _revision: i64) {
        self.0.notify_one();
    }

    fn apply(&self, _event: floe_meta::WatchEvent) {
        self.0.notify_one();
    }
}

/// The default of `Controller::set_balance_settle`.
pub const DEFAULT_BALANCE_SETTLE: Duration = Duration::from_secs(3);

/// Whether every broker session in `joined` has been live for `settle` at
/// `now`: balancing waits until then, so a broker that has just restarted
/// or woken is not handed partitions while the partitions it lost are
/// still being taken over and its clients' connections still carry what
/// was held for it.
fn settled(
    joined: &HashMap<(i32, i64), tokio::time::Instant>,
    now: tokio::time::Instant,
    settle: Duration,
) -> bool {
    joined.values().all(|t| now.duration_since(*t) >= settle)
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("no such partition")]
    UnknownPartition,
    #[error("broker {0} is not alive")]
    UnknownBroker(i32),
    #[error("the assignment changed concurrently or this controller no longer leads; retry")]
    Conflict,
    #[error(transparent)]
    Meta(#[from] MetaError),
}

impl Controller {
    /// A controller that acts unconditionally (the only one: standalone).
    pub fn new(meta: Arc<dyn MetadataStore>, pool: Arc<StoragePool>) -> Arc<Self> {
        Self::build(meta, pool, None)
    }

    /// A controller that leads while `key` holds `value` (see
    /// `floe_meta::election`): a deposed leader's writes fail.
    pub fn leading(
        meta: Arc<dyn MetadataStore>,
        pool: Arc<StoragePool>,
        key: Bytes,
        value: Bytes,
    ) -> Arc<Self> {
        Self::build(meta, pool, Some((key, value)))
    }

    fn build(
        meta: Arc<dyn MetadataStore>,
        pool: Arc<StoragePool>,
        leadership: Option<(Bytes, Bytes)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            meta,
            pool,
            leadership,
            deleted: Default::default(),
            seen: Default::default(),
            balance_due: Default::default(),
            balance_on_join: std::sync::atomic::AtomicBool::new(true),
            recheck: Default::default(),
            joined: Default::default(),
            balance_settle_ms: std::sync::atomic::AtomicU64::new(
                DEFAULT_BALANCE_SETTLE.as_millis() as u64,
            ),
        })
    }

    /// How long a broker that joined (started, restarted, or rejoined
    /// after its lease lapsed) must have been live before balancing moves
    /// partitions to it. Orphaned partitions are given to it at once.
    pub fn set_balance_settle(&self, settle: Duration) {
        self.balance_settle_ms.store(
            settle.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Whether brokers that join take their share at once (default) or
    /// wait for an operator's rebalance.
    pub fn set_balance_on_join(&self, on: bool) {
        self.balance_on_join
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn guarded(&self, txn: Txn) -> Txn {
        match &self.leadership {
            Some((k, v)) => txn.when(Condition::ValueEquals(k.clone(), v.clone())),
            None => txn,
        }
    }

    /// Move partition `p` to broker `broker` (a planned move: the old owner
    /// releases, the new one acquires; no data is copied). Returns the new
    /// epoch.
    pub async fn move_partition(&self, p: PartitionId, broker: i32) -> Result<i32, MoveError> {
        let Some(bkv) = self.meta.get(&keys::broker(broker)).await? else {
            return Err(MoveError::UnknownBroker(broker));
        };
        let key = keys::assignment(p);
        let Some(kv) = self.meta.get(&key).await? else {
            return Err(MoveError::UnknownPartition);
        };
        let a =
            AssignmentRecord::decode(kv.value).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        if a.broker_id == broker && a.broker_session == bkv.create_revision {
            return Ok(a.epoch);
        }
        let record = AssignmentRecord {
            format: FORMAT,
            broker_id: broker,
            epoch: a.epoch + 1,
            broker_session: bkv.create_revision,
        };
        let txn = self.guarded(
            Txn::new()
                .when(Condition::ModRevision(key.clone(), kv.mod_revision))
                .when(Condition::ModRevision(
                    keys::broker(broker),
                    bkv.mod_revision,
                ))
                .then(Op::put(key, record.encode_to_vec())),
        );
        if self.meta.txn(txn).await?.committed() {
            crate::metrics::metrics()
                .assignments
                .get_or_create(&crate::metrics::KindLabel { kind: "move" })
                .inc();
            tracing::info!(partition = %p, from = a.broker_id, to = broker, epoch = record.epoch, "moved partition");
            Ok(record.epoch)
        } else {
            Err(MoveError::Conflict)
        }
    }

    /// Reconcile on every change of topics, brokers or drains until
    /// cancelled (and every 10 s, and shortly after a pass that held moves
    /// back).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) -> Result<(), MetaError> {
        let changes = Arc::new(Changes::default());
        Follower::start(
            self.meta.clone(),
            vec![
                keys::topics_prefix(),
                keys::brokers_prefix(),
                keys::drained_prefix(),
                keys::successors_prefix(),
            ],
            changes.clone(),
            cancel.clone(),
        )
        .await?;
        let mut resync = tokio::time::interval(Duration::from_secs(10));
        resync.tick().await;
        loop {
            let recheck = self.recheck.load(std::sync::atomic::Ordering::SeqCst);
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(RECHECK), if recheck => {}
                // The first picture notifies too: the first pass runs at once.
                _ = changes.0.notified() => {}
                _ = resync.tick() => {}
            }
            let m = crate::metrics::metrics();
            let started = tokio::time::Instant::now();
            let r = self.reconcile().await;
            m.reconciles.inc();
            m.reconcile_duration
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = r {
                m.reconcile_errors.inc();
                tracing::warn!(error = %e, "reconcile failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// One pass: assign what needs an owner, clean up deleted topics.
    pub async fn reconcile(&self) -> Result<(), MetaError> {
        let (topic_kvs, _) = self.meta.range(&keys::topics_prefix()).await?;
        let (broker_kvs, _) = self.meta.range(&keys::brokers_prefix()).await?;
        let (partition_kvs, _) = self.meta.range(&keys::partitions_prefix()).await?;
        let (drained_kvs, _) = self.meta.range(&keys::drained_prefix()).await?;
        let (successor_kvs, _) = self.meta.range(&keys::successors_prefix()).await?;
        // Brokers restarted in place whose earlier process still holds the
        // registration: that session gets no more partitions by balancing.
        let replaced: std::collections::HashSet<i32> = successor_kvs
            .iter()
            .filter_map(|kv| keys::parse_successor(&kv.key))
            .collect();
        // Drained brokers take no partitions: theirs move to the others.
        let drained: std::collections::HashSet<i32> = drained_kvs
            .iter()
            .filter_map(|kv| keys::parse_drained(&kv.key))
            .collect();
        let mut live = Vec::new();
        for kv in broker_kvs {
            let r =
                BrokerRecord::decode(kv.value).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            if drained.contains(&r.broker_id) {
                continue;
            }
            live.push(LiveBroker {
                id: r.broker_id,
                session: kv.create_revision,
            });
        }
        let mut topic_ids = std::collections::HashSet::new();
        let mut partitions = Vec::new();
        for kv in topic_kvs {
            let t = TopicRecord::decode(kv.value).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            let Ok(id) = Uuid::from_slice(&t.id) else {
                continue;
            };
            topic_ids.insert(id);
            partitions.extend((0..t.partitions).map(|p| PartitionId::new(id, p)));
        }
        let mut current = HashMap::new();
        let mut orphan_topics = std::collections::HashSet::new();
        // The epoch of each partition's last checkpoint: its owner saves one
        // when recovery ends, so a partition is written again by its current
        // owner once that epoch reaches the assignment's.
        let mut checkpointed: HashMap<PartitionId, i32> = HashMap::new();
        for kv in &partition_kvs {
            if let Some(p) = keys::parse_checkpoint(&kv.key) {
                if let Ok(c) = floe_meta::schema::CheckpointRecord::decode(kv.value.clone()) {
                    checkpointed.insert(p, c.epoch);
                }
            }
        }
        for kv in &partition_kvs {
            if let Some(p) = keys::parse_assignment(&kv.key) {
                let a = AssignmentRecord::decode(kv.value.clone())
                    .map_err(|e| MetaError::Corrupt(e.to_string()))?;
                current.insert(
                    p,
                    Current {
                        broker: a.broker_id,
                        epoch: a.epoch,
                        session: a.broker_session,
                        revision: kv.mod_revision,
                    },
                );
                if !topic_ids.contains(&p.topic_id) {
                    orphan_topics.insert(p.topic_id);
                }
            }
        }
        let mut changes = plan(&partitions, &current, &live);
        // Brokers that joined since the last pass take their share.
        let now: std::collections::HashSet<(i32, i64)> =
            live.iter().map(|b| (b.id, b.session)).collect();
        let balance_due = {
            let mut seen = self.seen.lock().unwrap();
            if seen
                .as_ref()
                .is_some_and(|s| now.iter().any(|b| !s.contains(b)))
            {
                self.balance_due
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            *seen = Some(now.clone());
            self.balance_due.load(std::sync::atomic::Ordering::SeqCst)
        };
        let settled = {
            let at = tokio::time::Instant::now();
            let mut joined = self.joined.lock().unwrap();
            joined.retain(|s, _| now.contains(s));
            for s in &now {
                joined.entry(*s).or_insert(at);
            }
            let settle = Duration::from_millis(
                self.balance_settle_ms
                    .load(std::sync::atomic::Ordering::SeqCst),
            );
            settled(&joined, at, settle) && !live.iter().any(|b| replaced.contains(&b.id))
        };
        // Once everything has an owner, even out the counts.
        let balance_due = balance_due
            && self
                .balance_on_join
                .load(std::sync::atomic::Ordering::SeqCst);
        self.recheck
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let mut kind = "assign";
        if changes.is_empty() && balance_due && !settled {
            // A broker joined moments ago: look again shortly.
            self.recheck
                .store(true, std::sync::atomic::Ordering::SeqCst);
        } else if changes.is_empty() && balance_due {
            let writing: std::collections::HashSet<PartitionId> = current
                .iter()
                .filter(|(p, c)| checkpointed.get(p).is_some_and(|e| *e >= c.epoch))
                .map(|(p, _)| *p)
                .collect();
            let (balanced, held) = assignment::balance(&partitions, &current, &live, &writing);
            changes = balanced;
            kind = "balance";
            // Moves held back for partitions still recovering: look again
            // shortly (nothing we watch changes when a recovery ends).
            self.balance_due
                .store(held, std::sync::atomic::Ordering::SeqCst);
            self.recheck
                .store(held, std::sync::atomic::Ordering::SeqCst);
        }
        for change in changes {
            let record = AssignmentRecord {
                format: FORMAT,
                broker_id: change.broker,
                epoch: change.epoch,
                broker_session: change.session,
            };
            let key = keys::assignment(change.partition);
            let cond = match current.get(&change.partition) {
                Some(c) => Condition::ModRevision(key.clone(), c.revision),
                None => Condition::Missing(key.clone()),
            };
            let txn = self.guarded(
                Txn::new()
                    .when(cond)
                    .then(Op::put(key, record.encode_to_vec())),
            );
            if self.meta.txn(txn).await?.committed() {
                crate::metrics::metrics()
                    .assignments
                    .get_or_create(&crate::metrics::KindLabel { kind })
                    .inc();
                tracing::info!(partition = %change.partition, broker = change.broker, epoch = change.epoch, "assigned");
            }
        }
        for topic in orphan_topics {
            self.remove_topic_data(topic).await?;
        }
        Ok(())
    }

    /// A deleted topic: drop its partitions' metadata now (owners see their
    /// assignment vanish and stop), and its objects shortly after.
    async fn remove_topic_data(&self, topic: Uuid) -> Result<(), MetaError> {
        self.meta
            .txn(
                self.guarded(
                    Txn::new().then(Op::DeletePrefix(keys::topic_partitions_prefix(topic))),
                ),
            )
            .await?;
        if !self.deleted.lock().unwrap().insert(topic) {
            return Ok(());
        }
        tracing::info!(topic = %topic.simple(), "deleted topic metadata; deleting its objects");
        let targets = self.pool.targets().to_vec();
        tokio::spawn(async move {
            // Let owners finish releasing before the objects go.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let prefix = Path::from(topic.simple().to_string());
            for t in targets {
                let listed: Vec<_> = t.store.list(Some(&prefix)).collect().await;
                for o in listed.into_iter().flatten() {
                    let _ = t.store.delete(&o.location).await;
                }
            }
        });
        Ok(())
    }
}

/// Ensure the cluster id exists and return it.
pub async fn ensure_cluster_id(meta: &dyn MetadataStore, now_ms: i64) -> Result<String, MetaError> {
    if let Some(kv) = meta.get(&keys::cluster()).await? {
        let r = floe_meta::schema::ClusterRecord::decode(kv.value)
            .map_err(|e| MetaError::Corrupt(e.to_string()))?;
        return Ok(r.cluster_id);
    }
    let id = base64_id(floe_common::new_uuid());
    let r = floe_meta::schema::ClusterRecord {
        format: FORMAT,
        cluster_id: id.clone(),
        created_ms: now_ms,
    };
    let txn = Txn::new()
        .when(Condition::Missing(keys::cluster()))
        .then(Op::put(keys::cluster(), Bytes::from(r.encode_to_vec())));
    meta.txn(txn).await?;
    let kv = meta
        .get(&keys::cluster())
        .await?
        .ok_or_else(|| MetaError::Corrupt("cluster id vanished".into()))?;
    Ok(floe_meta::schema::ClusterRecord::decode(kv.value)
        .map_err(|e| MetaError::Corrupt(e.to_string()))?
        .cluster_id)
}

/// Kafka-style cluster id: URL-safe base64 of 16 random bytes, 22 chars.
fn base64_id(id: Uuid) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let v = id.as_u128();
    (0..22)
        .map(|i| A[((v >> (i * 6)) & 63) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn balancing_waits_until_every_session_has_been_live_for_the_settle_time() {
        let t0 = Instant::now();
        let mut joined = HashMap::new();
        joined.insert((1, 10), t0);
        joined.insert((2, 20), t0);
        let settle = Duration::from_secs(3);
        assert!(settled(&joined, t0 + settle, settle), "both old enough");
        // Broker 3 rejoins (a new session) 2 s later.
        joined.insert((3, 30), t0 + Duration::from_secs(2));
        assert!(
            !settled(&joined, t0 + settle, settle),
            "broker 3 is 1 s old"
        );
        assert!(!settled(&joined, t0 + Duration::from_millis(4_999), settle));
        assert!(settled(&joined, t0 + Duration::from_secs(5), settle));
        // No settle time: balance at once.
        assert!(settled(
            &joined,
            t0 + Duration::from_secs(2),
            Duration::ZERO
        ));
    }
}
