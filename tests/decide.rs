//! `Policy::decide`, the one function every listener asks, tested where the logic is: a
//! table of requests against a plan built from typed config values, with key sets held in
//! memory (no sockets, no fetches). Each row names the case it guards.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use jwks_sidecar::config::{Config, MatchConfig, ProviderConfig, RequireConfig, RuleConfig};
use jwks_sidecar::jose::Alg;
use jwks_sidecar::jwks::KeySet;
use jwks_sidecar::metrics::Metrics;
use jwks_sidecar::policy::Policy;
use jwks_sidecar::testkit::{jwks, now, SigningKey};
use serde_json::{json, Value};

/// A provider with an inline (empty) key set; its keys are stored by `policy()`.
fn provider(name: &str, audience: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        issuer: format!("https://{name}.example"),
        jwks: Some(json!({"keys": []})),
        audiences: vec![audience.into()],
        claim_headers: BTreeMap::from([("sub".to_string(), "x-jwt-sub".to_string())]),
        ..ProviderConfig::default()
    }
}

fn rule(name: &str, matches: MatchConfig) -> RuleConfig {
    RuleConfig {
        name: Some(name.into()),
        matches,
        ..RuleConfig::default()
    }
}

fn prefix(p: &str) -> MatchConfig {
    MatchConfig {
        path_prefix: Some(p.into()),
        ..MatchConfig::default()
    }
}

struct Fixture {
    policy: Policy,
    a: SigningKey,
    b: SigningKey,
}

/// Providers `a` (ES256), `b` (EdDSA) and `c` (never loaded: 503); public `/health`; rules
/// `admin` (scope admin), `b-only` (provider b), `feed` (anonymous), `hooks` (public).
fn fixture() -> Fixture {
    let config = Config {
        proxy: jwks_sidecar::config::ProxyConfig {
            public_paths: vec!["/health".into()],
            ..Default::default()
        },
        providers: vec![
            provider("a", "api"),
            provider("b", "api-b"),
            provider("c", "api"),
        ],
        rules: vec![
            RuleConfig {
                require: Some(RequireConfig {
                    scopes: vec!["admin".into()],
                    ..Default::default()
                }),
                ..rule("admin", prefix("/admin"))
            },
            RuleConfig {
                require: Some(RequireConfig {
                    providers: vec!["b".into()],
                    ..Default::default()
                }),
                ..rule("b-only", prefix("/b"))
            },
            RuleConfig {
                allow_anonymous: true,
                ..rule("feed", prefix("/feed"))
            },
            RuleConfig {
                public: true,
                ..rule("hooks", prefix("/hooks"))
            },
            RuleConfig {
                require: Some(RequireConfig {
                    acr: vec!["urn:mfa".into(), "urn:hwk".into()],
                    max_age: Some(std::time::Duration::from_secs(900)),
                    scopes: vec!["pay".into()],
                    ..Default::default()
                }),
                ..rule("transfer", prefix("/transfer"))
            },
        ],
        ..Config::default()
    };
    let plan = jwks_sidecar::plan::compile(config, None).expect("fixture config compiles");
    let auth = Arc::new(plan.authenticator(Arc::new(Metrics::new())));
    let a = SigningKey::generate(Alg::ES256, "ka");
    let b = SigningKey::generate(Alg::EdDSA, "kb");
    for (p, key) in auth.providers().iter().zip([&a, &b]) {
        let (set, _) = KeySet::from_document(&jwks(&[key]), &p.keys.policy).expect("keys");
        p.keys.store(set);
    }
    Fixture {
        policy: Policy::new(&plan, auth),
        a,
        b,
    }
}

fn claims(iss: &str, aud: &str, extra: Value) -> Value {
    let mut c = json!({"iss": iss, "aud": aud, "sub": "user-1", "exp": now() + 600});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    c
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    path: &'static str,
    token: Option<String>,
    headers: &'static [(&'static str, &'static str)],
    want: (&'static str, &'static str, u16),
}

