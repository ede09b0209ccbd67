//! GraphQL over WebSocket on `/graphql`: `graphql-transport-ws` (the graphql-ws library)
//! and the legacy `graphql-ws` (subscriptions-transport-ws).
//!
//! async-graphql's protocol handler answers `connection_init`, pings and malformed
//! messages; this loop adds authentication at `connection_init` (from its payload's
//! `authorization`, or the upgrade request's header), closing a connection that sends no
//! `connection_init` within 10 seconds (4408), keep-alive messages, and runs the operations
//! itself (`fanout`), at most 100 per connection, so that subscribers of the same live
//! subscription share its execution.

mod fanout;
mod socket;

use std::time::Duration;

use async_graphql::Request;
use async_graphql::http::{WebSocket as Protocol, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use fanout::Fanout;
use fanout::Payload;
pub use socket::SEND_TIMEOUT;
use socket::{
    Operations, State, Step, close_reason, complete, send_all_within, send_within, too_big,
};

use crate::context::AppContext;
use crate::credentials::{Principal, Refusal};
use crate::error::Code;
use crate::graphql::AppSchema;
use crate::refusals::Origin;
use crate::service::capacity::share::Held;
use crate::service::capacity::size::json_size;

/// How long a client may take to send `connection_init`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server sends a keep-alive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Largest message a client may send (as large as a request body over HTTP); a larger one
/// closes the connection with 1009.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Most operations (subscriptions) one connection may have running.
pub const MAX_SUBSCRIPTIONS: usize = 100;
/// Most messages sent in one write.
const MAX_COALESCED: usize = 64;
/// Most bytes sent in one write (more when one message is larger).
const MAX_COALESCED_BYTES: usize = 256 * 1024;
/// Client messages waiting for async-graphql; a client that outruns it is disconnected.
const INBOX: usize = 1024;

/// An upgraded request, ready to serve.
pub struct Connection {
    pub schema: AppSchema,
    pub context: AppContext,
    pub fanout: Fanout,
    pub protocol: WebSocketProtocols,
    pub upgrade_authorization: Option<String>,
    pub origin: Origin,
}

/// What the loop does with a message from the client.
enum Inbound {
    Forward(String),
    Reply(String),
    /// An operation, with the memory its request takes held for as long as it runs.
    Start(String, Box<Request>, Held),
    Stop(String),
    Close(u16, String),
}

impl Connection {
    /// Serves the connection until either side closes it.
    pub async fn serve(self, socket: WebSocket) {
        let (sink, mut source) = socket.split();
        let (to_protocol, from_client) = mpsc::channel::<String>(INBOX);
        // It sees `connection_init` only once the credential is accepted, and runs no
        // operation: it answers `connection_init`, pings and malformed messages.
        let mut graphql = Protocol::new(
            self.schema.clone(),
            ReceiverStream::new(from_client),
            self.protocol,
        );
        let mut state = State {
            sink,
            to_protocol,
            initialized: false,
            operations: Operations::new(),
            principal: None,
            allowance: None,
        };
        let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(init_deadline);
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        let ping = match self.protocol {
            WebSocketProtocols::GraphQLWS => r#"{"type":"ping"}"#,
            WebSocketProtocols::SubscriptionsTransportWS => r#"{"type":"ka"}"#,
        };
        let mut stopping = self.context.stopping.clone();
        let close = loop {
            let step = tokio::select! {
                () = async { drop(stopping.wait_for(|stopping| *stopping).await) } => {
                    Step::End(Some(state.shut_down().await))
                }
                message = source.next() => self.on_message(&mut state, message).await,
                Some(first) = state.operations.next() => self.send_ready(&mut state, first).await,
                message = graphql.next() => match message {
                    Some(WsMessage::Text(text)) => state.send(text).await,
                    Some(WsMessage::Close(code, reason)) => Step::End(Some((code, reason))),
                    None => Step::End(None),
                },
                () = &mut init_deadline, if !state.initialized => {
                    Step::End(Some((4408, "Connection initialisation timeout".to_owned())))
                }
                _ = keepalive.tick(), if state.initialized => state.send(ping.to_owned()).await,
            };
            if let Step::End(close) = step {
                break close;
            }
        };
        let frame = close.map(|(code, reason)| CloseFrame {
            code,
            reason: close_reason(reason).into(),
        });
        // The peer may already be gone, or not reading.
        send_within(&mut state.sink, Message::Close(frame)).await;
    }

    /// A message from the client.
    async fn on_message(
        &self,
        state: &mut State,
        message: Option<Result<Message, axum::Error>>,
    ) -> Step {
        let text = match message {
            Some(Ok(Message::Text(text))) => text.to_string(),
            Some(Ok(Message::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Step::Go,
            Some(Err(err)) if too_big(&err) => {
                let reason = format!("a message may hold at most {MAX_MESSAGE_BYTES} bytes");
                return Step::End(Some((1009, reason)));
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => return Step::End(None),
        };
        let inbound = self
            .inbound(text, &mut state.initialized, &mut state.principal)
            .await;
        if let (Some(principal), None) = (&state.principal, &state.allowance) {
            state.allowance = Some(self.fanout.allowance(&principal.tenant_id));
        }
        match self.admit(inbound, &state.operations) {
            // Never wait here: async-graphql drains the inbox only when the loop polls it,
            // so waiting for room would deadlock.
            Inbound::Forward(text) => match state.to_protocol.try_send(text) {
                Ok(()) => Step::Go,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Step::End(Some((1008, "too many messages in flight".to_owned())))
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Step::End(None),
            },
            Inbound::Reply(text) => state.send(text).await,
            Inbound::Start(id, request, held) => self.start(state, id, *request, held),
            Inbound::Stop(id) => match state.operations.remove(&id) {
                Some(_) => state.send(complete(&id)).await,
                None => Step::Go,
            },
            Inbound::Close(code, reason) => Step::End(Some((code, reason))),
        }
    }

    /// Starts an operation of an initialized connection, holding the memory its request
    /// takes for as long as it runs.
    fn start(&self, state: &mut State, id: String, request: Request, held: Held) -> Step {
        let (Some(principal), Some(allowance)) = (&state.principal, &state.allowance) else {
            return Step::End(Some(match self.protocol {
                WebSocketProtocols::GraphQLWS => (4401, "Unauthorized".to_owned()),
                WebSocketProtocols::SubscriptionsTransportWS => {
                    (1011, "The handshake is not completed.".to_owned())
                }
            }));
        };
        let payloads =
            self.fanout
                .execute(&self.schema, request, principal, &self.origin, allowance);
        let end = futures_util::stream::once(async move {
            drop(held);
            None
        });
        state
            .operations
            .insert(id, payloads.map(Some).chain(end).boxed());
        Step::Go
    }

    /// Sends `first` and whatever else is ready, in one write.
    async fn send_ready(&self, state: &mut State, first: (String, Option<Payload>)) -> Step {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some((id, payload)) = next {
            if payload.is_none() {
                state.operations.remove(&id);
            }
            let frame = self.frame(&id, payload);
            bytes += frame.len();
            batch.push(frame);
            next = match batch.len() < MAX_COALESCED && bytes < MAX_COALESCED_BYTES {
                true => state.operations.next().now_or_never().flatten(),
                false => None,
            };
        }
        match send_all_within(&mut state.sink, batch).await {
            true => Step::Go,
            false => Step::End(None),
        }
    }

    /// A `next` message (`data` in the legacy protocol), or `complete` when `payload` is
    /// `None`.
    fn frame(&self, id: &str, payload: Option<Payload>) -> String {
        let Some(payload) = payload else {
            return complete(id);
        };
        let kind = match self.protocol {
            WebSocketProtocols::GraphQLWS => "next",
            WebSocketProtocols::SubscriptionsTransportWS => "data",
        };
        let id = Value::from(id);
        format!(r#"{{"type":"{kind}","id":{id},"payload":{payload}}}"#)
    }

    /// Authenticates `connection_init` and checks operations before they start; the rest
    /// goes to async-graphql as it is.
    async fn inbound(
        &self,
        text: String,
        initialized: &mut bool,
        admitted: &mut Option<Principal>,
    ) -> Inbound {
        // Decoded, a message of small JSON values takes many times its length (twice
        // over: the message, then the request in it): the caller's to wait for first.
        let tenant_id = admitted.as_ref().map_or("", |p| p.tenant_id.as_str());
        let held = match self
            .context
            .requests
            .reserve(tenant_id, 2 * json_size(&text))
            .await
        {
            Ok(held) => held,
            Err(_) => {
                return Inbound::Close(1013, "the server is busy; try again later".to_owned());
            }
        };
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            return Inbound::Forward(text);
        };
        let id = message["id"].as_str().map(str::to_owned);
        match (message["type"].as_str(), id) {
            (Some("connection_init"), _) if !*initialized => {
                *initialized = true;
                let authorization = message["payload"]["authorization"]
                    .as_str()
                    .or(self.upgrade_authorization.as_deref());
                match self.context.auth.authenticate(authorization).await {
                    Ok(principal) => {
                        *admitted = Some(principal);
                        Inbound::Forward(text)
                    }
                    Err(Refusal::Failed(err)) => {
                        tracing::warn!(error = %err, "WebSocket credential not checked");
                        // 1013: try again later.
                        Inbound::Close(1013, err.to_string())
                    }
                    Err(Refusal::Denied(denial)) => {
                        self.context.metrics.error(Code::Unauthenticated.as_str());
                        self.context.refusals.record_denial(
                            None,
                            None,
                            None,
                            &denial.reason,
                            &self.origin,
                        );
                        match self.protocol {
                            WebSocketProtocols::GraphQLWS => Inbound::Close(4403, "Forbidden".to_owned()),
                            WebSocketProtocols::SubscriptionsTransportWS => Inbound::Reply(
                                json!({ "type": "connection_error", "payload": Code::Unauthenticated.json("Forbidden") })
                                    .to_string(),
                            ),
                        }
                    }
                }
            }
            // A payload that is not a request is async-graphql's to refuse.
            (Some("subscribe" | "start"), Some(id)) => {
                match serde_json::from_value::<Request>(message["payload"].clone()) {
                    Ok(request) => Inbound::Start(id, Box::new(request), held),
                    Err(_) => Inbound::Forward(text),
                }
            }
            (Some("complete" | "stop"), Some(id)) => Inbound::Stop(id),
            _ => Inbound::Forward(text),
        }
    }

    /// Refuses an operation whose id is in use (graphql-transport-ws), or one more than a
    /// connection may run.
    fn admit(&self, inbound: Inbound, operations: &Operations) -> Inbound {
        let Inbound::Start(id, ..) = &inbound else {
            return inbound;
        };
        let running = operations.contains_key(id);
        if running && self.protocol == WebSocketProtocols::GraphQLWS {
            return Inbound::Close(4409, format!("Subscriber for {id} already exists"));
        }
        if operations.len() >= MAX_SUBSCRIPTIONS && !running {
            self.context.metrics.error(Code::RateLimited.as_str());
            let error = Code::RateLimited.json(&format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
            ));
            let payload = match self.protocol {
                WebSocketProtocols::GraphQLWS => json!([error]),
                WebSocketProtocols::SubscriptionsTransportWS => error,
            };
            return Inbound::Reply(
                json!({ "id": id, "type": "error", "payload": payload }).to_string(),
            );
        }
        inbound
    }
}
