//! HTTP decision endpoints.
//!
//! | endpoint | gateway | original request from |
//! |---|---|---|
//! | `path_prefix` + path | Envoy `ext_authz` http_service | the request line itself |
//! | `nginx_path` | nginx `auth_request` | `X-Original-Method`, `X-Original-URI` |
//! | `forward_path` | Traefik ForwardAuth, Caddy `forward_auth` | `X-Forwarded-Method`, `X-Forwarded-Uri` |
//!
//! Allow: 200 with the identity headers (and, for Envoy, `x-envoy-auth-headers-to-remove`
//! naming every spelling of every identity header the sidecar can set, plus any other
//! identity-looking header the client sent). Deny: 401/403/503 with `WWW-Authenticate`
//! and a JSON body. nginx turns anything but 2xx/401/403 into 500.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::config::AuthzConfig;
use crate::error::Reject;
use crate::policy::{Decision, Policy};
use crate::proxy::{local_response, reject_response, request_id};

static REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// Which gateway convention an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// Envoy: `path_prefix` + original path and query, original method.
    Envoy,
    /// nginx: `X-Original-URI`, `X-Original-Method`.
    Nginx,
    /// Traefik/Caddy: `X-Forwarded-Uri`, `X-Forwarded-Method`.
    Forwarded,
}

/// The HTTP decision service.
pub struct AuthzHttp {
    /// Current policy (shared with the proxy; swapped on reload).
    pub policy: Arc<ArcSwap<Policy>>,
    /// Endpoint paths.
    pub paths: AuthzConfig,
}

/// The original method and target of the request under decision.
fn original(
    conv: Convention,
    req: &Request<Incoming>,
    prefix: &str,
) -> Result<(String, String), &'static str> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match conv {
        Convention::Envoy => {
            let rest = &req.uri().path()[prefix.len()..];
            let path = if rest.is_empty() { "/" } else { rest };
            let target = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            Ok((req.method().to_string(), target))
        }
        Convention::Nginx => Ok((
            header("x-original-method").unwrap_or_else(|| req.method().to_string()),
            header("x-original-uri").ok_or(
                "X-Original-URI is missing: add proxy_set_header X-Original-URI $request_uri;",
            )?,
        )),
        Convention::Forwarded => Ok((
            header("x-forwarded-method").unwrap_or_else(|| req.method().to_string()),
            header("x-forwarded-uri").ok_or("X-Forwarded-Uri is missing")?,
        )),
    }
}

/// The scheme the client used, as the gateway reports it (`X-Forwarded-Proto`, first value):
/// only DPoP's `htu` reads it, and `proxy.public_origin` overrides it.
fn original_scheme(req: &Request<Incoming>) -> Option<&'static str> {
    let v = req.headers().get("x-forwarded-proto")?.to_str().ok()?;
    match v.split(',').next()?.trim().to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    }
}

/// The original host: `X-Forwarded-Host` for forward-auth, else `Host`.
fn original_host(conv: Convention, req: &Request<Incoming>) -> Option<String> {
    let get = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match conv {
        Convention::Forwarded => get("x-forwarded-host").or_else(|| get("host")),
        _ => get("host"),
    }
}

/// Splits a request target (origin-form or absolute URL) into path and query.
pub fn split_target(target: &str) -> Option<(String, Option<String>)> {
    let uri: Uri = target.parse().ok()?;
    let pq = uri.path_and_query()?;
    let path = if pq.path().is_empty() { "/" } else { pq.path() };
    Some((path.to_string(), pq.query().map(str::to_string)))
}

/// The allow answer: 200 with the identity headers, and for Envoy the removal list.
fn allow_response(
    policy: &Policy,
    conv: Convention,
    verified: Option<&crate::auth::Verified>,
    spoofed: &[HeaderName],
) -> Response<Full<Bytes>> {
    let mut headers = verified
        .map(|v| policy.identity_headers(v))
        .unwrap_or_default();
    // Every spelling of every identity header goes on the removal list, whether or not Envoy
    // showed us the client's copy (its `allowed_headers` may list only `authorization`); the
    // headers set here overwrite the client's copies.
    if conv == Convention::Envoy {
        let names = policy.headers_to_remove(spoofed, &headers);
        if !names.is_empty() {
            let list: Vec<&str> = names.iter().map(HeaderName::as_str).collect();
            if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
                headers.push((REMOVE.clone(), v));
            }
        }
    }
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::OK;
    for (k, v) in headers {
        r.headers_mut().insert(k, v);
    }
    r
}

impl AuthzHttp {
    fn convention(&self, path: &str) -> Option<Convention> {
        if path == self.paths.nginx_path {
            Some(Convention::Nginx)
        } else if path == self.paths.forward_path {
            Some(Convention::Forwarded)
        } else if crate::path::prefix_matches(path, &self.paths.path_prefix) {
            Some(Convention::Envoy)
        } else {
            None
        }
    }

    /// Answers one decision request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let rid = request_id(req.headers());
        let rid_text = rid.to_str().unwrap_or("").to_string();
        let Some(conv) = self.convention(req.uri().path()) else {
            return local_response(
                404,
                r#"{"error":"not_found","reason":"unknown authz endpoint"}"#.into(),
                &[],
            );
        };
        let (method, target) = match original(conv, &req, &self.paths.path_prefix) {
            Ok(x) => x,
            Err(msg) => {
                let body = serde_json::json!({"error": "invalid_request", "reason": "bad_path", "message": msg}).to_string();
                return local_response(400, body, &[]);
            }
        };
        let decision = match split_target(&target) {
            Some((path, query)) => {
                let host = original_host(conv, &req);
                // Envoy's header, read on Envoy's endpoint only: nginx, Traefik and Caddy pass
                // a client's copy on untouched.
                let cert = (policy.trust_forwarded_client_cert && conv == Convention::Envoy)
                    .then(|| req.headers().get("x-forwarded-client-cert"))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::authz::xfcc::thumbprint_from_xfcc);
                let original = crate::policy::Request {
                    method: &method,
                    scheme: original_scheme(&req),
                    host: host.as_deref(),
                    raw_path: &path,
                    query: query.as_deref(),
                    headers: req.headers(),
                    client_cert: cert.as_deref(),
                };
                policy.decide_request(&original).await
            }
            None => Decision {
                path: None,
                rule: None,
                scope: None,
                step_up: None,
                dpop: false,
                outcome: Err(Reject::BadPath.into()),
            },
        };
        let spoofed = policy.spoofed_header_names("authz_http", req.headers());
        let mut resp = match &decision.outcome {
            Ok(verified) => allow_response(&policy, conv, verified.as_ref(), &spoofed),
            // Envoy's http_service treats any 5xx from the authorizer as a failure of the
            // authorizer, which `failure_mode_allow: true` turns into an allow: the Envoy
            // endpoint answers "no keys" with 403 (reason no_keys, Retry-After) instead.
            Err(f) if conv == Convention::Envoy && f.reject.status() >= 500 => {
                let headers = policy.reject_headers(&f.reject, decision.params());
                let mut r = reject_response(&f.reject, &headers);
                *r.status_mut() = StatusCode::FORBIDDEN;
                r
            }
            Err(f) => reject_response(
                &f.reject,
                &policy.reject_headers(&f.reject, decision.params()),
            ),
        };

        resp.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), rid);
        policy.record(
            "authz_http",
            &decision,
            &method,
            resp.status().as_u16(),
            &rid_text,
            started,
        );
        resp
    }
}
