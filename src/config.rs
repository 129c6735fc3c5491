//! Configuration: one typed tree, loaded in layers and validated before anything starts.
//!
//! Layers, lowest first: built-in defaults < TOML file < `JWKS_SIDECAR_*` environment
//! (nesting with `__`, e.g. `JWKS_SIDECAR_PROXY__LISTEN`) < command-line flags. Unknown keys
//! are errors, so a typo never silently falls back to a default. `validate()` collects every
//! problem at once and says which key is wrong and how to fix it. This is the only module
//! that reads the environment.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Environment variable prefix for every key.
pub const ENV_PREFIX: &str = "JWKS_SIDECAR_";

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The inline reverse proxy.
    pub proxy: ProxyConfig,
    /// Metrics, health and status endpoints.
    pub admin: AdminConfig,
    /// The decision service for gateways (ext_authz, forward-auth).
    pub authz: AuthzConfig,
    /// Log format and level.
    pub log: LogConfig,
    /// Settings shared by every provider's key mirror.
    pub jwks: JwksConfig,
    /// The verified-token cache.
    pub token_cache: TokenCacheConfig,
    /// Token issuers whose keys are mirrored.
    pub providers: Vec<ProviderConfig>,
    /// Route rules, first match wins (after `proxy.public_paths`).
    pub rules: Vec<RuleConfig>,
    /// What happens to requests that match no rule.
    pub default_rule: DefaultRuleConfig,
    /// Live reload of the config file.
    pub reload: ReloadConfig,
    /// The async runtime.
    pub runtime: RuntimeConfig,
}

/// `[runtime]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads (0: one per CPU the process may use). A sidecar often wants 1 or 2.
    pub worker_threads: usize,
}

/// `[[rules]]`: one route rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// A name for logs, `check` and `explain` (default: `rules[N]`).
    pub name: Option<String>,
    /// What the rule applies to; all given conditions must hold.
    #[serde(rename = "match")]
    pub matches: MatchConfig,
    /// No token needed (identity headers are still stripped).
    pub public: bool,
    /// Verify a token if present (reject if invalid); forward without identity if absent.
    pub allow_anonymous: bool,
    /// Authorization requirements for authenticated requests.
    pub require: Option<RequireConfig>,
    /// Status when `require` fails (default 403 `insufficient_scope`).
    pub deny_status: Option<u16>,
}

/// `match = { ... }`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// Exact normalised path.
    pub path: Option<String>,
    /// Segment-wise path prefix (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Regular expression matched against the whole normalised path (anchored).
    pub path_regex: Option<String>,
    /// Host (without port), case-insensitive; `*.example.com` matches one or more labels.
    pub host: Option<String>,
    /// HTTP methods (empty: any).
    pub methods: Vec<String>,
}

/// `require = { ... }`: every given condition must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequireConfig {
    /// The token's provider is one of these.
    pub providers: Vec<String>,
    /// The token's audience claim contains one of these.
    pub audiences: Vec<String>,
    /// All of these scopes are granted (`scope`/`scp`).
    pub scopes: Vec<String>,
    /// Claim (name or dotted path) -> matcher: a value (equals), a list (one of), or
    /// `{ equals = v }`, `{ one_of = [..] }`, `{ contains = v }` (arrays), `{ present = true }`.
    pub claims: BTreeMap<String, ClaimMatcherConfig>,
    /// At least one of these nested requirements holds.
    pub any: Vec<RequireConfig>,
    /// All of these nested requirements hold.
    pub all: Vec<RequireConfig>,
}

/// How a claim is matched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ClaimMatcherConfig {
    /// A list: the claim equals one of them (or, for an array claim, contains one of them).
    OneOf(Vec<serde_json::Value>),
    /// A table with one operator.
    Op(ClaimOp),
    /// A scalar: the claim equals it (or, for an array claim, contains it).
    Equals(serde_json::Value),
}

/// `{ equals | one_of | contains | present }`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimOp {
    /// Equal to this value.
    pub equals: Option<serde_json::Value>,
    /// Equal to one of these.
    pub one_of: Option<Vec<serde_json::Value>>,
    /// An array claim containing this value.
    pub contains: Option<serde_json::Value>,
    /// Present (true) or absent (false).
    pub present: Option<bool>,
}

