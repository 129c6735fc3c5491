//! Keeping each provider's mirror fresh: one background task per provider.
//!
//! The task honours caching headers (`Cache-Control: max-age` minus `Age`, `Expires`),
//! clamped to `[min_refresh, max_refresh]`, with jitter so a fleet does not fetch in
//! lockstep; revalidates with `ETag`/`Last-Modified` (a 304 is a success); on failure keeps
//! the last good keys and retries with capped exponential backoff; serves stale keys for at
//! most `max_stale` past their freshness, then drops them (503); drops a key only after it
//! was missing from `key_removal_confirmations` consecutive successful fetches; answers
//! unknown-kid refetch requests from the request path; and persists each good set to
//! `cache_dir` so a restart during an IdP outage serves at once.
//!
//! The network sits behind the `Source` trait, so the whole state machine runs under tokio's
//! paused clock in tests with an in-memory source. Internal timing uses `tokio::time::Instant`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::sync::watch;
use tokio::time::Instant;

use super::fetch::{FetchError, Fetcher, GetOptions};
use super::{unix_secs, Key, KeySet, ProviderKeys, SkippedKey};
use crate::config::{FetchHeader, KeySource};
use crate::metrics::Metrics;

/// Timing and limits of one provider's mirror.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// Refresh interval when the response has no caching headers.
    pub refresh_interval: Duration,
    /// Lower clamp for caching headers.
    pub min_refresh: Duration,
    /// Upper clamp for caching headers.
    pub max_refresh: Duration,
    /// How long stale keys are served after their freshness lapsed.
    pub max_stale: Duration,
    /// Consecutive absences before a key is dropped.
    pub key_removal_confirmations: u32,
    /// Largest backoff between failed fetches.
    pub max_retry: Duration,
    /// Jitter fraction: delays are spread over `[d * (1 - jitter), d]`.
    pub jitter: f64,
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
    /// One fetch, conditional on `validators` when the source supports it.
    fn fetch(
        &self,
        validators: &Validators,
    ) -> impl Future<Output = Result<SourceResponse, FetchError>> + Send;
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
}

impl ConfiguredSource {
    /// A source for one provider.
    pub fn new(
        fetcher: Fetcher,
        cfg: &crate::config::ProviderConfig,
        keys: Option<Arc<ProviderKeys>>,
    ) -> Self {
        ConfiguredSource {
            fetcher,
            source: cfg
                .key_source()
                .unwrap_or(KeySource::Inline(serde_json::json!({"keys": []}))),
            issuer: cfg.issuer.clone(),
            opts: GetOptions {
                timeout: cfg.fetch_timeout,
                max_bytes: cfg.max_jwks_bytes,
                allow_insecure_http: cfg.allow_insecure_http,
                headers: HeaderMap::new(),
            },
            fetch_headers: cfg.fetch_headers.clone(),
            discovered: Mutex::new(None),
            keys,
        }
    }

