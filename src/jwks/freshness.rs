//! Freshness of a key set: how long caching headers say it is good for (clamped), how long
//! to back off after failures, and the jitter that keeps a fleet from fetching in lockstep.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// Timing and limits of one provider's mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSettings {
    /// Refresh interval when the response has no caching headers.
    pub refresh_interval: Duration,
    /// Lower clamp for caching headers.
    pub min_refresh: Duration,
    /// Upper clamp for caching headers.
    pub max_refresh: Duration,
    /// How long stale keys are served after their freshness lapsed.
    pub max_stale: Duration,
    /// Consecutive absences before a key is dropped.
    pub key_removal_confirmations: u32,
    /// Largest backoff between failed fetches.
    pub max_retry: Duration,
    /// Jitter fraction: delays are spread over `[d * (1 - jitter), d]`.
    pub jitter: f64,
}

/// Freshness from caching headers: `max-age` minus `Age`, else `Expires` minus `Date`,
/// else `refresh_interval`; `no-cache`/`no-store` mean `min_refresh`. Clamped to
/// `[min_refresh, max_refresh]`.
pub fn freshness(headers: &HeaderMap, s: &MirrorSettings) -> Duration {
    let cc: Vec<String> = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect();
    let age = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let raw = if cc.iter().any(|d| d == "no-cache" || d == "no-store") {
        Some(Duration::ZERO)
    } else if let Some(max_age) = cc.iter().find_map(|d| {
        d.strip_prefix("max-age=")
            .and_then(|v| v.trim_matches('"').parse::<u64>().ok())
    }) {
        Some(Duration::from_secs(max_age.saturating_sub(age)))
    } else {
        headers
            .get(http::header::EXPIRES)
            .and_then(|v| v.to_str().ok())
            .map(|v| match httpdate::parse_http_date(v) {
                Ok(expires) => {
                    let date = headers
                        .get(http::header::DATE)
                        .and_then(|d| d.to_str().ok())
                        .and_then(|d| httpdate::parse_http_date(d).ok())
                        .unwrap_or_else(SystemTime::now);
                    expires.duration_since(date).unwrap_or(Duration::ZERO)
                }
                // An invalid Expires means "already expired" (RFC 9111 5.3).
                Err(_) => Duration::ZERO,
            })
    };
    raw.unwrap_or(s.refresh_interval)
        .clamp(s.min_refresh, s.max_refresh)
}

/// Backoff after `failures` consecutive failures: 1 s, 2 s, 4 s, ... up to `max_retry`.
pub fn retry_delay(failures: u32, max_retry: Duration) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(max_retry)
}

/// Spreads `d` over `[d * (1 - fraction), d]` with `r` in `[0, 1)`.
pub fn jittered(d: Duration, fraction: f64, r: f64) -> Duration {
    d.mul_f64(1.0 - fraction.clamp(0.0, 1.0) * r.clamp(0.0, 1.0))
}

/// A random seed for the jitter generator.
pub fn seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u64::from_le_bytes(b) | 1
}

/// The next value in `[0, 1)` (xorshift64*: jitter only, not security).
pub fn next_f64(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn settings() -> MirrorSettings {
        MirrorSettings {
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            max_stale: Duration::from_secs(600),
            key_removal_confirmations: 2,
            max_retry: Duration::from_secs(60),
            jitter: 0.0,
        }
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).expect("v"));
        }
        m
    }

    #[test]
    fn cache_control_is_clamped_both_ways() {
        let s = settings();
        assert_eq!(
            freshness(&h(&[("cache-control", "public, max-age=15")]), &s),
            Duration::from_secs(60),
            "Auth0's 15 s"
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "max-age=1209600")]), &s),
            Duration::from_secs(3600),
            "two weeks"
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "max-age=900")]), &s),
            Duration::from_secs(900)
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "max-age=900"), ("age", "100")]), &s),
            Duration::from_secs(800)
        );
        assert_eq!(
            freshness(&h(&[("cache-control", "no-cache")]), &s),
            Duration::from_secs(60)
        );
        assert_eq!(
            freshness(&h(&[]), &s),
            Duration::from_secs(300),
            "no headers: refresh_interval"
        );
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let exp = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_001_200));
        assert_eq!(
            freshness(&h(&[("date", &date), ("expires", &exp)]), &s),
            Duration::from_secs(1200)
        );
        assert_eq!(
            freshness(&h(&[("expires", "garbage")]), &s),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let mut r = seed();
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(100), 0.1, next_f64(&mut r));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(100),
                "{d:?}"
            );
        }
    }
}
