//! `config.example.toml` is documentation that must stay true: it parses, validates, and
//! states every default that `Config::default()` has.

use jwks_sidecar::config::{Config, ProviderConfig};
use jwks_sidecar::plan;

#[test]
fn config_example_parses_and_validates() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .expect("config.example.toml is readable");
    let cfg = plan::from_toml_str(&text)
        .unwrap_or_else(|e| panic!("config.example.toml: {e}"))
        .config;
    assert_eq!(cfg.providers.len(), 1);
    assert_eq!(
        cfg.providers[0]
            .claim_headers
            .get("org.id")
            .map(String::as_str),
        Some("x-jwt-org-id")
    );
}

#[test]
fn config_example_states_the_real_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .expect("readable");
    let cfg = plan::from_toml_str(&text).expect("valid").config;
    let d = Config::default();
    // Every [proxy] value in the example that is not an illustration equals the default.
    let mut proxy = cfg.proxy.clone();
    proxy.public_paths = d.proxy.public_paths.clone();
    proxy.payload_header = d.proxy.payload_header.clone();
    assert_eq!(
        proxy, d.proxy,
        "config.example.toml [proxy] drifted from the defaults"
    );
    assert_eq!(cfg.admin, d.admin);
    assert_eq!(cfg.log, d.log);
    let p = &cfg.providers[0];
    let dp = ProviderConfig::default();
    assert_eq!(
        (
            p.leeway,
            p.require_exp,
            p.refresh_interval,
            p.fetch_timeout,
            p.max_jwks_bytes,
            p.allow_insecure_http,
            &p.audience_claim
        ),
        (
            dp.leeway,
            dp.require_exp,
            dp.refresh_interval,
            dp.fetch_timeout,
            dp.max_jwks_bytes,
            dp.allow_insecure_http,
            &dp.audience_claim
        )
    );
}

#[test]
fn every_option_is_documented_in_the_example() {
    // Serialize the defaults, and check every key name appears in the example file.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .expect("readable");
    let mut cfg = Config::default();
    cfg.providers.push(ProviderConfig::default());
    let v = serde_json::to_value(&cfg).expect("serializable");
    let mut missing = Vec::new();
    fn walk(v: &serde_json::Value, text: &str, missing: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, child) in m {
                    if !text.contains(&format!("{k} ="))
                        && !text.contains(&format!("[{k}]"))
                        && !text.contains(&format!(".{k}]"))
                        && !text.contains(&format!("[[{k}]]"))
                    {
                        missing.push(k.clone());
                    }
                    walk(child, text, missing);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, text, missing)),
            _ => {}
        }
    }
    walk(&v, &text, &mut missing);
    assert!(
        missing.is_empty(),
        "options missing from config.example.toml: {missing:?}"
    );
}
