//! Every limit, crossed: the answer and the metric. Header size and count, slowloris and idle
//! keep-alive (header read timeout), the connection cap with back-pressure, HTTP/2 header
//! list size, oversize claims (drop or reject), token size, JWKS body size; and 10,000 idle
//! connections against the real binary.

mod support;

use std::time::Duration;

use jwks_sidecar::jose::Alg;
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn harness(proxy_extra: &str) -> Harness {
    Harness::start(&[&key(Alg::ES256)], proxy_extra, "").await
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    // The server closes after answering: the timeout only bounds a hang, generously.
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn request_head_over_max_header_bytes_or_max_headers_is_431() {
    let h = harness("max_header_bytes = 16384\nmax_headers = 20").await;
    let big = format!(
        "GET /public/x HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(raw(h.sidecar.proxy_addr, big.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let mut many = String::from("GET /public/x HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert!(raw(h.sidecar.proxy_addr, many.as_bytes())
        .await
        .starts_with("HTTP/1.1 431"));
    let long_line = format!(
        "GET /public/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(20_000)
    );
    let resp = raw(h.sidecar.proxy_addr, long_line.as_bytes()).await;
    assert!(
        resp.starts_with("HTTP/1.1 431") || resp.starts_with("HTTP/1.1 414"),
        "{resp:.40}"
    );
    // Counted as each connection ends, which can be just after the client saw it close.
    wait_metric(
        &h.admin("/metrics"),
        r#"jwks_sidecar_connection_errors_total{kind="too_large",listener="proxy"}"#,
        |v| v >= 3.0,
    )
    .await;
    assert_eq!(h.echo.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slowloris_and_idle_keep_alive_are_closed_by_the_header_read_timeout() {
    let h = harness("header_read_timeout = \"300ms\"").await;
    // Headers that never finish.
    let mut s = TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    // Bounds well under the 10 s default header_read_timeout (so the configured 300 ms is
    // what cut it off), with seconds of slack for a loaded machine.
    let _ = tokio::time::timeout(Duration::from_secs(9), s.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "slow client was not cut off: {:?}",
        started.elapsed()
    );
    // An idle keep-alive connection after one request.
    let mut s = TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .expect("connect");
    s.write_all(b"GET /public/x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.expect("read");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(9), s.read_to_end(&mut rest)).await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "idle connection was not closed: {:?}",
        started.elapsed()
    );
    wait_metric(
        &h.admin("/metrics"),
        r#"jwks_sidecar_connection_errors_total{kind="header_timeout",listener="proxy"}"#,
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn connection_cap_applies_back_pressure_then_recovers() {
    let h = harness("max_connections = 2\nheader_read_timeout = \"30s\"").await;
    let idle1 = TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .expect("connect");
    let idle2 = TcpStream::connect(h.sidecar.proxy_addr)
        .await
        .expect("connect");
    // The cap is reached once both are accepted: wait for that, not for a fixed time.
    let metrics = h.admin("/metrics");
    wait_metric(
        &metrics,
        r#"jwks_sidecar_connections{listener="proxy"}"#,
        |v| v >= 2.0,
    )
    .await;
    wait_metric(
        &metrics,
        r#"jwks_sidecar_connection_limit_reached_total{listener="proxy"}"#,
        |v| v >= 1.0,
    )
    .await;
    // A third client connects (kernel backlog) but is not served while the cap holds.
    let url = h.url("/public/x");
    let echo_before = h.echo.requests.load(std::sync::atomic::Ordering::SeqCst);
    let third = tokio::spawn(async move { get(&url, &[]).await.0 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "served past the cap");
    assert_eq!(
        h.echo.requests.load(std::sync::atomic::Ordering::SeqCst),
        echo_before,
        "the third client's request reached the app past the cap"
    );
    drop(idle1);
    assert_eq!(
        tokio::time::timeout(DEADLINE, third)
            .await
            .expect("served once a slot frees")
            .expect("join"),
        200
    );
    drop(idle2);
}

#[tokio::test]
async fn h2_header_list_over_the_limit_is_refused() {
    let h = harness("max_header_bytes = 16384").await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = http::Request::get(h.url("/public/x"))
        .header("x-big", "a".repeat(40_000))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    match client.request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => assert!(!e.is_connect(), "refused at the protocol level: {e}"),
    }
    assert_eq!(h.echo.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn h2_concurrent_streams_are_capped_per_connection() {
    let h = harness("max_h2_streams = 4").await;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    // 12 slow requests at once on one connection with at most 4 streams open: the server
    // refuses streams over the cap (REFUSED_STREAM, which clients may retry) or the client
    // queues them; never are all 12 served concurrently.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = client.clone();
        let url = h.url("/public/slow?ms=300");
        tasks.push(tokio::spawn(async move {
            let req = http::Request::get(url)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .expect("req");
            match c.request(req).await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(format!("{e:?}")),
            }
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Ok(200) => ok += 1,
            Err(e) if e.contains("REFUSED_STREAM") => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(ok >= 4, "{ok} served");
    assert!(
        refused > 0 || took >= Duration::from_millis(850),
        "12 streams ran concurrently despite max_h2_streams = 4 ({took:?})"
    );
}

#[tokio::test]
async fn oversize_claims_are_dropped_or_rejected_never_truncated() {
    let drop_h = harness("max_claim_header_bytes = 64").await;
    let mut c = drop_h.claims();
    c["sub"] = json!("x".repeat(100));
    let (s, _, body) = get_with_token(&drop_h.url("/x"), &key(Alg::ES256).mint(&c)).await;
    assert_eq!(s, 200);
    assert!(
        !echoed(&body).contains_key("x-jwt-sub"),
        "dropped, not truncated"
    );
    let m = drop_h.metrics().await;
    assert_eq!(
        sample(
            &m,
            r#"jwks_sidecar_claim_headers_dropped_total{provider="idp",reason="too_long"}"#
        ),
        Some(1.0),
        "{m}"
    );
    let reject_h = harness("max_claim_header_bytes = 64\noversize_claim = \"reject\"").await;
    let mut c = reject_h.claims();
    c["sub"] = json!("x".repeat(100));
    let (s, _, body) = get_with_token(&reject_h.url("/x"), &key(Alg::ES256).mint(&c)).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "claim_too_large")
    );
    let m = reject_h.metrics().await;
    assert!(
        metric_series(&m, "jwks_sidecar_requests_total")
            .any(|(labels, v)| labels.contains(r#"reason="claim_too_large""#) && v >= 1.0),
        "{m}"
    );
}

#[tokio::test]
async fn jwks_over_max_jwks_bytes_is_refused_and_counted() {
    let k = key(Alg::ES256);
    let idp = jwks_sidecar::demo::FakeIdp::start(&[&k], 0)
        .await
        .expect("idp");
    let mut doc = jwks_sidecar::testkit::jwks(&[&k]);
    doc["padding"] = json!("p".repeat(5000));
    idp.set_jwks(doc);
    let echo = jwks_sidecar::demo::EchoUpstream::start()
        .await
        .expect("echo");
    let s = start_toml(&base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &echo.url(),
        "",
        "max_jwks_bytes = 4096",
    ))
    .await;
    let admin = format!("http://{}/metrics", s.admin_addr.expect("admin"));
    wait_metric(
        &admin,
        r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="too_large"}"#,
        |v| v >= 1.0,
    )
    .await;
    assert!(
        !s.auth.providers()[0].keys.ready(),
        "the oversize set was not loaded"
    );
}

#[tokio::test]
async fn ten_thousand_idle_connections_against_the_binary() {
    // The binary runs in its own process, so client and server each stay under the fd limit.
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("c.toml");
    let mut c = config(&base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &echo.url(),
        "header_read_timeout = \"60s\"\nmax_connections = 20000",
        "",
    ));
    c.proxy.listen = loopback();
    c.admin.listen = Some(loopback());
    std::fs::write(&cfg, to_toml(&c)).expect("write");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_jwks-sidecar"));
    cmd.args(["--config"]).arg(&cfg);
    let mut child = ChildSidecar::start(cmd)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (proxy, admin) = (child.proxy, child.admin());
    let pid = child.child.id().expect("pid");
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = rss();
    let mut conns = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        match TcpStream::connect(proxy).await {
            Ok(c) => conns.push(c),
            Err(e) => panic!("connect #{} failed: {e}", conns.len()),
        }
    }
    // The sidecar has accepted them all (waited for, however loaded the machine is).
    let metrics = format!("http://{admin}/metrics");
    wait_metric(
        &metrics,
        r#"jwks_sidecar_connections{listener="proxy"}"#,
        |v| v >= 10_000.0,
    )
    .await;
    // Still serving while holding them.
    let t = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "s", "exp": jwks_sidecar::testkit::now() + 60}));
    assert_eq!(
        get_with_token(&format!("http://{proxy}/x"), &t).await.0,
        200
    );
    let during = rss();
    drop(conns);
    wait_metric(
        &metrics,
        r#"jwks_sidecar_connections{listener="proxy"}"#,
        |v| v <= 1.0,
    )
    .await;
    eprintln!("RSS before {before} KiB, with 10,000 idle connections {during} KiB ({:.1} KiB per connection)", (during.saturating_sub(before)) as f64 / 10_000.0);
    assert!(
        during.saturating_sub(before) < 200 * 1024,
        "10,000 idle connections cost {} KiB",
        during - before
    );
    let _ = child.child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
