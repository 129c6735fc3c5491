//! Keeping each provider's mirror fresh: one background task per provider.
//!
//! The task honours caching headers (`Cache-Control: max-age` minus `Age`, `Expires`),
//! clamped to `[min_refresh, max_refresh]`, with jitter so a fleet does not fetch in
//! lockstep; revalidates with `ETag`/`Last-Modified` (a 304 is a success); on failure keeps
//! the last good keys and retries with capped exponential backoff; serves stale keys for at
//! most `max_stale` past their freshness, then drops them (503); drops a key only after it
//! was missing from `key_removal_confirmations` consecutive successful fetches; answers
//! unknown-kid refetch requests from the request path; and persists each good set to
//! `cache_dir` so a restart during an IdP outage serves at once.
//!
//! The network sits behind the `Source` trait, so the whole state machine runs under tokio's
//! paused clock in tests with an in-memory source. Internal timing uses `tokio::time::Instant`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::fetch::FetchError;
use super::freshness::{freshness, jittered, next_f64, retry_delay, seed, MirrorSettings};
use super::persist::wall_clock;
use super::persist::{persist, restore};
use super::source::{Source, SourceResponse, Validators};
use super::{unix_secs, KeySet, ProviderKeys};
use crate::jose::Key;
use crate::jose::SkippedKey;
use crate::metrics::Metrics;

/// Merges a freshly fetched set into the current one: new keys are taken at once; a key
/// missing from the new set is kept until it has been missing `confirmations` times.
/// Returns the merged set and the kids added and removed.
pub fn merge_keys(
    current: Option<&KeySet>,
    fetched: &KeySet,
    absent: &mut HashMap<String, u32>,
    confirmations: u32,
) -> (KeySet, Vec<String>, Vec<String>) {
    let new_kids: HashSet<&str> = fetched
        .keys()
        .iter()
        .filter_map(|k| k.kid.as_deref())
        .collect();
    let old_kids: HashSet<&str> = current
        .map(|c| c.keys().iter().filter_map(|k| k.kid.as_deref()).collect())
        .unwrap_or_default();
    let mut keys: Vec<Arc<Key>> = fetched.keys().to_vec();
    let mut removed = Vec::new();
    if let Some(cur) = current {
        let mut counted = HashSet::new();
        for k in cur.keys() {
            let Some(kid) = k.kid.as_deref() else {
                continue;
            };
            if new_kids.contains(kid) {
                continue;
            }
            let n = if counted.insert(kid) {
                let n = absent.entry(kid.to_string()).or_insert(0);
                *n += 1;
                *n
            } else {
                absent.get(kid).copied().unwrap_or(0)
            };
            if n < confirmations {
                keys.push(k.clone());
            } else if !removed.iter().any(|r: &String| r == kid) {
                removed.push(kid.to_string());
            }
        }
    }
    for r in &removed {
        absent.remove(r);
    }
    absent.retain(|kid, _| !new_kids.contains(kid.as_str()) && old_kids.contains(kid.as_str()));
    let mut added: Vec<String> = new_kids
        .difference(&old_kids)
        .map(|s| s.to_string())
        .collect();
    added.sort();
    (KeySet::from_arcs(keys), added, removed)
}

/// Mutable state of one mirror task.
#[derive(Debug, Default)]
struct MirrorState {
    validators: Validators,
    absent: HashMap<String, u32>,
    fresh_until: Option<Instant>,
    failures: u32,
    stale_since: Option<SystemTime>,
    /// Set while the source (another sidecar tier) says its keys are stale since then.
    upstream_stale: Option<SystemTime>,
}

