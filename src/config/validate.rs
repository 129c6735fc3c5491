//! Validation of the values themselves: every problem at once, each naming the file, the
//! key, the value and the fix. Problems that need compiling (rules, inline keys) are found
//! by `plan::compile`, which calls this first.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::{AuthzConfig, Config, ProviderConfig, ProxyConfig};

/// Every problem of the values themselves, each prefixed with the file (empty: none).
pub fn problems(c: &Config, file: Option<&Path>) -> Vec<String> {
    let mut p = Vec::new();
    let src = file
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default();
    proxy(&mut p, &src, &c.proxy);
    authz(&mut p, &src, &c.authz);
    providers(&mut p, &src, c);
    resource(&mut p, &src, &c.resource);
    dpop(&mut p, &src, &c.dpop);
    if c.assertion.enabled {
        if c.assertion.audience.is_empty() {
            p.push(format!("{src}assertion.audience is required with assertion.enabled: name the app the assertion is for (its aud), e.g. \"orders-service\""));
        }
        check_header_name(&mut p, &src, "assertion.header", &c.assertion.header);
        let a = &c.assertion;
        if a.overlap < a.ttl {
            p.push(format!("{src}assertion.overlap ({:?}) is shorter than assertion.ttl ({:?}): an assertion would outlive the publication of the key that signed it", a.overlap, a.ttl));
        }
        if !a.rotate_every.is_zero() && a.rotate_every < a.overlap {
            p.push(format!("{src}assertion.rotate_every ({:?}) is shorter than assertion.overlap ({:?}): set rotate_every to at least the overlap, or \"0s\" to never rotate", a.rotate_every, a.overlap));
        }
        if a.ttl.is_zero() {
            p.push(format!(
                "{src}assertion.ttl is 0: give assertions a lifetime, e.g. \"60s\""
            ));
        }
    }
    p
}

/// `[dpop]`: known asymmetric algorithms, a window, a cache.
fn dpop(p: &mut Vec<String>, src: &str, d: &super::DpopConfig) {
    for a in &d.algorithms {
        if crate::jose::Alg::parse(a).is_none() {
            p.push(format!(
                "{src}dpop.algorithms: {a:?} is not a supported asymmetric algorithm ({})",
                crate::jose::Alg::names()
            ));
        }
    }
    let secs = std::time::Duration::from_secs;
    if d.max_age < secs(1) || d.max_age > secs(3600) {
        p.push(format!(
            "{src}dpop.max_age = {:?}: give proofs a window between 1s and 1h, e.g. \"60s\"",
            d.max_age
        ));
    }
    if d.nonce && (d.nonce_lifetime < secs(1) || d.nonce_lifetime > secs(86_400)) {
        p.push(format!(
            "{src}dpop.nonce_lifetime = {:?}: between 1s and 24h, e.g. \"5m\"",
            d.nonce_lifetime
        ));
    }
    if d.leeway > secs(300) {
        p.push(format!("{src}dpop.leeway = {:?} is over 5m", d.leeway));
    }
    if d.replay_cache_entries < 1000 {
        p.push(format!(
            "{src}dpop.replay_cache_entries = {} is too small to stop replays (at least 1000)",
            d.replay_cache_entries
        ));
    }
}

/// `[resource]`: absolute http(s) URLs (RFC 9728 section 1.2: no query, no fragment).
fn resource(p: &mut Vec<String>, src: &str, r: &super::ResourceConfig) {
    let urls = r
        .resource
        .iter()
        .map(|u| ("resource.resource", u))
        .chain(
            r.resource_documentation
                .iter()
                .map(|u| ("resource.resource_documentation", u)),
        )
        .chain(
            r.authorization_servers
                .iter()
                .map(|u| ("resource.authorization_servers", u)),
        );
    for (key, url) in urls {
        let ok = http::Uri::try_from(url.as_str()).is_ok_and(|u| {
            matches!(u.scheme_str(), Some("https" | "http"))
                && u.host().is_some()
                && u.query().is_none()
        }) && !url.contains('#')
            && quotable(url);
        if !ok {
            p.push(format!("{src}{key} = {url:?}: give an absolute https:// URL without query or fragment, e.g. \"https://api.example.com\""));
        }
    }
    if r.resource.is_none()
        && (!r.authorization_servers.is_empty()
            || !r.scopes_supported.is_empty()
            || r.resource_name.is_some()
            || r.resource_documentation.is_some())
    {
        p.push(format!("{src}resource.resource is not set: the other [resource] options describe it, so set it (e.g. resource = \"https://api.example.com\") or remove them"));
    }
}

