//! A provider's verification policy, compiled once from its config: algorithm allow-list,
//! claim rules, claim-to-header mappings, and handles to its key mirror and metrics.

use std::sync::Arc;

use crate::jose::Alg;
use http::HeaderName;
use prometheus::IntCounter;

use super::claims::ClaimPath;
use super::verify::{normalize_typ, ClaimPolicy};
use crate::config::ProviderConfig;
use crate::jwks::ProviderKeys;
use crate::metrics::Metrics;

/// The listeners that record decisions (the `listener` label of `requests_total`).
pub const LISTENERS: [&str; 3] = ["proxy", "authz_http", "authz_grpc"];

impl Provider {
    /// `requests_total{listener, this provider, "allow", "ok"}`, when `listener` is one of
    /// `LISTENERS` (resolved at its first use, so the series appears with its first count).
    pub fn allowed_counter(&self, listener: &str, metrics: &Metrics) -> Option<&IntCounter> {
        let i = LISTENERS.iter().position(|l| *l == listener)?;
        Some(self.allowed[i].get_or_init(|| {
            metrics
                .requests_total
                .with_label_values(&[listener, &self.name, "allow", "ok"])
        }))
    }

    /// `sender_constraint_total{this provider, "bearer", "ok"}` (resolved at its first use).
    pub fn bearer_ok_counter(&self, metrics: &Metrics) -> &IntCounter {
        self.bearer_ok.get_or_init(|| {
            metrics
                .sender_constraint_total
                .with_label_values(&[&self.name, "bearer", "ok"])
        })
    }
}

/// One configured issuer, ready for the request path.
pub struct Provider {
    /// Name (metric label).
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
    /// Allowed algorithms.
    pub algorithms: Vec<Alg>,
    /// Claim rules.
    pub claims: ClaimPolicy,
    /// Claim -> header mappings.
    pub claim_headers: Vec<(ClaimPath, HeaderName)>,
    /// The key mirror.
    pub keys: Arc<ProviderKeys>,
    /// Claim substituted for `{tenantid}` in a templated issuer.
    pub tenant_claim: String,
    /// Accepted tenants for a templated issuer (empty: any).
    pub allowed_tenants: Vec<String>,
    /// Proof of possession its tokens need (a rule's setting wins).
    pub sender_constraint: crate::config::SenderConstraint,
    pub(crate) lookup_hit: IntCounter,
    pub(crate) lookup_miss: IntCounter,
    /// `requests_total{listener, provider, "allow", "ok"}` per listener of `LISTENERS`, and
    /// `sender_constraint_total{provider, "bearer", "ok"}`: the common outcomes, resolved
    /// once, so an allowed request does no label lookup (with a thousand providers those
    /// lookups touch a cold hash map entry each).
    allowed: [std::sync::OnceLock<IntCounter>; LISTENERS.len()],
    bearer_ok: std::sync::OnceLock<IntCounter>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Provider {
    /// Compiles a provider's config around its key mirror `keys`; `algorithms` is its
    /// compiled allow-list.
    pub fn new(
        cfg: &ProviderConfig,
        algorithms: Vec<Alg>,
        metrics: &Metrics,
        keys: Arc<ProviderKeys>,
    ) -> Provider {
        Provider {
            name: cfg.name.clone(),
            issuer: cfg.issuer.clone(),
            claims: ClaimPolicy {
                audiences: cfg.audiences.clone(),
                audience_claim: cfg.audience_claim.clone(),
                leeway: cfg.leeway.as_secs(),
                require_exp: cfg.require_exp,
                max_lifetime: cfg.max_token_lifetime.map(|d| d.as_secs()),
                typ: cfg.typ.iter().map(|t| normalize_typ(t)).collect(),
                rfc9068: cfg.profile.as_deref() == Some("rfc9068"),
                required_claims: cfg.required_claims.clone(),
                required_scopes: cfg.required_scopes.clone(),
            },
            claim_headers: cfg
                .claim_headers
                .iter()
                .filter_map(|(claim, header)| {
                    HeaderName::try_from(header.to_ascii_lowercase())
                        .ok()
                        .map(|h| (ClaimPath::new(claim), h))
                })
                .collect(),
            algorithms,
            keys,
            tenant_claim: cfg.tenant_claim.clone(),
            allowed_tenants: cfg.allowed_tenants.clone(),
            sender_constraint: cfg.sender_constraint,
            lookup_hit: metrics
                .key_lookups_total
                .with_label_values(&[&cfg.name, "hit"]),
            lookup_miss: metrics
                .key_lookups_total
                .with_label_values(&[&cfg.name, "miss"]),
            allowed: Default::default(),
            bearer_ok: std::sync::OnceLock::new(),
        }
    }
}
