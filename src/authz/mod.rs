//! The decision service: the same policy as the proxy, answering allow/deny for a gateway
//! instead of forwarding. `http` speaks Envoy's `ext_authz` http_service, nginx
//! `auth_request`, Traefik ForwardAuth and Caddy `forward_auth`; `grpc` speaks
//! `envoy.service.auth.v3.Authorization/Check`.
//!
//! Each HTTP convention has its own endpoint, and an endpoint trusts only its own
//! convention's headers: the Envoy endpoint (`path_prefix` + original path) never reads
//! `X-Original-URI` or `X-Forwarded-Uri`, so a client cannot smuggle a public path past an
//! Envoy check by sending them.

pub mod grpc;
pub mod http;
pub mod xfcc;
