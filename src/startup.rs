//! Building and running the server: what `main` does, and what every test starts.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::HeaderValue;
use migration::{Migrator, MigratorTrait};
use sea_orm::DbBackend;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::graphql::build_schema;
use crate::http::{AppState, app};
use crate::metrics::Metrics;
use crate::pubsub::{self, Feed};
use crate::service::ingest::Ingestor;
use crate::service::retention;

/// A bound, migrated server, ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
}

impl Application {
    /// Connects to the database, applies pending migrations, and binds the listener.
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let mut db = migration::connect(
            config.database.url.expose_secret(),
            config.database.pool_size,
        )
        .await?;
        let metrics = Arc::new(Metrics::default());
        metrics.watch(&mut db);
        Migrator::up(&db, None).await?;
        let cors_origins = config
            .cors_origins
            .iter()
            .map(|origin| HeaderValue::from_str(origin))
            .collect::<Result<Vec<_>, _>>()?;
        let feed = Feed::new(config.subscriber_buffer);
        if db.get_database_backend() == DbBackend::Postgres {
            let url = config.database.url.expose_secret().to_owned();
            tokio::spawn(pubsub::listen(db.clone(), url, feed.clone()));
        }
        let ingestor = Ingestor::start(db.clone(), feed.clone());
        if !config.retention.retention.is_empty() {
            tokio::spawn(retention::run_periodically(
                db.clone(),
                ingestor.clone(),
                config.retention.clone(),
            ));
        }
        let schema = build_schema(db.clone(), ingestor, feed, &config.schema());
        let router = app(
            AppState {
                schema,
                db,
                metrics,
            },
            &cors_origins,
        );
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Application { listener, router })
    }

    /// The address the server listens on (port 0 in the config becomes a real port).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until Ctrl-C or SIGTERM, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        tracing::info!(address = %self.listener.local_addr()?, "audit-service listening");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
