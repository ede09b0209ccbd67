//! The operations of WebSocket connections, and live subscriptions shared among subscribers.
//!
//! Subscribers of the same live subscription (same principal, document, variables and
//! operation, no `after`) share one execution: each event is resolved and serialized once,
//! and the payload's bytes go to every subscriber. Each subscriber reads the shared
//! payloads through a buffer of its own; one that falls `capacity` behind gets
//! `SUBSCRIBER_LAGGED` without slowing the others. Every other operation runs on its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Pos, Request, Response};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::AbortHandle;

use crate::access::Origin;
use crate::auth::{Principal, Scope};
use crate::error::{Code, Error};
use crate::graphql::{AppSchema, documents};
use crate::metrics::Metrics;

/// A response, serialized: the `payload` of a `next` message.
pub type Payload = Arc<str>;

/// The live subscriptions of an instance, by what makes them the same.
#[derive(Clone)]
pub struct Fanout {
    shared: Arc<Mutex<HashMap<Key, Weak<Execution>>>>,
    /// Payloads a subscriber may fall behind before it is dropped.
    capacity: usize,
    /// Subscribers being served, shared or not.
    subscribers: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
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
    sender: broadcast::Sender<Message>,
    task: AbortHandle,
}

impl Drop for Execution {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
enum Message {
    Payload(Payload),
    End,
}

impl Fanout {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Fanout {
            shared: Arc::default(),
            capacity: capacity.max(1),
            subscribers: Arc::default(),
            metrics,
        }
    }

    /// Live subscribers on this instance.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// The payloads of `request` for a connection of `principal`, until the operation ends.
    pub fn execute(
        &self,
        schema: &AppSchema,
        mut request: Request,
        principal: &Principal,
        origin: &Origin,
    ) -> BoxStream<'static, Payload> {
        let kind = kind(&mut request, principal);
        let request = request.data(principal.clone()).data(origin.clone());
        match kind {
            Kind::Other => schema.execute_stream(request).map(serialize).boxed(),
            Kind::Subscription => {
                let payloads = schema.execute_stream(request).map(serialize);
                self.counted(payloads).boxed()
            }
            Kind::Shared => {
                let key = Key {
                    principal: principal.clone(),
                    query: request.query.clone(),
                    variables: serde_json::to_string(&request.variables).unwrap_or_default(),
                    operation_name: request.operation_name.clone(),
                };
                self.counted(self.join(schema, key, request)).boxed()
            }
        }
    }

    /// The shared execution of `key` (started with `request` if there is none).
    fn join(
        &self,
        schema: &AppSchema,
        key: Key,
        request: Request,
    ) -> impl Stream<Item = Payload> + use<> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let running = shared.get(&key).and_then(Weak::upgrade);
        let (execution, mut receiver) = match running {
            Some(execution) => {
                let receiver = execution.sender.subscribe();
                (execution, receiver)
            }
            None => {
                let (sender, receiver) = broadcast::channel(self.capacity);
                let task = tokio::spawn(run(
                    schema.execute_stream(request),
                    sender.clone(),
                    Arc::downgrade(&self.shared),
                    key.clone(),
                ));
                let execution = Arc::new(Execution {
                    sender,
                    task: task.abort_handle(),
                });
                shared.retain(|_, execution| execution.strong_count() > 0);
                shared.insert(key, Arc::downgrade(&execution));
                (execution, receiver)
            }
        };
        drop(shared);
        let metrics = self.metrics.clone();
        async_stream::stream! {
            let _execution = execution;
            loop {
                match receiver.recv().await {
                    Ok(Message::Payload(payload)) => yield payload,
                    Ok(Message::End) | Err(RecvError::Closed) => return,
                    Err(RecvError::Lagged(missed)) => {
                        metrics.lagged.increment(1);
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
            metrics.deliveries.increment(1);
            payload
        })
    }
}

/// Runs a shared execution, handing each payload to its subscribers. The execution leaves
/// the registry before its last payload goes out, so that nobody joins it too late.
async fn run(
    mut responses: impl Stream<Item = Response> + Unpin,
    sender: broadcast::Sender<Message>,
    registry: Weak<Mutex<HashMap<Key, Weak<Execution>>>>,
    key: Key,
) {
    let retire = || {
        if let Some(registry) = registry.upgrade() {
            let mut shared = registry.lock().unwrap_or_else(|e| e.into_inner());
            // The entry may already be a newer execution's.
            if shared
                .get(&key)
                .is_some_and(|e| e.upgrade().is_none_or(|e| e.sender.same_channel(&sender)))
            {
                shared.remove(&key);
            }
        }
    };
    while let Some(response) = responses.next().await {
        // A subscription's error ends it.
        if response.is_err() {
            retire();
        }
        // Nobody listening means the execution is being dropped.
        let _ = sender.send(Message::Payload(serialize(response)));
    }
    retire();
    let _ = sender.send(Message::End);
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
