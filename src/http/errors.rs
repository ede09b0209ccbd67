//! Errors answered outside GraphQL: HTTP statuses and GraphQL-shaped JSON bodies.

use async_graphql::ServerError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::Error;

use super::state::JSON;

/// The codes of the errors a response carries, for `audit_errors_total` (see `track`).
#[derive(Clone)]
pub(super) struct ErrorCodes(pub Vec<String>);

impl ErrorCodes {
    /// The `extensions.code` of each error.
    pub(super) fn of(errors: &[ServerError]) -> Self {
        let codes = errors.iter().filter_map(crate::graphql::code_of);
        ErrorCodes(codes.map(str::to_owned).collect())
    }
}

/// An error as async-graphql carries it, with its code; it points at no place in a
/// document (none was parsed), so it has no `locations`.
pub(super) fn server_error(error: Error) -> ServerError {
    let mut error =
        async_graphql::Error::from(error).into_server_error(async_graphql::Pos::default());
    error.locations.clear();
    error
}

/// A GraphQL-shaped error for requests refused before they reach the schema.
pub(super) fn http_error(status: StatusCode, message: &str) -> Response {
    let error = if status.is_server_error() {
        Error::internal(message.to_owned())
    } else {
        Error::bad_input("", message)
    };
    error_response(status, error)
}

/// The HTTP status for an error answered outside GraphQL.
pub(super) fn status_of(error: &Error) -> StatusCode {
    match error {
        Error::BadInput { .. } => StatusCode::BAD_REQUEST,
        Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::Unavailable(_) | Error::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A JSON body `{"errors": [{message, extensions: {code, ...}}]}` for an error answered
/// outside GraphQL; rate limits and outages also say when to retry.
pub(super) fn error_response(status: StatusCode, error: Error) -> Response {
    let retry_after = match &error {
        Error::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        Error::Unavailable(_) | Error::Busy => Some(1),
        _ => None,
    };
    let code = error.code().as_str().to_owned();
    let body = json!({ "errors": [server_error(error)] });
    let mut response = (status, [(header::CONTENT_TYPE, JSON)], Json(body)).into_response();
    response.extensions_mut().insert(ErrorCodes(vec![code]));
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
