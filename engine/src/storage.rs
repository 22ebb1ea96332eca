//! The file-system seam of the engine's write path: every file the engine creates, writes
//! and fsyncs, every directory it creates, renames, removes and fsyncs goes through a
//! [`Storage`] — segment files, the MANIFEST, segment directories, vault directories and,
//! through the `wal` crate's own seam (which [`Storage`] extends), each vault's WAL.
//!
//! Production uses [`OsStorage`]. The power-loss harness (`powerloss.rs`) records every
//! operation instead and computes what a power cut at any point would leave on disk; it is
//! how the tests see a missing fsync or directory sync, which no process-crash test can (the
//! kernel's page cache survives `kill -9`). Reads and maps stay on `std::fs`: a read changes
//! nothing on disk.
//!
//! Everything is created owner-only, whatever the umask: directories 0700, files 0600
//! (vaults hold users' memories in plain text).

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

pub use wal::{FileSync, LogFile};

/// Mode of every directory the engine creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the engine creates (the WAL's too).
pub const FILE_MODE: u32 = wal::FILE_MODE;

/// The engine's write operations. Extends the WAL's seam (`create` truncating, `open_append`,
/// `rename` of files and directories, `remove` of a file, `sync_dir`) with what segments and
/// vault directories need.
#[doc(hidden)]
pub trait Storage: wal::Storage {
    /// Creates a new file for writing (an error if `path` exists), mode [`FILE_MODE`].
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Creates the directory `path` (its parent must exist), mode [`DIR_MODE`].
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes the directory `path` and everything under it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default)]
pub struct OsStorage;

impl wal::Storage for OsStorage {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        wal::OsStorage.create(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        wal::OsStorage.open_append(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        wal::OsStorage.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        wal::OsStorage.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        wal::OsStorage.sync_dir(dir)
    }

    fn drop_cache(&self, path: &Path) -> io::Result<()> {
        wal::drop_cache_of(path)
    }
}

struct OsFile(std::fs::File);

impl LogFile for OsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.0, buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<u64> {
        wal::truncate_file(&mut self.0, len)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn syncer(&self) -> Option<Box<dyn FileSync>> {
        let dup = self.0.try_clone().ok()?;
        Some(Box::new(wal::FdSync(dup)))
    }
}

impl Storage for OsStorage {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(OsFile(file)))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new().mode(DIR_MODE).create(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
}

/// The real file system, shared.
pub fn os() -> Arc<dyn Storage> {
    Arc::new(OsStorage)
}

/// A directory to write in, with the storage that writes there: a vault's directory carries
/// its vault's storage ([`VaultDir`]); a bare path (tests, tools) writes through [`OsStorage`].
pub trait InDir {
    fn path(&self) -> &Path;
    fn storage(&self) -> &dyn Storage;
}

impl InDir for Path {
    fn path(&self) -> &Path {
        self
    }

    fn storage(&self) -> &dyn Storage {
        &OsStorage
    }
}

impl InDir for PathBuf {
    fn path(&self) -> &Path {
        self
    }

    fn storage(&self) -> &dyn Storage {
        &OsStorage
    }
}

/// A vault's directory and the (guarded) storage every write of the vault goes through.
/// Derefs to the path, so reads use it like one.
pub(crate) struct VaultDir {
    path: PathBuf,
    storage: Arc<dyn Storage>,
}

impl VaultDir {
    pub(crate) fn new(path: PathBuf, storage: Arc<dyn Storage>) -> Self {
        VaultDir { path, storage }
    }
}

impl InDir for VaultDir {
    fn path(&self) -> &Path {
        &self.path
    }

    fn storage(&self) -> &dyn Storage {
        &*self.storage
    }
}

impl std::ops::Deref for VaultDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for VaultDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.path.fmt(f)
    }
}

/// Fsyncs a directory so creations, renames and removals in it are durable. A failure is
/// [`Error::SyncFailed`]: the vault that sees it stops accepting writes.
pub fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<()> {
    storage.sync_dir(dir).map_err(Error::sync_failed(dir))
}

/// Makes `dir` exist durably: creates it and any missing ancestor (each [`DIR_MODE`]),
/// fsyncing each parent after the entry is made, so that nothing acknowledged inside it can
/// vanish with a directory entry that never reached the disk. When `dir` already exists and
/// `resync` is set, its parent is fsynced anyway: an earlier process may have created it and
/// died before its sync. Returns whether `dir` was created.
pub fn create_dir_durably(storage: &dyn Storage, dir: &Path, resync: bool) -> Result<bool> {
    // A relative path's parent may be "": that is the working directory.
    let parent = dir.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    if dir.is_dir() {
        if resync && let Some(parent) = parent {
            match storage.sync_dir(parent) {
                Ok(()) => {}
                // A parent we may not read (a directory made for us by someone else): the
                // entry is as durable as its creator left it; nothing better can be done.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(Error::sync_failed(parent)(e)),
            }
        }
        return Ok(false);
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(storage, parent, false)?;
    }
    match storage.create_dir(dir) {
        Ok(()) => {}
        // Another thread made it meanwhile; its entry still needs the sync below.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(Error::io(dir)(e)),
    }
    if let Some(parent) = parent {
        sync_dir(storage, parent)?;
    }
    Ok(true)
}
