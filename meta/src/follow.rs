//! Following part of the metadata store, written once for every process
//! that keeps a picture of it (broker, proxy, controller, the binary's
//! storage-pool watch): one read of everything under the followed prefixes
//! at one revision, then their changes from the next revision on; when a
//! watch fails (compacted history, a lost connection, a stream that ends)
//! the whole read again, with backoff, and the watches resume after it.
//! Reads and changes reach the picture one at a time, and a change a later
//! read already covers is skipped, so the picture never goes back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{KeyValue, MetaError, MetadataStore, Revision, WatchEvent};

/// A picture kept up to date by a [`Follower`].
pub trait Follow: Send + Sync + 'static {
    /// The whole picture at `revision`: every key under the followed
    /// prefixes (replaces what was there).
    fn reset(&self, kvs: Vec<KeyValue>, revision: Revision);
    /// One change made after the last picture.
    fn apply(&self, event: WatchEvent);
}

/// The first wait before reading again after a failed watch or read.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reads while the store keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows `prefixes` of a metadata store into a [`Follow`].
pub struct Follower<F: Follow> {
    meta: Arc<dyn MetadataStore>,
    prefixes: Vec<Bytes>,
    /// The longest prefix all followed prefixes share: one range over it is
    /// a picture of one revision.
    root: Bytes,
    target: Arc<F>,
    /// The revision of the last picture; held while a picture or a change
    /// is applied, so they reach the target one at a time.
    loaded: tokio::sync::Mutex<Revision>,
}

