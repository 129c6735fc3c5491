//! The decision service: Envoy ext_authz (HTTP and gRPC), nginx auth_request and
//! Traefik/Caddy forward-auth conventions, each endpoint trusting only its own headers.

mod support;

use envoy_types::ext_authz::v3::pb::HttpStatusCode;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use jwks_sidecar::demo::{EchoUpstream, FakeIdp};
use jwks_sidecar::jose::Alg;
use serde_json::json;
use support::*;

struct Authz {
    idp: FakeIdp,
    _echo: EchoUpstream,
    sidecar: jwks_sidecar::Running,
}

impl Authz {
    fn url(&self, p: &str) -> String {
        format!("http://{}{}", self.sidecar.authz_addr.expect("authz"), p)
    }
    fn token(&self) -> String {
        key(Alg::ES256).mint(
            &json!({"iss": self.idp.issuer(), "sub": "user-1", "aud": "api",
            "exp": jwks_sidecar::testkit::now() + 600, "scope": "read"}),
        )
    }
}

async fn start(provider_extra: &str) -> Authz {
    let idp = FakeIdp::start(&[&key(Alg::ES256)], 0).await.expect("idp");
    let echo = EchoUpstream::start().await.expect("echo");
    let mut c = config(&base_toml(
        &idp.jwks_uri(),
        &idp.issuer(),
        &echo.url(),
        "",
        provider_extra,
    ));
    c.authz.listen = Some(loopback());
    c.authz.grpc_listen = Some(loopback());
    let sidecar = start_config(c).await;
    wait_keys_ready(&sidecar).await;
    Authz {
        idp,
        _echo: echo,
        sidecar,
    }
}

