//! Each tenant's Merkle tree, as RFC 9162 §2.1 defines it, over its events in sequence
//! order: the leaf of the event with sequence `n` is its 32-byte chain hash, at index `n − 1`.
//!
//! The tree is stored as C2SP tiles (`audit_tree_tiles`): a tile holds up to 256 consecutive
//! hashes of one tree level that is a multiple of 8. Level-0 tiles hold leaf hashes, level-1
//! tiles the roots of full level-0 tiles, and so on. Full tiles are written ("sealed") as
//! the log grows, by [`seal`]; what is not sealed yet is computed from the events (for the
//! last, partial level-0 tile) or from the roots of the full tiles below. Any subtree hash,
//! and so any proof, costs a few reads of at most 256 hashes per tile level.
//!
//! The proof algorithms themselves are pure functions over leaf ranges (`merkle`).

use std::collections::HashMap;

use super::cache::TileCache;
use super::merkle::{
    Hash, consistency_ranges, inclusion_ranges, leaf_hash, node_hash, perfect_root, split,
};
use crate::error::{Error, Result};
use entity::tree_tile::{self, Column};
use entity::{audit_log, chain_head};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

/// Hashes per full tile, and the tree levels one tile level spans.
pub const TILE_WIDTH: u64 = 256;
const TILE_HEIGHT: u32 = 8;

/// Most tiles one call of [`seal`] writes, so that a long backlog is worked off in bounded
/// steps.
const SEAL_STEP: u64 = 64;

/// One tenant's tree as stored, read a tile at a time; tiles read once are kept for the
/// life of the value (one proof, one checkpoint), and in the process's [`TileCache`] when
/// it has one (to serve proofs; sealing and verification read the database itself).
pub struct Tree<'c, C> {
    db: &'c C,
    tenant_id: &'c str,
    tiles: HashMap<(u32, u64), Vec<Hash>>,
    shared: Option<&'c TileCache>,
}

impl<'c, C: ConnectionTrait> Tree<'c, C> {
    pub fn new(db: &'c C, tenant_id: &'c str) -> Self {
        Tree {
            db,
            tenant_id,
            tiles: HashMap::new(),
            shared: None,
        }
    }

    /// A tree that reads through, and fills, the process's tile cache.
    pub fn cached(db: &'c C, tenant_id: &'c str, cache: &'c TileCache) -> Self {
        Tree {
            shared: Some(cache),
            ..Tree::new(db, tenant_id)
        }
    }

