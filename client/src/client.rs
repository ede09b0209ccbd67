//! `AuditClient`: one handle to audit-service, shared by a service's tasks (it is a cheap
//! `Clone`), with `send()` for "record it now" and `enqueue()` for background delivery.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::delivery::{DeliveryConfig, MAX_RETRY_AFTER, Metrics, OnFull, Queue, ShutdownReport};
use crate::error::{Error, Result};
use crate::event::{Actor, Event};
use crate::graphql::Recorded;
use crate::transport::{Credential, Transport};

/// A client of one audit-service. Cloning shares it.
#[derive(Clone)]
pub struct AuditClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<Transport>,
    default_actor: Option<Actor>,
    send_timeout: Duration,
    queue: Queue,
}

/// Builds an [`AuditClient`]; start with [`AuditClient::builder`].
pub struct AuditClientBuilder {
    url: String,
    credential: Credential,
    timeout: Duration,
    send_timeout: Duration,
    user_agent: String,
    default_actor: Option<Actor>,
    delivery: DeliveryConfig,
}

impl AuditClient {
    /// A client of the audit-service whose GraphQL endpoint is `url`
    /// (`http://127.0.0.1:8080/graphql`).
    pub fn builder(url: impl Into<String>) -> AuditClientBuilder {
        AuditClientBuilder {
            url: url.into(),
            credential: Credential::None,
            timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            user_agent: concat!("audit-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            default_actor: None,
            delivery: DeliveryConfig::default(),
        }
    }

    /// Records an event now and returns it as committed. Retries (with the same
    /// idempotency key, so at most one event is stored) while audit-service is unavailable,
    /// for up to the send timeout; a refused event is returned as [`Error::Rejected`].
    pub async fn send(&self, event: Event) -> Result<Recorded> {
        let event = self.prepare(event)?;
        let deadline = crate::delivery::later(self.inner.send_timeout);
        let mut attempt = 0u32;
        loop {
            let result =
                tokio::time::timeout_at(deadline, self.inner.transport.log_one(event.clone()))
                    .await
                    .unwrap_or_else(|_| Err(Error::unavailable("TIMEOUT", "no answer in time")));
            let error = match result {
                Ok(recorded) => return Ok(recorded),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => error,
            };
            let wait = match &error {
                Error::Unavailable {
                    retry_after: Some(after),
                    ..
                } => (*after).min(MAX_RETRY_AFTER),
                _ => Duration::from_millis(50)
                    .saturating_mul(1 << attempt.min(6))
                    .mul_f64(0.5 + fastrand::f64() / 2.0),
            };
            if crate::delivery::later(wait) >= deadline {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Hands an event to background delivery and returns once it is accepted (and, with a
    /// spool, written to it). It is checked first: an invalid event is an error here and
    /// never leaves. Delivery stores it exactly once, or writes it to the dead-letter file.
    pub async fn enqueue(&self, event: Event) -> Result<()> {
        let event = self.prepare(event)?;
        self.inner.queue.push(event).await
    }

    /// Like [`enqueue`](Self::enqueue), but never waits: when the buffer is full the event
    /// is dropped, counted, and `Error::BufferFull` returned, whatever the policy. What the
    /// Layer and the Extension use, so a full buffer never holds up a response.
    pub fn try_enqueue(&self, event: Event) -> Result<()> {
        let event = self.prepare(event)?;
        self.inner.queue.try_push(event)
    }

    /// Waits until every event enqueued before this call is stored (or given up on).
    pub async fn flush(&self) {
        self.inner.queue.flush().await;
    }

    /// Stops accepting events and delivers what is queued, for at most `deadline`.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.inner.queue.shutdown(deadline).await
    }

    /// The consistency token of this client's latest write, when audit-service reads from
    /// replicas: send it as the `x-audit-consistency` header with a read (GraphQL or
    /// `/export`) to see that write however far the replicas lag.
    pub fn consistency_token(&self) -> Option<String> {
        self.inner.transport.consistency()
    }

    /// Delivery counters.
    pub fn metrics(&self) -> Metrics {
        self.inner.queue.metrics()
    }

    /// The actor of events built without one (set with
    /// [`AuditClientBuilder::default_actor`]).
    pub(crate) fn default_actor(&self) -> Option<&Actor> {
        self.inner.default_actor.as_ref()
    }

    /// Checks an event and fixes what retries must repeat exactly: when it happened, and
    /// its idempotency key.
    pub(crate) fn prepare(&self, mut event: Event) -> Result<Event> {
        event.validate()?;
        let now = Utc::now();
        event.occurred_at.get_or_insert(now);
        if event.idempotency_key.is_none() {
            event.idempotency_key = Some(new_key(now));
        }
        Ok(event)
    }
}

/// A UUID v7 from the clock and a thread-local generator (no system call per key).
pub(crate) fn new_key(now: chrono::DateTime<Utc>) -> String {
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    let random: [u8; 10] = std::array::from_fn(|_| fastrand::u8(..));
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

impl AuditClientBuilder {
    /// Authenticates with an API key issued by audit-service.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credential = Credential::ApiKey(key.into());
        self
    }

    /// Authenticates with a bearer token from `callback`, called before each request.
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credential = credential;
        self
    }

    /// How long one HTTP request may take (10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long `send()` keeps retrying (10 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// The `User-Agent` of requests (`audit-client/<version>`).
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// The actor of events built without one: the calling service itself, usually.
    pub fn default_actor(mut self, actor: Actor) -> Self {
        self.default_actor = Some(actor);
        self
    }

    /// Most events per batch (500; at most 1,000) and how long a batch waits to fill (20 ms).
    pub fn batch(mut self, max_events: usize, linger: Duration) -> Self {
        self.delivery.max_batch = max_events.clamp(1, 1000);
        self.delivery.linger = linger;
        self
    }

    /// Batches in flight at once (4). Their events may commit, and so be numbered, in
    /// another order than they were enqueued; `concurrency(1)` keeps that order.
    pub fn concurrency(mut self, batches: usize) -> Self {
        self.delivery.concurrency = batches.max(1);
        self
    }

    /// Events held in memory (50,000), and what `enqueue()` does when they are that many.
    pub fn buffer(mut self, events: usize, on_full: OnFull) -> Self {
        self.delivery.buffer = events.max(1);
        self.delivery.on_full = on_full;
        self
    }

    /// Bytes held in memory, roughly (64 MiB); past it the buffer counts as full.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.delivery.buffer_bytes = bytes;
        self
    }

    /// Retry delays: from `min` (100 ms), doubling, up to `max` (5 s), with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.delivery.min_backoff = min;
        self.delivery.max_backoff = max.max(min);
        self
    }

    /// How long an event may wait for delivery before it is dead-lettered (24 h).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.delivery.max_age = max_age;
        self
    }

