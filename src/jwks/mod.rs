//! The local JWKS mirror: parsed, verification-ready key sets per provider.
//!
//! A `KeySet` is immutable once built; each provider's current set sits behind an
//! `ArcSwapOption` in `ProviderKeys`, so the request path does one atomic load and a hash
//! lookup by kid, never a lock and never the network. Parsing is tolerant per key (a key
//! this verifier cannot or must not use is skipped and counted, not fatal for the set) and
//! strict about what it keeps: signing keys only, RSA of at least 2048 bits, curves that
//! match, never private material re-served.

pub mod fetch;
pub mod kidmiss;
pub mod refresh;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::config::KeySource;

/// The key type and curve, which decide the algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `kty: RSA` (RS* and PS*).
    Rsa,
    /// `kty: EC`, `crv: P-256` (ES256).
    EcP256,
    /// `kty: EC`, `crv: P-384` (ES384).
    EcP384,
    /// `kty: OKP`, `crv: Ed25519` (EdDSA).
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind can verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::EcP384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// Parses a JWS `alg` name; only the asymmetric algorithms this verifier supports.
/// Case-sensitive on purpose (RFC 7518): `none`, `None`, `HS256`, `rs256` all give `None`.
pub fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One usable verification key.
pub struct Key {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// Key type and curve.
    pub kind: KeyKind,
    /// The JWK's own `alg`, when present: then only that algorithm is accepted.
    pub alg: Option<Algorithm>,
    /// Parsed once: a verifier per algorithm this key may check.
    pub verifier: Verifier,
    /// The public JWK as re-served by the admin endpoint (public members only).
    pub public_jwk: Value,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// A key that was not taken into the set, and why (a bounded label value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Its kid, if readable.
    pub kid: Option<String>,
    /// `not_signing`, `unsupported_kty`, `unsupported_alg`, `unsupported_curve`, `weak_key`,
    /// `alg_not_allowed`, `symmetric`, `invalid`, `over_limit`.
    pub reason: &'static str,
}

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
#[derive(Debug, Clone)]
pub struct ParsePolicy {
    /// The provider's algorithm allow-list.
    pub algorithms: Vec<Algorithm>,
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
                let (set, mut skip) =
                    Self::from_pem(pem.as_str().unwrap_or(""), Some(kid), &remaining)?;
                out.extend(set.keys.iter().map(|k| clone_key(k)));
                skipped.append(&mut skip);
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
        let blocks = pem_blocks(text);
        if blocks.is_empty() {
            return Err(JwksError("no PEM block found".into()));
        }
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (label, der) in blocks {
            let spki = match label.as_str() {
                "PUBLIC KEY" => Ok(der.clone()),
                "CERTIFICATE" => spki_of_certificate(&der),
                "RSA PUBLIC KEY" => Err("unsupported_kty"),
                _ => Err("invalid"),
            };
            let result = spki.and_then(|spki| key_from_spki(&spki, kid, None, &policy.algorithms));
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

fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, &'static str> {
    let s = jwk.get(name).and_then(Value::as_str).ok_or("invalid")?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "invalid")
}

fn clone_key(k: &Key) -> Key {
    Key {
        kid: k.kid.clone(),
        kind: k.kind,
        alg: k.alg,
        verifier: k.verifier.clone(),
        public_jwk: k.public_jwk.clone(),
    }
}

/// The aws-lc verification algorithm for a JWS algorithm.
fn aws_alg(alg: Algorithm) -> Option<&'static dyn sig::VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

/// A key's verification material, parsed once when the key set is loaded (one aws-lc
/// `ParsedPublicKey` per algorithm the key may verify), so a token check does no key
/// parsing or validation at all.
#[derive(Clone)]
pub struct Verifier {
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl Verifier {
    fn build(
        public_der: &[u8],
        algs: impl Iterator<Item = Algorithm>,
    ) -> Result<Verifier, &'static str> {
        let mut parsed = Vec::new();
        for alg in algs {
            let a = aws_alg(alg).ok_or("unsupported_alg")?;
            // Rejects malformed keys and EC points that are not on the curve.
            parsed.push((
                alg,
                ParsedPublicKey::new(a, public_der).map_err(|_| "invalid")?,
            ));
        }
        Ok(Verifier { parsed })
    }

    /// Checks `signature` over `message` with `alg`; false for an algorithm this key does not
    /// verify.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok())
    }
}

/// The verification material of one key, with its public JWK members.
struct Material {
    kind: KeyKind,
    /// PKCS#1 RSAPublicKey DER, an uncompressed EC point, or the Ed25519 key.
    public_der: Vec<u8>,
    public: Map<String, Value>,
}

