//! `envoy.service.auth.v3.Authorization/Check` and `grpc.health.v1` on one port.
//!
//! Allow: `OkHttpResponse` whose identity headers overwrite any the client sent,
//! `headers_to_remove` naming every spelling of every identity header the sidecar can set
//! (and any other identity-looking header the client sent), and the verified claims in
//! `dynamic_metadata` (under `jwks_sidecar`) for later filters. Deny: `DeniedHttpResponse`
//! with the status (401/403/503), `WWW-Authenticate` and the JSON body, and a non-OK
//! `status`. Keys unavailable is such a denial (503), never an RPC error, so Envoy's
//! `failure_mode_allow` cannot turn it into an allow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, DeniedHttpResponse,
    HeaderAppendAction, HttpStatusCode, OkHttpResponse,
};
use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PbValue};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::policy::Policy;

/// The gRPC authorization service.
#[derive(Clone)]
pub struct AuthzGrpc {
    /// Current policy (shared; swapped on reload).
    pub policy: Arc<ArcSwap<Policy>>,
}

fn to_pb(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_pb).collect(),
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_pb(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// The allow answer: identity headers set, every identity spelling removed, and the provider
/// and claims as dynamic metadata.
fn allow_response(
    policy: &Policy,
    verified: Option<&crate::auth::Verified>,
    spoofed: &[http::HeaderName],
) -> CheckResponse {
    let mut resp = CheckResponse::default();
    let mut ok = OkHttpResponseBuilder::new();
    let identity = verified
        .map(|v| policy.identity_headers(v))
        .unwrap_or_default();
    // Every spelling of every identity header, whether or not the check request carried the
    // client's copy; headers set below overwrite the client's copies (removing them as well
    // would drop the verified value).
    for n in policy.headers_to_remove(spoofed, &identity) {
        ok.remove_header(n.as_str());
    }
    if let Some(v) = verified {
        for (k, val) in identity {
            ok.add_header(
                k.as_str(),
                val.to_str().unwrap_or(""),
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
        let mut fields = HashMap::new();
        fields.insert(
            "provider".to_string(),
            to_pb(&Value::String(v.provider.name.clone())),
        );
        fields.insert(
            "claims".to_string(),
            to_pb(&Value::Object(v.info.claims.clone())),
        );
        let mut md = HashMap::new();
        md.insert(
            "jwks_sidecar".to_string(),
            PbValue {
                kind: Some(Kind::StructValue(Struct { fields })),
            },
        );
        resp.set_dynamic_metadata(Some(Struct { fields: md }));
    }
    let ok: OkHttpResponse = ok.build();
    resp.set_status(tonic::Status::ok("allowed"));
    resp.set_http_response(ok);
    resp
}

/// The deny answer: the status, `WWW-Authenticate` and the JSON body the client gets.
fn deny_response(
    policy: &Policy,
    reject: &crate::error::Reject,
    params: crate::policy::ChallengeParams<'_>,
) -> CheckResponse {
    let mut resp = CheckResponse::default();
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(status_code(reject.status()));
    for (k, v) in policy.reject_headers(reject, params) {
        denied.add_header(
            k.as_str(),
            v.to_str().unwrap_or(""),
            Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
            false,
        );
    }
    denied.add_header(
        "content-type",
        "application/json",
        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
        false,
    );
    denied.set_body(reject.body());
    let denied: DeniedHttpResponse = denied.build();
    let code = if reject.status() == 401 {
        tonic::Code::Unauthenticated
    } else {
        tonic::Code::PermissionDenied
    };
    resp.set_status(tonic::Status::new(code, reject.reason()));
    resp.set_http_response(denied);
    resp
}

/// The scheme of the original request (Envoy's `attributes.request.http.scheme`): only DPoP's
/// `htu` reads it, and `proxy.public_origin` overrides it.
fn scheme(req: &CheckRequest) -> Option<&'static str> {
    let http = req.attributes.as_ref()?.request.as_ref()?.http.as_ref()?;
    match http.scheme.to_ascii_lowercase().as_str() {
        "https" => Some("https"),
        "http" => Some("http"),
        _ => None,
    }
}

fn header_map(req: &CheckRequest) -> (HeaderMap, String, String, String) {
    let mut headers = HeaderMap::new();
    let Some(http) = req
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
    else {
        return (headers, String::new(), String::new(), String::new());
    };
    let mut add = |k: &str, v: &[u8]| {
        if k.starts_with(':') {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(name, value);
        }
    };
    for (k, v) in &http.headers {
        add(k, v.as_bytes());
    }
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            add(&h.key, value);
        }
    }
    (
        headers,
        http.method.clone(),
        http.path.clone(),
        http.host.clone(),
    )
}

