//! Finding the token in a request: `Authorization: Bearer` (scheme case-insensitive,
//! RFC 6750 2.1) or `Authorization: DPoP` (RFC 9449 section 7.1) and, when configured, one
//! header, one cookie and one query parameter (all read as bearer tokens).
//!
//! Pure over plain data. The same token found in two places counts once; two different
//! tokens are refused (RFC 6750: a client must not use more than one method).

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName};

use crate::error::Reject;

/// Where tokens may come from besides `Authorization`.
#[derive(Debug, Clone, Default)]
pub struct TokenSources {
    /// A header carrying the bare token.
    pub header: Option<HeaderName>,
    /// A cookie name.
    pub cookie: Option<String>,
    /// A query parameter name.
    pub query: Option<String>,
    /// Tokens longer than this are refused unparsed.
    pub max_bytes: usize,
}

/// How the token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer`, or another configured source.
    Bearer,
    /// `Authorization: DPoP`: the request must carry its proof.
    Dpop,
}

/// Returns the one token of the request and its scheme, `Ok(None)` when there is none.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    sources: &TokenSources,
) -> Result<Option<(&'a str, Scheme)>, Reject> {
    let mut found: Option<&'a str> = None;
    let mut scheme = Scheme::Bearer;
    let mut add = |tok: &'a str| -> Result<(), Reject> {
        if tok.len() > sources.max_bytes {
            return Err(Reject::TooLarge);
        }
        match found {
            Some(prev) if prev != tok => Err(Reject::MultipleTokens),
            _ => {
                found = Some(tok);
                Ok(())
            }
        }
    };
    for value in headers.get_all(AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| Reject::Malformed("Authorization header is not ASCII"))?;
        if let Some(tok) = token_of(value, "bearer")? {
            add(tok)?;
        }
        if let Some(tok) = token_of(value, "dpop")? {
            add(tok)?;
            scheme = Scheme::Dpop;
        }
    }
    if let Some(name) = &sources.header {
        for value in headers.get_all(name) {
            let v = value
                .to_str()
                .map_err(|_| Reject::Malformed("token header is not ASCII"))?
                .trim();
            if !v.is_empty() {
                // Accept the bare token, or "Bearer <token>" for clients that send that.
                add(token_of(v, "bearer")?.unwrap_or(v))?;
            }
        }
    }
    if let Some(cookie_name) = &sources.cookie {
        for value in headers.get_all(COOKIE) {
            let Ok(v) = value.to_str() else { continue };
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=') {
                    // A quoted cookie value ("...") counts without its quotes; an empty
                    // one is no token (found by fuzzing: `at="` gave an empty token).
                    let val = val.trim_matches('"');
                    if k == cookie_name && !val.is_empty() {
                        add(val)?;
                    }
                }
            }
        }
    }
    if let (Some(param), Some(q)) = (&sources.query, query) {
        for pair in q.split('&') {
            if let Some((k, val)) = pair.split_once('=') {
                if k == param && !val.is_empty() {
                    add(val)?;
                }
            }
        }
    }
    Ok(found.map(|t| (t, scheme)))
}

