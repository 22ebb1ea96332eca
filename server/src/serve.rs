//! The server loop: accept connections, serve HTTP/1.1 on each, and shut down gracefully.
//!
//! Shutdown protocol: when the `shutdown` future completes, `/readyz` turns 503, the
//! listener is dropped (no new connections), every connection is told to finish its
//! in-flight request and close, and the loop waits (bounded) until all connection tasks
//! have ended. Then the engine and the catalog are flushed, so every acknowledged write
//! and the pending `last_used_at` times are on disk before `run` returns.
//!
//! Requests hyper cannot parse are answered by hyper itself; [`protocol_errors`] gives
//! those answers the API's JSON error body too.
//!
//! Abuse bounds (issue 14 item 3): [`admission`] caps the connections of one client
//! address and closes a connection that sends no byte within the first-byte timeout;
//! [`budget`] bounds the request bodies buffered at once and the text the engine ingests
//! at once.

mod admission;
pub(crate) mod budget;
mod protocol_errors;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use self::admission::{AddressCounts, AddressSlot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::AppState;
use crate::config::Config;
use crate::error::{ApiError, Error};
use crate::http::error_response;

/// A client gets this long to send its request headers before the connection is closed.
pub(crate) const HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// At shutdown, in-flight requests get this long to finish.
pub(crate) const DRAIN_TIMEOUT_SECS: u64 = 30;
/// How often pending `last_used_at` times are written to the catalog.
pub(crate) const LAST_USED_FLUSH_INTERVAL_SECS: u64 = 60;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
pub(crate) const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;

/// Opens the data directory described by `config`, then serves `listener` until
/// `shutdown` completes. Prints the admin key once on first start.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let data_dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || AppState::open(config))
        .await
        .map_err(|e| Error::Io {
            path: data_dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })??;
    if let Some(key) = &opened.new_admin_key {
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "127.0.0.1:8787".into());
        println!(
            "{}",
            crate::commands::admin_key_banner(key, &data_dir, &address)
        );
    }
    serve(listener, Arc::new(opened.state), shutdown).await
}

