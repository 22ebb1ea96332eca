//! # server — the `memoryrouter` binary's library
//!
//! A self-hosted memory server for AI apps: Memory Keys pick a vault, `prepare` retrieves a
//! budgeted context from it, `ingest` stores a conversation durably, and the memory API
//! lists, searches, exports and deletes. It is HTTP plumbing over the [`engine`] crate and
//! holds no storage logic of its own, except the key [`catalog`] (its own WAL).
//!
//! Modules: [`config`] (layered, validated settings), [`cli`] and [`commands`] (the CLI),
//! [`router`] (one match on method and path), [`auth`] and [`secret`] (keys, hashing,
//! provider-key encryption), [`catalog`], [`request`] (message and option parsing),
//! [`api`] (the HTTP handlers: prepare, ingest, memories, transfer, keys, provider keys,
//! admin, ops), [`proxy`], [`metrics`], [`ratelimit`], [`http`], [`error`].
//!
//! Limits: every body, message count, message length and per-key request rate is bounded
//! by [`config::Limits`]; every error is an OpenAI-shaped body with a 4xx or 503 status.
//!
//! ```no_run
//! # async fn example() -> Result<(), server::error::Error> {
//! let config = server::config::Config::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|source| {
//!     server::error::Error::Io { path: "127.0.0.1:0".into(), source }
//! })?;
//! server::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod api;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod datadir;
pub mod error;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod router;
pub mod secret;
pub mod serve;
pub mod time;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub use serve::run;

/// Everything a request handler needs, shared behind an `Arc`.
pub struct AppState {
    pub config: config::Config,
    pub catalog: catalog::Catalog,
    pub engine: engine::Engine,
    pub metrics: metrics::Metrics,
    pub limiter: ratelimit::RateLimiter,
    /// Providers, the upstream client and the outbox of exchanges awaiting ingest.
    pub proxy: proxy::ProxyState,
    pub started: Instant,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers stop sending.
    pub shutting_down: AtomicBool,
    /// Held for the process's life so no second process opens the same data directory.
    _lock: datadir::DirLock,
}

/// What opening the data directory found.
pub struct Opened {
    pub state: AppState,
    /// The admin key minted on first start (shown once), `None` on every later start.
    pub new_admin_key: Option<String>,
}

impl AppState {
    /// Opens (creating on first start) the data directory: lock, secret, catalog with its
    /// account and admin key, and the engine. Never scans the vault directories.
    pub fn open(config: config::Config) -> Result<Opened, error::Error> {
        let dir = config.data_dir.clone();
        datadir::ensure(&dir)?;
        let lock = datadir::lock(&dir)?;
        let secret = datadir::load_or_create_secret(&dir, config.secret_key_hex.as_deref())?;
        let catalog = catalog::Catalog::open(
            &dir.join(datadir::CATALOG_DIR),
            config.durability.to_wal(),
            &secret,
        )?;
        let new_admin_key = commands::bootstrap(&catalog, &dir)?;
        let mut engine_config = engine::EngineConfig::new(dir.join(datadir::VAULTS_DIR));
        engine_config.durability = config.durability.to_wal();
        engine_config.open_vaults_max = config.limits.open_vaults_max;
        engine_config.open_vaults_memory_bytes_max = config.limits.open_vaults_memory_bytes();
        if let Some(model_dir) = &config.embedder.model_dir {
            let model =
                engine::LocalModelEmbedder::open(model_dir).map_err(|e| error::Error::Config {
                    field: "embedder.model_dir".into(),
                    reason: e.to_string(),
                })?;
            // A static model's cosines sit high for unrelated texts too (a model2vec model
            // distilled from MiniLM scored ~0.9 between unrelated LoCoMo turns), so the
            // BERT-calibrated default would let everything through: ask for a measured value.
            if model.kind() == engine::LocalModelKind::Static
                && config.retrieval.similarity_min.is_none()
            {
                return Err(error::Error::Config {
                    field: "retrieval.similarity_min".into(),
                    reason: "a static (model2vec) model needs an explicit value: measure it with \
                             `cargo run -p benches --release --bin locomo -- DATA --cosines --model DIR`"
                        .into(),
                });
            }
            tracing::info!(embedder = %engine::Embedder::id(&model), "local embedding model loaded");
            engine_config.embedder = std::sync::Arc::new(model);
        }
        let engine = engine::Engine::open(engine_config)?;
        let proxy = proxy::ProxyState::open(&config).map_err(|e| error::Error::Config {
            field: "providers".into(),
            reason: e.to_string(),
        })?;
        let state = AppState {
            limiter: ratelimit::RateLimiter::new(config.limits.requests_per_minute),
            config,
            catalog,
            engine,
            metrics: metrics::Metrics::default(),
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            proxy,
            _lock: lock,
        };
        // Exchanges a crash left unstored are stored before the first request is served.
        state.proxy.replay(&state);
        Ok(Opened {
            state,
            new_admin_key,
        })
    }
}