fn proxy(p: &mut Vec<String>, src: &str, proxy: &ProxyConfig) {
    match http::Uri::try_from(proxy.upstream.as_str()) {
        Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
            if u.path() != "/" && !u.path().is_empty() {
                p.push(format!("{src}proxy.upstream = {:?}: give only scheme, host and port (no path); the request path is kept as sent", proxy.upstream));
            }
        }
        _ => p.push(format!(
            "{src}proxy.upstream = {:?} is not an http:// or https:// URL; example: \"http://127.0.0.1:3000\"",
            proxy.upstream
        )),
    }
    if let Some(t) = &proxy.tls {
        if t.client_auth == super::ClientAuth::Required && t.client_ca_file.is_none() {
            p.push(format!("{src}proxy.tls.client_auth = \"required\" needs proxy.tls.client_ca_file (the CA that issues client certificates)"));
        }
    }
    if let Some(o) = &proxy.public_origin {
        let ok = matches!(http::Uri::try_from(o.as_str()), Ok(u)
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some()
                && matches!(u.path(), "" | "/")
                && u.query().is_none()
                && !o.contains('@'));
        if !ok {
            p.push(format!("{src}proxy.public_origin = {o:?} is not an origin: give scheme, host and optional port only, e.g. \"https://api.example.com\""));
        }
    }
    if proxy.identity_header_prefix.is_empty() {
        p.push(format!(
            "{src}proxy.identity_header_prefix must not be empty (default \"x-jwt-\")"
        ));
    } else if http::HeaderName::try_from(proxy.identity_header_prefix.as_str()).is_err() {
        p.push(format!(
            "{src}proxy.identity_header_prefix = {:?} is not a valid header name prefix",
            proxy.identity_header_prefix
        ));
    }
    if !quotable(&proxy.realm) {
        p.push(format!("{src}proxy.realm = {:?}: use printable ASCII without '\"' or '\\' (it is quoted into WWW-Authenticate)", proxy.realm));
    }
    if let Some(h) = &proxy.payload_header {
        check_header_name(p, src, "proxy.payload_header", h);
    }
    if let Some(h) = &proxy.token.header {
        check_header_name(p, src, "proxy.token.header", h);
    }
    for (i, path) in proxy.public_paths.iter().enumerate() {
        if !path.starts_with('/') {
            p.push(format!(
                "{src}proxy.public_paths[{i}] = {path:?} must start with '/'"
            ));
        }
    }
    if proxy.max_header_bytes < 8192 {
        p.push(format!(
            "{src}proxy.max_header_bytes = {} is below 8192 (the smallest HTTP/1 buffer)",
            proxy.max_header_bytes
        ));
    }
    if proxy.max_connections == 0 || proxy.max_headers == 0 || proxy.max_h2_streams == 0 {
        p.push(format!(
            "{src}proxy.max_connections, max_headers and max_h2_streams must be at least 1"
        ));
    }
    if proxy.max_token_bytes < 64 {
        p.push(format!(
            "{src}proxy.max_token_bytes = {} is too small (default 16384)",
            proxy.max_token_bytes
        ));
    }
    if let Some(tls) = &proxy.tls {
        for (key, f) in [
            ("proxy.tls.cert_file", &tls.cert_file),
            ("proxy.tls.key_file", &tls.key_file),
        ] {
            if !f.is_file() {
                p.push(format!("{src}{key} = {:?}: no such file", f.display()));
            }
        }
    }
}

