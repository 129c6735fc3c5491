//! Getting key material over HTTP: one shared client, timeouts, size limits, redirects
//! that never downgrade to plain http, and OIDC discovery.
//!
//! Errors are classified into the bounded `result` label values of
//! `jwks_sidecar_jwks_fetch_total` so an operator can tell a dead IdP (connect, timeout)
//! from a broken one (http_status, parse, too_large).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::is_loopback_host;

/// Why a fetch failed; `label()` is the metric's `result` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// No answer within the fetch timeout.
    Timeout,
    /// TCP/TLS connection failed.
    Connect(String),
    /// A status other than 200/304.
    HttpStatus(u16),
    /// Body over the configured limit.
    TooLarge,
    /// Not a usable document (JSON, shape, issuer mismatch, no keys).
    Parse(String),
    /// Redirect loop, or a redirect to plain http.
    Redirect(String),
    /// Reading a local file failed.
    File(String),
    /// The discovery document names another issuer.
    IssuerMismatch(String),
    /// A fetch header's secret could not be read.
    Credentials(String),
    /// An upstream jwks-sidecar tier serves keys stale for longer than this mirror's
    /// `max_stale`: not taken.
    UpstreamStale(String),
}

impl FetchError {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Timeout => "timeout",
            FetchError::Connect(_) => "connect",
            FetchError::HttpStatus(_) => "http_status",
            FetchError::TooLarge => "too_large",
            FetchError::Parse(_) => "parse",
            FetchError::Redirect(_) => "redirect",
            FetchError::File(_) => "file",
            FetchError::IssuerMismatch(_) => "issuer_mismatch",
            FetchError::Credentials(_) => "credentials",
            FetchError::UpstreamStale(_) => "upstream_stale",
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Timeout => write!(f, "timed out"),
            FetchError::Connect(e) => write!(f, "connection failed: {e}"),
            FetchError::HttpStatus(s) => write!(f, "unexpected HTTP status {s}"),
            FetchError::TooLarge => write!(f, "response body over the size limit"),
            FetchError::Parse(e) => write!(f, "unusable document: {e}"),
            FetchError::Redirect(e) => write!(f, "redirect refused: {e}"),
            FetchError::File(e) => write!(f, "file: {e}"),
            FetchError::IssuerMismatch(e) => write!(f, "{e}"),
            FetchError::Credentials(e) => write!(f, "credentials: {e}"),
            FetchError::UpstreamStale(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FetchError {}

/// A successful (200 or 304) response.
#[derive(Debug)]
pub struct Fetched {
    /// 200 or 304.
    pub status: StatusCode,
    /// Response headers (caching, validators).
    pub headers: HeaderMap,
    /// Body (empty on 304).
    pub body: Bytes,
}

/// Options for one GET.
#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Whole-request timeout, body included.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Allow plain http to non-loopback hosts.
    pub allow_insecure_http: bool,
    /// Extra request headers (conditional validators, credentials). Sent to the configured
    /// origin only: a redirect to another scheme, host or port drops them.
    pub headers: HeaderMap,
    /// Skip the `MAX_CONCURRENT_FETCHES` queue (kid-miss refetches: the kid-miss gate already
    /// bounds them, and a queue full of dead providers must not hold back a new key).
    pub unqueued: bool,
}

/// The shared HTTP(S) client used for every JWKS and discovery fetch.
#[derive(Clone)]
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

const MAX_REDIRECTS: usize = 3;

/// At most this many key and discovery fetches are in flight at once, process-wide. With a
/// thousand providers (one per tenant, often on one IdP host) a start-up or a reload would
/// otherwise open a thousand connections at once: a burst identity providers rate-limit
/// (Auth0 answers 429) and a file-descriptor spike. At 64, a thousand 100 ms fetches take
/// under 2 s, and a dead provider holds its slot only up to its own `fetch_timeout`, so it
/// takes 64 dead providers at once before the others wait on them.
pub const MAX_CONCURRENT_FETCHES: usize = 64;

static FETCH_SLOTS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_CONCURRENT_FETCHES);

/// Of the `MAX_CONCURRENT_FETCHES` slots, fetches to a slow origin (one whose last fetch
/// failed after a second or more: a black hole, a dead tenant's host) hold at most this many.
/// A slow failure keeps its slot for its whole `fetch_timeout`; without this lane, a few
/// hundred dead tenants (their retries, their refreshes) would keep the queue full and the
/// live providers' refreshes behind them. With it, the others wait at most one timeout: the
/// first wave, before an origin is known to be slow.
pub const SLOW_ORIGIN_FETCHES: usize = 16;

