//! Micro-benchmark of the hash chain's per-event work: canonical encoding plus SHA-256
//! (`cargo bench --bench chain`; target: under 2 µs per event).

use audit_service::service::tlog::canonical::{GENESIS, canonical_bytes, chain_hash};
use criterion::{Criterion, criterion_group, criterion_main};
use entity::audit_log::{ActorType, Model, Outcome};
use serde_json::json;

fn event() -> Model {
    Model {
        id: uuid::Uuid::now_v7(),
        tenant_id: "tenant-0".into(),
        seq: 123_456,
        occurred_at: chrono::Utc::now(),
        recorded_at: chrono::Utc::now(),
        actor_type: ActorType::User,
        actor_id: "actor-42".into(),
        actor_name: Some("Ann Example".into()),
        action: "project.member.added".into(),
        target_type: Some("project".into()),
        target_id: Some("p-1234".into()),
        target_name: Some("Apollo".into()),
        outcome: Outcome::Success,
        reason: None,
        metadata: json!({ "env": "prod", "region": "eu-west-1", "n": 123_456, "roles": ["admin", "viewer"] }).into(),
        ip_address: Some("203.0.113.7".into()),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        request_id: Some("req-8f14e45f".into()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        chain_version: 2,
        idempotency_key: Some("create-p-1234".into()),
        prev_hash: GENESIS.to_vec(),
        hash: Vec::new(),
        personal: None,
    }
}

fn chain(c: &mut Criterion) {
    let e = event();
    c.bench_function("canonical_bytes", |b| {
        b.iter(|| canonical_bytes(std::hint::black_box(&e)))
    });
    c.bench_function("canonical_bytes + sha256", |b| {
        b.iter(|| chain_hash(std::hint::black_box(&GENESIS), std::hint::black_box(&e)))
    });
}

criterion_group!(benches, chain);
criterion_main!(benches);
