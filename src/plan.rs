//! The one compile step: a loaded `Config` becomes a `Plan` (every provider with its key
//! settings, the compiled rules) or the complete list of problems. Startup, `check`,
//! `explain`, `validate` and reload all go through `compile`, so they cannot disagree about
//! what a config means; reload compares two plans' key settings to decide which mirrors to
//! keep.
//!
//! Dependency direction: `plan` depends on `config`, `jose`, `jwks`, `rules` and `auth`
//! (it builds the `Authenticator`); none of them depends on `plan`, and `config` depends on
//! none of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::assertion::Assertions;
use crate::auth::{Authenticator, Provider};
use crate::config::{self, CliOverrides, Config, ConfigError, ProviderConfig};
use crate::jose::Alg;
use crate::jwks::{
    FetchSettings, KeySet, KeySettings, KeySource, MirrorSettings, ParsePolicy, ProviderKeys,
};
use crate::metrics::Metrics;
use crate::resource::ResourceMetadata;
use crate::rules::Rules;
use crate::server::ServeSettings;

/// A config compiled for the runtime.
pub struct Plan {
    /// The config it was compiled from.
    pub config: Config,
    /// Providers, in config order.
    pub providers: Vec<ProviderPlan>,
    /// Route rules (public paths first).
    pub rules: Arc<Rules>,
    /// The limits and timeouts every listener shares.
    pub serve: ServeSettings,
    /// Protected-resource metadata (RFC 9728), when `[resource]` names the resource.
    pub resource: Option<Arc<ResourceMetadata>>,
    /// The signed identity for the app, when `[assertion]` is enabled.
    pub assertion: Option<Arc<Assertions>>,
    /// DPoP proof checking (always on).
    pub dpop: Arc<crate::dpop::Dpop>,
}

/// One provider: its config (claim rules, headers) and its compiled key settings.
pub struct ProviderPlan {
    /// The provider's config.
    pub config: ProviderConfig,
    /// Everything its key mirror depends on.
    pub keys: KeySettings,
}

impl Plan {
    /// The authentication pipeline of this plan, each provider with a new, empty mirror.
    pub fn authenticator(&self, metrics: Arc<Metrics>) -> Authenticator {
        self.authenticator_with(metrics, |p| Arc::new(ProviderKeys::new(&p.keys)))
    }

    /// Like `authenticator`, taking each provider's key mirror from `keys` (reload keeps
    /// the mirrors whose key settings did not change).
    pub fn authenticator_with(
        &self,
        metrics: Arc<Metrics>,
        keys: impl Fn(&ProviderPlan) -> Arc<ProviderKeys>,
    ) -> Authenticator {
        let providers = self
            .providers
            .iter()
            .map(|p| {
                let algorithms = p.keys.parse.algorithms.clone();
                Arc::new(Provider::new(&p.config, algorithms, &metrics, keys(p)))
            })
            .collect();
        Authenticator::new(&self.config, providers, metrics)
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("providers", &self.providers.len())
            .finish()
    }
}

