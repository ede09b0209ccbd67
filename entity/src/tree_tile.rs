//! A tile of a tenant's Merkle tree (C2SP `tlog-tiles`): up to 256 consecutive hashes at
//! tree level 8 × `level`, starting at index 256 × `idx`.

use sea_orm::entity::prelude::*;

/// `width` hashes, concatenated, and the hash of the subtree they make when the tile is full.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_tree_tiles")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub level: i16,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idx: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub width: i16,
    pub hashes: Vec<u8>,
    pub root: Vec<u8>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
