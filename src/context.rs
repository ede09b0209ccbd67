//! What the server shares, built once at startup and handed to both the HTTP edge (inside the
//! router's state) and the GraphQL schema (as its one piece of data).

use std::sync::Arc;

use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::credentials::Authenticator;
use crate::metrics::Metrics;
use crate::refusals::Refusals;
use crate::service::capacity::memory::Memory;
use crate::service::capacity::share::Shares;
use crate::service::ingest::Ingestor;
use crate::service::live::feed::Feed;
use crate::service::privacy::keyring::Keyring;
use crate::service::replicas::Reads;
use crate::service::tlog::cache::TileCache;
use crate::service::tlog::checkpoint::Signer;

/// The database, the write path, the live feed, authentication, access control, metrics and
/// the checkpoint key of one server instance. Cheap to clone.
#[derive(Clone)]
pub struct AppContext {
    /// The primary: writes, and what must read the latest.
    pub db: DatabaseConnection,
    /// Where reads go: a replica when one is configured and usable, else `db`.
    pub reads: Reads,
    pub ingestor: Ingestor,
    /// Unwraps the data keys that personal values are sealed under.
    pub keyring: Arc<Keyring>,
    pub feed: Feed,
    pub auth: Arc<Authenticator>,
    pub refusals: Arc<Refusals>,
    pub metrics: Arc<Metrics>,
    /// Memory for decoded events, charged before it is spent.
    pub memory: Memory,
    /// Memory for decoded requests (bodies, WebSocket messages): apart from `memory`, so
    /// that readers, stalled or not, never keep writes out.
    pub requests: Memory,
    /// Exports running at once, shared between tenants (each holds a page in memory and
    /// reads a page at a time).
    pub exports: Shares,
    /// The key checkpoints are signed with, when one is configured.
    pub signer: Option<Arc<Signer>>,
    /// Tiles of the tenants' trees recently read for proofs.
    pub tiles: Arc<TileCache>,
    /// Turns true when the server starts shutting down.
    pub stopping: watch::Receiver<bool>,
    /// The WebSocket connections being served, which shutdown waits for.
    pub connections: TaskTracker,
    /// How long a log stream's sink fails before the stream reads `FAILING`.
    pub stream_failing_after: std::time::Duration,
}
