//! Test-only fault points of seals and compactions. A vault passes each [`CrashPoint`] in
//! order; a test can make it stop there as if the process died (`VaultOptions::crash_at`:
//! the operation returns [`Error::InjectedCrash`] and leaves the disk exactly as a crash
//! would), or block there while another operation runs (`VaultOptions::pause_at`: how the
//! seal/merge interleaving tests make a race deterministic).

use std::sync::Arc;

/// A point a seal or compaction passes on its way to swapping segments in.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The new segment's files are written and synced under a temp name.
    SealAfterTempDir,
    /// The new segment is renamed into place but no manifest names it yet.
    SealAfterRename,
    /// The manifest names the new segment (and the in-memory list holds it); the WAL is not
    /// checkpointed yet.
    SealAfterManifest,
    CompactAfterTempDir,
    CompactAfterRename,
    /// The manifest and the in-memory list name the merged segment; its inputs still exist.
    CompactAfterManifest,
}

/// Called at every [`CrashPoint`] a vault passes, before `crash_at` is checked.
#[doc(hidden)]
pub type PauseHook = Arc<dyn Fn(CrashPoint) + Send + Sync>;
