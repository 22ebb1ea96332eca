//! The catalog's log in etcd: record `seq` (from 1) is the key
//! `/memoryrouter/catalog/log/<seq, 20 digits>` holding the kind byte and the JSON payload
//! of the single-node WAL record. Appending is a transaction that the key does not exist
//! yet, so the keys are dense and their order is the one order every node applies.

use std::future::Future;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Notify;

use super::ClusterError;
use super::etcd::{Etcd, prefix_end};

/// The prefix of the catalog's records.
pub(crate) const CATALOG_LOG_PREFIX: &str = "/memoryrouter/catalog/log/";
/// Records read per range call while catching up.
pub(crate) const READ_BATCH_RECORDS: i64 = 1_000;
/// Pause before a watch that ended is opened again.
pub(crate) const REWATCH_PAUSE_MS: u64 = 100;

/// The key of record `seq`: zero-padded, so key order is sequence order.
pub(crate) fn record_key(seq: u64) -> Vec<u8> {
    format!("{CATALOG_LOG_PREFIX}{seq:020}").into_bytes()
}

/// The shared log and the runtime its calls run on (the catalog's callers are synchronous:
/// request handlers call it from blocking threads). Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct SharedLog {
    etcd: Etcd,
    handle: Handle,
}

/// Wakes the follower on every change of the log; stops watching when dropped.
pub(crate) struct Changes {
    notify: Arc<Notify>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Changes {
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl SharedLog {
    /// Must be called inside the runtime (or a blocking thread of it) that will run the
    /// etcd calls.
    pub(crate) fn new(etcd: Etcd) -> Result<Self, ClusterError> {
        let handle = Handle::try_current().map_err(|_| ClusterError::NoRuntime)?;
        Ok(SharedLog { etcd, handle })
    }

    /// Runs `future` on the log's runtime and waits for it from a synchronous caller. Must
    /// not be called from an async task of a single-threaded runtime (it would wait on
    /// itself); the server calls the catalog from blocking threads.
    pub(crate) fn block<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, ClusterError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().map_err(|_| ClusterError::NoRuntime)
    }

    pub(crate) fn spawn(
        &self,
        future: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.handle.spawn(future)
    }

    /// Every record after `applied`, in order, and the revision the reads were served at.
    pub(crate) async fn read_after(
        &self,
        applied: u64,
    ) -> Result<(Vec<(u64, u8, Vec<u8>)>, i64), ClusterError> {
        let end = prefix_end(CATALOG_LOG_PREFIX.as_bytes());
        let mut from = record_key(applied + 1);
        let mut records = Vec::new();
        loop {
            let range = self
                .etcd
                .range(&from, Some(&end), READ_BATCH_RECORDS)
                .await?;
            for kv in &range.kvs {
                records.push(parse(&kv.key, &kv.value)?);
            }
            match (range.more, range.kvs.last()) {
                (true, Some(last)) => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok((records, range.revision)),
            }
        }
    }

    /// Appends record `seq` if no node has yet. `Ok(false)`: another node took `seq`.
    pub(crate) async fn append(
        &self,
        seq: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<bool, ClusterError> {
        let mut value = Vec::with_capacity(1 + payload.len());
        value.push(kind);
        value.extend_from_slice(payload);
        self.etcd.create(&record_key(seq), &value, None).await
    }

    /// A watch on the log's prefix that wakes the returned [`Changes`] at each change. The
    /// follower reads the log itself after each wake, so a watch that drops or restarts
    /// loses nothing: it only delays the wake to the follower's next poll.
    pub(crate) fn watch_changes(&self) -> Changes {
        let notify = Arc::new(Notify::new());
        let etcd = self.etcd.clone();
        let wake = Arc::clone(&notify);
        let watcher = self.handle.spawn(async move {
            let prefix = CATALOG_LOG_PREFIX.as_bytes();
            let end = prefix_end(prefix);
            loop {
                let result = etcd.watch(prefix, &end, 0, |_| wake.notify_one()).await;
                match result {
                    Ok(super::etcd::WatchEnd::Compacted { compact_revision }) => {
                        tracing::debug!(
                            compact_revision,
                            "catalog: watch compacted; watching again"
                        );
                    }
                    Ok(super::etcd::WatchEnd::Closed) => {}
                    Err(error) => tracing::debug!(%error, "catalog: watch ended"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(REWATCH_PAUSE_MS)).await;
            }
        });
        Changes { notify, watcher }
    }
}

fn parse(key: &[u8], value: &[u8]) -> Result<(u64, u8, Vec<u8>), ClusterError> {
    let bad = |reason: &str| ClusterError::Protocol {
        path: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_owned(),
    };
    let seq = std::str::from_utf8(key)
        .ok()
        .and_then(|k| k.strip_prefix(CATALOG_LOG_PREFIX))
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or_else(|| bad("not a catalog record key"))?;
    let (&kind, payload) = value.split_first().ok_or_else(|| bad("empty record"))?;
    Ok((seq, kind, payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_sequence_order_and_parse_back() {
        assert!(record_key(9) < record_key(10));
        assert!(record_key(99_999) < record_key(100_000));
        let (seq, kind, payload) = parse(&record_key(42), b"\x07{}").unwrap();
        assert_eq!((seq, kind, payload.as_slice()), (42, 7, &b"{}"[..]));
        assert!(parse(b"/memoryrouter/catalog/log/x", b"\x01").is_err());
        assert!(parse(&record_key(1), b"").is_err());
    }
}
