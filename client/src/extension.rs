//! `AuditExtension`: an async-graphql extension that records the mutation fields a
//! mapping table marks for audit, the Rust form of an "audit this method" decorator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextPrepareRequest, NextResolve, ResolveInfo,
};
use async_graphql::parser::types::{Field, Selection, SelectionSet};
use async_graphql::{Name, Request, ServerError, ServerResult, Value, Variables};

use crate::client::AuditClient;
use crate::event::{Actor, Context, Event, Outcome, Target};

/// What argument names are secret by default, matched case-insensitively as parts of the
/// name (`newPassword`, `clientSecret`, `apiToken`).
const SECRET_NAMES: [&str; 3] = ["password", "secret", "token"];
const REDACTED: &str = "[redacted]";

/// Records each executed mutation field it is told about; add it with
/// `Schema::build(..).extension(AuditExtension::new(&client).audit(..))`.
///
/// The actor is the [`Actor`] in the request's data (`request.data(actor)`), the context
/// the [`Context`] there, if any. The field's arguments become the event's metadata, with
/// secret ones replaced by `"[redacted]"`.
#[derive(Clone)]
pub struct AuditExtension {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    client: AuditClient,
    mutation_type: String,
    fields: HashMap<String, Audited>,
    anonymous: Actor,
}

/// How one mutation field is audited.
#[derive(Clone, Debug)]
pub struct Audited {
    action: String,
    target: Option<(String, TargetFrom)>,
    secrets: Vec<String>,
}

#[derive(Clone, Debug)]
enum TargetFrom {
    Argument(String),
    Result(String),
}

impl Audited {
    /// Records `action` (`project.created`).
    pub fn action(action: impl Into<String>) -> Self {
        Audited {
            action: action.into(),
            target: None,
            secrets: Vec::new(),
        }
    }

    /// The target is `kind` with the id in argument `argument`.
    pub fn target_from_argument(mut self, kind: impl Into<String>, argument: &str) -> Self {
        self.target = Some((kind.into(), TargetFrom::Argument(argument.to_owned())));
        self
    }

    /// The target is `kind` with the id in field `field` of the result, when the caller
    /// selected that field (under any alias).
    pub fn target_from_result(mut self, kind: impl Into<String>, field: &str) -> Self {
        self.target = Some((kind.into(), TargetFrom::Result(field.to_owned())));
        self
    }

    /// Also redacts argument `argument` (besides those named like a secret).
    pub fn secret(mut self, argument: &str) -> Self {
        self.secrets.push(argument.to_owned());
        self
    }
}

impl AuditExtension {
    pub fn new(client: &AuditClient) -> Self {
        AuditExtension {
            shared: Arc::new(Shared {
                client: client.clone(),
                mutation_type: "Mutation".to_owned(),
                fields: HashMap::new(),
                anonymous: Actor::user("anonymous"),
            }),
        }
    }

    /// Audits the mutation field `field`.
    pub fn audit(mut self, field: &str, audited: Audited) -> Self {
        Arc::make_mut(&mut self.shared)
            .fields
            .insert(field.to_owned(), audited);
        self
    }

    /// The name of the schema's mutation type, when it is not `Mutation`.
    pub fn mutation_type(mut self, name: &str) -> Self {
        Arc::make_mut(&mut self.shared).mutation_type = name.to_owned();
        self
    }

    /// The actor recorded when the request's data holds none (`USER anonymous`).
    pub fn anonymous(mut self, actor: Actor) -> Self {
        Arc::make_mut(&mut self.shared).anonymous = actor;
        self
    }
}

impl ExtensionFactory for AuditExtension {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(PerRequest {
            shared: self.shared.clone(),
            variables: Mutex::new(Variables::default()),
        })
    }
}

struct PerRequest {
    shared: Arc<Shared>,
    /// The request's variables, to read arguments given through them.
    variables: Mutex<Variables>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for PerRequest {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if !self.shared.fields.is_empty() {
            *self.variables.lock().unwrap_or_else(|p| p.into_inner()) = request.variables.clone();
        }
        next.run(ctx, request).await
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        let audited = match self.shared.fields.get(info.name) {
            Some(audited)
                if info.parent_type == self.shared.mutation_type
                    && info.path_node.parent.is_none() =>
            {
                audited
            }
            _ => return next.run(ctx, info).await,
        };
        let arguments = self.arguments(info.field);
        let info_field = info.field;
        let result = next.run(ctx, info).await;
        let actor = ctx
            .data_opt::<Actor>()
            .cloned()
            .unwrap_or_else(|| self.shared.anonymous.clone());
        let mut event = Event::new(actor, audited.action.clone());
        event.context = ctx.data_opt::<Context>().cloned();
        event.target = audited.target.as_ref().and_then(|(kind, from)| {
            let id = match from {
                TargetFrom::Argument(name) => arguments.get(name.as_str()).and_then(id_of),
                TargetFrom::Result(name) => match (&result, response_key(info_field, name)) {
                    (Ok(Some(Value::Object(object))), Some(key)) => object.get(key).and_then(id_of),
                    _ => None,
                },
            }?;
            Some(Target::new(kind.clone(), id))
        });
        (event.outcome, event.reason) = outcome(&result);
        event.metadata = Some(redacted(arguments, &audited.secrets));
        if let Err(error) = self.shared.client.try_enqueue(event.sanitized()) {
            tracing::error!(action = %audited.action, "audit event not enqueued: {error}");
        }
        result
    }
}

