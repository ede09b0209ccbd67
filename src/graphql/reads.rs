//! Where a resolver reads: the request's [`ReadSource`], a replica when one is usable (see
//! `service::replicas`), picked on first use.

use std::sync::Arc;

use async_graphql::Context;
use sea_orm::DatabaseConnection;

use crate::service::replicas::ReadSource;

/// The connection this request reads from.
pub async fn db<'c>(ctx: &'c Context<'_>) -> async_graphql::Result<&'c DatabaseConnection> {
    Ok(ctx.data::<Arc<ReadSource>>()?.db().await)
}
