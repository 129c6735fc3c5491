//! Properties (proptest): extraction never panics on arbitrary header bytes; claim mapping
//! yields a valid header value or a typed refusal; refresh delays stay within their bounds;
//! every rejection is a 4xx or 503 with a reason label; path normalisation is safe and
//! idempotent.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use jwks_sidecar::auth::claims::{render, Dropped};
use jwks_sidecar::auth::extract::{extract, TokenSources};
use jwks_sidecar::config::ArrayClaimFormat;
use jwks_sidecar::jwks::freshness::{freshness, jittered, retry_delay, MirrorSettings};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
        ".{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| Value::String(String::from_utf8_lossy(&b).into_owned())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn extraction_never_panics_on_arbitrary_header_bytes(
        auth in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..4),
        cookie in proptest::collection::vec(any::<u8>(), 0..200),
        custom in proptest::collection::vec(any::<u8>(), 0..200),
        query in ".{0,100}",
    ) {
        let mut h = HeaderMap::new();
        for a in &auth {
            if let Ok(v) = HeaderValue::from_bytes(a) {
                h.append(http::header::AUTHORIZATION, v);
            }
        }
        if let Ok(v) = HeaderValue::from_bytes(&cookie) {
            h.append(http::header::COOKIE, v);
        }
        if let Ok(v) = HeaderValue::from_bytes(&custom) {
            h.append(HeaderName::from_static("x-token"), v);
        }
        let sources = TokenSources {
            header: Some(HeaderName::from_static("x-token")),
            cookie: Some("at".into()),
            query: Some("t".into()),
            max_bytes: 64,
        };
        if let Ok(Some((token, _))) = extract(&h, Some(&query), &sources) {
            prop_assert!(token.len() <= 64);
        }
    }

    #[test]
    fn claim_mapping_yields_a_valid_header_value_or_a_typed_refusal(v in json_value(), max in 1usize..300, json_arrays in any::<bool>()) {
        let fmt = if json_arrays { ArrayClaimFormat::Json } else { ArrayClaimFormat::Comma };
        match render(&v, fmt, max) {
            Ok(hv) => {
                prop_assert!(hv.len() <= max);
                prop_assert!(hv.as_bytes().iter().all(|b| *b == b'\t' || (0x20..0x7f).contains(b)), "{:?}", hv);
            }
            Err(d) => prop_assert!(matches!(d, Dropped::ControlCharacter | Dropped::TooLong | Dropped::Unrenderable)),
        }
    }

    #[test]
    fn refresh_delays_stay_within_bounds(
        max_age in proptest::option::of(any::<u64>()),
        age in proptest::option::of(any::<u64>()),
        expires_in in proptest::option::of(-1_000_000i64..100_000_000),
        min_s in 1u64..3600,
        span in 0u64..86_400,
        jitter in 0.0f64..1.0,
        r in 0.0f64..1.0,
        failures in 0u32..100,
    ) {
        let s = MirrorSettings {
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(min_s),
            max_refresh: Duration::from_secs(min_s + span),
            max_stale: Duration::from_secs(3600),
            key_removal_confirmations: 2,
            max_retry: Duration::from_secs(60),
            jitter,
        };
        let mut h = HeaderMap::new();
        if let Some(m) = max_age {
            h.insert(http::header::CACHE_CONTROL, HeaderValue::from_str(&format!("public, max-age={m}")).expect("hv"));
        }
        if let Some(a) = age {
            h.insert(http::header::AGE, HeaderValue::from_str(&a.to_string()).expect("hv"));
        }
        if let Some(e) = expires_in {
            let at = if e >= 0 { std::time::SystemTime::now() + Duration::from_secs(e as u64) } else { std::time::SystemTime::now() - Duration::from_secs((-e) as u64) };
            h.insert(http::header::EXPIRES, HeaderValue::from_str(&httpdate::fmt_http_date(at)).expect("hv"));
        }
        let f = freshness(&h, &s);
        prop_assert!(f >= s.min_refresh && f <= s.max_refresh, "{f:?}");
        let j = jittered(f, jitter, r);
        prop_assert!(j <= f && j >= f.mul_f64(1.0 - jitter) - Duration::from_millis(1));
        let d = retry_delay(failures, s.max_retry);
        prop_assert!(d >= Duration::from_secs(1).min(s.max_retry) && d <= s.max_retry);
    }

    #[test]
    fn every_rejection_is_a_4xx_or_503_with_a_reason(token in "[A-Za-z0-9_=.-]{0,300}") {
        let auth = authenticator();
        if let Err(f) = auth.verify(&token, 1_700_000_000) {
            let status = f.reject.status();
            prop_assert!((400..500).contains(&status) || status == 503, "{status}");
            prop_assert!(!f.reject.reason().is_empty() && f.reject.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            prop_assert!(f.reject.www_authenticate("r").is_none_or(|w| HeaderValue::from_str(&w).is_ok()));
        }
    }

    #[test]
    fn path_normalisation_is_safe_and_idempotent(raw in "/[a-zA-Z0-9%./;~_-]{0,60}") {
        if let Ok(p) = jwks_sidecar::path::normalize(&raw, false) {
            prop_assert!(p.starts_with('/'));
            prop_assert!(!p.contains("//"), "{p}");
            prop_assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
                        let again = jwks_sidecar::path::normalize(&p, false);
            prop_assert_eq!(again.as_deref(), Ok(p.as_str()));
        }
    }
}

fn authenticator() -> Arc<jwks_sidecar::auth::Authenticator> {
    use std::sync::OnceLock;
    static AUTH: OnceLock<Arc<jwks_sidecar::auth::Authenticator>> = OnceLock::new();
    AUTH.get_or_init(|| {
        let plan = jwks_sidecar::plan::from_toml_str(
            "[[providers]]\nname = \"p\"\nissuer = \"https://i\"\njwks = { keys = [] }\naudiences = [\"a\"]\n",
        )
        .expect("config");
        Arc::new(plan.authenticator(Arc::new(jwks_sidecar::metrics::Metrics::new())))
    })
    .clone()
}
