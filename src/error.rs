//! The one error type of audit-service and its stable, machine-readable codes.

use sea_orm::DbErr;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a request, as the client may learn it.
///
/// Internal causes are kept in the variant for the log and never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is at fault; `field` is its path (`inputs[3].action`).
    #[error("{message}")]
    BadInput { field: String, message: String },
    #[error("not found")]
    NotFound,
    /// No valid credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests for this credential; retry after this many seconds.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// An idempotency key was reused with different content.
    #[error("idempotency key {key:?} was already used for a different event")]
    IdempotencyConflict { field: String, key: String },
    /// A live subscriber fell too far behind and was dropped.
    #[error(
        "you fell {missed} events behind the live feed; resubscribe with `after` set to the last cursor you received"
    )]
    SubscriberLagged { missed: u64 },
    /// The database could not be reached.
    #[error("the database is unavailable, retry later")]
    Unavailable(#[source] DbErr),
    /// The server sheds load: too many expensive requests are running.
    #[error("the server is busy with other expensive requests; retry in a moment")]
    Busy,
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The value of `extensions.code`, the same over GraphQL, HTTP and WebSocket; part of the
/// API, never renamed. Nothing else in the server writes a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BadUserInput,
    NotFound,
    Unauthenticated,
    Forbidden,
    RateLimited,
    IdempotencyConflict,
    SubscriberLagged,
    Unavailable,
    Internal,
}

impl Code {
    pub const fn as_str(self) -> &'static str {
        match self {
            Code::BadUserInput => "BAD_USER_INPUT",
            Code::NotFound => "NOT_FOUND",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::RateLimited => "RATE_LIMITED",
            Code::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            Code::SubscriberLagged => "SUBSCRIBER_LAGGED",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL",
        }
    }

    /// `{"message": ..., "extensions": {"code": ...}}`, for errors written outside
    /// async-graphql (WebSocket frames).
    pub fn json(self, message: &str) -> serde_json::Value {
        serde_json::json!({ "message": message, "extensions": { "code": self.as_str() } })
    }
}

impl Error {
    /// This error's code.
    pub fn code(&self) -> Code {
        match self {
            Error::BadInput { .. } => Code::BadUserInput,
            Error::NotFound => Code::NotFound,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Forbidden(_) => Code::Forbidden,
            Error::RateLimited { .. } => Code::RateLimited,
            Error::IdempotencyConflict { .. } => Code::IdempotencyConflict,
            Error::SubscriberLagged { .. } => Code::SubscriberLagged,
            Error::Unavailable(_) | Error::Busy => Code::Unavailable,
            Error::Internal(_) => Code::Internal,
        }
    }

    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Internal(cause.into())
    }

    /// The input path this error points at, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::BadInput { field, .. } | Error::IdempotencyConflict { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Roots a path relative to a list of events (`[3].action`) at the argument it came from:
    /// `inputs[3].action` for a list argument, `input.action` for a single one.
    pub fn rooted_at(mut self, argument: &str, single: bool) -> Self {
        if let Error::BadInput { field, .. } | Error::IdempotencyConflict { field, .. } = &mut self
        {
            let relative = match (single, field.find(']')) {
                (true, Some(end)) if field.starts_with('[') => &field[end + 1..],
                _ => field.as_str(),
            };
            *field = format!("{argument}{relative}");
        }
        self
    }
}

impl From<audit_contract::Violation> for Error {
    fn from(broken: audit_contract::Violation) -> Self {
        Error::BadInput {
            field: broken.field,
            message: broken.message,
        }
    }
}

impl From<DbErr> for Error {
    fn from(err: DbErr) -> Self {
        if is_connection_error(&err) {
            Error::Unavailable(err)
        } else {
            Error::Internal(Box::new(err))
        }
    }
}

/// Whether the database, not the statement, failed: no connection to be had, the
/// connection broke, the server is shutting down or starting (SQLSTATE classes 08 and
/// 57P), or (SQLite) another process holds the database's lock. Such a failure is worth a
/// retry.
pub fn is_connection_error(err: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::sqlx::sqlite::SqliteError;
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(cause)) | DbErr::Query(RuntimeErr::SqlxError(cause)) => {
            match cause.as_ref() {
                Sqlx::Io(_)
                | Sqlx::Tls(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Protocol(_)
                | Sqlx::BeginFailed => true,
                // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes.
                Sqlx::Database(db) if db.try_downcast_ref::<SqliteError>().is_some() => db
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
                Sqlx::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
                _ => false,
            }
        }
        _ => false,
    }
}

impl From<Error> for async_graphql::Error {
    fn from(err: Error) -> Self {
        match &err {
            Error::Unavailable(cause) => tracing::warn!(error = %cause, "database unavailable"),
            Error::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            _ => {}
        }
        let mut gql = async_graphql::Error::new(err.to_string());
        let code = err.code();
        let field = err.field().filter(|f| !f.is_empty()).map(str::to_owned);
        let retry_after = match err {
            Error::RateLimited { retry_after_secs } => Some(retry_after_secs),
            _ => None,
        };
        gql = async_graphql::ErrorExtensions::extend_with(gql, |_, ext| {
            ext.set("code", code.as_str());
            if let Some(field) = field {
                ext.set("field", field);
            }
            if let Some(seconds) = retry_after {
                ext.set("retryAfter", seconds);
            }
        });
        gql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_rooted_at_the_argument() {
        let batch = Error::bad_input("[3].action", "bad").rooted_at("inputs", false);
        assert_eq!(batch.field(), Some("inputs[3].action"));
        let single = Error::bad_input("[0].actor.id", "bad").rooted_at("input", true);
        assert_eq!(single.field(), Some("input.actor.id"));
        let whole = Error::bad_input("", "empty").rooted_at("inputs", false);
        assert_eq!(whole.field(), Some("inputs"));
    }
}
