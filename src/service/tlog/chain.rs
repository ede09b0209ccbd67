//! The per-tenant hash chain as stored: heads and verification of a range. The encoding it
//! checks is `canonical.rs`.

use entity::{chain_checkpoint, chain_head};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, StreamTrait};

use crate::error::{Error, Result};
use crate::service::capacity::memory::Memory;
use crate::service::query::sequence::BySequence;
use crate::service::tlog::canonical::{GENESIS, KNOWN_VERSIONS, chain_hash};

/// The result of checking a range of a tenant's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub valid: bool,
    pub checked_count: u64,
    pub first_invalid_sequence: Option<i64>,
    pub reason: Option<String>,
}

impl Verification {
    fn broken(checked_count: u64, seq: i64, reason: String) -> Self {
        Verification {
            valid: false,
            checked_count,
            first_invalid_sequence: Some(seq),
            reason: Some(reason),
        }
    }
}

/// The head of a tenant's chain, if the tenant has events.
pub async fn head(db: &impl ConnectionTrait, tenant_id: &str) -> Result<Option<chain_head::Model>> {
    Ok(chain_head::Entity::find_by_id(tenant_id)
        .one(db)
        .await?
        .filter(|h| h.seq > 0))
}

/// Every tenant with a chain.
pub async fn tenants(db: &impl ConnectionTrait) -> Result<Vec<String>> {
    let heads = chain_head::Entity::find()
        .order_by_asc(chain_head::Column::TenantId)
        .all(db)
        .await?;
    Ok(heads.into_iter().map(|h| h.tenant_id).collect())
}

/// Where retention last cut the tenant's chain, if it did.
pub async fn retention_checkpoint(
    db: &impl ConnectionTrait,
    tenant_id: &str,
) -> Result<Option<chain_checkpoint::Model>> {
    Ok(chain_checkpoint::Entity::find()
        .filter(chain_checkpoint::Column::TenantId.eq(tenant_id))
        .order_by_desc(chain_checkpoint::Column::Seq)
        .one(db)
        .await?)
}

/// Checks a tenant's chain from `from` to `to` (both inclusive; by default from the last
/// retention checkpoint, or 1, to the head): every sequence present once, every `prev_hash`
/// the previous `hash`, every `hash` recomputed from the row, the last one equal to the head,
/// and nothing beyond the head. Reads the rows in bounded batches, charged to `memory`.
pub async fn verify(
    db: &(impl ConnectionTrait + StreamTrait),
    memory: &Memory,
    tenant_id: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Verification> {
    verify_with_progress(db, memory, tenant_id, from, to, |_| {}).await
}

/// [`verify`], calling `checked` with the number of events of each batch it checked.
pub async fn verify_with_progress(
    db: &(impl ConnectionTrait + StreamTrait),
    memory: &Memory,
    tenant_id: &str,
    from: Option<i64>,
    to: Option<i64>,
    mut checked_batch: impl FnMut(u64),
) -> Result<Verification> {
    let head = chain_head::Entity::find_by_id(tenant_id).one(db).await?;
    let (head_seq, head_hash) = head.map_or((0, GENESIS.to_vec()), |h| (h.seq, h.hash));
    let checkpoint = retention_checkpoint(db, tenant_id).await?;
    let floor = checkpoint.as_ref().map_or(0, |c| c.seq);
    let from = from.unwrap_or(floor + 1);
    let to = to.unwrap_or(head_seq).min(head_seq);
    if from < 1 {
        return Err(Error::bad_input("fromSequence", "fromSequence starts at 1"));
    }
    if from > head_seq.saturating_add(1) {
        return Err(Error::bad_input(
            "fromSequence",
            format!("fromSequence is past the tenant's last event, {head_seq}"),
        ));
    }
    if from <= floor {
        return Err(Error::bad_input(
            "fromSequence",
            format!(
                "events up to {floor} were purged by retention; verify from {}",
                floor + 1
            ),
        ));
    }

    // The hash the event at `from` must chain to.
    let mut prev = if from == 1 {
        GENESIS.to_vec()
    } else if from == floor + 1 {
        checkpoint.map(|c| c.hash).unwrap_or_default()
    } else {
        let mut before = BySequence::after(memory, tenant_id, from - 2).through(from - 1);
        match before.next(db).await?.pop() {
            Some(row) => row.hash,
            None => {
                return Ok(Verification::broken(
                    0,
                    from - 1,
                    format!("event {} is missing", from - 1),
                ));
            }
        }
    };

    let mut checked = 0;
    let mut expected = from;
    let mut rows_in_range = BySequence::after(memory, tenant_id, from - 1).through(to);
    while expected <= to {
        let rows = rows_in_range.next(db).await?;
        checked_batch(rows.len() as u64);
        if rows.is_empty() {
            return Ok(Verification::broken(
                checked,
                expected,
                format!("event {expected} is missing"),
            ));
        }
        for row in rows {
            if row.seq != expected {
                let reason = if row.seq < expected {
                    format!("event {} appears twice", row.seq)
                } else {
                    format!("event {expected} is missing")
                };
                return Ok(Verification::broken(checked, expected.min(row.seq), reason));
            }
            if row.prev_hash != prev {
                let reason = format!("event {expected} does not chain to event {}", expected - 1);
                return Ok(Verification::broken(checked, expected, reason));
            }
            if !KNOWN_VERSIONS.contains(&row.chain_version) {
                let reason = format!(
                    "event {expected} has chain version {}, which this verifier does not know",
                    row.chain_version
                );
                return Ok(Verification::broken(checked, expected, reason));
            }
            if chain_hash(&prev, &row) != row.hash {
                let reason =
                    format!("event {expected} does not match its hash: its content changed");
                return Ok(Verification::broken(checked, expected, reason));
            }
            prev = row.hash;
            checked += 1;
            expected += 1;
        }
    }
    if to == head_seq && prev != head_hash && head_seq > floor {
        let reason = format!("event {head_seq} does not match the chain head");
        return Ok(Verification::broken(checked, head_seq, reason));
    }
    if to == head_seq {
        let mut beyond = BySequence::after(memory, tenant_id, head_seq).batch(1);
        let row = beyond.next(db).await?.pop();
        // An event committed since the head was read is past the head read, not past the
        // head: it is the head that moved. (A forged row in its place would have made that
        // commit fail, as its sequence number would be taken.)
        let moved = match &row {
            Some(row) => self::head(db, tenant_id)
                .await?
                .is_some_and(|h| h.seq >= row.seq),
            None => false,
        };
        if let Some(row) = row.filter(|_| !moved) {
            let reason = format!(
                "event {} is past the chain head {head_seq}: it was not written by audit-service",
                row.seq
            );
            return Ok(Verification::broken(checked, row.seq, reason));
        }
    }
    Ok(Verification {
        valid: true,
        checked_count: checked,
        first_invalid_sequence: None,
        reason: None,
    })
}
