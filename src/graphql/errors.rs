//! Gives every error an `extensions.code`: errors raised by async-graphql itself (parse,
//! validation, input coercion, limits) have none, and are all the client's input.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe,
};
use async_graphql::{Response, ServerError};

use crate::context::AppContext;
use crate::error::Code;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        response.errors.iter_mut().for_each(label);
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        // Over HTTP, `/metrics` counts codes at the edge; over WebSocket, here.
        let metrics = ctx.data_opt::<AppContext>().map(|c| c.metrics.clone());
        next.run(ctx, stream)
            .map(move |mut response| {
                response.errors.iter_mut().for_each(label);
                if let Some(metrics) = &metrics {
                    let codes = response.errors.iter().filter_map(code_of);
                    codes.for_each(|code| metrics.error(code));
                }
                response
            })
            .boxed()
    }
}

/// An error's `extensions.code`.
pub fn code_of(error: &ServerError) -> Option<&str> {
    match error.extensions.as_ref()?.get("code")? {
        async_graphql::Value::String(code) => Some(code),
        _ => None,
    }
}

/// Marks an error without a code as `BAD_USER_INPUT`, with the argument path when the
/// message names one (`Invalid value for argument "input.action", ...`).
pub fn label(error: &mut ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_some() {
        return;
    }
    extensions.set("code", Code::BadUserInput.as_str());
    let field = error
        .message
        .strip_prefix("Invalid value for argument \"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(path, _)| bracket_indexes(path));
    if let Some(field) = field {
        extensions.set("field", field);
    }
}

/// `inputs.3.action` (async-graphql's form) becomes `inputs[3].action`, like our own paths.
fn bracket_indexes(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 2);
    for (i, segment) in path.split('.').enumerate() {
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if i > 0 {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn indexes_in_brackets() {
        assert_eq!(
            super::bracket_indexes("inputs.3.actor.type"),
            "inputs[3].actor.type"
        );
        assert_eq!(super::bracket_indexes("input.action"), "input.action");
    }
}
