//! The audit log: one JSON line per account action — key minted or revoked, provider key
//! stored or deleted, vault purged, memories imported — in `DATA_DIR/audit.jsonl`.
//!
//! What a line holds is chosen so that no secret can reach it: ids, names, counts and
//! provider names only, never a key's text or hash, never a provider key or its base URL
//! (which may carry credentials). Each line is written and fsynced before the action is
//! answered (as the catalog is, whatever `durability` says); the file is created 0600 and
//! its directory entry synced. A crash can leave at most a torn last line: opening the log
//! ends it with a newline, and readers skip a line that does not parse.
//!
//! The log is append-only and never rotated by the server; `GET /v1/audit` (admin key)
//! reads the account's lines from a time on, a bounded page at a time.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The log's file name in the data directory.
pub(crate) const AUDIT_FILE: &str = "audit.jsonl";
/// Lines `GET /v1/audit` returns when it is not told.
pub(crate) const PAGE_DEFAULT: usize = 100;
/// Most lines one `GET /v1/audit` returns.
pub(crate) const PAGE_MAX: usize = 1000;
/// Longest line read back; longer lines are skipped (none is written: names are bounded).
const LINE_BYTES_MAX: usize = 64 * 1024;

/// One account action. `actor` is the key that acted (`key_…`), or `cli` for the operator's
/// offline commands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct AuditEntry {
    pub at_ms: i64,
    pub account_id: String,
    pub actor: String,
    /// `key.create`, `key.revoke`, `provider_key.put`, `provider_key.delete`, `vault.purge`,
    /// `memory.import`.
    pub action: String,
    /// What was acted on: a key id, a provider name, a vault.
    pub target: String,
    /// Non-secret particulars (a key's name and parent, how many keys a revocation took,
    /// how many records an import stored).
    #[serde(default)]
    pub detail: serde_json::Value,
}

pub(crate) struct AuditLog {
    path: PathBuf,
    /// Appends are serialised so lines never interleave.
    file: Mutex<File>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

impl AuditLog {
    /// Opens (creating, 0600, durably) the log in `data_dir`, ending a torn last line.
    pub(crate) fn open(data_dir: &Path) -> Result<Self, Error> {
        let path = data_dir.join(AUDIT_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(crate::datadir::SECRET_FILE_MODE)
            .open(&path)
            .map_err(io(&path))?;
        if !existed {
            file.sync_all().map_err(io(&path))?;
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io(data_dir))?;
        }
        let len = file.metadata().map_err(io(&path))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(io(&path))?;
            file.read_exact(&mut last).map_err(io(&path))?;
            if last[0] != b'\n' {
                tracing::warn!("audit log: ending a torn last line left by a crash");
                file.write_all(b"\n").map_err(io(&path))?;
                file.sync_data().map_err(io(&path))?;
            }
        }
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` as one line and fsyncs it.
    pub(crate) fn record(&self, entry: &AuditEntry) -> Result<(), Error> {
        let mut line = serde_json::to_vec(entry).map_err(|e| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let mut file = self.file.lock();
        file.write_all(&line).map_err(io(&self.path))?;
        file.sync_data().map_err(io(&self.path))
    }

    /// The account's entries at or after `since_ms`, from byte `from` of the log (a
    /// `next` of an earlier page; 0 = the start), oldest first, at most `limit`; and where
    /// the next page starts when more follow.
    pub(crate) fn read(
        &self,
        account_id: &str,
        since_ms: i64,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<AuditEntry>, Option<u64>), Error> {
        let mut file = File::open(&self.path).map_err(io(&self.path))?;
        file.seek(SeekFrom::Start(from)).map_err(io(&self.path))?;
        let mut reader = BufReader::new(file);
        let mut out = Vec::new();
        let mut line = Vec::new();
        let mut offset = from;
        loop {
            line.clear();
            let start = offset;
            let n = (&mut reader)
                .take(LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(io(&self.path))?;
            if n == 0 {
                return Ok((out, None));
            }
            offset += n as u64;
            if n > LINE_BYTES_MAX {
                // Skip the rest of an overlong line.
                let mut rest = Vec::new();
                let more = reader
                    .read_until(b'\n', &mut rest)
                    .map_err(io(&self.path))?;
                offset += more as u64;
                continue;
            }
            let Ok(entry) = serde_json::from_slice::<AuditEntry>(&line) else {
                continue;
            };
            if entry.account_id != account_id || entry.at_ms < since_ms {
                continue;
            }
            if out.len() == limit {
                return Ok((out, Some(start)));
            }
            out.push(entry);
        }
    }
}

/// Records `entry`; a failure is logged and counted, not returned: the action it describes
/// is already durable and answering an error would invite a retry that repeats it.
pub(crate) fn record(state: &crate::AppState, entry: AuditEntry) {
    if let Err(error) = state.audit.record(&entry) {
        state.metrics.audit_write_failed();
        tracing::error!(%error, action = %entry.action, "audit log write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn entry(at_ms: i64, account: &str) -> AuditEntry {
        AuditEntry {
            at_ms,
            account_id: account.into(),
            actor: "key_a".into(),
            action: "key.create".into(),
            target: format!("key_{at_ms}"),
            detail: serde_json::json!({"name": "x"}),
        }
    }

    #[test]
    fn lines_survive_reopen_a_torn_line_is_skipped_and_pages_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path()).unwrap();
            for at in 0..5 {
                log.record(&entry(at, "acct_a")).unwrap();
                log.record(&entry(at, "acct_b")).unwrap();
            }
        }
        let path = dir.path().join(AUDIT_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A crash in the middle of a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"at_ms":9,"account_id":"acct_a","#)
            .unwrap();
        drop(f);
        let log = AuditLog::open(dir.path()).unwrap();
        log.record(&entry(10, "acct_a")).unwrap();
        let (all, next) = log.read("acct_a", 0, 0, PAGE_MAX).unwrap();
        assert!(next.is_none());
        assert_eq!(
            all.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 10]
        );
        let (page, next) = log.read("acct_a", 2, 0, 2).unwrap();
        assert_eq!(page, vec![entry(2, "acct_a"), entry(3, "acct_a")]);
        let (rest, end) = log.read("acct_a", 2, next.unwrap(), 2).unwrap();
        assert_eq!(rest, vec![entry(4, "acct_a"), entry(10, "acct_a")]);
        assert!(end.is_none());
        assert_eq!(log.read("acct_c", 0, 0, 10).unwrap().0.len(), 0);
    }
}
