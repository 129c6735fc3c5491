//! `jwks-sidecar explain`: why a request would be allowed or refused, step by step, without
//! starting any listener. The verdict at the end comes from the same `Policy::decide` the
//! listeners run; the steps before it show each check with its inputs.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::{now_unix, Authenticator};
use crate::jose::Trace;
use crate::jwks::source::{fetch_key_set, fetcher_for, ConfiguredSource};
use crate::jwks::{KeySet, ProviderKeys};
use crate::metrics::Metrics;
use crate::plan::{Plan, ProviderPlan};
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
    pp: &ProviderPlan,
    offline: Option<&Path>,
) -> Result<usize, String> {
    let (set, _) = match offline {
        Some(file) => {
            let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            KeySet::parse(&bytes, &keys.policy).map_err(|e| e.0)?
        }
        None => {
            let fetcher = fetcher_for(&pp.keys, &crate::jwks::fetch::Fetcher::new())?;
            let source = ConfiguredSource::new(fetcher, &pp.keys, None);
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
pub async fn explain(plan: &Plan, req: &ExplainRequest) -> Result<String, String> {
    let config = &plan.config;
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
    let auth = Arc::new(Authenticator::new(plan, metrics));
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
    for (p, pp) in auth.providers().iter().zip(&plan.providers) {
        match load_keys(&p.keys, pp, req.offline.as_deref()).await {
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
    let policy = Policy::new(plan, auth.clone());

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
    let mut trace = Trace::default();
    let verified = auth.verify_observed(token, now_unix(), &mut trace);
    for step in &trace.steps {
        let _ = writeln!(out, "  {} {}", mark(step.ok), step.detail);
    }
    let req = match &rule.access {
        Access::Anonymous(r) | Access::Authenticated(r) => r.as_ref(),
        _ => None,
    };
    if let (Some(req), Ok(v)) = (req, &verified) {
        let mut lines = Vec::new();
        req.explain(v, &mut lines);
        let _ = writeln!(out, "\nrule requirements ({}):", rule.name);
        for (text, ok) in lines {
            let _ = writeln!(out, "  {} {text}", mark(ok));
        }
    }
}
