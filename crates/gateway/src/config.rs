//! Configuration: built-in defaults, then an optional TOML file (`--config`), then `GATEWAY_*`
//! environment variables; checked once by [`Config::load`], then shared as `Arc<Config>`. This is the
//! only module that reads the environment.

use std::{net::SocketAddr, path::Path};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use serde::Deserialize;

use crate::{db::Dialect, model::Secret};

const DEFAULTS: &str = include_str!("defaults.toml");

/// The shortest bootstrap admin key accepted: anything shorter is guessable.
const MIN_BOOTSTRAP_KEY_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The gateway's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `GATEWAY_LISTEN`: where the API listens.
    pub listen: String,
    /// `GATEWAY_DATABASE_URL`: `sqlite://path` or `postgres://...`.
    pub database_url: String,
    /// `GATEWAY_BOOTSTRAP_ADMIN_KEY`: accepted as an admin key, for first set-up and automation.
    #[serde(default)]
    pub bootstrap_admin_key: Option<Secret>,
    /// `GATEWAY_LOG_FORMAT`: `pretty` or `json`.
    pub log_format: LogFormat,
    /// `GATEWAY_LOG_LEVEL`: a tracing filter such as `info` or `gateway=debug,info`.
    pub log_level: String,
}

/// The settings, as file keys; `GATEWAY_` plus the upper-cased key is the environment variable.
pub const KEYS: [&str; 5] = [
    "listen",
    "database_url",
    "bootstrap_admin_key",
    "log_format",
    "log_level",
];

/// `GATEWAY_*` environment variables that are not settings (a typo, or a platform's own), to warn of.
pub fn ignored_env() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("GATEWAY_"))
        .filter(|k| !KEYS.iter().any(|key| env_name(key) == *k))
        .collect()
}

/// A configuration that cannot start the gateway, with a sentence naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn env_name(key: &str) -> String {
    format!("GATEWAY_{}", key.to_ascii_uppercase())
}

impl Config {
    /// Loads and checks the configuration.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "the file given with --config, {}, does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only the gateway's own settings: platforms add variables of their own under any prefix
        // (Kubernetes adds GATEWAY_SERVICE_HOST for a service named "gateway"). The rest are
        // reported by `ignored_env` so that a typo is still seen.
        figment = figment.merge(Env::prefixed("GATEWAY_").only(&KEYS));
        let config: Config = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            if key.is_empty() {
                ConfigError(e.to_string())
            } else {
                ConfigError(format!("`{key}` ({}): {}", env_name(&key), e.kind))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        Dialect::from_url(&self.database_url).map_err(|_| {
            ConfigError(format!(
                "`database_url` (GATEWAY_DATABASE_URL) must start with sqlite:// or postgres://; got {:?}",
                redact_url(&self.database_url)
            ))
        })?;
        if let Some(key) = &self.bootstrap_admin_key
            && key.expose().len() < MIN_BOOTSTRAP_KEY_LEN
        {
            return Err(ConfigError(format!(
                "`bootstrap_admin_key` (GATEWAY_BOOTSTRAP_ADMIN_KEY) must be at least {MIN_BOOTSTRAP_KEY_LEN} characters"
            )));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            ConfigError(format!(
                "`log_level` (GATEWAY_LOG_LEVEL) is not a log filter such as \"info\": {e}"
            ))
        })?;
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError(format!(
                "`listen` (GATEWAY_LISTEN) must be an address and port such as 127.0.0.1:8080; got {:?}",
                self.listen
            ))
        })
    }
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
