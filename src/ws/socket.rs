//! The socket side of a connection: what it holds while served, and sending within
//! `SEND_TIMEOUT` (a client that stops reading is let go).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::{BoxStream, SplitSink};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamMap;

use super::fanout::Payload;
use crate::credentials::Principal;
use crate::service::live::mailbox::Allowance;

/// How long a client may take to accept a message before it is disconnected.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the loop does next.
pub(super) enum Step {
    Go,
    /// Close the connection, with this code and reason if any.
    End(Option<(u16, String)>),
}

/// A connection as it is served: where its messages go, what it runs, who it is.
pub(super) struct State {
    pub sink: SplitSink<WebSocket, Message>,
    pub to_protocol: mpsc::Sender<String>,
    pub initialized: bool,
    pub operations: Operations,
    pub principal: Option<Principal>,
    pub allowance: Option<Arc<Allowance>>,
}

impl State {
    /// Sends a message; the connection ends when the client is gone or not reading.
    pub async fn send(&mut self, text: String) -> Step {
        match send_within(&mut self.sink, Message::Text(text.into())).await {
            true => Step::Go,
            false => Step::End(None),
        }
    }

    /// The server is shutting down: every subscription completes, then the connection
    /// closes as "going away", so that clients reconnect elsewhere.
    pub async fn shut_down(&mut self) -> (u16, String) {
        let ids: Vec<String> = self.operations.keys().cloned().collect();
        for id in &ids {
            if !send_within(&mut self.sink, Message::Text(complete(id).into())).await {
                break;
            }
        }
        (1001, "the server is shutting down".to_owned())
    }
}

/// The operations a connection runs, by id; each ends with `None`.
pub(super) type Operations = StreamMap<String, BoxStream<'static, Option<Payload>>>;

/// Sends a message to a client that reads it within `SEND_TIMEOUT`; `false` when the
/// client is gone or is not reading. A client that stops reading would otherwise stall its
/// subscriptions mid-way, holding what they hold, for as long as it likes.
pub(super) async fn send_within(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(message)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::info!("closing a WebSocket whose client stopped reading");
            false
        }
    }
}

/// Sends several messages in one write (see `send_within`).
pub(super) async fn send_all_within(
    sink: &mut SplitSink<WebSocket, Message>,
    batch: Vec<String>,
) -> bool {
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
pub(super) fn close_reason(mut reason: String) -> String {
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
pub(super) fn too_big(err: &axum::Error) -> bool {
    let source = std::error::Error::source(err);
    matches!(
        source.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

pub(super) fn complete(id: &str) -> String {
    json!({ "type": "complete", "id": id }).to_string()
}
