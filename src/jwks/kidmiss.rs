//! Unknown-kid handling that cannot be turned into a flood against the IdP.
//!
//! A request whose kid is not in the set asks the provider's refresher for one refetch and
//! waits for it a bounded time (`kid_miss_wait`). Requests arriving while that refetch is in
//! flight join it (single-flight). After a refetch starts, no other kid-miss refetch starts
//! for `kid_miss_min_interval`: those requests are refused at once (`rate_limited`). Kids a
//! refetch proved absent are remembered for the same interval in a bounded negative cache.
//! So any number of random kids costs at most two fetches per interval (one on demand, one
//! deferred). A rate-limited request still leaves a note: the refresher fetches again as
//! soon as the interval allows. When that deferred refetch is due within `kid_miss_wait`,
//! the request waits for it instead of being refused. So after junk traffic a genuinely new
//! kid is refused for at most `kid_miss_min_interval - kid_miss_wait` (28 s at the
//! defaults), and is accepted as soon as the deferred refetch has run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// Outcome of an unknown kid (the metric's `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KidMiss {
    /// The refetch found the kid: verify again.
    RefetchedFound,
    /// The refetch completed without the kid.
    RefetchedAbsent,
    /// A refetch ran less than `kid_miss_min_interval` ago.
    RateLimited,
    /// A recent refetch already proved this kid absent.
    NegativeCached,
    /// The refetch did not complete within `kid_miss_wait`.
    WaitTimeout,
}

impl KidMiss {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            KidMiss::RefetchedFound => "refetched_found",
            KidMiss::RefetchedAbsent => "refetched_absent",
            KidMiss::RateLimited => "rate_limited",
            KidMiss::NegativeCached => "negative_cached",
            KidMiss::WaitTimeout => "wait_timeout",
        }
    }
}

/// Most kids remembered as absent; beyond it the expired ones go, then all.
const MAX_NEGATIVE: usize = 4096;
/// Kids longer than this never trigger a refetch and are not remembered.
const MAX_KID_LEN: usize = 256;

#[derive(Default)]
struct GateState {
    requested: bool,
    deferred: bool,
    last_start: Option<Instant>,
    negative: HashMap<String, Instant>,
    /// The kid that asked for the pending refetch, passed up to a tier that understands it
    /// (another sidecar's `/jwks/{provider}`), so the miss travels up the tiers.
    kid: Option<String>,
}

/// The rendezvous between requests with unknown kids and the provider's refresher.
pub struct KidMissGate {
    notify: Notify,
    rearm: Notify,
    done: watch::Sender<u64>,
    state: Mutex<GateState>,
    min_interval: Duration,
    wait: Duration,
}

impl KidMissGate {
    /// A gate with the provider's limits.
    pub fn new(min_interval: Duration, wait: Duration) -> Self {
        KidMissGate {
            notify: Notify::new(),
            rearm: Notify::new(),
            done: watch::channel(0).0,
            state: Mutex::new(GateState::default()),
            min_interval,
            wait,
        }
    }

    /// Request side: returns once the kid's fate is known. `has_kid` re-checks the key set
    /// after a refetch.
    pub async fn resolve(&self, kid: &str, has_kid: impl Fn() -> bool) -> KidMiss {
        if kid.len() > MAX_KID_LEN {
            return KidMiss::RateLimited;
        }
        let (mut rx, wait) = {
            let Ok(mut st) = self.state.lock() else {
                return KidMiss::RateLimited;
            };
            let now = Instant::now();
            match st.negative.get(kid) {
                Some(until) if *until > now => return KidMiss::NegativeCached,
                Some(_) => {
                    st.negative.remove(kid);
                }
                None => {}
            }
            let mut wait = self.wait;
            if !st.requested {
                match st
                    .last_start
                    .map(|last| last + self.min_interval)
                    .filter(|due| now < *due)
                {
                    Some(due) => {
                        if !st.deferred {
                            st.deferred = true;
                            st.kid = Some(kid.to_string());
                            // The refresher may be asleep until its next scheduled fetch:
                            // have it wake at `due` instead.
                            self.rearm.notify_one();
                        }
                        // The deferred refetch is scheduled: when it starts within this
                        // request's wait, wait for it (and for the fetch itself) instead of
                        // refusing, so junk kids just before a real rotation cannot turn the
                        // new key away.
                        if due > now + self.wait {
                            return KidMiss::RateLimited;
                        }
                        wait += due - now;
                    }
                    None => {
                        st.deferred = false;
                        st.requested = true;
                        st.last_start = Some(now);
                        st.kid = Some(kid.to_string());
                        self.notify.notify_one();
                    }
                }
            }
            (self.done.subscribe(), wait)
        };
        match tokio::time::timeout(wait, rx.changed()).await {
            Ok(Ok(())) => {
                if has_kid() {
                    KidMiss::RefetchedFound
                } else {
                    self.remember_absent(kid);
                    KidMiss::RefetchedAbsent
                }
            }
            _ => KidMiss::WaitTimeout,
        }
    }

    fn remember_absent(&self, kid: &str) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if st.negative.len() >= MAX_NEGATIVE {
            st.negative.retain(|_, until| *until > now);
            if st.negative.len() >= MAX_NEGATIVE {
                st.negative.clear();
            }
        }
        st.negative.insert(kid.to_string(), now + self.min_interval);
    }

    /// Refresher side: resolves when a request asked for a refetch.
    pub async fn requested(&self) {
        self.notify.notified().await
    }

    /// Refresher side: resolves when a deferred refetch was newly noted (recompute the wake-up
    /// time with `deferred_due`).
    pub async fn deferred_noted(&self) {
        self.rearm.notified().await
    }

    /// Refresher side: when a rate-limited kid miss is waiting, the time its refetch is allowed.
    pub fn deferred_due(&self) -> Option<Instant> {
        let st = self.state.lock().ok()?;
        if st.deferred && !st.requested {
            st.last_start.map(|l| l + self.min_interval)
        } else {
            None
        }
    }

    /// Refresher side: starts the deferred refetch if it is due; true when it did.
    pub fn start_deferred(&self) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let due = st.last_start.is_none_or(|l| now >= l + self.min_interval);
        if st.deferred && !st.requested && due {
            // The deferred refetch does not start a new interval: a real kid miss right after
            // it may still refetch at once, so a flood delays a rotation by at most one
            // interval, at a cost of at most two fetches per interval.
            st.deferred = false;
            st.requested = true;
            true
        } else {
            false
        }
    }

    /// Refresher side: the kid whose miss started the refetch now under way, if any.
    pub fn pending_kid(&self) -> Option<String> {
        let st = self.state.lock().ok()?;
        st.requested.then(|| st.kid.clone()).flatten()
    }

    /// Refresher side: the refetch finished (successfully or not); wake the waiters.
    pub fn complete(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.requested = false;
            st.kid = None;
            // Kids proved absent before this fetch may exist now.
            st.negative.clear();
            self.done.send_modify(|g| *g += 1);
        }
    }

    /// Number of kids remembered as absent.
    pub fn negative_len(&self) -> usize {
        self.state.lock().map(|s| s.negative.len()).unwrap_or(0)
    }
}
