//! Every Prometheus collector, registered once at start and shared by reference.
//!
//! Label values are bounded by construction: provider names come from the config, reasons
//! and results are `&'static str` chosen by the code. No token, subject or raw path ever
//! becomes a label. Components receive `Arc<Metrics>` and never register anything.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

const NS: &str = "jwks_sidecar";

/// All collectors of the process.
pub struct Metrics {
    registry: Registry,
    /// Decisions: `{listener, provider, decision, reason}`.
    pub requests_total: IntCounterVec,
    /// Time spent in token verification (parse, key lookup, signature, claims).
    pub verify_duration: Histogram,
    /// Time to the upstream's response headers.
    pub upstream_duration: Histogram,
    /// Upstream failures: `{kind}` = connect, timeout, error.
    pub upstream_errors_total: IntCounterVec,
    /// JWKS fetches: `{provider, result}`.
    pub jwks_fetch_total: IntCounterVec,
    /// JWKS fetch latency: `{provider}`.
    pub jwks_fetch_duration: HistogramVec,
    /// Usable keys in the mirror: `{provider}`.
    pub jwks_keys: IntGaugeVec,
    /// Unix time of the last successful fetch: `{provider}`.
    pub jwks_last_success: GaugeVec,
    /// 1 while serving keys whose freshness has lapsed: `{provider}`.
    pub jwks_stale: IntGaugeVec,
    /// Keys that appeared or left: `{provider, change}`.
    pub jwks_key_changes_total: IntCounterVec,
    /// Unknown-kid handling: `{provider, result}`.
    pub jwks_kid_miss_total: IntCounterVec,
    /// Key lookups by kid: `{provider, result}` = hit, miss.
    pub key_lookups_total: IntCounterVec,
    /// JWKs that were ignored: `{provider, reason}`.
    pub jwks_skipped_keys_total: IntCounterVec,
    /// Token cache: `{result}` = hit, miss.
    pub token_cache_total: IntCounterVec,
    /// Claim values not turned into headers: `{provider, reason}`.
    pub claim_headers_dropped_total: IntCounterVec,
    /// Inbound identity headers removed (spoofing attempts or stale hops).
    pub spoofed_headers_removed_total: IntCounterVec,
    /// Open connections: `{listener}`.
    pub connections: IntGaugeVec,
    /// Times a listener paused accepting at `max_connections`: `{listener}`.
    pub connection_limit_reached_total: IntCounterVec,
    /// Connections closed on an error: `{listener, kind}` = header_timeout, too_large, parse, io, tls.
    pub connection_errors_total: IntCounterVec,
    /// Config reloads: `{result}` = ok, error.
    pub config_reloads_total: IntCounterVec,
    /// DPoP proofs checked: `{provider, result}` = ok or the failed check.
    pub dpop_proofs_total: IntCounterVec,
    /// Sender-constraint decisions: `{provider, kind, result}`; kind = dpop, mtls, bearer.
    pub sender_constraint_total: IntCounterVec,
    /// DPoP `jti`s dropped from the replay cache inside their window (cache full).
    pub dpop_replay_evictions_total: prometheus::IntCounter,
    /// 1 for the live config's hash.
    pub config_info: IntGaugeVec,
    /// 1 with the build version as a label.
    pub build_info: GaugeVec,
    /// Process start time (seconds since the epoch).
    pub start_time: Gauge,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn int_gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
    reg.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
    reg.register(Box::new(g.clone())).expect("unique metric");
    g
}

