//! Bounds on what one request may cost once it is valid: a share of the server's capacity
//! for concurrent work, weighed by the request's complexity; a budget of events and bytes
//! per response; and a share of memory for the events loaded by all requests in flight.
//! Together with the complexity limit they keep memory bounded whatever readers send.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextSubscribe, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{Context, Response, ServerError, ServerResult, ValidationResult, Variables};
use entity::audit_log;
use futures_util::stream::BoxStream;
use sea_orm::DatabaseConnection;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits;
use super::loaders::{AuditLoader, MAX_BATCH};
use crate::error::Error;
use crate::service::query::{DEFAULT_PAGE, MAX_PAGE};

/// Most events one response may hold, over all its pages and trails.
pub const MAX_EVENTS_PER_RESPONSE: usize = 10_000;
/// Most entity representations in one request.
pub const MAX_REPRESENTATIONS: usize = 1000;
/// Largest response body over HTTP.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Memory for the events of all requests in flight, in bytes. A response holds its events
/// several times over on the way out (rows, resolved values, JSON), so this is a quarter
/// of what reads may take.
const MEMORY_FOR_EVENTS: usize = 64 * 1024 * 1024;
/// How long a request waits for capacity before it is shed with `UNAVAILABLE`.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The server's capacity for concurrent work, in complexity points: queries and mutations
/// hold their complexity's worth while they run. Subscriptions are bounded per connection
/// instead.
///
/// Every request (and subscription) also gets its own budget and its own [`AuditLoader`],
/// which loads against that budget: a request's keys are batched only with its own, so one
/// request's bad key or oversized load cannot fail another's.
#[derive(Clone)]
pub struct Admission {
    capacity: Arc<Semaphore>,
    total: u32,
    memory: Arc<Semaphore>,
    max_complexity: usize,
    db: DatabaseConnection,
    /// How long a loader batch waits for more keys after its first.
    batch_window: Duration,
}

impl Admission {
    /// Room for `concurrent` requests of `max_complexity` at once.
    pub fn new(
        max_complexity: usize,
        concurrent: usize,
        db: DatabaseConnection,
        batch_window: Duration,
    ) -> Self {
        let total = max_complexity.saturating_mul(concurrent);
        let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        Admission {
            capacity: Arc::new(Semaphore::new(total as usize)),
            total,
            max_complexity,
            memory: Arc::new(Semaphore::new(MEMORY_FOR_EVENTS >> 10)),
            db,
            batch_window,
        }
    }
}

impl ExtensionFactory for Admission {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Admitted {
            admission: self.clone(),
            representations: AtomicUsize::new(0),
            complexity: AtomicUsize::new(0),
            streaming: AtomicBool::new(false),
        })
    }
}

/// One request's view of the capacity.
struct Admitted {
    admission: Admission,
    /// Entity representations the document asks for (see `limits::representations`).
    representations: AtomicUsize,
    complexity: AtomicUsize,
    /// Set when the request is a subscription (before it is prepared).
    streaming: AtomicBool,
}

#[async_graphql::async_trait::async_trait]
impl Extension for Admitted {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: async_graphql::Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<async_graphql::Request> {
        let budget = Arc::new(Budget {
            events: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            streaming: AtomicBool::new(self.streaming.load(Ordering::Relaxed)),
            memory: self.admission.memory.clone(),
            held: Mutex::new(Vec::new()),
        });
        let loader = AuditLoader {
            db: self.admission.db.clone(),
            budget: budget.clone(),
        };
        let loader = DataLoader::new(loader, tokio::spawn)
            .max_batch_size(MAX_BATCH)
            .delay(self.admission.batch_window);
        next.run(ctx, request.data(budget).data(loader)).await
    }

    /// A subscription runs for as long as its client likes: its budget applies to each
    /// piece of work on its own rather than adding up.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        self.streaming.store(true, Ordering::Relaxed);
        next.run(ctx, stream)
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let entities = limits::representations(&document, variables);
        if entities > MAX_REPRESENTATIONS {
            return Err(ServerError::new(
                format!(
                    "_entities takes at most {MAX_REPRESENTATIONS} representations per request; this one has {entities}"
                ),
                None,
            ));
        }
        self.representations.store(entities, Ordering::Relaxed);
        Ok(document)
    }

    /// async-graphql counts the selection of `_entities` once; it runs once per
    /// representation.
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let mut result = next.run(ctx).await?;
        let entities = self.representations.load(Ordering::Relaxed).max(1);
        result.complexity = result.complexity.saturating_mul(entities);
        if result.complexity > self.admission.max_complexity {
            // async-graphql's own words for the same refusal.
            return Err(vec![ServerError::new("Query is too complex.", None)]);
        }
        self.complexity.store(result.complexity, Ordering::Relaxed);
        Ok(result)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let complexity = self.complexity.load(Ordering::Relaxed);
        let weight = u32::try_from(complexity)
            .unwrap_or(u32::MAX)
            .clamp(1, self.admission.total);
        let capacity = self.admission.capacity.clone();
        let permit = tokio::time::timeout(QUEUE_WAIT, capacity.acquire_many_owned(weight)).await;
        match permit {
            Ok(Ok(_permit)) => next.run(ctx, operation_name).await,
            _ => {
                let error = async_graphql::Error::from(Error::Busy);
                Response::from_errors(vec![error.into_server_error(Default::default())])
            }
        }
    }
}

/// The complexity of a page of `first` or `last` events (50 by default): every event costs
/// what its selection costs, so nested trails multiply.
pub fn page_cost(first: Option<i32>, last: Option<i32>, child_complexity: usize) -> usize {
    let size = first
        .or(last)
        .unwrap_or(DEFAULT_PAGE as i32)
        .clamp(1, MAX_PAGE as i32);
    (size as usize)
        .saturating_mul(child_complexity)
        .saturating_add(1)
}

/// What one request has loaded so far, and the share of the server's memory it holds for
/// that until it ends.
pub struct Budget {
    events: AtomicUsize,
    bytes: AtomicUsize,
    /// A subscription's: nothing adds up, and memory is not held past each load.
    streaming: AtomicBool,
    memory: Arc<Semaphore>,
    held: Mutex<Vec<OwnedSemaphorePermit>>,
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

/// `Budget::hold` for the request being resolved.
pub async fn hold(ctx: &Context<'_>, rows: &[audit_log::Model]) -> Result<(), Error> {
    match ctx.data::<Arc<Budget>>() {
        Ok(budget) => budget.hold(rows).await,
        Err(_) => Ok(()),
    }
}

impl Budget {
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
