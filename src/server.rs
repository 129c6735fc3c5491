//! Accept loops shared by every listener: optional TLS (rustls, ALPN h2 + http/1.1),
//! HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one port, upgrades, limits (open
//! connections with back-pressure, request head size and header count, HTTP/2 streams and
//! header list size), a header read timeout against slow clients (it also bounds idle
//! keep-alive connections: the timer starts as soon as a connection waits for a request),
//! connection-error metrics, and graceful drain: on shutdown the listener closes, in-flight
//! requests finish within the grace period, then remaining connections are dropped.
//!
//! With several workers (see [`Workers`]) the accept loops hand each connection to one
//! worker thread, round-robin, and the connection lives there until it closes: its socket,
//! timers, request handling and upstream pool all on that thread, each worker a
//! single-threaded runtime. Envoy's worker model, and unlike tokio's work-stealing runtime
//! no request wakes another thread (measured: the multi-thread runtime cost 38 % more CPU
//! per request than a current-thread one, even with both workers on one core).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The connection workers: single-threaded runtimes that each serve whole connections.
/// Empty (the default) means connections run on the current runtime. A value handed to every
/// listener and to the upstream client pool, never a global.
#[derive(Clone, Default)]
pub struct Workers {
    inner: Arc<WorkerSet>,
}

