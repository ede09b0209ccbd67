//! Who is asking, and whether they may: authentication before any work, with the
//! request's origin kept for the record of refusals.

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::credentials::{Principal, Refusal};
use crate::error::Error;
use crate::refusals::Origin;
use crate::service::replicas::{CONSISTENCY_HEADER, Consistency};

use super::errors::{error_response, status_of};
use super::listener::Peer;
use super::state::AppState;

/// Where a request came from: the peer address and its User-Agent.
pub(super) fn origin(parts: &Parts) -> Origin {
    Origin {
        ip: parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(Peer(peer))| peer.ip().to_string()),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        trace_id: crate::telemetry::trace_id(&parts.headers),
    }
}

/// Authenticates a request and counts it against its credential's rate limit; the error is
/// the response refusing it (401, 429, or 503 when the credential cannot be checked).
pub(super) async fn admit(
    state: &AppState,
    parts: &Parts,
) -> Result<(Principal, Origin), Response> {
    let origin = origin(parts);
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = match state.context.auth.authenticate(authorization).await {
        Ok(principal) => principal,
        Err(Refusal::Failed(err)) => {
            return Err(error_response(status_of(&err), err));
        }
        Err(Refusal::Denied(denial)) => {
            state.context.refusals.record_denial(
                denial.tenant_id.as_deref(),
                denial.subject.as_deref(),
                None,
                &denial.reason,
                &origin,
            );
            let error = Error::Unauthenticated(format!(
                "a valid credential is required: {}",
                denial.reason
            ));
            let mut response = error_response(StatusCode::UNAUTHORIZED, error);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(response);
        }
    };
    if let Err(err) = state.context.refusals.admit(&principal) {
        return Err(error_response(StatusCode::TOO_MANY_REQUESTS, err));
    }
    Ok((principal, origin))
}

/// The consistency token the request sent back from a write, if any.
pub(super) fn consistency(headers: &HeaderMap) -> Consistency {
    Consistency::of(
        headers
            .get(CONSISTENCY_HEADER)
            .and_then(|value| value.to_str().ok()),
    )
}
