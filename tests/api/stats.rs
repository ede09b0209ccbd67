//! `auditLogStats`: counts from the hourly and daily rollups and from the events themselves equal a
//! plain GROUP BY over the stored rows, for generated filters, dimensions and intervals;
//! also after idempotent retries (which must not count twice) and after a retention purge.

use std::collections::BTreeMap;

use audit_service::service::query::filter::Filter;
use audit_service::service::query::stats::{self, Bucket, Dimension, Interval};
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use entity::audit_log::{self, ActorType, Outcome};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sea_orm::{ConnectionTrait, EntityTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_backends;

on_both_backends!(
    stats_equal_a_group_by,
    the_graphql_field_answers_and_refuses
);

/// Generated questions per check.
const CASES: u32 = 300;

fn base() -> DateTime<Utc> {
    "2026-02-20T00:00:00Z".parse().expect("time")
}

/// Event `i` of a seed: spread over about 70 days, every kind of value the questions ask for.
fn input(i: i64, key_prefix: &str) -> Value {
    let actions = [
        "project.created",
        "project.member.added",
        "role.assigned",
        "project.deleted",
    ];
    let actor_type = ["USER", "SERVICE", "SYSTEM"][(i % 3) as usize];
    let outcome = ["SUCCESS", "FAILURE", "DENIED"][((i % 3 + i / 5 % 2) % 3) as usize];
    let target_type = ["project", "role"][(i % 2) as usize];
    let mut event = json!({
        "actor": { "type": actor_type, "id": format!("u-{}", i % 7) },
        "action": actions[(i % 4) as usize],
        "outcome": outcome,
        "occurredAt": (base() + Duration::minutes(i * 167)).to_rfc3339(),
        "metadata": { "env": if i % 2 == 0 { "prod" } else { "dev" } },
        "idempotencyKey": format!("{key_prefix}-{i}"),
    });
    if i % 5 != 0 {
        event["target"] = json!({ "type": target_type, "id": format!("t-{}", i % 4) });
    }
    event
}

async fn log(app: &TestApp, range: std::ops::Range<i64>, key_prefix: &str) {
    let inputs: Vec<Value> = range.map(|i| input(i, key_prefix)).collect();
    for chunk in inputs.chunks(100) {
        app.log_batch(json!(chunk)).await;
    }
}

fn dimensions() -> impl Strategy<Value = Vec<Dimension>> {
    proptest::sample::subsequence(
        vec![
            Dimension::Action,
            Dimension::ActorId,
            Dimension::ActorType,
            Dimension::TargetType,
            Dimension::Outcome,
            Dimension::TenantId,
        ],
        0..=3,
    )
}

fn intervals() -> impl Strategy<Value = Option<Interval>> {
    proptest::option::of(proptest::sample::select(vec![
        Interval::Hour,
        Interval::Day,
        Interval::Week,
        Interval::Month,
    ]))
}

fn some_of<T: Clone + std::fmt::Debug + 'static>(
    pool: Vec<T>,
) -> impl Strategy<Value = Option<Vec<T>>> {
    proptest::option::of(proptest::sample::subsequence(
        pool.clone(),
        1..=pool.len().min(2),
    ))
}

