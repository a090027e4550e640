//! Storage targets (one `object_store` each) and the pool they form, from
//! which every new segment draws a fresh, random replica set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::StorageError;
use crate::replica::ReplicaSet;

/// One place segments can be written to: a bucket, a directory, memory.
#[derive(Clone, Debug)]
pub struct StorageTarget {
    pub id: String,
    pub url: String,
    pub zone: Option<String>,
    pub weight: u32,
    pub store: Arc<dyn ObjectStore>,
    /// Healthy as last probed; shared by every clone of the target.
    pub up: Arc<std::sync::atomic::AtomicBool>,
    /// Drained by an operator: new segments avoid it and repairs move its
    /// replicas elsewhere. Shared by every clone of the target.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The identity marker the pool record says this target holds (empty:
    /// never marked, not checked). Shared by every clone of the target.
    pub marker: Arc<std::sync::RwLock<String>>,
    /// Found without its marker (or with another's): it lost its contents
    /// or is another target. Its "absent" answers are not trusted and new
    /// replica sets avoid it until its marker is back. Shared by clones.
    pub lost: Arc<std::sync::atomic::AtomicBool>,
}

/// Where a target keeps its identity marker.
pub const MARKER_KEY: &str = "_floe/target";

/// What [`StorageTarget::check_marker`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MarkerCheck {
    /// The marker the pool record names, or none is expected.
    Ours,
    /// No marker, or another one: the target is lost.
    Lost(String),
    /// No answer: nothing is known.
    Unknown(String),
}

/// The marker a target gets when it joins pool `cluster` (a new one each
/// time it is marked again: `incarnation`).
pub fn marker_for(cluster: &str, id: &str, incarnation: u64) -> String {
    format!("floe-target cluster={cluster} target={id} incarnation={incarnation}")
}

/// Whether a target at `url` gets an identity marker: not `memory://`,
/// whose store is each process's own (a marker written by the controller
/// would be missing from every other process's).
pub fn markable(url: &str) -> bool {
    !url.starts_with("memory:")
}

