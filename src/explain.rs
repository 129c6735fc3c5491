//! `jwks-sidecar explain`: why a request would be allowed or refused, step by step, without
//! starting any listener. The verdict at the end comes from the same `Policy::decide` the
//! listeners run; the steps before it show each check with its inputs.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::{now_unix, verify, Authenticator};
use crate::config::Config;
use crate::jwks::refresh::{fetch_key_set, ConfiguredSource};
use crate::jwks::{KeySet, ProviderKeys};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::rules::Access;

/// What to explain.
#[derive(Debug, Clone, Default)]
pub struct ExplainRequest {
    /// `"GET /admin/users?x=1"` (a full URL is accepted too).
    pub request: String,
    /// `"Name: value"` lines.
    pub headers: Vec<String>,
    /// Use this JWKS file for every provider instead of fetching.
    pub offline: Option<std::path::PathBuf>,
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok  "
    } else {
        "FAIL"
    }
}

async fn load_keys(
    keys: &ProviderKeys,
    cfg: &crate::config::ProviderConfig,
    offline: Option<&Path>,
) -> Result<usize, String> {
    let (set, _) = match offline {
        Some(file) => {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            KeySet::parse(&bytes, &keys.policy).map_err(|e| e.0)?
        }
        None => {
            let fetcher = crate::fetcher_for(cfg, &crate::jwks::fetch::Fetcher::new())?;
            let source = ConfiguredSource::new(fetcher, cfg, None);
            fetch_key_set(&source, keys)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let n = set.len();
    keys.store(set);
    Ok(n)
}

/// Explains one request; returns the report.
pub async fn explain(config: &Config, req: &ExplainRequest) -> Result<String, String> {
    crate::install_crypto_provider();
    let mut out = String::new();
    let (method, target) = req
        .request
        .trim()
        .split_once(' ')
        .ok_or("--request must look like \"GET /path?query\"")?;
    let (raw_path, query) = crate::authz::http::split_target(target.trim())
        .ok_or(format!("{target:?} is not a request target"))?;
    let mut headers = HeaderMap::new();
    for h in &req.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or(format!("--header {h:?} must look like \"Name: value\""))?;
        let name = HeaderName::try_from(k.trim()).map_err(|e| format!("--header {k:?}: {e}"))?;
        let value = HeaderValue::from_str(v.trim()).map_err(|e| format!("--header {k:?}: {e}"))?;
        headers.append(name, value);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(Authenticator::new(config, metrics));
    let _ = writeln!(out, "request: {method} {target}");
    let _ = writeln!(
        out,
        "\nkeys ({}):",
        if req.offline.is_some() {
            "offline file"
        } else {
            "fetched now"
        }
    );
    for (p, cfg) in auth.providers().iter().zip(&config.providers) {
        match load_keys(&p.keys, cfg, req.offline.as_deref()).await {
            Ok(n) => {
                let kids: Vec<String> = p
                    .keys
                    .current()
                    .map(|s| s.keys().iter().filter_map(|k| k.kid.clone()).collect())
                    .unwrap_or_default();
                let _ = writeln!(out, "  {}: {n} keys {kids:?}", p.name);
            }
            Err(e) => {
                let _ = writeln!(out, "  {}: no keys ({e})", p.name);
            }
        }
    }
    let policy = Policy::new(config, auth.clone())?;

    let _ = writeln!(out, "\npath:");
    let normalized = match crate::path::normalize_with(&raw_path, &config.proxy.path_options()) {
        Ok(p) => {
            let _ = writeln!(out, "  {raw_path:?} normalises to {p:?}");
            Some(p)
        }
        Err(r) => {
            let _ = writeln!(out, "  {raw_path:?} is refused: {}", r.description());
            None
        }
    };

    if let Some(path) = &normalized {
        let _ = writeln!(out, "\nrules:");
        let (rule, trace) = policy.rules.find_explained(method, host.as_deref(), path);
        for t in &trace {
            match &t.skipped {
                Some(why) => {
                    let _ = writeln!(out, "  skip   {}: {why}", t.name);
                }
                None => {
                    let _ = writeln!(out, "  MATCH  {}", t.name);
                }
            }
        }
        let access = match &rule.access {
            Access::Public => "public: no token needed".to_string(),
            Access::Deny => "deny".to_string(),
            Access::Anonymous(_) => "anonymous allowed: a token is verified if present".to_string(),
            Access::Authenticated(_) => "a valid token is required".to_string(),
        };
        let _ = writeln!(out, "  -> {access}");

        if !matches!(rule.access, Access::Public | Access::Deny) {
            explain_token(&mut out, &auth, &headers, query.as_deref(), rule);
        }
    }

    let spoofed = policy.spoofed_header_names("explain", &headers);
    let decision = policy
        .decide(
            method,
            host.as_deref(),
            &raw_path,
            query.as_deref(),
            &headers,
        )
        .await;
    let _ = writeln!(
        out,
        "\ndecision: {} ({})",
        decision.decision().to_uppercase(),
        decision.reason()
    );
    match &decision.outcome {
        Ok(v) => {
            let _ = writeln!(
                out,
                "  status: forwarded to the upstream (or 200 from the authz listener)"
            );
            if !spoofed.is_empty() {
                let names: Vec<&str> = spoofed.iter().map(|n| n.as_str()).collect();
                let _ = writeln!(
                    out,
                    "  inbound identity headers removed: {}",
                    names.join(", ")
                );
            }
            match v {
                Some(v) => {
                    for (k, val) in policy.identity_headers(v) {
                        let _ = writeln!(
                            out,
                            "  header {k}: {}",
                            crate::policy::truncate(val.to_str().unwrap_or("?"), 120)
                        );
                    }
                }
                None => {
                    let _ = writeln!(out, "  no identity headers (public or anonymous)");
                }
            }
        }
        Err(f) => {
            let _ = writeln!(out, "  status: {}", f.reject.status());
            if let Some(w) = f.reject.www_authenticate(&policy.realm) {
                let _ = writeln!(out, "  WWW-Authenticate: {w}");
            }
            let _ = writeln!(out, "  body: {}", f.reject.body());
        }
    }
    Ok(out)
}

fn explain_token(
    out: &mut String,
    auth: &Authenticator,
    headers: &HeaderMap,
    query: Option<&str>,
    rule: &crate::rules::Rule,
) {
    let _ = writeln!(out, "\ntoken:");
    let token = match auth.extract(headers, query) {
        Ok(Some(t)) => {
            let _ = writeln!(out, "  found ({} bytes)", t.len());
            t
        }
        Ok(None) => {
            let _ = writeln!(out, "  none in the request");
            return;
        }
        Err(r) => {
            let _ = writeln!(out, "  {}", r.description());
            return;
        }
    };
    let parsed = match verify::parse(token) {
        Ok(p) => p,
        Err(r) => {
            let _ = writeln!(out, "  {} parse: {}", mark(false), r.description());
            return;
        }
    };
    let h = &parsed.header;
    let _ = writeln!(
        out,
        "  {} parse: alg={} kid={:?} typ={:?}",
        mark(true),
        h.alg,
        h.kid.as_deref().map(|k| crate::policy::truncate(k, 64)),
        h.typ
    );
    let iss = verify::peek_issuer(&parsed);
    let Some(provider) = iss.and_then(|i| auth.provider_for(i, &parsed.claims)) else {
        let _ = writeln!(
            out,
            "  {} issuer {iss:?} is not a configured provider",
            mark(false)
        );
        return;
    };
    let _ = writeln!(
        out,
        "  {} provider {:?} (issuer {:?})",
        mark(true),
        provider.name,
        iss.unwrap_or("")
    );
    let alg = match verify::check_alg(&parsed, &provider.algorithms) {
        Ok(a) => {
            let _ = writeln!(out, "  {} alg {} is allowed", mark(true), h.alg);
            a
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "  {} alg {:?} is not allowed for {}",
                mark(false),
                h.alg,
                provider.name
            );
            return;
        }
    };
    let signed = provider.keys.with_current(|set| {
        let Some(set) = set else {
            return Err("the provider has no keys (503)".to_string());
        };
        let c = set.candidates(h.kid.as_deref());
        if c.is_empty() {
            return Err(
                "kid is not in the key set (a live sidecar would refetch once)".to_string(),
            );
        }
        verify::verify_signature(&parsed, alg, c)
            .map(|_| c.len())
            .map_err(|r| r.description().to_string())
    });
    match signed {
        Ok(n) => {
            let _ = writeln!(
                out,
                "  {} signature verifies ({n} candidate key(s))",
                mark(true)
            );
        }
        Err(e) => {
            let _ = writeln!(out, "  {} signature: {e}", mark(false));
            return;
        }
    }
    let now = now_unix() as f64;
    let leeway = provider.claims.leeway as f64;
    let num = |n: &str| parsed.claims.get(n).and_then(serde_json::Value::as_f64);
    // The verdict on each date comes from the verifier's own check, so the explanation
    // cannot call a date good that the decision refuses.
    let claims_ok = verify::check_claims(&parsed, &provider.claims, now_unix());
    let date_refused = |claim: &str| matches!(&claims_ok, Err(crate::error::Reject::DateOutOfRange(m)) if m.starts_with(claim));
    match num("exp") {
        Some(exp) if date_refused("exp") => {
            let _ = writeln!(out, "  {} exp {exp} is not a usable date", mark(false));
        }
        Some(exp) => {
            let _ = writeln!(
                out,
                "  {} exp {exp} is {:+.0} s from now (leeway {leeway} s)",
                mark(now < exp + leeway),
                exp - now
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  {} exp absent (required: {})",
                mark(!provider.claims.require_exp),
                provider.claims.require_exp
            );
        }
    }
    if let Some(nbf) = num("nbf") {
        let _ = writeln!(
            out,
            "  {} nbf {nbf} is {:+.0} s from now",
            mark(now + leeway >= nbf && !date_refused("nbf")),
            nbf - now
        );
    }
    if let Some(max) = provider.claims.max_lifetime {
        let _ = writeln!(
            out,
            "  {} lifetime at most {max} s (max_token_lifetime)",
            mark(claims_ok != Err(crate::error::Reject::LifetimeTooLong))
        );
    }
    let aud = parsed
        .claims
        .get(&provider.claims.audience_claim)
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let _ = writeln!(
        out,
        "  {} {} = {aud} (accepted: {:?})",
        mark(!matches!(claims_ok, Err(crate::error::Reject::BadAudience))),
        provider.claims.audience_claim,
        provider.claims.audiences
    );
    if !provider.claims.required_scopes.is_empty() {
        let _ = writeln!(
            out,
            "  {} scopes {:?} (provider requires {:?})",
            mark(claims_ok != Err(crate::error::Reject::InsufficientScope)),
            verify::scopes(&parsed.claims),
            provider.claims.required_scopes
        );
    }
    let _ = writeln!(
        out,
        "  {} provider claim rules: {}",
        mark(claims_ok.is_ok()),
        claims_ok
            .as_ref()
            .map_or_else(|r| r.description().to_string(), |_| "all hold".into())
    );
    let req = match &rule.access {
        Access::Anonymous(r) | Access::Authenticated(r) => r.as_ref(),
        _ => None,
    };
    if let (Some(req), Ok(())) = (req, &claims_ok) {
        if let Ok(v) = auth.verify(token, now_unix()) {
            let mut lines = Vec::new();
            req.explain(&v, &mut lines);
            let _ = writeln!(out, "\nrule requirements ({}):", rule.name);
            for (text, ok) in lines {
                let _ = writeln!(out, "  {} {text}", mark(ok));
            }
        }
    }
}
