//! A signed identity for the app: on every allowed request, a short-lived JWT signed by the
//! sidecar's own key (`[assertion]`). The app verifies one local key set (the admin
//! listener's `/assertion/jwks.json`), whatever identity provider issued the original token,
//! and a request that did not pass the sidecar has no valid assertion. The header is an
//! identity header: client copies are stripped.
//!
//! Claims: `iss` (this sidecar), `aud` (the app), `iat`, `exp` (`ttl` from now, never past
//! the original token's `exp`), `jti`, `provider`, `token_iss` (the original issuer), and the
//! verified claims `[assertion] claims` lists. Keys come from `key_file` (PKCS#8 PEM, so
//! replicas agree) or are generated and rotated on a schedule with overlap (`keys`); a key's
//! `kid` is its RFC 7638 thumbprint.

mod keys;

pub use keys::{AssertionKeys, KeySettings, FILE_CHECK};

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use crate::auth::Verified;
use crate::config::AssertionConfig;
use crate::jose::Alg;

/// The compiled assertion signer.
pub struct Assertions {
    /// The header carrying the assertion.
    pub header: HeaderName,
    issuer: String,
    audience: String,
    ttl: u64,
    claims: Vec<String>,
    keys: Arc<AssertionKeys>,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("header", &self.header)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Assertions {
    /// The signer of an `[assertion]` section (`None` when disabled); errors name the key.
    pub fn compile(c: &AssertionConfig) -> Result<Option<Assertions>, String> {
        if !c.enabled {
            return Ok(None);
        }
        let alg = match Alg::parse(&c.algorithm) {
            Some(a @ (Alg::ES256 | Alg::EdDSA)) => a,
            _ => {
                return Err(format!(
                    "assertion.algorithm = {:?}: use \"ES256\" or \"EdDSA\"",
                    c.algorithm
                ))
            }
        };
        let settings = KeySettings {
            alg,
            key_file: c.key_file.clone(),
            rotate_every: c.rotate_every.as_secs(),
            overlap: c.overlap.as_secs(),
        };
        let keys = AssertionKeys::new(settings, crate::auth::now_unix())?;
        Ok(Some(Assertions {
            header: HeaderName::try_from(c.header.to_ascii_lowercase())
                .map_err(|_| format!("assertion.header = {:?} is not a header name", c.header))?,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            ttl: c.ttl.as_secs().max(1),
            claims: c.claims.clone(),
            keys: Arc::new(keys),
        }))
    }

    /// This signer with the keys of `old` when they were made with the same settings, so a
    /// reload neither rotates generated keys nor forgets retired ones.
    pub fn keep_keys_of(&self, old: &Assertions) -> Option<Assertions> {
        (old.keys.settings() == self.keys.settings()).then(|| Assertions {
            header: self.header.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            ttl: self.ttl,
            claims: self.claims.clone(),
            keys: old.keys.clone(),
        })
    }

    /// The assertion for a verified token at `now` (Unix seconds).
    pub fn mint(&self, v: &Verified, now: u64) -> Option<HeaderValue> {
        let mut exp = now + self.ttl;
        if let Some(token_exp) = v.info.exp {
            exp = exp.min(token_exp.max(0.0) as u64);
        }
        let mut claims = Map::new();
        for name in &self.claims {
            if let Some(value) = v.info.claims.get(name) {
                claims.insert(name.clone(), value.clone());
            }
        }
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).ok()?;
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(self.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(URL_SAFE_NO_PAD.encode(jti)));
        claims.insert("provider".into(), json!(v.provider.name));
        let iss = v.info.claims.get("iss").cloned().unwrap_or(Value::Null);
        claims.insert("token_iss".into(), iss);
        let ring = self.keys.ring(now);
        HeaderValue::from_str(&ring.signer.mint(&Value::Object(claims))).ok()
    }

    /// An assertion for a human (explain): its key, algorithm and claims, not its signature.
    pub fn describe(&self, assertion: &str) -> String {
        let Ok(p) = crate::jose::jws::parse(assertion) else {
            return "(not a JWS)".into();
        };
        format!(
            "signed JWT (alg {}, kid {}), claims {}",
            p.header.alg,
            p.header.kid.as_deref().unwrap_or("-"),
            Value::Object(p.claims.clone())
        )
    }

    /// The public key set apps verify assertions with, at `now`.
    pub fn jwks(&self, now: u64) -> Bytes {
        self.keys.ring(now).jwks.clone()
    }

    /// `Cache-Control: max-age` (seconds) for the published key set.
    pub fn max_age(&self) -> u64 {
        self.keys.max_age()
    }
}
