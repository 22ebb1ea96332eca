//! A vault: one user's memories in one directory — a WAL, a memtable, immutable segments and
//! the manifest that ties them together.
//!
//! ```text
//! <vault>/MANIFEST          live segments, checkpoint lsn, tombstones, embedder pin
//! <vault>/wal/              the write-ahead log (wal crate)
//! <vault>/seg-<seq>/        immutable segments (segment.rs)
//! ```
//!
//! Files: `state.rs` (the read model: sources, tombstones, dedupe), `open.rs` (open and WAL
//! replay), `write.rs` (ingest, delete, clear, reset), `read.rs` (get, list, stats),
//! `search.rs` (hybrid retrieval), `seal.rs` (memtable → segments), `compaction.rs` (merge
//! policy and merges), `layout.rs` (the one place the segment list changes).
//!
//! Lock order (never taken the other way round): `compact_lock` → `seal_lock` →
//! `delete_lock` → `gate` → `manifest` → `state`. Searches take only `state` (read).
//! The segment list (`State::segments` and the manifest's list) changes only in
//! `Vault::install`, with the `manifest` lock held from reading the current list to applying
//! the new one: a seal and a merge can never build their next list from a stale one.

mod compaction;
mod layout;
mod open;
mod read;
mod seal;
mod search;
mod state;
mod write;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use wal::{Durability, Wal};

pub use compaction::{COMPACTION_DELETED_SHARE_MIN, COMPACTION_FANIN};
pub use read::Leftover;
pub use search::SEARCH_K_MAX;

use crate::crash::{CrashPoint, PauseHook};
use crate::embedder::Embedder;
use crate::error::{Error, Result};
use crate::footprint::MemoryGauge;
use crate::hnsw::HnswParams;
use crate::limits::{
    MEMTABLE_BYTES_MAX_DEFAULT, MEMTABLE_RECORDS_MAX_DEFAULT, WAL_SEGMENT_BYTES_MAX,
};
use crate::manifest::Manifest;
use crate::policy::RetrievalPolicy;
use crate::record::MemoryId;
use crate::storage::{Storage, VaultDir};
use state::State;

/// How a vault is opened.
#[derive(Clone)]
pub struct VaultOptions {
    pub durability: Durability,
    /// Seal the memtable into a segment past this many records.
    pub memtable_records_max: usize,
    /// An ingest that takes the unsealed records (memtable and frozen ones) past this many
    /// heap bytes seals them before it returns (capped at
    /// [`crate::limits::MEMTABLE_BYTES_MAX_CEILING`]).
    pub memtable_bytes_max: usize,
    pub embedder: Arc<dyn Embedder>,
    pub hnsw: HnswParams,
    /// How searches rank (fusion, weights, priors, candidate pool); defaults follow the
    /// embedder's kind.
    pub policy: RetrievalPolicy,
    /// Seal and compact on the rayon pool when thresholds are crossed. Tests that drive
    /// `seal`/`compact` by hand turn this off.
    pub background: bool,
    /// Stop a seal or compaction at this point as if the process died there (tests).
    #[doc(hidden)]
    pub crash_at: Option<CrashPoint>,
    /// Called at every [`CrashPoint`] a seal or compaction passes, before `crash_at` is
    /// checked: interleaving tests block in it to run another operation at that point.
    #[doc(hidden)]
    pub pause_at: Option<PauseHook>,
    /// Where this vault adds its heap estimate: the registry's engine-wide total, or a
    /// counter of its own for a vault opened directly.
    pub(crate) memory_total: Arc<AtomicU64>,
    /// Every write, fsync, rename and removal of the vault — its WAL's included — goes
    /// through this seam (`storage.rs`); the power-loss harness swaps in a recorder.
    #[doc(hidden)]
    pub storage: Arc<dyn Storage>,
    /// The WAL rotates to a new segment file past this size (tests make it small to cover
    /// rotation and the deletion of checkpointed segments).
    #[doc(hidden)]
    pub wal_segment_bytes_max: u64,
    /// Leave `seg-*` directories the manifest does not list in place instead of removing
    /// them as leftovers at open: `memoryrouter verify` audits them first
    /// ([`Vault::audit_leftovers`]), since a segment lost from the list is the only copy of
    /// its records.
    #[doc(hidden)]
    pub keep_leftovers: bool,
}

