//! The registry: lazy opening, the open-vault bound, isolation between vaults, purge.

use std::sync::Arc;

use engine::{Engine, EngineConfig, Error, Role};

use crate::common::{WordHash, msg, query};

fn engine(root: &std::path::Path, open_max: usize) -> Engine {
    let mut c = EngineConfig::new(root.to_path_buf());
    c.embedder = WordHash::shared(16);
    c.open_vaults_max = open_max;
    Engine::open(c).unwrap()
}

#[test]
fn vaults_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 8);
    let a = e.vault("key_a").unwrap();
    let b = e.vault("key_b").unwrap();
    a.ingest(vec![msg("s", Role::User, "alice secret password hint", 1)])
        .unwrap();
    b.ingest(vec![msg("s", Role::User, "bob likes trains", 1)])
        .unwrap();
    let hits = b.search(&query("alice secret password", 10)).unwrap();
    assert!(hits.iter().all(|h| !h.memory.text.contains("alice")));
    assert_eq!(b.stats().unwrap().memories, 1);
    // Ids are per vault: both start at 1, and neither resolves the other's memory.
    assert_eq!(
        a.get(1).unwrap().unwrap().text,
        "alice secret password hint"
    );
    assert_eq!(b.get(1).unwrap().unwrap().text, "bob likes trains");
    assert!(!b.delete(2).unwrap());
    assert_eq!(a.clear(None).unwrap(), 1);
    assert_eq!(b.stats().unwrap().memories, 1);
}

#[test]
fn vault_ids_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 8);
    for bad in ["", "../x", "a/b", "a b", ".", "..", &"x".repeat(65), "é"] {
        let err = e.vault(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidVaultId { .. }), "{bad:?}");
        assert!(err.is_user_error());
    }
    e.vault(&"x".repeat(64)).unwrap();
    e.vault("key_AZaz09-_").unwrap();
}

#[test]
fn idle_vaults_beyond_the_bound_are_closed_and_reopen_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 3);
    // Nothing is opened at start, whatever is on disk.
    assert_eq!(e.open_vault_count(), 0);
    for i in 0..10 {
        let v = e.vault(&format!("v{i}")).unwrap();
        v.ingest(vec![msg("", Role::Note, &format!("note number {i}"), i)])
            .unwrap();
        assert!(e.open_vault_count() <= 3);
    }
    assert_eq!(e.open_vault_count(), 3);
    // A handle still held is never closed under its holder.
    let held = e.vault("v0").unwrap();
    for i in 1..10 {
        e.vault(&format!("v{i}")).unwrap();
    }
    assert!(e.open_vault_count() <= 3);
    held.ingest(vec![msg("", Role::Note, "still writable", 99)])
        .unwrap();
    drop(held);
    for i in 0..10 {
        let v = e.vault(&format!("v{i}")).unwrap();
        assert_eq!(
            v.list(None, 10, None).unwrap().last().unwrap().text,
            format!("note number {i}")
        );
    }
    e.flush().unwrap();
    let mut ids = e.vault_ids().unwrap();
    ids.sort();
    assert_eq!(ids.len(), 10);
    // A fresh engine on the same root sees everything without scanning at start.
    drop(e);
    let e = engine(dir.path(), 3);
    assert_eq!(e.open_vault_count(), 0);
    assert_eq!(e.vault("v7").unwrap().stats().unwrap().memories, 1);
}

#[test]
fn purge_deletes_the_directory_and_closes_handles() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 4);
    let v = e.vault("gone").unwrap();
    v.ingest(vec![msg("", Role::User, "ephemeral", 1)]).unwrap();
    e.purge_vault("gone").unwrap();
    assert!(!dir.path().join("gone").exists());
    assert!(matches!(
        v.search(&query("ephemeral", 1)),
        Err(Error::VaultClosed { .. })
    ));
    assert!(matches!(v.ingest(vec![]), Err(Error::VaultClosed { .. })));
    let fresh = e.vault("gone").unwrap();
    assert_eq!(fresh.stats().unwrap().memories, 0);
    e.purge_vault("never-existed").unwrap();
}

#[test]
fn concurrent_writers_and_readers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = EngineConfig::new(dir.path().to_path_buf());
    c.embedder = WordHash::shared(16);
    c.memtable_records_max = 50; // background seals and compactions run during the test
    let e = Arc::new(Engine::open(c).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                let v = e.vault("shared").unwrap();
                let mut ids = Vec::new();
                for i in 0..100 {
                    // Every thread also resends one common message: stored exactly once.
                    let out = v
                        .ingest(vec![
                            msg("s", Role::User, &format!("thread {t} message {i}"), i),
                            msg("s", Role::User, &format!("common message {i}"), i),
                        ])
                        .unwrap();
                    ids.extend(out.stored);
                    assert!(v.search(&query("message", 5)).unwrap().len() <= 5);
                }
                ids
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 4 * 100 + 100);
    let v = e.vault("shared").unwrap();
    // Let background work settle by running it in the foreground too (idempotent).
    v.seal().unwrap();
    assert_eq!(v.stats().unwrap().memories, 500);
    assert_eq!(v.list(None, 1000, None).unwrap().len(), 500);
}

