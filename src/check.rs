//! `jwks-sidecar check`: validate the config, fetch every provider's keys once, and report
//! what was found, so a broken deployment fails in CI or at rollout, not at the first request.

use std::fmt::Write;

use crate::jwks::source::{fetch_key_set, fetcher_for, ConfiguredSource};
use crate::metrics::Metrics;
use crate::plan::Plan;

/// Fetches every provider's keys; `Ok(report)` when all have usable keys.
pub async fn check(plan: &Plan) -> Result<String, String> {
    crate::install_crypto_provider();
    let metrics = std::sync::Arc::new(Metrics::new());
    let auth = plan.authenticator(metrics);
    let fetcher = crate::jwks::fetch::Fetcher::new();
    let mut report = String::new();
    let mut failed = Vec::new();
    for (p, pp) in auth.providers().iter().zip(&plan.providers) {
        let _ = writeln!(report, "provider {:?} (issuer {})", p.name, p.issuer);
        let source = match fetcher_for(&pp.keys, &fetcher) {
            Ok(f) => ConfiguredSource::new(f, &pp.keys, Some(p.keys.clone())),
            Err(e) => {
                failed.push(e);
                continue;
            }
        };
        match fetch_key_set(&source, &p.keys).await {
            Ok((set, skipped)) => {
                if let Some(uri) = p.keys.status().jwks_uri {
                    let _ = writeln!(report, "  jwks_uri: {uri}");
                }
                for k in set.keys() {
                    let algs: Vec<&str> = p
                        .algorithms
                        .iter()
                        .filter(|a| k.accepts(**a))
                        .map(|a| a.name())
                        .collect();
                    let _ = writeln!(
                        report,
                        "  key kid={:?} type={:?} algs={}",
                        k.kid.as_deref().unwrap_or("-"),
                        k.kind,
                        algs.join(",")
                    );
                }
                for s in &skipped {
                    let _ = writeln!(
                        report,
                        "  skipped kid={:?}: {}",
                        s.kid.as_deref().unwrap_or("-"),
                        s.reason
                    );
                }
                if set.is_empty() {
                    failed.push(format!("provider {:?}: the key set has no usable signing key (check algorithms and the JWKS)", p.name));
                }
            }
            Err(e) => failed.push(format!("provider {:?}: {} ({})", p.name, e, e.label())),
        }
    }
    let _ = writeln!(report, "rules (first match wins):");
    for line in plan.rules.describe() {
        let _ = writeln!(report, "  {line}");
    }
    for (later, earlier) in plan.rules.shadowed() {
        let _ = writeln!(
            report,
            "  WARNING: {later} can never match: {earlier} matches every request it would"
        );
    }
    if failed.is_empty() {
        report.push_str("OK\n");
        Ok(report)
    } else {
        Err(format!("{report}FAILED:\n  - {}\n", failed.join("\n  - ")))
    }
}

/// `jwks-sidecar healthcheck`: GET `url` over plain HTTP; Ok when it answers 200.
pub async fn healthcheck(url: &str) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(3), client.get(uri))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url}: status {}", resp.status()))
    }
}
