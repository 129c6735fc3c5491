//! The built-in demo and the fakes every test suite uses: an identity provider (`idp`) that
//! serves discovery and a JWKS, mints tokens, and can be told to rotate, fail or stall; and an
//! echo upstream (`echo`) that reports what it received.
//!
//! `jwks-sidecar demo` wires both to a real sidecar on loopback and prints curl lines;
//! `jwks-sidecar idp` runs the identity provider alone for the Python and Node suites (its
//! HTTP API is in `idp`), so there is one fake IdP, not one per language.

pub mod dpop;
mod echo;
mod idp;

pub use echo::EchoUpstream;
pub use idp::{serve_standalone, FakeIdp, IdpState};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::jose::Alg;
use crate::testkit::SigningKey;

/// Serves `handler` on `listener` (plain HTTP/1.1 and HTTP/2, upgrades) until the process
/// ends: for the fakes only, no limits and no drain.
pub(crate) fn serve_plain<F, Fut>(listener: TcpListener, handler: F)
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