/// Serves an already opened state (see [`run`]).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // `stop` tells connections to finish; each connection task holds a clone of `done_tx`,
    // so `done_rx.recv()` returns `None` exactly when the last one has ended.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    if let Some(node) = &state.cluster {
        let bound = listener.local_addr().map_err(|source| Error::Io {
            path: "listener".into(),
            source,
        })?;
        node.start(bound).await?;
        crate::proxy::ProxyState::replay_in_cluster(&state);
    }
    let permits = Arc::new(Semaphore::new(state.config.limits.connections_max));
    let addresses = AddressCounts::new(state.config.limits.connections_per_address_max);
    let flusher = tokio::spawn(flush_last_used_periodically(state.clone()));
    tracing::info!(address = ?listener.local_addr().ok(), "serving");

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            },
        };
        let Some(slot) = addresses.admit(peer.ip()) else {
            // Refused at once, without a task: the answer fits any fresh socket's send
            // buffer, and a client that is not reading loses nothing it asked for.
            let _ = stream.try_write(&admission::refusal(
                state.config.limits.connections_per_address_max,
            ));
            drop(stream);
            drop(permit);
            continue;
        };
        tokio::spawn(connection(
            stream,
            state.clone(),
            stop_rx.clone(),
            done_tx.clone(),
            (permit, slot),
        ));
    }

    tracing::info!("shutting down: finishing in-flight requests");
    state.shutting_down.store(true, Ordering::SeqCst);
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    // Answered proxy exchanges are stored after their response; wait for those too, so an
    // exchange is in its vault (or at least in the outbox) before the process exits.
    let drained = async {
        let _ = done_rx.recv().await;
        state.proxy.settled().await;
    };
    if tokio::time::timeout(Duration::from_secs(DRAIN_TIMEOUT_SECS), drained)
        .await
        .is_err()
    {
        tracing::warn!(
            "requests or proxy stores still pending after {DRAIN_TIMEOUT_SECS} s; closing them"
        );
    }
    flusher.abort();
    let flushed = state.clone();
    tokio::task::spawn_blocking(move || -> Result<(), Error> {
        // Fails only if acknowledged writes may not be on disk (a buffered vault whose sync
        // failed): then the exit status must say so. A vault poisoned by a failed fsync in
        // fsync durability has nothing acknowledged left to sync, and a full disk stops
        // nothing acknowledged either.
        flushed.engine.flush()?;
        // The catalog's changes are each fsynced before they are answered; all a failure
        // here loses is the last minute of keys' last-used times (the disk is full, or the
        // catalog refuses writes since an fsync failed). Not a reason to exit 1: issue 12
        // saw a clean SIGTERM after a disk-full episode exit 1.
        if let Err(error) = flushed.catalog.sync() {
            tracing::warn!(%error, "shutdown: could not store the keys' last-used times");
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Io {
        path: state.config.data_dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn connection(
    stream: TcpStream,
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
    _held: (OwnedSemaphorePermit, AddressSlot),
) {
    let _ = stream.set_nodelay(true);
    // A client gets `first_byte_timeout_ms` to start its request; one that sends nothing
    // (or has gone: EOF, error) gives its slot back now, not after the header timeout.
    let first_byte = Duration::from_millis(state.config.limits.first_byte_timeout_ms);
    let mut byte = [0u8; 1];
    tokio::select! {
        peeked = tokio::time::timeout(first_byte, stream.peek(&mut byte)) => {
            if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                return;
            }
        }
        _ = stop.changed() => return,
    }
    let service = service_fn(move |req| {
        let state = state.clone();
        async move {
            // Each request runs in its own task: a panic in a handler (a bug; the plan is
            // that none can happen) becomes a 500 instead of a dropped connection, and a
            // client that disconnects mid-ingest does not cancel the write.
            let response = match tokio::spawn(crate::router::route(state, req)).await {
                Ok(response) => response,
                Err(_) => error_response(&ApiError::internal()),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(HEADER_READ_TIMEOUT_SECS))
        .serve_connection(
            TokioIo::new(protocol_errors::ErrorBodyIo::new(stream)),
            service,
        );
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn flush_last_used_periodically(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(Duration::from_secs(LAST_USED_FLUSH_INTERVAL_SECS));
    interval.tick().await;
    loop {
        interval.tick().await;
        let catalog_state = state.clone();
        let result =
            tokio::task::spawn_blocking(move || catalog_state.catalog.flush_last_used()).await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "could not persist key last-used times");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(text: &str) -> engine::NewMemory {
        engine::NewMemory {
            session_id: "s".into(),
            role: engine::Role::User,
            text: text.into(),
            created_at_ms: 1,
            model: None,
            metadata: None,
        }
    }

    /// Issue 12: after a failed fsync (the vault poisoned, refusing writes) a SIGTERM exited
    /// 1, because shutdown's flush asked the poisoned WAL to sync. In fsync durability every
    /// acknowledged write was synced already: shutdown succeeds, and what was acknowledged
    /// before the failure is there after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_after_a_failed_fsync_succeeds_and_keeps_the_acknowledged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::from_toml("").unwrap();
        config.data_dir = dir.path().to_path_buf();
        let disk = engine::powerloss::PowerLoss::attach(dir.path()).unwrap();
        let state = Arc::new(
            AppState::open_with(config.clone(), Arc::new(disk.clone()))
                .unwrap()
                .state,
        );
        let vault = state.engine.vault("key_sick").unwrap();
        vault.ingest(vec![said("acknowledged before")]).unwrap();
        disk.fail_syncs(true);
        assert!(vault.ingest(vec![said("never acknowledged")]).is_err());
        disk.fail_syncs(false);
        assert!(vault.is_poisoned());
        drop(vault);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = serve(listener, Arc::clone(&state), async {}).await;
        assert!(served.is_ok(), "shutdown failed: {served:?}");
        // The aborted flusher task lets its handle go a moment later; the data-dir lock
        // goes with the last one.
        for _ in 0..500 {
            if Arc::strong_count(&state) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(state);

        let state = AppState::open(config).unwrap().state;
        let vault = state.engine.vault("key_sick").unwrap();
        let texts: Vec<String> = vault
            .list(None, 100, None)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert!(
            texts.contains(&"acknowledged before".to_owned()),
            "{texts:?}"
        );
    }
}
