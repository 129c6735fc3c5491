//! A provider's key set: an immutable, kid-indexed set of verification keys, parsed from
//! whatever document shape a provider publishes (a JWKS, a `{kid: PEM}` map, PEM text, a
//! bare base64 SubjectPublicKeyInfo). Parsing is tolerant per key (a key this verifier
//! cannot or must not use is skipped and counted, not fatal for the set) and bounded
//! (`max_keys`). Turning one key into verification material is `jose::key`'s job.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::jose::key::{is_bare_base64, parse_jwk, pem_keys};
use crate::jose::{Alg, Key, SkippedKey};

/// An immutable, indexed set of verification keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Box<[Arc<Key>]>,
    by_kid: HashMap<String, Box<[Arc<Key>]>>,
}

/// Why a whole document was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError(pub String);

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JwksError {}

/// Limits applied while parsing a key set.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsePolicy {
    /// The provider's algorithm allow-list.
    pub algorithms: Vec<Alg>,
    /// Most keys taken from one document; the rest are skipped as `over_limit`.
    pub max_keys: usize,
}

impl KeySet {
    /// Builds a set from keys (used by tests and by the parser).
    pub fn from_keys(keys: Vec<Key>) -> Self {
        Self::from_arcs(keys.into_iter().map(Arc::new).collect())
    }

    /// Builds a set from shared keys (merging keeps the `Arc`s of retained keys).
    pub fn from_arcs(keys: Vec<Arc<Key>>) -> Self {
        let mut by_kid: HashMap<String, Vec<Arc<Key>>> = HashMap::new();
        for k in &keys {
            if let Some(kid) = &k.kid {
                by_kid.entry(kid.clone()).or_default().push(k.clone());
            }
        }
        KeySet {
            keys: keys.into_boxed_slice(),
            by_kid: by_kid
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
        }
    }

