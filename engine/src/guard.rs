//! The storage of one open vault: the first failed fsync poisons it for good (see
//! [`Guarded`]). A layer of its own file so that the power-loss tests, which name sync call
//! sites by their stack frames, can look through it.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::storage::{FileSync, LogFile, Storage};

/// What a poisoned vault's storage answers to every write.
const POISONED: &str = "the vault refuses writes since an fsync failed (what reached the disk is unknown); \
     restart to recover from the disk";

/// One vault's storage, poisoned for good by the first failed fsync (a file's or a
/// directory's, the WAL's included): from then on it refuses every write, rename, removal
/// and sync, so the vault (its WAL, seals, compactions, manifest) cannot acknowledge anything
/// on top of a disk state nobody knows. The registry never closes a poisoned vault (see
/// `registry.rs`), so it is not reopened from the page cache either; the next process
/// recovers from the disk.
pub(crate) struct Guarded {
    inner: Arc<dyn Storage>,
    poisoned: Arc<AtomicBool>,
    name: String,
}

impl Guarded {
    pub(crate) fn new(inner: Arc<dyn Storage>, name: String) -> Self {
        Guarded {
            inner,
            poisoned: Arc::new(AtomicBool::new(false)),
            name,
        }
    }

    /// The flag, set once an fsync failed.
    pub(crate) fn poisoned(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.poisoned)
    }

    fn check(poisoned: &AtomicBool) -> io::Result<()> {
        if poisoned.load(Ordering::Acquire) {
            return Err(io::Error::other(POISONED));
        }
        Ok(())
    }

    fn watch(poisoned: &AtomicBool, name: &str, result: io::Result<()>) -> io::Result<()> {
        if let Err(e) = &result
            && !poisoned.swap(true, Ordering::AcqRel)
        {
            tracing::error!(vault = %name, error = %e, "fsync failed: the vault refuses writes until the process restarts");
        }
        result
    }

    fn wrap(&self, file: io::Result<Box<dyn LogFile>>) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(GuardedFile {
            inner: file?,
            poisoned: Arc::clone(&self.poisoned),
            name: self.name.clone(),
        }))
    }
}

struct GuardedFile {
    inner: Box<dyn LogFile>,
    poisoned: Arc<AtomicBool>,
    name: String,
}

impl LogFile for GuardedFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        self.inner.write_all(buf)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        let result = self.inner.sync_data();
        Guarded::watch(&self.poisoned, &self.name, result)
    }

    fn truncate(&mut self, len: u64) -> io::Result<u64> {
        Guarded::check(&self.poisoned)?;
        self.inner.truncate(len)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        let result = self.inner.sync_all();
        Guarded::watch(&self.poisoned, &self.name, result)
    }

    fn syncer(&self) -> Option<Box<dyn FileSync>> {
        Some(Box::new(GuardedSync {
            inner: self.inner.syncer()?,
            poisoned: Arc::clone(&self.poisoned),
            name: self.name.clone(),
        }))
    }
}

/// A [`GuardedFile`]'s detached sync handle (`LogFile::syncer`): poisoned by, and poisoning,
/// the same flag.
struct GuardedSync {
    inner: Box<dyn FileSync>,
    poisoned: Arc<AtomicBool>,
    name: String,
}

impl FileSync for GuardedSync {
    fn sync_data(&mut self) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        let result = self.inner.sync_data();
        Guarded::watch(&self.poisoned, &self.name, result)
    }
}

impl wal::Storage for Guarded {
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Guarded::check(&self.poisoned)?;
        self.wrap(self.inner.create(path))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Guarded::check(&self.poisoned)?;
        self.wrap(self.inner.open_append(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        let result = self.inner.sync_dir(dir);
        Guarded::watch(&self.poisoned, &self.name, result)
    }

    fn drop_cache(&self, path: &Path) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        let result = self.inner.drop_cache(path);
        Guarded::watch(&self.poisoned, &self.name, result)
    }
}

impl Storage for Guarded {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Guarded::check(&self.poisoned)?;
        self.wrap(self.inner.create_new(path))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        self.inner.create_dir(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        Guarded::check(&self.poisoned)?;
        self.inner.remove_dir_all(path)
    }
}
