//! The authentication pipeline shared by every listener: extract the token, choose the
//! provider by its (unverified) issuer, look the key up in that provider's mirror only,
//! verify, check claims, and map claims to headers. Knows nothing about sockets.

pub mod cache;
pub mod claims;
pub mod extract;
pub mod profile;
pub mod provider;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use crate::config::ArrayClaimFormat;
use crate::config::Config;
use crate::error::Reject;
use crate::jose::{jws, Check, Observer};
use crate::metrics::Metrics;
use claims::{render, ReservedHeaders};
use extract::TokenSources;
pub use provider::Provider;

/// What a verified token says, computed once and shared by cache hits.
#[derive(Debug)]
pub struct TokenInfo {
    /// The key id used.
    pub kid: Option<String>,
    /// The algorithm used.
    pub alg: crate::jose::Alg,
    /// Verified claims.
    pub claims: Map<String, Value>,
    /// The payload segment as in the token (base64url JSON), ready to forward as a header
    /// (built once per verification, so a cache hit forwards it without copying).
    pub payload: HeaderValue,
    /// `exp`, re-checked on cache hits.
    pub exp: Option<f64>,
    /// `nbf`, re-checked on cache hits.
    pub nbf: Option<f64>,
    /// Claim headers rendered from the claims (unsafe values already dropped).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The provider that issued it.
    pub provider: Arc<Provider>,
    /// Its verified content.
    pub info: Arc<TokenInfo>,
}

/// A refused token, with what was known when it was refused (for logs and metrics).
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub reject: Reject,
    /// The provider, when the issuer was recognised.
    pub provider: Option<Arc<Provider>>,
    /// The token's kid, when it had one (untrusted: truncate before logging).
    pub kid: Option<String>,
}

impl From<Reject> for Failure {
    fn from(reject: Reject) -> Self {
        Failure {
            reject,
            provider: None,
            kid: None,
        }
    }
}

/// Everything needed to authenticate a request, built once per config.
pub struct Authenticator {
    by_issuer: HashMap<String, Arc<Provider>>,
    templated: Vec<Arc<Provider>>,
    providers: Vec<Arc<Provider>>,
    /// Token locations.
    pub sources: TokenSources,
    /// Inbound headers that are always removed.
    pub reserved: ReservedHeaders,
    /// Array claim rendering.
    pub array_format: ArrayClaimFormat,
    /// Longest claim header value.
    pub max_claim_header_bytes: usize,
    /// Drop or reject over-size claims.
    pub oversize_claim: crate::config::OversizeClaim,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    cache: Option<cache::TokenCache>,
}

impl Authenticator {
    /// The authentication pipeline over compiled `providers` (see `Plan::authenticator`),
    /// with the token sources and header rules of `config`.
    pub fn new(config: &Config, providers: Vec<Arc<Provider>>, metrics: Arc<Metrics>) -> Self {
        let by_issuer = providers
            .iter()
            .filter(|p| !p.issuer.contains("{tenantid}"))
            .map(|p| (p.issuer.clone(), p.clone()))
            .collect();
        let templated = providers
            .iter()
            .filter(|p| p.issuer.contains("{tenantid}"))
            .cloned()
            .collect();
        let mut reserved_names: Vec<String> = config
            .providers
            .iter()
            .flat_map(|p| p.claim_headers.values().cloned())
            .collect();
        reserved_names.extend(config.proxy.payload_header.clone());
        if config.assertion.enabled {
            reserved_names.push(config.assertion.header.clone());
        }
        Authenticator {
            by_issuer,
            templated,
            providers,
            sources: TokenSources {
                header: config
                    .proxy
                    .token
                    .header
                    .as_deref()
                    .and_then(|h| http::HeaderName::try_from(h.to_ascii_lowercase()).ok()),
                cookie: config.proxy.token.cookie.clone(),
                query: config.proxy.token.query.clone(),
                max_bytes: config.proxy.max_token_bytes,
            },
            reserved: ReservedHeaders::new(&config.proxy.identity_header_prefix, reserved_names),
            array_format: config.proxy.array_claim_format,
            max_claim_header_bytes: config.proxy.max_claim_header_bytes,
            oversize_claim: config.proxy.oversize_claim,
            cache: config
                .token_cache
                .enabled
                .then(|| cache::TokenCache::new(&config.token_cache, &metrics)),
            metrics,
        }
    }

