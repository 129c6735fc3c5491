//! The admin listener: `/metrics`, `/healthz` (alive), `/readyz` (every provider has had
//! keys at least once, or with `readiness = "attempted"` has had keys or failed its first
//! fetch; latched so an IdP outage cannot take the fleet out of service),
//! `/providers` (per-provider freshness) and `/jwks/{provider}` (the mirrored public keys).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;

use crate::config::Readiness;
use crate::metrics::Metrics;

/// State the admin endpoints read.
pub struct Admin {
    /// The live policy (its authenticator holds the providers and their mirrors).
    pub policy: Arc<arc_swap::ArcSwap<crate::policy::Policy>>,
    /// Collectors.
    pub metrics: Arc<Metrics>,
    /// `/readyz?wait` requests waiting at once (at most `MAX_READY_WAITERS`).
    waiters: tokio::sync::Semaphore,
    /// Set the first time `/readyz` found the pod ready: it stays ready for the process's
    /// life, so neither an IdP outage nor a reload that adds a provider whose keys have not
    /// loaded (yet, or ever) takes a serving pod out of its Service.
    latched: std::sync::atomic::AtomicBool,
}

/// More `/readyz?wait` requests than this answer at once instead of waiting, so waiting
/// clients cannot pile up on the admin listener.
const MAX_READY_WAITERS: usize = 16;

