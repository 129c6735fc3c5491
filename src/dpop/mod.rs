//! DPoP (RFC 9449): proof-of-possession for access tokens. A request with
//! `Authorization: DPoP <token>` carries one `DPoP` header, a JWT signed by the client's key
//! over the method, the URI and the token; the token names that key (`cnf.jkt`). A stolen
//! DPoP-bound token is useless without the key, and a bound token presented as `Bearer` is
//! refused (downgrade), whatever the configuration.
//!
//! `Dpop::verify_proof` is pure over the request's parts and the clock (plus the replay
//! cache); `policy` decides when it runs and what the binding must be (`sender_constraint`).
//!
//! Layout: `htu.rs` (the URI comparison), `replay.rs` (the bounded `jti` cache).

pub mod htu;
pub mod replay;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::HeaderMap;
use serde_json::Value;

use crate::jose::{jws, Alg, Check, Observer};
use replay::{ReplayCache, Seen};

/// Longest proof accepted, in bytes (a proof carries one public key: an RSA 4096 `jwk` fits).
pub const MAX_PROOF_BYTES: usize = 8192;

/// Why a proof was refused (`invalid_dpop_proof`), or the binding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// No `DPoP` header with a DPoP-scheme token.
    Missing,
    /// More than one `DPoP` header (or value).
    Multiple,
    /// Not a compact JWS with distinct members, or too large.
    Malformed,
    /// `typ` is not `dpop+jwt`.
    Typ,
    /// `alg` not asymmetric or not allowed.
    Alg,
    /// `jwk` missing, not a usable public key, or not fit for `alg`.
    Jwk,
    /// `jwk` carries private key members.
    PrivateKey,
    /// The signature does not verify with `jwk`.
    Signature,
    /// `htm` is not the request method.
    Htm,
    /// `htu` is not the request URI.
    Htu,
    /// `iat` missing, too old, or in the future.
    Iat,
    /// `jti` missing or not a short string.
    Jti,
    /// This `jti` was already used with this key within the window.
    Replayed,
    /// `ath` is not the hash of the presented token.
    Ath,
    /// The token is bound to another key (`cnf.jkt` differs from the proof key).
    KeyMismatch,
    /// A `DPoP`-scheme token that is not bound to a key (no `cnf.jkt`).
    Unbound,
    /// Nonces are required and this proof's is missing, forged or expired.
    Nonce,
}

impl ProofError {
    /// Whether the proof may be fine but the token is not bound to its key: RFC 9449 section
    /// 7.1 answers `invalid_token` for that, `invalid_dpop_proof` for the rest.
    pub fn is_binding(self) -> bool {
        matches!(self, ProofError::KeyMismatch | ProofError::Unbound)
    }

    /// The `result` label of `jwks_sidecar_dpop_proofs_total`.
    pub fn code(self) -> &'static str {
        match self {
            ProofError::Missing => "missing",
            ProofError::Multiple => "multiple",
            ProofError::Malformed => "malformed",
            ProofError::Typ => "typ",
            ProofError::Alg => "alg",
            ProofError::Jwk => "jwk",
            ProofError::PrivateKey => "private_key",
            ProofError::Signature => "signature",
            ProofError::Htm => "htm",
            ProofError::Htu => "htu",
            ProofError::Iat => "iat",
            ProofError::Jti => "jti",
            ProofError::Replayed => "replayed",
            ProofError::Ath => "ath",
            ProofError::KeyMismatch => "key_mismatch",
            ProofError::Unbound => "unbound",
            ProofError::Nonce => "nonce",
        }
    }

    /// Human text for `error_description` (never echoes the proof).
    pub fn description(self) -> &'static str {
        match self {
            ProofError::Missing => "a DPoP token needs exactly one DPoP proof header",
            ProofError::Multiple => "more than one DPoP proof",
            ProofError::Malformed => "the DPoP proof is not a compact JWS with distinct members",
            ProofError::Typ => "the DPoP proof typ is not dpop+jwt",
            ProofError::Alg => "the DPoP proof algorithm is not allowed",
            ProofError::Jwk => "the DPoP proof jwk is not a usable public key for its alg",
            ProofError::PrivateKey => "the DPoP proof jwk contains private key material",
            ProofError::Signature => "the DPoP proof signature is invalid",
            ProofError::Htm => "the DPoP proof htm is not the request method",
            ProofError::Htu => "the DPoP proof htu is not the request URI",
            ProofError::Iat => "the DPoP proof iat is missing, too old or in the future",
            ProofError::Jti => "the DPoP proof jti is missing or invalid",
            ProofError::Replayed => {
                "the DPoP proof was already used (or is older than proofs the full replay cache dropped)"
            }
            ProofError::Ath => "the DPoP proof ath is not the hash of this access token",
            ProofError::KeyMismatch => "the access token is bound to another key than the proof's",
            ProofError::Unbound => "the access token is not DPoP-bound (no cnf.jkt)",
            ProofError::Nonce => "a DPoP proof must carry the server nonce of the DPoP-Nonce header",
        }
    }
}