impl PerRequest {
    /// The field's arguments as given, with variables filled in.
    fn arguments(&self, field: &Field) -> serde_json::Map<String, serde_json::Value> {
        let variables = self.variables.lock().unwrap_or_else(|p| p.into_inner());
        field
            .arguments
            .iter()
            .filter_map(|(name, value)| {
                let value = value
                    .node
                    .clone()
                    .into_const_with(|var: Name| variables.get(&var).cloned().ok_or(()))
                    .ok()?;
                Some((name.node.to_string(), serde_json::to_value(value).ok()?))
            })
            .collect()
    }
}

/// Where the result holds field `name`: its alias, or its name. The caller shapes the
/// result (`{ id: name }` puts a name under `id`), so only a selection of that very field
/// counts, directly or in an inline fragment; when there is none the event has no target.
fn response_key<'a>(field: &'a Field, name: &str) -> Option<&'a str> {
    fn find<'a>(selections: &'a SelectionSet, name: &str) -> Option<&'a str> {
        selections
            .items
            .iter()
            .find_map(|selection| match &selection.node {
                Selection::Field(field) if field.node.name.node == name => {
                    Some(field.node.response_key().node.as_str())
                }
                Selection::InlineFragment(fragment) => {
                    find(&fragment.node.selection_set.node, name)
                }
                _ => None,
            })
    }
    find(&field.selection_set.node, name)
}

/// An id given as a string or a number.
fn id_of(value: &impl IdLike) -> Option<String> {
    value.id()
}

/// A JSON value of either kind that may hold an id.
trait IdLike {
    fn id(&self) -> Option<String>;
}

impl IdLike for serde_json::Value {
    fn id(&self) -> Option<String> {
        match self {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

impl IdLike for Value {
    fn id(&self) -> Option<String> {
        match self {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// `SUCCESS`, `DENIED` for access errors, or `FAILURE` with the error's message.
fn outcome(result: &ServerResult<Option<Value>>) -> (Option<Outcome>, Option<String>) {
    let error: &ServerError = match result {
        Ok(_) => return (Some(Outcome::Success), None),
        Err(error) => error,
    };
    let code = error
        .extensions
        .as_ref()
        .and_then(|e| e.get("code"))
        .and_then(|code| match code {
            Value::String(code) => Some(code.as_str()),
            _ => None,
        });
    let outcome = match code {
        Some("FORBIDDEN" | "UNAUTHENTICATED") => Outcome::Denied,
        _ => Outcome::Failure,
    };
    (
        Some(outcome),
        Some(error.message.chars().take(4096).collect()),
    )
}

/// The arguments as metadata, secrets replaced at any depth.
fn redacted(
    arguments: serde_json::Map<String, serde_json::Value>,
    secrets: &[String],
) -> serde_json::Value {
    fn walk(value: &mut serde_json::Value, secrets: &[String]) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if is_secret(key, secrets) {
                        *value = serde_json::Value::from(REDACTED);
                    } else {
                        walk(value, secrets);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, secrets)),
            _ => {}
        }
    }
    let mut value = serde_json::Value::Object(arguments);
    walk(&mut value, secrets);
    value
}

fn is_secret(name: &str, secrets: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| lower.contains(s)) || secrets.iter().any(|s| s == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let arguments = serde_json::json!({
            "id": "k-1",
            "secret": "s3cr3t",
            "input": {"newPassword": "pw", "name": "n", "list": [{"apiToken": "t"}]},
            "pin": "1234",
        });
        let serde_json::Value::Object(arguments) = arguments else {
            unreachable!()
        };
        let out = redacted(arguments, &["pin".to_owned()]);
        assert_eq!(
            out,
            serde_json::json!({
                "id": "k-1",
                "secret": REDACTED,
                "input": {"newPassword": REDACTED, "name": "n", "list": [{"apiToken": REDACTED}]},
                "pin": REDACTED,
            })
        );
    }
}