fn status_code(status: u16) -> HttpStatusCode {
    match status {
        400 => HttpStatusCode::BadRequest,
        403 => HttpStatusCode::Forbidden,
        503 => HttpStatusCode::ServiceUnavailable,
        _ => HttpStatusCode::Unauthorized,
    }
}

#[tonic::async_trait]
impl Authorization for AuthzGrpc {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let policy = self.policy.load_full();
        let req = request.into_inner();
        let (headers, method, target, host) = header_map(&req);
        let rid = crate::proxy::request_id(&headers);
        let decision =
            match crate::authz::http::split_target(if target.is_empty() { "/" } else { &target }) {
                Some((path, query)) => {
                    let cert = policy
                        .trust_forwarded_client_cert
                        .then(|| req.attributes.as_ref()?.source.as_ref())
                        .flatten()
                        .filter(|s| !s.certificate.is_empty())
                        .and_then(|s| {
                            crate::authz::xfcc::thumbprint_from_urlencoded_pem(&s.certificate)
                        });
                    let original = crate::policy::Request {
                        method: &method,
                        scheme: scheme(&req),
                        host: (!host.is_empty()).then_some(host.as_str()),
                        raw_path: &path,
                        query: query.as_deref(),
                        headers: &headers,
                        client_cert: cert.as_deref(),
                    };
                    policy.decide_request(&original).await
                }
                None => crate::policy::Decision {
                    path: None,
                    rule: None,
                    scope: None,
                    step_up: None,
                    dpop: false,
                    outcome: Err(crate::error::Reject::BadPath.into()),
                },
            };
        let spoofed = policy.spoofed_header_names("authz_grpc", &headers);
        let (resp, status) = match &decision.outcome {
            Ok(verified) => (allow_response(&policy, verified.as_ref(), &spoofed), 200),
            Err(f) => (
                deny_response(&policy, &f.reject, decision.params()),
                f.reject.status(),
            ),
        };
        policy.record(
            "authz_grpc",
            &decision,
            &method,
            status,
            rid.to_str().unwrap_or(""),
            started,
        );
        Ok(tonic::Response::new(resp))
    }
}

/// Serves `Authorization/Check` and `grpc.health.v1` on `listener` until `shutdown`, through
/// the same accept loop as every HTTP listener (`server::serve`: connection cap, gauges,
/// error counters, workers, HTTP/2 limits and keep-alive, drain bounded by `shutdown_grace`).
/// gRPC is HTTP/2 with prior knowledge, which that loop already serves; tonic's `Routes` is
/// the request handler.
pub async fn serve(
    listener: TcpListener,
    service: AuthzGrpc,
    shutdown: watch::Receiver<bool>,
    opts: crate::server::ServeOptions,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AuthorizationServer<AuthzGrpc>>()
        .await;
    let routes = tonic::service::Routes::new(health)
        .add_service(AuthorizationServer::new(service))
        .prepare();
    let handler = move |_peer, req: http::Request<hyper::body::Incoming>| {
        let mut routes = routes.clone();
        async move {
            use tower_service::Service;
            let ready = std::future::poll_fn(|cx| {
                Service::<http::Request<hyper::body::Incoming>>::poll_ready(&mut routes, cx)
            })
            .await;
            let result = match ready {
                Ok(()) => routes.call(req).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    };
    crate::server::serve(listener, None, handler, shutdown, opts).await;
}
