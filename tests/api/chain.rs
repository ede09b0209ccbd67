//! Tamper evidence: the hash chain, append-only storage, verification, retention.

use serde_json::{Value, json};

use crate::helpers::{
    Backend, TestApp, event, post_json, spawn_app, spawn_app_with, start_server_with,
};
use crate::on_both_backends;

on_both_backends!(
    events_form_a_chain,
    the_table_is_append_only,
    verify_detects_a_changed_field,
    verify_detects_a_deleted_event,
    verify_detects_swapped_contents,
    verify_detects_a_forged_event,
    verify_detects_a_changed_last_event,
    retention_keeps_proofs,
    the_independent_verifier_agrees,
    long_commands_report_progress,
    version_1_events_keep_verifying,
);

const CHAIN: &str = "query($from: String, $to: String) {
  verifyAuditChain(fromSequence: $from, toSequence: $to) { valid checkedCount firstInvalidSequence reason }
}";

async fn seed(app: &TestApp, n: usize) -> Vec<Value> {
    let mut stored = Vec::new();
    for i in 1..=n {
        let mut input = event(&format!("u{i}"), "project.created");
        input["metadata"] = json!({ "i": i, "ratio": 0.1 * i as f64, "tags": ["x", "é", "😀"] });
        let body = app
            .graphql(
                "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { sequence hash previousHash recordedAt } }",
                json!({ "i": input }),
            )
            .await;
        stored.push(body["data"]["logAuditEvent"].clone());
    }
    stored
}

async fn verify(app: &TestApp) -> Value {
    app.graphql(CHAIN, json!({})).await["data"]["verifyAuditChain"].clone()
}

/// Checks both the API and the CLI report the chain broken at `seq`.
async fn assert_broken_at(app: &TestApp, seq: i64, why: &str) {
    let result = verify(app).await;
    assert_eq!(result["valid"], false, "{result}");
    assert_eq!(result["firstInvalidSequence"], seq.to_string(), "{result}");
    assert!(
        result["reason"].as_str().expect("reason").contains(why),
        "{result}"
    );
    let output = app.cli(&["verify"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("INVALID at sequence {seq}")),
        "{stdout}"
    );
}

async fn events_form_a_chain(app: &TestApp) {
    let stored = seed(app, 5).await;
    assert_eq!(stored[0]["previousHash"], "0".repeat(64));
    for pair in stored.windows(2) {
        assert_eq!(pair[1]["previousHash"], pair[0]["hash"]);
        assert_ne!(pair[1]["hash"], pair[0]["hash"]);
    }
    let batch = app
        .log_batch(json!([
            event("a", "role.assigned"),
            event("b", "role.assigned")
        ]))
        .await;
    assert_eq!(batch[1]["sequence"], "7");
    let head = app
        .graphql(
            "{ auditChainHead { tenantId sequence hash recordedAt } }",
            json!({}),
        )
        .await;
    let tail = app
        .graphql(
            "{ auditLogs(first: 1, orderBy: OCCURRED_AT_DESC) { nodes { hash recordedAt } } }",
            json!({}),
        )
        .await;
    let head = &head["data"]["auditChainHead"];
    assert_eq!(head["sequence"], "7");
    assert_eq!(head["tenantId"], "default");
    assert_eq!(head["hash"], tail["data"]["auditLogs"]["nodes"][0]["hash"]);
    assert_eq!(
        verify(app).await,
        json!({ "valid": true, "checkedCount": 7, "firstInvalidSequence": null, "reason": null })
    );
    let part = app.graphql(CHAIN, json!({ "from": "3", "to": "5" })).await;
    assert_eq!(
        part["data"]["verifyAuditChain"]["checkedCount"], 3,
        "{part}"
    );
    let output = app.cli(&["verify", "--tenant", "default"]);
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "default: valid (7 events checked)\n"
    );

    let bad = app.graphql(CHAIN, json!({ "from": "0" })).await;
    assert_eq!(
        bad["errors"][0]["extensions"]["field"], "fromSequence",
        "{bad}"
    );
    let unknown = app
        .graphql(
            "{ auditChainHead(tenantId: \"nobody\") { sequence } }",
            json!({}),
        )
        .await;
    // Open mode acts with every scope: another tenant's head is simply absent.
    assert_eq!(unknown, json!({ "data": { "auditChainHead": null } }));
}

