//! Small helpers: HTTP answers, JWTs, metrics, encodings, files, child processes.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::metric_series;

pub fn describe(status: u16, body: &str) -> String {
    format!(
        "HTTP {status} {}",
        body.chars().take(400).collect::<String>()
    )
}

pub fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A token's header and payload, unverified (null where they do not decode).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let part = |i: usize| {
        (token.split('.').nth(i))
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    (part(0), part(1))
}

/// The sum of the samples of `name` whose labels include all of `labels` (written as the
/// exposition writes them: `a="1",b="2"`); None if there is no such sample.
pub fn metric_sum(text: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted: Vec<String> = labels.split(',').map(|l| format!(",{l},")).collect();
    metric_series(text, name)
        .filter(|(set, _)| {
            wanted
                .iter()
                .all(|l| format!(",{set},").contains(l.as_str()))
        })
        .map(|(_, v)| v)
        .reduce(|a, b| a + b)
}

/// application/x-www-form-urlencoded: every byte but the unreserved ones as %XX.
pub use crate::support::urlencode;

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("random bytes");
    b
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `n` lines of a file ("" if it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, then SIGKILL if the child still runs after `within`. The exit status if it
/// exited within the time.
pub async fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        let pid = pid.to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    }
    match tokio::time::timeout(within, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        _ => {
            let _ = child.kill().await;
            None
        }
    }
}
