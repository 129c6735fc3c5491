//! Signing keys: generated at run time or read from PKCS#8, with their public JWK. Used by
//! the signed assertion for the app (`assertion`), the demo's identity provider, and the test
//! suites, which also mint the malformed and hostile tokens a real library would refuse to
//! produce (alg confusion, odd headers, bad signatures).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::{Alg, KeyKind};

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Material {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key with its kid and algorithm.
pub struct SigningKey {
    /// Key id published in the JWKS and put in token headers.
    pub kid: String,
    /// Alg used to sign.
    pub alg: Alg,
    material: Material,
}

impl SigningKey {
    /// A key read from PKCS#8 DER (a PEM `PRIVATE KEY` body) for `alg`: P-256 for ES256,
    /// P-384 for ES384, Ed25519 for EdDSA, RSA for RS*/PS*.
    pub fn from_pkcs8(alg: Alg, kid: &str, der: &[u8]) -> Result<SigningKey, String> {
        let bad =
            |e: &dyn std::fmt::Display| format!("not a {} PKCS#8 private key: {e}", alg.name());
        let material = match alg.key_kind() {
            KeyKind::Rsa => Material::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|e| bad(&e))?),
            KeyKind::EcP256 => Material::Ec(
                EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| bad(&e))?,
            ),
            KeyKind::EcP384 => Material::Ec(
                EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P384_SHA384_FIXED_SIGNING, der)
                    .map_err(|e| bad(&e))?,
            ),
            KeyKind::Ed25519 => {
                Material::Ed(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| bad(&e))?)
            }
        };
        Ok(SigningKey {
            kid: kid.to_string(),
            alg,
            material,
        })
    }

    /// Generates a fresh key for `alg` (RSA keys are 2048 bits).
    pub fn generate(alg: Alg, kid: &str) -> SigningKey {
        let material = match alg.key_kind() {
            KeyKind::Rsa => Material::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation"),
            ),
            KeyKind::EcP256 => Material::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("P-256 key generation"),
            ),
            KeyKind::EcP384 => Material::Ec(
                EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING)
                    .expect("P-384 key generation"),
            ),
            KeyKind::Ed25519 => {
                Material::Ed(Ed25519KeyPair::generate().expect("Ed25519 key generation"))
            }
        };
        SigningKey {
            kid: kid.to_string(),
            alg,
            material,
        }
    }

    /// The same key under another kid.
    pub fn with_kid(mut self, kid: &str) -> SigningKey {
        self.kid = kid.to_string();
        self
    }

    /// The same key material under another algorithm of its family (e.g. RS256 -> PS384).
    pub fn with_alg(mut self, alg: Alg) -> SigningKey {
        self.alg = alg;
        self
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = self.public_jwk_without_alg();
        jwk["alg"] = json!(self.alg.name());
        jwk
    }

    /// The public JWK without `alg` (as Entra publishes them).
    pub fn public_jwk_without_alg(&self) -> Value {
        match &self.material {
            Material::Rsa(k) => {
                let pk = k.public_key();
                json!({"kty": "RSA", "kid": self.kid, "use": "sig",
                    "n": b64(pk.modulus().big_endian_without_leading_zero()),
                    "e": b64(pk.exponent().big_endian_without_leading_zero())})
            }
            Material::Ec(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "kid": self.kid, "use": "sig", "crv": crv,
                    "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])})
            }
            Material::Ed(k) => {
                json!({"kty": "OKP", "kid": self.kid, "use": "sig", "crv": "Ed25519",
                "x": b64(k.public_key().as_ref())})
            }
        }
    }

    /// Raw public key bytes as used for HMAC alg-confusion attacks: the RSA modulus, the
    /// EC point, or the Ed25519 key.
    pub fn public_bytes(&self) -> Vec<u8> {
        match &self.material {
            Material::Rsa(k) => k.public_key().as_ref().to_vec(),
            Material::Ec(k) => k.public_key().as_ref().to_vec(),
            Material::Ed(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The private key as PKCS#8 DER (to build X.509 certificates around it in tests).
    pub fn pkcs8_der(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer;
        match &self.material {
            Material::Rsa(k) => k.as_der().map(|d| d.as_ref().to_vec()).unwrap_or_default(),
            Material::Ec(k) => k
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .unwrap_or_default(),
            Material::Ed(k) => k
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .unwrap_or_default(),
        }
    }

    /// Signs arbitrary bytes with this key and algorithm.
    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.material {
            Material::Rsa(k) => {
                let padding = self
                    .alg
                    .rsa_signing()
                    .expect("an RSA key signs with an RSA algorithm");
                let mut out = vec![0u8; k.public_modulus_len()];
                k.sign(padding, &rng, input, &mut out).expect("RSA signing");
                out
            }
            Material::Ec(k) => k
                .sign(&rng, input)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Material::Ed(k) => k.sign(input).as_ref().to_vec(),
        }
    }

    /// A token with header `{"alg", "kid", "typ": "JWT"}`.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with_header(
            &json!({"alg": self.alg.name(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A token with an arbitrary header, signed with this key.
    pub fn mint_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let s = self.sign(input.as_bytes());
        format!("{input}.{}", b64(s))
    }
}
