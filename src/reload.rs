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

use crate::config::{CliOverrides, Config};
use crate::jwks::fetch::Fetcher;
use crate::jwks::refresh::Mirror;
use crate::jwks::source::{fetcher_for, ConfiguredSource};
use crate::jwks::{KeySettings, ProviderKeys};
use crate::metrics::Metrics;
use crate::plan::{self, Plan};
use crate::policy::Policy;

struct MirrorHandle {
    keys: Arc<ProviderKeys>,
    /// The compiled key settings the mirror runs with: a reload keeps the mirror exactly
    /// when the new plan's settings are equal.
    settings: KeySettings,
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

/// A short hash of the effective config (for `jwks_sidecar_config_info`).
pub fn config_hash(c: &Config) -> String {
    let text = serde_json::to_string(c).unwrap_or_default();
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl Runtime {
    /// Builds the first policy (no waiting for keys: readiness reports them).
    pub async fn new(
        plan: &Plan,
        file: Option<PathBuf>,
        cli: CliOverrides,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Runtime>, String> {
        let placeholder = Policy::new(plan, Arc::new(plan.authenticator(metrics.clone())));
        let rt = Arc::new(Runtime {
            metrics,
            policy: Arc::new(ArcSwap::from_pointee(placeholder)),
            fetcher: Fetcher::new(),
            mirrors: tokio::sync::Mutex::new(HashMap::new()),
            current: Mutex::new(plan.config.clone()),
            file,
            cli,
        });
        rt.apply(plan, false).await?;
        Ok(rt)
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Starts the mirror of one provider.
    fn start_mirror(&self, settings: &KeySettings) -> Result<MirrorHandle, String> {
        let keys = Arc::new(ProviderKeys::new(settings));
        let mirror = Mirror {
            keys: keys.clone(),
            source: ConfiguredSource::new(
                fetcher_for(settings, &self.fetcher)?,
                settings,
                Some(keys.clone()),
            ),
            metrics: self.metrics.clone(),
            settings: settings.mirror.clone(),
            persist_path: settings.persist_path.clone(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(mirror.run(stop_rx));
        Ok(MirrorHandle {
            keys,
            settings: settings.clone(),
            stop,
            task,
        })
    }

    async fn apply(&self, plan: &Plan, wait_for_new: bool) -> Result<(), String> {
        let mut mirrors = self.mirrors.lock().await;
        let mut keep: HashMap<String, Arc<ProviderKeys>> = HashMap::new();
        let mut started: Vec<(String, MirrorHandle)> = Vec::new();
        for p in &plan.providers {
            match mirrors.get(&p.keys.name) {
                Some(h) if h.settings == p.keys => {
                    keep.insert(p.keys.name.clone(), h.keys.clone());
                }
                _ => {
                    let h = match self.start_mirror(&p.keys) {
                        Ok(h) => h,
                        Err(e) => {
                            for (_, h) in started {
                                let _ = h.stop.send(true);
                            }
                            return Err(e);
                        }
                    };
                    keep.insert(p.keys.name.clone(), h.keys.clone());
                    started.push((p.keys.name.clone(), h));
                }
            }
        }
        if wait_for_new {
            // The new mirrors all fetch at once; each is awaited up to its own deadline
            // (start + its fetch timeout, at most 10 s), so a reload that adds a thousand
            // providers, some dead, waits about one timeout, not one per dead provider.
            let start = tokio::time::Instant::now();
            for (name, h) in &started {
                let deadline = start + h.settings.fetch.timeout.min(Duration::from_secs(10));
                if tokio::time::timeout_at(deadline, h.keys.wait_ready())
                    .await
                    .is_err()
                {
                    tracing::warn!(provider = %name, "new provider has no keys yet; its requests get 503 until they load");
                }
            }
        }
        let auth = Arc::new(plan.authenticator_with(self.metrics.clone(), |p| {
            keep.get(&p.keys.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(ProviderKeys::new(&p.keys)))
        }));
        let mut policy = Policy::new(plan, auth);
        // Same assertion key settings: keep the keys (no rotation, retired keys kept).
        if let (Some(old), Some(new)) = (&self.policy.load().assertion, &policy.assertion) {
            if let Some(kept) = new.keep_keys_of(old) {
                policy.assertion = Some(Arc::new(kept));
            }
        }
        // Same DPoP settings: keep the replay cache (a reload must not let a proof replay).
        let old_dpop = self.policy.load().dpop.clone();
        if old_dpop.settings == policy.dpop.settings {
            policy.dpop = old_dpop;
        }
        self.policy.store(Arc::new(policy));
        // Retire mirrors that are gone or were replaced.
        for (name, h) in started {
            if let Some(old) = mirrors.insert(name, h) {
                let _ = old.stop.send(true);
            }
        }
        let gone: Vec<String> = mirrors
            .keys()
            .filter(|n| !plan.providers.iter().any(|p| &p.keys.name == *n))
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
            .with_label_values(&[&config_hash(&plan.config)])
            .set(1);
        if let Ok(mut c) = self.current.lock() {
            *c = plan.config.clone();
        }
        Ok(())
    }

    /// Loads the file again and swaps the policy if the new config is valid.
    pub async fn reload(&self) -> Result<(), String> {
        // Reading and compiling a thousand providers takes ~20 ms: off the runtime's threads,
        // so accept loops and key refreshes do not stall behind it.
        let (file, cli) = (self.file.clone(), self.cli.clone());
        let loaded = tokio::task::spawn_blocking(move || plan::load(file.as_deref(), &cli))
            .await
            .map_err(|e| format!("config load task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let result = match loaded {
            Ok(plan) => {
                let new = &plan.config;
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
                self.apply(&plan, true).await
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
