//! The inline proxy: normalise the path, strip inbound identity headers, authenticate
//! (unless the path is public), add verified-claim headers, forward, and log one line.
//!
//! A refused request never reaches the upstream. Upstream failures become 502/504 with a
//! JSON body and a metric. The service holds the compiled config behind an `ArcSwap`
//! so a reload can replace it without touching connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::{now_unix, Authenticator, Failure, Verified};
use crate::config::Config;
use crate::error::Reject;
use crate::path;
use crate::upstream::{json_body, remove_hop_by_hop, upgrade_request, Upstream, UpstreamError};

/// Response body: the upstream's streamed body, or a small local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Everything the proxy needs per request, compiled from one config.
pub struct ProxyRuntime {
    /// Authentication pipeline.
    pub auth: Arc<Authenticator>,
    /// Public path prefixes.
    pub public_paths: Vec<String>,
    /// `WWW-Authenticate` realm.
    pub realm: String,
    /// Optional payload header.
    pub payload_header: Option<HeaderName>,
    /// Keep `Authorization` when forwarding.
    pub forward_authorization: bool,
    /// Accept `%2F`/`%5C`.
    pub allow_encoded_slash: bool,
}

impl ProxyRuntime {
    /// Compiles the proxy part of a config.
    pub fn new(config: &Config, auth: Arc<Authenticator>) -> Self {
        ProxyRuntime {
            auth,
            public_paths: config.proxy.public_paths.clone(),
            realm: config.proxy.realm.clone(),
            payload_header: config
                .proxy
                .payload_header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok()),
            forward_authorization: config.proxy.forward_authorization,
            allow_encoded_slash: config.proxy.allow_encoded_slash,
        }
    }

    /// Whether a normalised path is public.
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths
            .iter()
            .any(|p| path::prefix_matches(path, p))
    }
}

/// The proxy service state.
pub struct Proxy {
    /// Current compiled config (swapped on reload).
    pub runtime: ArcSwap<ProxyRuntime>,
    /// The application.
    pub upstream: Upstream,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

/// Request ids: a random per-process prefix and a counter (unique, cheap, not secret).
fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut b);
        u32::from_le_bytes(b)
    });
    format!(
        "{prefix:08x}{:016x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.to_str().is_ok())
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&new_request_id()).unwrap_or(HeaderValue::from_static("0"))
        })
}

