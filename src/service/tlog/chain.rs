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
    check_range(from, head_seq, floor)?;

    // The hash the event at `from` must chain to.
    let prev = if from == 1 {
        GENESIS.to_vec()
    } else if from == floor + 1 {
        checkpoint.map(|c| c.hash).unwrap_or_default()
    } else {
        let mut before = BySequence::after(memory, tenant_id, from - 2).through(from - 1);
        match before.next(db).await?.pop() {
            Some(row) => row.hash,
            None => {
                let missing = format!("event {} is missing", from - 1);
                return Ok(Verification::broken(0, from - 1, missing));
            }
        }
    };
    let mut rows = BySequence::after(memory, tenant_id, from - 1).through(to);
    let mut walk = Walk {
        checked: 0,
        expected: from,
        prev,
    };
    while walk.expected <= to {
        let batch = rows.next(db).await?;
        checked_batch(batch.len() as u64);
        if batch.is_empty() {
            let missing = format!("event {} is missing", walk.expected);
            return Ok(Verification::broken(walk.checked, walk.expected, missing));
        }
        if let Some(broken) = walk.check(batch) {
            return Ok(broken);
        }
    }
    if to == head_seq && walk.prev != head_hash && head_seq > floor {
        let reason = format!("event {head_seq} does not match the chain head");
        return Ok(Verification::broken(walk.checked, head_seq, reason));
    }
    if to == head_seq
        && let Some(seq) = beyond_head(db, memory, tenant_id, head_seq).await?
    {
        let reason = format!(
            "event {seq} is past the chain head {head_seq}: it was not written by audit-service"
        );
        return Ok(Verification::broken(walk.checked, seq, reason));
    }
    Ok(Verification {
        valid: true,
        checked_count: walk.checked,
        first_invalid_sequence: None,
        reason: None,
    })
}

/// Refuses a range that starts before 1, past the head, or where retention purged.
fn check_range(from: i64, head_seq: i64, floor: i64) -> Result<()> {
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
    Ok(())
}

/// Where a verification stands: how many events it checked, the sequence number it
/// expects next, and the hash that one must chain to.
struct Walk {
    checked: u64,
    expected: i64,
    prev: Vec<u8>,
}

impl Walk {
    /// Checks a batch of rows in sequence order; the first break, if there is one.
    fn check(&mut self, rows: Vec<entity::audit_log::Model>) -> Option<Verification> {
        for row in rows {
            let expected = self.expected;
            let broken = |seq: i64, reason: String| Verification::broken(self.checked, seq, reason);
            if row.seq != expected {
                let reason = if row.seq < expected {
                    format!("event {} appears twice", row.seq)
                } else {
                    format!("event {expected} is missing")
                };
                return Some(broken(expected.min(row.seq), reason));
            }
            if row.prev_hash != self.prev {
                let reason = format!("event {expected} does not chain to event {}", expected - 1);
                return Some(broken(expected, reason));
            }
            if !KNOWN_VERSIONS.contains(&row.chain_version) {
                let reason = format!(
                    "event {expected} has chain version {}, which this verifier does not know",
                    row.chain_version
                );
                return Some(broken(expected, reason));
            }
            if chain_hash(&self.prev, &row) != row.hash {
                let reason =
                    format!("event {expected} does not match its hash: its content changed");
                return Some(broken(expected, reason));
            }
            self.prev = row.hash;
            self.checked += 1;
            self.expected += 1;
        }
        None
    }
}

/// The sequence number of a row past the chain head, if there is one that was not
/// committed since the head was read.
async fn beyond_head(
    db: &(impl ConnectionTrait + StreamTrait),
    memory: &Memory,
    tenant_id: &str,
    head_seq: i64,
) -> Result<Option<i64>> {
    let mut beyond = BySequence::after(memory, tenant_id, head_seq).batch(1);
    let Some(row) = beyond.next(db).await?.pop() else {
        return Ok(None);
    };
    // An event committed since the head was read is past the head read, not past the
    // head: it is the head that moved. (A forged row in its place would have made that
    // commit fail, as its sequence number would be taken.)
    let moved = self::head(db, tenant_id)
        .await?
        .is_some_and(|h| h.seq >= row.seq);
    Ok((!moved).then_some(row.seq))
}