#[tokio::test]
async fn envoy_http_endpoint_allows_denies_and_names_spoofed_headers() {
    let a = start("").await;
    let auth = format!("Bearer {}", a.token());
    let (s, h, _) = get(
        &a.url("/authz/api/x?y=1"),
        &[
            ("authorization", &auth),
            ("x-jwt-sub", "admin"),
            ("x_jwt_sub", "admin"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-jwt-sub"], "user-1");
    // Every spelling of every identity header is named for removal except the headers the
    // answer sets: Envoy removes after it adds, so naming x-jwt-sub would drop the verified
    // value. (tests/bypass.rs checks the whole list.)
    let removed: Vec<&str> = h["x-envoy-auth-headers-to-remove"]
        .to_str()
        .expect("ascii")
        .split(',')
        .collect();
    assert!(removed.contains(&"x_jwt_sub"), "{removed:?}");
    assert!(!removed.contains(&"x-jwt-sub"), "{removed:?}");
    let (s, h, body) = get(&a.url("/authz/api/x"), &[]).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "missing_token"));
    assert_eq!(h["www-authenticate"], "Bearer realm=\"jwks-sidecar\"");
    let (s, _, body) = get(&a.url("/authz/api/x"), &[("authorization", "Bearer a.b.c")]).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "malformed"));
    // Public path, matched on the original path.
    assert_eq!(get(&a.url("/authz/public/x"), &[]).await.0, 200);
    assert_eq!(get(&a.url("/authz/public/../admin"), &[]).await.0, 401);
    // POST is decided with its own method.
    assert_eq!(
        request(
            "POST",
            &a.url("/authz/api/x"),
            &[("authorization", &auth)],
            bytes::Bytes::from_static(b"{}")
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn envoy_endpoint_ignores_smuggled_original_uri_headers() {
    let a = start("").await;
    let (s, _, body) = get(
        &a.url("/authz/admin"),
        &[
            ("x-original-uri", "/public/x"),
            ("x-forwarded-uri", "/public/x"),
            ("x-original-method", "GET"),
        ],
    )
    .await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (401, "missing_token"));
}

#[tokio::test]
async fn nginx_endpoint_reads_x_original_uri_and_method() {
    let a = start("").await;
    let auth = format!("Bearer {}", a.token());
    let (s, h, _) = get(
        &a.url("/nginx"),
        &[
            ("x-original-uri", "/api/x?q=1"),
            ("x-original-method", "DELETE"),
            ("authorization", &auth),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-jwt-sub"], "user-1");
    assert!(!h.contains_key("x-envoy-auth-headers-to-remove"));
    assert_eq!(
        get(&a.url("/nginx"), &[("x-original-uri", "/public/x")])
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            &a.url("/nginx"),
            &[("x-original-uri", "/public/%2e%2e/admin")]
        )
        .await
        .0,
        401
    );
    let (s, _, body) = get(&a.url("/nginx"), &[("authorization", &auth)]).await;
    assert_eq!(s, 400, "X-Original-URI is required: {body}");
    // The forward-auth headers mean nothing to the nginx endpoint.
    assert_eq!(
        get(
            &a.url("/nginx"),
            &[
                ("x-original-uri", "/admin"),
                ("x-forwarded-uri", "/public/x")
            ]
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn forward_endpoint_reads_x_forwarded_uri_for_traefik_and_caddy() {
    let a = start("").await;
    let auth = format!("Bearer {}", a.token());
    let (s, h, _) = get(
        &a.url("/forward"),
        &[
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/api/x"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-proto", "https"),
            ("authorization", &auth),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-jwt-sub"], "user-1");
    assert_eq!(
        get(&a.url("/forward"), &[("x-forwarded-uri", "/public/a")])
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            &a.url("/forward"),
            &[
                ("x-forwarded-uri", "/admin"),
                ("x-original-uri", "/public/a")
            ]
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(
            &a.url("/forward"),
            &[("x-forwarded-uri", "http://evil.example/public/a")]
        )
        .await
        .0,
        200,
        "absolute form: path only"
    );
    assert_eq!(get(&a.url("/elsewhere"), &[]).await.0, 404);
}

#[tokio::test]
async fn scope_is_403_and_no_keys_is_503_on_the_authz_listener() {
    let a = start("required_scopes = [\"admin\"]").await;
    let auth = format!("Bearer {}", a.token());
    let (s, h, body) = get(&a.url("/authz/x"), &[("authorization", &auth)]).await;
    assert_eq!(
        (s.as_u16(), reason(&body).as_str()),
        (403, "insufficient_scope")
    );
    assert!(h["www-authenticate"]
        .to_str()
        .expect("ascii")
        .contains("insufficient_scope"));
    let down = FakeIdp::start(&[&key(Alg::ES256)], 0).await.expect("idp");
    down.fail_with(500);
    let mut c = config(&base_toml(
        &down.jwks_uri(),
        &down.issuer(),
        "http://127.0.0.1:9",
        "",
        "",
    ));
    c.authz.listen = Some(loopback());
    let sidecar = start_config(c).await;
    let t = key(Alg::ES256).mint(
        &json!({"iss": down.issuer(), "aud": "api", "exp": jwks_sidecar::testkit::now() + 60}),
    );
    let base = format!("http://{}", sidecar.authz_addr.expect("authz"));
    let bearer = format!("Bearer {t}");
    // Envoy's http_service would treat a 5xx as an authorizer failure (failure_mode_allow
    // turns that into an allow), so the Envoy endpoint denies with 403, reason no_keys.
    let (s, h, body) = get(&format!("{base}/authz/x"), &[("authorization", &bearer)]).await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (403, "no_keys"));
    assert!(h.contains_key("retry-after"));
    let (s, _, body) = get(
        &format!("{base}/forward"),
        &[("authorization", &bearer), ("x-forwarded-uri", "/x")],
    )
    .await;
    assert_eq!((s.as_u16(), reason(&body).as_str()), (503, "no_keys"));
    let m = a.sidecar.metrics.render();
    assert_eq!(
        sample(
            &m,
            r#"jwks_sidecar_requests_total{decision="deny",listener="authz_http",provider="idp",reason="insufficient_scope"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn grpc_check_allows_with_overwrite_headers_removes_spoofed_and_sets_metadata() {
    let a = start("").await;
    let mut client = AuthorizationClient::connect(format!(
        "http://{}",
        a.sidecar.authz_grpc_addr.expect("grpc")
    ))
    .await
    .expect("connect");
    let auth = format!("Bearer {}", a.token());
    let resp = client
        .check(check_request(
            "/api/x?y=1",
            &[
                ("authorization", &auth),
                ("x-jwt-sub", "admin"),
                ("x_jwt_sub", "admin"),
            ],
        ))
        .await
        .expect("rpc ok")
        .into_inner();
    assert_eq!(resp.status.as_ref().map(|s| s.code), Some(0));
    let Some(HttpResponse::OkResponse(ok)) = resp.http_response else {
        panic!("not an OkResponse: {resp:?}")
    };
    let sub = ok
        .headers
        .iter()
        .find(|h| h.header.as_ref().is_some_and(|h| h.key == "x-jwt-sub"))
        .expect("x-jwt-sub");
    assert_eq!(
        sub.header.as_ref().map(|h| h.value.as_str()),
        Some("user-1")
    );
    assert_eq!(sub.append_action, 2, "OVERWRITE_IF_EXISTS_OR_ADD");
    assert!(
        ok.headers_to_remove.contains(&"x_jwt_sub".to_string()),
        "{:?}",
        ok.headers_to_remove
    );
    assert!(
        !ok.headers_to_remove.contains(&"x-jwt-sub".to_string()),
        "the overwritten x-jwt-sub is not removed"
    );
    let md = resp.dynamic_metadata.expect("dynamic metadata");
    assert!(md.fields.contains_key("jwks_sidecar"));
}

#[tokio::test]
async fn grpc_check_denies_with_status_and_body_never_an_rpc_error() {
    let a = start("").await;
    let mut client = AuthorizationClient::connect(format!(
        "http://{}",
        a.sidecar.authz_grpc_addr.expect("grpc")
    ))
    .await
    .expect("connect");
    let resp = client
        .check(check_request("/api/x", &[]))
        .await
        .expect("a denial is not an RPC error")
        .into_inner();
    assert_eq!(
        resp.status.as_ref().map(|s| s.code),
        Some(16),
        "UNAUTHENTICATED"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = resp.http_response else {
        panic!("not denied")
    };
    assert_eq!(
        denied.status.map(|s| s.code),
        Some(HttpStatusCode::Unauthorized as i32)
    );
    assert_eq!(reason(&denied.body), "missing_token", "{}", denied.body);
    assert!(denied.headers.iter().any(|h| h
        .header
        .as_ref()
        .is_some_and(|h| h.key == "www-authenticate")));
    // Public path through gRPC.
    let resp = client
        .check(check_request("/public/x", &[]))
        .await
        .expect("rpc")
        .into_inner();
    assert!(matches!(
        resp.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    // Health service on the same port.
    let channel = tonic::transport::Channel::from_shared(format!(
        "http://{}",
        a.sidecar.authz_grpc_addr.expect("grpc")
    ))
    .expect("uri")
    .connect()
    .await
    .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(h.status, 1, "SERVING");
}
