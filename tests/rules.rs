//! Route rules (every form, precedence, normalisation bypasses), live reload (valid, invalid,
//! Kubernetes ConfigMap symlink swap, under load without failed requests), and the
//! `explain` / `check` commands.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jwks_sidecar::demo::{EchoUpstream, FakeIdp};
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{now, SigningKey};
use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwks-sidecar");

struct Env {
    a: FakeIdp,
    b: FakeIdp,
    echo: EchoUpstream,
}

async fn env() -> Env {
    Env {
        a: FakeIdp::start(&[&key(Alg::ES256)], 0).await.expect("idp a"),
        b: FakeIdp::start(&[&key(Alg::EdDSA)], 0).await.expect("idp b"),
        echo: EchoUpstream::start().await.expect("echo"),
    }
}

impl Env {
    fn toml(&self, rules: &str, extra: &str) -> String {
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
upstream = "{up}"
public_paths = ["/healthz"]
[admin]
listen = "127.0.0.1:0"
[reload]
interval = "50ms"
{extra}
[[providers]]
name = "okta"
issuer = "{ia}"
jwks_uri = "{ja}"
audiences = ["api", "admin-api"]
[providers.claim_headers]
sub = "x-jwt-sub"
[[providers]]
name = "auth0"
issuer = "{ib}"
jwks_uri = "{jb}"
audiences = ["api"]
{rules}
"#,
            up = self.echo.url(),
            ia = self.a.issuer(),
            ja = self.a.jwks_uri(),
            ib = self.b.issuer(),
            jb = self.b.jwks_uri(),
        )
    }

    fn okta(&self, extra: Value) -> String {
        let mut c =
            json!({"iss": self.a.issuer(), "sub": "alice", "aud": "api", "exp": now() + 600});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        key(Alg::ES256).mint(&c)
    }

    fn auth0(&self, extra: Value) -> String {
        let mut c = json!({"iss": self.b.issuer(), "sub": "bob", "aud": "api", "exp": now() + 600});
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        key(Alg::EdDSA).mint(&c)
    }
}

async fn wait_ready(s: &jwks_sidecar::Running) {
    wait_keys_ready(s).await;
}

async fn start(toml: &str) -> jwks_sidecar::Running {
    let s = start_toml(toml).await;
    wait_ready(&s).await;
    s
}

async fn status(
    s: &jwks_sidecar::Running,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let (st, _, body) = request(
        method,
        &format!("http://{}{path}", s.proxy_addr),
        &headers,
        bytes::Bytes::new(),
    )
    .await;
    let r = if st == 200 {
        echoed(&body)
            .get("x-jwt-sub")
            .map(|v| v.join(","))
            .unwrap_or_else(|| "anonymous".into())
    } else {
        reason(&body)
    };
    (st.as_u16(), r)
}

const RULES: &str = r#"
[[rules]]
name = "admin"
match = { path_prefix = "/admin", methods = ["GET", "POST"] }
require = { providers = ["okta"], scopes = ["admin"], claims = { "org.role" = ["owner", "admin"] } }

[[rules]]
name = "webhooks"
match = { path_prefix = "/webhooks/" }
public = true

[[rules]]
name = "graphql"
match = { path = "/graphql" }
allow_anonymous = true

[[rules]]
name = "reports"
match = { path_regex = "/reports/[0-9]+" }
require = { any = [{ scopes = ["reports:read"] }, { claims = { roles = { contains = "auditor" } } }] }

[[rules]]
name = "internal-host"
match = { host = "*.internal.example", path_prefix = "/api" }
require = { audiences = ["admin-api"], claims = { email_verified = true, tenant = { present = true } } }
deny_status = 404

[[rules]]
name = "api"
match = { path_prefix = "/api" }
require = { providers = ["okta", "auth0"] }
"#;

/// (case, method, path, token, extra headers, status, subject or reason when checked)
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<String>,
    &'a [(&'a str, &'a str)],
    u16,
    Option<&'a str>,
);

