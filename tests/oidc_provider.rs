//! jwks-sidecar (the binary) against a real OpenID Connect provider: the `oidc-provider` npm
//! package (`e2e/oidc/provider.mjs`, a child process), found by OIDC discovery, issuing JWT
//! access tokens with the client_credentials grant and a resource indicator; then a
//! signing-key rotation of that provider, and a key it never published.
//!
//! Needs node >= 20 and `npm ci` in e2e/oidc, so it is ignored by default:
//! `scripts/test.d/40-oidc-e2e.sh` installs the packages and runs it with `--ignored`.
//! Every check is printed (`ok` / `FAIL`) and counted; the run ends with the line
//! `oidc-e2e: N passed, M failed` and the test fails listing the failed checks.
//! Env: `OIDC_E2E_SIDECAR` (another binary), `OIDC_E2E_KEEP=1` (keep the temp dir: configs and
//! the sidecar's log). Keys and the client secret are made per run and only held in memory.

mod support;

use std::collections::HashSet;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use jwks_sidecar::demo::EchoUpstream;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{b64, now, SigningKey};
use serde_json::{json, Value};
use support::{free_addr, get, metric_series, request, wait_ready, DEADLINE};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

const AUDIENCE: &str = "https://api.test";
const OTHER_AUDIENCE: &str = "https://other.test";
const CLIENT_ID: &str = "e2e-client";
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

