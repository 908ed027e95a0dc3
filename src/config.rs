//! Settings: built-in defaults → `chronicle.toml` or `chronicle.yaml` (or `--config` /
//! `CHRONICLE_CONFIG`) → `CHRONICLE_*` environment variables, `__` for nesting. The variable
//! names are a contract with operators (API.md, Configuration); `ops/config/*.toml` shows
//! every setting with its meaning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml, Yaml};
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
    /// Per client IP on every request, checked before the credentials are (so a flood of
    /// bogus API keys costs no store reads); ten times `per_minute` when unset.
    pub per_ip_per_minute: Option<u32>,
}

impl RateLimitSettings {
    /// The limit per client IP before authentication.
    pub fn per_ip(&self) -> u32 {
        self.per_ip_per_minute
            .unwrap_or_else(|| self.per_minute.saturating_mul(10))
    }
}

/// Chronicle serving HTTPS itself: both paths or neither.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. Re-read with the key on SIGHUP.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
}

impl TlsSettings {
    /// The certificate and key paths when TLS is on.
    pub fn paths(&self) -> Option<(&Path, &Path)> {
        Some((self.cert_path.as_deref()?, self.key_path.as_deref()?))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthSettings {
    /// Lifetime of an access token.
    pub access_ttl_secs: u64,
    /// A refresh token unused for this long expires; each refresh starts it again.
    pub refresh_ttl_secs: u64,
    /// How long a node trusts an API key it verified without loading it again (revocation,
    /// rotation and role changes end it sooner, on every node); 0 turns the cache off.
    pub api_key_cache_secs: u64,
    /// At most this many verified API keys are kept per node; the least recently used go.
    pub api_key_cache_entries: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorsSettings {
    #[serde(deserialize_with = "comma_separated")]
    pub origins: Vec<String>,
}

/// The language model behind `llm.chat` tasks. See [`crate::process::llm`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmSettings {
    /// `openai`, `anthropic` or `ollama`; unset, no built-in LLM agent runs.
    pub provider: Option<String>,
    /// The provider's API root; the provider's own when unset.
    pub base_url: Option<String>,
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// The model asked when a task names none; the provider's default when unset.
    pub model: Option<String>,
    /// Tasks in flight at once (the registered agent's `max_concurrency`), 1 to 1000.
    pub max_concurrency: u32,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout_ms: u64,
    /// The whole exchange, streamed answer included.
    pub timeout_ms: u64,
    /// Further tries after a 429 or 5xx answer (before any token came).
    pub max_retries: u32,
    /// The first retry's delay; doubled each time, capped by `max_backoff_ms` (a
    /// `Retry-After` is honoured up to that cap).
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The earlier turns of a conversation sent with a new message, in estimated tokens
    /// (characters / 4); the oldest turns are dropped first.
    pub conversation_budget_tokens: u32,
    /// Context retrieved for `use_context`: documents and characters at most.
    pub context_limit: u32,
    pub context_max_chars: u32,
    /// `max_tokens` when a task sets none (Anthropic requires one).
    pub default_max_tokens: u32,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            provider: None,
            base_url: None,
            api_key: None,
            model: None,
            max_concurrency: 8,
            connect_timeout_ms: 5_000,
            timeout_ms: 120_000,
            max_retries: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            conversation_budget_tokens: 4_000,
            context_limit: 5,
            context_max_chars: 4_000,
            default_max_tokens: 1_024,
        }
    }
}

impl LlmSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if let Some(provider) = &self.provider {
            if !chronicle_commands::llm_chat::LlmChatInput::PROVIDERS.contains(&provider.as_str()) {
                return invalid(format!(
                    "CHRONICLE_LLM__PROVIDER: `{provider}` is not one of openai, anthropic, ollama"
                ));
            }
        }
        if let Some(base_url) = &self.base_url {
            let parsed = url::Url::parse(base_url).ok();
            if !parsed.is_some_and(|url| matches!(url.scheme(), "http" | "https")) {
                return invalid(
                    "CHRONICLE_LLM__BASE_URL: must be an http:// or https:// URL".into(),
                );
            }
        }
        if !(1..=1_000).contains(&self.max_concurrency) {
            return invalid("CHRONICLE_LLM__MAX_CONCURRENCY: must be 1 to 1000".into());
        }
        let times = [
            ("CONNECT_TIMEOUT_MS", self.connect_timeout_ms),
            ("TIMEOUT_MS", self.timeout_ms),
            ("INITIAL_BACKOFF_MS", self.initial_backoff_ms),
            ("MAX_BACKOFF_MS", self.max_backoff_ms),
        ];
        for (name, value) in times {
            if !(1..=3_600_000).contains(&value) {
                return invalid(format!(
                    "CHRONICLE_LLM__{name}: must be 1 to 3600000 milliseconds"
                ));
            }
        }
        if self.max_retries > 10 {
            return invalid("CHRONICLE_LLM__MAX_RETRIES: must be 0 to 10".into());
        }
        let counts = [
            (
                "CONVERSATION_BUDGET_TOKENS",
                self.conversation_budget_tokens,
            ),
            ("CONTEXT_LIMIT", self.context_limit),
            ("CONTEXT_MAX_CHARS", self.context_max_chars),
            ("DEFAULT_MAX_TOKENS", self.default_max_tokens),
        ];
        for (name, value) in counts {
            if !(1..=1_000_000).contains(&value) {
                return invalid(format!("CHRONICLE_LLM__{name}: must be 1 to 1000000"));
            }
        }
        Ok(())
    }
}

