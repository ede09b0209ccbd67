//! audit-bench: measures audit-service on this machine, side by side with pgbench doing the
//! same work directly against PostgreSQL in the same run, and prints a table of numbers and
//! ratios. `bench/run.sh` builds everything and runs it all.

mod broadcast;
mod console;
mod events;
mod ingest;
mod kit;
mod live;
mod load;
mod node;
mod pgbench;
mod privacy;
mod proofs;
mod query;
mod replicas;
mod report;
mod scenarios;
mod server;
mod sqlite;
mod streams;

use clap::{Parser, Subcommand};

/// Load generator for audit-service.
#[derive(Parser)]
struct Cli {
    /// A PostgreSQL URL with the right to create databases (the bench makes its own).
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        global = true
    )]
    admin_url: String,
    /// The audit-service binary to measure.
    #[arg(long, default_value = "target/release/audit-service", global = true)]
    server_bin: String,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 15, global = true)]
    seconds: u64,
    /// Write the table to this file as well (`docs/benchmarks.md`).
    #[arg(long, global = true)]
    write: Option<String>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Clone)]
enum What {
    /// Everything below, in one run.
    All {
        /// Events to seed for the query measurements.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Batch and single-event ingest against pgbench's INSERTs, and SQLite batch ingest.
    Ingest {
        /// Only the SQLite measurement.
        #[arg(long)]
        sqlite: bool,
    },
    /// Seeds events, then filtered pages against pgbench, page depth, memory.
    Query {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// auditLogStats from the rollup beside raw counting, and GET /export of every event.
    Console {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// A database seeded by an earlier run (its URL), instead of seeding a new one.
        #[arg(long)]
        seeded: Option<String>,
    },
    /// The verifiable log: ingest with and without tree upkeep, proofs at a million events.
    Proofs {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// 1,000 WebSocket subscribers, events at 500/s: delivery latency.
    Subscribers {
        /// Instead: 10,000 subscribers over 100 tenants, on one instance and on two.
        #[arg(long)]
        scale: bool,
    },
    /// 100 federation entities with their trails in one request.
    Federation,
    /// The client kit: one client's batched delivery beside the batch load, enqueue()
    /// latency with and without the spool, AuditLayer overhead.
    Client,
    /// The Node kit (clients/node, built): its batched delivery beside the batch load,
    /// enqueue() latency, the Express middleware's overhead.
    Node,
    /// Filtered pages with reads on a streaming replica beside reads on the primary, under
    /// a write load (a primary and a replica made for the run with initdb).
    Replicas {
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
    /// Ingest with personal values sealed beside the same events stored in clear by
    /// `--clear-bin` (a build from before privacy, e.g. commit 779744c), and beside events
    /// without personal values; erasing a subject with 10,000 events over 12 months.
    Privacy {
        #[arg(long)]
        clear_bin: Option<String>,
    },
    /// Log streams: ingest with streams delivering beside none, draining a backlog to a
    /// webhook and to NATS JetStream (on 127.0.0.1:4222), end-to-end lag at 500 events/s.
    Streams,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut report = report::Report::new(&cli.admin_url);
    let bench = scenarios::Bench {
        admin_url: cli.admin_url.clone(),
        bin: cli.server_bin.clone(),
        duration: std::time::Duration::from_secs(cli.seconds),
    };
    match cli.what.clone() {
        What::All { events } => {
            bench.ingest(&mut report).await?;
            let seeded = bench.query(events, &mut report).await?;
            bench.federation(Some(&seeded), &mut report).await?;
            bench.console(Some(&seeded), events, &mut report).await?;
            bench.subscribers(false, &mut report).await?;
            bench.subscribers(true, &mut report).await?;
            bench.client(&mut report).await?;
            bench.node(&mut report).await?;
            bench.replicas(200_000, &mut report).await?;
            bench.privacy(None, &mut report).await?;
            bench.streams(&mut report).await?;
            bench.proofs(events, &mut report).await?;
        }
        What::Ingest { sqlite: true } => bench.ingest_sqlite(&mut report).await?,
        What::Ingest { sqlite: false } => bench.ingest(&mut report).await?,
        What::Query { events } => drop(bench.query(events, &mut report).await?),
        What::Console { events, seeded } => {
            bench
                .console(seeded.as_deref(), events, &mut report)
                .await?
        }
        What::Proofs { events } => bench.proofs(events, &mut report).await?,
        What::Subscribers { scale } => bench.subscribers(scale, &mut report).await?,
        What::Federation => bench.federation(None, &mut report).await?,
        What::Client => bench.client(&mut report).await?,
        What::Node => bench.node(&mut report).await?,
        What::Replicas { events } => bench.replicas(events, &mut report).await?,
        What::Privacy { clear_bin } => bench.privacy(clear_bin.as_deref(), &mut report).await?,
        What::Streams => bench.streams(&mut report).await?,
    }
    let table = report.markdown();
    println!("{table}");
    if let Some(path) = cli.write {
        std::fs::write(path, table)?;
    }
    Ok(())
}
