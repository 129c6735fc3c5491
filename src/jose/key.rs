//! Verification keys: one place that turns a JWK, a PEM public key or certificate, a bare
//! SubjectPublicKeyInfo or an `x5c` certificate into a `Key`, parsed once into aws-lc
//! verifiers (one per algorithm the key may check), so a token check does no key parsing.
//!
//! Strict about what it keeps: signing keys only (`use`/`key_ops`), RSA of at least 2048
//! bits, EC points on their curve, the JWK's own `alg` honoured, and only public members
//! re-served (private members such as `d` are never copied).

use aws_lc_rs::signature::ParsedPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::alg::{Alg, KeyKind};

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    /// Key type and curve.
    pub kind: KeyKind,
    /// The JWK's own `alg`, when present: then only that algorithm is accepted.
    pub alg: Option<Alg>,
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
    pub fn accepts(&self, alg: Alg) -> bool {
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

fn b64_member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, &'static str> {
    let s = jwk.get(name).and_then(Value::as_str).ok_or("invalid")?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "invalid")
}

/// A key's verification material, parsed once when the key set is loaded (one aws-lc
/// `ParsedPublicKey` per algorithm the key may verify), so a token check does no key
/// parsing or validation at all.
#[derive(Clone)]
pub struct Verifier {
    parsed: Vec<(Alg, ParsedPublicKey)>,
}

impl Verifier {
    fn build(public_der: &[u8], algs: impl Iterator<Item = Alg>) -> Result<Verifier, &'static str> {
        let mut parsed = Vec::new();
        for alg in algs {
            let a = alg.verification();
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
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
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

pub(crate) fn der_len(out: &mut Vec<u8>, len: usize) {
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
    alg: Option<Alg>,
    allowed: &[Alg],
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
    alg: Option<Alg>,
    alg_text: Option<&Value>,
    allowed: &[Alg],
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
pub fn is_bare_base64(text: &str) -> bool {
    text.len() >= 32
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=') || b.is_ascii_whitespace()
        })
}

/// The keys of PEM text: each `PUBLIC KEY` or `CERTIFICATE` block gives a key (all with the
/// given kid) or the reason it is skipped. `None` when the text holds no PEM block at all.
/// Blocks are read with rustls-pki-types' PEM parser; reading stops at the first block that
/// is not valid PEM.
pub fn pem_keys(
    text: &str,
    kid: Option<&str>,
    allowed: &[Alg],
) -> Option<Vec<Result<Key, &'static str>>> {
    use rustls::pki_types::pem::{PemObject, SectionKind};
    // PEM embedded in TOML or JSON is often indented: the parser wants markers at the start
    // of a line, so each line is trimmed first.
    let text: String = text
        .lines()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    // A malformed block is skipped and reading goes on (bounded: every item consumes input).
    for block in <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes()).take(4096) {
        let Ok((kind, der)) = block else {
            out.push(Err("invalid"));
            continue;
        };
        let spki = match kind {
            SectionKind::PublicKey => Ok(der),
            SectionKind::Certificate => spki_of_certificate(&der),
            _ => Err("invalid"),
        };
        out.push(spki.and_then(|spki| key_from_spki(&spki, kid, None, allowed)));
    }
    // Blocks the parser does not read (PKCS#1 `RSA PUBLIC KEY`, `X509 CERTIFICATE`, ...) are
    // reported as skipped keys, not as "no PEM block".
    let pkcs1 = text.matches("-----BEGIN RSA PUBLIC KEY-----").count();
    let unread = text
        .matches("-----BEGIN ")
        .count()
        .saturating_sub(out.len() + pkcs1);
    out.extend(std::iter::repeat_n(Err("unsupported_kty"), pkcs1));
    out.extend(std::iter::repeat_n(Err("invalid"), unread));
    (!out.is_empty()).then_some(out)
}

/// Turns one JWK into a `Key`, or names the reason it is skipped. Key material comes from
/// `n`/`e`, `crv`/`x`/`y`, or, when those are absent, the first `x5c` certificate.
pub fn parse_jwk(jwk: &Value, allowed: &[Alg]) -> Result<Key, &'static str> {
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
        Some(Value::String(a)) => match Alg::parse(a) {
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

/// The RFC 7638 thumbprint of a public JWK (base64url SHA-256 of its required members in
/// lexicographic order, no whitespace); `None` for a key type this verifier does not know.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    let canonical = match s("kty")? {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "OKP" => format!(r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#, s("crv")?, s("x")?),
        _ => return None,
    };
    Some(super::sha256_b64url(canonical.as_bytes()))
}

#[cfg(test)]
mod thumbprint_tests {
    use super::*;

    /// The example of RFC 7638 section 3.1.
    #[test]
    fn rfc7638_example() {
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk).as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }
}