/// What embeds text for the search index's vector leg (`CHRONICLE_EMBEDDINGS__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingSettings {
    /// `builtin`, `local` (a build with the `local-embeddings` feature), `openai` or
    /// `ollama`.
    pub provider: String,
    /// `local`: the sentence-transformers model folder (`config.json`, `tokenizer.json`,
    /// `model.safetensors`, `sentence_bert_config.json`).
    pub model_dir: Option<PathBuf>,
    /// `openai`, `ollama`: the model the server is asked for (required).
    pub model: Option<String>,
    /// `openai`, `ollama`: the server's root (required), e.g. `http://127.0.0.1:11434`.
    pub base_url: Option<String>,
    /// `openai`: sent as `Authorization: Bearer`.
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// `openai`, `ollama`: the vectors' length (sent to `openai` as `dimensions`); when
    /// unset the server is asked for one vector at start.
    pub dimensions: Option<usize>,
    /// `openai`, `ollama`: texts per request, 1 to 2048.
    pub batch_size: usize,
    pub connect_timeout_ms: u64,
    /// One request, its answer included.
    pub timeout_ms: u64,
    /// Further tries after a 429, a 5xx or a failed connection.
    pub max_retries: u32,
    /// The first retry's delay; doubled each time, capped by `max_backoff_ms` (a
    /// `Retry-After` is honoured up to that cap).
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for EmbeddingSettings {
    fn default() -> Self {
        Self {
            provider: "builtin".into(),
            model_dir: None,
            model: None,
            base_url: None,
            api_key: None,
            dimensions: None,
            batch_size: 64,
            connect_timeout_ms: 5_000,
            timeout_ms: 60_000,
            max_retries: 4,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
        }
    }
}

impl EmbeddingSettings {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        match self.provider.as_str() {
            "builtin" => {}
            "local" => {
                if self.model_dir.is_none() {
                    return invalid(
                        "CHRONICLE_EMBEDDINGS__MODEL_DIR: required with the local provider",
                    );
                }
            }
            "openai" | "ollama" => {
                let parsed = self
                    .base_url
                    .as_deref()
                    .and_then(|u| url::Url::parse(u).ok());
                if !parsed.is_some_and(|url| matches!(url.scheme(), "http" | "https")) {
                    return invalid(
                        "CHRONICLE_EMBEDDINGS__BASE_URL: an http:// or https:// URL is required \
                         with the openai and ollama providers",
                    );
                }
                if self.model.as_deref().is_none_or(str::is_empty) {
                    return invalid(
                        "CHRONICLE_EMBEDDINGS__MODEL: required with the openai and ollama providers",
                    );
                }
            }
            _ => {
                return invalid(
                    "CHRONICLE_EMBEDDINGS__PROVIDER: must be builtin, local, openai or ollama",
                )
            }
        }
        if self.dimensions.is_some_and(|d| !(1..=65_536).contains(&d)) {
            return invalid("CHRONICLE_EMBEDDINGS__DIMENSIONS: must be 1 to 65536");
        }
        if !(1..=2_048).contains(&self.batch_size) {
            return invalid("CHRONICLE_EMBEDDINGS__BATCH_SIZE: must be 1 to 2048");
        }
        let times = [
            ("CONNECT_TIMEOUT_MS", self.connect_timeout_ms),
            ("TIMEOUT_MS", self.timeout_ms),
            ("INITIAL_BACKOFF_MS", self.initial_backoff_ms),
            ("MAX_BACKOFF_MS", self.max_backoff_ms),
        ];
        for (name, value) in times {
            if !(1..=3_600_000).contains(&value) {
                return Err(ConfigError::Invalid(format!(
                    "CHRONICLE_EMBEDDINGS__{name}: must be 1 to 3600000 milliseconds"
                )));
            }
        }
        if self.max_retries > 10 {
            return invalid("CHRONICLE_EMBEDDINGS__MAX_RETRIES: must be 0 to 10");
        }
        Ok(())
    }
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
    /// MiB of recently written aggregates each node keeps to skip their next load; 0 keeps
    /// none.
    pub aggregate_cache_mb: usize,
}