    /// Every provider, in config order.
    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    /// Finds the token in a request.
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Result<Option<(&'a str, extract::Scheme)>, Reject> {
        extract::extract(headers, query, &self.sources)
    }

    /// Verifies one token at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, Failure> {
        let started = Instant::now();
        let result = self.verify_observed(token, now, &mut ());
        self.metrics
            .verify_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// `verify`, reporting each check to `obs` (the request path passes `()`; `explain`
    /// passes a `Trace`).
    pub fn verify_observed(
        &self,
        token: &str,
        now: u64,
        obs: &mut impl Observer,
    ) -> Result<Verified, Failure> {
        let parsed = jws::parse(token).inspect_err(|r| {
            obs.step(Check::Parse, false, || r.description().to_string());
        })?;
        let kid = parsed.header.kid.clone();
        obs.step(Check::Parse, true, || {
            let h = &parsed.header;
            let kid = h.kid.as_deref().map(|k| crate::telemetry::truncate(k, 64));
            format!("parse: alg={} kid={kid:?} typ={:?}", h.alg, h.typ)
        });
        let iss = jws::peek_issuer(&parsed);
        let provider = iss.and_then(|iss| self.provider_for(iss, &parsed.claims));
        obs.step(Check::Issuer, provider.is_some(), || match &provider {
            Some(p) => format!("provider {:?} (issuer {:?})", p.name, iss.unwrap_or("")),
            None => format!("issuer {iss:?} is not a configured provider"),
        });
        let provider = provider.ok_or(Failure {
            reject: Reject::UnknownIssuer,
            provider: None,
            kid: kid.clone(),
        })?;
        let fail = |reject: Reject| Failure {
            reject,
            provider: Some(provider.clone()),
            kid: kid.clone(),
        };
        let alg = jws::check_alg(&parsed, &provider.algorithms);
        obs.step(Check::Alg, alg.is_ok(), || match &alg {
            Ok(a) => format!("alg {a} is allowed"),
            Err(_) => format!(
                "alg {:?} is not allowed for {}",
                parsed.header.alg, provider.name
            ),
        });
        let alg = alg.map_err(fail)?;
        let used_kid = self
            .check_signature(&provider, &parsed, alg, obs)
            .map_err(fail)?;
        verify::check_claims_observed(&parsed, &provider.claims, now, obs).map_err(fail)?;
        let headers = self.render_claim_headers(&provider, &parsed.claims);
        obs.step(Check::ClaimHeaders, headers.is_ok(), || match &headers {
            Ok(h) => format!("{} claim header(s) rendered", h.len()),
            Err(r) => r.description().to_string(),
        });
        let headers = headers.map_err(fail)?;
        let number = |name: &str| parsed.claims.get(name).and_then(Value::as_f64);
        let info = TokenInfo {
            kid: used_kid,
            alg,
            exp: number("exp"),
            nbf: number("nbf"),
            payload: HeaderValue::from_str(parsed.payload_b64)
                .map_err(|_| fail(Reject::Malformed("payload")))?,
            claims: parsed.claims,
            headers,
        };
        Ok(Verified {
            info: Arc::new(info),
            provider,
        })
    }

    /// Key lookup in the provider's current set, then the signature; the kid of the key
    /// that verified.
    fn check_signature(
        &self,
        provider: &Provider,
        parsed: &jws::ParsedToken<'_>,
        alg: crate::jose::Alg,
        obs: &mut impl Observer,
    ) -> Result<Option<String>, Reject> {
        provider.keys.with_current(|set| {
            let Some(set) = set else {
                obs.step(Check::Key, false, || {
                    "the provider has no keys (503)".to_string()
                });
                return Err(Reject::NoKeys);
            };
            let candidates = set.candidates(parsed.header.kid.as_deref());
            if candidates.is_empty() {
                provider.lookup_miss.inc();
                obs.step(Check::Key, false, || {
                    "kid is not in the key set (a live sidecar refetches once)".to_string()
                });
                return Err(Reject::UnknownKid);
            }
            provider.lookup_hit.inc();
            obs.step(Check::Key, true, || {
                format!("{} candidate key(s)", candidates.len())
            });
            let signed = jws::verify_signature(parsed, alg, candidates);
            obs.step(Check::Signature, signed.is_ok(), || match &signed {
                Ok(_) => "signature verifies".to_string(),
                Err(r) => format!("signature: {}", r.description()),
            });
            signed.map(|k| k.kid.clone())
        })
    }

