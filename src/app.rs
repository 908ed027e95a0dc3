//! Start-up and shutdown: connect and migrate the store, bind, serve until SIGTERM/Ctrl-C.

use std::net::SocketAddr;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::api::{router, AppState, SHUTDOWN_GRACE};
use crate::auth::revocation::RevocationFeed;
use crate::auth::secret::ServerKeys;
use crate::config::Settings;
use crate::process::http_agent::{self, HttpAgent};
use crate::process::llm::{
    self,
    agent::{LlmAgent, LlmServices},
};
use crate::read_side::ReadSide;
use crate::store::{AuditKey, Store, StoreOptions};
use crate::teams::TeamFeed;
use crate::tls::{TlsConfig, TlsListener};
use chronicle_projections::search::{Embedder, OpenError, SearchIndex};
use secrecy::ExposeSecret;

pub struct Application {
    listener: TcpListener,
    /// Set when Chronicle serves HTTPS itself.
    tls: Option<TlsConfig>,
    state: AppState,
    http_agent: Option<HttpAgent>,
    /// Registered only when a provider is configured.
    llm_agent: Option<LlmAgent>,
    revocations: RevocationFeed,
    teams: TeamFeed,
}

impl Application {
    /// Connects to the store, applies migrations and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let embedder = embedder_from_settings(&settings.embeddings).await?;
        let keys = ServerKeys::load(&settings)?;
        let tls = match settings.tls.paths() {
            Some((cert, key)) => Some(TlsConfig::load(cert, key)?),
            None => None,
        };
        let store = connect_store(&settings).await?;
        store.set_audit_key(audit_key(&settings, &keys));
        let listener = TcpListener::bind(settings.bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.bind))?;
        let mut read = ReadSide::start(&store)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the projections: {e}"))?;
        read.attach_search(open_search(&settings.data_dir, embedder)?)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the search index: {e}"))?;
        let state = AppState::new(store, read, settings, keys);
        let revocations = RevocationFeed::start(&state.store, state.auth.revocations.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the revocations: {e}"))?;
        let teams = TeamFeed::start(&state.store, state.authz.teams.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the teams: {e}"))?;
        let http_agent = if state.settings.http_agent.enabled {
            let agent =
                http_agent::register(&state.bus, &state.read, &state.settings.http_agent).await?;
            Some(agent)
        } else {
            None
        };
        let llm_agent = match crate::process::llm::configured_provider(&state.settings.llm)? {
            Some(provider) => {
                let services = LlmServices {
                    provider,
                    tokens: state.tokens.clone(),
                    // `use_context` searches the task owner's own history in this node's
                    // index.
                    context: state.read.search().map(|index| {
                        std::sync::Arc::new(crate::process::llm::context::SearchContext(
                            index.clone(),
                        ))
                            as std::sync::Arc<dyn crate::process::llm::context::ContextSource>
                    }),
                    settings: state.settings.llm.clone(),
                };
                Some(llm::agent::register(&state.bus, &state.read, services).await?)
            }
            None => None,
        };
        crate::auth::password::warm_up();
        Ok(Self {
            listener,
            tls,
            state,
            http_agent,
            llm_agent,
            revocations,
            teams,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn port(&self) -> u16 {
        self.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The built-in HTTP agent this node runs, if enabled.
    pub fn http_agent_id(&self) -> Option<uuid::Uuid> {
        self.http_agent.as_ref().map(HttpAgent::id)
    }

    /// The built-in LLM agent this node runs, if a provider is configured.
    pub fn llm_agent_id(&self) -> Option<uuid::Uuid> {
        self.llm_agent.as_ref().map(LlmAgent::id)
    }

    /// Serves until SIGTERM or Ctrl-C, then stops accepting and lets in-flight requests
    /// finish (up to a grace period).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves; for tests and embedding.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(
            %addr,
            backend = self.state.store.backend_name(),
            https = self.tls.is_some(),
            "serving"
        );
        let read = self.state.read.clone();
        // Cancelled when shutdown begins: long-polls and sockets end, the agent stops
        // taking work and the projectors stop between catch-ups (whichever way this
        // returns).
        let stopping = self.state.shutdown.clone();
        let (projectors, mut background) = read.spawn(&stopping);
        background.push(tokio::spawn(crate::process::timers::run(
            self.state.bus.clone(),
            read.clone(),
        )));
        background.push(tokio::spawn(crate::process::workflows::run(
            self.state.bus.clone(),
            read.clone(),
            stopping.clone(),
        )));
        background.push(tokio::spawn(crate::process::schedules::run(
            self.state.bus.clone(),
            read.clone(),
            stopping.clone(),
        )));
        background.push(tokio::spawn(
            self.revocations.run(read.events_signal(), stopping.clone()),
        ));
        background.push(tokio::spawn(
            self.teams.run(read.events_signal(), stopping.clone()),
        ));
        background.push(tokio::spawn(crate::store::checkpoint::run_checkpoints(
            self.state.store.clone(),
            self.state.settings.audit.checkpoint_every,
            stopping.clone(),
        )));
        background.push(tokio::spawn(async {
            // Histogram samples wait in buckets until a scrape or this drains them.
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                crate::meters::handle().run_upkeep();
            }
        }));
        let _stop_agent = stopping.clone().drop_guard();
        let http_agent = self.http_agent.map(|agent| {
            tokio::spawn(agent.run(
                self.state.bus.clone(),
                read.clone(),
                stopping.clone(),
                SHUTDOWN_GRACE,
            ))
        });
        let llm_agent = self.llm_agent.map(|agent| {
            tokio::spawn(agent.run(
                self.state.bus.clone(),
                read.clone(),
                stopping.clone(),
                SHUTDOWN_GRACE,
            ))
        });
        let app = router(self.state);
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let graceful = async move {
            stop.await;
            tracing::info!("shutting down: finishing in-flight requests");
            stopping.cancel();
            let _ = stopped_tx.send(());
        };
        let serve = match self.tls {
            None => {
                let serve = axum::serve(self.listener, app).with_graceful_shutdown(graceful);
                tokio::spawn(async move { serve.await })
            }
            Some(tls) => {
                background.push(tls.reload_on_sighup()?);
                // `tap_io` only to get axum's connect-info for a listener of our own.
                let listener = TlsListener::new(self.listener, tls)?.tap_io(|_| {});
                let serve = axum::serve(listener, app).with_graceful_shutdown(graceful);
                tokio::spawn(async move { serve.await })
            }
        };
        let mut serve = serve;
        tokio::select! {
            result = &mut serve => result??,
            _ = async {
                let _ = stopped_rx.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("grace period over; dropping remaining connections");
                serve.abort();
            }
        }
        // The agent reports what it still runs (within its own grace) before the
        // projections stop.
        if let Some(agent) = http_agent {
            if let Err(error) = agent.await {
                tracing::error!(%error, "the built-in HTTP agent failed");
            }
        }
        if let Some(agent) = llm_agent {
            if let Err(error) = agent.await {
                tracing::error!(%error, "the built-in LLM agent failed");
            }
        }
        for task in background {
            task.abort();
        }
        for projector in projectors {
            if let Err(error) = projector.await {
                tracing::error!(%error, "a projector failed");
            }
        }
        read.flush().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Connects to the configured store and applies its migrations, as the server does: a
/// PostgreSQL connection not had within a second is a 503.
pub async fn connect_store(settings: &Settings) -> anyhow::Result<Store> {
    connect_store_waiting(settings, crate::store::postgres::ACQUIRE_TIMEOUT).await
}

/// Like [`connect_store`] for a one-shot command (`user create`, `audit`, `projections`,
/// `events`): it waits up to 10 s for a connection on a busy database rather than fail.
pub async fn connect_store_for_command(settings: &Settings) -> anyhow::Result<Store> {
    connect_store_waiting(settings, std::time::Duration::from_secs(10)).await
}

async fn connect_store_waiting(
    settings: &Settings,
    acquire_timeout: std::time::Duration,
) -> anyhow::Result<Store> {
    let options = StoreOptions {
        snapshot_every: settings.store.snapshot_every,
        max_connections: settings.store.max_connections,
        aggregate_cache_bytes: settings.store.aggregate_cache_mb.saturating_mul(1 << 20),
        acquire_timeout,
    };
    let store = Store::connect(&settings.database_url, options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the event store: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| anyhow::anyhow!("cannot migrate the event store: {e}"))?;
    Ok(store)
}

/// The chain checkpoints' key: from `CHRONICLE_AUDIT__KEY`, else from the server secret.
pub fn audit_key(settings: &Settings, keys: &ServerKeys) -> AuditKey {
    match &settings.audit.key {
        Some(secret) => AuditKey::derive(secret.expose_secret().as_bytes()),
        None => AuditKey::from_bytes(keys.audit),
    }
}

/// The store, migrated, with its checkpoint key (for the commands that need one).
pub async fn connect_store_with_key(settings: &Settings) -> anyhow::Result<Store> {
    let store = connect_store_for_command(settings).await?;
    let key = match &settings.audit.key {
        Some(secret) => AuditKey::derive(secret.expose_secret().as_bytes()),
        None => AuditKey::from_bytes(ServerKeys::load(settings)?.audit),
    };
    store.set_audit_key(key);
    Ok(store)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// The embedder `CHRONICLE_EMBEDDINGS__*` names, ready to embed: a `local` model is loaded
/// from its folder, a remote server without configured dimensions is asked for one vector.
pub(crate) async fn embedder_from_settings(
    settings: &crate::config::EmbeddingSettings,
) -> anyhow::Result<std::sync::Arc<dyn Embedder>> {
    use chronicle_projections::search::remote::{RemoteSettings, Wire};
    use chronicle_projections::search::EmbedderChoice;
    use secrecy::ExposeSecret;
    use std::time::Duration;
    let remote = |wire| {
        EmbedderChoice::Remote(RemoteSettings {
            wire,
            base_url: settings.base_url.clone().unwrap_or_default(),
            model: settings.model.clone().unwrap_or_default(),
            api_key: settings
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            dimensions: settings.dimensions,
            batch_size: settings.batch_size,
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            timeout: Duration::from_millis(settings.timeout_ms),
            max_retries: settings.max_retries,
            initial_backoff: Duration::from_millis(settings.initial_backoff_ms),
            max_backoff: Duration::from_millis(settings.max_backoff_ms),
        })
    };
    let choice = match settings.provider.as_str() {
        "builtin" => EmbedderChoice::Builtin,
        "local" => EmbedderChoice::Local {
            model_dir: settings.model_dir.clone().unwrap_or_default(),
        },
        "openai" => remote(Wire::OpenAi),
        "ollama" => remote(Wire::Ollama),
        other => anyhow::bail!(
            "unknown embeddings provider {other:?}: expected builtin, local, openai or ollama \
             (CHRONICLE_EMBEDDINGS__PROVIDER)"
        ),
    };
    let embedder = chronicle_projections::search::open_embedder(choice)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(embedder = embedder.id(), "embeddings provider ready");
    Ok(embedder)
}

/// This node's search index, `<data_dir>/search`. A second server on the same data dir
/// (tests run several nodes on one) cannot share it: it builds a private one beside it,
/// from the first event.
pub(crate) fn open_search(
    data_dir: &std::path::Path,
    embedder: std::sync::Arc<dyn Embedder>,
) -> anyhow::Result<SearchIndex> {
    match SearchIndex::open(&data_dir.join("search"), embedder.clone()) {
        Ok(index) => Ok(index),
        Err(OpenError::Busy(dir)) => {
            let private = data_dir.join(format!("search.node-{}", uuid::Uuid::new_v4().simple()));
            tracing::warn!(
                held = %dir.display(),
                private = %private.display(),
                "another server holds this data dir's search index; this node builds its own"
            );
            SearchIndex::open(&private, embedder)
                .map_err(|e| anyhow::anyhow!("cannot open the search index: {e}"))
        }
        Err(error) => Err(anyhow::anyhow!("cannot open the search index: {error}")),
    }
}
