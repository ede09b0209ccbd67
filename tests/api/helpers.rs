//! Starts the real server on a random port against a fresh database, and talks HTTP to it.

use audit_service::config::{DatabaseConfig, ServeConfig};
use audit_service::startup::Application;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running server and what a test needs to talk to it and look behind it.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub backend: Backend,
    /// A direct connection to the server's database, for checks behind the API's back.
    pub db: DatabaseConnection,
    pub database_url: String,
    /// Sent as `Authorization: Bearer <token>` with every request, when set.
    pub token: Option<String>,
    cleanup: Cleanup,
}

/// What removes a test database.
pub enum Cleanup {
    Sqlite(#[expect(dead_code, reason = "kept for its Drop")] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

/// Runs one test body on SQLite and on PostgreSQL; see `spawn_app`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await;
                let app = app.expect("SQLite always runs");
                super::$name(&app).await;
                app.cleanup().await;
            }
            #[tokio::test]
            async fn postgres() {
                let app = $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await;
                let Some(app) = app else { return };
                super::$name(&app).await;
                app.cleanup().await;
            }
        }
    )+};
}

/// Runs `$name(backend)` on SQLite and on PostgreSQL, for tests that start their own
/// server (with a configuration of their own).
#[macro_export]
macro_rules! with_each_backend {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await;
            }
        }
    )+};
}

/// Starts a server on `127.0.0.1:0` against its own new database. For PostgreSQL that is a
/// new database on `TEST_DATABASE_URL`; without it the test is skipped, loudly, and in CI
/// (`CI` set) it fails instead.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// `spawn_app` with a changed server configuration.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut ServeConfig),
) -> Option<TestApp> {
    let (database_url, cleanup) = new_database(backend).await?;
    let address = start_server_with(&database_url, configure).await;
    let db = migration::connect(&database_url, 2)
        .await
        .expect("connect to test database");
    Some(TestApp {
        address,
        client: reqwest::Client::new(),
        backend,
        db,
        database_url,
        token: None,
        cleanup,
    })
}

/// A new, empty database and what removes it. For PostgreSQL that is a new database on
/// `TEST_DATABASE_URL`; without it, `None` (loudly), and in CI (`CI` set) a failure.
pub async fn new_database(backend: Backend) -> Option<(String, Cleanup)> {
    Some(match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("audit.db").display()
            );
            (url, Cleanup::Sqlite(dir))
        }
        Backend::Postgres => {
            let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "TEST_DATABASE_URL must be set in CI: the PostgreSQL suite may not be skipped"
                );
                eprintln!("*** SKIPPED on PostgreSQL: TEST_DATABASE_URL is not set ***");
                return None;
            };
            let name = format!("audit_test_{}", uuid::Uuid::now_v7().simple());
            let admin = migration::connect(&admin_url, 1)
                .await
                .expect("connect to TEST_DATABASE_URL");
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            admin.close().await.ok();
            (
                with_database(&admin_url, &name),
                Cleanup::Postgres { admin_url, name },
            )
        }
    })
}

/// Starts one more server instance (in this process) on an existing database.
pub async fn start_server(database_url: &str) -> String {
    start_server_with(database_url, |_| {}).await
}

/// `start_server` with a changed configuration.
pub async fn start_server_with(
    database_url: &str,
    configure: impl FnOnce(&mut ServeConfig),
) -> String {
    let mut config = serve_config(database_url);
    configure(&mut config);
    let app = Application::build(&config).await.expect("server starts");
    let address = format!("http://{}", app.local_addr().expect("bound"));
    tokio::spawn(app.run_until_stopped());
    address
}

/// `postgres://host/db?x` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("database url has a path");
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

impl TestApp {
    /// POSTs a GraphQL request and returns the decoded body.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        self.post(json!({ "query": query, "variables": variables }))
            .await
            .json()
            .await
            .expect("JSON body")
    }

    /// POSTs a JSON body to `/graphql`.
    pub async fn post(&self, body: Value) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/graphql", self.address))
            .json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    /// Logs one event built from `input` and returns the stored event.
    pub async fn log(&self, input: Value) -> Value {
        let body = self
            .graphql(
                &format!("mutation($input: AuditEventInput!) {{ logAuditEvent(input: $input) {{ {EVENT_FIELDS} }} }}"),
                json!({ "input": input }),
            )
            .await;
        assert_eq!(body["errors"], Value::Null, "logAuditEvent failed: {body}");
        body["data"]["logAuditEvent"].clone()
    }

    /// Logs a batch and returns the stored events.
    pub async fn log_batch(&self, inputs: Value) -> Value {
        let body = self
            .graphql(
                &format!("mutation($inputs: [AuditEventInput!]!) {{ logAuditEvents(inputs: $inputs) {{ {EVENT_FIELDS} }} }}"),
                json!({ "inputs": inputs }),
            )
            .await;
        assert_eq!(body["errors"], Value::Null, "logAuditEvents failed: {body}");
        body["data"]["logAuditEvents"].clone()
    }

    /// How many rows the audit table holds, read behind the API's back.
    pub async fn stored_rows(&self) -> i64 {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                self.db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM audit_logs",
            ))
            .await
            .expect("count")
            .expect("a row");
        row.try_get("", "n").expect("n")
    }

    /// Drops the PostgreSQL test database (left behind when a test fails, for inspection).
    pub async fn cleanup(self) {
        self.db.close().await.ok();
        self.cleanup.run().await;
    }
}

