//! The OpenID provider (`e2e/oidc/provider.mjs`, a child process) and the test's OAuth client
//! at its token endpoint.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use jwks_sidecar::testkit::SigningKey;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;

use crate::support::{request, DEADLINE};
use crate::util::{describe, parse, terminate, urlencode};
use crate::{Result, CLIENT_ID, E2E_DIR};

/// `provider.mjs` as a child process. Its stdin stays open while this lives: the provider
/// exits when it closes (the test went away) as well as on SIGTERM.
pub struct OpenIdProvider {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    pub issuer: String,
    pub kids: Vec<String>,
    client: Value,
    /// Lines it printed: it prints the same warnings on every restart, each is shown once.
    seen: Arc<Mutex<HashSet<String>>>,
}

impl OpenIdProvider {
    /// Starts provider.mjs on `port` (0: any) with these signing keys (the first one signs
    /// new tokens), retrying a few times while the port is still taken (a restart in place).
    pub async fn start(
        port: u16,
        keys: &[&SigningKey],
        client: Value,
        seen: Arc<Mutex<HashSet<String>>>,
    ) -> Result<OpenIdProvider> {
        let keys: Vec<_> = (keys.iter())
            .map(|k| json!({"kid": k.kid, "pkcs8": STANDARD.encode(k.pkcs8_der())}))
            .collect();
        // One client, or a list of them.
        let clients = if client.is_array() {
            client.clone()
        } else {
            json!([client])
        };
        let config = json!({"keys": keys, "clients": clients});
        let mut last = String::new();
        for attempt in 1..=5u64 {
            let mut child = Command::new("node")
                .arg(Path::new(E2E_DIR).join("provider.mjs"))
                .args(["--port", &port.to_string()])
                .current_dir(E2E_DIR)
                .env_remove("DEBUG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot run node (Node.js >= 20 is needed): {e}"))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let (tx, rx) = oneshot::channel();
            show_lines(child.stdout.take().expect("piped"), seen.clone(), Some(tx));
            show_lines(child.stderr.take().expect("piped"), seen.clone(), None);
            (stdin.write_all(format!("{config}\n").as_bytes()).await)
                .map_err(|e| format!("provider stdin: {e}"))?;
            // The ready (or error) line; the reader drops `tx` at the end of stdout (exit).
            let line = match tokio::time::timeout(DEADLINE, rx).await {
                Ok(Ok(line)) => line,
                Ok(Err(_)) => json!({"error": "the provider exited without a ready line"}),
                Err(_) => json!({"error": format!("not ready within {DEADLINE:?}")}),
            };
            if let (Some(issuer), Some(p)) = (line["issuer"].as_str(), line["port"].as_u64()) {
                return Ok(OpenIdProvider {
                    child,
                    _stdin: stdin,
                    port: u16::try_from(p).map_err(|_| format!("port {p}"))?,
                    issuer: issuer.to_string(),
                    kids: serde_json::from_value(line["kids"].clone()).unwrap_or_default(),
                    client,
                    seen,
                });
            }
            last = line.to_string();
            terminate(&mut child, Duration::from_secs(5)).await;
            if line["code"] != "EADDRINUSE" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
        }
        Err(format!("could not start the OpenID provider: {last}"))
    }

    /// Stops it and starts a new one on the same port (same issuer) with these keys.
    pub async fn restart(&mut self, keys: &[&SigningKey]) -> Result<()> {
        self.stop().await;
        let (client, seen) = (self.client.clone(), self.seen.clone());
        let issuer = self.issuer.clone();
        *self = OpenIdProvider::start(self.port, keys, client, seen).await?;
        if self.issuer != issuer {
            return Err(format!("restarted as {}, not {issuer}", self.issuer));
        }
        Ok(())
    }

    pub async fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5)).await;
    }
}

/// Prints the lines of a child's output (each distinct line once); with `first_json`, the
/// first line that is a JSON object goes there instead.
fn show_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    seen: Arc<Mutex<HashSet<String>>>,
    mut first_json: Option<oneshot::Sender<Value>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                if let Some(tx) = first_json.take() {
                    let _ = tx.send(v);
                    continue;
                }
            }
            if seen.lock().expect("lock").insert(line.clone()) {
                println!("       provider: {line}");
            }
        }
    });
}

/// The test's OAuth client (client_secret_basic) at the provider's token endpoint.
pub struct OAuthClient {
    pub token_endpoint: String,
    pub secret: String,
}

impl OAuthClient {
    /// An access token from the client_credentials grant for `resource` (RFC 8707).
    pub async fn token(&self, resource: &str, scope: Option<&str>) -> Result<String> {
        self.token_with(resource, scope, None).await.map(|(t, _)| t)
    }

    /// The same, with a DPoP proof for the token endpoint when given (the token is then
    /// bound to the proof's key); returns the token and its `token_type`.
    pub async fn token_with(
        &self,
        resource: &str,
        scope: Option<&str>,
        dpop: Option<&str>,
    ) -> Result<(String, String)> {
        let extra: Vec<(&str, &str)> = dpop.map(|p| ("dpop", p)).into_iter().collect();
        self.token_for(CLIENT_ID, resource, scope, &extra).await
    }

    /// A client_credentials token for `client_id` (same secret), with extra request headers.
    pub async fn token_for(
        &self,
        client_id: &str,
        resource: &str,
        scope: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Result<(String, String)> {
        let mut form = format!(
            "grant_type=client_credentials&resource={}",
            urlencode(resource)
        );
        if let Some(scope) = scope {
            form.push_str(&format!("&scope={}", urlencode(scope)));
        }
        let credentials = format!("{}:{}", urlencode(client_id), urlencode(&self.secret));
        let basic = format!("Basic {}", STANDARD.encode(credentials));
        let mut headers = vec![
            ("authorization", basic.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        headers.extend_from_slice(extra);
        let body = Bytes::from(form);
        let (st, _, body) = request("POST", &self.token_endpoint, &headers, body).await;
        let doc = parse(&body);
        match doc["access_token"].as_str() {
            Some(t) if st == 200 => Ok((
                t.to_string(),
                doc["token_type"].as_str().unwrap_or("").to_string(),
            )),
            _ => Err(format!("token endpoint: {}", describe(st.as_u16(), &body))),
        }
    }
}
