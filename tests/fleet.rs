//! A fleet that asks its identity provider once: downstream sidecars mirror a provider's keys
//! from another sidecar's admin `/jwks/{provider}` instead of the identity provider. That
//! endpoint answers like an identity provider should: a strong ETag with 304s, and a max-age
//! that is what is left of the mirror's own freshness.

mod support;

use std::time::Duration;

use jwks_sidecar::config::Config;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::now;
use serde_json::json;
use support::*;

fn fetches(metrics: &str, result: &str) -> f64 {
    sample(
        metrics,
        &format!("jwks_sidecar_jwks_fetch_total{{provider=\"idp\",result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// An IdP answering with `cache_control`, a mirror sidecar fetching from it, and `n` sidecars
/// mirroring from the mirror's `/jwks/idp`; `mirror` and `sidecar` adjust their configs.
struct Tiers {
    key: std::sync::Arc<jwks_sidecar::testkit::SigningKey>,
    idp: jwks_sidecar::demo::FakeIdp,
    _echo: jwks_sidecar::demo::EchoUpstream,
    mirror: jwks_sidecar::Running,
    fleet: Vec<jwks_sidecar::Running>,
    /// The mirror's `/jwks/idp`.
    url: String,
}

impl Tiers {
    async fn start(
        cache_control: &str,
        n: usize,
        mirror: impl Fn(&mut Config),
        sidecar: impl Fn(&mut Config),
    ) -> Tiers {
        let (key, idp, echo) = idp_and_echo(Alg::ES256).await;
        if let Ok(mut h) = idp.state.jwks_headers.lock() {
            h.push(("cache-control".into(), cache_control.into()));
        }
        let mut mc = base_config(&idp, &echo);
        mirror(&mut mc);
        let m = start_config(mc).await;
        wait_keys_ready(&m).await;
        let url = format!("http://{}/jwks/idp", m.admin_addr.expect("admin"));
        let mut fleet = Vec::new();
        for _ in 0..n {
            let mut c = base_config(&idp, &echo);
            sidecar(&mut c);
            c.providers[0].jwks_uri = Some(url.clone());
            let s = start_config(c).await;
            wait_keys_ready(&s).await;
            fleet.push(s);
        }
        Tiers {
            key,
            idp,
            _echo: echo,
            mirror: m,
            fleet,
            url,
        }
    }

    fn mirror_admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.mirror.admin_addr.expect("admin"))
    }

    async fn stop(self) {
        for s in self.fleet {
            s.shutdown();
            s.wait().await;
        }
        self.mirror.shutdown();
        self.mirror.wait().await;
    }
}

/// Refresh every second.
fn fast(c: &mut Config) {
    let p = &mut c.providers[0];
    p.refresh_interval = Duration::from_secs(1);
    p.min_refresh = Duration::from_secs(1);
}

#[tokio::test]
async fn sidecars_mirror_from_one_sidecar_with_etags_and_the_idp_sees_only_the_mirror() {
    let t = Tiers::start("max-age=2", 3, fast, fast).await;
    // The endpoint: ETag, 304, and max-age within the mirror's freshness (2 s).
    let (st, h, body) = get(&t.url, &[]).await;
    assert_eq!(st, 200, "{body}");
    let etag = h["etag"].to_str().expect("etag").to_string();
    let cc = h["cache-control"].to_str().expect("cc").to_string();
    let max_age: u64 = cc
        .rsplit("max-age=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{cc}"));
    assert!(cc.starts_with("public") && max_age <= 2, "{cc}");
    let (st, _, body) = get(&t.url, &[("if-none-match", &etag)]).await;
    assert_eq!((st.as_u16(), body.as_str()), (304, ""));
    // Three sidecars mirror from it.
    let token = t
        .key
        .mint(&json!({"iss": t.idp.issuer(), "aud": "api", "sub": "alice", "exp": now() + 300}));
    for s in &t.fleet {
        let (st, _, body) = get_with_token(&format!("http://{}/x", s.proxy_addr), &token).await;
        assert_eq!(st, 200, "{body}");
    }
    // They revalidate against the mirror (304s), while only the mirror fetches from the IdP.
    for s in &t.fleet {
        let url = format!("http://{}/metrics", s.admin_addr.expect("admin"));
        wait_metric(
            &url,
            r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="not_modified"}"#,
            |n| n >= 2.0,
        )
        .await;
    }
    let m = get(&t.mirror_admin("/metrics"), &[]).await.2;
    let mirror_fetches = fetches(&m, "ok") + fetches(&m, "not_modified");
    let idp_fetches = t.idp.fetches() as f64;
    assert!(
        idp_fetches <= mirror_fetches + 1.0,
        "the IdP saw {idp_fetches} fetches, the mirror made {mirror_fetches}: the fleet must not reach it"
    );
    t.stop().await;
}

