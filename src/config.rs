//! Settings: built-in defaults → `chronicle.toml` (or `--config` / `CHRONICLE_CONFIG`) →
//! `CHRONICLE_*` environment variables, `__` for nesting. The variable names are a contract
//! with operators (API.md, Configuration).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RateLimitSettings {
    pub per_minute: u32,
    /// Per client IP on `/api/auth/*`, on top of `per_minute`: guessing passwords is slow.
    pub auth_per_minute: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthSettings {
    /// Lifetime of an access token.
    pub access_ttl_secs: u64,
    /// A refresh token unused for this long expires; each refresh starts it again.
    pub refresh_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorsSettings {
    #[serde(deserialize_with = "comma_separated")]
    pub origins: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LlmSettings {
    pub provider: Option<String>,
    pub base_url: Option<String>,
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingSettings {
    pub provider: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogSettings {
    /// `pretty` on a terminal, `json` otherwise, unless set.
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreSettings {
    /// Connections to PostgreSQL.
    pub max_connections: u32,
    /// A snapshot every this many events of one aggregate; 0 turns them off.
    pub snapshot_every: usize,
}

/// The built-in HTTP agent (`http.request` tasks). See [`crate::process::http_agent`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpAgentSettings {
    /// Whether this node runs the agent.
    pub enabled: bool,
    /// Tasks in flight at once (the registered agent's `max_concurrency`), 1 to 1000.
    pub max_concurrency: u32,
    /// Let requests reach loopback, private, link-local and other internal addresses.
    /// Off by default: a task must not reach the node's own network (SSRF).
    pub allow_private: bool,
    /// Networks allowed even though they are internal, e.g. `10.1.2.0/24` for one
    /// internal service; comma-separated in the environment.
    #[serde(deserialize_with = "comma_separated")]
    pub allow_networks: Vec<String>,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout_ms: u64,
    /// The whole exchange when the task sets no `timeout_ms`.
    pub default_timeout_ms: u64,
    /// A task's `timeout_ms` is capped here.
    pub max_timeout_ms: u64,
    /// A larger response body fails the task (`response_too_large`).
    pub max_response_bytes: u64,
    /// Redirects followed per request; each hop is checked like the first.
    pub max_redirects: usize,
}

impl Default for HttpAgentSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrency: 16,
            allow_private: false,
            allow_networks: Vec::new(),
            connect_timeout_ms: 5_000,
            default_timeout_ms: 30_000,
            max_timeout_ms: 300_000,
            max_response_bytes: 1024 * 1024,
            max_redirects: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DispatchSettings {
    /// A waiting long-poll or agent socket looks at the queue at least this often, even
    /// when nothing woke it (a safety net under the wake-ups).
    pub recheck_secs: u64,
}

impl DispatchSettings {
    pub fn recheck(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.recheck_secs)
    }
}

/// Live subscriptions (`/api/ws`, `/api/tasks/{id}/stream`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSettings {
    /// Messages queued per connection for a client that reads slower than events come; a
    /// WebSocket whose queue stays full is closed (4008) and its client resumes.
    pub buffer: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    pub bind: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    #[serde(skip_serializing)]
    pub jwt_secret: Option<SecretString>,
    pub profile: Profile,
    pub registration: Registration,
    pub rate_limit: RateLimitSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    pub llm: LlmSettings,
    pub embeddings: EmbeddingSettings,
    pub log: LogSettings,
    pub store: StoreSettings,
    pub dispatch: DispatchSettings,
    /// Largest request body in bytes.
    pub body_limit: usize,
    pub http_agent: HttpAgentSettings,
    pub live: LiveSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://data/chronicle.db".into(),
            data_dir: PathBuf::from("data"),
            jwt_secret: None,
            profile: Profile::Development,
            registration: Registration::Open,
            rate_limit: RateLimitSettings {
                per_minute: 600,
                auth_per_minute: 30,
            },
            auth: AuthSettings {
                access_ttl_secs: 15 * 60,
                refresh_ttl_secs: 30 * 24 * 60 * 60,
            },
            cors: CorsSettings {
                origins: vec![
                    "chrome-extension://*".into(),
                    "http://localhost".into(),
                    "http://127.0.0.1".into(),
                ],
            },
            llm: LlmSettings::default(),
            embeddings: EmbeddingSettings {
                provider: "builtin".into(),
            },
            log: LogSettings::default(),
            store: StoreSettings {
                max_connections: 32,
                snapshot_every: 50,
            },
            dispatch: DispatchSettings { recheck_secs: 5 },
            body_limit: 2 * 1024 * 1024,
            http_agent: HttpAgentSettings::default(),
            live: LiveSettings { buffer: 256 },
        }
    }
}

