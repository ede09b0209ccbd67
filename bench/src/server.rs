//! The server under test, as its own process, and the databases it runs on.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The HS256 secret the bench's servers accept tokens for.
pub const SECRET: &str = "audit-bench-secret-audit-bench-secret";

/// A running `audit-service` process, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    /// Starts `bin` on `database_url` and waits until it answers `/readyz`.
    pub async fn start(bin: &str, database_url: &str, port: u16) -> anyhow::Result<Server> {
        Self::start_with(bin, database_url, port, &[]).await
    }

    /// Starts `bin` as [`Server::start`] does, with more environment variables.
    pub async fn start_with(
        bin: &str,
        database_url: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let key_file = privacy_key_file(bin)?;
        let child = Command::new(bin)
            .env("AUDIT_PRIVACY_KEY_FILE", &key_file)
            .envs(env.iter().copied())
            .env("DATABASE_URL", database_url)
            .env("AUDIT_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUDIT_JWT_HS256_SECRET", SECRET)
            .env("AUDIT_RATE_LIMIT", "0")
            .env("AUDIT_DB_POOL_SIZE", "16")
            .env("AUDIT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = client.get(format!("{}/readyz", server.url)).send().await
                && r.status().is_success()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{bin} did not become ready")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// CPU time the process has used so far (user and system), from `/proc`.
    pub fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command's closing parenthesis; utime and stime are the 12th and
        // 13th of them, in clock ticks (100 a second on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Duration::from_millis((ticks(11) + ticks(12)) * 10)
    }

    /// Waits (at most two minutes) until the server uses less than 5% of a core over a
    /// second: on a seeded database its first round of continuous verification re-hashes
    /// every event, and a measurement taken meanwhile measures that too.
    pub async fn settle(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            let before = self.cpu();
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.cpu() - before < Duration::from_millis(50) {
                return;
            }
        }
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.url))
            .await?
            .text()
            .await?)
    }

    /// SQL statements the server has run, from `/metrics`.
    pub async fn statements(&self) -> anyhow::Result<u64> {
        Ok(counter(&self.metrics().await?, "audit_sql_statements_total") as u64)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs SQL on the PostgreSQL server at `admin_url` with psql.
pub fn psql(admin_url: &str, sql: &str) -> anyhow::Result<String> {
    let output = Command::new("psql")
        .args([admin_url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("running psql")?;
    if !output.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A fresh, empty PostgreSQL database named `name` (dropped first if it exists); returns
/// its URL.
pub fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    psql(
        admin_url,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )?;
    psql(admin_url, &format!("CREATE DATABASE {name}"))?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("database URL without a path")?;
    Ok(format!("{base}/{name}"))
}

/// The privacy key file benchmarked servers use, made by `bin` on first use.
fn privacy_key_file(bin: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join("audit-bench-privacy-key");
    if !path.exists() {
        let status = Command::new(bin)
            .args(["privacy-key", "create", "--out"])
            .arg(&path)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("privacy-key create failed");
        }
    }
    Ok(path)
}

/// Applies audit-service's migrations to a database.
pub fn migrate(bin: &str, database_url: &str) -> anyhow::Result<()> {
    let status = Command::new(bin)
        .arg("migrate")
        .env("DATABASE_URL", database_url)
        .env("AUDIT_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("migrate failed");
    }
    Ok(())
}

/// Resident memory of a process, in MiB (0 when it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A counter's value in `/metrics` text (0 when absent).
pub fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The highest resident memory of a process, sampled every 100 ms until dropped.
pub struct PeakRss {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> Self {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    let kib = (rss_mib(pid) * 1024.0) as u64;
                    peak.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        PeakRss { peak, sampler }
    }

    /// The peak so far, in MiB.
    pub fn peak(&self) -> f64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}
