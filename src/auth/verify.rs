//! Token parsing and verification: pure functions over the token text, the candidate keys
//! and the provider's policy.
//!
//! The compact JWS is parsed exactly once (strict base64url, no padding, three segments,
//! JSON objects). The signature is checked before any claim, with `jsonwebtoken`'s
//! aws-lc-rs backend; then time, audience, type, required claims and scopes. The unverified
//! `iss` read here is used only to pick the provider (see `peek_issuer`).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::error::Reject;
use crate::jwks::{parse_alg, Key};

/// The JOSE header members this verifier looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct JoseHeader {
    /// `alg` as written.
    pub alg: String,
    /// `kid`, if present.
    pub kid: Option<String>,
    /// `typ`, if present.
    pub typ: Option<String>,
}

/// A syntactically valid compact JWS with decoded header and claims (not yet trusted).
#[derive(Debug)]
pub struct ParsedToken<'a> {
    /// `header.payload`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url payload segment (forwarded as-is in the payload header).
    pub payload_b64: &'a str,
    /// The base64url signature segment.
    pub signature_b64: &'a str,
    /// Decoded header.
    pub header: JoseHeader,
    /// Decoded claims.
    pub claims: Map<String, Value>,
}

/// A JSON object whose members are all distinct. Parsers disagree on duplicates (first
/// wins, last wins, error), so a token with `{"alg":"none","alg":"RS256"}` or two `sub`
/// members could mean different things to the verifier and to the app: refuse it.
struct StrictObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for StrictObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if map.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                    map.insert(k, v);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(V)
    }
}

fn strict_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<StrictObject>(bytes)
        .ok()
        .map(|o| o.0)
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses `header.payload.signature`. Never panics; everything odd is `Malformed`.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, Reject> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reject::Malformed(
            "token is not three dot-separated segments (JWE and nested tokens are not accepted)",
        ));
    };
    if h.is_empty()
        || p.is_empty()
        || s.is_empty()
        || !is_b64url(h)
        || !is_b64url(p)
        || !is_b64url(s)
    {
        return Err(Reject::Malformed("token segment is empty or not base64url"));
    }
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| Reject::Malformed("token header is not base64url"))?;
    let header = strict_object(&header_bytes).ok_or(Reject::Malformed(
        "token header is not a JSON object with distinct members",
    ))?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Reject::Malformed("token header has no string alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Reject::Malformed("token kid is not a string")),
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => return Err(Reject::Malformed("token typ is not a string")),
    };
    // No JWS extension is implemented, so any `crit` (RFC 7515 4.1.11) must be refused.
    if header.contains_key("crit") {
        return Err(Reject::UnsupportedCrit);
    }
    let payload_bytes = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| Reject::Malformed("token payload is not base64url"))?;
    let claims = strict_object(&payload_bytes).ok_or(Reject::Malformed(
        "token payload is not a JSON object with distinct members",
    ))?;
    Ok(ParsedToken {
        signing_input: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature_b64: s,
        header: JoseHeader { alg, kid, typ },
        claims,
    })
}

/// The unverified `iss`, used only to choose the provider (never trusted beyond that).
pub fn peek_issuer<'t>(token: &'t ParsedToken<'_>) -> Option<&'t str> {
    token.claims.get("iss").and_then(Value::as_str)
}

/// Checks `alg` against the allow-list; `none`, HMAC and unknown names never pass.
pub fn check_alg(token: &ParsedToken<'_>, allowed: &[Algorithm]) -> Result<Algorithm, Reject> {
    match parse_alg(&token.header.alg) {
        Some(a) if allowed.contains(&a) => Ok(a),
        _ => Err(Reject::AlgNotAllowed),
    }
}

