//! Fault injection: a misbehaving IdP (500s, garbage, a 100 MB body, a slow drip, a redirect
//! loop, a reset mid-body, a set that drops all keys), a misbehaving upstream (reset, slow or
//! missing headers, giant headers) and misbehaving clients (abandoned uploads). Known kids keep
//! being served, nothing leaks (connections gauge, RSS), and the metrics say what happened.

mod support;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{jwks, mint_unsigned, now};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Good = 0,
    Status500,
    Garbage,
    Huge,
    Drip,
    RedirectLoop,
    ResetMidBody,
    NoKeys,
    Hang,
    GiantHeaders,
}

const ALL: [Mode; 10] = [
    Mode::Good,
    Mode::Status500,
    Mode::Garbage,
    Mode::Huge,
    Mode::Drip,
    Mode::RedirectLoop,
    Mode::ResetMidBody,
    Mode::NoKeys,
    Mode::Hang,
    Mode::GiantHeaders,
];

/// A raw-TCP server whose behaviour is switched at run time.
struct Evil {
    addr: std::net::SocketAddr,
    mode: Arc<AtomicU8>,
}

async fn read_head(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    }
}

impl Evil {
    async fn start(good_body: String) -> Evil {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let mode = Arc::new(AtomicU8::new(0));
        let m = mode.clone();
        let body = Arc::new(good_body);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mode = ALL[m.load(Ordering::SeqCst) as usize];
                let body = body.clone();
                tokio::spawn(async move {
                    read_head(&mut s).await;
                    let _ = match mode {
                        Mode::Good => s.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}", body.len(), body).as_bytes()).await,
                        Mode::Status500 => s.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await,
                        Mode::Garbage => s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\n<html>oops</").await,
                        Mode::NoKeys => s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"keys\":[]}").await,
                        Mode::Huge => {
                            // 100 MB, chunked (no Content-Length to refuse early): streamed until the reader quits.
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                            let chunk = format!("{:x}\r\n{}\r\n", 65536, "x".repeat(65536));
                            for _ in 0..1600 {
                                if s.write_all(chunk.as_bytes()).await.is_err() {
                                    break;
                                }
                            }
                            Ok(())
                        }
                        Mode::Drip => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n{").await;
                            for _ in 0..300 {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if s.write_all(b" ").await.is_err() {
                                    break;
                                }
                            }
                            Ok(())
                        }
                        Mode::RedirectLoop => s.write_all(b"HTTP/1.1 302 Found\r\nlocation: /jwks.json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await,
                        Mode::ResetMidBody => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n{\"keys\":[").await;
                                                        // Close mid-body (the Content-Length promised 5000 bytes).
                            drop(s);
                            Ok(())
                        }
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            Ok(())
                        }
                        Mode::GiantHeaders => {
                            let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 0\r\n\r\n", "a".repeat(500_000));
                            s.write_all(big.as_bytes()).await
                        }
                    };
                });
            }
        });
        Evil { addr, mode }
    }

    fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
    }
}

