//! The instance's metrics, through the `metrics` facade into a Prometheus recorder of its own
//! (not the process-global one: tests run several servers in one process), served at
//! `GET /metrics` in the Prometheus text format. Label values come from small fixed sets
//! (routes, statuses, operation types, error codes); never tenants or actors.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use sea_orm::{DatabaseConnection, DbBackend};

/// Buckets of every `_seconds` histogram: 250 µs to 10 s.
const SECONDS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets of events per ingest transaction.
const EVENTS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

const HTTP_REQUESTS: &str = "audit_http_requests_total";
const HTTP_DURATION: &str = "audit_http_request_duration_seconds";
const ERRORS: &str = "audit_errors_total";

/// The metrics of one server instance; the handles of unlabelled metrics are made once.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Counts the statements of a database handle (`set_metric_callback`).
    pub sql_statements: Counter,
    ingest: Ingest,
    pool: Pool,
    pub live: Live,
    pub tree: Tree,
    pub streams: Streams,
}

/// The write path's.
struct Ingest {
    commit_duration: Histogram,
    chain_duration: Histogram,
    rollup_duration: Histogram,
    transaction_events: Histogram,
    events: Counter,
    queue_depth: Gauge,
}

/// The request pool's, sampled when rendered.
struct Pool {
    connections: Gauge,
    idle: Gauge,
    max: Gauge,
}

/// The live tail's.
pub struct Live {
    subscribers: Gauge,
    executions: Gauge,
    pub deliveries: Counter,
    pub lagged: Counter,
}

/// The verifiable log's upkeep.
pub struct Tree {
    pub seal_duration: Histogram,
    pub checkpoint_duration: Histogram,
    pub verification_duration: Histogram,
    pub verified_sequence: Gauge,
    pub verification_failures: Counter,
}

/// The log streams' deliveries.
pub struct Streams {
    pub delivered: Counter,
    pub failures: Counter,
    pub failing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Ingest {
    fn new(r: &PrometheusRecorder) -> Self {
        Ingest {
            commit_duration: histogram(
                r,
                "audit_ingest_commit_duration_seconds",
                "Ingest (group commit) transactions, from the first statement to the commit.",
            ),
            chain_duration: histogram(
                r,
                "audit_ingest_chain_duration_seconds",
                "Of each ingest transaction, the time spent numbering and hashing its events.",
            ),
            rollup_duration: histogram(
                r,
                "audit_ingest_rollup_duration_seconds",
                "Of each ingest transaction, the time spent on the hourly and daily rollups (auditLogStats).",
            ),
            transaction_events: histogram(
                r,
                "audit_ingest_transaction_events",
                "Events committed per ingest transaction.",
            ),
            events: counter(r, "audit_ingest_events_total", "Events committed."),
            queue_depth: gauge(
                r,
                "audit_ingest_queue_depth",
                "Write requests waiting for the committer.",
            ),
        }
    }
}

impl Pool {
    fn new(r: &PrometheusRecorder) -> Self {
        Pool {
            connections: gauge(
                r,
                "audit_db_pool_connections",
                "Open connections of the request pool (idle and in use).",
            ),
            idle: gauge(
                r,
                "audit_db_pool_idle_connections",
                "Idle connections of the request pool.",
            ),
            max: gauge(
                r,
                "audit_db_pool_max_connections",
                "Most connections the request pool opens (AUDIT_DB_POOL_SIZE).",
            ),
        }
    }
}

impl Live {
    fn new(r: &PrometheusRecorder) -> Self {
        Live {
            subscribers: gauge(
                r,
                "audit_live_subscribers",
                "Live subscriptions (auditLogCreated) on this instance.",
            ),
            executions: gauge(
                r,
                "audit_live_executions",
                "Executions of live subscriptions receiving events; subscribers of the same subscription share one.",
            ),
            deliveries: counter(
                r,
                "audit_live_deliveries_total",
                "Events delivered to live subscribers (replayed and live).",
            ),
            lagged: counter(
                r,
                "audit_live_lagged_total",
                "Live subscribers dropped with SUBSCRIBER_LAGGED for falling behind.",
            ),
        }
    }
}

impl Tree {
    fn new(r: &PrometheusRecorder) -> Self {
        Tree {
            seal_duration: histogram(
                r,
                "audit_tree_seal_duration_seconds",
                "Passes that store the tenants' new full tree tiles.",
            ),
            checkpoint_duration: histogram(
                r,
                "audit_checkpoint_duration_seconds",
                "Passes that sign checkpoints of the trees that grew.",
            ),
            verification_duration: histogram(
                r,
                "audit_chain_verification_duration_seconds",
                "Rounds of continuous verification of every tenant's chain, tree and checkpoint.",
            ),
            verified_sequence: gauge(
                r,
                "audit_chain_verified_sequence",
                "Sum over tenants of the last sequence number continuous verification checked \
                 (tenants are not labels: there may be any number of them).",
            ),
            verification_failures: counter(
                r,
                "audit_chain_verification_failures_total",
                "Tenants whose chain or tree continuous verification found broken.",
            ),
        }
    }
}

impl Streams {
    fn new(r: &PrometheusRecorder) -> Self {
        Streams {
            delivered: counter(
                r,
                "audit_stream_events_delivered_total",
                "Events log streams delivered and their sinks acknowledged (redeliveries too).",
            ),
            failures: counter(
                r,
                "audit_stream_delivery_failures_total",
                "Batches a log stream's sink did not acknowledge (each is retried).",
            ),
            failing: gauge(
                r,
                "audit_streams_failing",
                "Log streams whose sinks have failed for longer than AUDIT_STREAM_FAILING_AFTER.",
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), EVENTS))
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let r = &recorder;
        let metrics = Metrics {
            handle: recorder.handle(),
            sql_statements: counter(
                r,
                "audit_sql_statements_total",
                "SQL statements run for requests and the write path (not the tree's upkeep or log streams' delivery).",
            ),
            ingest: Ingest::new(r),
            pool: Pool::new(r),
            live: Live::new(r),
            tree: Tree::new(r),
            streams: Streams::new(r),
            recorder,
        };
        metrics.describe_labelled();
        metrics
    }

