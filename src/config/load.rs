//! Loading: figment layers, defaults < TOML file < `JWKS_SIDECAR_*` environment < CLI flags.
//! Loading only reads the typed tree; `plan::compile` validates and compiles it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::{Config, ProviderConfig};

/// Environment variable prefix for every key.
pub const ENV_PREFIX: &str = "JWKS_SIDECAR_";

/// Values given on the command line; each one set overrides every other layer.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--upstream`
    pub upstream: Option<String>,
    /// `--admin-listen`
    pub admin_listen: Option<SocketAddr>,
    /// `--issuer`: with `--jwks-uri` (or discovery) and `--audience`, defines one provider.
    pub issuer: Option<String>,
    /// `--jwks-uri`
    pub jwks_uri: Option<String>,
    /// `--audience` (repeatable)
    pub audiences: Vec<String>,
}

/// Loading or validation failed.
#[derive(Debug)]
pub enum ConfigError {
    /// The file, environment or flags could not be read into the typed tree.
    Load(Box<figment::Error>),
    /// The tree was read but is not usable; one line per problem.
    Invalid(Vec<String>),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Load(e) => {
                writeln!(f, "configuration could not be read:")?;
                for err in (**e).clone() {
                    writeln!(f, "  - {err}")?;
                }
                Ok(())
            }
            ConfigError::Invalid(problems) => {
                writeln!(f, "configuration is invalid:")?;
                for p in problems {
                    writeln!(f, "  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The config file named by `JWKS_SIDECAR_CONFIG`, if any.
pub fn config_file_from_env() -> Option<PathBuf> {
    std::env::var_os(format!("{ENV_PREFIX}CONFIG")).map(PathBuf::from)
}

/// Loads defaults < file < environment < CLI into the typed tree (not yet validated: see
/// `plan::load`).
pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
    figment(file, cli)
        .extract::<Config>()
        .map_err(|e| ConfigError::Load(Box::new(e)))
}

/// Parses TOML text alone (no environment) into the typed tree (not yet validated: see
/// `plan::from_toml_str`).
pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
    Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(text))
        .extract::<Config>()
        .map_err(|e| ConfigError::Load(Box::new(e)))
}

fn figment(file: Option<&Path>, cli: &CliOverrides) -> Figment {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        fig = fig.merge(Toml::file_exact(path));
    }
    // Every option lives in a section, so only nested names (`SECTION__KEY`) are config.
    // This ignores JWKS_SIDECAR_CONFIG and the variables Kubernetes injects for a Service
    // named jwks-sidecar (JWKS_SIDECAR_PORT, JWKS_SIDECAR_SERVICE_HOST, ...).
    fig = fig.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    );
    if let Some(v) = cli.listen {
        fig = fig.merge(Serialized::default("proxy.listen", v));
    }
    if let Some(v) = &cli.upstream {
        fig = fig.merge(Serialized::default("proxy.upstream", v));
    }
    if let Some(v) = cli.admin_listen {
        fig = fig.merge(Serialized::default("admin.listen", v));
    }
    if let Some(issuer) = &cli.issuer {
        let provider = ProviderConfig {
            name: "default".into(),
            issuer: issuer.clone(),
            jwks_uri: cli.jwks_uri.clone(),
            discovery: cli.jwks_uri.is_none(),
            audiences: cli.audiences.clone(),
            claim_headers: BTreeMap::from([("sub".to_string(), "x-jwt-sub".to_string())]),
            ..ProviderConfig::default()
        };
        fig = fig.merge(Serialized::default("providers", vec![provider]));
    }
    fig
}
