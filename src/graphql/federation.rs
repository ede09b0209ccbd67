//! Apollo Federation v2: how the gateway resolves this subgraph's entities (`_entities`).

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Guard, ID, Object};
use uuid::Uuid;

use super::budget;
use super::guards::RequireScope;
use super::loaders::{AuditLoader, EventKey};
use super::types::{ActorType, AuditActor, AuditLog, AuditTarget};
use crate::credentials::{Principal, Scope};
use crate::error::Error;
use audit_contract::rules::{MAX_ID_LEN, MAX_TYPE_LEN, check_id};

#[derive(Default)]
pub struct FederationQuery;

#[Object]
impl FederationQuery {
    /// `AuditLog @key(fields: "id")`; null for an unknown id or another tenant's event.
    #[graphql(entity)]
    async fn find_audit_log_by_id(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<AuditLog>> {
        RequireScope(Scope::Read).check(ctx).await?;
        let Ok(id) = Uuid::parse_str(&id) else {
            return Ok(None);
        };
        budget::charge(ctx, 1)?;
        let principal = ctx.data::<Principal>()?;
        let key = EventKey {
            tenant_ids: principal.readable_tenants().into(),
            id,
        };
        let loader = ctx.data::<DataLoader<AuditLoader>>()?;
        Ok(loader.load_one(key).await?.map(AuditLog::from))
    }

    /// `AuditActor @key(fields: "type id")`: any actor, with or without events.
    #[graphql(entity)]
    async fn find_audit_actor_by_type_and_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(key, name = "type")] kind: ActorType,
        #[graphql(key)] id: String,
    ) -> async_graphql::Result<AuditActor> {
        RequireScope(Scope::Read).check(ctx).await?;
        check_id("id", &id, MAX_ID_LEN).map_err(Error::from)?;
        Ok(AuditActor {
            kind,
            id,
            name: None,
        })
    }

    /// `AuditTarget @key(fields: "type id")`: any target, with or without events.
    #[graphql(entity)]
    async fn find_audit_target_by_type_and_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(key, name = "type")] kind: String,
        #[graphql(key)] id: String,
    ) -> async_graphql::Result<AuditTarget> {
        RequireScope(Scope::Read).check(ctx).await?;
        check_id("type", &kind, MAX_TYPE_LEN).map_err(Error::from)?;
        check_id("id", &id, MAX_ID_LEN).map_err(Error::from)?;
        Ok(AuditTarget {
            kind,
            id,
            name: None,
        })
    }
}