/// `[default_rule]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultRuleConfig {
    /// `authenticate` (a valid token from any provider), `deny` (403) or `public`.
    pub action: DefaultAction,
}

impl Default for DefaultRuleConfig {
    fn default() -> Self {
        DefaultRuleConfig {
            action: DefaultAction::Authenticate,
        }
    }
}

/// What unmatched requests get.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// A valid token from any provider.
    #[default]
    Authenticate,
    /// 403 for everyone.
    Deny,
    /// No token needed.
    Public,
}

/// `[reload]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Watch the config file (by content, so Kubernetes ConfigMap symlink swaps are seen);
    /// SIGHUP reloads at once either way.
    pub watch: bool,
    /// How often the file is checked.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            interval: Duration::from_secs(2),
        }
    }
}

/// `[proxy]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Where allowed requests go: `http://` or `https://` (rustls) origin.
    pub upstream: String,
    /// Path prefixes (segment-wise) served without a token; identity headers are still stripped.
    pub public_paths: Vec<String>,
    /// Inbound headers whose name starts with this prefix (case-insensitive, `_` read as `-`)
    /// are always removed.
    pub identity_header_prefix: String,
    /// If set, the verified claims (base64url JSON, as in the token) go upstream in this header.
    pub payload_header: Option<String>,
    /// Pass the `Authorization` header on to the app.
    pub forward_authorization: bool,
    /// `realm` in `WWW-Authenticate`.
    pub realm: String,
    /// Tokens longer than this are rejected before any parsing.
    pub max_token_bytes: usize,
    /// Accept `%2F` / `%5C` in paths (kept encoded) instead of answering 400.
    pub allow_encoded_slash: bool,
    /// Accept an encoded percent sign that encodes a dot, slash, backslash or control
    /// character (`%252e`, `%252F`, `%255c`) instead of answering 400.
    pub allow_double_encoding: bool,
    /// Accept `;` path parameters (`/a;jsessionid=1`) instead of answering 400. Rules then
    /// match the segment with its parameters, while Tomcat, Jetty or Spring apps route
    /// without them: only turn this on for apps that do not strip them.
    pub allow_path_parameters: bool,
    /// How array claims become header values: `comma` (a,b) or `json` (["a","b"]).
    pub array_claim_format: ArrayClaimFormat,
    /// Longest claim header value; longer values are dropped and counted.
    pub max_claim_header_bytes: usize,
    /// Where tokens are taken from besides `Authorization: Bearer`.
    pub token: TokenSources,
    /// Serve TLS on the proxy listener.
    pub tls: Option<TlsConfig>,
    /// Connect timeout towards the upstream (answer: 502).
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// Time allowed for the upstream's response headers (answer: 504).
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Largest response head accepted from the upstream (then 502).
    pub max_upstream_header_bytes: usize,
    /// Time a client has to send its request headers (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Grace period for in-flight requests after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Open connections per listener; at the cap, accepting pauses (back-pressure) until one closes.
    pub max_connections: usize,
    /// Largest request head (request line and headers) over HTTP/1 (then 431), and header list over HTTP/2.
    pub max_header_bytes: usize,
    /// Most request headers over HTTP/1 (then 431).
    pub max_headers: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// What happens to a claim over `max_claim_header_bytes`: `drop` the header (counted) or
    /// `reject` the request (401, reason claim_too_large). Never truncated.
    pub oversize_claim: OversizeClaim,
}

/// Policy for claim values too long for a header.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OversizeClaim {
    /// Forward without that header, and count it.
    #[default]
    Drop,
    /// Refuse the request with 401.
    Reject,
}

