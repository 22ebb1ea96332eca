//! The durable queue of exchanges waiting to be ingested after a proxied answer.
//!
//! The proxy stores the exchange off the response path, after the answer. So that a crash
//! does not lose an exchange whose answer the client has, it is first appended to this WAL
//! (`DATA_DIR/proxy-outbox/`) — before the answer's last frame (streams) or body (plain
//! answers) is released — then ingested into the vault, then marked done; the WAL is
//! checkpointed up to the oldest exchange still pending. At start,
//! every record past the checkpoint is ingested again. Re-ingesting an exchange that did
//! reach the vault stores nothing twice, because ingest skips messages already stored for
//! the same session, role and text.
//!
//! The append that gates the last frame is a `write(2)` into the log (it survives `kill -9`
//! from that moment: the bytes are in the kernel's page cache); with `durability = "fsync"`
//! the fsync follows right after the frame is released ([`Outbox::sync`], shared by
//! concurrent exchanges), so only an OS crash or power loss within those few milliseconds can
//! lose an answered exchange. Waiting for the fsync before the last frame put a whole fsync
//! (~4 ms here) on every stored plain answer.
//!
//! **Invariant:** the checkpoint never passes an exchange whose ingest has not succeeded.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use wal::{Durability, Lsn, Wal, WalOptions};

use super::error::ProxyError;

/// The record kind of a pending exchange (the only kind in this log).
const KIND_EXCHANGE: u8 = 1;
/// Outbox segments rotate at this size; a segment is deleted once checkpointed past.
pub(crate) const OUTBOX_SEGMENT_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// One finished exchange to store: whose vault, which session, and the turns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingExchange {
    pub key_id: String,
    pub account_id: String,
    pub session_id: String,
    pub model: Option<String>,
    /// `(role, text)` in order: the user turn and/or the assistant answer.
    pub turns: Vec<(String, String)>,
    /// When the exchange finished (ms since the epoch).
    pub created_at_ms: i64,
}

