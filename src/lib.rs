//! jwks-sidecar: a JWT-verifying reverse proxy with a live JWKS mirror.
//!
//! Module map (every module, one line each):
//! - `config`: the configuration types, layered loading, and the problems of the values.
//! - `plan`: the one compile step: `Config` -> `Plan` (key settings, rules) or problems.
//! - `jose`: the algorithm table, JWK/PEM/SPKI/x509 keys, JWS parsing and signatures, trace.
//! - `jwks`: per-provider key stores and the mirror task (sources, freshness, persistence).
//! - `auth`: token extraction, provider choice, claim checks, claim headers, token cache.
//! - `rules`: route rules compiled for matching.
//! - `policy`: `decide`, the one function that turns a request into allow or deny.
//! - `path`: path normalisation used for matching and forwarding.
//! - `error`: `Reject`, the refusal reasons, and their HTTP shape (RFC 6750).
//! - `server`: accept, connection limits, TLS, workers and graceful drain for every listener.
//! - `resource`: OAuth protected-resource metadata (RFC 9728).
//! - `response`: the one helper for answers made locally.
//! - `assertion`: the signed identity for the app (`[assertion]`).
//! - `dpop`: DPoP proofs (RFC 9449): the proof check, the `htu` comparison, the replay cache.
//! - `proxy`, `upstream`: the inline reverse proxy and its upstream client.
//! - `authz`: the decision service for gateways (HTTP conventions and gRPC Check).
//! - `admin`: metrics, health, readiness, provider status, the mirrored JWKS.
//! - `reload`: the live policy and the mirrors it keeps across reloads.
//! - `check`, `explain`: the `check` and `explain` commands.
//! - `metrics`: every collector.
//! - `telemetry`: structured logs (JSON or text) and the access log.
//! - `testkit`, `demo`: key generation and token minting; the built-in demo and its IdP.
//!
//! `start()` wires listeners and background tasks and returns their bound addresses, which
//! is what the integration tests use; `run()` adds signal handling for the binary.

#![warn(missing_docs)]

pub mod admin;
pub mod assertion;
pub mod auth;
pub mod authz;
pub mod check;
pub mod config;
pub mod demo;
pub mod dpop;
pub mod error;
pub mod explain;
pub mod jose;
pub mod jwks;
pub mod metrics;
pub mod path;
pub mod plan;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod resource;
pub mod response;
pub mod rules;
pub mod server;
pub mod telemetry;
pub mod testkit;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::metrics::Metrics;

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Seconds since the Unix epoch as a float.
pub fn unix_now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A started sidecar: bound addresses and the handles to stop it.
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener listens, if enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Where the HTTP decision listener listens, if enabled.
    pub authz_addr: Option<SocketAddr>,
    /// Where the gRPC decision listener listens, if enabled.
    pub authz_grpc_addr: Option<SocketAddr>,
    /// The authentication pipeline at start (see `runtime` for the live one).
    pub auth: Arc<Authenticator>,
    /// Collectors.
    pub metrics: Arc<Metrics>,
    /// The live configuration (reload).
    pub runtime: Arc<reload::Runtime>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts the graceful shutdown of every listener and background task.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until every listener has drained and every mirror has stopped.
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        self.runtime.stop().await;
    }

    /// Resolves once every current provider has loaded keys (the readiness latch `/readyz`
    /// reports); never resolves for a provider whose keys never load, so callers bound it.
    pub async fn keys_ready(&self) {
        for p in self.current_auth().providers() {
            p.keys.wait_ready().await;
        }
    }

    /// The authenticator in force now (after reloads).
    pub fn current_auth(&self) -> Arc<Authenticator> {
        self.runtime.policy.load().auth.clone()
    }
}

/// Compiles `config`, binds every listener, starts the key mirrors, and returns at once (no
/// reload source).
pub async fn start(config: Config) -> Result<Running, String> {
    let plan = plan::compile(config, None).map_err(|e| e.to_string())?;
    start_with(plan, None, config::CliOverrides::default()).await
}

/// Like `start`, from a compiled plan, reloading from `file` (plus environment and `cli`)
/// on change or SIGHUP.
pub async fn start_with(
    plan: plan::Plan,
    file: Option<PathBuf>,
    cli: config::CliOverrides,
) -> Result<Running, String> {
    start_on(plan, file, cli, server::Workers::default()).await
}

