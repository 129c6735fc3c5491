//! Claim checks of a provider's policy: pure functions over a parsed token's claims and the
//! time. Run only after the signature verified (see `jose::jws`): time (`exp`, `nbf`,
//! lifetime), audience, type, required claims, then scopes (403, last). Each check is
//! reported to an observer, which is how `explain` shows them.

use serde_json::{Map, Value};

use crate::error::Reject;
use crate::jose::jws::ParsedToken;
use crate::jose::{Check, Observer};

/// Claim rules of one provider.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// The claim holding the audience (`aud`, or `client_id` for Cognito access tokens).
    pub audience_claim: String,
    /// Tolerated clock skew in seconds.
    pub leeway: u64,
    /// `exp` must be present.
    pub require_exp: bool,
    /// Longest accepted lifetime in seconds: `exp` no further than this beyond now, nor
    /// beyond `iat` (then `exp` is required too). `None`: no bound.
    pub max_lifetime: Option<u64>,
    /// Accepted `typ` values, lower-cased without `application/` (empty: any).
    pub typ: Vec<String>,
    /// RFC 9068 JWT access-token profile.
    pub rfc9068: bool,
    /// Claims that must be present and not null.
    pub required_claims: Vec<String>,
    /// Scopes that must all be granted.
    pub required_scopes: Vec<String>,
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;
/// The earliest NumericDate accepted: 0001-01-01T00:00:00Z.
pub const MIN_NUMERIC_DATE: f64 = -62_135_596_800.0;

/// A NumericDate claim (RFC 7519 section 2): absent, or a finite number of seconds between
/// year 1 and year 9999. Anything else (`1e30`, integers past 2^64 that JSON parsing turns
/// into huge floats, strings) is refused, never read as "far future".
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
    wrong_type: &'static str,
    out_of_range: &'static str,
) -> Result<Option<f64>, Reject> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (MIN_NUMERIC_DATE..=MAX_NUMERIC_DATE).contains(&v) => {
                Ok(Some(v))
            }
            _ => Err(Reject::DateOutOfRange(out_of_range)),
        },
        Some(_) => Err(Reject::InvalidClaim(wrong_type)),
    }
}

/// Time, audience, type, required claims, then scopes (403 last, after authentication).
pub fn check_claims(token: &ParsedToken<'_>, policy: &ClaimPolicy, now: u64) -> Result<(), Reject> {
    check_claims_observed(token, policy, now, &mut ())
}

/// `check_claims`, reporting each check to `obs`.
pub fn check_claims_observed(
    token: &ParsedToken<'_>,
    policy: &ClaimPolicy,
    now: u64,
    obs: &mut impl Observer,
) -> Result<(), Reject> {
    check_time(&token.claims, policy, now as f64, obs)?;
    check_content(token, policy, obs)
}

/// Reports `result` as `check` and passes it on.
fn report(
    obs: &mut impl Observer,
    check: Check,
    result: Result<(), Reject>,
    detail: impl FnOnce() -> String,
) -> Result<(), Reject> {
    obs.step(check, result.is_ok(), detail);
    result
}

/// The three date claims, read as NumericDates (a bad one is reported against its claim).
fn dates(claims: &Map<String, Value>, obs: &mut impl Observer) -> Result<[Option<f64>; 3], Reject> {
    let mut out = [None; 3];
    for (i, (name, check)) in [
        ("exp", Check::Exp),
        ("nbf", Check::Nbf),
        ("iat", Check::Iat),
    ]
    .into_iter()
    .enumerate()
    {
        let (wrong_type, out_of_range) = match name {
            "exp" => (
                "exp must be a number",
                "exp is not a date between the years 1 and 9999",
            ),
            "nbf" => (
                "nbf must be a number",
                "nbf is not a date between the years 1 and 9999",
            ),
            _ => (
                "iat must be a number",
                "iat is not a date between the years 1 and 9999",
            ),
        };
        match numeric_date(claims, name, wrong_type, out_of_range) {
            Ok(v) => out[i] = v,
            Err(r) => {
                obs.step(check, false, || {
                    format!(
                        "{name} {} is not usable: {}",
                        claims.get(name).unwrap_or(&Value::Null),
                        r.description()
                    )
                });
                return Err(r);
            }
        }
    }
    Ok(out)
}

