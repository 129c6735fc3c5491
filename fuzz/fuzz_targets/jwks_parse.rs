//! `KeySet::parse` over every provider shape: JWKS JSON (with x5c, missing alg, use/key_ops,
//! weak and symmetric keys), `{kid: PEM}` maps and PEM text.
//!
//! Input: byte 0 picks `max_keys` (1..=4) and, with bit 2, an ES256-only allow-list instead
//! of every supported algorithm; the rest is the document.
//! Invariants: never more than `max_keys` keys; every key fits the allow-list for at least one
//! algorithm and only for algorithms of its kind; kid lookup is consistent; the re-served
//! public JWKs carry no private members.

#![no_main]

use jwks_sidecar::jose::Alg;
use jwks_sidecar::jwks::{KeySet, ParsePolicy};
use libfuzzer_sys::fuzz_target;

const ALL: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, doc)) = data.split_first() else {
        return;
    };
    let max_keys = (ctl & 3) as usize + 1;
    let names: &[&str] = if ctl & 4 != 0 { &["ES256"] } else { &ALL };
    let policy = ParsePolicy {
        algorithms: names.iter().filter_map(|n| Alg::parse(n)).collect(),
        max_keys,
    };
    let Ok((set, skipped)) = KeySet::parse(doc, &policy) else {
        return;
    };
    assert!(
        set.len() <= max_keys,
        "{} keys taken with max_keys = {max_keys} (skipped: {skipped:?})",
        set.len()
    );
    assert_eq!(set.is_empty(), set.len() == 0);
    for key in set.keys() {
        let usable: Vec<_> = policy
            .algorithms
            .iter()
            .filter(|a| key.accepts(**a))
            .collect();
        assert!(!usable.is_empty(), "key {key:?} fits no allowed algorithm");
        for a in ALL.iter().filter_map(|n| Alg::parse(n)) {
            if key.accepts(a) {
                assert!(key.kind.fits(a), "key {key:?} accepts {a:?} outside its kind");
            }
        }
        if let Some(kid) = &key.kid {
            assert!(set.has_kid(kid));
            assert!(set.candidates(Some(kid)).iter().any(|k| std::sync::Arc::ptr_eq(k, key)));
        }
        if let Some(obj) = key.public_jwk.as_object() {
            for m in PRIVATE_MEMBERS {
                assert!(!obj.contains_key(m), "private member {m:?} re-served in {obj:?}");
            }
        }
    }
    assert_eq!(set.candidates(None).len(), set.len());
    for s in &skipped {
        assert!(!s.reason.is_empty());
    }
});
