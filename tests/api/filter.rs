//! The filter means the same in SQL (on each backend) and in memory (the live tail's
//! `matches`): for generated filters over a seeded log, the database counts exactly the
//! events `matches` accepts. Metadata containment and action prefixes included.

use audit_service::service::query;
use audit_service::service::query::filter::Filter;
use chrono::{DateTime, Duration, Utc};
use entity::audit_log::{self, ActorType, Outcome};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sea_orm::EntityTrait;
use serde_json::{Value, json};

use crate::helpers::TestApp;

const CASES: u32 = 1000;

fn base() -> DateTime<Utc> {
    "2026-03-01T00:00:00Z".parse().expect("time")
}

/// 240 events covering every value the filters below ask about.
async fn seed(app: &TestApp) {
    let inputs: Vec<Value> = (0..240)
        .map(|i: i64| {
            let actions = [
                "project.created",
                "project.member.added",
                "role.assigned",
                "project.updated",
            ];
            let actor_type = ["USER", "SERVICE", "SYSTEM"][(i % 3) as usize];
            let outcome = ["SUCCESS", "FAILURE", "DENIED"][((i % 3 + i / 7 % 2) % 3) as usize];
            let target_type = ["project", "role"][(i % 2) as usize];
            let mut event = json!({
                "actor": { "type": actor_type, "id": format!("u-{}", i % 5) },
                "action": actions[(i % 4) as usize],
                "outcome": outcome,
                "occurredAt": (base() + Duration::minutes(i)).to_rfc3339(),
                "metadata": {
                    "env": if i % 2 == 0 { "prod" } else { "dev" },
                    "n": i % 3,
                    "tags": if i % 4 == 0 { json!(["a", "b"]) } else { json!(["a"]) },
                    "nested": { "k": i % 2, "deep": { "x": i % 5 } },
                },
                "context": { "requestId": format!("req-{}", i % 3) },
            });
            if i % 7 != 0 {
                event["target"] = json!({ "type": target_type, "id": format!("t-{}", i % 4) });
            }
            event
        })
        .collect();
    for chunk in inputs.chunks(120) {
        app.log_batch(json!(chunk)).await;
    }
}

fn some_of<T: Clone + std::fmt::Debug + 'static>(
    pool: Vec<T>,
) -> impl Strategy<Value = Option<Vec<T>>> {
    proptest::option::of(proptest::sample::subsequence(
        pool.clone(),
        1..=pool.len().min(3),
    ))
}

fn filters() -> impl Strategy<Value = Filter> {
    let instant = proptest::option::of((0i64..260).prop_map(|m| base() + Duration::minutes(m)));
    let metadata = proptest::option::of(proptest::sample::select(vec![
        json!({}),
        json!({ "env": "prod" }),
        json!({ "n": 1 }),
        json!({ "env": "dev", "n": 2 }),
        json!({ "tags": ["b"] }),
        json!({ "tags": ["a"] }),
        json!({ "nested": { "k": 1 } }),
        json!({ "nested": { "deep": { "x": 3 } } }),
        json!({ "env": "staging" }),
    ]));
    (
        some_of(vec!["u-0", "u-1", "u-3", "nobody"]),
        some_of(vec![ActorType::User, ActorType::Service, ActorType::System]),
        some_of(vec![
            "project.created",
            "project.*",
            "role.*",
            "project.member.*",
            "role.assigned",
            "none.*",
        ]),
        proptest::option::of(proptest::sample::select(vec!["project", "role", "api_key"])),
        some_of(vec!["t-0", "t-2", "t-9"]),
        some_of(vec![Outcome::Success, Outcome::Failure, Outcome::Denied]),
        (instant.clone(), instant),
        proptest::option::of(proptest::sample::select(vec!["req-0", "req-2", "req-9"])),
        metadata,
    )
        .prop_map(
            |(
                actors,
                types,
                actions,
                target_type,
                target_ids,
                outcomes,
                (after, before),
                request_id,
                metadata,
            )| {
                let owned =
                    |l: Option<Vec<&str>>| l.map(|l| l.into_iter().map(str::to_owned).collect());
                // A target id filter needs its type.
                let target_ids = target_type.and(owned(target_ids));
                Filter {
                    tenant_ids: vec!["default".into()],
                    actor_ids: owned(actors),
                    actor_types: types,
                    actions: owned(actions),
                    target_type: target_type.map(str::to_owned),
                    target_ids,
                    outcomes,
                    occurred_after: after,
                    occurred_before: before,
                    request_id: request_id.map(str::to_owned),
                    metadata,
                }
            },
        )
}

async fn sql_and_memory_agree(app: &TestApp) {
    seed(app).await;
    let events: Vec<audit_log::Model> = audit_log::Entity::find()
        .all(&app.db)
        .await
        .expect("events");
    assert_eq!(events.len(), 240);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let strategy = filters();
    let mut nonempty = 0;
    for case in 0..CASES {
        let filter = strategy.new_tree(&mut runner).expect("a filter").current();
        filter
            .validate()
            .unwrap_or_else(|e| panic!("case {case}: invalid {filter:?}: {e}"));
        let in_memory = events.iter().filter(|e| filter.matches(e)).count() as u64;
        let in_sql = query::count(&app.db, &filter).await.expect("count");
        assert_eq!(in_sql, in_memory, "case {case}: {filter:?}");
        nonempty += u32::from(in_sql > 0);
    }
    // The generated filters are not all empty-handed: the comparison means something.
    assert!(
        nonempty > CASES / 10,
        "{nonempty} of {CASES} filters matched anything"
    );
}

crate::on_both_backends!(sql_and_memory_agree);
