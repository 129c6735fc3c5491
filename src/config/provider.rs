//! `[[providers]]`: one token issuer, its key source, claim rules and mirror timing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[[providers]]`: one token issuer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// Short name used in metrics, logs and admin URLs.
    pub name: String,
    /// Exact `iss` value of this provider's tokens.
    pub issuer: String,
    /// JWKS URL.
    pub jwks_uri: Option<String>,
    /// OIDC discovery document URL (its `issuer` must equal `issuer`).
    pub discovery_url: Option<String>,
    /// Use OIDC discovery at `issuer` + `/.well-known/openid-configuration`.
    pub discovery: bool,
    /// A JWKS file on disk (re-read at every refresh).
    pub jwks_file: Option<PathBuf>,
    /// An inline JWKS (a TOML table with `keys`).
    pub jwks: Option<serde_json::Value>,
    /// An inline PEM public key or certificate, or the bare base64 of a public key (Clerk's
    /// dashboard "JWT Verification Key" is a PEM without header and footer); no kid.
    pub public_key_pem: Option<String>,
    /// The name of an environment variable holding what `public_key_pem` would (PEM or bare
    /// base64), e.g. Clerk's `CLERK_JWT_KEY`. Read when the config is loaded.
    pub public_key_env: Option<String>,
    /// Accepted audiences: the token's audience claim must contain one of them.
    pub audiences: Vec<String>,
    /// Claim checked against `audiences` (`aud`; Cognito access tokens use `client_id`).
    pub audience_claim: String,
    /// Allowed signature algorithms (default: every supported asymmetric algorithm).
    pub algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Reject tokens without `exp`.
    pub require_exp: bool,
    /// Longest token lifetime accepted (unset: no bound): a token whose `exp` lies further
    /// than this beyond now, or beyond its `iat`, is refused (`lifetime_too_long`); with a
    /// bound set, `exp` is required. Kong's `maximum_expiration` is the precedent.
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Option<Duration>,
    /// Accepted `typ` header values (empty: any). Compared case-insensitively, `application/` optional.
    pub typ: Vec<String>,
    /// `"rfc9068"`: tokens must follow the JWT access-token profile (typ `at+jwt`; iss, exp,
    /// aud, sub, client_id, iat and jti present), and ID tokens are refused as such.
    pub profile: Option<String>,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Proof of possession required of this provider's tokens (a rule's setting wins).
    pub sender_constraint: super::SenderConstraint,
    /// Scopes (from `scope` or `scp`) that must all be present, else 403.
    pub required_scopes: Vec<String>,
    /// Verified claim (top-level name or dotted path) -> request header sent upstream.
    pub claim_headers: BTreeMap<String, String>,
    /// Allow `http://` JWKS/discovery URLs for non-loopback hosts.
    pub allow_insecure_http: bool,
    /// How often keys are refetched when the JWKS response has no caching headers.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Lower clamp for `Cache-Control: max-age` / `Expires` (Auth0 sends 15 s).
    #[serde(with = "humantime_serde")]
    pub min_refresh: Duration,
    /// Upper clamp for caching headers (Okta may say weeks).
    #[serde(with = "humantime_serde")]
    pub max_refresh: Duration,
    /// After the keys' freshness lapses and refreshes keep failing, keep serving them this
    /// long; then the provider has no keys and its requests get 503.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// At most one unknown-kid refetch per this interval (per provider).
    #[serde(with = "humantime_serde")]
    pub kid_miss_min_interval: Duration,
    /// How long a request with an unknown kid waits for the refetch it triggered.
    #[serde(with = "humantime_serde")]
    pub kid_miss_wait: Duration,
    /// A key missing from this many consecutive successful fetches is dropped (1: at once).
    pub key_removal_confirmations: u32,
    /// Most keys taken from one JWKS document.
    pub max_keys: usize,
    /// Extra PEM CA certificates trusted for this provider's fetches (besides webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Extra request headers for fetches, read from the environment or a file at each fetch.
    pub fetch_headers: Vec<FetchHeader>,
    /// Entra multi-tenant: the claim holding the tenant id substituted for `{tenantid}`
    /// in `issuer`.
    pub tenant_claim: String,
    /// With a `{tenantid}` issuer: the accepted tenants (empty: any).
    pub allowed_tenants: Vec<String>,
    /// Timeout for one JWKS or discovery fetch.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// Largest JWKS or discovery body accepted.
    pub max_jwks_bytes: usize,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: String::new(),
            issuer: String::new(),
            jwks_uri: None,
            discovery_url: None,
            discovery: false,
            jwks_file: None,
            jwks: None,
            public_key_pem: None,
            public_key_env: None,
            audiences: Vec::new(),
            audience_claim: "aud".into(),
            algorithms: Vec::new(),
            leeway: Duration::from_secs(60),
            require_exp: true,
            max_token_lifetime: None,
            typ: Vec::new(),
            profile: None,
            required_claims: Vec::new(),
            sender_constraint: super::SenderConstraint::Optional,
            required_scopes: Vec::new(),
            claim_headers: BTreeMap::new(),
            allow_insecure_http: false,
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            max_stale: Duration::from_secs(12 * 3600),
            kid_miss_min_interval: Duration::from_secs(30),
            kid_miss_wait: Duration::from_secs(2),
            key_removal_confirmations: 2,
            max_keys: 100,
            ca_file: None,
            fetch_headers: Vec::new(),
            tenant_claim: "tid".into(),
            allowed_tenants: Vec::new(),
            fetch_timeout: Duration::from_secs(10),
            max_jwks_bytes: 1024 * 1024,
        }
    }
}

/// `[[providers.fetch_headers]]`: one header added to JWKS/discovery requests. Its value is
/// read at each fetch (so rotated secrets apply) and never logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FetchHeader {
    /// Header name, e.g. `authorization`.
    pub name: String,
    /// Read the value from this environment variable.
    pub value_from_env: Option<String>,
    /// Read the value from this file (trailing newline trimmed), e.g. a service-account token.
    pub value_from_file: Option<PathBuf>,
    /// Put before the value, e.g. `"Bearer "`.
    #[serde(default)]
    pub prefix: String,
}