impl Cleanup {
    /// Removes the database: a PostgreSQL one is dropped, a SQLite one goes with its
    /// directory.
    pub async fn run(self) {
        if let Cleanup::Postgres { admin_url, name } = &self {
            let admin = migration::connect(admin_url, 1).await.expect("connect");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
                .expect("drop test database");
        }
    }
}

/// Every field of an event, for selections.
pub const EVENT_FIELDS: &str = "id tenantId sequence occurredAt recordedAt \
    actor { type id name } action target { type id name } outcome reason metadata \
    context { ipAddress userAgent requestId }";

/// A minimal valid event input.
pub fn event(actor: &str, action: &str) -> Value {
    json!({ "actor": { "type": "USER", "id": actor }, "action": action })
}

impl TestApp {
    /// Runs SQL behind the server's back as the database owner, with the append-only
    /// triggers out of the way, as an attacker with database access could.
    pub async fn tamper(&self, sql: &str) {
        let sql = match self.backend {
            Backend::Postgres => format!(
                "SET session_replication_role = replica; {sql}; RESET session_replication_role"
            ),
            Backend::Sqlite => format!(
                "DROP TRIGGER IF EXISTS audit_logs_no_update; DROP TRIGGER IF EXISTS audit_logs_no_delete; {sql}"
            ),
        };
        // One connection, so the session setting applies to the statement.
        let db = migration::connect(&self.database_url, 1)
            .await
            .expect("connect");
        db.execute_unprepared(&sql).await.expect("tamper");
        db.close().await.ok();
    }

    /// Runs the `audit-service` binary against this app's database.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("AUDIT_PRIVACY_KEY_FILE", privacy_key_file())
            .env("AUDIT_LOG", "warn")
            .output()
            .expect("audit-service runs")
    }
}

/// The privacy key file test servers use (PostgreSQL needs one): made once, under
/// `target/`.
pub fn privacy_key_file() -> String {
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-privacy-key");
    if !path.exists() {
        let text =
            audit_service::service::privacy::keyring::Keyring::new_file(None).expect("a key file");
        let dir = path.parent().expect("a directory");
        std::fs::create_dir_all(dir).expect("target/");
        // Written whole, then renamed: a server never reads half a file.
        let made = dir.join(format!("test-privacy-key.{}", std::process::id()));
        std::fs::write(&made, text).expect("write the key file");
        std::fs::rename(&made, &path).expect("rename the key file");
    }
    path.display().to_string()
}

/// The configuration tests start servers with: port 0, open mode, no rate limit.
pub fn serve_config(database_url: &str) -> ServeConfig {
    ServeConfig {
        database: DatabaseConfig {
            url: database_url.to_owned().into(),
            pool_size: 5,
        },
        listen: "127.0.0.1:0".parse().expect("address"),
        cors_origins: vec![],
        retention: Default::default(),
        subscriber_buffer: 1000,
        max_depth: 15,
        max_complexity: 50_000,
        introspection: true,
        batch_window_ms: 2,
        auth: Default::default(),
        transparency: Default::default(),
        replicas: Default::default(),
        privacy: audit_service::config::PrivacyConfig {
            privacy_key_file: Some(privacy_key_file().into()),
        },
        stream_failing_after: 300,
        shutdown_timeout_seconds: 30,
    }
}

/// POSTs a JSON body to a GraphQL endpoint, with a bearer token when given; returns the
/// decoded response body.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> Value {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("a JSON body")
}

/// The `audit-service` binary serving on a free port, its log captured in a file. Killed
/// when dropped.
pub struct Binary {
    pub child: tokio::process::Child,
    pub base: String,
    log: tempfile::NamedTempFile,
}

impl Binary {
    /// Starts the binary with `env` on `database_url` and waits until `/readyz` says ready.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
            .env("DATABASE_URL", database_url)
            .env("AUDIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDIT_RATE_LIMIT", "0")
            .env("AUDIT_PRIVACY_KEY_FILE", privacy_key_file())
            .envs(env.iter().copied())
            .stderr(log.reopen().expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("the server starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        while !client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "not ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Binary { child, base, log }
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).expect("log")
    }
}

/// Installs the Node packages pinned in `dir` (under the repository) once, unless `module`
/// is there already: the test command sets up what its tests need (`.ci/run` does it up
/// front too).
pub fn node_packages(dir: &str, module: &str) {
    static INSTALLED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    if dir.join("node_modules").join(module).exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(&dir)
        .status()
        .expect("npm runs (Node.js is needed by these tests)");
    assert!(status.success(), "npm ci in {} failed", dir.display());
}

/// A Python with the independent verifiers' packages (`tools/requirements.txt`): a virtual
/// environment under `target/`, made on first use.
pub fn python() -> String {
    static MADE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _making = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/test-python");
    let python = venv.join("bin/python3");
    let ready = venv.join("requirements.txt");
    let requirements = root.join("tools/requirements.txt");
    let wanted = std::fs::read(&requirements).expect("tools/requirements.txt");
    if std::fs::read(&ready).ok().as_ref() == Some(&wanted) {
        return python.display().to_string();
    }
    let run = |program: &std::path::Path, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
        assert!(status.success(), "{} {args:?} failed", program.display());
    };
    let venv_arg = venv.display().to_string();
    run(std::path::Path::new("python3"), &["-m", "venv", &venv_arg]);
    let requirements_arg = requirements.display().to_string();
    run(
        &python,
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            &requirements_arg,
        ],
    );
    std::fs::write(&ready, wanted).expect("write the marker");
    python.display().to_string()
}