/// The incarnation a marker made by [`marker_for`] carries (0 if none).
pub fn marker_incarnation(marker: &str) -> u64 {
    marker
        .rsplit_once("incarnation=")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

impl StorageTarget {
    /// Open a target from its URL: `file:///abs/dir` (optionally
    /// `?fsync=true` to fsync every object before acknowledging it) or
    /// `memory://`.
    pub fn open(id: impl Into<String>, url: &str) -> Result<Self, StorageError> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| StorageError::Invalid(format!("storage URL {url:?}: {e}")))?;
        // Fault injection for benchmarks and tests: `floe_latency_p50_ms`,
        // `floe_latency_p99_ms`, `floe_error_rate`, `floe_lost_answer_rate`,
        // `floe_late_rate` on any target.
        let mut faults = crate::faulty::Faults::default();
        let mut inject = false;
        let mut rest = Vec::new();
        for (k, v) in parsed.query_pairs() {
            let num = |v: &str| {
                v.parse::<f64>()
                    .map_err(|_| StorageError::Invalid(format!("{url:?}: {k}={v} is not a number")))
            };
            match k.as_ref() {
                "floe_latency_p50_ms" => {
                    faults.p50 = std::time::Duration::from_secs_f64(num(&v)? / 1000.0);
                    inject = true;
                }
                "floe_latency_p99_ms" => {
                    faults.p99 = std::time::Duration::from_secs_f64(num(&v)? / 1000.0);
                    inject = true;
                }
                "floe_error_rate" => {
                    faults.error_rate = num(&v)?;
                    inject = true;
                }
                "floe_lost_answer_rate" => {
                    faults.lost_answer_rate = num(&v)?;
                    inject = true;
                }
                "floe_late_rate" => {
                    faults.late_rate = num(&v)?;
                    inject = true;
                }
                _ => rest.push((k.to_string(), v.to_string())),
            }
        }
        if inject {
            if rest.is_empty() {
                parsed.set_query(None);
            } else {
                parsed.query_pairs_mut().clear().extend_pairs(rest);
            }
        }
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "memory" => Arc::new(InMemory::new()),
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| StorageError::Invalid(format!("{url:?} is not an absolute file path")))?;
                let fsync = parsed
                    .query_pairs()
                    .any(|(k, v)| k == "fsync" && (v == "true" || v == "1"));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| StorageError::Invalid(format!("cannot create {}: {e}", dir.display())))?;
                Arc::new(
                    LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| StorageError::Invalid(format!("{url:?}: {e}")))?
                        .with_fsync(fsync)
                        .with_automatic_cleanup(true),
                )
            }
            "s3" => open_s3(&parsed, url)?,
            other => {
                return Err(StorageError::Invalid(format!(
                    "storage scheme {other:?} of {url:?} is not supported by this build (file://, memory://, s3://)"
                )))
            }
        };
        let id = id.into();
        let store: Arc<dyn ObjectStore> = if inject {
            let f = crate::faulty::FaultyStore::new(id.clone(), store, floe_common::random_u64());
            f.set_faults(faults);
            f
        } else {
            store
        };
        // Counted outside the faults: a request the store fails is billed.
        let store = crate::counted::Counted::wrap(id.clone(), store);
        Ok(Self {
            id,
            url: url.to_string(),
            zone: None,
            weight: 1,
            store,
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            draining: Default::default(),
            marker: Default::default(),
            lost: Default::default(),
        })
    }

    /// A target around an already opened store (tests, fault injection).
    /// A target as the pool's record in the metadata store names it,
    /// opened with this process's credentials.
    pub fn from_record(t: &floe_meta::schema::StorageTargetRecord) -> Result<Self, StorageError> {
        let mut target = Self::open(t.id.clone(), &t.url).map_err(|e| {
            StorageError::Invalid(format!("opening storage target {} ({}): {e}", t.id, t.url))
        })?;
        target.zone = t.zone.clone();
        target.weight = t.weight.max(1);
        target
            .draining
            .store(t.draining, std::sync::atomic::Ordering::SeqCst);
        *target.marker.write().unwrap() = t.marker.clone();
        Ok(target)
    }

    pub fn from_store(id: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        let id = id.into();
        Self {
            url: format!("store://{id}"),
            id,
            zone: None,
            weight: 1,
            store,
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            draining: Default::default(),
            marker: Default::default(),
            lost: Default::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The marker the pool record names (empty: not checked).
    pub fn expected_marker(&self) -> String {
        self.marker.read().unwrap().clone()
    }

    /// A metadata read of a probe key within `timeout` ("not found" is an
    /// answer): Ok if the target answers, else why not. A target with a
    /// marker also has it checked (see [`Self::check_marker`]).
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), String> {
        if !self.expected_marker().is_empty() {
            return match tokio::time::timeout(timeout, self.check_marker()).await {
                Ok(MarkerCheck::Ours) | Ok(MarkerCheck::Lost(_)) => Ok(()),
                Ok(MarkerCheck::Unknown(e)) => Err(format!("unreachable: {e}")),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
        }
        let key = object_store::path::Path::from("_floe/probe");
        match tokio::time::timeout(timeout, self.store.head(&key)).await {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(format!("unreachable: {e}")),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Read the target's identity marker and compare it with the one the
    /// pool record names; a target found without it is marked lost (and
    /// one found with it again, after an operator marked it anew, is
    /// trusted again). Without an expected marker: [`MarkerCheck::Ours`].
    pub async fn check_marker(&self) -> MarkerCheck {
        let expected = self.expected_marker();
        if expected.is_empty() {
            return MarkerCheck::Ours;
        }
        let key = object_store::path::Path::from(MARKER_KEY);
        let found = match self.store.get(&key).await {
            Ok(r) => match r.bytes().await {
                Ok(b) => Some(b),
                Err(e) => return MarkerCheck::Unknown(e.to_string()),
            },
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return MarkerCheck::Unknown(e.to_string()),
        };
        let check = match found {
            Some(b) if b.as_ref() == expected.as_bytes() => MarkerCheck::Ours,
            Some(b) => MarkerCheck::Lost(format!(
                "it holds another identity marker ({:?}, {expected:?} expected)",
                String::from_utf8_lossy(&b)
            )),
            None => MarkerCheck::Lost(format!(
                "its identity marker {MARKER_KEY} is gone (a new disk or a recreated bucket?)"
            )),
        };
        // Only if the record still names the same marker (it may have been
        // marked anew meanwhile).
        if self.expected_marker() == expected {
            match &check {
                MarkerCheck::Lost(why) => {
                    if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        tracing::error!(target_id = %self.id, url = %self.url, why = %why, "storage target lost its contents: its empty answers are not trusted and new segments avoid it until an operator marks it again (docs/storage.md, \"Lost targets\")");
                    }
                }
                MarkerCheck::Ours => {
                    if self.lost.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        tracing::info!(target_id = %self.id, "storage target holds its identity marker again; trusted again");
                    }
                }
                MarkerCheck::Unknown(_) => {}
            }
        }
        check
    }

    /// Whether this target's "not found" may be counted as the key being
    /// absent: not if it is lost or its marker cannot be confirmed now (a
    /// read of the marker, so a target emptied a moment ago is caught even
    /// before the next probe).
    pub async fn absence_trusted(&self) -> bool {
        if self.is_lost() {
            return false;
        }
        matches!(self.check_marker().await, MarkerCheck::Ours)
    }

    /// Write this target's marker (`marker`) when it joins the pool or is
    /// marked anew. Refused if it holds another marker, unless `replace`
    /// and that marker is an earlier incarnation of the same target of the
    /// same cluster (a lost target marked anew after its drain, a removed
    /// target added again).
    pub async fn write_marker(&self, marker: &str, replace: bool) -> Result<(), StorageError> {
        let key = object_store::path::Path::from(MARKER_KEY);
        match self.store.get(&key).await {
            Ok(r) => {
                let b = r.bytes().await.map_err(StorageError::from_object_store)?;
                if b.as_ref() == marker.as_bytes() {
                    return Ok(());
                }
                let theirs = String::from_utf8_lossy(&b).to_string();
                // Cluster and target named alike: an earlier incarnation
                // of this very target (lost, or removed and added again).
                let owner = |m: &str| -> Vec<String> {
                    m.split_whitespace()
                        .skip(1)
                        .take(2)
                        .map(String::from)
                        .collect()
                };
                let same_target = owner(marker).len() == 2 && owner(marker) == owner(&theirs);
                if !replace || !same_target {
                    return Err(StorageError::Invalid(format!(
                        "storage target {} ({}) holds another identity marker ({theirs:?}): it belongs to another cluster or pool; use an empty bucket or directory",
                        self.id, self.url
                    )));
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(StorageError::from_object_store(e)),
        }
        self.store
            .put(&key, object_store::PutPayload::from(marker.to_string()))
            .await
            .map_err(StorageError::from_object_store)?;
        Ok(())
    }

    /// Whether new replicas may go here: up, not draining and not lost.
    pub fn takes_new_replicas(&self) -> bool {
        self.is_up() && !self.is_draining() && !self.is_lost()
    }
}

/// `s3://bucket[/prefix][?option=value...]`: credentials and region come
/// from the environment as the AWS SDKs read them (AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_REGION, ...); the query may set any
/// object_store S3 option (`endpoint`, `region`, `allow_http`, ...), e.g. for
/// an S3-compatible server. Conditional creates use `If-None-Match: *`.
fn open_s3(parsed: &url::Url, url: &str) -> Result<Arc<dyn ObjectStore>, StorageError> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| StorageError::Invalid(format!("{url:?} names no bucket")))?;
    // Fail fast: a replica set works around a slow or dead target, so a
    // request should not spend minutes retrying one.
    let retry = object_store::RetryConfig {
        max_retries: 2,
        retry_timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let client = object_store::ClientOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(2))
        .with_timeout(std::time::Duration::from_secs(30));
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(retry)
        .with_client_options(client);
    for (k, v) in parsed.query_pairs() {
        let key = match k.as_ref() {
            "allow_http" => "aws_allow_http",
            other => other,
        };
        let key: AmazonS3ConfigKey = key
            .parse()
            .map_err(|e| StorageError::Invalid(format!("{url:?}: unknown S3 option {k:?}: {e}")))?;
        builder = builder.with_config(key, v.to_string());
    }
    let store = builder
        .build()
        .map_err(|e| StorageError::Invalid(format!("{url:?}: {e}")))?;
    let prefix = parsed.path().trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    })
}

