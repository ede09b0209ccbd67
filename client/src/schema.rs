//! The server's schema for cynic (registered by build.rs from `schema.graphql`), with the
//! scalars the client's types map to: what every GraphQL type of the client is checked
//! against when the crate compiles.

use chrono::{DateTime, Utc};

#[cynic::schema("audit")]
pub(crate) mod schema {}

cynic::impl_scalar!(DateTime<Utc>, schema::DateTime);
cynic::impl_scalar!(serde_json::Value, schema::JSON);