    /// Keeps accepted events in a durable spool in `dir` (off by default). With `sync`,
    /// each is flushed to disk before `enqueue()` returns (survives power loss); without,
    /// it is written to the operating system (survives a crash of the process).
    pub fn spool(mut self, dir: impl Into<PathBuf>, sync: bool) -> Self {
        self.delivery.spool = Some(dir.into());
        self.delivery.spool_sync = sync;
        self
    }

    /// The largest unsettled spool, in bytes (1 GiB); past it the buffer policy applies.
    pub fn spool_max_bytes(mut self, bytes: u64) -> Self {
        self.delivery.spool_max_bytes = bytes;
        self
    }

    /// Where undeliverable events go (`audit-dead-letter.jsonl`, created on first use).
    pub fn dead_letter(mut self, path: impl Into<PathBuf>) -> Self {
        self.delivery.dead_letter = path.into();
        self
    }

    /// Called with each event that will not be delivered (refused by audit-service, too
    /// old, or left at shutdown) and the reason, from the delivery task.
    pub fn on_error(mut self, callback: impl Fn(&Event, &Error) + Send + Sync + 'static) -> Self {
        self.delivery.on_error = Some(Arc::new(callback));
        self
    }

    /// Builds the client and starts its delivery task; call within a Tokio runtime.
    pub fn build(self) -> Result<AuditClient> {
        let transport = Arc::new(Transport::new(
            self.url,
            self.credential,
            self.timeout,
            &self.user_agent,
        )?);
        let queue = Queue::start(transport.clone(), self.delivery)?;
        Ok(AuditClient {
            inner: Arc::new(Inner {
                transport,
                default_actor: self.default_actor,
                send_timeout: self.send_timeout,
                queue,
            }),
        })
    }
}
