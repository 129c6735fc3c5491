//! The JWT access-token profile (RFC 9068), per provider with `profile = "rfc9068"`: `typ`
//! `at+jwt` and the profile's claims; a token meant for a client instead (an OpenID Connect
//! ID token) is refused with a reason that says so.

use serde_json::Value;

use super::verify::normalize_typ;
use crate::error::Reject;
use crate::jose::jws::ParsedToken;

/// RFC 9068 (JWT access tokens): a token that looks meant for a client (OpenID Connect ID
/// token members, or an audience that is its own client) is named as an ID token; otherwise
/// `typ` must be `at+jwt` and the profile's claims present.
pub fn rfc9068(token: &ParsedToken<'_>) -> Result<(), Reject> {
    let claims = &token.claims;
    let id_token_member = ["nonce", "at_hash", "c_hash", "s_hash"]
        .iter()
        .any(|m| claims.contains_key(*m));
    let client = claims
        .get("azp")
        .or_else(|| claims.get("client_id"))
        .and_then(Value::as_str);
    let aud_is_client = client.is_some_and(|c| match claims.get("aud") {
        Some(Value::String(a)) => a == c,
        Some(Value::Array(list)) => list.len() == 1 && list[0].as_str() == Some(c),
        _ => false,
    });
    // An ID token from a plain code flow may carry none of those (oidc-provider's is just
    // iss, sub, aud, exp, iat): neither `client_id` (which RFC 9068 requires of access
    // tokens) nor a scope (which ID tokens never carry) also names it.
    let bare_identity = !claims.contains_key("client_id")
        && !claims.contains_key("scope")
        && !claims.contains_key("scp");
    // `typ` decides; the ID-token signs only name the refusal of a token without it (an
    // `at+jwt` token whose audience happens to be its own client is still an access token).
    if token.header.typ.as_deref().map(normalize_typ).as_deref() != Some("at+jwt") {
        return Err(if id_token_member || aud_is_client || bare_identity {
            Reject::IdToken
        } else {
            Reject::BadType
        });
    }
    let required = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"];
    if required
        .iter()
        .any(|c| claims.get(*c).is_none_or(Value::is_null))
    {
        return Err(Reject::MissingClaim);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::verify::{check_claims, ClaimPolicy};
    use crate::jose::jws::{parse, tok};
    use serde_json::json;

    fn policy() -> ClaimPolicy {
        ClaimPolicy {
            audiences: vec!["https://api".into()],
            audience_claim: "aud".into(),
            leeway: 60,
            require_exp: true,
            max_lifetime: None,
            typ: vec![],
            rfc9068: true,
            required_claims: vec![],
            required_scopes: vec![],
        }
    }

    fn access_token() -> Value {
        json!({"iss": "https://as", "exp": 2_000_000_000u64, "aud": "https://api", "sub": "u",
            "client_id": "app", "iat": 1_000_000_000u64, "jti": "j1"})
    }

    fn check(typ: Option<&str>, claims: Value) -> Result<(), Reject> {
        let header = match typ {
            Some(t) => json!({"alg": "RS256", "typ": t}),
            None => json!({"alg": "RS256"}),
        };
        check_claims(
            &parse(&tok(header, claims)).expect("parses"),
            &policy(),
            1_500_000_000,
        )
    }

    #[test]
    fn rfc9068_access_tokens_pass_and_id_tokens_are_named() {
        assert_eq!(check(Some("at+jwt"), access_token()), Ok(()));
        assert_eq!(check(Some("application/AT+JWT"), access_token()), Ok(()));
        assert_eq!(check(Some("JWT"), access_token()), Err(Reject::BadType));
        assert_eq!(check(None, access_token()), Err(Reject::BadType));
        let mut no_jti = access_token();
        no_jti.as_object_mut().map(|o| o.remove("jti"));
        assert_eq!(check(Some("at+jwt"), no_jti), Err(Reject::MissingClaim));
        // ID tokens: OpenID Connect members, or an audience that is the client itself.
        let mut with_nonce = access_token();
        with_nonce["nonce"] = json!("n");
        assert_eq!(check(Some("JWT"), with_nonce), Err(Reject::IdToken));
        let id_token = json!({"iss": "https://as", "exp": 2_000_000_000u64, "aud": "app",
            "azp": "app", "sub": "u", "iat": 1_000_000_000u64, "at_hash": "x"});
        assert_eq!(check(Some("JWT"), id_token), Err(Reject::IdToken));
        let aud_is_client = json!({"iss": "https://as", "exp": 2_000_000_000u64,
            "aud": "app", "client_id": "app", "sub": "u", "iat": 1_000_000_000u64, "jti": "j"});
        assert_eq!(
            check(Some("JWT"), aud_is_client.clone()),
            Err(Reject::IdToken)
        );
        // The bare ID token of a plain code flow (oidc-provider's: no nonce, no azp): no
        // client_id and no scope.
        let bare = json!({"iss": "https://as", "exp": 2_000_000_000u64, "aud": "client-1",
            "sub": "u", "iat": 1_000_000_000u64});
        assert_eq!(check(Some("JWT"), bare), Err(Reject::IdToken));
        // typ decides: an at+jwt token whose audience is its own client is an access token
        // (here refused only because "app" is not this resource's audience).
        assert_eq!(
            check(Some("at+jwt"), aud_is_client),
            Err(Reject::BadAudience)
        );
    }
}
