//! Sealing: the memtable becomes immutable segments, then the WAL forgets what they hold.
//!
//! A seal freezes the memtable (it stays searchable as a frozen source), writes its live
//! records as graphless segments of at most `memtable_records_max` records (fast, so sealing
//! keeps up with bulk ingest; compaction builds graphs when segments merge), installs them
//! (`layout.rs`) and checkpoints the WAL. A crash anywhere leaves the old or the new layout,
//! never a mix: unlisted segment directories are removed at open, and the WAL still holds
//! every record the manifest's segments do not.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::crash::CrashPoint;
use crate::error::{Error, Result};
use crate::memtable::Memtable;
use crate::segment::{self, GraphBuild, Segment, SegmentInput};
use crate::storage::InDir as _;

use super::Vault;
use super::layout::Change;
use super::state::Frozen;

impl Vault {
    /// Seals the memtable into segments of at most `memtable_records_max` records, none with
    /// a graph, now (synchronously). Returns false when there was nothing to seal.
    pub fn seal(&self) -> Result<bool> {
        self.check_open()?;
        let inner = &*self.inner;
        let _seal = inner.seal_lock.lock();
        // Again under the lock: a vault given up while this seal waited for it is gone.
        self.check_open()?;
        // Freeze: with the gate closed no ingest or delete is between its WAL append and its
        // memtable apply, so `last_lsn` covers exactly what the frozen memtable and the
        // tombstone set hold. A frozen memtable left by a failed seal is retried first.
        let existing = inner
            .state
            .read()
            .frozen
            .first()
            .map(|f| (Arc::clone(&f.memtable), f.lsn));
        let (frozen, lsn) = match existing {
            Some(f) => f,
            None => {
                let _gate = inner.gate.write();
                let mut state = inner.state.write();
                if state.memtable.is_empty() {
                    return Ok(false);
                }
                let memtable = Arc::new(std::mem::replace(
                    &mut state.memtable,
                    Memtable::new(inner.dim),
                ));
                let lsn = inner.wal.last_lsn();
                state.frozen.push(Frozen {
                    memtable: Arc::clone(&memtable),
                    lsn,
                });
                (memtable, lsn)
            }
        };

        // Write the segments from the live records, in id order.
        let mut docs: Vec<u32> = {
            let state = inner.state.read();
            (0..frozen.len() as u32)
                .filter(|&d| !state.deleted.contains(&frozen.memory(d).id))
                .collect()
        };
        docs.sort_by_key(|&d| frozen.memory(d).id);
        let inputs: Vec<SegmentInput<'_>> = docs
            .iter()
            .map(|&d| SegmentInput {
                memory: frozen.memory(d),
                vector: frozen.vector(d),
                context: frozen.context(d),
            })
            .collect();
        // At most `memtable_records_max` records per segment and no graph: a memtable that
        // grew while an earlier seal ran is still sealed quickly, and compaction (tiered)
        // merges these small segments into graph-backed ones.
        let per_segment = inner.options.memtable_records_max.max(1);
        let mut names = Vec::new();
        let installed = (|| {
            let mut paths = Vec::new();
            for chunk in inputs.chunks(per_segment) {
                let name = segment::dir_name(inner.next_segment.fetch_add(1, Ordering::SeqCst));
                names.push(name.clone());
                paths.push(segment::write(
                    &inner.dir,
                    &name,
                    inner.dim,
                    chunk,
                    &inner.options.hnsw,
                    GraphBuild::Never,
                    &|| inner.options.reach(CrashPoint::SealAfterTempDir),
                )?);
            }
            inner.options.reach(CrashPoint::SealAfterRename)?;
            let segments = paths
                .iter()
                .map(|path| {
                    Segment::open(path, inner.dim)
                        .map(Segment::warmed)
                        .map(Arc::new)
                })
                .collect::<Result<Vec<_>>>()?;

            // Swap in, then let the WAL forget what the segments hold.
            self.install(Change::Seal {
                frozen: &frozen,
                lsn,
                segments,
            })
            .map(drop)
        })();
        drop(inputs);
        if let Err(e) = installed {
            self.discard_uninstalled(&names, &e);
            return Err(e);
        }
        inner.options.reach(CrashPoint::SealAfterManifest)?;
        inner.wal.checkpoint(lsn)?;
        Ok(true)
    }

    /// Removes the directories (temp or renamed) of segments a failed seal or merge wrote but
    /// never installed, so a full disk gets that space back now rather than at the next
    /// open: before this, every seal that ran out of space left its `seg-….tmp` behind, and
    /// freeing space gave it to them instead of to the writes. Safe because `install` failed
    /// before the manifest named them (a manifest stored but not synced poisons the vault,
    /// whose storage then refuses every removal). Best effort (the next open removes what is
    /// left); skipped after an injected crash, which must leave the disk as a crash would.
    pub(super) fn discard_uninstalled(&self, names: &[String], error: &Error) {
        if matches!(error, Error::InjectedCrash { .. }) || names.is_empty() {
            return;
        }
        let dir = &self.inner.dir;
        let storage = dir.storage();
        let mut removed = 0;
        for name in names {
            for path in [dir.join(format!("{name}.tmp")), dir.join(name)] {
                match storage.remove_dir_all(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(
                        vault = %self.inner.name,
                        dir = %path.display(),
                        error = %e,
                        "could not remove a segment a failed seal or merge left; the next open will"
                    ),
                }
            }
        }
        if removed > 0 {
            let _ = crate::file::sync_dir(storage, dir);
            tracing::warn!(
                vault = %self.inner.name,
                removed,
                %error,
                "removed the segments of a seal or merge that failed"
            );
        }
    }

    /// Queues a seal (and then any compaction it enables) on the background threads, once.
    pub(crate) fn schedule_seal(&self) {
        let inner = &self.inner;
        if inner.seal_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.jobs.fetch_add(1, Ordering::AcqRel);
        let vault = Vault {
            inner: Arc::clone(inner),
        };
        crate::background::spawn(move || {
            vault.inner.seal_scheduled.store(false, Ordering::Release);
            let result = vault.seal().and_then(|_| vault.compact_while_planned());
            if let Err(e) = result {
                tracing::error!(vault = %vault.inner.name, error = %e, "background seal/compaction failed");
            }
            vault.inner.jobs.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
