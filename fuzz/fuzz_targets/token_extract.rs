//! `extract::extract`: finding the one token of a request in Authorization, a configured
//! header, a cookie and a query parameter.
//!
//! Input: byte 0 = max_bytes (x 8); then lines: `name: value` header lines, and one line
//! starting with `?` as the query string.
//! Invariants: a token found is non-empty, at most max_bytes, has no space, tab or comma when
//! it came from `Authorization`, and occurs verbatim in some header value or the query.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use jwks_sidecar::auth::extract::{extract, Scheme, TokenSources};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let sources = TokenSources {
        header: Some(HeaderName::from_static("x-access-token")),
        cookie: Some("access_token".into()),
        query: Some("access_token".into()),
        max_bytes: ctl as usize * 8,
    };
    let mut headers = HeaderMap::new();
    let mut query: Option<&str> = None;
    let mut raw: Vec<&[u8]> = Vec::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            if let Ok(q) = std::str::from_utf8(q) {
                query = Some(q);
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
            raw.push(value);
        }
    }
    if let Ok(Some((tok, _))) = extract(&headers, query, &sources) {
        assert!(!tok.is_empty(), "empty token");
        assert!(tok.len() <= sources.max_bytes, "token over max_bytes");
        let in_headers = raw
            .iter()
            .any(|v| v.windows(tok.len()).any(|w| w == tok.as_bytes()));
        let in_query = query.is_some_and(|q| q.contains(tok));
        assert!(in_headers || in_query, "token {tok:?} not in the request");
    }
    // Authorization alone: a token found there is one Bearer or DPoP credential, without
    // separators.
    let only_auth = TokenSources {
        max_bytes: sources.max_bytes,
        ..TokenSources::default()
    };
    // With the DPoP scheme when one of the credentials was `DPoP <token>`.
    if let Ok(Some((tok, scheme))) = extract(&headers, None, &only_auth) {
        assert!(!tok.is_empty() && tok.len() <= only_auth.max_bytes);
        assert!(!tok.contains([' ', '\t', ',']), "token with separators: {tok:?}");
        let from = |name: &str| {
            headers.get_all(http::header::AUTHORIZATION).iter().any(|v| {
                v.to_str().is_ok_and(|s| {
                    let s = s.trim();
                    s.len() > name.len()
                        && s.is_char_boundary(name.len())
                        && s[..name.len()].eq_ignore_ascii_case(name)
                        && s.ends_with(tok)
                })
            })
        };
        assert!(from("bearer") || from("dpop"), "token {tok:?} not from a Bearer or DPoP credential");
        if scheme == Scheme::Dpop {
            assert!(from("dpop"), "DPoP scheme without a DPoP credential");
        }
    }
});