/// Compiles a loaded config; `file` only prefixes the problems.
pub fn compile(config: Config, file: Option<&Path>) -> Result<Plan, ConfigError> {
    let mut problems = config::problems(&config, file);
    let src = file
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default();
    let mut providers = Vec::with_capacity(config.providers.len());
    for (i, p) in config.providers.iter().enumerate() {
        match key_settings(p, config.jwks.cache_dir.as_deref()) {
            Ok(keys) => providers.push(ProviderPlan {
                config: p.clone(),
                keys,
            }),
            Err(e) => problems.push(format!("{src}providers[{i}]{e}")),
        }
    }
    let dpop = dpop(&config.dpop)
        .map_err(|e| problems.push(format!("{src}{e}")))
        .ok();
    let assertion = Assertions::compile(&config.assertion).unwrap_or_else(|e| {
        problems.push(format!("{src}{e}"));
        None
    });
    let rules = match Rules::compile(&config) {
        Ok(r) => Some(r),
        Err(errs) => {
            problems.extend(errs.into_iter().map(|e| format!("{src}{e}")));
            None
        }
    };
    match (rules, dpop) {
        (Some(rules), Some(dpop)) if problems.is_empty() => Ok(Plan {
            serve: ServeSettings::from_config(&config.proxy),
            resource: ResourceMetadata::compile(&config).map(Arc::new),
            assertion: assertion.map(Arc::new),
            dpop: Arc::new(dpop),
            config,
            providers,
            rules: Arc::new(rules),
        }),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// Loads defaults < file < environment < CLI, then compiles.
pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Plan, ConfigError> {
    compile(config::load(file, cli)?, file)
}

/// Parses TOML text alone (no environment), then compiles. Used by tests and the demo.
pub fn from_toml_str(text: &str) -> Result<Plan, ConfigError> {
    compile(config::from_toml_str(text)?, None)
}

/// The algorithms a provider's keys may be used with: its `algorithms`, or every supported
/// (asymmetric) one.
pub fn algorithms(p: &ProviderConfig) -> Vec<Alg> {
    if p.algorithms.is_empty() {
        Alg::ALL.to_vec()
    } else {
        p.algorithms.iter().filter_map(|a| Alg::parse(a)).collect()
    }
}

/// The `[dpop]` section compiled (validation has checked the algorithm names); errors name
/// the nonce secret file.
pub fn dpop(c: &config::DpopConfig) -> Result<crate::dpop::Dpop, String> {
    let algs = if c.algorithms.is_empty() {
        Alg::ALL.to_vec()
    } else {
        c.algorithms.iter().filter_map(|a| Alg::parse(a)).collect()
    };
    let d = crate::dpop::Dpop::new(
        &algs,
        c.max_age.as_secs(),
        c.leeway.as_secs(),
        c.replay_cache_entries,
    );
    if c.nonce {
        d.with_nonces(
            c.nonce_lifetime.as_secs().max(1),
            c.nonce_secret_file.as_deref(),
        )
    } else {
        Ok(d)
    }
}

/// A provider's refresh timing.
pub fn mirror_settings(p: &ProviderConfig) -> MirrorSettings {
    MirrorSettings {
        refresh_interval: p.refresh_interval,
        min_refresh: p.min_refresh,
        max_refresh: p.max_refresh,
        max_stale: p.max_stale,
        key_removal_confirmations: p.key_removal_confirmations,
        max_retry: Duration::from_secs(60).min(p.max_refresh),
        jitter: 0.1,
    }
}

/// The single key source (validation reports when there is not exactly one). An inline key
/// from `public_key_env` is read here, once. Errors start with the key they concern.
fn key_source(p: &ProviderConfig) -> Result<KeySource, String> {
    if let Some(u) = &p.jwks_uri {
        return Ok(KeySource::Uri(u.clone()));
    }
    if let Some(u) = &p.discovery_url {
        return Ok(KeySource::Discovery(u.clone()));
    }
    if p.discovery {
        return Ok(KeySource::Discovery(format!(
            "{}/.well-known/openid-configuration",
            p.issuer.trim_end_matches('/')
        )));
    }
    if let Some(f) = &p.jwks_file {
        return Ok(KeySource::File(f.clone()));
    }
    if let Some(pem) = &p.public_key_pem {
        return Ok(KeySource::Pem(pem.clone()));
    }
    if let Some(var) = &p.public_key_env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(KeySource::Pem(v)),
            _ => Err(format!(".public_key_env = {var:?}: that environment variable is not set (it should hold the provider's public key, PEM or bare base64)")),
        };
    }
    Ok(KeySource::Inline(
        p.jwks.clone().unwrap_or(serde_json::json!({"keys": []})),
    ))
}

