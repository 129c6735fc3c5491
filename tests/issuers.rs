//! Many issuers (issue 20): a hundred providers, each its own issuer, one of them dead.
//! Readiness: with `admin.readiness = "attempted"` the dead one delays `/readyz` by its own
//! fetch timeout only, and only its own tokens are refused (503); with the default `"keys"`
//! the pod stays unready and `/readyz` names the dead provider alone.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jwks_sidecar::config::Readiness;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::now;
use serde_json::{json, Value};
use support::*;

const PROVIDERS: usize = 100;

/// A listener that accepts connections and never answers (a hung identity provider), and
/// the number of connections it has accepted.
async fn black_hole() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn a_dead_provider_among_a_hundred_delays_readiness_by_its_own_timeout_only() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let (dead, _, _hole) = black_hole().await;
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
    let (dead, _, _hole) = black_hole().await;
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

/// Dead tenants on one host cannot keep the fetch queue full. Two hundred providers on a
/// black hole are configured before a live one: the first wave (64, the process-wide bound)
/// times out and opens the host's breaker; the dead tenants still queued then fail at once
/// (`result="unresponsive"`) but one, the probe. The live provider gets its keys after that
/// first wave, not after every dead tenant has waited out its timeout (three more waves), and
/// with `readiness = "attempted"` the pod is ready as soon as every tenant has been tried.
#[tokio::test]
async fn dead_tenants_on_one_host_fail_fast_behind_one_probe() {
    use jwks_sidecar::jwks::fetch::{is_unresponsive, MAX_CONCURRENT_FETCHES};
    const DEAD: usize = 200;
    let (_k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let (dead, accepted, _hole) = black_hole().await;
    let mut c = base_config(&idp, &echo);
    c.admin.readiness = Readiness::Attempted;
    let template = c.providers[0].clone();
    c.providers = (0..=DEAD)
        .map(|i| {
            let mut p = template.clone();
            p.name = format!("t{i}");
            p.issuer = format!("{}/tenants/{i}", idp.issuer());
            p.fetch_timeout = Duration::from_secs(1);
            if i < DEAD {
                p.jwks_uri = Some(format!("http://{dead}/tenants/{i}/jwks.json"));
            }
            p
        })
        .collect();
    let s = start_config(c).await;
    let auth = s.current_auth();
    wait_until("the live provider's keys", DEADLINE, || async {
        auth.providers()[DEAD].keys.ready()
    })
    .await;
    let tried = accepted.load(Ordering::SeqCst);
    eprintln!("the live provider had its keys after {tried} dead fetches");
    assert!(
        tried < MAX_CONCURRENT_FETCHES + 16,
        "the live provider waited for {tried} dead fetches: more than the first wave"
    );
    assert!(is_unresponsive(&format!("http://{dead}")));
    // Every dead tenant has been tried (most refused at once), so the pod is ready, naming them.
    let admin = s.admin_addr.expect("admin");
    let (st, _, body) = get(&format!("http://{admin}/readyz?wait=20"), &[]).await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v["providers_without_keys"].as_array().map(Vec::len),
        Some(DEAD),
        "{body}"
    );
    let m = get(&format!("http://{admin}/metrics"), &[]).await.2;
    let refused: f64 = metric_series(&m, "jwks_sidecar_jwks_fetch_total")
        .filter(|(labels, _)| labels.contains("result=\"unresponsive\""))
        .map(|(_, v)| v)
        .sum();
    assert!(
        refused >= (DEAD - MAX_CONCURRENT_FETCHES - 16) as f64,
        "{refused} fetches refused at once"
    );
    s.shutdown();
    s.wait().await;
}