/// Chain checkpoints (see [`crate::store::checkpoint`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditSettings {
    /// A checkpoint about every this many events; 0 turns the background loop off.
    pub checkpoint_every: u64,
    /// The checkpoint MAC key's secret; derived from the server secret when unset.
    #[serde(skip_serializing)]
    pub key: Option<SecretString>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            checkpoint_every: 1_000,
            key: None,
        }
    }
}

/// `GET /api/metrics` (see [`crate::meters`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetricsSettings {
    /// When set, a scrape must bring it as `Authorization: Bearer …`; else anyone may scrape.
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
}

/// Error tracking (see [`crate::error_tracking`]): off unless a DSN is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SentrySettings {
    /// Where panics and `error!` events go, as a Sentry DSN
    /// (`https://<public key>@<host>/<project id>`); unset, nothing is sent.
    #[serde(skip_serializing)]
    pub dsn: Option<SecretString>,
    /// The environment the events name; the profile (`development`, `production`) when unset.
    pub environment: Option<String>,
    /// The release the events name; `chronicle@<version>` when unset.
    pub release: Option<String>,
    /// The share of error events sent, 0.0 to 1.0.
    pub sample_rate: f32,
}

impl Default for SentrySettings {
    fn default() -> Self {
        Self {
            dsn: None,
            environment: None,
            release: None,
            sample_rate: 1.0,
        }
    }
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
    /// Production refuses `allow_private` unless this says the operator means it.
    pub allow_private_acknowledged: bool,
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
            allow_private_acknowledged: false,
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
    /// Reverse proxies (CIDRs, comma-separated in the environment) whose `X-Forwarded-For`
    /// and `X-Forwarded-Proto` are believed; nobody else's are.
    #[serde(deserialize_with = "comma_separated")]
    pub trusted_proxies: Vec<String>,
    pub tls: TlsSettings,
    /// How long an answer of the anonymous `/api/status` is reused, in milliseconds.
    pub status_cache_ms: u64,
    /// A test hook, never read from a file or the environment: this many commits of
    /// requests with an `Idempotency-Key` answer 503 right after committing.
    #[serde(skip)]
    pub fail_after_commit: u32,
    pub audit: AuditSettings,
    pub live: LiveSettings,
    pub metrics: MetricsSettings,
    pub sentry: SentrySettings,
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
                per_ip_per_minute: None,
            },
            auth: AuthSettings {
                access_ttl_secs: 15 * 60,
                refresh_ttl_secs: 30 * 24 * 60 * 60,
                api_key_cache_secs: 30,
                api_key_cache_entries: 10_000,
            },
            cors: CorsSettings {
                origins: vec![
                    "chrome-extension://*".into(),
                    "http://localhost".into(),
                    "http://127.0.0.1".into(),
                ],
            },
            llm: LlmSettings::default(),
            embeddings: EmbeddingSettings::default(),
            log: LogSettings::default(),
            store: StoreSettings {
                max_connections: 32,
                snapshot_every: 50,
                aggregate_cache_mb: 64,
            },
            dispatch: DispatchSettings { recheck_secs: 5 },
            body_limit: 2 * 1024 * 1024,
            http_agent: HttpAgentSettings::default(),
            trusted_proxies: Vec::new(),
            tls: TlsSettings::default(),
            status_cache_ms: 1000,
            fail_after_commit: 0,
            audit: AuditSettings::default(),
            live: LiveSettings { buffer: 256 },
            metrics: MetricsSettings::default(),
            sentry: SentrySettings::default(),
        }
    }
}

/// The shortest JWT secret production accepts (RFC 8725 §3.5: HS256 wants 256 bits).
const MIN_JWT_SECRET_BYTES: usize = 32;

/// The longest token lifetime accepted: ten years.
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 60 * 60;

