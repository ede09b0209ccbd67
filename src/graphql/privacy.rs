//! Privacy resolvers (docs/privacy.md): the action registry, the tenant's settings, and
//! erasing a data subject's personal values.

use async_graphql::{Context, InputObject, Json, Object, SimpleObject};
use serde_json::Value;

use super::guards::RequireScope;
use super::reads;
use super::scalars::DateTime;
use super::types::AuditLog;
use crate::context::AppContext;
use crate::credentials::{Principal, Scope};
use crate::error::Error;
use crate::service::actions::{self, Action, Change};
use crate::service::ingest::Erasure;

#[derive(Default)]
pub struct PrivacyQuery;

#[derive(Default)]
pub struct PrivacyMutation;

/// A registered action: what it means, what its metadata must look like, where that
/// metadata holds personal data.
#[derive(SimpleObject)]
pub struct AuditAction {
    pub action: String,
    pub description: String,
    /// The JSON Schema (2020-12) every event of this action's metadata satisfies.
    pub metadata_schema: Option<Json<Value>>,
    /// JSON Pointers into metadata (`/email`) of personal values: sealed like the actor's
    /// name, shown only to `audit:pii`, erased with their subjects.
    pub personal_paths: Vec<String>,
    /// Days the personal values of its events are kept before they are erased (events and
    /// proofs stay).
    pub retention_days: Option<i32>,
    pub updated_at: DateTime,
}

impl From<Action> for AuditAction {
    fn from(action: Action) -> Self {
        AuditAction {
            action: action.action,
            description: action.description,
            metadata_schema: action.metadata_schema.map(Json),
            personal_paths: action.personal_paths,
            retention_days: action.retention_days,
            updated_at: DateTime(action.updated_at),
        }
    }
}

/// An action to register, or a registration to replace.
#[derive(InputObject)]
pub struct AuditActionInput {
    /// Dot-separated segments, as events name it (`project.created`).
    pub action: String,
    /// What it means (at most 1,000 characters).
    pub description: String,
    /// A JSON Schema (2020-12) for the metadata of its events: at most 64 KiB and 32
    /// levels; `pattern`s use a linear-time engine (no look-around or back-references) and
    /// references stay inside the schema.
    pub metadata_schema: Option<Json<Value>>,
    /// JSON Pointers into metadata of personal values (at most 32).
    pub personal_paths: Option<Vec<String>>,
    /// Days its events' personal values are kept (1 or more); forever by default.
    pub retention_days: Option<i32>,
}

/// A tenant's settings.
#[derive(SimpleObject)]
pub struct AuditTenantSettings {
    /// Events whose action is not registered are refused (`audit.*` actions excepted).
    pub require_registered_actions: bool,
}

#[Object]
impl PrivacyQuery {
    /// Your tenant's registered actions, by name.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_actions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AuditAction>> {
        let principal = ctx.data::<Principal>()?;
        let (_, found) = actions::store::load(reads::db(ctx).await?, &principal.tenant_id).await?;
        Ok(found.into_iter().map(AuditAction::from).collect())
    }

    /// Your tenant's settings.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_tenant_settings(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<AuditTenantSettings> {
        let principal = ctx.data::<Principal>()?;
        let (require, _) =
            actions::store::load(reads::db(ctx).await?, &principal.tenant_id).await?;
        Ok(AuditTenantSettings {
            require_registered_actions: require,
        })
    }
}

/// What an erasure did.
#[derive(SimpleObject)]
pub struct AuditErasure {
    /// The data subject erased.
    pub subject_id: String,
    /// Events whose personal values were erased by this call (0 when a previous call had
    /// erased them all).
    pub erased_events: i32,
    /// The `audit.subject.erased` event that records the erasure.
    pub event: AuditLog,
}

#[Object]
impl PrivacyMutation {
    /// Registers an action in your tenant, or replaces its registration; recorded as
    /// `audit.action.registered`. Events of the action logged afterwards must satisfy its
    /// schema, and its personal paths are sealed.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn register_audit_action(
        &self,
        ctx: &Context<'_>,
        input: AuditActionInput,
    ) -> async_graphql::Result<AuditAction> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        let action = Action {
            action: input.action,
            description: input.description,
            metadata_schema: input.metadata_schema.map(|schema| schema.0),
            personal_paths: input.personal_paths.unwrap_or_default(),
            retention_days: input.retention_days,
            updated_at: crate::service::ingest::event::micros(chrono::Utc::now()),
        };
        actions::check(&action).map_err(|e| e.rooted_at("input.", true))?;
        let change = Change::Register(action.clone());
        ingestor
            .configure(&principal.tenant_id, change, &principal.subject)
            .await?;
        Ok(action.into())
    }

    /// Removes an action's registration from your tenant; recorded as
    /// `audit.action.removed`. Returns whether it was registered.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn remove_audit_action(
        &self,
        ctx: &Context<'_>,
        action: String,
    ) -> async_graphql::Result<bool> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        let change = Change::Remove(action);
        let event = ingestor
            .configure(&principal.tenant_id, change, &principal.subject)
            .await?;
        Ok(event.metadata["changed"] == Value::Bool(true))
    }

    /// Changes your tenant's settings; recorded as `audit.settings.changed`.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn set_audit_tenant_settings(
        &self,
        ctx: &Context<'_>,
        require_registered_actions: bool,
    ) -> async_graphql::Result<AuditTenantSettings> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        let change = Change::RequireRegistered(require_registered_actions);
        ingestor
            .configure(&principal.tenant_id, change, &principal.subject)
            .await?;
        Ok(AuditTenantSettings {
            require_registered_actions,
        })
    }

    /// Erases a data subject's personal values in your tenant (GDPR article 17): its key
    /// and every sealed copy of its values are destroyed, so even `audit:pii` reads
    /// `[erased]`; events, sequences, hashes and proofs stay as they were. Recorded as
    /// `audit.subject.erased` with the reason and the count. Calling it again erases
    /// nothing more.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn erase_audit_subject(
        &self,
        ctx: &Context<'_>,
        subject_id: String,
        reason: String,
    ) -> async_graphql::Result<AuditErasure> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        check_text("subjectId", &subject_id, 256)?;
        check_text("reason", &reason, 1000)?;
        let erasure = Erasure {
            subject_id: subject_id.clone(),
            reason,
            requested_by: principal.subject.clone(),
        };
        let event = ingestor.erase(&principal.tenant_id, erasure).await?;
        let erased = event.metadata["erasedEvents"].as_i64().unwrap_or_default();
        Ok(AuditErasure {
            subject_id,
            erased_events: i32::try_from(erased).unwrap_or(i32::MAX),
            event: event.into(),
        })
    }
}

/// 1 to `max` characters, none of them control characters.
fn check_text(field: &str, text: &str, max: usize) -> Result<(), Error> {
    if text.trim().is_empty() || text.chars().count() > max || text.chars().any(char::is_control) {
        return Err(Error::bad_input(
            field,
            format!("{field} has 1 to {max} characters and no control characters"),
        ));
    }
    Ok(())
}
