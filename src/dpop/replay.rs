//! The `jti` replay cache of DPoP proofs (RFC 9449 section 11.1): a proof is accepted once per
//! key within the window its `iat` is accepted in.
//!
//! Bounded by construction: 16 shards, each with two generations of 128-bit digests of
//! (key thumbprint, `jti`) with the proof's `iat`. A generation lasts one window; when the
//! current one is older than the window it becomes the previous one and the previous one is
//! dropped, so an entry lives between one and two windows (at least as long as its proof can be
//! accepted). A generation never holds more than its share of `max_entries`: when one is full
//! it turns early and drops entries still inside their window. That is counted (`evictions`),
//! and it fails closed: the shard then refuses every proof whose `iat` is not newer than the
//! newest dropped one (its iat, at most its insertion time), so an evicted proof can never
//! replay. Fresh proofs keep passing while a generation takes more than a second to fill, i.e.
//! below about `max_entries / 2` proofs per second; a faster flood (which needs valid bound
//! tokens) makes clients retry with a new proof a second later. Size it for the peak proof
//! rate times two windows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const SHARDS: usize = 16;

/// What `check_and_insert` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: recorded.
    New,
    /// Seen before within the window.
    Replayed,
}

struct Shard {
    current: HashMap<u128, u64>,
    previous: HashMap<u128, u64>,
    started: u64,
    /// Proofs with an `iat` at or below this were possibly dropped while live: refused.
    floor: u64,
}

/// The cache.
pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    window: u64,
    per_generation: usize,
    /// Entries dropped inside their window because a generation was full.
    pub evictions: AtomicU64,
}

impl ReplayCache {
    /// A cache for proofs accepted within `window` seconds, holding at most `max_entries`.
    pub fn new(window: u64, max_entries: usize) -> ReplayCache {
        let per_generation = (max_entries / (2 * SHARDS)).max(1);
        ReplayCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                        started: 0,
                        floor: 0,
                    })
                })
                .collect(),
            window: window.max(1),
            per_generation,
            evictions: AtomicU64::new(0),
        }
    }

    /// Records the proof `(jkt, jti)` made at `iat`, at `now`; says whether it was seen within
    /// the window (or may have been, see the module docs).
    pub fn check_and_insert(&self, jkt: &str, jti: &str, iat: u64, now: u64) -> Seen {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(jkt.as_bytes());
        ctx.update(&[0]);
        ctx.update(jti.as_bytes());
        let d = ctx.finish();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d.as_ref()[..16]);
        let key = u128::from_le_bytes(b);
        let shard = &self.shards[(key as usize) % SHARDS];
        let Ok(mut s) = shard.lock() else {
            return Seen::Replayed; // a poisoned lock fails closed
        };
        if s.current.contains_key(&key) || s.previous.contains_key(&key) || iat <= s.floor {
            return Seen::Replayed;
        }
        let full = s.current.len() >= self.per_generation;
        if full || now >= s.started.saturating_add(self.window) {
            // The previous generation ended when the current one started: its last entries
            // are live until one window after that.
            if now < s.started.saturating_add(self.window) && !s.previous.is_empty() {
                self.evictions
                    .fetch_add(s.previous.len() as u64, Ordering::Relaxed);
                let newest = s.previous.values().copied().max().unwrap_or(0);
                s.floor = s.floor.max(newest);
            }
            s.previous = std::mem::take(&mut s.current);
            s.started = now;
        }
        // A client picks its iat, up to the leeway ahead: the floor is kept at or below the
        // insertion time, so a flood of future-dated proofs cannot push it past now and
        // refuse everyone's fresh proofs.
        s.current.insert(key, iat.min(now));
        Seen::New
    }

    /// Evictions counted since the last call (for the metric).
    pub fn take_evictions(&self) -> u64 {
        self.evictions.swap(0, Ordering::Relaxed)
    }

    /// Entries held now (both generations, every shard).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.current.len() + s.previous.len())
            .sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_is_accepted_once_within_its_window() {
        let c = ReplayCache::new(60, 1000);
        assert_eq!(c.check_and_insert("k1", "j1", 1000, 1000), Seen::New);
        assert_eq!(c.check_and_insert("k1", "j1", 1000, 1030), Seen::Replayed);
        assert_eq!(
            c.check_and_insert("k2", "j1", 1000, 1030),
            Seen::New,
            "per key"
        );
        // Still remembered one window later (it moved to the previous generation).
        assert_eq!(c.check_and_insert("k1", "j1", 1000, 1061), Seen::Replayed);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_unique_jtis() {
        let c = ReplayCache::new(60, 10_000);
        for i in 0..200_000u64 {
            let t = 1000 + i / 10_000;
            c.check_and_insert("k", &i.to_string(), t, t);
        }
        assert!(c.len() <= 10_000, "{} entries", c.len());
        assert!(
            c.evictions.load(Ordering::Relaxed) > 0,
            "the flood was counted"
        );
    }

    #[test]
    fn a_flood_that_evicts_a_proof_cannot_replay_it() {
        // 1000 entries: 31 per generation per shard. A victim's proof, then a flood of
        // proofs made in the same second: whatever shard the victim's entry is in, it is
        // dropped early, and its replay is still refused (fails closed on iat).
        let c = ReplayCache::new(70, 1000);
        assert_eq!(c.check_and_insert("victim", "v", 5000, 5000), Seen::New);
        for i in 0..5_000u64 {
            c.check_and_insert("attacker", &i.to_string(), 5000, 5000);
        }
        assert!(
            c.evictions.load(Ordering::Relaxed) > 0,
            "the flood evicted live entries"
        );
        assert_eq!(
            c.check_and_insert("victim", "v", 5000, 5001),
            Seen::Replayed
        );
        // A fresh proof (a newer iat) still passes.
        assert_eq!(c.check_and_insert("victim", "w", 5002, 5002), Seen::New);
    }

    #[test]
    fn future_dated_proofs_cannot_push_the_floor_past_now() {
        // A flood dated 5 s ahead (within the leeway) fills the cache; a client's proof made
        // a second later still passes.
        let c = ReplayCache::new(70, 1000);
        for i in 0..5_000u64 {
            c.check_and_insert("attacker", &i.to_string(), 5005, 5000);
        }
        assert!(c.evictions.load(Ordering::Relaxed) > 0);
        assert_eq!(c.check_and_insert("client", "fresh", 5001, 5001), Seen::New);
    }
}
