//! The built-in demo and the in-process fakes the tests use: an identity provider that
//! serves discovery and a JWKS (counting fetches, able to fail, rotate or stall) and an
//! echo upstream that reports what it received (headers, path, body size, upgrades).
//!
//! `jwks-sidecar demo` wires both to a real sidecar on loopback and prints curl lines.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::jose::Alg;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::testkit::{jwks, SigningKey};

/// Shared state of a fake IdP; tests mutate it to rotate keys or break the IdP.
pub struct IdpState {
    /// The issuer URL (`http://127.0.0.1:PORT`).
    pub issuer: String,
    /// The JWKS served at `/jwks.json`.
    pub jwks: Mutex<Value>,
    /// Count of `/jwks.json` requests.
    pub jwks_fetches: AtomicUsize,
    /// Count of discovery requests.
    pub discovery_fetches: AtomicUsize,
    /// When non-zero, every request gets this status.
    pub fail_status: AtomicU16,
    /// Extra response headers for `/jwks.json` (e.g. Cache-Control).
    pub jwks_headers: Mutex<Vec<(String, String)>>,
    /// Delay before answering `/jwks.json`.
    pub delay: Mutex<Duration>,
    /// Keys used by `/token` (demo only).
    pub signing: Mutex<Vec<Arc<SigningKey>>>,
    /// When set, `/jwks.json` serves this text instead of `jwks` (PEM documents).
    pub raw_body: Mutex<Option<String>>,
    /// When set, `/jwks.json` answers 401 unless this header has this value.
    pub required_header: Mutex<Option<(String, String)>>,
    /// Every `If-None-Match` value received.
    pub if_none_match: Mutex<Vec<String>>,
}

/// A fake OpenID provider on loopback.
pub struct FakeIdp {
    /// Bound address.
    pub addr: SocketAddr,
    /// Mutable state.
    pub state: Arc<IdpState>,
}

impl FakeIdp {
    /// Starts serving `keys` on 127.0.0.1 (port 0 unless given).
    pub async fn start(keys: &[&SigningKey], port: u16) -> std::io::Result<FakeIdp> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            jwks: Mutex::new(jwks(keys)),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            fail_status: AtomicU16::new(0),
            jwks_headers: Mutex::new(Vec::new()),
            delay: Mutex::new(Duration::ZERO),
            signing: Mutex::new(Vec::new()),
            raw_body: Mutex::new(None),
            required_header: Mutex::new(None),
            if_none_match: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        serve_plain(listener, move |req| idp_handle(st.clone(), req));
        Ok(FakeIdp { addr, state })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks.json", self.state.issuer)
    }

    /// Replaces the served key set.
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        self.set_jwks(jwks(keys));
    }

    /// Replaces the served document verbatim.
    pub fn set_jwks(&self, doc: Value) {
        if let Ok(mut j) = self.state.jwks.lock() {
            *j = doc;
        }
    }

    /// Number of JWKS fetches so far.
    pub fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Makes every request fail with `status` (0 restores service).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
    }
}

