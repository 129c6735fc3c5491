//! The JWKS mirror's state machine under tokio's paused clock, with an in-memory source:
//! rotation without false rejections, caching-header clamps, 304s, stale-if-error then 503,
//! restart from cache_dir, the kid flood bound, slow IdPs, and removal hysteresis.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use jwks_sidecar::auth::Authenticator;
use jwks_sidecar::error::Reject;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::jwks::fetch::FetchError;
use jwks_sidecar::jwks::refresh::Mirror;
use jwks_sidecar::jwks::source::{Source, SourceResponse, Validators};
use jwks_sidecar::metrics::Metrics;
use jwks_sidecar::testkit::{jwks, mint_unsigned, now, SigningKey};
use serde_json::{json, Value};
use support::{key, Scrape};
use tokio::sync::watch;

const ISS: &str = "https://idp.test";

/// A JWKS document and the response headers it is served with.
type Served = (Value, Vec<(&'static str, String)>);

/// What the fake IdP serves: a document with headers, or a failure status.
#[derive(Default)]
struct MemIdp {
    doc: Mutex<Option<Served>>,
    fail: Mutex<Option<u16>>,
    delay: Mutex<Duration>,
    fetches: AtomicUsize,
    etag: Mutex<Option<String>>,
    seen: Mutex<Vec<Validators>>,
}

impl MemIdp {
    fn serve(&self, keys: &[&SigningKey], headers: Vec<(&'static str, String)>) {
        *self.doc.lock().expect("lock") = Some((jwks(keys), headers));
    }
    fn fail(&self, status: Option<u16>) {
        *self.fail.lock().expect("lock") = status;
    }
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

struct Mem(Arc<MemIdp>);

impl Source for Mem {
    async fn fetch(
        &self,
        v: &Validators,
        _kid_miss: Option<&str>,
    ) -> Result<SourceResponse, FetchError> {
        self.0.fetches.fetch_add(1, Ordering::SeqCst);
        self.0.seen.lock().expect("lock").push(v.clone());
        let delay = *self.0.delay.lock().expect("lock");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = *self.0.fail.lock().expect("lock") {
            return Err(FetchError::HttpStatus(status));
        }
        let (doc, extra) = self
            .0
            .doc
            .lock()
            .expect("lock")
            .clone()
            .expect("a document");
        let mut headers = HeaderMap::new();
        for (k, val) in extra {
            headers.insert(k, HeaderValue::from_str(&val).expect("header"));
        }
        let etag = self.0.etag.lock().expect("lock").clone();
        if let Some(etag) = etag {
            if v.etag.as_ref().and_then(|e| e.to_str().ok()) == Some(etag.as_str()) {
                return Ok(SourceResponse::NotModified { headers });
            }
            headers.insert("etag", HeaderValue::from_str(&etag).expect("etag"));
        }
        Ok(SourceResponse::Document {
            body: Bytes::from(doc.to_string()),
            headers,
        })
    }
}

struct Setup {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    _stop: watch::Sender<bool>,
}

async fn setup(idp: &Arc<MemIdp>, provider_extra: &str, persist: Option<PathBuf>) -> Setup {
    let toml = format!(
        "[[providers]]\nname = \"p\"\nissuer = \"{ISS}\"\njwks = {{ keys = [] }}\naudiences = [\"api\"]\n{provider_extra}\n"
    );
    let plan = jwks_sidecar::plan::from_toml_str(&toml).expect("config");
    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(plan.authenticator(metrics.clone()));
    let mut settings = plan.providers[0].keys.mirror.clone();
    settings.jitter = 0.0;
    let mirror = Mirror {
        keys: auth.providers()[0].keys.clone(),
        source: Mem(idp.clone()),
        metrics: metrics.clone(),
        settings,
        persist_path: persist,
    };
    let (tx, rx) = watch::channel(false);
    tokio::spawn(mirror.run(rx));
    // Let the first fetch happen. Yielding (not sleeping) keeps the paused clock where it
    // is; the deadline is wall-clock time, and missing it fails here, by name, rather than
    // as a confusing assertion later.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(auth.providers()[0].keys.ready()
        || idp.fetches() > 0 && idp.fail.lock().expect("lock").is_some())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the mirror's first fetch did not happen (fetches: {})",
            idp.fetches()
        );
        tokio::task::yield_now().await;
    }
    Setup {
        auth,
        metrics,
        _stop: tx,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "u", "aud": "api", "exp": now() + 7200})
}