/// WAL object indexes a pool keeps for recoveries (a few KB each).
const WAL_INDEXES_KEPT: usize = 4096;

/// All storage targets of the cluster, with the replication settings.
#[derive(Debug)]
pub struct StoragePool {
    /// Replaced whole when the pool record changes (targets added,
    /// drained, removed); a target kept across changes keeps its instance.
    targets: std::sync::RwLock<Arc<Vec<StorageTarget>>>,
    replicas: usize,
    write_quorum: usize,
    rng: Mutex<StdRng>,
    /// Probe interval and stop token once probes run (new targets get one).
    probes: Mutex<Option<(std::time::Duration, tokio_util::sync::CancellationToken)>>,
    /// Indexes of WAL data objects read by recoveries' scans, so that the
    /// partitions of one dead broker recovered together read each of its
    /// objects once, not once per partition (a data object at a key never
    /// changes: it is created once, copies alike).
    wal_indexes: Mutex<std::collections::HashMap<crate::wal::WalId, WalIndexCell>>,
}

/// One WAL object's index, read once by whichever scan comes first.
pub(crate) type WalIndexCell = Arc<tokio::sync::OnceCell<Arc<Vec<crate::wal::WalEntry>>>>;

impl StoragePool {
    /// The pool as recorded in the metadata store, opened with this
    /// process's credentials.
    pub fn from_record(
        record: &floe_meta::schema::StoragePoolRecord,
    ) -> Result<Self, StorageError> {
        let targets = record
            .targets
            .iter()
            .map(StorageTarget::from_record)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(
            targets,
            record.replicas as usize,
            record.write_quorum as usize,
        )
    }