impl ProxyConfig {
    /// The path forms this proxy accepts (see `path`).
    pub fn path_options(&self) -> crate::path::PathOptions {
        crate::path::PathOptions {
            allow_encoded_slash: self.allow_encoded_slash,
            allow_double_encoding: self.allow_double_encoding,
            allow_path_parameters: self.allow_path_parameters,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            upstream: "http://127.0.0.1:3000".into(),
            public_paths: Vec::new(),
            identity_header_prefix: "x-jwt-".into(),
            payload_header: None,
            forward_authorization: true,
            realm: "jwks-sidecar".into(),
            max_token_bytes: 16 * 1024,
            allow_encoded_slash: false,
            allow_double_encoding: false,
            allow_path_parameters: false,
            array_claim_format: ArrayClaimFormat::Comma,
            max_claim_header_bytes: 4096,
            token: TokenSources::default(),
            tls: None,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            max_upstream_header_bytes: 256 * 1024,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_h2_streams: 256,
            oversize_claim: OversizeClaim::Drop,
        }
    }
}

/// How an array claim is rendered into one header value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArrayClaimFormat {
    /// Elements joined with `,`.
    #[default]
    Comma,
    /// Compact JSON.
    Json,
}

/// `[proxy.token]`: extra places a token may come from (all off by default).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSources {
    /// A header carrying the bare token (no scheme), e.g. `x-access-token`.
    pub header: Option<String>,
    /// A cookie name.
    pub cookie: Option<String>,
    /// A query parameter name (discouraged by RFC 6750: tokens end up in logs).
    pub query: Option<String>,
}

/// `[proxy.tls]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, `/providers`, `/jwks/{name}`).
    /// Keep it on loopback or a pod-internal port.
    pub listen: Option<SocketAddr>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
        }
    }
}

/// `[authz]`: the decision service. Each endpoint trusts only its own gateway's headers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// HTTP decision listener (off when unset).
    pub listen: Option<SocketAddr>,
    /// gRPC `envoy.service.auth.v3.Authorization` + `grpc.health.v1` listener (off when unset).
    pub grpc_listen: Option<SocketAddr>,
    /// Envoy http_service: requests arrive as `path_prefix` + original path and query.
    pub path_prefix: String,
    /// nginx `auth_request` endpoint (reads `X-Original-URI`, `X-Original-Method`).
    pub nginx_path: String,
    /// Traefik ForwardAuth / Caddy `forward_auth` endpoint (reads `X-Forwarded-Uri`, `X-Forwarded-Method`).
    pub forward_path: String,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            listen: None,
            grpc_listen: None,
            path_prefix: "/authz".into(),
            nginx_path: "/nginx".into(),
            forward_path: "/forward".into(),
        }
    }
}

/// `[jwks]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwksConfig {
    /// Directory where each provider's last good key set is persisted (atomically) and
    /// reloaded at start if still within `max_stale`. Unset: no persistence.
    pub cache_dir: Option<PathBuf>,
}

