//! One GraphQL request over HTTP to audit-service, its credential, and what its answer
//! means: the committed events, a rejection, or "not now".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cynic::{GraphQlResponse, MutationBuilder, Operation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result, is_denial, is_rejection};
use crate::event::Event;
use crate::graphql::{LogMany, LogManyVariables, LogOne, LogOneVariables, Recorded, Stored};

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// How the client proves who it is.
#[derive(Clone)]
pub enum Credential {
    /// Open mode (a server on loopback without credentials configured).
    None,
    /// An API key issued by audit-service.
    ApiKey(String),
    /// A callback returning a current bearer token (a short-lived JWT), called before every
    /// request: it should cache the token until shortly before it expires.
    Token(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl Credential {
    /// A callback returning a fresh bearer token.
    pub fn token<F, Fut>(callback: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Credential::Token(Arc::new(move || Box::pin(callback())))
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::None => "None",
            Credential::ApiKey(_) => "ApiKey([redacted])",
            Credential::Token(_) => "Token(..)",
        })
    }
}

/// The server's error extensions the client acts on.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
struct Extensions {
    code: Option<String>,
    field: Option<String>,
    retry_after: Option<u64>,
}

/// An HTTP connection pool to one audit-service.
pub(crate) struct Transport {
    http: reqwest::Client,
    url: String,
    credential: Credential,
    /// The latest consistency token a write was answered with (`x-audit-consistency`), by
    /// its WAL position.
    consistency: std::sync::Mutex<Option<(u64, String)>>,
}

impl Transport {
    pub fn new(
        url: String,
        credential: Credential,
        timeout: Duration,
        user_agent: &str,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(user_agent)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::invalid("url", format!("cannot build the HTTP client: {e}")))?;
        Ok(Transport {
            http,
            url,
            credential,
            consistency: std::sync::Mutex::default(),
        })
    }

    /// Records one event.
    pub async fn log_one(&self, event: Event) -> Result<Recorded> {
        let operation = LogOne::build(LogOneVariables { input: event });
        let body = serde_json::to_vec(&operation).map_err(|e| Error::invalid("", e.to_string()))?;
        let data: LogOne = self.post(body).await?;
        Ok(data.log_audit_event)
    }

    /// The request body recording `events`, all or nothing: built once per batch and sent
    /// again as it is on every retry.
    pub fn batch_body(events: Vec<Event>) -> Result<Vec<u8>> {
        let operation: Operation<LogMany, LogManyVariables> =
            LogMany::build(LogManyVariables { inputs: events });
        serde_json::to_vec(&operation).map_err(|e| Error::invalid("", e.to_string()))
    }

    /// Records a batch built by [`Transport::batch_body`].
    pub async fn log_many(&self, body: Vec<u8>) -> Result<Vec<Stored>> {
        let data: LogMany = self.post(body).await?;
        Ok(data.log_audit_events)
    }

    /// The consistency token of this client's latest write: a server behind read replicas
    /// serves a read that sends it back (as `x-audit-consistency`) from a replica that has
    /// that write.
    pub fn consistency(&self) -> Option<String> {
        let latest = self.consistency.lock().unwrap_or_else(|e| e.into_inner());
        latest.as_ref().map(|(_, token)| token.clone())
    }

    fn remember(&self, token: Option<&http::HeaderValue>) {
        let Some(token) = token.and_then(|t| t.to_str().ok()) else {
            return;
        };
        let Some((high, low)) = token.split_once('/') else {
            return;
        };
        let (Ok(high), Ok(low)) = (u64::from_str_radix(high, 16), u64::from_str_radix(low, 16))
        else {
            return;
        };
        let at = high << 32 | low;
        let mut latest = self.consistency.lock().unwrap_or_else(|e| e.into_inner());
        if latest.as_ref().is_none_or(|(seen, _)| at > *seen) {
            *latest = Some((at, token.to_owned()));
        }
    }

    async fn post<T: DeserializeOwned>(&self, body: Vec<u8>) -> Result<T> {
        let mut request = self
            .http
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(body);
        match &self.credential {
            Credential::None => {}
            Credential::ApiKey(key) => request = request.bearer_auth(key),
            Credential::Token(callback) => {
                let token = callback().await.map_err(|e| Error::Denied {
                    code: "UNAUTHENTICATED".to_owned(),
                    message: format!("the token callback failed: {e}"),
                })?;
                request = request.bearer_auth(token);
            }
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::unavailable("NETWORK", e.to_string()))?;
        self.remember(response.headers().get("x-audit-consistency"));
        let status = response.status();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|e| Error::unavailable("NETWORK", e.to_string()))?;
        if status == http::StatusCode::PAYLOAD_TOO_LARGE {
            // Something between here and the server takes less than the server: the batch
            // is halved until it passes, down to the event that cannot.
            return Err(Error::Rejected {
                code: "PAYLOAD_TOO_LARGE".to_owned(),
                field: None,
                message: "HTTP 413: the request is too large for the way to audit-service"
                    .to_owned(),
            });
        }
        let parsed: Option<GraphQlResponse<T, Extensions>> = serde_json::from_slice(&bytes).ok();
        let Some(parsed) = parsed else {
            let code = if status.is_success() {
                "PROTOCOL"
            } else {
                "HTTP"
            };
            return Err(Error::Unavailable {
                code: code.to_owned(),
                message: format!("HTTP {status} without a GraphQL answer"),
                retry_after,
            });
        };
        if let Some(error) = parsed.errors.into_iter().flatten().next() {
            return Err(error_of(error, retry_after));
        }
        parsed.data.ok_or_else(|| Error::Unavailable {
            code: "PROTOCOL".to_owned(),
            message: format!("HTTP {status}: an answer with neither data nor errors"),
            retry_after,
        })
    }
}

/// The client's error for the first error of an answer, by its code: refused for good
/// (the event is at fault), denied (the credential is), or worth a retry.
fn error_of(error: cynic::GraphQlError<Extensions>, retry_after: Option<Duration>) -> Error {
    let extensions = error.extensions.unwrap_or_default();
    let code = extensions.code.unwrap_or_else(|| "INTERNAL".to_owned());
    if is_rejection(&code) {
        return Error::Rejected {
            code,
            field: extensions.field,
            message: error.message,
        };
    }
    if is_denial(&code) {
        return Error::Denied {
            code,
            message: error.message,
        };
    }
    Error::Unavailable {
        code,
        message: error.message,
        retry_after: extensions
            .retry_after
            .map(Duration::from_secs)
            .or(retry_after),
    }
}