/// The longest token lifetime accepted: ten years.
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 60 * 60;

/// A setting that stops start-up, with the variable or key that holds it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Reads the layers. `file` wins over `CHRONICLE_CONFIG`; a missing default
    /// `chronicle.toml` is fine, a missing named file is not.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let named = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CHRONICLE_CONFIG").map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match &named {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::Invalid(format!(
                    "configuration file {} does not exist",
                    path.display()
                )))
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => figment = figment.merge(Toml::file("chronicle.toml")),
        }
        let figment = figment.merge(Env::prefixed("CHRONICLE_").split("__").ignore(&["config"]));
        let settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(&e)))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let url = self.database_url.as_str();
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if !known.iter().any(|scheme| url.starts_with(scheme)) {
            return Err(ConfigError::Invalid(format!(
                "CHRONICLE_DATABASE_URL: `{}` is not a sqlite://… or postgres://… URL",
                crate::store::redact_url(url)
            )));
        }
        if self.rate_limit.per_minute == 0 {
            return Err(ConfigError::Invalid(
                "CHRONICLE_RATE_LIMIT__PER_MINUTE: must be at least 1".into(),
            ));
        }
        if self.rate_limit.auth_per_minute == 0 {
            return Err(ConfigError::Invalid(
                "CHRONICLE_RATE_LIMIT__AUTH_PER_MINUTE: must be at least 1".into(),
            ));
        }
        if !(1..=3600).contains(&self.dispatch.recheck_secs) {
            return Err(ConfigError::Invalid(
                "CHRONICLE_DISPATCH__RECHECK_SECS: must be 1 to 3600".into(),
            ));
        }
        if !(1..=100_000).contains(&self.live.buffer) {
            return Err(ConfigError::Invalid(
                "CHRONICLE_LIVE__BUFFER: must be 1 to 100000".into(),
            ));
        }
        // Bounded so that `now + ttl` can never overflow a timestamp.
        let ttl_range = 1..=MAX_TTL_SECS;
        if !ttl_range.contains(&self.auth.access_ttl_secs)
            || !ttl_range.contains(&self.auth.refresh_ttl_secs)
        {
            return Err(ConfigError::Invalid(
                "CHRONICLE_AUTH__ACCESS_TTL_SECS and CHRONICLE_AUTH__REFRESH_TTL_SECS: must be 1 to 315360000 (10 years)"
                    .into(),
            ));
        }
        self.http_agent.check()?;
        if self.profile == Profile::Production && self.jwt_secret.is_none() {
            return Err(ConfigError::Invalid(
                "CHRONICLE_JWT_SECRET: required when CHRONICLE_PROFILE=production".into(),
            ));
        }
        Ok(())
    }
}

impl HttpAgentSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !(1..=1_000).contains(&self.max_concurrency) {
            return invalid("CHRONICLE_HTTP_AGENT__MAX_CONCURRENCY: must be 1 to 1000".into());
        }
        self.allowed_networks()?;
        let timeouts = [
            ("CONNECT_TIMEOUT_MS", self.connect_timeout_ms),
            ("DEFAULT_TIMEOUT_MS", self.default_timeout_ms),
            ("MAX_TIMEOUT_MS", self.max_timeout_ms),
        ];
        for (name, value) in timeouts {
            if !(1..=3_600_000).contains(&value) {
                return invalid(format!(
                    "CHRONICLE_HTTP_AGENT__{name}: must be 1 to 3600000 milliseconds"
                ));
            }
        }
        if self.max_response_bytes == 0 {
            return invalid("CHRONICLE_HTTP_AGENT__MAX_RESPONSE_BYTES: must be at least 1".into());
        }
        Ok(())
    }

    /// The networks of `allow_networks`.
    pub fn allowed_networks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.allow_networks
            .iter()
            .map(|network| {
                network.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "CHRONICLE_HTTP_AGENT__ALLOW_NETWORKS: `{network}` is not a network like 10.0.0.0/8 or fd00::/8"
                    ))
                })
            })
            .collect()
    }
}

/// figment's message, with the key spelled as the environment variable an operator sets.
fn describe(error: &figment::Error) -> String {
    let key = error.path.join(".");
    let variable = format!("CHRONICLE_{}", error.path.join("__").to_uppercase());
    if key.is_empty() {
        error.to_string()
    } else {
        format!("{variable} (`{key}`): {}", error.kind)
    }
}

