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

use std::time::Duration;

use async_graphql::Request;
use async_graphql::http::{WebSocket as Protocol, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{BoxStream, SplitSink};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::ReceiverStream;

pub use fanout::Fanout;
use fanout::Payload;

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
/// How long a client may take to accept a message before it is disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
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

/// The operations a connection runs, by id; each ends with `None`.
type Operations = StreamMap<String, BoxStream<'static, Option<Payload>>>;

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
        let (mut sink, mut source) = socket.split();
        let (to_protocol, from_client) = mpsc::channel::<String>(INBOX);
        // It sees `connection_init` only once the credential is accepted, and runs no
        // operation: it answers `connection_init`, pings and malformed messages.
        let mut graphql = Protocol::new(
            self.schema.clone(),
            ReceiverStream::new(from_client),
            self.protocol,
        );
        let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(init_deadline);
        let mut initialized = false;
        let mut operations = Operations::new();
        let mut principal = None;
        let mut allowance = None;
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        let ping = match self.protocol {
            WebSocketProtocols::GraphQLWS => r#"{"type":"ping"}"#,
            WebSocketProtocols::SubscriptionsTransportWS => r#"{"type":"ka"}"#,
        };

        let mut stopping = self.context.stopping.clone();
        let close = loop {
            tokio::select! {
                // The server is shutting down: every subscription completes, then the
                // connection closes as "going away", so that clients reconnect elsewhere.
                () = async { drop(stopping.wait_for(|stopping| *stopping).await) } => {
                    let ids: Vec<String> = operations.keys().cloned().collect();
                    for id in &ids {
                        if !send_within(&mut sink, Message::Text(complete(id).into())).await {
                            break;
                        }
                    }
                    break Some((1001, "the server is shutting down".to_owned()));
                }
                message = source.next() => {
                    let text = match message {
                        Some(Ok(Message::Text(text))) => text.to_string(),
                        Some(Ok(Message::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Err(err)) if too_big(&err) => {
                            break Some((1009, format!("a message may hold at most {MAX_MESSAGE_BYTES} bytes")));
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                    };
                    let inbound = self
                        .inbound(text, &mut initialized, &mut principal)
                        .await;
                    if let (Some(principal), None) = (&principal, &allowance) {
                        allowance = Some(self.fanout.allowance(&principal.tenant_id));
                    }
                    let inbound = self.admit(inbound, &operations);
                    match inbound {
                        // Never wait here: async-graphql drains the inbox only when this loop
                        // polls it, so waiting for room would deadlock.
                        Inbound::Forward(text) => match to_protocol.try_send(text) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                break Some((1008, "too many messages in flight".to_owned()));
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => break None,
                        },
                        Inbound::Reply(text) => {
                            if !send_within(&mut sink, Message::Text(text.into())).await {
                                break None;
                            }
                        }
                        Inbound::Start(id, request, held) => {
                            let (Some(principal), Some(allowance)) = (&principal, &allowance) else {
                                break Some(match self.protocol {
                                    WebSocketProtocols::GraphQLWS => (4401, "Unauthorized".to_owned()),
                                    WebSocketProtocols::SubscriptionsTransportWS => (1011, "The handshake is not completed.".to_owned()),
                                });
                            };
                            let payloads = self.fanout.execute(&self.schema, *request, principal, &self.origin, allowance);
                            let end = futures_util::stream::once(async move {
                                drop(held);
                                None
                            });
                            operations.insert(id, payloads.map(Some).chain(end).boxed());
                        }
                        Inbound::Stop(id) => {
                            if operations.remove(&id).is_some()
                                && !send_within(&mut sink, Message::Text(complete(&id).into())).await
                            {
                                break None;
                            }
                        }
                        Inbound::Close(code, reason) => break Some((code, reason)),
                    }
                }
                Some(first) = operations.next() => {
                    // What else is ready goes out in the same write.
                    let mut batch = Vec::new();
                    let mut bytes = 0;
                    let mut next = Some(first);
                    while let Some((id, payload)) = next {
                        if payload.is_none() {
                            operations.remove(&id);
                        }
                        let frame = self.frame(&id, payload);
                        bytes += frame.len();
                        batch.push(frame);
                        next = match batch.len() < MAX_COALESCED && bytes < MAX_COALESCED_BYTES {
                            true => operations.next().now_or_never().flatten(),
                            false => None,
                        };
                    }
                    if !send_all_within(&mut sink, batch).await {
                        break None;
                    }
                }
                message = graphql.next() => match message {
                    Some(WsMessage::Text(text)) => {
                        if !send_within(&mut sink, Message::Text(text.into())).await {
                            break None;
                        }
                    }
                    Some(WsMessage::Close(code, reason)) => break Some((code, reason)),
                    None => break None,
                },
                () = &mut init_deadline, if !initialized => {
                    break Some((4408, "Connection initialisation timeout".to_owned()));
                }
                _ = keepalive.tick(), if initialized => {
                    if !send_within(&mut sink, Message::Text(ping.into())).await {
                        break None;
                    }
                }
            }
        };
        let frame = close.map(|(code, reason)| CloseFrame {
            code,
            reason: close_reason(reason).into(),
        });
        // The peer may already be gone, or not reading.
        send_within(&mut sink, Message::Close(frame)).await;
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

/// Sends a message to a client that reads it within `SEND_TIMEOUT`; `false` when the
/// client is gone or is not reading. A client that stops reading would otherwise stall its
/// subscriptions mid-way, holding what they hold, for as long as it likes.
async fn send_within(sink: &mut SplitSink<WebSocket, Message>, message: Message) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::info!("closing a WebSocket whose client stopped reading");
            false
        }
    }
}

/// Sends several messages in one write (see `send_within`).
async fn send_all_within(sink: &mut SplitSink<WebSocket, Message>, batch: Vec<String>) -> bool {
    let send = async {
        for text in batch {
            sink.feed(Message::Text(text.into())).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, send).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::info!("closing a WebSocket whose client stopped reading");
            false
        }
    }
}

/// A close frame's reason, cut to the 123 bytes a control frame leaves for it (it may
/// repeat what the client sent, so its length is the client's to choose).
fn close_reason(mut reason: String) -> String {
    const MAX: usize = 123;
    if reason.len() > MAX {
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Whether a read failed because the message was larger than allowed.
fn too_big(err: &axum::Error) -> bool {
    let source = std::error::Error::source(err);
    matches!(
        source.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

fn complete(id: &str) -> String {
    json!({ "type": "complete", "id": id }).to_string()
}