    pub fn new(
        targets: Vec<StorageTarget>,
        replicas: usize,
        write_quorum: usize,
    ) -> Result<Self, StorageError> {
        Self::with_seed(targets, replicas, write_quorum, floe_common::random_u64())
    }

    /// A pool whose replica-set choices replay from `seed` (tests).
    pub fn with_seed(
        targets: Vec<StorageTarget>,
        replicas: usize,
        write_quorum: usize,
        seed: u64,
    ) -> Result<Self, StorageError> {
        if replicas == 0 || write_quorum == 0 {
            return Err(StorageError::Invalid(
                "replicas and write quorum must be at least 1".into(),
            ));
        }
        if write_quorum > replicas {
            return Err(StorageError::Invalid(format!(
                "write quorum {write_quorum} exceeds replicas {replicas}"
            )));
        }
        if replicas > targets.len() {
            return Err(StorageError::Invalid(format!(
                "{replicas} replicas need at least as many targets, the pool has {}",
                targets.len()
            )));
        }
        let mut ids = HashSet::new();
        for t in &targets {
            if !ids.insert(t.id.clone()) {
                return Err(StorageError::Invalid(format!(
                    "duplicate storage target id {:?}",
                    t.id
                )));
            }
        }
        Ok(Self {
            targets: std::sync::RwLock::new(Arc::new(targets)),
            replicas,
            write_quorum,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            probes: Mutex::new(None),
            wal_indexes: Mutex::new(Default::default()),
        })
    }

    /// The cell for WAL object `id`'s index (see `wal_indexes`).
    pub(crate) fn wal_index(&self, id: crate::wal::WalId) -> WalIndexCell {
        let mut kept = self.wal_indexes.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= WAL_INDEXES_KEPT && !kept.contains_key(&id) {
            // Recoveries are rare and short: starting over now and then
            // costs a few reads, and keeps the map small.
            kept.clear();
        }
        kept.entry(id).or_default().clone()
    }

    /// The targets now.
    pub fn targets(&self) -> Arc<Vec<StorageTarget>> {
        self.targets.read().unwrap().clone()
    }

