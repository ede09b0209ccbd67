//! Reads on a streaming replica, on throwaway clusters of the test's own (a primary, and a
//! replica made with `pg_basebackup -R`): reads land on the replica, a write's consistency
//! token makes a read see that write while the replica's replay is paused, a stopped
//! replica is skipped and used again once back, the lag metric moves; and three instances
//! on one primary and one replica under writers, readers and 300 subscribers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::helpers::{Binary, event};
use crate::subscriptions::Client;

const CONSISTENCY: &str = "x-audit-consistency";

/// A server on `primary` reading from `replica`.
async fn server(primary: &Cluster, replica: &Cluster) -> Binary {
    let replica_url = replica.url();
    let binary = Binary::start(
        &primary.url(),
        &[
            ("AUDIT_READ_DATABASE_URL", replica_url.as_str()),
            ("AUDIT_REPLICA_WAIT_MS", "500"),
        ],
    )
    .await;
    until_metric(&binary.base, "audit_replica_up{replica=\"0\"}", |v| {
        v == 1.0
    })
    .await;
    binary
}

/// Writes `input` and returns the event's id and the answer's consistency token.
async fn write(base: &str, input: Value) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({
            "query": "mutation($input: AuditEventInput!) { logAuditEvent(input: $input) { id } }",
            "variables": { "input": input },
        }))
        .send()
        .await
        .expect("sent");
    let token = response.headers()[CONSISTENCY]
        .to_str()
        .expect("a token")
        .to_owned();
    let body: Value = response.json().await.expect("json");
    let id = body["data"]["logAuditEvent"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned();
    (id, token)
}

/// Event `id`'s `{ id cursor }` as a read (with `token`, if given) finds it, or null.
async fn read_event(base: &str, id: &str, token: Option<&str>) -> Value {
    let query = "query($id: ID!) { auditLog(id: $id) { id cursor } }";
    let mut request = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": { "id": id } }));
    if let Some(token) = token {
        request = request.header(CONSISTENCY, token);
    }
    let body: Value = request
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(body["errors"], Value::Null, "{body}");
    body["data"]["auditLog"].clone()
}

/// Whether a read of event `id` (with `token`, if given) finds it.
async fn finds(base: &str, id: &str, token: Option<&str>) -> bool {
    read_event(base, id, token).await["id"] == id
}