fn check_time(
    claims: &Map<String, Value>,
    policy: &ClaimPolicy,
    now: f64,
    obs: &mut impl Observer,
) -> Result<(), Reject> {
    let leeway = policy.leeway as f64;
    let [exp, nbf, iat] = dates(claims, obs)?;
    let exp_ok = match exp {
        Some(exp) if now >= exp + leeway => Err(Reject::Expired),
        None if policy.require_exp => Err(Reject::MissingClaim),
        _ => Ok(()),
    };
    report(obs, Check::Exp, exp_ok, || match exp {
        Some(exp) => format!(
            "exp {exp} is {:+.0} s from now (leeway {leeway} s)",
            exp - now
        ),
        None => format!("exp absent (required: {})", policy.require_exp),
    })?;
    if let Some(nbf) = nbf {
        let ok = if now + leeway < nbf {
            Err(Reject::NotYetValid)
        } else {
            Ok(())
        };
        report(obs, Check::Nbf, ok, || {
            format!("nbf {nbf} is {:+.0} s from now", nbf - now)
        })?;
    }
    if let Some(max) = policy.max_lifetime {
        let maxf = max as f64;
        let ok = match exp {
            Some(exp) if exp - now <= maxf + leeway && iat.is_none_or(|iat| exp - iat <= maxf) => {
                Ok(())
            }
            _ => Err(Reject::LifetimeTooLong),
        };
        report(obs, Check::Lifetime, ok, || {
            format!("lifetime at most {max} s (max_token_lifetime)")
        })?;
    }
    Ok(())
}

fn check_content(
    token: &ParsedToken<'_>,
    policy: &ClaimPolicy,
    obs: &mut impl Observer,
) -> Result<(), Reject> {
    let claims = &token.claims;
    if policy.rfc9068 {
        let profile = super::profile::rfc9068(token);
        let why = profile.as_ref().err().map(Reject::description);
        report(obs, Check::Type, profile, || match why {
            None => format!(
                "profile rfc9068: typ {:?}, iss exp aud sub client_id iat jti present",
                token.header.typ
            ),
            Some(why) => format!("profile rfc9068: typ {:?}: {why}", token.header.typ),
        })?;
    }
    let aud = claims.get(&policy.audience_claim);
    let aud_ok = match aud {
        Some(Value::String(a)) => policy.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list.iter().any(|v| {
            v.as_str()
                .is_some_and(|a| policy.audiences.iter().any(|x| x == a))
        }),
        _ => false,
    };
    let ok = if aud_ok {
        Ok(())
    } else {
        Err(Reject::BadAudience)
    };
    report(obs, Check::Audience, ok, || {
        format!(
            "{} = {} (accepted: {:?})",
            policy.audience_claim,
            aud.unwrap_or(&Value::Null),
            policy.audiences
        )
    })?;
    if !policy.typ.is_empty() {
        let typ = token.header.typ.as_deref().map(normalize_typ);
        let ok = match &typ {
            Some(t) if policy.typ.contains(t) => Ok(()),
            _ => Err(Reject::BadType),
        };
        report(obs, Check::Type, ok, || {
            format!("typ {:?} (accepted: {:?})", token.header.typ, policy.typ)
        })?;
    }
    check_required(token, policy, obs)
}

/// `required_claims`, then the provider's `required_scopes` (403, last).
fn check_required(
    token: &ParsedToken<'_>,
    policy: &ClaimPolicy,
    obs: &mut impl Observer,
) -> Result<(), Reject> {
    let claims = &token.claims;
    if !policy.required_claims.is_empty() {
        let missing: Vec<&str> = policy
            .required_claims
            .iter()
            .filter(|c| claims.get(c.as_str()).is_none_or(Value::is_null))
            .map(String::as_str)
            .collect();
        let ok = if missing.is_empty() {
            Ok(())
        } else {
            Err(Reject::MissingClaim)
        };
        report(obs, Check::RequiredClaims, ok, || {
            format!(
                "required claims {:?} (missing: {missing:?})",
                policy.required_claims
            )
        })?;
    }
    if !policy.required_scopes.is_empty() {
        let granted = scopes(claims);
        let ok = if policy
            .required_scopes
            .iter()
            .all(|s| granted.contains(&s.as_str()))
        {
            Ok(())
        } else {
            Err(Reject::InsufficientScope)
        };
        report(obs, Check::Scopes, ok, || {
            format!(
                "scopes {granted:?} (provider requires {:?})",
                policy.required_scopes
            )
        })?;
    }
    Ok(())
}

