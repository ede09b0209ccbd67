//! Realistic events: a few tenants, thousands of actors and targets, a few dozen actions,
//! skewed the way real traffic is (Zipf), mostly recent.

use rand::Rng;
use rand::rngs::SmallRng;
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
        let action = self.actions.sample(rng) as u64 - 1;
        let target = self.targets.sample(rng) as u64 - 1;
        let age_secs = (rng.random::<f64>().powi(3) * days * 86_400.0) as i64;
        let occurred = chrono::Utc::now() - chrono::Duration::seconds(age_secs + 1);
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
