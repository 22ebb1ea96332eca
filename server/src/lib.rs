//! # server — the `memoryrouter` binary's library
//!
//! A self-hosted memory server for AI apps: Memory Keys pick a vault, `prepare` retrieves a
//! budgeted context from it, `ingest` stores a conversation durably, and the memory API
//! lists, searches, exports and deletes. It is HTTP plumbing over the [`engine`] crate and
//! holds no storage logic of its own, except the key catalog (its own WAL).
//!
//! Public surface: what the binary needs ([`Cli`] and the commands, [`Config`], [`run`],
//! [`Error`]) and the provider types a [`Config`] holds ([`ProviderConfig`],
//! [`ProviderKind`]). The tests and benches also use a few hidden items (the app state,
//! `serve` and the proxy outbox). Every module is private:
//!
//! - infrastructure, at the top level: `serve` (accept loop, graceful shutdown), `router`
//!   (one match on method and path), `http` (bodies, JSON, responses), `auth` and `secret`
//!   (keys, hashing, provider-key encryption), `ratelimit`, `catalog` (accounts and keys),
//!   `datadir` (layout, lock, secret file), `config` (layered, validated settings), `error`,
//!   `embedder` (the configured embedder, timed; `embedder::remote`, an OpenAI-compatible
//!   endpoint),
//!   `metrics`, `time`, `request` (message, session and option parsing, shared by the API
//!   and the proxy, and `to_new_memory`, the one place a stored memory is built and
//!   bounded), `cli` and `commands` (the command line) with `progress` (their bars), `models`
//!   (`models fetch`: pinned, verified, resumable downloads from the hub), `reembed`
//!   (rebuilds a vault's vectors with a new embedder, swapped in atomically), `dashboard` (the embedded web UI);
//! - `api`: the HTTP handlers of the memory API, one module per resource (`prepare`,
//!   `ingest`, `memories`, `transfer`, `keys`, `provider_keys`, `admin`, `ops`);
//! - `proxy`: the OpenAI- and Anthropic-compatible proxy endpoints.
//!
//! Limits: every body, message count, message length and per-key request rate is bounded
//! by the `[limits]` of the [`Config`]; every error is an OpenAI-shaped body with a 4xx or
//! 503 status.
//!
//! ```no_run
//! # async fn example() -> Result<(), server::Error> {
//! let config = server::Config::default();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|source| {
//!     server::Error::Io { path: "127.0.0.1:0".into(), source }
//! })?;
//! server::run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![warn(unreachable_pub)]

mod api;
mod audit;
mod auth;
mod catalog;
mod cli;
mod cluster;
mod commands;
mod config;
mod dashboard;
mod datadir;
mod embedder;
mod error;
mod http;
mod metrics;
mod models;
#[cfg(test)]
mod powerloss_tests;
mod progress;
mod proxy;
mod ratelimit;
mod reembed;
mod request;
mod router;
mod secret;
mod serve;
mod time;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

// What the binary (`main.rs`) needs to parse the command line and serve; the provider
// types are those of `Config::providers`, which the tests and benches fill in.
pub use cli::{Cli, ClusterCommand, Command, KeysCommand, ModelsCommand};
pub use cluster::status as cluster_status;
pub use cluster::{
    drain as cluster_drain, move_vault as cluster_move, rebalance as cluster_rebalance,
};
pub use commands::{export, health, import, keys_create, keys_list, keys_revoke, repair, verify};
pub use config::{Config, Flags};
pub use error::Error;
pub use models::{models_fetch, models_list};
pub use proxy::providers::{ProviderConfig, ProviderKind};
pub use reembed::reembed;
pub use serve::run;

// For the tests and benches only: serving an already opened state, and the proxy outbox
// (tests write to it what a crash would leave behind).
#[doc(hidden)]
pub use proxy::outbox::{Outbox, PendingExchange};
#[doc(hidden)]
pub use proxy::state::OUTBOX_DIR;
#[doc(hidden)]
pub use serve::serve;

/// Everything a request handler needs, shared behind an `Arc`. Public for the tests and
/// benches, which open one ([`AppState::open`]) and serve it ([`serve`]).
#[doc(hidden)]
pub struct AppState {
    pub(crate) config: config::Config,
    /// Public for the tests, which look up a key's account.
    pub catalog: catalog::Catalog,
    pub(crate) engine: engine::Engine,
    pub(crate) metrics: metrics::Metrics,
    /// Per-key, per-account and per-key proxy budgets (`[limits]`).
    pub(crate) limiter: ratelimit::Limits,
    /// Account actions, one JSON line each (`DATA_DIR/audit.jsonl`).
    pub(crate) audit: audit::AuditLog,
    /// Providers, the upstream client and the outbox of exchanges awaiting ingest. Public
    /// for the tests and benches, which wait for it to settle and read the outbox.
    pub proxy: proxy::ProxyState,
    pub(crate) started: Instant,
    /// Request bodies buffered at once (`[limits] body_buffer_bytes_max`).
    pub(crate) body_budget: serve::budget::BodyBudget,
    /// Message text the engine ingests at once (one largest body's worth).
    pub(crate) ingest_budget: serve::budget::IngestBudget,
    /// Set when shutdown begins: `/readyz` turns 503 so load balancers stop sending.
    pub(crate) shutting_down: AtomicBool,
    /// Cluster mode (`--cluster`): this node's registry entry, the placement of vaults and
    /// forwarding; `None` on a single node.
    pub(crate) cluster: Option<std::sync::Arc<cluster::Node>>,
    /// Held for the process's life so no second process opens the same data directory.
    _lock: datadir::DirLock,
}

