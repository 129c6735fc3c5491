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
pub use key::{parse_jwk, Key, SkippedKey, Verifier};
pub use trace::{Check, Observer, Trace};
