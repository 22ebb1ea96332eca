//! The registry of vaults ([`Engine`]): opens a vault on first use, keeps at most
//! `open_vaults_max` of them open holding at most about `open_vaults_memory_bytes_max` of
//! heap between them (least recently used idle ones are closed), and never scans the vault
//! directories at start — 100k vaults on disk cost nothing until they are used.
//!
//! Memory is bounded through a running total: every open vault keeps its heap estimate
//! current in a gauge that adds its changes to one `Arc<AtomicU64>` shared by all vaults
//! (`footprint.rs`), so checking the bound is one atomic load per request, not a walk over
//! the open vaults. The check runs on every `Engine::vault` call — after opening a vault and
//! also when handing out one already open — because memory grows through ingests and every
//! request reaches its vault through this call: the total can overshoot the bound by at
//! most what the requests in flight ingest before the next call closes something.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use wal::Durability;

use crate::embedder::{BuiltinEmbedder, Embedder};
use crate::error::{Error, Result};
use crate::hnsw::HnswParams;
use crate::limits::MEMTABLE_RECORDS_MAX_DEFAULT;
use crate::policy::RetrievalPolicy;
use crate::storage::Storage;
use crate::vault::{Vault, VaultOptions};

/// Default bound on open vaults. An idle open vault costs its memtable plus a few file
/// descriptors (WAL, maps); 1024 of them fit comfortably in a small server's limits.
pub const OPEN_VAULTS_MAX_DEFAULT: usize = 1024;
/// Default bound on the summed heap estimate of open vaults, in bytes: 1 GiB. Measured
/// (counting allocator): a memtable record of 384 dimensions and ~450 characters holds about
/// 5.5 KiB, so a full memtable (4096 records) about 22 MiB; a settled vault holds ~35 bytes
/// per record (dedupe map) plus `dim + 4` once its segments are searched (int8 codes), about
/// 420 KiB per 1000 records at 384 dimensions. 1 GiB thus keeps ~45 vaults with full
/// memtables or ~2500 settled ones open — past `OPEN_VAULTS_MAX_DEFAULT`, so for ordinary
/// vaults the count binds first — and leaves a 2–4 GiB server room for the embedder,
/// request buffers and the page cache that serves the mapped segments.
pub const OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT: u64 = 1 << 30;
/// Longest vault id, in bytes (it is a directory name).
pub const VAULT_ID_BYTES_MAX: usize = 64;

/// How the engine runs.
#[derive(Clone)]
pub struct EngineConfig {
    /// One directory per vault under it, e.g. `DATA_DIR/vaults`.
    pub root: PathBuf,
    pub durability: Durability,
    /// Idle vaults beyond this are closed, least recently used first.
    pub open_vaults_max: usize,
    /// Idle vaults are also closed, least recently used first, while the open vaults' summed
    /// heap estimate ([`Vault::memory_bytes`]) is above this. Vaults in use or with background
    /// work are never closed, so a single vault bigger than the bound stays open while used.
    pub open_vaults_memory_bytes_max: u64,
    /// Seal threshold of each vault's memtable, in records.
    pub memtable_records_max: usize,
    /// Heap bytes of a vault's unsealed records past which the ingest that got there seals
    /// them before returning (`VaultOptions::memtable_bytes_max`).
    pub memtable_bytes_max: usize,
    pub embedder: Arc<dyn Embedder>,
    /// Graph parameters for large segments.
    pub hnsw: HnswParams,
    /// How searches rank; `None` = the defaults of the embedder's kind.
    pub policy: Option<RetrievalPolicy>,
    /// The file-system seam every vault writes through (`storage.rs`); tests record it.
    #[doc(hidden)]
    pub storage: Arc<dyn Storage>,
    /// Each vault's WAL rotates past this size (tests make it small).
    #[doc(hidden)]
    pub wal_segment_bytes_max: u64,
}

impl EngineConfig {
    /// Defaults: fsync durability, [`OPEN_VAULTS_MAX_DEFAULT`],
    /// [`OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT`], [`MEMTABLE_RECORDS_MAX_DEFAULT`], the built-in
    /// embedder.
    pub fn new(root: PathBuf) -> Self {
        EngineConfig {
            root,
            durability: Durability::Fsync,
            open_vaults_max: OPEN_VAULTS_MAX_DEFAULT,
            open_vaults_memory_bytes_max: OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT,
            memtable_records_max: MEMTABLE_RECORDS_MAX_DEFAULT,
            memtable_bytes_max: crate::limits::MEMTABLE_BYTES_MAX_DEFAULT,
            embedder: Arc::new(BuiltinEmbedder::new()),
            hnsw: HnswParams::default(),
            policy: None,
            storage: crate::storage::os(),
            wal_segment_bytes_max: crate::limits::WAL_SEGMENT_BYTES_MAX,
        }
    }
}

