//! Delivery: one task per instance takes the leases of streams nobody delivers, and runs a
//! delivery per stream it holds. A delivery reads its tenant's events after its cursor in
//! sequence order (through the stream's filter), sends them in batches of at most
//! `BATCH_EVENTS` events and `BATCH_BYTES`, and moves the cursor only once the sink has
//! acknowledged a batch; a failed batch is retried, with backoff, until it is: no event is
//! skipped. Every write of a delivery holds only under its lease, so a stream paused,
//! replayed, changed or taken over stops being delivered here at the next write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::sink::{Event, Failure, Sink};
use super::store::{self, Lease, Progress, Row};
use crate::metrics::Metrics;
use crate::service::capacity::memory::Memory;
use crate::service::live::feed::Feed;
use crate::service::privacy::keyring::Keyring;
use crate::service::privacy::{self, store::Place};
use crate::service::query::filter::Filter;
use crate::service::query::sequence::BySequence;
use crate::service::tlog::canonical::export_line;

/// Most events in one batch.
pub const BATCH_EVENTS: u64 = 500;
/// Most bytes of events (as export lines) in one batch; a larger single event goes alone.
pub const BATCH_BYTES: usize = 1 << 20;
/// How long a lease lasts unless renewed; another instance takes a stream over this long
/// after its holder stopped renewing.
const LEASE: Duration = Duration::from_secs(6);
/// How often a delivery renews its lease, and checks for events it was not told about.
const RENEW: Duration = Duration::from_secs(2);
/// How often the instance looks for streams to take.
const SCAN: Duration = Duration::from_secs(1);
/// First and longest wait between attempts at a failing batch.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));

/// What every delivery of an instance shares.
pub struct Streams {
    pub db: DatabaseConnection,
    pub memory: Memory,
    pub feed: Feed,
    pub keyring: Arc<Keyring>,
    pub metrics: Arc<Metrics>,
    /// How long a sink fails before its stream reads `FAILING`.
    pub failing_after: Duration,
    /// This instance, as lease owner.
    pub owner: String,
    pub http: reqwest::Client,
}

/// Milliseconds since the epoch, as leases count time.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn until() -> i64 {
    now_ms() + LEASE.as_millis() as i64
}

