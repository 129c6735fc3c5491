//! Signing keys and token minting, for the test suite and the built-in demo.
//!
//! Keys are generated at run time with aws-lc-rs (nothing secret is ever committed), and
//! tokens are signed by hand so tests can also mint the malformed and hostile ones a real
//! library would refuse to produce (alg confusion, odd headers, bad signatures).

pub use crate::jose::sign::SigningKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

/// base64url without padding.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWKS document of the keys' public JWKs.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()})
}

/// An HMAC-SHA256 token signed with `secret` (for alg-confusion tests).
pub fn mint_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// An unsigned token (`alg` as given, empty or junk signature).
pub fn mint_unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string()),
        b64(claims.to_string())
    )
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    crate::auth::now_unix()
}
