//! Proxy behaviour: anti-spoofing, path normalisation, hop-by-hop headers, streaming,
//! upgrades, h2c, TLS, upstream failures, missing keys, readiness and graceful drain.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jwks_sidecar::jose::Alg;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn harness(proxy_extra: &str) -> Harness {
    Harness::start(&[&key(Alg::ES256)], proxy_extra, "").await
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let h = harness("").await;
    let token = key(Alg::ES256).mint(&h.claims());
    let auth = format!("Bearer {token}");
    let spoof: Vec<(&str, &str)> = vec![
        ("x-jwt-sub", "admin"),
        ("X-JWT-SUB", "admin2"),
        ("x_jwt_sub", "admin3"),
        ("X_Jwt_Sub", "admin4"),
        ("x-jwt-anything", "evil"),
        ("x-user-email", "evil@x"),
        ("X_USER_EMAIL", "evil@y"),
        ("x-jwt-payload", "e30"),
        ("x_jwt_payload", "e30"),
        ("x-jwt-org-id", "org-evil"),
    ];
    for path in ["/api/x", "/healthz", "/public/x"] {
        let mut headers = spoof.clone();
        headers.push(("authorization", &auth));
        let (s, _, body) = get(&h.url(path), &headers).await;
        assert_eq!(s, 200, "{path}");
        let seen = echoed(&body);
        for (name, values) in &seen {
            let folded = name.replace('_', "-");
            if folded.starts_with("x-jwt-") || folded == "x-user-email" {
                assert!(
                    path == "/api/x",
                    "{path}: identity header {name} reached a public path"
                );
                assert!(
                    !values
                        .iter()
                        .any(|v| v.contains("admin") || v.contains("evil") || v == "e30"),
                    "{name}: {values:?}"
                );
                assert_eq!(values.len(), 1, "{name} duplicated: {values:?}");
            }
        }
        if path == "/api/x" {
            assert_eq!(seen["x-jwt-sub"], ["user-1"]);
            assert_eq!(seen["x-user-email"], ["u@example.com"]);
        }
    }
    let m = h.metrics().await;
    assert!(
        m.contains("jwks_sidecar_spoofed_headers_removed_total{listener=\"proxy\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn claim_values_with_crlf_or_control_characters_are_never_injected() {
    let h = harness("").await;
    let mut c = h.claims();
    c["sub"] = json!("user\r\nx-jwt-admin: true");
    c["email"] = json!("a\u{0}b");
    c["roles"] = json!(["ok", "José"]);
    let (s, _, body) = get_with_token(&h.url("/x"), &key(Alg::ES256).mint(&c)).await;
    assert_eq!(s, 200);
    let seen = echoed(&body);
    assert!(!seen.contains_key("x-jwt-sub"), "{seen:?}");
    assert!(!seen.contains_key("x-jwt-admin"), "{seen:?}");
    assert!(!seen.contains_key("x-user-email"), "{seen:?}");
    assert_eq!(seen["x-jwt-roles"], ["ok,Jos%C3%A9"]);
    let m = h.metrics().await;
    assert!(m.has_sample(r#"jwks_sidecar_claim_headers_dropped_total{provider="idp",reason="control_character"}"#, 2.0), "{m}");
}

#[tokio::test]
async fn public_paths_cannot_be_escaped_by_path_tricks() {
    let h = harness("").await;
    for path in [
        "/healthz/../admin",
        "/healthz/%2e%2e/admin",
        "/healthz/%2E%2E/admin",
        "//healthz/../admin",
        "/healthz/./../admin",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/HEALTHZ",
        "/healthzx",
    ] {
        let (s, _, body) = get(&h.url(path), &[]).await;
        assert_eq!(
            (s.as_u16(), reason(&body).as_str()),
            (401, "missing_token"),
            "{path}"
        );
    }
    for path in [
        "/healthz/%2fadmin",
        "/healthz/%2Fadmin",
        "/healthz/%5cadmin",
        "/public/..;/admin",
        "/public/.;/x",
    ] {
        let (s, _, body) = get(&h.url(path), &[]).await;
        assert_eq!(
            (s.as_u16(), reason(&body).as_str()),
            (400, "bad_path"),
            "{path}"
        );
    }
    assert_eq!(h.echo.requests.load(Ordering::SeqCst), 0);
    // Public requests are forwarded with the normalised path (and the query untouched).
    let (s, _, body) = get(&h.url("//public/a/./b/%7Ec/../d?x=%2F"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(echoed_path(&body), "/public/a/b/d?x=%2F");
    // Authenticated requests too.
    let t = key(Alg::ES256).mint(&h.claims());
    let (_, _, body) = get_with_token(&h.url("/api//v1/../v2/%61"), &t).await;
    assert_eq!(echoed_path(&body), "/api/v2/a");
}

#[tokio::test]
async fn encoded_slash_allowed_when_configured() {
    let h = harness("allow_encoded_slash = true").await;
    let (s, _, body) = get(&h.url("/public/a%2fb"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(echoed_path(&body), "/public/a%2Fb");
}

#[tokio::test]
async fn forwarding_headers_hop_by_hop_and_request_id() {
    let h = harness("").await;
    let t = format!("Bearer {}", key(Alg::ES256).mint(&h.claims()));
    let (s, resp_headers, body) = get(
        &h.url("/x"),
        &[
            ("authorization", &t),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-request-id", "abc-123"),
            ("host", "app.example.com"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    let seen = echoed(&body);
    for hop in ["x-secret-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(!seen.contains_key(hop), "{hop} forwarded: {seen:?}");
    }
    assert_eq!(seen["x-forwarded-for"], ["10.0.0.1, 127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], ["http"]);
    assert_eq!(seen["x-forwarded-host"], ["app.example.com"]);
    assert_eq!(seen["host"], ["app.example.com"]);
    assert_eq!(seen["x-request-id"], ["abc-123"]);
    assert_eq!(resp_headers["x-request-id"], "abc-123");
    assert!(
        seen.contains_key("authorization"),
        "forward_authorization defaults to true"
    );
    // A generated id when the client sends none, on refusals too.
    let (_, resp_headers, _) = get(&h.url("/x"), &[]).await;
    assert!(resp_headers["x-request-id"].len() >= 16);
}

#[tokio::test]
async fn authorization_is_removed_when_not_forwarded() {
    let h = harness("forward_authorization = false").await;
    let (s, _, body) = get_with_token(&h.url("/x"), &key(Alg::ES256).mint(&h.claims())).await;
    assert_eq!(s, 200);
    assert!(!echoed(&body).contains_key("authorization"));
}

#[tokio::test]
async fn rejected_requests_never_reach_the_upstream() {
    let h = harness("").await;
    for _ in 0..5 {
        assert_eq!(get(&h.url("/x"), &[]).await.0, 401);
        assert_eq!(get_with_token(&h.url("/x"), "a.b.c").await.0, 401);
    }
    assert_eq!(h.echo.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn large_upload_streams_through_with_flat_memory() {
    let h = harness("").await;
    let t = format!("Bearer {}", key(Alg::ES256).mint(&h.claims()));
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 1024; // 1 GiB
    let rss_before = rss_kib();
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_stream(chunk, CHUNKS);
    let req = http::Request::post(h.url("/upload"))
        .header("authorization", &t)
        .body(StreamBody::new(stream))
        .expect("request");
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("no hang")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["body_bytes"], json!((CHUNK * CHUNKS) as u64));
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(
        growth < 200 * 1024,
        "RSS grew by {growth} KiB while streaming 1 GiB"
    );
}

fn futures_stream(
    chunk: Bytes,
    n: usize,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>> + Send + 'static
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..n {
            if tx
                .send(Ok(hyper::body::Frame::data(chunk.clone())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core::Stream<Item = T> + Send + 'static {
    struct S<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for S<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    rx.max_capacity();
    S(std::mem::replace(&mut rx, tokio::sync::mpsc::channel(1).1))
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn websocket_style_upgrade_passes_through_after_authentication() {
    let h = harness("").await;
    let t = key(Alg::ES256).mint(&h.claims());
    // Without a token: refused, no upgrade.
    let mut s = tokio::net::TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"));
    // With a token: 101, then bytes flow both ways.
    let mut s = tokio::net::TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .expect("connect");
    let req = format!("GET /ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).await.expect("read"),
            1,
            "closed during handshake"
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping over upgraded stream")
        .await
        .expect("write");
    let mut got = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&got, b"ping over upgraded stream");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let h = harness("").await;
    let t = format!("Bearer {}", key(Alg::ES256).mint(&h.claims()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::get(h.url("/h2"))
        .header("authorization", &t)
        .header("x-jwt-sub", "spoof")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = client.request(req).await.expect("h2 response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        echoed(&String::from_utf8_lossy(&body))["x-jwt-sub"],
        ["user-1"]
    );
    let req = http::Request::get(h.url("/h2"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(
        client.request(req).await.expect("h2 response").status(),
        401
    );
}

#[tokio::test]
async fn tls_listener_serves_https() {
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.join("tls.crt"), cert.cert.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), cert.signing_key.serialize_pem()).expect("write");
    let extra = format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display()
    );
    let h = harness(&extra).await;
    jwks_sidecar::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let t = format!("Bearer {}", key(Alg::ES256).mint(&h.claims()));
    let url = format!("https://localhost:{}/x", h.sidecar.proxy_addr.port());
    let req = http::Request::get(&url)
        .header("authorization", &t)
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = client.request(req).await.expect("https response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        echoed(&String::from_utf8_lossy(&body))["x-forwarded-proto"],
        ["https"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn upstream_refused_is_502_and_slow_upstream_is_504_with_json() {
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let idp = jwks_sidecar::demo::FakeIdp::start(&[&key(Alg::ES256)], 0)
        .await
        .expect("idp");
    let toml = base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &format!("http://{dead_addr}"),
        "",
        "",
    );
    let sidecar = start_toml(&toml).await;
    let (s, _, body) = get(&format!("http://{}/public/x", sidecar.proxy_addr), &[]).await;
    assert_eq!(s, 502);
    assert_eq!(reason(&body), "upstream_connect");

    let h = harness("upstream_timeout = \"300ms\"").await;
    let started = std::time::Instant::now();
    // The upstream answers after 10 s; the 504 must come long before (slack for load).
    let (s, _, body) = get(&h.url("/public/slow?ms=10000"), &[]).await;
    assert_eq!(s, 504);
    assert_eq!(reason(&body), "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "504 came only after {:?}",
        started.elapsed()
    );
    let m = h.metrics().await;
    assert!(
        m.has_sample(r#"jwks_sidecar_upstream_errors_total{kind="timeout"}"#, 1.0),
        "{m}"
    );
}

#[tokio::test]
async fn no_keys_is_503_with_retry_after_and_readiness_follows_keys() {
    let k = key(Alg::ES256);
    let idp = jwks_sidecar::demo::FakeIdp::start(&[&k], 0)
        .await
        .expect("idp");
    idp.fail_with(500);
    let echo = jwks_sidecar::demo::EchoUpstream::start()
        .await
        .expect("echo");
    let toml = base_toml(&idp.jwks_uri(), &idp.issuer(), &echo.url(), "", "");
    let sidecar = start_toml(&toml).await;
    let admin = sidecar.admin_addr.expect("admin");
    let now = jwks_sidecar::testkit::now();
    let t = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "s", "exp": now + 600}));
    let url = format!("http://{}/x", sidecar.proxy_addr);
    let (s, headers, body) = get_with_token(&url, &t).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (503, "no_keys"));
    assert!(headers.contains_key("retry-after"));
    let (s, _, body) = get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(s, 503);
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["providers_without_keys"], json!(["idp"]), "{body}");
    assert_eq!(get(&format!("http://{admin}/healthz"), &[]).await.0, 200);
    // The IdP recovers: the refresher's backoff (1 s) picks the keys up.
    idp.fail_with(0);
    wait_until(
        "/readyz to answer 200 once the IdP recovers",
        DEADLINE,
        || async { get(&format!("http://{admin}/readyz"), &[]).await.0 == 200 },
    )
    .await;
    assert_eq!(get_with_token(&url, &t).await.0, 200);
    // The successful fetch is counted around the time its keys become visible: wait for it.
    let m = wait_metric(
        &format!("http://{admin}/metrics"),
        r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="ok"}"#,
        |v| v >= 1.0,
    )
    .await;
    assert!(
        m.contains(r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="http_status"}"#),
        "{m}"
    );
    assert!(
        m.has_sample(
            r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="ok"}"#,
            1.0
        ),
        "{m}"
    );
    assert!(m.has_sample(r#"jwks_sidecar_requests_total{decision="deny",listener="proxy",provider="idp",reason="no_keys"}"#, 1.0), "{m}");
    let (_, _, jwks) = get(&format!("http://{admin}/jwks/idp"), &[]).await;
    assert_eq!(jwks_kids(&jwks), ["kid-ES256"], "{jwks}");
    let (_, _, providers) = get(&format!("http://{admin}/providers"), &[]).await;
    let providers: serde_json::Value = serde_json::from_str(&providers).expect("JSON");
    assert_eq!(providers["providers"][0]["name"], "idp", "{providers}");
    assert_eq!(providers["providers"][0]["ready"], true, "{providers}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let h = harness("").await;
    // Answers after 4 s, inside the 5 s shutdown_grace, so it is surely still in flight when
    // the shutdown starts.
    let url = h.url("/public/slow?ms=4000");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    // Shut down only once the request is in flight (it has reached the app).
    wait_until("the slow request to reach the app", DEADLINE, || async {
        h.echo.requests.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(!in_flight.is_finished(), "the request is still in flight");
    let addr = h.sidecar.proxy_addr;
    let Harness { sidecar, .. } = h;
    sidecar.shutdown();
    let (status, _, _) = in_flight.await.expect("join");
    assert_eq!(status, 200, "the in-flight request completed");
    tokio::time::timeout(Duration::from_secs(20), sidecar.wait())
        .await
        .expect("drained in time (shutdown_grace is 5 s)");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed after shutdown"
    );
}
