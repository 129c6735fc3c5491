//! Many issuers (issue 20): a hundred providers, each its own issuer, one of them dead.
//! Readiness: with `admin.readiness = "attempted"` the dead one delays `/readyz` by its own
//! fetch timeout only, and only its own tokens are refused (503); with the default `"keys"`
//! the pod stays unready and `/readyz` names the dead provider alone.

mod support;

use std::time::{Duration, Instant};

use jwks_sidecar::config::Readiness;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::now;
use serde_json::{json, Value};
use support::*;

const PROVIDERS: usize = 100;

/// A listener that accepts connections and never answers (a hung identity provider).
async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_dead_provider_among_a_hundred_delays_readiness_by_its_own_timeout_only() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let (dead, _hole) = black_hole().await;
    let issuer = |i: usize| format!("{}/tenants/{i}", idp.issuer());
    let build = |readiness: Readiness| {
        let mut c = base_config(&idp, &echo);
        c.admin.readiness = readiness;
        let template = c.providers[0].clone();
        c.providers = (0..PROVIDERS)
            .map(|i| {
                let mut p = template.clone();
                p.name = format!("t{i}");
                p.issuer = issuer(i);
                p.fetch_timeout = Duration::from_secs(2);
                if i == PROVIDERS - 1 {
                    p.jwks_uri = Some(format!("http://{dead}/jwks.json"));
                }
                p
            })
            .collect();
        c
    };
    let started = Instant::now();
    let s = start_config(build(Readiness::Attempted)).await;
    let admin = s.admin_addr.expect("admin");
    let (st, _, body) = get(&format!("http://{admin}/readyz?wait=20"), &[]).await;
    let took = started.elapsed();
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["providers_without_keys"],
        json!([format!("t{}", PROVIDERS - 1)]),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "ready after {took:?}: before the dead provider's fetch timed out"
    );
    let token = |i: usize| {
        k.mint(&json!({"iss": issuer(i), "aud": "api", "sub": format!("user-{i}"), "exp": now() + 300}))
    };
    let url = format!("http://{}/x", s.proxy_addr);
    for i in [0, 1, PROVIDERS / 2, PROVIDERS - 2] {
        let (st, _, body) = get_with_token(&url, &token(i)).await;
        assert_eq!(st, 200, "provider t{i}: {body}");
    }
    let (st, _, body) = get_with_token(&url, &token(PROVIDERS - 1)).await;
    assert_eq!(st, 503, "the dead provider's token: {body}");
    assert_eq!(idp.fetches(), PROVIDERS - 1, "one fetch per live provider");
    s.shutdown();
    s.wait().await;

    // The default keeps the pod out of service, and says which provider holds it back.
    let s = start_config(build(Readiness::Keys)).await;
    let admin = s.admin_addr.expect("admin");
    wait_metric(
        &format!("http://{admin}/metrics"),
        &format!(
            "jwks_sidecar_jwks_fetch_total{{provider=\"t{}\",result=\"timeout\"}}",
            PROVIDERS - 1
        ),
        |v| v >= 1.0,
    )
    .await;
    let (st, _, body) = get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(st, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["providers_without_keys"],
        json!([format!("t{}", PROVIDERS - 1)]),
        "{body}"
    );
    s.shutdown();
    s.wait().await;
}

/// Readiness is latched for the process's life: a reload that adds a dead provider does not
/// take a serving pod out of its Service (its tokens get 503; `/readyz` names it).
#[tokio::test]
async fn a_reload_adding_a_dead_provider_keeps_a_ready_pod_ready() {
    let (_k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let (dead, _hole) = black_hole().await;
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-latch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.toml");
    let mut c = base_config(&idp, &echo);
    std::fs::write(&file, to_toml(&c)).expect("write");
    let plan = jwks_sidecar::plan::load(Some(&file), &Default::default()).expect("config");
    let s = jwks_sidecar::start_with(plan, Some(file.clone()), Default::default())
        .await
        .expect("start");
    let admin = s.admin_addr.expect("admin");
    let (st, _, body) = get(&format!("http://{admin}/readyz?wait=20"), &[]).await;
    assert_eq!(st, 200, "{body}");
    let mut p = c.providers[0].clone();
    p.name = "dead".into();
    p.issuer = format!("{}/dead", idp.issuer());
    p.jwks_uri = Some(format!("http://{dead}/jwks.json"));
    p.fetch_timeout = Duration::from_secs(1);
    c.providers.push(p);
    std::fs::write(&file, to_toml(&c)).expect("write");
    s.runtime.reload().await.expect("reload");
    assert_eq!(s.current_auth().providers().len(), 2);
    let (st, _, body) = get(&format!("http://{admin}/readyz"), &[]).await;
    assert_eq!(st, 200, "still ready after the reload: {body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["providers_without_keys"], json!(["dead"]), "{body}");
    s.shutdown();
    s.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