    /// Apply a changed pool record: `wanted` lists every target with its
    /// draining flag. Targets already known keep their instance (and health)
    /// and take the new flag; new ones join (and are probed); the others
    /// leave (segments that still name them can no longer be opened, so
    /// the admin API removes only targets that hold nothing).
    pub fn update(self: &Arc<Self>, wanted: Vec<StorageTarget>) {
        let old = self.targets();
        let mut next = Vec::with_capacity(wanted.len());
        let mut added = Vec::new();
        for w in wanted {
            match old.iter().find(|t| t.id == w.id) {
                Some(t) => {
                    t.draining
                        .store(w.is_draining(), std::sync::atomic::Ordering::SeqCst);
                    let marker = w.expected_marker();
                    if *t.marker.read().unwrap() != marker {
                        *t.marker.write().unwrap() = marker;
                    }
                    next.push(t.clone());
                }
                None => {
                    tracing::info!(target_id = %w.id, url = %w.url, "storage target joined the pool");
                    added.push(w.clone());
                    next.push(w);
                }
            }
        }
        for t in old.iter().filter(|t| !next.iter().any(|n| n.id == t.id)) {
            tracing::info!(target_id = %t.id, "storage target left the pool");
        }
        *self.targets.write().unwrap() = Arc::new(next);
        let probes = self.probes.lock().unwrap().clone();
        if let Some((interval, stop)) = probes {
            for t in added {
                self.spawn_probe(t, interval, stop.clone());
            }
        }
    }

    /// A fresh replica set for a new segment: `replicas` distinct healthy
    /// targets drawn at random, weighted by target weight, spread over as
    /// many zones as the pool has. Falls back to unhealthy targets only if
    /// too few healthy ones remain (the write then fails over as usual).
    pub fn choose_replica_set(&self) -> ReplicaSet {
        self.choose_replica_set_avoiding(&[])
    }

    /// [`Self::choose_replica_set`] without the targets in `avoid` (those
    /// that just failed), unless the pool cannot do without them.
    pub fn choose_replica_set_avoiding(&self, avoid: &[String]) -> ReplicaSet {
        self.choose(avoid, None)
    }

    /// A fresh replica set with a topic's own R and W (0: the pool's),
    /// capped by the pool's size.
    pub fn choose_replica_set_for(
        &self,
        avoid: &[String],
        replicas: usize,
        write_quorum: usize,
    ) -> ReplicaSet {
        let r = if replicas == 0 {
            self.replicas
        } else {
            replicas.min(self.targets().len())
        };
        let w = if write_quorum == 0 {
            self.write_quorum.min(r)
        } else {
            write_quorum.min(r)
        };
        self.choose(avoid, Some((r, w.max(1))))
    }

    fn choose(&self, avoid: &[String], rw: Option<(usize, usize)>) -> ReplicaSet {
        let (replicas, write_quorum) = rw.unwrap_or((self.replicas, self.write_quorum));
        let mut rng = self.rng.lock().unwrap();
        let targets = self.targets();
        let usable = |t: &&StorageTarget| t.takes_new_replicas() && !avoid.contains(&t.id);
        let mut candidates: Vec<&StorageTarget> = targets.iter().filter(usable).collect();
        if candidates.len() < replicas {
            // Not enough healthy targets: take the others too, healthy
            // (then draining) first.
            let mut rest: Vec<&StorageTarget> = targets.iter().filter(|t| !usable(t)).collect();
            rest.sort_by_key(|t| (!t.is_up(), t.is_lost(), t.is_draining()));
            candidates.extend(rest);
        }
        let mut chosen: Vec<StorageTarget> = Vec::with_capacity(replicas);
        while chosen.len() < replicas && !candidates.is_empty() {
            // Prefer a zone the set does not have yet.
            let fresh_zone =
                |t: &&StorageTarget| t.zone.is_none() || !chosen.iter().any(|c| c.zone == t.zone);
            let pool: Vec<usize> = if candidates.iter().any(fresh_zone) {
                (0..candidates.len())
                    .filter(|i| fresh_zone(&candidates[*i]))
                    .collect()
            } else {
                (0..candidates.len()).collect()
            };
            let total: u64 = pool
                .iter()
                .map(|i| candidates[*i].weight.max(1) as u64)
                .sum();
            let mut pick = rng.random_range(0..total);
            let mut idx = pool[0];
            for i in &pool {
                let w = candidates[*i].weight.max(1) as u64;
                if pick < w {
                    idx = *i;
                    break;
                }
                pick -= w;
            }
            chosen.push(candidates.swap_remove(idx).clone());
        }
        ReplicaSet::new(chosen, write_quorum)
    }

