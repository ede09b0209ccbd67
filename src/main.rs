//! The `audit-service` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use audit_service::{commands, config};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    commands::run(config::parse()?).await
}