/// A setting that stops start-up, with the variable or key that holds it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Reads the layers. `file` wins over `CHRONICLE_CONFIG`; a file named `.yaml` or `.yml`
    /// is YAML, any other TOML. A missing default `chronicle.toml` / `chronicle.yaml` is
    /// fine, a missing named file is not, and so are both defaults at once.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let named = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CHRONICLE_CONFIG").map(PathBuf::from));
        let path = match named {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::Invalid(format!(
                    "configuration file {} does not exist",
                    path.display()
                )))
            }
            Some(path) => Some(path),
            None => default_file()?,
        };
        // What the operator wrote, apart from the defaults: production asks whether some
        // settings were chosen rather than inherited.
        let mut layers = Figment::new();
        if let Some(path) = &path {
            layers = match FileFormat::of(path) {
                FileFormat::Toml => layers.merge(Toml::file(path)),
                FileFormat::Yaml => layers.merge(Yaml::file(path)),
            };
        }
        let layers = layers.merge(Env::prefixed("CHRONICLE_").split("__").ignore(&["config"]));
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(layers.clone())
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(&e)))?;
        settings.check()?;
        if settings.profile == Profile::Production {
            settings.check_production(&Chosen {
                registration: layers.contains("registration"),
            })?;
        }
        Ok(settings)
    }

    /// The unsafe defaults production refuses, each as one line naming the setting.
    fn check_production(&self, chosen: &Chosen) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let refuse = |message: &str| Err(ConfigError::Invalid(message.to_owned()));
        match &self.jwt_secret {
            None => {
                return refuse("CHRONICLE_JWT_SECRET: required when CHRONICLE_PROFILE=production")
            }
            Some(secret) if secret.expose_secret().len() < MIN_JWT_SECRET_BYTES => {
                return refuse(
                    "CHRONICLE_JWT_SECRET: must be at least 32 bytes when CHRONICLE_PROFILE=production (e.g. `openssl rand -hex 32`)",
                )
            }
            Some(_) => {}
        }
        if let Some(wildcard) = self.cors.origins.iter().find(|o| o.contains('*')) {
            return Err(ConfigError::Invalid(format!(
                "CHRONICLE_CORS__ORIGINS: `{wildcard}` allows any origin; list each one (chrome-extension://<extension id>) when CHRONICLE_PROFILE=production"
            )));
        }
        if !chosen.registration {
            return refuse(
                "CHRONICLE_REGISTRATION: set it to `open` or `closed` when CHRONICLE_PROFILE=production (the default is open)",
            );
        }
        if self.http_agent.allow_private && !self.http_agent.allow_private_acknowledged {
            return refuse(
                "CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE: lets tasks reach internal addresses; set CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE_ACKNOWLEDGED=true to accept that when CHRONICLE_PROFILE=production",
            );
        }
        if self.tls.paths().is_none() && self.trusted_proxies.is_empty() {
            return refuse(
                "CHRONICLE_TLS__CERT_PATH and CHRONICLE_TLS__KEY_PATH (Chronicle serves HTTPS), or CHRONICLE_TRUSTED_PROXIES (a proxy that sends X-Forwarded-Proto: https): required when CHRONICLE_PROFILE=production",
            );
        }
        Ok(())
    }

    /// The networks of `trusted_proxies`.
    pub fn trusted_networks(&self) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .map(|network| parse_network(network, "CHRONICLE_TRUSTED_PROXIES"))
            .collect()
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
        if self.auth.api_key_cache_secs > 300 || self.auth.api_key_cache_entries > 1_000_000 {
            return Err(ConfigError::Invalid(
                "CHRONICLE_AUTH__API_KEY_CACHE_SECS must be 0 to 300 and \
                 CHRONICLE_AUTH__API_KEY_CACHE_ENTRIES 0 to 1000000"
                    .into(),
            ));
        }
        self.http_agent.check()?;
        self.llm.check()?;
        self.embeddings.check()?;
        self.sentry.check()?;
        self.trusted_networks()?;
        if self.tls.cert_path.is_some() != self.tls.key_path.is_some() {
            return Err(ConfigError::Invalid(
                "CHRONICLE_TLS__CERT_PATH and CHRONICLE_TLS__KEY_PATH: set both or neither".into(),
            ));
        }
        Ok(())
    }
}