    /// Probe every target every `interval` (a metadata read of a probe key;
    /// "not found" is an answer): two failures in a row mark it down, one
    /// answer marks it up. New replica sets avoid targets that are down.
    pub fn spawn_probes(
        self: &Arc<Self>,
        interval: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        *self.probes.lock().unwrap() = Some((interval, stop.clone()));
        for t in self.targets().iter() {
            self.spawn_probe(t.clone(), interval, stop.clone());
        }
    }

    fn spawn_probe(
        self: &Arc<Self>,
        t: StorageTarget,
        interval: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                // A target that left the pool is no longer probed.
                match pool.upgrade() {
                    Some(p) if p.targets().iter().any(|x| Arc::ptr_eq(&x.up, &t.up)) => {}
                    _ => return,
                }
                let answered = match t
                    .probe(interval.max(std::time::Duration::from_secs(1)))
                    .await
                {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(target_id = %t.id, error = %e, "storage probe failed");
                        false
                    }
                };
                if answered {
                    failures = 0;
                    if !t.is_up() {
                        tracing::info!(target_id = %t.id, "storage target is up again");
                    }
                    t.up.store(true, std::sync::atomic::Ordering::SeqCst);
                } else {
                    failures += 1;
                    if failures >= 2 && t.is_up() {
                        tracing::warn!(target_id = %t.id, "storage target is down; new segments avoid it");
                        t.up.store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
        });
    }

    /// A healthy target for a segment held by `set`, not already in it,
    /// preferring a zone the set lacks.
    pub fn replacement_for(&self, set: &[String]) -> Option<StorageTarget> {
        let targets = self.targets();
        let zones: Vec<Option<String>> = targets
            .iter()
            .filter(|t| set.contains(&t.id) && t.takes_new_replicas())
            .map(|t| t.zone.clone())
            .collect();
        let mut free: Vec<&StorageTarget> = targets
            .iter()
            .filter(|t| t.takes_new_replicas() && !set.contains(&t.id))
            .collect();
        free.sort_by_key(|t| {
            (
                t.zone.is_some() && zones.contains(&t.zone),
                std::cmp::Reverse(t.weight),
            )
        });
        let best = (*free.first()?).clone();
        Some(best)
    }

    /// Check that every target answers (a metadata read of a probe key);
    /// a clear error naming the first one that does not.
    pub async fn check_reachable(&self, timeout: std::time::Duration) -> Result<(), StorageError> {
        for t in self.targets().iter() {
            t.probe(timeout).await.map_err(|e| {
                StorageError::Invalid(format!("storage target {} ({}): {e}", t.id, t.url))
            })?;
        }
        Ok(())
    }

    /// Mark a target down (probe failures, operator) or up again.
    pub fn set_up(&self, id: &str, up: bool) {
        if let Some(t) = self.targets().iter().find(|t| t.id == id) {
            t.up.store(up, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The replica set recorded for an existing segment.
    /// The pool's default write quorum (what WAL objects are written with).
    pub fn write_quorum(&self) -> usize {
        self.write_quorum
    }

    pub fn replica_set(&self, ids: &[String]) -> Result<ReplicaSet, StorageError> {
        let mut chosen = Vec::with_capacity(ids.len());
        let targets = self.targets();
        for id in ids {
            let t = targets
                .iter()
                .find(|t| &t.id == id)
                .ok_or_else(|| StorageError::Invalid(format!("unknown storage target {id:?}")))?;
            chosen.push(t.clone());
        }
        let w = self.write_quorum.min(chosen.len()).max(1);
        Ok(ReplicaSet::new(chosen, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(id: &str) -> StorageTarget {
        StorageTarget::open(id, "memory://").unwrap()
    }

    #[test]
    fn rejects_invalid_pools() {
        assert!(
            StoragePool::new(vec![mem("a")], 2, 1).is_err(),
            "R > targets"
        );
        assert!(
            StoragePool::new(vec![mem("a"), mem("b")], 1, 2).is_err(),
            "W > R"
        );
        assert!(
            StoragePool::new(vec![mem("a"), mem("a")], 1, 1).is_err(),
            "duplicate ids"
        );
        assert!(StorageTarget::open("x", "ftp://nope").is_err());
        assert!(StorageTarget::open("x", "not a url").is_err());
    }

    #[test]
    fn replica_sets_are_distinct_and_spread() {
        let targets: Vec<_> = ["a", "b", "c", "d"].iter().map(|i| mem(i)).collect();
        let pool = StoragePool::with_seed(targets, 3, 2, 7).unwrap();
        let mut counts = std::collections::HashMap::new();
        for _ in 0..4000 {
            let set = pool.choose_replica_set();
            let ids = set.ids();
            assert_eq!(ids.len(), 3);
            let uniq: HashSet<_> = ids.iter().collect();
            assert_eq!(uniq.len(), 3, "a target never repeats within a set");
            for id in ids {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        // Each target is in 3/4 of the sets: 3000 ± a few percent.
        for (id, n) in counts {
            assert!((2850..=3150).contains(&n), "target {id} chosen {n} times");
        }
    }

    fn target(id: &str, zone: Option<&str>, weight: u32) -> StorageTarget {
        let mut t = mem(id);
        t.zone = zone.map(String::from);
        t.weight = weight;
        t
    }

    /// Over many seeds: a set never repeats a target, spans distinct zones
    /// when it can, and each target's share matches its weight.
    #[test]
    fn placement_is_weighted_zone_spread_and_never_repeats() {
        for seed in 0..20u64 {
            let targets = vec![
                target("a1", Some("a"), 1),
                target("a2", Some("a"), 3),
                target("b1", Some("b"), 2),
                target("b2", Some("b"), 2),
                target("c1", Some("c"), 4),
            ];
            let pool = StoragePool::with_seed(targets, 1, 1, seed).unwrap();
            let mut counts = std::collections::HashMap::new();
            let n = 6000;
            for _ in 0..n {
                *counts
                    .entry(pool.choose_replica_set().ids()[0].clone())
                    .or_insert(0) += 1;
            }
            // R=1: the share is the weight's share (of 12), within 2.5 points.
            for (id, w) in [
                ("a1", 1.0),
                ("a2", 3.0),
                ("b1", 2.0),
                ("b2", 2.0),
                ("c1", 4.0),
            ] {
                let share = counts[id] as f64 / n as f64;
                assert!(
                    (share - w / 12.0).abs() < 0.025,
                    "seed {seed}: {id} share {share:.3}, weight share {:.3}",
                    w / 12.0
                );
            }
            let targets = vec![
                target("a1", Some("a"), 1),
                target("a2", Some("a"), 3),
                target("b1", Some("b"), 2),
                target("b2", Some("b"), 2),
                target("c1", Some("c"), 4),
            ];
            let pool = StoragePool::with_seed(targets.clone(), 3, 2, seed).unwrap();
            for _ in 0..500 {
                let set = pool.choose_replica_set();
                let ids = set.ids();
                let zones: HashSet<_> = ids.iter().map(|i| &i[..1]).collect();
                assert_eq!(zones.len(), 3, "seed {seed}: {ids:?} spans every zone");
            }
            // A failed target is avoided; a down one too.
            let pool = StoragePool::with_seed(targets, 2, 2, seed).unwrap();
            pool.set_up("c1", false);
            for _ in 0..200 {
                let ids = pool.choose_replica_set_avoiding(&["a2".to_string()]).ids();
                assert!(
                    !ids.contains(&"c1".to_string()) && !ids.contains(&"a2".to_string()),
                    "{ids:?}"
                );
                let uniq: HashSet<_> = ids.iter().collect();
                assert_eq!(uniq.len(), 2);
            }
        }
    }

    #[test]
    fn a_topic_may_choose_its_own_r_and_w() {
        let targets: Vec<_> = ["a", "b", "c", "d"].iter().map(|i| mem(i)).collect();
        let pool = StoragePool::with_seed(targets, 3, 2, 1).unwrap();
        let set = pool.choose_replica_set_for(&[], 1, 1);
        assert_eq!((set.ids().len(), set.write_quorum()), (1, 1));
        let set = pool.choose_replica_set_for(&[], 4, 3);
        assert_eq!((set.ids().len(), set.write_quorum()), (4, 3));
        let set = pool.choose_replica_set_for(&[], 0, 0);
        assert_eq!(
            (set.ids().len(), set.write_quorum()),
            (3, 2),
            "0: the pool's"
        );
        let set = pool.choose_replica_set_for(&[], 9, 0);
        assert_eq!(set.ids().len(), 4, "capped by the pool");
    }
}
