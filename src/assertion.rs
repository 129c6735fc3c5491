//! A signed identity for the app: on every allowed request, a short-lived JWT signed by the
//! sidecar's own key (`[assertion]`). The app verifies one local key set (the admin
//! listener's `/assertion/jwks.json`), whatever identity provider issued the original token,
//! and a request that did not pass the sidecar has no valid assertion. The header is an
//! identity header: client copies are stripped.
//!
//! Claims: `iss` (this sidecar), `aud` (the app), `iat`, `exp` (`ttl` from now, never past
//! the original token's `exp`), `jti`, `provider`, `token_iss` (the original issuer), and the
//! verified claims `[assertion] claims` lists. The key comes from `key_file` (PKCS#8 PEM,
//! so replicas agree) or is generated at start; its `kid` is its RFC 7638 thumbprint.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use crate::auth::Verified;
use crate::config::AssertionConfig;
use crate::jose::sign::SigningKey;
use crate::jose::Alg;

/// The compiled assertion signer.
pub struct Assertions {
    /// The header carrying the assertion.
    pub header: HeaderName,
    issuer: String,
    audience: String,
    ttl: u64,
    claims: Vec<String>,
    key: Arc<SigningKey>,
    jwks: Bytes,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("header", &self.header)
            .field("kid", &self.key.kid)
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
        let key = match &c.key_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("assertion.key_file = {:?}: {e}", path.display()))?;
                let der = pkcs8_der(&text).ok_or_else(|| {
                    format!(
                        "assertion.key_file = {:?}: no PEM PRIVATE KEY block (PKCS#8)",
                        path.display()
                    )
                })?;
                SigningKey::from_pkcs8(alg, "", &der)
                    .map_err(|e| format!("assertion.key_file = {:?}: {e}", path.display()))?
            }
            None => SigningKey::generate(alg, ""),
        };
        let kid = crate::jose::key::thumbprint(&key.public_jwk_without_alg())
            .ok_or("assertion key: no thumbprint")?;
        let key = key.with_kid(&kid);
        let jwks = json!({"keys": [key.public_jwk()]}).to_string();
        Ok(Some(Assertions {
            header: HeaderName::try_from(c.header.to_ascii_lowercase())
                .map_err(|_| format!("assertion.header = {:?} is not a header name", c.header))?,
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            ttl: c.ttl.as_secs().max(1),
            claims: c.claims.clone(),
            key: Arc::new(key),
            jwks: Bytes::from(jwks),
        }))
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
        HeaderValue::from_str(&self.key.mint(&Value::Object(claims))).ok()
    }

    /// The public key set apps verify assertions with.
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }
}

/// The DER body of the first `PRIVATE KEY` PEM block.
fn pkcs8_der(text: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
        .ok()
        .map(|k| k.secret_pkcs8_der().to_vec())
}
