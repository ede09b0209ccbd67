//! Scope checks on resolvers; a refusal is recorded as `audit.access.denied`.

use async_graphql::{Context, Guard};

use crate::context::AppContext;
use crate::credentials::{Principal, Scope};
use crate::error::Error;
use crate::refusals::Origin;

/// Lets the request through only if its principal holds the scope (admins hold all).
pub struct RequireScope(pub Scope);

impl Guard for RequireScope {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let principal = ctx.data::<Principal>()?;
        if principal.has(self.0) {
            return Ok(());
        }
        if let Ok(AppContext { refusals, .. }) = ctx.data::<AppContext>() {
            let origin = ctx.data_opt::<Origin>().cloned().unwrap_or_default();
            let field = ctx
                .path_node
                .map(|p| p.field_name().to_owned())
                .unwrap_or_default();
            refusals.record_denial(
                Some(&principal.tenant_id),
                Some(&principal.subject),
                Some(&principal.credential),
                &format!("`{field}` needs the {} scope", self.0.as_str()),
                &origin,
            );
        }
        Err(Error::Forbidden(format!("this needs the {} scope", self.0.as_str())).into())
    }
}
