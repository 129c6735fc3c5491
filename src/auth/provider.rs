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
        }
    }
}