fn authz(p: &mut Vec<String>, src: &str, a: &AuthzConfig) {
    for (key, v) in [
        ("authz.path_prefix", &a.path_prefix),
        ("authz.nginx_path", &a.nginx_path),
        ("authz.forward_path", &a.forward_path),
    ] {
        if !v.starts_with('/') || v.len() < 2 || v.ends_with('/') {
            p.push(format!(
                "{src}{key} = {v:?}: use a path such as \"/authz\" (leading '/', no trailing '/')"
            ));
        }
    }
    for other in [&a.nginx_path, &a.forward_path] {
        if crate::path::prefix_matches(other, &a.path_prefix) || other == &a.path_prefix {
            p.push(format!("{src}authz: {other:?} lies under path_prefix {:?}; the Envoy endpoint would shadow it", a.path_prefix));
        }
    }
    if a.nginx_path == a.forward_path {
        p.push(format!(
            "{src}authz.nginx_path and authz.forward_path must differ"
        ));
    }
}

fn providers(p: &mut Vec<String>, src: &str, c: &Config) {
    if c.providers.is_empty() {
        p.push(format!(
            "{src}no [[providers]] configured: add one with name, issuer, jwks_uri (or discovery = true) and audiences"
        ));
    }
    let mut names: HashSet<String> = HashSet::new();
    let mut issuers: HashSet<String> = HashSet::new();
    for (i, prov) in c.providers.iter().enumerate() {
        let at = format!("{src}providers[{i}]");
        if prov.name.is_empty()
            || !prov
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.push(format!("{at}.name = {:?}: use letters, digits, '-' or '_' (it appears in metrics and URLs)", prov.name));
        } else if !names.insert(prov.name.clone()) {
            p.push(format!(
                "{at}.name = {:?} is used by two providers; names must be unique",
                prov.name
            ));
        }
        if prov.issuer.is_empty() {
            p.push(format!(
                "{at}.issuer is required: the exact `iss` of this provider's tokens"
            ));
        } else if !issuers.insert(prov.issuer.clone()) {
            p.push(format!("{at}.issuer = {:?} is used by two providers; the issuer selects the provider, so it must be unique", prov.issuer));
        }
        provider(p, src, i, prov);
    }
}

