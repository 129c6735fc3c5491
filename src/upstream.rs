//! Talking to the application: a pooled keep-alive client (http or https via rustls),
//! hop-by-hop header handling, connect and response timeouts mapped to 502/504, and the
//! upgrade path (WebSocket and friends) that splices the two connections after the
//! upstream answers 101.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

/// Why forwarding failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Refused, reset or unreachable before a response (502).
    Connect,
    /// No response headers within `upstream_timeout` (504).
    Timeout,
    /// The connection broke mid-exchange or the response was invalid (502).
    Protocol,
    /// The upstream's response head is over `max_upstream_header_bytes` (502).
    HeadersTooLarge,
    /// The client's request body failed (malformed chunking, aborted upload): 400, not the
    /// upstream's fault.
    ClientBody,
}

impl UpstreamError {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Protocol => "error",
            UpstreamError::ClientBody => "client_body",
            UpstreamError::HeadersTooLarge => "headers_too_large",
        }
    }

    /// HTTP status returned to the client.
    pub fn status(self) -> u16 {
        match self {
            UpstreamError::Timeout => 504,
            UpstreamError::ClientBody => 400,
            _ => 502,
        }
    }
}

/// The application behind the proxy.
#[derive(Clone)]
pub struct Upstream {
    /// One pool per connection worker (see `server::worker_index`): a worker only reuses upstream
    /// connections whose tasks run on its own thread, so no request wakes another thread.
    clients: Arc<[Client<HttpsConnector<HttpConnector>, Incoming>]>,
    connector: HttpsConnector<HttpConnector>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    timeout: Duration,
    max_header_bytes: usize,
}

impl Upstream {
    /// Builds the pooled client for `base` (`http://host:port` or `https://...`).
    pub fn new(
        base: &str,
        connect_timeout: Duration,
        timeout: Duration,
        max_header_bytes: usize,
        workers: usize,
    ) -> Result<Self, String> {
        crate::install_crypto_provider();
        let uri: Uri = base
            .parse()
            .map_err(|e| format!("proxy.upstream {base:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or("proxy.upstream needs a scheme")?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or("proxy.upstream needs a host")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let clients = (0..workers.max(1))
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(256)
                    .http1_max_buf_size(max_header_bytes.max(8192))
                    .build(connector.clone())
            })
            .collect();
        Ok(Upstream {
            clients,
            connector,
            scheme,
            authority,
            timeout,
            max_header_bytes,
        })
    }

    /// This worker's connection pool.
    fn client(&self) -> &Client<HttpsConnector<HttpConnector>, Incoming> {
        &self.clients[crate::server::worker_index() % self.clients.len()]
    }

    /// The upstream URI for a normalised path and the original query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Uri {
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Forwards a request; the body streams in both directions.
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.timeout, self.client().request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect),
            Ok(Err(e)) if caused_by_client_body(&e) => Err(UpstreamError::ClientBody),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream request failed");
                Err(UpstreamError::Protocol)
            }
            // hyper bounds the head only roughly (its read buffer); make the limit exact.
            Ok(Ok(resp)) if head_size(resp.headers()) > self.max_header_bytes => {
                Err(UpstreamError::HeadersTooLarge)
            }
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// Forwards an upgrade request on a dedicated connection. When the upstream answers
    /// 101, the client's and the upstream's upgraded streams are spliced in a task.
    pub async fn send_upgrade(
        &self,
        req: Request<Incoming>,
        client_side: hyper::upgrade::OnUpgrade,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| UpstreamError::Connect)?;
        let exchange = async {
            let mut connector = self.connector.clone();
            let io = connector
                .call(target)
                .await
                .map_err(|_| UpstreamError::Connect)?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|_| UpstreamError::Connect)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upgrade connection ended with an error");
                }
            });
            sender
                .send_request(req)
                .await
                .map_err(|_| UpstreamError::Protocol)
        };
        let mut resp = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_side, upstream_side) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
        Ok(resp)
    }
}

/// Bytes a header section takes on the wire (names, values, separators).
pub fn head_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

/// Whether a forwarding error came from reading the client's body (hyper reports the
/// streamed body's failure as a user error).
fn caused_by_client_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// The `Upgrade` value when this is an HTTP/1.1 upgrade request (`Connection: upgrade`).
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}
