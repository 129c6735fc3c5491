//! jwks-sidecar (the binary) against a real OpenID Connect provider: the `oidc-provider` npm
//! package (`e2e/oidc/provider.mjs`, a child process), found by OIDC discovery, issuing JWT
//! access tokens with the client_credentials grant and a resource indicator; DPoP-bound and
//! certificate-bound tokens (RFC 9449, RFC 8705); then a signing-key rotation of that
//! provider, and a key it never published.
//!
//! Needs node >= 20 and `npm ci` in e2e/oidc, so it is ignored by default:
//! `scripts/test.d/40-oidc-e2e.sh` installs the packages and runs it with `--ignored`.
//! Every check is printed (`ok` / `FAIL`) and counted; the run ends with the line
//! `oidc-e2e: N passed, M failed` and the test fails listing the failed checks.
//! Env: `OIDC_E2E_SIDECAR` (another binary), `OIDC_E2E_KEEP=1` (keep the temp dir: configs and
//! the sidecar's log). Keys and the client secret are made per run and only held in memory.
//!
//! Layout: this file runs the phases (`phases.rs`) in order and reports; `provider.rs` is the
//! OpenID provider and the OAuth client, `sidecar.rs` the sidecar and its answers, `report.rs`
//! the checks' report, `util.rs` small helpers.

#[path = "../support/mod.rs"]
mod support;

mod phases;
mod provider;
mod report;
mod sidecar;
mod util;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use report::Report;
use util::{hex, random, tail};

const AUDIENCE: &str = "https://api.test";
const OTHER_AUDIENCE: &str = "https://other.test";
const CLIENT_ID: &str = "e2e-client";
/// A second client whose tokens are bound to its client certificate (RFC 8705).
const MTLS_CLIENT_ID: &str = "e2e-mtls-client";
const E2E_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/oidc");
/// The whole run takes seconds; past this it fails as aborted (children are killed on drop).
const RUN_LIMIT: Duration = Duration::from_secs(150);

type Result<T> = std::result::Result<T, String>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs node and e2e/oidc/node_modules: run by scripts/test.d/40-oidc-e2e.sh"]
async fn sidecar_against_a_real_openid_provider() {
    let report = Arc::new(Report::default());
    let tag = hex(&random::<3>());
    let dir = std::env::temp_dir().join(format!("oidc-e2e-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // In a task of its own, so that a panic (a helper's `expect`) is reported as a failed
    // check, with the summary line, like an error; the children are killed when it ends.
    let run = tokio::spawn(tokio::time::timeout(
        RUN_LIMIT,
        run(report.clone(), dir.clone(), tag),
    ));
    let aborted = match run.await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e),
        Ok(Err(_)) => Some(format!("the run did not finish within {RUN_LIMIT:?}")),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = (p.downcast_ref::<String>().cloned())
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Some(format!("panic: {}", msg.unwrap_or_default()))
        }
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = aborted {
        report.check("aborted", false, why);
    }
    let failed = report.failed.lock().expect("lock").clone();
    if !failed.is_empty() {
        let log = tail(&dir.join("sidecar.log"), 15);
        if !log.is_empty() {
            println!("\n--- sidecar log (last lines):\n{log}");
        }
        println!("\nfailed checks:\n  - {}", failed.join("\n  - "));
    }
    if std::env::var_os("OIDC_E2E_KEEP").is_some() {
        println!("\ntemp dir kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("\ntook {:.1}s", report.t0.elapsed().as_secs_f64());
    let passed = report.passed.load(Ordering::SeqCst);
    println!("oidc-e2e: {passed} passed, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "failed checks:\n  - {}",
        failed.join("\n  - ")
    );
}

/// The phases in order. An `Err` ends the run (reported as the failed check "aborted"); the
/// provider and the sidecar are killed when they are dropped, on every way out.
async fn run(report: Arc<Report>, dir: PathBuf, tag: String) -> Result<()> {
    let (mut ctx, echo) = phases::setup_and_discovery(report, dir, tag).await?;
    phases::check_command(&ctx).await?;
    let mut sc = phases::start_sidecar(&ctx, echo).await?;
    let t1 = phases::tokens_and_allowed_request(&ctx, &sc).await?;
    phases::refusals(&ctx, &sc, &t1).await?;
    phases::dpop(&ctx, &sc).await?;
    phases::certificate_bound(&ctx, &sc).await?;
    let t2 = phases::rotation_new_key(&mut ctx, &sc, &t1).await?;
    let t3 = phases::rotation_retire_old_key(&mut ctx, &sc, &t1, &t2).await?;
    phases::unpublished_key(&ctx, &sc, &t3).await;
    phases::metrics(&ctx, &sc).await;
    phases::shutdown(&mut ctx, &mut sc).await;
    Ok(())
}
