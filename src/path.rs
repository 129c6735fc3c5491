//! Request path normalisation, shared by public-path matching and forwarding.
//!
//! The path that is matched is the path that is forwarded, so no encoding trick can make
//! the sidecar judge one path and the app serve another. Percent-encoded unreserved
//! characters are decoded, other escapes are kept (upper-cased), dot-segments are resolved,
//! repeated slashes are merged. Refused with 400 (each a way a path can mean something else
//! to the app, or to a second decoder, than to the matcher):
//! - `%2F` and `%5C` (and a raw `\`), unless `allow_encoded_slash`;
//! - an encoded percent sign that one more decoding turns into a dot, slash, backslash,
//!   control character or overlong UTF-8 lead (`%252e`, `%25252F`, `%25%32%65`, `%255c`,
//!   `%25c0`), unless `allow_double_encoding`;
//! - `;` path parameters (Tomcat, Jetty and Spring match `/admin;x` as `/admin`), raw or as
//!   `%3B` (a proxy that decodes once more hands the app a `;`), unless
//!   `allow_path_parameters`; even then a segment like `..;x` is refused;
//! - any control character, raw or encoded (`%00`, `%09`, `%0A`, `%7F`), and raw spaces or
//!   non-ASCII bytes;
//! - escapes that do not decode to valid UTF-8 (overlong forms such as `%C0%AE` for `.`)
//!   and characters that Unicode compatibility folding turns into `.`, `/` or `\`
//!   (fullwidth `%EF%BC%8F`, one-dot leader, and the like).

use crate::error::Reject;

/// Which unusual but sometimes legitimate path forms are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathOptions {
    /// Accept `%2F`/`%5C` (kept encoded).
    pub allow_encoded_slash: bool,
    /// Accept `%25` followed by an encoding of a dot, slash, backslash or control character.
    pub allow_double_encoding: bool,
    /// Accept `;` in segments (matched as part of the segment).
    pub allow_path_parameters: bool,
}

impl PathOptions {
    /// Every opt-in on (used to check configured rule paths, which are trusted).
    pub const LENIENT: PathOptions = PathOptions {
        allow_encoded_slash: true,
        allow_double_encoding: true,
        allow_path_parameters: true,
    };
}

/// Normalises an origin-form path (no query) with every opt-in off except, when asked,
/// encoded slashes. Errors mean 400.
pub fn normalize(path: &str, allow_encoded_slash: bool) -> Result<String, Reject> {
    normalize_with(
        path,
        &PathOptions {
            allow_encoded_slash,
            ..PathOptions::default()
        },
    )
}

/// Characters that NFKC or "best fit" mappings turn into `.`, `/` or `\`.
const CONFUSABLES: [char; 8] = [
    '\u{2024}', '\u{FE52}', '\u{FF0E}', '\u{FF0F}', '\u{FF3C}', '\u{FE68}', '\u{2215}', '\u{2216}',
];

/// Normalises an origin-form path (no query). Errors mean 400.
pub fn normalize_with(path: &str, opts: &PathOptions) -> Result<String, Reject> {
    if !path.starts_with('/') {
        return Err(Reject::BadPath);
    }
    // 1. Decode unreserved escapes, keep the others canonical.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut non_ascii = false;
    let mut encoded_percent = false;
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
                } else if c < 0x20
                    || c == 0x7f
                    || ((c == b'/' || c == b'\\') && !opts.allow_encoded_slash)
                    || (c == b';' && !opts.allow_path_parameters)
                {
                    return Err(Reject::BadPath);
                } else {
                    non_ascii |= c >= 0x80;
                    encoded_percent |= c == b'%';
                    decoded.push('%');
                    decoded.push(HEX[(c >> 4) as usize] as char);
                    decoded.push(HEX[(c & 15) as usize] as char);
                }
                i += 3;
            }
            b'\\' | 0..=0x20 | 0x7f.. => return Err(Reject::BadPath),
            b';' if !opts.allow_path_parameters => return Err(Reject::BadPath),
            _ => {
                decoded.push(b as char);
                i += 1;
            }
        }
    }
    if encoded_percent && !opts.allow_double_encoding && double_encoded(&decoded) {
        return Err(Reject::BadPath);
    }
    if non_ascii && !decodes_to_plain_utf8(&decoded) {
        return Err(Reject::BadPath);
    }
    // 2. Merge slashes and resolve dot-segments.
    resolve_dots(&decoded)
}