impl SentrySettings {
    fn check(&self) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        if let Some(dsn) = &self.dsn {
            if dsn.expose_secret().parse::<sentry::types::Dsn>().is_err() {
                // The DSN holds a key: never echo it.
                return Err(ConfigError::Invalid(
                    "CHRONICLE_SENTRY__DSN: not a DSN like https://<key>@<host>/<project id>"
                        .into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(ConfigError::Invalid(
                "CHRONICLE_SENTRY__SAMPLE_RATE: must be 0.0 to 1.0".into(),
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
            .map(|network| parse_network(network, "CHRONICLE_HTTP_AGENT__ALLOW_NETWORKS"))
            .collect()
    }
}

/// Which settings the operator set rather than left at their default.
struct Chosen {
    registration: bool,
}

/// The configuration files read when none is named, in the working directory.
const DEFAULT_FILES: [&str; 3] = ["chronicle.toml", "chronicle.yaml", "chronicle.yml"];

/// The default file that is present, if one is; two of them would leave it unclear which
/// one the operator edits.
fn default_file() -> Result<Option<PathBuf>, ConfigError> {
    let present: Vec<&str> = DEFAULT_FILES
        .into_iter()
        .filter(|name| Path::new(name).is_file())
        .collect();
    match present.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(PathBuf::from(one))),
        several => Err(ConfigError::Invalid(format!(
            "configuration files {} are all present; keep one (or name it with --config)",
            several.join(" and ")
        ))),
    }
}

/// How a configuration file is written, told by its extension.
enum FileFormat {
    Toml,
    Yaml,
}

impl FileFormat {
    fn of(path: &Path) -> Self {
        match path.extension().and_then(|extension| extension.to_str()) {
            Some(extension)
                if extension.eq_ignore_ascii_case("yaml")
                    || extension.eq_ignore_ascii_case("yml") =>
            {
                Self::Yaml
            }
            _ => Self::Toml,
        }
    }
}

/// A CIDR, or a bare address as its own /32 or /128.
fn parse_network(network: &str, variable: &str) -> Result<ipnet::IpNet, ConfigError> {
    network
        .parse()
        .or_else(|_| network.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            ConfigError::Invalid(format!(
                "{variable}: `{network}` is not a network like 10.0.0.0/8 or fd00::/8"
            ))
        })
}

/// figment's message, with the key spelled as the environment variable an operator sets and
/// the file it came from, if it came from one.
fn describe(error: &figment::Error) -> String {
    let key = error.path.join(".");
    let variable = format!("CHRONICLE_{}", error.path.join("__").to_uppercase());
    let file = error
        .metadata
        .as_ref()
        .and_then(|metadata| metadata.source.as_ref())
        .and_then(|source| source.file_path());
    match (key.is_empty(), file) {
        (true, Some(file)) => format!("configuration file {}: {}", file.display(), error.kind),
        (true, None) => error.to_string(),
        (false, Some(file)) => {
            format!("{variable} (`{key}` in {}): {}", file.display(), error.kind)
        }
        (false, None) => format!("{variable} (`{key}`): {}", error.kind),
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
    fn llm_defaults_and_bad_values() {
        Jail::expect_with(|jail| {
            let settings = Settings::load(None).expect("valid settings");
            assert!(settings.llm.provider.is_none());
            jail.set_env("CHRONICLE_LLM__PROVIDER", "anthropic");
            jail.set_env("CHRONICLE_LLM__API_KEY", "sk-secret-value");
            jail.set_env("CHRONICLE_LLM__CONVERSATION_BUDGET_TOKENS", "100");
            let settings = Settings::load(None).expect("valid settings");
            assert_eq!(settings.llm.provider.as_deref(), Some("anthropic"));
            assert_eq!(settings.llm.conversation_budget_tokens, 100);
            // The key is never in what the settings show.
            let shown = serde_json::to_string(&settings).expect("serialize");
            assert!(!shown.contains("sk-secret-value"));
            assert!(!format!("{settings:?}").contains("sk-secret-value"));
            Ok(())
        });
        for (variable, value) in [
            ("CHRONICLE_LLM__PROVIDER", "azure"),
            ("CHRONICLE_LLM__BASE_URL", "ftp://x"),
            ("CHRONICLE_LLM__TIMEOUT_MS", "0"),
            ("CHRONICLE_LLM__MAX_RETRIES", "11"),
            ("CHRONICLE_LLM__CONVERSATION_BUDGET_TOKENS", "0"),
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
    fn embeddings_defaults_and_bad_values() {
        Jail::expect_with(|jail| {
            let settings = Settings::load(None).expect("valid settings");
            assert_eq!(settings.embeddings.provider, "builtin");
            jail.set_env("CHRONICLE_EMBEDDINGS__PROVIDER", "openai");
            jail.set_env("CHRONICLE_EMBEDDINGS__BASE_URL", "http://127.0.0.1:8080");
            jail.set_env("CHRONICLE_EMBEDDINGS__MODEL", "text-embedding-3-small");
            jail.set_env("CHRONICLE_EMBEDDINGS__API_KEY", "sk-embedding-secret");
            jail.set_env("CHRONICLE_EMBEDDINGS__DIMENSIONS", "512");
            jail.set_env("CHRONICLE_EMBEDDINGS__BATCH_SIZE", "16");
            let settings = Settings::load(None).expect("valid settings");
            assert_eq!(settings.embeddings.dimensions, Some(512));
            assert_eq!(settings.embeddings.batch_size, 16);
            let shown = serde_json::to_string(&settings).expect("serialize");
            assert!(!shown.contains("sk-embedding-secret"));
            assert!(!format!("{settings:?}").contains("sk-embedding-secret"));
            Ok(())
        });
        let cases: [&[(&str, &str)]; 8] = [
            &[("CHRONICLE_EMBEDDINGS__PROVIDER", "word2vec")],
            &[("CHRONICLE_EMBEDDINGS__PROVIDER", "local")],
            &[
                ("CHRONICLE_EMBEDDINGS__PROVIDER", "ollama"),
                ("CHRONICLE_EMBEDDINGS__MODEL", "m"),
            ],
            &[
                ("CHRONICLE_EMBEDDINGS__PROVIDER", "openai"),
                ("CHRONICLE_EMBEDDINGS__BASE_URL", "http://127.0.0.1:1"),
            ],
            &[("CHRONICLE_EMBEDDINGS__DIMENSIONS", "0")],
            &[("CHRONICLE_EMBEDDINGS__BATCH_SIZE", "0")],
            &[("CHRONICLE_EMBEDDINGS__TIMEOUT_MS", "0")],
            &[("CHRONICLE_EMBEDDINGS__MAX_RETRIES", "11")],
        ];
        let named = [
            "CHRONICLE_EMBEDDINGS__PROVIDER",
            "CHRONICLE_EMBEDDINGS__MODEL_DIR",
            "CHRONICLE_EMBEDDINGS__BASE_URL",
            "CHRONICLE_EMBEDDINGS__MODEL",
            "CHRONICLE_EMBEDDINGS__DIMENSIONS",
            "CHRONICLE_EMBEDDINGS__BATCH_SIZE",
            "CHRONICLE_EMBEDDINGS__TIMEOUT_MS",
            "CHRONICLE_EMBEDDINGS__MAX_RETRIES",
        ];
        for (variables, named) in cases.into_iter().zip(named) {
            Jail::expect_with(|jail| {
                for (variable, value) in variables {
                    jail.set_env(variable, value);
                }
                let error = Settings::load(None).unwrap_err().to_string();
                assert!(
                    error.contains(&format!("{named}:")),
                    "{variables:?}: {error}"
                );
                Ok(())
            });
        }
    }

    /// Everything production asks for, chosen safely.
    fn safe_production(jail: &mut Jail) {
        jail.set_env("CHRONICLE_PROFILE", "production");
        jail.set_env("CHRONICLE_JWT_SECRET", "0123456789abcdef0123456789abcdef");
        jail.set_env(
            "CHRONICLE_CORS__ORIGINS",
            "chrome-extension://abcdefghijklmnopabcdefghijklmnop",
        );
        jail.set_env("CHRONICLE_REGISTRATION", "closed");
        jail.set_env("CHRONICLE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1");
    }

    /// The refusal of `change` on top of [`safe_production`]: one line, naming `variable`.
    fn refusal(change: impl FnOnce(&mut Jail), variable: &str) {
        Jail::expect_with(|jail| {
            safe_production(jail);
            change(jail);
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.starts_with(variable), "{variable}: {error}");
            assert!(!error.contains('\n'), "{error}");
            Ok(())
        });
    }

    #[test]
    fn production_accepts_safe_choices() {
        Jail::expect_with(|jail| {
            safe_production(jail);
            let settings = Settings::load(None).expect("valid settings");
            assert_eq!(settings.trusted_networks().expect("networks").len(), 2);
            jail.set_env("CHRONICLE_REGISTRATION", "open");
            jail.set_env("CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE", "true");
            jail.set_env("CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE_ACKNOWLEDGED", "true");
            assert!(Settings::load(None).is_ok());
            // TLS served by Chronicle instead of a proxy.
            jail.set_env("CHRONICLE_TRUSTED_PROXIES", "");
            jail.set_env("CHRONICLE_TLS__CERT_PATH", "/etc/chronicle/cert.pem");
            jail.set_env("CHRONICLE_TLS__KEY_PATH", "/etc/chronicle/key.pem");
            assert!(Settings::load(None).is_ok());
            Ok(())
        });
        // Development keeps its conveniences.
        Jail::expect_with(|_| {
            assert!(Settings::load(None).is_ok());
            Ok(())
        });
    }

    #[test]
    fn production_refuses_unsafe_defaults() {
        refusal(
            |_| std::env::remove_var("CHRONICLE_JWT_SECRET"),
            "CHRONICLE_JWT_SECRET",
        );
        refusal(
            |j| j.set_env("CHRONICLE_JWT_SECRET", "a-long-secret"),
            "CHRONICLE_JWT_SECRET",
        );
        refusal(
            |j| j.set_env("CHRONICLE_CORS__ORIGINS", "chrome-extension://*"),
            "CHRONICLE_CORS__ORIGINS",
        );
        refusal(
            |j| j.set_env("CHRONICLE_CORS__ORIGINS", "https://app.example, *"),
            "CHRONICLE_CORS__ORIGINS",
        );
        refusal(
            |_| std::env::remove_var("CHRONICLE_REGISTRATION"),
            "CHRONICLE_REGISTRATION",
        );
        refusal(
            |j| j.set_env("CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE", "true"),
            "CHRONICLE_HTTP_AGENT__ALLOW_PRIVATE",
        );
        refusal(
            |j| j.set_env("CHRONICLE_TRUSTED_PROXIES", ""),
            "CHRONICLE_TLS__CERT_PATH",
        );
    }

    #[test]
    fn registration_in_a_file_counts_as_chosen() {
        Jail::expect_with(|jail| {
            safe_production(jail);
            std::env::remove_var("CHRONICLE_REGISTRATION");
            jail.create_file("chronicle.toml", "registration = \"open\"")?;
            assert!(Settings::load(None).is_ok());
            Ok(())
        });
    }

    #[test]
    fn tls_and_proxies_are_checked_in_every_profile() {
        Jail::expect_with(|jail| {
            jail.set_env("CHRONICLE_TLS__CERT_PATH", "cert.pem");
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.starts_with("CHRONICLE_TLS__CERT_PATH"), "{error}");
            jail.set_env("CHRONICLE_TLS__KEY_PATH", "key.pem");
            assert!(Settings::load(None).is_ok());
            jail.set_env("CHRONICLE_TRUSTED_PROXIES", "10.0.0.0/33");
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(error.starts_with("CHRONICLE_TRUSTED_PROXIES"), "{error}");
            Ok(())
        });
    }

    /// One configuration with a value in every table, written twice.
    const SAME_AS_TOML: &str = r#"
bind = "0.0.0.0:9001"
database_url = "postgres://chronicle@db:5432/chronicle"
jwt_secret = "a yaml and toml secret of thirty-two bytes"
registration = "closed"
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]
body_limit = 1048576

[rate_limit]
per_minute = 120
per_ip_per_minute = 900

[cors]
origins = ["chrome-extension://abcdefghijklmnopabcdefghijklmnop", "https://console.example"]

[llm]
provider = "ollama"
base_url = "http://127.0.0.1:11434"
model = "llama3"

[http_agent]
max_concurrency = 4
allow_networks = ["10.1.2.0/24"]

[audit]
checkpoint_every = 10
key = "an audit key"

[live]
buffer = 64
"#;

    const SAME_AS_YAML: &str = r#"
# The same settings as SAME_AS_TOML.
bind: 0.0.0.0:9001
database_url: postgres://chronicle@db:5432/chronicle
jwt_secret: a yaml and toml secret of thirty-two bytes
registration: closed
trusted_proxies:
  - 10.0.0.0/8
  - 192.0.2.1
body_limit: 1048576
rate_limit:
  per_minute: 120
  per_ip_per_minute: 900
cors:
  origins: [chrome-extension://abcdefghijklmnopabcdefghijklmnop, https://console.example]
llm:
  provider: ollama
  base_url: http://127.0.0.1:11434
  model: llama3
http_agent:
  max_concurrency: 4
  allow_networks: [10.1.2.0/24]
audit:
  checkpoint_every: 10
  key: an audit key
live:
  buffer: 64
"#;

    /// Everything in `settings`, secrets included, for comparing two loads.
    fn everything(settings: &Settings) -> serde_json::Value {
        use secrecy::ExposeSecret;
        let mut value = serde_json::to_value(settings).expect("settings serialize");
        value["jwt_secret"] = settings
            .jwt_secret
            .as_ref()
            .map(|secret| secret.expose_secret().to_owned())
            .into();
        value["audit"]["key"] = settings
            .audit
            .key
            .as_ref()
            .map(|key| key.expose_secret().to_owned())
            .into();
        value
    }

    #[test]
    fn a_yaml_file_gives_the_settings_of_the_same_toml_file() {
        Jail::expect_with(|jail| {
            jail.create_file("chronicle.toml", SAME_AS_TOML)?;
            jail.create_file("named.yml", SAME_AS_YAML)?;
            let from_toml = Settings::load(None).expect("valid TOML");
            let from_yaml = Settings::load(Some(Path::new("named.yml"))).expect("valid YAML");
            assert_eq!(everything(&from_toml), everything(&from_yaml));
            // Not the defaults: the files were read.
            assert_eq!(from_yaml.bind.port(), 9001);
            assert_eq!(from_yaml.trusted_proxies, ["10.0.0.0/8", "192.0.2.1"]);
            assert_eq!(from_yaml.rate_limit.per_ip(), 900);
            assert_eq!(from_yaml.live.buffer, 64);
            Ok(())
        });
    }

    #[test]
    fn chronicle_yaml_is_read_by_default_and_the_environment_still_wins() {
        Jail::expect_with(|jail| {
            jail.create_file("chronicle.yaml", SAME_AS_YAML)?;
            jail.set_env("CHRONICLE_LIVE__BUFFER", "8");
            let settings = Settings::load(None).expect("valid YAML");
            assert_eq!(settings.registration, Registration::Closed);
            assert_eq!(settings.live.buffer, 8);
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.create_file("settings.yaml", "registration: closed")?;
            jail.set_env("CHRONICLE_CONFIG", "settings.yaml");
            let settings = Settings::load(None).expect("valid YAML");
            assert_eq!(settings.registration, Registration::Closed);
            Ok(())
        });
    }

    #[test]
    fn two_default_files_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("chronicle.toml", "registration = \"closed\"")?;
            jail.create_file("chronicle.yaml", "registration: open")?;
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(
                error.contains("chronicle.toml and chronicle.yaml"),
                "{error}"
            );
            // Naming one settles it.
            let settings = Settings::load(Some(Path::new("chronicle.yaml"))).expect("named");
            assert_eq!(settings.registration, Registration::Open);
            Ok(())
        });
    }

