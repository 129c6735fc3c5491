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

/// A request as given on the command line.
struct Parsed<'a> {
    method: &'a str,
    target: &'a str,
    raw_path: String,
    query: Option<String>,
    headers: HeaderMap,
    host: Option<String>,
}

fn parse_request(req: &ExplainRequest) -> Result<Parsed<'_>, String> {
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
    Ok(Parsed {
        method,
        target,
        raw_path,
        query,
        headers,
        host,
    })
}

/// Explains one request; returns the report.
pub async fn explain(plan: &Plan, req: &ExplainRequest) -> Result<String, String> {
    crate::install_crypto_provider();
    let r = parse_request(req)?;
    let mut out = String::new();
    let auth = Arc::new(plan.authenticator(Arc::new(Metrics::new())));
    let _ = writeln!(out, "request: {} {}", r.method, r.target);
    explain_keys(&mut out, plan, &auth, req.offline.as_deref()).await;
    let policy = Policy::new(plan, auth.clone());
    // The token's trace runs its own DPoP replay cache: the decision below must not see the
    // proof as replayed by the explanation.
    let mut tracing_policy = Policy::new(plan, auth.clone());
    if let Ok(d) = crate::plan::dpop(&plan.config.dpop) {
        tracing_policy.dpop = Arc::new(d);
    }
    explain_route(&mut out, &tracing_policy, &r);
    explain_decision(&mut out, &policy, &r).await;
    Ok(out)
}

async fn explain_keys(out: &mut String, plan: &Plan, auth: &Authenticator, offline: Option<&Path>) {
    let from = if offline.is_some() {
        "offline file"
    } else {
        "fetched now"
    };
    let _ = writeln!(out, "\nkeys ({from}):");
    for (p, pp) in auth.providers().iter().zip(&plan.providers) {
        match load_keys(&p.keys, pp, offline).await {
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
}

/// The path, the rule that matches it, and (when the rule needs one) the token.
fn explain_route(out: &mut String, policy: &Policy, r: &Parsed<'_>) {
    let _ = writeln!(out, "\npath:");
    let path = match crate::path::normalize_with(&r.raw_path, &policy.path_options) {
        Ok(p) => {
            let _ = writeln!(out, "  {:?} normalises to {p:?}", r.raw_path);
            p
        }
        Err(e) => {
            let _ = writeln!(out, "  {:?} is refused: {}", r.raw_path, e.description());
            return;
        }
    };
    let _ = writeln!(out, "\nrules:");
    let (rule, trace) = policy
        .rules
        .find_explained(r.method, r.host.as_deref(), &path);
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
        Access::Public => "public: no token needed",
        Access::Deny => "deny",
        Access::Anonymous(_) => "anonymous allowed: a token is verified if present",
        Access::Authenticated(_) => "a valid token is required",
    };
    let _ = writeln!(out, "  -> {access}");
    if !matches!(rule.access, Access::Public | Access::Deny) {
        explain_token(out, policy, r, rule);
    }
}

/// The verdict of `Policy::decide` itself, and what the app or the client would see.
async fn explain_decision(out: &mut String, policy: &Policy, r: &Parsed<'_>) {
    let spoofed = policy.spoofed_header_names("explain", &r.headers);
    let decision = policy
        .decide(
            r.method,
            r.host.as_deref(),
            &r.raw_path,
            r.query.as_deref(),
            &r.headers,
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
            let Some(v) = v else {
                let _ = writeln!(out, "  no identity headers (public or anonymous)");
                return;
            };
            for (k, val) in policy.identity_headers(v) {
                if let Some(a) = policy.assertion.as_ref().filter(|a| a.header == k) {
                    let _ = writeln!(
                        out,
                        "  header {k}: {}",
                        a.describe(val.to_str().unwrap_or(""))
                    );
                    continue;
                }
                let _ = writeln!(
                    out,
                    "  header {k}: {}",
                    crate::telemetry::truncate(val.to_str().unwrap_or("?"), 120)
                );
            }
        }
        Err(f) => {
            let _ = writeln!(out, "  status: {}", f.reject.status());
            if let Some(w) = policy.challenge(&f.reject, decision.params()) {
                let _ = writeln!(out, "  WWW-Authenticate: {w}");
            }
            let _ = writeln!(out, "  body: {}", f.reject.body());
        }
    }
}

fn explain_token(out: &mut String, policy: &Policy, r: &Parsed<'_>, rule: &crate::rules::Rule) {
    let auth = &policy.auth;
    let _ = writeln!(out, "\ntoken:");
    let (token, scheme) = match auth.extract(&r.headers, r.query.as_deref()) {
        Ok(Some((t, scheme))) => {
            let name = match scheme {
                crate::auth::extract::Scheme::Dpop => "DPoP",
                crate::auth::extract::Scheme::Bearer => "Bearer",
            };
            let _ = writeln!(out, "  found ({} bytes, {name} scheme)", t.len());
            (t, scheme)
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
    let now = now_unix();
    let verified = auth.verify_observed(token, now, &mut trace);
    if let Ok(v) = &verified {
        let req = crate::policy::Request {
            method: r.method,
            scheme: None,
            host: r.host.as_deref(),
            raw_path: &r.raw_path,
            query: r.query.as_deref(),
            headers: &r.headers,
            client_cert: None,
        };
        let _ = policy.constrain(rule, v, token, scheme, &req, now, &mut trace);
    }
    for step in &trace.steps {
        let _ = writeln!(out, "  {} {}", mark(step.ok), step.detail);
    }
    let req = match &rule.access {
        Access::Anonymous(r) | Access::Authenticated(r) => r.as_ref(),
        _ => None,
    };
    let Ok(v) = &verified else {
        return;
    };
    if let Some(s) = &rule.step_up {
        let claim = |n: &str| v.info.claims.get(n).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "\nstep-up ({}):\n  {} acr {} auth_time {} ({})",
            rule.name,
            mark(s.holds(&v.info.claims, now_unix(), v.provider.claims.leeway)),
            claim("acr"),
            claim("auth_time"),
            s.params
        );
    }
    if let Some(req) = req {
        let mut lines = Vec::new();
        req.explain(v, &mut lines);
        let _ = writeln!(out, "\nrule requirements ({}):", rule.name);
        for (text, ok) in lines {
            let _ = writeln!(out, "  {} {text}", mark(ok));
        }
    }
}