/// `[token_cache]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheConfig {
    /// Remember verified tokens (keyed by SHA-256 of the token) so a repeated token skips
    /// the signature check. `exp`/`nbf` are re-checked on every hit, and an entry is void
    /// as soon as its key leaves the key set.
    pub enabled: bool,
    /// Most tokens remembered.
    pub max_entries: usize,
    /// Approximate memory bound for cached claims.
    pub max_bytes: usize,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        TokenCacheConfig {
            enabled: true,
            max_entries: 10_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (JSON unless stderr is a terminal), `json` or `text`.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax, e.g. `info` or `jwks_sidecar=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

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
    /// Claims that must be present.
    pub required_claims: Vec<String>,
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
            required_claims: Vec::new(),
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

/// Where a provider's keys come from, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// Fetch this URL.
    Uri(String),
    /// Fetch this discovery document, then its `jwks_uri`.
    Discovery(String),
    /// Read this file.
    File(PathBuf),
    /// Use this JWKS document.
    Inline(serde_json::Value),
    /// Use this PEM public key or certificate.
    Pem(String),
}

impl ProviderConfig {
    /// The single key source; `validate()` guarantees there is exactly one.
    pub fn key_source(&self) -> Option<KeySource> {
        if let Some(u) = &self.jwks_uri {
            return Some(KeySource::Uri(u.clone()));
        }
        if let Some(u) = &self.discovery_url {
            return Some(KeySource::Discovery(u.clone()));
        }
        if self.discovery {
            return Some(KeySource::Discovery(format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            )));
        }
        if let Some(p) = &self.jwks_file {
            return Some(KeySource::File(p.clone()));
        }
        if let Some(pem) = &self.public_key_pem {
            return Some(KeySource::Pem(pem.clone()));
        }
        if let Some(var) = &self.public_key_env {
            return Some(KeySource::Pem(std::env::var(var).unwrap_or_default()));
        }
        self.jwks.clone().map(KeySource::Inline)
    }
}

/// Values given on the command line; each one set overrides every other layer.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--upstream`
    pub upstream: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--issuer`: with `--jwks-uri` (or discovery) and `--audience`, defines one provider.
    pub issuer: Option<String>,
    /// `--jwks-uri`
    pub jwks_uri: Option<String>,
    /// `--audience` (repeatable)
    pub audiences: Vec<String>,
}

/// Loading or validation failed.
#[derive(Debug)]
pub enum ConfigError {
    /// The file, environment or flags could not be read into the typed tree.
    Load(Box<figment::Error>),
    /// The tree was read but is not usable; one line per problem.
    Invalid(Vec<String>),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Load(e) => {
                writeln!(f, "configuration could not be read:")?;
                for err in (**e).clone() {
                    writeln!(f, "  - {err}")?;
                }
                Ok(())
            }
            ConfigError::Invalid(problems) => {
                writeln!(f, "configuration is invalid:")?;
                for p in problems {
                    writeln!(f, "  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The config file named by `JWKS_SIDECAR_CONFIG`, if any.
pub fn config_file_from_env() -> Option<PathBuf> {
    std::env::var_os(format!("{ENV_PREFIX}CONFIG")).map(PathBuf::from)
}

/// Loads defaults < file < environment < CLI, then validates.
pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
    let config = figment(file, cli)
        .extract::<Config>()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    config.validate(file)?;
    Ok(config)
}

/// Parses TOML text alone (no environment), then validates. Used by tests and `check`.
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    let config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract::<Config>()
        .map_err(|e| ConfigError::Load(Box::new(e)))?;
    config.validate(None)?;
    Ok(config)
}

fn figment(file: Option<&Path>, cli: &CliOverrides) -> Figment {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    // Every option lives in a section, so only nested names (`SECTION__KEY`) are config.
    // This ignores JWKS_SIDECAR_CONFIG and the variables Kubernetes injects for a Service
    // named jwks-sidecar (JWKS_SIDECAR_PORT, JWKS_SIDECAR_SERVICE_HOST, ...).
    fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    if let Some(v) = cli.listen {
        fig = fig.merge(Serialized::default("proxy.listen", v));
    }
    if let Some(v) = &cli.upstream {
        fig = fig.merge(Serialized::default("proxy.upstream", v));
    }
    if let Some(v) = cli.admin_listen {
        fig = fig.merge(Serialized::default("admin.listen", v));
    }
    if let Some(issuer) = &cli.issuer {
        let provider = ProviderConfig {
            name: "default".into(),
            issuer: issuer.clone(),
            jwks_uri: cli.jwks_uri.clone(),
            discovery: cli.jwks_uri.is_none(),
            audiences: cli.audiences.clone(),
            claim_headers: BTreeMap::from([("sub".to_string(), "x-jwt-sub".to_string())]),
            ..ProviderConfig::default()
        };
        fig = fig.merge(Serialized::default("providers", vec![provider]));
    }
    fig
}

/// Every algorithm name the verifier supports.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl Config {
    /// Checks everything the type system cannot; all problems are reported together.
    pub fn validate(&self, file: Option<&Path>) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        let src = file
            .map(|f| format!("{}: ", f.display()))
            .unwrap_or_default();

        match http::Uri::try_from(self.proxy.upstream.as_str()) {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                if u.path() != "/" && !u.path().is_empty() {
                    p.push(format!("{src}proxy.upstream = {:?}: give only scheme, host and port (no path); the request path is kept as sent", self.proxy.upstream));
                }
            }
            _ => p.push(format!(
                "{src}proxy.upstream = {:?} is not an http:// or https:// URL; example: \"http://127.0.0.1:3000\"",
                self.proxy.upstream
            )),
        }
        if self.proxy.identity_header_prefix.is_empty() {
            p.push(format!(
                "{src}proxy.identity_header_prefix must not be empty (default \"x-jwt-\")"
            ));
        } else if http::HeaderName::try_from(self.proxy.identity_header_prefix.as_str()).is_err() {
            p.push(format!(
                "{src}proxy.identity_header_prefix = {:?} is not a valid header name prefix",
                self.proxy.identity_header_prefix
            ));
        }
        if let Some(h) = &self.proxy.payload_header {
            check_header_name(&mut p, &src, "proxy.payload_header", h);
        }
        if let Some(h) = &self.proxy.token.header {
            check_header_name(&mut p, &src, "proxy.token.header", h);
        }
        for (i, path) in self.proxy.public_paths.iter().enumerate() {
            if !path.starts_with('/') {
                p.push(format!(
                    "{src}proxy.public_paths[{i}] = {path:?} must start with '/'"
                ));
            }
        }
        if self.proxy.max_header_bytes < 8192 {
            p.push(format!(
                "{src}proxy.max_header_bytes = {} is below 8192 (the smallest HTTP/1 buffer)",
                self.proxy.max_header_bytes
            ));
        }
        if self.proxy.max_connections == 0
            || self.proxy.max_headers == 0
            || self.proxy.max_h2_streams == 0
        {
            p.push(format!(
                "{src}proxy.max_connections, max_headers and max_h2_streams must be at least 1"
            ));
        }
        if self.proxy.max_token_bytes < 64 {
            p.push(format!(
                "{src}proxy.max_token_bytes = {} is too small (default 16384)",
                self.proxy.max_token_bytes
            ));
        }
        if let Some(tls) = &self.proxy.tls {
            for (key, f) in [
                ("proxy.tls.cert_file", &tls.cert_file),
                ("proxy.tls.key_file", &tls.key_file),
            ] {
                if !f.is_file() {
                    p.push(format!("{src}{key} = {:?}: no such file", f.display()));
                }
            }
        }
        let a = &self.authz;
        for (key, v) in [
            ("authz.path_prefix", &a.path_prefix),
            ("authz.nginx_path", &a.nginx_path),
            ("authz.forward_path", &a.forward_path),
        ] {
            if !v.starts_with('/') || v.len() < 2 || v.ends_with('/') {
                p.push(format!("{src}{key} = {v:?}: use a path such as \"/authz\" (leading '/', no trailing '/')"));
            }
        }
        for other in [&a.nginx_path, &a.forward_path] {
            if crate::path::prefix_matches(other, &a.path_prefix) || other == &a.path_prefix {
                p.push(format!("{src}authz: {other:?} lies under path_prefix {:?}; the Envoy endpoint would shadow it", a.path_prefix));
            }
        }
        if a.nginx_path == a.forward_path {
            p.push(format!(
                "{src}authz.nginx_path and authz.forward_path must differ"
            ));
        }
        if self.providers.is_empty() {
            p.push(format!(
                "{src}no [[providers]] configured: add one with name, issuer, jwks_uri (or discovery = true) and audiences"
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut issuers = std::collections::HashSet::new();
        for (i, prov) in self.providers.iter().enumerate() {
            let at = format!("{src}providers[{i}]");
            if prov.name.is_empty()
                || !prov
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push(format!("{at}.name = {:?}: use letters, digits, '-' or '_' (it appears in metrics and URLs)", prov.name));
            } else if !names.insert(prov.name.clone()) {
                p.push(format!(
                    "{at}.name = {:?} is used by two providers; names must be unique",
                    prov.name
                ));
            }
            if prov.issuer.is_empty() {
                p.push(format!(
                    "{at}.issuer is required: the exact `iss` of this provider's tokens"
                ));
            } else if !issuers.insert(prov.issuer.clone()) {
                p.push(format!("{at}.issuer = {:?} is used by two providers; the issuer selects the provider, so it must be unique", prov.issuer));
            }
            let sources = [
                prov.jwks_uri.is_some(),
                prov.discovery_url.is_some() || prov.discovery,
                prov.jwks_file.is_some(),
                prov.jwks.is_some(),
                prov.public_key_pem.is_some(),
                prov.public_key_env.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if sources != 1 {
                p.push(format!("{at} ({}): set exactly one of jwks_uri, discovery_url (or discovery = true), jwks_file, jwks, public_key_pem, public_key_env; found {sources}", prov.name));
            }
            // The inline key, from the config or the environment, is parsed here so that
            // unusable key material is a config error, not a provider without keys.
            let inline_key = match (&prov.public_key_pem, &prov.public_key_env) {
                (Some(pem), _) => Some(pem.clone()),
                (None, Some(var)) => match std::env::var(var) {
                    Ok(v) if !v.trim().is_empty() => Some(v),
                    _ => {
                        p.push(format!("{at}.public_key_env = {var:?}: that environment variable is not set (it should hold the provider's public key, PEM or bare base64)"));
                        None
                    }
                },
                _ => None,
            };
            if let Some(text) = inline_key {
                let policy = crate::jwks::ParsePolicy {
                    algorithms: crate::auth::provider::Provider::algorithms(prov),
                    max_keys: prov.max_keys,
                };
                match crate::jwks::KeySet::parse(text.as_bytes(), &policy) {
                    Ok((set, _)) if !set.is_empty() => {}
                    Ok((_, skipped)) => p.push(format!(
                        "{at} ({}): the public key holds no usable signing key ({}); expected a PEM public key or certificate, or the bare base64 of a SubjectPublicKeyInfo (RSA, EC P-256/P-384/P-521 or Ed25519) allowed by `algorithms`",
                        prov.name,
                        skipped.first().map_or("no key", |s| s.reason)
                    )),
                    Err(e) => p.push(format!("{at} ({}): {e}", prov.name)),
                }
            }
            for (key, url) in [
                ("jwks_uri", &prov.jwks_uri),
                ("discovery_url", &prov.discovery_url),
            ] {
                if let Some(url) = url {
                    check_fetch_url(
                        &mut p,
                        &format!("{at}.{key}"),
                        url,
                        prov.allow_insecure_http,
                    );
                }
            }
            if prov.discovery && prov.discovery_url.is_none() {
                check_fetch_url(
                    &mut p,
                    &format!("{at}.issuer (discovery)"),
                    &prov.issuer,
                    prov.allow_insecure_http,
                );
            }
            if let Some(f) = &prov.jwks_file {
                if !f.is_file() {
                    p.push(format!("{at}.jwks_file = {:?}: no such file", f.display()));
                }
            }
            if prov.audiences.is_empty() {
                p.push(format!("{at} ({}): audiences is empty; list the audience(s) your API accepts, e.g. audiences = [\"https://api.example.com\"]", prov.name));
            }
            for alg in &prov.algorithms {
                if !SUPPORTED_ALGORITHMS.contains(&alg.as_str()) {
                    p.push(format!(
                        "{at}.algorithms: {alg:?} is not supported; choose from {}",
                        SUPPORTED_ALGORITHMS.join(", ")
                    ));
                }
            }
            for (claim, header) in &prov.claim_headers {
                if claim.is_empty() {
                    p.push(format!("{at}.claim_headers: empty claim name"));
                }
                check_header_name(
                    &mut p,
                    &src,
                    &format!("providers[{i}].claim_headers.{claim:?}"),
                    header,
                );
            }
            if prov.refresh_interval < Duration::from_secs(1) {
                p.push(format!("{at}.refresh_interval must be at least 1s"));
            }
            if prov.min_refresh > prov.max_refresh {
                p.push(format!(
                    "{at}: min_refresh ({:?}) is larger than max_refresh ({:?})",
                    prov.min_refresh, prov.max_refresh
                ));
            }
            if prov.key_removal_confirmations == 0 {
                p.push(format!("{at}.key_removal_confirmations must be at least 1 (1 = drop a key as soon as it is missing)"));
            }
            if prov.max_keys == 0 {
                p.push(format!("{at}.max_keys must be at least 1"));
            }
            if let Some(f) = &prov.ca_file {
                if !f.is_file() {
                    p.push(format!("{at}.ca_file = {:?}: no such file", f.display()));
                }
            }
            for (j, h) in prov.fetch_headers.iter().enumerate() {
                if http::HeaderName::try_from(h.name.as_str()).is_err() {
                    p.push(format!(
                        "{at}.fetch_headers[{j}].name = {:?} is not a valid HTTP header name",
                        h.name
                    ));
                }
                if h.value_from_env.is_some() == h.value_from_file.is_some() {
                    p.push(format!("{at}.fetch_headers[{j}] ({}): set exactly one of value_from_env, value_from_file", h.name));
                }
            }
            if prov.issuer.contains('{') && !prov.issuer.contains("{tenantid}") {
                p.push(format!(
                    "{at}.issuer = {:?}: the only supported placeholder is {{tenantid}}",
                    prov.issuer
                ));
            }
        }
        if let Err(mut errs) = crate::rules::Rules::compile(self) {
            for e in &mut errs {
                *e = format!("{src}{e}");
            }
            p.append(&mut errs);
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(p))
        }
    }
}

fn check_header_name(p: &mut Vec<String>, src: &str, key: &str, name: &str) {
    if http::HeaderName::try_from(name).is_err() {
        p.push(format!(
            "{src}{key} = {name:?} is not a valid HTTP header name"
        ));
    }
    if matches!(
        name.to_ascii_lowercase().as_str(),
        "host" | "authorization" | "connection" | "content-length" | "transfer-encoding" | "cookie"
    ) {
        p.push(format!(
            "{src}{key} = {name:?} would overwrite a header the request needs; choose another name"
        ));
    }
}

fn check_fetch_url(p: &mut Vec<String>, key: &str, url: &str, allow_insecure_http: bool) {
    match http::Uri::try_from(url) {
        Ok(u) => match u.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let host = u.host().unwrap_or("");
                if !allow_insecure_http && !is_loopback_host(host) {
                    p.push(format!("{key} = {url:?}: http:// is only allowed for loopback hosts; use https:// or set allow_insecure_http = true"));
                }
            }
            _ => p.push(format!("{key} = {url:?} must be an https:// URL")),
        },
        Err(_) => p.push(format!("{key} = {url:?} is not a valid URL")),
    }
}

/// `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[providers]]
        name = "a"
        issuer = "https://a.example/"
        jwks_uri = "https://a.example/jwks.json"
        audiences = ["api"]
    "#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = from_toml_str(MINIMAL).expect("valid");
        assert_eq!(c.proxy.identity_header_prefix, "x-jwt-");
        assert_eq!(c.providers[0].leeway, Duration::from_secs(60));
        assert_eq!(
            c.admin.listen,
            Some("127.0.0.1:9901".parse().expect("addr"))
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = from_toml_str(&format!(
            "{MINIMAL}\n[proxy]\nlisten_addr = \"0.0.0.0:1\"\n"
        ))
        .expect_err("typo");
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn insecure_http_jwks_rejected_for_remote_hosts() {
        let text = MINIMAL.replace("https://a.example/jwks.json", "http://a.example/jwks.json");
        let err = from_toml_str(&text).expect_err("http");
        assert!(err.to_string().contains("allow_insecure_http"), "{err}");
        let ok = MINIMAL.replace(
            "https://a.example/jwks.json",
            "http://127.0.0.1:9/jwks.json",
        );
        assert!(from_toml_str(&ok).is_ok());
    }

    #[test]
    fn two_key_sources_rejected() {
        let text = format!("{MINIMAL}jwks_file = \"/nonexistent\"\n");
        let err = from_toml_str(&text).expect_err("two sources");
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn durations_are_humantime_strings() {
        let c = from_toml_str(&format!(
            "{MINIMAL}leeway = \"5s\"\nrefresh_interval = \"2m\"\n"
        ))
        .expect("ok");
        assert_eq!(c.providers[0].leeway, Duration::from_secs(5));
        assert_eq!(c.providers[0].refresh_interval, Duration::from_secs(120));
    }
}
