//! What the verifier reports as it works: each check, whether it held, and what it saw.
//!
//! The request path passes `()` (every report compiles away); `explain` passes a `Trace` and
//! prints it, so an explanation is the decision's own steps, never a second derivation that
//! could drift from it. Checks after the first failure are not run, so they are not shown.

/// One check of the verification pipeline, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Compact JWS syntax and the header members.
    Parse,
    /// The provider chosen by the (unverified) `iss`.
    Issuer,
    /// `alg` against the provider's allow-list.
    Alg,
    /// Candidate keys for the token's `kid`.
    Key,
    /// The signature.
    Signature,
    /// `exp` (and the NumericDate range of every date claim).
    Exp,
    /// `nbf`.
    Nbf,
    /// `iat` (its NumericDate range).
    Iat,
    /// `max_token_lifetime`.
    Lifetime,
    /// The audience claim.
    Audience,
    /// `typ`.
    Type,
    /// `required_claims`.
    RequiredClaims,
    /// The provider's `required_scopes`.
    Scopes,
    /// Rendering claim headers (over-size values).
    ClaimHeaders,
    /// The DPoP proof (RFC 9449).
    DpopProof,
    /// The token's binding and the route's `sender_constraint`.
    SenderConstraint,
}

/// Receives each check as it is made.
pub trait Observer {
    /// `detail` is only called when the observer keeps it.
    fn step(&mut self, check: Check, ok: bool, detail: impl FnOnce() -> String);
}

impl Observer for () {
    #[inline(always)]
    fn step(&mut self, _: Check, _: bool, _: impl FnOnce() -> String) {}
}

/// One reported check.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Which check.
    pub check: Check,
    /// Whether it held.
    pub ok: bool,
    /// What it saw, for a human.
    pub detail: String,
}

/// Every check reported, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Observer for Trace {
    fn step(&mut self, check: Check, ok: bool, detail: impl FnOnce() -> String) {
        self.steps.push(Step {
            check,
            ok,
            detail: detail(),
        });
    }
}

impl Trace {
    /// The step for `check`, if it ran.
    pub fn get(&self, check: Check) -> Option<&Step> {
        self.steps.iter().find(|s| s.check == check)
    }
}
