//! GraphQL over HTTP, POST and GET, following the GraphQL-over-HTTP specification where
//! async-graphql-axum's defaults do not: the response media type follows `Accept`, request
//! errors answered as `application/graphql-response+json` get HTTP 400 and no `data`,
//! mutations over GET are refused, and POST bodies must be JSON.

use std::panic::AssertUnwindSafe;

use async_graphql::Variables;
use async_graphql::parser::types::OperationType;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::json;

use crate::credentials::Principal;
use crate::error::{Code, Error};
use crate::graphql::{budget, documents, limits};
use crate::refusals::Origin;
use crate::service::capacity::size::json_size;

use super::caller::{admit, consistency};
use super::errors::{ErrorCodes, error_response, http_error, server_error};
use super::state::{AppState, GRAPHQL_RESPONSE_JSON, JSON};
use super::upgrade::websocket;

/// The response media types of GraphQL over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Media {
    Json,
    GraphqlResponseJson,
}

/// Picks the media type from `Accept`: `application/graphql-response+json` when the client
/// prefers it, else `application/json` (also for a missing `Accept`, as the spec's watershed
/// rule says).
pub(super) fn negotiate(headers: &HeaderMap) -> Media {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Media::Json;
    };
    let mut best = (Media::Json, -1.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse().ok())
            .unwrap_or(1.0);
        let candidate = match media.as_str() {
            "application/graphql-response+json" => Media::GraphqlResponseJson,
            "application/json" | "application/*" | "*/*" => Media::Json,
            _ => continue,
        };
        // Ties go to graphql-response+json: a client that lists it understands it.
        if q > 0.0 && (q > best.1 || (q == best.1 && candidate == Media::GraphqlResponseJson)) {
            best = (candidate, q);
        }
    }
    best.0
}

pub(super) async fn graphql_post(
    State(state): State<AppState>,
    parts: Parts,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let media = negotiate(&parts.headers);
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /graphql takes a JSON body (Content-Type: application/json)",
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than 1 MiB",
            );
        }
        Err(rejection) => return http_error(rejection.status(), &rejection.body_text()),
    };
    let (principal, origin) = match admit(&state, &parts).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return http_error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    // Decoded, a body of small JSON values takes many times its length: that memory is
    // the caller's to wait for, before it is spent.
    let decoded = json_size(text);
    let _held = match state
        .context
        .requests
        .reserve(&principal.tenant_id, decoded)
        .await
    {
        Ok(held) => held,
        Err(err) => return error_response(StatusCode::SERVICE_UNAVAILABLE, err),
    };
    let request: async_graphql::Request = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(err) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a GraphQL request: {err}"),
            );
        }
    };
    let request = request.data(consistency(&parts.headers));
    run(&state, request, media, principal, origin).await
}

/// The query string of a GraphQL GET request (async-graphql's parser expects
/// `operation_name`, the specification says `operationName`).
#[derive(Deserialize)]
pub(super) struct GetParams {
    #[serde(default)]
    query: String,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
}

pub(super) async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if parts.headers.contains_key(header::UPGRADE) {
        return websocket(state, &mut parts).await;
    }
    let media = negotiate(&parts.headers);
    let (principal, origin) = match admit(&state, &parts).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let params = match Query::<GetParams>::try_from_uri(&parts.uri) {
        Ok(Query(params)) => params,
        Err(err) => return http_error(StatusCode::BAD_REQUEST, &err.body_text()),
    };
    let decoded = params.variables.as_deref().map_or(0, json_size);
    let _held = match state
        .context
        .requests
        .reserve(&principal.tenant_id, decoded)
        .await
    {
        Ok(held) => held,
        Err(err) => return error_response(StatusCode::SERVICE_UNAVAILABLE, err),
    };
    let variables = match params
        .variables
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
    {
        Ok(variables) => Variables::from_json(variables.unwrap_or_default()),
        Err(err) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &format!("variables is not JSON: {err}"),
            );
        }
    };
    let mut request = async_graphql::Request::new(params.query).variables(variables);
    request.operation_name = params.operation_name;
    // `documents::operation` checks the nesting before it parses.
    if documents::operation(&mut request).is_some_and(|op| op.ty == OperationType::Mutation) {
        let error = Error::bad_input("", "mutations must be sent with POST");
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, error);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let request = request.data(consistency(&parts.headers));
    run(&state, request, media, principal, origin).await
}

