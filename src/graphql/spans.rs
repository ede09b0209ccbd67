//! A `graphql` span around every operation, named by its type and name (see `telemetry`).

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType};
use async_graphql::{Response, ServerResult, Variables};
use tracing::Instrument;
use tracing::field::Empty;

pub struct Spans;

impl ExtensionFactory for Spans {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Spans)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for Spans {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let span = tracing::info_span!(
            "graphql",
            otel.name = "graphql",
            graphql.operation.type = Empty,
            graphql.operation.name = Empty,
        );
        next.run(ctx).instrument(span).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        if let Some((name, operation)) = document.operations.iter().next() {
            let kind = match operation.node.ty {
                OperationType::Query => "query",
                OperationType::Mutation => "mutation",
                OperationType::Subscription => "subscription",
            };
            let span = tracing::Span::current();
            span.record("graphql.operation.type", kind);
            // The client names its operations: a long name is cut.
            let name: String = name
                .map(|n| n.as_str())
                .unwrap_or_default()
                .chars()
                .take(128)
                .collect();
            span.record("graphql.operation.name", name.as_str());
            crate::telemetry::rename(&span, format!("{kind} {name}").trim_end());
        }
        Ok(document)
    }
}
