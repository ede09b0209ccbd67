//! GraphQL over WebSocket on `/graphql`: `graphql-transport-ws` (the graphql-ws library)
//! and the legacy `graphql-ws` (subscriptions-transport-ws).
//!
//! async-graphql speaks both protocols; this loop adds what it leaves out: closing a
//! connection that sends no `connection_init` within 10 seconds (code 4408), and keep-alive
//! messages from the server.

use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocket as Protocol, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::Principal;
use crate::graphql::AppSchema;

/// How long a client may take to send `connection_init`.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server sends a keep-alive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Serves one WebSocket connection until either side closes it.
pub async fn serve(socket: WebSocket, schema: AppSchema, protocol: WebSocketProtocols) {
    let (mut sink, mut source) = socket.split();
    let (to_protocol, from_client) = mpsc::channel::<String>(16);
    let mut graphql = Protocol::new(schema, ReceiverStream::new(from_client), protocol)
        .on_connection_init(|_payload| async {
            let mut data = Data::default();
            data.insert(Principal::open());
            Ok(data)
        });
    let init_deadline = tokio::time::sleep(INIT_TIMEOUT);
    tokio::pin!(init_deadline);
    let mut initialized = false;
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let ping = match protocol {
        WebSocketProtocols::GraphQLWS => r#"{"type":"ping"}"#,
        WebSocketProtocols::SubscriptionsTransportWS => r#"{"type":"ka"}"#,
    };

    let close = loop {
        tokio::select! {
            message = source.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Binary(bytes))) => String::from_utf8_lossy(&bytes).into_owned(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                };
                initialized |= is_connection_init(&text);
                if to_protocol.send(text).await.is_err() {
                    break None;
                }
            }
            message = graphql.next() => match message {
                Some(WsMessage::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
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
                if sink.send(Message::Text(ping.into())).await.is_err() {
                    break None;
                }
            }
        }
    };
    let frame = close.map(|(code, reason)| CloseFrame {
        code,
        reason: reason.into(),
    });
    // The peer may already be gone.
    let _ = sink.send(Message::Close(frame)).await;
}

fn is_connection_init(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Envelope>(text).is_ok_and(|m| m.kind == "connection_init")
}
