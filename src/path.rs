//! Request path normalisation, shared by public-path matching and forwarding.
//!
//! The path that is matched is the path that is forwarded, so no encoding trick can make
//! the sidecar judge one path and the app serve another. Percent-encoded unreserved
//! characters are decoded, other escapes are kept (upper-cased), dot-segments are resolved,
//! repeated slashes are merged. `%2F` and `%5C` (and a raw `\`) are refused unless allowed,
//! and so are segments like `..;x` that some servers read as `..`.

use crate::error::Reject;

/// Normalises an origin-form path (no query). Errors mean 400.
pub fn normalize(path: &str, allow_encoded_slash: bool) -> Result<String, Reject> {
    if !path.starts_with('/') {
        return Err(Reject::BadPath);
    }
    // 1. Decode unreserved escapes, keep the others canonical.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(Reject::BadPath)?;
                let v = hex_val(hex[0])
                    .zip(hex_val(hex[1]))
                    .ok_or(Reject::BadPath)?;
                let c = v.0 << 4 | v.1;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(c as char);
                } else if c == 0 || ((c == b'/' || c == b'\\') && !allow_encoded_slash) {
                    return Err(Reject::BadPath);
                } else {
                    decoded.push('%');
                    decoded.push(HEX[(c >> 4) as usize] as char);
                    decoded.push(HEX[(c & 15) as usize] as char);
                }
                i += 3;
            }
            b'\\' | 0..=0x20 | 0x7f.. => return Err(Reject::BadPath),
            _ => {
                decoded.push(b as char);
                i += 1;
            }
        }
    }
    // 2. Merge slashes and resolve dot-segments.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = decoded.ends_with('/');
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            s => {
                let head = s.split(';').next().unwrap_or("");
                if head == "." || head == ".." {
                    return Err(Reject::BadPath);
                }
                out.push(s);
                trailing = false;
            }
        }
    }
    if decoded.ends_with('/') {
        trailing = true;
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || trailing {
        result.push('/');
    }
    Ok(result)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Segment-wise prefix match: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn prefix_matches(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dot_segments_and_slashes() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/healthz/../admin", "/admin"),
            ("/healthz/%2e%2e/admin", "/admin"),
            ("/healthz/%2E%2E/admin", "/admin"),
            ("//healthz/../admin", "/admin"),
            ("/a/./b/.", "/a/b/"),
            ("/../../etc", "/etc"),
            ("/a/%7Euser", "/a/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a/..", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input, false).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refuses_encoded_slash_backslash_and_ambiguous_dots() {
        for bad in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/public/..;/admin",
            "/a/.;x/b",
            "/a%zz",
            "/a%2",
            "a/b",
            "*",
            "/a%00b",
        ] {
            assert_eq!(normalize(bad, false), Err(Reject::BadPath), "{bad}");
        }
        assert_eq!(normalize("/a%2fb", true).as_deref(), Ok("/a%2Fb"));
    }

    #[test]
    fn prefix_matching_is_segment_wise() {
        assert!(prefix_matches("/healthz", "/healthz"));
        assert!(prefix_matches("/healthz/x", "/healthz"));
        assert!(!prefix_matches("/healthzz", "/healthz"));
        assert!(prefix_matches("/webhooks/x", "/webhooks/"));
        assert!(!prefix_matches("/webhooks", "/webhooks/"));
    }
}