impl<F: Follow> Follower<F> {
    /// Read the picture once (an error if that fails), then follow it on a
    /// task of its own until `shutdown`.
    pub async fn start(
        meta: Arc<dyn MetadataStore>,
        prefixes: Vec<Bytes>,
        target: Arc<F>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, MetaError> {
        if prefixes.is_empty() {
            return Err(MetaError::Invalid("nothing to follow".into()));
        }
        let root = common_prefix(&prefixes);
        let f = Arc::new(Self {
            meta,
            prefixes,
            root,
            target,
            loaded: tokio::sync::Mutex::new(0),
        });
        let rev = f.reload().await?;
        tokio::spawn(f.clone().run(rev, shutdown));
        Ok(f)
    }

    /// Read the whole picture now and hand it to the target (also what the
    /// follower does after a failed watch). Returns its revision.
    pub async fn reload(&self) -> Result<Revision, MetaError> {
        let mut loaded = self.loaded.lock().await;
        let (kvs, rev) = self.meta.range(&self.root).await?;
        let kvs = kvs
            .into_iter()
            .filter(|kv| self.prefixes.iter().any(|p| kv.key.starts_with(p)))
            .collect();
        self.target.reset(kvs, rev);
        *loaded = (*loaded).max(rev);
        Ok(rev)
    }

    async fn run(self: Arc<Self>, mut rev: Revision, shutdown: CancellationToken) {
        loop {
            match self.watch_from(rev + 1, &shutdown).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "metadata watch failed; reading again"),
            }
            let mut backoff = FIRST_BACKOFF;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match self.reload().await {
                    Ok(r) => {
                        rev = r;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading metadata failed; retrying");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    /// Apply changes from `rev` on until shutdown (`Ok`) or a watch fails.
    async fn watch_from(
        &self,
        rev: Revision,
        shutdown: &CancellationToken,
    ) -> Result<(), MetaError> {
        let mut watches = Vec::with_capacity(self.prefixes.len());
        for p in &self.prefixes {
            watches.push(self.meta.watch_prefix(p, Some(rev)).await?);
        }
        let mut events = futures::stream::select_all(watches);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ev = events.next() => ev,
            };
            let ev = match ev {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(e),
                None => return Err(MetaError::Unavailable("metadata watch ended".into())),
            };
            let loaded = self.loaded.lock().await;
            // A change a later picture already covers must not roll it back.
            if ev.revision > *loaded {
                self.target.apply(ev);
            }
        }
    }
}

fn common_prefix(prefixes: &[Bytes]) -> Bytes {
    let first = &prefixes[0];
    let mut n = first.len();
    for p in &prefixes[1..] {
        n = n.min(
            first
                .iter()
                .zip(p.iter())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first.slice(..n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EmbeddedStore, Op, Txn, WatchEventKind};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A picture of keys to values, with a count of resets.
    #[derive(Default)]
    struct Picture {
        keys: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
        resets: Mutex<Vec<Revision>>,
        changed: tokio::sync::Notify,
    }

    impl Follow for Picture {
        fn reset(&self, kvs: Vec<KeyValue>, revision: Revision) {
            let mut keys = self.keys.lock().unwrap();
            keys.clear();
            for kv in kvs {
                keys.insert(kv.key.to_vec(), kv.value.to_vec());
            }
            self.resets.lock().unwrap().push(revision);
            self.changed.notify_waiters();
        }
        fn apply(&self, event: WatchEvent) {
            let mut keys = self.keys.lock().unwrap();
            match event.kind {
                WatchEventKind::Put(kv) => {
                    keys.insert(kv.key.to_vec(), kv.value.to_vec());
                }
                WatchEventKind::Delete(k) => {
                    keys.remove(&k.to_vec());
                }
            }
            self.changed.notify_waiters();
        }
    }

    impl Picture {
        async fn wait_for(&self, want: &[(&str, &str)]) {
            let want: BTreeMap<Vec<u8>, Vec<u8>> = want
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    let changed = self.changed.notified();
                    if *self.keys.lock().unwrap() == want {
                        return;
                    }
                    changed.await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("picture {:?}, wanted {want:?}", self.keys.lock().unwrap()));
        }
    }

    async fn put(meta: &EmbeddedStore, k: &str, v: &str) {
        meta.txn(Txn::new().then(Op::put(Bytes::from(k.to_string()), v.as_bytes().to_vec())))
            .await
            .unwrap();
    }

    #[test]
    fn the_common_prefix_of_the_followed_prefixes_is_read_once() {
        let p = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            common_prefix(&[p("/floe/topics/"), p("/floe/brokers/")]),
            p("/floe/")
        );
        assert_eq!(common_prefix(&[p("/floe/storage")]), p("/floe/storage"));
        assert_eq!(common_prefix(&[p("/a/b"), p("/a/bc"), p("/a/")]), p("/a/"));
    }

    #[tokio::test]
    async fn a_follower_reads_the_picture_then_follows_only_its_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(
            EmbeddedStore::open(dir.path().join("m.redb"))
                .await
                .unwrap(),
        );
        put(&meta, "/x/a/1", "one").await;
        put(&meta, "/x/b/1", "b-one").await;
        put(&meta, "/x/c/1", "not followed").await;
        let picture = Arc::new(Picture::default());
        let stop = CancellationToken::new();
        let f = Follower::start(
            meta.clone(),
            vec![Bytes::from_static(b"/x/a/"), Bytes::from_static(b"/x/b/")],
            picture.clone(),
            stop.clone(),
        )
        .await
        .unwrap();
        // The first picture is there when `start` returns.
        assert_eq!(
            picture.keys.lock().unwrap().len(),
            2,
            "{:?}",
            picture.keys.lock().unwrap()
        );
        put(&meta, "/x/a/2", "two").await;
        put(&meta, "/x/c/2", "still not followed").await;
        meta.txn(Txn::new().then(Op::Delete(Bytes::from_static(b"/x/b/1"))))
            .await
            .unwrap();
        picture
            .wait_for(&[("/x/a/1", "one"), ("/x/a/2", "two")])
            .await;
        // A reload replaces the picture and changes go on after it.
        let rev = f.reload().await.unwrap();
        assert_eq!(picture.resets.lock().unwrap().last(), Some(&rev));
        put(&meta, "/x/b/2", "b-two").await;
        picture
            .wait_for(&[("/x/a/1", "one"), ("/x/a/2", "two"), ("/x/b/2", "b-two")])
            .await;
        stop.cancel();
    }
}
