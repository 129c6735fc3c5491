//! `path::normalize`: the path that is matched is the path that is forwarded.
//!
//! Input: byte 0 bit 0 = allow_encoded_slash; the rest is the request path.
//! Invariants of an `Ok` path: starts with '/', has no empty, "." or ".." segment (no "//",
//! "/./", "/../"), no raw backslash, control, space or non-ASCII byte, no escape of an
//! unreserved character, %2F/%5C only when allowed, well-formed upper-case escapes; and
//! normalising it again changes nothing. Also: a refused path is refused in both modes when
//! it does not involve an encoded slash.

#![no_main]

use jwks_sidecar::path::{normalize, prefix_matches};
use libfuzzer_sys::fuzz_target;

fn check(out: &str, allow: bool) {
    assert!(out.starts_with('/'), "{out:?}");
    assert!(!out.contains("//"), "{out:?}");
    let body = out.trim_end_matches('/');
    for seg in body.split('/').skip(1) {
        assert!(!seg.is_empty(), "empty segment in {out:?}");
        assert!(seg != "." && seg != "..", "dot segment in {out:?}");
        let head = seg.split(';').next().unwrap_or("");
        assert!(head != "." && head != "..", "dot segment with parameters in {out:?}");
    }
    let b = out.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        assert!(c > 0x20 && c < 0x7f && c != b'\\', "byte {c:#x} in {out:?}");
        if c == b'%' {
            let hex = &b[i + 1..i + 3];
            assert!(
                hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "escape not upper-case hex in {out:?}"
            );
            let v = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("hex");
            assert!(
                !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~')),
                "escaped unreserved char in {out:?}"
            );
            assert!(v != 0, "%00 in {out:?}");
            if !allow {
                assert!(v != b'/' && v != b'\\', "encoded slash in {out:?}");
            }
        }
    }
    assert!(prefix_matches(out, "/"));
    assert!(prefix_matches(out, out));
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let allow = ctl & 1 != 0;
    let result = normalize(path, allow);
    if let Ok(out) = &result {
        check(out, allow);
        let again = normalize(out, allow).expect("normalised path refused when normalised again");
        assert_eq!(&again, out, "normalize is not idempotent");
    }
    // Allowing encoded slashes only ever accepts more.
    if normalize(path, false).is_ok() {
        assert!(normalize(path, true).is_ok(), "allow_encoded_slash refused {path:?}");
    }
});