/// A local answer with a JSON body.
pub fn local_response(
    status: u16,
    body: String,
    headers: &[(HeaderName, HeaderValue)],
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(json_body(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// The answer for a refusal: status, `WWW-Authenticate`, `Retry-After` on 503, JSON body.
pub fn reject_response(reject: &Reject, realm: &str) -> Response<Full<Bytes>> {
    let mut extra = Vec::new();
    if let Some(v) = reject
        .www_authenticate(realm)
        .and_then(|s| HeaderValue::from_str(&s).ok())
    {
        extra.push((header::WWW_AUTHENTICATE, v));
    }
    if reject.status() == 503 {
        extra.push((header::RETRY_AFTER, HeaderValue::from_static("5")));
    }
    local_response(reject.status(), reject.body(), &extra)
}

struct LogFields<'a> {
    request_id: &'a HeaderValue,
    method: &'a http::Method,
    path: &'a str,
    decision: &'static str,
    reason: &'static str,
    provider: Option<&'a str>,
    kid: Option<&'a str>,
}

impl Proxy {
    /// Handles one request end to end.
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let rt = self.runtime.load_full();
        let metrics = rt.auth.metrics.clone();
        let rid = request_id(req.headers());
        let method = req.method().clone();

        let normalized = match path::normalize(req.uri().path(), rt.allow_encoded_slash) {
            Ok(p) => p,
            Err(reject) => {
                let resp = reject_response(&reject, &rt.realm);
                return self.finish_local(
                    resp,
                    &rt,
                    started,
                    LogFields {
                        request_id: &rid,
                        method: &method,
                        path: req.uri().path(),
                        decision: "deny",
                        reason: reject.reason(),
                        provider: None,
                        kid: None,
                    },
                );
            }
        };

        let removed = crate::auth::claims::strip_reserved(req.headers_mut(), &rt.auth.reserved);
        if !removed.is_empty() {
            metrics
                .spoofed_headers_removed_total
                .with_label_values(&["proxy"])
                .inc_by(removed.len() as u64);
        }

        let public = rt.is_public(&normalized);
        let verified: Option<Verified> = if public {
            None
        } else {
            let outcome = match rt.auth.extract(req.headers(), req.uri().query()) {
                Ok(Some(token)) => rt.auth.authenticate(token, now_unix()).await,
                Ok(None) => Err(Failure::from(Reject::Missing)),
                Err(r) => Err(Failure::from(r)),
            };
            match outcome {
                Ok(v) => Some(v),
                Err(f) => {
                    let resp = reject_response(&f.reject, &rt.realm);
                    let provider = f.provider.as_ref().map(|p| p.name.as_str());
                    return self.finish_local(
                        resp,
                        &rt,
                        started,
                        LogFields {
                            request_id: &rid,
                            method: &method,
                            path: &normalized,
                            decision: "deny",
                            reason: f.reject.reason(),
                            provider,
                            kid: f.kid.as_deref(),
                        },
                    );
                }
            }
        };

        // Identity headers from the verified token.
        if let Some(v) = &verified {
            for (name, value) in &v.info.headers {
                req.headers_mut().insert(name.clone(), value.clone());
            }
            if let Some(h) = &rt.payload_header {
                if let Ok(value) = HeaderValue::from_str(&v.info.payload_b64) {
                    req.headers_mut().insert(h.clone(), value);
                }
            }
            if !rt.forward_authorization {
                req.headers_mut().remove(header::AUTHORIZATION);
            }
        }

        let (reason, provider, kid) = match &verified {
            Some(v) => ("ok", Some(v.provider.name.as_str()), v.info.kid.as_deref()),
            None => ("public", None, None),
        };
        let fields = LogFields {
            request_id: &rid,
            method: &method,
            path: &normalized,
            decision: "allow",
            reason,
            provider,
            kid,
        };
        metrics
            .requests_total
            .with_label_values(&["proxy", provider.unwrap_or(""), "allow", reason])
            .inc();
        self.forward(req, peer, &normalized, rid.clone(), started, fields)
            .await
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        normalized: &str,
        rid: HeaderValue,
        started: Instant,
        fields: LogFields<'_>,
    ) -> Response<ProxyBody> {
        let rt = self.runtime.load();
        let metrics = &rt.auth.metrics;
        let upgrade = if req.version() == Version::HTTP_11 {
            upgrade_request(req.headers())
        } else {
            None
        };
        let original_host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let uri = self.upstream.uri_for(normalized, req.uri().query());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        {
            let h = req.headers_mut();
            remove_hop_by_hop(h);
            if let Some(up) = &upgrade {
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                h.insert(header::UPGRADE, up.clone());
            }
            h.insert(X_REQUEST_ID.clone(), rid.clone());
            let peer_ip = peer.ip().to_string();
            let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {peer_ip}"),
                None => peer_ip,
            };
            if let Ok(v) = HeaderValue::from_str(&xff) {
                h.insert(X_FORWARDED_FOR.clone(), v);
            }
            h.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(self.scheme),
            );
            if let Some(host) = &original_host {
                h.insert(X_FORWARDED_HOST.clone(), host.clone());
                if !h.contains_key(header::HOST) {
                    h.insert(header::HOST, host.clone());
                }
            }
        }
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;

        let up_started = Instant::now();
        let result = match client_upgrade {
            Some(on_upgrade) => self.upstream.send_upgrade(req, on_upgrade).await,
            None => self.upstream.send(req).await,
        };
        metrics
            .upstream_duration
            .observe(up_started.elapsed().as_secs_f64());
        let mut resp = match result {
            Ok(resp) => resp.map(Either::Left),
            Err(e) => {
                metrics
                    .upstream_errors_total
                    .with_label_values(&[e.label()])
                    .inc();
                let body = serde_json::json!({
                    "error": if e == UpstreamError::Timeout { "gateway_timeout" } else { "bad_gateway" },
                    "reason": format!("upstream_{}", e.label()),
                })
                .to_string();
                let resp = local_response(e.status(), body, &[(X_REQUEST_ID.clone(), rid)]);
                log_line(&fields, resp.status().as_u16(), started);
                return resp.map(Either::Right);
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            remove_hop_by_hop(resp.headers_mut());
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
        log_line(&fields, resp.status().as_u16(), started);
        resp
    }

    fn finish_local(
        &self,
        mut resp: Response<Full<Bytes>>,
        rt: &ProxyRuntime,
        started: Instant,
        fields: LogFields<'_>,
    ) -> Response<ProxyBody> {
        rt.auth
            .metrics
            .requests_total
            .with_label_values(&[
                "proxy",
                fields.provider.unwrap_or(""),
                fields.decision,
                fields.reason,
            ])
            .inc();
        resp.headers_mut()
            .insert(X_REQUEST_ID.clone(), fields.request_id.clone());
        log_line(&fields, resp.status().as_u16(), started);
        resp.map(Either::Right)
    }
}

fn log_line(f: &LogFields<'_>, status: u16, started: Instant) {
    tracing::info!(
        target: "jwks_sidecar::access",
        request_id = f.request_id.to_str().unwrap_or(""),
        method = %f.method,
        path = f.path,
        decision = f.decision,
        reason = f.reason,
        provider = f.provider.unwrap_or(""),
        kid = truncate(f.kid.unwrap_or(""), 64),
        status,
        latency_us = started.elapsed().as_micros() as u64,
        "request"
    );
}

/// At most `max` bytes of an untrusted string, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