    /// The root of the tree of the first `size` leaves (`size` > 0).
    pub async fn root(&mut self, size: u64) -> Result<Hash> {
        self.range(0, size).await
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub async fn inclusion(&mut self, index: u64, size: u64) -> Result<Vec<Hash>> {
        let mut proof = Vec::new();
        for (lo, hi) in inclusion_ranges(index, size) {
            proof.push(self.range(lo, hi).await?);
        }
        Ok(proof)
    }

    /// The consistency proof from the tree of `from` leaves to the tree of `to` leaves.
    pub async fn consistency(&mut self, from: u64, to: u64) -> Result<Vec<Hash>> {
        let mut proof = Vec::new();
        for (lo, hi) in consistency_ranges(from, to) {
            proof.push(self.range(lo, hi).await?);
        }
        Ok(proof)
    }

    /// The leaves `[start, end)` themselves (the events' chain hashes), or `None` when some
    /// were purged by retention.
    pub async fn leaf_data(&self, start: u64, end: u64) -> Result<Option<Vec<Vec<u8>>>> {
        let rows = self.leaf_rows(start, end).await?;
        Ok((rows.len() as u64 == end - start).then(|| rows.into_iter().map(|(_, h)| h).collect()))
    }

    /// The hash of the subtree over leaves `[lo, hi)`, a range RFC 9162's recursion makes:
    /// a perfect, aligned left part and the rest.
    async fn range(&mut self, lo: u64, hi: u64) -> Result<Hash> {
        // Perfect subtrees from the left, then folded from the right.
        let mut parts = Vec::new();
        let mut start = lo;
        while start < hi {
            let n = hi - start;
            let k = if n.is_power_of_two() { n } else { split(n) };
            let level = k.trailing_zeros();
            parts.push(self.node(level, start >> level).await?);
            start += k;
        }
        let mut parts = parts.into_iter().rev();
        let mut hash = parts
            .next()
            .ok_or_else(|| Error::internal("empty leaf range"))?;
        for left in parts {
            hash = node_hash(&left, &hash);
        }
        Ok(hash)
    }

    /// The hash of the perfect subtree of height `level` whose leaves start at
    /// `index × 2^level`.
    async fn node(&mut self, level: u32, index: u64) -> Result<Hash> {
        let (tile_level, height) = (level / TILE_HEIGHT, level % TILE_HEIGHT);
        let first = index << height;
        let tile = first / TILE_WIDTH;
        let offset = (first % TILE_WIDTH) as usize;
        let width = offset + (1 << height);
        let hashes = self.tile(tile_level, tile, width).await?;
        Ok(perfect_root(&hashes[offset..width]))
    }

    /// The first `width` hashes of a tile: the widest stored version of it, completed from
    /// the events (level 0) or from the roots of the full tiles one level down.
    pub async fn tile(&mut self, level: u32, idx: u64, width: usize) -> Result<Vec<Hash>> {
        if let Some(hashes) = self.tiles.get(&(level, idx))
            && hashes.len() >= width
        {
            return Ok(hashes[..width].to_vec());
        }
        let key = (self.tenant_id.to_owned(), level, idx);
        if let Some(hashes) = self.shared.and_then(|cache| cache.get(&key))
            && hashes.len() >= width
        {
            return Ok(hashes[..width].to_vec());
        }
        let stored = tree_tile::Entity::find()
            .filter(Column::TenantId.eq(self.tenant_id))
            .filter(Column::Level.eq(level as i16))
            .filter(Column::Idx.eq(idx as i64))
            .order_by_desc(Column::Width)
            .one(self.db)
            .await?;
        let mut hashes: Vec<Hash> = stored
            .map(|tile| split_hashes(&tile.hashes))
            .transpose()?
            .unwrap_or_default();
        let base = idx * TILE_WIDTH;
        let (start, end) = (base + hashes.len() as u64, base + width as u64);
        if start < end {
            if level == 0 {
                hashes.extend(self.leaves(start, end).await?);
            } else {
                let stored = self.stored_roots(level - 1, start, end).await?;
                for below in start..end {
                    let root = match stored.get(&below) {
                        Some(root) => *root,
                        None => {
                            let tile = Box::pin(self.tile(level - 1, below, TILE_WIDTH as usize));
                            perfect_root(&tile.await?)
                        }
                    };
                    hashes.push(root);
                }
            }
        }
        let answer = hashes[..width].to_vec();
        if let Some(cache) = self.shared {
            cache.put(key, &hashes);
        }
        self.tiles.insert((level, idx), hashes);
        Ok(answer)
    }

    /// The roots of the sealed full tiles `[start, end)` at `level`, by index; one read.
    async fn stored_roots(&self, level: u32, start: u64, end: u64) -> Result<HashMap<u64, Hash>> {
        let rows = tree_tile::Entity::find()
            .select_only()
            .columns([Column::Idx, Column::Root])
            .filter(Column::TenantId.eq(self.tenant_id))
            .filter(Column::Level.eq(level as i16))
            .filter(Column::Width.eq(TILE_WIDTH as i16))
            .filter(Column::Idx.between(start as i64, end as i64 - 1))
            .into_tuple::<(i64, Vec<u8>)>()
            .all(self.db)
            .await?;
        rows.into_iter()
            .map(|(idx, root)| Ok((idx as u64, to_hash(&root)?)))
            .collect()
    }

    /// Leaf hashes of leaves `[start, end)`, from the events' chain hashes.
    async fn leaves(&self, start: u64, end: u64) -> Result<Vec<Hash>> {
        let rows = self.leaf_rows(start, end).await?;
        if rows.len() as u64 != end - start {
            let missing = rows.last().map_or(start as i64, |(seq, _)| *seq) + 1;
            return Err(Error::internal(format!(
                "tree of tenant {:?}: event {missing} is missing",
                self.tenant_id
            )));
        }
        Ok(rows.iter().map(|(_, hash)| leaf_hash(hash)).collect())
    }

    /// The sequence numbers and chain hashes of leaves `[start, end)`, as far as they run
    /// without a gap.
    async fn leaf_rows(&self, start: u64, end: u64) -> Result<Vec<(i64, Vec<u8>)>> {
        let mut rows = audit_log::Entity::find()
            .select_only()
            .columns([audit_log::Column::Seq, audit_log::Column::Hash])
            .filter(audit_log::Column::TenantId.eq(self.tenant_id))
            .filter(audit_log::Column::Seq.between(start as i64 + 1, end as i64))
            .order_by_asc(audit_log::Column::Seq)
            .into_tuple::<(i64, Vec<u8>)>()
            .all(self.db)
            .await?;
        let gap = (0..rows.len()).find(|&k| rows[k].0 != start as i64 + 1 + k as i64);
        rows.truncate(gap.unwrap_or(rows.len()));
        Ok(rows)
    }

    /// Writes a tile of the first `width` hashes of tile `idx` at `level`; a tile already
    /// there (written by another instance, say) is left as it is, since it is the same.
    async fn store(&mut self, level: u32, idx: u64, width: usize) -> Result<()> {
        let hashes = self.tile(level, idx, width).await?;
        let root = if width == TILE_WIDTH as usize {
            perfect_root(&hashes)
        } else {
            [0; 32]
        };
        let tile = tree_tile::ActiveModel {
            tenant_id: Set(self.tenant_id.to_owned()),
            level: Set(level as i16),
            idx: Set(idx as i64),
            width: Set(width as i16),
            hashes: Set(hashes.concat()),
            root: Set(root.to_vec()),
        };
        let same =
            OnConflict::columns([Column::TenantId, Column::Level, Column::Idx, Column::Width])
                .do_nothing()
                .to_owned();
        tree_tile::Entity::insert(tile)
            .on_conflict(same)
            .exec_without_returning(self.db)
            .await?;
        Ok(())
    }
}

/// Seals the tenant's full tiles among its first `size` leaves (at most [`SEAL_STEP`]
/// level-0 tiles, and the higher tiles they complete); returns how many leaves are sealed.
pub async fn seal(db: &impl ConnectionTrait, tenant_id: &str, size: u64) -> Result<u64> {
    let sealed = tree_tile::Entity::find()
        .select_only()
        .column_as(Column::Idx.max(), "idx")
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Level.eq(0))
        .filter(Column::Width.eq(TILE_WIDTH as i16))
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten()
        .map_or(0, |last| last as u64 + 1);
    let mut tree = Tree::new(db, tenant_id);
    let mut next = sealed;
    while (next + 1) * TILE_WIDTH <= size && next < sealed + SEAL_STEP {
        tree.store(0, next, TILE_WIDTH as usize).await?;
        // A full tile may complete the tile above it, and so on up.
        let (mut level, mut idx) = (0, next);
        while idx % TILE_WIDTH == TILE_WIDTH - 1 {
            level += 1;
            idx /= TILE_WIDTH;
            tree.store(level, idx, TILE_WIDTH as usize).await?;
        }
        next += 1;
    }
    Ok(next * TILE_WIDTH)
}

