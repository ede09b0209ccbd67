//! Bounds on what one request may cost once it is valid: a share of the server's capacity
//! for concurrent work, weighed by the request's complexity, and a budget of events per
//! response. Together with the complexity limit they keep memory bounded whatever readers
//! send.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextPrepareRequest,
    NextValidation,
};
use async_graphql::{Context, Response, ServerError, ServerResult, ValidationResult};
use tokio::sync::Semaphore;

use crate::error::Error;
use crate::service::query::{DEFAULT_PAGE, MAX_PAGE};

/// Most events one response may hold, over all its pages and trails.
pub const MAX_EVENTS_PER_RESPONSE: usize = 10_000;
/// Largest response body over HTTP.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long a request waits for capacity before it is shed with `UNAVAILABLE`.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The server's capacity for concurrent work, in complexity points: queries and mutations
/// hold their complexity's worth while they run. Subscriptions are bounded per connection
/// instead.
pub struct Admission {
    capacity: Arc<Semaphore>,
    total: u32,
}

impl Admission {
    /// Capacity for `total` complexity points at once.
    pub fn new(total: usize) -> Self {
        let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        Admission {
            capacity: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }
}

impl ExtensionFactory for Admission {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Admitted {
            capacity: self.capacity.clone(),
            total: self.total,
            complexity: Mutex::new(0),
        })
    }
}

/// One request's view of the capacity.
struct Admitted {
    capacity: Arc<Semaphore>,
    total: u32,
    complexity: Mutex<usize>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for Admitted {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: async_graphql::Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<async_graphql::Request> {
        next.run(ctx, request.data(EventBudget::default())).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        *self.complexity.lock().unwrap_or_else(|e| e.into_inner()) = result.complexity;
        Ok(result)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let complexity = *self.complexity.lock().unwrap_or_else(|e| e.into_inner());
        let weight = u32::try_from(complexity)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        let permit =
            tokio::time::timeout(QUEUE_WAIT, self.capacity.clone().acquire_many_owned(weight))
                .await;
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
    let size = first.or(last).unwrap_or(DEFAULT_PAGE as i32).clamp(1, MAX_PAGE as i32);
    (size as usize)
        .saturating_mul(child_complexity)
        .saturating_add(1)
}

/// The events a response still may hold.
#[derive(Clone, Default)]
pub struct EventBudget(Arc<AtomicUsize>);

/// Counts `events` against the request's budget; past it, the field fails with
/// `BAD_USER_INPUT` and the rest of the response still answers.
pub fn charge(ctx: &Context<'_>, events: usize) -> Result<(), Error> {
    let Ok(budget) = ctx.data::<EventBudget>() else {
        return Ok(());
    };
    let spent = budget.0.fetch_add(events, Ordering::Relaxed) + events;
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
