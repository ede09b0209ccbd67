//! The Node kit (`clients/node`) measured: its own script (`bench/kit.mjs`) run beside
//! audit-bench's batch load on the same server, in the same run.

use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::load::token;
use crate::report::{Report, rate};
use crate::scenarios::Bench;
use crate::server::{Server, fresh_database};

impl Bench {
    pub async fn node(&self, report: &mut Report) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_node")?;
        let server = Server::start(&self.bin, &db, 18186).await?;
        let baseline = self.batch_load(&server, 4).await;

        let kit = concat!(env!("CARGO_MANIFEST_DIR"), "/../clients/node");
        let output = Command::new("node")
            .arg("bench/kit.mjs")
            .current_dir(kit)
            .env("AUDIT_URL", format!("{}/graphql", server.url))
            .env("AUDIT_API_KEY", token("tenant-1"))
            .env("SECONDS", self.duration.as_secs().to_string())
            .output()
            .context("node bench/kit.mjs (build the kit first: npm ci && npm run build)")?;
        anyhow::ensure!(
            output.status.success(),
            "bench/kit.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let kit: Value = serde_json::from_slice(&output.stdout)?;
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let percentiles = |v: &Value| format!("p50 {} / p99 {} µs", v["p50"], v["p99"]);

        let delivery = &kit["delivery"];
        let per_second = num(&delivery["perSecond"]);
        let ratio = per_second / baseline.per_second();
        report.add(
            "Node kit: one client's batched delivery (enqueue until flushed)",
            format!(
                "{per_second:.0} events/s ({} delivered, {} retries, {} dead-lettered)",
                delivery["delivered"], delivery["retries"], delivery["deadLettered"]
            ),
            format!("audit-bench batch load: {}", rate(&baseline, "events")),
            Some(ratio),
            ">= 0.60",
            Some(ratio >= 0.6),
        );
        let floor = format!(
            "JSON.stringify(event) alone: {}",
            percentiles(&kit["enqueue"]["floor"])
        );
        for (name, what, target) in [
            ("memory", "in memory", "p99 < 20 µs"),
            ("spool", "with the spool (written)", "(the spool's cost)"),
            (
                "fsync",
                "with the spool (fsync per event)",
                "(the spool's cost)",
            ),
            (
                "idle",
                "in memory, audit-service unreachable (machine otherwise idle)",
                "p99 < 20 µs",
            ),
        ] {
            let latency = &kit["enqueue"][name];
            report.add(
                &format!("Node kit: enqueue() on the caller's event loop, {what}, 5000 events/s"),
                percentiles(latency),
                floor.clone(),
                None,
                target,
                target.starts_with('p').then(|| num(&latency["p99"]) < 20.0),
            );
        }
        let middleware = &kit["middleware"];
        let bare = &middleware["bare"];
        for (name, what) in [
            ("audited", "recording to audit-service"),
            ("idle", "audit-service unreachable (its own cost)"),
        ] {
            let with = &middleware[name];
            let added = |p: &str| num(&with[p]) - num(&bare[p]);
            report.add(
                &format!("Node kit: auditMiddleware per request, in process, {what}"),
                format!(
                    "{}; added p50 {:.1} / p99 {:.1} µs",
                    percentiles(with),
                    added("p50"),
                    added("p99")
                ),
                format!("without it: {}", percentiles(bare)),
                None,
                "< 50 µs p99 added",
                Some(added("p99") < 50.0),
            );
        }
        Ok(())
    }
}