async fn run(report: Arc<Report>, dir: PathBuf, tag: String) -> Result<()> {
    let r = &report;
    r.step("setup");
    let bin = std::env::var("OIDC_E2E_SIDECAR")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jwks-sidecar").to_string());
    let package = Path::new(E2E_DIR).join("node_modules/oidc-provider");
    if !package.is_dir() {
        return Err(format!(
            "{} is missing: run `npm ci` in e2e/oidc (scripts/test.d/40-oidc-e2e.sh does)",
            package.display()
        ));
    }
    r.info(format!("sidecar binary: {bin}"));
    r.info(format!("temp dir: {}", dir.display()));
    let key1 = SigningKey::generate(Alg::RS256, &format!("e2e-{tag}-1"));
    let key2 = SigningKey::generate(Alg::RS256, &format!("e2e-{tag}-2"));
    let secret = b64(random::<24>());

    r.step("start the OpenID provider (oidc-provider), key 1 only");
    let client = json!({
        "client_id": CLIENT_ID,
        "client_secret": secret,
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "token_endpoint_auth_method": "client_secret_basic",
    });
    let mut op = OpenIdProvider::start(0, &[&key1], client, Arc::default()).await?;
    let issuer = op.issuer.clone();
    r.info(format!("issuer {issuer}, keys {}", op.kids.join(", ")));

    r.step("OIDC discovery document");
    let (st, _, body) = get(&format!("{issuer}/.well-known/openid-configuration"), &[]).await;
    let (disc, d) = (parse(&body), describe(st.as_u16(), &body));
    r.check("discovery: 200", st == 200, &d);
    r.check(
        "discovery: issuer is exactly the configured issuer",
        disc["issuer"] == issuer.as_str(),
        &d,
    );
    r.check(
        "discovery: has a jwks_uri",
        disc["jwks_uri"].is_string(),
        &d,
    );
    r.check(
        "discovery: client_credentials grant offered",
        (disc["grant_types_supported"].as_array())
            .is_some_and(|g| g.contains(&json!("client_credentials"))),
        &d,
    );
    let oauth = OAuthClient {
        token_endpoint: (disc["token_endpoint"].as_str())
            .ok_or_else(|| format!("no token_endpoint in the discovery document: {d}"))?
            .to_string(),
        secret,
    };
    let (st, _, body) = get(disc["jwks_uri"].as_str().unwrap_or_default(), &[]).await;
    let published = parse(&body)["keys"].as_array().cloned().unwrap_or_default();
    let private = ["d", "p", "q", "dp", "dq", "qi"];
    r.check(
        "provider JWKS publishes key 1 (public parts only)",
        published.len() == 1
            && published[0]["kid"] == key1.kid.as_str()
            && published[0]["n"] == key1.public_jwk()["n"]
            && private.iter().all(|p| published[0].get(p).is_none()),
        describe(st.as_u16(), &body),
    );

    r.step("start the echo upstream");
    let echo = EchoUpstream::start()
        .await
        .map_err(|e| format!("echo: {e}"))?;
    let upstream = echo.url();
    r.info(format!("upstream {upstream}"));

    r.step("jwks-sidecar check (validates the config, one discovery + JWKS fetch)");
    {
        let good = sidecar_config(free_addr(), free_addr(), &upstream, &issuer);
        let (code, out) = run_check(&bin, &dir.join("check-good.toml"), &good).await?;
        r.check(
            "check: exit 0",
            code == Some(0),
            format!("exit {code:?}\n{out}"),
        );
        r.check(
            format!("check: reports jwks_uri and kid {}", key1.kid),
            out.contains(&format!("{issuer}/jwks")) && out.contains(&key1.kid),
            &out,
        );
        // A very common mistake: the configured issuer differs from the discovery document's
        // (here by a trailing slash). The sidecar must refuse it, and say why.
        let bad = sidecar_config(free_addr(), free_addr(), &upstream, &format!("{issuer}/"));
        let (code, out) = run_check(&bin, &dir.join("check-bad.toml"), &bad).await?;
        r.check(
            "check: issuer with a trailing slash fails (exit non-zero)",
            code.is_some_and(|c| c != 0),
            format!("exit {code:?}\n{out}"),
        );
        r.check(
            "check: the failure names the discovery issuer mismatch",
            out.contains("issuer") && out.contains(&format!("{issuer:?}")),
            &out,
        );
    }

    r.step("start jwks-sidecar (provider found by discovery)");
    let config = |proxy, admin| sidecar_config(proxy, admin, &upstream, &issuer);
    let mut sc = Sidecar::start(&bin, &dir, r.clone(), echo, config).await?;
    let (st, _, body) = get(&sc.admin("/readyz"), &[]).await;
    r.check(
        "sidecar: /readyz 200",
        st == 200,
        describe(st.as_u16(), &body),
    );
    let kids0 = sc.provider_kids().await;
    r.check(
        format!("sidecar: /providers lists kid {}", key1.kid),
        kids0.contains(&key1.kid),
        format!("{kids0:?}"),
    );
    let (st, _, body) = get(&sc.admin("/jwks/oidc"), &[]).await;
    let mirrored = parse(&body)["keys"].as_array().cloned().unwrap_or_default();
    r.check(
        "sidecar: /jwks/oidc mirrors key 1",
        mirrored.iter().any(|k| k["kid"] == key1.kid.as_str()),
        describe(st.as_u16(), &body),
    );

    r.step("tokens from the provider, through the sidecar");
    let t1 = oauth.token(AUDIENCE, Some("api:read")).await?;
    let (h1, c1) = decode_jwt(&t1);
    let (iss, aud, sub) = (&c1["iss"], &c1["aud"], &c1["sub"]);
    r.info(format!(
        "token: header {h1}, iss {iss}, aud {aud}, sub {sub}"
    ));
    r.check("token: iss is the issuer", *iss == issuer.as_str(), &c1);
    r.check(
        format!("token: sub is the client_id ({CLIENT_ID})"),
        *sub == CLIENT_ID,
        &c1,
    );
    let a = sc.allowed("valid token", &t1, &key1.kid).await;
    r.check(
        "valid token: upstream saw x-jwt-client-id",
        a.upstream_saw("x-jwt-client-id") == [CLIENT_ID],
        a.upstream_headers(),
    );
    r.check(
        "valid token: upstream saw x-jwt-scope=api:read",
        a.upstream_saw("x-jwt-scope") == ["api:read"],
        a.upstream_headers(),
    );

    let spoofed = [("x-jwt-sub", "admin"), ("X_JWT_Client_Id", "evil")];
    let a = sc.proxied(&t1, &spoofed).await;
    r.check(
        "spoofed x-jwt-sub with a valid token: 200",
        a.status == 200,
        a.describe(),
    );
    r.check(
        "spoofed x-jwt-sub: upstream saw the verified sub only",
        a.upstream_saw("x-jwt-sub") == [CLIENT_ID] && a.upstream_saw("x_jwt_client_id").is_empty(),
        a.upstream_headers(),
    );

    let a = sc.denied("no token", "", 401, "missing_token").await;
    let www = a.www_authenticate.as_deref().unwrap_or_default();
    let bearer = www
        .get(..6)
        .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
        && !www.as_bytes().get(6).is_some_and(u8::is_ascii_alphanumeric);
    r.check(
        "no token: WWW-Authenticate: Bearer",
        bearer,
        format!("{:?}", a.www_authenticate),
    );

    let &[h, p, s] = t1.split('.').collect::<Vec<_>>().as_slice() else {
        return Err(format!("the token is not three segments: {t1}"));
    };
    let flipped = if &s[10..11] == "A" { "B" } else { "A" };
    let tampered = format!("{h}.{p}.{}{flipped}{}", &s[..10], &s[11..]);
    let a = sc
        .denied("tampered signature", &tampered, 401, "bad_signature")
        .await;
    r.check(
        "tampered signature: JSON error invalid_token",
        a.json["error"] == "invalid_token",
        a.describe(),
    );
    let mut forged = c1.clone();
    forged["sub"] = json!("admin");
    let forged = format!("{h}.{}.{s}", b64(forged.to_string()));
    sc.denied(
        "tampered payload (sub=admin)",
        &forged,
        401,
        "bad_signature",
    )
    .await;

    let wrong_aud = oauth.token(OTHER_AUDIENCE, Some("other:read")).await?;
    let (_, wc) = decode_jwt(&wrong_aud);
    r.check(
        "wrong-audience token: aud is the other API",
        wc["aud"].to_string().contains(OTHER_AUDIENCE),
        &wc,
    );
    sc.denied(
        "token for another audience",
        &wrong_aud,
        401,
        "bad_audience",
    )
    .await;
    let no_scope = oauth.token(AUDIENCE, None).await?;
    let name = "token without the required scope";
    sc.denied(name, &no_scope, 403, "insufficient_scope").await;

    r.step("key rotation 1/2: provider restarted with [key 2 (signs), key 1 (still published)]");
    let fetches_before = sc.ok_fetches().await;
    op.restart(&[&key2, &key1]).await?;
    r.info(format!("provider restarted, keys {}", op.kids.join(", ")));
    let t2 = oauth.token(AUDIENCE, Some("api:read")).await?;
    let (h2, _) = decode_jwt(&t2);
    r.check(
        format!(
            "rotation: new token is signed with the new kid {}",
            key2.kid
        ),
        h2["kid"] == key2.kid.as_str(),
        &h2,
    );
    // The acceptance test of the "unknown kid" refetch: the sidecar has not seen key 2 yet
    // (its periodic refresh is 5 minutes away), and the very first request with it must pass.
    // Several requests at once, none of them sent before: every one is a "first request".
    let started = Instant::now();
    let first = || sc.send(&t2, &[]);
    let (a, b, c, d) = tokio::join!(first(), first(), first(), first());
    let firsts = [a, b, c, d];
    let wave = firsts.len();
    let wave_ms = started.elapsed().as_millis();
    let refused: Vec<&Answer> = firsts.iter().filter(|a| a.status != 200).collect();
    r.check(
        format!(
            "rotation: FIRST requests with the new kid {} ({wave} at once) are all 200 \
             (no 401 window)",
            key2.kid
        ),
        refused.is_empty(),
        format!(
            "{} of {wave} refused: {}\n\
             The sidecar did not accept the new signing key on its first use. It must refetch \
             the JWKS when a\ntoken's kid is not in its mirror (the \"unknown kid\" refetch, \
             single-flight); without that, a rotation\nis only seen at the next periodic \
             refresh (refresh_interval = 5m here), and every request signed\nwith the new key \
             is refused until then. The checks below that use the new key fail for the same \
             reason.",
            refused.len(),
            refused.first().map(|a| a.describe()).unwrap_or_default()
        ),
    );
    r.check(
        format!("rotation: upstream saw x-jwt-sub={CLIENT_ID}"),
        firsts
            .iter()
            .all(|a| a.upstream_saw("x-jwt-sub") == [CLIENT_ID]),
        firsts
            .iter()
            .map(Answer::upstream_headers)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    r.info(format!(
        "first-wave latency: {wave_ms} ms for {wave} concurrent requests"
    ));
    let m = sc.metrics().await;
    let fetches_after = metric_sum(&m, FETCHES, OK_FETCHES).unwrap_or(0.0);
    let fetches =
        format!("{FETCHES}{{{OK_FETCHES}}}: {fetches_before} before, {fetches_after} after");
    r.check(
        "rotation: the new kid made the sidecar refetch its keys",
        fetches_after > fetches_before,
        &fetches,
    );
    r.check(
        format!(
            "rotation: {wave} concurrent unknown-kid requests cost one refetch (single-flight)"
        ),
        fetches_after - fetches_before <= 1.0,
        &fetches,
    );
    let misses: Vec<_> = metric_series(&m, "jwks_sidecar_jwks_kid_miss_total").collect();
    r.info(format!(
        "JWKS fetches ok: {fetches_before} before the first new-kid wave, {fetches_after} after; \
         kid_miss_total: {misses:?}"
    ));
    let kids1 = sc.provider_kids().await;
    r.check(
        "rotation: sidecar now mirrors both kids",
        kids1.contains(&key1.kid) && kids1.contains(&key2.kid),
        format!("{kids1:?}"),
    );
    sc.allowed("rotation: new-kid token again", &t2, &key2.kid)
        .await;
    let name = "rotation: old-kid token (issued before the rotation) still accepted";
    sc.allowed(name, &t1, &key1.kid).await;

    r.step("key rotation 2/2: provider restarted with [key 2] only (key 1 retired)");
    op.restart(&[&key2]).await?;
    r.info(format!("provider restarted, keys {}", op.kids.join(", ")));
    let t3 = oauth.token(AUDIENCE, Some("api:read")).await?;
    sc.allowed("after retirement: fresh new-kid token", &t3, &key2.kid)
        .await;
    sc.allowed("after retirement: earlier new-kid token", &t2, &key2.kid)
        .await;
    // When the sidecar drops key 1 depends on its fetches (periodic, or triggered by unknown
    // kids), so this is reported, not asserted.
    let a = sc.proxied(&t1, &[]).await;
    let reason = a.json["reason"].as_str().unwrap_or_default();
    r.info(format!(
        "old-kid token after key 1 was retired by the provider: HTTP {} {reason} (not asserted)",
        a.status
    ));

    r.step("a token signed by a key the provider never published");
    {
        // Same claims as a real token, but signed with a key of our own under an unknown kid:
        // the sidecar may refetch (rate-limited), must not find the kid, and refuses.
        let rogue = SigningKey::generate(Alg::RS256, &format!("e2e-{tag}-rogue"));
        let (_, mut claims) = decode_jwt(&t3);
        (claims["iat"], claims["exp"]) = (json!(now()), json!(now() + 300));
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": rogue.kid});
        let forged = rogue.mint_with_header(&header, &claims);
        sc.denied("unknown kid (rogue key)", &forged, 401, "unknown_kid")
            .await;
    }

    r.step("metrics");
    let m = sc.metrics().await;
    let requests = |labels: &str| metric_sum(&m, "jwks_sidecar_requests_total", labels);
    let v = metric_sum(&m, FETCHES, OK_FETCHES);
    let name = format!("metrics: {FETCHES}{{{OK_FETCHES}}} >= 1");
    r.check(name, v.is_some_and(|v| v >= 1.0), format!("value: {v:?}"));
    let (allowed, denied) = (
        sc.allowed.load(Ordering::SeqCst),
        sc.denied.load(Ordering::SeqCst),
    );
    let v = requests(r#"listener="proxy",decision="allow""#);
    r.check(
        format!(
            "metrics: jwks_sidecar_requests_total{{decision=\"allow\"}} = {allowed} \
             (the 200s this test got)"
        ),
        v == Some(allowed as f64),
        format!("value: {v:?}"),
    );
    let v = requests(r#"listener="proxy",decision="deny""#);
    r.check(
        format!(
            "metrics: jwks_sidecar_requests_total{{decision=\"deny\"}} = {denied} \
             (the refusals this test got)"
        ),
        v == Some(denied as f64),
        format!("value: {v:?}"),
    );
    let labels = r#"provider="oidc",decision="allow",reason="ok""#;
    let v = requests(labels);
    let name = format!("metrics: jwks_sidecar_requests_total{{{labels}}} present");
    r.check(name, v.is_some_and(|v| v >= 1.0), format!("value: {v:?}"));
    for reason in [
        "missing_token",
        "bad_signature",
        "bad_audience",
        "insufficient_scope",
    ] {
        let labels = format!(r#"decision="deny",reason="{reason}""#);
        let v = requests(&labels);
        let name = format!("metrics: jwks_sidecar_requests_total{{{labels}}} counted");
        r.check(name, v.is_some_and(|v| v >= 1.0), format!("value: {v:?}"));
    }
    let keys = metric_sum(&m, "jwks_sidecar_jwks_keys", r#"provider="oidc""#);
    let changes = |change: &str| {
        let labels = format!(r#"provider="oidc",change="{change}""#);
        metric_sum(&m, "jwks_sidecar_jwks_key_changes_total", &labels)
    };
    r.info(format!(
        "jwks_sidecar_jwks_keys{{provider=\"oidc\"}} = {keys:?}; key changes: added {:?}, \
         removed {:?}",
        changes("added"),
        changes("removed")
    ));

    r.step("shutdown");
    let status = terminate(&mut sc.child, Duration::from_secs(10)).await;
    r.check(
        "sidecar: exits 0 on SIGTERM",
        status.is_some_and(|s| s.code() == Some(0)),
        format!("exit status {status:?} (None: still running 10 s after SIGTERM, killed)"),
    );
    op.stop().await;
    Ok(())
}

const FETCHES: &str = "jwks_sidecar_jwks_fetch_total";
const OK_FETCHES: &str = r#"provider="oidc",result="ok""#;

// ---------------------------------------------------------------- reporting

struct Report {
    t0: Instant,
    passed: AtomicUsize,
    failed: Mutex<Vec<String>>,
}

impl Default for Report {
    fn default() -> Report {
        let (passed, failed) = (AtomicUsize::new(0), Mutex::default());
        Report {
            t0: Instant::now(),
            passed,
            failed,
        }
    }
}

impl Report {
    fn step(&self, title: &str) {
        println!("\n--- [{:.1}s] {title}", self.t0.elapsed().as_secs_f64());
    }

    fn info(&self, msg: impl Display) {
        println!("  info {msg}");
    }

    /// Counts and prints one check; `detail` is printed when it fails.
    fn check(&self, name: impl Into<String>, ok: bool, detail: impl Display) {
        let name = name.into();
        if ok {
            self.passed.fetch_add(1, Ordering::SeqCst);
            println!("  ok   {name}");
        } else {
            let detail = detail.to_string().replace('\n', "\n       ");
            println!("  FAIL {name}\n       {detail}");
            self.failed.lock().expect("lock").push(name);
        }
    }
}

// ---------------------------------------------------------------- the OpenID provider

/// `provider.mjs` as a child process. Its stdin stays open while this lives: the provider
/// exits when it closes (the test went away) as well as on SIGTERM.
struct OpenIdProvider {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    issuer: String,
    kids: Vec<String>,
    client: Value,
    /// Lines it printed: it prints the same warnings on every restart, each is shown once.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl OpenIdProvider {
    /// Starts provider.mjs on `port` (0: any) with these signing keys (the first one signs
    /// new tokens), retrying a few times while the port is still taken (a restart in place).
    async fn start(
        port: u16,
        keys: &[&SigningKey],
        client: Value,
        seen: Arc<Mutex<HashSet<String>>>,
    ) -> Result<OpenIdProvider> {
        let keys: Vec<_> = (keys.iter())
            .map(|k| json!({"kid": k.kid, "pkcs8": STANDARD.encode(k.pkcs8_der())}))
            .collect();
        let config = json!({"keys": keys, "clients": [client]});
        let mut last = String::new();
        for attempt in 1..=5u64 {
            let mut child = Command::new("node")
                .arg(Path::new(E2E_DIR).join("provider.mjs"))
                .args(["--port", &port.to_string()])
                .current_dir(E2E_DIR)
                .env_remove("DEBUG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run node (Node.js >= 20 is needed): {e}"))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let (tx, rx) = oneshot::channel();
            show_lines(child.stdout.take().expect("piped"), seen.clone(), Some(tx));
            show_lines(child.stderr.take().expect("piped"), seen.clone(), None);
            (stdin.write_all(format!("{config}\n").as_bytes()).await)
                .map_err(|e| format!("provider stdin: {e}"))?;
            // The ready (or error) line; the reader drops `tx` at the end of stdout (exit).
            let line = match tokio::time::timeout(DEADLINE, rx).await {
                Ok(Ok(line)) => line,
                Ok(Err(_)) => json!({"error": "the provider exited without a ready line"}),
                Err(_) => json!({"error": format!("not ready within {DEADLINE:?}")}),
            };
            if let (Some(issuer), Some(p)) = (line["issuer"].as_str(), line["port"].as_u64()) {
                return Ok(OpenIdProvider {
                    child,
                    _stdin: stdin,
                    port: u16::try_from(p).map_err(|_| format!("port {p}"))?,
                    issuer: issuer.to_string(),
                    kids: serde_json::from_value(line["kids"].clone()).unwrap_or_default(),
                    client,
                    seen,
                });
            }
            last = line.to_string();
            terminate(&mut child, Duration::from_secs(5)).await;
            if line["code"] != "EADDRINUSE" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
        Err(format!("could not start the OpenID provider: {last}"))
    }

    /// Stops it and starts a new one on the same port (same issuer) with these keys.
    async fn restart(&mut self, keys: &[&SigningKey]) -> Result<()> {
        self.stop().await;
        let (client, seen) = (self.client.clone(), self.seen.clone());
        let issuer = self.issuer.clone();
        *self = OpenIdProvider::start(self.port, keys, client, seen).await?;
        if self.issuer != issuer {
            return Err(format!("restarted as {}, not {issuer}", self.issuer));
        }
        Ok(())
    }

    async fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5)).await;
    }
}

/// Prints the lines of a child's output (each distinct line once); with `first_json`, the
/// first line that is a JSON object goes there instead.
fn show_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    seen: Arc<Mutex<HashSet<String>>>,
    mut first_json: Option<oneshot::Sender<Value>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                if let Some(tx) = first_json.take() {
                    let _ = tx.send(v);
                    continue;
                }
            }
            if seen.lock().expect("lock").insert(line.clone()) {
                println!("       provider: {line}");
            }
        }
    });
}

