//! Building and running the server: what `main` does, and what every test starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use migration::{Migrator, MigratorTrait};
use sea_orm::{DatabaseConnection, DbBackend};
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;

use crate::config::ServeConfig;
use crate::context::AppContext;
use crate::credentials::Authenticator;
use crate::graphql::{SchemaConfig, build_schema};
use crate::http::{AppState, Peer, TimedListener, app};
use crate::metrics::Metrics;
use crate::refusals::Refusals;
use crate::service::capacity::memory::Memory;
use crate::service::capacity::share::Shares;
use crate::service::ingest::Ingestor;
use crate::service::live::feed::Feed;
use crate::service::live::listener;
use crate::service::privacy::{self, keyring};
use crate::service::replicas::Reads;
use crate::service::retention::maintenance;
use crate::service::streams::deliver::Streams;
use crate::service::streams::sink;
use crate::service::tlog::cache::TileCache;
use crate::service::tlog::checkpoint::Signer;
use crate::service::tlog::transparency;
use crate::telemetry;
use crate::ws::Fanout;

/// Memory for decoding requests, over all requests in flight.
const REQUEST_MEMORY: usize = 64 << 20;
/// Exports one instance runs at once, half of them at most for one tenant; more wait for a
/// slot (see `http/export.rs`).
const MAX_EXPORTS: u32 = 4;

/// A bound, migrated server, ready to run. It owns its background tasks (the NOTIFY
/// listener, housekeeping): they stop when it stops, or when it is dropped.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    tasks: JoinSet<()>,
    context: AppContext,
    stopping: watch::Sender<bool>,
    shutdown_timeout: Duration,
}

impl Application {
    /// Connects to the database, applies pending migrations, and binds the listener.
    pub async fn build(config: &ServeConfig) -> anyhow::Result<Self> {
        let keyring = Arc::new(keyring::open(
            config.privacy.privacy_key_file.as_deref(),
            config.database.url.expose_secret(),
        )?);
        let metrics = Arc::new(Metrics::default());
        let (db, background) = connect(config, &metrics).await?;
        privacy::store::check(&db, &keyring).await.map_err(|err| {
            anyhow::Error::new(err)
                .context("the privacy key file does not open the stored data keys")
        })?;
        let cors_origins = config
            .cors_origins
            .iter()
            .map(|origin| HeaderValue::from_str(origin))
            .collect::<Result<Vec<_>, _>>()?;
        let feed = Feed::new(config.subscriber_buffer);
        let memory = Memory::default();
        let ingestor = Ingestor::start(
            db.clone(),
            feed.clone(),
            metrics.clone(),
            Some(keyring.clone()),
        );
        let signer = config
            .transparency
            .key_file
            .as_deref()
            .map(Signer::load)
            .transpose()?
            .map(Arc::new);
        let mut tasks = JoinSet::new();
        if db.get_database_backend() == DbBackend::Postgres {
            let url = config.database.url.expose_secret().to_owned();
            tasks.spawn(listener::listen(db.clone(), url, feed.clone()));
        }
        let retention = config.retention.clone();
        tasks.spawn(maintenance::run(db.clone(), ingestor.clone(), retention));
        let transparency = &config.transparency;
        for task in
            transparency::tasks(&background, &memory, signer.clone(), transparency, &metrics)
        {
            tasks.spawn(task);
        }
        tasks.spawn(upkeep(metrics.clone()));
        // Delivery's statements are background work, as the tree's upkeep is: not counted
        // in `audit_sql_statements_total`, which is per request.
        let streams = Streams {
            db: background.clone(),
            memory: memory.clone(),
            feed: feed.clone(),
            keyring: keyring.clone(),
            metrics: metrics.clone(),
            failing_after: Duration::from_secs(config.stream_failing_after),
            owner: uuid::Uuid::now_v7().to_string(),
            http: sink::http_client(),
        };
        tasks.spawn(streams.run());
        let replicas = &config.replicas;
        let reads = Reads::connect(
            db.clone(),
            &replicas.urls,
            config.database.pool_size,
            (
                Duration::from_millis(replicas.wait_ms),
                Duration::from_secs(replicas.max_lag_seconds),
            ),
            &metrics,
        )
        .await?;
        tasks.spawn(reads.clone().monitor());
        let auth = Arc::new(Authenticator::new(db.clone(), &config.auth)?);
        refuse_open_mode_off_loopback(&auth, config).await?;
        let (stopping, stopping_rx) = watch::channel(false);
        let context = AppContext {
            db,
            reads,
            refusals: Arc::new(Refusals::new(&config.auth, ingestor.clone())),
            ingestor,
            keyring,
            feed,
            auth,
            metrics,
            memory,
            requests: Memory::new(REQUEST_MEMORY),
            exports: Shares::new(MAX_EXPORTS, MAX_EXPORTS / 2),
            signer,
            tiles: Arc::new(TileCache::new()),
            stopping: stopping_rx,
            connections: TaskTracker::new(),
            stream_failing_after: Duration::from_secs(config.stream_failing_after),
        };
        let state = AppState {
            schema: build_schema(context.clone(), &SchemaConfig::from(config)),
            context: context.clone(),
            fanout: Fanout::new(config.subscriber_buffer, context.metrics.clone()),
        };
        let router = app(state, &cors_origins);
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Application {
            listener,
            router,
            tasks,
            context,
            stopping,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_seconds),
        })
    }

    /// The address the server listens on (port 0 in the config becomes a real port).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully (see `run_until`).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then shuts down within the shutdown timeout:
    /// `/readyz` answers 503 at once and the listener stops accepting; requests in flight
    /// finish; subscriptions complete and their connections close; the committer commits
    /// what is queued and answers its callers; background tasks stop. Fails if that takes
    /// longer than the timeout.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.listener.local_addr()?, "audit-service listening");
        let service = self.router.into_make_service_with_connect_info::<Peer>();
        let (signalled, on_signal) = oneshot::channel();
        let stopping = self.stopping.clone();
        let graceful = async move {
            stop.await;
            stopping.send_replace(true);
            let _ = signalled.send(());
        };
        let listener = TimedListener(self.listener);
        let mut server = tokio::spawn(
            axum::serve(listener, service)
                .with_graceful_shutdown(graceful)
                .into_future(),
        );
        tokio::select! {
            served = &mut server => return served.map_err(std::io::Error::other)?,
            _ = on_signal => {}
        }
        tracing::info!("shutting down: finishing requests, writes and subscriptions");
        let connections = self.context.connections.clone();
        let ingestor = self.context.ingestor.clone();
        let finish = async move {
            let served = server.await.map_err(std::io::Error::other)?;
            connections.close();
            connections.wait().await;
            ingestor.close().await;
            self.tasks.shutdown().await;
            served
        };
        match tokio::time::timeout(self.shutdown_timeout, finish).await {
            Ok(finished) => finished,
            Err(_) => Err(std::io::Error::other(format!(
                "shutdown did not finish within {:?}",
                self.shutdown_timeout
            ))),
        }
    }
}

