//! The operations of WebSocket connections, and live subscriptions shared among subscribers.
//!
//! Subscribers of the same live subscription (same principal, document, variables and
//! operation, no `after`) share one execution: each event is resolved and serialized once,
//! and the payload's bytes go to every subscriber. Each subscriber reads the shared
//! payloads through a queue of its own; one that falls `capacity` payloads behind, or
//! leaves more unread than its connection's allowance, gets `SUBSCRIBER_LAGGED` without
//! slowing the others. Every other operation runs on its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Pos, Request, Response};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::task::AbortHandle;

use crate::credentials::{Principal, Scope};
use crate::error::{Code, Error};
use crate::graphql::{AppSchema, documents};
use crate::metrics::Metrics;
use crate::refusals::Origin;
use crate::service::live::mailbox::{self, Allowance, Lagged};

/// A response, serialized: the `payload` of a `next` message.
pub type Payload = Arc<str>;

/// What the subscribers of one connection may leave unread, in bytes.
pub const CONNECTION_BYTES: usize = 8 << 20;
/// What the subscribers of one tenant may leave unread, over its connections.
const TENANT_BYTES: usize = 64 << 20;
/// What all subscribers of the instance may leave unread.
const INSTANCE_BYTES: usize = 128 << 20;

type Subscribers = Arc<Mutex<Vec<mailbox::Sender<Payload>>>>;

/// The live subscriptions of an instance, by what makes them the same.
#[derive(Clone)]
pub struct Fanout {
    shared: Arc<Mutex<HashMap<Key, Weak<Execution>>>>,
    /// Payloads a subscriber may fall behind before it is dropped.
    capacity: usize,
    /// Subscribers being served, shared or not.
    subscribers: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    /// What subscribers leave unread, over the instance and (within it) per tenant.
    unread: Arc<Allowance>,
    tenants: Arc<Mutex<HashMap<String, Weak<Allowance>>>>,
}

/// What decides a subscription's payloads.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    principal: Principal,
    query: String,
    variables: String,
    operation_name: Option<String>,
}

/// One execution of a shared subscription; it stops when its last subscriber goes.
struct Execution {
    subscribers: Subscribers,
    task: AbortHandle,
}

impl Drop for Execution {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fanout {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Fanout {
            shared: Arc::default(),
            capacity: capacity.max(1),
            subscribers: Arc::default(),
            metrics,
            unread: Allowance::root(INSTANCE_BYTES),
            tenants: Arc::default(),
        }
    }

    /// What a new connection of `tenant_id` may leave unread: its own allowance, within
    /// its tenant's and the instance's.
    pub fn allowance(&self, tenant_id: &str) -> Arc<Allowance> {
        self.tenant_allowance(tenant_id).child(CONNECTION_BYTES)
    }