/// SIGTERM, then SIGKILL if the child still runs after `within`. The exit status if it
/// exited within the time.
async fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
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

/// The test's OAuth client (client_secret_basic) at the provider's token endpoint.
struct OAuthClient {
    token_endpoint: String,
    secret: String,
}

impl OAuthClient {
    /// An access token from the client_credentials grant for `resource` (RFC 8707).
    async fn token(&self, resource: &str, scope: Option<&str>) -> Result<String> {
        let mut form = format!(
            "grant_type=client_credentials&resource={}",
            urlencode(resource)
        );
        if let Some(scope) = scope {
            form.push_str(&format!("&scope={}", urlencode(scope)));
        }
        let credentials = format!("{}:{}", urlencode(CLIENT_ID), urlencode(&self.secret));
        let basic = format!("Basic {}", STANDARD.encode(credentials));
        let headers = [
            ("authorization", basic.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        let body = Bytes::from(form);
        let (st, _, body) = request("POST", &self.token_endpoint, &headers, body).await;
        match parse(&body)["access_token"].as_str() {
            Some(t) if st == 200 => Ok(t.to_string()),
            _ => Err(format!("token endpoint: {}", describe(st.as_u16(), &body))),
        }
    }
}

// ---------------------------------------------------------------- the sidecar

/// The sidecar's config: the provider is found by OIDC discovery on its issuer.
fn sidecar_config(proxy: SocketAddr, admin: SocketAddr, upstream: &str, issuer: &str) -> String {
    format!(
        r#"# written by tests/oidc_provider.rs
[proxy]
listen = "{proxy}"
upstream = "{upstream}"

[admin]
listen = "{admin}"

[log]
format = "json"

[[providers]]
name = "oidc"
issuer = "{issuer}"
discovery = true
audiences = ["{AUDIENCE}"]
algorithms = ["RS256"]
required_scopes = ["api:read"]
refresh_interval = "5m"

[providers.claim_headers]
sub = "x-jwt-sub"
client_id = "x-jwt-client-id"
scope = "x-jwt-scope"
"#
    )
}

/// The binary, with an environment where only the config file counts (JWKS_SIDECAR_*
/// variables of the caller would override it).
fn sidecar_command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("JWKS_SIDECAR_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// `jwks-sidecar check --config <file with config>` (bounded): the exit code (None: killed,
/// or did not finish in 20 s) and stdout + stderr.
async fn run_check(bin: &str, file: &Path, config: &str) -> Result<(Option<i32>, String)> {
    std::fs::write(file, config).map_err(|e| format!("write {}: {e}", file.display()))?;
    let run = sidecar_command(bin)
        .arg("check")
        .arg("--config")
        .arg(file)
        .output();
    let outcome = match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(out)) => {
            let text = [out.stdout, out.stderr].concat();
            (
                out.status.code(),
                String::from_utf8_lossy(&text).into_owned(),
            )
        }
        Ok(Err(e)) => (None, format!("cannot run {bin}: {e}")),
        Err(_) => (None, "did not finish within 20 s".to_string()),
    };
    Ok(outcome)
}

/// The sidecar as a child process, with the echo upstream behind it; it counts the proxy's
/// answers to this test and checks them into the report.
struct Sidecar {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    echo: EchoUpstream,
    r: Arc<Report>,
    allowed: AtomicUsize,
    denied: AtomicUsize,
}

impl Sidecar {
    /// Starts the binary with `config(proxy, admin)` and waits until it is ready (every
    /// provider has keys). The addresses are picked free just before the sidecar binds them:
    /// if another process took one in between, it tries again with new ones.
    async fn start(
        bin: &str,
        dir: &Path,
        r: Arc<Report>,
        echo: EchoUpstream,
        config: impl Fn(SocketAddr, SocketAddr) -> String,
    ) -> Result<Sidecar> {
        let (file, log) = (dir.join("sidecar.toml"), dir.join("sidecar.log"));
        for attempt in 1..=3 {
            let (proxy, admin) = (free_addr(), free_addr());
            std::fs::write(&file, config(proxy, admin)).map_err(|e| format!("config: {e}"))?;
            let out = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
            let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
            let mut child = (sidecar_command(bin).arg("--config").arg(&file))
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("cannot run {bin}: {e}"))?;
            let why = tokio::select! {
                ready = wait_ready(proxy, admin) => {
                    if ready {
                        let (allowed, denied) = (AtomicUsize::new(0), AtomicUsize::new(0));
                        return Ok(Sidecar { child, proxy, admin, echo, r, allowed, denied });
                    }
                    format!("not ready within {DEADLINE:?}")
                }
                status = child.wait() => match status {
                    Ok(status) => format!("the sidecar exited ({status})"),
                    Err(e) => format!("waiting for the sidecar: {e}"),
                },
            };
            terminate(&mut child, Duration::from_secs(5)).await;
            let log = tail(&log, 40);
            if attempt < 3 && log.contains("Address already in use") {
                r.info(format!(
                    "a port was taken before the sidecar bound it ({why}); again"
                ));
                continue;
            }
            return Err(format!("{why}\n--- sidecar log (last lines):\n{log}"));
        }
        unreachable!("the last attempt returns")
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn metrics(&self) -> String {
        get(&self.admin("/metrics"), &[]).await.2
    }