fn der_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(bytes.len() - 1);
        out.push(0x80 | (bytes.len() - first) as u8);
        out.extend_from_slice(&bytes[first..]);
    }
}

fn der_uint(out: &mut Vec<u8>, v: &[u8]) {
    out.push(0x02);
    let pad = v.first().is_some_and(|b| b & 0x80 != 0);
    der_len(out, v.len() + pad as usize);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    der_uint(&mut body, n);
    der_uint(&mut body, e);
    let mut out = vec![0x30];
    der_len(&mut out, body.len());
    out.extend(body);
    out
}

fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, &'static str> {
    let n = strip_leading_zeros(n);
    let bits = (n.len() * 8).saturating_sub(n.first().map_or(8, |b| b.leading_zeros() as usize));
    if bits < 2048 {
        return Err("weak_key");
    }
    let e = strip_leading_zeros(e);
    if e.is_empty() || e.len() > 8 {
        return Err("invalid");
    }
    let mut public = Map::new();
    public.insert("kty".into(), Value::String("RSA".into()));
    public.insert("n".into(), Value::String(URL_SAFE_NO_PAD.encode(n)));
    public.insert("e".into(), Value::String(URL_SAFE_NO_PAD.encode(e)));
    Ok(Material {
        kind: KeyKind::Rsa,
        public_der: rsa_public_key_der(n, e),
        public,
    })
}

fn ec_material(crv: &str, x: &[u8], y: &[u8]) -> Result<Material, &'static str> {
    let (kind, len) = match crv {
        "P-256" => (KeyKind::EcP256, 32),
        "P-384" => (KeyKind::EcP384, 48),
        _ => return Err("unsupported_curve"),
    };
    if x.len() != len || y.len() != len {
        return Err("invalid");
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(4u8);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    let mut public = Map::new();
    public.insert("kty".into(), Value::String("EC".into()));
    public.insert("crv".into(), Value::String(crv.into()));
    public.insert("x".into(), Value::String(URL_SAFE_NO_PAD.encode(x)));
    public.insert("y".into(), Value::String(URL_SAFE_NO_PAD.encode(y)));
    Ok(Material {
        kind,
        public_der: point,
        public,
    })
}

fn ed_material(x: &[u8]) -> Result<Material, &'static str> {
    if x.len() != 32 {
        return Err("invalid");
    }
    let mut public = Map::new();
    public.insert("kty".into(), Value::String("OKP".into()));
    public.insert("crv".into(), Value::String("Ed25519".into()));
    public.insert("x".into(), Value::String(URL_SAFE_NO_PAD.encode(x)));
    Ok(Material {
        kind: KeyKind::Ed25519,
        public_der: x.to_vec(),
        public,
    })
}

/// Key material from a DER SubjectPublicKeyInfo (PEM public keys, certificates, x5c).
fn material_from_spki(der: &[u8]) -> Result<Material, &'static str> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_SIG_ED25519};
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    use x509_parser::x509::SubjectPublicKeyInfo;
    let (_, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| "invalid")?;
    if spki.algorithm.algorithm == OID_SIG_ED25519 {
        return ed_material(&spki.subject_public_key.data);
    }
    match spki.parsed().map_err(|_| "invalid")? {
        PublicKey::RSA(k) => rsa_material(k.modulus, k.exponent),
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            let crv = match curve {
                Some(oid) if oid == OID_EC_P256 => "P-256",
                Some(oid) if oid == OID_NIST_EC_P384 => "P-384",
                _ => return Err("unsupported_curve"),
            };
            let data = point.data();
            if data.first() != Some(&4) || data.len() % 2 != 1 {
                return Err("invalid");
            }
            let len = (data.len() - 1) / 2;
            ec_material(crv, &data[1..1 + len], &data[1 + len..])
        }
        _ => Err("unsupported_kty"),
    }
}

/// The SubjectPublicKeyInfo of a DER certificate. Validity dates are not checked: the
/// certificate is only a container for a key fetched from a trusted endpoint.
fn spki_of_certificate(der: &[u8]) -> Result<Vec<u8>, &'static str> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "invalid")?;
    Ok(cert.public_key().raw.to_vec())
}

fn key_from_spki(
    spki: &[u8],
    kid: Option<&str>,
    alg: Option<Algorithm>,
    allowed: &[Algorithm],
) -> Result<Key, &'static str> {
    finish_key(
        material_from_spki(spki)?,
        kid.map(str::to_string),
        alg,
        None,
        allowed,
    )
}

