//! The signed identity for the app (`[assertion]`): every allowed request carries a JWT signed
//! by the sidecar's own key, verifiable with the admin listener's `/assertion/jwks.json`;
//! client-sent copies never reach the app; replicas with the same key file publish the same
//! key; nothing of it when disabled.

mod support;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jwks_sidecar::jose::{jws, Alg};
use jwks_sidecar::jwks::{KeySet, ParsePolicy};
use jwks_sidecar::testkit::{now, SigningKey};
use serde_json::{json, Value};
use support::*;

/// A PKCS#8 PEM private key made for this run (never committed).
fn key_file(name: &str) -> std::path::PathBuf {
    let key = SigningKey::generate(Alg::ES256, "assertion");
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(key.pkcs8_der())
    );
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-assertion-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write key");
    path
}

async fn sidecar(
    idp: &jwks_sidecar::demo::FakeIdp,
    echo: &jwks_sidecar::demo::EchoUpstream,
    key: Option<&std::path::Path>,
) -> jwks_sidecar::Running {
    let mut c = base_config(idp, echo);
    if let Some(k) = key {
        c.assertion.enabled = true;
        c.assertion.audience = "orders".into();
        c.assertion.claims = vec!["sub".into(), "email".into()];
        c.assertion.ttl = std::time::Duration::from_secs(30);
        c.assertion.key_file = Some(k.to_path_buf());
    }
    let s = start_config(c).await;
    wait_keys_ready(&s).await;
    s
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

#[tokio::test]
async fn allowed_requests_carry_an_assertion_the_app_can_verify() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let s = sidecar(&idp, &echo, Some(&key_file("a.pem"))).await;
    let admin = s.admin_addr.expect("admin");
    let (st, h, jwks) = get(&format!("http://{admin}/assertion/jwks.json"), &[]).await;
    assert_eq!(st, 200);
    assert_eq!(h["content-type"], "application/jwk-set+json");
    assert_eq!(h["cache-control"], "public, max-age=300");
    let token_exp = now() + 20;
    let token = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice",
        "email": "alice@example.com", "role": "admin", "exp": token_exp}));
    let (st, _, body) = get(
        &format!("http://{}/api/x", s.proxy_addr),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-jwt-assertion", "forged"),
            ("x_jwt_assertion", "forged"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let seen = echoed(&body);
    let values = &seen["x-jwt-assertion"];
    assert_eq!(
        values.len(),
        1,
        "one assertion, the client's copies stripped: {seen:?}"
    );
    assert!(!seen.contains_key("x_jwt_assertion"), "{seen:?}");
    let assertion = &values[0];
    // Verify it as an app would: the admin key set, the signature, then the claims.
    let policy = ParsePolicy {
        algorithms: vec![Alg::ES256],
        max_keys: 10,
    };
    let (set, _) = KeySet::parse(jwks.as_bytes(), &policy).expect("jwks");
    let parsed = jws::parse(assertion).expect("a compact JWS");
    let alg = jws::check_alg(&parsed, &[Alg::ES256]).expect("ES256");
    let key = jws::verify_signature(&parsed, alg, set.candidates(parsed.header.kid.as_deref()))
        .expect("signature verifies with /assertion/jwks.json");
    assert_eq!(key.kid, parsed.header.kid);
    let c = claims_of(assertion);
    assert_eq!(c["iss"], "jwks-sidecar");
    assert_eq!(c["aud"], "orders");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["email"], "alice@example.com");
    assert!(c.get("role").is_none(), "only the listed claims: {c}");
    assert_eq!(c["provider"], "idp");
    assert_eq!(c["token_iss"], json!(idp.issuer()));
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 20), "{c}");
    let exp = c["exp"].as_u64().expect("exp");
    assert!(
        exp <= token_exp,
        "never beyond the original token: {exp} > {token_exp}"
    );
    assert!(exp <= c["iat"].as_u64().expect("iat") + 30, "ttl: {c}");
    // A tampered assertion does not verify.
    let mut forged = c.clone();
    forged["sub"] = json!("mallory");
    let parts: Vec<&str> = assertion.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    let p = jws::parse(&tampered).expect("parses");
    assert!(jws::verify_signature(&p, alg, set.keys()).is_err());
    s.shutdown();
    s.wait().await;
}

#[tokio::test]
async fn replicas_with_one_key_file_publish_one_key_and_disabled_publishes_none() {
    let (_k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let file = key_file("shared.pem");
    let a = sidecar(&idp, &echo, Some(&file)).await;
    let b = sidecar(&idp, &echo, Some(&file)).await;
    let jwks = |s: &jwks_sidecar::Running| {
        let url = format!(
            "http://{}/assertion/jwks.json",
            s.admin_addr.expect("admin")
        );
        async move { get(&url, &[]).await.2 }
    };
    let (ja, jb) = (jwks(&a).await, jwks(&b).await);
    assert_eq!(jwks_kids(&ja), jwks_kids(&jb), "same key file, same kid");
    let off = sidecar(&idp, &echo, None).await;
    let (st, _, _) = get(
        &format!(
            "http://{}/assertion/jwks.json",
            off.admin_addr.expect("admin")
        ),
        &[],
    )
    .await;
    assert_eq!(st, 404);
}
