//! The process-wide read cache: verified chunk payloads, fixed-size blocks of
//! segment objects and parsed segment indexes, bounded by bytes (moka).
//! Data is evicted least recently used first: a log's newest bytes are the
//! ones its consumers read next. (moka's default, TinyLFU, admits a new
//! entry only when it was asked for more often than what it would evict:
//! once full, newly written chunks — asked for once — were not kept, so
//! tail reads and seals went to storage.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use moka::sync::Cache;

use crate::segment::SegmentIndex;

/// Size of the blocks segment objects are cached in.
pub const BLOCK_SIZE: u64 = 1 << 20;
const WHOLE: u64 = u64::MAX;

#[derive(Clone)]
pub struct BlockCache {
    data: Cache<(Arc<str>, u64), Bytes>,
    indexes: Cache<Arc<str>, Arc<SegmentIndex>>,
    hits: Arc<AtomicU64>,
    misses: Arc<AtomicU64>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.data.weighted_size())
            .finish()
    }
}

impl BlockCache {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            data: Cache::builder()
                .max_capacity(max_bytes)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .weigher(|_k: &(Arc<str>, u64), v: &Bytes| v.len().min(u32::MAX as usize) as u32)
                .build(),
            indexes: Cache::builder()
                .max_capacity((max_bytes / 16).max(1 << 20))
                .weigher(|_k: &Arc<str>, v: &Arc<SegmentIndex>| (v.entries() * 16 + 128) as u32)
                .build(),
            hits: Arc::new(AtomicU64::new(0)),
            misses: Arc::new(AtomicU64::new(0)),
        }
    }

    fn count(&self, hit: bool) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get_object(&self, key: &Arc<str>) -> Option<Bytes> {
        let r = self.data.get(&(key.clone(), WHOLE));
        self.count(r.is_some());
        r
    }

    pub fn put_object(&self, key: Arc<str>, value: Bytes) {
        self.data.insert((key, WHOLE), value);
    }

    pub fn get_block(&self, key: &Arc<str>, block: u64) -> Option<Bytes> {
        let r = self.data.get(&(key.clone(), block));
        self.count(r.is_some());
        r
    }

    pub fn put_block(&self, key: Arc<str>, block: u64, value: Bytes) {
        self.data.insert((key, block), value);
    }

    pub fn get_index(&self, key: &Arc<str>) -> Option<Arc<SegmentIndex>> {
        self.indexes.get(key)
    }

    pub fn put_index(&self, key: Arc<str>, index: Arc<SegmentIndex>) {
        self.indexes.insert(key, index);
    }

    pub fn invalidate_object(&self, key: &Arc<str>) {
        self.data.invalidate(&(key.clone(), WHOLE));
    }

    /// (hits, misses) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    pub fn weighted_bytes(&self) -> u64 {
        self.data.run_pending_tasks();
        self.data.weighted_size()
    }
}

impl SegmentIndex {
    pub(crate) fn entries(&self) -> usize {
        self.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full cache keeps what was written last: each new chunk pushes
    /// out the oldest, never itself.
    #[test]
    fn a_full_cache_keeps_the_newest_chunks() {
        let cache = BlockCache::new(1 << 20);
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        for i in 0..200 {
            let key: Arc<str> = Arc::from(format!("p/chunk-{i}").as_str());
            cache.put_object(key.clone(), chunk.clone());
            cache.data.run_pending_tasks();
            assert!(cache.get_object(&key).is_some(), "chunk {i} was not kept");
        }
        let oldest: Arc<str> = Arc::from("p/chunk-0");
        assert!(cache.get_object(&oldest).is_none(), "the oldest went");
        assert!(cache.weighted_bytes() <= 1 << 20);
    }
}
