//! The WebSocket upgrade on `/graphql`: subprotocol negotiation, then `ws::Connection`.

use std::str::FromStr;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, WebSocketProtocols};
use axum::extract::{FromRequestParts, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::Response;
use tracing::Instrument;

use crate::ws;

use super::caller::origin;
use super::errors::http_error;
use super::state::AppState;

/// The read buffer of a WebSocket connection (axum's default, 128 KiB, is zero-filled on
/// every read, which cost a third of the CPU with a thousand subscribers).
const READ_BUFFER: usize = 4096;

pub(super) async fn websocket(state: AppState, parts: &mut axum::http::request::Parts) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return http_error(rejection.status(), &rejection.body_text()),
    };
    let protocol = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .and_then(|offered| {
            offered
                .split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        });
    let Some(protocol) = protocol else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "offer the WebSocket subprotocol graphql-transport-ws or graphql-ws",
        );
    };
    // The connection's operations are traced under the upgrade request.
    let span = tracing::info_span!("websocket");
    let connection = ws::Connection {
        schema: state.schema.clone(),
        context: state.context.clone(),
        fanout: state.fanout.clone(),
        protocol,
        upgrade_authorization: parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        origin: origin(parts),
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(ws::MAX_MESSAGE_BYTES)
        .max_frame_size(ws::MAX_MESSAGE_BYTES)
        // Clients send little; a large read buffer is zeroed on every read.
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| {
            let tracker = connection.context.connections.clone();
            tracker.track_future(connection.serve(socket).instrument(span))
        })
}
