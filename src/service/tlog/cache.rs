//! Tiles of the tenants' trees recently read for proofs, kept for the whole process.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::merkle::Hash;

/// Tiles most recently read for proofs, shared by every request of the process: a tile's
/// first hashes never change once they exist (the log only grows), so a cached prefix stays
/// true. Holds at most [`TileCache::TILES`] tiles (8 KiB each when full).
pub struct TileCache(Mutex<LruCache<TileKey, Arc<Vec<Hash>>>>);

/// A tile of a tenant's tree: tenant, tile level, index.
pub(super) type TileKey = (String, u32, u64);

impl TileCache {
    const TILES: usize = 4096;

    pub fn new() -> Self {
        let capacity = NonZeroUsize::new(Self::TILES).unwrap_or(NonZeroUsize::MIN);
        TileCache(Mutex::new(LruCache::new(capacity)))
    }

    pub(super) fn get(&self, key: &TileKey) -> Option<Arc<Vec<Hash>>> {
        self.0.lock().ok()?.get(key).cloned()
    }

    /// Keeps `hashes` unless a longer prefix of the same tile is kept already.
    pub(super) fn put(&self, key: TileKey, hashes: &[Hash]) {
        if let Ok(mut cache) = self.0.lock()
            && cache
                .peek(&key)
                .is_none_or(|kept| kept.len() < hashes.len())
        {
            cache.put(key, Arc::new(hashes.to_vec()));
        }
    }
}

impl Default for TileCache {
    fn default() -> Self {
        Self::new()
    }
}
