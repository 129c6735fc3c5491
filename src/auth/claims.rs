//! Identity headers: removing every inbound header that could pass for ours, and turning
//! verified claims into request headers. Pure over plain data.
//!
//! A header name is compared lower-cased with `_` read as `-`, because many app servers
//! (CGI-style, Node, Rails, Django) fold `X_JWT_Sub` into the same variable as `x-jwt-sub`.
//! A claim value that cannot be a safe header value (control characters, over-size) is
//! never injected; non-ASCII text is percent-encoded as UTF-8.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::ArrayClaimFormat;

/// Names that inbound requests may never carry: a prefix and a set of exact names.
#[derive(Debug, Clone, Default)]
pub struct ReservedHeaders {
    /// Lower-case prefix with `-` (e.g. `x-jwt-`).
    pub prefix: String,
    /// Exact lower-case names with `-` (claim headers of every provider, payload header).
    pub names: Vec<String>,
}

impl ReservedHeaders {
    /// Builds the set; names are folded the same way inbound names are.
    pub fn new(prefix: &str, names: impl IntoIterator<Item = String>) -> Self {
        let mut names: Vec<String> = names.into_iter().map(|n| fold(&n)).collect();
        names.sort();
        names.dedup();
        ReservedHeaders {
            prefix: fold(prefix),
            names,
        }
    }

    /// Whether an inbound header with this name must be removed.
    pub fn is_reserved(&self, name: &str) -> bool {
        let folded = fold(name);
        folded.starts_with(&self.prefix) || self.names.contains(&folded)
    }

    /// Every spelling a gateway could pass on for each exact reserved name: each `-` may be
    /// written `_` (gateways lower-case names, so case needs no variants). Names with more
    /// than `MAX_SPELLING_SEPARATORS` separators get the all-`-` and all-`_` forms only.
    pub fn spellings(&self) -> Vec<HeaderName> {
        let mut out: Vec<HeaderName> = self.names.iter().flat_map(|n| spellings(n)).collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        out
    }
}

/// Above this many `-`/`_` in a name, only two spellings are listed (2^8 = 256 at most each).
pub const MAX_SPELLING_SEPARATORS: usize = 8;

/// The `-`/`_` spellings of one folded name (lower case, `-`).
pub fn spellings(folded: &str) -> Vec<HeaderName> {
    let seps: Vec<usize> = folded
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'-')
        .map(|(i, _)| i)
        .collect();
    let variants: Vec<String> = if seps.len() > MAX_SPELLING_SEPARATORS {
        vec![folded.to_string(), folded.replace('-', "_")]
    } else {
        (0u32..1 << seps.len())
            .map(|mask| {
                let mut b = folded.as_bytes().to_vec();
                for (bit, &i) in seps.iter().enumerate() {
                    if mask & (1 << bit) != 0 {
                        b[i] = b'_';
                    }
                }
                String::from_utf8(b).unwrap_or_default()
            })
            .collect()
    };
    variants
        .into_iter()
        .filter_map(|v| HeaderName::try_from(v).ok())
        .collect()
}

fn fold(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b == b'_' {
                '-'
            } else {
                b.to_ascii_lowercase() as char
            }
        })
        .collect()
}

/// Removes every reserved header (all values); returns the names removed.
pub fn strip_reserved(headers: &mut HeaderMap, reserved: &ReservedHeaders) -> Vec<HeaderName> {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| reserved.is_reserved(n.as_str()))
        .cloned()
        .collect();
    for n in &doomed {
        headers.remove(n);
    }
    doomed
}

/// A claim reference: tried first as a top-level name (namespaced claims such as
/// `https://example.com/roles` contain dots), then as a dotted path into objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    raw: String,
    parts: Vec<String>,
}

impl ClaimPath {
    /// Parses `org.id` style references.
    pub fn new(raw: &str) -> Self {
        ClaimPath {
            raw: raw.to_string(),
            parts: raw.split('.').map(str::to_string).collect(),
        }
    }

    /// The reference as configured.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Looks the claim up.
    pub fn lookup<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a Value> {
        if let Some(v) = claims.get(&self.raw) {
            return Some(v);
        }
        if self.parts.len() < 2 {
            return None;
        }
        let mut cur = claims.get(&self.parts[0])?;
        for p in &self.parts[1..] {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }
}

/// Why a claim was not forwarded (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Contains CR, LF, NUL or another control character.
    ControlCharacter,
    /// Longer than the limit.
    TooLong,
    /// `null` or an object/array that cannot be rendered.
    Unrenderable,
}

impl Dropped {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::ControlCharacter => "control_character",
            Dropped::TooLong => "too_long",
            Dropped::Unrenderable => "unrenderable",
        }
    }
}

