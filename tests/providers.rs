//! Every provider's published key shape, served by the fake IdP and used through the proxy:
//! Stytch, Auth0, Okta, Cognito, Clerk, OneLogin/SuperTokens (plain JWKS), Keycloak, Entra,
//! Google/Firebase, Kubernetes service-account issuers, and the odd JWKs (x5c only, no alg,
//! duplicate kids, unknown kty). Certificates are made at test time around fresh keys.

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jwks_sidecar::demo::{EchoUpstream, FakeIdp};
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{now, SigningKey};
use serde_json::{json, Value};
use support::*;

struct Idp {
    idp: FakeIdp,
    _echo: EchoUpstream,
    sidecar: jwks_sidecar::Running,
}

impl Idp {
    fn url(&self, p: &str) -> String {
        format!("http://{}{}", self.sidecar.proxy_addr, p)
    }
    async fn metrics(&self) -> String {
        get(
            &format!("http://{}/metrics", self.sidecar.admin_addr.expect("admin")),
            &[],
        )
        .await
        .2
    }
}

/// Starts an IdP serving `doc` (or raw text), then a sidecar whose provider block is
/// `provider` with `{ISSUER}` and `{JWKS}` substituted.
async fn start(doc: Option<Value>, raw: Option<String>, provider: &str) -> Idp {
    let idp = FakeIdp::start(&[], 0).await.expect("idp");
    if let Some(d) = doc {
        idp.set_jwks(d);
    }
    *idp.state.raw_body.lock().expect("lock") = raw;
    let echo = EchoUpstream::start().await.expect("echo");
    let provider = provider
        .replace("{ISSUER}", &idp.issuer())
        .replace("{JWKS}", &idp.jwks_uri());
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[providers]]\nname = \"p\"\n{provider}\n[providers.claim_headers]\nsub = \"x-jwt-sub\"\n",
        echo.url()
    );
    let sidecar = start_toml(&toml).await;
    wait_keys_or_fetch(&sidecar).await;
    Idp {
        idp,
        _echo: echo,
        sidecar,
    }
}

fn cert_for(key: &SigningKey) -> rcgen::Certificate {
    let kp = rcgen::KeyPair::try_from(key.pkcs8_der().as_slice()).expect("rcgen key");
    rcgen::CertificateParams::new(vec!["idp.test".to_string()])
        .expect("params")
        .self_signed(&kp)
        .expect("cert")
}

fn spki_pem(key: &SigningKey) -> String {
    rcgen::KeyPair::try_from(key.pkcs8_der().as_slice())
        .expect("rcgen key")
        .public_key_pem()
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "sub": "user-7", "aud": "api", "exp": now() + 600})
}

async fn status_reason(url: &str, token: &str) -> (u16, String) {
    let (s, _, body) = get_with_token(url, token).await;
    (
        s.as_u16(),
        if s == 200 { "ok".into() } else { reason(&body) },
    )
}

#[tokio::test]
async fn stytch_wrapped_jwks_with_key_ops_x5c_and_x5ts256() {
    let k = key(Alg::RS256);
    let cert = cert_for(&k);
    let mut jwk = k.public_jwk();
    jwk["key_ops"] = json!(["verify"]);
    jwk["x5c"] = json!([STANDARD.encode(cert.der())]);
    jwk["x5tS256"] = json!("FyV...=");
    let doc = json!({"keys": [jwk], "request_id": "request-id-test-b05c992f", "status_code": 200});
    let h = start(
        Some(doc),
        None,
        "issuer = \"stytch.com/project-test-123\"\njwks_uri = \"{JWKS}\"\naudiences = [\"api\"]",
    )
    .await;
    let t = k.mint(&claims("stytch.com/project-test-123"));
    assert_eq!(status_reason(&h.url("/x"), &t).await, (200, "ok".into()));
}