/// What a `Dpop` was compiled from: equal settings keep the value across a reload.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopSettings {
    algs: Vec<Alg>,
    max_age: u64,
    leeway: u64,
    replay_entries: usize,
    /// Nonce lifetime and secret file, when nonces are required.
    nonces: Option<(u64, Option<std::path::PathBuf>)>,
}

/// The `[dpop]` settings, compiled.
pub struct Dpop {
    /// What it was compiled from (a reload with equal settings keeps this value, and so
    /// its replay cache and nonce key).
    pub settings: DpopSettings,
    nonces: Option<Nonces>,
    algs: Vec<Alg>,
    /// `algs` of the `WWW-Authenticate: DPoP` challenge (space-separated).
    pub algs_param: String,
    max_age: u64,
    leeway: u64,
    /// Used `jti`s.
    pub replay: ReplayCache,
}

impl std::fmt::Debug for Dpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dpop")
            .field("algs", &self.algs_param)
            .field("max_age", &self.max_age)
            .finish()
    }
}

/// What a proof was checked against.
pub struct ProofRequest<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request URI the client addressed (scheme, authority, path; query ignored).
    pub uri: &'a str,
    /// The access token as presented.
    pub token: &'a str,
    /// Unix seconds.
    pub now: u64,
}

impl Dpop {
    /// Compiled settings; `algorithms` are the names accepted for proofs. No nonces.
    pub fn new(algorithms: &[Alg], max_age: u64, leeway: u64, replay_entries: usize) -> Dpop {
        Dpop {
            settings: DpopSettings {
                algs: sorted(algorithms),
                max_age,
                leeway,
                replay_entries,
                nonces: None,
            },
            nonces: None,
            algs: algorithms.to_vec(),
            algs_param: algorithms
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(" "),
            max_age,
            leeway,
            replay: ReplayCache::new(max_age + 2 * leeway, replay_entries),
        }
    }

    /// The same, requiring server nonces that live `lifetime` seconds, keyed by the file's
    /// bytes (at least 32) or by a key made now.
    pub fn with_nonces(
        mut self,
        lifetime: u64,
        secret_file: Option<&std::path::Path>,
    ) -> Result<Dpop, String> {
        let secret = match secret_file {
            Some(f) => {
                let b = std::fs::read(f)
                    .map_err(|e| format!("dpop.nonce_secret_file = {:?}: {e}", f.display()))?;
                if b.len() < 32 {
                    return Err(format!(
                        "dpop.nonce_secret_file = {:?}: {} bytes; at least 32 random bytes are needed",
                        f.display(),
                        b.len()
                    ));
                }
                b
            }
            None => {
                let mut b = vec![0u8; 32];
                aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness for the nonce key")?;
                b
            }
        };
        self.settings.nonces = Some((lifetime, secret_file.map(|p| p.to_path_buf())));
        self.nonces = Some(Nonces {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
            lifetime,
        });
        Ok(self)
    }

