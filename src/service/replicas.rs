//! Reads on PostgreSQL streaming replicas. Writes (the chain, idempotency, checkpoints,
//! leases) stay on the primary; queries, stats, exports, proofs, tiles, entities and
//! subscription replays read from a replica that is up and not too far behind. A write's
//! answer carries a consistency token (the primary's WAL position after it); a read that
//! sends it back is served by a replica that has replayed that far, after a short wait, or
//! else by the primary: a caller never sees its own write vanish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use metrics::Gauge;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use secrecy::{ExposeSecret, SecretString};

use crate::metrics::Metrics;

/// How often each replica's replay position and lag are read.
const MONITOR_INTERVAL: Duration = Duration::from_millis(500);
/// How often a read with a token looks again at a replica that has not replayed that far.
const WAIT_STEP: Duration = Duration::from_millis(5);

/// A position in the primary's write-ahead log (`pg_lsn`), as a consistency token names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(u64);

impl Lsn {
    /// `16/B374D848`, PostgreSQL's text form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.split_once('/')?;
        let valid = |part: &str| (1..=8).contains(&part.len());
        if !valid(high) || !valid(low) {
            return None;
        }
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        Some(Lsn(high << 32 | low))
    }

    fn text(self) -> String {
        format!("{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The header a write's answer carries its consistency token in, and a read sends it back.
pub const CONSISTENCY_HEADER: &str = "x-audit-consistency";

/// The consistency token a request sent (`x-audit-consistency`), if it looks like one.
#[derive(Clone, Debug, Default)]
pub struct Consistency(pub Option<String>);

impl Consistency {
    /// `token`, kept only if it is a WAL position.
    pub fn of(token: Option<&str>) -> Consistency {
        Consistency(token.filter(|t| Lsn::parse(t).is_some()).map(str::to_owned))
    }
}

/// One request's reads: the connection is picked on first use, so that a request that
/// reads nothing (a mutation) waits for no replica, and every read of a request goes to
/// the same place.
pub struct ReadSource {
    reads: Reads,
    after: Option<String>,
    picked: tokio::sync::OnceCell<DatabaseConnection>,
}

impl ReadSource {
    pub fn new(reads: Reads, consistency: Consistency) -> ReadSource {
        ReadSource {
            reads,
            after: consistency.0,
            picked: tokio::sync::OnceCell::new(),
        }
    }

    /// The connection this request reads from.
    pub async fn db(&self) -> &DatabaseConnection {
        self.picked
            .get_or_init(|| self.reads.pick(self.after.as_deref()))
            .await
    }
}

/// Where a request's reads go. Cheap to clone.
#[derive(Clone)]
pub struct Reads {
    inner: Arc<Inner>,
}

struct Inner {
    primary: DatabaseConnection,
    replicas: Vec<Replica>,
    /// How long a read with a token waits for a replica to catch up.
    wait: Duration,
    /// A replica further behind than this is skipped.
    max_lag: Duration,
    /// Round robin over the usable replicas.
    next: AtomicUsize,
    /// What `Replica::asked_at` counts from.
    started: Instant,
}

struct Replica {
    db: DatabaseConnection,
    /// When its replay position was last asked for on behalf of waiting reads, in
    /// milliseconds since `Inner::started`: however many reads wait, it is asked at most
    /// once per `WAIT_STEP`.
    asked_at: AtomicU64,
    /// Usable: answering, and within `max_lag`.
    usable: AtomicBool,
    /// What it had replayed when last asked.
    replayed: AtomicU64,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    up: Gauge,
}

impl Replica {
    /// Asks how far it has replayed, unless that was asked within the last `WAIT_STEP`.
    async fn refresh(&self, started: Instant) {
        let now = started.elapsed().as_millis() as u64;
        let asked = self.asked_at.load(Ordering::Relaxed);
        let step = WAIT_STEP.as_millis() as u64;
        if now < asked + step
            || self
                .asked_at
                .compare_exchange(asked, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Some(lsn) = wal_position(&self.db, "pg_last_wal_replay_lsn()").await {
            self.replayed.fetch_max(lsn.0, Ordering::Relaxed);
        }
    }
}

impl Reads {
    /// Reads on the replicas at `urls`, connected lazily: a replica that is down at start
    /// is skipped until it answers.
    pub async fn connect(
        primary: DatabaseConnection,
        urls: &[SecretString],
        pool_size: u32,
        (wait, max_lag): (Duration, Duration),
        metrics: &Metrics,
    ) -> anyhow::Result<Reads> {
        if !urls.is_empty() && primary.get_database_backend() != DbBackend::Postgres {
            anyhow::bail!("read replicas (--read-database-url) need PostgreSQL as the primary");
        }
        let mut replicas = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let url = url.expose_secret();
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                anyhow::bail!("read replica {index} is not a postgres:// URL");
            }
            let mut options = ConnectOptions::new(url);
            options
                .max_connections(pool_size)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(1))
                .connect_timeout(Duration::from_secs(1))
                .sqlx_logging(false)
                .set_schema_search_path(migration::PG_SCHEMA)
                .connect_lazy(true);
            let (lag_bytes, lag_seconds, up) = metrics.replica(index);
            replicas.push(Replica {
                db: Database::connect(options).await?,
                asked_at: AtomicU64::new(0),
                usable: AtomicBool::new(false),
                replayed: AtomicU64::new(0),
                lag_bytes,
                lag_seconds,
                up,
            });
        }
        Ok(Reads::new(primary, replicas, wait, max_lag))
    }

    fn new(
        primary: DatabaseConnection,
        replicas: Vec<Replica>,
        wait: Duration,
        max_lag: Duration,
    ) -> Reads {
        Reads {
            inner: Arc::new(Inner {
                primary,
                replicas,
                wait,
                max_lag,
                next: AtomicUsize::new(0),
                started: Instant::now(),
            }),
        }
    }

    /// Whether any replica is configured (and so whether writes carry tokens).
    pub fn has_replicas(&self) -> bool {
        !self.inner.replicas.is_empty()
    }

    /// The consistency token for what has been written so far: the primary's WAL insert
    /// position. `None` without replicas, or when the primary cannot say.
    pub async fn token(&self) -> Option<String> {
        if !self.has_replicas() {
            return None;
        }
        let lsn = wal_position(&self.inner.primary, "pg_current_wal_insert_lsn()").await?;
        Some(lsn.text())
    }

    /// A usable replica, in turn, if there is one.
    pub fn replica(&self) -> Option<DatabaseConnection> {
        let usable: Vec<&Replica> = self.usable();
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        (!usable.is_empty()).then(|| usable[start % usable.len()].db.clone())
    }

    fn usable(&self) -> Vec<&Replica> {
        self.inner
            .replicas
            .iter()
            .filter(|r| r.usable.load(Ordering::Relaxed))
            .collect()
    }

    /// The connection a read should use: a usable replica (one that has replayed `after`,
    /// when given, waiting at most the configured time for one to), or the primary.
    pub async fn pick(&self, after: Option<&str>) -> DatabaseConnection {
        let inner = &self.inner;
        // A token that is not one names no write: as if none was sent.
        let Some(after) = after.and_then(Lsn::parse) else {
            return self.replica().unwrap_or_else(|| inner.primary.clone());
        };
        let usable = self.usable();
        if usable.is_empty() {
            return inner.primary.clone();
        }
        let start = inner.next.fetch_add(1, Ordering::Relaxed);
        let candidates: Vec<&Replica> = (0..usable.len())
            .map(|i| usable[(start + i) % usable.len()])
            .collect();
        let deadline = Instant::now() + inner.wait;
        loop {
            if let Some(ready) = candidates
                .iter()
                .find(|r| r.replayed.load(Ordering::Relaxed) >= after.0)
            {
                return ready.db.clone();
            }
            if Instant::now() >= deadline {
                return inner.primary.clone();
            }
            tokio::time::sleep(WAIT_STEP).await;
            for replica in &candidates {
                replica.refresh(inner.started).await;
            }
        }
    }

    /// Reads each replica's replay position and lag every half second, for ever: a replica
    /// that does not answer, or lags more than allowed, is skipped until it recovers.
    pub async fn monitor(self) {
        if !self.has_replicas() {
            return;
        }
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let written = wal_position(&self.inner.primary, "pg_current_wal_lsn()").await;
            for replica in &self.inner.replicas {
                self.check(replica, written).await;
            }
        }
    }

    async fn check(&self, replica: &Replica, written: Option<Lsn>) {
        let sql = "SELECT pg_last_wal_replay_lsn()::text AS lsn, \
                   COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::float8 AS behind";
        let row = tokio::time::timeout(
            MONITOR_INTERVAL,
            replica
                .db
                .query_one_raw(Statement::from_string(DbBackend::Postgres, sql)),
        )
        .await;
        let state = match row {
            Ok(Ok(Some(row))) => row
                .try_get::<Option<String>>("", "lsn")
                .ok()
                .flatten()
                .and_then(|text| Lsn::parse(&text))
                .zip(row.try_get::<f64>("", "behind").ok()),
            _ => None,
        };
        let Some((replayed, behind)) = state else {
            if replica.usable.swap(false, Ordering::Relaxed) {
                tracing::warn!(
                    "a read replica stopped answering: reads go elsewhere until it does"
                );
            }
            replica.up.set(0.0);
            return;
        };
        replica.replayed.fetch_max(replayed.0, Ordering::Relaxed);
        let bytes = written.map_or(0, |w| w.0.saturating_sub(replayed.0));
        // Caught up means no lag, however long ago its last replayed transaction was.
        let seconds = if bytes == 0 { 0.0 } else { behind.max(0.0) };
        replica.lag_bytes.set(bytes as f64);
        replica.lag_seconds.set(seconds);
        replica.up.set(1.0);
        let usable = seconds <= self.inner.max_lag.as_secs_f64();
        if replica.usable.swap(usable, Ordering::Relaxed) != usable {
            tracing::info!(
                usable,
                lag_seconds = seconds,
                "a read replica changed state"
            );
        }
    }
}

/// `function` (a `pg_lsn`) on `db`, within a second.
async fn wal_position(db: &DatabaseConnection, function: &str) -> Option<Lsn> {
    let sql = format!("SELECT {function}::text AS lsn");
    let row = tokio::time::timeout(
        Duration::from_secs(1),
        db.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)),
    )
    .await
    .ok()?
    .ok()??;
    let text: Option<String> = row.try_get("", "lsn").ok()?;
    Lsn::parse(&text?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_order() {
        let a = Lsn::parse("16/B374D848").expect("an lsn");
        assert_eq!(a.text(), "16/B374D848");
        assert!(Lsn::parse("0/0").expect("zero") < a);
        assert!(Lsn::parse("17/0").expect("later") > a);
        for bad in ["", "16", "/1", "1/", "G/1", "123456789/1", "1/2/3", "-1/2"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
    }
}