impl Admin {
    /// The admin endpoints over the live policy and the collectors.
    pub fn new(
        policy: Arc<arc_swap::ArcSwap<crate::policy::Policy>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Admin {
            policy,
            metrics,
            waiters: tokio::sync::Semaphore::new(MAX_READY_WAITERS),
            latched: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    crate::response::no_store(status, content_type, body)
}

/// 200 once every provider has had keys (`readiness = "keys"`), or has had keys or failed its
/// first fetch (`"attempted"`); latched. Else 503. Either way the body names the providers
/// without keys.
fn readyz(
    policy: &crate::policy::Policy,
    latched: &std::sync::atomic::AtomicBool,
) -> Response<Full<Bytes>> {
    let providers = policy.auth.providers();
    let without_keys: Vec<&str> = providers
        .iter()
        .filter(|p| !p.keys.ready())
        .map(|p| p.name.as_str())
        .collect();
    let ready = latched.load(std::sync::atomic::Ordering::Relaxed)
        || match policy.readiness {
            Readiness::Keys => without_keys.is_empty(),
            Readiness::Attempted => providers.iter().all(|p| p.keys.attempted()),
        };
    if ready {
        latched.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut body = json!({"ready": ready});
    if !without_keys.is_empty() {
        body["providers_without_keys"] = json!(without_keys);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    respond(status, "application/json", body.to_string())
}

/// Per-provider readiness, kids and mirror status.
fn providers(auth: &crate::auth::Authenticator) -> Response<Full<Bytes>> {
    let list: Vec<_> = auth
        .providers()
        .iter()
        .map(|p| {
            let status = p.keys.status();
            let current = p.keys.current();
            json!({
                "name": p.name,
                "issuer": p.issuer,
                "ready": p.keys.ready(),
                "keys": current.as_ref().map(|s| s.len()).unwrap_or(0),
                "kids": current.as_ref().map(|s| s.keys().iter().filter_map(|k| k.kid.clone()).collect::<Vec<_>>()).unwrap_or_default(),
                "status": status,
            })
        })
        .collect();
    respond(
        StatusCode::OK,
        "application/json",
        json!({ "providers": list }).to_string(),
    )
}

/// A key set as identity providers serve theirs: `Cache-Control: public, max-age`, a strong
/// `ETag` (a digest of the body), and 304 to a matching `If-None-Match`.
fn cacheable(
    req: &Request<Incoming>,
    body: Bytes,
    content_type: &'static str,
    max_age: u64,
) -> Response<Full<Bytes>> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let etag = format!(
        "\"{}\"",
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            &digest.as_ref()[..16]
        )
    );
    let matches = req
        .headers()
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut r = if matches {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        crate::response::local(StatusCode::OK, content_type, body)
    };
    let h = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&etag) {
        h.insert(http::header::ETAG, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        h.insert(http::header::CACHE_CONTROL, v);
    }
    r
}

/// `/jwks/{provider}`: a tier other sidecars mirror from. A strong ETag (304 to a matching
/// If-None-Match) and max-age = what is left of this mirror's own freshness (0 once its keys
/// are stale, which `STALE_SINCE_HEADER` also says, so a downstream counts its `max_stale`
/// from the same moment). A downstream's kid miss arrives in `KID_MISS_HEADER`: an unknown
/// kid goes through this mirror's own kid-miss gate (single-flight, rate-limited, negative
/// cache) before the answer, so a new key travels up and down the tiers in one request.
async fn mirrored_set(
    req: &Request<Incoming>,
    p: &crate::auth::Provider,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    use crate::jwks::source::{KID_MISS_HEADER, STALE_SINCE_HEADER, TIER_HEADER};
    let kid = req
        .headers()
        .get(KID_MISS_HEADER)
        .filter(|_| req.method() == Method::GET)
        .and_then(|v| v.to_str().ok());
    if let Some(kid) = kid {
        let known = p.keys.with_current(|s| s.is_none_or(|s| s.has_kid(kid)));
        if !known {
            let result = p.keys.resolve_unknown_kid(kid).await;
            metrics
                .jwks_kid_miss_total
                .with_label_values(&[&p.name, result.label()])
                .inc();
        }
    }
    let Some(set) = p.keys.current() else {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            json!({"error": "no keys loaded yet"}).to_string(),
        );
    };
    let status = p.keys.status();
    let now = crate::auth::now_unix();
    // Past its freshness counts as stale at once, not only once a failed refresh said so
    // (keys restored from the cache file, a refresh still queued or retrying).
    let overdue = status.fresh_until.filter(|f| *f < now);
    let stale = p.keys.is_stale() || overdue.is_some();
    let max_age = if stale {
        0
    } else {
        status.fresh_until.map_or(0, |f| f.saturating_sub(now))
    };
    let mut r = cacheable(
        req,
        Bytes::from(set.to_jwks().to_string()),
        "application/jwk-set+json",
        max_age,
    );
    if let Some(since) = status.stale_since.or(overdue).filter(|_| stale) {
        if let Ok(v) = http::HeaderValue::from_str(&since.to_string()) {
            r.headers_mut()
                .insert(http::HeaderName::from_static(STALE_SINCE_HEADER), v);
        }
    }
    r.headers_mut().insert(
        http::HeaderName::from_static(TIER_HEADER),
        http::HeaderValue::from_static("1"),
    );
    r
}

impl Admin {
    /// Serves one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        let policy = self.policy.load_full();
        let auth = &policy.auth;
        match req.uri().path() {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
            "/readyz" => {
                // `?wait=N` (seconds, at most 30): answer as soon as the latch is set, or at
                // the deadline, so a test or a start-up script awaits readiness in one request.
                let wait = req
                    .uri()
                    .query()
                    .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("wait=")))
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::ZERO, |s| Duration::from_secs(s.min(30)));
                let latched = self.latched.load(std::sync::atomic::Ordering::Relaxed);
                if let (false, false, Ok(_waiting)) =
                    (latched, wait.is_zero(), self.waiters.try_acquire())
                {
                    let all = async {
                        for p in auth.providers() {
                            match policy.readiness {
                                Readiness::Keys => p.keys.wait_ready().await,
                                Readiness::Attempted => p.keys.wait_attempted().await,
                            }
                        }
                    };
                    let _ = tokio::time::timeout(wait, all).await;
                }
                // The policy in force now (a reload may have replaced it while waiting).
                readyz(&self.policy.load_full(), &self.latched)
            }
            "/providers" => providers(auth),
            "/assertion/jwks.json" => match &policy.assertion {
                Some(a) => cacheable(
                    &req,
                    a.jwks(crate::auth::now_unix()),
                    "application/jwk-set+json",
                    a.max_age(),
                ),
                None => respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "assertion is not enabled\n".into(),
                ),
            },
            path => {
                if let Some(p) = path
                    .strip_prefix("/jwks/")
                    .and_then(|name| auth.providers().iter().find(|p| p.name == name))
                {
                    return mirrored_set(&req, p, &self.metrics).await;
                }
                respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
            }
        }
    }
}
