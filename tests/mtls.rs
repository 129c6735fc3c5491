//! Certificate-bound tokens (RFC 8705) with mutual TLS on the proxy listener, and through the
//! decision service from a trusted gateway's `x-forwarded-client-cert`: the token's
//! `cnf["x5t#S256"]` must be the SHA-256 of the presented client certificate. A CA, the
//! server certificate and two client certificates are made per run (rcgen).

mod support;

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jwks_sidecar::jose::Alg;
use jwks_sidecar::testkit::now;
use serde_json::{json, Value};
use support::*;

struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    clients: Vec<(rcgen::Certificate, rcgen::KeyPair)>,
}

/// A CA that signs the server's certificate (for "localhost") and two client certificates.
fn pki(name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("jwks-sidecar-mtls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("server cert");
    let clients = ["client-a", "client-b"]
        .iter()
        .map(|cn| {
            let k = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(rcgen::DnType::CommonName, *cn);
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            (p.signed_by(&k, &issuer).expect("client cert"), k)
        })
        .collect();
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("tls.crt"), server.pem()).expect("write");
    std::fs::write(dir.join("tls.key"), server_key.serialize_pem()).expect("write");
    Pki { dir, ca, clients }
}

fn x5t(cert: &rcgen::Certificate) -> String {
    jwks_sidecar::jose::sha256_b64url(cert.der())
}

