//! The file-system seam: every write, fsync, truncate, rename and delete the log performs at
//! run time goes through [`Storage`] and [`LogFile`], so tests can swap in a layer that fails
//! the Nth write, fsync or truncate, or every write for a while (a full disk; see
//! `FaultyStorage` below), and check that the log stalls or poisons itself as it should and
//! that a reopen recovers exactly the acknowledged records.
//!
//! Reads (recovery, `verify`) use `std::fs` directly: a failed read fails `open` and
//! poisons nothing, so there is nothing to inject there.
//!
//! The traits are public but hidden (`wal::Storage`, `wal::LogFile`, `Wal::open_with_storage`)
//! for the engine's power-loss harness, which records every write and sync to compute what a
//! crash would leave on disk. Files are created owner-only
//! (0600) whatever the umask: logs hold users' memories and the key catalog.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
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
    /// Cuts the file to `len` bytes and positions the next write there; returns the length
    /// it had. Not durable until the next `sync_all`.
    fn truncate(&mut self, len: u64) -> io::Result<u64>;
    /// Makes the contents and the metadata, the size included, durable (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;
    /// A second handle on this file that can only sync it, for `Wal::sync` to fsync in
    /// Buffered mode without holding the log's lock, so appends go on writing meanwhile
    /// (an outbox append used to wait behind the previous exchange's fsync: issue 15).
    /// `None` (the default): `Wal::sync` syncs through this handle under the lock, as
    /// before. A layer that counts, models or fails syncs must wrap the inner file's handle
    /// the same way, or return `None`.
    fn syncer(&self) -> Option<Box<dyn FileSync>> {
        None
    }
}

/// A handle that syncs an open [`LogFile`] (see [`LogFile::syncer`]).
pub trait FileSync: Send {
    /// Makes everything written to the file before the call durable (`fdatasync`), through
    /// whichever handle it was written.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// [`FileSync`] over a duplicate of a real file's descriptor. A dup, not a second `open`:
/// both descriptors share one open file description, so a writeback error is reported to
/// whichever of them fsyncs first (a second `open` would not see errors from before it).
#[doc(hidden)]
pub struct FdSync(pub File);

impl FileSync for FdSync {
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
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
    /// Makes reads of `path` show what the disk holds, not the page cache: fsyncs it (what a
    /// process that died left dirty is written now), then drops its cached pages (see
    /// [`drop_cache_of`]). Recovery calls it on the last segment before reading it.
    fn drop_cache(&self, path: &Path) -> io::Result<()>;
}

/// [`Storage::drop_cache`] on the real file system: `fsync`, then
/// `posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file.
///
/// Why: after a failed fsync Linux marks the pages that could not be written clean, keeps
/// them readable and never retries them ("fsyncgate"), and a later fsync reports success. A
/// process that reopened the log would replay records that never reached the disk, answer a
/// client's retry of them as a duplicate, and append after them — and after a power cut its
/// own acknowledged records would follow a hole, to be cut off by the next recovery. Dropping
/// the cached pages after the fsync makes the next read come from the disk, so recovery cuts
/// at what is really there (clean pages are dropped; the fsync just made every page clean).
/// On a file system without a backing device (tmpfs) the advice does nothing, and there is
/// nothing to distrust. A file system that refuses the advice is logged and read as it is
/// (refusing to open would turn a missing safeguard into an outage); a failed
/// fsync is an error.
#[doc(hidden)]
pub fn drop_cache_of(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    file.sync_all()?;
    if let Err(error) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed) {
        tracing::warn!(
            file = %path.display(),
            %error,
            "wal: could not drop the cached pages of the last segment; recovery reads them as cached"
        );
    }
    Ok(())
}