/// Renders a claim as a header value.
pub fn render(
    value: &Value,
    format: ArrayClaimFormat,
    max_len: usize,
) -> Result<HeaderValue, Dropped> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => return Err(Dropped::Unrenderable),
        Value::Array(items) => match format {
            ArrayClaimFormat::Json => value.to_string(),
            ArrayClaimFormat::Comma => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) => parts.push(s.clone()),
                        Value::Number(n) => parts.push(n.to_string()),
                        Value::Bool(b) => parts.push(b.to_string()),
                        _ => return Err(Dropped::Unrenderable),
                    }
                }
                parts.join(",")
            }
        },
        Value::Object(_) => value.to_string(),
    };
    if text.chars().any(|c| c.is_control()) {
        return Err(Dropped::ControlCharacter);
    }
    let text = if text.is_ascii() {
        text
    } else {
        percent_encode_non_ascii(&text)
    };
    if text.len() > max_len {
        return Err(Dropped::TooLong);
    }
    HeaderValue::from_str(&text).map_err(|_| Dropped::ControlCharacter)
}

fn percent_encode_non_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spoofed_names_in_every_case_and_underscore_variant_are_reserved() {
        let r = ReservedHeaders::new("x-jwt-", ["x-user-id".to_string()]);
        for n in [
            "x-jwt-sub",
            "X-JWT-SUB",
            "x_jwt_sub",
            "X_Jwt-Sub",
            "x-user-id",
            "X_USER_ID",
        ] {
            assert!(r.is_reserved(n), "{n}");
        }
        for n in ["x-jwtsub", "authorization", "x-user", "x-request-id"] {
            assert!(!r.is_reserved(n), "{n}");
        }
    }

    #[test]
    fn spellings_cover_every_separator_choice() {
        let names: Vec<String> = spellings("x-jwt-sub")
            .iter()
            .map(|n| n.as_str().to_string())
            .collect();
        assert_eq!(names, ["x-jwt-sub", "x_jwt-sub", "x-jwt_sub", "x_jwt_sub"]);
        let r = ReservedHeaders::new("x-jwt-", ["X_User_Id".to_string(), "x-jwt-sub".into()]);
        let all = r.spellings();
        assert_eq!(all.len(), 8);
        assert!(all.iter().all(|n| r.is_reserved(n.as_str())));
        let long = "a-b-c-d-e-f-g-h-i-j";
        assert_eq!(spellings(long).len(), 2);
        assert_eq!(spellings("plain").len(), 1);
    }

    #[test]
    fn strip_removes_all_duplicates() {
        let r = ReservedHeaders::new("x-jwt-", []);
        let mut h = HeaderMap::new();
        h.append("x-jwt-sub", HeaderValue::from_static("a"));
        h.append("x-jwt-sub", HeaderValue::from_static("b"));
        h.append("x_jwt_sub", HeaderValue::from_static("c"));
        h.append("accept", HeaderValue::from_static("*/*"));
        assert_eq!(strip_reserved(&mut h, &r).len(), 2);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn dotted_paths_and_namespaced_claims() {
        let claims = json!({"org": {"id": "o1"}, "https://x.io/roles": ["a"], "sub": "u"});
        let claims = claims.as_object().expect("object");
        assert_eq!(ClaimPath::new("org.id").lookup(claims), Some(&json!("o1")));
        assert_eq!(
            ClaimPath::new("https://x.io/roles").lookup(claims),
            Some(&json!(["a"]))
        );
        assert_eq!(ClaimPath::new("org.nope").lookup(claims), None);
    }

    #[test]
    fn rendering_rules() {
        let c = ArrayClaimFormat::Comma;
        assert_eq!(
            render(&json!("abc"), c, 100),
            Ok(HeaderValue::from_static("abc"))
        );
        assert_eq!(
            render(&json!(42), c, 100),
            Ok(HeaderValue::from_static("42"))
        );
        assert_eq!(
            render(&json!(true), c, 100),
            Ok(HeaderValue::from_static("true"))
        );
        assert_eq!(
            render(&json!(["a", "b"]), c, 100),
            Ok(HeaderValue::from_static("a,b"))
        );
        assert_eq!(
            render(&json!(["a", "b"]), ArrayClaimFormat::Json, 100),
            Ok(HeaderValue::from_static("[\"a\",\"b\"]"))
        );
        assert_eq!(
            render(&json!("a\r\nx-jwt-admin: 1"), c, 100),
            Err(Dropped::ControlCharacter)
        );
        assert_eq!(
            render(&json!("a\u{0}b"), c, 100),
            Err(Dropped::ControlCharacter)
        );
        assert_eq!(
            render(&json!("a\u{85}b"), c, 100),
            Err(Dropped::ControlCharacter)
        );
        assert_eq!(
            render(&json!("José"), c, 100),
            Ok(HeaderValue::from_static("Jos%C3%A9"))
        );
        assert_eq!(
            render(&json!("x".repeat(101)), c, 100),
            Err(Dropped::TooLong)
        );
        assert_eq!(render(&json!(null), c, 100), Err(Dropped::Unrenderable));
    }
}
