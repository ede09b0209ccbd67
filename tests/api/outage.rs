//! A PostgreSQL outage under write load, on a throwaway cluster of the test's own (initdb
//! into a temporary directory, a free port), so stopping it disturbs no other test: the
//! server answers `UNAVAILABLE` (never 401 or `INTERNAL`), `/readyz` flips within a second
//! each way, the server recovers by itself, and no acknowledged event is lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::cluster::Cluster;
use crate::helpers::{event, post_json, start_server};

/// What the writers saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    refusals: Vec<String>,
}

async fn ready(client: &reqwest::Client, address: &str) -> bool {
    client
        .get(format!("{address}/readyz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Polls `/readyz` until it says `want`; returns how long that took.
async fn until_ready_is(client: &reqwest::Client, address: &str, want: bool) -> Duration {
    let started = Instant::now();
    while ready(client, address).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "readyz never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_restarted_under_write_load() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let address = start_server(&cluster.url()).await;
    let client = reqwest::Client::new();
    assert!(ready(&client, &address).await);

    let running = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, address) = (client.clone(), address.clone());
            let (running, seen) = (running.clone(), seen.clone());
            tokio::spawn(async move {
                let url = format!("{address}/graphql");
                let mut n = 0;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let mut input = event(&format!("writer-{w}"), "project.created");
                    input["idempotencyKey"] = json!(format!("w{w}-{n}"));
                    let body = json!({
                        "query": "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
                        "variables": { "input": input },
                    });
                    let started = Instant::now();
                    let answer = post_json(&client, &url, None, body).await;
                    let mut seen = seen.lock().await;
                    match answer["data"]["logAuditEvent"]["id"].as_str() {
                        Some(id) => seen.acknowledged.push(id.to_owned()),
                        None => {
                            let code = answer["errors"][0]["extensions"]["code"]
                                .as_str()
                                .unwrap_or("no code")
                                .to_owned();
                            // Fast failures, not hangs on a pool that cannot connect.
                            assert!(started.elapsed() < Duration::from_secs(5), "{answer}");
                            seen.refusals.push(code);
                            drop(seen);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.pg_ctl("stop");
    let flipped_down = until_ready_is(&client, &address, false).await;
    // Reads fail fast with UNAVAILABLE too.
    let started = Instant::now();
    let read: Value = post_json(
        &client,
        &format!("{address}/graphql"),
        None,
        json!({ "query": "{ auditLogs { nodes { id } } }" }),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5), "{read}");
    assert_eq!(
        read["errors"][0]["extensions"]["code"], "UNAVAILABLE",
        "{read}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.pg_ctl("start");
    let flipped_up = until_ready_is(&client, &address, true).await;
    let acknowledged_before_recovery = seen.lock().await.acknowledged.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }

    let seen = seen.lock().await;
    eprintln!(
        "outage: readyz down after {flipped_down:?}, up after {flipped_up:?}; {} acknowledged, {} refused",
        seen.acknowledged.len(),
        seen.refusals.len()
    );
    assert!(
        flipped_down < Duration::from_millis(1500),
        "{flipped_down:?}"
    );
    assert!(!seen.refusals.is_empty(), "the outage was noticed");
    for code in &seen.refusals {
        assert_eq!(code, "UNAVAILABLE", "refusals: {:?}", seen.refusals);
    }
    assert!(
        seen.acknowledged.len() > acknowledged_before_recovery,
        "writes resumed by themselves"
    );
    // Every acknowledged event is stored, once.
    let db = migration::connect(&cluster.url(), 1)
        .await
        .expect("connect");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id::text AS id FROM audit_logs",
        ))
        .await
        .expect("rows");
    let stored: HashSet<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "id").expect("id"))
        .collect();
    assert_eq!(stored.len(), rows.len(), "no event stored twice");
    for id in &seen.acknowledged {
        assert!(stored.contains(id), "acknowledged event {id} was lost");
    }
    let verification = post_json(
        &client,
        &format!("{address}/graphql"),
        None,
        json!({ "query": "{ verifyAuditChain { valid checkedCount } }" }),
    )
    .await;
    assert_eq!(
        verification["data"]["verifyAuditChain"]["valid"], true,
        "{verification}"
    );
    db.close().await.ok();
    drop(cluster);
}

/// `/readyz` names a NOTIFY listener that cannot reconnect (its database refuses new
/// connections, while the pool's stay open), and is ready again once it has reconnected.
#[tokio::test]
async fn readiness_names_a_listener_that_cannot_reconnect() {
    let Some(app) = crate::helpers::spawn_app(crate::helpers::Backend::Postgres).await else {
        return;
    };
    let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
    let admin = migration::connect(&admin_url, 1).await.expect("connect");
    let name = app
        .database_url
        .rsplit('/')
        .next()
        .and_then(|rest| rest.split('?').next())
        .expect("database name")
        .to_owned();
    let readyz = |want_ready: bool| {
        let (client, url) = (app.client.clone(), format!("{}/readyz", app.address));
        async move {
            let started = Instant::now();
            loop {
                let response = client.get(&url).send().await.expect("readyz");
                let ready = response.status() == 200;
                let body = response.text().await.expect("body");
                if ready == want_ready {
                    return body;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "readyz stayed: {body}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(readyz(true).await, "ready");
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .expect("refuse connections");
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = '{name}'",
            audit_service::service::live::listener::LISTENER_NAME
        ))
        .await
        .expect("terminate the listener");
    let body = readyz(false).await;
    assert!(
        body.contains("the notification listener has been disconnected for"),
        "{body}"
    );
    admin
        .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .expect("allow connections");
    assert_eq!(readyz(true).await, "ready");
    admin.close().await.ok();
    app.cleanup().await;
}
