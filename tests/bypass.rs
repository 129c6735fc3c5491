//! The bypass classes an outside corpus found (issue "Trust first"), one test per class,
//! against the binary as users run it: proxy, HTTP decision endpoints (Envoy, nginx,
//! forward-auth conventions) and gRPC Check, with a fake IdP and an echo app on loopback.
//!
//! 1. `Connection` naming an identity header (the client stripping its own identity).
//! 2. NumericDates outside any sane range, and `max_token_lifetime`.
//! 3. Double-encoded and other paths that mean something else to the app.
//! 4. Identity headers the gateway never showed the sidecar (minimal `allowed_headers`).
//! 5. Clerk's bare base64 public key, inline and from an environment variable.
//! 6. Junk kids just before a real rotation.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use jwks_sidecar::demo::{EchoUpstream, FakeIdp};
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::{b64, now, SigningKey};
use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_jwks-sidecar");

/// A sidecar child process with every listener, its IdP and its app.
struct Sidecar {
    _child: ChildSidecar,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    authz: std::net::SocketAddr,
    grpc: std::net::SocketAddr,
    idp: FakeIdp,
    _echo: EchoUpstream,
}

impl Sidecar {
    /// Starts the binary with `base_toml` plus `[authz]` listeners; `proxy_extra` and
    /// `provider_extra` as in `base_toml`; `env` set for the child.
    async fn start(
        keys: &[&SigningKey],
        proxy_extra: &str,
        provider_extra: &str,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let idp = FakeIdp::start(keys, 0).await.expect("idp");
        let echo = EchoUpstream::start().await.expect("echo");
        let mut toml = base_toml(
            &idp.jwks_uri(),
            &idp.issuer(),
            &echo.url(),
            proxy_extra,
            provider_extra,
        )
        .replacen(
            "[admin]\n",
            "[authz]\nlisten = \"127.0.0.1:0\"\ngrpc_listen = \"127.0.0.1:0\"\n[admin]\n",
            1,
        );
        if provider_extra.contains("public_key_") {
            // One key source per provider: the inline key replaces the IdP's JWKS URI.
            toml = toml.replacen(&format!("jwks_uri = \"{}\"\n", idp.jwks_uri()), "", 1);
        }
        static CONFIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("jwks-sidecar-bypass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let n = CONFIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = dir.join(format!("sidecar-{n}.toml"));
        std::fs::write(&file, toml).expect("write config");
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.env("JWKS_SIDECAR_CONFIG", &file).args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = ChildSidecar::start(cmd)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Sidecar {
            proxy: child.proxy,
            admin: child.admin(),
            authz: child.authz.expect("authz listener"),
            grpc: child.grpc.expect("gRPC listener"),
            _child: child,
            idp,
            _echo: echo,
        }
    }

    fn url(&self, p: &str) -> String {
        format!("http://{}{p}", self.proxy)
    }

    fn authz_url(&self, p: &str) -> String {
        format!("http://{}{p}", self.authz)
    }

    fn claims(&self) -> Value {
        let now = now();
        json!({"iss": self.idp.issuer(), "sub": "user-1", "aud": "api", "iat": now,
               "exp": now + 600, "email": "u@example.com"})
    }

    async fn grpc_check(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut client = AuthorizationClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect");
        let req = check_request(path, headers);
        client
            .check(req)
            .await
            .expect("rpc ok")
            .into_inner()
            .http_response
            .expect("an http_response")
    }
}

/// The denied status of a gRPC answer (panics on an allow).
fn denied_status(r: &HttpResponse) -> i32 {
    match r {
        HttpResponse::DeniedResponse(d) => d.status.as_ref().map_or(0, |s| s.code),
        other => panic!("allowed: {other:?}"),
    }
}

/// A token whose payload is raw JSON text (numbers a JSON library would not write).
fn mint_raw(k: &SigningKey, payload: &str) -> String {
    let header = json!({"alg": k.alg.name(), "kid": k.kid, "typ": "JWT"});
    let input = format!("{}.{}", b64(header.to_string()), b64(payload));
    let sig = k.sign(input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// Class 1: a client that names an identity header in `Connection` cannot make any listener
/// hand the app an authenticated request without (or with altered) identity headers.
#[tokio::test]
async fn connection_header_naming_an_identity_header_is_refused_on_every_listener() {
    let k = key(Alg::ES256);
    let s = Sidecar::start(&[&k], "", "", &[]).await;
    let t = k.mint(&s.claims());
    let auth = format!("Bearer {t}");
    for conn in [
        "x-jwt-sub",
        "X-Jwt-Sub",
        "keep-alive, X-JWT-SUB",
        "x_jwt_sub",
        "x-jwt-payload",
        "x-user-email",
        "X_User_Email",
        "x-jwt-anything",
    ] {
        // Proxy: refused before anything reaches the app.
        let (st, _, body) = get(
            &s.url("/api/me"),
            &[("authorization", &auth), ("connection", conn)],
        )
        .await;
        assert_eq!(
            (st.as_u16(), reason(&body)),
            (400, "hop_by_hop_identity".into()),
            "proxy, Connection: {conn}"
        );
        // HTTP decision endpoints, every convention.
        let (st, _, body) = get(
            &s.authz_url("/authz/api/me"),
            &[("authorization", &auth), ("connection", conn)],
        )
        .await;
        assert_eq!(st, 400, "envoy http, Connection: {conn}: {body}");
        let (st, _, _) = get(
            &s.authz_url("/nginx"),
            &[
                ("authorization", &auth),
                ("connection", conn),
                ("x-original-uri", "/api/me"),
            ],
        )
        .await;
        assert_eq!(st, 400, "nginx, Connection: {conn}");
        let (st, _, _) = get(
            &s.authz_url("/forward"),
            &[
                ("authorization", &auth),
                ("connection", conn),
                ("x-forwarded-uri", "/api/me"),
            ],
        )
        .await;
        assert_eq!(st, 400, "forward-auth, Connection: {conn}");
        // gRPC Check.
        let r = s
            .grpc_check("/api/me", &[("authorization", &auth), ("connection", conn)])
            .await;
        assert_eq!(denied_status(&r), 400, "grpc, Connection: {conn}");
    }
    // Other hop-by-hop names are honoured after the decision and before identity headers are
    // added: the named header is dropped, the verified identity arrives intact.
    let (st, _, body) = get(
        &s.url("/api/me"),
        &[
            ("authorization", &auth),
            ("connection", "keep-alive, x-trace-me"),
            ("x-trace-me", "1"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let seen = echoed(&body);
    assert_eq!(seen["x-jwt-sub"], ["user-1"]);
    assert_eq!(seen["x-user-email"], ["u@example.com"]);
    assert!(seen.contains_key("x-jwt-payload"));
    assert!(!seen.contains_key("x-trace-me"), "{seen:?}");
    assert!(!seen.contains_key("connection"), "{seen:?}");
}

/// Class 2: `exp`/`nbf`/`iat` outside years 1..9999 (1e30, past 2^64) are refused with a
/// named reason, never read as "far future"; `max_token_lifetime` bounds exp.
#[tokio::test]
async fn out_of_range_dates_and_overlong_lifetimes_are_refused() {
    let k = key(Alg::ES256);
    let s = Sidecar::start(&[&k], "", "max_token_lifetime = \"1h\"\n", &[]).await;
    let iss = s.idp.issuer();
    let n = now();
    for (claim, v) in [
        ("exp", "1e30"),
        ("exp", "18446744073709551616"),
        ("exp", "18446744073709551615"),
        ("exp", "9223372036854775807"),
        ("exp", "253402300800"),
        ("nbf", "1e30"),
        ("nbf", "-1e300"),
        ("iat", "1e300"),
        ("iat", "99999999999999999999999"),
    ] {
        let payload = if claim == "exp" {
            format!(r#"{{"iss":"{iss}","aud":"api","sub":"u","exp":{v}}}"#)
        } else {
            format!(
                r#"{{"iss":"{iss}","aud":"api","sub":"u","exp":{},"{claim}":{v}}}"#,
                n + 60
            )
        };
        let t = mint_raw(&k, &payload);
        let (st, h, body) = get_with_token(&s.url("/api"), &t).await;
        assert_eq!(st, 401, "{claim}={v}: {body}");
        assert_eq!(reason(&body), "date_out_of_range", "{claim}={v}");
        let www = h["www-authenticate"].to_str().expect("ascii");
        assert!(www.contains(r#"error="invalid_token""#), "{www}");
        assert!(www.contains(claim), "the description names {claim}: {www}");
        // The decision service agrees.
        let (st, _, body) = get_with_token(&s.authz_url("/authz/api"), &t).await;
        assert_eq!(
            (st.as_u16(), reason(&body)),
            (401, "date_out_of_range".into())
        );
    }
    // max_token_lifetime = 1h: beyond now, beyond iat, and missing exp.
    for (claims, want) in [
        (json!({"exp": n + 1800, "iat": n}), 200),
        (json!({"exp": n + 7200, "iat": n}), 401),
        (json!({"exp": n + 7200}), 401),
        (json!({"exp": n + 600, "iat": n - 7200}), 401),
    ] {
        let mut c = json!({"iss": iss, "aud": "api", "sub": "u"});
        for (key, v) in claims.as_object().expect("object") {
            c[key] = v.clone();
        }
        let (st, _, body) = get_with_token(&s.url("/api"), &k.mint(&c)).await;
        assert_eq!(st, want, "{claims}: {body}");
        if want == 401 {
            assert_eq!(reason(&body), "lifetime_too_long", "{claims}");
        }
    }
}

/// Class 3: a path that one more decoding (or the app's own parsing) reads as something
/// else than the matcher did is refused with 400 on every listener, by default.
#[tokio::test]
async fn paths_that_mean_something_else_after_one_more_decoding_are_refused() {
    let k = key(Alg::ES256);
    let s = Sidecar::start(&[&k], "", "", &[]).await;
    let bad = [
        "/public/%252e%252e/admin",
        "/public/%252E%252E/admin",
        "/public/..%252fadmin",
        "/public/..%252Fadmin",
        "/public/..%255cadmin",
        "/public/%25252e%25252e/admin",
        "/public/%25%32%65%25%32%65/admin",
        "/public/%c0%ae%c0%ae/admin",
        "/public/%EF%BC%8E%EF%BC%8E/admin",
        "/public;/../admin",
        "/admin;jsessionid=1",
        "/admin%09",
        "/admin%00",
        "/admin%0d%0a",
    ];
    for p in bad {
        let (st, _, body) = get(&s.url(p), &[]).await;
        assert_eq!(
            (st.as_u16(), reason(&body)),
            (400, "bad_path".into()),
            "proxy {p}"
        );
        let (st, _, _) = get(&s.authz_url(&format!("/authz{p}")), &[]).await;
        assert_eq!(st, 400, "envoy http {p}");
        let (st, _, _) = get(&s.authz_url("/nginx"), &[("x-original-uri", p)]).await;
        assert_eq!(st, 400, "nginx {p}");
        let (st, _, _) = get(&s.authz_url("/forward"), &[("x-forwarded-uri", p)]).await;
        assert_eq!(st, 400, "forward-auth {p}");
        let r = s.grpc_check(p, &[]).await;
        assert_eq!(denied_status(&r), 400, "grpc {p}");
    }
    // A plain encoded percent sign and real UTF-8 still pass (public path, no token).
    for p in ["/public/100%25", "/public/caf%C3%A9"] {
        let (st, _, body) = get(&s.url(p), &[]).await;
        assert_eq!(st, 200, "{p}: {body}");
        assert_eq!(echoed_path(&body), p);
    }
}

/// Class 3, opted in: `allow_double_encoding` and `allow_path_parameters` forward such paths
/// as sent, matched as sent.
#[tokio::test]
async fn double_encoding_and_path_parameters_have_their_own_opt_ins() {
    let k = key(Alg::ES256);
    let s = Sidecar::start(
        &[&k],
        "allow_double_encoding = true\nallow_path_parameters = true\n",
        "",
        &[],
    )
    .await;
    let (st, _, body) = get(&s.url("/public/a%252fb"), &[]).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(echoed_path(&body), "/public/a%252fb");
    let (st, _, body) = get(&s.url("/public/x;v=1"), &[]).await;
    assert_eq!(st, 200, "{body}");
    // Still never: control characters, overlong UTF-8, `..;`.
    for p in ["/public/%09", "/public/%c0%ae", "/public/..;/admin"] {
        let (st, _, _) = get(&s.url(p), &[]).await;
        assert_eq!(st, 400, "{p}");
    }
}

/// Class 4: whatever the gateway forwarded to the check, every allow names for removal every
/// spelling of every identity header the sidecar can set (except those it sets).
#[tokio::test]
async fn allow_answers_remove_every_identity_spelling_even_unseen() {
    let k = key(Alg::ES256);
    let s = Sidecar::start(&[&k], "", "", &[]).await;
    let mut claims = s.claims();
    claims.as_object_mut().expect("obj").remove("email");
    let auth = format!("Bearer {}", k.mint(&claims));
    // Everything a client could pass for the sidecar's headers, in each spelling.
    let mut must_remove: BTreeSet<String> = BTreeSet::new();
    for name in [
        "x-jwt-sub",
        "x-user-email",
        "x-jwt-org-id",
        "x-jwt-roles",
        "x-jwt-payload",
    ] {
        for v in jwks_sidecar::auth::claims::spellings(name) {
            must_remove.insert(v.as_str().to_string());
        }
    }
    let set = ["x-jwt-sub", "x-jwt-payload"];

    // Envoy over HTTP: the check carried only `authorization` (minimal allowed_headers).
    let (st, h, _) = get(&s.authz_url("/authz/api"), &[("authorization", &auth)]).await;
    assert_eq!(st, 200);
    let listed: BTreeSet<String> = h["x-envoy-auth-headers-to-remove"]
        .to_str()
        .expect("ascii")
        .split(',')
        .map(|n| n.trim().to_string())
        .collect();
    for n in &must_remove {
        if set.contains(&n.as_str()) {
            assert!(
                !listed.contains(n),
                "{n} is set by this answer, so not removed: {listed:?}"
            );
        } else {
            assert!(listed.contains(n), "{n} missing from {listed:?}");
        }
    }
    assert_eq!(h["x-jwt-sub"], "user-1");

    // gRPC: same list in headers_to_remove.
    let r = s.grpc_check("/api", &[("authorization", &auth)]).await;
    let HttpResponse::OkResponse(ok) = r else {
        panic!("not allowed: {r:?}")
    };
    let listed: BTreeSet<String> = ok.headers_to_remove.iter().cloned().collect();
    for n in &must_remove {
        assert_eq!(
            listed.contains(n),
            !set.contains(&n.as_str()),
            "grpc {n}: {listed:?}"
        );
    }

    // A public path (no identity set): every spelling goes, plus a prefix name the client sent.
    let (st, h, _) = get(&s.authz_url("/authz/public/x"), &[("x-jwt-admin", "1")]).await;
    assert_eq!(st, 200);
    let listed: BTreeSet<String> = h["x-envoy-auth-headers-to-remove"]
        .to_str()
        .expect("ascii")
        .split(',')
        .map(|n| n.trim().to_string())
        .collect();
    assert!(must_remove.is_subset(&listed), "{listed:?}");
    assert!(listed.contains("x-jwt-admin"), "{listed:?}");
}

/// Class 5: Clerk's dashboard "JWT Verification Key" (a PEM body on one line, no armour),
/// inline and from an environment variable; unusable key material gets an error that says
/// what was expected.
#[tokio::test]
async fn clerk_bare_base64_public_key_inline_and_from_env() {
    let k = key(Alg::ES256);
    let pem = rcgen::KeyPair::try_from(k.pkcs8_der().as_slice())
        .expect("rcgen key")
        .public_key_pem();
    // What Clerk's dashboard shows: the base64 between the armour lines, on one line.
    let bare: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    for (extra, env) in [
        (format!("public_key_pem = \"{bare}\"\n"), vec![]),
        (
            "public_key_env = \"TEST_CLERK_JWT_KEY\"\n".to_string(),
            vec![("TEST_CLERK_JWT_KEY", bare.as_str())],
        ),
    ] {
        let s = Sidecar::start(&[&k], "", &extra, &env).await;
        let (st, _, body) = get_with_token(&s.url("/api"), &k.mint(&s.claims())).await;
        assert_eq!(st, 200, "{extra}: {body}");
        assert_eq!(echoed(&body)["x-jwt-sub"], ["user-1"]);
        let other = key(Alg::ES384);
        let (st, _, _) = get_with_token(&s.url("/api"), &other.mint(&s.claims())).await;
        assert_eq!(st, 401, "another key is refused");
    }
    // Unusable key material: `check` names what was expected.
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-bypass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (material, expect) in [
        ("not a key at all", "bare base64"),
        (
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=",
            "SubjectPublicKeyInfo",
        ),
    ] {
        let file = dir.join("bad-key.toml");
        std::fs::write(
            &file,
            format!(
                "[proxy]\nupstream = \"http://127.0.0.1:9\"\n[[providers]]\nname = \"clerk\"\nissuer = \"https://clerk.example\"\npublic_key_pem = \"{material}\"\naudiences = [\"api\"]\n"
            ),
        )
        .expect("write");
        let out = std::process::Command::new(BIN)
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("run check");
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{material}: {text}");
        assert!(text.contains(expect), "{material}: {text}");
    }
    // An unset variable is a config error naming it.
    let file = dir.join("unset-env.toml");
    std::fs::write(
        &file,
        "[proxy]\nupstream = \"http://127.0.0.1:9\"\n[[providers]]\nname = \"clerk\"\nissuer = \"https://clerk.example\"\npublic_key_env = \"TEST_UNSET_CLERK_KEY_VAR\"\naudiences = [\"api\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .env_remove("TEST_UNSET_CLERK_KEY_VAR")
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("TEST_UNSET_CLERK_KEY_VAR"), "{text}");
}

/// Class 6: junk kids just before a real rotation do not turn the new key away when the
/// deferred refetch is due within `kid_miss_wait`: the request waits for it.
#[tokio::test]
async fn a_real_rotation_right_after_junk_kids_is_accepted_by_waiting() {
    let k1 = key(Alg::ES256);
    let k2 = Arc::new(SigningKey::generate(Alg::ES256, "rotated-in"));
    let s = Sidecar::start(
        &[&k1],
        "",
        "kid_miss_min_interval = \"4s\"\nkid_miss_wait = \"5s\"\n",
        &[],
    )
    .await;
    let junk = |kid: &str| {
        let h = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        k1.mint_with_header(&h, &s.claims())
    };
    // A junk kid: one refetch, absent.
    let (st, _, body) = get_with_token(&s.url("/api"), &junk("junk-1")).await;
    assert_eq!((st.as_u16(), reason(&body)), (401, "unknown_kid".into()));
    // The IdP rotates; a genuine token with the new kid arrives within the interval. Before
    // the fix it was refused at once (rate limited); now it waits for the deferred refetch.
    s.idp.set_keys(&[&k1, &k2]);
    let started = std::time::Instant::now();
    let (st, _, body) = get_with_token(&s.url("/api"), &k2.mint(&s.claims())).await;
    assert_eq!(st, 200, "after {:?}: {body}", started.elapsed());
    // The fetch budget still holds: a burst of junk kids costs at most two fetches per
    // interval (one on demand, one deferred), however many requests wait for them.
    let fetches = s.idp.fetches();
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let (url, t) = (s.url("/api"), junk(&format!("junk-burst-{i}")));
            tokio::spawn(async move { get_with_token(&url, &t).await.0 })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.expect("task"), 401);
    }
    let spent = s.idp.fetches() - fetches;
    assert!(spent <= 2, "8 junk kids cost {spent} fetches");
}

/// Every listener under the same limits: the gRPC listener has the connection cap, the
/// open-connections gauge and the limit counter the HTTP listeners have.
#[tokio::test]
async fn grpc_listener_has_the_connection_cap_and_gauge() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let k = key(Alg::ES256);
    let s = Sidecar::start(&[&k], "max_connections = 2\n", "", &[]).await;
    let metrics = format!("http://{}/metrics", s.admin);
    let gauge = r#"jwks_sidecar_connections{listener="authz_grpc"}"#;
    let limited = r#"jwks_sidecar_connection_limit_reached_total{listener="authz_grpc"}"#;
    let channel = || async {
        tonic::transport::Channel::from_shared(format!("http://{}", s.grpc))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    };
    let (a, b) = (channel().await, channel().await);
    wait_metric(&metrics, gauge, |v| v == 2.0).await;
    // A third connection waits in the backlog; the listener counts the pause.
    let third = tokio::spawn(async move {
        let c = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc))
            .expect("uri")
            .connect_timeout(Duration::from_secs(60))
            .connect()
            .await
            .expect("connect");
        HealthClient::new(c)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status)
    });
    wait_metric(&metrics, limited, |v| v >= 1.0).await;
    assert!(
        !third.is_finished(),
        "the third connection was served past the cap"
    );
    // One connection ends: its slot goes to the waiting one, which is served.
    drop(a);
    let status = tokio::time::timeout(DEADLINE, third)
        .await
        .expect("the waiting connection was served within the deadline")
        .expect("task")
        .expect("health check");
    assert_eq!(status, 1, "SERVING");
    drop(b);
    wait_metric(&metrics, gauge, |v| v <= 1.0).await;
}
