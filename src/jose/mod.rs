//! The JOSE core: everything about JWS algorithms, keys and signatures, with no knowledge of
//! providers, HTTP or configuration.
//!
//! - `alg`: the one table of supported algorithms and the key kinds that verify them.
//! - `key`: JWK / PEM / SPKI / x509 into a verification `Key` (parsed once).
//! - `jws`: strict compact-JWS parsing and signature verification.
//! - `sign`: signing keys (generated or PKCS#8) and token minting.
//! - `trace`: the observer the verifier reports each check to (`explain` prints it).
//!
//! Signatures are verified with aws-lc-rs directly (the same library rustls uses here):
//! each key is parsed once into `ParsedPublicKey`s when its set is loaded, which a generic
//! JWT crate would redo per token.

pub mod alg;
pub mod jws;
pub mod key;
pub mod sign;
pub mod trace;

pub use alg::{Alg, KeyKind};

/// base64url (no padding) of the SHA-256 of `bytes`: RFC 7638 thumbprints, DPoP's `ath`, a
/// certificate's `x5t#S256` (RFC 8705).
pub fn sha256_b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
}
pub use key::{parse_jwk, Key, SkippedKey, Verifier};
pub use trace::{Check, Observer, Trace};