/// The value of metric `series` (name and labels) on `/metrics`.
async fn metric(base: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Waits (up to 20 s) until metric `series` satisfies `want`.
async fn until_metric(base: &str, series: &str, want: impl Fn(f64) -> bool) -> f64 {
    let started = Instant::now();
    loop {
        if let Some(value) = metric(base, series).await.filter(|v| want(*v)) {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{series} never got there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 20 s) until a plain read finds event `id`: the replica has it.
async fn until_replicated(base: &str, id: &str) {
    let started = Instant::now();
    while !finds(base, id, None).await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Event `id`'s cursor.
async fn cursor_of(base: &str, id: &str) -> String {
    let event = read_event(base, id, None).await;
    event["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("{event}"))
        .to_owned()
}

async fn replay(replica: &DatabaseConnection, paused: bool) {
    let function = if paused {
        "pg_wal_replay_pause"
    } else {
        "pg_wal_replay_resume"
    };
    replica
        .execute_unprepared(&format!("SELECT {function}()"))
        .await
        .expect("replay paused or resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_the_replica_and_a_token_sees_its_own_write() {
    let Some(primary) = Cluster::start() else {
        return;
    };
    let replica = primary.replica();
    let binary = server(&primary, &replica).await;
    let base = binary.base.as_str();
    let standby = migration::connect(&replica.url(), 1)
        .await
        .expect("the replica answers");

    let (first, _) = write(base, event("ann", "project.created")).await;
    until_replicated(base, &first).await;

    // Paused, the replica misses the next write: a plain read does not see it (so reads
    // are served there), a read with the write's token does (the primary, after the wait).
    replay(&standby, true).await;
    let (second, token) = write(base, event("ann", "project.updated")).await;
    assert!(
        !finds(base, &second, None).await,
        "a plain read is served by the replica"
    );
    let started = Instant::now();
    assert!(
        finds(base, &second, Some(&token)).await,
        "the token sees its write"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "it waited for the replica first"
    );
    // A token that is not one is as if none was sent.
    assert!(!finds(base, &second, Some("not a token")).await);
    // A subscription resuming after the first event replays from the replica, which lacks
    // the second, and then from the primary: no gap.
    let cursor = cursor_of(base, &first).await;
    let mut tail = Client::init(base, "graphql-transport-ws").await;
    tail.subscribe(
        "1",
        "subscription($after: String) { auditLogCreated(after: $after) { id } }",
        json!({ "after": cursor }),
    )
    .await;
    let resumed = tokio::time::timeout(Duration::from_secs(20), tail.next_event("1"))
        .await
        .expect("the resumed tail delivers the event the replica lacks");
    assert_eq!(resumed["id"], second.as_str());
    let lag = "audit_replica_lag_bytes{replica=\"0\"}";
    until_metric(base, lag, |bytes| bytes > 0.0).await;
    replay(&standby, false).await;
    until_replicated(base, &second).await;
    until_metric(base, lag, |bytes| bytes == 0.0).await;

    // Stopped, the replica is skipped: reads still answer, from the primary.
    drop(standby);
    replica.pg_ctl("stop");
    until_metric(base, "audit_replica_up{replica=\"0\"}", |v| v == 0.0).await;
    let (third, _) = write(base, event("bob", "project.created")).await;
    assert!(
        finds(base, &third, None).await,
        "the primary serves while the replica is down"
    );

    // Back, it is used again: paused, it misses a new write.
    replica.pg_ctl("start");
    until_metric(base, "audit_replica_up{replica=\"0\"}", |v| v == 1.0).await;
    until_replicated(base, &third).await;
    let standby = migration::connect(&replica.url(), 1)
        .await
        .expect("the replica answers");
    replay(&standby, true).await;
    let (fourth, token) = write(base, event("bob", "project.updated")).await;
    assert!(
        !finds(base, &fourth, None).await,
        "the replica serves reads again"
    );
    assert!(finds(base, &fourth, Some(&token)).await);

    // The Rust kit keeps its latest write's token for the reads it makes elsewhere.
    let audit = audit_client::AuditClient::builder(format!("{base}/graphql"))
        .build()
        .expect("client");
    assert_eq!(audit.consistency_token(), None);
    let recorded = audit
        .project("p-9")
        .created()
        .by(audit_client::Actor::user("carol"))
        .send()
        .await
        .expect("recorded");
    let token = audit.consistency_token().expect("the write's token");
    let id = recorded.id.into_inner();
    assert!(!finds(base, &id, None).await);
    assert!(finds(base, &id, Some(&token)).await);
    replay(&standby, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_a_primary_and_a_replica_under_a_mixed_load() {
    let Some(primary) = Cluster::start() else {
        return;
    };
    let replica = primary.replica();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(server(&primary, &replica).await);
    }
    // 300 subscribers, 100 per instance, on a few sockets each.
    const PER_SOCKET: usize = 25;
    let mut sockets = Vec::new();
    for instance in &instances {
        for _ in 0..4 {
            let mut client = Client::init(&instance.base, "graphql-transport-ws").await;
            for n in 0..PER_SOCKET {
                client
                    .subscribe(
                        &n.to_string(),
                        "subscription { auditLogCreated { sequence } }",
                        json!({}),
                    )
                    .await;
            }
            sockets.push(client);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Three writers, one per instance; each reads its write back with its token right away.
    const PER_WRITER: usize = 20;
    let writers = instances.iter().enumerate().map(|(w, instance)| {
        let base = instance.base.clone();
        tokio::spawn(async move {
            for n in 0..PER_WRITER {
                let (id, token) =
                    write(&base, event(&format!("writer-{w}"), "project.updated")).await;
                assert!(
                    finds(&base, &id, Some(&token)).await,
                    "writer {w} read its write {n}"
                );
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.expect("a writer");
    }

    let total = 3 * PER_WRITER;
    for (s, client) in sockets.iter_mut().enumerate() {
        let mut seen: Vec<Vec<i64>> = vec![Vec::new(); PER_SOCKET];
        // Pings keep a socket busy: a missing event must fail, not wait for ever.
        let received = async {
            for _ in 0..total * PER_SOCKET {
                let message = client.receive().await;
                let id: usize = message["id"]
                    .as_str()
                    .and_then(|i| i.parse().ok())
                    .expect("an id");
                let sequence = &message["payload"]["data"]["auditLogCreated"]["sequence"];
                seen[id].push(
                    sequence
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .expect("a sequence"),
                );
            }
        };
        tokio::time::timeout(Duration::from_secs(60), received)
            .await
            .unwrap_or_else(|_| panic!("socket {s}: not every event arrived"));
        for sequences in seen {
            let expected: Vec<i64> = (1..=total as i64).collect();
            assert_eq!(
                sequences, expected,
                "socket {s}: every event once, in order"
            );
        }
    }
    let unique: HashSet<String> = instances.iter().map(|i| i.base.clone()).collect();
    assert_eq!(unique.len(), 3);
}
