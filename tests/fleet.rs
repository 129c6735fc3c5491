//! A fleet that asks its identity provider once: downstream sidecars mirror a provider's keys
//! from another sidecar's admin `/jwks/{provider}` instead of the identity provider. That
//! endpoint answers like an identity provider should: a strong ETag with 304s, and a max-age
//! that is what is left of the mirror's own freshness.

mod support;

use std::time::Duration;

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

#[tokio::test]
async fn sidecars_mirror_from_one_sidecar_with_etags_and_the_idp_sees_only_the_mirror() {
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    if let Ok(mut h) = idp.state.jwks_headers.lock() {
        h.push(("cache-control".into(), "max-age=2".into()));
    }
    let fast = |c: &mut jwks_sidecar::config::Config| {
        let p = &mut c.providers[0];
        p.refresh_interval = Duration::from_secs(1);
        p.min_refresh = Duration::from_secs(1);
    };
    let mut mc = base_config(&idp, &echo);
    fast(&mut mc);
    let mirror = start_config(mc).await;
    wait_keys_ready(&mirror).await;
    let mirror_admin = mirror.admin_addr.expect("admin");
    let tier = format!("http://{mirror_admin}/jwks/idp");
    // The endpoint: ETag, 304, and max-age within the mirror's freshness (2 s).
    let (st, h, body) = get(&tier, &[]).await;
    assert_eq!(st, 200, "{body}");
    let etag = h["etag"].to_str().expect("etag").to_string();
    let cc = h["cache-control"].to_str().expect("cc").to_string();
    let max_age: u64 = cc
        .rsplit("max-age=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{cc}"));
    assert!(cc.starts_with("public") && max_age <= 2, "{cc}");
    let (st, _, body) = get(&tier, &[("if-none-match", &etag)]).await;
    assert_eq!((st.as_u16(), body.as_str()), (304, ""));
    // Three sidecars mirror from it.
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let mut c = base_config(&idp, &echo);
        fast(&mut c);
        c.providers[0].jwks_uri = Some(tier.clone());
        let s = start_config(c).await;
        wait_keys_ready(&s).await;
        fleet.push(s);
    }
    let token =
        k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice", "exp": now() + 300}));
    for s in &fleet {
        let (st, _, body) = get_with_token(&format!("http://{}/x", s.proxy_addr), &token).await;
        assert_eq!(st, 200, "{body}");
    }
    // They revalidate against the mirror (304s), while only the mirror fetches from the IdP.
    for s in &fleet {
        let url = format!("http://{}/metrics", s.admin_addr.expect("admin"));
        wait_metric(
            &url,
            r#"jwks_sidecar_jwks_fetch_total{provider="idp",result="not_modified"}"#,
            |n| n >= 2.0,
        )
        .await;
    }
    let m = get(&format!("http://{mirror_admin}/metrics"), &[]).await.2;
    let mirror_fetches = fetches(&m, "ok") + fetches(&m, "not_modified");
    let idp_fetches = idp.fetches() as f64;
    assert!(
        idp_fetches <= mirror_fetches + 1.0,
        "the IdP saw {idp_fetches} fetches, the mirror made {mirror_fetches}: the fleet must not reach it"
    );
    for s in fleet {
        s.shutdown();
        s.wait().await;
    }
    mirror.shutdown();
    mirror.wait().await;
}
