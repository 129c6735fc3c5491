//! Shared pieces of the integration tests: a fake IdP and an echo upstream on 127.0.0.1
//! port 0, a sidecar started in-process from TOML, keys generated once per test binary,
//! and a small HTTP client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jwks_sidecar::config::Config;
use jwks_sidecar::demo::{EchoUpstream, FakeIdp};
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::SigningKey;
use jwks_sidecar::Running;
use serde_json::{json, Value};

/// One key per algorithm, generated once per test binary (RSA generation is slow).
pub fn key(alg: Alg) -> Arc<SigningKey> {
    static KEYS: OnceLock<std::sync::Mutex<BTreeMap<String, Arc<SigningKey>>>> = OnceLock::new();
    let map = KEYS.get_or_init(Default::default);
    let name = alg.name();
    let mut m = map.lock().expect("lock");
    m.entry(name.to_string())
        .or_insert_with(|| Arc::new(SigningKey::generate(alg, &format!("kid-{name}"))))
        .clone()
}

/// Every algorithm the verifier supports.
pub const ALL_ALGS: [Alg; 9] = Alg::ALL;

pub struct Harness {
    pub idp: FakeIdp,
    pub echo: EchoUpstream,
    pub sidecar: Running,
}

impl Harness {
    /// Starts IdP (serving `keys`), echo upstream and a sidecar. `proxy_extra` goes into
    /// [proxy], `provider_extra` into the provider block (before its claim_headers table).
    pub async fn start(keys: &[&SigningKey], proxy_extra: &str, provider_extra: &str) -> Harness {
        let idp = FakeIdp::start(keys, 0).await.expect("idp");
        let echo = EchoUpstream::start().await.expect("echo");
        let toml = base_toml(
            &idp.jwks_uri(),
            &idp.issuer(),
            &echo.url(),
            proxy_extra,
            provider_extra,
        );
        let sidecar = start_toml(&toml).await;
        let h = Harness { idp, echo, sidecar };
        h.wait_ready().await;
        h
    }

    pub async fn wait_ready(&self) {
        wait_keys_ready(&self.sidecar).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar.proxy_addr, path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar.admin_addr.expect("admin"), path)
    }

    /// Standard valid claims for this IdP.
    pub fn claims(&self) -> Value {
        let now = jwks_sidecar::testkit::now();
        json!({"iss": self.idp.issuer(), "sub": "user-1", "aud": "api", "iat": now, "exp": now + 600,
               "email": "u@example.com", "org": {"id": "org-9"}, "roles": ["a", "b"], "scope": "read write"})
    }

    pub async fn metrics(&self) -> String {
        get(&self.admin("/metrics"), &[]).await.2
    }
}

pub fn base_toml(
    jwks_uri: &str,
    issuer: &str,
    upstream: &str,
    proxy_extra: &str,
    provider_extra: &str,
) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
upstream = "{upstream}"
public_paths = ["/healthz", "/public/"]
payload_header = "x-jwt-payload"
shutdown_grace = "5s"
{proxy_extra}
[admin]
listen = "127.0.0.1:0"
[[providers]]
name = "idp"
issuer = "{issuer}"
jwks_uri = "{jwks_uri}"
audiences = ["api"]
refresh_interval = "60s"
{provider_extra}
[providers.claim_headers]
sub = "x-jwt-sub"
email = "x-user-email"
"org.id" = "x-jwt-org-id"
roles = "x-jwt-roles"
"#
    )
}

/// The base test config (`base_toml` without extras) for this IdP and echo app, typed.
pub fn base_config(idp: &FakeIdp, echo: &EchoUpstream) -> Config {
    config(&base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &echo.url(),
        "",
        "",
    ))
}

