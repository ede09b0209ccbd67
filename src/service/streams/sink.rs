//! The sinks: how a batch of events is written for each kind of stream, sent, and
//! acknowledged. Every event goes out in the export's NDJSON line form (the canonical
//! encoding with `hash` and `prev_hash`, personal values as null beside their
//! commitments), so that a receiver can check the chain it receives.
//!
//! Hostile sinks are bounded: connecting takes at most `CONNECT`, a send at most `SEND`;
//! redirects are not followed and a response body is never read, so neither a slow, a
//! redirecting nor an endless answer holds a delivery or its memory.

use std::time::Duration;

use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use bytes::Bytes;
use entity::audit_log::{self, Outcome};
use hmac::{Hmac, Mac};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use sea_orm::ActiveEnum;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use uuid::Uuid;

use super::Kind;
use crate::service::tlog::canonical::timestamp;

/// Longest wait to connect to a sink.
pub const CONNECT: Duration = Duration::from_secs(5);
/// Longest wait for a sink to take a batch and answer.
pub const SEND: Duration = Duration::from_secs(30);
/// Shortest and longest wait a sink may ask for with `Retry-After`: `0` or a past date
/// would otherwise have the delivery retry in a tight loop.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(500);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// The syslog facility (13, log audit) times 8.
const LOG_AUDIT: u8 = 13 * 8;
/// The structured data id of an event in syslog: RFC 5612's enterprise number for
/// documentation, as audit-service has none of its own.
const SD_ID: &str = "audit@32473";

/// Why a batch was not acknowledged, as the stream's `lastError` shows it (never a secret
/// or a URL), and how long the sink asked to wait.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The HTTP client every stream of an instance shares: bounded waits, no redirects.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(CONNECT)
        .timeout(SEND)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("audit-service/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// An event to deliver, shared with the live feed that brought it.
pub type Event = std::sync::Arc<audit_log::Model>;

/// Where one stream's batches go.
pub enum Sink {
    Http {
        kind: Kind,
        stream_id: Uuid,
        url: Url,
        secret: Option<String>,
        client: reqwest::Client,
    },
    Nats {
        jetstream: async_nats::jetstream::Context,
        subject: String,
    },
    Syslog {
        address: String,
        connection: Option<TcpStream>,
    },
}

impl Sink {
    /// Opens the sink of a stream (for NATS, a connection to its server).
    pub async fn open(
        kind: Kind,
        stream_id: Uuid,
        url: Url,
        subject: Option<String>,
        secret: Option<String>,
        client: &reqwest::Client,
    ) -> Result<Sink, Failure> {
        Ok(match kind {
            Kind::Webhook | Kind::SplunkHec | Kind::Datadog => Sink::Http {
                kind,
                stream_id,
                url,
                secret,
                client: client.clone(),
            },
            Kind::Nats => Sink::Nats {
                jetstream: jetstream(&url, secret).await?,
                subject: subject.unwrap_or_default(),
            },
            Kind::Syslog => Sink::Syslog {
                address: address(&url),
                connection: None,
            },
        })
    }

    /// Sends a batch (the events, and each one's line: its export line, newline-ended);
    /// `Ok` once the sink has acknowledged all of it.
    pub async fn send(&mut self, events: &[Event], lines: &[Vec<u8>]) -> Result<(), Failure> {
        match self {
            Sink::Http {
                kind,
                stream_id,
                url,
                secret,
                client,
            } => {
                let (body, headers) =
                    http_request(*kind, *stream_id, secret.as_deref(), events, lines)?;
                let sent = client
                    .post(url.clone())
                    .headers(headers)
                    .body(body)
                    .send()
                    .await;
                answered(sent)
            }
            Sink::Nats { jetstream, subject } => {
                // Published one after another without waiting, then every acknowledgement
                // awaited; a redelivered event has the same id, which JetStream's duplicate
                // window drops.
                let mut acks = Vec::with_capacity(events.len());
                for (event, line) in events.iter().zip(lines) {
                    let message = async_nats::jetstream::message::PublishMessage::build()
                        .message_id(event.id.to_string())
                        .payload(Bytes::copy_from_slice(json(line)));
                    let ack = jetstream
                        .send_publish(subject.clone(), message)
                        .await
                        .map_err(|err| Failure::new(format!("JetStream publish failed: {err}")))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await.map_err(|err| {
                        Failure::new(format!("JetStream did not acknowledge: {err}"))
                    })?;
                }
                Ok(())
            }
            Sink::Syslog {
                address,
                connection,
            } => {
                let frames: Vec<u8> = (events.iter().zip(lines))
                    .flat_map(|(event, line)| syslog_frame(event, line))
                    .collect();
                let sent = async {
                    if connection.is_none() {
                        let stream = tokio::time::timeout(CONNECT, TcpStream::connect(&*address))
                            .await
                            .map_err(|_| "connecting timed out".to_owned())?
                            .map_err(|err| format!("cannot connect: {}", err.kind()))?;
                        *connection = Some(stream);
                    }
                    let Some(stream) = connection.as_mut() else {
                        return Err("not connected".to_owned());
                    };
                    let write = async {
                        stream.write_all(&frames).await?;
                        stream.flush().await
                    };
                    tokio::time::timeout(SEND, write)
                        .await
                        .map_err(|_| "sending timed out".to_owned())?
                        .map_err(|err| format!("sending failed: {}", err.kind()))
                };
                let sent = sent.await;
                if sent.is_err() {
                    *connection = None;
                }
                sent.map_err(|message| Failure::new(format!("syslog {message}")))
            }
        }
    }
}

/// Connects to a NATS server and checks nothing more; `check_jetstream` checks the subject.
async fn jetstream(
    url: &Url,
    token: Option<String>,
) -> Result<async_nats::jetstream::Context, Failure> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT)
        .request_timeout(Some(SEND));
    if let Some(token) = token {
        options = options.token(token);
    }
    let client = options
        .connect(url.as_str())
        .await
        .map_err(|err| Failure::new(format!("cannot connect to NATS: {}", err.kind())))?;
    Ok(async_nats::jetstream::new(client))
}

