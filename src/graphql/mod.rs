//! The GraphQL schema: roots, types, and the error-code extension.

mod errors;
pub mod mutation;
pub mod query;
pub mod scalars;
pub mod types;

use async_graphql::{EmptySubscription, MergedObject, Schema, SchemaBuilder};
use sea_orm::DatabaseConnection;

use crate::service::ingest::Ingestor;

/// Query root.
#[derive(MergedObject, Default)]
pub struct Query(query::AuditQuery);

/// Mutation root.
#[derive(MergedObject, Default)]
pub struct Mutation(mutation::AuditMutation);

pub type AppSchema = Schema<Query, Mutation, EmptySubscription>;

/// Most nested selection depth.
pub const MAX_DEPTH: usize = 15;
/// Largest query complexity (one point per field).
pub const MAX_COMPLEXITY: usize = 2000;

fn builder() -> SchemaBuilder<Query, Mutation, EmptySubscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        EmptySubscription,
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .extension(errors::ErrorCodes)
}

/// The schema, serving `db` and writing through `ingestor`. Neither connects nor migrates.
pub fn build_schema(db: DatabaseConnection, ingestor: Ingestor) -> AppSchema {
    builder().data(db).data(ingestor).finish()
}

/// The schema in SDL, as `schema.graphql` holds it.
pub fn sdl() -> String {
    builder().finish().sdl()
}