#[derive(Default)]
struct WorkerSet {
    handles: Vec<tokio::runtime::Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Workers on these runtimes (see the binary's `start_workers`).
    pub fn new(handles: Vec<tokio::runtime::Handle>) -> Self {
        Workers {
            inner: Arc::new(WorkerSet {
                handles,
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// The worker runtimes (empty: connections run on the current one).
    pub fn handles(&self) -> &[tokio::runtime::Handle] {
        &self.inner.handles
    }

    /// How many connection workers there are (at least 1).
    pub fn count(&self) -> usize {
        self.inner.handles.len().max(1)
    }

    /// The next worker, round-robin; `None` without workers.
    fn next(&self) -> Option<&tokio::runtime::Handle> {
        let h = &self.inner.handles;
        (!h.is_empty()).then(|| &h[self.inner.next.fetch_add(1, Ordering::Relaxed) % h.len()])
    }
}

thread_local! {
    static WORKER_INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as connection worker `index` (see [`worker_index`]).
pub fn enter_worker(index: usize) {
    WORKER_INDEX.with(|w| w.set(index));
}

/// The connection worker this thread is (0 outside workers): picks the thread's own
/// upstream connection pool.
pub fn worker_index() -> usize {
    WORKER_INDEX.with(Cell::get)
}

/// Runs `serve_conn` for an accepted connection: on the next worker's runtime (the socket
/// re-registered with that worker's reactor), or on the current runtime without workers.
fn spawn_conn<M, F>(stream: TcpStream, opts: &ServeOptions, serve_conn: M)
where
    M: FnOnce(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Some(worker) = opts.workers.next() else {
        tokio::spawn(serve_conn(stream));
        return;
    };
    // Dropping `serve_conn` on failure releases the connection's slot (see `ConnSlot`).
    let failed = |opts: &ServeOptions, e: std::io::Error| {
        count_error(opts, "io");
        tracing::warn!(listener = opts.name, error = %e, "cannot move a connection to its worker; closed");
    };
    match stream.into_std() {
        Ok(std_stream) => {
            let opts = opts.clone();
            worker.spawn(async move {
                match TcpStream::from_std(std_stream) {
                    Ok(s) => serve_conn(s).await,
                    Err(e) => failed(&opts, e),
                }
            });
        }
        Err(e) => failed(opts, e),
    }
}

/// An open connection's share of the limits: its permit and the open-connections gauge,
/// both released when the connection ends however it ends.
struct ConnSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    gauge: Option<prometheus::IntGauge>,
}

/// A listener's connection cap and open-connections gauge.
struct ConnLimit {
    limit: Arc<tokio::sync::Semaphore>,
    gauge: Option<prometheus::IntGauge>,
    opts: ServeOptions,
}

impl ConnLimit {
    fn new(opts: &ServeOptions) -> Self {
        ConnLimit {
            limit: Arc::new(tokio::sync::Semaphore::new(
                opts.limits.max_connections.max(1),
            )),
            gauge: opts
                .metrics
                .as_ref()
                .map(|m| m.connections.with_label_values(&[opts.name])),
            opts: opts.clone(),
        }
    }

    /// A slot for the next connection: at the cap, counts it and waits (the kernel backlog
    /// holds new clients) until a connection ends; `None` when `shutdown` flips first.
    async fn acquire(&self, shutdown: &mut watch::Receiver<bool>) -> Option<ConnSlot> {
        let permit = match self.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(m) = &self.opts.metrics {
                    m.connection_limit_reached_total
                        .with_label_values(&[self.opts.name])
                        .inc();
                }
                tracing::warn!(
                    listener = self.opts.name,
                    max = self.opts.limits.max_connections,
                    "connection limit reached; pausing accept"
                );
                tokio::select! {
                    p = self.limit.clone().acquire_owned() => p.ok()?,
                    _ = shutdown.wait_for(|s| *s) => return None,
                }
            }
        };
        if let Some(g) = &self.gauge {
            g.inc();
        }
        Some(ConnSlot {
            _permit: permit,
            gauge: self.gauge.clone(),
        })
    }

    /// A failed `accept` (EMFILE and the like): counted, logged, and a short back-off instead
    /// of spinning.
    async fn accept_failed(&self, e: &std::io::Error) {
        count_error(&self.opts, "accept");
        tracing::warn!(listener = self.opts.name, error = %e, "accept failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// Per-listener connection settings.
#[derive(Clone)]
pub struct ServeOptions {
    /// Listener name for logs and metrics.
    pub name: &'static str,
    /// Limits and timeouts.
    pub limits: ServeSettings,
    /// Connection metrics.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Where accepted connections are served.
    pub workers: Workers,
}

/// The limits and timeouts every listener shares, compiled once from `[proxy]` (see
/// `plan::Plan::serve`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    /// Time allowed for a request's headers (HTTP/1) and for the TLS handshake.
    pub header_read_timeout: Duration,
    /// Time in-flight requests get after shutdown starts.
    pub grace: Duration,
    /// Open connections at most per listener; accepting pauses at the cap.
    pub max_connections: usize,
    /// Largest HTTP/1 request head / HTTP/2 header list.
    pub max_header_bytes: usize,
    /// Most HTTP/1 request headers.
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_h2_streams: u32,
}

impl ServeSettings {
    /// The settings of a `[proxy]` section.
    pub fn from_config(p: &crate::config::ProxyConfig) -> Self {
        ServeSettings {
            header_read_timeout: p.header_read_timeout,
            grace: p.shutdown_grace,
            max_connections: p.max_connections,
            max_header_bytes: p.max_header_bytes,
            max_headers: p.max_headers,
            max_h2_streams: p.max_h2_streams,
        }
    }
}

impl ServeOptions {
    /// Options for a listener named `name`.
    pub fn new(
        name: &'static str,
        s: &ServeSettings,
        metrics: Arc<crate::metrics::Metrics>,
        workers: Workers,
    ) -> Self {
        ServeOptions {
            name,
            limits: s.clone(),
            metrics: Some(metrics),
            workers,
        }
    }
}

/// The metric label for an error that closed a connection.
fn error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return "header_timeout";
            }
            if h.is_parse_too_large() {
                return "too_large";
            }
            if h.is_parse() || h.is_parse_status() {
                return "parse";
            }
        }
        if err.downcast_ref::<std::io::Error>().is_some() {
            return "io";
        }
        cur = err.source();
    }
    "other"
}

fn count_error(opts: &ServeOptions, kind: &'static str) {
    if let Some(m) = &opts.metrics {
        m.connection_errors_total
            .with_label_values(&[opts.name, kind])
            .inc();
    }
}

/// Builds a TLS acceptor from `[proxy.tls]`: PEM certificate chain and key, and with
/// `client_ca_file` client certificates issued by that CA (optional or required).
pub fn tls_acceptor(t: &crate::config::TlsConfig) -> Result<TlsAcceptor, String> {
    crate::install_crypto_provider();
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert_file, key_file) = (&t.cert_file, &t.key_file);
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no PEM private key found", key_file.display())
        }
        e => format!("{}: {e}", key_file.display()),
    })?;
    let builder = rustls::ServerConfig::builder();
    let builder = match &t.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let cas = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            for c in cas {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no PEM CA certificate found", ca.display()));
            }
            let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
            let v = match t.client_auth {
                crate::config::ClientAuth::Optional => v.allow_unauthenticated(),
                crate::config::ClientAuth::Required => v,
            };
            builder
                .with_client_cert_verifier(v.build().map_err(|e| format!("{}: {e}", ca.display()))?)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate/key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The client certificate of a mutual-TLS connection, as RFC 8705 names it: the base64url
