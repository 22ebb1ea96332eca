//! The one place a vault's segment list changes.
//!
//! Seals, merges and resets write their new segments first (outside every lock but their
//! own), then hand a [`Change`] to [`Vault::install`], which with the manifest lock held
//! reads the current list, stores the manifest naming the next one, and applies the same
//! next list to the searched state. The list stored and the list searched are therefore
//! always the same list, and no writer builds its next list from a stale copy.
//!
//! Before this, a seal stored its manifest and checkpointed the WAL before adding its segment
//! to the searched list, while a merge built its manifest from that list: a merge storing its
//! manifest in between dropped the sealed segment, and the next open deleted it — acknowledged
//! writes lost (tests/it/race.rs replays every such interleaving).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::manifest::Manifest;
use crate::memtable::Memtable;
use crate::segment::{Removed, Segment};

use super::Vault;

/// A change to the segment list.
pub(super) enum Change<'a> {
    /// A seal: `frozen`'s live records now live in `segments`; the WAL through `lsn` is
    /// covered by them.
    Seal {
        frozen: &'a Arc<Memtable>,
        lsn: u64,
        segments: Vec<Arc<Segment>>,
    },
    /// A merge: `inputs` are replaced by `output` (none when every record was deleted).
    Merge {
        inputs: &'a [Arc<Segment>],
        output: Option<Arc<Segment>>,
    },
    /// A reset: no segment, no memtable, no embedder pin; the WAL through `lsn` is covered.
    Reset { lsn: u64 },
}

impl Vault {
    /// Stores the manifest for `change` and applies it to the searched state, atomically with
    /// respect to every other change. Returns the segments that left the list (their
    /// directories are the caller's to remove, after this returns).
    pub(super) fn install(&self, change: Change<'_>) -> Result<Removed<'_>> {
        let inner = &*self.inner;
        let mut manifest = inner.manifest.lock();
        // Only `install` changes `state.segments`, and only with the manifest lock held: the
        // list read here is current until this function returns.
        let state = inner.state.read();
        let current = state.segments.clone();
        let is_in =
            |list: &[Arc<Segment>], s: &Arc<Segment>| list.iter().any(|x| Arc::ptr_eq(x, s));
        let (next, removed): (Vec<Arc<Segment>>, Vec<Arc<Segment>>) = match &change {
            Change::Seal { segments, .. } => (
                current.iter().chain(segments).cloned().collect(),
                Vec::new(),
            ),
            Change::Merge { inputs, output } => {
                let mut next: Vec<Arc<Segment>> = current
                    .iter()
                    .filter(|s| !is_in(inputs, s))
                    .cloned()
                    .collect();
                next.extend(output.iter().cloned());
                (next, inputs.to_vec())
            }
            Change::Reset { .. } => (Vec::new(), current),
        };

        let mut stored = manifest.clone();
        stored.segments = next.iter().map(|s| s.name().to_string()).collect();
        stored.next_segment = inner.next_segment.load(Ordering::SeqCst);
        match &change {
            Change::Seal { lsn, .. } => {
                stored.checkpoint_lsn = *lsn;
                stored.next_id = inner.next_id.load(Ordering::SeqCst);
            }
            Change::Merge { .. } => {}
            Change::Reset { lsn } => {
                stored = Manifest {
                    embedder: None,
                    dim: 0,
                    next_id: inner.next_id.load(Ordering::SeqCst),
                    checkpoint_lsn: *lsn,
                    ..stored
                };
            }
        }
        stored.tombstones = state.tombstones_for(&next);
        drop(state);
        stored.store(&inner.dir)?;
        *manifest = stored;

        let mut state = inner.state.write();
        state.segments = next;
        match change {
            Change::Seal { frozen, .. } => {
                state.frozen.retain(|f| !Arc::ptr_eq(&f.memtable, frozen));
            }
            Change::Merge { .. } => {}
            Change::Reset { .. } => {
                state.memtable = Memtable::new(inner.dim);
                state.frozen.clear();
                state.deleted.clear();
                state.hashes.clear();
                state.last_write_ms = Some(super::now_ms());
            }
        }
        state.prune_deleted();
        Ok(Removed {
            segments: removed,
            dir: &inner.dir,
        })
    }
}
