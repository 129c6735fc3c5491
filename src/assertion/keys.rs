//! The assertion signing keys: which key signs now, and which keys the app's JWKS lists.
//!
//! Generated keys (no `key_file`): two keys exist from the start, the one that signs and the
//! next one, already published; every `rotate_every` the next one starts signing, a new next
//! one is made, and the retired one stays published for `overlap`. So an app that caches the
//! JWKS has every key before its first assertion, and keeps it while assertions signed with it
//! can still be valid (`overlap` >= `ttl`).
//!
//! A key file (PKCS#8 PEM blocks; a mounted Kubernetes Secret, so replicas agree): the first
//! key signs and every key is published. The file is read again every `FILE_CHECK` seconds;
//! keys that leave it stay published for `overlap`, and an unreadable or empty new version is
//! refused with an error log (the keys in force stay). Rotating is: add the new key second,
//! wait for apps' JWKS caches (`max-age`), move it first, later drop the old one.
//!
//! Rotation is lazy: the request that finds the schedule due (an atomic compare on the hot
//! path) does it under a lock; no background task, so nothing to stop or leak on reload.
//! Reload keeps this value when the key settings are unchanged (`Assertions::keep_keys_of`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::jose::sign::SigningKey;
use crate::jose::Alg;

/// How often a key file is read again (seconds).
pub const FILE_CHECK: u64 = 10;
/// The longest `max-age` of the published JWKS (seconds).
const MAX_AGE_CAP: u64 = 300;

/// What decides the keys; equal settings keep the keys across a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySettings {
    /// ES256 or EdDSA.
    pub alg: Alg,
    /// Where keys come from: a PEM file, or generated when `None`.
    pub key_file: Option<PathBuf>,
    /// Generated keys: seconds between rotations (0: never).
    pub rotate_every: u64,
    /// Seconds a key stays published after it stops signing.
    pub overlap: u64,
}

/// What requests read: the key that signs and the published set.
pub struct Ring {
    /// The key that signs now.
    pub signer: Arc<SigningKey>,
    /// `{"keys": [...]}`: the signer, the next key, retired keys still in their overlap.
    pub jwks: Bytes,
}

/// The signing keys and their schedule.
pub struct AssertionKeys {
    settings: KeySettings,
    ring: ArcSwap<Ring>,
    /// Unix second at which the ring must be looked at again (rotation, file check, or the
    /// end of a retired key's overlap).
    next_event: AtomicU64,
    state: Mutex<State>,
}

struct State {
    /// First signs; all are published. Generated: [current, next].
    active: Vec<Arc<SigningKey>>,
    /// Public JWKs of keys that stopped signing, with the second their overlap ends.
    retired: Vec<(String, Value, u64)>,
    next_rotation: u64,
    next_file_check: u64,
    file_digest: Vec<u8>,
}

impl std::fmt::Debug for AssertionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKeys")
            .field("settings", &self.settings)
            .field("signer", &self.ring.load().signer.kid)
            .finish()
    }
}

impl AssertionKeys {
    /// The keys at `now` (Unix seconds): the key file read (errors name it), or two keys made.
    pub fn new(settings: KeySettings, now: u64) -> Result<AssertionKeys, String> {
        let mut state = State {
            active: Vec::new(),
            retired: Vec::new(),
            next_rotation: u64::MAX,
            next_file_check: u64::MAX,
            file_digest: Vec::new(),
        };
        match &settings.key_file {
            Some(path) => {
                let (digest, keys) = read_key_file(path, settings.alg)?;
                state.active = keys;
                state.file_digest = digest;
                state.next_file_check = now + FILE_CHECK;
            }
            None => {
                state.active = vec![generate(settings.alg), generate(settings.alg)];
                if settings.rotate_every > 0 {
                    state.next_rotation = now + settings.rotate_every;
                }
            }
        }
        let ring = ring_of(&state, now);
        let next = next_event(&state);
        Ok(AssertionKeys {
            settings,
            ring: ArcSwap::from_pointee(ring),
            next_event: AtomicU64::new(next),
            state: Mutex::new(state),
        })
    }

    /// The settings these keys were made with.
    pub fn settings(&self) -> &KeySettings {
        &self.settings
    }

    /// The ring in force at `now`, rotating first when the schedule says so.
    pub fn ring(&self, now: u64) -> arc_swap::Guard<Arc<Ring>> {
        if now >= self.next_event.load(Ordering::Acquire) {
            self.advance(now);
        }
        self.ring.load()
    }