async fn the_table_is_append_only(app: &TestApp) {
    use sea_orm::ConnectionTrait;
    seed(app, 2).await;
    let mut statements = vec![
        "UPDATE audit_logs SET reason = 'x'",
        "DELETE FROM audit_logs",
    ];
    if app.backend == Backend::Postgres {
        statements.push("TRUNCATE audit_logs");
    }
    for sql in statements {
        let err = app
            .db
            .execute_unprepared(sql)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains("audit_logs is append-only"), "{sql}: {err}");
    }
    assert_eq!(app.stored_rows().await, 2);
}

async fn verify_detects_a_changed_field(app: &TestApp) {
    seed(app, 10).await;
    app.tamper("UPDATE audit_logs SET reason = 'nothing to see' WHERE seq = 5")
        .await;
    assert_broken_at(app, 5, "content changed").await;
}

async fn verify_detects_a_deleted_event(app: &TestApp) {
    seed(app, 10).await;
    app.tamper("DELETE FROM audit_logs WHERE seq = 5").await;
    assert_broken_at(app, 5, "missing").await;
}

async fn verify_detects_swapped_contents(app: &TestApp) {
    seed(app, 10).await;
    app.tamper("UPDATE audit_logs SET actor_id = CASE WHEN seq = 4 THEN 'u6' ELSE 'u4' END WHERE seq IN (4, 6)")
        .await;
    assert_broken_at(app, 4, "content changed").await;
}

async fn verify_detects_a_forged_event(app: &TestApp) {
    seed(app, 10).await;
    let new_id = match app.backend {
        Backend::Postgres => "gen_random_uuid()",
        Backend::Sqlite => "randomblob(16)",
    };
    app.tamper(&format!(
        "INSERT INTO audit_logs (id, tenant_id, seq, occurred_at, recorded_at, actor_type, actor_id, action, \
         outcome, metadata, prev_hash, hash) \
         SELECT {new_id}, tenant_id, 11, occurred_at, recorded_at, actor_type, 'intruder', action, outcome, \
         metadata, hash, hash FROM audit_logs WHERE seq = 10"
    ))
    .await;
    assert_broken_at(app, 11, "past the chain head").await;
}

async fn verify_detects_a_changed_last_event(app: &TestApp) {
    seed(app, 10).await;
    app.tamper("UPDATE audit_logs SET outcome = 'failure' WHERE seq = 10")
        .await;
    assert_broken_at(app, 10, "content changed").await;
}

