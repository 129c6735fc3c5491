//! The fake identity provider every suite uses: discovery, a JWKS (counting fetches, able to
//! fail, stall, require credentials or serve raw text), and token minting with keys made at
//! start. In-process tests drive it through `FakeIdp`; `jwks-sidecar idp` serves it alone
//! with an HTTP control API for the Python and Node suites:
//!
//! - `GET /.well-known/openid-configuration`, `GET /jwks.json`
//! - `GET /token?sub=&ttl=`: a demo token; `POST /token {"claims": {..}, "header": {..},
//!   "kid": ".."}`: exactly these claims, signed by the key `kid` (default: the newest), the
//!   header members merged over `{"alg", "kid", "typ": "JWT"}`
//! - `POST /control/rotate {"alg": "ES256", "kid": "..", "keep_old": true}`: a new key, first
//!   in the JWKS and the signing default; without `keep_old` the old keys are unpublished
//! - `POST /control/unpublish {"kids": [..]}`: those keys leave the JWKS but still sign
//!   (tokens of retired keys)
//! - `POST /control/fail {"status": 503}` (0 restores), `POST /control/delay {"ms": 1000}`,
//!   `POST /control/jwks_headers {"cache-control": "max-age=60"}`, `POST /control/etag
//!   {"enabled": true}` (an `ETag` on the JWKS and 304 to a matching `If-None-Match`),
//!   `POST /control/raw_body {"body": ".."}` or `{"size": n}` (serve that text, or an
//!   `n`-byte JSON array, instead of the key set; `{}` restores)
//! - `GET /control/stats`: `{"jwks_fetches": n, "discovery_fetches": n, "kids": [..],
//!   "published": [..]}`
//!
//! Control endpoints answer even while the IdP is told to fail.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::serve_plain;
use crate::jose::Alg;
use crate::response::local;
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
    /// Answer with an `ETag` (a hash of the body), and 304 to a matching `If-None-Match`.
    pub etag: AtomicBool,
    /// Kids of signing keys that are no longer published (they still sign, for tokens of
    /// retired keys).
    pub unpublished: Mutex<Vec<String>>,
    /// DPoP client keys by name (`POST /dpop`), made on first use.
    pub holders: Mutex<std::collections::HashMap<String, Arc<SigningKey>>>,
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
            etag: AtomicBool::new(false),
            unpublished: Mutex::new(Vec::new()),
            holders: Mutex::new(std::collections::HashMap::new()),
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
    if path.starts_with("/control/") {
        return control(&st, req).await;
    }
    if path == "/token" && req.method() == Method::POST {
        return mint(&st, req).await;
    }
    if path == "/dpop" && req.method() == Method::POST {
        return match json_body(req).await {
            Ok(body) => json_ok(super::dpop::proof_for(&st.holders, &body)),
            Err(r) => r,
        };
    }
    if path == "/jwks.json" {
        st.jwks_fetches.fetch_add(1, Ordering::SeqCst);
        let delay = st.delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
    if fail != 0 {
        return local(
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
            local(StatusCode::OK, "application/json", doc.to_string())
        }
        "/jwks.json" => serve_jwks(&st, &req),
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
                return local(StatusCode::NOT_FOUND, "text/plain", "no signing key\n");
            };
            let ttl: i64 = q.get("ttl").and_then(|t| t.parse().ok()).unwrap_or(3600);
            let sub = q.get("sub").cloned().unwrap_or_else(|| "demo-user".into());
            let now = crate::auth::now_unix() as i64;
            let claims = json!({"iss": st.issuer, "sub": sub, "aud": "demo-api", "iat": now,
                "exp": now + ttl, "email": format!("{sub}@example.com"), "scope": "read write"});
            local(StatusCode::OK, "text/plain", key.mint(&claims) + "\n")
        }
        _ => local(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `/jwks.json`: the key set (or the raw body set by a test), with the configured response
/// headers; 401 without the required credential; `If-None-Match` values are recorded.
fn serve_jwks(st: &IdpState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let required = st.required_header.lock().ok().and_then(|r| r.clone());
    if let Some((name, value)) = required {
        let got = req
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok());
        if got != Some(value.as_str()) {
            return local(
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
    let body = raw.unwrap_or_else(|| st.jwks.lock().map(|j| j.to_string()).unwrap_or_default());
    let etag = st.etag.load(Ordering::SeqCst).then(|| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
        let hex: String = d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{hex}\"")
    });
    let matches = |tag: &String| {
        req.headers()
            .get(http::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            == Some(tag.as_str())
    };
    let mut r = match &etag {
        Some(tag) if matches(tag) => local(StatusCode::NOT_MODIFIED, "application/json", ""),
        _ => local(StatusCode::OK, "application/json", body),
    };
    if let Some(tag) = etag.and_then(|t| http::HeaderValue::from_str(&t).ok()) {
        r.headers_mut().insert(http::header::ETAG, tag);
    }
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

/// The JSON body of a control or mint request (at most 64 KiB).
async fn json_body(req: Request<Incoming>) -> Result<Value, Response<Full<Bytes>>> {
    let bad = |m: String| local(StatusCode::BAD_REQUEST, "text/plain", m + "\n");
    let bytes = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| bad(format!("body: {e}")))?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("body is not JSON: {e}")))
}

