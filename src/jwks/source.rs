//! Where a provider's key documents come from: a URL, an OIDC discovery document, a file,
//! or inline material, with credentials added per fetch. The network sits behind the
//! `Source` trait, so the mirror's state machine runs under tokio's paused clock in tests
//! with an in-memory source.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::fetch::{FetchError, Fetcher, GetOptions};
use super::{KeySet, ProviderKeys};
use crate::config::FetchHeader;
use crate::jose::SkippedKey;

/// Where a provider's keys come from (compiled from its config by `plan`).
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

/// How a provider's documents are fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchSettings {
    /// Timeout of one fetch.
    pub timeout: Duration,
    /// Largest body accepted.
    pub max_bytes: usize,
    /// Allow `http://` for non-loopback hosts.
    pub allow_insecure_http: bool,
    /// Extra request headers (values read at each fetch).
    pub headers: Vec<FetchHeader>,
    /// Extra PEM CA certificates trusted for these fetches.
    pub ca_file: Option<PathBuf>,
}

/// Validators remembered from the last 200 response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// `ETag`, sent back as `If-None-Match`.
    pub etag: Option<HeaderValue>,
    /// `Last-Modified`, sent back as `If-Modified-Since`.
    pub last_modified: Option<HeaderValue>,
}

/// What a source answered.
#[derive(Debug)]
pub enum SourceResponse {
    /// 304: the set is unchanged.
    NotModified {
        /// Response headers (caching).
        headers: HeaderMap,
    },
    /// A document to parse.
    Document {
        /// The body.
        body: Bytes,
        /// Response headers (caching, validators).
        headers: HeaderMap,
    },
}

/// Where a mirror gets its documents.
pub trait Source: Send + Sync + 'static {
    /// One fetch, conditional on `validators` when the source supports it. `kid_miss` names
    /// the unknown kid that asked for this fetch, if one did.
    fn fetch(
        &self,
        validators: &Validators,
        kid_miss: Option<&str>,
    ) -> impl Future<Output = Result<SourceResponse, FetchError>> + Send;
}

/// The request header that tells an upstream jwks-sidecar tier which kid a downstream missed,
/// so the tier refetches from its own source (single-flight, rate-limited there too) before
/// answering. Sent only to a source that said it is a tier (`TIER_HEADER`), never to an
/// identity provider (a WAF in front of one may refuse odd header values).
pub const KID_MISS_HEADER: &str = "x-jwks-sidecar-kid";

/// The response header with which `/jwks/{provider}` says it is a jwks-sidecar tier.
pub const TIER_HEADER: &str = "x-jwks-sidecar-tier";

/// The response header with which a tier says its keys are stale, and since when (Unix
/// seconds): a downstream mirror counts its own `max_stale` from then.
pub const STALE_SINCE_HEADER: &str = "x-jwks-sidecar-stale-since";

/// A kid that may travel in `KID_MISS_HEADER`: at most 256 bytes of letters, digits and
/// `._~:+/=-` (base64, base64url, UUIDs, thumbprints); anything else is not passed on.
pub fn kid_header_value(kid: &str) -> Option<HeaderValue> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"._~:+/=-".contains(&b);
    (!kid.is_empty() && kid.len() <= 256 && kid.bytes().all(ok))
        .then(|| HeaderValue::from_str(kid).ok())
        .flatten()
}

/// The fetcher for a provider: the shared one, or one that also trusts its `ca_file`.
pub fn fetcher_for(settings: &super::KeySettings, shared: &Fetcher) -> Result<Fetcher, String> {
    match &settings.fetch.ca_file {
        Some(f) => Fetcher::with_ca_file(f)
            .map_err(|e| format!("provider {:?} ca_file: {e}", settings.name)),
        None => Ok(shared.clone()),
    }
}

/// The configured source of a provider: HTTP (direct or via discovery), file, inline.
pub struct ConfiguredSource {
    fetcher: Fetcher,
    source: KeySource,
    issuer: String,
    opts: GetOptions,
    fetch_headers: Vec<FetchHeader>,
    discovered: Mutex<Option<String>>,
    keys: Option<Arc<ProviderKeys>>,
    /// The source answered with `TIER_HEADER`: kid misses are passed up to it.
    tier: std::sync::atomic::AtomicBool,
}