    /// Describes the metrics whose labels come with each sample, and the build's.
    fn describe_labelled(&self) {
        let r = &self.recorder;
        r.describe_counter(
            HTTP_REQUESTS.into(),
            None,
            "HTTP requests by route, status and GraphQL operation type.".into(),
        );
        r.describe_histogram(
            HTTP_DURATION.into(),
            Some(Unit::Seconds),
            "HTTP request latency by route and GraphQL operation type, to the response head."
                .into(),
        );
        r.describe_counter(
            ERRORS.into(),
            None,
            "Errors answered, by code (extensions.code): RATE_LIMITED counts rate-limit \
             refusals, UNAVAILABLE load shedding and outages."
                .into(),
        );
        let info = Key::from_parts(
            "audit_build_info",
            vec![Label::new("version", env!("CARGO_PKG_VERSION"))],
        );
        r.describe_gauge(
            "audit_build_info".into(),
            None,
            "Always 1; the version is a label.".into(),
        );
        r.register_gauge(&info, &metadata()).set(1.0);
    }

    /// One ingest transaction: how long it took, and how much of that went to numbering and
    /// hashing the events (the hash chain's share of the write path) and to the rollup.
    pub fn committed(&self, events: usize, total: Duration, chain: Duration, rollup: Duration) {
        let ingest = &self.ingest;
        ingest.commit_duration.record(total);
        ingest.chain_duration.record(chain);
        ingest.rollup_duration.record(rollup);
        ingest.transaction_events.record(events as f64);
        ingest.events.increment(events as u64);
    }

    /// One HTTP request: its route (the matched pattern, `other` for none), status and
    /// GraphQL operation type (empty outside GraphQL).
    pub fn request(&self, route: &str, status: u16, operation: &str, elapsed: Duration) {
        let route = Label::new("route", route.to_owned());
        let operation = Label::new("operation", operation.to_owned());
        let key = Key::from_parts(
            HTTP_REQUESTS,
            vec![
                route.clone(),
                Label::new("status", status.to_string()),
                operation.clone(),
            ],
        );
        self.recorder
            .register_counter(&key, &metadata())
            .increment(1);
        let key = Key::from_parts(HTTP_DURATION, vec![route, operation]);
        self.recorder
            .register_histogram(&key, &metadata())
            .record(elapsed);
    }

    /// One error answered with `code` (HTTP, GraphQL or WebSocket).
    pub fn error(&self, code: &str) {
        let key = Key::from_parts(ERRORS, vec![Label::new("code", code.to_owned())]);
        self.recorder
            .register_counter(&key, &metadata())
            .increment(1);
    }

    /// The Prometheus text, with the gauges that are sampled rather than kept: the pool,
    /// the committer's queue and the live subscribers.
    pub fn render(
        &self,
        db: &DatabaseConnection,
        queued: usize,
        (subscribers, executions): (usize, usize),
    ) -> String {
        let (size, idle, max) = match db.get_database_backend() {
            DbBackend::Postgres => {
                let pool = db.get_postgres_connection_pool();
                (
                    pool.size(),
                    pool.num_idle(),
                    pool.options().get_max_connections(),
                )
            }
            DbBackend::Sqlite => {
                let pool = db.get_sqlite_connection_pool();
                (
                    pool.size(),
                    pool.num_idle(),
                    pool.options().get_max_connections(),
                )
            }
            _ => (0, 0, 0),
        };
        self.pool.connections.set(size);
        self.pool.idle.set(idle as f64);
        self.pool.max.set(max);
        self.ingest.queue_depth.set(queued as f64);
        self.live.subscribers.set(subscribers as f64);
        self.live.executions.set(executions as f64);
        self.handle.render()
    }

    /// The gauges of read replica `index`: its lag in bytes and seconds, and whether it
    /// answers.
    pub fn replica(&self, index: usize) -> (Gauge, Gauge, Gauge) {
        let r = &self.recorder;
        let labelled = |name: &'static str, help: &'static str| {
            r.describe_gauge(name.into(), None, help.into());
            let key = Key::from_parts(name, vec![Label::new("replica", index.to_string())]);
            r.register_gauge(&key, &metadata())
        };
        (
            labelled(
                "audit_replica_lag_bytes",
                "How far a read replica's replay is behind the primary's WAL, in bytes.",
            ),
            labelled(
                "audit_replica_lag_seconds",
                "How long ago a lagging read replica replayed its last transaction (0 when caught up).",
            ),
            labelled(
                "audit_replica_up",
                "1 when a read replica answers, 0 when it does not.",
            ),
        )
    }

    /// Drains histogram samples into their buckets; without it they pile up between scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn metadata() -> metrics::Metadata<'static> {
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None)
}

fn counter(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) -> Counter {
    recorder.describe_counter(name.into(), None, help.into());
    recorder.register_counter(&Key::from_static_name(name), &metadata())
}

fn gauge(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) -> Gauge {
    recorder.describe_gauge(name.into(), None, help.into());
    recorder.register_gauge(&Key::from_static_name(name), &metadata())
}

fn histogram(recorder: &PrometheusRecorder, name: &'static str, help: &'static str) -> Histogram {
    let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
    recorder.describe_histogram(name.into(), unit, help.into());
    recorder.register_histogram(&Key::from_static_name(name), &metadata())
}