#[tokio::test]
async fn decide_table() {
    let f = fixture();
    let a = |extra: Value| Some(f.a.mint(&claims("https://a.example", "api", extra)));
    let b = |extra: Value| Some(f.b.mint(&claims("https://b.example", "api-b", extra)));
    let unsigned = jwks_sidecar::testkit::mint_unsigned(
        &json!({"alg": "none", "kid": "ka"}),
        &claims("https://a.example", "api", json!({})),
        "c2ln",
    );
    let cross = f.a.mint_with_header(
        &json!({"alg": "ES256", "kid": "kb"}),
        &claims("https://b.example", "api-b", json!({})),
    );
    let c_token = f.a.mint(&claims("https://c.example", "api", json!({})));
    let cases = [
        Case {
            name: "public path needs no token",
            path: "/health",
            token: None,
            headers: &[],
            want: ("allow", "public", 200),
        },
        Case {
            name: "dot segments normalise before matching (no public bypass)",
            path: "/health/../admin",
            token: None,
            headers: &[],
            want: ("deny", "missing_token", 401),
        },
        Case {
            name: "rule scope granted",
            path: "/admin/users",
            token: a(json!({"scope": "admin read"})),
            headers: &[],
            want: ("allow", "ok", 200),
        },
        Case {
            name: "rule scope missing is 403",
            path: "/admin/users",
            token: a(json!({"scope": "read"})),
            headers: &[],
            want: ("deny", "insufficient_scope", 403),
        },
        Case {
            name: "rule requires another provider",
            path: "/b/x",
            token: a(json!({})),
            headers: &[],
            want: ("deny", "insufficient_scope", 403),
        },
        Case {
            name: "rule's provider accepted",
            path: "/b/x",
            token: b(json!({})),
            headers: &[],
            want: ("allow", "ok", 200),
        },
        Case {
            name: "anonymous rule without a token",
            path: "/feed",
            token: None,
            headers: &[],
            want: ("allow", "public", 200),
        },
        Case {
            name: "anonymous rule still refuses a bad token",
            path: "/feed",
            token: a(json!({"exp": now() - 3600})),
            headers: &[],
            want: ("deny", "expired", 401),
        },
        Case {
            name: "public rule",
            path: "/hooks/github",
            token: None,
            headers: &[],
            want: ("allow", "public", 200),
        },
        Case {
            name: "default rule authenticates",
            path: "/api",
            token: a(json!({})),
            headers: &[],
            want: ("allow", "ok", 200),
        },
        Case {
            name: "default rule without token",
            path: "/api",
            token: None,
            headers: &[],
            want: ("deny", "missing_token", 401),
        },
        Case {
            name: "audience of another provider",
            path: "/api",
            token: Some(f.a.mint(&claims("https://a.example", "api-b", json!({})))),
            headers: &[],
            want: ("deny", "bad_audience", 401),
        },
        Case {
            name: "alg none",
            path: "/api",
            token: Some(unsigned),
            headers: &[],
            want: ("deny", "alg_not_allowed", 401),
        },
        Case {
            name: "unknown issuer",
            path: "/api",
            token: Some(f.a.mint(&claims("https://evil.example", "api", json!({})))),
            headers: &[],
            want: ("deny", "unknown_issuer", 401),
        },
        Case {
            name: "ES256 token naming provider b's Ed25519 key",
            path: "/api",
            token: Some(cross),
            headers: &[],
            want: ("deny", "key_mismatch", 401),
        },
        Case {
            name: "provider without keys is 503, not 401",
            path: "/api",
            token: Some(c_token),
            headers: &[],
            want: ("deny", "no_keys", 503),
        },
        Case {
            name: "date past year 9999",
            path: "/api",
            token: a(json!({"exp": 1e30})),
            headers: &[],
            want: ("deny", "date_out_of_range", 401),
        },
        Case {
            name: "double-encoded dot segment",
            path: "/a/%252e%252e/admin",
            token: None,
            headers: &[],
            want: ("deny", "bad_path", 400),
        },
        Case {
            name: "Connection naming an identity header",
            path: "/health",
            token: None,
            headers: &[("connection", "X_JWT_Sub")],
            want: ("deny", "hop_by_hop_identity", 400),
        },
        Case {
            name: "two different tokens",
            path: "/api",
            token: a(json!({})),
            headers: &[("authorization", "Bearer x.y.z")],
            want: ("deny", "multiple_tokens", 400),
        },
        Case {
            name: "step-up: acr and a fresh login",
            path: "/transfer",
            token: a(json!({"acr": "urn:mfa", "auth_time": now() - 60, "scope": "pay"})),
            headers: &[],
            want: ("allow", "ok", 200),
        },
        Case {
            name: "step-up: acr not listed",
            path: "/transfer",
            token: a(json!({"acr": "urn:pwd", "auth_time": now() - 60, "scope": "pay"})),
            headers: &[],
            want: ("deny", "insufficient_user_authentication", 401),
        },
        Case {
            name: "step-up: login too old",
            path: "/transfer",
            token: a(json!({"acr": "urn:hwk", "auth_time": now() - 1000, "scope": "pay"})),
            headers: &[],
            want: ("deny", "insufficient_user_authentication", 401),
        },
        Case {
            name: "step-up: no auth_time",
            path: "/transfer",
            token: a(json!({"acr": "urn:mfa", "scope": "pay"})),
            headers: &[],
            want: ("deny", "insufficient_user_authentication", 401),
        },
        Case {
            name: "step-up before scope: both missing",
            path: "/transfer",
            token: a(json!({})),
            headers: &[],
            want: ("deny", "insufficient_user_authentication", 401),
        },
        Case {
            name: "step-up met, scope missing",
            path: "/transfer",
            token: a(json!({"acr": "urn:mfa", "auth_time": now()})),
            headers: &[],
            want: ("deny", "insufficient_scope", 403),
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let mut headers = HeaderMap::new();
        if let Some(t) = &case.token {
            headers.append(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
        }
        for (k, v) in case.headers {
            headers.append(*k, HeaderValue::from_static(v));
        }
        let d = f
            .policy
            .decide("GET", Some("svc.local"), case.path, None, &headers)
            .await;
        let status = d
            .outcome
            .as_ref()
            .map_or_else(|e| e.reject.status(), |_| 200);
        let got = (d.decision(), d.reason(), status);
        if got != case.want {
            failures.push(format!("{}: got {got:?}, want {:?}", case.name, case.want));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn allowed_request_names_its_identity_headers() {
    let f = fixture();
    let token = f.a.mint(&claims("https://a.example", "api", json!({})));
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let d = f.policy.decide("GET", None, "/api", None, &headers).await;
    let v = d.outcome.expect("allowed").expect("authenticated");
    let names: Vec<String> = f
        .policy
        .identity_headers(&v)
        .into_iter()
        .map(|(k, val)| format!("{k}={}", val.to_str().unwrap_or("?")))
        .collect();
    assert_eq!(names, ["x-jwt-sub=user-1"]);
    assert_eq!(d.rule.as_deref(), Some("default_rule"));
}

#[tokio::test]
async fn step_up_challenge_names_acr_values_max_age_and_scope() {
    let f = fixture();
    let token = f.a.mint(&claims(
        "https://a.example",
        "api",
        json!({"acr": "urn:pwd"}),
    ));
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let d = f
        .policy
        .decide("POST", None, "/transfer", None, &headers)
        .await;
    let reject = &d.outcome.as_ref().expect_err("refused").reject;
    assert_eq!(
        f.policy.challenge(reject, d.params()).as_deref(),
        Some(
            "Bearer realm=\"jwks-sidecar\", error=\"insufficient_user_authentication\", \
             error_description=\"a stronger or more recent authentication is required\", \
             acr_values=\"urn:mfa urn:hwk\", max_age=900, scope=\"pay\""
        )
    );
}
