//! Route rules, compiled once per config: match on method, host and the normalised path
//! (exact, segment-wise prefix, or an anchored regex), then public, anonymous-allowed, or
//! authenticated with requirements (providers, audiences, scopes, claim matchers, any/all).
//!
//! First match wins in file order; `proxy.public_paths` come first as public rules; requests
//! matching nothing get `[default_rule]`. Matching walks the rules once and never depends on
//! the number of providers. `explain` and `check` reuse the same code with reasons attached.

mod step_up;

use step_up::nested_step_up;
pub use step_up::{is_scope_token, StepUp};

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;
use serde_json::Value;

use crate::auth::claims::ClaimPath;
use crate::auth::verify::scopes;
use crate::auth::Verified;
use crate::config::{
    ClaimMatcherConfig, Config, DefaultAction, MatchConfig, RequireConfig, RuleConfig,
};

/// How a rule treats matching requests.
#[derive(Debug, Clone)]
pub enum Access {
    /// No token needed.
    Public,
    /// A token is verified if present; absent is allowed without identity.
    Anonymous(Option<Requirement>),
    /// A valid token is required, then the requirement (if any).
    Authenticated(Option<Requirement>),
    /// Refused (the default rule with `action = "deny"`).
    Deny,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct Matcher {
    methods: Vec<String>,
    host: Option<String>,
    path: PathMatch,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Name for logs and explanations.
    pub name: std::sync::Arc<str>,
    matcher: Matcher,
    /// What the rule requires.
    pub access: Access,
    /// Status when requirements fail (None: 403 insufficient_scope).
    pub deny_status: Option<u16>,
    /// The scopes its `require.scopes` lists, space-separated: the `scope` of its
    /// `WWW-Authenticate` challenges (RFC 6750 section 3).
    pub scope: Option<std::sync::Arc<str>>,
    /// Step-up requirements (RFC 9470), checked before the others.
    pub step_up: Option<StepUp>,
    /// Proof of possession required here (`None`: the provider's setting).
    pub sender_constraint: Option<crate::config::SenderConstraint>,
}

/// A compiled authorization requirement.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// Every part holds.
    All(Vec<Requirement>),
    /// At least one part holds.
    Any(Vec<Requirement>),
    /// The token's provider is one of these (a set: a rule may list a thousand tenants).
    Providers(BTreeSet<String>),
    /// The audience claim contains one of these.
    Audiences(Vec<String>),
    /// All these scopes are granted.
    Scopes(Vec<String>),
    /// A claim matcher.
    Claim(ClaimPath, ClaimMatcher),
}

/// A compiled claim matcher.
#[derive(Debug, Clone)]
pub enum ClaimMatcher {
    /// Equal (or, for arrays, containing).
    Equals(Value),
    /// One of (or, for arrays, containing one of).
    OneOf(Vec<Value>),
    /// An array containing the value.
    Contains(Value),
    /// Present or absent.
    Present(bool),
}

/// All rules of a config.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Rule,
}

/// Why a rule did or did not apply (for `explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTrace {
    /// Rule name.
    pub name: String,
    /// `None` when it matched, else why not.
    pub skipped: Option<String>,
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

/// The host without port, lower-cased.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        h.rsplit_once(':')
            .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
            .map_or(h, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

impl Matcher {
    fn why_not(&self, method: &str, host: Option<&str>, path: &str) -> Option<String> {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return Some(format!("method {method} not in {:?}", self.methods));
        }
        if let Some(want) = &self.host {
            let got = host.map(normalize_host).unwrap_or_default();
            if !host_matches(want, &got) {
                return Some(format!("host {got:?} does not match {want:?}"));
            }
        }
        match &self.path {
            PathMatch::Any => None,
            PathMatch::Exact(p) if p == path => None,
            PathMatch::Exact(p) => Some(format!("path {path:?} is not {p:?}")),
            PathMatch::Prefix(p) if crate::path::prefix_matches(path, p) => None,
            PathMatch::Prefix(p) => Some(format!("path {path:?} is not under {p:?}")),
            PathMatch::Regex(r) if r.is_match(path) => None,
            PathMatch::Regex(r) => Some(format!("path {path:?} does not match /{}/", r.as_str())),
        }
    }
}

