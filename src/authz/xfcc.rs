//! The client certificate a gateway reports, for certificate-bound tokens (RFC 8705), read
//! only with `[authz] trust_forwarded_client_cert = true`.
//!
//! Envoy's `x-forwarded-client-cert`: comma-separated elements (one per proxy hop; the last
//! one is the hop in front of us), each `;`-separated `Key=value` pairs with values optionally
//! in double quotes. `Hash` is the hex SHA-256 of the client certificate's DER; `Cert` the
//! URL-encoded PEM. The gRPC check's `source.certificate` is the URL-encoded PEM too.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The `x5t#S256` (base64url SHA-256 of the DER) of the last element's certificate.
pub fn thumbprint_from_xfcc(value: &str) -> Option<String> {
    let last = split_outside_quotes(value, ',').into_iter().last()?;
    let mut hash = None;
    let mut cert = None;
    for pair in split_outside_quotes(last, ';') {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "hash" => hash = Some(v),
            "cert" => cert = Some(v),
            _ => {}
        }
    }
    if let Some(h) = hash {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<_>>()?;
        return Some(URL_SAFE_NO_PAD.encode(bytes));
    }
    thumbprint_from_pem(&url_decode(cert?)?)
}

/// The `x5t#S256` of a URL-encoded PEM certificate (the gRPC check's `source.certificate`).
pub fn thumbprint_from_urlencoded_pem(value: &str) -> Option<String> {
    thumbprint_from_pem(&url_decode(value)?)
}

fn thumbprint_from_pem(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(
        crate::server::ClientCert::of_der(der.as_ref())
            .0
            .to_string(),
    )
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn url_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_hop_hash_is_read_and_malformed_values_are_not() {
        let hash = "a".repeat(64);
        let v = format!(
            "By=spiffe://a;Hash={};Subject=\"CN=x,O=y\",By=spiffe://b;Hash={hash};URI=spiffe://c",
            "b".repeat(64)
        );
        let want = URL_SAFE_NO_PAD.encode([0xaa; 32]);
        assert_eq!(thumbprint_from_xfcc(&v), Some(want));
        assert_eq!(thumbprint_from_xfcc("Hash=xyz"), None);
        assert_eq!(thumbprint_from_xfcc("Hash=\"\""), None);
        assert_eq!(thumbprint_from_xfcc("By=x"), None);
        assert_eq!(thumbprint_from_xfcc(""), None);
    }
}
