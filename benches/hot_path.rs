//! Micro-benchmarks of the request path: verification per algorithm, key lookup, token
//! extraction, claims to headers, path normalisation, and the whole authenticate step with
//! and without the token cache. `cargo bench --bench hot_path`; the end-to-end comparison
//! with Envoy is `bash bench/run.sh`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use jwks_sidecar::auth::Authenticator;
use jwks_sidecar::config::ArrayClaimFormat;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::jwks::KeySet;
use jwks_sidecar::metrics::Metrics;
use jwks_sidecar::testkit::{jwks, now, SigningKey};
use serde_json::json;

const ISS: &str = "https://idp.bench";

fn setup(keys: &[&SigningKey], cache: bool) -> Authenticator {
    let doc = jwks(keys);
    let toml = format!(
        "[token_cache]\nenabled = {cache}\n[[providers]]\nname = \"p\"\nissuer = \"{ISS}\"\njwks = {}\naudiences = [\"api\"]\n[providers.claim_headers]\nsub = \"x-jwt-sub\"\nemail = \"x-jwt-email\"\n",
        toml_inline(&doc)
    );
    let plan = jwks_sidecar::plan::from_toml_str(&toml).expect("config");
    let auth = plan.authenticator(Arc::new(Metrics::new()));
    let (set, _) = KeySet::from_document(&doc, &auth.providers()[0].keys.policy).expect("keys");
    auth.providers()[0].keys.store(set);
    auth
}

fn toml_inline(v: &serde_json::Value) -> String {
    // JSON objects and arrays are valid TOML inline values once keys are quoted.
    match v {
        serde_json::Value::Object(m) => format!(
            "{{ {} }}",
            m.iter()
                .map(|(k, v)| format!("{k:?} = {}", toml_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        serde_json::Value::Array(a) => format!(
            "[{}]",
            a.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "user-123", "aud": "api", "exp": now() + 3600, "iat": now(), "email": "u@example.com", "scope": "read write"})
}

fn bench(c: &mut Criterion) {
    let algs = [Alg::RS256, Alg::PS256, Alg::ES256, Alg::ES384, Alg::EdDSA];
    let keys: Vec<SigningKey> = algs
        .iter()
        .map(|a| SigningKey::generate(*a, a.name()))
        .collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    let uncached = setup(&refs, false);
    let cached = setup(&refs, true);
    let t = now();
    for k in &keys {
        let token = k.mint(&claims());
        c.bench_function(&format!("verify/{}", k.alg.name()), |b| {
            b.iter(|| uncached.verify(black_box(&token), t).expect("valid"))
        });
    }
    let rs = keys[0].mint(&claims());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    c.bench_function("authenticate/RS256/cache_off", |b| {
        b.iter(|| {
            rt.block_on(uncached.authenticate(black_box(&rs), t))
                .expect("valid")
        })
    });
    c.bench_function("authenticate/RS256/cache_hit", |b| {
        b.iter(|| {
            rt.block_on(cached.authenticate(black_box(&rs), t))
                .expect("valid")
        })
    });
    // A DPoP request verifies the token as above plus its proof: one more signature check
    // (by the client's key) and the replay cache. Each iteration gets a fresh proof (made
    // outside the timing).
    for alg in [Alg::ES256, Alg::EdDSA] {
        let holder = SigningKey::generate(alg, "holder");
        let jkt = jwks_sidecar::demo::dpop::jkt(&holder);
        let dpop = jwks_sidecar::dpop::Dpop::new(&[alg], 3600, 5, 10_000_000);
        let none = serde_json::Map::new();
        c.bench_function(&format!("dpop_proof/{}", alg.name()), |b| {
            b.iter_batched(
                || {
                    let p = jwks_sidecar::demo::dpop::proof(
                        &holder,
                        "GET",
                        "http://api.test/orders",
                        &rs,
                        &none,
                        &none,
                    );
                    let mut h = HeaderMap::new();
                    h.insert("dpop", HeaderValue::from_str(&p).expect("hv"));
                    h
                },
                |h| {
                    let req = jwks_sidecar::dpop::ProofRequest {
                        method: "GET",
                        uri: "http://api.test/orders",
                        token: &rs,
                        now: now(),
                    };
                    dpop.verify_proof(&h, &req, Some(&jkt), &mut ())
                        .expect("valid proof")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    let set = uncached.providers()[0].keys.current().expect("keys");
    c.bench_function("key_lookup", |b| {
        b.iter(|| black_box(set.candidates(Some(black_box("ES256")))).len())
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {rs}")).expect("hv"),
    );
    headers.insert("accept", HeaderValue::from_static("*/*"));
    c.bench_function("extract_token", |b| {
        b.iter(|| uncached.extract(black_box(&headers), None).expect("ok"))
    });
    let value = json!(["admin", "reader", "writer"]);
    c.bench_function("claim_to_header", |b| {
        b.iter(|| {
            jwks_sidecar::auth::claims::render(black_box(&value), ArrayClaimFormat::Comma, 4096)
                .expect("ok")
        })
    });
    c.bench_function("normalize_path", |b| {
        b.iter(|| {
            jwks_sidecar::path::normalize(black_box("/api//v1/./users/%7Eme/../42"), false)
                .expect("ok")
        })
    });
    // 100 rules (prefix, exact, regex, host, methods mixed); the request matches none of
    // them, so every rule is evaluated before the default rule applies.
    let mut rules = String::new();
    for i in 0..100 {
        let m = match i % 4 {
            0 => format!("path_prefix = \"/svc{i}\""),
            1 => format!("path = \"/exact/{i}\", methods = [\"GET\", \"POST\"]"),
            2 => format!("path_regex = \"/re{i}/[0-9]+\""),
            _ => format!("host = \"*.tenant{i}.example\", path_prefix = \"/api\""),
        };
        rules.push_str(&format!(
            "[[rules]]\nmatch = {{ {m} }}\nrequire = {{ scopes = [\"s{i}\"] }}\n"
        ));
    }
    let cfg = jwks_sidecar::config::from_toml_str(&format!(
        "[[providers]]\nname = \"p\"\nissuer = \"{ISS}\"\njwks = {{ keys = [] }}\naudiences = [\"api\"]\n{rules}"
    ))
    .expect("100 rules");
    let compiled = jwks_sidecar::rules::Rules::compile(&cfg).expect("compile");
    c.bench_function("rules/100_no_match", |b| {
        b.iter(|| {
            compiled
                .find(
                    black_box("GET"),
                    Some("app.example.com"),
                    black_box("/nothing/here"),
                )
                .name
                .len()
        })
    });
    c.bench_function("rules/100_first_match", |b| {
        b.iter(|| {
            compiled
                .find(
                    black_box("GET"),
                    Some("app.example.com"),
                    black_box("/svc0/x"),
                )
                .name
                .len()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
