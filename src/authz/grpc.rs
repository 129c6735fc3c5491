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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
use tokio::net::{TcpListener, TcpStream};
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
fn deny_response(policy: &Policy, reject: &crate::error::Reject) -> CheckResponse {
    let mut resp = CheckResponse::default();
    let mut denied = DeniedHttpResponseBuilder::new();
    denied.set_http_status(status_code(reject.status()));
    for (k, v) in crate::proxy::reject_headers(reject, &policy.realm) {
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
                    let host = (!host.is_empty()).then_some(host.as_str());
                    policy
                        .decide(&method, host, &path, query.as_deref(), &headers)
                        .await
                }
                None => crate::policy::Decision {
                    path: None,
                    rule: None,
                    outcome: Err(crate::error::Reject::BadPath.into()),
                },
            };
        let spoofed = policy.spoofed_header_names("authz_grpc", &headers);
        let (resp, status) = match &decision.outcome {
            Ok(verified) => (allow_response(&policy, verified.as_ref(), &spoofed), 200),
            Err(f) => (deny_response(&policy, &f.reject), f.reject.status()),
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

/// Serves Check and the health service until `shutdown` flips. Every connection worker
/// (see [`crate::server::set_workers`]), or the current runtime without workers, runs its own
/// gRPC server, fed round-robin by the accept loop here, so Checks scale with the workers
/// like the HTTP listeners do. After `shutdown` the servers drain for at most `grace`: a
/// client holding a stream open (a health `Watch` never ends by itself) cannot hold up the
/// exit. The listener has the same connection cap, open-connections gauge and error
/// counters as the HTTP listeners (`opts`, named `authz_grpc`).
pub async fn serve(
    listener: TcpListener,
    service: AuthzGrpc,
    mut shutdown: watch::Receiver<bool>,
    opts: crate::server::ServeOptions,
) {
    let grace = opts.grace;
    let limit = crate::server::ConnLimit::new(&opts);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<AuthorizationServer<AuthzGrpc>>()
        .await;
    let runtimes = match opts.workers.handles() {
        [] => vec![tokio::runtime::Handle::current()],
        workers => workers.to_vec(),
    };
    let mut queues = Vec::with_capacity(runtimes.len());
    let mut servers = Vec::with_capacity(runtimes.len());
    for runtime in &runtimes {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        queues.push(tx);
        servers.push(runtime.spawn(serve_incoming(
            Handed(rx),
            health.clone(),
            service.clone(),
            shutdown.clone(),
            opts.clone(),
        )));
    }
    // The connection is dropped (closed); counted like the HTTP listeners' hand-off failures.
    let handoff_failed = |e: &dyn std::fmt::Display| {
        if let Some(m) = &opts.metrics {
            m.connection_errors_total
                .with_label_values(&["authz_grpc", "io"])
                .inc();
        }
        tracing::warn!(listener = "authz_grpc", error = %e, "cannot hand a connection to its gRPC server; closed");
    };
    let mut next = 0usize;
    loop {
        let Some(slot) = limit.acquire(&mut shutdown).await else {
            break;
        };
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                limit.accept_failed(&e).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let queue = &queues[next % queues.len()];
        next = next.wrapping_add(1);
        match stream.into_std() {
            // Waits while that server has 64 connections not yet taken up (back-pressure),
            // but never past shutdown: a stopping server no longer takes any up.
            Ok(s) => tokio::select! {
                sent = queue.send((s, slot)) => if sent.is_err() {
                    handoff_failed(&"the server has stopped");
                },
                _ = shutdown.wait_for(|s| *s) => break,
            },
            Err(e) => handoff_failed(&e),
        }
    }
    drop(listener); // stop accepting at once; the servers drain their connections
    drop(queues);
    let drained = tokio::time::timeout(grace, async {
        for server in servers.iter_mut() {
            let _ = server.await;
        }
    })
    .await;
    if drained.is_err() {
        for server in &servers {
            server.abort();
        }
        drain_timed_out();
    }
}

fn drain_timed_out() {
    tracing::warn!(
        listener = "authz_grpc",
        "gRPC connections still open after shutdown_grace; closing them"
    );
}

/// Accepted connections handed to one server, as a tonic `incoming` stream: each socket is
/// registered with the reactor of the runtime that polls the stream (that server's).
struct Handed(tokio::sync::mpsc::Receiver<(std::net::TcpStream, crate::server::ConnSlot)>);

impl futures_core::Stream for Handed {
    type Item = std::io::Result<Counted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|s| {
            s.map(|(stream, slot)| {
                TcpStream::from_std(stream).map(|inner| Counted { inner, _slot: slot })
            })
        })
    }
}

/// A gRPC connection holding its share of the listener's limits (connection permit and
/// open-connections gauge) until tonic drops it.
struct Counted {
    inner: TcpStream,
    _slot: crate::server::ConnSlot,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

async fn serve_incoming<I, IO, E, H>(
    incoming: I,
    health: tonic_health::pb::health_server::HealthServer<H>,
    service: AuthzGrpc,
    mut shutdown: watch::Receiver<bool>,
    opts: crate::server::ServeOptions,
) where
    I: futures_core::Stream<Item = Result<IO, E>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    H: tonic_health::pb::health_server::Health,
{
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(opts.max_h2_streams)
        .http2_max_header_list_size(opts.max_header_bytes.min(u32::MAX as usize) as u32)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health)
        .add_service(AuthorizationServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC authz listener failed");
    }
}
