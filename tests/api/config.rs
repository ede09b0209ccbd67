//! The configuration file: precedence (flags > environment > file > defaults), unknown keys
//! and bad values refused, `config` printing the effective values without secrets, and a
//! server started from a file alone.

use std::process::Output;

use crate::helpers::{Backend, new_database};

const SECRET: &str = "jwt-secret-that-must-never-be-printed";
const PASSWORD: &str = "db-password-that-must-never-be-printed";

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(args)
        .env_remove("AUDIT_RATE_LIMIT")
        .env_remove("AUDIT_DB_POOL_SIZE")
        .env_remove("AUDIT_LISTEN")
        .env_remove("DATABASE_URL")
        .env_remove("AUDIT_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("runs")
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

/// The printed line of `key`.
fn line<'o>(out: &'o str, key: &str) -> &'o str {
    out.lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

#[test]
fn precedence_and_redaction() {
    let dir = tempfile::tempdir().expect("dir");
    let config = file(
        &dir,
        "audit.toml",
        &format!(
            r#"
listen = "127.0.0.1:9999"
db-pool-size = 5
rate-limit = 5
max-depth = 12
retention = ["acme=90", "*=400"]
introspection = false
jwt-hs256-secret = "{SECRET}"
database-url = "postgres://audit:{PASSWORD}@db.internal/platform?password={PASSWORD}&sslmode=require"
"#
        ),
    );
    let env = [("AUDIT_RATE_LIMIT", "7"), ("AUDIT_DB_POOL_SIZE", "4")];
    for args in [
        vec!["config", "--config", &config, "--db-pool-size", "3"],
        vec!["--config", &config, "config", "--db-pool-size=3"],
        vec![
            &*format!("--config={config}"),
            "config",
            "--db-pool-size",
            "3",
        ],
    ] {
        let output = run(&args, &env);
        assert!(output.status.success(), "{output:?}");
        let out = String::from_utf8(output.stdout).expect("utf-8");
        assert_eq!(line(&out, "db-pool-size"), "db-pool-size = 3  # flag");
        assert_eq!(
            line(&out, "rate-limit"),
            "rate-limit = 7  # environment, AUDIT_RATE_LIMIT"
        );
        assert_eq!(line(&out, "listen"), r#"listen = "127.0.0.1:9999"  # file"#);
        assert_eq!(line(&out, "max-depth"), "max-depth = 12  # file");
        assert_eq!(line(&out, "introspection"), "introspection = false  # file");
        assert_eq!(
            line(&out, "retention"),
            r#"retention = ["acme=90", "*=400"]  # file"#
        );
        assert_eq!(
            line(&out, "max-complexity"),
            "max-complexity = 50000  # default"
        );
        assert_eq!(
            line(&out, "jwt-hs256-secret"),
            r#"jwt-hs256-secret = "[redacted]"  # file"#
        );
        assert_eq!(
            line(&out, "database-url"),
            r#"database-url = "postgres://audit:[redacted]@db.internal/platform?password=[redacted]&sslmode=require"  # file"#
        );
        assert!(!out.contains(SECRET) && !out.contains(PASSWORD), "{out}");
        // What it prints is a configuration file itself.
        toml_parses(&out);
    }
    // `--help` shows the file's values as defaults, but not its secrets.
    let help = run(&["--config", &config, "--help"], &[]);
    let help = String::from_utf8(help.stdout).expect("utf-8");
    assert!(help.contains("[default: 127.0.0.1:9999]"), "{help}");
    assert!(!help.contains(SECRET) && !help.contains(PASSWORD), "{help}");
    // AUDIT_CONFIG names the file too.
    let output = run(&["config"], &[("AUDIT_CONFIG", &config)]);
    let out = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(line(&out, "db-pool-size"), "db-pool-size = 5  # file");
}

fn toml_parses(text: &str) {
    let settings: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for setting in settings {
        let (key, rest) = setting.split_once(" = ").expect("key = value");
        assert!(!key.contains(' '), "{setting}");
        let value = rest.rsplit_once("  # ").map_or(rest, |(v, _)| v);
        let valid = value.starts_with('"') && value.ends_with('"')
            || value.starts_with('[') && value.ends_with(']')
            || value.parse::<i64>().is_ok()
            || value == "true"
            || value == "false";
        assert!(valid, "{setting}");
    }
}

#[test]
fn bad_files_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = [
        (
            "unknown.toml",
            "listen = \"127.0.0.1:1\"\nlisten-port = 80\n",
            "unknown setting `listen-port`",
        ),
        (
            "nested.toml",
            "[auth]\nrate-limit = 1\n",
            "unknown setting `auth`",
        ),
        (
            "table.toml",
            "rate-limit = { a = 1 }\n",
            "`rate-limit` takes a string, number or boolean",
        ),
        (
            "type.toml",
            "rate-limit = \"lots\"\n",
            "invalid value 'lots' for '--rate-limit",
        ),
        ("syntax.toml", "rate-limit = \n", "is not TOML"),
        (
            "config.toml",
            "config = \"other.toml\"\n",
            "unknown setting `config`",
        ),
    ];
    for (name, text, message) in cases {
        let path = file(&dir, name, text);
        let output = run(&["config", "--config", &path], &[]);
        assert!(!output.status.success(), "{name} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{name}: {stderr}");
    }
    let missing = run(&["config", "--config", "/nonexistent/audit.toml"], &[]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read the configuration file")
    );
}

/// A server configured by a file alone serves on the file's address and database.
#[tokio::test]
async fn a_server_runs_from_a_file() {
    let Some((database_url, cleanup)) = new_database(Backend::Sqlite).await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let config = file(
        &dir,
        "audit.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase-url = \"{database_url}\"\nmax-depth = 3\n"
        ),
    );
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .args(["serve", "--config", &config])
        .env_remove("AUDIT_LISTEN")
        .env_remove("DATABASE_URL")
        .env("AUDIT_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..300 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "the server did not start from its file");
    // max-depth = 3 from the file applies.
    let deep: serde_json::Value = client
        .post(format!("{base}/graphql"))
        .json(&serde_json::json!({ "query": "{ auditLogs { edges { node { actor { id } } } } }" }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        deep["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{deep}"
    );
    server.kill().await.ok();
    cleanup.run().await;
}

/// A pool of no connections is refused as a usage error wherever it is set (it once
/// panicked at start), and a configuration file that never ends is refused once it passes
/// 1 MiB (it was once read forever).
#[test]
fn impossible_settings_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().expect("dir");
    let zero = file(&dir, "zero.toml", "db-pool-size = 0\n");
    for (args, env) in [
        (vec!["config", "--db-pool-size", "0"], vec![]),
        (vec!["config"], vec![("AUDIT_DB_POOL_SIZE", "0")]),
        (vec!["config", "--config", zero.as_str()], vec![]),
    ] {
        let out = run(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("0 is not in 1..=1000"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let started = std::time::Instant::now();
    let out = run(&["config", "--config", "/dev/zero"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("larger than 1024 KiB"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