/// One mirror and two sidecars with long-lived caches: a token signed by a key the IdP has
/// just published is accepted by the first request to each sidecar, because the sidecar's
/// kid miss travels up to the mirror (`x-jwks-sidecar-kid`), which refetches from the IdP
/// once. Junk kids sent straight to the mirror go through its own gate: at most two more
/// IdP fetches per interval, whatever their number.
#[tokio::test]
async fn a_new_kid_travels_up_the_tiers_in_one_request() {
    // The sidecars' wait covers the mirror's own (2 s) plus the hop.
    let t = Tiers::start(
        "max-age=3600",
        2,
        |_| {},
        |c| c.providers[0].kid_miss_wait = Duration::from_secs(4),
    )
    .await;
    let before = t.idp.fetches();
    let k2 = jwks_sidecar::testkit::SigningKey::generate(Alg::ES256, "rotated-in");
    t.idp.set_keys(&[&t.key, &k2]);
    let token =
        k2.mint(&json!({"iss": t.idp.issuer(), "aud": "api", "sub": "bob", "exp": now() + 300}));
    for (i, s) in t.fleet.iter().enumerate() {
        let (st, _, body) = get_with_token(&format!("http://{}/x", s.proxy_addr), &token).await;
        assert_eq!(
            st, 200,
            "sidecar {i}, first request with the new kid: {body}"
        );
    }
    assert_eq!(
        t.idp.fetches(),
        before + 1,
        "one IdP fetch (the mirror's) for the new kid across the fleet"
    );
    let kid_misses = |m: &str, result: &str| {
        sample(
            m,
            &format!("jwks_sidecar_jwks_kid_miss_total{{provider=\"idp\",result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let m = get(&t.mirror_admin("/metrics"), &[]).await.2;
    assert_eq!(kid_misses(&m, "refetched_found"), 1.0, "{m}");
    // Junk kids at the mirror: its gate refuses them without fetching (the refetch above
    // started its interval), leaving at most one deferred fetch.
    for i in 0..20 {
        let kid = format!("junk-{i}");
        let (st, _, _) = get(&t.url, &[("x-jwks-sidecar-kid", &kid)]).await;
        assert_eq!(st, 200, "the set is still served");
    }
    assert!(
        t.idp.fetches() <= before + 2,
        "junk kids cost the IdP {} fetches",
        t.idp.fetches() - before
    );
    let m = get(&t.mirror_admin("/metrics"), &[]).await.2;
    assert!(kid_misses(&m, "rate_limited") >= 19.0, "{m}");
    t.stop().await;
}

/// When the identity provider fails, the mirror serves stale keys and says since when; a
/// sidecar mirroring from it marks its own keys stale from that same moment and drops them
/// at its own `max_stale`, although every fetch it makes from the mirror succeeds.
#[tokio::test]
async fn a_sidecar_never_treats_the_mirrors_stale_keys_as_fresh() {
    let t = Tiers::start(
        "max-age=1",
        1,
        |c| {
            fast(c);
            c.providers[0].max_stale = Duration::from_secs(600);
        },
        |c| {
            fast(c);
            c.providers[0].max_stale = Duration::from_secs(3);
        },
    )
    .await;
    let s = &t.fleet[0];
    let admin = s.admin_addr.expect("admin");
    let token = t
        .key
        .mint(&json!({"iss": t.idp.issuer(), "aud": "api", "sub": "alice", "exp": now() + 300}));
    let url = format!("http://{}/x", s.proxy_addr);
    assert_eq!(get_with_token(&url, &token).await.0, 200);
    t.idp.fail_with(500);
    // The mirror goes stale and says so.
    wait_until("the mirror to say its keys are stale", DEADLINE, || async {
        get(&t.url, &[])
            .await
            .1
            .contains_key("x-jwks-sidecar-stale-since")
    })
    .await;
    let answer = get(&t.url, &[]).await.1;
    let since = answer["x-jwks-sidecar-stale-since"]
        .to_str()
        .expect("ascii")
        .to_string();
    // With the tier's Date, a sidecar reads the moment as an age on the tier's clock.
    assert!(answer.contains_key("date"), "{answer:?}");
    // The sidecar's fetches from the mirror still succeed, yet its keys are stale since the
    // mirror's moment...
    wait_metric(
        &format!("http://{admin}/metrics"),
        r#"jwks_sidecar_jwks_stale{provider="idp"}"#,
        |v| v == 1.0,
    )
    .await;
    let p = get(&format!("http://{admin}/providers"), &[]).await.2;
    let p: serde_json::Value = serde_json::from_str(&p).expect("json");
    // Stale from the mirror's moment, or from the end of a freshness an earlier (fresh)
    // answer gave it, at most one refresh (1 s) later.
    let ours = p["providers"][0]["status"]["stale_since"]
        .as_u64()
        .unwrap_or_else(|| panic!("{p}"));
    let since: u64 = since.parse().expect("unix seconds");
    assert!(since <= ours && ours <= since + 2, "{ours} vs {since}: {p}");
    // ...and are dropped at its own max_stale (3 s), while the mirror (600 s) still serves.
    wait_until(
        "the sidecar to drop keys past its max_stale",
        DEADLINE,
        || {
            let url = url.clone();
            let token = token.clone();
            async move { get_with_token(&url, &token).await.0 == 503 }
        },
    )
    .await;
    let mirror_url = format!("http://{}/x", t.mirror.proxy_addr);
    assert_eq!(get_with_token(&mirror_url, &token).await.0, 200);
    // The keys stay dropped: the sidecar refuses the tier's set once it is older than its
    // own max_stale (result upstream_stale), instead of installing it again at each fetch.
    let metrics = format!("http://{admin}/metrics");
    wait_metric(
        &metrics,
        r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="upstream_stale"}"#,
        |v| v >= 2.0,
    )
    .await;
    assert_eq!(get_with_token(&url, &token).await.0, 503);
    let m = get(&metrics, &[]).await.2;
    assert!(
        m.has_sample(r#"jwks_sidecar_jwks_keys{provider="idp"}"#, 0.0),
        "{m}"
    );
    let failed: f64 = ["connect", "http_status", "timeout", "parse"]
        .iter()
        .filter_map(|r| {
            sample(
                &m,
                &format!("jwks_sidecar_jwks_fetch_total{{provider=\"idp\",result=\"{r}\"}}"),
            )
        })
        .sum();
    assert_eq!(
        failed, 0.0,
        "the sidecar's fetches from the mirror never failed otherwise: {m}"
    );
    t.stop().await;
}
