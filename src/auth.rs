//! Who is calling: the principal every request runs as.

/// The caller of a request, as established by the HTTP layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The caller's identity (`sub` of a token, the name of an API key).
    pub subject: String,
    /// The tenant the caller acts in; written events always land here.
    pub tenant_id: String,
}

/// The tenant of open mode.
pub const DEFAULT_TENANT: &str = "default";

impl Principal {
    /// The principal of a server running without credentials.
    pub fn open() -> Self {
        Principal {
            subject: "anonymous".to_owned(),
            tenant_id: DEFAULT_TENANT.to_owned(),
        }
    }

    /// The tenants this principal may read.
    pub fn readable_tenants(&self) -> Vec<String> {
        vec![self.tenant_id.clone()]
    }
}
