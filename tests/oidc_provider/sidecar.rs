//! jwks-sidecar (the binary) as a child process: its config, `jwks-sidecar check`, and the
//! proxy's answers, checked into the report.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jwks_sidecar::demo::EchoUpstream;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::report::Report;
use crate::support::{get, wait_ready, Started, DEADLINE};
use crate::util::{decode_jwt, describe, metric_sum, parse, tail, terminate};
use crate::{Result, AUDIENCE};

pub const FETCHES: &str = "jwks_sidecar_jwks_fetch_total";
pub const OK_FETCHES: &str = r#"provider="oidc",result="ok""#;

/// The sidecar's config: the provider is found by OIDC discovery on its issuer.
pub fn sidecar_config(
    proxy: SocketAddr,
    admin: SocketAddr,
    authz: Option<SocketAddr>,
    upstream: &str,
    issuer: &str,
) -> String {
    // The decision listener, trusting x-forwarded-client-cert as behind an Envoy that ends
    // mutual TLS (certificate-bound tokens).
    let authz = authz
        .map(|a| format!("[authz]\nlisten = \"{a}\"\ntrust_forwarded_client_cert = true\n"))
        .unwrap_or_default();
    format!(
        r#"# written by tests/oidc_provider/
[proxy]
listen = "{proxy}"
upstream = "{upstream}"

[admin]
listen = "{admin}"

{authz}
[log]
format = "json"

[[providers]]
name = "oidc"
issuer = "{issuer}"
discovery = true
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
required_scopes = ["api:read"]
refresh_interval = "5m"
# oidc-provider's JWT access tokens follow RFC 9068: the sidecar holds them to it.
profile = "rfc9068"

[providers.claim_headers]
sub = "x-jwt-sub"
client_id = "x-jwt-client-id"
scope = "x-jwt-scope"
"#
    )
}

/// The binary, with an environment where only the config file counts (JWKS_SIDECAR_*
/// variables of the caller would override it).
fn sidecar_command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("JWKS_SIDECAR_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// `jwks-sidecar check --config <file with config>` (bounded): the exit code (None: killed,
/// or did not finish in 20 s) and stdout + stderr.
pub async fn run_check(bin: &str, file: &Path, config: &str) -> Result<(Option<i32>, String)> {
    std::fs::write(file, config).map_err(|e| format!("write {}: {e}", file.display()))?;
    let run = sidecar_command(bin)
        .arg("check")
        .arg("--config")
        .arg(file)
        .output();
    let outcome = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(out)) => {
            let text = [out.stdout, out.stderr].concat();
            (
                out.status.code(),
                String::from_utf8_lossy(&text).into_owned(),
            )
        }
        Ok(Err(e)) => (None, format!("cannot run {bin}: {e}")),
        Err(_) => (None, "did not finish within 20 s".to_string()),
    };
    Ok(outcome)
}

/// The sidecar as a child process, with the echo upstream behind it; it counts the proxy's
/// answers to this test and checks them into the report.
pub struct Sidecar {
    pub child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// The decision listener (Envoy's endpoint at /authz).
    pub authz: SocketAddr,
    echo: EchoUpstream,
    r: Arc<Report>,
    pub allowed: AtomicUsize,
    pub denied: AtomicUsize,
}