/// SHA-256 of its DER (`x5t#S256`). Every request of the connection carries it as an
/// extension.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<str>);

impl ClientCert {
    /// The thumbprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> ClientCert {
        ClientCert(crate::jose::sha256_b64url(der).into())
    }
}

/// One accepted connection, start to end: the TLS handshake (bounded by the header read
/// timeout), then HTTP/1.1 or HTTP/2 with upgrades, watched for graceful shutdown. Holds the
/// connection's `slot` until it ends.
#[allow(clippy::too_many_arguments)]
async fn serve_conn<H, Fut, B>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    handler: H,
    opts: ServeOptions,
    _slot: ConnSlot,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = opts.name;
    let service = move |cert: Option<ClientCert>| {
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            if let Some(c) = &cert {
                req.extensions_mut().insert(c.clone());
            }
            let fut = handler(peer, req);
            async move { Ok::<_, Infallible>(fut.await) }
        })
    };
    let result = match tls {
        None => {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service(None));
            watcher.watch(conn.into_owned()).await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(opts.limits.header_read_timeout, acceptor.accept(stream));
            let tls_stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCert::of_der(c.as_ref()));
            let conn =
                builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service(cert));
            watcher.watch(conn.into_owned()).await
        }
    };
    if let Err(e) = result {
        count_error(&opts, error_kind(e.as_ref()));
        tracing::debug!(listener = name, %peer, error = %e, "connection closed with an error");
    }
}

/// Serves `handler` on `listener` until `shutdown` becomes true, then drains.
pub async fn serve<H, Fut, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: H,
    mut shutdown: watch::Receiver<bool>,
    opts: ServeOptions,
) where
    H: Fn(SocketAddr, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.limits.header_read_timeout)
        .max_buf_size(opts.limits.max_header_bytes.max(8192))
        .max_headers(opts.limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(opts.limits.max_h2_streams)
        .max_header_list_size(opts.limits.max_header_bytes.min(u32::MAX as usize) as u32)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let limit = ConnLimit::new(&opts);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    if *shutdown.borrow() {
        return;
    }
    loop {
        let Some(slot) = limit.acquire(&mut shutdown).await else {
            break;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    limit.accept_failed(&e).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let conn_opts = opts.clone();
        let tls = tls.clone();
        spawn_conn(stream, &opts, move |stream| {
            serve_conn(
                stream, peer, tls, builder, watcher, handler, conn_opts, slot,
            )
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(listener = opts.name, connections = open, grace = ?opts.limits.grace, "draining connections");
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(opts.limits.grace) => {
            tracing::warn!(listener = opts.name, "grace period over; closing remaining connections");
        }
    }
}