async fn idp_handle(st: Arc<IdpState>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let fail = st.fail_status.load(Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/jwks.json" {
        st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        let delay = st.delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    if fail != 0 {
        return crate::response::local(
            StatusCode::from_u16(fail).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "text/plain",
            "failing on purpose\n",
        );
    }
    match path.as_str() {
        "/.well-known/openid-configuration" => {
            st.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let doc = json!({
                "issuer": st.issuer,
                "jwks_uri": format!("{}/jwks.json", st.issuer),
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            });
            crate::response::local(StatusCode::OK, "application/json", doc.to_string())
        }
        "/jwks.json" => {
            let required = st.required_header.lock().ok().and_then(|r| r.clone());
            if let Some((name, value)) = required {
                let got = req
                    .headers()
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok());
                if got != Some(value.as_str()) {
                    return crate::response::local(
                        StatusCode::UNAUTHORIZED,
                        "text/plain",
                        "missing credentials\n",
                    );
                }
            }
            if let Some(v) = req
                .headers()
                .get(http::header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
            {
                if let Ok(mut seen) = st.if_none_match.lock() {
                    seen.push(v.to_string());
                }
            }
            let raw = st.raw_body.lock().ok().and_then(|r| r.clone());
            let body =
                raw.unwrap_or_else(|| st.jwks.lock().map(|j| j.to_string()).unwrap_or_default());
            let mut r = crate::response::local(StatusCode::OK, "application/json", body);
            if let Ok(h) = st.jwks_headers.lock() {
                for (k, v) in h.iter() {
                    if let (Ok(k), Ok(v)) = (
                        http::HeaderName::try_from(k.as_str()),
                        http::HeaderValue::from_str(v),
                    ) {
                        r.headers_mut().insert(k, v);
                    }
                }
            }
            r
        }
        "/token" => {
            let q: BTreeMap<String, String> = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let key = st.signing.lock().ok().and_then(|s| s.first().cloned());
            let Some(key) = key else {
                return crate::response::local(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "no signing key\n",
                );
            };
            let ttl: i64 = q.get("ttl").and_then(|t| t.parse().ok()).unwrap_or(3600);
            let sub = q.get("sub").cloned().unwrap_or_else(|| "demo-user".into());
            let now = crate::auth::now_unix() as i64;
            let claims = json!({"iss": st.issuer, "sub": sub, "aud": "demo-api", "iat": now,
                "exp": now + ttl, "email": format!("{sub}@example.com"), "scope": "read write"});
            crate::response::local(StatusCode::OK, "text/plain", key.mint(&claims) + "\n")
        }
        _ => crate::response::local(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// An upstream that answers every request with JSON describing what it received.
pub struct EchoUpstream {
    /// Bound address.
    pub addr: SocketAddr,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
}

impl EchoUpstream {
    /// Starts on 127.0.0.1 port 0.
    pub async fn start() -> std::io::Result<EchoUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        serve_plain(listener, move |req| {
            count.fetch_add(1, Ordering::SeqCst);
            echo_handle(req)
        });
        Ok(EchoUpstream { addr, requests })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn echo_handle(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r =
            crate::response::local(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        if let Some(up) = req.headers().get(http::header::UPGRADE) {
            r.headers_mut().insert(http::header::UPGRADE, up.clone());
        }
        return r;
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    // `/slow?ms=N` answers after N milliseconds (timeouts and graceful-drain tests).
    if let Some((_, q)) = path.split_once("/slow?ms=") {
        let ms: u64 = q.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Count the body without keeping it: uploads of any size stay flat in memory.
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let doc = json!({"method": method, "path": path, "headers": headers, "body_bytes": body_bytes});
    crate::response::local(StatusCode::OK, "application/json", doc.to_string())
}

fn serve_plain<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

async fn bind_or_any(port: u16) -> u16 {
    match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(_) => port,
        Err(_) => 0,
    }
}

/// The demo's configuration: the proxy and admin on loopback, one provider by discovery.
fn demo_config(proxy_port: u16, admin_port: u16, upstream: &str, issuer: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{proxy_port}"
upstream = "{upstream}"
public_paths = ["/public"]
[admin]
listen = "127.0.0.1:{admin_port}"
[log]
format = "text"
level = "warn"
[[providers]]
name = "demo"
issuer = "{issuer}"
discovery = true
audiences = ["demo-api"]
refresh_interval = "60s"
[providers.claim_headers]
sub = "x-jwt-sub"
email = "x-jwt-email"
scope = "x-jwt-scope"
"#,
    )
}

/// The copy-paste instructions printed at start.
fn print_instructions(running: &crate::Running, echo: &str, iss: &str, good: &str, expired: &str) {
    let p = running.proxy_addr;
    let a = running
        .admin_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!(
        r#"
jwks-sidecar demo is running (Ctrl-C to stop)
  proxy     http://{p}   (verifies tokens, forwards to the echo app)
  echo app  {echo}    (answers with the headers it received)
  issuer    {iss}    (discovery, JWKS, and /token to mint more)
  admin     http://{a}   (/metrics /readyz /providers /jwks/demo)

Paste these into another terminal:

export GOOD='{good}'
export EXPIRED='{expired}'

# 1. Valid token -> 200; the app sees "x-jwt-sub": ["demo-user"]
curl -s -H "Authorization: Bearer $GOOD" http://{p}/api/hello

# 2. No token -> 401 with WWW-Authenticate: Bearer realm="jwks-sidecar"
curl -si http://{p}/api/hello

# 3. Expired token -> 401, error="invalid_token", reason "expired"
curl -si -H "Authorization: Bearer $EXPIRED" http://{p}/api/hello

# 4. Spoofed identity headers -> 200; the app sees only the real "demo-user", never "admin"
curl -s -H "Authorization: Bearer $GOOD" -H "X-JWT-Sub: admin" -H "x_jwt_sub: admin" http://{p}/api/hello

# 5. Public path, no token -> 200; spoofed headers are still removed
curl -s -H "X-JWT-Sub: admin" http://{p}/public/info

# 6. Tampered signature -> 401, reason "bad_signature"
curl -si -H "Authorization: Bearer ${{GOOD%?????}}AAAAA" http://{p}/api/hello

# 7. Decisions and key freshness
curl -s http://{a}/metrics | grep -E '^jwks_sidecar_(requests_total|jwks_keys)'

# A fresh token any time:
curl -s '{iss}/token?sub=alice'
"#,
    );
}

/// Runs the demo until Ctrl-C.
pub async fn run(port: u16) -> Result<(), String> {
    crate::install_crypto_provider();
    let key = Arc::new(SigningKey::generate(Alg::RS256, "demo-rs256"));
    let idp = FakeIdp::start(&[&key], 0)
        .await
        .map_err(|e| format!("demo issuer: {e}"))?;
    if let Ok(mut s) = idp.state.signing.lock() {
        s.push(key.clone());
    }
    let echo = EchoUpstream::start()
        .await
        .map_err(|e| format!("echo upstream: {e}"))?;
    let proxy_port = bind_or_any(port).await;
    let admin_port = bind_or_any(9901).await;
    let toml = demo_config(proxy_port, admin_port, &echo.url(), &idp.issuer());
    let plan = crate::plan::from_toml_str(&toml).map_err(|e| e.to_string())?;
    crate::telemetry::init(&plan.config.log);
    let running = crate::start_with(plan, None, Default::default()).await?;
    if tokio::time::timeout(Duration::from_secs(5), running.keys_ready())
        .await
        .is_err()
    {
        tracing::warn!("the demo identity provider's keys did not load within 5 s");
    }
    let now = crate::auth::now_unix();
    let good = key.mint(
        &json!({"iss": idp.issuer(), "sub": "demo-user", "aud": "demo-api",
        "iat": now, "exp": now + 3600, "email": "demo-user@example.com", "scope": "read write"}),
    );
    let expired = key.mint(
        &json!({"iss": idp.issuer(), "sub": "demo-user", "aud": "demo-api",
        "iat": now - 7200, "exp": now - 3600}),
    );
    print_instructions(&running, &echo.url(), &idp.issuer(), &good, &expired);
    crate::wait_for_signal().await;
    running.shutdown();
    running.wait().await;
    Ok(())
}
