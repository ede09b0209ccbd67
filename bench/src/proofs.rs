//! The verifiable log: what tree upkeep and checkpoint signing cost ingest (the same load
//! with and without them, alternating, in one run), and inclusion and consistency proofs at
//! a million events in one tenant.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::events::Generator;
use crate::load::{Graphql, new_histogram, token};
use crate::report::Report;
use crate::scenarios::Bench;
use crate::server::{Server, fresh_database, psql};

const INCLUSION: &str =
    "query($id: ID!) { auditInclusionProof(id: $id) { leafIndex treeSize hashes } }";
const CONSISTENCY: &str =
    "query($from: String!) { auditConsistencyProof(fromSize: $from) { hashes } }";
const BATCH: &str =
    "mutation($inputs: [AuditEventInput!]!) { logAuditEvents(inputs: $inputs) { id } }";

impl Bench {
    pub async fn proofs(&self, events: u64, report: &mut Report) -> anyhow::Result<()> {
        let key = std::env::temp_dir().join("audit-bench-checkpoint.key");
        let _ = std::fs::remove_file(&key);
        let created = std::process::Command::new(&self.bin)
            .args(["checkpoint-key", "create", "--name", "audit-bench", "--out"])
            .arg(&key)
            .output()?;
        anyhow::ensure!(created.status.success(), "checkpoint-key create failed");
        let key = key.to_str().context("key path")?.to_owned();
        let with_tree = [
            ("AUDIT_CHECKPOINT_KEY_FILE", key.as_str()),
            ("AUDIT_CHECKPOINT_INTERVAL_SECONDS", "1"),
        ];
        let without_tree = [("AUDIT_TREE_SEAL_INTERVAL_MS", "0")];

        self.ingest_with_and_without_tree(&with_tree, &without_tree, report)
            .await?;
        self.proofs_at_scale(events, &with_tree, report).await
    }

    /// Ingest with and without the tree, alternating three times, each on its own
    /// database.
    async fn ingest_with_and_without_tree(
        &self,
        with_tree: &[(&str, &str)],
        without_tree: &[(&str, &str)],
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let on_db = fresh_database(&self.admin_url, "audit_bench_tree_on")?;
        let off_db = fresh_database(&self.admin_url, "audit_bench_tree_off")?;
        let on = Server::start_with(&self.bin, &on_db, 18191, with_tree).await?;
        let off = Server::start_with(&self.bin, &off_db, 18192, without_tree).await?;
        let (mut batch, mut single) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        for _ in 0..3 {
            for (i, server) in [&off, &on].into_iter().enumerate() {
                batch[i].push(self.batch_load(server, 4).await.per_second());
                single[i].push(self.single_load(server, 64).await.per_second());
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        for (what, runs) in [
            ("batch ingest, 4 clients", &batch),
            ("single events, 64 clients", &single),
        ] {
            let (off, on) = (mean(&runs[0]), mean(&runs[1]));
            report.add(
                &format!("{what}: with tree upkeep and a checkpoint a second, beside without"),
                format!("{on:.0} events/s (runs: {:.0?})", runs[1]),
                format!("without: {off:.0} events/s (runs: {:.0?})", runs[0]),
                Some(on / off),
                ">= 0.95",
                Some(on / off >= 0.95),
            );
        }
        drop((on, off));

        Ok(())
    }

    /// A million events in one tenant, then proofs against its latest checkpoint.
    async fn proofs_at_scale(
        &self,
        events: u64,
        with_tree: &[(&str, &str)],
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_proofs")?;
        let server = Server::start_with(&self.bin, &db, 18193, with_tree).await?;
        let gql = Graphql::new(&server.url, token("tenant-0"));
        let generator = Generator::new();
        let mut rng = SmallRng::seed_from_u64(11);
        let t0 = Instant::now();
        for _ in 0..events.div_ceil(1000) {
            let inputs: Vec<Value> = (0..1000).map(|_| generator.event(&mut rng, 30.0)).collect();
            gql.call(BATCH, json!({ "inputs": inputs })).await?;
        }
        let seeded = t0.elapsed();
        let size = loop {
            let body = gql
                .call("{ auditCheckpoint { treeSize } }", json!({}))
                .await?;
            let size: u64 = body["auditCheckpoint"]["treeSize"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if size >= events || t0.elapsed() > seeded + Duration::from_secs(300) {
                break size;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        anyhow::ensure!(size > 0, "no checkpoint was signed");
        let caught_up = t0.elapsed() - seeded;
        psql(&db, "ANALYZE")?;
        let ids = psql(
            &db,
            "SELECT id FROM control_plane.audit_logs WHERE tenant_id = 'tenant-0' ORDER BY random() LIMIT 1000",
        )?;
        let mut inclusion = new_histogram();
        for id in ids.lines() {
            let started = Instant::now();
            gql.call(INCLUSION, json!({ "id": id })).await?;
            let _ = inclusion.record(started.elapsed().as_micros() as u64);
        }
        let mut consistency = new_histogram();
        for _ in 0..1000 {
            let from = rng.random_range(1..=size);
            let started = Instant::now();
            let body = gql
                .call(CONSISTENCY, json!({ "from": from.to_string() }))
                .await?;
            let _ = consistency.record(started.elapsed().as_micros() as u64);
            anyhow::ensure!(body["errors"].is_null(), "consistency proof failed: {body}");
        }
        let ms =
            |h: &hdrhistogram::Histogram<u64>, p: f64| h.value_at_percentile(p) as f64 / 1000.0;
        let tiles = psql(
            &db,
            "SELECT pg_size_pretty(pg_total_relation_size('control_plane.audit_tree_tiles'))",
        )?;
        report.add(
            &format!("proofs at {size} events in one tenant, 1 client (GraphQL round trip)"),
            format!(
                "inclusion p50 {:.2} / p99 {:.2} ms; consistency p50 {:.2} / p99 {:.2} ms; tiles {tiles}; \
                 the tree caught up {:.1} s after seeding ({:.0} s)",
                ms(&inclusion, 50.0),
                ms(&inclusion, 99.0),
                ms(&consistency, 50.0),
                ms(&consistency, 99.0),
                caught_up.as_secs_f64(),
                seeded.as_secs_f64(),
            ),
            String::new(),
            None,
            "p99 < 5 ms",
            Some(ms(&inclusion, 99.0) < 5.0 && ms(&consistency, 99.0) < 5.0),
        );
        Ok(())
    }
}
