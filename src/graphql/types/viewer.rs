//! Who is asking, as `auditViewer` answers.

use async_graphql::SimpleObject;

use crate::credentials::{Credential, Principal};
use crate::graphql::scalars::DateTime;

/// Who is asking: what a console shows of its signed-in caller.
#[derive(SimpleObject, Clone, Debug)]
pub struct AuditViewer {
    /// The caller's identity (`sub` of a token, `api-key:<name>` of a key, `anonymous` in
    /// open mode).
    pub subject: String,
    /// The tenant the caller reads and writes by default.
    pub tenant_id: String,
    /// The caller's scopes (`audit:read`, `audit:write`, `audit:admin`).
    pub scopes: Vec<String>,
    /// True when the server runs without credentials (open mode).
    pub open: bool,
    /// When the credential stops being valid, for tokens that expire.
    pub expires_at: Option<DateTime>,
}

impl From<&Principal> for AuditViewer {
    fn from(principal: &Principal) -> Self {
        AuditViewer {
            subject: principal.subject.clone(),
            tenant_id: principal.tenant_id.clone(),
            scopes: principal
                .scopes
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            open: principal.credential == Credential::Open,
            expires_at: principal.expires_at.map(DateTime),
        }
    }
}
