//! `[[rules]]` and `[default_rule]`: the route rules as written (compiled by `crate::rules`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[[rules]]`: one route rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// A name for logs, `check` and `explain` (default: `rules[N]`).
    pub name: Option<String>,
    /// What the rule applies to; all given conditions must hold.
    #[serde(rename = "match")]
    pub matches: MatchConfig,
    /// No token needed (identity headers are still stripped).
    pub public: bool,
    /// Verify a token if present (reject if invalid); forward without identity if absent.
    pub allow_anonymous: bool,
    /// Authorization requirements for authenticated requests.
    pub require: Option<RequireConfig>,
    /// Status when `require` fails (default 403 `insufficient_scope`).
    pub deny_status: Option<u16>,
    /// Proof of possession required on this route (unset: the provider's setting).
    pub sender_constraint: Option<super::SenderConstraint>,
}

/// `match = { ... }`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    /// Exact normalised path.
    pub path: Option<String>,
    /// Segment-wise path prefix (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub path_prefix: Option<String>,
    /// Regular expression matched against the whole normalised path (anchored).
    pub path_regex: Option<String>,
    /// Host (without port), case-insensitive; `*.example.com` matches one or more labels.
    pub host: Option<String>,
    /// HTTP methods (empty: any).
    pub methods: Vec<String>,
}

/// `require = { ... }`: every given condition must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequireConfig {
    /// The token's provider is one of these.
    pub providers: Vec<String>,
    /// The token's audience claim contains one of these.
    pub audiences: Vec<String>,
    /// All of these scopes are granted (`scope`/`scp`).
    pub scopes: Vec<String>,
    /// Claim (name or dotted path) -> matcher: a value (equals), a list (one of), or
    /// `{ equals = v }`, `{ one_of = [..] }`, `{ contains = v }` (arrays), `{ present = true }`.
    pub claims: BTreeMap<String, ClaimMatcherConfig>,
    /// At least one of these nested requirements holds.
    pub any: Vec<RequireConfig>,
    /// All of these nested requirements hold.
    pub all: Vec<RequireConfig>,
    /// Step-up (RFC 9470): the token's `acr` is one of these (top level of `require` only).
    pub acr: Vec<String>,
    /// Step-up (RFC 9470): the user authenticated at most this long ago (`auth_time`; top
    /// level of `require` only).
    #[serde(with = "humantime_serde")]
    pub max_age: Option<std::time::Duration>,
}

/// How a claim is matched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ClaimMatcherConfig {
    /// A list: the claim equals one of them (or, for an array claim, contains one of them).
    OneOf(Vec<serde_json::Value>),
    /// A table with one operator.
    Op(ClaimOp),
    /// A scalar: the claim equals it (or, for an array claim, contains it).
    Equals(serde_json::Value),
}

/// `{ equals | one_of | contains | present }`
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimOp {
    /// Equal to this value.
    pub equals: Option<serde_json::Value>,
    /// Equal to one of these.
    pub one_of: Option<Vec<serde_json::Value>>,
    /// An array claim containing this value.
    pub contains: Option<serde_json::Value>,
    /// Present (true) or absent (false).
    pub present: Option<bool>,
}

/// `[default_rule]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultRuleConfig {
    /// `authenticate` (a valid token from any provider), `deny` (403) or `public`.
    pub action: DefaultAction,
}

impl Default for DefaultRuleConfig {
    fn default() -> Self {
        DefaultRuleConfig {
            action: DefaultAction::Authenticate,
        }
    }
}

/// What unmatched requests get.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// A valid token from any provider.
    #[default]
    Authenticate,
    /// 403 for everyone.
    Deny,
    /// No token needed.
    Public,
}