/// The type of the operation `request` runs, and a required variable the request leaves
/// out: that is a request error, but async-graphql only notices when execution reaches the
/// variable. `None` when the document does not parse or names no single operation.
fn inspect(request: &mut async_graphql::Request) -> Option<(OperationType, Option<String>)> {
    let variables = std::mem::take(&mut request.variables);
    let inspected = documents::operation(request).map(|operation| {
        let missing = operation
            .variable_definitions
            .iter()
            .map(|definition| &definition.node)
            .filter(|definition| {
                !definition.var_type.node.nullable && definition.default_value.is_none()
            })
            .find(|definition| {
                let given = variables.get(&definition.name.node);
                given.is_none_or(|value| *value == async_graphql::Value::Null)
            })
            .map(|definition| definition.name.node.to_string());
        (operation.ty, missing)
    });
    request.variables = variables;
    inspected
}

/// Runs an admitted request and encodes its answer.
/// The operation's type is left in the response's extensions for `/metrics`.
pub(super) async fn run(
    state: &AppState,
    mut request: async_graphql::Request,
    media: Media,
    principal: Principal,
    origin: Origin,
) -> Response {
    if let Err(refused) = limits::check_text(&request.query) {
        return encode(async_graphql::Response::from_errors(vec![refused]), media);
    }
    let (operation, missing) = inspect(&mut request).unzip();
    let answer = respond_to(state, request, missing.flatten(), principal, origin).await;
    let mut response = encode(answer, media);
    if let Some(operation) = operation {
        response.extensions_mut().insert(operation);
    }
    response
}

/// Runs a request whose text is safe to parse, unless it leaves out a `missing` variable.
async fn respond_to(
    state: &AppState,
    request: async_graphql::Request,
    missing: Option<String>,
    principal: Principal,
    origin: Origin,
) -> async_graphql::Response {
    match missing {
        Some(name) => {
            let error =
                Error::bad_input(format!("${name}"), format!("variable ${name} is required"));
            async_graphql::Response::from_errors(vec![server_error(error)])
        }
        None => {
            let request = request.data(principal).data(origin);
            // A panic in the GraphQL engine answers this request with INTERNAL instead of
            // dropping its connection; the fuzz targets look for such inputs.
            let executed = AssertUnwindSafe(state.schema.execute(request)).catch_unwind();
            executed.await.unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                let error = Error::internal(format!("the GraphQL engine panicked: {message}"));
                async_graphql::Response::from_errors(vec![server_error(error)])
            })
        }
    }
}

/// The HTTP response for a GraphQL response, in the negotiated media type; one larger than
/// `MAX_RESPONSE_BYTES` is replaced by an error saying so.
pub(super) fn encode(mut response: async_graphql::Response, media: Media) -> Response {
    // What resolvers set (a write's consistency token).
    let headers = std::mem::take(&mut response.http_headers);
    response.errors.iter_mut().for_each(crate::graphql::label);
    // Errors before execution (parse, validation, variables) carry no path and leave no data.
    let request_error = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    let response_errors = ErrorCodes::of(&response.errors);
    // Load shed or database down before anything ran: worth a retry, so 503.
    let unavailable = Code::Unavailable.as_str();
    let shed = request_error && response_errors.0.iter().any(|code| code == unavailable);
    let body = if request_error {
        serde_json::to_vec(&json!({ "errors": response.errors }))
    } else {
        serde_json::to_vec(&response)
    };
    let body = match body {
        Ok(body) if body.len() > budget::MAX_RESPONSE_BYTES => {
            drop(body);
            let error = Error::bad_input(
                "",
                format!(
                    "the response would be larger than {} MiB; ask for fewer events or fields",
                    budget::MAX_RESPONSE_BYTES >> 20
                ),
            );
            return encode(
                async_graphql::Response::from_errors(vec![server_error(error)]),
                media,
            );
        }
        Ok(body) => body,
        Err(err) => {
            tracing::error!(error = %err, "could not serialize a GraphQL response");
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, Error::internal(err));
        }
    };
    let status = match media {
        _ if shed => StatusCode::SERVICE_UNAVAILABLE,
        Media::GraphqlResponseJson if request_error => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    let content_type = match media {
        Media::Json => JSON,
        Media::GraphqlResponseJson => GRAPHQL_RESPONSE_JSON,
    };
    let mut response = (status, [(header::CONTENT_TYPE, content_type)], body).into_response();
    response.headers_mut().extend(headers);
    if !response_errors.0.is_empty() {
        response.extensions_mut().insert(response_errors);
    }
    if shed {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> Media {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        negotiate(&headers)
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&HeaderMap::new()), Media::Json);
        assert_eq!(accept("application/json"), Media::Json);
        assert_eq!(accept("*/*"), Media::Json);
        assert_eq!(
            accept("application/graphql-response+json"),
            Media::GraphqlResponseJson
        );
        assert_eq!(
            accept("application/graphql-response+json, application/json;q=0.9"),
            Media::GraphqlResponseJson
        );
        assert_eq!(
            accept("application/graphql-response+json;q=0.5, application/json"),
            Media::Json
        );
        assert_eq!(accept("text/html"), Media::Json);
    }
}
