//! Realistic events: a few tenants, thousands of actors and targets, a few dozen actions,
//! skewed the way real traffic is (Zipf), mostly recent.

use std::sync::LazyLock;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::{Value, json};

/// Tenants, and the share of traffic each gets.
pub const TENANTS: [(&str, f64); 5] = [
    ("tenant-0", 0.5),
    ("tenant-1", 0.2),
    ("tenant-2", 0.15),
    ("tenant-3", 0.1),
    ("tenant-4", 0.05),
];
pub const ACTORS: u64 = 5000;
const TARGETS: u64 = 20_000;
const ACTIONS: u64 = 40;
const VERBS: [&str; 5] = ["created", "updated", "deleted", "assigned", "viewed"];
const TARGET_TYPES: [&str; 5] = ["project", "role", "api_key", "user", "service"];

pub struct Generator {
    actors: Zipf<f64>,
    targets: Zipf<f64>,
    actions: Zipf<f64>,
}

impl Generator {
    #[expect(clippy::expect_used, reason = "constant, valid parameters")]
    pub fn new() -> Self {
        Generator {
            actors: Zipf::new(ACTORS as f64, 1.1).expect("zipf"),
            targets: Zipf::new(TARGETS as f64, 1.05).expect("zipf"),
            actions: Zipf::new(ACTIONS as f64, 1.2).expect("zipf"),
        }
    }

    /// A tenant, by traffic share.
    pub fn tenant(&self, rng: &mut SmallRng) -> &'static str {
        let mut x: f64 = rng.random();
        for (tenant, share) in TENANTS {
            if x < share {
                return tenant;
            }
            x -= share;
        }
        TENANTS[0].0
    }

    /// An actor id, as the page queries pick them too.
    pub fn actor(&self, rng: &mut SmallRng) -> String {
        format!("actor-{}", self.actors.sample(rng) as u64 - 1)
    }

    /// One event input; `days` spreads `occurredAt` over the last days, most recent first.
    pub fn event(&self, rng: &mut SmallRng, days: f64) -> Value {
        self.event_before(rng, days, Utc::now())
    }

    /// `event`, with `occurredAt` in the days before `now`.
    fn event_before(&self, rng: &mut SmallRng, days: f64, now: DateTime<Utc>) -> Value {
        let action = self.actions.sample(rng) as u64 - 1;
        let target = self.targets.sample(rng) as u64 - 1;
        let age_secs = (rng.random::<f64>().powi(3) * days * 86_400.0) as i64;
        let occurred = now - chrono::Duration::seconds(age_secs + 1);
        json!({
            "actor": { "type": if action.is_multiple_of(7) { "SERVICE" } else { "USER" }, "id": self.actor(rng) },
            "action": format!("resource{}.{}", action % 8, VERBS[(action / 8) as usize % VERBS.len()]),
            "target": { "type": TARGET_TYPES[(target % 5) as usize], "id": format!("t-{target}") },
            "outcome": if rng.random::<f64>() < 0.95 { "SUCCESS" } else { "FAILURE" },
            "occurredAt": occurred.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "metadata": { "env": if rng.random::<f64>() < 0.8 { "prod" } else { "staging" }, "n": rng.random_range(0..1_000_000) },
            "context": { "ipAddress": format!("10.{}.{}.{}", rng.random_range(0..256), rng.random_range(0..256), rng.random_range(1..255)), "requestId": format!("req-{}", rng.random::<u32>()) },
        })
    }
}

/// The events audit-bench's ingest loads send, `groups` groups of `size` events made from
/// one fixed seed and the time the bench started, so that the raw baselines insert the very
/// rows the server is sent.
pub fn fixed(groups: usize, size: usize) -> Vec<Vec<Value>> {
    static STARTED: LazyLock<DateTime<Utc>> = LazyLock::new(Utc::now);
    let generator = Generator::new();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut event = || generator.event_before(&mut rng, 1.0, *STARTED);
    (0..groups)
        .map(|_| (0..size).map(|_| event()).collect())
        .collect()
}

/// The columns the server stores for one of `Generator::event`'s inputs (its others stay
/// empty, or are the server's own: id, tenant, sequence, timestamps of recording, hashes).
pub struct Columns {
    pub actor_type: String,
    pub actor_id: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub outcome: String,
    pub occurred_at: DateTime<Utc>,
    pub metadata: String,
    pub ip_address: String,
    pub request_id: String,
}

impl Columns {
    pub fn of(event: &Value) -> anyhow::Result<Self> {
        let text = |pointer: &str| {
            event
                .pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("no {pointer} in a generated event"))
        };
        Ok(Columns {
            actor_type: text("/actor/type")?.to_lowercase(),
            actor_id: text("/actor/id")?,
            action: text("/action")?,
            target_type: text("/target/type")?,
            target_id: text("/target/id")?,
            outcome: text("/outcome")?.to_lowercase(),
            occurred_at: DateTime::parse_from_rfc3339(&text("/occurredAt")?)?.to_utc(),
            metadata: serde_json::to_string(&event["metadata"])?,
            ip_address: text("/context/ipAddress")?,
            request_id: text("/context/requestId")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_events_repeat_and_map_to_the_stored_columns() -> anyhow::Result<()> {
        let events = fixed(2, 3);
        assert_eq!(
            events,
            fixed(2, 3),
            "the raw baselines must get the same events"
        );
        assert_ne!(events[0], events[1]);
        let event = &events[0][0];
        let columns = Columns::of(event)?;
        assert!(["user", "service"].contains(&columns.actor_type.as_str()));
        assert!(["success", "failure"].contains(&columns.outcome.as_str()));
        assert_eq!(event["actor"]["id"], columns.actor_id.as_str());
        assert_eq!(event["context"]["requestId"], columns.request_id.as_str());
        assert_eq!(
            serde_json::from_str::<Value>(&columns.metadata)?,
            event["metadata"]
        );
        let said = DateTime::parse_from_rfc3339(event["occurredAt"].as_str().unwrap_or(""))?;
        assert_eq!(columns.occurred_at, said);
        Ok(())
    }
}
