//! Memory stays bounded under hostile reads from several clients at once: fan-out reads,
//! events built to swell once decoded (read, verified, exported, by many at once, while
//! the server verifies at start), and readers that stop reading (exports, WebSocket
//! subscribers). The server runs as a process of its own, so that its peak resident memory
//! (`VmHWM`) is its alone.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Backend, event, new_database, post_json};
use crate::hostile::codes;
use crate::subscriptions::Client;

/// The bound the fan-out test holds the server to, in MiB of peak resident memory.
const PEAK_RSS_MIB: u64 = 300;
/// The bound the README states, under the worst of the loads below.
const STATED_PEAK_RSS_MIB: u64 = 512;

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
            .env("AUDIT_PRIVACY_KEY_FILE", crate::helpers::privacy_key_file())
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

/// Metadata of 4,094 values that takes about 1.2 MB once decoded (one-element arrays nested
/// 28 deep), though it is only 8 KB of text: the most memory per event the rules allow.
fn swelling_metadata() -> Value {
    let nested = (0..28).fold(json!(0), |inner, _| json!([inner]));
    json!({ "a": vec![nested; 141] })
}

/// Logs `count` events with `metadata`, as many at a time as a request body holds.
async fn seed(client: &reqwest::Client, url: &str, count: usize, metadata: &Value) {
    let per_batch = (800_000 / metadata.to_string().len()).clamp(1, 50);
    for batch in 0..count.div_ceil(per_batch) {
        let inputs: Vec<Value> = (0..per_batch.min(count - batch * per_batch))
            .map(|i| {
                let n = batch * per_batch + i;
                let mut input = event(&format!("u-{}", n % 20), "project.created");
                input["metadata"] = metadata.clone();
                input
            })
            .collect();
        let body = post_json(
            client,
            url,
            None,
            json!({
                "query": "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }",
                "variables": { "inputs": inputs },
            }),
        )
        .await;
        assert_eq!(body["errors"], Value::Null, "{body}");
    }
}

