//! What the proxy keeps for the life of the server: the provider table, the pooled client,
//! and the outbox of exchanges waiting to be stored — plus the store-after-answer logic:
//! append to the outbox (the answer's end waits for that), then store off the response
//! path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engine::Role;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};
use wal::Lsn;

use super::client::UpstreamClient;
use super::error::ProxyError;
use super::outbox::{Outbox, PendingExchange};
use super::providers::ProviderTable;
use super::relay::Durable;
use crate::AppState;
use crate::auth::AuthContext;
use crate::config::Config;
use crate::request::{ChatMessage, MemoryMode};

/// The outbox's directory under `DATA_DIR`.
pub const OUTBOX_DIR: &str = "proxy-outbox";
/// Attempts to store one exchange before leaving it to the next start's replay.
pub(crate) const INGEST_ATTEMPTS_MAX: u32 = 5;
/// Wait before the first retry; doubled after each failed attempt (0.2, 0.4, 0.8, 1.6 s).
pub(crate) const INGEST_RETRY_BACKOFF_MS: u64 = 200;

/// Shared by every proxy request (a field of `AppState`).
pub struct ProxyState {
    pub(crate) providers: ProviderTable,
    pub(crate) client: UpstreamClient,
    pub outbox: Outbox,
    /// Exchanges a previous run left pending; taken once by [`ProxyState::replay`].
    recovered: Mutex<Vec<(Lsn, PendingExchange)>>,
    /// Exchanges scheduled and not yet finished (stored or given up on); with `settled`,
    /// lets shutdown and tests wait until every answered exchange has been handled.
    in_flight: AtomicUsize,
    settled: Notify,
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyState")
            .field("providers", &self.providers)
            .field("outbox", &self.outbox)
            .finish()
    }
}

impl ProxyState {
    /// Validates the `[providers.*]` config, builds the client and opens the outbox.
    pub(crate) fn open(config: &Config) -> Result<ProxyState, ProxyError> {
        let providers = ProviderTable::new(&config.providers)?;
        for (name, value) in [
            ("proxy_timeout_ms", config.proxy_timeout_ms),
            ("proxy_connect_timeout_ms", config.proxy_connect_timeout_ms),
        ] {
            if value == 0 {
                return Err(ProxyError::Config {
                    name: name.into(),
                    reason: "must be at least 1".into(),
                });
            }
        }
        let client = UpstreamClient::new(
            Duration::from_millis(config.proxy_connect_timeout_ms),
            Duration::from_millis(config.proxy_timeout_ms),
        )?;
        let (outbox, recovered) = Outbox::open(
            &config.data_dir.join(OUTBOX_DIR),
            config.durability.to_wal(),
        )?;
        if !recovered.is_empty() {
            tracing::info!(
                count = recovered.len(),
                "proxy exchanges left pending by the last run will be stored now"
            );
        }
        Ok(ProxyState {
            providers,
            client,
            outbox,
            recovered: Mutex::new(recovered),
            in_flight: AtomicUsize::new(0),
            settled: Notify::new(),
        })
    }