impl VaultOptions {
    pub fn new(embedder: Arc<dyn Embedder>) -> Self {
        VaultOptions {
            durability: Durability::Fsync,
            memtable_records_max: MEMTABLE_RECORDS_MAX_DEFAULT,
            memtable_bytes_max: MEMTABLE_BYTES_MAX_DEFAULT,
            policy: RetrievalPolicy::for_embedder(embedder.as_ref()),
            embedder,
            hnsw: HnswParams::default(),
            background: true,
            crash_at: None,
            pause_at: None,
            memory_total: Arc::new(AtomicU64::new(0)),
            storage: crate::storage::os(),
            wal_segment_bytes_max: WAL_SEGMENT_BYTES_MAX,
            keep_leftovers: false,
        }
    }

    /// Passes a fault point: runs the test's pause hook, then fails if the test crashes here.
    pub(crate) fn reach(&self, point: CrashPoint) -> Result<()> {
        if let Some(pause) = &self.pause_at {
            pause(point);
        }
        if self.crash_at == Some(point) {
            return Err(Error::InjectedCrash { point });
        }
        Ok(())
    }
}

/// What an ingest did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    /// Ids of the records written (one per chunk).
    pub stored: Vec<MemoryId>,
    /// Messages already present (same session, role and content), not stored again.
    pub skipped: usize,
}

/// Size and shape of a vault.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VaultStats {
    pub memories: u64,
    pub bytes_on_disk: u64,
    pub embedder: String,
    pub dim: u32,
    pub last_write_ms: Option<i64>,
    pub segments: u32,
    pub memtable: u32,
    /// A background seal or compaction is queued or running: the vault's layout (and so
    /// its search cost) is still changing.
    pub busy: bool,
    /// Estimated heap bytes of the open vault ([`Vault::memory_bytes`]); mapped segment files
    /// are not counted.
    pub memory_bytes: u64,
}

pub(crate) struct Inner {
    pub name: String,
    /// The directory, with the storage every write of the vault goes through.
    pub dir: VaultDir,
    pub wal: Wal,
    pub options: VaultOptions,
    pub dim: usize,
    /// Ingests and deletes hold it (read) from id assignment until their records are in the
    /// memtable; seal and reset take it (write) to see a point where the WAL and the memtable
    /// agree, which is what makes `checkpoint_lsn` exact.
    pub gate: RwLock<()>,
    /// Serialises seals (one memtable in flight).
    pub seal_lock: Mutex<()>,
    /// Serialises compactions.
    pub compact_lock: Mutex<()>,
    /// Serialises deletes so two concurrent deletes of one id cannot both report `true`.
    pub delete_lock: Mutex<()>,
    /// The manifest as last stored. Held by `Vault::install` from reading the segment list to
    /// applying the next one, and by every other manifest writer (the embedder pin).
    pub manifest: Mutex<Manifest>,
    pub state: RwLock<State>,
    pub next_id: AtomicU64,
    pub next_segment: AtomicU64,
    pub closed: AtomicBool,
    /// Background jobs queued or running; the registry never closes a busy vault.
    pub jobs: AtomicUsize,
    pub seal_scheduled: AtomicBool,
    /// Set for good by the first failed fsync (the engine's or the WAL's): the vault's
    /// storage (`storage::Guarded`) then refuses every write, and the registry never closes
    /// the vault, so it is never reopened in this process from a page cache that may differ
    /// from the disk.
    pub poisoned: Arc<AtomicBool>,
    /// Set for good, with the file's path, by the first call that finds a segment map
    /// damaged (a page read failed with SIGBUS, contained by `mmap.rs`): every later call
    /// answers [`Error::SegmentUnreadable`] (503 for this vault only), and the registry never
    /// closes the vault, so it stays reported until a restart reads the files again.
    pub unreadable: std::sync::OnceLock<std::path::PathBuf>,
    /// The same gauge as `State::memory`, readable without the state lock: the registry
    /// reads it under its own lock, where waiting for a vault's lock would stall every vault.
    pub memory: Arc<MemoryGauge>,
}

