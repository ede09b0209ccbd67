//! The GraphQL schema: roots, types, and the error-code extension.

mod errors;
pub mod mutation;
pub mod query;
pub mod scalars;
pub mod subscription;
pub mod types;

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};
use sea_orm::DatabaseConnection;

use crate::pubsub::Feed;
use crate::service::ingest::Ingestor;

/// Query root.
#[derive(MergedObject, Default)]
pub struct Query(query::AuditQuery);

/// Mutation root.
#[derive(MergedObject, Default)]
pub struct Mutation(mutation::AuditMutation);

/// Subscription root.
#[derive(MergedSubscription, Default)]
pub struct Subscription(subscription::AuditSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// Most nested selection depth.
pub const MAX_DEPTH: usize = 15;
/// Largest query complexity (one point per field).
pub const MAX_COMPLEXITY: usize = 2000;

fn builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .extension(errors::ErrorCodes)
}

/// The schema, serving `db`, writing through `ingestor`, watching `feed`. Neither connects
/// nor migrates.
pub fn build_schema(db: DatabaseConnection, ingestor: Ingestor, feed: Feed) -> AppSchema {
    builder().data(db).data(ingestor).data(feed).finish()
}

/// The schema in SDL, as `schema.graphql` holds it.
pub fn sdl() -> String {
    builder().finish().sdl()
}