impl Sidecar {
    /// Starts the binary with `config(proxy, admin, authz)`, every listener on loopback port
    /// 0, and waits until it is ready (every provider has keys). The bound addresses come
    /// from its "jwks-sidecar started" log line: no port is picked free and then raced for.
    pub async fn start(
        bin: &str,
        dir: &Path,
        r: Arc<Report>,
        echo: EchoUpstream,
        config: impl Fn(SocketAddr, SocketAddr, SocketAddr) -> String,
    ) -> Result<Sidecar> {
        let (file, log) = (dir.join("sidecar.toml"), dir.join("sidecar.log"));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        std::fs::write(&file, config(any, any, any)).map_err(|e| format!("config: {e}"))?;
        let out = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut child = (sidecar_command(bin).arg("--config").arg(&file))
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e}"))?;
        let started = async {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(b) = text.lines().find_map(Started::parse) {
                    break b;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let why = tokio::select! {
            b = tokio::time::timeout(DEADLINE, started) => match b {
                Ok(b) => {
                    let (proxy, admin) = (b.proxy, b.admin.ok_or("no admin listener")?);
                    let authz = b.authz.ok_or("no authz listener")?;
                    if wait_ready(proxy, admin).await {
                        let (allowed, denied) = (AtomicUsize::new(0), AtomicUsize::new(0));
                        return Ok(Sidecar { child, proxy, admin, authz, echo, r, allowed, denied });
                    }
                    format!("not ready within {DEADLINE:?}")
                }
                Err(_) => format!("no start line within {DEADLINE:?}"),
            },
            status = child.wait() => match status {
                Ok(status) => format!("the sidecar exited ({status})"),
                Err(e) => format!("waiting for the sidecar: {e}"),
            },
        };
        terminate(&mut child, Duration::from_secs(5)).await;
        Err(format!(
            "{why}\n--- sidecar log (last lines):\n{}",
            tail(&log, 40)
        ))
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn metrics(&self) -> String {
        get(&self.admin("/metrics"), &[]).await.2
    }

    /// Successful JWKS fetches of the provider so far.
    pub async fn ok_fetches(&self) -> f64 {
        metric_sum(&self.metrics().await, FETCHES, OK_FETCHES).unwrap_or(0.0)
    }

    /// The kids `/providers` lists for the provider.
    pub async fn provider_kids(&self) -> Vec<String> {
        let body = get(&self.admin("/providers"), &[]).await.2;
        (parse(&body)["providers"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == "oidc"))
            .and_then(|p| serde_json::from_value(p["kids"].clone()).ok())
            .unwrap_or_default()
    }

    /// GET /api/hello on the proxy with this token ("": none) and headers, counted as allowed
    /// (200) or refused.
    pub async fn send(&self, token: &str, extra: &[(&str, &str)]) -> Answer {
        self.send_as("Bearer", token, extra).await
    }

    /// The URL [`Sidecar::send`] requests (what a DPoP proof names).
    pub fn url(&self) -> String {
        format!("http://{}/api/hello", self.proxy)
    }

    /// [`Sidecar::send`] with another `Authorization` scheme (`DPoP`).
    pub async fn send_as(&self, scheme: &str, token: &str, extra: &[(&str, &str)]) -> Answer {
        let auth = format!("{scheme} {token}");
        let mut headers = extra.to_vec();
        if !token.is_empty() {
            headers.push(("authorization", &auth));
        }
        let (st, h, body) = get(&self.url(), &headers).await;
        let status = st.as_u16();
        let counter = if status == 200 {
            &self.allowed
        } else {
            &self.denied
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let www_authenticate =
            (h.get("www-authenticate")).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Answer {
            status,
            www_authenticate,
            json: parse(&body),
            body,
            reached: false,
        }
    }

    /// [`Sidecar::send`], one request at a time: `reached` says whether the echo upstream got
    /// a request meanwhile.
    pub async fn proxied(&self, token: &str, extra: &[(&str, &str)]) -> Answer {
        self.proxied_as("Bearer", token, extra).await
    }

    /// [`Sidecar::proxied`] with another `Authorization` scheme (`DPoP`).
    pub async fn proxied_as(&self, scheme: &str, token: &str, extra: &[(&str, &str)]) -> Answer {
        let before = self.echo.requests.load(Ordering::SeqCst);
        let mut a = self.send_as(scheme, token, extra).await;
        a.reached = self.echo.requests.load(Ordering::SeqCst) > before;
        a
    }

    /// Three checks: 200 from the upstream, which saw the token's sub; the token has `kid`.
    pub async fn allowed(&self, name: &str, token: &str, kid: &str) -> Answer {
        let a = self.proxied(token, &[]).await;
        let (header, claims) = decode_jwt(token);
        let sub = claims["sub"].as_str().unwrap_or("<no sub>");
        self.r.check(
            format!("{name}: 200 from the upstream"),
            a.status == 200 && a.reached,
            a.describe(),
        );
        self.r.check(
            format!("{name}: upstream saw x-jwt-sub={sub}"),
            a.upstream_saw("x-jwt-sub") == [sub],
            a.upstream_headers(),
        );
        self.r.check(
            format!("{name}: token was signed with kid {kid}"),
            header["kid"] == kid,
            &header,
        );
        a
    }

    /// Three checks: `status`, the JSON body's `reason`, and the upstream saw nothing.
    pub async fn denied(&self, name: &str, token: &str, status: u16, reason: &str) -> Answer {
        let a = self.proxied(token, &[]).await;
        let d = a.describe();
        self.r
            .check(format!("{name}: {status}"), a.status == status, &d);
        self.r.check(
            format!("{name}: reason {reason}"),
            a.json["reason"] == reason,
            &d,
        );
        self.r.check(
            format!("{name}: never reached the upstream"),
            !a.reached,
            &d,
        );
        a
    }
}

/// One answer of the proxy.
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    body: String,
    /// The body as JSON (the echo's description of the request, or a refusal); null if not.
    pub json: Value,
    /// The echo upstream received a request while this one was made.
    pub reached: bool,
}

impl Answer {
    pub fn describe(&self) -> String {
        describe(self.status, &self.body)
    }

    /// The values of header `name` the upstream received (from the echo's answer).
    pub fn upstream_saw(&self, name: &str) -> Vec<String> {
        serde_json::from_value(self.json["headers"][name].clone()).unwrap_or_default()
    }

    pub fn upstream_headers(&self) -> String {
        format!("upstream headers: {}", self.json["headers"])
    }
}