async fn check(s: &Setup, token: &str) -> Result<(), Reject> {
    s.auth
        .authenticate(token, now())
        .await
        .map(|_| ())
        .map_err(|f| f.reject)
}

#[tokio::test(start_paused = true)]
async fn rotation_a_to_ab_to_b_has_no_false_rejections() {
    let (a, b) = (
        SigningKey::generate(Alg::ES256, "A"),
        SigningKey::generate(Alg::ES256, "B"),
    );
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&a], vec![]);
    let s = setup(&idp, "", None).await;
    assert_eq!(check(&s, &a.mint(&claims())).await, Ok(()));
    // The IdP publishes B and starts signing with it: the first B token is accepted.
    idp.serve(&[&a, &b], vec![]);
    let before = idp.fetches();
    for _ in 0..20 {
        assert_eq!(
            check(&s, &b.mint(&claims())).await,
            Ok(()),
            "new key accepted on first use"
        );
        assert_eq!(
            check(&s, &a.mint(&claims())).await,
            Ok(()),
            "old key still accepted"
        );
    }
    assert_eq!(idp.fetches(), before + 1, "one kid-miss refetch");
    // A is retired: tokens signed with A keep working until removal is confirmed twice.
    idp.serve(&[&b], vec![]);
    tokio::time::sleep(Duration::from_secs(301)).await;
    assert_eq!(
        check(&s, &a.mint(&claims())).await,
        Ok(()),
        "removal needs two confirmations"
    );
    tokio::time::sleep(Duration::from_secs(301)).await;
    assert_eq!(check(&s, &a.mint(&claims())).await, Err(Reject::UnknownKid));
    assert_eq!(check(&s, &b.mint(&claims())).await, Ok(()));
    let m = s.metrics.render();
    assert!(
        m.has_sample(
            r#"jwks_sidecar_jwks_key_changes_total{change="added",provider="p"}"#,
            1.0
        ),
        "{m}"
    );
    assert!(
        m.has_sample(
            r#"jwks_sidecar_jwks_key_changes_total{change="removed",provider="p"}"#,
            1.0
        ),
        "{m}"
    );
    assert!(
        m.has_sample(
            r#"jwks_sidecar_jwks_kid_miss_total{provider="p",result="refetched_found"}"#,
            1.0
        ),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn key_removal_confirmations_one_revokes_at_once() {
    let (a, b) = (
        SigningKey::generate(Alg::ES256, "A"),
        SigningKey::generate(Alg::ES256, "B"),
    );
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&a, &b], vec![]);
    let s = setup(&idp, "key_removal_confirmations = 1", None).await;
    let token_a = a.mint(&claims());
    assert_eq!(check(&s, &token_a).await, Ok(()));
    idp.serve(&[&b], vec![]);
    tokio::time::sleep(Duration::from_secs(301)).await;
    assert_eq!(
        check(&s, &token_a).await,
        Err(Reject::UnknownKid),
        "cached verification voided with its key"
    );
}

