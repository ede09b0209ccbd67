//! Log streams (docs/streams.md): each tenant's events pushed to its security tools, in
//! sequence order, at least once, with the event id as the dedup key. A stream's cursor
//! (the last sequence number its sink acknowledged) and the lease of the one instance that
//! delivers it live in `audit_streams`; changes to streams go through the write path and
//! are recorded as `audit.stream.*` events in the same transaction.

pub mod deliver;
pub mod sink;
pub mod store;

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use reqwest::Url;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::service::query::filter::Filter;

/// Most streams a tenant may have: each holds a task and, while it fails, a retry loop.
pub const MAX_STREAMS: u64 = 20;
/// Longest sink URL.
const MAX_URL: usize = 2048;
/// Longest Splunk or Datadog token, or NATS token.
const MAX_TOKEN: usize = 512;
/// Bytes of a generated webhook signing key; Standard Webhooks asks for 24 to 64.
const WEBHOOK_KEY: usize = 32;

/// Where a stream delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP POST of a JSON array of events, signed per Standard Webhooks.
    Webhook,
    /// A JetStream publish per event, `Nats-Msg-Id` set to the event id.
    Nats,
    /// Splunk's HTTP Event Collector.
    SplunkHec,
    /// Datadog's logs intake.
    Datadog,
    /// RFC 5424 syslog over TCP, octet-counted.
    Syslog,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "WEBHOOK",
            Kind::Nats => "NATS",
            Kind::SplunkHec => "SPLUNK_HEC",
            Kind::Datadog => "DATADOG",
            Kind::Syslog => "SYSLOG",
        }
    }

    pub fn parse(text: &str) -> Result<Kind> {
        [
            Kind::Webhook,
            Kind::Nats,
            Kind::SplunkHec,
            Kind::Datadog,
            Kind::Syslog,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| Error::internal(format!("unknown stream kind `{text}`")))
    }

    fn schemes(self) -> &'static [&'static str] {
        match self {
            Kind::Webhook | Kind::SplunkHec | Kind::Datadog => &["https", "http"],
            Kind::Nats => &["nats", "tls"],
            Kind::Syslog => &["tcp"],
        }
    }
}

/// What a stream is, as created or updated; every field checked.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: String,
    pub url: String,
    /// The JetStream subject (NATS only).
    pub subject: Option<String>,
    /// The secret, sealed under the privacy key: the KEK's id and the sealed bytes.
    pub secret: Option<(String, Vec<u8>)>,
    pub filter: Option<Filter>,
}

/// A change to a tenant's streams, applied and recorded in one transaction.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new stream; it delivers from `from_sequence` (by default, from its own record on).
    Create {
        id: Uuid,
        kind: Kind,
        settings: Settings,
        from_sequence: Option<i64>,
        /// Whether it carries personal values in clear (its creator has `audit:pii`).
        personal: bool,
    },
    /// New settings (the kind stays); delivery goes on from the cursor.
    Update {
        id: Uuid,
        settings: Settings,
    },
    Pause(Uuid),
    Resume(Uuid),
    /// Deliver again from this sequence number.
    Replay(Uuid, i64),
    Delete(Uuid),
}

impl Change {
    pub fn id(&self) -> Uuid {
        match self {
            Change::Create { id, .. } | Change::Update { id, .. } => *id,
            Change::Pause(id) | Change::Resume(id) | Change::Replay(id, _) | Change::Delete(id) => {
                *id
            }
        }
    }
}

/// What the stream's secret is bound to when sealed, so that it opens for no other.
pub fn secret_owner(tenant_id: &str, id: Uuid) -> Vec<u8> {
    [
        b"audit-service stream secret\0".as_slice(),
        tenant_id.as_bytes(),
        b"\0",
        id.as_bytes(),
    ]
    .concat()
}

/// Checks a stream's name: 1 to 100 characters, no control characters.
pub fn check_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::bad_input(
            "name",
            "name has 1 to 100 characters and no control characters",
        ));
    }
    Ok(())
}