async fn retention_keeps_proofs(app: &TestApp) {
    let stored = seed(app, 10).await;
    let before = stored[6]["recordedAt"].as_str().expect("recordedAt");
    let output = app.cli(&["purge", "--tenant", "default", "--before", before]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        app.stored_rows().await,
        5,
        "events 7 to 10 and the purge event remain"
    );

    let purge = app
        .graphql(
            "{ auditLogs(filter: { actions: [\"audit.retention.*\"] }) { nodes { sequence actor { type id } target { type id } metadata } } }",
            json!({}),
        )
        .await;
    let purge = &purge["data"]["auditLogs"]["nodes"][0];
    assert_eq!(purge["sequence"], "11");
    assert_eq!(
        purge["actor"],
        json!({ "type": "SYSTEM", "id": "audit-service" })
    );
    assert_eq!(
        purge["target"],
        json!({ "type": "tenant", "id": "default" })
    );
    assert_eq!(purge["metadata"]["purgedCount"], 6);
    assert_eq!(purge["metadata"]["throughSequence"], "6");
    assert_eq!(purge["metadata"]["throughHash"], stored[5]["hash"]);

    assert_eq!(
        verify(app).await,
        json!({ "valid": true, "checkedCount": 5, "firstInvalidSequence": null, "reason": null })
    );
    let purged = app.graphql(CHAIN, json!({ "from": "3" })).await;
    assert_eq!(
        purged["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{purged}"
    );

    // Nothing old enough: no purge, no event.
    let output = app.cli(&[
        "purge",
        "--tenant",
        "default",
        "--before",
        "2000-01-01T00:00:00Z",
    ]);
    assert!(output.status.success());
    assert_eq!(app.stored_rows().await, 5);

    app.tamper("UPDATE audit_logs SET actor_id = 'someone else' WHERE seq = 8")
        .await;
    assert_broken_at(app, 8, "content changed").await;
}

async fn the_independent_verifier_agrees(app: &TestApp) {
    seed(app, 6).await;
    let mut tricky = event("u\"q\\", "project.created");
    tricky["reason"] = json!("line\nbreak \u{1} \u{2028}");
    tricky["metadata"] = json!({ "z": 1e21, "a": [1.5, 1e-7, 100.0, -0.0, 9007199254740991u64], "é": { "\u{1F600}": null, "\u{E000}": true } });
    tricky["context"] = json!({ "ipAddress": "::FFFF:10.0.0.1", "userAgent": "\u{7f}" });
    app.log(tricky).await;
    let export = app.cli(&["export", "--tenant", "default", "--format", "ndjson"]);
    assert!(export.status.success());
    let dir = tempfile::tempdir().expect("dir");
    let clean = dir.path().join("clean.ndjson");
    std::fs::write(&clean, &export.stdout).expect("write");
    let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/verify_export.py");
    let run = |path: &std::path::Path| {
        std::process::Command::new(crate::helpers::python())
            .arg(verifier)
            .arg(path)
            .output()
            .expect("python3 runs")
    };
    let output = run(&clean);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let text = String::from_utf8(export.stdout).expect("utf-8");
    let tampered = dir.path().join("tampered.ndjson");
    std::fs::write(
        &tampered,
        text.replacen("\"actor_id\":\"u3\"", "\"actor_id\":\"u9\"", 1),
    )
    .expect("write");
    let output = run(&tampered);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("INVALID at seq 3"),
        "{output:?}"
    );
}

/// Four writers on each of two instances, three tenants, 20,000 events: every chain valid
/// and gap-free, and every acknowledged event stored exactly once.
#[tokio::test]
async fn concurrent_instances_keep_one_chain_per_tenant() {
    use sea_orm::ConnectionTrait;
    let Some(app) = spawn_app_with(Backend::Postgres, crate::auth::with_jwt).await else {
        return;
    };
    let second = start_server_with(&app.database_url, crate::auth::with_jwt).await;
    let tenants = ["tenant-a", "tenant-b", "tenant-c"];
    let mut writers = Vec::new();
    for (n, address) in [&app.address, &second]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        let url = format!("{address}/graphql");
        let client = app.client.clone();
        let token = crate::auth::hs256(&crate::auth::claims(tenants[n % 3], "audit:write"));
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for round in 0..50 {
                let batch: Vec<Value> = (0..50).map(|i| event(&format!("w{n}-{round}-{i}"), "project.updated")).collect();
                let body = post_json(&client, &url, Some(&token), json!({ "query": "mutation($b: [AuditEventInput!]!) { logAuditEvents(inputs: $b) { id } }", "variables": { "b": batch } })).await;
                assert_eq!(body["errors"], Value::Null, "{body}");
                for e in body["data"]["logAuditEvents"].as_array().expect("events") {
                    acknowledged.push(e["id"].as_str().expect("id").to_owned());
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    acknowledged.sort();
    let stored: Vec<String> = app
        .db
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT id::text AS id FROM audit_logs ORDER BY 1",
        ))
        .await
        .expect("ids")
        .iter()
        .map(|row| row.try_get::<String>("", "id").expect("id"))
        .collect();
    assert_eq!(acknowledged.len(), 20_000);
    assert_eq!(
        stored, acknowledged,
        "every acknowledged event stored once, nothing else"
    );
    let admin = crate::auth::hs256(&crate::auth::claims("ops", "audit:admin"));
    for (t, tenant) in tenants.iter().enumerate() {
        // Writers 0..8 take tenants in turn: a gets 3 writers, b 3, c 2, of 2,500 events.
        let expected = if t < 2 { 7_500 } else { 5_000 };
        let body = post_json(&app.client, &format!("{}/graphql", app.address), Some(&admin), json!({ "query": "query($t: String) { verifyAuditChain(tenantId: $t) { valid checkedCount } auditChainHead(tenantId: $t) { sequence } }", "variables": { "t": tenant } })).await;
        assert_eq!(
            body["data"]["verifyAuditChain"],
            json!({ "valid": true, "checkedCount": expected }),
            "{tenant}: {body}"
        );
        assert_eq!(
            body["data"]["auditChainHead"]["sequence"],
            expected.to_string()
        );
    }
    app.cleanup().await;
}

