//! OAuth 2.0 protected-resource metadata (RFC 9728): the JSON document that tells a client
//! which authorization servers issue tokens for this resource and how to present them, and
//! the URL every 401 points to (`resource_metadata` in `WWW-Authenticate`, section 5.1), so a
//! client that only knows the resource URL can discover where to get a token.
//!
//! Compiled once from `[resource]` (see `plan`); served on the proxy listener without a token.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::config::Config;

/// The well-known path (RFC 9728 section 3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The compiled metadata of the protected resource.
#[derive(Debug, Clone)]
pub struct ResourceMetadata {
    /// The metadata URL (the well-known path inserted between host and path, section 3.1).
    pub url: Arc<str>,
    /// Proxy paths that serve the document: the well-known path, and its path-suffixed form
    /// when the resource identifier has a path.
    paths: Vec<String>,
    /// The JSON document.
    document: Bytes,
}

impl ResourceMetadata {
    /// The metadata of a validated config; `None` while `resource.resource` is unset.
    pub fn compile(config: &Config) -> Option<ResourceMetadata> {
        let resource = config.resource.resource.as_deref()?;
        let uri: http::Uri = resource.parse().ok()?;
        let origin = format!("{}://{}", uri.scheme_str()?, uri.authority()?);
        // Section 3.1: a terminating "/" right after the host is dropped; any other path is
        // kept as it is, trailing slash included.
        let path = if uri.path() == "/" { "" } else { uri.path() };
        let mut paths = vec![WELL_KNOWN.to_string()];
        if !path.is_empty() {
            paths.push(format!("{WELL_KNOWN}{path}"));
        }
        let url: Arc<str> = format!("{origin}{WELL_KNOWN}{path}").into();
        Some(ResourceMetadata {
            url,
            paths,
            document: Bytes::from(document(config, resource).to_string()),
        })
    }

    /// Whether the proxy answers `path` with the document.
    pub fn serves(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }

    /// The JSON document.
    pub fn document(&self) -> Bytes {
        self.document.clone()
    }
}

fn document(config: &Config, resource: &str) -> Value {
    let r = &config.resource;
    let servers: Vec<&str> = if r.authorization_servers.is_empty() {
        // Every provider's issuer; an issuer template ({tenantid}) names no single server.
        config
            .providers
            .iter()
            .map(|p| p.issuer.as_str())
            .filter(|i| !i.contains('{'))
            .collect()
    } else {
        r.authorization_servers.iter().map(String::as_str).collect()
    };
    let mut methods = vec!["header"];
    if config.proxy.token.query.is_some() {
        methods.push("query");
    }
    let mut doc = Map::new();
    doc.insert("resource".into(), json!(resource));
    doc.insert("authorization_servers".into(), json!(servers));
    doc.insert("bearer_methods_supported".into(), json!(methods));
    if !r.scopes_supported.is_empty() {
        doc.insert("scopes_supported".into(), json!(r.scopes_supported));
    }
    if let Some(name) = &r.resource_name {
        doc.insert("resource_name".into(), json!(name));
    }
    if let Some(url) = &r.resource_documentation {
        doc.insert("resource_documentation".into(), json!(url));
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(resource: &str) -> Config {
        let mut c = Config::default();
        c.resource.resource = Some(resource.into());
        c.providers.push(crate::config::ProviderConfig {
            issuer: "https://idp.example".into(),
            ..Default::default()
        });
        c
    }

    #[test]
    fn metadata_url_inserts_the_well_known_path_before_the_resource_path() {
        let m = ResourceMetadata::compile(&config("https://api.example.com")).expect("on");
        assert_eq!(
            &*m.url,
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        assert!(m.serves(WELL_KNOWN));
        let m = ResourceMetadata::compile(&config("https://api.example.com/v1")).expect("on");
        assert_eq!(
            &*m.url,
            "https://api.example.com/.well-known/oauth-protected-resource/v1"
        );
        assert!(m.serves("/.well-known/oauth-protected-resource/v1"));
        assert!(!m.serves("/.well-known/oauth-protected-resource/v2"));
        // A path's own trailing slash is part of the identifier (only a lone "/" is dropped).
        let m = ResourceMetadata::compile(&config("https://api.example.com/v1/")).expect("on");
        assert_eq!(
            &*m.url,
            "https://api.example.com/.well-known/oauth-protected-resource/v1/"
        );
        let m = ResourceMetadata::compile(&config("https://api.example.com/")).expect("on");
        assert_eq!(
            &*m.url,
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn document_defaults_to_the_providers_issuers() {
        let m = ResourceMetadata::compile(&config("https://api.example.com")).expect("on");
        let doc: Value = serde_json::from_slice(&m.document()).expect("json");
        assert_eq!(doc["authorization_servers"], json!(["https://idp.example"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert!(doc.get("scopes_supported").is_none());
    }
}
