//! Why a request was refused, and how that refusal looks on the wire.
//!
//! `Reject` is a leaf type: the auth pipeline returns it, the listeners turn it into an
//! HTTP answer (RFC 6750 `WWW-Authenticate`, a small JSON body) and the metrics use its
//! `reason()` as a bounded label value. Nothing here knows about sockets.

use std::fmt;

/// A refusal decided by the authentication pipeline (or the path normaliser in front of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No token in any configured place.
    Missing,
    /// More than one different token in one request (RFC 6750 section 2).
    MultipleTokens,
    /// Longer than `proxy.max_token_bytes`.
    TooLarge,
    /// Not a compact JWS: segments, base64url, JSON shape.
    Malformed(&'static str),
    /// `crit` names an extension this verifier does not implement.
    UnsupportedCrit,
    /// The unverified `iss` names no configured provider.
    UnknownIssuer,
    /// `alg` is `none`, HMAC, unknown, or not in the provider's allow-list.
    AlgNotAllowed,
    /// No key with this `kid` in the provider's set.
    UnknownKid,
    /// Keys with this kid exist, but none fits the token's `alg`.
    KeyMismatch,
    /// The signature does not verify with any candidate key.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// A registered claim has the wrong JSON type (for example `exp` as a string).
    InvalidClaim(&'static str),
    /// A claim the provider requires is absent.
    MissingClaim,
    /// `aud` holds none of the accepted audiences.
    BadAudience,
    /// `typ` is not in the provider's allow-list.
    BadType,
    /// Authenticated, but a required scope is missing (403).
    InsufficientScope,
    /// The token's authentication is too weak or too old for the rule (RFC 9470 step-up).
    InsufficientUserAuthentication,
    /// A token meant for a client (an ID token) where an RFC 9068 access token is required.
    IdToken,
    /// The provider has never had usable keys, or they went past `max_stale` (503).
    NoKeys,
    /// The request path cannot be normalised safely (400).
    BadPath,
    /// Authenticated, but the matched rule's requirements do not hold (403 or the rule's
    /// `deny_status`).
    RuleRequirement(u16),
    /// No rule matched and `[default_rule] action = "deny"` (403).
    NoMatchingRule,
    /// A claim mapped to a header is longer than allowed and `oversize_claim = "reject"`.
    ClaimTooLarge,
    /// `exp`, `nbf` or `iat` is a number outside any representable date (not finite, beyond
    /// i64 seconds, or after 9999-12-31): never read as "far future".
    DateOutOfRange(&'static str),
    /// `exp` lies further beyond now, or beyond `iat`, than the provider's
    /// `max_token_lifetime` (or is absent while a lifetime bound is set).
    LifetimeTooLong,
    /// The request's `Connection` header names an identity header: a client trying to make a
    /// proxy drop the verified value (400).
    HopByHopIdentity,
    /// A `DPoP`-scheme token whose proof (or binding to it) fails (RFC 9449:
    /// `invalid_dpop_proof`).
    DpopProof(crate::dpop::ProofError),
    /// A DPoP-bound token (`cnf.jkt`) presented as a bearer token: the proof of possession
    /// would be thrown away.
    DpopBoundAsBearer,
    /// The route or provider requires a sender-constrained token and this one is not.
    SenderConstraintRequired,
    /// A certificate-bound token (`cnf["x5t#S256"]`, RFC 8705) without the matching client
    /// certificate.
    CertificateBound,
    /// The token's `cnf` names a proof of possession this sidecar cannot check.
    UnknownConfirmation,
}

impl Reject {
    /// HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Reject::MultipleTokens | Reject::BadPath | Reject::HopByHopIdentity => 400,
            Reject::InsufficientScope | Reject::NoMatchingRule => 403,
            Reject::RuleRequirement(status) => *status,
            Reject::NoKeys => 503,
            _ => 401,
        }
    }

    /// RFC 6750 error code (`None` when the request carried no credentials at all).
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Reject::Missing => None,
            Reject::MultipleTokens | Reject::BadPath | Reject::HopByHopIdentity => {
                Some("invalid_request")
            }
            Reject::InsufficientScope | Reject::RuleRequirement(_) => Some("insufficient_scope"),
            Reject::InsufficientUserAuthentication => Some("insufficient_user_authentication"),
            Reject::NoMatchingRule => Some("access_denied"),
            Reject::NoKeys => Some("temporarily_unavailable"),
            Reject::DpopProof(e) if e.is_binding() => Some("invalid_token"),
            Reject::DpopProof(crate::dpop::ProofError::Nonce) => Some("use_dpop_nonce"),
            Reject::DpopProof(_) => Some("invalid_dpop_proof"),
            _ => Some("invalid_token"),
        }
    }

    /// Bounded metric label and log field: one fixed word per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Missing => "missing_token",
            Reject::MultipleTokens => "multiple_tokens",
            Reject::TooLarge => "token_too_large",
            Reject::Malformed(_) => "malformed",
            Reject::UnsupportedCrit => "unsupported_crit",
            Reject::UnknownIssuer => "unknown_issuer",
            Reject::AlgNotAllowed => "alg_not_allowed",
            Reject::UnknownKid => "unknown_kid",
            Reject::KeyMismatch => "key_mismatch",
            Reject::BadSignature => "bad_signature",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::InvalidClaim(_) => "invalid_claim",
            Reject::MissingClaim => "missing_claim",
            Reject::BadAudience => "bad_audience",
            Reject::BadType => "bad_typ",
            Reject::InsufficientScope => "insufficient_scope",
            Reject::InsufficientUserAuthentication => "insufficient_user_authentication",
            Reject::IdToken => "id_token",
            Reject::NoKeys => "no_keys",
            Reject::BadPath => "bad_path",
            Reject::RuleRequirement(_) => "rule_requirement",
            Reject::NoMatchingRule => "no_matching_rule",
            Reject::ClaimTooLarge => "claim_too_large",
            Reject::DateOutOfRange(_) => "date_out_of_range",
            Reject::LifetimeTooLong => "lifetime_too_long",
            Reject::HopByHopIdentity => "hop_by_hop_identity",
            Reject::DpopProof(crate::dpop::ProofError::KeyMismatch) => "dpop_key_mismatch",
            Reject::DpopProof(crate::dpop::ProofError::Unbound) => "dpop_unbound",
            Reject::DpopProof(crate::dpop::ProofError::Nonce) => "use_dpop_nonce",
            Reject::DpopProof(_) => "invalid_dpop_proof",
            Reject::DpopBoundAsBearer => "dpop_bound_as_bearer",
            Reject::SenderConstraintRequired => "sender_constraint_required",
            Reject::CertificateBound => "certificate_bound",
            Reject::UnknownConfirmation => "unknown_confirmation",
        }
    }

    /// Human text for `error_description` and the JSON body. Never echoes the token.
    pub fn description(&self) -> &'static str {
        match self {
            Reject::Missing => "no bearer token in the request",
            Reject::MultipleTokens => "more than one token in the request",
            Reject::TooLarge => "token is larger than the configured limit",
            Reject::Malformed(what) => what,
            Reject::UnsupportedCrit => {
                "token header lists a critical extension that is not supported"
            }
            Reject::UnknownIssuer => "token issuer is not a configured provider",
            Reject::AlgNotAllowed => "token algorithm is not allowed",
            Reject::UnknownKid => "token key id is not in the provider's key set",
            Reject::KeyMismatch => "no key with this key id fits the token algorithm",
            Reject::BadSignature => "token signature is invalid",
            Reject::Expired => "token has expired",
            Reject::NotYetValid => "token is not valid yet",
            Reject::InvalidClaim(what) => what,
            Reject::MissingClaim => "token lacks a required claim",
            Reject::BadAudience => "token audience is not accepted",
            Reject::BadType => "token type is not accepted",
            Reject::InsufficientScope => "token lacks a required scope",
            Reject::InsufficientUserAuthentication => {
                "a stronger or more recent authentication is required"
            }
            Reject::IdToken => "an ID token (meant for a client) is not an access token",
            Reject::NoKeys => "signing keys for this issuer are not available yet",
            Reject::BadPath => "request path is not acceptable",
            Reject::RuleRequirement(_) => "token does not meet this route's requirements",
            Reject::NoMatchingRule => "no rule allows this request",
            Reject::ClaimTooLarge => "a claim is too large to forward as a header",
            Reject::DateOutOfRange(what) => what,
            Reject::LifetimeTooLong => {
                "token lifetime is longer than this provider's max_token_lifetime"
            }
            Reject::HopByHopIdentity => "the Connection header names an identity header",
            Reject::DpopProof(e) => e.description(),
            Reject::DpopBoundAsBearer => {
                "the token is DPoP-bound: send it as Authorization: DPoP with a DPoP proof"
            }
            Reject::SenderConstraintRequired => {
                "this resource requires a sender-constrained (DPoP-bound) token"
            }
            Reject::CertificateBound => {
                "the token is bound to a client certificate that this request did not present"
            }
            Reject::UnknownConfirmation => {
                "the token's cnf names a proof of possession that cannot be checked here"
            }
        }
    }

    /// The `WWW-Authenticate` value for this refusal, if it carries one.
    pub fn www_authenticate(&self, realm: &str) -> Option<String> {
        match self {
            Reject::BadPath | Reject::NoMatchingRule | Reject::HopByHopIdentity => None,
            Reject::Missing => Some(format!("Bearer realm=\"{realm}\"")),
            Reject::InsufficientScope | Reject::RuleRequirement(_) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{}\"",
                self.description()
            )),
            other => Some(format!(
                "Bearer realm=\"{realm}\", error=\"{}\", error_description=\"{}\"",
                other.error_code().unwrap_or("invalid_token"),
                other.description()
            )),
        }
    }

    /// The small JSON body sent with the refusal.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": self.error_code().unwrap_or("unauthorized"),
            "reason": self.reason(),
            "message": self.description(),
        })
        .to_string()
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.description(), self.reason())
    }
}

impl std::error::Error for Reject {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_rfc6750() {
        assert_eq!(Reject::Missing.status(), 401);
        assert_eq!(
            Reject::Missing.www_authenticate("r").as_deref(),
            Some("Bearer realm=\"r\"")
        );
        assert_eq!(Reject::Expired.status(), 401);
        assert!(Reject::Expired
            .www_authenticate("r")
            .is_some_and(|h| h.contains("error=\"invalid_token\"")));
        assert_eq!(Reject::InsufficientScope.status(), 403);
        assert_eq!(Reject::NoKeys.status(), 503);
        assert_eq!(Reject::MultipleTokens.status(), 400);
    }
}
