//! The verifiable log's background work, on every instance: sealing the tenants' tree tiles
//! as their logs grow, signing checkpoints of the trees that changed, and continuous
//! verification of every chain, tree and checkpoint. Several instances may do it at once:
//! tiles and checkpoints are deterministic and written only where missing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sea_orm::DatabaseConnection;

use crate::config::TransparencyConfig;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::service::capacity::memory::Memory;
use crate::service::tlog::chain;
use crate::service::tlog::checkpoint::{self, Signer};
use crate::service::tlog::tree::{self, Tree};

/// Most events of one tenant verified per round; a longer log is verified over several.
const VERIFY_BATCH: i64 = 100_000;

/// The verifiable log's background work, as `config` asks: sealing tiles (unless switched
/// off), signing checkpoints (with a key), and continuous verification. `db` should be a
/// handle whose statements are not counted as requests'.
pub fn tasks(
    db: &DatabaseConnection,
    memory: &Memory,
    signer: Option<Arc<Signer>>,
    config: &TransparencyConfig,
    metrics: &Arc<Metrics>,
) -> Vec<BoxFuture<'static, ()>> {
    let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
    if config.seal_interval_ms > 0 {
        let every = Duration::from_millis(config.seal_interval_ms);
        tasks.push(Box::pin(seal(db.clone(), every, metrics.clone())));
    }
    if let Some(signer) = &signer {
        let (signer, config) = (signer.clone(), config.clone());
        tasks.push(Box::pin(checkpoints(
            db.clone(),
            signer,
            config,
            metrics.clone(),
        )));
    }
    let every = Duration::from_secs(config.verify_interval_seconds.max(1));
    let (db, memory, metrics) = (db.clone(), memory.clone(), metrics.clone());
    tasks.push(Box::pin(verify(db, memory, signer, every, metrics)));
    tasks
}

/// Seals tiles for as long as the server runs. Remembers how far each tenant is sealed, so
/// that a pass over tenants whose logs did not grow by a tile costs one read.
pub async fn seal(db: DatabaseConnection, every: Duration, metrics: Arc<Metrics>) {
    let mut sealed: HashMap<String, u64> = HashMap::new();
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        if let Err(err) = seal_grown(&db, &mut sealed).await {
            tracing::warn!(error = %err, "sealing tree tiles failed");
        }
        metrics.tree.seal_duration.record(started.elapsed());
    }
}

async fn seal_grown(db: &DatabaseConnection, sealed: &mut HashMap<String, u64>) -> Result<()> {
    for (tenant_id, size) in tree::sizes(db).await? {
        let known = sealed.get(&tenant_id).copied();
        if known.is_none_or(|known| size >= known + tree::TILE_WIDTH) {
            let now = tree::seal(db, &tenant_id, size).await?;
            sealed.insert(tenant_id, now);
        }
    }
    Ok(())
}

/// Signs a checkpoint of every tenant whose log grew, every interval.
pub async fn checkpoints(
    db: DatabaseConnection,
    signer: Arc<Signer>,
    config: TransparencyConfig,
    metrics: Arc<Metrics>,
) {
    let every = Duration::from_secs(config.checkpoint_interval_seconds.max(1));
    let mut signed: HashMap<String, u64> = HashMap::new();
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        if let Err(err) = checkpoint_grown(&db, &signer, &config.origin, &mut signed).await {
            tracing::warn!(error = %err, "signing checkpoints failed");
        }
        metrics.tree.checkpoint_duration.record(started.elapsed());
    }
}

/// Signs the trees that grew since their last checkpoint (`signed`: the sizes this instance
/// knows to be signed).
async fn checkpoint_grown(
    db: &DatabaseConnection,
    signer: &Signer,
    origin: &str,
    signed: &mut HashMap<String, u64>,
) -> Result<()> {
    for (tenant_id, size) in tree::sizes(db).await? {
        if signed.get(&tenant_id) == Some(&size) {
            continue;
        }
        // Sealed first, so that the root costs a few reads.
        tree::seal_all(db, &tenant_id, size).await?;
        if let Some(c) = checkpoint::issue(db, signer, origin, &tenant_id, size).await? {
            tracing::debug!(tenant = %tenant_id, size = c.tree_size, "checkpoint signed");
        }
        signed.insert(tenant_id, size);
    }
    Ok(())
}