#[tokio::test(start_paused = true)]
async fn cache_control_is_honoured_and_clamped_both_ways() {
    let k = key(Alg::ES256);
    for (header, expect_next) in [
        ("max-age=15", 60u64),
        ("public, max-age=1209600", 3600),
        ("max-age=900", 900),
    ] {
        let idp = Arc::new(MemIdp::default());
        idp.serve(&[&k], vec![("cache-control", header.to_string())]);
        let _s = setup(&idp, "", None).await;
        assert_eq!(idp.fetches(), 1);
        tokio::time::sleep(Duration::from_secs(expect_next - 1)).await;
        assert_eq!(idp.fetches(), 1, "{header}: too early");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            idp.fetches(),
            2,
            "{header}: next fetch after {expect_next}s"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn not_modified_keeps_the_keys_and_counts_as_success() {
    let k = key(Alg::ES256);
    let idp = Arc::new(MemIdp::default());
    *idp.etag.lock().expect("lock") = Some("\"v1\"".into());
    idp.serve(&[&k], vec![]);
    let s = setup(&idp, "", None).await;
    tokio::time::sleep(Duration::from_secs(301)).await;
    assert_eq!(idp.fetches(), 2);
    let seen = idp.seen.lock().expect("lock").clone();
    assert_eq!(
        seen[1]
            .etag
            .as_ref()
            .map(|e| e.to_str().expect("ascii").to_string()),
        Some("\"v1\"".to_string())
    );
    assert_eq!(check(&s, &k.mint(&claims())).await, Ok(()));
    let m = s.metrics.render();
    assert!(
        m.has_sample(
            r#"jwks_sidecar_jwks_fetch_total{provider="p",result="not_modified"}"#,
            1.0
        ),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn idp_outage_serves_stale_within_max_stale_then_503_then_recovers() {
    let k = key(Alg::ES256);
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&k], vec![]);
    let s = setup(&idp, "max_stale = \"10m\"", None).await;
    let keys = s.auth.providers()[0].keys.clone();
    idp.fail(Some(500));
    // Fresh for 5 minutes, then stale.
    tokio::time::sleep(Duration::from_secs(310)).await;
    assert!(keys.is_stale(), "stale after the freshness lapsed");
    assert!(s
        .metrics
        .render()
        .has_sample(r#"jwks_sidecar_jwks_stale{provider="p"}"#, 1.0));
    assert!(keys.status().stale_since.is_some());
    assert_eq!(
        check(&s, &k.mint(&claims())).await,
        Ok(()),
        "stale keys still serve"
    );
    // Past freshness + max_stale: no keys, 503.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(check(&s, &k.mint(&claims())).await, Err(Reject::NoKeys));
    assert!(keys.ready(), "readiness stays latched");
    let failures_before = idp.fetches();
    // Backoff is capped at 60 s: the IdP's recovery is seen within a minute.
    idp.fail(None);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(idp.fetches() > failures_before);
    assert_eq!(check(&s, &k.mint(&claims())).await, Ok(()));
    assert!(!keys.is_stale());
    let m = s.metrics.render();
    assert!(
        m.has_sample(r#"jwks_sidecar_jwks_stale{provider="p"}"#, 0.0),
        "{m}"
    );
    assert!(
        m.contains(r#"jwks_sidecar_jwks_fetch_total{provider="p",result="http_status"}"#),
        "{m}"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_fetches_back_off_exponentially() {
    let k = key(Alg::ES256);
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&k], vec![]);
    let _s = setup(&idp, "", None).await;
    idp.fail(Some(503));
    tokio::time::sleep(Duration::from_millis(300_500)).await; // the scheduled refresh at 300 s fails
    let at_fail = idp.fetches();
    // Retries at +1, +2, +4, +8, +16, +32, +60, +60 s: 8 fetches in the next 183 s.
    tokio::time::sleep(Duration::from_secs(184)).await;
    assert_eq!(idp.fetches() - at_fail, 8);
}

#[tokio::test(start_paused = true)]
async fn restart_during_outage_serves_persisted_keys_at_once() {
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("p.json");
    let k = key(Alg::ES256);
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&k], vec![]);
    {
        let s = setup(&idp, "", Some(path.clone())).await;
        assert!(s.auth.providers()[0].keys.ready());
    }
    assert!(path.is_file(), "key set persisted");
    // New process, IdP down: keys from the cache file, before any fetch succeeds.
    let down = Arc::new(MemIdp::default());
    down.fail(Some(502));
    let s2 = setup(&down, "", Some(path.clone())).await;
    assert_eq!(check(&s2, &k.mint(&claims())).await, Ok(()));
    // A corrupt file or another provider's file is ignored (not ready, no panic).
    std::fs::write(&path, b"{ not json").expect("write");
    let s3 = setup(&down, "", Some(path.clone())).await;
    assert_eq!(check(&s3, &k.mint(&claims())).await, Err(Reject::NoKeys));
    std::fs::write(&path, json!({"version": 1, "provider": "other", "issuer": ISS, "fetched_at": 0, "fresh_until": u64::MAX / 2, "jwks": jwks(&[&k])}).to_string()).expect("write");
    let s4 = setup(&down, "", Some(path.clone())).await;
    assert_eq!(check(&s4, &k.mint(&claims())).await, Err(Reject::NoKeys));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn kid_flood_of_10000_random_kids_costs_a_handful_of_fetches() {
    let k = key(Alg::ES256);
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&k], vec![]);
    let s = Arc::new(setup(&idp, "", None).await);
    let start = idp.fetches();
    let mut tasks = Vec::new();
    for i in 0..10_000u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let t = mint_unsigned(&json!({"alg": "ES256", "kid": format!("random-{i}-{}", i.wrapping_mul(2654435761))}), &claims(), "AAAA");
            check(&s, &t).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("join"), Err(Reject::UnknownKid));
    }
    let during = idp.fetches() - start;
    assert!(during <= 2, "{during} fetches for 10,000 random kids");
    // Known kids were never blocked by the flood, and the metrics account for every miss.
    assert_eq!(check(&s, &k.mint(&claims())).await, Ok(()));
    let m = s.metrics.render();
    let total: u64 = m
        .lines()
        .filter(|l| l.starts_with("jwks_sidecar_jwks_kid_miss_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 10_000, "{m}");
    assert!(s.auth.providers()[0].keys.gate.negative_len() <= 4096);
}

#[tokio::test(start_paused = true)]
async fn a_slow_idp_never_delays_requests_with_known_kids() {
    let k = key(Alg::ES256);
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&k], vec![]);
    let s = Arc::new(setup(&idp, "kid_miss_wait = \"2s\"", None).await);
    *idp.delay.lock().expect("lock") = Duration::from_secs(30);
    // An unknown kid starts a (slow) refetch; its request gives up after kid_miss_wait.
    let s2 = s.clone();
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let r = check(
            &s2,
            &mint_unsigned(&json!({"alg": "ES256", "kid": "new"}), &claims(), "AAAA"),
        )
        .await;
        (r, started.elapsed())
    });
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(check(&s, &k.mint(&claims())).await, Ok(()));
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "known kids never wait on the network"
    );
    let (r, waited) = waiter.await.expect("join");
    assert_eq!(r, Err(Reject::UnknownKid));
    assert!(waited <= Duration::from_secs(2), "bounded wait: {waited:?}");
}

#[tokio::test(start_paused = true)]
async fn rate_limited_kid_miss_is_retried_within_one_interval() {
    let (a, b) = (
        SigningKey::generate(Alg::ES256, "A"),
        SigningKey::generate(Alg::ES256, "B"),
    );
    let idp = Arc::new(MemIdp::default());
    idp.serve(&[&a], vec![]);
    let s = setup(&idp, "kid_miss_min_interval = \"30s\"", None).await;
    // A junk kid uses up the refetch allowance...
    let junk = mint_unsigned(&json!({"alg": "ES256", "kid": "junk"}), &claims(), "AAAA");
    assert_eq!(check(&s, &junk).await, Err(Reject::UnknownKid));
    // ...then the real rotation happens: the first B token is rate limited,
    idp.serve(&[&a, &b], vec![]);
    assert_eq!(check(&s, &b.mint(&claims())).await, Err(Reject::UnknownKid));
    // but the deferred refetch picks B up after the interval, long before the 5 min refresh.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(check(&s, &b.mint(&claims())).await, Ok(()));
}