fn finish_key(
    m: Material,
    kid: Option<String>,
    alg: Option<Algorithm>,
    alg_text: Option<&Value>,
    allowed: &[Algorithm],
) -> Result<Key, &'static str> {
    match alg {
        Some(a) if !m.kind.fits(a) => return Err("invalid"),
        Some(a) if !allowed.contains(&a) => return Err("alg_not_allowed"),
        None if !allowed.iter().any(|a| m.kind.fits(*a)) => return Err("alg_not_allowed"),
        _ => {}
    }
    let verifier = Verifier::build(
        &m.public_der,
        allowed
            .iter()
            .copied()
            .filter(|a| m.kind.fits(*a) && alg.is_none_or(|k| k == *a)),
    )?;
    let mut public = m.public;
    if let Some(kid) = &kid {
        public.insert("kid".into(), Value::String(kid.clone()));
    }
    public.insert("use".into(), Value::String("sig".into()));
    if let Some(a) = alg_text {
        public.insert("alg".into(), a.clone());
    }
    Ok(Key {
        kid,
        kind: m.kind,
        alg,
        verifier,
        public_jwk: Value::Object(public),
    })
}

/// Whether key material is bare standard base64 (a DER body without PEM armour): at least
/// one line of base64 alphabet, whitespace allowed, nothing else.
fn is_bare_base64(text: &str) -> bool {
    text.len() >= 32
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') || b.is_ascii_whitespace()
        })
}

/// PEM blocks as (label, DER bytes); malformed blocks are left out.
fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    use base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let after = &rest[begin + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = after[..label_end].to_string();
        let body_start = &after[label_end + 5..];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = body_start.find(&end_marker) else {
            break;
        };
        let b64: String = body_start[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Ok(der) = STANDARD.decode(b64) {
            out.push((label, der));
        }
        rest = &body_start[end + end_marker.len()..];
    }
    out
}

/// Turns one JWK into a `Key`, or names the reason it is skipped. Key material comes from
/// `n`/`e`, `crv`/`x`/`y`, or, when those are absent, the first `x5c` certificate.
pub fn parse_jwk(jwk: &Value, allowed: &[Algorithm]) -> Result<Key, &'static str> {
    use base64::engine::general_purpose::STANDARD;
    let obj = jwk.as_object().ok_or("invalid")?;
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("invalid"),
    };
    if let Some(u) = obj.get("use") {
        if u.as_str() != Some("sig") {
            return Err("not_signing");
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("invalid")?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err("not_signing");
        }
    }
    let alg = match obj.get("alg") {
        None => None,
        Some(Value::String(a)) => match parse_alg(a) {
            Some(a) => Some(a),
            None if a.starts_with("HS") => return Err("symmetric"),
            None => return Err("unsupported_alg"),
        },
        Some(_) => return Err("invalid"),
    };
    let kty = obj.get("kty").and_then(Value::as_str).ok_or("invalid")?;
    let has = |name: &str| obj.contains_key(name);
    let x5c_material = || -> Result<Material, &'static str> {
        let first = obj
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .ok_or("invalid")?;
        let der = STANDARD.decode(first).map_err(|_| "invalid")?;
        material_from_spki(&spki_of_certificate(&der)?)
    };
    let material = match kty {
        "RSA" if has("n") => rsa_material(&b64_member(obj, "n")?, &b64_member(obj, "e")?)?,
        "EC" if has("x") => {
            let crv = obj.get("crv").and_then(Value::as_str).ok_or("invalid")?;
            ec_material(crv, &b64_member(obj, "x")?, &b64_member(obj, "y")?)?
        }
        "OKP" if has("x") => {
            let crv = obj.get("crv").and_then(Value::as_str).ok_or("invalid")?;
            if crv != "Ed25519" {
                return Err("unsupported_curve");
            }
            ed_material(&b64_member(obj, "x")?)?
        }
        "RSA" | "EC" | "OKP" => {
            let m = x5c_material()?;
            let fits_kty = matches!(
                (kty, m.kind),
                ("RSA", KeyKind::Rsa)
                    | ("EC", KeyKind::EcP256 | KeyKind::EcP384)
                    | ("OKP", KeyKind::Ed25519)
            );
            if !fits_kty {
                return Err("invalid");
            }
            m
        }
        "oct" => return Err("symmetric"),
        _ => return Err("unsupported_kty"),
    };
    finish_key(material, kid, alg, obj.get("alg"), allowed)
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

/// What an operator wants to know about one provider's mirror.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MirrorStatus {
    /// Unix seconds of the last fetch attempt.
    pub last_fetch: Option<u64>,
    /// Unix seconds of the last successful fetch.
    pub last_success: Option<u64>,
    /// Unix seconds of the next planned fetch.
    pub next_fetch: Option<u64>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// The JWKS URL in use (after discovery).
    pub jwks_uri: Option<String>,
    /// Unix seconds until which the current keys are fresh.
    pub fresh_until: Option<u64>,
    /// Unix seconds since which stale keys are served (refreshes failing).
    pub stale_since: Option<u64>,
}