/// A successful fetch: its metric label, how long it is fresh, and the parsed set with the
/// keys skipped (none for a 304).
type Fetched = (&'static str, Duration, Option<(KeySet, Vec<SkippedKey>)>);

/// When an upstream jwks-sidecar tier says its keys are stale (`STALE_SINCE_HEADER`), since
/// when on this host's clock; never later than now. A value that is not a Unix time means
/// "stale since now".
///
/// The tier's moment is on the tier's clock. With the response's `Date` (the tier's clock
/// when it answered) the staleness is taken as an age, `Date - since`, and counted back from
/// this host's now: a skewed clock on either side neither hides staleness nor invents it.
/// Without a usable `Date` the moment is used as it is.
fn upstream_stale_since(headers: &http::HeaderMap) -> Option<SystemTime> {
    let value = headers.get(super::source::STALE_SINCE_HEADER)?;
    let now = SystemTime::now();
    let Some(since) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
    else {
        return Some(now);
    };
    let tier_now = headers
        .get(http::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok());
    // A cache between the tiers adds how long it held the answer (`Age`).
    let held = headers
        .get(http::header::AGE)
        .and_then(|a| a.to_str().ok())
        .and_then(|a| a.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let local = match tier_now {
        Some(tier_now) => {
            let age = tier_now.duration_since(since).unwrap_or_default();
            let age = age.checked_add(held).unwrap_or(Duration::MAX);
            now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
        }
        None => since,
    };
    Some(local.min(now))
}

/// Everything one mirror task needs.
pub struct Mirror<S: Source> {
    /// The provider's key store (shared with the request path).
    pub keys: Arc<ProviderKeys>,
    /// Where documents come from.
    pub source: S,
    /// Collectors.
    pub metrics: Arc<Metrics>,
    /// Timing and limits.
    pub settings: MirrorSettings,
    /// Persistence file, if `cache_dir` is set.
    pub persist_path: Option<PathBuf>,
}

impl<S: Source> Mirror<S> {
    /// Runs until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut st = MirrorState::default();
        let name = self.keys.name.clone();
        self.metrics.jwks_keys.with_label_values(&[&name]).set(0);
        self.metrics.jwks_stale.with_label_values(&[&name]).set(0);
        self.metrics
            .jwks_fetch_total
            .with_label_values(&[&name, "ok"])
            .inc_by(0);
        if let Some(path) = &self.persist_path {
            match restore(path, &self.keys, &self.settings) {
                Ok(Some((set, fresh_until))) => {
                    tracing::info!(provider = %name, keys = set.len(), file = %path.display(), "serving keys persisted by an earlier run");
                    self.install(set, &mut st);
                    st.fresh_until = Some(fresh_until);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(provider = %name, file = %path.display(), error = %e, "ignoring the key cache file")
                }
            }
        }
        let mut rng = seed();
        let mut kid_miss = false;
        loop {
            let kid = if kid_miss {
                self.keys.gate.pending_kid()
            } else {
                None
            };
            // Waiting for a fetch slot can be long with many dead providers: a stop wins.
            let result = tokio::select! {
                r = self.fetch_once(&mut st, kid.as_deref()) => r,
                _ = shutdown.changed() => return,
            };
            self.keys.mark_attempted();
            // Keys past max_stale go before the kid-miss waiters look at them.
            self.check_staleness(&mut st);
            if kid_miss {
                self.keys.gate.complete();
            }
            let now = Instant::now();
            let mut delay = match result {
                Ok(fresh) => jittered(fresh, self.settings.jitter, next_f64(&mut rng)),
                Err(_) => jittered(
                    retry_delay(st.failures, self.settings.max_retry),
                    self.settings.jitter,
                    next_f64(&mut rng),
                ),
            };
            // Wake up in time to retire keys that go past max_stale.
            if let (Some(fu), true) = (st.fresh_until, self.keys.current().is_some()) {
                let deadline = fu + self.settings.max_stale;
                if deadline > now {
                    delay = delay.min(deadline - now + Duration::from_millis(1));
                }
            }
            let scheduled = now + delay;
            loop {
                let mut wake = scheduled;
                if let Some(due) = self.keys.gate.deferred_due() {
                    wake = wake.min(due);
                }
                let next =
                    unix_secs(SystemTime::now() + wake.saturating_duration_since(Instant::now()));
                self.keys.update_status(|s| s.next_fetch = Some(next));
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {
                        kid_miss = self.keys.gate.start_deferred();
                        break;
                    }
                    _ = self.keys.gate.requested() => {
                        kid_miss = true;
                        break;
                    }
                    // A kid miss was deferred while this task slept: wake at its due time.
                    _ = self.keys.gate.deferred_noted() => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    fn install(&self, set: KeySet, st: &mut MirrorState) {
        let n = set.len();
        self.keys.store(set);
        self.metrics
            .jwks_keys
            .with_label_values(&[&self.keys.name])
            .set(n as i64);
        self.mark_fresh(st);
    }

    /// One fetch; returns the freshness of the result.
    async fn fetch_once(
        &self,
        st: &mut MirrorState,
        kid_miss: Option<&str>,
    ) -> Result<Duration, FetchError> {
        let name = self.keys.name.as_str();
        let started = Instant::now();
        let now_unix = unix_secs(SystemTime::now());
        self.keys.update_status(|s| s.last_fetch = Some(now_unix));
        let fetched = self.source.fetch(&st.validators, kid_miss).await;
        self.metrics
            .jwks_fetch_duration
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        match fetched.and_then(|response| self.read_response(response, st)) {
            Ok((label, fresh, parsed)) => {
                // Keys an upstream tier serves stale are never fresh here: they are stale
                // since the upstream's moment, and max_stale counts from it.
                // A freshness already earned (another replica of the tier answered fresh) is
                // not taken back by one stale answer.
                let fresh_until = match st.upstream_stale {
                    Some(since) => {
                        let age = SystemTime::now().duration_since(since).unwrap_or_default();
                        let at = Instant::now().checked_sub(age);
                        match (at, st.fresh_until) {
                            (Some(at), Some(earned)) => at.max(earned),
                            (Some(at), None) => at,
                            // An Instant cannot go that far back: stale longer than any
                            // max_stale; read_response refused it already.
                            (None, earned) => earned.unwrap_or_else(Instant::now),
                        }
                    }
                    None => Instant::now() + fresh,
                };
                st.fresh_until = Some(fresh_until);
                st.failures = 0;
                match parsed {
                    Some((set, skipped)) => self.take_fetched(set, &skipped, st),
                    None => self.install_unchanged(st),
                }
                if let (Some(path), Some(set)) = (&self.persist_path, self.keys.current()) {
                    if let Err(e) = persist(path, &self.keys, &set, fresh_until) {
                        tracing::warn!(provider = name, file = %path.display(), error = %e, "could not persist the key set");
                    }
                }
                self.metrics
                    .jwks_fetch_total
                    .with_label_values(&[name, label])
                    .inc();
                self.metrics
                    .jwks_last_success
                    .with_label_values(&[name])
                    .set(now_unix as f64);
                let upstream_stale = st.upstream_stale;
                self.keys.update_status(|s| {
                    s.last_success = Some(now_unix);
                    s.last_error = upstream_stale.map(|since| {
                        format!(
                            "the upstream tier has served stale keys since {}",
                            unix_secs(since)
                        )
                    });
                    s.fresh_until = Some(unix_secs(wall_clock(fresh_until)));
                });
                Ok(fresh)
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                self.metrics
                    .jwks_fetch_total
                    .with_label_values(&[name, e.label()])
                    .inc();
                self.keys
                    .update_status(|s| s.last_error = Some(e.to_string()));
                tracing::warn!(provider = name, error = %e, result = e.label(), failures = st.failures, "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    /// What a response means: the fetch label, the freshness, and a parsed set (none for a
    /// 304). A document without a usable key is a failure (the last good set is kept).
    fn read_response(
        &self,
        response: SourceResponse,
        st: &mut MirrorState,
    ) -> Result<Fetched, FetchError> {
        let headers = match &response {
            SourceResponse::NotModified { headers } | SourceResponse::Document { headers, .. } => {
                headers
            }
        };
        st.upstream_stale = upstream_stale_since(headers);
        if let Some(since) = st.upstream_stale {
            let age = SystemTime::now().duration_since(since).unwrap_or_default();
            if age > self.settings.max_stale {
                return Err(FetchError::UpstreamStale(format!(
                    "the upstream tier has served stale keys for {} s, past max_stale ({} s)",
                    age.as_secs(),
                    self.settings.max_stale.as_secs()
                )));
            }
        }
        match response {
            SourceResponse::NotModified { headers } => {
                let fresh = freshness(&headers, &self.settings);
                if self.keys.current().is_some() {
                    return Ok(("not_modified", fresh, None));
                }
                // A 304 without a set to keep: ask again without validators.
                st.validators = Validators::default();
                Err(FetchError::Parse(
                    "304 Not Modified but no key set is held".into(),
                ))
            }
            SourceResponse::Document { body, headers } => {
                match KeySet::parse(&body, &self.keys.policy) {
                    Ok((set, skipped)) if !set.is_empty() => {
                        st.validators = Validators {
                            etag: headers.get(http::header::ETAG).cloned(),
                            last_modified: headers.get(http::header::LAST_MODIFIED).cloned(),
                        };
                        let fresh = freshness(&headers, &self.settings);
                        Ok(("ok", fresh, Some((set, skipped))))
                    }
                    Ok((_, skipped)) => {
                        self.count_skipped(&skipped);
                        Err(FetchError::Parse(format!(
                            "no usable signing key ({} skipped: {})",
                            skipped.len(),
                            skip_summary(&skipped)
                        )))
                    }
                    Err(e) => Err(FetchError::Parse(e.0)),
                }
            }
        }
    }

    fn count_skipped(&self, skipped: &[SkippedKey]) {
        for s in skipped {
            self.metrics
                .jwks_skipped_keys_total
                .with_label_values(&[&self.keys.name, s.reason])
                .inc();
        }
    }

    /// Merges a fetched set into the current one (rotation bookkeeping) and installs it.
    fn take_fetched(&self, set: KeySet, skipped: &[SkippedKey], st: &mut MirrorState) {
        let name = self.keys.name.as_str();
        self.count_skipped(skipped);
        let current = self.keys.current();
        let (merged, added, removed) = merge_keys(
            current.as_deref(),
            &set,
            &mut st.absent,
            self.settings.key_removal_confirmations,
        );
        if current.is_some() {
            self.metrics
                .jwks_key_changes_total
                .with_label_values(&[name, "added"])
                .inc_by(added.len() as u64);
            self.metrics
                .jwks_key_changes_total
                .with_label_values(&[name, "removed"])
                .inc_by(removed.len() as u64);
            if !added.is_empty() || !removed.is_empty() {
                tracing::info!(provider = name, added = ?added, removed = ?removed, "key set changed");
            }
        }
        tracing::debug!(
            provider = name,
            keys = merged.len(),
            skipped = skipped.len(),
            "JWKS loaded"
        );
        self.install(merged, st);
    }

    /// Clears the stale state after a successful fetch (unless the upstream tier's keys are
    /// stale: then `check_staleness` keeps or sets the stale state).
    fn mark_fresh(&self, st: &mut MirrorState) {
        if st.upstream_stale.is_some() {
            return;
        }
        if st.stale_since.take().is_some() {
            tracing::info!(provider = %self.keys.name, "keys are fresh again");
        }
        self.metrics
            .jwks_stale
            .with_label_values(&[&self.keys.name])
            .set(0);
        self.keys.set_stale(false);
    }

    fn install_unchanged(&self, st: &mut MirrorState) {
        if let Some(set) = self.keys.current() {
            self.metrics
                .jwks_keys
                .with_label_values(&[&self.keys.name])
                .set(set.len() as i64);
        }
        self.mark_fresh(st);
    }

    /// Marks keys stale past their freshness, and drops them past `max_stale`.
    fn check_staleness(&self, st: &mut MirrorState) {
        let Some(fresh_until) = st.fresh_until else {
            return;
        };
        let now = Instant::now();
        let name = self.keys.name.as_str();
        if now <= fresh_until || self.keys.current().is_none() {
            return;
        }
        if now > fresh_until + self.settings.max_stale {
            self.keys.clear();
            self.metrics.jwks_keys.with_label_values(&[name]).set(0);
            self.metrics.jwks_stale.with_label_values(&[name]).set(1);
            tracing::error!(provider = name, max_stale = ?self.settings.max_stale, "keys are past max_stale and were dropped; requests for this provider get 503 until a fetch succeeds");
            return;
        }
        if st.stale_since.is_none() {
            // An upstream tier's own moment, exactly (not rounded through Instant).
            let since = st.upstream_stale.map_or_else(
                || wall_clock(fresh_until),
                |s| s.max(wall_clock(fresh_until)),
            );
            st.stale_since = Some(since);
            self.keys.set_stale(true);
            self.keys
                .update_status(|s| s.stale_since = Some(unix_secs(since)));
            self.metrics.jwks_stale.with_label_values(&[name]).set(1);
            tracing::warn!(
                provider = name,
                stale_since = unix_secs(since),
                "serving stale keys: refreshes are failing"
            );
        }
    }
}

fn skip_summary(skipped: &[SkippedKey]) -> String {
    skipped
        .iter()
        .map(|s| s.reason)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            super::super::source::STALE_SINCE_HEADER,
            http::HeaderValue::from_str(v).expect("value"),
        );
        h
    }

    #[test]
    fn upstream_staleness_is_read_safely() {
        let now = SystemTime::now();
        assert_eq!(upstream_stale_since(&http::HeaderMap::new()), None);
        assert_eq!(
            upstream_stale_since(&with_header("1000")),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1000))
        );
        // Garbage, an overflowing time and a future time all mean "stale since now": never
        // fresh, never a panic.
        for v in ["garbage", "18446744073709551615", "-5", "99999999999"] {
            let since = upstream_stale_since(&with_header(v)).expect(v);
            assert!(since >= now && since <= SystemTime::now(), "{v}: {since:?}");
        }
    }

    /// A tier's answer, on the tier's clock `tier_now`: stale for `stale` and carrying `Date`.
    fn tier_answer(tier_now: SystemTime, stale: Duration) -> http::HeaderMap {
        let since = (tier_now - stale)
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let mut h = with_header(&since.to_string());
        let date = httpdate::fmt_http_date(tier_now);
        h.insert(
            http::header::DATE,
            http::HeaderValue::from_str(&date).expect("date"),
        );
        h
    }

    /// How long ago, on this host's clock, `headers` say the keys went stale.
    fn stale_for(headers: &http::HeaderMap) -> Duration {
        let local = upstream_stale_since(headers).expect("stale");
        SystemTime::now()
            .duration_since(local)
            .expect("in the past")
    }

    /// The tier's clock is an hour off (either way): its `Date` turns the moment into an age
    /// (stale for 30 s), counted back from this host's now.
    #[test]
    fn upstream_staleness_is_an_age_on_the_tiers_clock() {
        let skews = [(3600, true), (3600, false), (0, true)];
        for (skew, ahead) in skews {
            let now = SystemTime::now();
            let offset = Duration::from_secs(skew);
            let tier_now = if ahead { now + offset } else { now - offset };
            let age = stale_for(&tier_answer(tier_now, Duration::from_secs(30)));
            // Whole seconds on the wire: 30 s, give or take the rounding of both values.
            assert!(
                (29..=32).contains(&age.as_secs()),
                "skew {skew} s (tier ahead: {ahead}): stale for {age:?}"
            );
        }
        // Held 20 s by a cache on the way (`Age`): stale for 50 s; a huge Age, no panic.
        let mut h = tier_answer(SystemTime::now(), Duration::from_secs(30));
        h.insert(http::header::AGE, http::HeaderValue::from_static("20"));
        let age = stale_for(&h);
        assert!((49..=52).contains(&age.as_secs()), "{age:?}");
        h.insert(
            http::header::AGE,
            http::HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(upstream_stale_since(&h), Some(SystemTime::UNIX_EPOCH));
        // A Date before the moment (nonsense): stale since now, never a panic.
        let mut h = with_header("2000000000");
        h.insert(
            http::header::DATE,
            http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert!(stale_for(&h) < Duration::from_secs(2));
    }
}