#[tokio::test]
async fn google_and_firebase_kid_to_pem_certificate_maps() {
    let (a, b) = (
        SigningKey::generate(Alg::RS256, "g1"),
        SigningKey::generate(Alg::RS256, "g2"),
    );
    let doc = json!({"g1": cert_for(&a).pem(), "g2": cert_for(&b).pem()});
    let iss = "https://securetoken.google.com/my-project";
    let h = start(Some(doc), None, &format!("issuer = \"{iss}\"\njwks_uri = \"{{JWKS}}\"\naudiences = [\"my-project\"]\nalgorithms = [\"RS256\"]")).await;
    for k in [&a, &b] {
        let mut c = claims(iss);
        c["aud"] = json!("my-project");
        assert_eq!(
            status_reason(&h.url("/x"), &k.mint(&c)).await,
            (200, "ok".into())
        );
    }
}

#[tokio::test]
async fn clerk_pem_public_key_fetched_and_inline() {
    let k = SigningKey::generate(Alg::RS256, "unused");
    let pem = spki_pem(&k);
    let iss = "https://clerk.example.com";
    let token = k.mint_with_header(&json!({"alg": "RS256", "typ": "JWT"}), &{
        let mut c = claims(iss);
        c["azp"] = json!("https://app.example.com");
        c
    });
    let h = start(
        None,
        Some(pem.clone()),
        &format!("issuer = \"{iss}\"\njwks_uri = \"{{JWKS}}\"\naudiences = [\"api\"]"),
    )
    .await;
    assert_eq!(
        status_reason(&h.url("/x"), &token).await,
        (200, "ok".into()),
        "PEM served by the IdP"
    );
    let inline =
        format!("issuer = \"{iss}\"\npublic_key_pem = \"\"\"\n{pem}\"\"\"\naudiences = [\"api\"]");
    let h2 = start(None, None, &inline).await;
    assert_eq!(
        status_reason(&h2.url("/x"), &token).await,
        (200, "ok".into()),
        "inline public_key_pem"
    );
}