/// Creates `path` holding `bytes` so that a crash leaves either no file or the whole one:
/// write a temp name, fsync it, rename it into place, fsync the directory. Returns the open
/// file, positioned at its end, for callers that go on appending (segments).
///
/// If writing, syncing or renaming the temp file fails, it is deleted (best effort: it was
/// never renamed, so it is garbage either way, and `Wal::open` deletes leftovers), so a log
/// that keeps running out of space does not collect them.
pub(crate) fn create_durably(
    storage: &dyn Storage,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<Box<dyn LogFile>, crate::WalError> {
    use crate::WalError;
    let mut file = storage
        .create(tmp)
        .map_err(|e| WalError::write("create", tmp, e))?;
    // The fsync is called from this function's own frame (not a closure): the engine's
    // power-loss teeth check names its call sites by stack frame.
    let mut written = file
        .write_all(bytes)
        .map_err(|e| WalError::write("write", tmp, e));
    if written.is_ok() {
        written = file.sync_data().map_err(|e| WalError::io("fsync", tmp, e));
    }
    if let Err(err) = written {
        drop(file);
        let _ = storage.remove(tmp);
        return Err(err);
    }
    // A rename can fail for lack of space too (the directory needs a new block): nothing
    // was renamed, so like a failed write that is retryable, not a reason to poison (found
    // by the outbox's "every write fails from operation N" test).
    if let Err(e) = storage.rename(tmp, path) {
        drop(file);
        let _ = storage.remove(tmp);
        return Err(WalError::write("rename", tmp, e));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("fsync directory", dir, e))?;
    Ok(file)
}

/// Cuts `file` to `len` bytes and puts the next write there; returns the length it had. A
/// file from `create` is not in append mode: without the seek the next write would land at
/// the old end and leave a hole of zeros. (`LogFile::truncate` of every real-file storage.)
#[doc(hidden)]
pub fn truncate_file(file: &mut File, len: u64) -> io::Result<u64> {
    let was = file.metadata()?.len();
    file.set_len(len)?;
    file.seek(SeekFrom::Start(len))?;
    Ok(was)
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

    fn truncate(&mut self, len: u64) -> io::Result<u64> {
        truncate_file(&mut self.0, len)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn syncer(&self) -> Option<Box<dyn FileSync>> {
        // Out of descriptors: `Wal::sync` falls back to syncing under the lock.
        let dup = self.0.try_clone().ok()?;
        Some(Box::new(FdSync(dup)))
    }
}

impl Storage for OsStorage {
    fn drop_cache(&self, path: &Path) -> io::Result<()> {
        drop_cache_of(path)
    }

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
    use super::{FileSync, LogFile, OsStorage, Storage};
    use std::io;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::mpsc::{Receiver, Sender, channel};

    use parking_lot::Mutex;

    /// Which operations to fail. Counters are 1-based and shared by every file of the storage;
    /// directory fsyncs count as fsyncs.
    #[derive(Clone, Copy, Debug, Default)]
    pub(crate) struct FaultPlan {
        /// Fail the Nth `write_all`, after writing the first half of its buffer (a short write).
        pub fail_write_at: Option<u64>,
        /// Fail every `write_all` from the Nth on (a disk that filled up), the same way, until
        /// `fail_writes_until` or [`FaultyStorage::clear`].
        pub fail_writes_from: Option<u64>,
        /// With `fail_writes_from`: the first write that succeeds again (space was freed).
        pub fail_writes_until: Option<u64>,
        /// Fail every write whose number is a multiple of this (a disk that keeps filling up
        /// and emptying: a log file next to others that grow and shrink).
        pub fail_every_nth_write: Option<u64>,
        /// The errno failed writes report; `None` for a generic error (which the log must
        /// treat as an I/O failure of unknown effect).
        pub write_errno: Option<i32>,
        /// Fail the Nth fsync without syncing.
        pub fail_sync_at: Option<u64>,
        /// Fail the Nth truncate without truncating.
        pub fail_truncate_at: Option<u64>,
        /// Fail the Nth `remove` without removing (a crash before the unlink reached disk).
        pub fail_remove_at: Option<u64>,
        /// Count fsyncs (and fail the planned one) but skip the real `fdatasync`: for the long
        /// fault sweeps, which reopen in the same process and never crash the OS.
        pub skip_real_sync: bool,
    }

    #[derive(Default)]
    struct Counters {
        writes: AtomicU64,
        syncs: AtomicU64,
        truncates: AtomicU64,
        removes: AtomicU64,
        creates: AtomicU64,
        /// Set by [`FaultyStorage::fail_writes_from_now`]: every write from this number on
        /// fails (0: none).
        fail_writes_from: AtomicU64,
        /// Set by [`FaultyStorage::clear`]: no further injected failures.
        cleared: AtomicBool,
        /// Armed by [`FaultyStorage::hold_next_sync`].
        hold: Mutex<Option<Receiver<()>>>,
        held: AtomicBool,
    }

    /// Real files, with injected failures.
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

        /// How many files have been created (segments, checkpoints, temporaries).
        pub(crate) fn creates(&self) -> u64 {
            self.counters.creates.load(Ordering::SeqCst)
        }

        /// Makes the next file fsync block until the returned sender sends (or is dropped),
        /// so a test can queue appenders behind a leader and stage one big group.
        pub(crate) fn hold_next_sync(&self) -> Sender<()> {
            let (release, receiver) = channel();
            *self.counters.hold.lock() = Some(receiver);
            release
        }

        /// True while an fsync is blocked by [`FaultyStorage::hold_next_sync`].
        pub(crate) fn sync_held(&self) -> bool {
            self.counters.held.load(Ordering::SeqCst)
        }

        /// The `k`th write from now (1 = the next one) and every later one fail, as
        /// `fail_writes_from` does, until [`FaultyStorage::clear`].
        pub(crate) fn fail_writes_from_now(&self, k: u64) {
            let from = self.writes() + k;
            self.counters.fail_writes_from.store(from, Ordering::SeqCst);
        }

        /// Ends every planned fault: the disk has room again.
        pub(crate) fn clear(&self) {
            self.counters.cleared.store(true, Ordering::SeqCst);
        }
    }

    fn injected(what: &str) -> io::Error {
        io::Error::other(format!("injected {what} failure"))
    }

    /// Counts one operation in `counter`; true if the plan fails it.
    fn hit(counters: &Counters, counter: &AtomicU64, fail: impl Fn(u64) -> bool) -> bool {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        !counters.cleared.load(Ordering::SeqCst) && fail(n)
    }

    fn sync_fails(plan: &FaultPlan, counters: &Counters) -> bool {
        hit(counters, &counters.syncs, |n| plan.fail_sync_at == Some(n))
    }

    struct FaultyFile {
        inner: Box<dyn LogFile>,
        plan: FaultPlan,
        counters: Arc<Counters>,
    }

    impl LogFile for FaultyFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let plan = &self.plan;
            let from_now = self.counters.fail_writes_from.load(Ordering::SeqCst);
            let fails = hit(&self.counters, &self.counters.writes, |n| {
                (from_now != 0 && n >= from_now)
                    || plan.fail_write_at == Some(n)
                    || plan.fail_every_nth_write.is_some_and(|k| n % k == 0)
                    || (plan.fail_writes_from.is_some_and(|from| n >= from)
                        && plan.fail_writes_until.is_none_or(|until| n < until))
            });
            if fails {
                self.inner.write_all(&buf[..buf.len() / 2])?;
                return Err(match plan.write_errno {
                    Some(errno) => io::Error::from_raw_os_error(errno),
                    None => injected("write"),
                });
            }
            self.inner.write_all(buf)
        }

        fn sync_data(&mut self) -> io::Result<()> {
            faulty_sync_data(&self.plan, &self.counters, || self.inner.sync_data())
        }

        fn syncer(&self) -> Option<Box<dyn FileSync>> {
            Some(Box::new(FaultySync {
                inner: self.inner.syncer()?,
                plan: self.plan,
                counters: Arc::clone(&self.counters),
            }))
        }

        fn truncate(&mut self, len: u64) -> io::Result<u64> {
            let plan = &self.plan;
            if hit(&self.counters, &self.counters.truncates, |n| {
                plan.fail_truncate_at == Some(n)
            }) {
                return Err(injected("truncate"));
            }
            self.inner.truncate(len)
        }

        fn sync_all(&mut self) -> io::Result<()> {
            if sync_fails(&self.plan, &self.counters) {
                return Err(injected("fsync"));
            }
            if self.plan.skip_real_sync {
                return Ok(());
            }
            self.inner.sync_all()
        }
    }

    /// A fault-injected `sync_data`, through the file or its detached [`FileSync`]: the same
    /// hold, counter and failure plan either way.
    fn faulty_sync_data(
        plan: &FaultPlan,
        counters: &Counters,
        sync: impl FnOnce() -> io::Result<()>,
    ) -> io::Result<()> {
        let hold = counters.hold.lock().take();
        if let Some(release) = hold {
            counters.held.store(true, Ordering::SeqCst);
            let _ = release.recv();
            counters.held.store(false, Ordering::SeqCst);
        }
        if sync_fails(plan, counters) {
            return Err(injected("fsync"));
        }
        if plan.skip_real_sync {
            return Ok(());
        }
        sync()
    }

    struct FaultySync {
        inner: Box<dyn FileSync>,
        plan: FaultPlan,
        counters: Arc<Counters>,
    }

    impl FileSync for FaultySync {
        fn sync_data(&mut self) -> io::Result<()> {
            faulty_sync_data(&self.plan, &self.counters, || self.inner.sync_data())
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
            self.counters.creates.fetch_add(1, Ordering::SeqCst);
            Ok(self.wrap(OsStorage.create(path)?))
        }

        fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
            Ok(self.wrap(OsStorage.open_append(path)?))
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            OsStorage.rename(from, to)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            let plan = &self.plan;
            if hit(&self.counters, &self.counters.removes, |n| {
                plan.fail_remove_at == Some(n)
            }) {
                return Err(injected("remove"));
            }
            OsStorage.remove(path)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            if sync_fails(&self.plan, &self.counters) {
                return Err(injected("directory fsync"));
            }
            if self.plan.skip_real_sync {
                return Ok(());
            }
            OsStorage.sync_dir(dir)
        }

        /// Not counted among the syncs (nor failed by the plan): the plans count the syncs
        /// of appends, and opens of logs with segments would shift them.
        fn drop_cache(&self, path: &Path) -> io::Result<()> {
            if self.plan.skip_real_sync {
                return Ok(());
            }
            OsStorage.drop_cache(path)
        }
    }
}
