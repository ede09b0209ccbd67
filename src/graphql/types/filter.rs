//! `AuditLogFilter`, converted to the service layer's `Filter` with tenant scoping.

use async_graphql::{InputObject, InputType, Json};
use serde_json::Value;

use crate::credentials::Principal;
use crate::error::{Error, Result};
use crate::graphql::scalars::DateTime;
use crate::service::query::filter::Filter;

use super::enums::{ActorType, AuditOutcome};

/// Which events to return. Every field narrows the result; list fields match any of their
/// values (at most 100 each, never empty).
#[derive(InputObject, Clone, Debug, Default)]
pub struct AuditLogFilter {
    /// Events of these tenants; your own tenant by default, others need `audit:admin`.
    pub tenant_ids: Option<Vec<String>>,
    /// Events by any of these actors.
    pub actor_ids: Option<Vec<String>>,
    /// Events by any of these kinds of actor.
    pub actor_types: Option<Vec<ActorType>>,
    /// Events with any of these actions; an entry ending in `.*` matches a prefix
    /// (`project.*` matches `project.created` and `project.member.added`).
    pub actions: Option<Vec<String>>,
    /// Events on targets of this type.
    pub target_type: Option<String>,
    /// Events on any of these targets (needs `targetType`).
    pub target_ids: Option<Vec<String>>,
    /// Events with any of these outcomes.
    pub outcomes: Option<Vec<AuditOutcome>>,
    /// Events that occurred at or after this time.
    pub occurred_after: Option<DateTime>,
    /// Events that occurred before this time.
    pub occurred_before: Option<DateTime>,
    /// Events of this request.
    pub request_id: Option<String>,
    /// Events whose metadata contains this JSON object (`{"env": "prod"}`).
    pub metadata: Option<Json<Value>>,
}

impl AuditLogFilter {
    /// The filter written as JSON, as GraphQL variables carry it (`/export`, the CLI).
    pub fn from_json(json: Value) -> Result<Self> {
        let value = async_graphql::Value::from_json(json)
            .map_err(|_| Error::bad_input("filter", "filter is an AuditLogFilter as JSON"))?;
        let given: Vec<async_graphql::Name> = match &value {
            async_graphql::Value::Object(fields) => fields.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let filter = <Self as InputType>::parse(Some(value)).map_err(|err| {
            let message = err.into_server_error(async_graphql::Pos::default()).message;
            Error::bad_input(
                "filter",
                format!("filter is not an AuditLogFilter: {message}"),
            )
        })?;
        // Unknown fields are refused, as GraphQL refuses them: a misspelt field would
        // otherwise filter on nothing. Written back, the filter names every field it has.
        if let async_graphql::Value::Object(known) = filter.to_value()
            && let Some(unknown) = given.iter().find(|name| !known.contains_key(*name))
        {
            return Err(Error::bad_input(
                format!("filter.{unknown}"),
                format!("AuditLogFilter has no field `{unknown}`"),
            ));
        }
        Ok(filter)
    }

    /// The service filter for what `principal` may read, validated; error paths start at
    /// `filter`.
    pub fn into_filter(self, principal: &Principal) -> Result<Filter> {
        if let Some(tenant_ids) = &self.tenant_ids {
            Filter::validate_tenants(tenant_ids).map_err(|e| e.rooted_at("filter.", true))?;
        }
        let filter = Filter {
            tenant_ids: principal.tenants(self.tenant_ids)?,
            actor_ids: self.actor_ids,
            actor_types: self
                .actor_types
                .map(|v| v.into_iter().map(Into::into).collect()),
            actions: self.actions,
            target_type: self.target_type,
            target_ids: self.target_ids,
            outcomes: self
                .outcomes
                .map(|v| v.into_iter().map(Into::into).collect()),
            occurred_after: self.occurred_after.map(|t| t.0),
            occurred_before: self.occurred_before.map(|t| t.0),
            request_id: self.request_id,
            metadata: self.metadata.map(|m| m.0),
        };
        filter
            .validate()
            .map_err(|e| e.rooted_at("filter.", true))?;
        Ok(filter)
    }
}
