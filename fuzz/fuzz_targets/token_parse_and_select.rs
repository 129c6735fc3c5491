//! Token parsing, provider selection by the unverified `iss`, and the whole synchronous
//! verification (`Authenticator::verify`) against providers with inline keys.
//!
//! Input: the first byte picks the mode, the rest is the payload.
//! - even: the rest is a raw token. The keys are generated at start-up, so a fuzzer cannot
//!   know them: any `Ok` here would be a forged token accepted, which is the bug we look for.
//! - odd: the rest is `header-json \n claims-json`; the target signs it with one of its own
//!   keys (bit 1: the Ed25519 key of provider "main" or the P-256 key of the Entra-style
//!   templated provider "tenant"), optionally corrupts the signature (bit 2), and checks that
//!   an accepted token really satisfies the provider's policy.

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwks_sidecar::auth::Authenticator;
use jwks_sidecar::jose::jws;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::jwks::{KeySet, ParsePolicy};
use jwks_sidecar::metrics::Metrics;
use jwks_sidecar::testkit::SigningKey;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Fixed clock: deterministic across runs (seeds use exp around it).
const NOW: u64 = 1_700_000_000;
const LEEWAY: u64 = 60;
const MAIN_ISS: &str = "https://issuer.fuzz.test/";
const TENANT_TEMPLATE: &str = "https://login.fuzz.test/{tenantid}/v2.0";
const AUDIENCE: &str = "api://fuzz";

struct World {
    auth: Authenticator,
    main_key: SigningKey,
    tenant_key: SigningKey,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        jwks_sidecar::install_crypto_provider();
        let alg = |n: &str| Alg::parse(n).expect("alg");
        let main_key = SigningKey::generate(alg("EdDSA"), "k1");
        let tenant_key = SigningKey::generate(alg("ES256"), "k2");
        let toml = format!(
            r#"
[proxy]
array_claim_format = "comma"
max_claim_header_bytes = 64

[[providers]]
name = "main"
issuer = "{MAIN_ISS}"
jwks = {main_jwks}
audiences = ["{AUDIENCE}"]
required_claims = ["sub"]
[providers.claim_headers]
sub = "x-jwt-sub"
"org.id" = "x-jwt-org"
roles = "x-jwt-roles"

[[providers]]
name = "tenant"
issuer = "{TENANT_TEMPLATE}"
jwks = {tenant_jwks}
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
allowed_tenants = ["t1", "t-2"]
[providers.claim_headers]
sub = "x-jwt-sub"
"#,
            main_jwks = toml_inline(&serde_json::json!({"keys": [main_key.public_jwk()]})),
            tenant_jwks = toml_inline(&serde_json::json!({"keys": [tenant_key.public_jwk()]})),
        );
        let plan = jwks_sidecar::plan::from_toml_str(&toml)
            .unwrap_or_else(|e| panic!("fuzz config invalid: {e}\n{toml}"));
        let auth = plan.authenticator(Arc::new(Metrics::new()));
        let config = &plan.config;
        for (p, cfg) in auth.providers().iter().zip(&config.providers) {
            let policy = ParsePolicy {
                algorithms: p.algorithms.clone(),
                max_keys: cfg.max_keys,
            };
            let doc = cfg.jwks.as_ref().expect("inline jwks");
            let (set, skipped) = KeySet::from_document(doc, &policy).expect("inline jwks parses");
            assert!(skipped.is_empty() && set.len() == 1, "fuzz keys unusable: {skipped:?}");
            p.keys.store(set);
        }
        World {
            auth,
            main_key,
            tenant_key,
        }
    })
}

