//! Log stream resolvers (docs/streams.md): create, change, pause, resume, replay and delete
//! a tenant's streams (`audit:admin`), and list them with their state and lag
//! (`audit:read`).

use async_graphql::{Context, Enum, ID, InputObject, Json, Object};
use serde_json::Value;
use uuid::Uuid;

use super::guards::RequireScope;
use super::reads;
use super::scalars::DateTime;
use super::types::AuditLogFilter;
use crate::context::AppContext;
use crate::credentials::{Principal, Scope};
use crate::error::{Error, Result};
use crate::service::query::filter::Filter;
use crate::service::streams::store::{self, Row};
use crate::service::streams::{self, Change, Kind, Settings, sink};

#[derive(Default)]
pub struct StreamQuery;

#[derive(Default)]
pub struct StreamMutation;

/// Where a stream delivers.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditStreamKind {
    /// HTTP POST of a JSON array of events (export lines), signed per Standard Webhooks.
    Webhook,
    /// A JetStream publish per event to `subject`, `Nats-Msg-Id` the event id.
    Nats,
    /// Splunk HTTP Event Collector (`Authorization: Splunk <secret>`).
    SplunkHec,
    /// Datadog logs intake (`DD-API-KEY: <secret>`).
    Datadog,
    /// RFC 5424 syslog over TCP (`tcp://host:port`), octet-counted.
    Syslog,
}

impl From<AuditStreamKind> for Kind {
    fn from(kind: AuditStreamKind) -> Self {
        match kind {
            AuditStreamKind::Webhook => Kind::Webhook,
            AuditStreamKind::Nats => Kind::Nats,
            AuditStreamKind::SplunkHec => Kind::SplunkHec,
            AuditStreamKind::Datadog => Kind::Datadog,
            AuditStreamKind::Syslog => Kind::Syslog,
        }
    }
}

impl From<Kind> for AuditStreamKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Webhook => AuditStreamKind::Webhook,
            Kind::Nats => AuditStreamKind::Nats,
            Kind::SplunkHec => AuditStreamKind::SplunkHec,
            Kind::Datadog => AuditStreamKind::Datadog,
            Kind::Syslog => AuditStreamKind::Syslog,
        }
    }
}

/// Where a stream stands.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditStreamState {
    /// Delivering, or caught up.
    Active,
    /// Paused: events wait, the cursor stays.
    Paused,
    /// Its sink has failed for longer than the server's `--stream-failing-after`; it keeps
    /// retrying and resumes from its cursor when the sink is back.
    Failing,
}

/// A stream to create.
#[derive(InputObject)]
pub struct AuditStreamInput {
    /// Unique in your tenant; 1 to 100 characters.
    pub name: String,
    pub kind: AuditStreamKind,
    /// `https://...` (WEBHOOK, SPLUNK_HEC, DATADOG), `nats://host:4222`, or
    /// `tcp://host:port` (SYSLOG); never with credentials in it.
    pub url: String,
    /// The JetStream subject (NATS only); a JetStream stream must capture it.
    pub subject: Option<String>,
    /// WEBHOOK: the signing secret `whsec_...`, made and returned once when not given.
    /// SPLUNK_HEC and DATADOG: the token (required). NATS: a token, if the server wants one.
    /// Sealed at rest and never shown again.
    pub secret: Option<String>,
    /// Which of your events to deliver; all by default.
    pub filter: Option<AuditLogFilter>,
    /// The first sequence number to deliver; by default, the stream's own
    /// `audit.stream.created` record, the next event.
    pub from_sequence: Option<String>,
    /// Carry personal values in clear: each event with them gets `disclosures` (path,
    /// value, salt), which its commitments verify. Needs `audit:pii`; by default they stay
    /// sealed (null beside their commitments, as in exports).
    #[graphql(default = false)]
    pub include_personal: bool,
}

/// New settings for a stream; absent fields stay as they are.
#[derive(InputObject)]
pub struct AuditStreamUpdate {
    pub name: Option<String>,
    pub url: Option<String>,
    pub subject: Option<String>,
    pub secret: Option<String>,
    /// Replaces the filter; `{}` delivers every event.
    pub filter: Option<AuditLogFilter>,
}

/// A log stream: where it delivers and how far it has come.
pub struct AuditStream {
    row: Row,
    lag: (i64, f64),
    failing: bool,
    /// Only in `createAuditStream`'s answer.
    secret: Option<String>,
}

