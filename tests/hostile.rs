//! A table-driven corpus of hostile tokens and requests. Every entry must be refused with a
//! clear 4xx (never 500, never forwarded), and nothing named in a token is ever fetched.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{b64, mint_unsigned, now, SigningKey};
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that records the peer of every connection it accepts: nothing in a token may
/// make the sidecar call it.
struct Tripwire {
    addr: std::net::SocketAddr,
    peers: Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

impl Tripwire {
    async fn start() -> Tripwire {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let p = peers.clone();
        tokio::spawn(async move {
            while let Ok((_s, peer)) = l.accept().await {
                p.lock().expect("lock").push(peer);
            }
        });
        Tripwire { addr, peers }
    }

    fn url(&self) -> String {
        format!("http://{}/keys.json", self.addr)
    }

    /// The peers of every connection made to the tripwire before this call, the sentinel
    /// connection this call makes excluded. Connections are accepted in the order they were
    /// made, so once the sentinel has been accepted every earlier one has been recorded: no
    /// sleep decides the answer.
    async fn connections_so_far(&self) -> Vec<std::net::SocketAddr> {
        let sentinel = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the tripwire");
        let me = sentinel.local_addr().expect("addr");
        wait_until(
            "the tripwire to accept its sentinel connection",
            DEADLINE,
            || async { self.peers.lock().expect("lock").contains(&me) },
        )
        .await;
        let peers = self.peers.lock().expect("lock");
        peers.iter().take_while(|p| **p != me).copied().collect()
    }
}

fn resign(token: &str, sig: &[u8]) -> String {
    let mut parts: Vec<&str> = token.split('.').collect();
    let s = URL_SAFE_NO_PAD.encode(sig);
    parts[2] = &s;
    parts.join(".")
}

fn der_int(v: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = v.iter().skip_while(|b| **b == 0).copied().collect();
    if v.first().is_none_or(|b| *b & 0x80 != 0) {
        v.insert(0, 0);
    }
    let mut out = vec![0x02, v.len() as u8];
    out.extend(v);
    out
}

#[tokio::test]
async fn token_header_key_references_are_never_fetched_or_trusted() {
    let real = key(Alg::ES256);
    let h = Harness::start(&[&real], "", "").await;
    let tripwire = Tripwire::start().await;
    let url = tripwire.url();
    let attacker = SigningKey::generate(Alg::ES256, "attacker");
    let cert = {
        let kp = rcgen::KeyPair::try_from(attacker.pkcs8_der().as_slice()).expect("kp");
        rcgen::CertificateParams::new(vec!["evil".to_string()])
            .expect("params")
            .self_signed(&kp)
            .expect("cert")
    };
    let c = h.claims();
    let headers = [
        json!({"alg": "ES256", "kid": "attacker", "jku": url}),
        json!({"alg": "ES256", "kid": "attacker", "x5u": url}),
        json!({"alg": "ES256", "kid": "attacker", "jwk": attacker.public_jwk()}),
        json!({"alg": "ES256", "kid": "attacker", "x5c": [STANDARD.encode(cert.der())]}),
        json!({"alg": "ES256", "jwk": attacker.public_jwk()}),
        json!({"alg": "ES256", "kid": "kid-ES256", "jku": url, "jwk": attacker.public_jwk()}),
    ];
    for hd in headers {
        let t = attacker.mint_with_header(&hd, &c);
        let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
        assert!(s == 401, "{hd}: {s} {body}");
    }
    // Every response is in, so any fetch made while handling them has connected by now.
    assert_eq!(
        tripwire.connections_so_far().await,
        vec![],
        "a URL from a token was fetched"
    );
    assert_eq!(h.echo.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_signatures_ecdsa_der_wrong_length_zero_and_out_of_range_rsa_length() {
    let es = key(Alg::ES256);
    let rs = key(Alg::RS256);
    let h = Harness::start(&[&es, &rs], "", "").await;
    let good = es.mint(&h.claims());
    let sig = URL_SAFE_NO_PAD
        .decode(good.split('.').nth(2).expect("sig"))
        .expect("b64");
    assert_eq!(sig.len(), 64);
    let (r, s) = sig.split_at(32);
    let mut der = vec![0x30];
    let body = [der_int(r), der_int(s)].concat();
    der.push(body.len() as u8);
    der.extend(body);
    let order = hex("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("DER instead of raw", der),
        ("63 bytes", sig[..63].to_vec()),
        ("65 bytes", [sig.clone(), vec![0]].concat()),
        ("r = 0", [vec![0u8; 32], s.to_vec()].concat()),
        ("s = 0", [r.to_vec(), vec![0u8; 32]].concat()),
        ("r = n", [order.clone(), s.to_vec()].concat()),
        ("s = n", [r.to_vec(), order.clone()].concat()),
        ("r, s = 0xff..", vec![0xff; 64]),
        ("empty-ish", vec![0]),
    ];
    for (what, bad) in cases {
        let (st, _, body) = get_with_token(&h.url("/x"), &resign(&good, &bad)).await;
        assert_eq!(st, 401, "ES256 {what}: {body}");
    }
    let good_rs = rs.mint(&h.claims());
    let rsig = URL_SAFE_NO_PAD
        .decode(good_rs.split('.').nth(2).expect("sig"))
        .expect("b64");
    for (what, bad) in [
        ("255 bytes", rsig[1..].to_vec()),
        ("257 bytes", [vec![0u8], rsig.clone()].concat()),
        ("zero", vec![0u8; 256]),
    ] {
        let (st, _, body) = get_with_token(&h.url("/x"), &resign(&good_rs, &bad)).await;
        assert_eq!(
            (st.as_u16(), reason(&body).as_str()),
            (401, "bad_signature"),
            "RS256 {what}"
        );
    }
    assert_eq!(get_with_token(&h.url("/x"), &good).await.0, 200);
    assert_eq!(h.echo.requests.load(Ordering::SeqCst), 1);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[tokio::test]
async fn hostile_token_table() {
    let k = key(Alg::ES256);
    let h = Harness::start(&[&k], "", "").await;
    let iss = h.idp.issuer();
    let t0 = now();
    let base = |extra: Value| {
        let mut c = json!({"iss": iss, "sub": "s", "aud": "api", "exp": t0 + 600});
        for (key, v) in extra.as_object().expect("obj") {
            c[key] = v.clone();
        }
        c
    };
    let sign = |hd: Value, c: Value| k.mint_with_header(&hd, &c);
    let hd = json!({"alg": "ES256", "kid": "kid-ES256"});
    let raw_payload = |payload: &str| {
        let input = format!("{}.{}", b64(hd.to_string()), b64(payload));
        format!("{input}.{}", b64(k.sign(input.as_bytes())))
    };
    let table: Vec<(&str, String, u16, &str)> = vec![
        (
            "exp as string",
            sign(hd.clone(), base(json!({"exp": "9999999999"}))),
            401,
            "invalid_claim",
        ),
        (
            "exp negative",
            sign(hd.clone(), base(json!({"exp": -1}))),
            401,
            "expired",
        ),
        (
            "exp float past",
            sign(hd.clone(), base(json!({"exp": 1.5e9}))),
            401,
            "expired",
        ),
        (
            "nbf huge",
            sign(hd.clone(), base(json!({"nbf": 1e300}))),
            401,
            "date_out_of_range",
        ),
        (
            "exp 1e30 (never read as far future)",
            sign(hd.clone(), base(json!({"exp": 1e30}))),
            401,
            "date_out_of_range",
        ),
        (
            "exp past 2^64",
            sign(hd.clone(), base(json!({"exp": 18446744073709551616.0f64}))),
            401,
            "date_out_of_range",
        ),
        (
            "exp after year 9999",
            sign(hd.clone(), base(json!({"exp": 253402300800u64}))),
            401,
            "date_out_of_range",
        ),
        (
            "iat huge",
            sign(hd.clone(), base(json!({"iat": 1e300}))),
            401,
            "date_out_of_range",
        ),
        (
            "nbf as string",
            sign(hd.clone(), base(json!({"nbf": "0"}))),
            401,
            "invalid_claim",
        ),
        (
            "iat as object",
            sign(hd.clone(), base(json!({"iat": {"a": 1}}))),
            401,
            "invalid_claim",
        ),
        (
            "aud number",
            sign(hd.clone(), base(json!({"aud": 5}))),
            401,
            "bad_audience",
        ),
        (
            "aud nested",
            sign(hd.clone(), base(json!({"aud": [["api"]]}))),
            401,
            "bad_audience",
        ),
        (
            "iss number",
            sign(hd.clone(), base(json!({"iss": 7}))),
            401,
            "unknown_issuer",
        ),
        (
            "duplicate sub",
            raw_payload(&format!(
                r#"{{"iss":"{iss}","aud":"api","exp":{},"sub":"a","sub":"admin"}}"#,
                t0 + 600
            )),
            401,
            "malformed",
        ),
        (
            "duplicate alg",
            mint_unsigned(&json!({"x": 1}), &base(json!({})), "AAAA").replacen(
                &b64(json!({"x": 1}).to_string()),
                &b64(r#"{"alg":"none","alg":"ES256","kid":"kid-ES256"}"#),
                1,
            ),
            401,
            "malformed",
        ),
        ("payload array", raw_payload("[1,2]"), 401, "malformed"),
        ("payload string", raw_payload("\"x\""), 401, "malformed"),
        ("payload number", raw_payload("42"), 401, "malformed"),
        (
            "nested JWT payload",
            raw_payload(&format!("\"{}\"", k.mint(&base(json!({}))))),
            401,
            "malformed",
        ),
        (
            "crit b64 false",
            sign(
                json!({"alg": "ES256", "kid": "kid-ES256", "crit": ["b64"], "b64": false}),
                base(json!({})),
            ),
            401,
            "unsupported_crit",
        ),
        (
            "kid non-string",
            sign(
                json!({"alg": "ES256", "kid": ["kid-ES256"]}),
                base(json!({})),
            ),
            401,
            "malformed",
        ),
        (
            "kid path traversal",
            sign(
                json!({"alg": "ES256", "kid": "../../../etc/passwd"}),
                base(json!({})),
            ),
            401,
            "unknown_kid",
        ),
        (
            "kid SQL",
            sign(
                json!({"alg": "ES256", "kid": "x' OR '1'='1"}),
                base(json!({})),
            ),
            401,
            "unknown_kid",
        ),
        (
            "kid NUL",
            sign(
                json!({"alg": "ES256", "kid": "kid-ES256\u{0}"}),
                base(json!({})),
            ),
            401,
            "unknown_kid",
        ),
        (
            "kid 10k",
            sign(
                json!({"alg": "ES256", "kid": "k".repeat(10_000)}),
                base(json!({})),
            ),
            401,
            "unknown_kid",
        ),
        (
            "JWE five segments",
            format!("{}.a.b.c.d", b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
            401,
            "malformed",
        ),
        (
            "padding",
            format!("{}=", k.mint(&base(json!({})))),
            401,
            "malformed",
        ),
        (
            "whitespace inside",
            k.mint(&base(json!({}))).replacen('.', ". ", 1),
            401,
            "malformed",
        ),
    ];
    for (what, token, status, want) in table {
        let (s, _, body) = get_with_token(&h.url("/x"), &token).await;
        assert_eq!(
            (s.as_u16(), reason(&body).as_str()),
            (status, want),
            "{what}"
        );
    }
    assert_eq!(h.echo.requests.load(Ordering::SeqCst), 0);
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    // Every request here ends with the server closing the connection: the timeout only
    // bounds a hang, and is generous so a loaded machine cannot truncate an answer.
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn request_smuggling_and_path_tricks_over_raw_tcp() {
    let k = key(Alg::ES256);
    let h = Harness::start(&[&k], "", "").await;
    let t = k.mint(&h.claims());
    let addr = h.sidecar.proxy_addr;
    let refused_400: Vec<(&str, String)> = vec![
        (
            "obs-fold",
            format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer\r\n {t}\r\n\r\n"),
        ),
        (
            "space before colon",
            format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization : Bearer {t}\r\n\r\n"),
        ),
        (
            "NUL in value",
            "GET /public/x HTTP/1.1\r\nHost: a\r\nX-A: a\u{0}b\r\n\r\n".to_string(),
        ),
        (
            "bare CR in value",
            "GET /public/x HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n".to_string(),
        ),
        (
            "bad chunk",
            "POST /public/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_string(),
        ),
    ];
    for (what, req) in refused_400 {
        let resp = raw(addr, req.as_bytes()).await;
        let status = resp.get(9..12).unwrap_or("");
        assert_eq!(status, "400", "{what}: {resp:.80}");
        assert!(
            !resp.contains("\"path\":\"/admin\""),
            "{what}: smuggled request reached the app"
        );
    }
    // Transfer-Encoding with Content-Length: hyper frames by Transfer-Encoding, drops
    // Content-Length and closes the connection after answering (RFC 9112 6.3), so the bytes
    // after the chunked body are never read as a request, let alone forwarded.
    let resp = raw(addr, b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:.60}");
    assert!(
        resp.contains("\"body_bytes\":0"),
        "the first request's body is the empty chunked body: {resp}"
    );
    assert!(
        resp.contains("connection: close") && !resp.contains("HTTP/1.1 401"),
        "the connection closes after the first answer: {resp}"
    );
    assert!(
        !resp.contains("\"path\":\"/admin\""),
        "smuggled request reached the app"
    );
    // Full URL in the request line: judged (and forwarded) by its normalised path.
    let resp = raw(addr, b"GET http://evil.example/healthz/../admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp:.60}");
    // Path parameters, double encoding, encoded controls: refused before any rule.
    for target in [
        "/healthz;/../admin",
        "/public/%252e%252e/admin",
        "/public/..%252fadmin",
        "/public/%c0%ae%c0%ae/admin",
        "/admin%09",
    ] {
        let resp = raw(
            addr,
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp:.60}");
    }
    // A Connection header naming an identity header, in any spelling.
    for conn in [
        "close, x-jwt-sub",
        "close, X_JWT_SUB",
        "x-jwt-payload, close",
    ] {
        let resp = raw(
            addr,
            format!("GET /public/x HTTP/1.1\r\nHost: a\r\nConnection: {conn}\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "Connection: {conn}: {resp:.60}"
        );
    }
    // Two different bearer tokens, one in each of two Authorization headers.
    let t2 =
        k.mint(&json!({"iss": h.idp.issuer(), "sub": "other", "aud": "api", "exp": now() + 60}));
    let resp = raw(addr, format!("GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\nauthorization: Bearer {t2}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp:.60}");
    let m = h.metrics().await;
    assert!(
        !metric_series(&m, "jwks_sidecar_requests_total").any(|(labels, v)| {
            labels.contains(r#"decision="allow""#)
                && labels.contains(r#"provider="idp""#)
                && v > 0.0
        }),
        "{m}"
    );
}