/// The outbox log and the set of exchanges appended but not yet stored.
pub struct Outbox {
    /// Opened in `Buffered` mode: appends are writes, [`Outbox::sync`] makes them durable.
    wal: Wal,
    /// The configured durability asks for an fsync after each append.
    sync_after_append: bool,
    /// Lsns appended and not yet marked done. Appends take this lock too, so an lsn is in
    /// the set before any later checkpoint can be computed (see [`Outbox::done`]).
    pending: Mutex<BTreeSet<Lsn>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("pending", &self.pending.lock().len())
            .finish()
    }
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`; returns the exchanges a previous run left
    /// pending, already counted as pending here (mark each done after re-ingesting it).
    pub fn open(
        dir: &Path,
        durability: Durability,
    ) -> Result<(Outbox, Vec<(Lsn, PendingExchange)>), ProxyError> {
        Self::open_with(dir, durability, engine::storage::os())
    }

    /// [`Outbox::open`] writing through `storage` (the power-loss tests record it). The
    /// directory is created owner-only and synced into its parent.
    #[doc(hidden)]
    pub fn open_with(
        dir: &Path,
        durability: Durability,
        storage: Arc<dyn engine::storage::Storage>,
    ) -> Result<(Outbox, Vec<(Lsn, PendingExchange)>), ProxyError> {
        engine::storage::create_dir_durably(&*storage, dir, true).map_err(|e| {
            ProxyError::Outbox {
                reason: e.to_string(),
            }
        })?;
        let options = WalOptions {
            segment_bytes_max: OUTBOX_SEGMENT_BYTES_MAX,
            durability: Durability::Buffered,
            ..WalOptions::default()
        };
        let (wal, recovery) =
            Wal::open_with_storage(dir, options, storage).map_err(outbox_error)?;
        let mut recovered = Vec::new();
        for record in recovery.records {
            if record.kind != KIND_EXCHANGE {
                continue;
            }
            match serde_json::from_slice::<PendingExchange>(&record.payload) {
                Ok(exchange) => recovered.push((record.lsn, exchange)),
                // A record this build cannot read is skipped with a log line rather than
                // blocking every later exchange behind it.
                Err(error) => {
                    tracing::error!(lsn = record.lsn, %error, "unreadable proxy outbox record skipped")
                }
            }
        }
        let pending = recovered.iter().map(|(lsn, _)| *lsn).collect();
        let outbox = Outbox {
            wal,
            sync_after_append: durability == Durability::Fsync,
            pending: Mutex::new(pending),
        };
        if recovered.is_empty() {
            outbox.checkpoint(&outbox.pending.lock())?;
        }
        Ok((outbox, recovered))
    }

    /// Appends `exchange` (written to the log: it survives a process crash); blocking. Call
    /// `Outbox::sync` next for the configured durability against OS crashes.
    pub fn append(&self, exchange: &PendingExchange) -> Result<Lsn, ProxyError> {
        let payload = serde_json::to_vec(exchange).map_err(|e| ProxyError::Outbox {
            reason: e.to_string(),
        })?;
        let mut pending = self.pending.lock();
        let lsn = self
            .wal
            .append(KIND_EXCHANGE, &payload)
            .map_err(outbox_error)?;
        pending.insert(lsn);
        Ok(lsn)
    }

    /// Makes every append so far durable when the configured durability is `fsync` (one
    /// fsync covers every exchange appended before it); a no-op in `buffered` mode.
    pub(crate) fn sync(&self) -> Result<(), ProxyError> {
        if self.sync_after_append {
            self.wal.sync().map_err(outbox_error)?;
        }
        Ok(())
    }

    /// Marks `lsn` stored and checkpoints up to the oldest exchange still pending; blocking.
    pub(crate) fn done(&self, lsn: Lsn) -> Result<(), ProxyError> {
        let mut pending = self.pending.lock();
        pending.remove(&lsn);
        self.checkpoint(&pending)
    }

    /// The lsn of the newest exchange appended (0 for a log that never held one): what has
    /// reached the log, whether or not it has been stored since.
    pub fn last_lsn(&self) -> Lsn {
        self.wal.last_lsn()
    }

    /// Exchanges appended and not yet stored.
    #[cfg(test)]
    fn pending_count(&self) -> usize {
        self.pending.lock().len()
    }

    fn checkpoint(&self, pending: &BTreeSet<Lsn>) -> Result<(), ProxyError> {
        // Every append happens under the `pending` lock the caller holds, so with nothing
        // pending every lsn up to `last_lsn` is stored.
        let through = match pending.first() {
            Some(oldest) => oldest - 1,
            None => self.wal.last_lsn(),
        };
        if through == 0 {
            return Ok(());
        }
        self.wal.checkpoint(through).map_err(outbox_error)
    }
}

fn outbox_error(error: wal::WalError) -> ProxyError {
    ProxyError::Outbox {
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(text: &str) -> PendingExchange {
        PendingExchange {
            key_id: "key_a".into(),
            account_id: "acct".into(),
            session_id: "s".into(),
            model: Some("openai/m".into()),
            turns: vec![
                ("user".into(), text.into()),
                ("assistant".into(), "ok".into()),
            ],
            created_at_ms: 1,
        }
    }

    #[test]
    fn pending_exchanges_survive_a_restart_until_done() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, recovered) = Outbox::open(dir.path(), Durability::Fsync).unwrap();
        assert!(recovered.is_empty());
        let a = outbox.append(&exchange("a")).unwrap();
        let b = outbox.append(&exchange("b")).unwrap();
        let c = outbox.append(&exchange("c")).unwrap();
        // Out of order: c and a finish, b does not (its ingest failed or the process died).
        outbox.done(c).unwrap();
        outbox.done(a).unwrap();
        assert_eq!(outbox.pending_count(), 1);
        drop(outbox);

        let (outbox, recovered) = Outbox::open(dir.path(), Durability::Fsync).unwrap();
        let texts: Vec<&str> = recovered
            .iter()
            .map(|(_, e)| e.turns[0].1.as_str())
            .collect();
        // The checkpoint stopped before b, so b (and c, which is after it) come back;
        // re-ingesting c is harmless because ingest deduplicates.
        assert_eq!(texts, vec!["b", "c"]);
        assert_eq!(recovered[0], (b, exchange("b")));
        assert_eq!(outbox.pending_count(), 2);
        for (lsn, _) in &recovered {
            outbox.done(*lsn).unwrap();
        }
        drop(outbox);

        let (outbox, recovered) = Outbox::open(dir.path(), Durability::Fsync).unwrap();
        assert!(recovered.is_empty(), "{recovered:?}");
        let d = outbox.append(&exchange("d")).unwrap();
        assert!(d > c, "lsns keep increasing across restarts");
    }
}
