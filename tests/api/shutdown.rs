//! Graceful shutdown of the real binary: SIGTERM while 32 clients write and a client
//! subscribes. Nothing acknowledged is lost, nothing accepted before the signal fails,
//! the subscription completes, and the process exits 0 within its timeout.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::{Backend, Binary, event, new_database};
use crate::subscriptions::Client;

crate::with_each_backend!(sigterm_loses_nothing);

/// What the writers saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    /// Requests sent before the signal that got an answer other than a 200 with data.
    failed_before_signal: Vec<String>,
    /// Requests sent before the signal whose connection closed without an answer: an idle
    /// keep-alive connection that the server closed as the request was on its way (HTTP/1.1
    /// allows it; the request was never read, so never accepted).
    unanswered_before_signal: Vec<String>,
}

async fn sigterm_loses_nothing(backend: Backend) {
    let Some((database_url, cleanup)) = new_database(backend).await else {
        return;
    };
    let env = [("AUDIT_LOG", "warn"), ("AUDIT_SHUTDOWN_TIMEOUT", "20")];
    let Binary {
        child: mut server,
        base,
        ..
    } = Binary::start(&database_url, &env).await;
    let client = reqwest::Client::new();

    let mut subscriber = Client::init(&base, "graphql-transport-ws").await;
    subscriber
        .subscribe(
            "quiet",
            "subscription { auditLogCreated(filter: { actions: [\"nothing.matches\"] }) { id } }",
            json!({}),
        )
        .await;

    let signal_at: Arc<OnceLock<Instant>> = Arc::default();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let (client, base) = (client.clone(), base.clone());
            let (signal_at, seen) = (signal_at.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    let sent = Instant::now();
                    let body = json!({
                        "query": "mutation($i: AuditEventInput!) { logAuditEvent(input: $i) { id } }",
                        "variables": { "i": event(&format!("writer-{w}"), "project.created") },
                    });
                    let answer = client.post(format!("{base}/graphql")).json(&body).send().await;
                    let before_signal = signal_at.get().is_none_or(|at| sent < *at);
                    let answer = match answer {
                        Ok(response) => {
                            let status = response.status();
                            let body: Value = response.json().await.unwrap_or_default();
                            let id = body["data"]["logAuditEvent"]["id"].as_str();
                            Ok(id.map(str::to_owned).ok_or(format!("{status}: {body}")))
                        }
                        Err(err) => Err(err.to_string()),
                    };
                    let mut seen = seen.lock().expect("lock");
                    match answer {
                        Ok(Ok(id)) => seen.acknowledged.push(id),
                        Ok(Err(failure)) if before_signal => seen.failed_before_signal.push(failure),
                        Err(err) if before_signal => seen.unanswered_before_signal.push(err),
                        // Refused connections after the signal are the listener closing.
                        Ok(Err(_)) | Err(_) => return,
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = server.id().expect("pid").to_string();
    signal_at.get_or_init(Instant::now);
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(killed.expect("kill runs").success());
    // Not ready as soon as the signal arrives: 503, or no longer accepting at all.
    let unready = async {
        loop {
            let ready = client.get(format!("{base}/readyz")).send().await;
            if ready.is_err() || ready.is_ok_and(|r| r.status() == 503) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(1), unready)
        .await
        .expect("not ready within a second of SIGTERM");

    let status = tokio::time::timeout(Duration::from_secs(25), server.wait())
        .await
        .expect("exits within its shutdown timeout")
        .expect("status");
    assert!(status.success(), "exit status {status}");
    let exited = signal_at.get().expect("signalled").elapsed();
    for writer in writers {
        writer.await.expect("writer");
    }

    // The subscription completed before the connection closed.
    let mut messages = Vec::new();
    loop {
        let message = subscriber.receive().await;
        messages.push(message.clone());
        if message["type"] == "close" {
            break;
        }
    }
    assert!(
        messages.contains(&json!({ "type": "complete", "id": "quiet" })),
        "{messages:?}"
    );
    assert_eq!(
        messages.last().expect("close")["code"],
        1001,
        "{messages:?}"
    );

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert_eq!(seen.failed_before_signal, Vec::<String>::new());
    assert!(seen.acknowledged.len() > 32, "{}", seen.acknowledged.len());
    assert!(
        seen.unanswered_before_signal.len() <= 32,
        "{:?}",
        seen.unanswered_before_signal
    );
    let db = migration::connect(&database_url, 1).await.expect("connect");
    let ids = seen
        .acknowledged
        .iter()
        .map(|id| match backend {
            Backend::Postgres => format!("'{id}'"),
            // SQLite stores a UUID as its 16 bytes.
            Backend::Sqlite => format!("X'{}'", id.replace('-', "")),
        })
        .collect::<Vec<_>>()
        .join(",");
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM audit_logs WHERE id IN ({ids})"),
        ))
        .await
        .expect("count")
        .expect("a row");
    let stored: i64 = row.try_get("", "n").expect("n");
    assert_eq!(
        stored as usize,
        seen.acknowledged.len(),
        "acknowledged but lost"
    );
    eprintln!(
        "{} events acknowledged and stored; {} requests unanswered on closing connections \
         ({:?}); exit 0 {exited:?} after SIGTERM",
        seen.acknowledged.len(),
        seen.unanswered_before_signal.len(),
        seen.unanswered_before_signal.first(),
    );
    db.close().await.ok();
    cleanup.run().await;
}