    /// Successful JWKS fetches of the provider so far.
    async fn ok_fetches(&self) -> f64 {
        metric_sum(&self.metrics().await, FETCHES, OK_FETCHES).unwrap_or(0.0)
    }

    /// The kids `/providers` lists for the provider.
    async fn provider_kids(&self) -> Vec<String> {
        let body = get(&self.admin("/providers"), &[]).await.2;
        (parse(&body)["providers"].as_array())
            .and_then(|ps| ps.iter().find(|p| p["name"] == "oidc"))
            .and_then(|p| serde_json::from_value(p["kids"].clone()).ok())
            .unwrap_or_default()
    }

    /// GET /api/hello on the proxy with this token ("": none) and headers, counted as allowed
    /// (200) or refused.
    async fn send(&self, token: &str, extra: &[(&str, &str)]) -> Answer {
        let auth = format!("Bearer {token}");
        let mut headers = extra.to_vec();
        if !token.is_empty() {
            headers.push(("authorization", &auth));
        }
        let (st, h, body) = get(&format!("http://{}/api/hello", self.proxy), &headers).await;
        let status = st.as_u16();
        let counter = if status == 200 {
            &self.allowed
        } else {
            &self.denied
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let www_authenticate =
            (h.get("www-authenticate")).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Answer {
            status,
            www_authenticate,
            json: parse(&body),
            body,
            reached: false,
        }
    }

    /// [`Sidecar::send`], one request at a time: `reached` says whether the echo upstream got
    /// a request meanwhile.
    async fn proxied(&self, token: &str, extra: &[(&str, &str)]) -> Answer {
        let before = self.echo.requests.load(Ordering::SeqCst);
        let mut a = self.send(token, extra).await;
        a.reached = self.echo.requests.load(Ordering::SeqCst) > before;
        a
    }

    /// Three checks: 200 from the upstream, which saw the token's sub; the token has `kid`.
    async fn allowed(&self, name: &str, token: &str, kid: &str) -> Answer {
        let a = self.proxied(token, &[]).await;
        let (header, claims) = decode_jwt(token);
        let sub = claims["sub"].as_str().unwrap_or("<no sub>");
        self.r.check(
            format!("{name}: 200 from the upstream"),
            a.status == 200 && a.reached,
            a.describe(),
        );
        self.r.check(
            format!("{name}: upstream saw x-jwt-sub={sub}"),
            a.upstream_saw("x-jwt-sub") == [sub],
            a.upstream_headers(),
        );
        self.r.check(
            format!("{name}: token was signed with kid {kid}"),
            header["kid"] == kid,
            &header,
        );
        a
    }

    /// Three checks: `status`, the JSON body's `reason`, and the upstream saw nothing.
    async fn denied(&self, name: &str, token: &str, status: u16, reason: &str) -> Answer {
        let a = self.proxied(token, &[]).await;
        let d = a.describe();
        self.r
            .check(format!("{name}: {status}"), a.status == status, &d);
        self.r.check(
            format!("{name}: reason {reason}"),
            a.json["reason"] == reason,
            &d,
        );
        self.r.check(
            format!("{name}: never reached the upstream"),
            !a.reached,
            &d,
        );
        a
    }
}

/// One answer of the proxy.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
    /// The body as JSON (the echo's description of the request, or a refusal); null if not.
    json: Value,
    /// The echo upstream received a request while this one was made.
    reached: bool,
}

impl Answer {
    fn describe(&self) -> String {
        describe(self.status, &self.body)
    }

    /// The values of header `name` the upstream received (from the echo's answer).
    fn upstream_saw(&self, name: &str) -> Vec<String> {
        serde_json::from_value(self.json["headers"][name].clone()).unwrap_or_default()
    }

    fn upstream_headers(&self) -> String {
        format!("upstream headers: {}", self.json["headers"])
    }
}

// ---------------------------------------------------------------- small helpers

fn describe(status: u16, body: &str) -> String {
    format!(
        "HTTP {status} {}",
        body.chars().take(400).collect::<String>()
    )
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A token's header and payload, unverified (null where they do not decode).
fn decode_jwt(token: &str) -> (Value, Value) {
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
fn metric_sum(text: &str, name: &str, labels: &str) -> Option<f64> {
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
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("random bytes");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last `n` lines of a file ("" if it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
