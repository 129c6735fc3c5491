//! OAuth protected-resource metadata (RFC 9728): the document served without a token on the
//! proxy listener, and the `resource_metadata` and `scope` parameters of every 401 challenge,
//! on the proxy and on the decision endpoints (HTTP and gRPC); nothing of it when `[resource]`
//! is not configured.

mod support;

use jwks_sidecar::config::{MatchConfig, RequireConfig, RuleConfig};
use jwks_sidecar::demo::{EchoUpstream, FakeIdp};
use jwks_sidecar::jose::Alg;
use serde_json::{json, Value};
use support::*;

const METADATA_URL: &str = "https://api.example.com/.well-known/oauth-protected-resource/v1";

/// A sidecar whose `/orders` rule needs scope `orders:read`; with `[resource]` when `on`.
async fn sidecar(on: bool) -> (jwks_sidecar::Running, FakeIdp, EchoUpstream) {
    let (_k, idp, echo) = idp_and_echo(Alg::ES256).await;
    let mut c = base_config(&idp, &echo);
    c.rules.push(RuleConfig {
        name: Some("orders".into()),
        matches: MatchConfig {
            path_prefix: Some("/orders".into()),
            ..Default::default()
        },
        require: Some(RequireConfig {
            scopes: vec!["orders:read".into(), "orders:list".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    c.authz.listen = Some(loopback());
    c.authz.grpc_listen = Some(loopback());
    if on {
        c.resource.resource = Some("https://api.example.com/v1".into());
        c.resource.scopes_supported = vec!["orders:read".into()];
        c.resource.resource_name = Some("Orders API".into());
    }
    let s = start_config(c).await;
    wait_keys_ready(&s).await;
    (s, idp, echo)
}

fn www(h: &http::HeaderMap) -> String {
    h.get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn metadata_document_is_served_without_a_token_at_both_well_known_paths() {
    let (s, idp, echo) = sidecar(true).await;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/v1",
    ] {
        let (st, h, body) = get(&format!("http://{}{path}", s.proxy_addr), &[]).await;
        assert_eq!(st, 200, "{path}: {body}");
        assert_eq!(h["content-type"], "application/json", "{path}");
        let doc: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(doc["resource"], "https://api.example.com/v1");
        assert_eq!(doc["authorization_servers"], json!([idp.issuer()]));
        assert_eq!(doc["scopes_supported"], json!(["orders:read"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["resource_name"], "Orders API");
    }
    assert_eq!(
        echo.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "answered by the sidecar, not forwarded"
    );
    // Another suffix is not this resource's document: an ordinary protected path.
    let (st, _, _) = get(
        &format!(
            "http://{}/.well-known/oauth-protected-resource/v2",
            s.proxy_addr
        ),
        &[],
    )
    .await;
    assert_eq!(st, 401);
}

#[tokio::test]
async fn every_401_names_the_metadata_and_the_rule_scope() {
    let (s, idp, _echo) = sidecar(true).await;
    let proxy = format!("http://{}/orders/1", s.proxy_addr);
    let (st, h, _) = get(&proxy, &[]).await;
    assert_eq!(st, 401);
    assert_eq!(
        www(&h),
        format!(
            "Bearer realm=\"jwks-sidecar\", scope=\"orders:read orders:list\", resource_metadata=\"{METADATA_URL}\""
        )
    );
    let expired = key(Alg::ES256).mint(
        &json!({"iss": idp.issuer(), "aud": "api", "sub": "u", "exp": jwks_sidecar::testkit::now() - 600}),
    );
    let (st, h, _) = get_with_token(&proxy, &expired).await;
    assert_eq!(st, 401);
    let w = www(&h);
    assert!(
        w.contains("error=\"invalid_token\"")
            && w.ends_with(&format!("resource_metadata=\"{METADATA_URL}\"")),
        "{w}"
    );
    // 403 insufficient_scope carries the scope, not the metadata (the token was accepted).
    let weak = key(Alg::ES256).mint(
        &json!({"iss": idp.issuer(), "aud": "api", "sub": "u", "exp": jwks_sidecar::testkit::now() + 600}),
    );
    let (st, h, _) = get_with_token(&proxy, &weak).await;
    assert_eq!(st, 403);
    let w = www(&h);
    assert!(
        w.contains("error=\"insufficient_scope\"")
            && w.contains("scope=\"orders:read orders:list\"")
            && !w.contains("resource_metadata"),
        "{w}"
    );
    // The decision endpoints give the gateway the same challenge.
    let authz = format!("http://{}/authz/orders/1", s.authz_addr.expect("authz"));
    let (st, h, _) = get(&authz, &[]).await;
    assert_eq!(st, 401);
    assert!(www(&h).contains(&format!("resource_metadata=\"{METADATA_URL}\"")));
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let grpc = s.authz_grpc_addr.expect("grpc");
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .expect("connect");
    let resp = client
        .check(check_request("/orders/1", &[]))
        .await
        .expect("check")
        .into_inner();
    let text = format!("{:?}", resp.http_response.expect("denied"));
    assert!(text.contains(METADATA_URL), "{text}");
}

#[tokio::test]
async fn without_a_resource_there_is_no_document_and_no_parameter() {
    let (s, _idp, _echo) = sidecar(false).await;
    let (st, h, _) = get(
        &format!(
            "http://{}/.well-known/oauth-protected-resource",
            s.proxy_addr
        ),
        &[],
    )
    .await;
    assert_eq!(st, 401, "an ordinary protected path");
    assert!(!www(&h).contains("resource_metadata"), "{}", www(&h));
}
