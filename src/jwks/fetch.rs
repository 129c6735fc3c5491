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
    /// Not sent: the origin did not answer its last fetch (timeout, or no connection within
    /// a second or more), and another fetch to it is already in flight as the probe.
    Unresponsive(String),
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
            FetchError::Unresponsive(_) => "unresponsive",
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
            FetchError::Unresponsive(o) => write!(
                f,
                "not sent: {o} did not answer its last fetch, and one fetch to it is already in flight"
            ),
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

/// A fetch that fails without an answer after at least this long (or hits its timeout)
/// marks its origin unresponsive.
const SLOW_FAILURE: Duration = Duration::from_secs(1);

/// How long an origin stays unresponsive without an answer.
const UNRESPONSIVE_FOR: Duration = Duration::from_secs(600);

/// At most this many origins are remembered as unresponsive.
const MAX_UNRESPONSIVE_ORIGINS: usize = 4096;

/// An origin that did not answer its last fetch: until when it counts as such, and whether
/// a fetch to it (the probe) is in flight.
#[derive(Debug, Clone, Copy)]
struct Unresponsive {
    until: std::time::Instant,
    probing: bool,
}

type Origins = std::collections::HashMap<String, Unresponsive>;

/// Unresponsive origins (`scheme://host:port`): a circuit breaker per origin. A black hole
/// (a dead tenant's host) holds a fetch slot for the whole `fetch_timeout`; a few hundred
/// dead tenants on one host (their first fetches, retries and refreshes) would keep the
/// 64 slots full and the live providers' fetches behind them. Once an origin has not answered,
/// one fetch to it at a time goes out (the probe, queued like any other); the others fail at
/// once (`result="unresponsive"`) and retry on their backoff. The first answer of any kind
/// closes the breaker.
static UNRESPONSIVE: std::sync::LazyLock<std::sync::Mutex<Origins>> =
    std::sync::LazyLock::new(Default::default);

fn unresponsive() -> std::sync::MutexGuard<'static, Origins> {
    UNRESPONSIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `scheme://host:port` of `url`, lower-cased, the port made explicit ("" when it has no
/// host). Never the userinfo: the key is logged, and `user:password@` must not be.
fn origin_of(url: &str) -> String {
    let Ok(u) = url.parse::<Uri>() else {
        return String::new();
    };
    let Some(host) = u.host() else {
        return String::new();
    };
    let scheme = u.scheme_str().unwrap_or("");
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        443
    };
    let port = u.port_u16().unwrap_or(default_port);
    format!("{scheme}://{host}:{port}").to_ascii_lowercase()
}

/// Whether `origin` (`scheme://host:port`) counts as unresponsive now.
pub fn is_unresponsive(origin: &str) -> bool {
    let now = std::time::Instant::now();
    unresponsive().get(origin).is_some_and(|u| u.until > now)
}

/// `Unresponsive` when `origin` is unresponsive and its probe is in flight (a fetch about to
/// queue need not wait for a slot only to be refused).
fn refuse_while_probing(origin: &str) -> Result<(), FetchError> {
    let now = std::time::Instant::now();
    match unresponsive().get(origin) {
        Some(u) if u.until > now && u.probing => Err(FetchError::Unresponsive(origin.to_string())),
        _ => Ok(()),
    }
}

/// May a fetch to `origin` go out now? Yes when it is not unresponsive, or as its probe
/// (then the returned guard ends the probe when dropped, even if the fetch is cancelled).
fn admit(origin: &str) -> Result<Option<Probe>, FetchError> {
    let mut map = unresponsive();
    let now = std::time::Instant::now();
    match map.get_mut(origin) {
        Some(u) if u.until > now => {
            if u.probing {
                return Err(FetchError::Unresponsive(origin.to_string()));
            }
            u.probing = true;
            Ok(Some(Probe {
                origin: origin.to_string(),
            }))
        }
        _ => Ok(None),
    }
}

/// The one fetch in flight to an unresponsive origin.
struct Probe {
    origin: String,
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(u) = unresponsive().get_mut(&self.origin) {
            u.probing = false;
        }
    }
}

