//! What the fuzz targets in `fuzz/` run, so that the test suite can replay their corpus
//! through the same code: hostile documents through the guard, parser and validation, and
//! hostile JSON through variables, metadata validation, canonical encoding and reading.

use std::sync::LazyLock;

use async_graphql::{Request, Variables};
use chrono::Utc;
use entity::audit_log::{ActorType, Metadata, Outcome};

use crate::graphql::{AppSchema, bare_schema};
use crate::service::event::NewEvent;
use crate::service::filter::Filter;

static SCHEMA: LazyLock<AppSchema> = LazyLock::new(bare_schema);
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("no runtime for the fuzz targets: {e}"))
});

/// A GraphQL document, as a client would send it: never a crash, every error coded.
pub fn document(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let response = RUNTIME.block_on(SCHEMA.execute(Request::new(text)));
    for error in &response.errors {
        let coded = error
            .extensions
            .as_ref()
            .is_some_and(|e| e.get("code").is_some());
        assert!(coded, "an error without a code: {error:?}");
    }
}

/// JSON as variables, as metadata and as a metadata filter: validation refuses or accepts
/// it without crashing, and what it accepts reads back as it was stored.
pub fn json(data: &[u8]) {
    let stored = Metadata::parse(&String::from_utf8_lossy(data));
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let variables = Variables::from_json(serde_json::json!({ "input": value.clone() }));
    let request =
        Request::new("mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }")
            .variables(variables);
    let response = RUNTIME.block_on(SCHEMA.execute(request));
    assert!(!response.errors.is_empty(), "ran without a caller");
    assert_eq!(*stored, value, "stored text reads back as parsed");

    let event = NewEvent {
        actor_type: ActorType::User,
        actor_id: "fuzz".to_owned(),
        actor_name: None,
        action: "fuzz.tested".to_owned(),
        target: None,
        outcome: Outcome::Success,
        reason: None,
        occurred_at: None,
        metadata: Some(value.clone()),
        ip_address: None,
        user_agent: None,
        request_id: None,
        trace_id: None,
        idempotency_key: None,
    };
    if event.validate(Utc::now()).is_ok() {
        let model = event.clone().into_model("t", 1, Utc::now(), vec![0; 32]);
        let text = serde_json::to_string(&*model.metadata)
            .unwrap_or_else(|e| panic!("accepted metadata does not serialize: {e}"));
        assert_eq!(Metadata::parse(&text), model.metadata, "reads back");
        assert!(event.same_content(&model), "a retry equals what it stored");
    }
    let filter = Filter {
        tenant_ids: vec!["t".to_owned()],
        metadata: Some(value),
        ..Filter::default()
    };
    let _ = filter.validate();
}