/// The longest `/healthz` took, asked every 100 ms until `deadline`.
async fn health_during(client: reqwest::Client, base: String, deadline: Instant) -> Duration {
    let mut slowest = Duration::ZERO;
    while Instant::now() < deadline {
        let started = Instant::now();
        let health = client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("healthz answers");
        assert_eq!(health.status(), 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slowest
}

/// The attack of the report, within today's rules: 1,008 events that each take about 1.2 MB
/// once decoded are verified by the server as it starts, while clients verify the chain ten
/// times per request, read pages of 500, and export everything, all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swelling_events_keep_memory_bounded() {
    let Some((database_url, cleanup)) = new_database(Backend::Postgres).await else {
        return;
    };
    let client = reqwest::Client::new();
    let seeder = Server::start(&database_url).await;
    seed(
        &client,
        &format!("{}/graphql", seeder.address),
        1008,
        &swelling_metadata(),
    )
    .await;
    drop(seeder);

    // A new process: its continuous verification starts with the whole chain.
    let server = Server::start(&database_url).await;
    let url = format!("{}/graphql", server.address);
    let deadline = Instant::now() + Duration::from_secs(15);
    let verify = format!(
        "{{ {} }}",
        (0..10)
            .map(|i| format!("v{i}: verifyAuditChain {{ valid checkedCount }}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let reads = [
        verify.as_str(),
        "{ auditLogs(first: 500) { nodes { id } } }",
        "{ auditLogs(first: 500) { nodes { id metadata } } }",
    ];
    let readers = (0..10).map(|reader| {
        let (client, url) = (client.clone(), url.clone());
        let query = reads[reader % reads.len()].to_owned();
        async move {
            let mut answered = 0;
            while Instant::now() < deadline {
                let response = client
                    .post(&url)
                    .json(&json!({ "query": query }))
                    .send()
                    .await
                    .expect("answered");
                let body: Value = response.json().await.expect("JSON");
                let codes = codes(&body);
                assert!(
                    codes
                        .iter()
                        .all(|c| c == "UNAVAILABLE" || c == "BAD_USER_INPUT"),
                    "{codes:?}"
                );
                if codes.is_empty() && query.contains("verify") {
                    assert_eq!(body["data"]["v0"]["valid"], true, "{body:.300}");
                }
                answered += 1;
            }
            answered
        }
    });
    let exports = (0..4).map(|_| {
        let (client, base) = (client.clone(), server.address.clone());
        async move {
            let mut rows = 0;
            while Instant::now() < deadline {
                let response = client
                    .get(format!("{base}/export"))
                    .send()
                    .await
                    .expect("answered");
                if response.status() == 200 {
                    let body = response.text().await.expect("a whole export");
                    rows += body.lines().count();
                }
            }
            rows
        }
    });
    let health = tokio::spawn(health_during(
        client.clone(),
        server.address.clone(),
        deadline,
    ));
    let (answered, exported) = tokio::join!(join_all(readers), join_all(exports));
    let slowest_health = health.await.expect("health");
    let peak = server.memory_mib("VmHWM:");
    let answered: usize = answered.into_iter().sum();
    let exported: usize = exported.into_iter().sum();
    eprintln!(
        "memory: swelling events: {answered} reads answered, {exported} rows exported, peak RSS {peak} MiB (bound {STATED_PEAK_RSS_MIB} MiB), slowest /healthz {slowest_health:?}"
    );
    assert!(
        answered >= 10 && exported >= 1008,
        "{answered} reads, {exported} rows"
    );
    assert!(peak < STATED_PEAK_RSS_MIB, "peak RSS {peak} MiB");
    assert!(
        slowest_health < Duration::from_secs(2),
        "{slowest_health:?}"
    );
    drop(server);
    cleanup.run().await;
}

/// Readers that stop reading: 64 exports that read only their headers and 64 WebSocket
/// subscribers that never read, while 60 KB events keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_keep_memory_bounded() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some((database_url, cleanup)) = new_database(backend).await else {
            return;
        };
        let server = Server::start(&database_url).await;
        let client = reqwest::Client::new();
        let url = format!("{}/graphql", server.address);
        let filler = json!({ "filler": "x".repeat(60 * 1024) });
        seed(&client, &url, 300, &filler).await;

        let exports = join_all((0..64).map(|_| {
            let (client, base) = (client.clone(), server.address.clone());
            async move { client.get(format!("{base}/export")).send().await }
        }));
        let first = post_json(
            &client,
            &url,
            None,
            json!({ "query": "{ auditLogs(first: 1, orderBy: OCCURRED_AT_ASC) { edges { cursor } } }" }),
        )
        .await;
        let cursor = first["data"]["auditLogs"]["edges"][0]["cursor"].clone();
        assert!(cursor.is_string(), "{first}");
        let subscribers = join_all((0..64).map(|i| {
            let (address, cursor) = (server.address.clone(), cursor.clone());
            async move {
                let mut socket = Client::init(&address, "graphql-transport-ws").await;
                // Each a subscription of its own; half replay everything first.
                let query = format!(
                    "subscription($after: String) {{ auditLogCreated(after: $after, filter: {{ actions: [\"project.*\", \"n{i}.x\"] }}) {{ id metadata }} }}"
                );
                let after = if i % 2 == 0 { cursor } else { Value::Null };
                socket.subscribe("s", &query, json!({ "after": after })).await;
                socket
            }
        }));
        let (exports, subscribers) = tokio::join!(exports, subscribers);
        let deadline = Instant::now() + Duration::from_secs(15);
        let health = tokio::spawn(health_during(
            client.clone(),
            server.address.clone(),
            deadline,
        ));
        seed(&client, &url, 300, &filler).await;
        let slowest_health = health.await.expect("health");
        let peak = server.memory_mib("VmHWM:");
        eprintln!(
            "memory: stalled readers on {backend:?}: peak RSS {peak} MiB (bound {STATED_PEAK_RSS_MIB} MiB), slowest /healthz {slowest_health:?}"
        );
        assert!(
            peak < STATED_PEAK_RSS_MIB,
            "{backend:?}: peak RSS {peak} MiB"
        );
        assert!(
            slowest_health < Duration::from_secs(2),
            "{slowest_health:?}"
        );
        drop((exports, subscribers));
        drop(server);
        cleanup.run().await;
    }
}