/// Filters on what the rollups hold, with bounds on whole days (the daily rollup) or hours
/// (the hourly one), and now and then on what they do not (actor ids, metadata, minutes),
/// which the events answer.
fn filters() -> impl Strategy<Value = Filter> {
    let day = proptest::option::of((0i64..75).prop_map(|d| base() + Duration::days(d)));
    let hour = proptest::option::of((0i64..1800).prop_map(|h| base() + Duration::hours(h)));
    let minute =
        proptest::option::of((0i64..1800 * 60).prop_map(|m| base() + Duration::minutes(m)));
    let bounds = prop_oneof![
        2 => (day.clone(), day),
        2 => (hour.clone(), hour),
        1 => (minute.clone(), minute)
    ];
    (
        some_of(vec![ActorType::User, ActorType::Service, ActorType::System]),
        some_of(vec![
            "project.*",
            "role.assigned",
            "project.member.*",
            "none.*",
        ]),
        proptest::option::of(proptest::sample::select(vec!["project", "role"])),
        some_of(vec![Outcome::Success, Outcome::Failure, Outcome::Denied]),
        bounds,
        proptest::option::of(prop_oneof![
            Just((Some(vec!["u-1".to_owned(), "u-4".to_owned()]), None)),
            Just((None, Some(json!({ "env": "prod" })))),
        ]),
    )
        .prop_map(
            |(types, actions, target_type, outcomes, (after, before), per_event)| {
                let (actor_ids, metadata) = per_event.unwrap_or_default();
                Filter {
                    tenant_ids: vec!["default".into()],
                    actor_ids,
                    actor_types: types,
                    actions: actions.map(|l| l.into_iter().map(str::to_owned).collect()),
                    target_type: target_type.map(str::to_owned),
                    outcomes,
                    occurred_after: after,
                    occurred_before: before,
                    metadata,
                    ..Filter::default()
                }
            },
        )
}

/// The start of the bucket of `at`, computed here without SQL.
fn bucket_start(at: DateTime<Utc>, interval: Interval) -> DateTime<Utc> {
    let hour = at
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .expect("hour");
    let day = hour.with_hour(0).expect("day");
    match interval {
        Interval::Hour => hour,
        Interval::Day => day,
        Interval::Week => day - Duration::days(i64::from(day.weekday().num_days_from_monday())),
        Interval::Month => Utc
            .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
            .single()
            .expect("month"),
    }
}

/// The plain GROUP BY, over the rows the filter matches.
fn group_by(
    rows: &[audit_log::Model],
    filter: &Filter,
    dimensions: &[Dimension],
    interval: Option<Interval>,
) -> Vec<Bucket> {
    let mut groups: BTreeMap<String, Bucket> = BTreeMap::new();
    for row in rows.iter().filter(|r| filter.matches(r)) {
        let mut key = Bucket {
            start: interval.map(|i| bucket_start(row.occurred_at, i)),
            ..Bucket::default()
        };
        for dimension in dimensions {
            match dimension {
                Dimension::Action => key.action = Some(row.action.clone()),
                Dimension::ActorId => key.actor_id = Some(row.actor_id.clone()),
                Dimension::ActorType => key.actor_type = Some(row.actor_type),
                Dimension::TargetType => key.target_type = row.target_type.clone(),
                Dimension::Outcome => key.outcome = Some(row.outcome),
                Dimension::TenantId => key.tenant_id = Some(row.tenant_id.clone()),
            }
        }
        groups.entry(format!("{key:?}")).or_insert(key).count += 1;
    }
    sorted(groups.into_values().collect())
}

fn sorted(mut buckets: Vec<Bucket>) -> Vec<Bucket> {
    buckets.sort_by_key(|b| format!("{b:?}"));
    buckets
}

/// Runs `CASES` generated questions against the stored rows; returns how many were answered
/// by each path and refused.
async fn compare(app: &TestApp, cases: u32) -> (u32, u32) {
    let rows = audit_log::Entity::find().all(&app.db).await.expect("rows");
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let strategy = (filters(), dimensions(), intervals());
    let now = base() + Duration::days(100);
    let (mut answered, mut refused) = (0, 0);
    for case in 0..cases {
        let (filter, dimensions, interval) = strategy
            .new_tree(&mut runner)
            .expect("a question")
            .current();
        filter.validate().expect("a valid filter");
        let question = format!("case {case}: {filter:?} by {dimensions:?} per {interval:?}");
        match stats::count(&app.db, &filter, &dimensions, interval, 1000, now).await {
            Ok(answer) => {
                // In order: by start, then by count, largest first.
                for pair in answer.windows(2) {
                    let ordered = if pair[0].start == pair[1].start {
                        pair[0].count >= pair[1].count
                    } else {
                        pair[0].start < pair[1].start
                    };
                    assert!(ordered, "{question}: {pair:?}");
                }
                let expected = group_by(&rows, &filter, &dimensions, interval);
                assert_eq!(sorted(answer), expected, "{question}");
                answered += 1;
            }
            Err(err) => {
                // Only questions the rollup cannot answer, over too wide a window.
                let message = err.to_string();
                assert!(message.contains("31 days"), "{question}: {message}");
                let window = filter.occurred_before.unwrap_or(now)
                    - filter.occurred_after.unwrap_or(DateTime::<Utc>::MIN_UTC);
                assert!(window > Duration::days(31), "{question}: {message}");
                refused += 1;
            }
        }
    }
    (answered, refused)
}

