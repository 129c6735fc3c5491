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

/// The assertion the app received for one request with `token`.
async fn assertion_for(s: &jwks_sidecar::Running, token: &str) -> String {
    let (st, _, body) = get_with_token(&format!("http://{}/api/x", s.proxy_addr), token).await;
    assert_eq!(st, 200, "{body}");
    echoed(&body)["x-jwt-assertion"][0].clone()
}

fn kid_of(jws_text: &str) -> String {
    jws::parse(jws_text)
        .expect("a compact JWS")
        .header
        .kid
        .expect("kid")
}

#[tokio::test]
async fn generated_keys_rotate_on_schedule_with_overlap() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let mut c = base_config(&idp, &echo);
    c.assertion.enabled = true;
    c.assertion.audience = "orders".into();
    c.assertion.algorithm = "EdDSA".into();
    c.assertion.ttl = std::time::Duration::from_secs(3);
    c.assertion.overlap = std::time::Duration::from_secs(3);
    c.assertion.rotate_every = std::time::Duration::from_secs(3);
    let s = start_config(c).await;
    wait_keys_ready(&s).await;
    let jwks_url = format!(
        "http://{}/assertion/jwks.json",
        s.admin_addr.expect("admin")
    );
    let token = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice",
        "exp": now() + 300}));
    let first = assertion_for(&s, &token).await;
    let old = kid_of(&first);
    let (_, h, jwks) = get(&jwks_url, &[]).await;
    assert_eq!(
        h["cache-control"], "public, max-age=1",
        "half the rotation period"
    );
    let published = jwks_kids(&jwks);
    assert_eq!(
        published.len(),
        2,
        "the signer and the next key: {published:?}"
    );
    assert_eq!(published[0], old);
    let next = published[1].clone();
    // The schedule turns: the next assertion is signed by the key published in advance.
    let deadline = std::time::Instant::now() + DEADLINE;
    let rotated = loop {
        let a = assertion_for(&s, &token).await;
        if kid_of(&a) != old {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the assertion key never rotated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(kid_of(&rotated), next, "the pre-published key signs");
    // The retired key is still published (the first assertion verifies), then leaves.
    let (_, _, jwks) = get(&jwks_url, &[]).await;
    let policy = ParsePolicy {
        algorithms: vec![Alg::EdDSA],
        max_keys: 10,
    };
    let (set, _) = KeySet::parse(jwks.as_bytes(), &policy).expect("jwks");
    for a in [&first, &rotated] {
        let p = jws::parse(a).expect("jws");
        jws::verify_signature(&p, Alg::EdDSA, set.candidates(p.header.kid.as_deref()))
            .unwrap_or_else(|e| panic!("{:?} verifies after the rotation: {e:?}", p.header.kid));
    }
    wait_until("the retired key to leave the set", DEADLINE, || async {
        !jwks_kids(&get(&jwks_url, &[]).await.2).contains(&old)
    })
    .await;
    s.shutdown();
    s.wait().await;
}

#[tokio::test]
async fn the_key_set_answers_conditional_requests_and_reload_keeps_the_keys() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let mut c = base_config(&idp, &echo);
    c.assertion.enabled = true;
    c.assertion.audience = "orders".into();
    c.reload.watch = false;
    let dir = std::env::temp_dir().join(format!(
        "jwks-sidecar-assertion-reload-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.toml");
    std::fs::write(&file, to_toml(&c)).expect("write");
    let plan = jwks_sidecar::plan::load(Some(&file), &Default::default()).expect("config");
    let s = jwks_sidecar::start_with(plan, Some(file.clone()), Default::default())
        .await
        .expect("start");
    wait_keys_ready(&s).await;
    let jwks_url = format!(
        "http://{}/assertion/jwks.json",
        s.admin_addr.expect("admin")
    );
    let (st, h, before) = get(&jwks_url, &[]).await;
    assert_eq!(st, 200);
    let etag = h["etag"].to_str().expect("etag").to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let (st, h, body) = get(&jwks_url, &[("if-none-match", &etag)]).await;
    assert_eq!((st.as_u16(), body.as_str()), (304, ""));
    assert_eq!(h["etag"], etag.as_str());
    let (st, _, _) = get(&jwks_url, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(st, 200);
    let token = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice",
        "email": "a@example.com", "exp": now() + 300}));
    // A reload that changes only the claims keeps the keys (no rotation, same set).
    c.assertion.claims = vec!["sub".into(), "email".into()];
    std::fs::write(&file, to_toml(&c)).expect("write");
    s.runtime.reload().await.expect("reload");
    assert_eq!(
        get(&jwks_url, &[]).await.2,
        before,
        "same keys after the reload"
    );
    let a = assertion_for(&s, &token).await;
    assert_eq!(
        claims_of(&a)["email"],
        "a@example.com",
        "the new claims apply"
    );
    assert_eq!(kid_of(&a), jwks_kids(&before)[0]);
    // A reload that changes the algorithm makes new keys.
    c.assertion.algorithm = "EdDSA".into();
    std::fs::write(&file, to_toml(&c)).expect("write");
    s.runtime.reload().await.expect("reload");
    let after = get(&jwks_url, &[]).await.2;
    assert!(
        jwks_kids(&after)
            .iter()
            .all(|k| !jwks_kids(&before).contains(k)),
        "{after}"
    );
    assert_eq!(claims_of(&assertion_for(&s, &token).await)["sub"], "alice");
    s.shutdown();
    s.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
