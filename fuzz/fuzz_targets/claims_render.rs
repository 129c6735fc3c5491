//! `claims::render`: a claim value becomes a request header value for the app.
//!
//! Input: byte 0 = array format (bit 0: comma/json), byte 1 = max_len; the rest is JSON (or,
//! when it is not JSON, a string claim holding the raw text).
//! Invariants: an `Ok` value is printable ASCII only (no CR, LF, NUL or other control bytes,
//! non-ASCII percent-encoded), at most max_len bytes, and a plain printable ASCII string
//! short enough is forwarded unchanged.

#![no_main]

use jwks_sidecar::auth::claims::{render, Dropped};
use jwks_sidecar::config::ArrayClaimFormat;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let format = if data[0] & 1 == 0 {
        ArrayClaimFormat::Comma
    } else {
        ArrayClaimFormat::Json
    };
    let max_len = data[1] as usize * 4;
    let rest = &data[2..];
    let value: Value = match serde_json::from_slice(rest) {
        Ok(v) => v,
        Err(_) => Value::String(String::from_utf8_lossy(rest).into_owned()),
    };
    match render(&value, format, max_len) {
        Ok(hv) => {
            let b = hv.as_bytes();
            assert!(b.len() <= max_len, "{} bytes > max_len {max_len}", b.len());
            assert!(
                b.iter().all(|&c| (0x20..0x7f).contains(&c)),
                "header value with a control or non-ASCII byte: {b:?} from {value}"
            );
            assert!(hv.to_str().is_ok());
            assert!(!matches!(value, Value::Null));
        }
        Err(d) => {
            assert!(!d.label().is_empty());
            if let Value::String(s) = &value {
                if s.bytes().all(|c| (0x20..0x7f).contains(&c)) && s.len() <= max_len {
                    panic!("printable ASCII claim {s:?} dropped as {d:?}");
                }
                if d == Dropped::Unrenderable {
                    panic!("string claim dropped as unrenderable");
                }
            }
        }
    }
    if let (Value::String(s), Ok(hv)) = (&value, render(&value, format, max_len)) {
        if s.is_ascii() {
            assert_eq!(hv.as_bytes(), s.as_bytes(), "ASCII string claim altered");
        }
    }
});
