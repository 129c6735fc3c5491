//! Token verification through the real proxy: every algorithm, alg confusion, kid, time
//! edges, issuer, audience, scopes, typ, and what reaches the upstream.

mod support;

use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{b64, mint_hs256, mint_unsigned, now, SigningKey};
use serde_json::json;
use support::*;

async fn all_keys_harness(proxy_extra: &str, provider_extra: &str) -> Harness {
    let keys: Vec<_> = ALL_ALGS.iter().map(|a| key(*a)).collect();
    let refs: Vec<&SigningKey> = keys.iter().map(|k| k.as_ref()).collect();
    Harness::start(&refs, proxy_extra, provider_extra).await
}

#[tokio::test]
async fn every_supported_algorithm_verifies_and_forwards_claim_headers() {
    let h = all_keys_harness("", "").await;
    for alg in ALL_ALGS {
        let token = key(alg).mint(&h.claims());
        let (status, _, body) = get_with_token(&h.url("/api/x"), &token).await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        let seen = echoed(&body);
        assert_eq!(seen["x-jwt-sub"], ["user-1"], "{alg:?}");
        assert_eq!(seen["x-user-email"], ["u@example.com"]);
        assert_eq!(seen["x-jwt-org-id"], ["org-9"]);
        assert_eq!(seen["x-jwt-roles"], ["a,b"]);
        assert_eq!(
            seen["x-jwt-payload"],
            [token.split('.').nth(1).expect("payload").to_string()]
        );
    }
}

#[tokio::test]
async fn algorithm_allow_list_is_enforced_per_provider() {
    let h = all_keys_harness("", "algorithms = [\"ES256\"]").await;
    let (s, _, _) = get_with_token(&h.url("/x"), &key(Alg::ES256).mint(&h.claims())).await;
    assert_eq!(s, 200);
    let (s, _, body) = get_with_token(&h.url("/x"), &key(Alg::RS256).mint(&h.claims())).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "alg_not_allowed")
    );
}

#[tokio::test]
async fn alg_confusion_hs256_with_the_public_key_as_secret_is_rejected() {
    let rsa = key(Alg::RS256);
    let ec = key(Alg::ES256);
    let h = all_keys_harness("", "").await;
    for (k, kid) in [(&rsa, "kid-RS256"), (&ec, "kid-ES256")] {
        let jwk = k.public_jwk();
        let secrets: Vec<Vec<u8>> = vec![
            k.public_bytes(),
            jwk.to_string().into_bytes(),
            jwk["n"]
                .as_str()
                .or(jwk["x"].as_str())
                .unwrap_or("")
                .as_bytes()
                .to_vec(),
        ];
        for secret in secrets {
            for alg in ["HS256", "HS384", "HS512", "hs256"] {
                let t = mint_hs256(&secret, &json!({"alg": alg, "kid": kid}), &h.claims());
                let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
                assert_eq!(
                    (s.as_u16(), reason(&body).as_str()),
                    (401, "alg_not_allowed"),
                    "{alg}"
                );
            }
        }
    }
    assert_eq!(
        h.echo.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn alg_none_in_every_spelling_is_rejected() {
    let h = all_keys_harness("", "").await;
    for alg in ["none", "None", "NONE", "nOnE", "nonE", " none", "none "] {
        for sig in ["", "AAAA", "e30"] {
            let t = mint_unsigned(&json!({"alg": alg, "kid": "kid-RS256"}), &h.claims(), sig);
            let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
            assert_eq!(s, 401, "alg {alg:?} sig {sig:?}: {body}");
        }
    }
    // A real signature transplanted under alg none is still refused.
    let good = key(Alg::RS256).mint(&h.claims());
    let sig = good.split('.').nth(2).expect("sig");
    let t = mint_unsigned(
        &json!({"alg": "none", "kid": "kid-RS256"}),
        &h.claims(),
        sig,
    );
    let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "alg_not_allowed")
    );
}