    #[test]
    fn a_bad_yaml_file_names_the_file_and_the_line() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "chronicle.yaml",
                "bind: 0.0.0.0:1\nrate_limit:\n  per_minute: [1\n",
            )?;
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(
                error.starts_with("configuration file ") && error.contains("chronicle.yaml"),
                "{error}"
            );
            assert!(error.contains("line 3"), "{error}");
            Ok(())
        });
        // Well-formed YAML with a value of the wrong kind: the key, its variable and the file.
        Jail::expect_with(|jail| {
            jail.create_file("chronicle.yaml", "live:\n  buffer: lots\n")?;
            let error = Settings::load(None).unwrap_err().to_string();
            assert!(
                error.starts_with("CHRONICLE_LIVE__BUFFER (`live.buffer` in ")
                    && error.contains("chronicle.yaml"),
                "{error}"
            );
            Ok(())
        });
    }

    /// The example files under `ops/config/`.
    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("ops/config")
            .join(name)
    }

    /// The settings never serialized (secrets), which the examples still show.
    const SECRET_KEYS: [&str; 6] = [
        "jwt_secret",
        "llm.api_key",
        "embeddings.api_key",
        "audit.key",
        "metrics.token",
        "sentry.dsn",
    ];

    /// Every leaf key of `value` (a table of tables), dotted.
    fn leaf_keys(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(table) => {
                for (name, value) in table {
                    let key = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    leaf_keys(&key, value, keys);
                }
            }
            _ => keys.push(prefix.to_owned()),
        }
    }

    /// `text` with each commented-out setting (`# key = value`) switched on.
    fn uncommented(text: &str) -> String {
        let setting = regex::Regex::new(r"^#\s?([a-z_]+ = )").expect("pattern");
        text.lines()
            .map(|line| setting.replace(line, "$1").into_owned() + "\n")
            .collect()
    }

    /// Every setting, shown in `file` (set or commented out), and nothing that is not one.
    fn assert_shows_every_setting(file: &Path) {
        let text = std::fs::read_to_string(file).expect("example file");
        let shown: serde_json::Value = Figment::from(Toml::string(&uncommented(&text)))
            .extract()
            .expect("the example, uncommented, is TOML");
        let mut shown_keys = Vec::new();
        leaf_keys("", &shown, &mut shown_keys);
        let mut setting_keys = Vec::new();
        leaf_keys(
            "",
            &serde_json::to_value(Settings::default()).expect("settings serialize"),
            &mut setting_keys,
        );
        setting_keys.extend(SECRET_KEYS.map(str::to_owned));
        let missing: Vec<_> = setting_keys
            .iter()
            .filter(|key| !shown_keys.contains(key))
            .collect();
        let unknown: Vec<_> = shown_keys
            .iter()
            .filter(|key| !setting_keys.contains(key))
            .collect();
        assert!(
            missing.is_empty(),
            "{}: show (and explain) {missing:?}",
            file.display()
        );
        assert!(
            unknown.is_empty(),
            "{}: {unknown:?} are not settings",
            file.display()
        );
        // The commented-out values are valid too, so uncommenting one is safe.
        let all_on: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(&uncommented(&text)))
            .extract()
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), describe(&e)));
        all_on.check().expect("valid values");
    }

    #[test]
    fn the_development_example_is_the_defaults_with_every_setting_explained() {
        let file = example("development.toml");
        assert_shows_every_setting(&file);
        Jail::expect_with(|_| {
            let settings = Settings::load(Some(&file)).expect("the development example loads");
            assert_eq!(everything(&settings), everything(&Settings::default()));
            Ok(())
        });
    }

    #[test]
    fn the_production_example_passes_the_production_checks_given_its_secret() {
        let file = example("production.toml");
        assert_shows_every_setting(&file);
        Jail::expect_with(|jail| {
            let error = Settings::load(Some(&file)).unwrap_err().to_string();
            assert!(error.starts_with("CHRONICLE_JWT_SECRET"), "{error}");
            jail.set_env("CHRONICLE_JWT_SECRET", "0123456789abcdef0123456789abcdef");
            let settings = Settings::load(Some(&file)).expect("the production example loads");
            assert_eq!(settings.profile, Profile::Production);
            assert!(settings.database_url.starts_with("postgres://"));
            Ok(())
        });
    }
}