    fn tenant_allowance(&self, tenant_id: &str) -> Arc<Allowance> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowance) = tenants.get(tenant_id).and_then(Weak::upgrade) {
            return allowance;
        }
        tenants.retain(|_, allowance| allowance.strong_count() > 0);
        let allowance = self.unread.child(TENANT_BYTES);
        tenants.insert(tenant_id.to_owned(), Arc::downgrade(&allowance));
        allowance
    }

    /// Live subscribers on this instance.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// The payloads of `request` for a connection of `principal`, until the operation ends;
    /// what it leaves unread counts against `allowance` (the connection's).
    pub fn execute(
        &self,
        schema: &AppSchema,
        mut request: Request,
        principal: &Principal,
        origin: &Origin,
        allowance: &Arc<Allowance>,
    ) -> BoxStream<'static, Payload> {
        let kind = kind(&mut request, principal);
        let request = request.data(principal.clone()).data(origin.clone());
        match kind {
            Kind::Other => schema
                .execute_stream(request.data(allowance.clone()))
                .map(serialize)
                .boxed(),
            Kind::Subscription => {
                let payloads = schema
                    .execute_stream(request.data(allowance.clone()))
                    .map(serialize);
                self.counted(payloads).boxed()
            }
            Kind::Shared => {
                let key = Key {
                    principal: principal.clone(),
                    query: request.query.clone(),
                    variables: serde_json::to_string(&request.variables).unwrap_or_default(),
                    operation_name: request.operation_name.clone(),
                };
                self.counted(self.join(schema, key, request, allowance.clone()))
                    .boxed()
            }
        }
    }

    /// The shared execution of `key` (started with `request` if there is none).
    fn join(
        &self,
        schema: &AppSchema,
        key: Key,
        request: Request,
        allowance: Arc<Allowance>,
    ) -> impl Stream<Item = Payload> + use<> {
        let (sender, mut receiver) = mailbox::mailbox(self.capacity, allowance);
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let execution = match shared.get(&key).and_then(Weak::upgrade) {
            Some(execution) => {
                let subscribers = execution.subscribers.lock();
                subscribers.unwrap_or_else(|e| e.into_inner()).push(sender);
                execution
            }
            None => {
                // What the execution's own feed queue holds is its tenant's to allow.
                let queue = self.tenant_allowance(&key.principal.tenant_id);
                let request = request.data(queue.child(CONNECTION_BYTES));
                let subscribers = Arc::new(Mutex::new(vec![sender]));
                let task = tokio::spawn(run(
                    schema.execute_stream(request),
                    subscribers.clone(),
                    Arc::downgrade(&self.shared),
                    key.clone(),
                ));
                let execution = Arc::new(Execution {
                    subscribers,
                    task: task.abort_handle(),
                });
                shared.retain(|_, execution| execution.strong_count() > 0);
                shared.insert(key, Arc::downgrade(&execution));
                execution
            }
        };
        drop(shared);
        let metrics = self.metrics.clone();
        async_stream::stream! {
            let _execution = execution;
            while let Some(received) = receiver.recv().await {
                match received {
                    Ok(payload) => yield payload,
                    Err(Lagged(missed)) => {
                        metrics.live.lagged.increment(1);
                        let error: async_graphql::Error = Error::SubscriberLagged { missed }.into();
                        yield serialize(Response::from_errors(vec![error.into_server_error(Pos::default())]));
                        return;
                    }
                }
            }
        }
    }

    /// `payloads`, counted as a subscriber and as deliveries.
    fn counted<S: Stream<Item = Payload>>(
        &self,
        payloads: S,
    ) -> impl Stream<Item = Payload> + use<S> {
        let subscriber = Subscriber::new(self.subscribers.clone());
        let metrics = self.metrics.clone();
        payloads.map(move |payload| {
            let _subscriber = &subscriber;
            metrics.live.deliveries.increment(1);
            payload
        })
    }
}

/// Runs a shared execution, handing each payload to its subscribers (never waiting for
/// one: a subscriber that is gone or behind is dropped). The execution leaves the registry
/// before its last payload goes out, so that nobody joins it too late.
async fn run(
    mut responses: impl Stream<Item = Response> + Unpin,
    subscribers: Subscribers,
    registry: Weak<Mutex<HashMap<Key, Weak<Execution>>>>,
    key: Key,
) {
    let retire = || {
        if let Some(registry) = registry.upgrade() {
            let mut shared = registry.lock().unwrap_or_else(|e| e.into_inner());
            // The entry may already be a newer execution's.
            if shared.get(&key).is_some_and(|e| {
                e.upgrade()
                    .is_none_or(|e| Arc::ptr_eq(&e.subscribers, &subscribers))
            }) {
                shared.remove(&key);
            }
        }
    };
    while let Some(response) = responses.next().await {
        // A subscription's error ends it.
        if response.is_err() {
            retire();
        }
        let payload = serialize(response);
        let mut subscribers = subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subscribers.retain(|subscriber| subscriber.push(payload.clone(), payload.len()));
    }
    retire();
    // Their queues end once they are read.
    subscribers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
}

/// Counts a subscriber for as long as it lives.
struct Subscriber(Arc<AtomicUsize>);

impl Subscriber {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Subscriber(count)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Kind {
    /// A subscription that can be shared.
    Shared,
    /// A subscription of its own (it resumes `after` a cursor, or may be refused).
    Subscription,
    /// A query or mutation, or a document that does not parse or has no such operation.
    Other,
}

/// What `request` is: a live subscription without `after` of a principal that may read,
/// whose root selects only fields, can be shared.
fn kind(request: &mut Request, principal: &Principal) -> Kind {
    let shareable = principal.has(Scope::Read) && request.extensions.is_empty();
    let Some(operation) = documents::operation(request) else {
        return Kind::Other;
    };
    if operation.ty != OperationType::Subscription {
        return Kind::Other;
    }
    let plain = operation
        .selection_set
        .node
        .items
        .iter()
        .all(|item| match &item.node {
            Selection::Field(field) => field.node.get_argument("after").is_none(),
            _ => false,
        });
    match plain && shareable {
        true => Kind::Shared,
        false => Kind::Subscription,
    }
}

fn serialize(response: Response) -> Payload {
    match serde_json::to_string(&response) {
        Ok(json) => json.into(),
        Err(err) => {
            tracing::error!(error = %err, "a response could not be serialized");
            let error = Code::Internal.json("Internal server error");
            serde_json::json!({ "data": null, "errors": [error] })
                .to_string()
                .into()
        }
    }
}