/// A config read from TOML text (not yet compiled), to be changed field by field.
pub fn config(toml: &str) -> Config {
    jwks_sidecar::config::from_toml_str(toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"))
}

/// The TOML text of a typed config (for a sidecar run as a child process).
pub fn to_toml(c: &Config) -> String {
    toml::to_string(c).unwrap_or_else(|e| panic!("config as TOML: {e}"))
}

/// `toml` with the proxy and admin listeners on the given addresses (child processes).
pub fn toml_at(toml: &str, proxy: std::net::SocketAddr, admin: std::net::SocketAddr) -> String {
    let mut c = config(toml);
    c.proxy.listen = proxy;
    c.admin.listen = Some(admin);
    to_toml(&c)
}

/// Starts a sidecar in-process from a typed config.
pub async fn start_config(c: Config) -> Running {
    jwks_sidecar::start(c).await.expect("sidecar starts")
}

pub async fn start_toml(toml: &str) -> Running {
    let cfg = jwks_sidecar::config::from_toml_str(toml)
        .unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
    jwks_sidecar::start(cfg).await.expect("sidecar starts")
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET with headers; returns status, headers and body text.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, String) {
    request("GET", url, headers, Bytes::new()).await
}

pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body)).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("no hang")
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// GET with a bearer token.
pub async fn get_with_token(url: &str, token: &str) -> (StatusCode, HeaderMap, String) {
    let auth = format!("Bearer {token}");
    get(url, &[("authorization", &auth)]).await
}

/// The headers the echo upstream saw (name -> values).
pub fn echoed(body: &str) -> BTreeMap<String, Vec<String>> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("echo body {body:?}: {e}"));
    serde_json::from_value(v["headers"].clone()).expect("headers map")
}

pub fn echoed_path(body: &str) -> String {
    let v: Value = serde_json::from_str(body).expect("echo body");
    v["path"].as_str().unwrap_or("").to_string()
}

/// The reason field of a JSON refusal body.
pub fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("<no reason in {body:?}>"))
}

/// 127.0.0.1 port 0: a listener bound in-process gets a free port.
pub fn loopback() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The `jwks-sidecar` binary run as a child process with its listeners on 127.0.0.1 port 0.
/// The addresses it bound are read from its "jwks-sidecar started" log line: no test picks
/// a "free" port, releases it and then races every other test (and process) for it, which is
/// how a child used to fail to bind once in a while and be reported as "not ready". Its
/// stderr is kept and shown whenever it does not come up.
pub struct ChildSidecar {
    pub child: tokio::process::Child,
    pub proxy: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub authz: Option<std::net::SocketAddr>,
    pub grpc: Option<std::net::SocketAddr>,
    log: Arc<std::sync::Mutex<String>>,
    drain: Option<tokio::task::JoinHandle<()>>,
}

/// What a child's "jwks-sidecar started" line says it bound.
pub struct Started {
    pub proxy: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub authz: Option<std::net::SocketAddr>,
    pub grpc: Option<std::net::SocketAddr>,
}

impl Started {
    /// The addresses of a JSON "jwks-sidecar started" log line (None for any other line).
    pub fn parse(line: &str) -> Option<Started> {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["message"] != "jwks-sidecar started" {
            return None;
        }
        let addr = |k: &str| v[k].as_str().and_then(|a| a.parse().ok());
        Some(Started {
            proxy: addr("proxy")?,
            admin: addr("admin"),
            authz: addr("authz"),
            grpc: addr("authz_grpc"),
        })
    }
}

