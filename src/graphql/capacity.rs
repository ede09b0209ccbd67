//! Bounds on what one request may cost once it is valid: a share of the server's capacity
//! for concurrent work, weighed by the request's complexity and shared fairly between
//! tenants; a budget of events per response; and memory for the events it loads, charged
//! before they are decoded (`budget`). Together with the complexity limit they keep memory
//! bounded whatever readers send.

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextPrepareRequest,
    NextSubscribe, NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{Request, Response, ServerError, ServerResult, ValidationResult, Variables};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::budget::Budget;
use super::loaders::{AuditLoader, MAX_BATCH};
use super::{documents, limits};
use crate::credentials::Principal;
use crate::error::Error;
use crate::service::capacity::memory::Memory;
use crate::service::capacity::share::Shares;
use crate::service::query::stats::MAX_BUCKETS;
use crate::service::query::{DEFAULT_PAGE, MAX_PAGE};
use crate::service::replicas::{CONSISTENCY_HEADER, Consistency, ReadSource, Reads};

/// What runs an admitted query: a schema without extensions (see [`Capacity`]).
pub type Executor = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// Most entity representations in one request.
pub const MAX_REPRESENTATIONS: usize = 1000;
/// How long a request waits for capacity before it is shed with `UNAVAILABLE`.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The server's capacity for concurrent work, in complexity points: queries and mutations
/// hold their complexity's worth while they run, and one tenant's at most half of it.
/// Subscriptions are bounded per connection instead.
///
/// Every request (and subscription) also gets its own budget and its own [`AuditLoader`],
/// which loads against that budget: a request's keys are batched only with its own, so one
/// request's bad key or oversized load cannot fail another's.
///
/// Admitted queries run on `executor`, a schema without extensions. async-graphql sends
/// every field of a schema that has any extension through them all (a `ResolveInfo` and a
/// boxed future per field and extension), which cost a fifth of a page's CPU, while the
/// checks here are all done before execution starts. Mutations and subscriptions resolve
/// few fields (and carry large variables, which the executor would need a copy of), and
/// run on this schema.
#[derive(Clone)]
pub struct Capacity {
    shares: Shares,
    memory: Memory,
    max_complexity: usize,
    reads: Reads,
    /// How long a loader batch waits for more keys after its first.
    batch_window: Duration,
    executor: Executor,
}

impl Capacity {
    /// Room for `concurrent` requests of `max_complexity` at once, loading into `memory`;
    /// queries run on `executor`, which checks nothing of its own.
    pub fn new(
        max_complexity: usize,
        concurrent: usize,
        reads: Reads,
        memory: Memory,
        batch_window: Duration,
        executor: Executor,
    ) -> Self {
        let total = max_complexity.saturating_mul(concurrent);
        let total = u32::try_from(total).unwrap_or(u32::MAX).max(1);
        Capacity {
            shares: Shares::new(total, total / 2),
            max_complexity,
            memory,
            reads,
            batch_window,
            executor,
        }
    }
}

impl ExtensionFactory for Capacity {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Admitted {
            capacity: self.clone(),
            representations: AtomicUsize::new(0),
            complexity: AtomicUsize::new(0),
            streaming: AtomicBool::new(false),
            tenant_id: Mutex::default(),
            query: Mutex::new(None),
        })
    }
}

/// One request's view of the capacity.
struct Admitted {
    capacity: Capacity,
    /// Entity representations the document asks for (see `limits::representations`).
    representations: AtomicUsize,
    complexity: AtomicUsize,
    /// Set when the request is a subscription (before it is prepared).
    streaming: AtomicBool,
    /// The caller's tenant, whose shares the request uses.
    tenant_id: Mutex<String>,
    /// A query's request, once checked here, for the executor.
    query: Mutex<Option<Request>>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for Admitted {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        let tenant_id = tenant_of(&request);
        let streaming = self.streaming.load(Ordering::Relaxed);
        let budget = Arc::new(Budget::new(&self.capacity.memory, &tenant_id, streaming));
        *self.tenant_id.lock().unwrap_or_else(|e| e.into_inner()) = tenant_id;
        let consistency = request
            .data
            .get(&TypeId::of::<Consistency>())
            .and_then(|data| data.downcast_ref::<Consistency>())
            .cloned()
            .unwrap_or_default();
        let reads = Arc::new(ReadSource::new(self.capacity.reads.clone(), consistency));
        let loader = AuditLoader {
            reads: reads.clone(),
            budget: budget.clone(),
        };
        let loader = DataLoader::new(loader, tokio::spawn)
            .max_batch_size(MAX_BATCH)
            .delay(self.capacity.batch_window);
        let mut request = request.data(budget).data(loader).data(reads);
        if let Some(query) = for_executor(&mut request) {
            *self.query.lock().unwrap_or_else(|e| e.into_inner()) = Some(query);
        }
        next.run(ctx, request).await
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
        if result.complexity > self.capacity.max_complexity {
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
        let weight = u32::try_from(complexity).unwrap_or(u32::MAX);
        let tenant_id = self
            .tenant_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let shares = &self.capacity.shares;
        match shares.acquire(&tenant_id, weight, QUEUE_WAIT).await {
            Ok(_permit) => {
                let query = self.query.lock().unwrap_or_else(|e| e.into_inner()).take();
                match query {
                    Some(query) => (self.capacity.executor)(query).await,
                    // A mutation: its answer carries the consistency token of its writes.
                    None => {
                        let mut response = next.run(ctx, operation_name).await;
                        if let Some(token) = self.capacity.reads.token().await
                            && let Ok(value) = token.parse()
                        {
                            response.http_headers.insert(CONSISTENCY_HEADER, value);
                        }
                        response
                    }
                }
            }
            Err(_) => {
                let error = async_graphql::Error::from(Error::Busy);
                Response::from_errors(vec![error.into_server_error(Default::default())])
            }
        }
    }
}

/// The tenant of the request's caller (the transports add the `Principal`); requests
/// without one share the empty tenant's.
fn tenant_of(request: &Request) -> String {
    request
        .data
        .get(&TypeId::of::<Principal>())
        .and_then(|data| data.downcast_ref::<Principal>())
        .map(|principal| principal.tenant_id.clone())
        .unwrap_or_default()
}

/// A query's own request for the executor: its document, variables and data (caller,
/// budget, loader) taken from `request`, which stays to be checked and admitted.
fn for_executor(request: &mut Request) -> Option<Request> {
    // The transports have parsed the document into the request (through the cache), so
    // this reads it back; parsing recurses, so the nesting check still comes first.
    if limits::nesting(&request.query) > limits::MAX_NESTING {
        return None;
    }
    let name = request.operation_name.clone();
    let document = request.parsed_query().ok()?;
    if documents::select(document, name.as_deref())?.ty != OperationType::Query {
        return None;
    }
    let document = document.clone();
    let mut query = Request::new(request.query.clone()).variables(request.variables.clone());
    query.operation_name = request.operation_name.clone();
    query.data = std::mem::take(&mut request.data);
    query.set_parsed_query(document);
    Some(query)
}

/// The complexity of `auditLogStats`: a bucket costs what a field costs, and the grouping
/// query itself as much as a default page.
pub fn stats_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let buckets = first.unwrap_or(100).clamp(1, MAX_BUCKETS as i32) as usize;
    buckets
        .saturating_mul(child_complexity)
        .saturating_add(DEFAULT_PAGE as usize)
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