    /// Cluster mode's replay (called once the node has joined, so it knows the
    /// placements): each exchange the last run left pending goes where a live one would —
    /// stored here if this node owns its vault, handed to the owner otherwise. A replay
    /// before joining would store an exchange of a vault that moved away meanwhile in a
    /// stray copy here, out of its user's reach.
    pub(crate) fn replay_in_cluster(state: &Arc<AppState>) {
        let recovered = std::mem::take(&mut *state.proxy.recovered.lock());
        for (lsn, exchange) in recovered {
            state.proxy.in_flight.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                deliver(&state, Arc::new(exchange), Some(lsn)).await;
                state.proxy.finished_one();
            });
        }
    }

    /// Stores the exchanges the last run left pending (blocking; called once at start on a
    /// single node; a cluster node uses [`replay_in_cluster`](Self::replay_in_cluster)).
    pub(crate) fn replay(&self, state: &AppState) {
        let recovered = std::mem::take(&mut *self.recovered.lock());
        for (lsn, exchange) in recovered {
            match store_exchange(state, &exchange) {
                Ok(()) => self.mark_done(lsn),
                Err(error) => {
                    tracing::error!(lsn, error = %error.message, "replaying a proxy exchange failed; it stays queued for the next start")
                }
            }
        }
    }

    /// Resolves once no scheduled exchange is still being stored.
    pub async fn settled(&self) {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            // Registered before the check, so a finish between the check and the await
            // still wakes this waiter.
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn finished_one(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.settled.notify_waiters();
        }
    }

    fn mark_done(&self, lsn: Lsn) {
        if let Err(error) = self.outbox.done(lsn) {
            // The exchange is stored; a failed checkpoint only means it is stored again
            // (and deduplicated) after a restart.
            tracing::warn!(lsn, %error, "proxy outbox checkpoint failed");
        }
    }
}

/// Queues a finished exchange: appends it to the outbox, then stores it in the vault,
/// retrying with backoff, in a task of its own. The returned receiver fires once the append
/// is over (durable, or failed and logged); the relay holds the answer's last frame until
/// then. The task does not depend on anyone waiting: a client that goes away after the
/// answer completed still gets its exchange stored.
pub(crate) fn schedule_ingest(state: Arc<AppState>, exchange: PendingExchange) -> Durable {
    let (appended, durable) = oneshot::channel();
    if exchange.turns.is_empty() {
        let _ = appended.send(());
        return durable;
    }
    state.proxy.in_flight.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        store_with_retries(&state, exchange, appended).await;
        state.proxy.finished_one();
    });
    durable
}

/// Appends to the outbox (then fires `appended`), stores, and marks done, retrying the
/// store with backoff.
async fn store_with_retries(
    state: &Arc<AppState>,
    exchange: PendingExchange,
    appended: oneshot::Sender<()>,
) {
    let exchange = Arc::new(exchange);
    let (st, ex) = (state.clone(), exchange.clone());
    let outcome = tokio::task::spawn_blocking(move || st.proxy.outbox.append(&ex)).await;
    // Whatever the outcome, the client's last frame may go now: the exchange is in the log
    // (it survives a process crash), and on failure it is still stored below, only its
    // crash-safety is lost (logged).
    let _ = appended.send(());
    if matches!(outcome, Ok(Ok(_))) {
        let st = state.clone();
        match tokio::task::spawn_blocking(move || st.proxy.outbox.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "proxy outbox fsync failed"),
            Err(error) => tracing::error!(%error, "proxy outbox fsync task failed"),
        }
    }
    let lsn = match outcome {
        Ok(Ok(lsn)) => Some(lsn),
        Ok(Err(error)) => {
            // Still worth storing now: only the crash-safety of this one exchange is lost.
            tracing::error!(%error, "proxy exchange could not be queued durably; storing it directly");
            None
        }
        Err(error) => {
            tracing::error!(%error, "proxy outbox task failed; storing the exchange directly");
            None
        }
    };
    deliver(state, exchange, lsn).await;
}