/// A provider's key source (names and issuers are checked across providers above).
fn provider(p: &mut Vec<String>, src: &str, i: usize, prov: &ProviderConfig) {
    let at = format!("{src}providers[{i}]");
    let sources = [
        prov.jwks_uri.is_some(),
        prov.discovery_url.is_some() || prov.discovery,
        prov.jwks_file.is_some(),
        prov.jwks.is_some(),
        prov.public_key_pem.is_some(),
        prov.public_key_env.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if sources != 1 {
        p.push(format!("{at} ({}): set exactly one of jwks_uri, discovery_url (or discovery = true), jwks_file, jwks, public_key_pem, public_key_env; found {sources}", prov.name));
    }
    for (key, url) in [
        ("jwks_uri", &prov.jwks_uri),
        ("discovery_url", &prov.discovery_url),
    ] {
        if let Some(url) = url {
            check_fetch_url(p, &format!("{at}.{key}"), url, prov.allow_insecure_http);
        }
    }
    if prov.discovery && prov.discovery_url.is_none() {
        check_fetch_url(
            p,
            &format!("{at}.issuer (discovery)"),
            &prov.issuer,
            prov.allow_insecure_http,
        );
    }
    if let Some(f) = &prov.jwks_file {
        if !f.is_file() {
            p.push(format!("{at}.jwks_file = {:?}: no such file", f.display()));
        }
    }
    provider_checks(p, src, i, prov);
}

/// A provider's claim rules, header mappings, timing and fetch settings.
fn provider_checks(p: &mut Vec<String>, src: &str, i: usize, prov: &ProviderConfig) {
    let at = format!("{src}providers[{i}]");
    if let Some(profile) = prov.profile.as_deref().filter(|p| *p != "rfc9068") {
        p.push(format!("{at}.profile = {profile:?}: the only profile is \"rfc9068\" (RFC 9068 JWT access tokens); remove it otherwise"));
    }
    if prov.audiences.is_empty() {
        p.push(format!("{at} ({}): audiences is empty; list the audience(s) your API accepts, e.g. audiences = [\"https://api.example.com\"]", prov.name));
    }
    for alg in &prov.algorithms {
        if crate::jose::Alg::parse(alg).is_none() {
            p.push(format!(
                "{at}.algorithms: {alg:?} is not supported; choose from {}",
                crate::jose::Alg::names()
            ));
        }
    }
    for (claim, header) in &prov.claim_headers {
        if claim.is_empty() {
            p.push(format!("{at}.claim_headers: empty claim name"));
        }
        check_header_name(
            p,
            src,
            &format!("providers[{i}].claim_headers.{claim:?}"),
            header,
        );
    }
    if prov.refresh_interval < Duration::from_secs(1) {
        p.push(format!("{at}.refresh_interval must be at least 1s"));
    }
    if prov.min_refresh > prov.max_refresh {
        p.push(format!(
            "{at}: min_refresh ({:?}) is larger than max_refresh ({:?})",
            prov.min_refresh, prov.max_refresh
        ));
    }
    if prov.key_removal_confirmations == 0 {
        p.push(format!("{at}.key_removal_confirmations must be at least 1 (1 = drop a key as soon as it is missing)"));
    }
    if prov.max_keys == 0 {
        p.push(format!("{at}.max_keys must be at least 1"));
    }
    if let Some(f) = &prov.ca_file {
        if !f.is_file() {
            p.push(format!("{at}.ca_file = {:?}: no such file", f.display()));
        }
    }
    for (j, h) in prov.fetch_headers.iter().enumerate() {
        if http::HeaderName::try_from(h.name.as_str()).is_err() {
            p.push(format!(
                "{at}.fetch_headers[{j}].name = {:?} is not a valid HTTP header name",
                h.name
            ));
        }
        if h.value_from_env.is_some() == h.value_from_file.is_some() {
            p.push(format!(
                "{at}.fetch_headers[{j}] ({}): set exactly one of value_from_env, value_from_file",
                h.name
            ));
        }
    }
    if prov.issuer.contains('{') && !prov.issuer.contains("{tenantid}") {
        p.push(format!(
            "{at}.issuer = {:?}: the only supported placeholder is {{tenantid}}",
            prov.issuer
        ));
    }
}

fn check_header_name(p: &mut Vec<String>, src: &str, key: &str, name: &str) {
    if http::HeaderName::try_from(name).is_err() {
        p.push(format!(
            "{src}{key} = {name:?} is not a valid HTTP header name"
        ));
    }
    if matches!(
        name.to_ascii_lowercase().as_str(),
        "host" | "authorization" | "connection" | "content-length" | "transfer-encoding" | "cookie"
    ) {
        p.push(format!(
            "{src}{key} = {name:?} would overwrite a header the request needs; choose another name"
        ));
    }
}

fn check_fetch_url(p: &mut Vec<String>, key: &str, url: &str, allow_insecure_http: bool) {
    match http::Uri::try_from(url) {
        Ok(u) => match u.scheme_str() {
            Some("https") => {}
            Some("http") => {
                let host = u.host().unwrap_or("");
                if !allow_insecure_http && !is_loopback_host(host) {
                    p.push(format!("{key} = {url:?}: http:// is only allowed for loopback hosts; use https:// or set allow_insecure_http = true"));
                }
            }
            _ => p.push(format!("{key} = {url:?} must be an https:// URL")),
        },
        Err(_) => p.push(format!("{key} = {url:?} is not a valid URL")),
    }
}

/// Safe inside a quoted-string of an HTTP header: printable ASCII except `"` and `\`.
fn quotable(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// `localhost`, 127.0.0.0/8 or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
