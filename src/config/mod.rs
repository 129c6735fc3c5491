//! Configuration: one typed tree, loaded in layers, then compiled (see `plan`).
//!
//! - this file and `rules`, `provider`: the serde types, one doc line and a default per field;
//! - `load`: figment layering, defaults < TOML file < `JWKS_SIDECAR_*` environment (nesting
//!   with `__`, e.g. `JWKS_SIDECAR_PROXY__LISTEN`) < command-line flags;
//! - `validate`: every problem of the values themselves, each naming file, key, value and fix.
//!
//! Unknown keys are errors, so a typo never silently falls back to a default. Turning a
//! `Config` into runtime objects is `plan::compile`'s job alone; this module depends on
//! nothing but leaves (`path`, `jose`).

mod load;
mod provider;
mod rules;
mod validate;

pub use load::{config_file_from_env, from_toml_str, load, CliOverrides, ConfigError, ENV_PREFIX};
pub use provider::{FetchHeader, ProviderConfig};
pub use rules::{
    ClaimMatcherConfig, ClaimOp, DefaultAction, DefaultRuleConfig, MatchConfig, RequireConfig,
    RuleConfig,
};
pub use validate::{is_loopback_host, problems};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// OAuth protected-resource metadata (RFC 9728).
    pub resource: ResourceConfig,
    /// A signed identity for the app on every allowed request.
    pub assertion: AssertionConfig,
    /// DPoP proofs (RFC 9449).
    pub dpop: DpopConfig,
}

/// `[dpop]`: how DPoP proofs (RFC 9449) are checked. Always on: a `DPoP`-scheme token is
/// verified with its proof, and a DPoP-bound token presented as `Bearer` is refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DpopConfig {
    /// Proof algorithms accepted (asymmetric only; default: every supported one).
    pub algorithms: Vec<String>,
    /// How old a proof's `iat` may be.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Clock skew tolerated on `iat` (both ways).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Most proof `jti`s remembered against replay.
    pub replay_cache_entries: usize,
    /// Require a server nonce in every proof (RFC 9449 section 9): a proof without a valid
    /// one gets 401 `use_dpop_nonce` with a fresh `DPoP-Nonce`.
    pub nonce: bool,
    /// How long a nonce is accepted.
    #[serde(with = "humantime_serde")]
    pub nonce_lifetime: Duration,
    /// A file of at least 32 random bytes that keys the nonces, so replicas and restarts
    /// accept each other's nonces. Unset: a key made at start (nonces die with the process).
    pub nonce_secret_file: Option<PathBuf>,
}

impl Default for DpopConfig {
    fn default() -> Self {
        DpopConfig {
            algorithms: Vec::new(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            replay_cache_entries: 100_000,
            nonce: false,
            nonce_lifetime: Duration::from_secs(300),
            nonce_secret_file: None,
        }
    }
}

/// Which proof of possession a token must come with (`sender_constraint`). Whatever is
/// set, a token that is bound (`cnf.jkt` or `cnf["x5t#S256"]`) must come with its proof.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SenderConstraint {
    /// Bearer tokens accepted; bound tokens still need their proof.
    #[default]
    Optional,
    /// A DPoP-bound token with a valid proof.
    Dpop,
    /// A certificate-bound token (RFC 8705) over mutual TLS.
    Mtls,
    /// Either.
    Any,
}

/// `[assertion]`: a short-lived JWT signed by the sidecar's own key on every allowed request,
/// so the app verifies one local key set whatever the identity provider, and a request that
/// did not pass the sidecar carries no valid assertion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionConfig {
    /// Add the assertion to allowed requests.
    pub enabled: bool,
    /// The header that carries it (client copies are stripped like every identity header).
    pub header: String,
    /// Its `iss`: this sidecar's name.
    pub issuer: String,
    /// Its `aud`: the app.
    pub audience: String,
    /// Lifetime; never beyond the original token's `exp`.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Verified claims copied into it (besides iss, aud, iat, exp, jti, provider, token_iss).
    pub claims: Vec<String>,
    /// `ES256` or `EdDSA`.
    pub algorithm: String,
    /// PKCS#8 PEM private keys (e.g. a mounted Kubernetes Secret) so replicas agree: the
    /// first signs, every one is published; re-read when it changes. Unset: keys are
    /// generated (at start, then every `rotate_every`).
    pub key_file: Option<PathBuf>,
    /// Generated keys: a new key signs this often (`0s`: never). Each key is published one
    /// period before it signs.
    #[serde(with = "humantime_serde")]
    pub rotate_every: Duration,
    /// A key that stops signing (rotation, or gone from `key_file`) stays published this
    /// long; at least `ttl`.
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            enabled: false,
            header: "x-jwt-assertion".into(),
            issuer: "jwks-sidecar".into(),
            audience: String::new(),
            ttl: Duration::from_secs(60),
            claims: vec!["sub".into()],
            algorithm: "ES256".into(),
            key_file: None,
            rotate_every: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(300),
        }
    }
}