/// A JSON object as a TOML inline table (keys and strings only: enough for a public JWKS).
fn toml_inline(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{} = {}", serde_json::to_string(k).expect("key"), toml_inline(v)))
                .collect();
            format!("{{ {} }}", parts.join(", "))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(toml_inline).collect();
            format!("[{}]", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// FUZZ_TRACE=1: print each signed input's decision (to check the seeds reach acceptance).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn check_parse_invariants(token: &str) {
    if let Ok(p) = jws::parse(token) {
        let mut parts = token.split('.');
        let (h, pl, s) = (
            parts.next().expect("h"),
            parts.next().expect("p"),
            parts.next().expect("s"),
        );
        assert!(parts.next().is_none(), "parsed a token with more than three segments");
        assert_eq!(p.signing_input, &token[..h.len() + 1 + pl.len()]);
        assert_eq!(p.payload_b64, pl);
        assert_eq!(p.signature_b64, s);
        assert!(!h.is_empty() && !pl.is_empty() && !s.is_empty());
        assert!(!token.contains('='), "padded base64 accepted");
        assert!(jws::peek_issuer(&p).is_none_or(|i| p.claims.get("iss") == Some(&Value::from(i))));
    }
}

fn check_accepted(token: &str, v: &jwks_sidecar::auth::Verified, signer: Option<&SigningKey>) {
    let w = world();
    let signer = signer.unwrap_or_else(|| {
        panic!("a token the fuzzer could not sign was accepted: {token:?}")
    });
    let parsed = jws::parse(token).expect("accepted token must parse");
    // The key that signed it, the provider that owns that key, the alg of that key.
    assert_eq!(parsed.header.alg, signer.alg.name(), "alg confusion");
    assert_eq!(v.info.alg, signer.alg);
    let is_main = std::ptr::eq(signer, &w.main_key);
    assert_eq!(v.provider.name, if is_main { "main" } else { "tenant" }, "wrong provider");
    if let Some(kid) = &parsed.header.kid {
        assert_eq!(kid, &signer.kid);
    }
    let claims = &parsed.claims;
    let iss = claims.get("iss").and_then(Value::as_str).expect("accepted without string iss");
    if is_main {
        assert_eq!(iss, MAIN_ISS);
        assert!(claims.get("sub").is_some_and(|s| !s.is_null()), "required sub missing");
    } else {
        let tid = claims.get("tid").and_then(Value::as_str).expect("templated without tid");
        assert!(tid == "t1" || tid == "t-2", "tenant not allowed: {tid:?}");
        assert_eq!(iss, TENANT_TEMPLATE.replace("{tenantid}", tid));
    }
    let exp = number(claims.get("exp")).expect("accepted without numeric exp");
    assert!(exp + LEEWAY as f64 >= NOW as f64, "expired token accepted: exp={exp}");
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("accepted with non-numeric nbf");
        assert!(nbf <= (NOW + LEEWAY) as f64, "not-yet-valid token accepted: nbf={nbf}");
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "accepted with wrong audience: {:?}", claims.get("aud"));
    assert!(!parsed.header.alg.starts_with("HS") && parsed.header.alg != "none");
    for (name, value) in &v.info.headers {
        assert!(name.as_str().starts_with("x-jwt-"));
        let bytes = value.as_bytes();
        assert!(bytes.len() <= 64, "claim header over max_claim_header_bytes");
        assert!(
            bytes.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "claim header value with control or non-ASCII bytes: {bytes:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    if mode & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        check_parse_invariants(token);
        if let Ok(v) = w.auth.verify(token, NOW) {
            check_accepted(token, &v, None);
        }
        return;
    }
    // Signed mode.
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let signer = if mode & 2 == 0 { &w.main_key } else { &w.tenant_key };
    let input = format!("{}.{}", b64(header), b64(claims));
    let mut sig = signer.sign(input.as_bytes());
    let tampered = mode & 4 != 0;
    if tampered {
        let i = (mode as usize >> 3) % sig.len();
        sig[i] ^= 0x01;
    }
    let token = format!("{input}.{}", b64(&sig));
    check_parse_invariants(&token);
    let result = w.auth.verify(&token, NOW);
    if trace() {
        eprintln!("signed mode {mode:#04x}: {:?}", result.as_ref().map(|_| ()).map_err(|f| f.reject.reason()));
    }
    match result {
        Ok(v) => {
            assert!(!tampered, "token with a corrupted signature accepted");
            check_accepted(&token, &v, Some(signer));
        }
        Err(f) => {
            // A refusal never comes with a provider other than the one the iss names.
            if let Some(p) = &f.provider {
                assert!(p.name == "main" || p.name == "tenant");
            }
        }
    }
});