    /// `Cache-Control: max-age` for the published set: at most 300 s, and at most half the
    /// rotation period, so a cached set always holds the next key before it signs.
    pub fn max_age(&self) -> u64 {
        match (self.settings.key_file.is_some(), self.settings.rotate_every) {
            (false, r) if r > 0 => (r / 2).min(MAX_AGE_CAP),
            _ => MAX_AGE_CAP,
        }
    }

    fn advance(&self, now: u64) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if now < self.next_event.load(Ordering::Acquire) {
            return; // another request did it
        }
        let s = &self.settings;
        // Generated: one step, whatever the time since the last one: the key that starts
        // signing is the one published a period ago (never one made just now).
        if st.next_rotation <= now {
            let until = now + s.overlap;
            let old = st.active.remove(0);
            st.retired.push((old.kid.clone(), old.public_jwk(), until));
            st.active.push(generate(s.alg));
            st.next_rotation = (st.next_rotation + s.rotate_every).max(now + 1);
            if st.next_rotation <= now + s.rotate_every / 2 {
                // Far behind (an idle sidecar): give apps' caches time for the new next key.
                st.next_rotation = now + s.rotate_every;
            }
        }
        if let Some(path) = s.key_file.as_ref().filter(|_| st.next_file_check <= now) {
            st.next_file_check = now + FILE_CHECK;
            match read_key_file(path, s.alg) {
                Ok((digest, _)) if digest == st.file_digest => {}
                Ok((digest, keys)) => {
                    let old = std::mem::replace(&mut st.active, keys);
                    st.file_digest = digest;
                    for k in old {
                        if !st.active.iter().any(|a| a.kid == k.kid) {
                            st.retired
                                .push((k.kid.clone(), k.public_jwk(), now + s.overlap));
                        }
                    }
                    let State {
                        active, retired, ..
                    } = &mut *st;
                    retired.retain(|(kid, _, _)| !active.iter().any(|a| &a.kid == kid));
                    tracing::info!(
                        signer = %st.active[0].kid,
                        published = st.active.len(),
                        "assertion key file changed; keys reloaded"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "assertion key file unreadable; the keys in force stay")
                }
            }
        }
        st.retired.retain(|(_, _, until)| *until > now);
        self.ring.store(Arc::new(ring_of(&st, now)));
        self.next_event.store(next_event(&st), Ordering::Release);
    }
}

fn generate(alg: Alg) -> Arc<SigningKey> {
    Arc::new(with_thumbprint_kid(SigningKey::generate(alg, "")))
}

/// The key under its RFC 7638 thumbprint as kid.
fn with_thumbprint_kid(key: SigningKey) -> SigningKey {
    let kid = crate::jose::key::thumbprint(&key.public_jwk_without_alg()).unwrap_or_default();
    key.with_kid(&kid)
}

fn ring_of(st: &State, _now: u64) -> Ring {
    let mut keys: Vec<Value> = st.active.iter().map(|k| k.public_jwk()).collect();
    keys.extend(st.retired.iter().map(|(_, jwk, _)| jwk.clone()));
    Ring {
        signer: st.active[0].clone(),
        jwks: Bytes::from(json!({ "keys": keys }).to_string()),
    }
}

fn next_event(st: &State) -> u64 {
    let retire = st.retired.iter().map(|(_, _, u)| *u).min();
    st.next_rotation
        .min(st.next_file_check)
        .min(retire.unwrap_or(u64::MAX))
}