/// Where continuous verification of one tenant stands.
#[derive(Default)]
struct Progress {
    /// The next sequence number to check; `None` starts over from the beginning.
    next: Option<i64>,
    /// The last sequence number checked in the current pass.
    verified: i64,
    /// A mismatch was reported and has not cleared yet.
    failing: bool,
}

/// Re-verifies every tenant's chain, tree tiles and latest checkpoint, a bounded batch per
/// tenant and round, from where the last round stopped; after the head, starts over.
pub async fn verify(
    db: DatabaseConnection,
    memory: Memory,
    signer: Option<Arc<Signer>>,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    let mut progress: HashMap<String, Progress> = HashMap::new();
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let sizes = match tree::sizes(&db).await {
            Ok(sizes) => sizes,
            Err(err) => {
                tracing::warn!(error = %err, "continuous verification could not list tenants");
                continue;
            }
        };
        for (tenant_id, size) in sizes {
            let state = progress.entry(tenant_id.clone()).or_default();
            match verify_batch(&db, &memory, signer.as_deref(), &tenant_id, size, state).await {
                Ok(None) => state.failing = false,
                Ok(Some((seq, reason))) => {
                    if !state.failing {
                        tracing::error!(tenant = %tenant_id, sequence = seq, %reason,
                            "continuous verification found the log broken");
                        metrics.tree.verification_failures.increment(1);
                    }
                    state.failing = true;
                    state.next = None;
                }
                Err(err) => tracing::warn!(tenant = %tenant_id, error = %err,
                    "continuous verification could not run"),
            }
        }
        let verified: i64 = progress.values().map(|p| p.verified).sum();
        metrics.tree.verified_sequence.set(verified.max(0) as f64);
        metrics.tree.verification_duration.record(started.elapsed());
    }
}

/// Checks the next batch of one tenant; `Some((sequence, reason))` at a mismatch.
async fn verify_batch(
    db: &DatabaseConnection,
    memory: &Memory,
    signer: Option<&Signer>,
    tenant_id: &str,
    size: u64,
    state: &mut Progress,
) -> Result<Option<(i64, String)>> {
    let head = size as i64;
    let floor = chain::retention_checkpoint(db, tenant_id)
        .await?
        .map_or(0, |c| c.seq);
    // Retention may have purged where this pass stood: then it goes on from what remains.
    let from = state.next.unwrap_or(1).max(floor + 1);
    let to = from.saturating_add(VERIFY_BATCH - 1).min(head);
    let verification = chain::verify(db, memory, tenant_id, Some(from), Some(to)).await?;
    if let Some(seq) = verification.first_invalid_sequence {
        return Ok(Some((seq, verification.reason.unwrap_or_default())));
    }
    if let Some(seq) = tree::check_tiles(db, tenant_id, (from - 1) as u64, to as u64).await? {
        let reason = format!("event {seq} differs from its leaf in the stored tree");
        return Ok(Some((seq, reason)));
    }
    state.verified = to;
    state.next = if to >= head { None } else { Some(to + 1) };
    if state.next.is_none() {
        return check_checkpoint(db, signer, tenant_id).await;
    }
    Ok(None)
}

/// The latest checkpoint's signature, and its root against the tree as stored now.
async fn check_checkpoint(
    db: &DatabaseConnection,
    signer: Option<&Signer>,
    tenant_id: &str,
) -> Result<Option<(i64, String)>> {
    let Some(latest) = checkpoint::latest(db, tenant_id).await? else {
        return Ok(None);
    };
    let size = latest.tree_size;
    // A checkpoint signed by an earlier key (before a rotation) is not this key's to check.
    if let Some(signer) = signer
        && signer
            .check(&latest.signed_note)
            .is_some_and(|(_, valid)| !valid)
    {
        let reason = format!("the signature of the checkpoint of size {size} does not verify");
        return Ok(Some((size, reason)));
    }
    let root = Tree::new(db, tenant_id).root(size as u64).await?;
    if root.as_slice() != latest.root_hash {
        let reason = format!("the tree no longer has the root of the checkpoint of size {size}");
        return Ok(Some((size, reason)));
    }
    Ok(None)
}
