//! Reads on a streaming replica beside reads on the primary: the filtered page from 8
//! clients while one client writes batches, against a server reading from the primary and
//! one reading from a replica, on a primary and a replica made for the run (`initdb`,
//! `pg_basebackup -R`) on this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::json;

use crate::events::Generator;
use crate::load::{self, Graphql, token};
use crate::report::{Report, rate};
use crate::scenarios::{BATCH, Bench, PAGE};
use crate::server::{Server, psql};

impl Bench {
    pub async fn replicas(&self, events: u64, report: &mut Report) -> anyhow::Result<()> {
        let primary = Cluster::init(18190)?;
        let replica = primary.replica(18191)?;
        let on_primary = Server::start(&self.bin, &primary.url(), 18192).await?;
        let replica_url = replica.url();
        let env = [("AUDIT_READ_DATABASE_URL", replica_url.as_str())];
        let on_replica = Server::start_with(&self.bin, &primary.url(), 18193, &env).await?;
        let seeded = self.seed(&on_primary, events).await?;
        psql(&primary.url(), "ANALYZE control_plane.audit_logs")?;
        caught_up(&on_replica).await?;
        eprintln!("seeded {seeded} events; the replica has them");

        let mut results = Vec::new();
        for (server, reads) in [(&on_primary, "the primary"), (&on_replica, "a replica")] {
            let (pages, written) = self.pages_while_writing(server).await;
            report.add(
                &format!(
                    "filtered page with reads on {reads}, 8 clients, one client writing batches ({seeded} events)"
                ),
                rate(&pages, "requests"),
                format!("{written:.0} events/s written meanwhile"),
                None,
                "",
                None,
            );
            results.push(pages.per_second());
        }
        let ratio = results[1] / results[0];
        report.add(
            "filtered pages: reads on a replica / reads on the primary (same machine, 2 cores)",
            format!("{:.0} / {:.0} requests/s", results[1], results[0]),
            String::new(),
            Some(ratio),
            "(measured)",
            None,
        );
        Ok(())
    }

    /// The filtered page from 8 clients for the run's duration, while one client writes
    /// 100-event batches through the same server; and the events written per second.
    async fn pages_while_writing(&self, server: &Server) -> (load::Stats, f64) {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let writer = {
            let (stop, written) = (stop.clone(), written.clone());
            let gql = Graphql::new(&server.url, token("tenant-1"));
            tokio::spawn(async move {
                let generator = Generator::new();
                let mut rng = SmallRng::seed_from_u64(5);
                while !stop.load(Ordering::Relaxed) {
                    let inputs: Vec<_> = (0..100).map(|_| generator.event(&mut rng, 1.0)).collect();
                    if gql.call(BATCH, json!({ "inputs": inputs })).await.is_ok() {
                        written.fetch_add(100, Ordering::Relaxed);
                    }
                }
            })
        };
        let generator = Arc::new(Generator::new());
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let since = (chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339();
        let started = Instant::now();
        let pages = load::run(8, self.duration, move |_w, n| {
            let (gql, generator, since) = (gql.clone(), generator.clone(), since.clone());
            async move {
                let actor = generator.actor(&mut SmallRng::seed_from_u64(n.wrapping_mul(7919)));
                gql.call(PAGE, json!({ "actors": [actor], "since": since }))
                    .await?;
                Ok(1)
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        let rate = written.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        (pages, rate)
    }
}

/// Waits until the server's replica has replayed everything.
async fn caught_up(server: &Server) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(120) {
        let metrics = server.metrics().await?;
        let lag = metrics.lines().find_map(|line| {
            line.strip_prefix("audit_replica_lag_bytes{replica=\"0\"}")?
                .trim()
                .parse::<f64>()
                .ok()
        });
        let up = metrics.contains("audit_replica_up{replica=\"0\"} 1");
        if up && lag == Some(0.0) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the replica never caught up")
}

/// A PostgreSQL cluster of the run's own, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn init(port: u16) -> anyhow::Result<Cluster> {
        let cluster = Cluster::owned(port)?;
        cluster.run(
            "initdb",
            &["-U", "postgres", "--auth=trust", "--no-sync", "-D"],
            &cluster.data(),
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    /// A streaming replica of this cluster, started.
    fn replica(&self, port: u16) -> anyhow::Result<Cluster> {
        let replica = Cluster::owned(port)?;
        let from = self.port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "stream",
            "-R",
            "-p",
            &from,
            "-D",
        ];
        replica.run("pg_basebackup", &args, &replica.data())?;
        replica.start()?;
        Ok(replica)
    }

    /// An empty directory that PostgreSQL (which refuses to run as root) may use.
    fn owned(port: u16) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            anyhow::ensure!(status.success(), "chown failed");
        }
        Ok(Cluster { dir, port })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c shared_buffers=256MB",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let args = [
            "-o",
            &options,
            "-w",
            "-l",
            &log.display().to_string(),
            "start",
            "-D",
        ];
        self.run("pg_ctl", &args, &self.data())
    }

    fn run(&self, program: &str, args: &[&str], last: &Path) -> anyhow::Result<()> {
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        };
        let output = command
            .args(args)
            .arg(last)
            .output()
            .with_context(|| format!("running {program}"))?;
        anyhow::ensure!(output.status.success(), "{program}: {output:?}");
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-m", "immediate", "-w", "stop", "-D"],
            &self.data(),
        );
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