static SLOW_LANE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SLOW_ORIGIN_FETCHES);

/// A failure that took at least this long marks its origin slow.
const SLOW_FAILURE: Duration = Duration::from_secs(1);

/// How long an origin stays slow without a success.
const SLOW_FOR: Duration = Duration::from_secs(600);

/// Origins (`scheme://authority`) whose last fetch failed slowly, and until when they count
/// as slow. A success clears the mark; at most `MAX_SLOW_ORIGINS` are remembered.
type SlowOrigins = std::collections::HashMap<String, std::time::Instant>;

static SLOW_ORIGINS: std::sync::LazyLock<std::sync::Mutex<SlowOrigins>> =
    std::sync::LazyLock::new(Default::default);

const MAX_SLOW_ORIGINS: usize = 4096;

/// `scheme://authority` of `url`, lower-cased ("" when it has none).
fn origin_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .map(|u| {
            format!(
                "{}://{}",
                u.scheme_str().unwrap_or(""),
                u.authority().map(|a| a.as_str()).unwrap_or("")
            )
            .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn slow_origins() -> std::sync::MutexGuard<'static, SlowOrigins> {
    SLOW_ORIGINS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether fetches to `origin` go through the slow lane now.
pub fn is_slow_origin(origin: &str) -> bool {
    let now = std::time::Instant::now();
    slow_origins().get(origin).is_some_and(|until| *until > now)
}

/// Records how a fetch to `origin` ended: a failure after `SLOW_FAILURE` or more marks it
/// slow; anything else (a success, a quick answer or refusal) clears the mark.
fn record_outcome(origin: &str, ok: bool, took: Duration) {
    let mut slow = slow_origins();
    if ok || took < SLOW_FAILURE {
        slow.remove(origin);
    } else {
        let now = std::time::Instant::now();
        if slow.len() >= MAX_SLOW_ORIGINS {
            slow.retain(|_, until| *until > now);
        }
        if slow.len() < MAX_SLOW_ORIGINS
            && slow.insert(origin.to_string(), now + SLOW_FOR).is_none()
        {
            tracing::warn!(
                origin,
                took_ms = took.as_millis() as u64,
                lane = SLOW_ORIGIN_FETCHES,
                "a fetch failed slowly: this origin's fetches now share the slow lane until one succeeds"
            );
        }
    }
}

impl Fetcher {
    /// A client with the webpki root store, HTTP/1.1, short connect timeout.
    pub fn new() -> Self {
        Self::with_roots(rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        })
    }

    /// A client that also trusts the PEM CA certificates in `ca_file`.
    pub fn with_ca_file(ca_file: &std::path::Path) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut added = 0;
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificate found", ca_file.display()));
        }
        Ok(Self::with_roots(roots))
    }

    fn with_roots(roots: rustls::RootCertStore) -> Self {
        crate::install_crypto_provider();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // The idle timeout is enforced only with a pool timer: without one, the connections
        // of a start-up with many providers stayed open until the IdP closed them.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Fetcher { client }
    }

    /// GET with redirects (at most 3, never https -> http), a total timeout and a size cap.
    /// Waiting for one of the `MAX_CONCURRENT_FETCHES` slots does not count against the
    /// timeout.
    /// A slow origin's fetches first wait for one of the `SLOW_ORIGIN_FETCHES` places of the
    /// slow lane (without holding a slot meanwhile).
    pub async fn get(&self, url: &str, opts: &GetOptions) -> Result<Fetched, FetchError> {
        let origin = origin_of(url);
        let (_lane, _slot) = if opts.unqueued {
            (None, None)
        } else {
            loop {
                let lane = if is_slow_origin(&origin) {
                    SLOW_LANE.acquire().await.ok()
                } else {
                    None
                };
                let slot = FETCH_SLOTS.acquire().await.ok();
                // An origin found slow while this fetch was queued (the first wave to a dead
                // host timing out): step aside into the slow lane.
                if lane.is_some() || !is_slow_origin(&origin) {
                    break (lane, slot);
                }
            }
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(opts.timeout, self.get_inner(url, opts))
            .await
            .map_err(|_| FetchError::Timeout)
            .and_then(|r| r);
        record_outcome(&origin, result.is_ok(), started.elapsed());
        result
    }

    async fn get_inner(&self, url: &str, opts: &GetOptions) -> Result<Fetched, FetchError> {
        let mut uri: Uri = url
            .parse()
            .map_err(|_| FetchError::Parse(format!("invalid URL {url:?}")))?;
        check_scheme(&uri, opts.allow_insecure_http)?;
        let origin = (uri.scheme().cloned(), uri.authority().cloned());
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::get(uri.clone())
                .header(
                    http::header::USER_AGENT,
                    concat!("jwks-sidecar/", env!("CARGO_PKG_VERSION")),
                )
                .header(
                    http::header::ACCEPT,
                    "application/json, application/jwk-set+json",
                )
                .body(Empty::new())
                .map_err(|e| FetchError::Parse(e.to_string()))?;
            if (uri.scheme().cloned(), uri.authority().cloned()) == origin {
                req.headers_mut().extend(opts.headers.clone());
            }
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FetchError::Connect(error_chain(&e)))?;
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let location = resp
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| FetchError::Redirect("redirect without Location".into()))?;
                let next = resolve_location(&uri, location)?;
                if uri.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                    return Err(FetchError::Redirect(format!(
                        "https to {next} is a downgrade"
                    )));
                }
                check_scheme(&next, opts.allow_insecure_http)?;
                uri = next;
                continue;
            }
            if status != StatusCode::OK && status != StatusCode::NOT_MODIFIED {
                return Err(FetchError::HttpStatus(status.as_u16()));
            }
            let (parts, body) = resp.into_parts();
            if let Some(len) = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                if len > opts.max_bytes as u64 {
                    return Err(FetchError::TooLarge);
                }
            }
            let body = Limited::new(body, opts.max_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        FetchError::TooLarge
                    } else {
                        FetchError::Connect(format!("reading body: {e}"))
                    }
                })?
                .to_bytes();
            return Ok(Fetched {
                status,
                headers: parts.headers,
                body,
            });
        }
        Err(FetchError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }

    /// Reads an OIDC discovery document and returns its `jwks_uri`, after checking that
    /// its `issuer` is exactly the configured one (OpenID Connect Discovery 1.0, 4.3).
    pub async fn discover(
        &self,
        url: &str,
        issuer: &str,
        opts: &GetOptions,
    ) -> Result<String, FetchError> {
        let opts = GetOptions {
            headers: HeaderMap::new(),
            ..opts.clone()
        };
        let doc = self.get(url, &opts).await?;
        let v: Value = serde_json::from_slice(&doc.body)
            .map_err(|e| FetchError::Parse(format!("discovery document is not JSON: {e}")))?;
        let found = v.get("issuer").and_then(Value::as_str).unwrap_or("");
        if found != issuer {
            return Err(FetchError::IssuerMismatch(format!(
                "discovery document issuer {found:?} differs from the configured issuer {issuer:?}; set issuer to the exact value"
            )));
        }
        let jwks_uri = v
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| FetchError::Parse("discovery document has no jwks_uri".into()))?;
        let parsed: Uri = jwks_uri.parse().map_err(|_| {
            FetchError::Parse(format!("discovery jwks_uri {jwks_uri:?} is not a URL"))
        })?;
        check_scheme(&parsed, opts.allow_insecure_http)?;
        Ok(jwks_uri.to_string())
    }
}

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

fn check_scheme(uri: &Uri, allow_insecure_http: bool) -> Result<(), FetchError> {
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_insecure_http || is_loopback_host(uri.host().unwrap_or("")) => Ok(()),
        _ => Err(FetchError::Redirect(format!(
            "{uri}: only https:// (or http:// to loopback, or with allow_insecure_http) is fetched"
        ))),
    }
}

fn resolve_location(base: &Uri, location: &str) -> Result<Uri, FetchError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|_| FetchError::Redirect(format!("bad Location {location:?}")));
    }
    if !location.starts_with('/') || location.starts_with("//") {
        return Err(FetchError::Redirect(format!(
            "unsupported Location {location:?}"
        )));
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        location
            .parse()
            .map_err(|_| FetchError::Redirect(format!("bad Location {location:?}")))?,
    );
    Uri::from_parts(parts).map_err(|_| FetchError::Redirect(format!("bad Location {location:?}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// A header value safe to send; invalid bytes become an error rather than a panic.
pub fn header_value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}
