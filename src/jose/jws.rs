//! Compact JWS: strict parsing and signature verification, as pure functions over the token
//! text and candidate keys.
//!
//! The token is parsed exactly once (strict base64url without padding, three segments, JSON
//! objects with distinct members, no `crit`). The algorithm must be on the provider's
//! allow-list (the `Alg` type cannot name `none` or HMAC), and the signature is checked with
//! the keys' pre-parsed aws-lc verifiers before any claim is read as trusted. The
//! unverified `iss` read here is used only to pick the provider (see `peek_issuer`).

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::{Alg, Key};
use crate::error::Reject;

/// The JOSE header members this verifier looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct JoseHeader {
    /// `alg` as written.
    pub alg: String,
    /// `kid`, if present.
    pub kid: Option<String>,
    /// `typ`, if present.
    pub typ: Option<String>,
    /// `jwk`, if present: only DPoP proofs use it (an access token's embedded key is never
    /// trusted).
    pub jwk: Option<Value>,
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
        header: JoseHeader {
            alg,
            kid,
            typ,
            jwk: header.get("jwk").cloned(),
        },
        claims,
    })
}

/// The unverified `iss`, used only to choose the provider (never trusted beyond that).
pub fn peek_issuer<'t>(token: &'t ParsedToken<'_>) -> Option<&'t str> {
    token.claims.get("iss").and_then(Value::as_str)
}

/// Checks `alg` against the allow-list; `none`, HMAC and unknown names never pass.
pub fn check_alg(token: &ParsedToken<'_>, allowed: &[Alg]) -> Result<Alg, Reject> {
    match Alg::parse(&token.header.alg) {
        Some(a) if allowed.contains(&a) => Ok(a),
        _ => Err(Reject::AlgNotAllowed),
    }
}

/// Verifies the signature against the candidate keys that fit `alg`; returns the key used.
pub fn verify_signature<'k>(
    token: &ParsedToken<'_>,
    alg: Alg,
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

/// A token with this header and claims and a junk signature (unit tests of parsing and claim
/// checks, where the signature is not looked at).
#[cfg(test)]
pub(crate) fn tok(header: Value, claims: Value) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let all = Alg::ALL.to_vec();
        for alg in [
            "none", "None", "NONE", "nOnE", "HS256", "HS384", "HS512", "rs256", "RSA-OAEP",
        ] {
            let t = tok(json!({"alg": alg}), json!({}));
            let p = parse(&t).expect("parses");
            assert_eq!(check_alg(&p, &all), Err(Reject::AlgNotAllowed), "{alg}");
        }
    }
}