const LATENCY_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The latency histograms: token verification, upstream, JWKS fetches.
fn histograms(reg: &Registry) -> (Histogram, Histogram, HistogramVec) {
    let histogram = |name: &str, help: &str| {
        let h = Histogram::with_opts(
            HistogramOpts::new(name, help)
                .namespace(NS)
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        reg.register(Box::new(h.clone())).expect("unique metric");
        h
    };
    let verify_duration = histogram("verify_duration_seconds", "Time spent verifying a token.");
    let upstream_duration = histogram(
        "upstream_duration_seconds",
        "Time from forwarding a request to the upstream's response headers.",
    );
    let jwks_fetch_duration = HistogramVec::new(
        HistogramOpts::new("jwks_fetch_duration_seconds", "Duration of JWKS fetches.")
            .namespace(NS)
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        &["provider"],
    )
    .expect("valid metric");
    reg.register(Box::new(jwks_fetch_duration.clone()))
        .expect("unique metric");
    (verify_duration, upstream_duration, jwks_fetch_duration)
}

/// `build_info` (1, with the version) and `start_time_seconds`.
fn process_info(reg: &Registry) -> (GaugeVec, Gauge) {
    let start_time = Gauge::with_opts(
        Opts::new(
            "start_time_seconds",
            "Start time of the process since the Unix epoch.",
        )
        .namespace(NS),
    )
    .expect("valid metric");
    reg.register(Box::new(start_time.clone()))
        .expect("unique metric");
    start_time.set(crate::unix_now_f64());
    let build_info = gauge(
        reg,
        "build_info",
        "Build information; always 1.",
        &["version"],
    );
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    (build_info, start_time)
}

impl Metrics {
    /// Builds and registers every collector (one line each: name, help, labels).
    #[rustfmt::skip]
    pub fn new() -> Self {
        let reg = Registry::new();
        let (verify_duration, upstream_duration, jwks_fetch_duration) = histograms(&reg);
        let (build_info, start_time) = process_info(&reg);
        Metrics {
            requests_total: counter(&reg, "requests_total", "Requests decided, by listener, provider, decision and reason.", &["listener", "provider", "decision", "reason"]),
            upstream_errors_total: counter(&reg, "upstream_errors_total", "Upstream failures by kind (connect, timeout, error).", &["kind"]),
            jwks_fetch_total: counter(&reg, "jwks_fetch_total", "JWKS fetches by provider and result.", &["provider", "result"]),
            jwks_keys: int_gauge(&reg, "jwks_keys", "Usable keys in the local mirror.", &["provider"]),
            jwks_last_success: gauge(&reg, "jwks_last_success_timestamp_seconds", "Unix time of the last successful JWKS fetch.", &["provider"]),
            jwks_stale: int_gauge(&reg, "jwks_stale", "1 while the provider's keys are past their freshness and served stale.", &["provider"]),
            jwks_key_changes_total: counter(&reg, "jwks_key_changes_total", "Keys added to or removed from the mirror.", &["provider", "change"]),
            jwks_kid_miss_total: counter(&reg, "jwks_kid_miss_total", "Tokens whose kid was not in the mirror, by outcome.", &["provider", "result"]),
            key_lookups_total: counter(&reg, "key_lookups_total", "Key lookups by kid.", &["provider", "result"]),
            jwks_skipped_keys_total: counter(&reg, "jwks_skipped_keys_total", "JWKs ignored while parsing a key set, by reason.", &["provider", "reason"]),
            token_cache_total: counter(&reg, "token_cache_total", "Verified-token cache lookups.", &["result"]),
            claim_headers_dropped_total: counter(&reg, "claim_headers_dropped_total", "Claim values not forwarded as headers, by reason.", &["provider", "reason"]),
            spoofed_headers_removed_total: counter(&reg, "spoofed_headers_removed_total", "Inbound identity headers removed before forwarding.", &["listener"]),
            connections: int_gauge(&reg, "connections", "Open client connections.", &["listener"]),
            connection_limit_reached_total: counter(&reg, "connection_limit_reached_total", "Times accepting paused because max_connections was reached.", &["listener"]),
            connection_errors_total: counter(&reg, "connection_errors_total", "Client connections closed on an error, by kind (header_timeout, too_large, parse, io, tls), and failed accept calls (accept).", &["listener", "kind"]),
            config_reloads_total: counter(&reg, "config_reloads_total", "Config reloads by result (ok, error).", &["result"]),
            dpop_proofs_total: counter(&reg, "dpop_proofs_total", "DPoP proofs checked, by provider and result (ok or the check that failed).", &["provider", "result"]),
            sender_constraint_total: counter(&reg, "sender_constraint_total", "Sender-constraint decisions by provider, kind (dpop, mtls, bearer) and result.", &["provider", "kind", "result"]),
            dpop_replay_evictions_total: {
                let c = prometheus::IntCounter::with_opts(Opts::new("dpop_replay_evictions_total", "DPoP proof jtis dropped from the replay cache inside their window because it was full (raise dpop.replay_cache_entries).").namespace(NS)).expect("valid metric");
                reg.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            config_info: int_gauge(&reg, "config_info", "1 for the hash of the live config.", &["hash"]),
            verify_duration,
            upstream_duration,
            jwks_fetch_duration,
            build_info,
            start_time,
            registry: reg,
        }
    }

    /// Text exposition of every collector.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