/// Records how a fetch to `origin` ended. No answer (a timeout, or a connection that failed
/// after `SLOW_FAILURE` or more) opens the breaker; any answer, or a quick refusal, closes it.
fn record_outcome(origin: &str, result: &Result<Fetched, FetchError>, took: Duration) {
    let silent = match result {
        Err(FetchError::Timeout) => true,
        Err(FetchError::Connect(_)) => took >= SLOW_FAILURE,
        _ => false,
    };
    let opened = {
        let mut map = unresponsive();
        if !silent {
            map.remove(origin);
            false
        } else {
            let now = std::time::Instant::now();
            if map.len() >= MAX_UNRESPONSIVE_ORIGINS {
                map.retain(|_, u| u.until > now);
            }
            let room = map.len() < MAX_UNRESPONSIVE_ORIGINS;
            match map.get_mut(origin) {
                Some(u) => {
                    u.until = now + UNRESPONSIVE_FOR;
                    false
                }
                None if room => {
                    let u = Unresponsive {
                        until: now + UNRESPONSIVE_FOR,
                        probing: false,
                    };
                    map.insert(origin.to_string(), u);
                    true
                }
                None => false,
            }
        }
    };
    if opened {
        tracing::warn!(
            origin,
            took_ms = took.as_millis() as u64,
            "an origin did not answer: one fetch to it at a time until it answers, the others fail at once (result=unresponsive)"
        );
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
    /// timeout. To an origin that did not answer its last fetch, one fetch at a time goes out
    /// (checked again once a slot is free, so fetches queued before the origin went silent
    /// do not all wait out their timeouts); the others fail at once with `Unresponsive`.
    pub async fn get(&self, url: &str, opts: &GetOptions) -> Result<Fetched, FetchError> {
        let origin = origin_of(url);
        let _slot = if opts.unqueued {
            None
        } else {
            refuse_while_probing(&origin)?;
            FETCH_SLOTS.acquire().await.ok()
        };
        let _probe = admit(&origin)?;
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(opts.timeout, self.get_inner(url, opts))
            .await
            .map_err(|_| FetchError::Timeout)
            .and_then(|r| r);
        record_outcome(&origin, &result, started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_port_without_userinfo() {
        assert_eq!(
            origin_of("https://IdP.example/a/jwks"),
            "https://idp.example:443"
        );
        assert_eq!(
            origin_of("https://idp.example:443/x"),
            "https://idp.example:443"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/x?q=1"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin_of("http://[::1]/x"), "http://[::1]:80");
        let with_secret = origin_of("https://user:s3cret@idp.example/jwks");
        assert_eq!(with_secret, "https://idp.example:443");
        assert_eq!(origin_of("not a url"), "");
    }

    /// The breaker: no answer opens it, one probe at a time goes out (a cancelled probe ends
    /// too), the others fail at once, and any answer closes it.
    #[test]
    fn an_unresponsive_origin_gets_one_probe_at_a_time() {
        let o = "http://breaker.test:1";
        let answered: Result<Fetched, FetchError> = Err(FetchError::HttpStatus(503));
        assert!(admit(o).expect("closed").is_none());
        // A quick refusal does not open it; a slow one or a timeout does.
        record_outcome(
            o,
            &Err(FetchError::Connect("refused".into())),
            Duration::ZERO,
        );
        assert!(!is_unresponsive(o));
        record_outcome(
            o,
            &Err(FetchError::Connect("timed out".into())),
            SLOW_FAILURE,
        );
        assert!(is_unresponsive(o));
        record_outcome(o, &answered, Duration::ZERO);
        assert!(!is_unresponsive(o));
        record_outcome(o, &Err(FetchError::Timeout), Duration::from_millis(200));
        assert!(is_unresponsive(o));
        let probe = admit(o).expect("the probe").expect("a probe guard");
        assert_eq!(
            admit(o).err().map(|e| e.label()),
            Some("unresponsive"),
            "a second fetch while the probe is out"
        );
        drop(probe);
        let probe = admit(o).expect("a new probe").expect("guard");
        // An answer (even an error status) closes the breaker.
        record_outcome(o, &answered, Duration::from_secs(3));
        drop(probe);
        assert!(!is_unresponsive(o));
        assert!(admit(o).expect("closed").is_none());
    }
}
