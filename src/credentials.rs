//! Who is calling: credentials (JWTs from the platform's auth-service, API keys), scopes,
//! tenants, and open mode.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sea_orm::DatabaseConnection;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::error::{Error, Result};
use crate::service::keys;
use audit_contract::rules::{MAX_ID_LEN, check_id};

/// The tenant of open mode.
pub const DEFAULT_TENANT: &str = "default";
/// How long an API key lookup (or the open-mode check) is trusted: revocation takes effect
/// on every instance within this time.
const KEY_CACHE_TTL: Duration = Duration::from_secs(3);

/// What a credential allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `audit:read`: read your tenant's events (queries, subscriptions, entities, export).
    Read,
    /// `audit:write`: log events in your tenant.
    Write,
    /// `audit:admin`: everything, across tenants, except personal values in clear.
    Admin,
    /// `audit:pii`: read personal values in clear (docs/privacy.md); `audit:admin` does
    /// not imply it.
    Pii,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "audit:read" => Some(Scope::Read),
            "audit:write" => Some(Scope::Write),
            "audit:admin" => Some(Scope::Admin),
            "audit:pii" => Some(Scope::Pii),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "audit:read",
            Scope::Write => "audit:write",
            Scope::Admin => "audit:admin",
            Scope::Pii => "audit:pii",
        }
    }
}

/// How a principal proved who it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    Open,
    Jwt,
    ApiKey(uuid::Uuid),
}

/// How far past `exp` (or before `nbf`) a token is still accepted, for clocks that differ.
pub const JWT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(30);

/// The caller of a request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The caller's identity (`sub` of a token, `api-key:<name>` of a key).
    pub subject: String,
    /// The tenant the caller acts in; written events always land here.
    pub tenant_id: String,
    pub scopes: Vec<Scope>,
    pub credential: Credential,
    /// When the credential stops being valid (JWT `exp`).
    pub expires_at: Option<DateTime<Utc>>,
}

impl Principal {
    /// The principal of a server running without credentials: every scope, tenant `default`.
    pub fn open() -> Self {
        Principal {
            subject: "anonymous".to_owned(),
            tenant_id: DEFAULT_TENANT.to_owned(),
            scopes: vec![Scope::Read, Scope::Write, Scope::Admin, Scope::Pii],
            credential: Credential::Open,
            expires_at: None,
        }
    }

    /// Whether the principal holds `scope` (admin holds all but `audit:pii`).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || (scope != Scope::Pii && self.scopes.contains(&Scope::Admin))
    }

    /// The tenants a read may cover: your own by default; others only for admins.
    pub fn tenants(&self, requested: Option<Vec<String>>) -> Result<Vec<String>> {
        match requested {
            None => Ok(vec![self.tenant_id.clone()]),
            Some(tenants) if self.has(Scope::Admin) => Ok(tenants),
            Some(tenants) if tenants.iter().all(|t| *t == self.tenant_id) => Ok(tenants),
            Some(_) => Err(Error::Forbidden(
                "reading other tenants needs the audit:admin scope".to_owned(),
            )),
        }
    }

    /// The tenants this principal may read without asking for others.
    pub fn readable_tenants(&self) -> Vec<String> {
        vec![self.tenant_id.clone()]
    }

    /// Whom the rate limiter counts this request against.
    pub fn rate_key(&self) -> String {
        format!("{}\n{}", self.tenant_id, self.subject)
    }
}

/// Why a credential was refused; recorded, and never more precise than needed to the client.
#[derive(Clone, Debug)]
pub struct Denial {
    pub reason: String,
    /// The tenant and subject the credential claimed, when it could be read.
    pub tenant_id: Option<String>,
    pub subject: Option<String>,
}

impl Denial {
    fn new(reason: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            tenant_id: None,
            subject: None,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    tenant_id: String,
    #[serde(default)]
    scope: String,
    exp: i64,
}

/// Verifies JWTs: HS256 with the shared secret, RS256/ES256 with the JWKS keys, each key
/// only with its own algorithm (no `none`, no algorithm confusion).
struct JwtVerifier {
    hs256: Option<DecodingKey>,
    public: Vec<(Option<String>, Algorithm, DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl JwtVerifier {
    fn load(config: &AuthConfig) -> anyhow::Result<Option<Self>> {
        if !config.jwt_configured() {
            return Ok(None);
        }
        let hs256 = config
            .jwt_hs256_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.expose_secret().as_bytes()));
        let mut public = Vec::new();
        if let Some(path) = &config.jwt_jwks_file {
            let set: JwkSet = serde_json::from_slice(&std::fs::read(path)?)?;
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                public.push((
                    jwk.common.key_id.clone(),
                    algorithm,
                    DecodingKey::from_jwk(jwk)?,
                ));
            }
            anyhow::ensure!(
                !public.is_empty(),
                "{} holds no RSA or P-256 key",
                path.display()
            );
        }
        Ok(Some(JwtVerifier {
            hs256,
            public,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        }))
    }

