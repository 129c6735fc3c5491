//! The binary as a user runs it: --version/--help, `check`, config layering (file < env <
//! flags), clear errors for bad configs, and exit 0 after SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use jwks_sidecar::jose::Alg;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwks-sidecar");

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = Command::new(BIN).arg("--help").output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "check",
        "demo",
        "--config",
        "--upstream",
        "--issuer",
        "--jwks-uri",
        "--audience",
        "--admin-listen",
    ] {
        assert!(help.contains(word), "--help lacks {word}: {help}");
    }
}

#[tokio::test]
async fn check_lists_kids_and_algorithms_and_exits_zero() {
    let idp = jwks_sidecar::demo::FakeIdp::start(&[&key(Alg::ES256), &key(Alg::RS256)], 0)
        .await
        .expect("idp");
    let cfg = write_config(
        "check-ok.toml",
        &base_toml(&idp.jwks_uri(), &idp.issuer(), "http://127.0.0.1:9", "", ""),
    );
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .await
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("kid=\"kid-ES256\"") && stdout.contains("algs=ES256"),
        "{stdout}"
    );
    assert!(
        stdout.contains("kid=\"kid-RS256\"") && stdout.contains("algs=RS256"),
        "{stdout}"
    );
}

#[tokio::test]
async fn check_fails_with_a_precise_message_when_the_idp_is_down() {
    let idp = jwks_sidecar::demo::FakeIdp::start(&[&key(Alg::ES256)], 0)
        .await
        .expect("idp");
    idp.fail_with(404);
    let cfg = write_config(
        "check-down.toml",
        &base_toml(&idp.jwks_uri(), &idp.issuer(), "http://127.0.0.1:9", "", ""),
    );
    let out = tokio::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("provider \"idp\"") && stderr.contains("404"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_config_and_an_invalid_one_is_kept_out() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let text = |rules: &str| {
        let base = base_toml(&idp.jwks_uri(), &idp.issuer(), &echo.url(), "", "");
        let mut c = config(&format!("{base}{rules}"));
        c.proxy.listen = loopback();
        c.admin.listen = Some(loopback());
        c.reload.watch = false;
        to_toml(&c)
    };
    let file = write_config("sighup.toml", &text(""));
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["--config"]).arg(&file);
    let mut child = ChildSidecar::start(cmd)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (proxy, admin) = (child.proxy, child.admin());
    let t = k.mint(&serde_json::json!({"iss": idp.issuer(), "aud": "api", "sub": "s", "exp": jwks_sidecar::testkit::now() + 60}));
    let url = format!("http://{proxy}/locked");
    assert_eq!(get_with_token(&url, &t).await.0, 200);
    let hup = |pid: u32| {
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
    };
    let pid = child.child.id().expect("pid");
    let metrics = format!("http://{admin}/metrics");
    // Invalid first: rejected (the reload ran: its error is counted), still 200.
    std::fs::write(&file, text("[[rules]]\nmatch = { path_regex = \"([\" }\n")).expect("write");
    hup(pid);
    let m = wait_metric(
        &metrics,
        r#"jwks_sidecar_config_reloads_total{result="error"}"#,
        |v| v >= 1.0,
    )
    .await;
    assert_eq!(
        sample(&m, r#"jwks_sidecar_config_reloads_total{result="error"}"#),
        Some(1.0),
        "one SIGHUP, one rejected reload: {m}"
    );
    assert_eq!(
        sample(&m, r#"jwks_sidecar_config_reloads_total{result="ok"}"#).unwrap_or(0.0),
        0.0,
        "the invalid config was not applied: {m}"
    );
    assert_eq!(
        get_with_token(&url, &t).await.0,
        200,
        "the previous config stays active after a rejected reload"
    );
    // Valid: applies on SIGHUP (the file is not watched here).
    std::fs::write(
        &file,
        text(
            "[[rules]]\nmatch = { path_prefix = \"/locked\" }\nrequire = { scopes = [\"nope\"] }\n",
        ),
    )
    .expect("write");
    hup(pid);
    wait_until(
        "SIGHUP to apply the valid config (/locked answering 403)",
        DEADLINE,
        || async { get_with_token(&url, &t).await.0 == 403 },
    )
    .await;
    wait_metric(
        &metrics,
        r#"jwks_sidecar_config_reloads_total{result="ok"}"#,
        |v| v == 1.0,
    )
    .await;
    let _ = child.child.kill().await;
}

#[test]
fn invalid_config_names_file_key_and_fix() {
    let cfg = write_config(
        "bad.toml",
        "[proxy]\nlisten = \"0.0.0.0:8080\"\nupstream = \"ftp://x\"\nlisten_addr = 1\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listen_addr") && stderr.contains("bad.toml"),
        "{stderr}"
    );
    let cfg = write_config("bad2.toml", "[proxy]\nupstream = \"ftp://x\"\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad2.toml: proxy.upstream") && stderr.contains("http://"),
        "{stderr}"
    );
    assert!(stderr.contains("no [[providers]]"), "{stderr}");
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/x.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[tokio::test]
async fn layering_env_over_file_and_flags_over_env_then_sigterm_exits_zero() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    // The file says upstream 127.0.0.1:9 (dead); env fixes it; admin port comes from a flag.
    let file = write_config(
        "layer.toml",
        &base_toml(&idp.jwks_uri(), &idp.issuer(), "http://127.0.0.1:9", "", ""),
    );
    // The env's listen address is taken (held here): the sidecar only comes up if the flag's
    // address overrides it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("JWKS_SIDECAR_CONFIG", &file)
        .env("JWKS_SIDECAR_PROXY__UPSTREAM", echo.url())
        .env("JWKS_SIDECAR_PROXY__LISTEN", taken_addr.to_string())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let mut child = ChildSidecar::start(cmd)
        .await
        .unwrap_or_else(|e| panic!("flag overrides env: {e}"));
    assert_ne!(child.proxy, taken_addr, "flag overrides env");
    let url = format!("http://{}/x", child.proxy);
    let now = jwks_sidecar::testkit::now();
    let t = k.mint(
        &serde_json::json!({"iss": idp.issuer(), "aud": "api", "sub": "cli", "exp": now + 60}),
    );
    let (s, _, body) = get_with_token(&url, &t).await;
    assert_eq!(s, 200, "env upstream overrides the file: {body}");
    // SIGTERM: drain and exit 0.
    sigterm_exits_zero(&mut child.child).await;
    let stderr = child.finished_log().await;
    let access = stderr
        .lines()
        .find(|l| l.contains("\"request\"") || l.contains("\"message\":\"request\""))
        .unwrap_or_else(|| panic!("no access log line in {stderr}"));
    let v: serde_json::Value = serde_json::from_str(access).expect("JSON log line");
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["provider"], "idp");
    assert!(
        !stderr.contains(&t[..40]) && !stderr.contains(t.split('.').nth(2).expect("sig")),
        "token leaked into logs"
    );
}

