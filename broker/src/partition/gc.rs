//! Garbage collection of one partition's storage, run by its owner: every
//! object under the partition's prefix, on every target of the pool, that
//! the owner's state does not refer to and that is older than
//! `gc_min_age_ms` at the moment the references were taken is deleted.
//! That collects what failed deletes leave behind (chunks after a seal,
//! segments dropped by retention, while a target refused writes), replicas
//! left on a target that was down while a repair moved them elsewhere,
//! fences of empty segments and segments abandoned by a recovery.
//!
//! Safe against concurrent writers: anything created after the cutoff
//! (a chunk of a new segment, a segment object being uploaded, a repair's
//! copy, anything a newer owner writes) is younger than the cutoff and
//! left alone, and the references are taken while the owner's lease is
//! valid; the sweep stops as soon as it is not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use floe_storage::StorageTarget;

use crate::partition::LeaseGuard;

/// What the owner refers to at one moment.
#[derive(Clone, Debug, Default)]
pub(crate) struct References {
    /// Chunk prefixes of segments not sealed yet (the open one and those
    /// being sealed): everything under them is live.
    pub open_prefixes: Vec<Path>,
    /// Sealed segment objects → the targets holding a replica of each.
    pub sealed: HashMap<Path, HashSet<String>>,
}

impl References {
    fn live(&self, target: &str, path: &Path) -> bool {
        self.open_prefixes.iter().any(|p| path.prefix_matches(p))
            || self.sealed.get(path).is_some_and(|on| on.contains(target))
    }
}

/// One sweep's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GcReport {
    pub listed: usize,
    pub deleted: usize,
    /// Unreferenced but younger than the cutoff: left for a later sweep.
    pub young: usize,
    /// Deletes or listings that failed (a target down): a later sweep.
    pub failed: usize,
}

/// Sweep `prefix` on every target: delete objects not in `refs` last
/// modified before `cutoff_ms` (Unix ms), while `lease` (if any) is valid.
pub(crate) async fn sweep(
    targets: &[StorageTarget],
    prefix: &Path,
    refs: &References,
    cutoff_ms: i64,
    lease: Option<Arc<LeaseGuard>>,
) -> GcReport {
    let mut report = GcReport::default();
    for t in targets {
        let mut listing = t.store.list(Some(prefix));
        let mut garbage = Vec::new();
        let mut failed = false;
        while let Some(o) = listing.next().await {
            match o {
                Ok(o) => {
                    report.listed += 1;
                    if refs.live(&t.id, &o.location) {
                        continue;
                    }
                    if o.last_modified.timestamp_millis() >= cutoff_ms {
                        report.young += 1;
                    } else {
                        garbage.push(o.location);
                    }
                }
                Err(e) => {
                    tracing::debug!(target_id = %t.id, %prefix, error = %e, "gc: listing failed");
                    failed = true;
                    break;
                }
            }
        }
        drop(listing);
        if failed {
            report.failed += 1;
            continue;
        }
        for path in garbage {
            if lease.as_ref().is_some_and(|l| !l.is_valid()) {
                return report;
            }
            match t.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::debug!(target_id = %t.id, %path, "gc: deleted");
                    report.deleted += 1;
                }
                Err(e) => {
                    tracing::debug!(target_id = %t.id, %path, error = %e, "gc: delete failed");
                    report.failed += 1;
                }
            }
        }
    }
    report
}

/// A sweep in the background, aborted when dropped (the writer stopped).
pub(crate) struct GcRun(pub tokio::task::JoinHandle<GcReport>);

impl Drop for GcRun {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutPayload;

    /// Unreferenced objects go, referenced ones stay, and nothing younger
    /// than the cutoff is touched.
    #[tokio::test]
    async fn only_unreferenced_objects_older_than_the_cutoff_are_deleted() {
        let targets: Vec<StorageTarget> = (0..3)
            .map(|i| StorageTarget::open(format!("t{i}"), "memory://").unwrap())
            .collect();
        let prefix = Path::from("topic/0");
        let open_chunk = Path::from("topic/0/00000000000000000100-3/00000000000000000100.chunk");
        let sealed = Path::from("topic/0/00000000000000000000-1.2.seg");
        let leftover_chunk =
            Path::from("topic/0/00000000000000000000-1/00000000000000000040.chunk");
        let empty_fence = Path::from("topic/0/00000000000000000090-2/00000000000000000090.chunk");
        let other_partition = Path::from("topic/1/00000000000000000000-1.2.seg");
        for t in &targets {
            for p in [
                &open_chunk,
                &sealed,
                &leftover_chunk,
                &empty_fence,
                &other_partition,
            ] {
                t.store.put(p, PutPayload::from_static(b"x")).await.unwrap();
            }
        }
        let refs = References {
            open_prefixes: vec![Path::from("topic/0/00000000000000000100-3")],
            // The sealed segment's replicas are t0 and t1: t2's copy was
            // left when a repair moved it.
            sealed: HashMap::from([(
                sealed.clone(),
                HashSet::from(["t0".to_string(), "t1".to_string()]),
            )]),
        };
        let now = chrono_now_ms();
        // Everything is younger than a cutoff an hour ago: nothing goes.
        let r = sweep(&targets, &prefix, &refs, now - 3_600_000, None).await;
        assert_eq!((r.listed, r.deleted, r.young), (12, 0, 7), "{r:?}");
        let r = sweep(&targets, &prefix, &refs, now + 1_000, None).await;
        assert_eq!((r.deleted, r.failed), (7, 0), "{r:?}");
        for (i, t) in targets.iter().enumerate() {
            let has = |p: &Path| {
                let t = t.clone();
                let p = p.clone();
                async move { t.store.head(&p).await.is_ok() }
            };
            assert!(has(&open_chunk).await);
            assert_eq!(has(&sealed).await, i < 2, "t{i}");
            assert!(!has(&leftover_chunk).await);
            assert!(!has(&empty_fence).await);
            assert!(
                has(&other_partition).await,
                "another partition is not touched"
            );
        }
    }

    fn chrono_now_ms() -> i64 {
        floe_common::wall_ms()
    }
}