    fn verify(&self, token: &str) -> Result<Principal, Denial> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Denial::new("the token is not a JWT with an accepted algorithm"))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 | Algorithm::ES256 => self
                .public
                .iter()
                .find(|(kid, alg, _)| {
                    *alg == header.alg && (header.kid.is_none() || *kid == header.kid)
                })
                .map(|(_, _, key)| key),
            _ => None,
        }
        .ok_or_else(|| Denial::new(format!("no key accepts {:?} tokens", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = JWT_LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|e| Denial::new(format!("the token was refused: {e}")))?
            .claims;
        // The tenant is written into every event, the subject is an actor id: a token that
        // names values no event could hold is refused, not half-used.
        for (claim, value) in [("tenant_id", &claims.tenant_id), ("sub", &claims.sub)] {
            if check_id(claim, value, MAX_ID_LEN).is_err() {
                return Err(Denial::new(format!(
                    "the token's {claim} is not 1 to {MAX_ID_LEN} characters without control characters"
                )));
            }
        }
        let scopes = claims
            .scope
            .split_whitespace()
            .filter_map(Scope::parse)
            .collect();
        Ok(Principal {
            subject: claims.sub,
            tenant_id: claims.tenant_id,
            scopes,
            credential: Credential::Jwt,
            expires_at: DateTime::from_timestamp(claims.exp, 0),
        })
    }
}

/// An API key lookup (by hash) and when it was made; `None` for an unknown or revoked key.
type CachedKey = (Instant, Option<Principal>);

/// Why a request gets no principal.
#[derive(Debug)]
pub enum Refusal {
    /// The credential is missing or not valid.
    Denied(Denial),
    /// The credential could not be checked (the database did not answer).
    Failed(Error),
}

/// Whether the server runs open, and since when that is known.
#[derive(Clone, Copy)]
struct OpenMode {
    open: bool,
    checked: Instant,
}

/// Turns an `Authorization` header into a principal.
pub struct Authenticator {
    jwt: Option<JwtVerifier>,
    db: DatabaseConnection,
    keys: Mutex<HashMap<Vec<u8>, CachedKey>>,
    open: Mutex<Option<OpenMode>>,
    /// Held by the one request that re-reads open mode; the others use what is known.
    refreshing: tokio::sync::Mutex<()>,
}

impl Authenticator {
    pub fn new(db: DatabaseConnection, config: &AuthConfig) -> anyhow::Result<Self> {
        Ok(Authenticator {
            jwt: JwtVerifier::load(config)?,
            db,
            keys: Mutex::new(HashMap::new()),
            open: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// Open mode: no JWT key configured and no API key ever created. Re-read from the
    /// database every few seconds by one request at a time, so creating the first key
    /// closes the server; nothing reopens it. While the database does not answer, what was
    /// last known holds: an outage neither opens nor closes the server.
    pub async fn is_open(&self) -> Result<bool> {
        if self.jwt.is_some() {
            return Ok(false);
        }
        let known = *self.open.lock().unwrap_or_else(|e| e.into_inner());
        match known {
            Some(mode) if !mode.open => return Ok(false),
            Some(mode) if mode.checked.elapsed() < KEY_CACHE_TTL => return Ok(true),
            _ => {}
        }
        let Ok(_refreshing) = self.refreshing.try_lock() else {
            if let Some(mode) = known {
                return Ok(mode.open);
            }
            // Only at start, before anything is known: wait for the one who asks, then look.
            drop(self.refreshing.lock().await);
            return Box::pin(self.is_open()).await;
        };
        let open = match keys::any_created(&self.db).await {
            Ok(any) => !any,
            Err(err) => match known {
                Some(mode) => {
                    tracing::warn!(error = %err, "open mode not re-read; keeping what was known");
                    mode.open
                }
                None => return Err(err),
            },
        };
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = Some(OpenMode {
            open,
            checked: Instant::now(),
        });
        Ok(open)
    }

    /// The principal an `Authorization` header (or a WebSocket `connection_init` payload's
    /// `authorization`) stands for.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Refusal> {
        if self.is_open().await.map_err(Refusal::Failed)? {
            return Ok(Principal::open());
        }
        let denied = |reason: &str| Refusal::Denied(Denial::new(reason));
        let Some(header) = authorization else {
            return Err(denied("no credential"));
        };
        let Some(token) = header.strip_prefix("Bearer ").map(str::trim) else {
            return Err(denied("the Authorization header is not `Bearer <token>`"));
        };
        if token.starts_with(keys::KEY_PREFIX) {
            return self.api_key(token).await;
        }
        match &self.jwt {
            Some(jwt) => jwt.verify(token).map_err(Refusal::Denied),
            None => Err(denied(
                "JWTs are not accepted here (no JWT key is configured)",
            )),
        }
    }

    async fn api_key(&self, key: &str) -> Result<Principal, Refusal> {
        let hash = keys::hash(key);
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .cloned();
        let principal = match cached {
            Some((at, principal)) if at.elapsed() < KEY_CACHE_TTL => principal,
            _ => {
                let record = keys::find_active(&self.db, &hash)
                    .await
                    .map_err(Refusal::Failed)?;
                let principal = record.map(|k| Principal {
                    subject: format!("api-key:{}", k.name),
                    tenant_id: k.tenant_id,
                    scopes: k
                        .scopes
                        .split_whitespace()
                        .filter_map(Scope::parse)
                        .collect(),
                    credential: Credential::ApiKey(k.id),
                    expires_at: None,
                });
                let mut cache = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                cache.retain(|_, (at, _)| at.elapsed() < KEY_CACHE_TTL);
                cache.insert(hash, (Instant::now(), principal.clone()));
                principal
            }
        };
        principal.ok_or_else(|| Refusal::Denied(Denial::new("unknown or revoked API key")))
    }
}