/// A listen address that cannot be bound: the process exits non-zero at once, and its log
/// names the config key and the address (the test helper reports a child that never started
/// with its log, instead of a bare "not ready").
#[tokio::test]
async fn an_address_that_cannot_be_bound_is_named_and_the_process_exits() {
    let (_k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let file = write_config(
        "unbindable.toml",
        &base_toml(&idp.jwks_uri(), &idp.issuer(), &echo.url(), "", ""),
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("JWKS_SIDECAR_CONFIG", &file).args([
        "--listen",
        &addr,
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let started = std::time::Instant::now();
    let Err(e) = ChildSidecar::start(cmd).await else {
        panic!("a sidecar started on an address already in use");
    };
    assert!(e.contains(&format!("proxy.listen {addr}")), "{e}");
    assert!(e.contains("in use"), "{e}");
    assert!(
        e.contains("it exited before its start line (exit status: 1)"),
        "{e}"
    );
    assert!(
        started.elapsed() < DEADLINE,
        "the failure was seen when the process exited"
    );
}

/// `[runtime] worker_threads = 3`: three single-threaded connection workers beside the main
/// runtime; connections spread over them, every request is served, SIGTERM still drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_serve_connections_and_drain() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let file = write_config(
        "workers.toml",
        &base_toml(&idp.jwks_uri(), &idp.issuer(), &echo.url(), "", ""),
    );
    let mut child = spawn_with_grpc(&file, "3").await;
    let (proxy, grpc) = (child.proxy, child.grpc.expect("gRPC listener"));
    let pid = child.child.id().expect("pid");
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("worker-"))
        .collect();
    names.sort();
    assert_eq!(names, ["worker-0", "worker-1", "worker-2"]);

    let now = jwks_sidecar::testkit::now();
    let t = k
        .mint(&serde_json::json!({"iss": idp.issuer(), "aud": "api", "sub": "w", "exp": now + 60}));
    // Fresh connections (Connection: close), so they are spread over the workers, and
    // concurrent ones over the shared pool.
    for i in 0..6 {
        let (s, _, body) = get(
            &format!("http://{proxy}/seq/{i}"),
            &[
                ("authorization", &format!("Bearer {t}")),
                ("connection", "close"),
            ],
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(echoed(&body)["x-jwt-sub"], ["w"]);
    }
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let (url, t) = (format!("http://{proxy}/par/{i}"), t.clone());
            tokio::spawn(async move { get_with_token(&url, &t).await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    let (s, _, _) = get(&format!("http://{proxy}/x"), &[]).await;
    assert_eq!(s, 401, "no token is still refused");

    // gRPC Checks: each worker runs its own gRPC server; several connections (one channel
    // each, concurrently) are spread over them, and every one answers.
    let checks: Vec<_> = (0..6)
        .map(|i| {
            let t = (i % 2 == 0).then(|| t.clone());
            tokio::spawn(async move { grpc_check_code(grpc, t.as_deref()).await })
        })
        .collect();
    for (i, c) in checks.into_iter().enumerate() {
        let want = if i % 2 == 0 { 0 } else { 16 }; // OK, or UNAUTHENTICATED without a token
        assert_eq!(c.await.expect("task"), want, "check {i}");
    }

    sigterm_exits_zero(&mut child.child).await;
}

/// One Check over a fresh gRPC connection (retried while the listener comes up); the
/// CheckResponse's status code.
async fn grpc_check_code(addr: std::net::SocketAddr, token: Option<&str>) -> i32 {
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut client = loop {
        match AuthorizationClient::connect(format!("http://{addr}")).await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() >= deadline => {
                panic!("the gRPC listener {addr} did not accept within {DEADLINE:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let headers = token
        .map(|t| ("authorization".to_string(), format!("Bearer {t}")))
        .into_iter()
        .collect();
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/grpc".into(),
                    host: "app".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let resp = client.check(req).await.expect("rpc ok").into_inner();
    resp.status.map_or(-1, |s| s.code)
}

/// Sends SIGTERM to a sidecar child and asserts it drains and exits 0 within 20 s (its
/// shutdown_grace is at most 5 s; the rest is slack for a loaded machine).
async fn sigterm_exits_zero(child: &mut tokio::process::Child) {
    let pid = child.id().expect("pid");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the sidecar did not exit within 20 s of SIGTERM")
        .expect("status");
    assert!(status.success(), "exit status {status:?}");
}

/// A gRPC client holding a stream open (grpc.health.v1 Watch never ends by itself) cannot
/// hold up shutdown past `shutdown_grace`, with one worker or several.
#[tokio::test]
async fn open_grpc_stream_does_not_block_shutdown() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    for workers in ["1", "2"] {
        let (_k, idp, echo) = idp_and_echo(Alg::ES256).await;
        let file = write_config(&format!("grpc-drain-{workers}.toml"), &{
            let mut c = base_config(&idp, &echo);
            c.proxy.shutdown_grace = Duration::from_secs(1);
            to_toml(&c)
        });
        let mut child = spawn_with_grpc(&file, workers).await;
        let grpc = child.grpc.expect("gRPC listener");
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel);
        let mut watch = client
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = watch.message().await.expect("status").expect("one status");
        assert_eq!(first.status, 1, "SERVING");
        let started = std::time::Instant::now();
        sigterm_exits_zero(&mut child.child).await;
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{workers} worker(s): shutdown took {:?} with a stream open",
            started.elapsed()
        );
        drop(watch);
    }
}

/// The sidecar with config `file`, `workers` worker threads, and the proxy, admin and gRPC
/// authz listeners on loopback port 0, ready.
async fn spawn_with_grpc(file: &std::path::Path, workers: &str) -> ChildSidecar {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("JWKS_SIDECAR_CONFIG", file)
        .env("JWKS_SIDECAR_RUNTIME__WORKER_THREADS", workers)
        .env("JWKS_SIDECAR_AUTHZ__GRPC_LISTEN", "127.0.0.1:0")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    ChildSidecar::start(cmd)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `jwks-sidecar idp`, the fake IdP the Python and Node suites run: its first stdout line
/// names the issuer; a token it mints is accepted by a sidecar mirroring its JWKS; after a
/// rotation (old key unpublished) a token of the new key is accepted through the unknown-kid
/// refetch; told to fail, its JWKS answers 503 while the control API still answers.
#[tokio::test]
async fn idp_subcommand_mints_rotates_and_fails() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["idp", "--alg", "EdDSA"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn idp");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .expect("the idp prints its issuer")
    .expect("read");
    let info: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    let issuer = info["issuer"].as_str().expect("issuer").to_string();
    assert_eq!(info["kids"], serde_json::json!(["eddsa-1"]));
    let echo = jwks_sidecar::demo::EchoUpstream::start()
        .await
        .expect("echo");
    let sidecar = start_toml(&format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[providers]]\nname = \"idp\"\nissuer = \"{issuer}\"\njwks_uri = \"{issuer}/jwks.json\"\naudiences = [\"api\"]\nkid_miss_min_interval = \"1s\"\n",
        echo.url()
    ))
    .await;
    wait_keys_ready(&sidecar).await;
    let mint = |issuer: String| async move {
        let now = jwks_sidecar::testkit::now();
        let body = serde_json::json!({"claims": {"iss": issuer, "aud": "api", "sub": "u", "exp": now + 300}});
        let (s, _, token) = request(
            "POST",
            &format!("{issuer}/token"),
            &[],
            body.to_string().into(),
        )
        .await;
        assert_eq!(s, 200, "{token}");
        token
    };
    let url = format!("http://{}/api", sidecar.proxy_addr);
    let (s, _, body) = get_with_token(&url, &mint(issuer.clone()).await).await;
    assert_eq!(s, 200, "{body}");
    let control = |path: &str, body: &'static str| {
        let url = format!("{issuer}/control/{path}");
        async move { request("POST", &url, &[], body.into()).await }
    };
    let (s, _, stats) = control("rotate", r#"{"alg": "ES256", "keep_old": false}"#).await;
    assert_eq!(s, 200, "{stats}");
    assert!(
        stats.contains("es256-2") && !stats.contains("eddsa-1"),
        "{stats}"
    );
    let (s, _, body) = get_with_token(&url, &mint(issuer.clone()).await).await;
    assert_eq!(s, 200, "new key through the unknown-kid refetch: {body}");
    // ETag and 304 (opt-in), unpublished keys that still sign, and a raw body in place of the
    // key set: what the soak's failure schedule drives.
    let jwks_url = format!("{issuer}/jwks.json");
    control("etag", r#"{"enabled": true}"#).await;
    let (_, h, _) = get(&jwks_url, &[]).await;
    let tag = h["etag"].to_str().expect("etag").to_string();
    let (s, _, _) = get(&jwks_url, &[("if-none-match", &tag)]).await;
    assert_eq!(s, 304, "a matching If-None-Match");
    control("rotate", r#"{"alg": "EdDSA", "kid": "k3"}"#).await;
    let (_, _, stats) = control("unpublish", r#"{"kids": ["es256-2"]}"#).await;
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats");
    assert_eq!(stats["published"], serde_json::json!(["k3"]), "{stats}");
    assert_eq!(
        stats["kids"],
        serde_json::json!(["k3", "es256-2"]),
        "{stats}"
    );
    control("raw_body", r#"{"size": 4096}"#).await;
    let (s, _, body) = get(&jwks_url, &[]).await;
    assert_eq!((s.as_u16(), body.len()), (200, 4096));
    control("raw_body", "{}").await;
    let (s, _, _) = control("fail", r#"{"status": 503}"#).await;
    assert_eq!(s, 200);
    let (s, _, _) = get(&format!("{issuer}/jwks.json"), &[]).await;
    assert_eq!(s, 503);
    sidecar.shutdown();
    sidecar.wait().await;
}
