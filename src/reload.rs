//! The runtime that owns the live configuration: provider key mirrors (one background task
//! each) and the compiled `Policy` that every listener reads through an `ArcSwap`.
//!
//! A reload loads the file again (with the same environment and flags), validates it as a
//! whole, and only then swaps: providers whose key settings did not change keep their key
//! sets and refresh schedules; new providers are fetched (bounded wait) before the new
//! policy goes live; removed ones are stopped. An invalid config changes nothing, is logged
//! with its file and key, and is counted. The file is watched by content hash, which sees
//! the kubelet's ConfigMap symlink swap as well as in-place edits; SIGHUP reloads at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{Authenticator, Provider};
use crate::config::{self, CliOverrides, Config, ProviderConfig};
use crate::jwks::fetch::Fetcher;
use crate::jwks::refresh::{ConfiguredSource, Mirror};
use crate::jwks::ProviderKeys;
use crate::metrics::Metrics;
use crate::policy::Policy;

/// What a provider's key mirror depends on: its key settings and the cache directory.
type Fingerprint = (ProviderConfig, Option<PathBuf>);

struct MirrorHandle {
    keys: Arc<ProviderKeys>,
    fingerprint: Fingerprint,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The live configuration and the tasks that serve it.
pub struct Runtime {
    /// Collectors.
    pub metrics: Arc<Metrics>,
    /// The policy every listener reads.
    pub policy: Arc<ArcSwap<Policy>>,
    fetcher: Fetcher,
    mirrors: tokio::sync::Mutex<HashMap<String, MirrorHandle>>,
    current: Mutex<Config>,
    file: Option<PathBuf>,
    cli: CliOverrides,
}

/// The settings of a provider that decide its key mirror: everything but claim rules, plus
/// where the mirror persists its keys.
fn key_fingerprint(p: &ProviderConfig, cache_dir: &Option<PathBuf>) -> Fingerprint {
    let d = ProviderConfig::default();
    let key_settings = ProviderConfig {
        audiences: d.audiences,
        audience_claim: d.audience_claim,
        leeway: d.leeway,
        require_exp: d.require_exp,
        max_token_lifetime: d.max_token_lifetime,
        typ: d.typ,
        required_claims: d.required_claims,
        required_scopes: d.required_scopes,
        claim_headers: d.claim_headers,
        tenant_claim: d.tenant_claim,
        allowed_tenants: d.allowed_tenants,
        ..p.clone()
    };
    (key_settings, cache_dir.clone())
}

/// A short hash of the effective config (for `jwks_sidecar_config_info`).
pub fn config_hash(c: &Config) -> String {
    let text = serde_json::to_string(c).unwrap_or_default();
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// Builds the first policy (no waiting for keys: readiness reports them).
    pub async fn new(
        config: Config,
        file: Option<PathBuf>,
        cli: CliOverrides,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Runtime>, String> {
        let placeholder = Policy::new(
            &config,
            Arc::new(Authenticator::with_keys(
                &config,
                metrics.clone(),
                Provider::new_keys,
            )),
        )?;
        let rt = Arc::new(Runtime {
            metrics,
            policy: Arc::new(ArcSwap::from_pointee(placeholder)),
            fetcher: Fetcher::new(),
            mirrors: tokio::sync::Mutex::new(HashMap::new()),
            current: Mutex::new(config.clone()),
            file,
            cli,
        });
        rt.apply(&config, false).await?;
        Ok(rt)
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    async fn apply(&self, config: &Config, wait_for_new: bool) -> Result<(), String> {
        let mut mirrors = self.mirrors.lock().await;
        let mut keep: HashMap<String, Arc<ProviderKeys>> = HashMap::new();
        let mut started: Vec<(String, MirrorHandle)> = Vec::new();
        for p in &config.providers {
            let fp = key_fingerprint(p, &config.jwks.cache_dir);
            match mirrors.get(&p.name) {
                Some(h) if h.fingerprint == fp => {
                    keep.insert(p.name.clone(), h.keys.clone());
                }
                _ => {
                    let keys = Provider::new_keys(p);
                    let fetcher = crate::fetcher_for(p, &self.fetcher)?;
                    let mirror = Mirror {
                        keys: keys.clone(),
                        source: ConfiguredSource::new(fetcher, p, Some(keys.clone())),
                        metrics: self.metrics.clone(),
                        settings: crate::mirror_settings(p),
                        persist_path: config
                            .jwks
                            .cache_dir
                            .as_ref()
                            .map(|d| d.join(format!("{}.json", p.name))),
                    };
                    let (stop, stop_rx) = watch::channel(false);
                    let task = tokio::spawn(mirror.run(stop_rx));
                    keep.insert(p.name.clone(), keys.clone());
                    started.push((
                        p.name.clone(),
                        MirrorHandle {
                            keys,
                            fingerprint: fp,
                            stop,
                            task,
                        },
                    ));
                }
            }
        }
        if wait_for_new {
            for (name, h) in &started {
                let p = config.providers.iter().find(|p| &p.name == name);
                let limit = p.map_or(Duration::from_secs(10), |p| {
                    p.fetch_timeout.min(Duration::from_secs(10))
                });
                let deadline = tokio::time::Instant::now() + limit;
                while !h.keys.ready() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !h.keys.ready() {
                    tracing::warn!(provider = %name, "new provider has no keys yet; its requests get 503 until they load");
                }
            }
        }
        let auth = Arc::new(Authenticator::with_keys(
            config,
            self.metrics.clone(),
            |p| {
                keep.get(&p.name)
                    .cloned()
                    .unwrap_or_else(|| Provider::new_keys(p))
            },
        ));
        let policy = match Policy::new(config, auth) {
            Ok(p) => p,
            Err(e) => {
                for (_, h) in started {
                    let _ = h.stop.send(true);
                }
                return Err(e);
            }
        };
        self.policy.store(Arc::new(policy));
        // Retire mirrors that are gone or were replaced.
        for (name, h) in started {
            if let Some(old) = mirrors.insert(name, h) {
                let _ = old.stop.send(true);
            }
        }
        let live: Vec<String> = config.providers.iter().map(|p| p.name.clone()).collect();
        let gone: Vec<String> = mirrors
            .keys()
            .filter(|n| !live.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = mirrors.remove(&name) {
                let _ = old.stop.send(true);
                tracing::info!(provider = %name, "provider removed");
            }
        }
        self.metrics.config_info.reset();
        self.metrics
            .config_info
            .with_label_values(&[&config_hash(config)])
            .set(1);
        if let Ok(mut c) = self.current.lock() {
            *c = config.clone();
        }
        Ok(())
    }

    /// Loads the file again and swaps the policy if the new config is valid.
    pub async fn reload(&self) -> Result<(), String> {
        let loaded = config::load(self.file.as_deref(), &self.cli).map_err(|e| e.to_string());
        let result = match loaded {
            Ok(new) => {
                let old = self.config();
                if new.proxy.listen != old.proxy.listen
                    || new.admin.listen != old.admin.listen
                    || new.authz.listen != old.authz.listen
                    || new.authz.grpc_listen != old.authz.grpc_listen
                    || new.proxy.tls != old.proxy.tls
                    || new.proxy.upstream != old.proxy.upstream
                {
                    tracing::warn!("listener addresses, TLS and upstream changes take effect at the next restart");
                }
                self.apply(&new, true).await
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(()) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(hash = %config_hash(&self.config()), "configuration reloaded");
            }
            Err(e) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e.trim_end(), "configuration reload rejected; the previous configuration stays active");
            }
        }
        result
    }

    /// Stops every mirror task and waits for them.
    pub async fn stop(&self) {
        let mut mirrors = self.mirrors.lock().await;
        for (_, h) in mirrors.drain() {
            let _ = h.stop.send(true);
            let _ = h.task.await;
        }
    }

    /// Watches the config file (content hash every `interval`) and SIGHUP until shutdown.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        watch_file: bool,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let digest = |p: &PathBuf| {
            std::fs::read(p).ok().map(|b| {
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b)
                    .as_ref()
                    .to_vec()
            })
        };
        let mut last = self.file.as_ref().and_then(digest);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let sighup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let sighup = std::future::pending::<()>();
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.reload().await;
                    last = self.file.as_ref().and_then(digest);
                }
                _ = tokio::time::sleep(interval), if watch_file && self.file.is_some() => {
                    let now = self.file.as_ref().and_then(digest);
                    if now.is_some() && now != last {
                        last = now;
                        tracing::info!("config file changed: reloading");
                        let _ = self.reload().await;
                    }
                }
            }
        }
    }
}