#[tokio::test]
async fn every_rule_form_and_first_match_precedence() {
    let e = env().await;
    let s = start(&e.toml(RULES, "")).await;
    let admin = e.okta(json!({"scope": "read admin", "org": {"role": "owner"}}));
    let internal: &[(&str, &str)] = &[("host", "svc.internal.example:8443")];
    let spoof: &[(&str, &str)] = &[("x-jwt-sub", "evil")];
    let rows: Vec<Row> = vec![
        (
            "admin: provider, scope and claim one-of",
            "GET",
            "/admin/users",
            Some(admin.clone()),
            &[],
            200,
            Some("alice"),
        ),
        (
            "admin: listed method",
            "POST",
            "/admin/users",
            Some(admin.clone()),
            &[],
            200,
            None,
        ),
        (
            "admin: claim not one of",
            "GET",
            "/admin/users",
            Some(e.okta(json!({"scope": "admin", "org": {"role": "viewer"}}))),
            &[],
            403,
            Some("insufficient_scope"),
        ),
        (
            "admin: scope missing",
            "GET",
            "/admin/users",
            Some(e.okta(json!({"org": {"role": "owner"}}))),
            &[],
            403,
            None,
        ),
        (
            "admin: wrong provider",
            "GET",
            "/admin/users",
            Some(e.auth0(json!({"scope": "admin", "org": {"role": "owner"}}))),
            &[],
            403,
            None,
        ),
        (
            "authentication before authorization",
            "GET",
            "/admin/users",
            None,
            &[],
            401,
            Some("missing_token"),
        ),
        (
            "unlisted method falls to the default rule",
            "DELETE",
            "/admin/users",
            Some(e.auth0(json!({}))),
            &[],
            200,
            None,
        ),
        (
            "webhooks: public, spoofed identity stripped",
            "POST",
            "/webhooks/stripe",
            None,
            spoof,
            200,
            Some("anonymous"),
        ),
        (
            "graphql: anonymous allowed",
            "POST",
            "/graphql",
            None,
            spoof,
            200,
            Some("anonymous"),
        ),
        (
            "graphql: a token present is verified",
            "POST",
            "/graphql",
            Some(e.okta(json!({}))),
            &[],
            200,
            Some("alice"),
        ),
        (
            "graphql: an invalid token is refused",
            "POST",
            "/graphql",
            Some("garbage.token.here".into()),
            &[],
            401,
            None,
        ),
        (
            "graphql: exact path only",
            "POST",
            "/graphql/x",
            None,
            &[],
            401,
            None,
        ),
        (
            "reports: regex with a scope",
            "GET",
            "/reports/42",
            Some(e.okta(json!({"scope": "reports:read"}))),
            &[],
            200,
            None,
        ),
        (
            "reports: any-of by role",
            "GET",
            "/reports/42",
            Some(e.okta(json!({"roles": ["auditor", "x"]}))),
            &[],
            200,
            None,
        ),
        (
            "reports: neither",
            "GET",
            "/reports/42",
            Some(e.okta(json!({"roles": ["x"]}))),
            &[],
            403,
            None,
        ),
        (
            "regex is anchored: falls through to default",
            "GET",
            "/reports/42/x",
            Some(e.okta(json!({}))),
            &[],
            200,
            None,
        ),
        (
            "host wildcard, audiences, claim equals/present",
            "GET",
            "/api/x",
            Some(e.okta(
                json!({"aud": ["api", "admin-api"], "email_verified": true, "tenant": "t1"}),
            )),
            internal,
            200,
            None,
        ),
        (
            "custom deny status",
            "GET",
            "/api/x",
            Some(e.okta(json!({"email_verified": true, "tenant": "t1"}))),
            internal,
            404,
            Some("rule_requirement"),
        ),
        (
            "equals is typed",
            "GET",
            "/api/x",
            Some(e.okta(json!({"aud": "admin-api", "email_verified": "true", "tenant": "t"}))),
            internal,
            404,
            None,
        ),
        (
            "other hosts: the api rule (either provider)",
            "GET",
            "/api/x",
            Some(e.auth0(json!({}))),
            &[],
            200,
            None,
        ),
        (
            "public_paths come first",
            "GET",
            "/healthz",
            None,
            &[],
            200,
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (case, method, path, token, extra, want, detail) in rows {
        let (got, what) = status(&s, method, path, token.as_deref(), extra).await;
        if got != want || detail.is_some_and(|d| d != what) {
            failures.push(format!(
                "{case}: {method} {path} -> {got} {what}, want {want} {detail:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn normalisation_bypass_attempts_against_rules() {
    let e = env().await;
    let s = start(&e.toml(RULES, "")).await;
    let user = e.okta(json!({"scope": "read"}));
    for path in [
        "/webhooks/../admin/users",
        "/webhooks/%2e%2e/admin/users",
        "//admin/users",
        "/admin/./users",
        "/api/../admin/users",
        "/graphql/../admin",
    ] {
        assert_eq!(
            status(&s, "GET", path, Some(&user), &[]).await.0,
            403,
            "{path} must hit the admin rule"
        );
        assert_eq!(
            status(&s, "GET", path, None, &[]).await.0,
            401,
            "{path} without a token"
        );
    }
    for path in [
        "/webhooks/..;/admin",
        "/webhooks/%2fadmin",
        "/webhooks\\admin",
    ] {
        let st = status(&s, "GET", path, None, &[]).await.0;
        assert!(st == 400 || st == 401, "{path}: {st}");
    }
    assert_eq!(
        status(&s, "GET", "/webhooks", None, &[]).await.0,
        401,
        "/webhooks/ is a segment prefix: /webhooks itself is not public"
    );
}

#[tokio::test]
async fn default_rule_deny_and_public() {
    let e = env().await;
    let s = start(&e.toml("", "[default_rule]\naction = \"deny\"")).await;
    assert_eq!(
        status(&s, "GET", "/x", Some(&e.okta(json!({}))), &[]).await,
        (403, "no_matching_rule".into())
    );
    assert_eq!(status(&s, "GET", "/healthz", None, &[]).await.0, 200);
    let s2 = start(&e.toml("", "[default_rule]\naction = \"public\"")).await;
    assert_eq!(status(&s2, "GET", "/x", None, &[]).await.0, 200);
}

#[test]
fn invalid_rules_are_reported_with_their_key() {
    let base = "[[providers]]\nname = \"p\"\nissuer = \"https://i\"\njwks_uri = \"https://i/j\"\naudiences = [\"a\"]\n";
    let cases = [
        ("[[rules]]\nmatch = { path_regex = \"([\" }\n", "rules[0].match.path_regex"),
        ("[[rules]]\nmatch = { path = \"/a\", path_prefix = \"/b\" }\n", "at most one of"),
        ("[[rules]]\nmatch = { path_prefix = \"/a/../b\" }\n", "not normalised"),
        ("[[rules]]\nmatch = { path_prefix = \"/a\" }\nrequire = { providers = [\"nope\"] }\n", "rules[0].require.providers"),
        ("[[rules]]\nmatch = { path_prefix = \"/a\" }\npublic = true\nallow_anonymous = true\n", "public = true cannot"),
        ("[[rules]]\nmatch = { path_prefix = \"/a\" }\nrequire = { claims = { x = { equals = 1, present = true } } }\n", "exactly one of"),
        ("[[rules]]\nmatch = { path_prefix = \"/a\" }\nrequires = { scopes = [\"x\"] }\n", "requires"),
    ];
    for (rules, want) in cases {
        let err = jwks_sidecar::plan::from_toml_str(&format!("{base}{rules}"))
            .expect_err(rules)
            .to_string();
        assert!(err.contains(want), "{rules}: {err}");
    }
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("jwks-sidecar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

async fn start_file(file: &Path) -> jwks_sidecar::Running {
    let plan = jwks_sidecar::plan::load(Some(file), &Default::default()).expect("config");
    let s = jwks_sidecar::start_with(plan, Some(file.to_path_buf()), Default::default())
        .await
        .expect("start");
    wait_ready(&s).await;
    s
}

/// Polls `f` until it holds; panics naming `what` at the deadline (generous, early exit: a
/// reload is seen by polling the file, on a possibly loaded machine).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {DEADLINE:?} waiting for: {what}");
}

#[tokio::test]
async fn reload_valid_invalid_and_unchanged_providers_keep_their_keys() {
    let e = env().await;
    let dir = temp_dir("reload");
    let file = dir.join("config.toml");
    write(&file, &e.toml("", ""));
    let s = start_file(&file).await;
    let okta_keys = s.current_auth().providers()[0].keys.clone();
    let fetches = e.a.fetches();
    let tok = e.okta(json!({}));
    assert_eq!(status(&s, "GET", "/private", Some(&tok), &[]).await.0, 200);
    // Valid: a rule making /private need a scope.
    write(
        &file,
        &e.toml(
            "[[rules]]\nmatch = { path_prefix = \"/private\" }\nrequire = { scopes = [\"x\"] }\n",
            "",
        ),
    );
    eventually("the new rule applies", async || {
        status(&s, "GET", "/private", Some(&tok), &[]).await.0 == 403
    })
    .await;
    assert!(
        Arc::ptr_eq(&okta_keys, &s.current_auth().providers()[0].keys),
        "unchanged provider keeps its key set"
    );
    assert_eq!(e.a.fetches(), fetches, "and does not refetch");
    // Invalid: rejected whole, old config stays, counted.
    write(
        &file,
        &e.toml("[[rules]]\nmatch = { path_regex = \"([\" }\n", ""),
    );
    eventually("the rejection is counted", async || {
        s.metrics
            .render()
            .has_sample(r#"jwks_sidecar_config_reloads_total{result="error"}"#, 1.0)
    })
    .await;
    assert_eq!(
        status(&s, "GET", "/private", Some(&tok), &[]).await.0,
        403,
        "previous config still active"
    );
    let m = s.metrics.render();
    assert!(
        m.has_sample(r#"jwks_sidecar_config_reloads_total{result="ok"}"#, 1.0),
        "{m}"
    );
    assert_eq!(m.matches("jwks_sidecar_config_info{").count(), 1, "{m}");
    // A new provider is fetched before it is used; a removed one stops.
    let c = FakeIdp::start(&[&key(Alg::RS256)], 0).await.expect("idp c");
    let mut with_c = config(&e.toml("", ""));
    let auth0 = with_c
        .providers
        .iter()
        .position(|p| p.name == "auth0")
        .expect("auth0 provider");
    with_c.providers.insert(
        auth0,
        jwks_sidecar::config::ProviderConfig {
            name: "gitlab".into(),
            issuer: c.issuer(),
            jwks_uri: Some(c.jwks_uri()),
            audiences: vec!["api".into()],
            ..Default::default()
        },
    );
    write(&file, &to_toml(&with_c));
    let tc = key(Alg::RS256)
        .mint(&json!({"iss": c.issuer(), "sub": "carol", "aud": "api", "exp": now() + 600}));
    eventually("the new provider's tokens are accepted", async || {
        status(&s, "GET", "/x", Some(&tc), &[]).await.0 == 200
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reload_follows_a_configmap_symlink_swap_under_load_without_failures() {
    let e = env().await;
    let dir = temp_dir("configmap");
    // The kubelet's layout: config.toml -> ..data/config.toml, ..data -> ..<timestamp>.
    let v1 = dir.join("..2026_11_23_v1");
    std::fs::create_dir_all(&v1).expect("dir");
    std::fs::write(v1.join("config.toml"), e.toml("", "")).expect("write");
    std::os::unix::fs::symlink("..2026_11_23_v1", dir.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/config.toml", dir.join("config.toml")).expect("symlink");
    let s = Arc::new(start_file(&dir.join("config.toml")).await);
    let tok = e.okta(json!({}));
    // Load: requests to /ok run during every swap; none may fail.
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (s, tok, failures, done, stop) = (
            s.clone(),
            tok.clone(),
            failures.clone(),
            done.clone(),
            stop.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 5000 {
                if status(&s, "GET", "/ok", Some(&tok), &[]).await.0 != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        }));
    }
    for i in 2..6 {
        let rules = if i % 2 == 0 {
            "[[rules]]\nmatch = { path_prefix = \"/locked\" }\nrequire = { scopes = [\"nope\"] }\n"
        } else {
            ""
        };
        let vdir = dir.join(format!("..2026_11_23_v{i}"));
        std::fs::create_dir_all(&vdir).expect("dir");
        std::fs::write(vdir.join("config.toml"), e.toml(rules, "")).expect("write");
        std::os::unix::fs::symlink(format!("..2026_11_23_v{i}"), dir.join("..data_tmp"))
            .expect("symlink");
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("atomic swap");
        let want = if i % 2 == 0 { 403 } else { 200 };
        eventually("the swapped config applies", async || {
            status(&s, "GET", "/locked", Some(&tok), &[]).await.0 == want
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("join");
    }
    assert!(
        done.load(Ordering::SeqCst) > 20,
        "load ran during the swaps"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request failed during reloads"
    );
    // Counted just after each swap is applied: wait for the fourth count, then check that no
    // swap was counted twice.
    eventually("four successful reloads to be counted", async || {
        sample(
            &s.metrics.render(),
            r#"jwks_sidecar_config_reloads_total{result="ok"}"#,
        )
        .unwrap_or(0.0)
            >= 4.0
    })
    .await;
    let m = s.metrics.render();
    assert!(
        m.has_sample(r#"jwks_sidecar_config_reloads_total{result="ok"}"#, 4.0),
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn explain_shows_rules_checks_and_the_decision() {
    let e = env().await;
    let dir = temp_dir("explain");
    let file = dir.join("config.toml");
    std::fs::write(&file, e.toml(RULES, "")).expect("write");
    let jwks_file = dir.join("jwks.json");
    std::fs::write(
        &jwks_file,
        jwks_sidecar::testkit::jwks(&[&key(Alg::ES256), &key(Alg::EdDSA)]).to_string(),
    )
    .expect("write");
    let tok = e.okta(json!({"scope": "admin", "org": {"role": "viewer"}}));
    let out = tokio::process::Command::new(BIN)
        .args(["explain", "--config"])
        .arg(&file)
        .args([
            "--request",
            "GET /webhooks/../admin/users",
            "--header",
            &format!("Authorization: Bearer {tok}"),
            "--offline",
        ])
        .arg(&jwks_file)
        .output()
        .await
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "normalises to \"/admin/users\"",
        "skip   proxy.public_paths[0]",
        "MATCH  admin",
        "provider \"okta\"",
        "signature verifies",
        "exp ",
        "FAIL claim \"org.role\" = \"viewer\"",
        "ok   scopes",
        "decision: DENY (insufficient_scope)",
        "status: 403",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // An allowed request names the headers that would be forwarded.
    let out = tokio::process::Command::new(BIN)
        .args(["explain", "--config"])
        .arg(&file)
        .args([
            "--request",
            "GET /api/v1",
            "-H",
            &format!("Authorization: Bearer {}", e.auth0(json!({}))),
            "-H",
            "X-JWT-Sub: spoof",
            "--offline",
        ])
        .arg(&jwks_file)
        .output()
        .await
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("decision: ALLOW (ok)")
            && text.contains("inbound identity headers removed: x-jwt-sub"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn check_lists_rules_and_warns_about_shadowed_ones() {
    let e = env().await;
    let dir = temp_dir("check-rules");
    let file = dir.join("config.toml");
    let rules = "[[rules]]\nname = \"all-api\"\nmatch = { path_prefix = \"/api\" }\n[[rules]]\nname = \"api-admin\"\nmatch = { path_prefix = \"/api/admin\", methods = [\"GET\"] }\nrequire = { scopes = [\"admin\"] }\n";
    std::fs::write(&file, e.toml(rules, "")).expect("write");
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .await
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("all-api: any method, any host, path under /api -> authenticated"),
        "{text}"
    );
    assert!(
        text.contains("WARNING: api-admin can never match: all-api matches every request it would"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = SigningKey::generate;
}
