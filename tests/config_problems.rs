//! One case per problem `plan::compile` can report: each starts from a valid typed config,
//! breaks one value, and checks that exactly that problem is reported, naming its key, and
//! that the config was valid before (so a case cannot pass by accident).

use std::path::PathBuf;
use std::time::Duration;

use jwks_sidecar::config::{
    Config, FetchHeader, MatchConfig, ProviderConfig, RuleConfig, TlsConfig,
};
use jwks_sidecar::plan;

fn provider(name: &str) -> ProviderConfig {
    ProviderConfig {
        name: name.into(),
        issuer: format!("https://{name}.example"),
        jwks_uri: Some(format!("https://{name}.example/jwks.json")),
        audiences: vec!["api".into()],
        ..ProviderConfig::default()
    }
}

fn valid() -> Config {
    Config {
        providers: vec![provider("a")],
        ..Config::default()
    }
}

fn missing() -> PathBuf {
    PathBuf::from("/nonexistent/jwks-sidecar-test")
}

type Break = fn(&mut Config);

fn p0(c: &mut Config) -> &mut ProviderConfig {
    &mut c.providers[0]
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let cases: Vec<(&str, Break, &str)> = vec![
        ("upstream with a path", |c| c.proxy.upstream = "http://127.0.0.1:3000/app".into(), "proxy.upstream = \"http://127.0.0.1:3000/app\": give only scheme, host and port"),
        ("upstream not a URL", |c| c.proxy.upstream = "127.0.0.1:3000".into(), "is not an http:// or https:// URL"),
        ("empty identity prefix", |c| c.proxy.identity_header_prefix = String::new(), "proxy.identity_header_prefix must not be empty"),
        ("invalid identity prefix", |c| c.proxy.identity_header_prefix = "x jwt".into(), "is not a valid header name prefix"),
        ("invalid payload header", |c| c.proxy.payload_header = Some("x payload".into()), "proxy.payload_header = \"x payload\" is not a valid HTTP header name"),
        ("payload header overwrites a needed one", |c| c.proxy.payload_header = Some("Authorization".into()), "would overwrite a header the request needs"),
        ("invalid token header", |c| c.proxy.token.header = Some("x(tok)".into()), "proxy.token.header"),
        ("public path without /", |c| c.proxy.public_paths = vec!["health".into()], "proxy.public_paths[0] = \"health\" must start with '/'"),
        ("header buffer too small", |c| c.proxy.max_header_bytes = 1024, "proxy.max_header_bytes = 1024 is below 8192"),
        ("zero connections", |c| c.proxy.max_connections = 0, "max_h2_streams must be at least 1"),
        ("zero h2 streams", |c| c.proxy.max_h2_streams = 0, "max_h2_streams must be at least 1"),
        ("token limit too small", |c| c.proxy.max_token_bytes = 10, "proxy.max_token_bytes = 10 is too small"),
        ("TLS files missing", |c| c.proxy.tls = Some(TlsConfig { cert_file: missing(), key_file: missing(), client_ca_file: None, client_auth: Default::default() }), "proxy.tls.cert_file"),
        ("client certificates required without a CA", |c| c.proxy.tls = Some(TlsConfig { cert_file: missing(), key_file: missing(), client_ca_file: None, client_auth: jwks_sidecar::config::ClientAuth::Required }), "proxy.tls.client_auth = \"required\" needs proxy.tls.client_ca_file"),
        ("authz prefix with trailing /", |c| c.authz.path_prefix = "/authz/".into(), "authz.path_prefix = \"/authz/\": use a path such as"),
        ("nginx path under the Envoy prefix", |c| c.authz.nginx_path = format!("{}/nginx", c.authz.path_prefix), "lies under path_prefix"),
        ("nginx and forward paths equal", |c| c.authz.forward_path = c.authz.nginx_path.clone(), "authz.nginx_path and authz.forward_path must differ"),
        ("no providers", |c| c.providers.clear(), "no [[providers]] configured"),
        ("bad provider name", |c| p0(c).name = "a b".into(), "providers[0].name = \"a b\": use letters, digits"),
        ("duplicate provider name", |c| c.providers.push(ProviderConfig { issuer: "https://other".into(), ..provider("a") }), "providers[1].name = \"a\" is used by two providers"),
        ("empty issuer", |c| p0(c).issuer = String::new(), "providers[0].issuer is required"),
        ("duplicate issuer", |c| c.providers.push(ProviderConfig { issuer: "https://a.example".into(), ..provider("b") }), "providers[1].issuer = \"https://a.example\" is used by two providers"),
        ("two key sources", |c| p0(c).jwks_file = Some(missing()), "set exactly one of jwks_uri"),
        ("no key source", |c| p0(c).jwks_uri = None, "found 0"),
        ("plain http to a remote host", |c| p0(c).jwks_uri = Some("http://a.example/jwks".into()), "providers[0].jwks_uri = \"http://a.example/jwks\": http:// is only allowed for loopback hosts"),
        ("non-https scheme", |c| p0(c).jwks_uri = Some("ftp://a.example/jwks".into()), "must be an https:// URL"),
        ("unparsable URL", |c| p0(c).jwks_uri = Some("https://a b/".into()), "is not a valid URL"),
        ("discovery on a plain-http issuer", |c| { let p = p0(c); p.jwks_uri = None; p.discovery = true; p.issuer = "http://a.example".into(); }, "providers[0].issuer (discovery)"),
        ("missing jwks_file", |c| { let p = p0(c); p.jwks_uri = None; p.jwks_file = Some(missing()); }, "providers[0].jwks_file = \"/nonexistent/jwks-sidecar-test\": no such file"),
        ("no audiences", |c| p0(c).audiences.clear(), "audiences is empty"),
        ("unsupported algorithm", |c| p0(c).algorithms = vec!["HS256".into()], "providers[0].algorithms: \"HS256\" is not supported; choose from RS256"),
        ("empty claim name", |c| { p0(c).claim_headers.insert(String::new(), "x-jwt-e".into()); }, "providers[0].claim_headers: empty claim name"),
        ("invalid claim header", |c| { p0(c).claim_headers.insert("sub".into(), "x jwt".into()); }, "claim_headers.\"sub\" = \"x jwt\" is not a valid HTTP header name"),
        ("refresh under a second", |c| p0(c).refresh_interval = Duration::from_millis(10), "refresh_interval must be at least 1s"),
        ("min_refresh above max_refresh", |c| p0(c).min_refresh = Duration::from_secs(7200), "min_refresh (7200s) is larger than max_refresh"),
        ("zero removal confirmations", |c| p0(c).key_removal_confirmations = 0, "key_removal_confirmations must be at least 1"),
        ("zero max_keys", |c| p0(c).max_keys = 0, "max_keys must be at least 1"),
        ("missing ca_file", |c| p0(c).ca_file = Some(missing()), "providers[0].ca_file"),
        ("invalid fetch header name", |c| p0(c).fetch_headers = vec![FetchHeader { name: "a b".into(), value_from_env: Some("X".into()), value_from_file: None, prefix: String::new() }], "fetch_headers[0].name = \"a b\""),
        ("fetch header with two values", |c| p0(c).fetch_headers = vec![FetchHeader { name: "authorization".into(), value_from_env: Some("X".into()), value_from_file: Some(missing()), prefix: String::new() }], "set exactly one of value_from_env, value_from_file"),
        ("unknown issuer placeholder", |c| p0(c).issuer = "https://login/{tenant}/v2.0".into(), "the only supported placeholder is {tenantid}"),
        ("public_key_env not set", |c| { let p = p0(c); p.jwks_uri = None; p.public_key_env = Some("JWKS_SIDECAR_TEST_NO_SUCH_VARIABLE".into()); }, "providers[0].public_key_env = \"JWKS_SIDECAR_TEST_NO_SUCH_VARIABLE\": that environment variable is not set"),
        ("inline key that is not a key", |c| { let p = p0(c); p.jwks_uri = None; p.public_key_pem = Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()); }, "providers[0] (a): the public key holds no usable signing key"),
        ("resource not an absolute URL", |c| c.resource.resource = Some("api.example.com".into()), "resource.resource = \"api.example.com\": give an absolute https:// URL"),
        ("resource with a fragment", |c| c.resource.resource = Some("https://api.example.com/#x".into()), "without query or fragment"),
        ("resource options without the resource", |c| c.resource.scopes_supported = vec!["x".into()], "resource.resource is not set"),
        ("step-up nested in any", |c| c.rules = vec![RuleConfig { matches: MatchConfig { path_prefix: Some("/a".into()), ..MatchConfig::default() }, require: Some(jwks_sidecar::config::RequireConfig { any: vec![jwks_sidecar::config::RequireConfig { acr: vec!["x".into()], ..Default::default() }], ..Default::default() }), ..RuleConfig::default() }], "rules[0].require.any[0]: acr and max_age apply to the whole rule"),
        ("unknown profile", |c| p0(c).profile = Some("rfc7519".into()), "providers[0].profile = \"rfc7519\": the only profile is \"rfc9068\""),
        ("assertion without an audience", |c| c.assertion.enabled = true, "assertion.audience is required"),
        ("assertion with an RSA algorithm", |c| { c.assertion.enabled = true; c.assertion.audience = "app".into(); c.assertion.algorithm = "RS256".into(); }, "assertion.algorithm = \"RS256\": use \"ES256\" or \"EdDSA\""),
        ("assertion overlap shorter than its ttl", |c| { c.assertion.enabled = true; c.assertion.audience = "app".into(); c.assertion.ttl = Duration::from_secs(600); }, "assertion.overlap (300s) is shorter than assertion.ttl (600s)"),
        ("assertion rotating faster than its overlap", |c| { c.assertion.enabled = true; c.assertion.audience = "app".into(); c.assertion.rotate_every = Duration::from_secs(60); }, "assertion.rotate_every (60s) is shorter than assertion.overlap (300s)"),
        ("assertion ttl of zero", |c| { c.assertion.enabled = true; c.assertion.audience = "app".into(); c.assertion.ttl = Duration::ZERO; }, "assertion.ttl is 0"),
        ("dpop algorithm unknown", |c| c.dpop.algorithms = vec!["HS256".into()], "dpop.algorithms: \"HS256\" is not a supported asymmetric algorithm"),
        ("dpop window of zero", |c| c.dpop.max_age = Duration::ZERO, "dpop.max_age = 0ns: give proofs a window between 1s and 1h"),
        ("dpop window over an hour", |c| c.dpop.max_age = Duration::from_secs(7200), "dpop.max_age = 7200s"),
        ("dpop leeway over 5m", |c| c.dpop.leeway = Duration::from_secs(600), "dpop.leeway = 600s is over 5m"),
        ("dpop replay cache too small", |c| c.dpop.replay_cache_entries = 10, "dpop.replay_cache_entries = 10 is too small"),
        ("public origin with a path", |c| c.proxy.public_origin = Some("https://api.example.com/v1".into()), "proxy.public_origin = \"https://api.example.com/v1\" is not an origin"),
        ("public origin with userinfo", |c| c.proxy.public_origin = Some("https://u@api.example.com".into()), "proxy.public_origin = \"https://u@api.example.com\" is not an origin"),
        ("assertion key file missing", |c| { c.assertion.enabled = true; c.assertion.audience = "app".into(); c.assertion.key_file = Some(missing()); }, "assertion.key_file"),
        ("realm that breaks the challenge", |c| c.proxy.realm = "a\"b".into(), "proxy.realm = \"a\\\"b\": use printable ASCII"),
        ("resource with a quote", |c| c.resource.resource = Some("https://api.example.com/a\"b".into()), "give an absolute https:// URL"),
        ("scope that is not a scope-token", |c| c.rules = vec![RuleConfig { matches: MatchConfig { path_prefix: Some("/a".into()), ..MatchConfig::default() }, require: Some(jwks_sidecar::config::RequireConfig { scopes: vec!["lesen bücher".into()], ..Default::default() }), ..RuleConfig::default() }], "rules[0].require.scopes: \"lesen bücher\" must be printable ASCII"),
        ("sub-second max_age", |c| c.rules = vec![RuleConfig { matches: MatchConfig { path_prefix: Some("/a".into()), ..MatchConfig::default() }, require: Some(jwks_sidecar::config::RequireConfig { max_age: Some(Duration::from_millis(500)), ..Default::default() }), ..RuleConfig::default() }], "rules[0].require.max_age must be at least 1s"),
        ("invalid rule", |c| c.rules = vec![RuleConfig { matches: MatchConfig { path_regex: Some("([".into()), ..MatchConfig::default() }, ..RuleConfig::default() }], "rules[0].match.path_regex"),
    ];
    assert!(
        plan::compile(valid(), None).is_ok(),
        "the base config is valid"
    );
    let mut failures = Vec::new();
    for (name, break_it, want) in cases {
        let mut c = valid();
        break_it(&mut c);
        match plan::compile(c, Some(std::path::Path::new("sidecar.toml"))) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(e) => {
                let text = e.to_string();
                // One problem per "  - " line (a regex error continues on further lines).
                let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  - ")).collect();
                if !lines.iter().any(|l| l.contains(want)) {
                    failures.push(format!("{name}: no problem containing {want:?} in\n{text}"));
                } else if !lines.iter().all(|l| l.starts_with("  - sidecar.toml: ")) {
                    failures.push(format!("{name}: a problem does not name the file:\n{text}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut c = valid();
    c.proxy.max_header_bytes = 1;
    c.providers[0].audiences.clear();
    c.providers[0].max_keys = 0;
    let text = plan::compile(c, None).expect_err("invalid").to_string();
    assert_eq!(text.lines().count(), 4, "{text}");
}
