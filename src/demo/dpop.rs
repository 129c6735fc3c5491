//! A DPoP client for tests (RFC 9449 proofs), behind the fake IdP's `POST /dpop`, so suites
//! in other languages (the gateway suite) can make proofs without a JOSE library:
//!
//! `POST /dpop {"holder": "a", "htm": "GET", "htu": "http://...", "token": "..."}` answers
//! `{"jkt": "<thumbprint of holder a>", "proof": "<JWT>"}`. `holder` names a client key (an
//! ES256 key made on first use and kept). Without `htm` only `jkt` is returned (to mint a
//! token bound to the holder first). `header` and `claims` objects are merged into the proof's
//! (a `null` value removes the member) to make broken proofs: `{"claims": {"iat": 0}}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::jose::sign::SigningKey;
use crate::jose::Alg;

/// The RFC 7638 thumbprint of a holder key (what a bound token's `cnf.jkt` holds).
pub fn jkt(key: &SigningKey) -> String {
    crate::jose::key::thumbprint(&key.public_jwk()).unwrap_or_default()
}

/// base64url SHA-256 of an access token (a proof's `ath`).
pub fn ath(token: &str) -> String {
    crate::jose::sha256_b64url(token.as_bytes())
}

/// The header and claims of a valid proof by `holder` for `htm` `htu` and `token` (fresh
/// `iat` and `jti`), to be signed with `holder.mint_with_header`.
pub fn proof_parts(holder: &SigningKey, htm: &str, htu: &str, token: &str) -> (Value, Value) {
    let header = json!({"typ": "dpop+jwt", "alg": holder.alg.name(), "jwk": holder.public_jwk()});
    let mut id = [0u8; 12];
    let _ = aws_lc_rs::rand::fill(&mut id);
    let claims = json!({"htm": htm, "htu": htu, "iat": crate::auth::now_unix(),
        "jti": URL_SAFE_NO_PAD.encode(id), "ath": ath(token)});
    (header, claims)
}

/// A valid proof, with `header` and `claims` merged in (`null` removes a member).
pub fn proof(
    holder: &SigningKey,
    htm: &str,
    htu: &str,
    token: &str,
    header_edits: &Map<String, Value>,
    claim_edits: &Map<String, Value>,
) -> String {
    let (mut header, mut claims) = proof_parts(holder, htm, htu, token);
    merge(&mut header, header_edits);
    merge(&mut claims, claim_edits);
    holder.mint_with_header(&header, &claims)
}

fn merge(target: &mut Value, edits: &Map<String, Value>) {
    if let Some(t) = target.as_object_mut() {
        for (k, v) in edits {
            if v.is_null() {
                t.remove(k);
            } else if let (Some(inner), Some(e)) = (t.get_mut(k), v.as_object()) {
                // `{"jwk": {"d": "..."}}` adds to the key rather than replacing it.
                merge(inner, e);
            } else {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `POST /dpop`: see the module docs.
pub fn proof_for(holders: &Mutex<HashMap<String, Arc<SigningKey>>>, body: &Value) -> Value {
    let name = body.get("holder").and_then(Value::as_str).unwrap_or("a");
    let holder = match holders.lock() {
        Ok(mut h) => h
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(SigningKey::generate(Alg::ES256, name)))
            .clone(),
        Err(_) => return json!({"error": "holder keys unavailable"}),
    };
    let Some(htm) = body.get("htm").and_then(Value::as_str) else {
        return json!({ "jkt": jkt(&holder) });
    };
    let s = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    let empty = Map::new();
    let edits = |k: &str| body.get(k).and_then(Value::as_object).unwrap_or(&empty);
    json!({
        "jkt": jkt(&holder),
        "proof": proof(&holder, htm, s("htu"), s("token"), edits("header"), edits("claims")),
    })
}
