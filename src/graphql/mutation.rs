//! Write resolvers: record one event or a batch, through the one ingest path.

use async_graphql::{Context, Object};

use super::guards::RequireScope;
use super::types::{AuditEventInput, AuditLog};
use crate::context::AppContext;
use crate::credentials::{Principal, Scope};
use crate::refusals::Origin;
use crate::service::ingest::event::NewEvent;

#[derive(Default)]
pub struct AuditMutation;

#[Object]
impl AuditMutation {
    /// Records one event in your tenant and returns it once it is durably stored.
    #[graphql(guard = "RequireScope(Scope::Write)")]
    async fn log_audit_event(
        &self,
        ctx: &Context<'_>,
        input: AuditEventInput,
    ) -> async_graphql::Result<AuditLog> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        let event = in_trace(ctx, input.into());
        let mut stored = ingestor
            .ingest(&principal.tenant_id, vec![event])
            .await
            .map_err(|e| e.rooted_at("input", true))?;
        Ok(AuditLog::from(stored.remove(0)))
    }

    /// Records 1 to 1,000 events in your tenant, all or nothing, and returns them in input
    /// order once they are durably stored.
    #[graphql(guard = "RequireScope(Scope::Write)")]
    async fn log_audit_events(
        &self,
        ctx: &Context<'_>,
        inputs: Vec<AuditEventInput>,
    ) -> async_graphql::Result<Vec<AuditLog>> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        let events = inputs
            .into_iter()
            .map(|input| in_trace(ctx, input.into()))
            .collect();
        let stored = ingestor
            .ingest(&principal.tenant_id, events)
            .await
            .map_err(|e| e.rooted_at("inputs", false))?;
        Ok(stored.into_iter().map(AuditLog::from).collect())
    }
}

/// The event, linked to the request's trace unless it names a trace of its own.
fn in_trace(ctx: &Context<'_>, mut event: NewEvent) -> NewEvent {
    if event.trace_id.is_none() {
        event.trace_id = ctx.data_opt::<Origin>().and_then(|o| o.trace_id.clone());
    }
    event
}
