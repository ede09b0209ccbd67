//! `schema.graphql` is exactly what the server serves and `audit-service schema` prints.

#[test]
fn schema_file_matches_the_server() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_audit-service"))
        .arg("schema")
        .output()
        .expect("audit-service schema runs");
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(printed, audit_service::graphql::sdl());
    assert!(
        committed == printed,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql`"
    );
}
