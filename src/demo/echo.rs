//! The echo upstream: answers every request with JSON describing what it received (method,
//! path, headers, body size), and echoes bytes back after an upgrade.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::serve_plain;

/// An upstream that answers every request with JSON describing what it received.
pub struct EchoUpstream {
    /// Bound address.
    pub addr: SocketAddr,
    /// Requests served.
    pub requests: Arc<AtomicUsize>,
}

impl EchoUpstream {
    /// Starts on 127.0.0.1 port 0.
    pub async fn start() -> std::io::Result<EchoUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        serve_plain(listener, move |req| {
            count.fetch_add(1, Ordering::SeqCst);
            echo_handle(req)
        });
        Ok(EchoUpstream { addr, requests })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn echo_handle(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let io = TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut r =
            crate::response::local(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        if let Some(up) = req.headers().get(http::header::UPGRADE) {
            r.headers_mut().insert(http::header::UPGRADE, up.clone());
        }
        return r;
    }
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    // `/slow?ms=N` answers after N milliseconds (timeouts and graceful-drain tests).
    if let Some((_, q)) = path.split_once("/slow?ms=") {
        let ms: u64 = q.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    // Count the body without keeping it: uploads of any size stay flat in memory.
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let doc = json!({"method": method, "path": path, "headers": headers, "body_bytes": body_bytes});
    crate::response::local(StatusCode::OK, "application/json", doc.to_string())
}