#[Object]
impl AuditStream {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.row.name
    }

    async fn kind(&self) -> Result<AuditStreamKind> {
        Ok(self.row.kind()?.into())
    }

    async fn url(&self) -> &str {
        &self.row.url
    }

    /// Whether it carries personal values in clear (`includePersonal`).
    async fn include_personal(&self) -> bool {
        self.row.personal
    }

    /// The JetStream subject (NATS).
    async fn subject(&self) -> Option<&str> {
        self.row.subject.as_deref()
    }

    /// Its filter, as stored.
    async fn filter(&self) -> Result<Option<Json<Value>>> {
        let parsed = (self.row.filter.as_deref())
            .map(serde_json::from_str)
            .transpose()
            .map_err(Error::internal)?;
        Ok(parsed.map(Json))
    }

    async fn state(&self) -> AuditStreamState {
        match (self.row.paused, self.failing) {
            (true, _) => AuditStreamState::Paused,
            (false, true) => AuditStreamState::Failing,
            (false, false) => AuditStreamState::Active,
        }
    }

    /// The last sequence number its sink acknowledged (or its filter passed over).
    async fn delivered_sequence(&self) -> String {
        self.row.delivered_seq.to_string()
    }

    /// Your tenant's events after `deliveredSequence`.
    async fn lag_events(&self) -> i32 {
        i32::try_from(self.lag.0).unwrap_or(i32::MAX)
    }

    /// How long ago the first event not yet delivered was recorded; 0 when caught up.
    async fn lag_seconds(&self) -> f64 {
        self.lag.1
    }

    /// Why its sink last failed (cleared by the next acknowledgement).
    async fn last_error(&self) -> Option<&str> {
        self.row.last_error.as_deref()
    }

    async fn last_delivered_at(&self) -> Option<DateTime> {
        self.row.last_delivered_at.map(DateTime)
    }

    async fn created_at(&self) -> DateTime {
        DateTime(self.row.created_at)
    }

    /// The secret, in `createAuditStream`'s answer only (a generated webhook secret is
    /// shown nowhere else); null everywhere else.
    async fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }
}

impl AuditStream {
    async fn of(ctx: &Context<'_>, row: Row) -> async_graphql::Result<AuditStream> {
        let app = ctx.data::<AppContext>()?;
        let lag = store::lag(reads::db(ctx).await?, &row).await?;
        let since =
            chrono::Utc::now().timestamp_millis() - app.stream_failing_after.as_millis() as i64;
        let failing = row.failing_since_ms.is_some_and(|at| at < since);
        Ok(AuditStream {
            row,
            lag,
            failing,
            secret: None,
        })
    }
}

#[Object]
impl StreamQuery {
    /// Your tenant's log streams, by name.
    #[graphql(guard = "RequireScope(Scope::Read)")]
    async fn audit_streams(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<AuditStream>> {
        let principal = ctx.data::<Principal>()?;
        let rows = store::list(reads::db(ctx).await?, &principal.tenant_id).await?;
        let mut streams = Vec::with_capacity(rows.len());
        for row in rows {
            streams.push(AuditStream::of(ctx, row).await?);
        }
        Ok(streams)
    }
}

#[Object]
impl StreamMutation {
    /// Creates a log stream of your tenant's events; recorded as `audit.stream.created`.
    /// Its `secret` is in this answer and never again.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn create_audit_stream(
        &self,
        ctx: &Context<'_>,
        input: AuditStreamInput,
    ) -> async_graphql::Result<AuditStream> {
        let principal = ctx.data::<Principal>()?;
        if input.include_personal && !principal.has(Scope::Pii) {
            return Err(
                Error::Forbidden("includePersonal needs the audit:pii scope".to_owned()).into(),
            );
        }
        let kind = Kind::from(input.kind);
        let from_sequence = (input.from_sequence.as_deref())
            .map(|text| {
                text.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    Error::bad_input(
                        "input.fromSequence",
                        "fromSequence is a sequence number, 1 or more",
                    )
                })
            })
            .transpose()?;
        let secret = streams::check_secret(kind, input.secret).map_err(root)?;
        let id = Uuid::now_v7();
        let settings = settings(
            ctx,
            principal,
            (kind, id),
            (input.name, input.url, input.subject),
            secret.as_deref(),
            stream_filter(principal, input.filter)?,
        )
        .await?;
        let change = Change::Create {
            id,
            kind,
            settings,
            from_sequence,
            personal: input.include_personal,
        };
        let row = changed(ctx, principal, change).await?;
        let mut stream = AuditStream::of(ctx, row).await?;
        stream.secret = secret;
        Ok(stream)
    }

    /// Changes a stream's settings; delivery goes on from its cursor. Recorded as
    /// `audit.stream.updated`.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn update_audit_stream(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: AuditStreamUpdate,
    ) -> async_graphql::Result<AuditStream> {
        let principal = ctx.data::<Principal>()?;
        let id = stream_id(&id)?;
        let app = ctx.data::<AppContext>()?;
        let row = store::find(&app.db, &principal.tenant_id, id)
            .await?
            .ok_or(Error::NotFound)?;
        let kind = row.kind()?;
        let secret = match input.secret {
            Some(secret) => streams::check_secret(kind, Some(secret)).map_err(root)?,
            None => None,
        };
        let filter = match input.filter {
            Some(filter) => stream_filter(principal, Some(filter))?,
            None => row.filter()?,
        };
        let settings = settings(
            ctx,
            principal,
            (kind, id),
            (
                input.name.unwrap_or(row.name),
                input.url.unwrap_or(row.url),
                input.subject.or(row.subject),
            ),
            secret.as_deref(),
            filter,
        )
        .await?;
        let row = changed(ctx, principal, Change::Update { id, settings }).await?;
        AuditStream::of(ctx, row).await
    }

    /// Pauses a stream: events wait and its cursor stays. Recorded as `audit.stream.paused`.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn pause_audit_stream(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<AuditStream> {
        let principal = ctx.data::<Principal>()?;
        let row = changed(ctx, principal, Change::Pause(stream_id(&id)?)).await?;
        AuditStream::of(ctx, row).await
    }

    /// Resumes a paused (or failing) stream from its cursor at once. Recorded as
    /// `audit.stream.resumed`.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn resume_audit_stream(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<AuditStream> {
        let principal = ctx.data::<Principal>()?;
        let row = changed(ctx, principal, Change::Resume(stream_id(&id)?)).await?;
        AuditStream::of(ctx, row).await
    }

    /// Delivers a stream again from `fromSequence` (events from there arrive again, with
    /// the same ids). Recorded as `audit.stream.replayed`.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn replay_audit_stream(
        &self,
        ctx: &Context<'_>,
        id: ID,
        from_sequence: String,
    ) -> async_graphql::Result<AuditStream> {
        let principal = ctx.data::<Principal>()?;
        let from = from_sequence.parse::<i64>().map_err(|_| {
            Error::bad_input(
                "fromSequence",
                "fromSequence is a sequence number, 1 or more",
            )
        })?;
        let row = changed(ctx, principal, Change::Replay(stream_id(&id)?, from)).await?;
        AuditStream::of(ctx, row).await
    }

    /// Deletes a stream; returns true. Recorded as `audit.stream.deleted`.
    #[graphql(guard = "RequireScope(Scope::Admin)")]
    async fn delete_audit_stream(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let principal = ctx.data::<Principal>()?;
        let ingestor = &ctx.data::<AppContext>()?.ingestor;
        let change = Change::Delete(stream_id(&id)?);
        ingestor
            .stream(&principal.tenant_id, change, &principal.subject)
            .await?;
        Ok(true)
    }
}

