//! The one table of JWS algorithms this verifier supports (RFC 7518 names), and the key
//! types that can verify them. Everything else that needs an algorithm fact (config
//! validation, key parsing, the verifier, token minting in tests) reads it from here.
//!
//! Only asymmetric algorithms exist in the type: `none` and the HMAC family cannot be
//! expressed, so no configuration, key or token can select them.

use aws_lc_rs::signature::{self as sig, RsaEncoding, VerificationAlgorithm};

/// The key type and curve, which decide the algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// A supported JWS signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(clippy::upper_case_acronyms)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519 (RFC 8037).
    EdDSA,
}

/// One row of the table.
struct Row {
    alg: Alg,
    name: &'static str,
    kind: KeyKind,
    verify: &'static dyn VerificationAlgorithm,
    rsa_signing: Option<&'static dyn RsaEncoding>,
}

/// The table, in `Alg` order (checked by a test).
static TABLE: [Row; 9] = [
    Row {
        alg: Alg::RS256,
        name: "RS256",
        kind: KeyKind::Rsa,
        verify: &sig::RSA_PKCS1_2048_8192_SHA256,
        rsa_signing: Some(&sig::RSA_PKCS1_SHA256),
    },
    Row {
        alg: Alg::RS384,
        name: "RS384",
        kind: KeyKind::Rsa,
        verify: &sig::RSA_PKCS1_2048_8192_SHA384,
        rsa_signing: Some(&sig::RSA_PKCS1_SHA384),
    },
    Row {
        alg: Alg::RS512,
        name: "RS512",
        kind: KeyKind::Rsa,
        verify: &sig::RSA_PKCS1_2048_8192_SHA512,
        rsa_signing: Some(&sig::RSA_PKCS1_SHA512),
    },
    Row {
        alg: Alg::PS256,
        name: "PS256",
        kind: KeyKind::Rsa,
        verify: &sig::RSA_PSS_2048_8192_SHA256,
        rsa_signing: Some(&sig::RSA_PSS_SHA256),
    },
    Row {
        alg: Alg::PS384,
        name: "PS384",
        kind: KeyKind::Rsa,
        verify: &sig::RSA_PSS_2048_8192_SHA384,
        rsa_signing: Some(&sig::RSA_PSS_SHA384),
    },
    Row {
        alg: Alg::PS512,
        name: "PS512",
        kind: KeyKind::Rsa,
        verify: &sig::RSA_PSS_2048_8192_SHA512,
        rsa_signing: Some(&sig::RSA_PSS_SHA512),
    },
    Row {
        alg: Alg::ES256,
        name: "ES256",
        kind: KeyKind::EcP256,
        verify: &sig::ECDSA_P256_SHA256_FIXED,
        rsa_signing: None,
    },
    Row {
        alg: Alg::ES384,
        name: "ES384",
        kind: KeyKind::EcP384,
        verify: &sig::ECDSA_P384_SHA384_FIXED,
        rsa_signing: None,
    },
    Row {
        alg: Alg::EdDSA,
        name: "EdDSA",
        kind: KeyKind::Ed25519,
        verify: &sig::ED25519,
        rsa_signing: None,
    },
];

impl Alg {
    /// Every supported algorithm, in table order.
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// Parses a JWS `alg` name. Case-sensitive on purpose (RFC 7518): `none`, `None`,
    /// `HS256`, `rs256` all give `None`.
    pub fn parse(name: &str) -> Option<Alg> {
        TABLE.iter().find(|r| r.name == name).map(|r| r.alg)
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// The key type (and curve) that verifies this algorithm.
    pub fn key_kind(self) -> KeyKind {
        self.row().kind
    }

    /// The aws-lc verification algorithm.
    pub fn verification(self) -> &'static dyn VerificationAlgorithm {
        self.row().verify
    }

    /// The aws-lc RSA signing padding (RSA algorithms only; used to mint tokens).
    pub fn rsa_signing(self) -> Option<&'static dyn RsaEncoding> {
        self.row().rsa_signing
    }

    /// Every supported name, comma-separated (for error messages).
    pub fn names() -> String {
        TABLE.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl KeyKind {
    /// Whether a key of this kind can verify `alg`.
    pub fn fits(self, alg: Alg) -> bool {
        alg.key_kind() == self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_enum_order_and_names_round_trip() {
        for (i, a) in Alg::ALL.iter().enumerate() {
            assert_eq!(TABLE[i].alg, *a);
            assert_eq!(Alg::parse(a.name()), Some(*a));
        }
    }

    #[test]
    fn parse_is_case_sensitive_and_refuses_none_and_hmac() {
        for bad in [
            "none", "None", "HS256", "HS512", "rs256", "ES512", "", "RS256 ",
        ] {
            assert_eq!(Alg::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn each_kind_fits_its_family_only() {
        assert!(KeyKind::Rsa.fits(Alg::PS512));
        assert!(!KeyKind::Rsa.fits(Alg::ES256));
        assert!(KeyKind::EcP384.fits(Alg::ES384));
        assert!(!KeyKind::EcP256.fits(Alg::ES384));
        assert!(KeyKind::Ed25519.fits(Alg::EdDSA));
    }
}