impl ChildSidecar {
    /// Spawns `cmd` (JSON logs on a piped stderr, killed on drop) and waits for its start
    /// line, then, when it has an admin listener, for `/readyz`. Every listener `cmd`
    /// configures should be on port 0. Err (with the child's log) if it exits first or is
    /// not ready within [`DEADLINE`].
    pub async fn start(mut cmd: tokio::process::Command) -> Result<ChildSidecar, String> {
        use tokio::io::AsyncBufReadExt;
        // The start line is at info: the caller's RUST_LOG (say `warn`) must not hide it.
        cmd.env("JWKS_SIDECAR_LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let drain = tokio::spawn({
            let log = log.clone();
            async move {
                let mut tx = Some(tx);
                let mut stderr = tokio::io::BufReader::new(stderr);
                let mut buf = Vec::new();
                // Bytes, not UTF-8 lines: one odd byte must not end the drain (and the child
                // block on a full pipe).
                while stderr
                    .read_until(b'\n', &mut buf)
                    .await
                    .is_ok_and(|n| n > 0)
                {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    buf.clear();
                    if let Some(bound) = tx.is_some().then(|| Started::parse(&line)).flatten() {
                        let _ = tx.take().expect("once").send(bound);
                    }
                    let mut log = log.lock().expect("log");
                    // Keep the last 4 MiB or so: enough for any test, bounded for long runs.
                    if log.len() > 4 << 20 {
                        let cut = log.len() - (2 << 20);
                        let cut = (cut..log.len())
                            .find(|&i| log.is_char_boundary(i))
                            .unwrap_or(0);
                        log.drain(..cut);
                    }
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let tail = |log: &Arc<std::sync::Mutex<String>>| {
            let log = log.lock().expect("log");
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let bound = match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(bound)) => bound,
            failed => {
                // No start line: stderr closed (the process is exiting) or the deadline.
                let why = match failed {
                    Err(_) => format!("no start line within {DEADLINE:?}"),
                    _ => "it exited before its start line".to_string(),
                };
                let _ = child.start_kill();
                let status = match tokio::time::timeout(DEADLINE, child.wait()).await {
                    Ok(Ok(status)) => status.to_string(),
                    other => format!("{other:?}"),
                };
                let _ = tokio::time::timeout(DEADLINE, drain).await;
                return Err(format!(
                    "the sidecar did not start: {why} ({status}); its log:\n{}",
                    tail(&log)
                ));
            }
        };
        let me = ChildSidecar {
            child,
            proxy: bound.proxy,
            admin: bound.admin,
            authz: bound.authz,
            grpc: bound.grpc,
            log,
            drain: Some(drain),
        };
        if let Some(admin) = me.admin {
            if !wait_ready(me.proxy, admin).await {
                return Err(format!(
                    "the sidecar was not ready within {DEADLINE:?}; its log:\n{}",
                    tail(&me.log)
                ));
            }
        }
        Ok(me)
    }

    /// The admin address (panics when the child has no admin listener).
    pub fn admin(&self) -> std::net::SocketAddr {
        self.admin.expect("the child has an admin listener")
    }

    /// The log lines so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").clone()
    }

    /// Every log line, once the child has exited and its stderr is read to the end.
    pub async fn finished_log(&mut self) -> String {
        if let Some(drain) = self.drain.take() {
            let _ = tokio::time::timeout(DEADLINE, drain).await;
        }
        self.log()
    }
}

/// Waits (up to [`DEADLINE`]) until `listening` and `admin` accept connections (a child
/// process starting), then awaits the readiness latch with one `/readyz?wait=` request;
/// false at the deadline.
pub async fn wait_ready(listening: std::net::SocketAddr, admin: std::net::SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if tokio::net::TcpStream::connect(listening).await.is_ok()
            && tokio::net::TcpStream::connect(admin).await.is_ok()
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each request waits at most 15 s (below `get`'s own 20 s limit).
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let url = format!("http://{admin}/readyz?wait={}", left.as_secs().clamp(1, 15));
        if get(&url, &[]).await.0 == 200 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
    }
}

/// How long a test waits for something that should happen in milliseconds: generous, for a
/// loaded 2-core CI machine; every wait returns as soon as the awaited thing happens.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` (every 20 ms) until it holds; panics naming `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every provider of `sidecar` has keys; panics at [`DEADLINE`].
pub async fn wait_keys_ready(sidecar: &Running) {
    if tokio::time::timeout(DEADLINE, sidecar.keys_ready())
        .await
        .is_err()
    {
        panic!("timed out after {DEADLINE:?} waiting for every provider's keys to load");
    }
}

/// Waits until every provider of `sidecar` has keys or has had a JWKS fetch counted (for a
/// provider that is meant to stay without keys); panics at [`DEADLINE`].
pub async fn wait_keys_or_fetch(sidecar: &Running) {
    wait_until(
        "every provider's keys to load or a JWKS fetch to be counted",
        DEADLINE,
        || async {
            let m = sidecar.metrics.render();
            sidecar.current_auth().providers().iter().all(|p| {
                p.keys.ready()
                    || metric_series(&m, "jwks_sidecar_jwks_fetch_total").any(|(labels, v)| {
                        labels.contains(&format!("provider=\"{}\"", p.name)) && v >= 1.0
                    })
            })
        },
    )
    .await;
}

/// The samples of metric family member `name` in a Prometheus text exposition, as (label
/// set text, value): `name{a="1"} 2` gives `("a=\"1\"", 2.0)`.
pub fn metric_series<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    text.lines().filter_map(move |l| {
        if l.starts_with('#') {
            return None;
        }
        let (series, value) = l.rsplit_once(' ')?;
        let labels = match series.strip_prefix(name)? {
            "" => "",
            rest => rest.strip_prefix('{')?.strip_suffix('}')?,
        };
        Some((labels, value.parse().ok()?))
    })
}