/// Verifies the signature against the candidate keys that fit `alg`; returns the key used.
pub fn verify_signature<'k>(
    token: &ParsedToken<'_>,
    alg: Algorithm,
    candidates: &'k [Arc<Key>],
) -> Result<&'k Arc<Key>, Reject> {
    let mut any_fit = false;
    let mut sig_buf = [0u8; 1024];
    let sig = match URL_SAFE_NO_PAD.decode_slice(token.signature_b64, &mut sig_buf) {
        Ok(n) => &sig_buf[..n],
        Err(_) => return Err(Reject::BadSignature),
    };
    for key in candidates.iter().filter(|k| k.accepts(alg)) {
        any_fit = true;
        if key
            .verifier
            .verify(alg, token.signing_input.as_bytes(), sig)
        {
            return Ok(key);
        }
    }
    Err(if any_fit {
        Reject::BadSignature
    } else {
        Reject::KeyMismatch
    })
}

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
fn numeric_date(
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
    let claims = &token.claims;
    let now = now as f64;
    let leeway = policy.leeway as f64;
    let exp = numeric_date(
        claims,
        "exp",
        "exp must be a number",
        "exp is not a date between the years 1 and 9999",
    )?;
    let nbf = numeric_date(
        claims,
        "nbf",
        "nbf must be a number",
        "nbf is not a date between the years 1 and 9999",
    )?;
    let iat = numeric_date(
        claims,
        "iat",
        "iat must be a number",
        "iat is not a date between the years 1 and 9999",
    )?;
    match exp {
        Some(exp) if now >= exp + leeway => return Err(Reject::Expired),
        None if policy.require_exp => return Err(Reject::MissingClaim),
        _ => {}
    }
    if let Some(nbf) = nbf {
        if now + leeway < nbf {
            return Err(Reject::NotYetValid);
        }
    }
    if let Some(max) = policy.max_lifetime {
        let max = max as f64;
        let Some(exp) = exp else {
            return Err(Reject::LifetimeTooLong);
        };
        if exp - now > max + leeway || iat.is_some_and(|iat| exp - iat > max) {
            return Err(Reject::LifetimeTooLong);
        }
    }
    let aud_ok = match claims.get(&policy.audience_claim) {
        Some(Value::String(a)) => policy.audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list.iter().any(|v| {
            v.as_str()
                .is_some_and(|a| policy.audiences.iter().any(|x| x == a))
        }),
        _ => false,
    };
    if !aud_ok {
        return Err(Reject::BadAudience);
    }
    if !policy.typ.is_empty() {
        let typ = token.header.typ.as_deref().map(normalize_typ);
        if !typ.is_some_and(|t| policy.typ.contains(&t)) {
            return Err(Reject::BadType);
        }
    }
    for c in &policy.required_claims {
        if claims.get(c).is_none_or(Value::is_null) {
            return Err(Reject::MissingClaim);
        }
    }
    if !policy.required_scopes.is_empty() {
        let granted = scopes(claims);
        if !policy
            .required_scopes
            .iter()
            .all(|s| granted.contains(&s.as_str()))
        {
            return Err(Reject::InsufficientScope);
        }
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
    use serde_json::json;

    fn tok(header: Value, claims: Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            audiences: vec!["api".into()],
            audience_claim: "aud".into(),
            leeway: 60,
            require_exp: true,
            max_lifetime: None,
            typ: vec![],
            required_claims: vec![],
            required_scopes: vec![],
        }
    }

    #[test]
    fn malformed_tokens_are_rejected_not_panicking() {
        let good_h = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        let good_p = URL_SAFE_NO_PAD.encode(r#"{"a":1}"#);
        let cases = [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            "a.b.c.d.e".into(),
            format!("{good_h}.{good_p}."),
            format!("{good_h}=.{good_p}.c2ln"),
            format!("{good_h}.{good_p}.c2ln=="),
            format!("{}.{good_p}.c2ln", URL_SAFE_NO_PAD.encode("[1,2]")),
            format!("{good_h}.{}.c2ln", URL_SAFE_NO_PAD.encode("\"str\"")),
            format!("{good_h}.{}.c2ln", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{good_p}.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":5}"#)),
            format!(
                "{}.{good_p}.c2ln",
                URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":7}"#)
            ),
            format!("{good_h}.{good_p}.c2l+"),
        ];
        for c in cases {
            assert!(
                matches!(parse(&c), Err(Reject::Malformed(_))),
                "{c:?} -> {:?}",
                parse(&c).err()
            );
        }
    }

    #[test]
    fn duplicate_members_are_refused() {
        let h = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let p = URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#);
        for header in [
            r#"{"alg":"none","alg":"RS256"}"#,
            r#"{"alg":"RS256","kid":"a","kid":"b"}"#,
        ] {
            assert!(
                matches!(
                    parse(&format!("{}.{p}.c2ln", h(header))),
                    Err(Reject::Malformed(_))
                ),
                "{header}"
            );
        }
        let dup = URL_SAFE_NO_PAD.encode(r#"{"sub":"a","sub":"admin"}"#);
        assert!(matches!(
            parse(&format!("{}.{dup}.c2ln", h(r#"{"alg":"RS256"}"#))),
            Err(Reject::Malformed(_))
        ));
        // Nested objects may repeat names across levels.
        let nested = URL_SAFE_NO_PAD.encode(r#"{"a":{"a":1},"b":{"a":2}}"#);
        assert!(parse(&format!("{}.{nested}.c2ln", h(r#"{"alg":"RS256"}"#))).is_ok());
    }

    #[test]
    fn crit_is_refused() {
        let t = tok(
            json!({"alg": "RS256", "crit": ["b64"], "b64": false}),
            json!({}),
        );
        assert_eq!(parse(&t).err(), Some(Reject::UnsupportedCrit));
    }

    #[test]
    fn none_and_hmac_never_allowed() {
        let all: Vec<Algorithm> = crate::config::SUPPORTED_ALGORITHMS
            .iter()
            .filter_map(|a| parse_alg(a))
            .collect();
        for alg in [
            "none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "rs256", "RSA-OAEP",
        ] {
            let t = tok(json!({"alg": alg}), json!({}));
            let p = parse(&t).expect("parses");
            assert_eq!(check_alg(&p, &all), Err(Reject::AlgNotAllowed), "{alg}");
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