/// Stores a queued exchange in its vault — or, in cluster mode, hands it to the node that
/// owns the vault now — retrying with backoff, then marks it done in the outbox (`lsn`:
/// its outbox entry, if it has one).
async fn deliver(state: &Arc<AppState>, exchange: Arc<PendingExchange>, lsn: Option<Lsn>) {
    let mut backoff = Duration::from_millis(INGEST_RETRY_BACKOFF_MS);
    for attempt in 1..=INGEST_ATTEMPTS_MAX {
        // Cluster mode: a vault moved to another node meanwhile gets the exchange there
        // (its outbox takes it over); it is never stored in the copy given up here.
        if let Some(handed) = crate::cluster::hand_over_exchange(state, &exchange).await {
            match handed {
                Ok(()) => {
                    if let Some(lsn) = lsn {
                        let st = state.clone();
                        let _ = tokio::task::spawn_blocking(move || st.proxy.mark_done(lsn)).await;
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(?lsn, attempt, %error, "handing a proxy exchange to its vault's new owner failed; will retry")
                }
            }
            if attempt < INGEST_ATTEMPTS_MAX {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            continue;
        }
        let (st, ex) = (state.clone(), exchange.clone());
        let result = tokio::task::spawn_blocking(move || store_exchange(&st, &ex)).await;
        match result {
            Ok(Ok(())) => {
                if let Some(lsn) = lsn {
                    let st = state.clone();
                    let _ = tokio::task::spawn_blocking(move || st.proxy.mark_done(lsn)).await;
                }
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(?lsn, attempt, error = %error.message, "storing a proxy exchange failed; will retry")
            }
            Err(error) => {
                tracing::warn!(?lsn, attempt, %error, "proxy ingest task failed; will retry")
            }
        }
        if attempt < INGEST_ATTEMPTS_MAX {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(
        ?lsn,
        "storing a proxy exchange failed {INGEST_ATTEMPTS_MAX} times; it stays queued (if it was queued) and is retried at the next start"
    );
}

/// Stores one exchange in its key's vault through the regular ingest path (blocking).
fn store_exchange(
    state: &AppState,
    exchange: &PendingExchange,
) -> Result<(), crate::error::ApiError> {
    // The key may have been revoked (and its vault purged) while the answer streamed, or
    // before a replay: storing now would recreate the purged vault with the user's text,
    // and retrying could never succeed. Such an exchange is dropped, which also lets the
    // outbox checkpoint move past it.
    let active = state
        .catalog
        .key(&exchange.key_id)
        .is_some_and(|key| key.revoked_at_ms.is_none() && key.account_id == exchange.account_id);
    if !active {
        tracing::warn!(key_id = %exchange.key_id, "proxy exchange of a revoked or unknown key dropped");
        return Ok(());
    }
    let auth = AuthContext {
        key_id: exchange.key_id.clone(),
        account_id: exchange.account_id.clone(),
        is_admin: false,
        mode: MemoryMode::On,
        provider_key: None,
    };
    let messages: Vec<ChatMessage> = exchange
        .turns
        .iter()
        .filter_map(|(role, text)| {
            Some(ChatMessage {
                role: Role::parse(role)?,
                text: text.clone(),
                created_at_ms: Some(exchange.created_at_ms),
                remember: true,
            })
        })
        .collect();
    crate::api::ingest::store(
        state,
        &auth,
        messages,
        &exchange.session_id,
        exchange.model.as_deref(),
        None,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str, dir: &std::path::Path) -> Config {
        let mut config = Config::from_toml(toml_text).unwrap();
        config.data_dir = dir.to_path_buf();
        config
    }

    #[test]
    fn config_file_providers_and_timeouts_reach_the_proxy() {
        let dir = tempfile::tempdir().unwrap();
        let text = "proxy_timeout_ms = 1500\nproxy_connect_timeout_ms = 200\n\
                    [providers.vllm]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodels = [\"q\"]\n";
        let proxy = ProxyState::open(&config(text, dir.path())).unwrap();
        assert_eq!(proxy.client.timeout(), Duration::from_millis(1500));
        let (provider, model) = proxy.providers.resolve("vllm/q").unwrap();
        assert_eq!(
            (provider.base_url.as_str(), model),
            ("http://127.0.0.1:8000/v1", "q")
        );
        assert!(dir.path().join(OUTBOX_DIR).is_dir());

        let bad = config("[providers.vllm]\nkind = \"openai\"\n", dir.path());
        assert!(matches!(
            ProxyState::open(&bad),
            Err(ProxyError::Config { .. })
        ));
        let zero = config("proxy_timeout_ms = 0\n", dir.path());
        assert!(matches!(
            ProxyState::open(&zero),
            Err(ProxyError::Config { .. })
        ));
    }
}