#[tokio::test]
async fn token_alg_must_fit_the_key_type_and_the_keys_own_alg() {
    let h = all_keys_harness("", "").await;
    // RS256 key material, but the header claims PS256 with the RS256 key's kid: the JWK says alg RS256.
    let rs = SigningKey::generate(Alg::RS256, "kid-RS256");
    let t = rs
        .with_alg(Alg::PS256)
        .mint_with_header(&json!({"alg": "PS256", "kid": "kid-RS256"}), &h.claims());
    let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "key_mismatch"));
    // ES256 header pointing at the EdDSA key id.
    let t =
        key(Alg::ES256).mint_with_header(&json!({"alg": "ES256", "kid": "kid-EdDSA"}), &h.claims());
    let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "key_mismatch"));
}

#[tokio::test]
async fn unknown_kid_and_foreign_key_are_rejected() {
    let h = all_keys_harness("", "").await;
    let stranger = SigningKey::generate(Alg::ES256, "not-published");
    let (s, _, body) = get_with_token(&h.url("/x"), &stranger.mint(&h.claims())).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "unknown_kid"));
    // Same kid as a published key, different key material: bad signature.
    let imposter = SigningKey::generate(Alg::ES256, "kid-ES256");
    let (s, _, body) = get_with_token(&h.url("/x"), &imposter.mint(&h.claims())).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "bad_signature"));
    // kid injection attempts are just unknown kids.
    for kid in [
        "../../etc/passwd",
        "' OR 1=1 --",
        "kid\u{0}x",
        &"k".repeat(5000),
    ] {
        let t = key(Alg::ES256).mint_with_header(&json!({"alg": "ES256", "kid": kid}), &h.claims());
        let (s, _, _) = get_with_token(&h.url("/x"), &t).await;
        assert_eq!(s, 401, "{kid:?}");
    }
    let m = h.metrics().await;
    assert!(
        m.contains(r#"jwks_sidecar_key_lookups_total{provider="idp",result="miss"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn time_edges_at_the_leeway_boundary() {
    let h = all_keys_harness("", "leeway = \"30s\"").await;
    let k = key(Alg::ES256);
    let mut c = h.claims();
    let t0 = now();
    let cases = [
        (json!({"exp": t0 - 25}), 200, "ok"),
        (json!({"exp": t0 - 35}), 401, "expired"),
        (json!({"exp": t0 + 600, "nbf": t0 + 25}), 200, "ok"),
        (
            json!({"exp": t0 + 600, "nbf": t0 + 35}),
            401,
            "not_yet_valid",
        ),
        (json!({"exp": (t0 + 600) as f64 + 0.5}), 200, "ok"),
        (
            json!({"exp": format!("{}", t0 + 600)}),
            401,
            "invalid_claim",
        ),
        (json!({"exp": null}), 401, "invalid_claim"),
    ];
    for (patch, status, want) in cases {
        for (k2, v) in patch.as_object().expect("obj") {
            c[k2] = v.clone();
        }
        let (s, _, body) = get_with_token(&h.url("/x"), &k.mint(&c)).await;
        if status == 200 {
            assert_eq!(s, 200, "{patch}: {body}");
        } else {
            assert_eq!(
                (s.as_u16(), reason(&body).as_str()),
                (status, want),
                "{patch}"
            );
        }
        c = h.claims();
    }
    c.as_object_mut().expect("obj").remove("exp");
    let (s, _, body) = get_with_token(&h.url("/x"), &k.mint(&c)).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "missing_claim"),
        "exp is required by default"
    );
}