/// Checks a sink URL for its kind: a scheme the sink speaks, a host, no credentials (they
/// go in `secret`, which is never shown or logged) and no fragment.
pub fn check_url(kind: Kind, url: &str) -> Result<Url> {
    let bad = |message: String| Error::bad_input("url", message);
    if url.len() > MAX_URL {
        return Err(bad(format!("url has at most {MAX_URL} characters")));
    }
    let parsed = Url::parse(url).map_err(|err| bad(format!("url is not a URL: {err}")))?;
    let schemes = kind.schemes();
    if !schemes.contains(&parsed.scheme()) {
        return Err(bad(format!(
            "a {} stream's url starts with {}",
            kind.as_str(),
            schemes.join(":// or ") + "://"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("url names no host".to_owned()));
    }
    if parsed.port() == Some(0) {
        return Err(bad("url names port 0".to_owned()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "url carries no credentials: put the token in `secret`, which is sealed and never shown"
                .to_owned(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(bad("url has no fragment".to_owned()));
    }
    if kind == Kind::Syslog && parsed.port().is_none() {
        return Err(bad(
            "a SYSLOG url names its port (tcp://host:6514)".to_owned()
        ));
    }
    Ok(parsed)
}

/// Checks the subject: required for NATS (a JetStream subject without wildcards), refused
/// for every other kind.
pub fn check_subject(kind: Kind, subject: Option<&str>) -> Result<()> {
    let bad = |message: &str| Error::bad_input("subject", message);
    match (kind, subject) {
        (Kind::Nats, None) => Err(bad("a NATS stream names its subject")),
        (Kind::Nats, Some(subject)) => {
            let valid = subject.len() <= 256
                && subject.split('.').all(|token| {
                    !token.is_empty()
                        && token
                            .chars()
                            .all(|c| c.is_ascii_graphic() && c != '*' && c != '>')
                });
            match valid {
                true => Ok(()),
                false => Err(bad(
                    "subject is dot-separated tokens of printable characters, without \
                     wildcards, at most 256 characters",
                )),
            }
        }
        (_, None) => Ok(()),
        (_, Some(_)) => Err(bad("only a NATS stream has a subject")),
    }
}

/// The secret a stream keeps: a webhook's `whsec_` key (made when not given), the token
/// of Splunk or Datadog (required), NATS's token (optional); SYSLOG has none.
pub fn check_secret(kind: Kind, given: Option<String>) -> Result<Option<String>> {
    let bad = |message: String| Error::bad_input("secret", message);
    let token = |text: &str| {
        !text.is_empty() && text.len() <= MAX_TOKEN && text.chars().all(|c| c.is_ascii_graphic())
    };
    match (kind, given) {
        (Kind::Webhook, None) => {
            let key = crate::service::privacy::keyring::random::<WEBHOOK_KEY>()
                .map_err(|e| Error::internal(e.to_string()))?;
            Ok(Some(format!("whsec_{}", BASE64_STANDARD.encode(key))))
        }
        (Kind::Webhook, Some(secret)) => match webhook_key(&secret) {
            Some(_) => Ok(Some(secret)),
            None => Err(bad(
                "a webhook secret is `whsec_` and 24 to 64 bytes in base64".to_owned(),
            )),
        },
        (Kind::SplunkHec | Kind::Datadog, None) => Err(bad(format!(
            "a {} stream needs its token in `secret`",
            kind.as_str()
        ))),
        (Kind::SplunkHec | Kind::Datadog | Kind::Nats, Some(secret)) if !token(&secret) => {
            Err(bad(format!(
                "a token is 1 to {MAX_TOKEN} printable ASCII characters"
            )))
        }
        (Kind::Syslog, Some(_)) => Err(bad("a SYSLOG stream has no secret".to_owned())),
        (_, given) => Ok(given),
    }
}

/// The HMAC key of a Standard Webhooks secret: the base64 after `whsec_`.
pub fn webhook_key(secret: &str) -> Option<Vec<u8>> {
    let key = BASE64_STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_for_their_kind() {
        assert!(check_url(Kind::Webhook, "https://siem.example/hook?x=1").is_ok());
        assert!(check_url(Kind::Webhook, "ftp://siem.example/").is_err());
        assert!(check_url(Kind::Webhook, "https://user:pw@siem.example/").is_err());
        assert!(check_url(Kind::Webhook, "https://siem.example/#f").is_err());
        assert!(check_url(Kind::Nats, "nats://127.0.0.1:4222").is_ok());
        assert!(check_url(Kind::Syslog, "tcp://127.0.0.1").is_err());
        assert!(check_url(Kind::Syslog, "tcp://127.0.0.1:6514").is_ok());
        assert!(check_url(Kind::Webhook, "http://a.example:0/").is_err());
    }

    #[test]
    fn secrets_follow_their_kind() {
        let made = check_secret(Kind::Webhook, None).unwrap().unwrap();
        assert_eq!(webhook_key(&made).map(|k| k.len()), Some(WEBHOOK_KEY));
        assert!(check_secret(Kind::Webhook, Some("whsec_short".into())).is_err());
        assert!(check_secret(Kind::Datadog, None).is_err());
        assert!(check_secret(Kind::SplunkHec, Some("a b".into())).is_err());
        assert!(check_secret(Kind::Syslog, Some("x".into())).is_err());
        assert_eq!(check_secret(Kind::Syslog, None).unwrap(), None);
    }

    #[test]
    fn subjects_are_for_nats_only() {
        assert!(check_subject(Kind::Nats, Some("audit.acme")).is_ok());
        assert!(check_subject(Kind::Nats, Some("audit.*")).is_err());
        assert!(check_subject(Kind::Nats, Some("audit..x")).is_err());
        assert!(check_subject(Kind::Nats, None).is_err());
        assert!(check_subject(Kind::Webhook, Some("a")).is_err());
    }
}