    /// A fresh nonce for `DPoP-Nonce`, when nonces are required.
    pub fn fresh_nonce(&self, now: u64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.mint(now))
    }

    /// Verifies the request's one proof, made by the key the token is `bound` to (its
    /// `cnf.jkt`); returns that thumbprint.
    pub fn verify_proof(
        &self,
        headers: &HeaderMap,
        req: &ProofRequest<'_>,
        bound: Option<&str>,
        obs: &mut impl Observer,
    ) -> Result<String, ProofError> {
        let r = self.check(headers, req, bound);
        obs.step(Check::DpopProof, r.is_ok(), || match &r {
            Ok(jkt) => format!(
                "DPoP proof: typ, alg, public jwk, key {jkt} = cnf.jkt, htm {}, htu {}, iat, \
                 jti, ath{}, signature, not replayed",
                req.method,
                req.uri,
                if self.nonces.is_some() { ", nonce" } else { "" }
            ),
            Err(e) => e.description().to_string(),
        });
        r
    }

    /// Cheapest first: the header's shape, then the key's thumbprint against the token's
    /// binding, then the claims, and only then the signature; the replay cache last, so a
    /// proof that fails anything (a flood with throwaway keys included) never takes a place.
    fn check(
        &self,
        headers: &HeaderMap,
        req: &ProofRequest<'_>,
        bound: Option<&str>,
    ) -> Result<String, ProofError> {
        let mut values = headers.get_all("dpop").iter();
        let proof = match (values.next(), values.next()) {
            (None, _) => return Err(ProofError::Missing),
            (Some(_), Some(_)) => return Err(ProofError::Multiple),
            (Some(v), None) => v.to_str().map_err(|_| ProofError::Malformed)?.trim(),
        };
        if proof.contains(',') {
            return Err(ProofError::Multiple);
        }
        if proof.is_empty() || proof.len() > MAX_PROOF_BYTES {
            return Err(ProofError::Malformed);
        }
        let parsed = jws::parse(proof).map_err(|_| ProofError::Malformed)?;
        let typ_ok = parsed.header.typ.as_deref().is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t == "dpop+jwt" || t == "application/dpop+jwt"
        });
        if !typ_ok {
            return Err(ProofError::Typ);
        }
        let alg = jws::check_alg(&parsed, &self.algs).map_err(|_| ProofError::Alg)?;
        let jwk = parsed.header.jwk.as_ref().ok_or(ProofError::Jwk)?;
        let obj = jwk.as_object().ok_or(ProofError::Jwk)?;
        if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
            .iter()
            .any(|m| obj.contains_key(*m))
        {
            return Err(ProofError::PrivateKey);
        }
        // The key is in the proof itself: no certificates (parsed only from the IdP's JWKS)
        // and no RSA key over 4096 bits (each request would pay for its verification).
        let n_len = obj.get("n").and_then(Value::as_str).map_or(0, str::len);
        if ["x5c", "x5u", "jku"].iter().any(|m| obj.contains_key(*m)) || n_len > 683 {
            return Err(ProofError::Jwk);
        }
        let jkt = crate::jose::key::thumbprint(jwk).ok_or(ProofError::Jwk)?;
        match bound {
            None => return Err(ProofError::Unbound),
            Some(b) if b != jkt => return Err(ProofError::KeyMismatch),
            Some(_) => {}
        }
        let claims = &parsed.claims;
        if claims.get("htm").and_then(Value::as_str) != Some(req.method) {
            return Err(ProofError::Htm);
        }
        let htu_ok = match (
            claims.get("htu").and_then(Value::as_str),
            htu::normalize(req.uri),
        ) {
            (Some(h), Some(want)) => htu::normalize(h).is_some_and(|got| got == want),
            _ => false,
        };
        if !htu_ok {
            return Err(ProofError::Htu);
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_f64)
            .filter(|i| i.is_finite())
            .ok_or(ProofError::Iat)?;
        let now = req.now as f64;
        if !(iat >= now - (self.max_age + self.leeway) as f64 && iat <= now + self.leeway as f64) {
            return Err(ProofError::Iat);
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or(ProofError::Jti)?;
        let ath = crate::jose::sha256_b64url(req.token.as_bytes());
        if claims.get("ath").and_then(Value::as_str) != Some(ath.as_str()) {
            return Err(ProofError::Ath);
        }
        if let Some(n) = &self.nonces {
            let nonce = claims.get("nonce").and_then(Value::as_str);
            if !nonce.is_some_and(|v| n.valid(v, req.now, self.leeway)) {
                return Err(ProofError::Nonce);
            }
        }
        let key = crate::jose::key::parse_jwk(jwk, &[alg]).map_err(|_| ProofError::Jwk)?;
        if !key.accepts(alg) {
            return Err(ProofError::Jwk);
        }
        let keys = [Arc::new(key)];
        jws::verify_signature(&parsed, alg, &keys).map_err(|_| ProofError::Signature)?;
        match self
            .replay
            .check_and_insert(&jkt, jti, iat.max(0.0) as u64, req.now)
        {
            Seen::New => Ok(jkt),
            Seen::Replayed => Err(ProofError::Replayed),
        }
    }
}

