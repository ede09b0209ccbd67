//! Privacy (docs/privacy.md): ingest of events whose personal values are sealed, beside the
//! same events stored in clear by a build from before privacy and beside events without
//! personal values, in one run; and erasing a data subject with 10,000 events spread over
//! 12 months.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::events;
use crate::load::{self, Graphql, median, token};
use crate::report::{Report, rate};
use crate::scenarios::{BATCH, Bench, SINGLE, bodies};
use crate::server::{Server, fresh_database};

/// Events per subject erased, and the subjects erased (the median is reported).
const ERASED_EVENTS: usize = 10_000;
const ERASURES: usize = 3;
/// Alternated runs of each load against the build before privacy.
const ROUNDS: usize = 3;

/// An event with personal values (actor name, IP address, user agent), or without any.
fn shaped(mut event: Value, personal: bool) -> Value {
    if personal {
        let id = event["actor"]["id"].as_str().unwrap_or_default().to_owned();
        event["actor"]["name"] = json!(format!("Person {id}"));
        event["context"]["userAgent"] = json!("Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0");
    } else if let Some(context) = event["context"].as_object_mut() {
        context.remove("ipAddress");
    }
    event
}

impl Bench {
    pub async fn privacy(
        &self,
        clear_bin: Option<&str>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let db = fresh_database(&self.admin_url, "audit_bench_privacy")?;
        let server = Server::start(&self.bin, &db, 18195).await?;
        let gql = Graphql::new(&server.url, token("tenant-0"));
        // The same events stored in clear, by a build from before privacy, on its own database.
        let clear = match clear_bin {
            Some(bin) => {
                let db = fresh_database(&self.admin_url, "audit_bench_privacy_clear")?;
                Some(Server::start(bin, &db, 18196).await?)
            }
            None => None,
        };
        for (what, query, size, clients) in [
            (
                "batch ingest, 1,000-event batches, 4 clients",
                BATCH,
                1000,
                4,
            ),
            ("single-event ingest, 16 clients", SINGLE, 1, 16),
        ] {
            if let Some(clear) = &clear {
                // Alternated three times, medians compared: the machine is noisy.
                let clear = Graphql::new(&clear.url, token("tenant-0"));
                let (mut sealed, mut stored) = (Vec::new(), Vec::new());
                for _ in 0..ROUNDS {
                    sealed.push(self.shaped_load(&gql, query, size, clients, true).await);
                    stored.push(self.shaped_load(&clear, query, size, clients, true).await);
                }
                let (sealed, stored) = (median(sealed), median(stored));
                let ratio = sealed.per_second() / stored.per_second();
                report.add(
                    &format!("{what}: the same events sealed / stored in clear by the build before privacy (medians of {ROUNDS} alternated runs)"),
                    rate(&sealed, "events"),
                    rate(&stored, "events"),
                    Some(ratio),
                    ">= 0.85",
                    Some(ratio >= 0.85),
                );
            }
            let sealed = self.shaped_load(&gql, query, size, clients, true).await;
            let plain = self.shaped_load(&gql, query, size, clients, false).await;
            let ratio = sealed.per_second() / plain.per_second();
            report.add(
                &format!("{what}: events with personal values / events with none (same build)"),
                rate(&sealed, "events"),
                rate(&plain, "events"),
                Some(ratio),
                "",
                None,
            );
        }
        let erased = self.erasures(&gql).await?;
        let median = erased[erased.len() / 2];
        report.add(
            &format!("eraseAuditSubject of a subject with {ERASED_EVENTS} events over 12 months (median of {ERASURES})"),
            format!("{:.0} ms", median.as_secs_f64() * 1000.0),
            format!("{:?}", erased.iter().map(|d| d.as_millis()).collect::<Vec<_>>()),
            None,
            "< 2 s",
            Some(median < Duration::from_secs(2)),
        );
        Ok(())
    }

    /// `clients` workers sending `size`-event requests of `query` for the run's duration:
    /// the benchmark's events with personal values (actor name, IP address, user agent), or
    /// without any.
    async fn shaped_load(
        &self,
        gql: &Graphql,
        query: &str,
        size: usize,
        clients: usize,
        personal: bool,
    ) -> load::Stats {
        let groups = events::fixed(8, size).into_iter().map(|group| {
            let group: Vec<_> = group.into_iter().map(|e| shaped(e, personal)).collect();
            match size {
                1 => json!({ "input": group[0] }),
                _ => json!({ "inputs": group }),
            }
        });
        let bodies = bodies(query, groups);
        let gql = gql.clone();
        load::run(clients, self.duration, move |w, n| {
            let (gql, bodies) = (gql.clone(), bodies.clone());
            async move {
                gql.send(bodies[(w * 7 + n as usize) % bodies.len()].clone())
                    .await?;
                Ok(size as u64)
            }
        })
        .await
    }

    /// Seeds `ERASURES` subjects with `ERASED_EVENTS` events each, among others' events,
    /// spread over the last 365 days; then erases them one by one, timing each.
    async fn erasures(&self, gql: &Graphql) -> anyhow::Result<Vec<Duration>> {
        let now = chrono::Utc::now();
        for subject in 0..ERASURES {
            for batch in 0..ERASED_EVENTS / 1000 {
                let inputs: Vec<Value> = (0..1000)
                    .map(|i| {
                        let n = batch * 1000 + i;
                        let at = now - chrono::Duration::minutes((n * 52) as i64 + 1);
                        json!({ "actor": { "type": "USER", "id": format!("other-{}", n % 500), "name": "Someone" },
                                "action": "user.invited", "subjectIds": [format!("erase-{subject}")],
                                "occurredAt": at.to_rfc3339(),
                                "context": { "ipAddress": "10.0.0.1" } })
                    })
                    .collect();
                gql.call(BATCH, json!({ "inputs": inputs })).await?;
            }
        }
        let mut times = Vec::new();
        for subject in 0..ERASURES {
            let started = Instant::now();
            let erased = gql
                .call(
                    "mutation($s: String!) { eraseAuditSubject(subjectId: $s, reason: \"bench\") { erasedEvents } }",
                    json!({ "s": format!("erase-{subject}") }),
                )
                .await?;
            times.push(started.elapsed());
            anyhow::ensure!(
                erased["eraseAuditSubject"]["erasedEvents"] == ERASED_EVENTS,
                "erased {erased}"
            );
        }
        times.sort();
        Ok(times)
    }
}