struct Slot {
    vault: Arc<Vault>,
    last_used: u64,
}

/// All vaults of one node. `Send + Sync`; share it by reference or `Arc`.
pub struct Engine {
    config: EngineConfig,
    open: Mutex<(HashMap<String, Slot>, u64)>,
    /// Sum of the heap estimates of the vaults alive (each vault's gauge adds to it and takes
    /// its share out when its last handle drops).
    memory_total: Arc<AtomicU64>,
    /// Vaults moved to another node by this process ([`Engine::give_up`]): [`Engine::vault`]
    /// refuses them instead of creating an empty vault in their place, until
    /// [`Engine::adopt`] brings one back.
    gone: Mutex<HashSet<String>>,
}

/// Longest a move waits, while the vault serves, for its seal or compaction to finish
/// before fencing it (a merge of a large vault takes seconds; the fence would wait for it
/// with the writes held).
pub const FENCE_QUIET_WAIT_MS: u64 = 120_000;

/// A vault held still for a move ([`Engine::fence`]): no write, seal or compaction runs
/// while it is held, so its files are final. Dropping it (or [`Fence::lift`]) lets the
/// waiting writes go on here; [`Engine::give_up`] closes the vault for good instead.
pub struct Fence {
    id: String,
    vault: Arc<Vault>,
    /// `true` = give the vault up (close and delete it), `false`/dropped = lift.
    release: std::sync::mpsc::Sender<bool>,
    /// What the holding thread did on release.
    done: std::sync::mpsc::Receiver<Result<()>>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("id", &self.id).finish()
    }
}

impl Fence {
    /// The vault's files relative to its directory, with their sizes, as they stand under
    /// the fence: `MANIFEST`, every WAL file and the files of the segments the manifest
    /// lists (leftovers of a failed seal are not part of the vault and are left out).
    pub fn files(&self) -> Result<Vec<(String, u64)>> {
        vault_files(&self.vault, true)
    }

    /// Lets the writes waiting on the vault go on here (the move did not happen).
    pub fn lift(self) {
        let _ = self.release.send(false);
        let _ = self.done.recv();
    }
}

/// Files of `vault` (see [`Fence::files`]); `everything` = false lists only the files of
/// the segments its manifest lists now, which never change once listed.
fn vault_files(vault: &Vault, everything: bool) -> Result<Vec<(String, u64)>> {
    let dir = vault.dir().to_path_buf();
    let segments = vault.inner.manifest.lock().segments.clone();
    let mut files = Vec::new();
    let add_dir = |sub: &str, files: &mut Vec<(String, u64)>| -> Result<()> {
        let path = dir.join(sub);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&path).map_err(Error::io(&path))? {
            let entry = entry.map_err(Error::io(&path))?;
            let meta = entry.metadata().map_err(Error::io(entry.path()))?;
            if meta.is_file() {
                names.push((
                    format!("{sub}/{}", entry.file_name().to_string_lossy()),
                    meta.len(),
                ));
            }
        }
        names.sort();
        files.extend(names);
        Ok(())
    };
    for segment in &segments {
        add_dir(segment, &mut files)?;
    }
    if everything {
        add_dir("wal", &mut files)?;
        let manifest = dir.join(crate::manifest::FILE_NAME);
        if let Ok(meta) = std::fs::metadata(&manifest) {
            files.push((crate::manifest::FILE_NAME.to_string(), meta.len()));
        }
    }
    Ok(files)
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("root", &self.config.root)
            .finish()
    }
}

/// Checks `[A-Za-z0-9_-]{1,64}`.
pub fn validate_vault_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= VAULT_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidVaultId { id: id.to_string() })
    }
}