fn comma_separated<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(list) => list,
    })
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn environment_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_BIND", "0.0.0.0:9000");
            jail.set_env("CHRONICLE_RATE_LIMIT__PER_MINUTE", "42");
            jail.set_env(
                "CHRONICLE_CORS__ORIGINS",
                "chrome-extension://abc, http://x",
            );
            let settings = Settings::load(None).expect("valid settings");
            assert_eq!(settings.bind.port(), 9000);
            assert_eq!(settings.rate_limit.per_minute, 42);
            assert_eq!(
                settings.cors.origins,
                ["chrome-extension://abc", "http://x"]
            );
            Ok(())
        });
    }

    #[test]
    fn file_then_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "chronicle.toml",
                "registration = \"closed\"\nbind = \"127.0.0.1:1\"",
            )?;
            jail.set_env("CHRONICLE_BIND", "127.0.0.1:2");
            let settings = Settings::load(None).expect("valid settings");
            assert_eq!(settings.registration, Registration::Closed);
            assert_eq!(settings.bind.port(), 2);
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_BIND", "not an address");
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.contains("CHRONICLE_BIND"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_PROFILE", "staging");
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.contains("CHRONICLE_PROFILE"), "{error}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_DATABASE_URL", "mysql://x");
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.starts_with("CHRONICLE_DATABASE_URL"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn token_lifetimes_are_bounded() {
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_AUTH__ACCESS_TTL_SECS", "60");
            assert_eq!(
                Settings::load(None).expect("valid").auth.access_ttl_secs,
                60
            );
            jail.set_env("CHRONICLE_AUTH__ACCESS_TTL_SECS", "0");
            assert!(Settings::load(None).is_err());
            jail.set_env("CHRONICLE_AUTH__ACCESS_TTL_SECS", "60");
            jail.set_env("CHRONICLE_AUTH__REFRESH_TTL_SECS", "9223372036854775807");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn http_agent_defaults_and_environment() {
        Jail::expect_with(|jail| {
            let settings = Settings::load(None).expect("valid settings");
            assert!(settings.http_agent.enabled);
            assert!(!settings.http_agent.allow_private);
            assert!(settings.http_agent.allow_networks.is_empty());
            assert_eq!(settings.http_agent.max_concurrency, 16);
            assert_eq!(settings.http_agent.max_response_bytes, 1024 * 1024);
            assert_eq!(settings.http_agent.max_redirects, 5);
            jail.set_env("CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE", "true");
            jail.set_env("CHRONICLE_HTTP_AGENT__MAX_CONCURRENCY", "4");
            jail.set_env(
                "CHRONICLE_HTTP_AGENT__ALLOW_NETWORKS",
                "10.1.2.0/24, fd00::/8",
            );
            jail.set_env("CHRONICLE_HTTP_AGENT__MAX_TIMEOUT_MS", "5000");
            let settings = Settings::load(None).expect("valid settings");
            assert!(settings.http_agent.allow_private);
            assert_eq!(settings.http_agent.max_concurrency, 4);
            assert_eq!(settings.http_agent.max_timeout_ms, 5_000);
            assert_eq!(
                settings.http_agent.allowed_networks().expect("networks"),
                [
                    "10.1.2.0/24".parse::<ipnet::IpNet>().expect("network"),
                    "fd00::/8".parse().expect("network"),
                ]
            );
            Ok(())
        });
    }

    #[test]
    fn bad_http_agent_values_name_the_variable() {
        for (variable, value) in [
            ("CHRONICLE_HTTP_AGENT__ALLOW_NETWORKS", "10.0.0.300/8"),
            ("CHRONICLE_HTTP_AGENT__MAX_CONCURRENCY", "0"),
            ("CHRONICLE_HTTP_AGENT__CONNECT_TIMEOUT_MS", "0"),
            ("CHRONICLE_HTTP_AGENT__MAX_RESPONSE_BYTES", "0"),
            ("CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE", "maybe"),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(variable, value);
                let error = Settings::load(None).unwrap_err().to_string();
                assert!(error.contains(variable), "{error}");
                Ok(())
            });
        }
    }

    #[test]
    fn production_requires_a_jwt_secret() {
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_PROFILE", "production");
            assert!(Settings::load(None).is_err());
            jail.set_env("CHRONICLE_JWT_SECRET", "a-long-secret");
            assert!(Settings::load(None).is_ok());
            Ok(())
        });
    }
}
