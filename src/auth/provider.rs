//! A provider's verification policy, compiled once from its config: algorithm allow-list,
//! claim rules, claim-to-header mappings, and handles to its key mirror and metrics.

use std::sync::Arc;

use http::HeaderName;
use jsonwebtoken::Algorithm;
use prometheus::IntCounter;

use super::claims::ClaimPath;
use super::verify::{normalize_typ, ClaimPolicy};
use crate::config::{ProviderConfig, SUPPORTED_ALGORITHMS};
use crate::jwks::kidmiss::KidMissGate;
use crate::jwks::{parse_alg, ParsePolicy, ProviderKeys};
use crate::metrics::Metrics;

/// One configured issuer, ready for the request path.
pub struct Provider {
    /// Name (metric label).
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
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
    /// A fresh (empty) key mirror for a provider config.
    pub fn new_keys(cfg: &ProviderConfig) -> Arc<ProviderKeys> {
        let algorithms = Self::algorithms(cfg);
        let source = cfg.key_source().unwrap_or(crate::config::KeySource::Inline(
            serde_json::json!({"keys": []}),
        ));
        Arc::new(ProviderKeys::new(
            cfg.name.clone(),
            cfg.issuer.clone(),
            source,
            ParsePolicy {
                algorithms,
                max_keys: cfg.max_keys,
            },
            KidMissGate::new(cfg.kid_miss_min_interval, cfg.kid_miss_wait),
        ))
    }

    /// The algorithms a provider's keys may be used with (its `algorithms`, or every
    /// supported asymmetric one).
    pub fn algorithms(cfg: &ProviderConfig) -> Vec<Algorithm> {
        if cfg.algorithms.is_empty() {
            SUPPORTED_ALGORITHMS
                .iter()
                .filter_map(|a| parse_alg(a))
                .collect()
        } else {
            cfg.algorithms.iter().filter_map(|a| parse_alg(a)).collect()
        }
    }

    /// Compiles a validated provider config around an existing (or new) key mirror.
    pub fn from_config(cfg: &ProviderConfig, metrics: &Metrics) -> Provider {
        Self::with_keys(cfg, metrics, Self::new_keys(cfg))
    }

    /// Compiles a validated provider config around `keys`.
    pub fn with_keys(cfg: &ProviderConfig, metrics: &Metrics, keys: Arc<ProviderKeys>) -> Provider {
        let algorithms = Self::algorithms(cfg);
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
            lookup_hit: metrics
                .key_lookups_total
                .with_label_values(&[&cfg.name, "hit"]),
            lookup_miss: metrics
                .key_lookups_total
                .with_label_values(&[&cfg.name, "miss"]),
        }
    }
}
