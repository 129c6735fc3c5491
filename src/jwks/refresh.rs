//! Keeping each provider's mirror fresh: one background task per provider.
//!
//! The task loads keys at start, then on a fixed `refresh_interval`. A failed fetch keeps the
//! last good keys and retries with capped exponential backoff. Every attempt updates the
//! per-provider metrics and the status served on the admin listener.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tokio::sync::watch;

use super::fetch::{FetchError, Fetcher, GetOptions};
use super::{unix_secs, KeySet, ProviderKeys};
use crate::config::KeySource;
use crate::metrics::Metrics;

/// Fetch settings of one provider.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// Normal interval between fetches.
    pub interval: Duration,
    /// One fetch's timeout.
    pub timeout: Duration,
    /// Largest document.
    pub max_bytes: usize,
    /// Allow plain http to non-loopback hosts.
    pub allow_insecure_http: bool,
}

/// Loads the provider's keys once from its source: fetch (with discovery), file or inline.
pub async fn fetch_key_set(
    keys: &ProviderKeys,
    fetcher: &Fetcher,
    settings: &RefreshSettings,
) -> Result<(KeySet, Vec<super::SkippedKey>), FetchError> {
    let opts = GetOptions {
        timeout: settings.timeout,
        max_bytes: settings.max_bytes,
        allow_insecure_http: settings.allow_insecure_http,
        headers: HeaderMap::new(),
    };
    let parse =
        |bytes: &[u8]| KeySet::parse(bytes, &keys.policy).map_err(|e| FetchError::Parse(e.0));
    match &keys.source {
        KeySource::Inline(doc) => {
            KeySet::from_document(doc, &keys.policy).map_err(|e| FetchError::Parse(e.0))
        }
        KeySource::File(path) => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| FetchError::File(format!("{}: {e}", path.display())))?;
            if bytes.len() > settings.max_bytes {
                return Err(FetchError::TooLarge);
            }
            parse(&bytes)
        }
        KeySource::Uri(uri) => {
            keys.update_status(|s| s.jwks_uri = Some(uri.clone()));
            let got = fetcher.get(uri, &opts).await?;
            parse(&got.body)
        }
        KeySource::Discovery(url) => {
            let jwks_uri = fetcher.discover(url, &keys.issuer, &opts).await?;
            keys.update_status(|s| s.jwks_uri = Some(jwks_uri.clone()));
            let got = fetcher.get(&jwks_uri, &opts).await?;
            parse(&got.body)
        }
    }
}

/// One fetch with metrics, status and installation of the result.
pub async fn refresh_once(
    keys: &ProviderKeys,
    fetcher: &Fetcher,
    metrics: &Metrics,
    settings: &RefreshSettings,
) -> Result<usize, FetchError> {
    let name = keys.name.as_str();
    let started = std::time::Instant::now();
    let now = unix_secs(SystemTime::now());
    keys.update_status(|s| s.last_fetch = Some(now));
    let result = fetch_key_set(keys, fetcher, settings)
        .await
        .and_then(|(set, skipped)| {
            if set.is_empty() {
                Err(FetchError::Parse(format!(
                    "no usable signing key ({} skipped: {})",
                    skipped.len(),
                    skipped
                        .iter()
                        .map(|s| s.reason)
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            } else {
                Ok((set, skipped))
            }
        });
    metrics
        .jwks_fetch_duration
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok((set, skipped)) => {
            for s in &skipped {
                metrics
                    .jwks_skipped_keys_total
                    .with_label_values(&[name, s.reason])
                    .inc();
            }
            let old: HashSet<String> = keys
                .current()
                .map(|c| c.keys().iter().filter_map(|k| k.kid.clone()).collect())
                .unwrap_or_default();
            let new: HashSet<String> = set.keys().iter().filter_map(|k| k.kid.clone()).collect();
            let added = new.difference(&old).count() as u64;
            let removed = old.difference(&new).count() as u64;
            if keys.ready() {
                metrics
                    .jwks_key_changes_total
                    .with_label_values(&[name, "added"])
                    .inc_by(added);
                metrics
                    .jwks_key_changes_total
                    .with_label_values(&[name, "removed"])
                    .inc_by(removed);
            }
            let n = set.len();
            keys.store(set);
            metrics
                .jwks_fetch_total
                .with_label_values(&[name, "ok"])
                .inc();
            metrics.jwks_keys.with_label_values(&[name]).set(n as i64);
            metrics
                .jwks_last_success
                .with_label_values(&[name])
                .set(now as f64);
            metrics.jwks_stale.with_label_values(&[name]).set(0);
            keys.update_status(|s| {
                s.last_success = Some(now);
                s.last_error = None;
            });
            tracing::info!(
                provider = name,
                keys = n,
                skipped = skipped.len(),
                "JWKS loaded"
            );
            Ok(n)
        }
        Err(e) => {
            metrics
                .jwks_fetch_total
                .with_label_values(&[name, e.label()])
                .inc();
            keys.update_status(|s| s.last_error = Some(e.to_string()));
            tracing::warn!(provider = name, error = %e, result = e.label(), "JWKS fetch failed; keeping the last good keys");
            Err(e)
        }
    }
}

/// Runs until `shutdown` flips: fetch now, then every `interval`; on failure back off
/// from 1 s doubling up to the interval (at most 60 s).
pub async fn run(
    keys: Arc<ProviderKeys>,
    fetcher: Fetcher,
    metrics: Arc<Metrics>,
    settings: RefreshSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    let max_backoff = settings.interval.min(Duration::from_secs(60));
    loop {
        let wait = match refresh_once(&keys, &fetcher, &metrics, &settings).await {
            Ok(_) => {
                backoff = Duration::from_secs(1);
                settings.interval
            }
            Err(_) => {
                let w = backoff;
                backoff = (backoff * 2).min(max_backoff);
                w
            }
        };
        let next = unix_secs(SystemTime::now() + wait);
        keys.update_status(|s| s.next_fetch = Some(next));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