/// Whether a JetStream stream captures `subject` on the NATS server at `url`; the error
/// says why not, for `BAD_USER_INPUT`.
pub async fn check_jetstream(
    url: &Url,
    subject: &str,
    token: Option<String>,
) -> Result<(), String> {
    let jetstream = jetstream(url, token).await.map_err(|f| f.message)?;
    let found = tokio::time::timeout(SEND, jetstream.stream_by_subject(subject)).await;
    match found {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(format!(
            "no JetStream stream on the NATS server captures `{subject}`; create one first"
        )),
        Err(_) => Err("the NATS server did not answer in time".to_owned()),
    }
}

/// `host:port` of a URL, for a TCP connection.
fn address(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = url.port().unwrap_or(514);
    match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// A line without its newline: the event's JSON.
fn json(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// The body and headers of an HTTP sink's request.
fn http_request(
    kind: Kind,
    stream_id: Uuid,
    secret: Option<&str>,
    events: &[Event],
    lines: &[Vec<u8>],
) -> Result<(Vec<u8>, HeaderMap), Failure> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let header = |value: String| {
        HeaderValue::from_str(&value).map_err(|_| Failure::new("the secret is not a header value"))
    };
    let body = match kind {
        Kind::Webhook => {
            let body = json_array(lines.iter().map(|line| json(line).to_vec()));
            let (first, last) = match (events.first(), events.last()) {
                (Some(first), Some(last)) => (first.seq, last.seq),
                _ => (0, 0),
            };
            // The id names the batch: the same events retried carry the same id.
            let id = format!("msg_{}_{first}-{last}", stream_id.simple());
            let now = chrono::Utc::now().timestamp().to_string();
            let key = secret.and_then(super::webhook_key).unwrap_or_default();
            headers.insert("webhook-id", header(id.clone())?);
            headers.insert("webhook-timestamp", header(now.clone())?);
            headers.insert(
                "webhook-signature",
                header(format!("v1,{}", sign(&key, &id, &now, &body)))?,
            );
            body
        }
        Kind::SplunkHec => {
            // HEC takes events one after another, not as an array.
            headers.insert(
                AUTHORIZATION,
                header(format!("Splunk {}", secret.unwrap_or_default()))?,
            );
            (events.iter().zip(lines))
                .flat_map(|(event, line)| {
                    let time = event.recorded_at.timestamp_micros() as f64 / 1e6;
                    [
                        format!(
                            r#"{{"time":{time},"source":"audit-service","sourcetype":"audit-service:event","event":"#
                        )
                        .as_bytes(),
                        json(line),
                        b"}\n",
                    ]
                    .concat()
                })
                .collect()
        }
        Kind::Datadog => {
            headers.insert("DD-API-KEY", header(secret.unwrap_or_default().to_owned())?);
            json_array(events.iter().zip(lines).map(|(event, line)| {
                let message = String::from_utf8_lossy(json(line)).into_owned();
                let entry = serde_json::json!({
                    "ddsource": "audit-service",
                    "service": "audit-service",
                    "ddtags": format!("tenant_id:{},action:{}", event.tenant_id, event.action),
                    "message": message,
                });
                entry.to_string().into_bytes()
            }))
        }
        Kind::Nats | Kind::Syslog => {
            return Err(Failure::new("not an HTTP sink"));
        }
    };
    Ok((body, headers))
}

fn json_array(items: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, item) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&item);
    }
    body.push(b']');
    body
}

