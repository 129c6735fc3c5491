//! The inline proxy: strip inbound identity headers, decide (see `policy`), add the
//! verified identity headers, forward to the app, and log one line.
//!
//! A refused request never reaches the upstream. Upstream failures become 502/504 with a
//! JSON body and a metric. The policy sits behind an `ArcSwap` so a reload replaces it
//! without touching connections or in-flight requests.

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

use crate::error::Reject;
use crate::policy::Policy;
use crate::upstream::{remove_hop_by_hop, upgrade_request, Upstream, UpstreamError};

/// Response body: the upstream's streamed body, or a small local one.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The proxy service state.
pub struct Proxy {
    /// Current policy (swapped on reload).
    pub policy: Arc<ArcSwap<Policy>>,
    /// The application.
    pub upstream: Upstream,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// Exact bound on the request's header section (hyper's own bound is approximate).
    pub max_header_bytes: usize,
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

/// The length of the request target as sent (`uri.to_string().len()` without building it).
fn uri_len(uri: &http::Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => s.len() + 3 + a.as_str().len() + pq,
        (None, Some(a)) => a.as_str().len() + pq,
        _ => pq,
    }
}

/// The request's `x-request-id` if sane, else a new one.
pub fn request_id(headers: &http::HeaderMap) -> HeaderValue {
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
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = crate::response::no_store(status, "application/json", body);
    for (k, v) in headers {
        resp.headers_mut().insert(k.clone(), v.clone());
    }
    resp
}

/// The answer for a refusal: its status, `headers` (see `Policy::reject_headers`) and the
/// JSON body.
pub fn reject_response(
    reject: &Reject,
    headers: &[(HeaderName, HeaderValue)],
) -> Response<Full<Bytes>> {
    local_response(reject.status(), reject.body(), headers)
}

/// 431 for a request head (with its target) over `max_header_bytes`, counted.
fn head_too_large(metrics: &crate::metrics::Metrics, rid: HeaderValue) -> Response<ProxyBody> {
    metrics
        .connection_errors_total
        .with_label_values(&["proxy", "too_large"])
        .inc();
    let mut resp = local_response(
        431,
        r#"{"error":"invalid_request","reason":"headers_too_large"}"#.into(),
        &[],
    );
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
    resp.map(Either::Right)
}

/// The protected-resource metadata document (RFC 9728), answered here without a token for
/// `GET`/`HEAD` of its well-known paths when `[resource]` is configured.
fn resource_metadata(policy: &Policy, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let r = policy.resource.as_ref()?;
    if !matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        || !r.serves(req.uri().path())
    {
        return None;
    }
    let mut resp = crate::response::local(StatusCode::OK, "application/json", r.document());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Some(resp)
}

/// Sets the verified identity headers (overwriting any client copy) and drops
/// `Authorization` unless it is to be forwarded.
fn add_identity(policy: &Policy, headers: &mut http::HeaderMap, v: &crate::auth::Verified) {
    for (name, value) in policy.identity_headers(v) {
        headers.insert(name, value);
    }
    if !policy.forward_authorization {
        headers.remove(header::AUTHORIZATION);
        headers.remove("dpop");
    }
}

impl Proxy {
    /// The proxy of a `[proxy]` section: its upstream client (one pool per worker) and limits.
    pub fn new(
        config: &crate::config::ProxyConfig,
        policy: Arc<ArcSwap<Policy>>,
        tls: bool,
        workers: usize,
    ) -> Result<Self, String> {
        Ok(Proxy {
            policy,
            upstream: Upstream::new(
                &config.upstream,
                config.upstream_connect_timeout,
                config.upstream_timeout,
                config.max_upstream_header_bytes,
                workers,
            )?,
            scheme: if tls { "https" } else { "http" },
            max_header_bytes: config.max_header_bytes,
        })
    }

    /// Handles one request end to end.
    pub async fn handle(
        self: Arc<Self>,
        peer: SocketAddr,
        mut req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let metrics = policy.auth.metrics.clone();
        let rid = request_id(req.headers());
        let rid_text = rid.to_str().unwrap_or("").to_string();
        let method = req.method().clone();

        if crate::upstream::head_size(req.headers()) + uri_len(req.uri()) > self.max_header_bytes {
            return head_too_large(&metrics, rid);
        }
        if let Some(doc) = resource_metadata(&policy, &req) {
            return doc.map(Either::Right);
        }
        for n in policy.spoofed_header_names("proxy", req.headers()) {
            req.headers_mut().remove(n);
        }

        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let client_cert = req
            .extensions()
            .get::<crate::server::ClientCert>()
            .map(|c| c.0.clone());
        let original = crate::policy::Request {
            method: method.as_str(),
            scheme: None,
            host,
            raw_path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            client_cert: client_cert.as_deref(),
        };
        let decision = policy.decide_request(&original).await;
        // Hop-by-hop processing of the client's request happens here, after the decision
        // (which may use a header the client nominated, such as `Authorization`) and before
        // the identity headers are added: nothing the client sends can remove or alter a
        // header the proxy sets. (`decide` already refused a `Connection` that names one.)
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
        remove_hop_by_hop(req.headers_mut());
        let resp = match &decision.outcome {
            Err(f) => {
                let headers = policy.reject_headers(&f.reject, decision.params());
                let mut resp = reject_response(&f.reject, &headers);
                resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
                resp.map(Either::Right)
            }
            Ok(verified) => {
                if let Some(v) = verified {
                    add_identity(&policy, req.headers_mut(), v);
                }
                let normalized = decision.path.as_deref().unwrap_or("/");
                self.forward(req, peer, normalized, upgrade, original_host, rid, &metrics)
                    .await
            }
        };
        policy.record(
            "proxy",
            &decision,
            method.as_str(),
            resp.status().as_u16(),
            &rid_text,
            started,
        );
        resp
    }

    /// Sends a decided request (hop-by-hop headers already removed) to the app.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        normalized: &str,
        upgrade: Option<HeaderValue>,
        original_host: Option<HeaderValue>,
        rid: HeaderValue,
        metrics: &crate::metrics::Metrics,
    ) -> Response<ProxyBody> {
        let uri = self.upstream.uri_for(normalized, req.uri().query());
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        {
            let h = req.headers_mut();
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
                    "error": match e {
                        UpstreamError::Timeout => "gateway_timeout",
                        UpstreamError::ClientBody => "invalid_request",
                        _ => "bad_gateway",
                    },
                    "reason": format!("upstream_{}", e.label()),
                })
                .to_string();
                return local_response(e.status(), body, &[(X_REQUEST_ID.clone(), rid)])
                    .map(Either::Right);
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            remove_hop_by_hop(resp.headers_mut());
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::uri_len;

    #[test]
    fn uri_len_matches_the_rendered_uri() {
        for u in [
            "/",
            "/a/b?c=d&e",
            "*",
            "http://example.com/x?y",
            "https://h:8443/",
            "example.com:443",
        ] {
            let uri: http::Uri = u.parse().expect("uri");
            assert_eq!(uri_len(&uri), uri.to_string().len(), "{u}");
        }
    }
}