impl ConfiguredSource {
    /// A source for one provider.
    pub fn new(
        fetcher: Fetcher,
        settings: &super::KeySettings,
        keys: Option<Arc<ProviderKeys>>,
    ) -> Self {
        ConfiguredSource {
            fetcher,
            source: settings.source.clone(),
            issuer: settings.issuer.clone(),
            opts: GetOptions {
                timeout: settings.fetch.timeout,
                max_bytes: settings.fetch.max_bytes,
                allow_insecure_http: settings.fetch.allow_insecure_http,
                headers: HeaderMap::new(),
                unqueued: false,
            },
            fetch_headers: settings.fetch.headers.clone(),
            discovered: Mutex::new(None),
            keys,
            tier: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn headers(&self, v: &Validators, kid_miss: Option<&str>) -> Result<HeaderMap, FetchError> {
        let mut h = HeaderMap::new();
        let tier = self.tier.load(std::sync::atomic::Ordering::Relaxed);
        if let Some(kid) = kid_miss.filter(|_| tier).and_then(kid_header_value) {
            h.insert(KID_MISS_HEADER, kid);
        }
        if let Some(e) = &v.etag {
            h.insert(http::header::IF_NONE_MATCH, e.clone());
        }
        if let Some(lm) = &v.last_modified {
            h.insert(http::header::IF_MODIFIED_SINCE, lm.clone());
        }
        for fh in &self.fetch_headers {
            let raw = match (&fh.value_from_env, &fh.value_from_file) {
                (Some(var), _) => std::env::var(var).map_err(|_| {
                    FetchError::Credentials(format!(
                        "fetch header {}: environment variable {var} is not set",
                        fh.name
                    ))
                })?,
                (_, Some(path)) => std::fs::read_to_string(path).map_err(|e| {
                    FetchError::Credentials(format!(
                        "fetch header {}: {}: {e}",
                        fh.name,
                        path.display()
                    ))
                })?,
                _ => continue,
            };
            let value = HeaderValue::from_str(&format!("{}{}", fh.prefix, raw.trim_end()))
                .map_err(|_| {
                    FetchError::Credentials(format!(
                        "fetch header {}: value is not a valid header value",
                        fh.name
                    ))
                })?;
            let name = http::HeaderName::try_from(fh.name.as_str()).map_err(|_| {
                FetchError::Credentials(format!("fetch header {}: invalid name", fh.name))
            })?;
            h.insert(name, value);
        }
        Ok(h)
    }

    fn note_uri(&self, uri: &str) {
        if let Some(k) = &self.keys {
            k.update_status(|s| s.jwks_uri = Some(uri.to_string()));
        }
    }

    async fn get(
        &self,
        url: &str,
        v: &Validators,
        kid_miss: Option<&str>,
    ) -> Result<SourceResponse, FetchError> {
        let opts = GetOptions {
            headers: self.headers(v, kid_miss)?,
            unqueued: kid_miss.is_some(),
            ..self.opts.clone()
        };
        let got = self.fetcher.get(url, &opts).await?;
        self.tier.store(
            got.headers.contains_key(TIER_HEADER),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(if got.status == http::StatusCode::NOT_MODIFIED {
            SourceResponse::NotModified {
                headers: got.headers,
            }
        } else {
            SourceResponse::Document {
                body: got.body,
                headers: got.headers,
            }
        })
    }
}

impl Source for ConfiguredSource {
    async fn fetch(
        &self,
        v: &Validators,
        kid_miss: Option<&str>,
    ) -> Result<SourceResponse, FetchError> {
        match &self.source {
            KeySource::Inline(doc) => Ok(SourceResponse::Document {
                body: Bytes::from(doc.to_string()),
                headers: HeaderMap::new(),
            }),
            KeySource::Pem(pem) => Ok(SourceResponse::Document {
                body: Bytes::from(pem.clone()),
                headers: HeaderMap::new(),
            }),
            KeySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| FetchError::File(format!("{}: {e}", path.display())))?;
                if bytes.len() > self.opts.max_bytes {
                    return Err(FetchError::TooLarge);
                }
                Ok(SourceResponse::Document {
                    body: Bytes::from(bytes),
                    headers: HeaderMap::new(),
                })
            }
            KeySource::Uri(uri) => {
                self.note_uri(uri);
                self.get(uri, v, kid_miss).await
            }
            KeySource::Discovery(url) => {
                let cached = self.discovered.lock().ok().and_then(|d| d.clone());
                let jwks_uri = match cached {
                    Some(u) => u,
                    None => {
                        let opts = GetOptions {
                            headers: self.headers(&Validators::default(), None)?,
                            ..self.opts.clone()
                        };
                        let u = self.fetcher.discover(url, &self.issuer, &opts).await?;
                        if let Ok(mut d) = self.discovered.lock() {
                            *d = Some(u.clone());
                        }
                        u
                    }
                };
                self.note_uri(&jwks_uri);
                let result = self.get(&jwks_uri, v, kid_miss).await;
                if result.is_err() {
                    // The IdP may have moved its keys: discover again next time.
                    if let Ok(mut d) = self.discovered.lock() {
                        *d = None;
                    }
                }
                result
            }
        }
    }
}

/// Fetches and parses once, without touching the mirror (for `check` and `explain`).
pub async fn fetch_key_set(
    source: &ConfiguredSource,
    keys: &ProviderKeys,
) -> Result<(KeySet, Vec<SkippedKey>), FetchError> {
    match source.fetch(&Validators::default(), None).await? {
        SourceResponse::Document { body, .. } => {
            KeySet::parse(&body, &keys.policy).map_err(|e| FetchError::Parse(e.0))
        }
        SourceResponse::NotModified { .. } => Err(FetchError::Parse("unexpected 304".into())),
    }
}