fn json_ok(v: Value) -> Response<Full<Bytes>> {
    local(StatusCode::OK, "application/json", v.to_string())
}

/// `POST /token`: the given claims, signed by the key `kid` (default: the newest).
async fn mint(st: &IdpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let keys = st.signing.lock().map(|s| s.clone()).unwrap_or_default();
    let key = match body.get("kid").and_then(Value::as_str) {
        Some(kid) => keys.iter().find(|k| k.kid == kid),
        None => keys.first(),
    };
    let Some(key) = key else {
        return local(StatusCode::NOT_FOUND, "text/plain", "no such signing key\n");
    };
    let mut header = json!({"alg": key.alg.name(), "kid": key.kid, "typ": "JWT"});
    if let (Some(h), Some(extra)) = (
        header.as_object_mut(),
        body.get("header").and_then(Value::as_object),
    ) {
        for (k, v) in extra {
            if v.is_null() {
                h.remove(k);
            } else {
                h.insert(k.clone(), v.clone());
            }
        }
    }
    let claims = body.get("claims").cloned().unwrap_or(json!({}));
    local(
        StatusCode::OK,
        "text/plain",
        key.mint_with_header(&header, &claims),
    )
}

/// `POST /control/rotate`: a new key, first in the key set and the signing default.
fn rotate(st: &IdpState, body: &Value) -> Response<Full<Bytes>> {
    let alg = body
        .get("alg")
        .and_then(Value::as_str)
        .and_then(Alg::parse)
        .unwrap_or(Alg::ES256);
    let n = st.signing.lock().map(|s| s.len()).unwrap_or(0) + 1;
    let kid = body.get("kid").and_then(Value::as_str).map_or_else(
        || format!("{}-{n}", alg.name().to_ascii_lowercase()),
        str::to_string,
    );
    let keep_old = body
        .get("keep_old")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let key = Arc::new(SigningKey::generate(alg, &kid));
    if let Ok(mut s) = st.signing.lock() {
        if !keep_old {
            s.clear();
        }
        s.insert(0, key);
    }
    publish(st);
    json_ok(stats(st))
}