#[tokio::test]
async fn keycloak_set_with_rsa_oaep_encryption_keys() {
    let sig = key(Alg::RS256);
    let enc = SigningKey::generate(Alg::RS256, "enc-key");
    let mut enc_jwk = enc.public_jwk_without_alg();
    enc_jwk["use"] = json!("enc");
    enc_jwk["alg"] = json!("RSA-OAEP");
    let doc = json!({"keys": [enc_jwk, sig.public_jwk()]});
    let iss_path = "/realms/demo";
    let h = start(
        Some(doc),
        None,
        &format!(
            "issuer = \"{{ISSUER}}{iss_path}\"\njwks_uri = \"{{JWKS}}\"\naudiences = [\"api\"]"
        ),
    )
    .await;
    let iss = format!("{}{iss_path}", h.idp.issuer());
    assert_eq!(
        status_reason(&h.url("/x"), &sig.mint(&claims(&iss))).await,
        (200, "ok".into())
    );
    let forged = enc.mint_with_header(&json!({"alg": "RS256", "kid": "enc-key"}), &claims(&iss));
    assert_eq!(
        status_reason(&h.url("/x"), &forged).await,
        (401, "unknown_kid".into()),
        "an enc key never verifies"
    );
    assert!(h
        .metrics()
        .await
        .contains(r#"jwks_sidecar_jwks_skipped_keys_total{provider="p",reason="not_signing"}"#));
}

#[tokio::test]
async fn entra_keys_without_alg_and_the_tenant_issuer_template() {
    let k = SigningKey::generate(Alg::RS256, "entra-kid");
    let mut jwk = k.public_jwk_without_alg();
    jwk["x5c"] = json!([STANDARD.encode(cert_for(&k).der())]);
    jwk["x5t"] = json!("abc");
    jwk["issuer"] = json!("https://login.microsoftonline.com/{tenantid}/v2.0");
    let doc = json!({"keys": [jwk]});
    let tpl = "https://login.microsoftonline.com/{tenantid}/v2.0";
    let h = start(Some(doc), None, &format!("issuer = \"{tpl}\"\njwks_uri = \"{{JWKS}}\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\nallowed_tenants = [\"t-1\", \"t-2\"]")).await;
    let with = |tid: &str, iss_tid: &str| {
        let mut c = claims(&tpl.replace("{tenantid}", iss_tid));
        c["tid"] = json!(tid);
        k.mint(&c)
    };
    assert_eq!(
        status_reason(&h.url("/x"), &with("t-1", "t-1")).await,
        (200, "ok".into())
    );
    assert_eq!(
        status_reason(&h.url("/x"), &with("t-2", "t-2")).await,
        (200, "ok".into())
    );
    assert_eq!(
        status_reason(&h.url("/x"), &with("t-1", "t-2")).await,
        (401, "unknown_issuer".into()),
        "tid must match iss"
    );
    assert_eq!(
        status_reason(&h.url("/x"), &with("t-3", "t-3")).await,
        (401, "unknown_issuer".into()),
        "tenant not allowed"
    );
    // A PS256 token with the same RSA key: the key has no alg, but the provider allows RS256 only.
    let ps = SigningKey::generate(Alg::PS256, "entra-kid");
    let mut c = claims(&tpl.replace("{tenantid}", "t-1"));
    c["tid"] = json!("t-1");
    assert_eq!(
        status_reason(&h.url("/x"), &ps.mint(&c)).await,
        (401, "alg_not_allowed".into())
    );
}

#[tokio::test]
async fn cognito_access_tokens_checked_on_client_id() {
    let k = key(Alg::RS256);
    let iss = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf";
    let h = start(Some(jwks_sidecar::testkit::jwks(&[&k])), None, &format!("issuer = \"{iss}\"\njwks_uri = \"{{JWKS}}\"\naudiences = [\"3n4b5urk1ft4fl3mg5e62d9ado\"]\naudience_claim = \"client_id\"\nrequired_claims = [\"token_use\"]")).await;
    let c = json!({"iss": iss, "sub": "s", "client_id": "3n4b5urk1ft4fl3mg5e62d9ado", "token_use": "access", "scope": "aws.cognito.signin.user.admin", "exp": now() + 600});
    assert_eq!(
        status_reason(&h.url("/x"), &k.mint(&c)).await,
        (200, "ok".into())
    );
    let mut wrong = c.clone();
    wrong["client_id"] = json!("another-client");
    assert_eq!(
        status_reason(&h.url("/x"), &k.mint(&wrong)).await,
        (401, "bad_audience".into())
    );
}

#[tokio::test]
async fn auth0_issuer_trailing_slash_is_exact() {
    let k = key(Alg::RS256);
    let h = start(
        Some(jwks_sidecar::testkit::jwks(&[&k])),
        None,
        "issuer = \"{ISSUER}/\"\njwks_uri = \"{JWKS}\"\naudiences = [\"api\"]",
    )
    .await;
    let with_slash = format!("{}/", h.idp.issuer());
    assert_eq!(
        status_reason(&h.url("/x"), &k.mint(&claims(&with_slash))).await,
        (200, "ok".into())
    );
    assert_eq!(
        status_reason(&h.url("/x"), &k.mint(&claims(&h.idp.issuer()))).await,
        (401, "unknown_issuer".into())
    );
}

#[tokio::test]
async fn okta_discovery_and_issuer_mismatch() {
    let k = key(Alg::RS256);
    let h = start(
        Some(jwks_sidecar::testkit::jwks(&[&k])),
        None,
        "issuer = \"{ISSUER}\"\ndiscovery = true\naudiences = [\"api\"]",
    )
    .await;
    assert_eq!(
        status_reason(&h.url("/x"), &k.mint(&claims(&h.idp.issuer()))).await,
        (200, "ok".into())
    );
    // Configured issuer differs from the discovery document's (trailing slash): never ready.
    let bad = start(
        Some(jwks_sidecar::testkit::jwks(&[&k])),
        None,
        "issuer = \"{ISSUER}/\"\ndiscovery = true\naudiences = [\"api\"]",
    )
    .await;
    let iss = format!("{}/", bad.idp.issuer());
    assert_eq!(
        status_reason(&bad.url("/x"), &k.mint(&claims(&iss))).await,
        (503, "no_keys".into())
    );
    wait_metric(
        &format!("http://{}/metrics", bad.sidecar.admin_addr.expect("admin")),
        r#"jwks_sidecar_jwks_fetch_total{provider="p",result="issuer_mismatch"}"#,
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn kubernetes_issuer_with_a_token_file_fetch_header() {
    let k = key(Alg::ES256);
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-sa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "sa-token-value\n").expect("write");
    let idp = FakeIdp::start(&[&k], 0).await.expect("idp");
    *idp.state.required_header.lock().expect("lock") =
        Some(("authorization".into(), "Bearer sa-token-value".into()));
    let echo = EchoUpstream::start().await.expect("echo");
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[providers]]\nname = \"k8s\"\nissuer = \"https://kubernetes.default.svc.cluster.local\"\njwks_uri = \"{}\"\naudiences = [\"api\"]\n[[providers.fetch_headers]]\nname = \"authorization\"\nprefix = \"Bearer \"\nvalue_from_file = \"{}\"\n",
        echo.url(), idp.jwks_uri(), token_file.display()
    );
    let sidecar = start_toml(&toml).await;
    wait_keys_ready(&sidecar).await;
    let url = format!("http://{}/x", sidecar.proxy_addr);
    let c = json!({"iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:ns:sa", "aud": ["api"], "exp": now() + 600});
    assert_eq!(
        status_reason(&url, &k.mint(&c)).await,
        (200, "ok".into()),
        "the IdP saw the token file's credentials"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn odd_jwks_x5c_only_no_alg_duplicate_kids_unknown_kty() {
    let rsa = SigningKey::generate(Alg::RS256, "dup");
    let ec = SigningKey::generate(Alg::ES256, "dup");
    let x5c_only = SigningKey::generate(Alg::ES256, "x5c-only");
    let no_alg = SigningKey::generate(Alg::EdDSA, "no-alg");
    let doc = json!({"keys": [
        rsa.public_jwk(),
        ec.public_jwk(),
        {"kty": "EC", "kid": "x5c-only", "use": "sig", "x5c": [STANDARD.encode(cert_for(&x5c_only).der())]},
        no_alg.public_jwk_without_alg(),
        {"kty": "PQC-FUTURE", "kid": "future", "pub": "AAAA"},
    ]});
    let h = start(
        Some(doc),
        None,
        "issuer = \"{ISSUER}\"\njwks_uri = \"{JWKS}\"\naudiences = [\"api\"]",
    )
    .await;
    let iss = h.idp.issuer();
    for k in [&rsa, &ec, &x5c_only, &no_alg] {
        assert_eq!(
            status_reason(&h.url("/x"), &k.mint(&claims(&iss))).await,
            (200, "ok".into()),
            "kid {}",
            k.kid
        );
    }
    assert!(h.metrics().await.has_sample(
        r#"jwks_sidecar_jwks_skipped_keys_total{provider="p",reason="unsupported_kty"}"#,
        1.0
    ));
}

#[tokio::test]
async fn provider_examples_parse_and_validate() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/examples/providers.toml"
    );
    let text = std::fs::read_to_string(path).expect("deploy/examples/providers.toml");
    let cfg = jwks_sidecar::plan::from_toml_str(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .config;
    let names: Vec<&str> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "stytch",
        "auth0",
        "okta",
        "cognito",
        "clerk",
        "onelogin",
        "supertokens",
        "keycloak",
        "entra",
        "google",
        "firebase",
        "kubernetes",
    ] {
        assert!(
            names.contains(&want),
            "no worked example for {want}: {names:?}"
        );
    }
}
