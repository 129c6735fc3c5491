//! The local JWKS mirror: per provider, the current key set behind a lock-free swap, and
//! the machinery that keeps it fresh.
//!
//! Each provider's current `KeySet` sits behind an `ArcSwapOption` in `ProviderKeys`, so the
//! request path does one atomic load and a hash lookup by kid, never a lock and never the
//! network.
//!
//! - `keyset`: the immutable, kid-indexed set and the document shapes it is parsed from.
//! - `fetch`: the HTTP client (TLS, limits, conditional requests).
//! - `refresh`: sources, freshness, persistence and the per-provider mirror task.
//! - `kidmiss`: the bounded, single-flight refetch for an unknown kid.

pub mod fetch;
pub mod freshness;
pub mod keyset;
pub mod kidmiss;
mod persist;
pub mod refresh;
pub mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

pub use freshness::MirrorSettings;
pub use keyset::{JwksError, KeySet, ParsePolicy};
pub use source::{FetchSettings, KeySource};

/// Everything a provider's key mirror depends on, compiled once from its config by
/// `plan::compile`. A reload keeps a provider's mirror (keys, schedule, state) exactly when
/// these settings are equal: nothing outside this struct can change what the mirror does.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySettings {
    /// Provider name (metric label, persistence file).
    pub name: String,
    /// Expected issuer (checked against discovery documents and persisted sets).
    pub issuer: String,
    /// Where the keys come from.
    pub source: KeySource,
    /// Parsing limits and the algorithm allow-list.
    pub parse: ParsePolicy,
    /// How documents are fetched.
    pub fetch: FetchSettings,
    /// Refresh timing.
    pub mirror: MirrorSettings,
    /// At most one unknown-kid refetch per this interval.
    pub kid_miss_min_interval: Duration,
    /// How long a request waits for the refetch its unknown kid triggered.
    pub kid_miss_wait: Duration,
    /// Where good sets are persisted (`jwks.cache_dir`), if anywhere.
    pub persist_path: Option<PathBuf>,
}

/// What an operator wants to know about one provider's mirror.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MirrorStatus {
    /// Unix seconds of the last fetch attempt.
    pub last_fetch: Option<u64>,
    /// Unix seconds of the last successful fetch.
    pub last_success: Option<u64>,
    /// Unix seconds of the next planned fetch.
    pub next_fetch: Option<u64>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// The JWKS URL in use (after discovery).
    pub jwks_uri: Option<String>,
    /// Unix seconds until which the current keys are fresh.
    pub fresh_until: Option<u64>,
    /// Unix seconds since which stale keys are served (refreshes failing).
    pub stale_since: Option<u64>,
}

/// One provider's mirrored keys and where they come from.
pub struct ProviderKeys {
    /// Provider name (metric label).
    pub name: String,
    /// Expected issuer (checked against discovery documents).
    pub issuer: String,
    /// Where the keys come from.
    pub source: KeySource,
    /// Parsing limits and the algorithm allow-list.
    pub policy: ParsePolicy,
    current: ArcSwapOption<KeySet>,
    /// Latched true once keys were loaded (awaited by reload and tests).
    ready: tokio::sync::watch::Sender<bool>,
    /// Latched true once the first fetch ended, whatever its outcome.
    attempted: tokio::sync::watch::Sender<bool>,
    stale: AtomicBool,
    status: Mutex<MirrorStatus>,
    /// Unknown-kid refetch coordination.
    pub gate: kidmiss::KidMissGate,
}

impl ProviderKeys {
    /// A mirror with no keys yet.
    pub fn new(settings: &KeySettings) -> Self {
        ProviderKeys {
            name: settings.name.clone(),
            issuer: settings.issuer.clone(),
            source: settings.source.clone(),
            policy: settings.parse.clone(),
            current: ArcSwapOption::empty(),
            ready: tokio::sync::watch::Sender::new(false),
            attempted: tokio::sync::watch::Sender::new(false),
            stale: AtomicBool::new(false),
            status: Mutex::new(MirrorStatus::default()),
            gate: kidmiss::KidMissGate::new(settings.kid_miss_min_interval, settings.kid_miss_wait),
        }
    }

    /// Whether stale keys are being served.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Sets the stale flag.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
        if !stale {
            self.update_status(|s| s.stale_since = None);
        }
    }

    /// Resolves an unknown kid: at most one refetch at a time and per interval.
    pub async fn resolve_unknown_kid(&self, kid: &str) -> kidmiss::KidMiss {
        self.gate
            .resolve(kid, || {
                self.with_current(|s| s.is_some_and(|s| s.has_kid(kid)))
            })
            .await
    }

    /// The current key set (lock-free); `None` when keys were never loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Borrow-style access for the hot path.
    pub fn with_current<R>(&self, f: impl FnOnce(Option<&KeySet>) -> R) -> R {
        let guard = self.current.load();
        f(guard.as_deref())
    }

    /// Installs a new key set.
    pub fn store(&self, set: KeySet) {
        self.current.store(Some(Arc::new(set)));
        self.ready.send_if_modified(|r| !std::mem::replace(r, true));
    }

    /// Drops every key (after `max_stale`): requests get 503.
    pub fn clear(&self) {
        self.current.store(None);
    }

    /// Latched: true once keys were loaded at least once.
    pub fn ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once keys were loaded at least once.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Notes that the first fetch ended (success or failure).
    pub fn mark_attempted(&self) {
        self.attempted
            .send_if_modified(|a| !std::mem::replace(a, true));
    }

    /// Latched: keys were loaded, or the first fetch ended.
    pub fn attempted(&self) -> bool {
        self.ready() || *self.attempted.borrow()
    }

    /// Resolves once keys were loaded or the first fetch ended.
    pub async fn wait_attempted(&self) {
        let mut ready = self.ready.subscribe();
        let mut attempted = self.attempted.subscribe();
        tokio::select! {
            _ = ready.wait_for(|r| *r) => {}
            _ = attempted.wait_for(|a| *a) => {}
        }
    }

    /// A copy of the status.
    pub fn status(&self) -> MirrorStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Updates the status.
    pub fn update_status(&self, f: impl FnOnce(&mut MirrorStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
