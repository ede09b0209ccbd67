//! What one request may load: at most so many events and bytes per response, and a share
//! of the memory for the events of all requests in flight, held until the request ends.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::Context;
use entity::audit_log;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::error::Error;

/// Most events one response may hold, over all its pages and trails.
pub const MAX_EVENTS_PER_RESPONSE: usize = 10_000;
/// Largest response body over HTTP.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long a request waits for capacity (complexity or memory) before it is shed with
/// `UNAVAILABLE`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Most pieces of database work (a DataLoader batch, a proof) one request runs at once.
/// Aliases and batches all start together: a request of a thousand entities or a hundred
/// proofs would otherwise ask the pool for all of its connections, time out waiting for
/// them, and leave other requests (other tenants') none. The rest queue, without a timeout.
const STATEMENTS_PER_REQUEST: usize = 2;

/// What one request has loaded so far, and the share of the server's memory it holds for
/// that until it ends.
pub struct Budget {
    events: AtomicUsize,
    bytes: AtomicUsize,
    /// A subscription's: nothing adds up, and memory is not held past each load.
    streaming: AtomicBool,
    memory: Arc<Semaphore>,
    held: Mutex<Vec<OwnedSemaphorePermit>>,
    statements: Semaphore,
}

/// Counts `events` against the request's budget before they are loaded; past it, the
/// field fails with `BAD_USER_INPUT` and the rest of the response still answers.
pub fn charge(ctx: &Context<'_>, events: usize) -> Result<(), Error> {
    let Ok(budget) = ctx.data::<Arc<Budget>>() else {
        return Ok(());
    };
    let spent = if budget.streaming.load(Ordering::Relaxed) {
        events
    } else {
        budget.events.fetch_add(events, Ordering::Relaxed) + events
    };
    if spent > MAX_EVENTS_PER_RESPONSE {
        return Err(Error::bad_input(
            "first",
            format!(
                "a response may hold at most {MAX_EVENTS_PER_RESPONSE} events; ask for smaller pages or fewer of them"
            ),
        ));
    }
    Ok(())
}

/// A turn to use the database for the request being resolved (see `Budget::turn`).
pub async fn turn<'c>(ctx: &'c Context<'_>) -> Option<SemaphorePermit<'c>> {
    ctx.data::<Arc<Budget>>().ok()?.turn().await
}

/// `Budget::hold` for the request being resolved.
pub async fn hold(ctx: &Context<'_>, rows: &[audit_log::Model]) -> Result<(), Error> {
    match ctx.data::<Arc<Budget>>() {
        Ok(budget) => budget.hold(rows).await,
        Err(_) => Ok(()),
    }
}

impl Budget {
    /// A request's budget, holding memory from `memory`; a subscription's is `streaming`.
    pub fn new(memory: Arc<Semaphore>, streaming: bool) -> Self {
        Budget {
            events: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            streaming: AtomicBool::new(streaming),
            memory,
            held: Mutex::new(Vec::new()),
            statements: Semaphore::new(STATEMENTS_PER_REQUEST),
        }
    }

    /// Waits for one of the request's turns to use the database; hold it while working.
    /// (`None` only if the semaphore were closed, which it never is.)
    pub async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        self.statements.acquire().await.ok()
    }

    /// Holds memory for loaded events until the request ends: the rows of all requests in
    /// flight stay within `MEMORY_FOR_EVENTS`. A request that would outgrow the largest
    /// response fails with `BAD_USER_INPUT`; one that finds no room in time, with
    /// `UNAVAILABLE`.
    pub async fn hold(&self, rows: &[audit_log::Model]) -> Result<(), Error> {
        let bytes: usize = rows.iter().map(size_of_event).sum();
        let streaming = self.streaming.load(Ordering::Relaxed);
        let total = if streaming {
            bytes
        } else {
            self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes
        };
        if total > MAX_RESPONSE_BYTES {
            return Err(Error::bad_input(
                "first",
                format!(
                    "the response would be larger than {} MiB; ask for fewer or smaller events",
                    MAX_RESPONSE_BYTES >> 20
                ),
            ));
        }
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let permit = tokio::time::timeout(QUEUE_WAIT, self.memory.clone().acquire_many_owned(kib))
            .await
            .map_err(|_| Error::Busy)?
            .map_err(|_| Error::Busy)?;
        if streaming {
            return Ok(());
        }
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(permit);
        Ok(())
    }
}

/// About how many bytes an event takes in memory and in a response.
fn size_of_event(e: &audit_log::Model) -> usize {
    let texts = [
        Some(&e.tenant_id),
        Some(&e.actor_id),
        e.actor_name.as_ref(),
        Some(&e.action),
        e.target_type.as_ref(),
        e.target_id.as_ref(),
        e.target_name.as_ref(),
        e.reason.as_ref(),
        e.ip_address.as_ref(),
        e.user_agent.as_ref(),
        e.request_id.as_ref(),
        e.idempotency_key.as_ref(),
    ];
    let text: usize = texts.into_iter().flatten().map(String::len).sum();
    512 + text + size_of_json(&e.metadata)
}

fn size_of_json(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| size_of_json(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + size_of_json(v))
                .sum::<usize>()
        }
        _ => 8,
    }
}