/// On PostgreSQL, retention drops a monthly partition whole when all of it is purged.
#[tokio::test]
async fn retention_drops_whole_partitions() {
    use chrono::{Datelike, Duration, TimeZone, Utc};
    use sea_orm::ConnectionTrait;
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let now = Utc::now();
    let this_month = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("month");
    let last_month = this_month - Duration::days(3);
    let partition = format!("audit_logs_p{}", last_month.format("%Y%m"));
    let old: Vec<Value> = (0..5)
        .map(|i| {
            let mut e = event(&format!("u{i}"), "project.created");
            e["occurredAt"] = json!(last_month.to_rfc3339());
            e
        })
        .collect();
    app.log_batch(json!(old)).await;
    let kept = app.log(event("recent", "project.created")).await;
    let exists = |name: String| {
        let db = &app.db;
        async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    format!("SELECT to_regclass('control_plane.{name}') IS NOT NULL AS present"),
                ))
                .await
                .expect("query")
                .expect("row");
            row.try_get::<bool>("", "present").expect("bool")
        }
    };
    assert!(exists(partition.clone()).await);
    let before = kept["recordedAt"].as_str().expect("recordedAt");
    let output = app.cli(&["purge", "--tenant", "default", "--before", before]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !exists(partition).await,
        "the purged month's partition is dropped"
    );
    assert_eq!(
        app.stored_rows().await,
        2,
        "the recent event and the purge event remain"
    );
    let result = app.graphql(CHAIN, json!({})).await;
    assert_eq!(
        result["data"]["verifyAuditChain"]["valid"], true,
        "{result}"
    );
    app.cleanup().await;
}