/// [`seal`] until every full tile among the first `size` leaves is sealed, however long the
/// backlog; returns how many leaves are sealed.
pub async fn seal_all(db: &impl ConnectionTrait, tenant_id: &str, size: u64) -> Result<u64> {
    let mut sealed = seal(db, tenant_id, size).await?;
    while sealed + TILE_WIDTH <= size {
        sealed = seal(db, tenant_id, size).await?;
    }
    Ok(sealed)
}

/// Before retention deletes the tenant's events up to sequence `through`, keeps every leaf
/// hash among them in tiles (a partial one for the last few), so that proofs still work.
pub async fn keep_before_purge(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    through: u64,
) -> Result<()> {
    let sealed = seal_all(db, tenant_id, through).await?;
    if sealed < through {
        let rest = (through - sealed) as usize;
        Tree::new(db, tenant_id)
            .store(0, sealed / TILE_WIDTH, rest)
            .await?;
    }
    Ok(())
}

/// Compares the stored full level-0 tiles that lie within leaves `[lo, hi)` with the leaf
/// hashes of the events; returns the sequence number of the first event whose leaf differs
/// from its tile (rewritten after it was sealed), if any.
pub async fn check_tiles(
    db: &impl ConnectionTrait,
    tenant_id: &str,
    lo: u64,
    hi: u64,
) -> Result<Option<i64>> {
    let first = lo.div_ceil(TILE_WIDTH);
    let Some(last) = (hi / TILE_WIDTH)
        .checked_sub(1)
        .filter(|last| *last >= first)
    else {
        return Ok(None);
    };
    let tiles = tree_tile::Entity::find()
        .filter(Column::TenantId.eq(tenant_id))
        .filter(Column::Level.eq(0))
        .filter(Column::Width.eq(TILE_WIDTH as i16))
        .filter(Column::Idx.between(first as i64, last as i64))
        .order_by_asc(Column::Idx)
        .all(db)
        .await?;
    let reader = Tree::new(db, tenant_id);
    for tile in tiles {
        let start = tile.idx as u64 * TILE_WIDTH;
        let leaves = reader.leaves(start, start + TILE_WIDTH).await?;
        let stored = split_hashes(&tile.hashes)?;
        if let Some(k) = (0..leaves.len()).find(|&k| leaves[k] != stored[k]) {
            return Ok(Some((start + k as u64 + 1) as i64));
        }
    }
    Ok(None)
}

/// Every tenant with events, and its number of events (the size of its tree).
pub async fn sizes(db: &impl ConnectionTrait) -> Result<Vec<(String, u64)>> {
    let heads = chain_head::Entity::find()
        .filter(chain_head::Column::Seq.gt(0))
        .all(db)
        .await?;
    Ok(heads
        .into_iter()
        .map(|h| (h.tenant_id, h.seq as u64))
        .collect())
}

fn to_hash(bytes: &[u8]) -> Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| Error::internal("a stored hash is not 32 bytes long"))
}

fn split_hashes(bytes: &[u8]) -> Result<Vec<Hash>> {
    bytes.chunks(32).map(to_hash).collect()
}
