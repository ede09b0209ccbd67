//! What the fuzz targets in `fuzz/` run, so that the test suite can replay their corpus
//! through the same code: hostile documents through the guard, parser and validation, and
//! hostile JSON through variables, metadata validation, canonical encoding and reading.

use std::sync::LazyLock;

use async_graphql::{Request, Variables};
use chrono::Utc;
use entity::audit_log::{ActorType, Metadata, Outcome};

use crate::graphql::{AppSchema, bare_schema, expansion, limits};
use crate::service::ingest::event::NewEvent;
use crate::service::privacy::store::DataKeys;
use crate::service::query::filter::Filter;

static SCHEMA: LazyLock<AppSchema> = LazyLock::new(bare_schema);
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("no runtime for the fuzz targets: {e}"))
});

/// A GraphQL document, as a client would send it: never a crash, every error coded; and
/// what the guard lets through never expands to more selections than it counted.
pub fn document(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    guard_counts_enough(text);
    let response = RUNTIME.block_on(SCHEMA.execute(Request::new(text)));
    for error in &response.errors {
        let coded = error
            .extensions
            .as_ref()
            .is_some_and(|e| e.get("code").is_some());
        assert!(coded, "an error without a code: {error:?}");
    }
}

/// The guard's count of a document it lets through against a walk that unrolls every
/// fragment spread, as async-graphql's recursion check and validation do; and the count
/// of its text (checked before parsing) never above it, so that the text's check refuses
/// nothing the guard would let through.
fn guard_counts_enough(text: &str) {
    use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
    if limits::nesting(text) > limits::MAX_NESTING {
        return;
    }
    let Ok(document) = async_graphql::parser::parse_query(text) else {
        return;
    };
    let Ok(counted) = expansion::expansion(&document) else {
        return;
    };
    /// Selections under `set`, spreads unrolled; stops once past `budget`.
    fn walk(document: &ExecutableDocument, set: &SelectionSet, depth: usize, budget: &mut isize) {
        assert!(
            depth <= expansion::MAX_RECURSION + 1,
            "the guard let a deeper document through"
        );
        for selection in &set.items {
            if *budget < 0 {
                return;
            }
            *budget -= 1 + selection.node.directives().len() as isize;
            match &selection.node {
                Selection::Field(field) => {
                    walk(document, &field.node.selection_set.node, depth + 1, budget)
                }
                Selection::InlineFragment(fragment) => walk(
                    document,
                    &fragment.node.selection_set.node,
                    depth + 1,
                    budget,
                ),
                Selection::FragmentSpread(spread) => {
                    if let Some(fragment) = document.fragments.get(&spread.node.fragment_name.node)
                    {
                        walk(
                            document,
                            &fragment.node.selection_set.node,
                            depth + 1,
                            budget,
                        );
                    }
                }
            }
        }
    }
    let mut budget = counted as isize;
    for (_, operation) in document.operations.iter() {
        walk(
            &document,
            &operation.node.selection_set.node,
            0,
            &mut budget,
        );
    }
    for fragment in document.fragments.values() {
        walk(&document, &fragment.node.selection_set.node, 0, &mut budget);
    }
    assert!(
        budget >= 0,
        "the guard counted {counted} selections; unrolling found more"
    );
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
        subject_ids: Vec::new(),
        personal_paths: Vec::new(),
    };
    if event.validate(Utc::now()).is_ok() {
        let keys: DataKeys = (event.subjects().into_iter())
            .map(|subject| (("t".to_owned(), subject), [1; 32]))
            .collect();
        let (model, _) = (event
            .clone()
            .into_model("t", 1, Utc::now(), vec![0; 32], &keys))
        .unwrap_or_else(|e| panic!("an accepted event becomes a row: {e}"));
        let text = serde_json::to_string(&*model.metadata)
            .unwrap_or_else(|e| panic!("accepted metadata does not serialize: {e}"));
        assert_eq!(Metadata::parse(&text), model.metadata, "reads back");
        assert!(
            event.same_content(&model, &keys).unwrap_or(false),
            "a retry equals what it stored"
        );
    }
    let filter = Filter {
        tenant_ids: vec!["t".to_owned()],
        metadata: Some(value),
        ..Filter::default()
    };
    let _ = filter.validate();
}
