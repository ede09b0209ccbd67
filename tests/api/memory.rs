//! Memory stays bounded under hostile fan-out reads from several clients at once. The server
//! runs as a process of its own on PostgreSQL, so that its peak resident memory (`VmHWM`)
//! is its alone (SQLite's page caches would live in the same process).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Backend, event, new_database, post_json};
use crate::hostile::codes;

/// The bound this test holds the server to, in MiB of peak resident memory.
const PEAK_RSS_MIB: u64 = 300;

struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(database_url: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_audit-service"))
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("AUDIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDIT_RATE_LIMIT", "0")
            .env("AUDIT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("audit-service starts");
        let server = Server {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        while client
            .get(format!("{}/healthz", server.address))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// A line of `/proc/<pid>/status`, in MiB.
    fn memory_mib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("process status");
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .expect("field present");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("a number of kB");
        kib / 1024
    }
}

/// Reads that ask for far more than any response may hold, or multiply through trails.
fn attacks() -> Vec<Value> {
    let wide: Vec<String> = (0..16)
        .map(|i| format!("a{i}: auditLogs(first: 500) {{ nodes {{ id metadata }} }}"))
        .collect();
    let nested = "{ auditLogs { nodes { id actor { auditLogs { nodes { id actor { auditLogs { nodes { id actor { auditLogs { nodes { id } } } } } } } } } } } }";
    let representations: Vec<Value> = (0..250)
        .map(|i| json!({ "__typename": "AuditActor", "type": "USER", "id": format!("u-{}", i % 20) }))
        .collect();
    vec![
        json!({ "query": format!("{{ {} }}", wide.join(" ")) }),
        json!({ "query": nested }),
        json!({
            "query": "query($r: [_Any!]!) { _entities(representations: $r) { ... on AuditActor { auditLogs(first: 500) { nodes { id metadata } } } } }",
            "variables": { "r": representations },
        }),
        json!({ "query": "{ auditLogs(first: 500) { edges { cursor node { id metadata } } nodes { metadata } again: nodes { metadata } } }" }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fan_out_reads_keep_memory_bounded() {
    let Some((database_url, cleanup)) = new_database(Backend::Postgres).await else {
        return;
    };
    let server = Server::start(&database_url).await;
    let client = reqwest::Client::new();
    let url = format!("{}/graphql", server.address);
    // 3,000 events with 16 KiB of metadata each: 48 MiB of rows to fan out over.
    let filler = "x".repeat(16 * 1024);
    for batch in 0..60 {
        let inputs: Vec<Value> = (0..50)
            .map(|i| {
                let mut input = event(&format!("u-{}", (batch * 50 + i) % 20), "project.created");
                input["metadata"] = json!({ "filler": filler });
                input
            })
            .collect();
        let body = post_json(
            &client,
            &url,
            None,
            json!({
                "query": "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }",
                "variables": { "inputs": inputs },
            }),
        )
        .await;
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
    let seeded = server.memory_mib("VmRSS:");

    let deadline = Instant::now() + Duration::from_secs(10);
    let readers = (0..8).map(|reader| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut answers = 0;
            let attacks = attacks();
            while Instant::now() < deadline {
                let attack = attacks[(reader + answers) % attacks.len()].clone();
                let response = client
                    .post(&url)
                    .json(&attack)
                    .send()
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                assert!(matches!(status, 200 | 503), "status {status}");
                let body: Value = response.json().await.expect("JSON");
                let errors = body["errors"].to_string();
                assert!(
                    !codes(&body).is_empty(),
                    "every attack is refused: {:.300}",
                    errors
                );
                answers += 1;
            }
            answers
        }
    });
    let answers: usize = join_all(readers).await.into_iter().sum();
    let peak = server.memory_mib("VmHWM:");
    eprintln!(
        "memory: {answers} hostile reads answered; RSS {seeded} MiB after seeding, peak {peak} MiB (bound {PEAK_RSS_MIB} MiB)"
    );
    assert!(answers >= 8, "the readers got answers");
    assert!(peak < PEAK_RSS_MIB, "peak RSS {peak} MiB");
    // Still serving.
    let body = post_json(
        &client,
        &url,
        None,
        json!({ "query": "{ auditLogs(first: 1) { nodes { id } } }" }),
    )
    .await;
    assert_eq!(body["errors"], Value::Null, "{body}");
    drop(server);
    cleanup.run().await;
}