/// `[resource]`: what this sidecar tells OAuth clients about the resource it protects (RFC
/// 9728). Off while `resource` is unset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceConfig {
    /// The resource identifier clients ask tokens for, e.g. `https://api.example.com`.
    pub resource: Option<String>,
    /// Authorization servers that issue tokens for it (default: every provider's issuer).
    pub authorization_servers: Vec<String>,
    /// Scopes clients may request.
    pub scopes_supported: Vec<String>,
    /// A human-readable name.
    pub resource_name: Option<String>,
    /// A URL of documentation for developers.
    pub resource_documentation: Option<String>,
}

/// `[runtime]`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads (0: one per CPU the process may use). A sidecar often wants 1 or 2.
    pub worker_threads: usize,
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
    /// The origin clients address (`https://api.example.com`) when TLS ends in front of the
    /// proxy: DPoP proofs' `htu` is checked against it. Unset: the listener's scheme and the
    /// request's `Host`.
    pub public_origin: Option<String>,
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
            public_origin: None,
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
    /// PEM CA bundle: ask clients for a certificate issued by it (mutual TLS), which
    /// certificate-bound tokens (RFC 8705, `cnf["x5t#S256"]`) must match.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `optional` (clients without a certificate are served; only
    /// certificate-bound tokens need one) or `required` (the handshake fails without one).
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Whether the proxy's TLS listener requires a client certificate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Asked for, not required.
    #[default]
    Optional,
    /// The handshake fails without one.
    Required,
}

/// `[admin]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Admin listener (`/metrics`, `/healthz`, `/readyz`, `/providers`, `/jwks/{name}`).
    /// Keep it on loopback or a pod-internal port.
    pub listen: Option<SocketAddr>,
    /// When `/readyz` answers 200.
    pub readiness: Readiness,
}

/// `admin.readiness`: what `/readyz` waits for (latched either way).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Every provider has had keys: no request is refused with 503 for want of keys at
    /// start, but one dead identity provider keeps the pod out of service.
    #[default]
    Keys,
    /// Every provider has had keys or has failed its first fetch (within its own
    /// `fetch_timeout`): with many issuers, a dead one delays readiness by one timeout and
    /// its own tokens get 503 until its keys load.
    Attempted,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9901))),
            readiness: Readiness::Keys,
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
    /// Take the client certificate of certificate-bound tokens from the gateway: Envoy's
    /// `x-forwarded-client-cert` (`Hash=`, else `Cert=`) on the HTTP endpoints, the gRPC
    /// check's `source.certificate`. Only for gateways that set (and sanitise) them: a client
    /// could send the header itself to any other.
    pub trust_forwarded_client_cert: bool,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            listen: None,
            grpc_listen: None,
            path_prefix: "/authz".into(),
            nginx_path: "/nginx".into(),
            forward_path: "/forward".into(),
            trust_forwarded_client_cert: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan;

    const MINIMAL: &str = r#"
        [[providers]]
        name = "a"
        issuer = "https://a.example/"
        jwks_uri = "https://a.example/jwks.json"
        audiences = ["api"]
    "#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = plan::from_toml_str(MINIMAL).expect("valid").config;
        assert_eq!(c.proxy.identity_header_prefix, "x-jwt-");
        assert_eq!(c.providers[0].leeway, Duration::from_secs(60));
        assert_eq!(
            c.admin.listen,
            Some("127.0.0.1:9901".parse().expect("addr"))
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = plan::from_toml_str(&format!(
            "{MINIMAL}\n[proxy]\nlisten_addr = \"0.0.0.0:1\"\n"
        ))
        .expect_err("typo");
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn insecure_http_jwks_rejected_for_remote_hosts() {
        let text = MINIMAL.replace("https://a.example/jwks.json", "http://a.example/jwks.json");
        let err = plan::from_toml_str(&text).expect_err("http");
        assert!(err.to_string().contains("allow_insecure_http"), "{err}");
        let ok = MINIMAL.replace(
            "https://a.example/jwks.json",
            "http://127.0.0.1:9/jwks.json",
        );
        assert!(plan::from_toml_str(&ok).is_ok());
    }

    #[test]
    fn two_key_sources_rejected() {
        let text = format!("{MINIMAL}jwks_file = \"/nonexistent\"\n");
        let err = plan::from_toml_str(&text).expect_err("two sources");
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn durations_are_humantime_strings() {
        let c = plan::from_toml_str(&format!(
            "{MINIMAL}leeway = \"5s\"\nrefresh_interval = \"2m\"\n"
        ))
        .expect("ok")
        .config;
        assert_eq!(c.providers[0].leeway, Duration::from_secs(5));
        assert_eq!(c.providers[0].refresh_interval, Duration::from_secs(120));
    }
}
