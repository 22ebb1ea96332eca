//! The data directory's small files: the process lock, `secret.key` and `admin.key`.
//!
//! Both key files are owner-only (0600) and written crash-safely: to a temporary name,
//! fsynced, renamed over the target, and the directory fsynced, so a crash leaves either no
//! file or the whole file, never a truncated secret.
//!
//! Everything under the data directory is owner-only whatever the umask: directories 0700
//! (this one, `catalog/`, `vaults/` and each vault, `proxy-outbox/`), files 0600 (the engine
//! and the `wal` crate create theirs with `engine::storage::FILE_MODE`).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::secret;

pub(crate) const CATALOG_DIR: &str = "catalog";
pub(crate) const VAULTS_DIR: &str = "vaults";
pub(crate) const ADMIN_KEY_FILE: &str = "admin.key";
pub(crate) const SECRET_KEY_FILE: &str = "secret.key";
pub(crate) const LOCK_FILE: &str = "LOCK";
/// Owner read/write only.
pub(crate) const SECRET_FILE_MODE: u32 = 0o600;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates the data directory (owner-only, its entry synced into its parent) if needed.
pub(crate) fn ensure(dir: &Path) -> Result<(), Error> {
    engine::storage::create_dir_durably(&engine::storage::OsStorage, dir, true)?;
    Ok(())
}

/// An exclusive lock on `DATA_DIR/LOCK`, held for the process's life: two processes
/// appending to the same WALs would corrupt them, so the second one is refused.
pub(crate) struct DirLock {
    _file: File,
}

pub(crate) fn lock(dir: &Path) -> Result<DirLock, Error> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(SECRET_FILE_MODE)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::Io {
            path,
            source: std::io::Error::other(
                "another memoryrouter process is using this data directory",
            ),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(Error::Io { path, source }),
    }
}

/// Writes `contents` to `path` atomically with mode 0600.
pub(crate) fn write_secret_file(path: &Path, contents: &str) -> Result<(), Error> {
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(SECRET_FILE_MODE)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(contents.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io(parent))?;
    }
    Ok(())
}

/// The provider-key secret: from `MEMORYROUTER_SECRET_KEY` if given, else
/// `DATA_DIR/secret.key`, created with 32 random bytes on first start.
pub(crate) fn load_or_create_secret(
    dir: &Path,
    env_hex: Option<&str>,
) -> Result<[u8; secret::SECRET_KEY_BYTES], Error> {
    let (hex, origin) = match env_hex {
        Some(hex) => (hex.trim().to_owned(), "MEMORYROUTER_SECRET_KEY".to_owned()),
        None => {
            let path = dir.join(SECRET_KEY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(text) => (text.trim().to_owned(), path.display().to_string()),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    let mut fresh = [0u8; secret::SECRET_KEY_BYTES];
                    secret::random_bytes(&mut fresh)?;
                    write_secret_file(&path, &format!("{}\n", secret::to_hex(&fresh)))?;
                    return Ok(fresh);
                }
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
    };
    secret::from_hex(&hex)
        .and_then(|bytes| <[u8; secret::SECRET_KEY_BYTES]>::try_from(bytes).ok())
        .ok_or_else(|| Error::SecretKey {
            reason: format!("{origin} must hold 64 hex digits"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn secret_is_created_owner_only_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_secret(dir.path(), None).unwrap(), first);
        let from_env = load_or_create_secret(dir.path(), Some(&"ab".repeat(32))).unwrap();
        assert_eq!(from_env, [0xab; 32]);
        assert!(load_or_create_secret(dir.path(), Some("xyz")).is_err());
    }

    #[test]
    fn a_second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path()).unwrap();
        assert!(lock(dir.path()).is_err());
    }
}
