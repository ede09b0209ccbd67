//! What a request may do beyond its scopes: per-credential rate limits, and the record of
//! refused attempts (`audit.access.denied`), itself rate-limited so it cannot be flooded.

use std::num::NonZeroU32;

use entity::audit_log::{ActorType, Outcome};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};

use crate::config::AuthConfig;
use crate::credentials::{Credential, Principal};
use crate::error::Error;
use crate::service::ingest::Ingestor;
use crate::service::ingest::event::NewEvent;

/// The tenant that records refusals of requests without a readable credential.
pub const SYSTEM_TENANT: &str = "system";

/// Where a request came from, for the record of a refusal.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The trace the request belongs to (W3C `traceparent`), which events it logs link to.
    pub trace_id: Option<String>,
}

/// Rate limits and the refusal record of one server instance.
pub struct Refusals {
    requests: Option<DefaultKeyedRateLimiter<String>>,
    denials: DefaultKeyedRateLimiter<String>,
    ingestor: Ingestor,
}

impl Refusals {
    pub fn new(config: &AuthConfig, ingestor: Ingestor) -> Self {
        let requests = NonZeroU32::new(config.rate_limit).map(|rate| {
            let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        // Ten refusals a minute per tenant and caller are recorded; the rest only logged.
        let ten = NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN);
        let denials = RateLimiter::keyed(Quota::per_minute(ten));
        Refusals {
            requests,
            denials,
            ingestor,
        }
    }

    /// Counts a request against its credential's bucket.
    pub fn admit(&self, principal: &Principal) -> Result<(), Error> {
        let Some(limiter) = &self.requests else {
            return Ok(());
        };
        limiter
            .check_key(&principal.rate_key())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Error::RateLimited {
                    retry_after_secs: wait.as_secs().max(1),
                }
            })
    }

    /// Records a refused attempt as an `audit.access.denied` event, in the credential's
    /// tenant (or `system`), unless that tenant and caller were recorded too often lately.
    /// Never waits for the write.
    pub fn record_denial(
        &self,
        tenant_id: Option<&str>,
        subject: Option<&str>,
        credential: Option<&Credential>,
        reason: &str,
        origin: &Origin,
    ) {
        let tenant_id = tenant_id.unwrap_or(SYSTEM_TENANT).to_owned();
        let subject = subject.unwrap_or("unknown").to_owned();
        tracing::info!(tenant = %tenant_id, subject = %subject, reason, "access denied");
        if self
            .denials
            .check_key(&format!("{tenant_id}\n{subject}"))
            .is_err()
        {
            return;
        }
        let actor_type = actor_type(credential);
        let credential = match credential {
            Some(Credential::ApiKey(id)) => json!({ "kind": "api_key", "id": id.to_string() }),
            Some(Credential::Jwt) => json!({ "kind": "jwt" }),
            Some(Credential::Open) => json!({ "kind": "open" }),
            None => json!({ "kind": "none or invalid" }),
        };
        let event = NewEvent {
            actor_type,
            actor_id: truncate(&subject, 256),
            actor_name: None,
            action: "audit.access.denied".to_owned(),
            target: None,
            outcome: Outcome::Denied,
            reason: Some(truncate(reason, 1000)),
            occurred_at: None,
            metadata: Some(json!({ "credential": credential })),
            ip_address: origin.ip.clone(),
            user_agent: origin.user_agent.as_deref().map(|ua| truncate(ua, 1000)),
            request_id: None,
            trace_id: origin.trace_id.clone(),
            idempotency_key: None,
            subject_ids: Vec::new(),
            personal_paths: Vec::new(),
        };
        let ingestor = self.ingestor.clone();
        tokio::spawn(async move {
            if let Err(err) = ingestor.ingest(&tenant_id, vec![event]).await {
                tracing::warn!(error = %err, "could not record a denied attempt");
            }
        });
    }
}

/// The kind of actor a credential speaks for.
pub fn actor_type(credential: Option<&Credential>) -> ActorType {
    match credential {
        Some(Credential::ApiKey(_)) => ActorType::Service,
        Some(Credential::Open) => ActorType::System,
        _ => ActorType::User,
    }
}

/// An event the server records about what a caller did (`audit.export.requested`), with
/// the caller as actor; what the credential and request carry is cut to what an event holds.
pub fn caller_event(
    principal: &Principal,
    origin: &Origin,
    action: &str,
    metadata: Value,
) -> NewEvent {
    NewEvent {
        actor_type: actor_type(Some(&principal.credential)),
        actor_id: truncate(&principal.subject, 256),
        actor_name: None,
        action: action.to_owned(),
        target: None,
        outcome: Outcome::Success,
        reason: None,
        occurred_at: None,
        metadata: Some(metadata),
        ip_address: origin.ip.clone(),
        user_agent: origin.user_agent.as_deref().map(|ua| truncate(ua, 1000)),
        request_id: None,
        trace_id: origin.trace_id.clone(),
        idempotency_key: None,
        subject_ids: Vec::new(),
        personal_paths: Vec::new(),
    }
}

fn truncate(text: &str, max: usize) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).take(max).collect();
    if clean.trim().is_empty() {
        "unknown".to_owned()
    } else {
        clean
    }
}
