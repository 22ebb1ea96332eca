//! The file-system seam: every write, fsync, rename and delete the log performs at run time
//! goes through [`Storage`] and [`LogFile`], so tests can swap in a layer that fails the Nth
//! write or fsync (see `FaultyStorage` below) and check that the log poisons itself and that a
//! reopen recovers the acknowledged records intact.
//!
//! Reads (recovery, `verify`) use `std::fs` directly: a failed read fails `open` and
//! poisons nothing, so there is nothing to inject there.
//!
//! The traits are public but hidden (`wal::Storage`, `wal::LogFile`, `Wal::open_with_storage`)
//! for the engine's power-loss harness, which records every write and sync to compute what a
//! crash would leave on disk. Files are created owner-only
//! (0600) whatever the umask: logs hold users' memories and the key catalog.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Mode of every file the log creates: owner read/write only.
pub const FILE_MODE: u32 = 0o600;

/// An open file the log appends to.
pub trait LogFile: Send {
    /// Writes the whole buffer at the end of the file (a short write is an error).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The directory operations the log performs after `open`.
pub trait Storage: Send + Sync {
    /// Creates `path` (truncating any previous file) for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Opens the existing file `path` for appending at its end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Atomically renames `from` to `to` (same directory).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, deletions) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// Creates `path` holding `bytes` so that a crash leaves either no file or the whole one:
/// write a temp name, fsync it, rename it into place, fsync the directory. Returns the open
/// file, positioned at its end, for callers that go on appending (segments).
pub(crate) fn create_durably(
    storage: &dyn Storage,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<Box<dyn LogFile>, crate::WalError> {
    use crate::WalError;
    let mut file = storage
        .create(tmp)
        .map_err(|e| WalError::io("create", tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| WalError::io("write", tmp, e))?;
    file.sync_data()
        .map_err(|e| WalError::io("fsync", tmp, e))?;
    storage
        .rename(tmp, path)
        .map_err(|e| WalError::io("rename", tmp, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("fsync directory", dir, e))?;
    Ok(file)
}

/// The real file system.
#[derive(Debug, Default)]
pub struct OsStorage;

struct OsFile(File);

impl LogFile for OsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Storage for OsStorage {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // On Unix a directory opened read-only can be fsynced, which persists its entries.
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
pub(crate) use fault::{FaultPlan, FaultyStorage};

#[cfg(test)]
mod fault {
    use super::{LogFile, OsStorage, Storage};
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Which operation to fail. Counters are 1-based and shared by every file of the storage;
    /// directory fsyncs count as fsyncs.
    #[derive(Clone, Copy, Debug, Default)]
    pub(crate) struct FaultPlan {
        /// Fail the Nth `write_all`, after writing the first half of its buffer (a short write).
        pub fail_write_at: Option<u64>,
        /// Fail the Nth fsync without syncing.
        pub fail_sync_at: Option<u64>,
        /// Fail the Nth `remove` without removing (a crash before the unlink reached disk).
        pub fail_remove_at: Option<u64>,
    }

    #[derive(Default)]
    struct Counters {
        writes: AtomicU64,
        syncs: AtomicU64,
        removes: AtomicU64,
    }

    /// Real files, with one injected failure.
    pub(crate) struct FaultyStorage {
        plan: FaultPlan,
        counters: Arc<Counters>,
    }

    impl FaultyStorage {
        pub(crate) fn new(plan: FaultPlan) -> Self {
            FaultyStorage {
                plan,
                counters: Arc::default(),
            }
        }

        /// How many writes have been attempted so far.
        pub(crate) fn writes(&self) -> u64 {
            self.counters.writes.load(Ordering::SeqCst)
        }

        /// How many fsyncs (file and directory) have been attempted so far.
        pub(crate) fn syncs(&self) -> u64 {
            self.counters.syncs.load(Ordering::SeqCst)
        }
    }

    fn injected(what: &str) -> io::Error {
        io::Error::other(format!("injected {what} failure"))
    }

    fn sync_fails(plan: &FaultPlan, counters: &Counters) -> bool {
        let n = counters.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        plan.fail_sync_at == Some(n)
    }

    struct FaultyFile {
        inner: Box<dyn LogFile>,
        plan: FaultPlan,
        counters: Arc<Counters>,
    }

    impl LogFile for FaultyFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let n = self.counters.writes.fetch_add(1, Ordering::SeqCst) + 1;
            if self.plan.fail_write_at == Some(n) {
                self.inner.write_all(&buf[..buf.len() / 2])?;
                return Err(injected("write"));
            }
            self.inner.write_all(buf)
        }

        fn sync_data(&mut self) -> io::Result<()> {
            if sync_fails(&self.plan, &self.counters) {
                return Err(injected("fsync"));
            }
            self.inner.sync_data()
        }
    }

    impl FaultyStorage {
        fn wrap(&self, inner: Box<dyn LogFile>) -> Box<dyn LogFile> {
            Box::new(FaultyFile {
                inner,
                plan: self.plan,
                counters: Arc::clone(&self.counters),
            })
        }
    }

    impl Storage for FaultyStorage {
        fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
            Ok(self.wrap(OsStorage.create(path)?))
        }

        fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
            Ok(self.wrap(OsStorage.open_append(path)?))
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            OsStorage.rename(from, to)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            let n = self.counters.removes.fetch_add(1, Ordering::SeqCst) + 1;
            if self.plan.fail_remove_at == Some(n) {
                return Err(injected("remove"));
            }
            OsStorage.remove(path)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if sync_fails(&self.plan, &self.counters) {
                return Err(injected("directory fsync"));
            }
            OsStorage.sync_dir(dir)
        }
    }
}