/// Stateless server nonces: `base64url(t || HMAC-SHA256(key, t)[..16])` with `t` the issue
/// time (8 bytes, big-endian). Nobody without the key can make one, and each says when it
/// expires; nothing is stored.
struct Nonces {
    key: aws_lc_rs::hmac::Key,
    lifetime: u64,
}

impl Nonces {
    fn tag(&self, t: u64) -> [u8; 16] {
        let tag = aws_lc_rs::hmac::sign(&self.key, &t.to_be_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    fn mint(&self, now: u64) -> String {
        let mut b = now.to_be_bytes().to_vec();
        b.extend_from_slice(&self.tag(now));
        URL_SAFE_NO_PAD.encode(b)
    }

    fn valid(&self, nonce: &str, now: u64, leeway: u64) -> bool {
        let Ok(b) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if b.len() != 24 {
            return false;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[..8]);
        let t = u64::from_be_bytes(t);
        t <= now + leeway
            && now.saturating_sub(t) <= self.lifetime
            && aws_lc_rs::constant_time::verify_slices_are_equal(&b[8..], &self.tag(t)).is_ok()
    }
}

fn sorted(algs: &[Alg]) -> Vec<Alg> {
    let mut v = algs.to_vec();
    v.sort_by_key(|a| a.name());
    v.dedup();
    v
}

/// Whether every confirmation method of the token's `cnf` is one this sidecar checks (a
/// string `jkt`, a string `x5t#S256`), or there is none.
pub fn confirmation_understood(claims: &serde_json::Map<String, Value>) -> bool {
    match claims.get("cnf") {
        None => true,
        Some(Value::Object(cnf)) => cnf
            .iter()
            .all(|(k, v)| matches!(k.as_str(), "jkt" | "x5t#S256") && v.is_string()),
        Some(_) => false,
    }
}

/// The client certificate (`cnf["x5t#S256"]`, RFC 8705) a token is bound to, if any.
pub fn bound_x5t(claims: &serde_json::Map<String, Value>) -> Option<&str> {
    claims.get("cnf")?.get("x5t#S256")?.as_str()
}

/// The `cnf.jkt` a token is bound to, if any.
pub fn bound_jkt(claims: &serde_json::Map<String, Value>) -> Option<&str> {
    claims.get("cnf")?.get("jkt")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_expire_and_cannot_be_forged() {
        let d = Dpop::new(&[Alg::ES256], 60, 5, 1000)
            .with_nonces(300, None)
            .expect("nonces");
        let n = d.nonces.as_ref().expect("on");
        let nonce = d.fresh_nonce(10_000).expect("nonce");
        assert!(n.valid(&nonce, 10_000, 5));
        assert!(n.valid(&nonce, 10_300, 5), "within its lifetime");
        assert!(!n.valid(&nonce, 10_301, 5), "expired");
        assert!(!n.valid(&nonce, 9_000, 5), "from the future");
        // Another key (a restart without nonce_secret_file) does not accept it.
        let other = Dpop::new(&[Alg::ES256], 60, 5, 1000)
            .with_nonces(300, None)
            .expect("nonces");
        assert!(!other.nonces.as_ref().expect("on").valid(&nonce, 10_000, 5));
        // A changed time or tag is refused.
        let mut b = URL_SAFE_NO_PAD.decode(&nonce).expect("b64");
        b[7] ^= 1;
        assert!(!n.valid(&URL_SAFE_NO_PAD.encode(&b), 10_000, 5));
        assert!(!n.valid("", 10_000, 5));
        assert!(!n.valid("not base64!", 10_000, 5));
    }
}
