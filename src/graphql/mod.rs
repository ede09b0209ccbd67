//! The GraphQL schema: roots, types, and the error-code extension.

pub mod budget;
pub mod capacity;
pub mod documents;
mod errors;
pub mod expansion;
pub mod federation;
pub mod guards;
pub mod limits;
pub mod loaders;
pub mod mutation;
mod privacy;
pub mod query;
pub mod reads;
pub mod scalars;
mod spans;
mod streams;
pub mod subscription;
pub mod types;

pub use errors::{code_of, label};

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{
    MergedObject, MergedSubscription, SDLExportOptions, Schema, SchemaBuilder, ValidationMode,
};

use crate::context::AppContext;
/// How many requests of the largest complexity may run at once; smaller ones share the
/// same capacity in proportion.
const CONCURRENT_COMPLEXITY_LIMITS: usize = 4;

/// Query root.
#[derive(MergedObject, Default)]
pub struct Query(
    query::AuditQuery,
    query::AuditProofQuery,
    federation::FederationQuery,
    privacy::PrivacyQuery,
    streams::StreamQuery,
);

/// Mutation root.
#[derive(MergedObject, Default)]
pub struct Mutation(
    mutation::AuditMutation,
    privacy::PrivacyMutation,
    streams::StreamMutation,
);

/// Subscription root.
#[derive(MergedSubscription, Default)]
pub struct Subscription(subscription::AuditSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Limits and tunables of the schema.
#[derive(Clone, Debug)]
pub struct SchemaConfig {
    /// Most nested selection depth.
    pub max_depth: usize,
    /// Largest query complexity: a point per field, times the page size for each page.
    pub max_complexity: usize,
    /// Whether `__schema` and `__type` answer.
    pub introspection: bool,
    /// How long a DataLoader batch waits for more keys after its first.
    pub batch_window: Duration,
}

impl Default for SchemaConfig {
    fn default() -> Self {
        SchemaConfig {
            max_depth: 15,
            max_complexity: 50_000,
            introspection: true,
            batch_window: Duration::from_millis(2),
        }
    }
}

impl From<&crate::config::ServeConfig> for SchemaConfig {
    fn from(config: &crate::config::ServeConfig) -> Self {
        SchemaConfig {
            max_depth: config.max_depth,
            max_complexity: config.max_complexity,
            introspection: config.introspection,
            batch_window: Duration::from_millis(config.batch_window_ms),
        }
    }
}

fn builder(config: &SchemaConfig) -> SchemaBuilder<Query, Mutation, Subscription> {
    let builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .enable_federation()
    .limit_depth(config.max_depth)
    .limit_complexity(config.max_complexity);
    if config.introspection {
        builder
    } else {
        builder.disable_introspection()
    }
}

/// The builder with the checks every request passes: limits on documents, error codes,
/// and spans when traced.
fn checked(config: &SchemaConfig) -> SchemaBuilder<Query, Mutation, Subscription> {
    let builder = builder(config)
        .extension(errors::ErrorCodes)
        .extension(limits::DocumentLimits {
            introspection: config.introspection,
        });
    match crate::telemetry::enabled() {
        true => builder.extension(spans::Spans),
        false => builder,
    }
}

/// The schema, serving the context's database, writing through its ingestor, watching its
/// feed. Neither connects nor migrates. Queries, once checked and admitted, run on a
/// second schema without extensions (see [`capacity::Capacity`]); it validates only
/// what execution needs, because the first has validated the same document.
pub fn build_schema(context: AppContext, config: &SchemaConfig) -> AppSchema {
    let personal = loaders::PersonalLoader {
        db: context.db.clone(),
        keyring: context.keyring.clone(),
    };
    let personal = Arc::new(
        async_graphql::dataloader::DataLoader::new(personal, tokio::spawn)
            .max_batch_size(loaders::MAX_BATCH)
            .delay(config.batch_window),
    );
    let executor = builder(config)
        .validation_mode(ValidationMode::Fast)
        .data(context.clone())
        .data(personal.clone())
        .finish();
    let executor: capacity::Executor = Arc::new(move |request| {
        let executor = executor.clone();
        Box::pin(async move { executor.execute(request).await })
    });
    checked(config)
        .extension(capacity::Capacity::new(
            config.max_complexity,
            CONCURRENT_COMPLEXITY_LIMITS,
            context.reads.clone(),
            context.memory.clone(),
            config.batch_window,
            executor,
        ))
        .data(context)
        .data(personal)
        .finish()
}

/// The schema with its default limits and no data: it parses, validates and describes
/// documents, and its resolvers fail for want of a caller.
pub fn bare_schema() -> AppSchema {
    checked(&SchemaConfig::default()).finish()
}

/// The schema in SDL, as `schema.graphql` holds it.
pub fn sdl() -> String {
    bare_schema().sdl()
}

/// The Apollo Federation subgraph SDL, as `_service { sdl }` serves it and
/// `schema.subgraph.graphql` holds it.
pub fn subgraph_sdl() -> String {
    bare_schema().sdl_with_options(SDLExportOptions::new().federation().compose_directive())
}
