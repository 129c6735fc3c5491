//! Step-up authentication (RFC 9470): a rule's `require.acr` and `require.max_age`, checked
//! on an authenticated token before the rule's other requirements; a failure is a 401
//! `insufficient_user_authentication` whose challenge names `acr_values` and `max_age`.

use crate::auth::verify::numeric_date;
use crate::config::RequireConfig;

/// A rule's authentication-strength requirement (RFC 9470).
#[derive(Debug, Clone)]
pub struct StepUp {
    /// Accepted `acr` values (empty: any).
    pub acr: Vec<String>,
    /// Longest time since `auth_time`, in seconds.
    pub max_age: Option<u64>,
    /// The challenge parameters: `acr_values="..."` and `max_age=N`.
    pub params: std::sync::Arc<str>,
}

impl StepUp {
    pub(super) fn compile(r: &RequireConfig) -> Option<StepUp> {
        if r.acr.is_empty() && r.max_age.is_none() {
            return None;
        }
        let max_age = r.max_age.map(|d| d.as_secs());
        let mut params = Vec::new();
        if !r.acr.is_empty() {
            params.push(format!("acr_values=\"{}\"", r.acr.join(" ")));
        }
        if let Some(m) = max_age {
            params.push(format!("max_age={m}"));
        }
        Some(StepUp {
            acr: r.acr.clone(),
            max_age,
            params: params.join(", ").into(),
        })
    }

    /// Whether the verified claims meet it at time `now` (Unix seconds), allowing `leeway`
    /// seconds of clock skew on `auth_time`. An `auth_time` that is not a NumericDate, or lies
    /// in the future beyond the leeway, never passes (never read as "recent").
    pub fn holds(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
        leeway: u64,
    ) -> bool {
        let acr_ok = self.acr.is_empty()
            || claims
                .get("acr")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|a| self.acr.iter().any(|x| x == a));
        let age_ok = self.max_age.is_none_or(|max| {
            let (now, leeway) = (now as f64, leeway as f64);
            // Absent, not a number, or outside years 1..9999: never "recent".
            numeric_date(claims, "auth_time", "", "")
                .ok()
                .flatten()
                .is_some_and(|t| t <= now + leeway && now - t <= max as f64 + leeway)
        });
        acr_ok && age_ok
    }
}

/// RFC 6750 section 3 `scope-token`: `%x21 / %x23-5B / %x5D-7E`, at least one.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// Step-up options are only meaningful for the whole rule, not inside `any`/`all`, and a
/// `max_age` under a second cannot be checked against whole-second `auth_time`s.
pub(super) fn nested_step_up(r: &RequireConfig, at: &str, errs: &mut Vec<String>) {
    if r.max_age.is_some_and(|d| d.as_secs() == 0) {
        errs.push(format!("{at}.max_age must be at least 1s"));
    }
    for (kind, list) in [("any", &r.any), ("all", &r.all)] {
        for (i, x) in list.iter().enumerate() {
            let here = format!("{at}.{kind}[{i}]");
            if !x.acr.is_empty() || x.max_age.is_some() {
                errs.push(format!("{here}: acr and max_age apply to the whole rule; put them at the top level of require"));
            }
            nested_step_up(x, &here, errs);
        }
    }
}
