//! `cargo run -p migration -- up`: sea-orm's migration CLI on audit-service's connection.

use sea_orm_migration::cli;

#[tokio::main]
async fn main() {
    cli::run_cli_with_connection(migration::Migrator, |options| async move {
        migration::connect(options.get_url(), 2).await
    })
    .await;
}
