//! `path::normalize`: the path that is matched is the path that is forwarded.
//!
//! Input: byte 0 bit 0 = allow_encoded_slash, bit 1 = allow_double_encoding, bit 2 =
//! allow_path_parameters; the rest is the request path.
//! With every opt-in off: the matcher's view equals the app's view under one more decoding.
//! Decoding the normalised path once (what a router or a second proxy does) yields valid
//! UTF-8 with the same segments: no new `/` or `\`, no `.`/`..` segment, no control
//! character, no `;` (so Tomcat-style parameter stripping changes nothing), and no
//! character that compatibility folding turns into `.`, `/` or `\`.
//! Invariants of an `Ok` path: starts with '/', has no empty, "." or ".." segment (no "//",
//! "/./", "/../"), no raw backslash, control, space or non-ASCII byte, no escape of an
//! unreserved character, %2F/%5C only when allowed, well-formed upper-case escapes; and
//! normalising it again changes nothing. Also: a refused path is refused in both modes when
//! it does not involve an encoded slash.

#![no_main]

use jwks_sidecar::path::{normalize, normalize_with, percent_decode, prefix_matches, PathOptions};
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

/// The strict-mode invariant: one more decoding of `out` keeps its segments.
fn one_more_decoding_keeps_segments(out: &str) {
    let once = percent_decode(out);
    let text = std::str::from_utf8(&once).unwrap_or_else(|_| panic!("{out:?} decodes to invalid UTF-8"));
    assert_eq!(
        text.matches('/').count(),
        out.matches('/').count(),
        "{out:?} gains a slash when decoded once: {text:?}"
    );
    for seg in text.split('/') {
        assert!(seg != "." && seg != "..", "{out:?} decodes to a dot segment: {text:?}");
        assert!(!seg.contains('\\'), "{out:?} decodes to a backslash: {text:?}");
        assert!(!seg.contains(';'), "{out:?} has path parameters: {text:?}");
        assert!(
            !seg.chars().any(|c| c.is_control()
                || matches!(c, '\u{2024}' | '\u{FE52}' | '\u{FF0E}' | '\u{FF0F}' | '\u{FF3C}' | '\u{FE68}')),
            "{out:?} decodes to a control or look-alike character: {text:?}"
        );
    }
    // A second decoding must not produce a separator or dot segment either.
    let twice = percent_decode(text);
    if let Ok(t2) = std::str::from_utf8(&twice) {
        assert_eq!(
            t2.matches('/').count(),
            out.matches('/').count(),
            "{out:?} gains a slash when decoded twice: {t2:?}"
        );
        assert!(!t2.contains('\\'), "{out:?} decodes twice to a backslash: {t2:?}");
        for seg in t2.split('/') {
            assert!(seg != "." && seg != "..", "{out:?} decodes twice to a dot segment: {t2:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let allow = ctl & 1 != 0;
    let opts = PathOptions {
        allow_encoded_slash: allow,
        allow_double_encoding: ctl & 2 != 0,
        allow_path_parameters: ctl & 4 != 0,
    };
    let result = normalize_with(path, &opts);
    if let Ok(out) = &result {
        check(out, allow);
        let again = normalize_with(out, &opts).expect("normalised path refused when normalised again");
        assert_eq!(&again, out, "normalize is not idempotent");
        if opts == PathOptions::default() {
            one_more_decoding_keeps_segments(out);
        }
    }
    // Each opt-in only ever accepts more.
    if normalize_with(path, &PathOptions::default()).is_ok() {
        assert!(normalize_with(path, &PathOptions::LENIENT).is_ok(), "an opt-in refused {path:?}");
    }
    // Allowing encoded slashes only ever accepts more.
    if normalize(path, false).is_ok() {
        assert!(normalize(path, true).is_ok(), "allow_encoded_slash refused {path:?}");
    }
});