/// How often histogram samples are drained into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The request pool, migrated, its statements counted; and a handle of the same pool whose
/// statements are not counted, for the tree's upkeep and continuous verification
/// (`audit_sql_statements_total` counts what requests and the write path cost).
async fn connect(
    config: &ServeConfig,
    metrics: &Metrics,
) -> anyhow::Result<(DatabaseConnection, DatabaseConnection)> {
    let url = config.database.url.expose_secret();
    let mut db = migration::connect(url, config.database.pool_size).await?;
    let background = db.clone();
    let statements = metrics.sql_statements.clone();
    db.set_metric_callback(move |statement| {
        statements.increment(1);
        telemetry::statement(statement);
    });
    Migrator::up(&db, None).await?;
    Ok((db, background))
}

/// Open mode listens only on a loopback address, and says so.
async fn refuse_open_mode_off_loopback(
    auth: &Authenticator,
    config: &ServeConfig,
) -> anyhow::Result<()> {
    if !auth.is_open().await? {
        return Ok(());
    }
    anyhow::ensure!(
        config.listen.ip().is_loopback(),
        "no credential source is configured (AUDIT_JWT_HS256_SECRET, \
         AUDIT_JWT_JWKS_FILE or an API key), so the server may only listen on a \
         loopback address, not {}",
        config.listen
    );
    tracing::warn!(
        "OPEN MODE: no JWT key and no API key is configured; every request is \
         accepted as tenant `default` with every scope. Create an API key or set \
         AUDIT_JWT_HS256_SECRET / AUDIT_JWT_JWKS_FILE before exposing the server."
    );
    Ok(())
}

async fn upkeep(metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(METRICS_UPKEEP);
    loop {
        ticks.tick().await;
        metrics.upkeep();
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
