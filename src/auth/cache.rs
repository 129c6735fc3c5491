//! The verified-token cache: a repeated token skips parsing and the signature check.
//!
//! Keyed by SHA-256 of the whole token (so no token text is kept and no collision can be
//! engineered). Bounded by entries and by an estimate of the claims' memory. Every hit
//! re-checks `exp` and `nbf` (with the provider's leeway) against the current time and that
//! the signing key is still in the provider's key set, so a rotated-out or revoked key
//! voids its tokens at once. Tokens without a kid are not cached.

use std::sync::Arc;

use prometheus::IntCounter;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use super::{Provider, TokenInfo, Verified};
use crate::config::TokenCacheConfig;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Entry {
    provider: Arc<Provider>,
    info: Arc<TokenInfo>,
}

#[derive(Clone)]
struct ByMemory {
    min_weight: u64,
}

impl Weighter<[u8; 32], Entry> for ByMemory {
    fn weight(&self, _key: &[u8; 32], val: &Entry) -> u64 {
        // Claims are held twice (JSON map and payload text) plus headers and overhead.
        let approx = 3 * val.info.payload.len() as u64 + 256;
        approx.max(self.min_weight)
    }
}

/// Bounded cache of verified tokens.
pub struct TokenCache {
    cache: Cache<[u8; 32], Entry, ByMemory>,
    hits: IntCounter,
    misses: IntCounter,
}

impl TokenCache {
    /// A cache bounded by `max_entries` and `max_bytes`.
    pub fn new(cfg: &TokenCacheConfig, metrics: &Metrics) -> Self {
        let entries = cfg.max_entries.max(1) as u64;
        let bytes = (cfg.max_bytes as u64).max(entries);
        TokenCache {
            cache: Cache::with_weighter(
                cfg.max_entries.max(1),
                bytes,
                ByMemory {
                    min_weight: bytes / entries,
                },
            ),
            hits: metrics.token_cache_total.with_label_values(&["hit"]),
            misses: metrics.token_cache_total.with_label_values(&["miss"]),
        }
    }

    /// The cache key of a token.
    pub fn key(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    /// A still-valid cached verification, if any.
    pub fn get(&self, key: &[u8; 32], now: u64) -> Option<Verified> {
        let Some(e) = self.cache.get(key) else {
            self.misses.inc();
            return None;
        };
        let leeway = e.provider.claims.leeway as f64;
        let now_f = now as f64;
        let time_ok = e.info.exp.is_none_or(|exp| now_f < exp + leeway)
            && e.info.nbf.is_none_or(|nbf| now_f + leeway >= nbf);
        let key_ok = e.info.kid.as_deref().is_some_and(|kid| {
            e.provider
                .keys
                .with_current(|set| set.is_some_and(|s| s.has_kid(kid)))
        });
        if time_ok && key_ok {
            self.hits.inc();
            Some(Verified {
                provider: e.provider,
                info: e.info,
            })
        } else {
            self.cache.remove(key);
            self.misses.inc();
            None
        }
    }

    /// Remembers a verification.
    pub fn insert(&self, key: [u8; 32], v: &Verified) {
        if v.info.kid.is_none() {
            return;
        }
        self.cache.insert(
            key,
            Entry {
                provider: v.provider.clone(),
                info: v.info.clone(),
            },
        );
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}
