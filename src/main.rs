//! The `audit-service` binary: parses the command line and hands over to the library.

use audit_service::config::{Cli, Command};
use audit_service::startup::Application;
use audit_service::{graphql, telemetry};
use clap::Parser;
use migration::{Migrator, MigratorTrait};
use secrecy::ExposeSecret;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Schema => print!("{}", graphql::sdl()),
        Command::Migrate(database) => {
            telemetry::init();
            let db = migration::connect(database.url.expose_secret(), 1).await?;
            Migrator::up(&db, None).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve(config) => {
            telemetry::init();
            Application::build(&config)
                .await?
                .run_until_stopped()
                .await?;
        }
    }
    Ok(())
}