/// An HTTPS client trusting the test server certificate, presenting `client` if given.
fn client(
    pki: &Pki,
    client: Option<usize>,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    jwks_sidecar::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).expect("root");
    let b = rustls::ClientConfig::builder().with_root_certificates(roots);
    let tls = match client {
        None => b.with_no_client_auth(),
        Some(i) => {
            let (cert, key) = &pki.clients[i];
            let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
            b.with_client_auth_cert(vec![cert.der().clone()], key)
                .expect("client auth")
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(https)
}

async fn call<C>(
    c: &Client<C, Full<Bytes>>,
    url: &str,
    token: &str,
) -> Result<(u16, String), String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = tokio::time::timeout(std::time::Duration::from_secs(20), c.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn tls_config(c: &mut jwks_sidecar::config::Config, pki: &Pki, required: bool) {
    c.proxy.tls = Some(jwks_sidecar::config::TlsConfig {
        cert_file: pki.dir.join("tls.crt"),
        key_file: pki.dir.join("tls.key"),
        client_ca_file: Some(pki.dir.join("ca.pem")),
        client_auth: if required {
            jwks_sidecar::config::ClientAuth::Required
        } else {
            jwks_sidecar::config::ClientAuth::Optional
        },
    });
}

#[tokio::test]
async fn a_certificate_bound_token_needs_its_client_certificate() {
    let pki = pki("proxy");
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let mut c = base_config(&idp, &echo);
    tls_config(&mut c, &pki, false);
    c.rules.push(
        config("[[rules]]\nmatch = { path_prefix = \"/mtls\" }\nsender_constraint = \"mtls\"\n")
            .rules[0]
            .clone(),
    );
    let s = start_config(c).await;
    wait_keys_ready(&s).await;
    let url = |p: &str| format!("https://localhost:{}{p}", s.proxy_addr.port());
    let token = |cnf: Option<Value>| {
        let mut claims =
            json!({"iss": idp.issuer(), "aud": "api", "sub": "alice", "exp": now() + 300});
        if let Some(c) = cnf {
            claims["cnf"] = c;
        }
        k.mint(&claims)
    };
    let bound_a = token(Some(json!({"x5t#S256": x5t(&pki.clients[0].0)})));
    let (a, b, none) = (
        client(&pki, Some(0)),
        client(&pki, Some(1)),
        client(&pki, None),
    );
    // The certificate the token names: allowed, and the app sees the identity.
    let (st, body) = call(&a, &url("/api/x"), &bound_a).await.expect("a");
    assert_eq!(st, 200, "{body}");
    assert_eq!(echoed(&body)["x-jwt-sub"], vec!["alice"]);
    // Another client certificate of the same CA, or none: refused.
    let (st, body) = call(&b, &url("/api/x"), &bound_a).await.expect("b");
    assert_eq!((st, reason(&body)), (401, "certificate_bound".into()));
    let (st, body) = call(&none, &url("/api/x"), &bound_a).await.expect("none");
    assert_eq!((st, reason(&body)), (401, "certificate_bound".into()));
    // Optional client auth: plain bearer tokens still work without a certificate...
    let plain = token(None);
    assert_eq!(
        call(&none, &url("/api/x"), &plain).await.expect("plain").0,
        200
    );
    // ...but not on a route that requires a certificate-bound token.
    let (st, body) = call(&a, &url("/mtls/x"), &plain).await.expect("mtls route");
    assert_eq!(
        (st, reason(&body)),
        (401, "sender_constraint_required".into())
    );
    let (st, _) = call(&a, &url("/mtls/x"), &bound_a)
        .await
        .expect("mtls route, bound");
    assert_eq!(st, 200);
    let m = get(
        &format!("http://{}/metrics", s.admin_addr.expect("admin")),
        &[],
    )
    .await
    .2;
    for series in [
        r#"jwks_sidecar_sender_constraint_total{kind="mtls",provider="idp",result="ok"}"#,
        r#"jwks_sidecar_sender_constraint_total{kind="mtls",provider="idp",result="certificate_bound"}"#,
    ] {
        assert!(sample(&m, series).is_some_and(|n| n >= 1.0), "{series}");
    }
    s.shutdown();
    s.wait().await;
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn required_client_auth_refuses_the_handshake_without_a_certificate() {
    let pki = pki("required");
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let mut c = base_config(&idp, &echo);
    tls_config(&mut c, &pki, true);
    let s = start_config(c).await;
    wait_keys_ready(&s).await;
    let url = format!("https://localhost:{}/api/x", s.proxy_addr.port());
    let plain =
        k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice", "exp": now() + 300}));
    assert!(
        call(&client(&pki, None), &url, &plain).await.is_err(),
        "no certificate: no TLS session"
    );
    assert_eq!(
        call(&client(&pki, Some(1)), &url, &plain)
            .await
            .expect("b")
            .0,
        200
    );
    let _ = std::fs::remove_dir_all(&pki.dir);
}

#[tokio::test]
async fn the_decision_service_trusts_the_gateways_certificate_header_only_when_told() {
    let pki = pki("authz");
    let (k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let cert_a = &pki.clients[0].0;
    let hash_hex = sha256_hex(cert_a.der());
    let token = k.mint(&json!({"iss": idp.issuer(), "aud": "api", "sub": "alice",
        "exp": now() + 300, "cnf": {"x5t#S256": x5t(cert_a)}}));
    let auth = format!("Bearer {token}");
    let xfcc_hash = format!("By=spiffe://gw;Hash={hash_hex};Subject=\"CN=client-a\"");
    let pem = urlencode(&cert_a.pem());
    let xfcc_cert = format!("Cert=\"{pem}\"");
    for trust in [false, true] {
        let mut c = base_config(&idp, &echo);
        c.authz.listen = Some(loopback());
        c.authz.grpc_listen = Some(loopback());
        c.authz.trust_forwarded_client_cert = trust;
        let s = start_config(c).await;
        wait_keys_ready(&s).await;
        let url = format!("http://{}/authz/api/x", s.authz_addr.expect("authz"));
        for xfcc in [&xfcc_hash, &xfcc_cert] {
            let (st, _, body) = get(
                &url,
                &[("authorization", &auth), ("x-forwarded-client-cert", xfcc)],
            )
            .await;
            let want = if trust { 200 } else { 401 };
            assert_eq!(st.as_u16(), want, "trust {trust}, {xfcc}: {body}");
        }
        // The gRPC check: Envoy's source.certificate (URL-encoded PEM).
        let mut grpc = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
            format!("http://{}", s.authz_grpc_addr.expect("grpc")),
        )
        .await
        .expect("connect");
        let mut req = check_request("/api/x", &[("authorization", &auth)]);
        if let Some(a) = req.attributes.as_mut() {
            a.source = Some(
                envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer {
                    certificate: pem.clone(),
                    ..Default::default()
                },
            );
        }
        let code = grpc
            .check(req)
            .await
            .expect("rpc")
            .into_inner()
            .status
            .map(|s| s.code);
        assert_eq!(
            code,
            Some(if trust { 0 } else { 16 }),
            "gRPC, trust {trust}"
        );
        // Another certificate's hash is refused even from a trusted gateway.
        let other = format!("Hash={}", "0".repeat(64));
        let (st, _, body) = get(
            &url,
            &[
                ("authorization", &auth),
                ("x-forwarded-client-cert", &other),
            ],
        )
        .await;
        assert_eq!(
            (st.as_u16(), reason(&body)),
            (401, "certificate_bound".into())
        );
        s.shutdown();
        s.wait().await;
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}