/// Merges slashes and resolves dot segments of a decoded path (RFC 3986 5.2.4); a segment
/// that is `.` or `..` once its `;` parameters are removed is refused.
fn resolve_dots(decoded: &str) -> Result<String, Reject> {
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

/// Whether an encoded percent sign (possibly encoded again, `%2525...`) is followed by the
/// hex of a byte that a further decoding would turn into a path separator, a dot, a `;`, a
/// control character or an overlong UTF-8 lead. `s` has canonical escapes (`%25` upper-case).
fn double_encoded(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(pos) = s[i..].find("%25") {
        let mut j = i + pos + 3;
        while b.get(j..j + 2) == Some(b"25".as_slice()) {
            j += 2;
        }
        if let (Some(h), Some(l)) = (
            b.get(j).copied().and_then(hex_val),
            b.get(j + 1).copied().and_then(hex_val),
        ) {
            let c = h << 4 | l;
            if matches!(c, b'.' | b'/' | b'\\' | b';' | 0xc0 | 0xc1) || c < 0x20 || c == 0x7f {
                return true;
            }
        }
        i += pos + 3;
    }
    false
}

/// Whether the path, fully percent-decoded, is valid UTF-8 (no overlong forms) without
/// characters that compatibility folding turns into `.`, `/` or `\`.
fn decodes_to_plain_utf8(s: &str) -> bool {
    let once = percent_decode(s);
    match std::str::from_utf8(&once) {
        Ok(text) => !text
            .chars()
            .any(|c| c.is_control() || CONFUSABLES.contains(&c)),
        Err(_) => false,
    }
}

/// Decodes every well-formed `%XX` escape once (what an app's router does).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
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
            "/a/..;x/b",
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
    fn refuses_paths_a_second_decoding_or_the_app_reads_differently() {
        for bad in [
            // double (and triple, and mixed) encoded dot, slash, backslash
            "/public/%252e%252e/admin",
            "/public/%252E%252E/admin",
            "/public/%252f..%252fadmin",
            "/public%252Fadmin",
            "/public%255cadmin",
            "/public%255Cadmin",
            "/public/%25252e%25252e/admin",
            "/public/%25%32%65%25%32%65/admin",
            "/public/%25%32%45/x",
            "/a%2500b",
            "/a%250ab",
            "/a%25c0%25ae",
            // control characters, raw or encoded
            "/admin%09",
            "/admin%0a",
            "/admin%0D",
            "/admin%7f",
            "/admin\t",
            "/a%00b",
            // path parameters
            "/admin;jsessionid=x",
            "/public;/../admin",
            "/admin;",
            "/admin%3Bx",
            "/admin%3bx",
            "/admin%253Bx",
            // overlong UTF-8 and invalid sequences
            "/public/%c0%ae%c0%ae/admin",
            "/public/%C0%AF",
            "/a%e0%80%ae",
            "/a%ff",
            "/a%c3",
            // compatibility forms of dot and slash
            "/public/%EF%BC%8E%EF%BC%8E/admin",
            "/public%EF%BC%8Fadmin",
            "/a%E2%80%A4",
            "/a%E2%88%95b",
            // C1 control (NEL) in valid UTF-8
            "/a%C2%85b",
        ] {
            assert_eq!(normalize(bad, false), Err(Reject::BadPath), "{bad}");
        }
        // Plain encoded percent signs and real UTF-8 stay fine.
        for (ok, want) in [
            ("/100%25", "/100%25"),
            ("/a%25b", "/a%25b"),
            ("/a%2541", "/a%2541"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/%E6%97%A5%E6%9C%AC", "/%E6%97%A5%E6%9C%AC"),
        ] {
            assert_eq!(normalize(ok, false).as_deref(), Ok(want), "{ok}");
        }
        let lenient = PathOptions {
            allow_double_encoding: true,
            allow_path_parameters: true,
            ..PathOptions::default()
        };
        assert_eq!(
            normalize_with("/a%252fb", &lenient).as_deref(),
            Ok("/a%252fb")
        );
        assert_eq!(
            normalize_with("/a;jsessionid=1/b", &lenient).as_deref(),
            Ok("/a;jsessionid=1/b")
        );
        assert_eq!(normalize_with("/a%3Bb", &lenient).as_deref(), Ok("/a%3Bb"));
        assert_eq!(
            normalize_with("/public/..;/admin", &lenient),
            Err(Reject::BadPath)
        );
        // Opt-ins never admit control characters or overlong forms.
        for bad in ["/a%09", "/a%c0%ae"] {
            assert_eq!(
                normalize_with(bad, &PathOptions::LENIENT),
                Err(Reject::BadPath)
            );
        }
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