/// The control API (see the module documentation).
async fn control(st: &IdpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/control/stats" {
        return json_ok(stats(st));
    }
    let body = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match path.as_str() {
        "/control/rotate" => rotate(st, &body),
        "/control/unpublish" => {
            let kids = body
                .get("kids")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Ok(mut u) = st.unpublished.lock() {
                u.extend(kids.iter().filter_map(Value::as_str).map(str::to_string));
            }
            publish(st);
            json_ok(stats(st))
        }
        "/control/etag" => {
            let on = body.get("enabled").and_then(Value::as_bool).unwrap_or(true);
            st.etag.store(on, Ordering::SeqCst);
            json_ok(stats(st))
        }
        "/control/raw_body" => {
            // {"body": "text"} serves that text; {"size": n} a JSON array padded to n bytes;
            // {} serves the key set again.
            let raw = match (
                body.get("body").and_then(Value::as_str),
                body.get("size").and_then(Value::as_u64),
            ) {
                (Some(text), _) => Some(text.to_string()),
                (None, Some(n)) => Some(format!(
                    "[{}]",
                    " ".repeat((n as usize).saturating_sub(2).min(64 << 20))
                )),
                _ => None,
            };
            if let Ok(mut r) = st.raw_body.lock() {
                *r = raw;
            }
            json_ok(stats(st))
        }
        "/control/fail" => {
            let status = body.get("status").and_then(Value::as_u64).unwrap_or(0);
            st.fail_status
                .store(status.min(999) as u16, Ordering::SeqCst);
            json_ok(stats(st))
        }
        "/control/delay" => {
            let ms = body.get("ms").and_then(Value::as_u64).unwrap_or(0);
            if let Ok(mut d) = st.delay.lock() {
                *d = Duration::from_millis(ms);
            }
            json_ok(stats(st))
        }
        "/control/jwks_headers" => {
            let headers = body
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            if let Ok(mut h) = st.jwks_headers.lock() {
                *h = headers;
            }
            json_ok(stats(st))
        }
        _ => local(StatusCode::NOT_FOUND, "text/plain", "no such control\n"),
    }
}

/// Rebuilds the served key set: every signing key that was not unpublished.
fn publish(st: &IdpState) {
    let unpublished = st.unpublished.lock().map(|u| u.clone()).unwrap_or_default();
    if let Ok(s) = st.signing.lock() {
        let refs: Vec<&SigningKey> = s
            .iter()
            .filter(|k| !unpublished.contains(&k.kid))
            .map(|k| k.as_ref())
            .collect();
        if let Ok(mut j) = st.jwks.lock() {
            *j = jwks(&refs);
        }
    }
}

fn stats(st: &IdpState) -> Value {
    let kids: Vec<String> = st
        .signing
        .lock()
        .map(|s| s.iter().map(|k| k.kid.clone()).collect())
        .unwrap_or_default();
    let published: Vec<String> = st
        .jwks
        .lock()
        .map(|j| {
            j["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k["kid"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    json!({
        "jwks_fetches": st.jwks_fetches.load(Ordering::SeqCst),
        "discovery_fetches": st.discovery_fetches.load(Ordering::SeqCst),
        "kids": kids,
        "published": published,
    })
}

/// `jwks-sidecar idp`: serves the fake IdP on 127.0.0.1:`port` (0: any) with one key per
/// `algs` entry (kids `<alg>-<n>`), prints `{"issuer", "jwks_uri", "kids"}` as one JSON line
/// on stdout once listening, and runs until SIGTERM or SIGINT.
pub async fn serve_standalone(port: u16, algs: &[Alg]) -> Result<(), String> {
    crate::install_crypto_provider();
    let algs = if algs.is_empty() {
        &[Alg::ES256][..]
    } else {
        algs
    };
    let keys: Vec<Arc<SigningKey>> = algs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let kid = format!("{}-{}", a.name().to_ascii_lowercase(), i + 1);
            Arc::new(SigningKey::generate(*a, &kid))
        })
        .collect();
    let refs: Vec<&SigningKey> = keys.iter().map(|k| k.as_ref()).collect();
    let idp = FakeIdp::start(&refs, port)
        .await
        .map_err(|e| format!("idp: 127.0.0.1:{port}: {e}"))?;
    let kids: Vec<String> = keys.iter().map(|k| k.kid.clone()).collect();
    if let Ok(mut s) = idp.state.signing.lock() {
        *s = keys;
    }
    println!(
        "{}",
        json!({"issuer": idp.issuer(), "jwks_uri": idp.jwks_uri(), "kids": kids})
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    crate::wait_for_signal().await;
    Ok(())
}