#[tokio::test]
async fn wrong_issuer_and_wrong_audience_are_rejected() {
    let h = all_keys_harness("", "").await;
    let k = key(Alg::EdDSA);
    let mut c = h.claims();
    c["iss"] = json!(format!("{}/", h.idp.issuer()));
    let (s, _, body) = get_with_token(&h.url("/x"), &k.mint(&c)).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "unknown_issuer"),
        "issuer match is exact"
    );
    c = h.claims();
    c.as_object_mut().expect("obj").remove("iss");
    let (s, _, body) = get_with_token(&h.url("/x"), &k.mint(&c)).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "unknown_issuer")
    );
    for aud in [json!("other"), json!(["x", "y"]), json!(1), json!(null)] {
        c = h.claims();
        c["aud"] = aud.clone();
        let (s, headers, body) = get_with_token(&h.url("/x"), &k.mint(&c)).await;
        assert_eq!(
            (s.as_u16(), reason(&body).as_str()),
            (401, "bad_audience"),
            "{aud}"
        );
        let www = headers["www-authenticate"].to_str().expect("ascii");
        assert!(
            www.starts_with("Bearer realm=\"jwks-sidecar\", error=\"invalid_token\""),
            "{www}"
        );
    }
    c = h.claims();
    c["aud"] = json!(["x", "api"]);
    assert_eq!(get_with_token(&h.url("/x"), &k.mint(&c)).await.0, 200);
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let h = all_keys_harness("", "required_scopes = [\"read\", \"admin\"]").await;
    let k = key(Alg::ES384);
    let (s, headers, body) = get_with_token(&h.url("/x"), &k.mint(&h.claims())).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (403, "insufficient_scope")
    );
    assert!(headers["www-authenticate"]
        .to_str()
        .expect("ascii")
        .contains("error=\"insufficient_scope\""));
    let mut c = h.claims();
    c["scp"] = json!(["admin"]);
    assert_eq!(get_with_token(&h.url("/x"), &k.mint(&c)).await.0, 200);
}

#[tokio::test]
async fn typ_allow_list_and_required_claims() {
    let h = all_keys_harness("", "typ = [\"at+jwt\"]\nrequired_claims = [\"email\"]").await;
    let k = key(Alg::ES256);
    let (s, _, body) = get_with_token(&h.url("/x"), &k.mint(&h.claims())).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "bad_typ"));
    let at = |claims: &serde_json::Value| {
        k.mint_with_header(
            &json!({"alg": "ES256", "kid": "kid-ES256", "typ": "at+JWT"}),
            claims,
        )
    };
    assert_eq!(get_with_token(&h.url("/x"), &at(&h.claims())).await.0, 200);
    let mut c = h.claims();
    c.as_object_mut().expect("obj").remove("email");
    let (s, _, body) = get_with_token(&h.url("/x"), &at(&c)).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "missing_claim"));
}

#[tokio::test]
async fn crit_header_and_malformed_tokens_are_401_never_500() {
    let h = all_keys_harness("max_token_bytes = 2048", "").await;
    let k = key(Alg::ES256);
    let t = k.mint_with_header(
        &json!({"alg": "ES256", "kid": "kid-ES256", "crit": ["exp"], "exp": 1}),
        &h.claims(),
    );
    let (s, _, body) = get_with_token(&h.url("/x"), &t).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "unsupported_crit")
    );
    let good = k.mint(&h.claims());
    let parts: Vec<&str> = good.split('.').collect();
    let cases = vec![
        "garbage".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{good}.a.b"), // JWE-like five segments
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}==", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", b64("{not json"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64("[1,2,3]"), parts[2]),
        format!("{}.{}.{}", parts[0], b64("\"string\""), parts[2]),
        format!("{}..{}", parts[0], parts[2]),
        "a".repeat(3000),
    ];
    for c in cases {
        let (s, _, body) = get_with_token(&h.url("/x"), &c).await;
        assert_eq!(s, 401, "{c:.60}: {body}");
    }
    let (s, _, body) = get_with_token(&h.url("/x"), &"a".repeat(3000)).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (401, "token_too_large")
    );
    // Non-object payloads and wrong-type kids.
    let t = k.mint_with_header(&json!({"alg": "ES256", "kid": 5}), &h.claims());
    assert_eq!(get_with_token(&h.url("/x"), &t).await.0, 401);
    let m = h.metrics().await;
    assert!(
        !m.contains("decision=\"allow\""),
        "nothing malformed was allowed: {m}"
    );
}