/// Error paths of the input's fields start at `input`.
fn root(err: Error) -> Error {
    err.rooted_at("input.", true)
}

fn stream_id(id: &ID) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Error::bad_input("id", "id is a stream's id"))
}

/// A stream's filter, checked: of the caller's tenant only.
fn stream_filter(principal: &Principal, filter: Option<AuditLogFilter>) -> Result<Option<Filter>> {
    match filter {
        Some(filter) if filter.tenant_ids.is_some() => Err(Error::bad_input(
            "input.filter.tenantIds",
            "a stream carries its own tenant's events only",
        )),
        Some(filter) => Ok(Some(filter.into_filter(principal).map_err(root)?)),
        None => Ok(None),
    }
}

/// Checks a stream's settings and seals its secret under the privacy key.
async fn settings(
    ctx: &Context<'_>,
    principal: &Principal,
    (kind, id): (Kind, Uuid),
    (name, url, subject): (String, String, Option<String>),
    secret: Option<&str>,
    filter: Option<Filter>,
) -> async_graphql::Result<Settings> {
    let app = ctx.data::<AppContext>()?;
    streams::check_name(&name).map_err(root)?;
    let parsed = streams::check_url(kind, &url).map_err(root)?;
    streams::check_subject(kind, subject.as_deref()).map_err(root)?;
    // What this database cannot read (some metadata filters on SQLite) is refused now, not
    // found by the delivery.
    if let Some(filter) = &filter {
        filter
            .condition(app.db.get_database_backend())
            .map_err(|e| e.rooted_at("input.filter.", true))?;
    }
    if let (Kind::Nats, Some(subject)) = (kind, &subject) {
        sink::check_jetstream(&parsed, subject, secret.map(str::to_owned))
            .await
            .map_err(|why| Error::bad_input("input.subject", why))?;
    }
    let secret = match secret {
        Some(secret) => {
            let owner = streams::secret_owner(&principal.tenant_id, id);
            let sealed = app.keyring.seal(&owner, secret.as_bytes())?;
            Some((app.keyring.current().to_owned(), sealed))
        }
        None => None,
    };
    // Stored and shown as it is parsed, which is where delivery goes.
    Ok(Settings {
        name,
        url: parsed.to_string(),
        subject,
        secret,
        filter,
    })
}

/// Applies a change through the write path and reads the stream back from the primary.
async fn changed(
    ctx: &Context<'_>,
    principal: &Principal,
    change: Change,
) -> async_graphql::Result<Row> {
    let app = ctx.data::<AppContext>()?;
    let id = change.id();
    app.ingestor
        .stream(&principal.tenant_id, change, &principal.subject)
        .await?;
    Ok(store::find(&app.db, &principal.tenant_id, id)
        .await?
        .ok_or(Error::NotFound)?)
}