fn compile_matcher(m: &MatchConfig, at: &str, errs: &mut Vec<String>) -> Matcher {
    let given = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        errs.push(format!(
            "{at}.match: give at most one of path, path_prefix, path_regex"
        ));
    }
    let path = if let Some(p) = &m.path {
        check_path(p, &format!("{at}.match.path"), errs);
        PathMatch::Exact(p.clone())
    } else if let Some(p) = &m.path_prefix {
        check_path(p, &format!("{at}.match.path_prefix"), errs);
        PathMatch::Prefix(p.clone())
    } else if let Some(r) = &m.path_regex {
        match Regex::new(&format!("^(?:{r})$")) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                errs.push(format!("{at}.match.path_regex = {r:?}: {e}"));
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };
    for method in &m.methods {
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            errs.push(format!(
                "{at}.match.methods: {method:?} is not an HTTP method"
            ));
        }
    }
    Matcher {
        methods: m.methods.iter().map(|s| s.to_ascii_uppercase()).collect(),
        host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        path,
    }
}

fn check_path(p: &str, at: &str, errs: &mut Vec<String>) {
    match crate::path::normalize_with(p, &crate::path::PathOptions::LENIENT) {
        Ok(n) if n == p => {}
        Ok(n) => errs.push(format!(
            "{at} = {p:?} is not normalised (requests are matched on {n:?}); write {n:?}"
        )),
        Err(_) => errs.push(format!("{at} = {p:?} is not a valid path")),
    }
}