/// RSS is per process and the tests of this file run in one: the tests that measure it
/// run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_misbehaving_idp_never_stops_known_kids_from_being_served() {
    let _serial = SERIAL.lock().await;
    let k = key(Alg::ES256);
    let idp = Evil::start(jwks(&[&k]).to_string()).await;
    let echo = jwks_sidecar::demo::EchoUpstream::start()
        .await
        .expect("echo");
    let iss = "https://idp.evil.test";
    let toml = base_toml(&format!("http://{}/jwks.json", idp.addr), iss, &echo.url(), "",
        "fetch_timeout = \"500ms\"\nkid_miss_min_interval = \"0s\"\nkid_miss_wait = \"3s\"\nmax_jwks_bytes = 1048576");
    let s = start_toml(&toml).await;
    wait_keys_ready(&s).await;
    let url = format!("http://{}/x", s.proxy_addr);
    let admin = format!("http://{}/metrics", s.admin_addr.expect("admin"));
    let good = k.mint(&json!({"iss": iss, "aud": "api", "sub": "s", "exp": now() + 600}));
    assert_eq!(get_with_token(&url, &good).await.0, 200);
    let rss_before = rss_kib();
    let cases = [
        (Mode::Status500, "http_status"),
        (Mode::Garbage, "parse"),
        (Mode::Huge, "too_large"),
        (Mode::Drip, "timeout"),
        (Mode::RedirectLoop, "redirect"),
        (Mode::ResetMidBody, "connect"),
        (Mode::NoKeys, "parse"),
        (Mode::Hang, "timeout"),
    ];
    for (i, (mode, label)) in cases.iter().enumerate() {
        idp.set(*mode);
        let series =
            format!("jwks_sidecar_jwks_fetch_total{{provider=\"idp\",result=\"{label}\"}}");
        // Several modes share a label (parse, timeout): count this mode's fetch, not an
        // earlier one's.
        let before = sample(&get(&admin, &[]).await.2, &series).unwrap_or(0.0);
        // An unknown kid makes the sidecar fetch now, from the broken IdP.
        let probe = mint_unsigned(
            &json!({"alg": "ES256", "kid": format!("probe-{i}")}),
            &json!({"iss": iss, "aud": "api", "exp": now() + 60}),
            "AAAA",
        );
        let (st, _, body) = get_with_token(&url, &probe).await;
        assert_eq!(
            (st.as_u16(), reason(&body).as_str()),
            (401, "unknown_kid"),
            "{mode:?}"
        );
        // The fetch's outcome is counted once it ends; wait for it (its request may have
        // given up first, after kid_miss_wait).
        wait_metric(&admin, &series, |v| v > before).await;
        // Known kids keep being served, and quickly.
        let started = std::time::Instant::now();
        for _ in 0..5 {
            assert_eq!(get_with_token(&url, &good).await.0, 200, "{mode:?}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{mode:?}: known kids slowed down"
        );
    }
    idp.set(Mode::Good);
    let m = get(&admin, &[]).await.2;
    assert_eq!(
        sample(&m, r#"jwks_sidecar_jwks_keys{provider="idp"}"#),
        Some(1.0),
        "the last good key set survived everything"
    );
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(
        growth < 64 * 1024,
        "memory grew by {growth} KiB through the IdP faults (100 MB body included)"
    );
}

#[tokio::test]
async fn a_misbehaving_upstream_gives_502_or_504_never_a_hang() {
    let _serial = SERIAL.lock().await;
    let up = Evil::start(r#"{"ok":true}"#.to_string()).await;
    let k = key(Alg::ES256);
    let idp = jwks_sidecar::demo::FakeIdp::start(&[&k], 0)
        .await
        .expect("idp");
    let s = start_toml(&base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &format!("http://{}", up.addr),
        "upstream_timeout = \"500ms\"",
        "",
    ))
    .await;
    let url = format!("http://{}/public/x", s.proxy_addr);
    for (mode, status, kind) in [
        (Mode::ResetMidBody, 200, ""),
        (Mode::Hang, 504, "timeout"),
        (Mode::Drip, 200, ""),
        (Mode::GiantHeaders, 502, "headers_too_large"),
        (Mode::Garbage, 200, ""),
        (Mode::Good, 200, ""),
    ] {
        up.set(mode);
        let started = std::time::Instant::now();
        let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            client.get(url.parse().expect("uri")),
        )
        .await
        .expect("no hang");
        let got = resp.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);

        assert_eq!(got, status, "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{mode:?} took {:?}",
            started.elapsed()
        );
        if !kind.is_empty() {
            // The only mode with this kind: its error is counted (waited for, not raced).
            wait_metric(
                &format!("http://{}/metrics", s.admin_addr.expect("admin")),
                &format!("jwks_sidecar_upstream_errors_total{{kind=\"{kind}\"}}"),
                |v| v >= 1.0,
            )
            .await;
        }
    }
    // Refused connections.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let s2 = start_toml(&base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &format!("http://{dead_addr}"),
        "",
        "",
    ))
    .await;
    assert_eq!(
        get(&format!("http://{}/public/x", s2.proxy_addr), &[])
            .await
            .0,
        502
    );
}

#[tokio::test]
async fn abandoned_uploads_and_dropped_clients_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let h = Harness::start(&[&key(Alg::ES256)], "", "").await;
    let token = key(Alg::ES256).mint(&h.claims());
    let rss_before = rss_kib();
    let tasks_before = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let seen_before = Arc::new(Mutex::new(()));
    let _ = seen_before;
    for _ in 0..50 {
        let mut s = TcpStream::connect(h.sidecar.proxy_addr)
            .await
            .expect("connect");
        let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\nContent-Length: 10000000\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("write");
        s.write_all(&vec![b'x'; 256 * 1024]).await.expect("write");
        drop(s); // abandoned mid-body
    }
    for _ in 0..50 {
        let mut s = TcpStream::connect(h.sidecar.proxy_addr)
            .await
            .expect("connect");
        s.write_all(b"GET /public/slow?ms=2000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        drop(s); // gone before the answer
    }
    // The slow requests' upstream calls end after 2 s; generous deadline, early exit.
    wait_metric(
        &h.admin("/metrics"),
        r#"jwks_sidecar_connections{listener="proxy"}"#,
        |open| open <= 1.0,
    )
    .await;
    assert_eq!(
        get_with_token(&h.url("/x"), &token).await.0,
        200,
        "still serving"
    );
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(growth < 64 * 1024, "memory grew by {growth} KiB");
    let tasks_after = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    wait_until(
        &format!(
            "the connection tasks to end ({tasks_before} alive before, at most 2 more allowed)"
        ),
        DEADLINE,
        || async { tasks_after() <= tasks_before + 2 },
    )
    .await;
}
