//! The Node kit (`clients/node`): built from its lockfile, then its own tests (node:test,
//! `clients/node/test`) run against this server binary on SQLite and on PostgreSQL.

use std::process::Command;

use crate::helpers::{Backend, new_database, node_packages};

const KIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/node");

/// Runs `npm <args>` in the kit with `env`, failing the test when it fails.
fn npm(args: &[&str], env: &[(&str, &str)]) {
    let status = Command::new("npm")
        .args(args)
        .current_dir(KIT)
        .envs(env.iter().copied())
        .status()
        .expect("npm runs (Node.js is needed by these tests)");
    assert!(
        status.success(),
        "npm {} failed in clients/node",
        args.join(" ")
    );
}

/// Installs and builds the kit once for both backends' runs.
fn build() {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        node_packages("clients/node", "graphql-ws");
        npm(&["run", "build"], &[]);
        *built = true;
    }
}

const BINARY: (&str, &str) = ("AUDIT_SERVICE_BIN", env!("CARGO_BIN_EXE_audit-service"));

#[test]
fn the_node_kit_passes_its_tests_on_sqlite() {
    build();
    npm(&["test"], &[BINARY]);
}

#[tokio::test]
async fn the_node_kit_passes_its_tests_on_postgres() {
    let Some((url, cleanup)) = new_database(Backend::Postgres).await else {
        return;
    };
    let run = tokio::task::spawn_blocking(move || {
        build();
        let key = crate::helpers::privacy_key_file();
        npm(
            &["test"],
            &[
                BINARY,
                ("AUDIT_TEST_DATABASE_URL", &url),
                ("AUDIT_PRIVACY_KEY_FILE", &key),
            ],
        );
    })
    .await;
    cleanup.run().await;
    run.expect("the Node kit's tests pass on PostgreSQL");
}