/// The value of exactly one series, written as the exposition writes it (labels in its
/// order): `sample(&m, r#"jwks_sidecar_config_reloads_total{result="ok"}"#)`. None when the
/// series is absent. Parsed, so `...} 1` never matches a value of 10.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| match l.rsplit_once(' ') {
            Some((s, v)) if s == series => v.parse().ok(),
            _ => None,
        })
}

/// Waits until the series' value (0 when absent) at `metrics_url` satisfies `ok`; returns
/// the scrape that satisfied it. Panics at [`DEADLINE`], naming the series and its last value.
pub async fn wait_metric(metrics_url: &str, series: &str, ok: impl Fn(f64) -> bool) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let m = get(metrics_url, &[]).await.2;
        let v = sample(&m, series).unwrap_or(0.0);
        if ok(v) {
            return m;
        }
        if std::time::Instant::now() >= deadline {
            panic!("timed out after {DEADLINE:?} waiting for {series} (last value {v}):\n{m}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The kids of a JWKS document (e.g. the admin listener's `/jwks/{provider}`), parsed.
pub fn jwks_kids(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("JWKS {body:?}: {e}"));
    v["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("no keys array in {body}"))
        .iter()
        .filter_map(|k| k["kid"].as_str().map(str::to_string))
        .collect()
}

/// A signing key of `alg`, a fake IdP serving it, and an echo upstream.
pub async fn idp_and_echo(alg: Alg) -> (Arc<SigningKey>, FakeIdp, EchoUpstream) {
    let k = key(alg);
    let idp = FakeIdp::start(&[&k], 0).await.expect("idp");
    let echo = EchoUpstream::start().await.expect("echo");
    (k, idp, echo)
}

/// Exact comparisons against a Prometheus text exposition.
pub trait Scrape {
    /// The series (written as the exposition writes it) is present with exactly `value`.
    fn has_sample(&self, series: &str, value: f64) -> bool;
}

impl Scrape for str {
    fn has_sample(&self, series: &str, value: f64) -> bool {
        sample(self, series) == Some(value)
    }
}

/// An Envoy `CheckRequest` for a GET of `path` on app.example.com with these headers.
pub fn check_request(
    path: &str,
    headers: &[(&str, &str)],
) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    envoy_types::ext_authz::v3::pb::CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "app.example.com".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Percent-encoding of everything but RFC 3986 unreserved characters (form values, URL-encoded
/// PEM as Envoy sends client certificates).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Lower-case hex SHA-256 (Envoy's `x-forwarded-client-cert` `Hash=`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