/// A handle to one open vault. Every method is safe to call concurrently.
pub struct Vault {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl Vault {
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::VaultClosed {
                id: self.inner.name.clone(),
            });
        }
        if let Some(path) = self.inner.unreadable.get() {
            return Err(Error::SegmentUnreadable { path: path.clone() });
        }
        Ok(())
    }

    /// Runs a call that reads segments and answers [`Error::SegmentUnreadable`] instead of
    /// its result if a segment map of the vault turned out damaged before or during it: a
    /// failed page read was contained (`mmap.rs`) and reads zeros, so what the call computed
    /// may be garbage. A panic the zeros may have caused is answered the same way; any other
    /// panic goes on. Costs a read lock and one atomic load per segment file.
    pub(crate) fn contained<T>(&self, call: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_open()?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(call));
        self.check_readable()?;
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Checks the segments' maps; the first damage found marks the vault unreadable.
    pub(crate) fn check_readable(&self) -> Result<()> {
        let checked = self.inner.state.read().check_segments();
        if let Err(Error::SegmentUnreadable { path }) = &checked
            && self.inner.unreadable.set(path.clone()).is_ok()
        {
            tracing::error!(
                vault = %self.inner.name,
                path = %path.display(),
                "a segment page could not be read (SIGBUS contained): the vault answers 503 until a restart"
            );
        }
        checked
    }

    /// True once a read found one of the vault's segment files unreadable (an I/O error on a
    /// mapped page, `mmap.rs`): every call answers [`Error::SegmentUnreadable`] until the
    /// process restarts; other vaults are unaffected.
    pub fn is_unreadable(&self) -> bool {
        self.inner.unreadable.get().is_some()
    }

    /// True once an fsync of this vault (a WAL append's, a segment's, the manifest's or a
    /// directory's) has failed in this process. A poisoned vault answers reads, refuses
    /// every write (its storage does, `storage::Guarded`), and stays open until the process
    /// ends; the next process recovers from the disk.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// True while the vault's last write ran out of disk space (`ENOSPC`/`EDQUOT`) and no
    /// write has succeeded since: writes answer an error that may be retried, reads work.
    /// Checks first whether space came back (`wal::Wal::probe_space`), so it turns false as
    /// soon as space is freed, without waiting for a write.
    pub fn is_write_stalled(&self) -> bool {
        self.inner.wal.probe_space() == wal::Health::WriteStalled
    }

    /// Estimated heap bytes this vault holds while open: memtables, dedupe and tombstone
    /// sets, segments' in-memory side. Mapped segment files are page cache and not counted
    /// (`footprint.rs` says why). Recomputed from lengths and capacities under the read lock
    /// (O(1 + segments)), which also brings in indexes searches built lazily since the last
    /// write, and passed on to the registry's total.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.state.read().refresh_memory();
        self.inner.memory.get()
    }

    /// The estimate as last refreshed, without the state lock.
    pub(crate) fn memory_estimate(&self) -> u64 {
        self.inner.memory.get()
    }

    /// Refreshes the estimate unless a writer holds or waits for the state lock (the next
    /// change refreshes it anyway); never blocks.
    pub(crate) fn try_refresh_memory(&self) {
        if let Some(state) = self.inner.state.try_read() {
            state.refresh_memory();
        }
    }

    /// Flushes the WAL to disk (matters in `Buffered` durability; a no-op cost otherwise).
    pub fn sync(&self) -> Result<()> {
        self.inner.wal.sync()?;
        Ok(())
    }

    /// True while a background seal or compaction is queued or running.
    pub fn is_busy(&self) -> bool {
        self.inner.jobs.load(Ordering::Acquire) > 0
    }

    pub(crate) fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Fixtures the vault's unit tests share: a hand-driven vault of the built-in embedder.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use crate::embedder::BuiltinEmbedder;
    use crate::record::{NewMemory, Role};

    use super::VaultOptions;

    /// No background seals or compactions: tests call them by hand.
    pub fn options() -> VaultOptions {
        let mut o = VaultOptions::new(Arc::new(BuiltinEmbedder::new()));
        o.background = false;
        o
    }

    /// A user message of session "s".
    pub fn said(text: &str) -> NewMemory {
        NewMemory::new("s", Role::User, text, 1)
    }
}
