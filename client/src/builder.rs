//! `EventBuilder`: the one-line way to record an event, used by the typed helpers of the
//! catalog and by [`AuditClient::event`] for any other action.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::client::AuditClient;
use crate::error::{Error, Result};
use crate::event::{Actor, Context, Event, Outcome, Target};
use crate::graphql::Recorded;

/// An event being described; finish with [`send`](Self::send) or [`enqueue`](Self::enqueue).
#[must_use = "an event is recorded only by send() or enqueue()"]
pub struct EventBuilder<'a> {
    client: &'a AuditClient,
    actor: Option<Actor>,
    event: Event,
}

impl AuditClient {
    /// An event with any action (`billing.invoice.paid`); the catalog's helpers
    /// (`project`, `member`, ...) cover the platform's common ones.
    pub fn event(&self, action: impl Into<String>) -> EventBuilder<'_> {
        EventBuilder::new(self, action.into())
    }
}

impl<'a> EventBuilder<'a> {
    pub(crate) fn new(client: &'a AuditClient, action: String) -> Self {
        let placeholder = Actor::system("-");
        EventBuilder {
            client,
            actor: None,
            event: Event::new(placeholder, action),
        }
    }

    /// Who did it (required, unless the client has a default actor).
    pub fn by(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }

    /// What it was done to.
    pub fn target(mut self, target: Target) -> Self {
        self.event.target = Some(target);
        self
    }

    /// The target's display name.
    pub fn target_name(mut self, name: impl Into<String>) -> Self {
        if let Some(target) = &mut self.event.target {
            target.name = Some(name.into());
        }
        self
    }

    /// Details, a JSON object.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.event.metadata = Some(metadata);
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.event.outcome = Some(outcome);
        self
    }

    /// It failed, and why.
    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.event.outcome = Some(Outcome::Failure);
        self.event.reason = Some(reason.into());
        self
    }

    /// It was refused by access control, and why.
    pub fn denied(mut self, reason: impl Into<String>) -> Self {
        self.event.outcome = Some(Outcome::Denied);
        self.event.reason = Some(reason.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.event.reason = Some(reason.into());
        self
    }

    /// When it happened (now, by default).
    pub fn occurred_at(mut self, at: DateTime<Utc>) -> Self {
        self.event.occurred_at = Some(at);
        self
    }

    /// Where the request came from.
    pub fn context(mut self, context: Context) -> Self {
        self.event.context = Some(context);
        self
    }

    /// The people the event holds personal data of, besides its actor (docs/privacy.md).
    pub fn subjects<I: Into<String>>(mut self, ids: impl IntoIterator<Item = I>) -> Self {
        self.event.subject_ids = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Makes the event idempotent under a key of your own (one is generated otherwise).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.event.idempotency_key = Some(key.into());
        self
    }

    /// The event, checked.
    pub fn build(self) -> Result<Event> {
        let mut event = self.event;
        event.actor = match self.actor.or_else(|| self.client.default_actor().cloned()) {
            Some(actor) => actor,
            None => {
                return Err(Error::invalid(
                    "actor",
                    "the event has no actor: call .by(Actor::user(..)) or set a default actor",
                ));
            }
        };
        event.validate()?;
        Ok(event)
    }

    /// Records the event now; see [`AuditClient::send`].
    pub async fn send(self) -> Result<Recorded> {
        let client = self.client;
        client.send(self.build()?).await
    }

    /// Hands the event to background delivery; see [`AuditClient::enqueue`].
    pub async fn enqueue(self) -> Result<()> {
        let client = self.client;
        client.enqueue(self.build()?).await
    }
}