/// The real file system, except that every fsync fails while `failing` is set.
#[derive(Default)]
struct FailingSyncs {
    failing: std::sync::atomic::AtomicBool,
}

struct FailingFile {
    inner: Box<dyn engine::storage::LogFile>,
    storage: Arc<FailingSyncs>,
}

impl FailingSyncs {
    fn check(&self) -> std::io::Result<()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        Ok(())
    }
}

impl engine::storage::LogFile for FailingFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.storage.check()?;
        self.inner.sync_data()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<u64> {
        self.inner.truncate(len)
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.storage.check()?;
        self.inner.sync_all()
    }
}

/// The storage handed to the engine: shares the switch with the test.
struct Failing(Arc<FailingSyncs>);

impl Failing {
    fn wrap(
        &self,
        f: std::io::Result<Box<dyn engine::storage::LogFile>>,
    ) -> std::io::Result<Box<dyn engine::storage::LogFile>> {
        Ok(Box::new(FailingFile {
            inner: f?,
            storage: Arc::clone(&self.0),
        }))
    }
}

impl wal::Storage for Failing {
    fn create(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::LogFile>> {
        self.wrap(wal::Storage::create(&engine::storage::OsStorage, path))
    }
    fn open_append(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::LogFile>> {
        self.wrap(engine::storage::OsStorage.open_append(path))
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        engine::storage::OsStorage.rename(from, to)
    }
    fn remove(&self, path: &std::path::Path) -> std::io::Result<()> {
        engine::storage::OsStorage.remove(path)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.0.check()?;
        engine::storage::OsStorage.sync_dir(dir)
    }
    fn drop_cache(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.0.check()?;
        engine::storage::OsStorage.drop_cache(path)
    }
}

impl engine::storage::Storage for Failing {
    fn create_new(&self, path: &std::path::Path) -> std::io::Result<Box<dyn wal::LogFile>> {
        self.wrap(engine::storage::OsStorage.create_new(path))
    }
    fn create_dir(&self, path: &std::path::Path) -> std::io::Result<()> {
        engine::storage::OsStorage.create_dir(path)
    }
    fn remove_dir_all(&self, path: &std::path::Path) -> std::io::Result<()> {
        engine::storage::OsStorage.remove_dir_all(path)
    }
}

/// After a failed fsync a vault refuses writes for the life of the process and the registry
/// never closes it — reopening would read back a page cache that may hold bytes the disk
/// never got (and answer a retried ingest as a duplicate of them). Reads keep working.
#[test]
fn a_vault_whose_fsync_failed_stays_open_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Arc::new(FailingSyncs::default());
    let mut c = EngineConfig::new(dir.path().to_path_buf());
    c.embedder = WordHash::shared(16);
    c.open_vaults_max = 1;
    c.storage = Arc::new(Failing(Arc::clone(&switch)));
    let e = Engine::open(c).unwrap();
    let sick = e.vault("sick").unwrap();
    sick.ingest(vec![msg("s", Role::User, "synced before the failure", 1)])
        .unwrap();
    switch
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = sick
        .ingest(vec![msg("s", Role::User, "never acknowledged", 2)])
        .unwrap_err();
    assert!(err.is_failed_sync(), "{err}");
    assert!(sick.is_poisoned());
    switch
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // The disk works again; the vault still refuses, every kind of write.
    refused(sick.ingest(vec![msg("s", Role::User, "never acknowledged", 2)]));
    refused(sick.delete(1));
    refused(sick.seal());
    assert_eq!(sick.list(None, 10, None).unwrap().len(), 1, "reads answer");
    assert_eq!(e.poisoned_vaults(), ["sick"]);
    drop(sick);
    // Past the bound of one open vault, the idle poisoned vault is still never closed.
    for other in ["a", "b", "c"] {
        e.vault(other)
            .unwrap()
            .ingest(vec![msg("s", Role::User, other, 3)])
            .unwrap();
    }
    assert_eq!(e.poisoned_vaults(), ["sick"]);
    refused(
        e.vault("sick")
            .unwrap()
            .ingest(vec![msg("s", Role::User, "retry", 4)]),
    );
}

/// A write a poisoned vault refused: a storage fault (503). Its WAL says it is poisoned;
/// everything else, the vault's storage ("refuses writes since an fsync failed").
fn refused<T: std::fmt::Debug>(result: Result<T, Error>) {
    let err = result.unwrap_err();
    assert!(!err.is_user_error(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("refuses writes since an fsync failed") || text.contains("poisoned"),
        "{err}"
    );
}