fn compile_requirement(
    r: &RequireConfig,
    at: &str,
    providers: &BTreeSet<String>,
    errs: &mut Vec<String>,
) -> Requirement {
    let mut parts = Vec::new();
    if !r.providers.is_empty() {
        for p in &r.providers {
            if !providers.contains(p) {
                let have = if providers.len() <= 10 {
                    format!("{providers:?}")
                } else {
                    format!("{} providers", providers.len())
                };
                errs.push(format!(
                    "{at}.providers: {p:?} is not a configured provider (have {have})"
                ));
            }
        }
        parts.push(Requirement::Providers(
            r.providers.iter().cloned().collect(),
        ));
    }
    if !r.audiences.is_empty() {
        parts.push(Requirement::Audiences(r.audiences.clone()));
    }
    if !r.scopes.is_empty() {
        parts.push(Requirement::Scopes(r.scopes.clone()));
    }
    let claims: &BTreeMap<String, ClaimMatcherConfig> = &r.claims;
    for (name, m) in claims {
        let matcher = match m {
            ClaimMatcherConfig::Equals(v) => ClaimMatcher::Equals(v.clone()),
            ClaimMatcherConfig::OneOf(vs) => ClaimMatcher::OneOf(vs.clone()),
            ClaimMatcherConfig::Op(op) => {
                let n = [
                    op.equals.is_some(),
                    op.one_of.is_some(),
                    op.contains.is_some(),
                    op.present.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if n != 1 {
                    errs.push(format!("{at}.claims.{name:?}: give exactly one of equals, one_of, contains, present"));
                }
                if let Some(v) = &op.equals {
                    ClaimMatcher::Equals(v.clone())
                } else if let Some(v) = &op.one_of {
                    ClaimMatcher::OneOf(v.clone())
                } else if let Some(v) = &op.contains {
                    ClaimMatcher::Contains(v.clone())
                } else {
                    ClaimMatcher::Present(op.present.unwrap_or(true))
                }
            }
        };
        parts.push(Requirement::Claim(ClaimPath::new(name), matcher));
    }
    if !r.any.is_empty() {
        parts.push(Requirement::Any(
            r.any
                .iter()
                .enumerate()
                .map(|(i, x)| compile_requirement(x, &format!("{at}.any[{i}]"), providers, errs))
                .collect(),
        ));
    }
    for (i, x) in r.all.iter().enumerate() {
        parts.push(compile_requirement(
            x,
            &format!("{at}.all[{i}]"),
            providers,
            errs,
        ));
    }
    Requirement::All(parts)
}

fn audience_values(v: &Verified) -> Vec<&str> {
    match v.info.claims.get(&v.provider.claims.audience_claim) {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

impl ClaimMatcher {
    fn matches(&self, v: Option<&Value>) -> bool {
        let contains = |want: &Value| match v {
            Some(Value::Array(items)) => items.contains(want),
            Some(x) => x == want,
            None => false,
        };
        match self {
            ClaimMatcher::Present(p) => v.is_some_and(|x| !x.is_null()) == *p,
            ClaimMatcher::Equals(want) => contains(want),
            ClaimMatcher::OneOf(wants) => wants.iter().any(contains),
            ClaimMatcher::Contains(want) => {
                matches!(v, Some(Value::Array(items)) if items.contains(want))
            }
        }
    }
}

impl Requirement {
    /// Whether a verified token satisfies the requirement.
    pub fn check(&self, v: &Verified) -> bool {
        match self {
            Requirement::All(parts) => parts.iter().all(|p| p.check(v)),
            Requirement::Any(parts) => parts.iter().any(|p| p.check(v)),
            Requirement::Providers(ps) => ps.contains(&v.provider.name),
            Requirement::Audiences(auds) => {
                let have = audience_values(v);
                auds.iter().any(|a| have.contains(&a.as_str()))
            }
            Requirement::Scopes(want) => {
                let granted = scopes(&v.info.claims);
                want.iter().all(|s| granted.contains(&s.as_str()))
            }
            Requirement::Claim(path, m) => m.matches(path.lookup(&v.info.claims)),
        }
    }

    /// Each leaf condition with its result, for `explain`.
    pub fn explain(&self, v: &Verified, out: &mut Vec<(String, bool)>) {
        match self {
            Requirement::All(parts) => parts.iter().for_each(|p| p.explain(v, out)),
            Requirement::Any(parts) => {
                let ok = parts.iter().any(|p| p.check(v));
                out.push((format!("any of {} alternatives", parts.len()), ok));
                for p in parts {
                    let mut inner = Vec::new();
                    p.explain(v, &mut inner);
                    out.extend(inner.into_iter().map(|(t, b)| (format!("  | {t}"), b)));
                }
            }
            Requirement::Providers(ps) => out.push((
                format!("provider {:?} in {ps:?}", v.provider.name),
                self.check(v),
            )),
            Requirement::Audiences(a) => out.push((
                format!("audience {:?} has one of {a:?}", audience_values(v)),
                self.check(v),
            )),
            Requirement::Scopes(s) => out.push((
                format!("scopes {:?} include all of {s:?}", scopes(&v.info.claims)),
                self.check(v),
            )),
            Requirement::Claim(p, m) => out.push((
                format!(
                    "claim {:?} = {} matches {m:?}",
                    p.as_str(),
                    p.lookup(&v.info.claims)
                        .map_or("<absent>".to_string(), |x| x.to_string())
                ),
                self.check(v),
            )),
        }
    }
}

impl Rules {
    /// Compiles the rules of a config; all problems are reported together.
    pub fn compile(config: &Config) -> Result<Rules, Vec<String>> {
        let mut errs = Vec::new();
        let providers: BTreeSet<String> = config.providers.iter().map(|p| p.name.clone()).collect();
        let mut rules = Vec::new();
        for (i, p) in config.proxy.public_paths.iter().enumerate() {
            rules.push(Rule {
                name: format!("proxy.public_paths[{i}] {p:?}").into(),
                matcher: Matcher {
                    methods: Vec::new(),
                    host: None,
                    path: PathMatch::Prefix(p.clone()),
                },
                access: Access::Public,
                deny_status: None,
                scope: None,
                step_up: None,
                sender_constraint: None,
            });
        }
        for (i, r) in config.rules.iter().enumerate() {
            rules.push(compile_rule(r, i, &providers, &mut errs));
        }
        let default = Rule {
            name: "default_rule".into(),
            matcher: Matcher {
                methods: Vec::new(),
                host: None,
                path: PathMatch::Any,
            },
            access: match config.default_rule.action {
                DefaultAction::Authenticate => Access::Authenticated(None),
                DefaultAction::Deny => Access::Deny,
                DefaultAction::Public => Access::Public,
            },
            deny_status: None,
            scope: None,
            step_up: None,
            sender_constraint: None,
        };
        if errs.is_empty() {
            Ok(Rules { rules, default })
        } else {
            Err(errs)
        }
    }

    /// The first rule matching the request (or the default rule).
    pub fn find(&self, method: &str, host: Option<&str>, path: &str) -> &Rule {
        self.rules
            .iter()
            .find(|r| r.matcher.why_not(method, host, path).is_none())
            .unwrap_or(&self.default)
    }

    /// Like `find`, with the reason each earlier rule was skipped.
    pub fn find_explained(
        &self,
        method: &str,
        host: Option<&str>,
        path: &str,
    ) -> (&Rule, Vec<RuleTrace>) {
        let mut trace = Vec::new();
        for r in &self.rules {
            match r.matcher.why_not(method, host, path) {
                None => {
                    trace.push(RuleTrace {
                        name: r.name.to_string(),
                        skipped: None,
                    });
                    return (r, trace);
                }
                Some(why) => trace.push(RuleTrace {
                    name: r.name.to_string(),
                    skipped: Some(why),
                }),
            }
        }
        trace.push(RuleTrace {
            name: self.default.name.to_string(),
            skipped: None,
        });
        (&self.default, trace)
    }

    /// Rules (with names) that can never match because an earlier rule covers them.
    pub fn shadowed(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (j, later) in self.rules.iter().enumerate() {
            if let Some(earlier) = self.rules[..j]
                .iter()
                .find(|e| covers(&e.matcher, &later.matcher))
            {
                out.push((later.name.to_string(), earlier.name.to_string()));
            }
        }
        out
    }

    /// Human-readable lines, one per rule, for `check`.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .chain(std::iter::once(&self.default))
            .map(|r| {
                let m = &r.matcher;
                let path = match &m.path {
                    PathMatch::Any => "any path".to_string(),
                    PathMatch::Exact(p) => format!("path = {p}"),
                    PathMatch::Prefix(p) => format!("path under {p}"),
                    PathMatch::Regex(re) => format!("path ~ /{}/", re.as_str()),
                };
                let methods = if m.methods.is_empty() {
                    "any method".into()
                } else {
                    m.methods.join(",")
                };
                let host = m.host.clone().unwrap_or_else(|| "any host".into());
                let access = match &r.access {
                    Access::Public => "public".to_string(),
                    Access::Deny => "deny".to_string(),
                    Access::Anonymous(req) => format!(
                        "anonymous allowed{}",
                        if req.is_some() { ", requirements" } else { "" }
                    ),
                    Access::Authenticated(req) => format!(
                        "authenticated{}",
                        if req.is_some() { ", requirements" } else { "" }
                    ),
                };
                format!("{}: {methods}, {host}, {path} -> {access}", r.name)
            })
            .collect()
    }
}

fn compile_rule(
    r: &RuleConfig,
    i: usize,
    providers: &BTreeSet<String>,
    errs: &mut Vec<String>,
) -> Rule {
    let at = format!("rules[{i}]");
    let name = r.name.clone().unwrap_or_else(|| at.clone());
    if r.public && (r.allow_anonymous || r.require.is_some()) {
        errs.push(format!(
            "{at} ({name}): public = true cannot be combined with allow_anonymous or require"
        ));
    }
    if let Some(s) = r.deny_status {
        if !(400..=599).contains(&s) {
            errs.push(format!("{at}.deny_status = {s}: use a 4xx or 5xx status"));
        }
    }
    let matcher = compile_matcher(&r.matches, &at, errs);
    let req = r
        .require
        .as_ref()
        .map(|q| compile_requirement(q, &format!("{at}.require"), providers, errs));
    let access = if r.public {
        Access::Public
    } else if r.allow_anonymous {
        Access::Anonymous(req)
    } else {
        Access::Authenticated(req)
    };
    let scopes = r.require.as_ref().map(|q| q.scopes.join(" "));
    if let Some(q) = &r.require {
        nested_step_up(q, &format!("{at}.require"), errs);
        // They are quoted into WWW-Authenticate: RFC 6750 scope-tokens only.
        for (key, values) in [("scopes", &q.scopes), ("acr", &q.acr)] {
            for v in values.iter().filter(|v| !is_scope_token(v)) {
                errs.push(format!("{at}.require.{key}: {v:?} must be printable ASCII without spaces, '\"' or '\\' (RFC 6750 scope-token)"));
            }
        }
    }
    Rule {
        name: name.into(),
        matcher,
        access,
        deny_status: r.deny_status,
        scope: scopes.filter(|s| !s.is_empty()).map(Into::into),
        step_up: r.require.as_ref().and_then(StepUp::compile),
        sender_constraint: r.sender_constraint,
    }
}

/// Whether every request matching `b` also matches `a` (conservative: false when unsure).
fn covers(a: &Matcher, b: &Matcher) -> bool {
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let host = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(x), Some(y)) => x == y,
        (Some(_), None) => false,
    };
    let path = match (&a.path, &b.path) {
        (PathMatch::Any, _) => true,
        (PathMatch::Prefix(p), PathMatch::Prefix(q)) => crate::path::prefix_matches(q, p),
        (PathMatch::Prefix(p), PathMatch::Exact(q)) => crate::path::prefix_matches(q, p),
        (PathMatch::Exact(p), PathMatch::Exact(q)) => p == q,
        _ => false,
    };
    methods && host && path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert!(host_matches("api.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "evilexample.com"));
        assert_eq!(normalize_host("API.Example.com:8443"), "api.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