/// `typ` compared case-insensitively with the optional `application/` prefix removed.
pub fn normalize_typ(t: &str) -> String {
    let t = t.to_ascii_lowercase();
    t.strip_prefix("application/")
        .map(str::to_string)
        .unwrap_or(t)
}

/// Granted scopes from `scope` and `scp`, each a space-delimited string or an array.
pub fn scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|x| !x.is_empty())),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::jws::{parse, tok};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            audiences: vec!["api".into()],
            audience_claim: "aud".into(),
            leeway: 60,
            require_exp: true,
            max_lifetime: None,
            typ: vec![],
            rfc9068: false,
            required_claims: vec![],
            required_scopes: vec![],
        }
    }

    #[test]
    fn exp_boundary_with_leeway() {
        let p = policy();
        let now = 1_000_000u64;
        let t = |exp: f64| tok(json!({"alg": "RS256"}), json!({"aud": "api", "exp": exp}));
        // Valid while now < exp + leeway.
        assert_eq!(
            check_claims(&parse(&t(now as f64 - 59.0)).expect("p"), &p, now),
            Ok(())
        );
        assert_eq!(
            check_claims(&parse(&t(now as f64 - 60.0)).expect("p"), &p, now),
            Err(Reject::Expired)
        );
        assert_eq!(
            check_claims(&parse(&t(now as f64 - 61.0)).expect("p"), &p, now),
            Err(Reject::Expired)
        );
    }

    #[test]
    fn nbf_boundary_with_leeway() {
        let p = policy();
        let now = 1_000_000u64;
        let t = |nbf: u64| {
            tok(
                json!({"alg": "RS256"}),
                json!({"aud": "api", "exp": now + 600, "nbf": nbf}),
            )
        };
        assert_eq!(
            check_claims(&parse(&t(now + 60)).expect("p"), &p, now),
            Ok(())
        );
        assert_eq!(
            check_claims(&parse(&t(now + 61)).expect("p"), &p, now),
            Err(Reject::NotYetValid)
        );
    }

    /// A token whose payload is given as raw JSON text (numbers JSON cannot hold exactly).
    fn raw_tok(payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn numeric_dates_outside_years_1_to_9999_are_refused_not_far_future() {
        let p = policy();
        for claim in ["exp", "nbf", "iat"] {
            for v in [
                "1e30",
                "1.7976931348623157e308",
                "18446744073709551616",
                "18446744073709551615",
                "9223372036854775807",
                "253402300800",
                "-1e30",
                "-62135596801",
            ] {
                let payload = if claim == "exp" {
                    format!(r#"{{"aud":"api","exp":{v}}}"#)
                } else {
                    format!(r#"{{"aud":"api","exp":2000000000,"{claim}":{v}}}"#)
                };
                let t = raw_tok(&payload);
                let got = check_claims(&parse(&t).expect("p"), &p, 1_000_000);
                assert!(
                    matches!(got, Err(Reject::DateOutOfRange(m)) if m.starts_with(claim)),
                    "{claim}={v}: {got:?}"
                );
            }
        }
        // The last representable second is still a date.
        let t = raw_tok(r#"{"aud":"api","exp":253402300799}"#);
        assert_eq!(check_claims(&parse(&t).expect("p"), &p, 1_000_000), Ok(()));
    }

    #[test]
    fn max_lifetime_bounds_exp_from_now_and_from_iat() {
        let mut p = policy();
        p.max_lifetime = Some(3600);
        let now = 1_000_000u64;
        let t = |claims: Value| tok(json!({"alg": "RS256"}), claims);
        let check = |claims: Value| check_claims(&parse(&t(claims)).expect("p"), &p, now);
        assert_eq!(check(json!({"aud": "api", "exp": now + 3600})), Ok(()));
        // The leeway applies to "beyond now" (clock skew), not to exp - iat.
        assert_eq!(check(json!({"aud": "api", "exp": now + 3660})), Ok(()));
        assert_eq!(
            check(json!({"aud": "api", "exp": now + 3661})),
            Err(Reject::LifetimeTooLong)
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": now + 60, "iat": now - 3600})),
            Err(Reject::LifetimeTooLong)
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": now + 60, "iat": now - 3540})),
            Ok(())
        );
        let mut optional = p.clone();
        optional.require_exp = false;
        assert_eq!(
            check_claims(
                &parse(&t(json!({"aud": "api"}))).expect("p"),
                &optional,
                now
            ),
            Err(Reject::LifetimeTooLong)
        );
        assert_eq!(Reject::LifetimeTooLong.status(), 401);
        assert_eq!(Reject::LifetimeTooLong.error_code(), Some("invalid_token"));
    }

    #[test]
    fn registered_claims_with_wrong_types_rejected() {
        let p = policy();
        for claims in [
            json!({"aud": "api", "exp": "9999999999"}),
            json!({"aud": "api", "exp": 9999999999u64, "nbf": "0"}),
            json!({"aud": "api", "exp": 9999999999u64, "iat": [1]}),
        ] {
            let t = tok(json!({"alg": "RS256"}), claims.clone());
            assert!(
                matches!(
                    check_claims(&parse(&t).expect("p"), &p, 0),
                    Err(Reject::InvalidClaim(_))
                ),
                "{claims}"
            );
        }
        let no_exp = tok(json!({"alg": "RS256"}), json!({"aud": "api"}));
        assert_eq!(
            check_claims(&parse(&no_exp).expect("p"), &p, 0),
            Err(Reject::MissingClaim)
        );
    }

    #[test]
    fn audience_string_array_and_wrong_types() {
        let p = policy();
        let ok = |aud: Value| {
            let t = tok(
                json!({"alg": "RS256"}),
                json!({"aud": aud, "exp": 9999999999u64}),
            );
            check_claims(&parse(&t).expect("p"), &p, 0)
        };
        assert_eq!(ok(json!("api")), Ok(()));
        assert_eq!(ok(json!(["x", "api"])), Ok(()));
        assert_eq!(ok(json!("other")), Err(Reject::BadAudience));
        assert_eq!(ok(json!(5)), Err(Reject::BadAudience));
        assert_eq!(ok(json!([["api"]])), Err(Reject::BadAudience));
        assert_eq!(ok(json!({"api": true})), Err(Reject::BadAudience));
    }

    #[test]
    fn scopes_from_scope_or_scp_string_or_array() {
        let mut p = policy();
        p.required_scopes = vec!["read".into(), "write".into()];
        let check = |claims: Value| {
            let t = tok(json!({"alg": "RS256"}), claims);
            check_claims(&parse(&t).expect("p"), &p, 0)
        };
        let base = |k: &str, v: Value| json!({"aud": "api", "exp": 9999999999u64, k: v});
        assert_eq!(check(base("scope", json!("read write admin"))), Ok(()));
        assert_eq!(check(base("scp", json!(["write", "read"]))), Ok(()));
        assert_eq!(
            check(base("scope", json!("read"))),
            Err(Reject::InsufficientScope)
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": 9999999999u64})),
            Err(Reject::InsufficientScope)
        );
    }

    #[test]
    fn typ_allow_list_is_case_insensitive_with_optional_application_prefix() {
        let mut p = policy();
        p.typ = vec!["at+jwt".into()];
        let check = |typ: Option<&str>| {
            let h = match typ {
                Some(t) => json!({"alg": "RS256", "typ": t}),
                None => json!({"alg": "RS256"}),
            };
            check_claims(
                &parse(&tok(h, json!({"aud": "api", "exp": 9999999999u64}))).expect("p"),
                &p,
                0,
            )
        };
        assert_eq!(check(Some("at+jwt")), Ok(()));
        assert_eq!(check(Some("application/AT+JWT")), Ok(()));
        assert_eq!(check(Some("JWT")), Err(Reject::BadType));
        assert_eq!(check(None), Err(Reject::BadType));
    }
}