impl Engine {
    /// Creates the root directory if needed (owner-only, its entry synced into its parent).
    /// Does not look inside it.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        // Resynced at every start: a process that died between creating it and syncing it
        // would otherwise leave every vault under an entry that may never reach the disk.
        crate::storage::create_dir_durably(&*config.storage, &config.root, true)?;
        Ok(Engine {
            config,
            open: Mutex::new((HashMap::new(), 0)),
            memory_total: Arc::new(AtomicU64::new(0)),
            gone: Mutex::new(HashSet::new()),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The retrieval policy every vault searches with: the configured one, else the
    /// embedder's defaults.
    pub fn policy(&self) -> RetrievalPolicy {
        self.config
            .policy
            .unwrap_or_else(|| RetrievalPolicy::for_embedder(self.config.embedder.as_ref()))
    }

    fn options(&self) -> VaultOptions {
        let mut o = VaultOptions::new(Arc::clone(&self.config.embedder));
        o.durability = self.config.durability;
        o.memtable_records_max = self.config.memtable_records_max;
        o.memtable_bytes_max = self.config.memtable_bytes_max;
        o.hnsw = self.config.hnsw.clone();
        o.policy = self.policy();
        o.memory_total = Arc::clone(&self.memory_total);
        o.storage = Arc::clone(&self.config.storage);
        o.wal_segment_bytes_max = self.config.wal_segment_bytes_max;
        o
    }

    /// The vault `id`, opened (or created) on first use.
    pub fn vault(&self, id: &str) -> Result<Arc<Vault>> {
        validate_vault_id(id)?;
        let mut guard = self.open.lock();
        if self.gone.lock().contains(id) {
            return Err(Error::VaultClosed { id: id.to_string() });
        }
        let (map, clock) = &mut *guard;
        *clock += 1;
        let vault = if let Some(slot) = map.get_mut(id) {
            slot.last_used = *clock;
            Arc::clone(&slot.vault)
        } else {
            // Opening under the registry lock keeps two callers from opening one directory
            // twice; an open is a manifest read, a few maps and a WAL replay (milliseconds).
            let vault = Arc::new(Vault::open(&self.config.root.join(id), self.options())?);
            map.insert(
                id.to_string(),
                Slot {
                    vault: Arc::clone(&vault),
                    last_used: *clock,
                },
            );
            vault
        };
        // One length compare and one atomic load unless a bound is exceeded.
        self.evict(map);
        drop(guard);
        // Outside the registry lock (waiting there for one vault's state lock would stall
        // every request): pick up indexes the vault's last search built lazily, so the next
        // check counts them. O(1 + its segments), and skipped if a writer is at the lock.
        vault.try_refresh_memory();
        Ok(vault)
    }

    /// Audits how vault `id`'s segments are accounted for, before anything opens it normally
    /// (a normal open deletes unlisted `seg-*` directories as leftovers): the names its
    /// MANIFEST lists whose directory is missing, and its unlisted directories
    /// ([`Vault::audit_leftovers`], on a vault opened with those kept). The vault must not be
    /// open in this engine; the audit closes it again. For `memoryrouter verify`.
    #[doc(hidden)]
    pub fn audit_segments(&self, id: &str) -> Result<(Vec<String>, Vec<crate::vault::Leftover>)> {
        validate_vault_id(id)?;
        let dir = self.config.root.join(id);
        let Some(manifest) = crate::manifest::Manifest::load(&dir)? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let missing: Vec<String> = manifest
            .segments
            .iter()
            .filter(|name| !dir.join(name).is_dir())
            .cloned()
            .collect();
        if !missing.is_empty() {
            // The vault cannot open without them; nothing more to compare.
            return Ok((missing, Vec::new()));
        }
        let mut options = self.options();
        options.keep_leftovers = true;
        options.background = false;
        let vault = Vault::open(&dir, options)?;
        Ok((missing, vault.audit_leftovers()?))
    }

    /// Closes least recently used vaults while more than `open_vaults_max` are open or their
    /// heap estimate is above `open_vaults_memory_bytes_max`, skipping vaults that someone
    /// still holds (the one just handed out included) or that have background work in flight
    /// (closing those would let a second instance open the same directory), unreadable ones (kept
    /// open so readiness and metrics keep reporting them), and poisoned ones
    /// (reopening would read back a page cache that may hold what a failed fsync never
    /// wrote: a poisoned vault stays open, refusing writes, until the process ends). When only such
    /// vaults are left it stops over the bound: a vault bigger than the bound stays open
    /// while it is used, and is closed once idle when another vault is asked for.
    fn evict(&self, map: &mut HashMap<String, Slot>) {
        let count_max = self.config.open_vaults_max;
        let bytes_max = self.config.open_vaults_memory_bytes_max;
        // The shared total falls when a closed vault's last handle drops, which a finishing
        // background job may delay by a moment; subtracting what this loop closes keeps it
        // from closing more than the bound asks for meanwhile.
        let mut bytes = self.memory_total.load(Ordering::Acquire);
        while map.len() > count_max || bytes > bytes_max {
            let victim = map
                .iter()
                .filter(|(_, s)| {
                    Arc::strong_count(&s.vault) == 1
                        && !s.vault.is_busy()
                        && !s.vault.is_poisoned()
                        && !s.vault.is_unreadable()
                })
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            let Some(slot) = victim.as_ref().and_then(|id| map.remove(id)) else {
                break;
            };
            bytes = bytes.saturating_sub(slot.vault.memory_estimate());
            if let Err(e) = slot.vault.sync() {
                tracing::error!(vault = ?victim, error = %e, "sync on close failed");
            }
        }
    }

    pub fn open_vault_count(&self) -> usize {
        self.open.lock().0.len()
    }

    /// Ids of the open vaults for which `test` holds, sorted. `test` runs outside the
    /// registry lock (a write-stall probe writes a file).
    fn open_vaults_where(&self, test: impl Fn(&Vault) -> bool) -> Vec<String> {
        let vaults: Vec<(String, Arc<Vault>)> = self
            .open
            .lock()
            .0
            .iter()
            .map(|(id, s)| (id.clone(), Arc::clone(&s.vault)))
            .collect();
        let mut ids: Vec<String> = vaults
            .into_iter()
            .filter(|(_, v)| test(v))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    /// Ids of the open vaults that saw a failed fsync ([`Vault::is_poisoned`]), sorted: they
    /// refuse writes until the process restarts (readiness and metrics report them).
    pub fn poisoned_vaults(&self) -> Vec<String> {
        self.open_vaults_where(Vault::is_poisoned)
    }

    /// Ids of the open vaults whose last write ran out of disk space and that still find no
    /// room ([`Vault::is_write_stalled`]), sorted: readiness reports them until space is
    /// freed. Unlike poisoning this clears by itself.
    pub fn write_stalled_vaults(&self) -> Vec<String> {
        self.open_vaults_where(Vault::is_write_stalled)
    }

    /// Ids of the open vaults with a segment file that could not be read (an I/O error on a
    /// mapped page, contained: [`Vault::is_unreadable`]), sorted: they answer 503 until the
    /// process restarts and are never closed meanwhile (readiness and metrics report them).
    pub fn unreadable_vaults(&self) -> Vec<String> {
        self.open_vaults_where(Vault::is_unreadable)
    }

    /// Summed heap estimate of the open vaults, in bytes (what `open_vaults_memory_bytes_max`
    /// bounds). It includes vaults purged or closed while a caller still holds them, until
    /// the last handle drops: their memory is still in use.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_total.load(Ordering::Acquire)
    }

    /// Lists vault directories (admin/dashboard only: this one does read the root).
    pub fn vault_ids(&self) -> Result<Vec<String>> {
        let root = &self.config.root;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(root).map_err(Error::io(root))? {
            let entry = entry.map_err(Error::io(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && validate_vault_id(&name).is_ok() {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Closes and deletes a vault's directory. Handles still held elsewhere fail with
    /// [`Error::VaultClosed`] from then on.
    pub fn purge_vault(&self, id: &str) -> Result<()> {
        validate_vault_id(id)?;
        let mut guard = self.open.lock();
        if let Some(slot) = guard.0.remove(id) {
            slot.vault.mark_closed();
        }
        let dir = self.config.root.join(id);
        let storage = &*self.config.storage;
        remove_dir_if_present(storage, &dir)?;
        crate::storage::sync_dir(storage, &self.config.root)
    }

    /// Files of vault `id`'s listed segments, relative to its directory, with their sizes:
    /// what a move copies while the vault keeps serving (listed segments never change).
    pub fn segment_files(&self, id: &str) -> Result<Vec<(String, u64)>> {
        vault_files(&*self.vault(id)?, false)
    }

    /// Holds vault `id` still for a move to another node: on a thread of its own, takes the
    /// vault's compaction, seal and write locks in their order (waiting for a seal or merge
    /// that runs; one only queued runs after the fence, or fails if the vault is given up)
    /// and syncs its WAL: every ingest or delete already past its reservation has
    /// reached the WAL, and every later one waits at the write gate. Searches and reads go
    /// on. Blocking; call it off the async workers.
    pub fn fence(&self, id: &str) -> Result<Fence> {
        let vault = self.vault(id)?;
        let (held_tx, held_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (release, release_rx) = std::sync::mpsc::channel::<bool>();
        let (done_tx, done) = std::sync::mpsc::channel::<Result<()>>();
        let inner = Arc::clone(&vault.inner);
        let storage = Arc::clone(&self.config.storage);
        let root = self.config.root.clone();
        std::thread::Builder::new()
            .name(format!("mr-fence-{id}"))
            .spawn(move || {
                let _compact = inner.compact_lock.lock();
                let _seal = inner.seal_lock.lock();
                let _gate = inner.gate.write();
                let synced = inner.wal.sync().map_err(Error::from);
                let failed = synced.is_err();
                let _ = held_tx.send(synced);
                // A sender dropped without a word lifts the fence, as `lift` does.
                let give_up = !failed && release_rx.recv().unwrap_or(false);
                let result = if give_up {
                    // Closed before the gate opens: each write waiting there checks it
                    // once through (`Vault::ingest`, `delete_ids`) and fails instead of
                    // appending to a WAL that is no longer the vault's.
                    inner.closed.store(true, Ordering::Release);
                    let dir: &Path = &inner.dir;
                    remove_dir_if_present(&*storage, dir)
                        .and_then(|()| crate::storage::sync_dir(&*storage, &root))
                } else {
                    Ok(())
                };
                let _ = done_tx.send(result);
            })
            .map_err(Error::io(&self.config.root))?;
        match held_rx.recv() {
            Ok(Ok(())) => Ok(Fence {
                id: id.to_string(),
                vault,
                release,
                done,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::VaultClosed { id: id.to_string() }),
        }
    }

    /// Gives up a fenced vault after it moved to another node: closes it for good in this
    /// process (handles still held fail with [`Error::VaultClosed`], and so does
    /// [`Engine::vault`] until [`Engine::adopt`]), deletes its directory, and only then
    /// opens the write gate, so no write waiting there lands in this copy.
    pub fn give_up(&self, fence: Fence) -> Result<()> {
        {
            let mut guard = self.open.lock();
            self.gone.lock().insert(fence.id.clone());
            if let Some(slot) = guard.0.remove(&fence.id) {
                slot.vault.mark_closed();
            }
        }
        let _ = fence.release.send(true);
        fence.done.recv().unwrap_or_else(|_| {
            Err(Error::VaultClosed {
                id: fence.id.clone(),
            })
        })
    }

    /// Installs `staged` (a vault directory received from another node, every file synced)
    /// as vault `id`: renamed into place and the rename synced. Refused while `id` is open
    /// here; a stale directory of `id` is replaced. The vault opens on first use.
    pub fn adopt(&self, id: &str, staged: &Path) -> Result<()> {
        validate_vault_id(id)?;
        let guard = self.open.lock();
        if guard.0.contains_key(id) {
            return Err(Error::InvalidArgument {
                name: "vault",
                reason: format!("vault {id} is open on this node"),
            });
        }
        let dir = self.config.root.join(id);
        let storage = &*self.config.storage;
        remove_dir_if_present(storage, &dir)?;
        storage.rename(staged, &dir).map_err(Error::io(&dir))?;
        crate::storage::sync_dir(storage, &self.config.root)?;
        self.gone.lock().remove(id);
        drop(guard);
        Ok(())
    }

    /// Syncs every open vault's WAL (shutdown, `Buffered` durability). Every vault is synced
    /// even when one fails (each failure is logged); the first error is returned. A vault
    /// poisoned by a failed fsync fails here only in `Buffered` durability, where acknowledged
    /// writes may be lost (see `wal::Wal::sync`).
    pub fn flush(&self) -> Result<()> {
        let vaults: Vec<(String, Arc<Vault>)> = self
            .open
            .lock()
            .0
            .iter()
            .map(|(id, s)| (id.clone(), Arc::clone(&s.vault)))
            .collect();
        let mut first = None;
        for (id, vault) in vaults {
            if let Err(e) = vault.sync() {
                tracing::error!(vault = %id, error = %e, "sync at shutdown failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Removes vault directory `dir` and everything in it; one already gone is fine (purges and
/// moves may repeat after a crash).
fn remove_dir_if_present(storage: &dyn crate::storage::Storage, dir: &Path) -> Result<()> {
    match storage.remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir)(e)),
    }
}
