//! The `audit-service` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use audit_service::{commands, config};

/// mimalloc rather than glibc's malloc: a page of 50 events spent a fifth of its CPU in
/// glibc's allocator (`docs/benchmarks.md`, issue 13, seventh step).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    commands::run(config::parse()?).await
}