    fn headers(&self, v: &Validators) -> Result<HeaderMap, FetchError> {
        let mut h = HeaderMap::new();
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

    async fn get(&self, url: &str, v: &Validators) -> Result<SourceResponse, FetchError> {
        let opts = GetOptions {
            headers: self.headers(v)?,
            ..self.opts.clone()
        };
        let got = self.fetcher.get(url, &opts).await?;
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
    async fn fetch(&self, v: &Validators) -> Result<SourceResponse, FetchError> {
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
                self.get(uri, v).await
            }
            KeySource::Discovery(url) => {
                let cached = self.discovered.lock().ok().and_then(|d| d.clone());
                let jwks_uri = match cached {
                    Some(u) => u,
                    None => {
                        let opts = GetOptions {
                            headers: self.headers(&Validators::default())?,
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
                let result = self.get(&jwks_uri, v).await;
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

/// Freshness from caching headers: `max-age` minus `Age`, else `Expires` minus `Date`,
/// else `refresh_interval`; `no-cache`/`no-store` mean `min_refresh`. Clamped to
/// `[min_refresh, max_refresh]`.
pub fn freshness(headers: &HeaderMap, s: &MirrorSettings) -> Duration {
    let cc: Vec<String> = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let age = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let raw = if cc.iter().any(|d| d == "no-cache" || d == "no-store") {
        Some(Duration::ZERO)
    } else if let Some(max_age) = cc.iter().find_map(|d| {
        d.strip_prefix("max-age=")
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
    }) {
        Some(Duration::from_secs(max_age.saturating_sub(age)))
    } else {
        headers
            .get(http::header::EXPIRES)
            .and_then(|v| v.to_str().ok())
            .map(|v| match httpdate::parse_http_date(v) {
                Ok(expires) => {
                    let date = headers
                        .get(http::header::DATE)
                        .and_then(|d| d.to_str().ok())
                        .and_then(|d| httpdate::parse_http_date(d).ok())
                        .unwrap_or_else(SystemTime::now);
                    expires.duration_since(date).unwrap_or(Duration::ZERO)
                }
                // An invalid Expires means "already expired" (RFC 9111 5.3).
                Err(_) => Duration::ZERO,
            })
    };
    raw.unwrap_or(s.refresh_interval)
        .clamp(s.min_refresh, s.max_refresh)
}

/// Backoff after `failures` consecutive failures: 1 s, 2 s, 4 s, ... up to `max_retry`.
pub fn retry_delay(failures: u32, max_retry: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(max_retry)
}

/// Spreads `d` over `[d * (1 - fraction), d]` with `r` in `[0, 1)`.
pub fn jittered(d: Duration, fraction: f64, r: f64) -> Duration {
    d.mul_f64(1.0 - fraction.clamp(0.0, 1.0) * r.clamp(0.0, 1.0))
}

/// Merges a freshly fetched set into the current one: new keys are taken at once; a key
/// missing from the new set is kept until it has been missing `confirmations` times.
/// Returns the merged set and the kids added and removed.
pub fn merge_keys(
    current: Option<&KeySet>,
    fetched: &KeySet,
    absent: &mut HashMap<String, u32>,
    confirmations: u32,
) -> (KeySet, Vec<String>, Vec<String>) {
    let new_kids: HashSet<&str> = fetched
        .keys()
        .iter()
        .filter_map(|k| k.kid.as_deref())
        .collect();
    let old_kids: HashSet<&str> = current
        .map(|c| c.keys().iter().filter_map(|k| k.kid.as_deref()).collect())
        .unwrap_or_default();
    let mut keys: Vec<Arc<Key>> = fetched.keys().to_vec();
    let mut removed = Vec::new();
    if let Some(cur) = current {
        let mut counted = HashSet::new();
        for k in cur.keys() {
            let Some(kid) = k.kid.as_deref() else {
                continue;
            };
            if new_kids.contains(kid) {
                continue;
            }
            let n = if counted.insert(kid) {
                let n = absent.entry(kid.to_string()).or_insert(0);
                *n += 1;
                *n
            } else {
                absent.get(kid).copied().unwrap_or(0)
            };
            if n < confirmations {
                keys.push(k.clone());
            } else if !removed.iter().any(|r: &String| r == kid) {
                removed.push(kid.to_string());
            }
        }
    }
    for r in &removed {
        absent.remove(r);
    }
    absent.retain(|kid, _| !new_kids.contains(kid.as_str()) && old_kids.contains(kid.as_str()));
    let mut added: Vec<String> = new_kids
        .difference(&old_kids)
        .map(|s| s.to_string())
        .collect();
    added.sort();
    (KeySet::from_arcs(keys), added, removed)
}

/// Mutable state of one mirror task.
#[derive(Debug, Default)]
struct MirrorState {
    validators: Validators,
    absent: HashMap<String, u32>,
    fresh_until: Option<Instant>,
    failures: u32,
    stale_since: Option<SystemTime>,
}

/// Persisted form of a key set.
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    version: u32,
    provider: String,
    issuer: String,
    fetched_at: u64,
    fresh_until: u64,
    jwks: serde_json::Value,
}

fn wall_clock(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

fn persist(
    path: &Path,
    keys: &ProviderKeys,
    set: &KeySet,
    fresh_until: Instant,
) -> std::io::Result<()> {
    let doc = Persisted {
        version: 1,
        provider: keys.name.clone(),
        issuer: keys.issuer.clone(),
        fetched_at: unix_secs(SystemTime::now()),
        fresh_until: unix_secs(wall_clock(fresh_until)),
        jwks: set.to_jwks(),
    };
    let text = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Loads a persisted set if it belongs to this provider and is within `max_stale`.
fn restore(
    path: &Path,
    keys: &ProviderKeys,
    s: &MirrorSettings,
) -> Result<Option<(KeySet, Instant)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let doc: Persisted =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a key cache file: {e}"))?;
    if doc.version != 1 || doc.provider != keys.name || doc.issuer != keys.issuer {
        return Err(format!(
            "belongs to provider {:?} / issuer {:?}",
            doc.provider, doc.issuer
        ));
    }
    let now_unix = unix_secs(SystemTime::now());
    if now_unix > doc.fresh_until.saturating_add(s.max_stale.as_secs()) {
        return Ok(None);
    }
    let (set, _) = KeySet::from_document(&doc.jwks, &keys.policy).map_err(|e| e.0)?;
    if set.is_empty() {
        return Err("no usable keys".into());
    }
    let now = Instant::now();
    let fresh_until = if doc.fresh_until >= now_unix {
        now + Duration::from_secs(doc.fresh_until - now_unix)
    } else {
        now.checked_sub(Duration::from_secs(now_unix - doc.fresh_until))
            .unwrap_or(now)
    };
    Ok(Some((set, fresh_until)))
}

/// Everything one mirror task needs.
pub struct Mirror<S: Source> {
    /// The provider's key store (shared with the request path).
    pub keys: Arc<ProviderKeys>,
    /// Where documents come from.
    pub source: S,
    /// Collectors.
    pub metrics: Arc<Metrics>,
    /// Timing and limits.
    pub settings: MirrorSettings,
    /// Persistence file, if `cache_dir` is set.
    pub persist_path: Option<PathBuf>,
}

impl<S: Source> Mirror<S> {
    /// Runs until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut st = MirrorState::default();
        let name = self.keys.name.clone();
        self.metrics.jwks_keys.with_label_values(&[&name]).set(0);
        self.metrics.jwks_stale.with_label_values(&[&name]).set(0);
        self.metrics
            .jwks_fetch_total
            .with_label_values(&[&name, "ok"])
            .inc_by(0);
        if let Some(path) = &self.persist_path {
            match restore(path, &self.keys, &self.settings) {
                Ok(Some((set, fresh_until))) => {
                    tracing::info!(provider = %name, keys = set.len(), file = %path.display(), "serving keys persisted by an earlier run");
                    self.install(set, &mut st);
                    st.fresh_until = Some(fresh_until);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(provider = %name, file = %path.display(), error = %e, "ignoring the key cache file")
                }
            }
        }
        let mut rng = seed();
        let mut kid_miss = false;
        loop {
            let result = self.fetch_once(&mut st).await;
            if kid_miss {
                self.keys.gate.complete();
            }
            self.check_staleness(&mut st);
            let now = Instant::now();
            let mut delay = match result {
                Ok(fresh) => jittered(fresh, self.settings.jitter, next_f64(&mut rng)),
                Err(_) => jittered(
                    retry_delay(st.failures, self.settings.max_retry),
                    self.settings.jitter,
                    next_f64(&mut rng),
                ),
            };
            // Wake up in time to retire keys that go past max_stale.
            if let (Some(fu), true) = (st.fresh_until, self.keys.current().is_some()) {
                let deadline = fu + self.settings.max_stale;
                if deadline > now {
                    delay = delay.min(deadline - now + Duration::from_millis(1));
                }
            }
            let scheduled = now + delay;
            loop {
                let mut wake = scheduled;
                if let Some(due) = self.keys.gate.deferred_due() {
                    wake = wake.min(due);
                }
                let next =
                    unix_secs(SystemTime::now() + wake.saturating_duration_since(Instant::now()));
                self.keys.update_status(|s| s.next_fetch = Some(next));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {
                        kid_miss = self.keys.gate.start_deferred();
                        break;
                    }
                    _ = self.keys.gate.requested() => {
                        kid_miss = true;
                        break;
                    }
                    // A kid miss was deferred while this task slept: wake at its due time.
                    _ = self.keys.gate.deferred_noted() => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    fn install(&self, set: KeySet, st: &mut MirrorState) {
        let n = set.len();
        self.keys.store(set);
        self.metrics
            .jwks_keys
            .with_label_values(&[&self.keys.name])
            .set(n as i64);
        self.mark_fresh(st);
    }

    /// One fetch; returns the freshness of the result.
    async fn fetch_once(&self, st: &mut MirrorState) -> Result<Duration, FetchError> {
        let name = self.keys.name.as_str();
        let started = Instant::now();
        let now_unix = unix_secs(SystemTime::now());
        self.keys.update_status(|s| s.last_fetch = Some(now_unix));
        let fetched = self.source.fetch(&st.validators).await;
        self.metrics
            .jwks_fetch_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match fetched {
            Ok(SourceResponse::NotModified { headers }) => {
                let fresh = freshness(&headers, &self.settings);
                match self.keys.current() {
                    Some(_) => Ok(("not_modified", fresh, None)),
                    None => {
                        // A 304 without a set to keep: ask again without validators.
                        st.validators = Validators::default();
                        Err(FetchError::Parse(
                            "304 Not Modified but no key set is held".into(),
                        ))
                    }
                }
            }
            Ok(SourceResponse::Document { body, headers }) => {
                match KeySet::parse(&body, &self.keys.policy) {
                    Ok((set, skipped)) if !set.is_empty() => {
                        st.validators = Validators {
                            etag: headers.get(http::header::ETAG).cloned(),
                            last_modified: headers.get(http::header::LAST_MODIFIED).cloned(),
                        };
                        Ok((
                            "ok",
                            freshness(&headers, &self.settings),
                            Some((set, skipped)),
                        ))
                    }
                    Ok((_, skipped)) => {
                        for s in &skipped {
                            self.metrics
                                .jwks_skipped_keys_total
                                .with_label_values(&[name, s.reason])
                                .inc();
                        }
                        Err(FetchError::Parse(format!(
                            "no usable signing key ({} skipped: {})",
                            skipped.len(),
                            skip_summary(&skipped)
                        )))
                    }
                    Err(e) => Err(FetchError::Parse(e.0)),
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((label, fresh, parsed)) => {
                let fresh_until = Instant::now() + fresh;
                st.fresh_until = Some(fresh_until);
                st.failures = 0;
                if let Some((set, skipped)) = parsed {
                    for s in &skipped {
                        self.metrics
                            .jwks_skipped_keys_total
                            .with_label_values(&[name, s.reason])
                            .inc();
                    }
                    let current = self.keys.current();
                    let (merged, added, removed) = merge_keys(
                        current.as_deref(),
                        &set,
                        &mut st.absent,
                        self.settings.key_removal_confirmations,
                    );
                    if current.is_some() {
                        self.metrics
                            .jwks_key_changes_total
                            .with_label_values(&[name, "added"])
                            .inc_by(added.len() as u64);
                        self.metrics
                            .jwks_key_changes_total
                            .with_label_values(&[name, "removed"])
                            .inc_by(removed.len() as u64);
                        if !added.is_empty() || !removed.is_empty() {
                            tracing::info!(provider = name, added = ?added, removed = ?removed, "key set changed");
                        }
                    }
                    tracing::debug!(
                        provider = name,
                        keys = merged.len(),
                        skipped = skipped.len(),
                        "JWKS loaded"
                    );
                    self.install(merged, st);
                } else {
                    self.install_unchanged(st);
                }
                if let (Some(path), Some(set)) = (&self.persist_path, self.keys.current()) {
                    if let Err(e) = persist(path, &self.keys, &set, fresh_until) {
                        tracing::warn!(provider = name, file = %path.display(), error = %e, "could not persist the key set");
                    }
                }
                self.metrics
                    .jwks_fetch_total
                    .with_label_values(&[name, label])
                    .inc();
                self.metrics
                    .jwks_last_success
                    .with_label_values(&[name])
                    .set(now_unix as f64);
                self.keys.update_status(|s| {
                    s.last_success = Some(now_unix);
                    s.last_error = None;
                    s.fresh_until = Some(unix_secs(wall_clock(fresh_until)));
                });
                Ok(fresh)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                self.metrics
                    .jwks_fetch_total
                    .with_label_values(&[name, e.label()])
                    .inc();
                self.keys
                    .update_status(|s| s.last_error = Some(e.to_string()));
                tracing::warn!(provider = name, error = %e, result = e.label(), failures = st.failures, "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// Clears the stale state after a successful fetch.
    fn mark_fresh(&self, st: &mut MirrorState) {
        if st.stale_since.take().is_some() {
            tracing::info!(provider = %self.keys.name, "keys are fresh again");
        }
        self.metrics
            .jwks_stale
            .with_label_values(&[&self.keys.name])
            .set(0);
        self.keys.set_stale(false);
    }

    fn install_unchanged(&self, st: &mut MirrorState) {
        if let Some(set) = self.keys.current() {
            self.metrics
                .jwks_keys
                .with_label_values(&[&self.keys.name])
                .set(set.len() as i64);
        }
        self.mark_fresh(st);
    }

    /// Marks keys stale past their freshness, and drops them past `max_stale`.
    fn check_staleness(&self, st: &mut MirrorState) {
        let Some(fresh_until) = st.fresh_until else {
            return;
        };
        let now = Instant::now();
        let name = self.keys.name.as_str();
        if now <= fresh_until || self.keys.current().is_none() {
            return;
        }
        if now > fresh_until + self.settings.max_stale {
            self.keys.clear();
            self.metrics.jwks_keys.with_label_values(&[name]).set(0);
            self.metrics.jwks_stale.with_label_values(&[name]).set(1);
            tracing::error!(provider = name, max_stale = ?self.settings.max_stale, "keys are past max_stale and were dropped; requests for this provider get 503 until a fetch succeeds");
            return;
        }
        if st.stale_since.is_none() {
            let since = wall_clock(fresh_until);
            st.stale_since = Some(since);
            self.keys.set_stale(true);
            self.keys
                .update_status(|s| s.stale_since = Some(unix_secs(since)));
            self.metrics.jwks_stale.with_label_values(&[name]).set(1);
            tracing::warn!(
                provider = name,
                stale_since = unix_secs(since),
                "serving stale keys: refreshes are failing"
            );
        }
    }
}

fn skip_summary(skipped: &[SkippedKey]) -> String {
    skipped
        .iter()
        .map(|s| s.reason)
        .collect::<Vec<_>>()
        .join(", ")
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b) | 1
}

fn next_f64(state: &mut u64) -> f64 {
    // xorshift64*: jitter only, not security.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// Fetches and parses once, without touching the mirror (for `jwks-sidecar check`).
pub async fn fetch_key_set(
    source: &ConfiguredSource,
    keys: &ProviderKeys,
) -> Result<(KeySet, Vec<SkippedKey>), FetchError> {
    match source.fetch(&Validators::default()).await? {
        SourceResponse::Document { body, .. } => {
            KeySet::parse(&body, &keys.policy).map_err(|e| FetchError::Parse(e.0))
        }
        SourceResponse::NotModified { .. } => Err(FetchError::Parse("unexpected 304".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MirrorSettings {
        MirrorSettings {
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            max_stale: Duration::from_secs(600),
            key_removal_confirmations: 2,
            max_retry: Duration::from_secs(60),
            jitter: 0.0,
        }
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).expect("v"));
        }
        m
    }

    #[test]
    fn cache_control_is_clamped_both_ways() {
        let s = settings();
        assert_eq!(
            freshness(&h(&[("cache-control", "public, max-age=15")]), &s),
            Duration::from_secs(60),
            "Auth0's 15 s"
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "max-age=1209600")]), &s),
            Duration::from_secs(3600),
            "two weeks"
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "max-age=900")]), &s),
            Duration::from_secs(900)
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "max-age=900"), ("age", "100")]), &s),
            Duration::from_secs(800)
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "no-cache")]), &s),
            Duration::from_secs(60)
        );
        assert_eq!(
            freshness(&h(&[]), &s),
            Duration::from_secs(300),
            "no headers: refresh_interval"
        );
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let exp = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_001_200));
        assert_eq!(
            freshness(&h(&[("date", &date), ("expires", &exp)]), &s),
            Duration::from_secs(1200)
        );
        assert_eq!(
            freshness(&h(&[("expires", "garbage")]), &s),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut r = seed();
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(100), 0.1, next_f64(&mut r));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(100),
                "{d:?}"
            );
        }
    }
}
