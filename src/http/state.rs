//! What every HTTP handler shares, and the limits of the HTTP surface.

use std::time::Duration;

use crate::context::AppContext;
use crate::graphql::AppSchema;
use crate::ws::Fanout;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a client may take to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json; charset=utf-8";
pub const JSON: &str = "application/json; charset=utf-8";

/// What every handler shares: the schema, and the context it was built with.
#[derive(Clone)]
pub struct AppState {
    pub schema: AppSchema,
    pub context: AppContext,
    /// The live subscriptions of the WebSocket connections.
    pub fanout: Fanout,
}