/// One provider's mirrored keys and where they come from.
pub struct ProviderKeys {
    /// Provider name (metric label).
    pub name: String,
    /// Expected issuer (checked against discovery documents).
    pub issuer: String,
    /// Where the keys come from.
    pub source: KeySource,
    /// Parsing limits and the algorithm allow-list.
    pub policy: ParsePolicy,
    current: ArcSwapOption<KeySet>,
    loaded_once: AtomicBool,
    stale: AtomicBool,
    status: Mutex<MirrorStatus>,
    /// Unknown-kid refetch coordination.
    pub gate: kidmiss::KidMissGate,
}

impl ProviderKeys {
    /// A mirror with no keys yet.
    pub fn new(
        name: String,
        issuer: String,
        source: KeySource,
        policy: ParsePolicy,
        gate: kidmiss::KidMissGate,
    ) -> Self {
        ProviderKeys {
            name,
            issuer,
            source,
            policy,
            current: ArcSwapOption::empty(),
            loaded_once: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            status: Mutex::new(MirrorStatus::default()),
            gate,
        }
    }

    /// Whether stale keys are being served.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Sets the stale flag.
    pub fn set_stale(&self, stale: bool) {
        self.stale.store(stale, Ordering::Relaxed);
        if !stale {
            self.update_status(|s| s.stale_since = None);
        }
    }

    /// Resolves an unknown kid: at most one refetch at a time and per interval.
    pub async fn resolve_unknown_kid(&self, kid: &str) -> kidmiss::KidMiss {
        self.gate
            .resolve(kid, || {
                self.with_current(|s| s.is_some_and(|s| s.has_kid(kid)))
            })
            .await
    }

    /// The current key set (lock-free); `None` when keys were never loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Borrow-style access for the hot path.
    pub fn with_current<R>(&self, f: impl FnOnce(Option<&KeySet>) -> R) -> R {
        let guard = self.current.load();
        f(guard.as_deref())
    }

    /// Installs a new key set.
    pub fn store(&self, set: KeySet) {
        self.current.store(Some(Arc::new(set)));
        self.loaded_once.store(true, Ordering::Release);
    }

    /// Drops every key (after `max_stale`): requests get 503.
    pub fn clear(&self) {
        self.current.store(None);
    }

    /// Latched: true once keys were loaded at least once.
    pub fn ready(&self) -> bool {
        self.loaded_once.load(Ordering::Acquire)
    }

    /// A copy of the status.
    pub fn status(&self) -> MirrorStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Updates the status.
    pub fn update_status(&self, f: impl FnOnce(&mut MirrorStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all() -> ParsePolicy {
        ParsePolicy {
            algorithms: crate::config::SUPPORTED_ALGORITHMS
                .iter()
                .filter_map(|a| parse_alg(a))
                .collect(),
            max_keys: 100,
        }
    }

    #[test]
    fn parse_alg_is_case_sensitive_and_refuses_none_and_hmac() {
        for bad in [
            "none", "None", "NONE", "nOnE", "HS256", "rs256", "", "ES512",
        ] {
            assert_eq!(parse_alg(bad), None, "{bad}");
        }
        assert_eq!(parse_alg("EdDSA"), Some(Algorithm::EdDSA));
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
        let real = crate::testkit::SigningKey::generate(Algorithm::ES256, "k");
        let doc = json!({"keys": [real.public_jwk_without_alg()]});
        let (set, _) = KeySet::from_document(&doc, &all()).expect("doc");
        let k = &set.candidates(Some("k"))[0];
        assert!(k.accepts(Algorithm::ES256));
        assert!(!k.accepts(Algorithm::ES384));
        assert!(!k.accepts(Algorithm::RS256));
    }

    #[test]
    fn regression_max_keys_holds_across_multi_block_pem_maps() {
        let pem = |alg| rcgen_free_spki_pem(&crate::testkit::SigningKey::generate(alg, "x"));
        let doc = json!({"a": pem(Algorithm::ES256), "b": format!("{}{}", pem(Algorithm::ES384), pem(Algorithm::EdDSA))});
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
        der_len(&mut bit_string, bits.len() + 1);
        bit_string.push(0);
        bit_string.extend(bits);
        let body = [alg_id, bit_string].concat();
        let mut spki = vec![0x30];
        der_len(&mut spki, body.len());
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
}