/// `audit-service verify`: plain progress lines on a pipe, a progress bar on a terminal
/// (a pseudo-terminal from `script`), and `--json`.
async fn long_commands_report_progress(app: &TestApp) {
    seed(app, 5).await;
    let output = app.cli(&["verify", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let result: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(
        result,
        json!({ "valid": true, "tenants": [{ "tenant": "default", "valid": true,
                "checkedCount": 5, "firstInvalidSequence": null, "reason": null }] })
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("verify: 5 events to go"), "{stderr}");
    assert!(stderr.contains("verify: 5 events in"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal codes on a pipe: {stderr:?}"
    );

    let command = format!("{} verify", env!("CARGO_BIN_EXE_audit-service"));
    let terminal = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", &app.database_url)
        .env("AUDIT_LOG", "warn")
        .output()
        .expect("script runs");
    let screen = String::from_utf8_lossy(&terminal.stdout);
    assert!(terminal.status.success(), "{screen}");
    assert!(
        screen.contains("default: valid (5 events checked)"),
        "{screen}"
    );
    assert!(
        screen.contains('\u{1b}'),
        "a progress bar draws on a terminal: {screen:?}"
    );
    assert!(!screen.contains("events to go"), "{screen:?}");

    // export, purge and migrate report progress the same way.
    let stderr = |output: &std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let export = stderr(&app.cli(&["export", "--tenant", "default"]));
    assert!(export.contains("export: 5 events to go"), "{export}");
    assert!(export.contains("export: 5 events in"), "{export}");
    let purge = stderr(&app.cli(&["purge", "--retention", "default=1"]));
    assert!(purge.contains("purge: 1 tenants to go"), "{purge}");
    assert!(purge.contains("purge: 1 tenants in"), "{purge}");
    let dir = tempfile::tempdir().expect("dir");
    let fresh = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .arg("migrate")
        .env("DATABASE_URL", &fresh)
        .output()
        .expect("migrate runs");
    let migrate = stderr(&migrate);
    let pending = {
        use migration::MigratorTrait;
        migration::Migrator::migrations().len()
    };
    assert!(
        migrate.contains(&format!("migrate: {pending} migrations to go")),
        "{migrate}"
    );
    assert!(
        migrate.contains(&format!("migrate: {pending} migrations in")),
        "{migrate}"
    );
    let command = format!(
        "{} export --tenant default",
        env!("CARGO_BIN_EXE_audit-service")
    );
    let terminal = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .expect("script runs");
    let screen = String::from_utf8_lossy(&terminal.stdout);
    assert!(terminal.status.success(), "{screen}");
    assert!(screen.contains(r#""seq":"5""#), "{screen}");
    assert!(screen.contains('\u{1b}'), "a progress bar: {screen:?}");

    app.tamper("UPDATE audit_logs SET reason = 'x' WHERE seq = 2")
        .await;
    let output = app.cli(&["verify", "--json"]);
    assert!(!output.status.success());
    let result: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(result["valid"], false);
    assert_eq!(
        result["tenants"][0]["firstInvalidSequence"], "2",
        "{result}"
    );
}

/// A database upgraded to chain version 2 keeps its version-1 events: the events stored
/// before are rewritten here as version 1 (what an older server stored), then new events
/// chain on as version 2. The server, the CLI and the independent verifier accept both;
/// a version-2 event relabelled as version 1 breaks its hash.
async fn version_1_events_keep_verifying(app: &TestApp) {
    use audit_service::service::tlog::canonical::{GENESIS, chain_hash};
    use entity::audit_log;
    use sea_orm::{EntityTrait, QueryOrder};

    seed(app, 3).await;
    let rows = audit_log::Entity::find()
        .order_by_asc(audit_log::Column::Seq)
        .all(&app.db)
        .await
        .expect("rows");
    assert!(
        rows.iter().all(|r| r.chain_version == 3),
        "new events are version 3"
    );
    let blob = |bytes: &[u8]| match app.backend {
        Backend::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
        Backend::Sqlite => format!("X'{}'", hex::encode(bytes)),
    };
    let mut prev = GENESIS.to_vec();
    let mut rewrite = Vec::new();
    for mut row in rows {
        // The first as version 1, the others as version 2, as older servers stored them.
        row.chain_version = if row.seq == 1 { 1 } else { 2 };
        row.prev_hash = prev;
        row.hash = chain_hash(&row.prev_hash, &row);
        rewrite.push(format!(
            "UPDATE audit_logs SET chain_version = {}, prev_hash = {}, hash = {} WHERE seq = {}",
            row.chain_version,
            blob(&row.prev_hash),
            blob(&row.hash),
            row.seq
        ));
        prev = row.hash;
    }
    rewrite.push(format!(
        "UPDATE chain_heads SET hash = {} WHERE seq = 3",
        blob(&prev)
    ));
    app.tamper(&rewrite.join("; ")).await;

    let stored = seed(app, 2).await;
    assert_eq!(
        stored[0]["previousHash"],
        hex::encode(&prev),
        "version 3 chains on"
    );
    let versions = app
        .graphql(
            "{ auditLogs(first: 10, orderBy: OCCURRED_AT_ASC) { nodes { chainVersion } } }",
            json!({}),
        )
        .await;
    let versions: Vec<_> = versions["data"]["auditLogs"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["chainVersion"].as_i64().expect("version"))
        .collect();
    assert_eq!(versions, [1, 2, 2, 3, 3]);
    assert_eq!(
        verify(app).await,
        json!({ "valid": true, "checkedCount": 5, "firstInvalidSequence": null, "reason": null })
    );
    let output = app.cli(&["verify"]);
    assert!(output.status.success(), "{output:?}");

    let export = app.cli(&["export", "--tenant", "default", "--format", "ndjson"]);
    assert!(export.status.success());
    let text = String::from_utf8(export.stdout).expect("utf-8");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines[0].get("trace_id"), None, "version 1 has no trace_id");
    assert_eq!(
        lines[2]["trace_id"],
        Value::Null,
        "version 2 has it, null here"
    );
    assert_eq!(lines[2].get("personal"), None, "version 2 has no personal");
    assert_eq!(lines[3]["personal"], Value::Null, "version 3 has it");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("export.ndjson");
    std::fs::write(&path, &text).expect("write");
    let verifier = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/verify_export.py");
    let output = std::process::Command::new(crate::helpers::python())
        .arg(verifier)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("valid: 5 events"));

    app.tamper("UPDATE audit_logs SET chain_version = 1 WHERE seq = 4")
        .await;
    assert_broken_at(app, 4, "content changed").await;
}