    /// Parses a key document in any shape providers publish:
    /// a JWKS (`{"keys": [...]}`, extra members such as Stytch's `request_id` ignored),
    /// a `{kid: PEM certificate}` map (Google, Firebase), or PEM text (a public key or
    /// certificates, e.g. Clerk's JWT public key). Unusable keys are skipped and reported.
    pub fn parse(
        bytes: &[u8],
        policy: &ParsePolicy,
    ) -> Result<(KeySet, Vec<SkippedKey>), JwksError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| JwksError("key document is not UTF-8".into()))?;
        let trimmed = text.trim();
        if trimmed.starts_with("-----BEGIN") {
            return Self::from_pem(text, None, policy);
        }
        if is_bare_base64(trimmed) {
            // Clerk's dashboard "JWT Verification Key": a PEM public key with its header and
            // footer removed, on one line.
            let pem = format!("-----BEGIN PUBLIC KEY-----\n{trimmed}\n-----END PUBLIC KEY-----\n");
            return Self::from_pem(&pem, None, policy);
        }
        let doc: Value = serde_json::from_str(text).map_err(|e| {
            JwksError(format!(
                "key material is not usable: expected a JWKS ({{\"keys\": [...]}}), a {{kid: PEM}} map, \
                 a PEM public key or certificate (-----BEGIN PUBLIC KEY-----), or a bare base64 \
                 SubjectPublicKeyInfo (Clerk's JWT verification key); it is not valid JSON: {e}"
            ))
        })?;
        Self::from_document(&doc, policy)
    }

    /// Like `parse`, from an already parsed JSON value.
    pub fn from_document(
        doc: &Value,
        policy: &ParsePolicy,
    ) -> Result<(KeySet, Vec<SkippedKey>), JwksError> {
        let obj = doc
            .as_object()
            .ok_or_else(|| JwksError("key document is not a JSON object".into()))?;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        if let Some(keys) = obj.get("keys") {
            let keys = keys
                .as_array()
                .ok_or_else(|| JwksError("JWKS \"keys\" is not an array".into()))?;
            for jwk in keys {
                if out.len() >= policy.max_keys {
                    skipped.push(SkippedKey {
                        kid: kid_of(jwk),
                        reason: "over_limit",
                    });
                    continue;
                }
                match parse_jwk(jwk, &policy.algorithms) {
                    Ok(k) => out.push(k),
                    Err(reason) => skipped.push(SkippedKey {
                        kid: kid_of(jwk),
                        reason,
                    }),
                }
            }
        } else if !obj.is_empty()
            && obj.values().all(|v| {
                v.as_str()
                    .is_some_and(|s| s.trim_start().starts_with("-----BEGIN"))
            })
        {
            // {kid: "-----BEGIN CERTIFICATE-----..."} (Google, Firebase securetoken).
            for (kid, pem) in obj {
                if out.len() >= policy.max_keys {
                    skipped.push(SkippedKey {
                        kid: Some(kid.clone()),
                        reason: "over_limit",
                    });
                    continue;
                }
                // A value may hold several PEM blocks: cap them at what is left of max_keys
                // (found by the jwks_parse fuzzer: the full cap per kid allowed ~max_keys^2).
                let remaining = ParsePolicy {
                    max_keys: policy.max_keys - out.len(),
                    ..policy.clone()
                };
                // One unusable entry is a skipped key, not a refused document.
                match Self::from_pem(pem.as_str().unwrap_or(""), Some(kid), &remaining) {
                    Ok((set, mut skip)) => {
                        out.extend(set.keys.iter().map(|k| (**k).clone()));
                        skipped.append(&mut skip);
                    }
                    Err(_) => skipped.push(SkippedKey {
                        kid: Some(kid.clone()),
                        reason: "invalid",
                    }),
                }
            }
        } else {
            return Err(JwksError(
                "key document has no \"keys\" array and is not a {kid: PEM certificate} map".into(),
            ));
        }
        Ok((KeySet::from_keys(out), skipped))
    }

    /// Keys from PEM text: `PUBLIC KEY` or `CERTIFICATE` blocks, all with the given kid.
    pub fn from_pem(
        text: &str,
        kid: Option<&str>,
        policy: &ParsePolicy,
    ) -> Result<(KeySet, Vec<SkippedKey>), JwksError> {
        let blocks = pem_keys(text, kid, &policy.algorithms)
            .ok_or_else(|| JwksError("no PEM block found".into()))?;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for result in blocks {
            match result {
                Ok(k) if out.len() < policy.max_keys => out.push(k),
                Ok(_) => skipped.push(SkippedKey {
                    kid: kid.map(str::to_string),
                    reason: "over_limit",
                }),
                Err(reason) => skipped.push(SkippedKey {
                    kid: kid.map(str::to_string),
                    reason,
                }),
            }
        }
        Ok((KeySet::from_keys(out), skipped))
    }

    /// Candidate keys for a token: those with its kid, or every key when it has none. A set
    /// in which no key has a kid (a PEM public key, such as Clerk's, whose tokens still carry
    /// a `kid`) offers all its keys whatever the token's kid: the signature decides.
    pub fn candidates(&self, kid: Option<&str>) -> &[Arc<Key>] {
        match kid {
            Some(_) if self.by_kid.is_empty() => &self.keys,
            Some(kid) => self.by_kid.get(kid).map(|v| &v[..]).unwrap_or(&[]),
            None => &self.keys,
        }
    }

    /// Whether a key with this kid exists.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// All keys.
    pub fn keys(&self) -> &[Arc<Key>] {
        &self.keys
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public key set as a JWKS document.
    pub fn to_jwks(&self) -> Value {
        Value::Array(self.keys.iter().map(|k| k.public_jwk.clone()).collect())
            .pipe(|keys| serde_json::json!({ "keys": keys }))
    }
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

fn kid_of(jwk: &Value) -> Option<String> {
    jwk.get("kid")
        .and_then(Value::as_str)
        .map(|s| s.chars().take(128).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    fn all() -> ParsePolicy {
        ParsePolicy {
            algorithms: Alg::ALL.to_vec(),
            max_keys: 100,
        }
    }

    #[test]
    fn skips_enc_keys_and_weak_rsa_and_symmetric_keys() {
        let small_n = URL_SAFE_NO_PAD.encode([0xC5u8; 128]); // 1024 bits
        let doc = json!({"keys": [
            {"kty": "RSA", "use": "enc", "kid": "e", "n": small_n, "e": "AQAB", "alg": "RSA-OAEP"},
            {"kty": "RSA", "kid": "w", "n": small_n, "e": "AQAB"},
            {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "XYZ", "kid": "u"},
            {"kty": "OKP", "kid": "ops", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "key_ops": ["encrypt"]},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "d": "secret"},
        ]});
        let (set, skipped) = KeySet::from_document(&doc, &all()).expect("doc");
        let reasons: Vec<_> = skipped.iter().map(|s| s.reason).collect();
        assert_eq!(
            reasons,
            [
                "not_signing",
                "weak_key",
                "symmetric",
                "unsupported_curve",
                "unsupported_kty",
                "not_signing"
            ]
        );
        assert_eq!(set.len(), 1);
        let served = set.to_jwks().to_string();
        assert!(
            !served.contains("secret"),
            "private member re-served: {served}"
        );
    }

    #[test]
    fn ec_point_not_on_the_curve_is_skipped_at_load() {
        let doc = json!({"keys": [{"kty": "EC", "kid": "k", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])}]});
        let (set, skipped) = KeySet::from_document(&doc, &all()).expect("doc");
        assert!(set.is_empty());
        assert_eq!(skipped[0].reason, "invalid");
    }

    #[test]
    fn key_without_alg_fits_only_its_family() {
        let real = crate::testkit::SigningKey::generate(Alg::ES256, "k");
        let doc = json!({"keys": [real.public_jwk_without_alg()]});
        let (set, _) = KeySet::from_document(&doc, &all()).expect("doc");
        let k = &set.candidates(Some("k"))[0];
        assert!(k.accepts(Alg::ES256));
        assert!(!k.accepts(Alg::ES384));
        assert!(!k.accepts(Alg::RS256));
    }

    #[test]
    fn regression_max_keys_holds_across_multi_block_pem_maps() {
        let pem = |alg| rcgen_free_spki_pem(&crate::testkit::SigningKey::generate(alg, "x"));
        let doc =
            json!({"a": pem(Alg::ES256), "b": format!("{}{}", pem(Alg::ES384), pem(Alg::EdDSA))});
        let policy = ParsePolicy {
            max_keys: 2,
            ..all()
        };
        let (set, skipped) = KeySet::from_document(&doc, &policy).expect("doc");
        assert_eq!(set.len(), 2);
        assert_eq!(
            skipped.iter().filter(|s| s.reason == "over_limit").count(),
            1
        );
    }

    /// A PEM SubjectPublicKeyInfo for a test key, built from its JWK (no extra crates).
    fn rcgen_free_spki_pem(k: &crate::testkit::SigningKey) -> String {
        let jwk = k.public_jwk_without_alg();
        let b = |n: &str| {
            URL_SAFE_NO_PAD
                .decode(jwk[n].as_str().unwrap_or(""))
                .unwrap_or_default()
        };
        // AlgorithmIdentifier and key bits for each kind.
        let (alg_id, bits): (Vec<u8>, Vec<u8>) = match jwk["crv"].as_str() {
            Some("P-256") => (
                hex("301306072a8648ce3d020106082a8648ce3d030107"),
                [vec![4], b("x"), b("y")].concat(),
            ),
            Some("P-384") => (
                hex("301006072a8648ce3d020106052b81040022"),
                [vec![4], b("x"), b("y")].concat(),
            ),
            _ => (hex("300506032b6570"), b("x")),
        };
        let mut bit_string = vec![0x03];
        crate::jose::key::der_len(&mut bit_string, bits.len() + 1);
        bit_string.push(0);
        bit_string.extend(bits);
        let body = [alg_id, bit_string].concat();
        let mut spki = vec![0x30];
        crate::jose::key::der_len(&mut spki, body.len());
        spki.extend(body);
        use base64::engine::general_purpose::STANDARD;
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(spki)
        )
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    #[test]
    fn key_count_limit_skips_the_rest() {
        let key = json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([1u8; 32])});
        let doc = json!({"keys": vec![key; 5]});
        let policy = ParsePolicy {
            max_keys: 3,
            ..all()
        };
        let (set, skipped) = KeySet::from_document(&doc, &policy).expect("doc");
        assert_eq!(set.len(), 3);
        assert_eq!(skipped.len(), 2);
    }

    #[test]
    fn regression_pem_indented_unknown_labels_and_bad_blocks_do_not_refuse_the_set() {
        let good = rcgen_free_spki_pem(&crate::testkit::SigningKey::generate(Alg::ES256, "x"));
        // Indented, as in a TOML multi-line string.
        let indented: String = good.lines().map(|l| format!("    {l}\n")).collect();
        let (set, _) = KeySet::parse(indented.as_bytes(), &all()).expect("indented PEM");
        assert_eq!(set.len(), 1);
        // A {kid: PEM} map: an entry the parser cannot read is skipped, the others kept.
        let doc = json!({
            "good": good,
            "odd": "-----BEGIN X509 CERTIFICATE-----\nAAAA\n-----END X509 CERTIFICATE-----\n",
        });
        let (set, skipped) = KeySet::from_document(&doc, &all()).expect("map");
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        // A malformed block before a good one.
        let text = format!("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n{good}");
        let (set, skipped) = KeySet::parse(text.as_bytes(), &all()).expect("bad then good");
        assert_eq!((set.len(), skipped.len()), (1, 1), "{skipped:?}");
    }
}
