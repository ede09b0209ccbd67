//! What one request may load: at most so many events per response, and memory for them
//! from the server's (`service::memory`), charged row by row before each is decoded and
//! held until the request ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_graphql::Context;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::Error;
use crate::service::capacity::memory::{Memory, Meter};

/// Most events one response may hold, over all its pages and trails.
pub const MAX_EVENTS_PER_RESPONSE: usize = 10_000;
/// Largest response body over HTTP, and most memory one request's events may take.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Most pieces of database work (a DataLoader batch, a proof) one request runs at once.
/// Aliases and batches all start together: a request of a thousand entities or a hundred
/// proofs would otherwise ask the pool for all of its connections, time out waiting for
/// them, and leave other requests (other tenants') none. The rest queue, without a timeout.
const STATEMENTS_PER_REQUEST: usize = 2;

/// What one request has loaded so far, and the memory it holds for that until it ends.
pub struct Budget {
    events: AtomicUsize,
    /// A subscription's: nothing adds up, and memory is not held past each load.
    streaming: bool,
    memory: Memory,
    tenant_id: String,
    meter: Arc<Meter>,
    statements: Semaphore,
}

/// Counts `events` against the request's budget before they are loaded; past it, the
/// field fails with `BAD_USER_INPUT` and the rest of the response still answers.
pub fn charge(ctx: &Context<'_>, events: usize) -> Result<(), Error> {
    let Ok(budget) = ctx.data::<Arc<Budget>>() else {
        return Ok(());
    };
    let spent = match budget.streaming {
        true => events,
        false => budget.events.fetch_add(events, Ordering::Relaxed) + events,
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

/// The meter the request being resolved charges what it loads to.
pub fn meter(ctx: &Context<'_>) -> Result<Arc<Meter>, Error> {
    ctx.data::<Arc<Budget>>()
        .map(|budget| budget.meter())
        .map_err(|_| Error::internal("a request without a budget"))
}

impl Budget {
    /// A request's budget, on `memory` for `tenant_id` (the caller's); a subscription's is
    /// `streaming`.
    pub fn new(memory: &Memory, tenant_id: &str, streaming: bool) -> Self {
        Budget {
            events: AtomicUsize::new(0),
            streaming,
            memory: memory.clone(),
            tenant_id: tenant_id.to_owned(),
            meter: Arc::new(Meter::new(memory, tenant_id, MAX_RESPONSE_BYTES)),
            statements: Semaphore::new(STATEMENTS_PER_REQUEST),
        }
    }

    /// Waits for one of the request's turns to use the database; hold it while working.
    /// (`None` only if the semaphore were closed, which it never is.)
    pub async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        self.statements.acquire().await.ok()
    }

    /// The request's meter, which holds what it charged until the request ends; a
    /// subscription's loads each get one of their own.
    pub fn meter(&self) -> Arc<Meter> {
        match self.streaming {
            true => Arc::new(Meter::new(
                &self.memory,
                &self.tenant_id,
                MAX_RESPONSE_BYTES,
            )),
            false => self.meter.clone(),
        }
    }
}
