//! On PostgreSQL every filter is served by an index, and time filters prune the monthly
//! partitions, shown with EXPLAIN on the very SQL the service runs. (Indexes are created on
//! the partitioned table; each partition's copy is named after its columns.)

use audit_service::service::query::filter::Filter;
use audit_service::service::query::{PageArgs, page_statement};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::helpers::{Backend, spawn_app};

#[tokio::test]
async fn every_filter_uses_an_index() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    for batch in 0..5 {
        let inputs: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                json!({
                    "actor": { "type": "USER", "id": format!("user-{}", n % 400) },
                    "action": format!("resource{}.changed", n % 40),
                    "target": { "type": "project", "id": format!("p-{}", n % 700) },
                    "occurredAt": format!("2026-01-{:02}T00:00:00Z", 1 + n % 28),
                    "metadata": { "n": n, "env": if n % 100 == 0 { "prod" } else { "dev" } },
                    "context": { "requestId": format!("req-{n}") },
                })
            })
            .collect();
        app.log_batch(json!(inputs)).await;
    }
    app.db
        .execute_unprepared("ANALYZE audit_logs")
        .await
        .expect("analyze");

    let tenant = || Filter {
        tenant_ids: vec!["default".into()],
        ..Default::default()
    };
    let cases = [
        (
            "tenant, newest first",
            tenant(),
            "tenant_id_occurred_at_id_idx",
        ),
        (
            "actorIds",
            Filter {
                actor_ids: Some(vec!["user-7".into()]),
                ..tenant()
            },
            "tenant_id_actor_id_occurred_at_id_idx",
        ),
        (
            "actions",
            Filter {
                actions: Some(vec!["resource3.changed".into()]),
                ..tenant()
            },
            "tenant_id_action_occurred_at_id_idx",
        ),
        (
            "action prefix",
            Filter {
                actions: Some(vec!["resource3.*".into()]),
                ..tenant()
            },
            "tenant_id_action_occurred_at_id_idx",
        ),
        (
            "target",
            Filter {
                target_type: Some("project".into()),
                target_ids: Some(vec!["p-5".into()]),
                ..tenant()
            },
            "tenant_id_target_type_target_id",
        ),
        (
            "requestId",
            Filter {
                request_id: Some("req-42".into()),
                ..tenant()
            },
            "tenant_id_request_id_idx",
        ),
        (
            "metadata",
            Filter {
                metadata: Some(json!({ "n": 4242 })),
                ..tenant()
            },
            "metadata_idx",
        ),
        (
            "occurredAfter/Before",
            Filter {
                occurred_after: Some("2026-01-03T00:00:00Z".parse().expect("time")),
                occurred_before: Some("2026-01-04T00:00:00Z".parse().expect("time")),
                ..tenant()
            },
            "tenant_id_occurred_at_id_idx",
        ),
    ];
    for (name, filter, index) in cases {
        let statement =
            page_statement(&filter, &PageArgs::default(), DbBackend::Postgres).expect("statement");
        let plan = explain(&app.db, statement).await;
        assert!(plan.contains(index), "{name} should use {index}:\n{plan}");
        // The test data sits in the default partition; empty monthly ones may be scanned.
        assert!(
            !plan.contains("Seq Scan on audit_logs_default"),
            "{name} scans the table:\n{plan}"
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn time_filters_prune_partitions() {
    use chrono::{Datelike, Duration, TimeZone, Utc};
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    app.log_batch(json!([{ "actor": { "type": "USER", "id": "u" }, "action": "a.b" }]))
        .await;
    let now = Utc::now();
    let month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("month");
    let filter = Filter {
        tenant_ids: vec!["default".into()],
        occurred_after: Some(month + Duration::days(1)),
        occurred_before: Some(month + Duration::days(20)),
        ..Default::default()
    };
    let statement =
        page_statement(&filter, &PageArgs::default(), DbBackend::Postgres).expect("statement");
    let plan = explain(&app.db, statement).await;
    let partition = format!("audit_logs_p{}", month.format("%Y%m"));
    assert!(plan.contains(&partition), "{plan}");
    assert_eq!(
        plan.matches(" on audit_logs_").count(),
        1,
        "only {partition} is scanned:\n{plan}"
    );
    app.cleanup().await;
}

/// The plan PostgreSQL makes for a statement.
async fn explain(db: &sea_orm::DatabaseConnection, statement: Statement) -> String {
    let explain = Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("EXPLAIN {}", statement.sql),
        statement.values.expect("values"),
    );
    let lines: Vec<String> = db
        .query_all_raw(explain)
        .await
        .expect("explain")
        .iter()
        .map(|row| row.try_get::<String>("", "QUERY PLAN").expect("plan line"))
        .collect();
    lines.join("\n")
}

/// The idempotency lookup stays an index lookup per key in the generic plan PostgreSQL
/// caches for a prepared statement (a list of parameters once made it a filter over all of a
/// tenant's keys).
#[tokio::test]
async fn idempotency_lookup_uses_the_key_index() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    for batch in 0..5 {
        let inputs: Vec<Value> = (0..1000)
            .map(|i| {
                let mut event = crate::helpers::event("u-1", "project.created");
                event["idempotencyKey"] = json!(format!("key-{batch}-{i}"));
                event
            })
            .collect();
        app.log_batch(json!(inputs)).await;
    }
    app.db
        .execute_unprepared("ANALYZE idempotency_keys")
        .await
        .expect("analyze");
    let keys: Vec<String> = (0..1000).map(|i| format!("key-2-{i}")).collect();
    let prepare = format!(
        "PREPARE used_keys(text, text) AS {}",
        audit_service::service::ingest::USED_KEYS_POSTGRES
    );
    let explain = format!(
        "EXPLAIN EXECUTE used_keys('default', '{}')",
        serde_json::to_string(&keys).expect("json")
    );
    // One connection for all three statements.
    let txn = sea_orm::TransactionTrait::begin(&app.db)
        .await
        .expect("begin");
    let mut plan = String::new();
    for sql in [
        prepare.as_str(),
        "SET LOCAL plan_cache_mode = force_generic_plan",
        &explain,
    ] {
        for row in txn
            .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .expect(sql)
        {
            plan.push_str(&row.try_get::<String>("", "QUERY PLAN").unwrap_or_default());
            plan.push('\n');
        }
    }
    assert!(
        plan.contains("Index Cond: ((tenant_id = $1) AND (key = ANY"),
        "the lookup is not by key:\n{plan}"
    );
}