/// Like `start_with`, serving connections on `workers`.
pub async fn start_on(
    plan: plan::Plan,
    file: Option<PathBuf>,
    cli: config::CliOverrides,
    workers: server::Workers,
) -> Result<Running, String> {
    install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let runtime = reload::Runtime::new(&plan, file, cli, metrics.clone()).await?;
    let serve = plan.serve.clone();
    let config = plan.config;
    let policy = runtime.policy.clone();
    let auth = policy.load().auth.clone();
    let mut listeners = Listeners {
        opts: server::ServeOptions::new("proxy", &serve, metrics.clone(), workers.clone()),
        shutdown: shutdown_rx.clone(),
        tasks: Vec::new(),
    };

    let tls = match &config.proxy.tls {
        Some(t) => Some(server::tls_acceptor(t)?),
        None => None,
    };
    let proxy = Arc::new(proxy::Proxy::new(
        &config.proxy,
        policy.clone(),
        tls.is_some(),
        workers.count(),
    )?);
    let proxy_addr = listeners
        .http(
            "proxy",
            "proxy.listen",
            config.proxy.listen,
            tls,
            move |peer, req| proxy.clone().handle(peer, req),
        )
        .await?;
    let (authz_addr, authz_grpc_addr, admin_addr) =
        listeners.optional(&config, &policy, &metrics).await?;
    let mut tasks = listeners.tasks;
    tasks.push(tokio::spawn(runtime.clone().watch(
        config.reload.interval,
        config.reload.watch,
        shutdown_rx,
    )));
    // The addresses actually bound (a `:0` port resolved), each only when configured: a
    // supervisor or test reads them from this line instead of racing for a "free" port.
    tracing::info!(proxy = %proxy_addr, admin = admin_addr.map(tracing::field::display),
        authz = authz_addr.map(tracing::field::display),
        authz_grpc = authz_grpc_addr.map(tracing::field::display),
        upstream = %config.proxy.upstream, providers = config.providers.len(), "jwks-sidecar started");
    Ok(Running {
        proxy_addr,
        admin_addr,
        authz_addr,
        authz_grpc_addr,
        auth,
        metrics,
        runtime,
        shutdown: shutdown_tx,
        tasks,
    })
}

/// Binds listeners and spawns their serving tasks, all with the same limits, metrics,
/// workers and shutdown signal (only the name differs).
struct Listeners {
    opts: server::ServeOptions,
    shutdown: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listeners {
    async fn bind(key: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), String> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{key} {addr}: {e}"))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        Ok((listener, bound))
    }

    fn opts(&self, name: &'static str) -> server::ServeOptions {
        server::ServeOptions {
            name,
            ..self.opts.clone()
        }
    }

    /// The listeners a config may leave out: the HTTP and gRPC decision services and admin.
    #[allow(clippy::type_complexity)]
    async fn optional(
        &mut self,
        config: &Config,
        policy: &Arc<arc_swap::ArcSwap<policy::Policy>>,
        metrics: &Arc<Metrics>,
    ) -> Result<(Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>), String> {
        let mut authz_addr = None;
        if let Some(addr) = config.authz.listen {
            let service = Arc::new(authz::http::AuthzHttp {
                policy: policy.clone(),
                paths: config.authz.clone(),
            });
            let handler = move |_peer, req| service.clone().handle(req);
            authz_addr = Some(
                self.http("authz_http", "authz.listen", addr, None, handler)
                    .await?,
            );
        }
        let mut authz_grpc_addr = None;
        if let Some(addr) = config.authz.grpc_listen {
            let service = authz::grpc::AuthzGrpc {
                policy: policy.clone(),
            };
            authz_grpc_addr = Some(self.grpc(addr, service).await?);
        }
        let mut admin_addr = None;
        if let Some(addr) = config.admin.listen {
            let admin = Arc::new(admin::Admin::new(policy.clone(), metrics.clone()));
            let handler = move |_peer, req| admin.clone().handle(req);
            admin_addr = Some(
                self.http("admin", "admin.listen", addr, None, handler)
                    .await?,
            );
        }
        Ok((authz_addr, authz_grpc_addr, admin_addr))
    }

    /// An HTTP listener (HTTP/1.1 and HTTP/2, optional TLS) serving `handler`.
    async fn http<H, Fut, B>(
        &mut self,
        name: &'static str,
        key: &str,
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: H,
    ) -> Result<SocketAddr, String>
    where
        H: Fn(SocketAddr, http::Request<hyper::body::Incoming>) -> Fut
            + Clone
            + Send
            + Sync
            + 'static,
        Fut: std::future::Future<Output = http::Response<B>> + Send + 'static,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (listener, bound) = Self::bind(key, addr).await?;
        self.tasks.push(tokio::spawn(server::serve(
            listener,
            tls,
            handler,
            self.shutdown.clone(),
            self.opts(name),
        )));
        Ok(bound)
    }

    /// The gRPC `Authorization/Check` listener.
    async fn grpc(
        &mut self,
        addr: SocketAddr,
        service: authz::grpc::AuthzGrpc,
    ) -> Result<SocketAddr, String> {
        let (listener, bound) = Self::bind("authz.grpc_listen", addr).await?;
        self.tasks.push(tokio::spawn(authz::grpc::serve(
            listener,
            service,
            self.shutdown.clone(),
            self.opts("authz_grpc"),
        )));
        Ok(bound)
    }
}

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub async fn run(
    plan: plan::Plan,
    file: Option<PathBuf>,
    cli: config::CliOverrides,
    workers: server::Workers,
) -> Result<(), String> {
    let running = start_on(plan, file, cli, workers).await?;
    wait_for_signal().await;
    tracing::info!("shutdown signal received; draining");
    running.shutdown();
    running.wait().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