impl Streams {
    /// Takes and delivers streams until dropped (which stops every delivery it runs).
    pub async fn run(self) {
        let shared = Arc::new(self);
        let mut running: HashMap<Uuid, AbortOnDropHandle<()>> = HashMap::new();
        loop {
            running.retain(|_, task| !task.is_finished());
            match store::claimable(&shared.db, &shared.owner, now_ms()).await {
                Ok(rows) => {
                    for row in rows {
                        if running.contains_key(&row.id) {
                            continue;
                        }
                        match store::claim(&shared.db, &row, &shared.owner, now_ms(), until()).await
                        {
                            Ok(true) => {
                                let task = tokio::spawn(deliver(shared.clone(), row.clone()));
                                running.insert(row.id, AbortOnDropHandle::new(task));
                            }
                            Ok(false) => {}
                            Err(err) => tracing::warn!(error = %err, "cannot take a stream"),
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot look for streams to deliver"),
            }
            let since = now_ms() - shared.failing_after.as_millis() as i64;
            if let Ok(failing) = store::failing(&shared.db, since).await {
                shared.metrics.streams.failing.set(failing as f64);
            }
            tokio::time::sleep(SCAN).await;
        }
    }
}

/// Why a delivery stopped.
enum Stop {
    /// The lease is gone: the stream changed, paused, went, or another instance has it.
    Lost,
    /// The database failed; the lease is given up, and the next scan takes the stream again.
    Database(crate::error::Error),
}

impl From<crate::error::Error> for Stop {
    fn from(err: crate::error::Error) -> Self {
        Stop::Database(err)
    }
}

/// Delivers one stream while this instance holds its lease.
async fn deliver(shared: Arc<Streams>, row: Row) {
    let lease = Lease {
        id: row.id,
        generation: row.generation,
        owner: shared.owner.clone(),
    };
    let mut delivery = Delivery {
        shared: shared.clone(),
        lease: lease.clone(),
        cursor: row.delivered_seq,
        attempt: 0,
        renewed: Instant::now(),
    };
    match delivery.run(&row).await {
        Stop::Lost => tracing::debug!(stream = %row.id, "stream lease lost"),
        Stop::Database(err) => {
            tracing::warn!(stream = %row.id, error = %err, "stream delivery stopped");
            let _ = store::release(&shared.db, &lease).await;
        }
    }
}

struct Delivery {
    shared: Arc<Streams>,
    lease: Lease,
    /// The last sequence number the sink acknowledged.
    cursor: i64,
    /// Failed attempts at the current batch.
    attempt: u32,
    /// When the lease was last renewed.
    renewed: Instant,
}

impl Delivery {
    async fn run(&mut self, row: &Row) -> Stop {
        // Subscribed first, so that no event committed from now on goes unnoticed.
        let mut woken = self
            .shared
            .feed
            .subscribe(std::slice::from_ref(&row.tenant_id));
        let mut sink = loop {
            match self.open(row).await {
                Ok(sink) => break sink,
                Err(failure) => {
                    if let Err(stop) = self.failed(&failure).await {
                        return stop;
                    }
                }
            }
        };
        let filter = match row.filter() {
            Ok(filter) => filter,
            Err(err) => return Stop::Database(err),
        };
        // A filter this database cannot read (stored before it was checked at creation)
        // fails the stream where its state shows it, rather than stopping it unseen.
        if let Some(Err(err)) =
            (filter.as_ref()).map(|f| f.condition(self.shared.db.get_database_backend()))
        {
            let failure = Failure::new(format!("the stream's filter cannot be read: {err}"));
            loop {
                if let Err(stop) = self.failed(&failure).await {
                    return stop;
                }
            }
        }
        // What the feed brought while the delivery waited: sent from memory when it follows
        // the cursor, else (nothing, or the feed dropped some) read from the database.
        let mut brought: Option<Vec<Event>> = None;
        loop {
            let round = match brought.take() {
                Some(events) if follows(self.cursor, &events) => {
                    self.send_brought(row, filter.as_ref(), events, &mut sink)
                        .await
                }
                _ => self.catch_up(row, filter.clone(), &mut sink).await,
            };
            if let Err(stop) = round {
                return stop;
            }
            // Caught up: wait for the tenant's next events, renewing the lease when due.
            brought = wait(&mut woken, self.renewed + RENEW).await;
            if self.renewed.elapsed() >= RENEW
                && let Err(stop) = self.write(Progress::Renew).await
            {
                return stop;
            }
        }
    }

    async fn open(&self, row: &Row) -> Result<Sink, Failure> {
        let internal = |err: crate::error::Error| {
            tracing::error!(stream = %row.id, error = %err, "cannot open a stream's settings");
            Failure::new_internal()
        };
        let kind = row.kind().map_err(internal)?;
        let url = super::check_url(kind, &row.url).map_err(internal)?;
        let secret = match (&row.kek_id, &row.secret) {
            (Some(kek_id), Some(sealed)) => {
                let owner = super::secret_owner(&row.tenant_id, row.id);
                let secret =
                    (self.shared.keyring.open(&owner, kek_id, sealed)).map_err(internal)?;
                Some(String::from_utf8(secret).map_err(|_| Failure::new_internal())?)
            }
            _ => None,
        };
        Sink::open(
            kind,
            row.id,
            url,
            row.subject.clone(),
            secret,
            &self.shared.http,
        )
        .await
    }

    /// Sends every event up to the tenant's head, batch by batch.
    async fn catch_up(
        &mut self,
        row: &Row,
        filter: Option<Filter>,
        sink: &mut Sink,
    ) -> Result<(), Stop> {
        let db = &self.shared.db.clone();
        let head = store::head(db, &row.tenant_id).await?;
        if head <= self.cursor {
            return Ok(());
        }
        let mut events = BySequence::after(&self.shared.memory, &row.tenant_id, self.cursor)
            .through(head)
            .batch(BATCH_EVENTS);
        if let Some(filter) = filter {
            events = events.matching(filter);
        }
        loop {
            let read: Vec<Event> = events.next(db).await?.into_iter().map(Arc::new).collect();
            if read.is_empty() {
                break;
            }
            let lines = self.lines(&read, row.personal).await?;
            for (events, lines) in batches(&read, &lines) {
                self.send(sink, events, lines).await?;
            }
        }
        // Past the events the filter leaves out, up to the head.
        if head > self.cursor {
            self.advance(head, false).await?;
        }
        Ok(())
    }

    /// Sends events the feed brought (they follow the cursor), those the filter matches.
    async fn send_brought(
        &mut self,
        row: &Row,
        filter: Option<&Filter>,
        brought: Vec<Event>,
        sink: &mut Sink,
    ) -> Result<(), Stop> {
        let Some(last) = brought.last().map(|event| event.seq) else {
            return Ok(());
        };
        let events: Vec<Event> = (brought.into_iter())
            .filter(|event| filter.is_none_or(|filter| filter.matches(event)))
            .collect();
        for chunk in events.chunks(BATCH_EVENTS as usize) {
            let lines = self.lines(chunk, row.personal).await?;
            for (events, lines) in batches(chunk, &lines) {
                self.send(sink, events, lines).await?;
            }
        }
        if last > self.cursor {
            self.advance(last, false).await?;
        }
        Ok(())
    }

    /// The events as export lines; for a stream that carries personal values, with the
    /// `disclosures` (path, value, salt) of those not erased.
    async fn lines(&self, events: &[Event], personal: bool) -> Result<Vec<Vec<u8>>, Stop> {
        let mut lines: Vec<Vec<u8>> = events.iter().map(|event| export_line(event)).collect();
        let places: Vec<Place> = (events.iter())
            .filter(|event| personal && event.personal.is_some())
            .map(|event| (event.tenant_id.clone(), event.actor_id.clone(), event.id))
            .collect();
        if places.is_empty() {
            return Ok(lines);
        }
        let opened = privacy::store::open(&self.shared.db, &self.shared.keyring, &places).await?;
        for (event, line) in events.iter().zip(&mut lines) {
            let place = (event.tenant_id.clone(), event.actor_id.clone(), event.id);
            let Some(opened) = opened.get(&place) else {
                continue;
            };
            let values = opened.values()?;
            let disclosures: Vec<serde_json::Value> = privacy::commitments(event)
                .into_keys()
                .filter_map(|path| {
                    let value = values.get(&path)?;
                    let salt = opened.key.salt(&path);
                    Some(serde_json::json!({ "path": path, "value": value, "salt": salt }))
                })
                .collect();
            // `...,"prev_hash":"..."}` + newline becomes `...,"disclosures":[...]}` + newline.
            line.truncate(line.len() - 2);
            line.extend_from_slice(b",\"disclosures\":");
            serde_json::to_writer(&mut *line, &disclosures)
                .map_err(crate::error::Error::internal)?;
            line.extend_from_slice(b"}\n");
        }
        Ok(lines)
    }

    /// Sends a batch until the sink acknowledges it, then moves the cursor past it.
    async fn send(
        &mut self,
        sink: &mut Sink,
        batch: &[Event],
        lines: &[Vec<u8>],
    ) -> Result<(), Stop> {
        let Some(last) = batch.last() else {
            return Ok(());
        };
        loop {
            match sink.send(batch, lines).await {
                Ok(()) => {
                    self.attempt = 0;
                    let metrics = &self.shared.metrics.streams;
                    metrics.delivered.increment(batch.len() as u64);
                    return self.advance(last.seq, true).await;
                }
                Err(failure) => self.failed(&failure).await?,
            }
        }
    }

    async fn advance(&mut self, seq: i64, delivered: bool) -> Result<(), Stop> {
        self.write(Progress::Delivered { seq, delivered }).await?;
        self.cursor = seq;
        Ok(())
    }

    /// Writes progress under the lease, which it renews.
    async fn write(&mut self, progress: Progress<'_>) -> Result<(), Stop> {
        let renewed = Instant::now();
        match store::progress(&self.shared.db, &self.lease, progress, until()).await? {
            true => {
                self.renewed = renewed;
                Ok(())
            }
            false => Err(Stop::Lost),
        }
    }

    /// Records a failure, then waits (what the sink asked for, or backoff with jitter)
    /// while renewing the lease.
    async fn failed(&mut self, failure: &Failure) -> Result<(), Stop> {
        self.shared.metrics.streams.failures.increment(1);
        self.attempt = self.attempt.saturating_add(1);
        self.write(Progress::Failed {
            error: &failure.message,
            now_ms: now_ms(),
        })
        .await?;
        let mut wait = failure.retry_after.unwrap_or_else(|| backoff(self.attempt));
        while !wait.is_zero() {
            let slice = wait.min(RENEW);
            tokio::time::sleep(slice).await;
            wait -= slice;
            self.write(Progress::Renew).await?;
        }
        Ok(())
    }
}

impl Failure {
    fn new_internal() -> Self {
        Failure {
            message: "the stream's settings cannot be opened; see the server's log".to_owned(),
            retry_after: None,
        }
    }
}

/// Exponential backoff with full jitter: a random wait up to `BACKOFF.0 * 2^(attempt-1)`,
/// at most `BACKOFF.1`, and never less than half of it.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF
        .0
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF.1);
    let jitter = crate::service::privacy::keyring::random::<2>()
        .map(u16::from_le_bytes)
        .unwrap_or(u16::MAX);
    ceiling / 2 + ceiling / 2 * u32::from(jitter) / u32::from(u16::MAX)
}

/// Waits until `deadline` for the tenant's next events, then takes every event the feed
/// holds: in sequence order, or `None` when the feed dropped some for this receiver.
async fn wait(feed: &mut broadcast::Receiver<Event>, deadline: Instant) -> Option<Vec<Event>> {
    let mut events = Vec::new();
    match tokio::time::timeout_at(deadline.into(), feed.recv()).await {
        Err(_) => return Some(events),
        Ok(Ok(event)) => events.push(event),
        Ok(Err(broadcast::error::RecvError::Lagged(_))) => return None,
        Ok(Err(broadcast::error::RecvError::Closed)) => {
            tokio::time::sleep_until(deadline.into()).await;
            return None;
        }
    }
    loop {
        match feed.try_recv() {
            Ok(event) => events.push(event),
            Err(broadcast::error::TryRecvError::Empty) => return Some(events),
            Err(_) => return None,
        }
    }
}

/// Whether events brought by the feed start right after the cursor, without a gap.
fn follows(cursor: i64, events: &[Event]) -> bool {
    let first = events.first().map(|event| event.seq);
    first == Some(cursor + 1) && events.windows(2).all(|w| w[1].seq == w[0].seq + 1)
}

/// A batch: its events and their lines.
type Batch<'a> = (&'a [Event], &'a [Vec<u8>]);

/// Splits events read into batches of at most `BATCH_BYTES` of lines.
fn batches<'a>(events: &'a [Event], lines: &'a [Vec<u8>]) -> Vec<Batch<'a>> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, line) in lines.iter().enumerate() {
        if i > start && bytes + line.len() > BATCH_BYTES {
            batches.push((&events[start..i], &lines[start..i]));
            (start, bytes) = (i, 0);
        }
        bytes += line.len();
    }
    if start < events.len() {
        batches.push((&events[start..], &lines[start..]));
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        for attempt in 1..40 {
            let wait = backoff(attempt);
            let ceiling = (BACKOFF.0 * 2u32.pow((attempt - 1).min(16))).min(BACKOFF.1);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{attempt}: {wait:?}"
            );
        }
    }
}
