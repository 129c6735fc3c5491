//! DPoP (RFC 9449) through the proxy: a bound token with a valid proof passes; every failure
//! class of a proof (method, URI, iat either way, replay, ath, thumbprint, private key in
//! `jwk`, `none`/HMAC, two proofs, wrong typ, a forged signature) is refused with
//! `WWW-Authenticate: DPoP error="invalid_dpop_proof"`, its reason and its metric; a bound
//! token presented as Bearer is refused (downgrade), and a route can require DPoP. Proof keys
//! and tokens are made per run.

mod support;

use jwks_sidecar::demo::dpop::{ath, jkt, proof_parts};
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{now, SigningKey};
use serde_json::{json, Value};
use support::*;

struct Env {
    s: jwks_sidecar::Running,
    idp: jwks_sidecar::demo::FakeIdp,
    k: std::sync::Arc<SigningKey>,
    _echo: jwks_sidecar::demo::EchoUpstream,
}

async fn env(extra: impl FnOnce(&mut jwks_sidecar::config::Config)) -> Env {
    let (k, idp, echo) = idp_and_echo(Alg::RS256).await;
    let mut c = base_config(&idp, &echo);
    extra(&mut c);
    let s = start_config(c).await;
    wait_keys_ready(&s).await;
    Env {
        s,
        idp,
        k,
        _echo: echo,
    }
}

impl Env {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.s.proxy_addr)
    }

    /// An access token bound to `holder` (or unbound with `None`).
    fn token(&self, holder: Option<&SigningKey>) -> String {
        let mut claims = json!({"iss": self.idp.issuer(), "aud": "api", "sub": "alice",
            "exp": now() + 300});
        if let Some(h) = holder {
            claims["cnf"] = json!({"jkt": jkt(h)});
        }
        self.k.mint(&claims)
    }

    async fn metrics(&self) -> String {
        let admin = self.s.admin_addr.expect("admin");
        get(&format!("http://{admin}/metrics"), &[]).await.2
    }
}

/// A valid proof by `holder` for `method` `uri` and `token`, then changed by `edit`.
fn proof(
    holder: &SigningKey,
    method: &str,
    uri: &str,
    token: &str,
    edit: impl FnOnce(&mut Value, &mut Value),
) -> String {
    let (mut header, mut claims) = proof_parts(holder, method, uri, token);
    edit(&mut header, &mut claims);
    holder.mint_with_header(&header, &claims)
}

async fn send(url: &str, scheme: &str, token: &str, proofs: &[&str]) -> (u16, String, String) {
    let auth = format!("{scheme} {token}");
    let mut h: Vec<(&str, &str)> = vec![("authorization", &auth)];
    for p in proofs {
        h.push(("dpop", p));
    }
    let (st, headers, body) = get(url, &h).await;
    let challenge = headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (st.as_u16(), challenge, body)
}