/// `<scheme> <token>` -> the token (scheme case-insensitive); another scheme -> `None` (not
/// ours to judge).
fn token_of<'v>(value: &'v str, want: &str) -> Result<Option<&'v str>, Reject> {
    let value = value.trim();
    let (scheme, rest) = match value.split_once([' ', '\t']) {
        Some(p) => p,
        None if value.eq_ignore_ascii_case(want) => {
            return Err(Reject::Malformed("Authorization scheme without a token"))
        }
        None => return Ok(None),
    };
    if !scheme.eq_ignore_ascii_case(want) {
        return Ok(None);
    }
    let tok = rest.trim();
    if tok.is_empty() {
        return Err(Reject::Malformed("Authorization scheme without a token"));
    }
    if tok.contains([' ', '\t', ',']) {
        return Err(Reject::Malformed(
            "Authorization header holds more than one value",
        ));
    }
    Ok(Some(tok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The token only (most cases here are about where it is found).
    fn extract<'a>(
        h: &'a HeaderMap,
        q: Option<&'a str>,
        s: &TokenSources,
    ) -> Result<Option<&'a str>, Reject> {
        super::extract(h, q, s).map(|o| o.map(|(t, _)| t))
    }

    #[test]
    fn the_dpop_scheme_is_recognised_in_any_case() {
        for v in ["DPoP a.b.c", "dpop a.b.c", "DPOP  a.b.c"] {
            assert_eq!(
                super::extract(&hm(&[("authorization", v)]), None, &src()),
                Ok(Some(("a.b.c", Scheme::Dpop))),
                "{v}"
            );
        }
        assert_eq!(
            super::extract(&hm(&[("authorization", "Bearer a.b.c")]), None, &src()),
            Ok(Some(("a.b.c", Scheme::Bearer)))
        );
        // The same token under both schemes is one DPoP presentation; two tokens are two.
        let both = hm(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "DPoP a.b.c"),
        ]);
        assert_eq!(
            super::extract(&both, None, &src()),
            Ok(Some(("a.b.c", Scheme::Dpop)))
        );
        let two = hm(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "DPoP x.y.z"),
        ]);
        assert_eq!(
            super::extract(&two, None, &src()),
            Err(Reject::MultipleTokens)
        );
        assert!(super::extract(&hm(&[("authorization", "DPoP")]), None, &src()).is_err());
    }

    fn src() -> TokenSources {
        TokenSources {
            max_bytes: 100,
            ..Default::default()
        }
    }

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for v in [
            "Bearer a.b.c",
            "bearer a.b.c",
            "BEARER   a.b.c",
            "BeArEr\ta.b.c",
        ] {
            assert_eq!(
                extract(&hm(&[("authorization", v)]), None, &src()),
                Ok(Some("a.b.c")),
                "{v}"
            );
        }
    }

    #[test]
    fn other_schemes_are_not_tokens() {
        assert_eq!(
            extract(
                &hm(&[("authorization", "Basic dXNlcjpwYXNz")]),
                None,
                &src()
            ),
            Ok(None)
        );
        assert_eq!(extract(&HeaderMap::new(), None, &src()), Ok(None));
    }

    #[test]
    fn two_different_tokens_rejected_same_token_twice_accepted() {
        let two = hm(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ]);
        assert_eq!(extract(&two, None, &src()), Err(Reject::MultipleTokens));
        let same = hm(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer a.b.c"),
        ]);
        assert_eq!(extract(&same, None, &src()), Ok(Some("a.b.c")));
        let s = TokenSources {
            query: Some("access_token".into()),
            ..src()
        };
        assert_eq!(
            extract(
                &hm(&[("authorization", "Bearer a.b.c")]),
                Some("x=1&access_token=d.e.f"),
                &s
            ),
            Err(Reject::MultipleTokens)
        );
    }

    #[test]
    fn cookie_header_and_query_sources() {
        let s = TokenSources {
            header: Some(HeaderName::from_static("x-token")),
            cookie: Some("session".into()),
            query: Some("t".into()),
            ..src()
        };
        assert_eq!(
            extract(&hm(&[("cookie", "a=1; session=x.y.z; b=2")]), None, &s),
            Ok(Some("x.y.z"))
        );
        assert_eq!(
            extract(&hm(&[("x-token", "x.y.z")]), None, &s),
            Ok(Some("x.y.z"))
        );
        assert_eq!(
            extract(&HeaderMap::new(), Some("t=x.y.z"), &s),
            Ok(Some("x.y.z"))
        );
        // Off by default.
        assert_eq!(
            extract(&hm(&[("cookie", "session=x.y.z")]), Some("t=x.y.z"), &src()),
            Ok(None)
        );
    }

    #[test]
    fn regression_cookie_of_only_quotes_is_no_token() {
        let s = TokenSources {
            cookie: Some("access_token".into()),
            ..src()
        };
        assert_eq!(
            extract(&hm(&[("cookie", "access_token=\"")]), None, &s),
            Ok(None)
        );
        assert_eq!(
            extract(&hm(&[("cookie", "access_token=\"\"")]), None, &s),
            Ok(None)
        );
        assert_eq!(
            extract(&hm(&[("cookie", "access_token=\"a.b.c\"")]), None, &s),
            Ok(Some("a.b.c"))
        );
    }

    #[test]
    fn oversized_and_empty_tokens_rejected() {
        let long = format!("Bearer {}", "a".repeat(101));
        assert_eq!(
            extract(&hm(&[("authorization", &long)]), None, &src()),
            Err(Reject::TooLarge)
        );
        assert!(matches!(
            extract(&hm(&[("authorization", "Bearer")]), None, &src()),
            Err(Reject::Malformed(_))
        ));
        assert!(matches!(
            extract(
                &hm(&[("authorization", "Bearer a, Bearer b")]),
                None,
                &src()
            ),
            Err(Reject::Malformed(_))
        ));
    }
}
