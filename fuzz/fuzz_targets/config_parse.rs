//! `plan::from_toml_str`: configuration text (the file, a reloaded ConfigMap) never panics,
//! and a config it accepts survives a round trip (serialise, parse, compile) unchanged and
//! builds an `Authenticator`.

#![no_main]

use std::sync::{Arc, OnceLock};


use jwks_sidecar::config::Config;
use jwks_sidecar::plan::{compile, from_toml_str};
use jwks_sidecar::metrics::Metrics;
use libfuzzer_sys::fuzz_target;

fn metrics() -> Arc<Metrics> {
    static M: OnceLock<Arc<Metrics>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Metrics::new())).clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(plan) = from_toml_str(text) else {
        return;
    };
    let config = &plan.config;
    let json = serde_json::to_value(config).expect("config serialises");
    let back: Config = serde_json::from_value(json).expect("serialised config deserialises");
    assert_eq!(&back, config, "config changed through serialisation");
    // Compiling is a pure function of the value: accepting once means accepting again.
    let again = compile(back, None)
        .unwrap_or_else(|e| panic!("accepted config fails to compile again: {e}"));
    let auth = again.authenticator(metrics());
    assert_eq!(auth.providers().len(), config.providers.len());
});