#[tokio::test]
async fn missing_and_multiple_tokens() {
    let h = all_keys_harness("", "").await;
    let (s, headers, body) = get(&h.url("/x"), &[]).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "missing_token"));
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"jwks-sidecar\"");
    let (s, _, body) = get(&h.url("/x"), &[("authorization", "Basic dTpw")]).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "missing_token"));
    let k = key(Alg::ES256);
    let a = format!("Bearer {}", k.mint(&h.claims()));
    let mut c2 = h.claims();
    c2["sub"] = json!("someone-else");
    let b = format!("Bearer {}", k.mint(&c2));
    let (s, _, body) = get(
        &h.url("/x"),
        &[("authorization", &a), ("authorization", &b)],
    )
    .await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (400, "multiple_tokens")
    );
    let (s, _, _) = get(
        &h.url("/x"),
        &[("authorization", &a.replace("Bearer", "bEaReR"))],
    )
    .await;
    assert_eq!(s, 200, "scheme is case-insensitive");
}

#[tokio::test]
async fn token_from_cookie_header_or_query_when_configured() {
    let h = all_keys_harness(
        "[proxy.token]\ncookie = \"at\"\nheader = \"x-access-token\"\nquery = \"access_token\"\n",
        "",
    )
    .await;
    let t = key(Alg::ES256).mint(&h.claims());
    assert_eq!(
        get(&h.url("/x"), &[("cookie", &format!("a=b; at={t}"))])
            .await
            .0,
        200
    );
    assert_eq!(get(&h.url("/x"), &[("x-access-token", &t)]).await.0, 200);
    assert_eq!(
        get(&h.url(&format!("/x?access_token={t}")), &[]).await.0,
        200
    );
    let other = key(Alg::EdDSA).mint(&h.claims());
    let (s, _, body) = get(
        &h.url(&format!("/x?access_token={other}")),
        &[("x-access-token", &t)],
    )
    .await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (400, "multiple_tokens")
    );
}

#[tokio::test]
async fn keys_marked_enc_or_without_verify_op_are_never_used() {
    let k = SigningKey::generate(Alg::RS256, "enc-key");
    let idp_doc = |jwk: serde_json::Value| json!({"keys": [jwk, key(Alg::EdDSA).public_jwk()]});
    let h = all_keys_harness("", "").await;
    let mut enc = k.public_jwk();
    enc["use"] = json!("enc");
    h.idp.set_jwks(idp_doc(enc));
    // The unknown kid triggers a refetch; the refetched key is marked enc and skipped.
    let (s, _, body) = get_with_token(&h.url("/x"), &k.mint(&h.claims())).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "unknown_kid"));
    let m = h.metrics().await;
    assert!(
        m.has_sample(
            r#"jwks_sidecar_jwks_skipped_keys_total{provider="idp",reason="not_signing"}"#,
            1.0
        ),
        "{m}"
    );
}

#[tokio::test]
async fn equal_kids_at_two_providers_are_never_confused() {
    // Two IdPs publish different keys under the same kid; each token verifies only with its own.
    let a = SigningKey::generate(Alg::ES256, "shared-kid");
    let b = SigningKey::generate(Alg::ES256, "shared-kid");
    let idp_b = jwks_sidecar::demo::FakeIdp::start(&[&b], 0)
        .await
        .expect("idp b");
    let extra = format!(
        "[[providers]]\nname = \"b\"\nissuer = \"{}\"\njwks_uri = \"{}\"\naudiences = [\"api\"]\n",
        idp_b.issuer(),
        idp_b.jwks_uri()
    );
    let h = Harness::start(&[&a], "", "").await;
    let cfg_text = base_toml(&h.idp.jwks_uri(), &h.idp.issuer(), &h.echo.url(), "", "") + &extra;
    let sidecar = start_toml(&cfg_text).await;
    wait_keys_ready(&sidecar).await;
    let url = format!("http://{}/x", sidecar.proxy_addr);
    let mut cb = h.claims();
    cb["iss"] = json!(idp_b.issuer());
    assert_eq!(get_with_token(&url, &a.mint(&h.claims())).await.0, 200);
    assert_eq!(get_with_token(&url, &b.mint(&cb)).await.0, 200);
    // B's key signing a token that claims A's issuer: same kid, wrong provider -> bad signature.
    let (s, _, body) = get_with_token(&url, &b.mint(&h.claims())).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "bad_signature"));
}