    /// The whole authentication of one token: cache, verification, and on an unknown kid
    /// one bounded wait for the provider's refetch, then a second verification.
    pub async fn authenticate(&self, token: &str, now: u64) -> Result<Verified, Failure> {
        let cache_key = match &self.cache {
            Some(c) => {
                let key = cache::TokenCache::key(token);
                if let Some(v) = c.get(&key, now) {
                    return Ok(v);
                }
                Some(key)
            }
            None => None,
        };
        let result = match self.verify(token, now) {
            Err(Failure {
                reject: Reject::UnknownKid,
                provider: Some(p),
                kid: Some(kid),
            }) => {
                let outcome = p.keys.resolve_unknown_kid(&kid).await;
                self.metrics
                    .jwks_kid_miss_total
                    .with_label_values(&[&p.name, outcome.label()])
                    .inc();
                if outcome == crate::jwks::kidmiss::KidMiss::RefetchedFound {
                    self.verify(token, now)
                } else {
                    Err(Failure {
                        reject: Reject::UnknownKid,
                        provider: Some(p),
                        kid: Some(kid),
                    })
                }
            }
            other => other,
        };
        if let (Ok(v), Some(c), Some(key)) = (&result, &self.cache, cache_key) {
            c.insert(key, v);
        }
        result
    }

    /// The provider for an (unverified) issuer: exact match, else an issuer template such as
    /// `https://login.microsoftonline.com/{tenantid}/v2.0` whose `{tenantid}`, replaced by the
    /// token's tenant claim, gives exactly `iss` (and the tenant is allowed).
    pub fn provider_for(&self, iss: &str, claims: &Map<String, Value>) -> Option<Arc<Provider>> {
        if let Some(p) = self.by_issuer.get(iss) {
            return Some(p.clone());
        }
        self.templated
            .iter()
            .find(|p| {
                let Some(tenant) = claims.get(&p.tenant_claim).and_then(Value::as_str) else {
                    return false;
                };
                !tenant.is_empty()
                    && tenant
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && (p.allowed_tenants.is_empty()
                        || p.allowed_tenants.iter().any(|t| t == tenant))
                    && p.issuer.replace("{tenantid}", tenant) == iss
            })
            .cloned()
    }

    fn render_claim_headers(
        &self,
        provider: &Provider,
        claims: &Map<String, Value>,
    ) -> Result<Vec<(http::HeaderName, HeaderValue)>, Reject> {
        let mut out = Vec::with_capacity(provider.claim_headers.len());
        for (path, header) in &provider.claim_headers {
            let Some(value) = path.lookup(claims) else {
                continue;
            };
            match render(value, self.array_format, self.max_claim_header_bytes) {
                Ok(hv) => out.push((header.clone(), hv)),
                Err(claims::Dropped::TooLong)
                    if self.oversize_claim == crate::config::OversizeClaim::Reject =>
                {
                    self.metrics
                        .claim_headers_dropped_total
                        .with_label_values(&[&provider.name, "too_long_rejected"])
                        .inc();
                    return Err(Reject::ClaimTooLarge);
                }
                Err(d) => {
                    self.metrics
                        .claim_headers_dropped_total
                        .with_label_values(&[&provider.name, d.label()])
                        .inc();
                    tracing::warn!(provider = %provider.name, claim = path.as_str(), reason = d.label(), "claim not forwarded as a header");
                }
            }
        }
        Ok(out)
    }
}

/// Current Unix time in seconds.
pub fn now_unix() -> u64 {
    crate::jwks::unix_secs(std::time::SystemTime::now())
}