/// What each rollup counts in all: the hourly and daily ones count every event once.
async fn rollup_totals(app: &TestApp) -> [i64; 2] {
    let mut totals = [0; 2];
    for (total, table) in totals.iter_mut().zip(["audit_stats", "audit_stats_daily"]) {
        let row = app
            .db
            .query_one_raw(Statement::from_string(
                app.db.get_database_backend(),
                format!("SELECT CAST(SUM(events) AS BIGINT) AS n FROM {table}"),
            ))
            .await
            .expect("sum")
            .expect("a row");
        *total = row.try_get("", "n").expect("n");
    }
    totals
}

async fn stats_equal_a_group_by(app: &TestApp) {
    log(app, 0..400, "a").await;
    // Retries of what is stored already: nothing new, nothing counted twice.
    log(app, 100..300, "a").await;
    assert_eq!(rollup_totals(app).await, [400, 400]);
    let (answered, refused) = compare(app, CASES).await;
    assert!(
        answered > CASES / 3 && refused > 0,
        "{answered} answered, {refused} refused"
    );

    // A purge takes the purged events out of the counts.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    log(app, 400..600, "a").await;
    let output = app.cli(&[
        "purge",
        "--tenant",
        "default",
        "--before",
        &cutoff.to_rfc3339(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = audit_log::Entity::find().all(&app.db).await.expect("rows");
    assert_eq!(rows.len(), 201, "the 200 newest and the purge's own event");
    assert_eq!(rollup_totals(app).await, [201, 201]);
    compare(app, CASES / 3).await;
}

async fn the_graphql_field_answers_and_refuses(app: &TestApp) {
    log(app, 0..50, "g").await;
    let body = app
        .graphql(
            r#"{ auditLogStats(filter: { actions: ["project.*"] }, groupBy: [ACTION], interval: WEEK, first: 3) {
                   start action actorId actorType targetType outcome tenantId count } }"#,
            json!({}),
        )
        .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    let buckets = body["data"]["auditLogStats"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 3, "{body}");
    assert_eq!(buckets[0]["start"], "2026-02-16T00:00:00.000000Z", "{body}");
    for bucket in buckets {
        assert!(
            bucket["action"]
                .as_str()
                .expect("action")
                .starts_with("project.")
        );
        for absent in ["actorId", "actorType", "targetType", "outcome", "tenantId"] {
            assert_eq!(bucket[absent], Value::Null, "{body}");
        }
        assert!(bucket["count"].as_u64().expect("count") > 0);
    }

    let body = app
        .graphql(
            "{ auditLogStats(groupBy: [TENANT_ID, OUTCOME, TENANT_ID]) { tenantId outcome count } }",
            json!({}),
        )
        .await;
    let total: u64 = body["data"]["auditLogStats"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 50, "{body}");

    let refusals = [
        (
            "{ auditLogStats(groupBy: [ACTOR_ID]) { count } }",
            "filter.occurredAfter",
        ),
        (
            "{ auditLogStats(groupBy: [], first: 1001) { count } }",
            "first",
        ),
        (
            "{ auditLogStats(groupBy: [], first: -1) { count } }",
            "first",
        ),
        (
            r#"{ auditLogStats(filter: { actions: ["Bad"] }, groupBy: []) { count } }"#,
            "filter.actions[0]",
        ),
    ];
    for (query, field) in refusals {
        let body = app.graphql(query, json!({})).await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "{query}: {body}"
        );
        assert_eq!(
            body["errors"][0]["extensions"]["field"], field,
            "{query}: {body}"
        );
    }
}
