//! The `htu` comparison of RFC 9449 section 4.3: the proof's URI and the request's, without
//! query and fragment, after RFC 3986 syntax-based and scheme-based normalisation (scheme and
//! host lower case, the default port dropped, percent-encodings in upper case and decoded
//! where they encode an unreserved character, dot segments removed, an empty path as `/`).

/// The normal form of an `http`/`https` URI without its query and fragment; `None` when it
/// is not one (another scheme, user information, a bad port or escape).
pub fn normalize(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let rest = rest.split(['#', '?']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = split_port(authority)?;
    let host = host.to_ascii_lowercase();
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        if !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let p = p.parse::<u16>().ok()?.to_string();
        if p != default_port {
            out.push(':');
            out.push_str(&p);
        }
    }
    out.push_str(&remove_dot_segments(&normalize_escapes(path)?));
    Some(out)
}

/// `host` and its port (`None`: no `:`), an IPv6 literal kept in brackets.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, after) = authority.split_at(end + 1);
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    Some(match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    })
}

/// Percent-escapes in upper case; escapes of unreserved characters decoded.
fn normalize_escapes(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = path.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                out.push(v as char);
            } else {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Some(out)
}

/// RFC 3986 section 5.2.4, on a path that starts with `/` or is empty (then `/`).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match *seg {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                segments.pop();
                if last {
                    segments.push("");
                }
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn equivalent_spellings_normalise_alike() {
        let n = |s: &str| normalize(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(
            n("https://api.example.com/a/b"),
            "https://api.example.com/a/b"
        );
        assert_eq!(
            n("HTTPS://API.Example.COM:443/a/b"),
            "https://api.example.com/a/b"
        );
        assert_eq!(n("http://h:80"), "http://h/");
        assert_eq!(n("http://h:8080/x?q=1#f"), "http://h:8080/x");
        assert_eq!(n("http://h/%7euser/%2f%41"), "http://h/~user/%2FA");
        assert_eq!(n("http://h/a/./b/../c"), "http://h/a/c");
        assert_eq!(n("http://h/a/.."), "http://h/");
        assert_eq!(n("http://[::1]:8443/x"), "http://[::1]:8443/x");
        assert_eq!(n("https://h:0443/"), "https://h/");
        // Different resources stay different.
        assert_ne!(n("http://h/a"), n("https://h/a"));
        assert_ne!(n("http://h/a"), n("http://h/a/"));
        assert_ne!(n("http://h:8080/a"), n("http://h/a"));
        assert_ne!(n("http://h/A"), n("http://h/a"));
    }

    #[test]
    fn what_is_not_an_http_uri_is_refused() {
        for bad in [
            "ftp://h/",
            "/relative",
            "https://user@h/",
            "https://h:99999x/",
            "https://h:65536/",
            "https:///path",
            "https://h/%zz",
            "https://h/%4",
            "https://h/%+4",
            "https://[::1/",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
    }
}