#[tokio::test]
async fn a_bound_token_with_its_proof_passes_and_every_proof_failure_is_refused() {
    let e = env(|_| {}).await;
    let holder = SigningKey::generate(Alg::ES256, "holder");
    let other = SigningKey::generate(Alg::ES256, "other");
    let token = e.token(Some(&holder));
    let url = e.url("/api/orders?page=2");
    let htu = e.url("/api/orders");
    let good = proof(&holder, "GET", &htu, &token, |_, _| {});
    let (st, ch, body) = send(&url, "DPoP", &token, &[&good]).await;
    assert_eq!(st, 200, "{ch} {body}");
    assert_eq!(echoed(&body)["x-jwt-sub"], vec!["alice"]);
    // The same proof again: replayed.
    let (st, ch, body) = send(&url, "DPoP", &token, &[&good]).await;
    assert_eq!((st, reason(&body)), (401, "invalid_dpop_proof".into()));
    assert!(
        ch.starts_with("DPoP ") && ch.contains("error=\"invalid_dpop_proof\""),
        "{ch}"
    );
    assert!(ch.contains("algs=\"") && ch.contains("ES256"), "{ch}");
    assert!(body.contains("already used"), "{body}");

    let hmac_header = |h: &mut Value, _: &mut Value| h["alg"] = json!("HS256");
    type Edit = Box<dyn FnOnce(&mut Value, &mut Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "htm",
            "wrong method",
            Box::new(|_, c| c["htm"] = json!("POST")),
        ),
        (
            "htu",
            "wrong path",
            Box::new({
                let u = e.url("/api/other");
                move |_, c| c["htu"] = json!(u)
            }),
        ),
        (
            "htu",
            "wrong host",
            Box::new({
                let u = format!("http://evil.example:{}/api/orders", e.s.proxy_addr.port());
                move |_, c| c["htu"] = json!(u)
            }),
        ),
        (
            "htu",
            "https instead of http",
            Box::new({
                let u = htu.replace("http://", "https://");
                move |_, c| c["htu"] = json!(u)
            }),
        ),
        (
            "iat",
            "stale iat",
            Box::new(|_, c| c["iat"] = json!(now() - 600)),
        ),
        (
            "iat",
            "future iat",
            Box::new(|_, c| c["iat"] = json!(now() + 600)),
        ),
        (
            "iat",
            "no iat",
            Box::new(|_, c| {
                c.as_object_mut().map(|o| o.remove("iat"));
            }),
        ),
        (
            "jti",
            "no jti",
            Box::new(|_, c| {
                c.as_object_mut().map(|o| o.remove("jti"));
            }),
        ),
        (
            "ath",
            "wrong ath",
            Box::new(|_, c| c["ath"] = json!(ath("another token"))),
        ),
        (
            "ath",
            "no ath",
            Box::new(|_, c| {
                c.as_object_mut().map(|o| o.remove("ath"));
            }),
        ),
        ("typ", "typ JWT", Box::new(|h, _| h["typ"] = json!("JWT"))),
        ("alg", "alg HS256", Box::new(hmac_header)),
        ("alg", "alg none", Box::new(|h, _| h["alg"] = json!("none"))),
        (
            "jwk",
            "no jwk",
            Box::new(|h, _| {
                h.as_object_mut().map(|o| o.remove("jwk"));
            }),
        ),
        (
            "private_key",
            "private key in jwk",
            Box::new(|h, _| h["jwk"]["d"] = json!("AAAA")),
        ),
        (
            "jwk",
            "RSA jwk over 4096 bits",
            Box::new(|h, _| h["jwk"] = json!({"kty": "RSA", "e": "AQAB", "n": "A".repeat(1400)})),
        ),
        (
            "jwk",
            "jwk with a certificate chain",
            Box::new(|h, _| h["jwk"]["x5c"] = json!(["AAAA"])),
        ),
    ];
    for (code, what, edit) in cases {
        let p = proof(&holder, "GET", &htu, &token, edit);
        let (st, ch, body) = send(&url, "DPoP", &token, &[&p]).await;
        assert_eq!(st, 401, "{what}: {body}");
        assert_eq!(reason(&body), "invalid_dpop_proof", "{what}: {body}");
        assert!(
            ch.starts_with("DPoP ") && ch.contains("invalid_dpop_proof"),
            "{what}: {ch}"
        );
        let m = e.metrics().await;
        assert!(
            sample(
                &m,
                &format!("jwks_sidecar_dpop_proofs_total{{provider=\"idp\",result=\"{code}\"}}")
            )
            .is_some_and(|n| n >= 1.0),
            "{what}: result {code} counted"
        );
    }
    // The holder's jwk, signed by another key: the signature check.
    let (h, c) = proof_parts(&holder, "GET", &htu, &token);
    let forged = other.mint_with_header(&h, &c);
    let (st, ch, body) = send(&url, "DPoP", &token, &[&forged]).await;
    assert_eq!(
        (st, reason(&body)),
        (401, "invalid_dpop_proof".into()),
        "{body}"
    );
    assert!(
        body.contains("signature is invalid") && ch.contains("invalid_dpop_proof"),
        "{body}"
    );
    // A Host header that is not host[:port] cannot move a proof to another path: a proof
    // for /api/orders, sent to /api/other with "Host: <addr>/api/orders?".
    let p = proof(&holder, "GET", &htu, &token, |_, _| {});
    let auth = format!("DPoP {token}");
    let host = format!("{}/api/orders?", e.s.proxy_addr);
    let (st, _, body) = get(
        &e.url("/api/other"),
        &[("authorization", &auth), ("dpop", &p), ("host", &host)],
    )
    .await;
    assert_eq!(
        st.as_u16(),
        401,
        "a Host with a path must not match the proof: {body}"
    );
    // Two proofs (two headers, or two values in one), and none at all.
    let a = proof(&holder, "GET", &htu, &token, |_, _| {});
    let b = proof(&holder, "GET", &htu, &token, |_, _| {});
    let (st, _, body) = send(&url, "DPoP", &token, &[&a, &b]).await;
    assert_eq!(
        (st, body.contains("more than one DPoP proof")),
        (401, true),
        "{body}"
    );
    let joined = format!("{a}, {b}");
    let (st, _, body) = send(&url, "DPoP", &token, &[&joined]).await;
    assert_eq!(
        (st, body.contains("more than one DPoP proof")),
        (401, true),
        "{body}"
    );
    let (st, _, body) = send(&url, "DPoP", &token, &[]).await;
    assert_eq!(
        (st, body.contains("exactly one DPoP proof")),
        (401, true),
        "{body}"
    );
    // A valid proof by another key than the token's: the binding fails.
    let theirs = proof(&other, "GET", &htu, &token, |_, _| {});
    let (st, ch, body) = send(&url, "DPoP", &token, &[&theirs]).await;
    assert_eq!(
        (st, reason(&body)),
        (401, "dpop_key_mismatch".into()),
        "{body}"
    );
    assert!(
        ch.starts_with("DPoP ") && ch.contains("error=\"invalid_token\""),
        "RFC 9449 7.1: {ch}"
    );
    assert!(body.contains("bound to another key"), "{body}");
    // A proof for an unbound token under the DPoP scheme.
    let unbound = e.token(None);
    let p = proof(&holder, "GET", &htu, &unbound, |_, _| {});
    let (st, _, body) = send(&url, "DPoP", &unbound, &[&p]).await;
    assert_eq!((st, reason(&body)), (401, "dpop_unbound".into()), "{body}");
    // Equivalent spellings of the URI are the same URI (RFC 3986 normalisation).
    let loud = htu.replace("http://127.0.0.1", "HTTP://127.0.0.1");
    let p = proof(&holder, "GET", &loud, &token, |_, _| {});
    assert_eq!(send(&url, "DPoP", &token, &[&p]).await.0, 200);
    let m = e.metrics().await;
    assert!(
        sample(
            &m,
            r#"jwks_sidecar_dpop_proofs_total{provider="idp",result="ok"}"#
        ) == Some(2.0),
        "two proofs passed: {}",
        metric_series(&m, "jwks_sidecar_dpop_proofs_total")
            .map(|(s, v)| format!("{s} {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn a_bound_token_presented_as_bearer_is_a_downgrade_and_routes_can_require_dpop() {
    let e = env(|c| {
        c.rules.push(config(
            "[[rules]]\nmatch = { path_prefix = \"/payments\" }\nsender_constraint = \"dpop\"\n",
        ).rules[0].clone());
    })
    .await;
    let holder = SigningKey::generate(Alg::EdDSA, "holder");
    let bound = e.token(Some(&holder));
    // Downgrade: the bound token as a bearer token, anywhere.
    for path in ["/api/x", "/payments/1"] {
        let (st, ch, body) = send(&e.url(path), "Bearer", &bound, &[]).await;
        assert_eq!(
            (st, reason(&body)),
            (401, "dpop_bound_as_bearer".into()),
            "{path}"
        );
        assert!(ch.starts_with("DPoP ") && ch.contains("algs="), "{ch}");
    }
    // A confirmation this sidecar cannot check is never read as unbound.
    for cnf in [
        json!({"jkt": 5}),
        json!({"jwk": holder.public_jwk()}),
        json!("x"),
    ] {
        let t =
            e.k.mint(&json!({"iss": e.idp.issuer(), "aud": "api", "sub": "alice",
            "exp": now() + 300, "cnf": cnf}));
        let (st, _, body) = send(&e.url("/api/x"), "Bearer", &t, &[]).await;
        assert_eq!(
            (st, reason(&body)),
            (401, "unknown_confirmation".into()),
            "{cnf}"
        );
    }
    // The route requires DPoP: an unbound bearer token is refused there, accepted elsewhere.
    let plain = e.token(None);
    let (st, ch, body) = send(&e.url("/payments/1"), "Bearer", &plain, &[]).await;
    assert_eq!(
        (st, reason(&body)),
        (401, "sender_constraint_required".into())
    );
    assert!(ch.starts_with("DPoP "), "{ch}");
    assert_eq!(send(&e.url("/api/x"), "Bearer", &plain, &[]).await.0, 200);
    // No token at all on that route: a DPoP challenge.
    let (st, h, _) = get(&e.url("/payments/1"), &[]).await;
    assert_eq!(st, 401);
    let ch = h["www-authenticate"].to_str().expect("ascii");
    assert!(
        ch.starts_with("DPoP realm=") && ch.contains("algs="),
        "{ch}"
    );
    // With its proof, the bound token passes there.
    let htu = e.url("/payments/1");
    let p = proof(&holder, "GET", &htu, &bound, |_, _| {});
    assert_eq!(send(&htu, "DPoP", &bound, &[&p]).await.0, 200);
    let m = e.metrics().await;
    for (kind, result) in [
        ("bearer", "dpop_bound_as_bearer"),
        ("bearer", "sender_constraint_required"),
        ("bearer", "ok"),
        ("dpop", "ok"),
    ] {
        let series = format!(
            "jwks_sidecar_sender_constraint_total{{kind=\"{kind}\",provider=\"idp\",result=\"{result}\"}}"
        );
        assert!(sample(&m, &series).is_some_and(|n| n >= 1.0), "{series}");
    }
}

#[tokio::test]
async fn behind_tls_termination_the_proof_names_the_public_origin() {
    let e = env(|c| c.proxy.public_origin = Some("https://api.example.com".into())).await;
    let holder = SigningKey::generate(Alg::ES256, "holder");
    let token = e.token(Some(&holder));
    let url = e.url("/api/x");
    let local = proof(&holder, "GET", &url, &token, |_, _| {});
    assert_eq!(
        send(&url, "DPoP", &token, &[&local]).await.0,
        401,
        "the local URL is not the public one"
    );
    let public = proof(
        &holder,
        "GET",
        "https://api.example.com/api/x",
        &token,
        |_, _| {},
    );
    assert_eq!(send(&url, "DPoP", &token, &[&public]).await.0, 200);
}

#[tokio::test]
async fn server_nonces_are_required_when_configured_and_shared_through_a_secret_file() {
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-dpop-nonce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("nonce.key");
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("rng");
    std::fs::write(&secret, bytes).expect("write");
    let with_nonces = |c: &mut jwks_sidecar::config::Config| {
        c.dpop.nonce = true;
        c.dpop.nonce_secret_file = Some(secret.clone());
    };
    let a = env(with_nonces).await;
    let holder = SigningKey::generate(Alg::ES256, "holder");
    let token = a.token(Some(&holder));
    let url = a.url("/api/x");
    // No nonce: 401 use_dpop_nonce, with the nonce to use.
    let p = proof(&holder, "GET", &url, &token, |_, _| {});
    let auth = format!("DPoP {token}");
    let (st, h, body) = get(&url, &[("authorization", &auth), ("dpop", &p)]).await;
    assert_eq!(
        (st.as_u16(), reason(&body)),
        (401, "use_dpop_nonce".into()),
        "{body}"
    );
    let ch = h["www-authenticate"].to_str().expect("ascii");
    assert!(
        ch.starts_with("DPoP ") && ch.contains("error=\"use_dpop_nonce\""),
        "{ch}"
    );
    let nonce = h["dpop-nonce"].to_str().expect("nonce").to_string();
    // With it: allowed.
    let with = |n: &str| {
        let n = n.to_string();
        proof(&holder, "GET", &url, &token, move |_, c| {
            c["nonce"] = json!(n)
        })
    };
    assert_eq!(send(&url, "DPoP", &token, &[&with(&nonce)]).await.0, 200);
    // A forged one: refused again.
    let (st, _, body) = send(
        &url,
        "DPoP",
        &token,
        &[&with("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")],
    )
    .await;
    assert_eq!((st, reason(&body)), (401, "use_dpop_nonce".into()));
    // Another sidecar with the same secret file (a replica, or a restart) accepts it.
    let b = env(with_nonces).await;
    let token_b = b.token(Some(&holder));
    let url_b = b.url("/api/x");
    let n = nonce.clone();
    let p = proof(&holder, "GET", &url_b, &token_b, move |_, c| {
        c["nonce"] = json!(n)
    });
    assert_eq!(send(&url_b, "DPoP", &token_b, &[&p]).await.0, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn explain_shows_the_proof_and_the_binding() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let c = base_config(&idp, &echo);
    let plan = jwks_sidecar::plan::compile(c, None).expect("plan");
    let dir =
        std::env::temp_dir().join(format!("jwks-sidecar-dpop-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks_sidecar::testkit::jwks(&[&k]).to_string()).expect("write");
    let holder = SigningKey::generate(Alg::ES256, "holder");
    let token = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice",
        "exp": now() + 300, "cnf": {"jkt": jkt(&holder)}}));
    let explain = |proof: String| {
        let req = jwks_sidecar::explain::ExplainRequest {
            request: "GET /api/x".into(),
            headers: vec![
                "Host: api.test".into(),
                format!("Authorization: DPoP {token}"),
                format!("DPoP: {proof}"),
            ],
            offline: Some(jwks_file.clone()),
        };
        let plan = &plan;
        async move {
            jwks_sidecar::explain::explain(plan, &req)
                .await
                .expect("explain")
        }
    };
    let good = proof(&holder, "GET", "http://api.test/api/x", &token, |_, _| {});
    let text = explain(good).await;
    for want in [
        "DPoP scheme",
        "ok   DPoP proof",
        "ok   sender constraint",
        "decision: ALLOW (ok)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let wrong = proof(&holder, "POST", "http://api.test/api/x", &token, |_, _| {});
    let text = explain(wrong).await;
    for want in [
        "FAIL the DPoP proof htm is not the request method",
        "decision: DENY (invalid_dpop_proof)",
        "WWW-Authenticate: DPoP",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