/// The Standard Webhooks signature: base64 of HMAC-SHA256 of `id.timestamp.body`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    BASE64_STANDARD.encode(mac.finalize().into_bytes())
}

/// What an HTTP sink's answer means: 2xx acknowledges; 429 and 503 may say when to retry.
fn answered(sent: reqwest::Result<reqwest::Response>) -> Result<(), Failure> {
    let response = sent.map_err(|err| {
        let why = match () {
            () if err.is_timeout() => "timed out",
            () if err.is_connect() => "could not connect",
            () => "failed",
        };
        Failure::new(format!("the request {why}"))
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = match status.as_u16() {
        429 | 503 => response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(retry_after),
        _ => None,
    };
    let message = match status.is_redirection() {
        true => format!("the sink answered {status} (redirects are not followed)"),
        false => format!("the sink answered {status}"),
    };
    Err(Failure {
        message,
        retry_after,
    })
}

/// `Retry-After` as seconds or an HTTP date, at most `MAX_RETRY_AFTER`.
fn retry_after(value: &str) -> Option<Duration> {
    let wait = match value.trim().parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value.trim())
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(wait.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER))
}

/// One event as an RFC 5424 message over TCP with octet counting (RFC 6587): its fields as
/// structured data, its export line as the message.
fn syslog_frame(event: &audit_log::Model, line: &[u8]) -> Vec<u8> {
    let severity = match event.outcome {
        Outcome::Success => 6,
        Outcome::Failure | Outcome::Denied => 4,
    };
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    let params = [
        ("seq", event.seq.to_string()),
        ("id", event.id.to_string()),
        ("tenant", event.tenant_id.clone()),
        ("actorType", event.actor_type.to_value()),
        ("actorId", event.actor_id.clone()),
        ("action", event.action.clone()),
        ("outcome", event.outcome.to_value()),
        ("targetType", text(&event.target_type)),
        ("targetId", text(&event.target_id)),
        ("hash", hex::encode(&event.hash)),
    ];
    let mut data = format!("[{SD_ID}");
    for (name, value) in params {
        data.push_str(&format!(" {name}=\"{}\"", sd_escape(&value)));
    }
    data.push(']');
    // MSGID is at most 32 printable ASCII characters.
    let msgid: String = (event.action.chars())
        .filter(char::is_ascii_graphic)
        .take(32)
        .collect();
    let mut message = format!(
        "<{}>1 {} - audit-service - {} {data} ",
        LOG_AUDIT + severity,
        timestamp(event.occurred_at),
        if msgid.is_empty() { "-" } else { &msgid },
    )
    .into_bytes();
    message.extend_from_slice(json(line));
    [format!("{} ", message.len()).into_bytes(), message].concat()
}

/// A structured data parameter value: `"`, `\` and `]` escaped.
fn sd_escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date_and_is_bounded() {
        assert_eq!(retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(MIN_RETRY_AFTER)
        );
        assert_eq!(retry_after("0"), Some(MIN_RETRY_AFTER));
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn structured_data_is_escaped() {
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = BASE64_STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signature = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
