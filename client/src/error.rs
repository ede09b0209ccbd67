//! The one error type of the client, and which errors are worth a retry.

use std::time::Duration;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an event was not recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The event is not valid; nothing was sent. `field` is its path (`action`, `actor.id`).
    #[error("invalid audit event: {message}")]
    Invalid { field: String, message: String },
    /// audit-service refused the event (`BAD_USER_INPUT`, `IDEMPOTENCY_CONFLICT`); sending it
    /// again cannot help. `field` is the server's path (`inputs[3].action`), when it gave one.
    #[error("audit-service rejected the event ({code}): {message}")]
    Rejected {
        code: String,
        field: Option<String>,
        message: String,
    },
    /// The credential was refused (`UNAUTHENTICATED`, `FORBIDDEN`). `send()` returns it at
    /// once; background delivery keeps retrying, since a fixed credential delivers.
    #[error("audit-service refused the credential ({code}): {message}")]
    Denied { code: String, message: String },
    /// audit-service could not record the event now (network, 5xx, `UNAVAILABLE`,
    /// `RATE_LIMITED`); a retry may succeed, after `retry_after` when given.
    #[error("audit-service is unavailable ({code}): {message}")]
    Unavailable {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The delivery buffer is full and the client drops events when it is.
    #[error("the audit delivery buffer is full; the event was dropped")]
    BufferFull,
    /// The client was shut down.
    #[error("the audit client is shut down")]
    Closed,
    /// The durable spool could not be written; the event was not accepted.
    #[error("the audit spool failed: {0}")]
    Spool(String),
}

impl Error {
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Error::Unavailable {
            code: code.to_owned(),
            message: message.into(),
            retry_after: None,
        }
    }

    /// The server's error code (`BAD_USER_INPUT`, `UNAVAILABLE`, ...), or the client's own
    /// (`INVALID`, `BUFFER_FULL`, `CLOSED`, `SPOOL`).
    pub fn code(&self) -> &str {
        match self {
            Error::Invalid { .. } => "INVALID",
            Error::Rejected { code, .. }
            | Error::Denied { code, .. }
            | Error::Unavailable { code, .. } => code,
            Error::BufferFull => "BUFFER_FULL",
            Error::Closed => "CLOSED",
            Error::Spool(_) => "SPOOL",
        }
    }

    /// The input path the error points at, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            Error::Rejected { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// Whether sending the same event again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// Whether a server error code means "this event is wrong" (never retried) rather than
/// "not now" (retried with the same idempotency key until the event's maximum age).
pub(crate) fn is_rejection(code: &str) -> bool {
    matches!(code, "BAD_USER_INPUT" | "IDEMPOTENCY_CONFLICT")
}

/// Whether a server error code refuses the credential.
pub(crate) fn is_denial(code: &str) -> bool {
    matches!(code, "UNAUTHENTICATED" | "FORBIDDEN")
}