/// Every PKCS#8 `PRIVATE KEY` block of the file (at least one), with the file's digest.
fn read_key_file(path: &PathBuf, alg: Alg) -> Result<(Vec<u8>, Vec<Arc<SigningKey>>), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    let name = || format!("assertion.key_file = {:?}", path.display());
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", name()))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
        .as_ref()
        .to_vec();
    let mut keys = Vec::new();
    for (i, block) in PrivatePkcs8KeyDer::pem_slice_iter(&bytes).enumerate() {
        let der = block.map_err(|e| format!("{}: PEM block {}: {e}", name(), i + 1))?;
        let key = SigningKey::from_pkcs8(alg, "", der.secret_pkcs8_der())
            .map_err(|e| format!("{}: key {}: {e}", name(), i + 1))?;
        keys.push(Arc::new(with_thumbprint_kid(key)));
    }
    if keys.is_empty() {
        return Err(format!("{}: no PEM PRIVATE KEY block (PKCS#8)", name()));
    }
    Ok((digest, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kids(jwks: &Bytes) -> Vec<String> {
        let v: Value = serde_json::from_slice(jwks).expect("json");
        v["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    }

    fn generated(rotate_every: u64, overlap: u64) -> KeySettings {
        KeySettings {
            alg: Alg::ES256,
            key_file: None,
            rotate_every,
            overlap,
        }
    }

    #[test]
    fn generated_keys_are_published_before_they_sign_and_after_they_stop() {
        let t0 = 1_000_000;
        let k = AssertionKeys::new(generated(100, 30), t0).expect("keys");
        let r0 = k.ring(t0);
        let (a, b) = (r0.signer.kid.clone(), kids(&r0.jwks)[1].clone());
        assert_eq!(
            kids(&r0.jwks),
            vec![a.clone(), b.clone()],
            "signer and next"
        );
        assert_eq!(k.ring(t0 + 99).signer.kid, a, "before the period ends");
        // The period ends: the pre-published key signs, the old one stays for the overlap.
        let r1 = k.ring(t0 + 100);
        assert_eq!(r1.signer.kid, b);
        let published = kids(&r1.jwks);
        assert_eq!(published.len(), 3, "{published:?}");
        assert_eq!(published[0], b);
        assert!(published.contains(&a), "the retired key is still published");
        let c = published[1].clone();
        assert!(c != a && c != b, "a new next key");
        assert!(kids(&k.ring(t0 + 129).jwks).contains(&a));
        // The overlap ends: the retired key leaves the set.
        assert_eq!(kids(&k.ring(t0 + 130).jwks), vec![b.clone(), c.clone()]);
        // After a long idle time: one step, to the key published a period ago (c), and a
        // full period before the next one.
        let later = k.ring(t0 + 10_000);
        assert_eq!(later.signer.kid, c);
        assert_eq!(k.ring(t0 + 10_099).signer.kid, c);
        assert_ne!(k.ring(t0 + 10_100).signer.kid, c);
        assert_eq!(k.max_age(), 50);
    }

    #[test]
    fn no_rotation_keeps_one_signer() {
        let k = AssertionKeys::new(generated(0, 30), 10).expect("keys");
        let a = k.ring(10).signer.kid.clone();
        assert_eq!(k.ring(u64::MAX - 1).signer.kid, a);
        assert_eq!(k.max_age(), 300);
    }

    fn pem(keys: &[&SigningKey]) -> String {
        use base64::Engine;
        keys.iter()
            .map(|k| {
                format!(
                    "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                    base64::engine::general_purpose::STANDARD.encode(k.pkcs8_der())
                )
            })
            .collect()
    }

    #[test]
    fn a_key_file_is_read_again_and_dropped_keys_overlap() {
        let dir = std::env::temp_dir().join(format!("assertion-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keys.pem");
        let old = with_thumbprint_kid(SigningKey::generate(Alg::EdDSA, ""));
        let new = with_thumbprint_kid(SigningKey::generate(Alg::EdDSA, ""));
        std::fs::write(&path, pem(&[&old])).expect("write");
        let settings = KeySettings {
            alg: Alg::EdDSA,
            key_file: Some(path.clone()),
            rotate_every: 100,
            overlap: 30,
        };
        let t0 = 5_000;
        let k = AssertionKeys::new(settings, t0).expect("keys");
        assert_eq!(kids(&k.ring(t0).jwks), vec![old.kid.clone()]);
        assert_eq!(
            k.max_age(),
            300,
            "rotate_every applies to generated keys only"
        );
        // Step 1: the new key published second; it does not sign yet.
        std::fs::write(&path, pem(&[&old, &new])).expect("write");
        assert_eq!(
            kids(&k.ring(t0 + 1).jwks).len(),
            1,
            "not read before FILE_CHECK"
        );
        let r = k.ring(t0 + FILE_CHECK);
        assert_eq!(r.signer.kid, old.kid);
        assert_eq!(kids(&r.jwks), vec![old.kid.clone(), new.kid.clone()]);
        // Step 2: the new key alone; the old one stays published for the overlap.
        std::fs::write(&path, pem(&[&new])).expect("write");
        let t = t0 + 2 * FILE_CHECK;
        let r = k.ring(t);
        assert_eq!(r.signer.kid, new.kid);
        assert_eq!(kids(&r.jwks), vec![new.kid.clone(), old.kid.clone()]);
        // A broken file is refused; the keys in force stay.
        std::fs::write(&path, "not a key").expect("write");
        let r = k.ring(t + FILE_CHECK);
        assert_eq!(r.signer.kid, new.kid);
        // The overlap of the old key ends.
        assert_eq!(kids(&k.ring(t + 30).jwks), vec![new.kid.clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let settings = KeySettings {
            alg: Alg::ES256,
            key_file: Some("/nonexistent/assertion.pem".into()),
            rotate_every: 0,
            overlap: 60,
        };
        let e = AssertionKeys::new(settings, 0).expect_err("missing");
        assert!(
            e.starts_with("assertion.key_file = \"/nonexistent/assertion.pem\""),
            "{e}"
        );
    }
}