/// Compiles a provider's key settings. Inline key material is parsed here, so an unusable
/// key is a config problem, not a provider without keys.
fn key_settings(p: &ProviderConfig, cache_dir: Option<&Path>) -> Result<KeySettings, String> {
    let source = key_source(p)?;
    let parse = ParsePolicy {
        algorithms: algorithms(p),
        max_keys: p.max_keys,
    };
    if let KeySource::Pem(text) = &source {
        match KeySet::parse(text.as_bytes(), &parse) {
            Ok((set, _)) if !set.is_empty() => {}
            Ok((_, skipped)) => return Err(format!(
                " ({}): the public key holds no usable signing key ({}); expected a PEM public key or certificate, or the bare base64 of a SubjectPublicKeyInfo (RSA, EC P-256/P-384/P-521 or Ed25519) allowed by `algorithms`",
                p.name,
                skipped.first().map_or("no key", |s| s.reason)
            )),
            Err(e) => return Err(format!(" ({}): {e}", p.name)),
        }
    }
    Ok(KeySettings {
        name: p.name.clone(),
        issuer: p.issuer.clone(),
        source,
        parse,
        fetch: FetchSettings {
            timeout: p.fetch_timeout,
            max_bytes: p.max_jwks_bytes,
            allow_insecure_http: p.allow_insecure_http,
            headers: p.fetch_headers.clone(),
            ca_file: p.ca_file.clone(),
        },
        mirror: mirror_settings(p),
        kid_miss_min_interval: p.kid_miss_min_interval,
        kid_miss_wait: p.kid_miss_wait,
        persist_path: cache_dir.map(|d| persist_path(d, &p.name)),
    })
}

/// Where a provider's set would be persisted (for tests and operators).
pub fn persist_path(cache_dir: &Path, provider: &str) -> PathBuf {
    cache_dir.join(format!("{provider}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ProviderConfig {
        ProviderConfig {
            name: "p".into(),
            issuer: "https://p.example".into(),
            jwks_uri: Some("https://p.example/jwks.json".into()),
            audiences: vec!["api".into()],
            ..ProviderConfig::default()
        }
    }

    fn settings(p: &ProviderConfig, cache_dir: Option<&Path>) -> KeySettings {
        key_settings(p, cache_dir).expect("compiles")
    }

    /// Reload keeps a mirror exactly when its `KeySettings` are equal: claim rules must not
    /// restart it, anything the mirror uses must.
    #[test]
    fn key_settings_change_with_key_fields_only() {
        let b = base();
        let same: Vec<fn(&mut ProviderConfig)> = vec![
            |p| p.audiences = vec!["other".into()],
            |p| p.leeway = Duration::from_secs(1),
            |p| p.required_scopes = vec!["x".into()],
            |p| {
                p.claim_headers.insert("sub".into(), "x-sub".into());
            },
            |p| p.max_token_lifetime = Some(Duration::from_secs(60)),
            |p| p.tenant_claim = "tenant".into(),
        ];
        for (i, change) in same.iter().enumerate() {
            let mut p = base();
            change(&mut p);
            assert_eq!(settings(&p, None), settings(&b, None), "claim change {i}");
        }
        let different: Vec<fn(&mut ProviderConfig)> = vec![
            |p| p.jwks_uri = Some("https://p.example/other.json".into()),
            |p| p.algorithms = vec!["ES256".into()],
            |p| p.max_keys = 3,
            |p| p.refresh_interval = Duration::from_secs(30),
            |p| p.max_stale = Duration::from_secs(30),
            |p| p.kid_miss_wait = Duration::from_secs(1),
            |p| p.fetch_timeout = Duration::from_secs(1),
            |p| p.max_jwks_bytes = 1000,
            |p| p.allow_insecure_http = true,
            |p| p.issuer = "https://q.example".into(),
            |p| p.name = "q".into(),
        ];
        for (i, change) in different.iter().enumerate() {
            let mut p = base();
            change(&mut p);
            assert_ne!(settings(&p, None), settings(&b, None), "key change {i}");
        }
        assert_ne!(
            settings(&b, Some(Path::new("/var/cache/a"))),
            settings(&b, None),
            "cache_dir"
        );
    }
}