/// What opening the data directory found.
#[doc(hidden)]
pub struct Opened {
    pub state: AppState,
    /// The admin key minted on first start (shown once), `None` on every later start.
    pub new_admin_key: Option<String>,
}

impl AppState {
    /// Opens (creating on first start) the data directory: lock, secret, catalog with its
    /// account and admin key, and the engine. Never scans the vault directories.
    pub fn open(config: config::Config) -> Result<Opened, error::Error> {
        Self::open_with(config, engine::storage::os())
    }

    /// [`AppState::open`] with the catalog and the vaults writing through `storage` (tests
    /// put the engine's recorder there to make fsyncs fail).
    pub(crate) fn open_with(
        config: config::Config,
        storage: std::sync::Arc<dyn engine::storage::Storage>,
    ) -> Result<Opened, error::Error> {
        let dir = config.data_dir.clone();
        datadir::ensure(&dir)?;
        let lock = datadir::lock(&dir)?;
        let secret = datadir::load_or_create_secret(&dir, config.secret_key_hex.as_deref())?;
        let (catalog, cluster) = match &config.cluster.etcd {
            None => (
                catalog::Catalog::open_with(
                    &dir.join(datadir::CATALOG_DIR),
                    &secret,
                    std::sync::Arc::clone(&storage),
                )?,
                None,
            ),
            // Cluster mode: the catalog is the log shared in etcd (docs/scaling.md).
            Some(endpoint) => {
                let etcd = cluster::etcd::Etcd::new(endpoint)?;
                let catalog =
                    catalog::Catalog::open_shared(cluster::SharedLog::new(etcd.clone())?, &secret)?;
                let id = config.cluster.node_id.clone().unwrap_or_default();
                let node = cluster::Node::new(
                    etcd,
                    id,
                    config.cluster.advertise.clone(),
                    cluster::token(&secret),
                );
                (catalog, Some(std::sync::Arc::new(node)))
            }
        };
        let new_admin_key = commands::bootstrap(&catalog, &dir)?;
        let audit = audit::AuditLog::open(&dir)?;
        let mut engine_config = engine::EngineConfig::new(dir.join(datadir::VAULTS_DIR));
        engine_config.durability = config.durability.to_wal();
        engine_config.storage = storage;
        engine_config.open_vaults_max = config.limits.open_vaults_max;
        engine_config.open_vaults_memory_bytes_max = config.limits.open_vaults_memory_bytes();
        engine_config.memtable_records_max = config.limits.memtable_records_max;
        let mut metrics = metrics::Metrics::default();
        engine_config.embedder = embedder::open(
            &config.embedder,
            &|name| std::env::var(name).ok(),
            &|provider| embedder::first_account_key(&catalog, provider),
            &mut metrics.embedder,
        )?;
        let mut policy = config.retrieval.policy(engine_config.embedder.kind())?;
        // The gate the embedder measured for its own vectors, unless the file sets one (a
        // bge model is a retrieval model like e5, but its cosines are not on e5's scale).
        if config.retrieval.similarity_min.is_none() {
            policy.similarity_min = engine_config.embedder.similarity_min();
        }
        // A static model's cosines sit high for unrelated texts too (a model2vec model
        // distilled from MiniLM scored ~0.9 between unrelated LoCoMo turns), and a BERT
        // retrieval model (bge, e5-base) was not measured: no default gate, and a borrowed
        // one would let everything through or shut everything out: ask for a measured value.
        if policy.similarity_min.is_none() {
            return Err(error::Error::Config {
                field: "retrieval.similarity_min".into(),
                reason: "this model (a static model2vec model, or a BERT retrieval model such \
                         as bge or e5-base) has no measured default: measure one with \
                         `cargo run -p benches --release --bin locomo -- DATA --cosines --model DIR`"
                    .into(),
            });
        }
        engine_config.policy = Some(policy);
        let engine = engine::Engine::open(engine_config)?;
        let proxy = proxy::ProxyState::open(&config).map_err(|e| error::Error::Config {
            field: "providers".into(),
            reason: e.to_string(),
        })?;
        let state = AppState {
            limiter: ratelimit::Limits::new(&config.limits),
            body_budget: serve::budget::BodyBudget::new(config.limits.body_buffer_bytes()),
            ingest_budget: serve::budget::IngestBudget::new(config.limits.body_bytes_max),
            audit,
            config,
            catalog,
            engine,
            metrics,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            proxy,
            cluster,
            _lock: lock,
        };
        state.metrics.catalog_repairs.store(
            state.catalog.repairs().len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // Exchanges a crash left unstored are stored before the first request is served (a
        // cluster node replays them once it has joined: `serve`).
        if state.cluster.is_none() {
            state.proxy.replay(&state);
        }
        Ok(Opened {
            state,
            new_admin_key,
        })
    }
}
