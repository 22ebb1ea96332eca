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
use crate::record::CONTEXT_BYTES_MAX;
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
        // The lexical files come from the memtable's postings (no second analysis of every
        // text), unless a record carries a context longer than a segment stores (only a
        // hand-made WAL can): the segment then indexes what it stores, as compaction will.
        let from_postings = docs
            .iter()
            .all(|&d| frozen.context(d).len() <= CONTEXT_BYTES_MAX);
        let order = if from_postings {
            frozen.lexical().sorted_terms()
        } else {
            Vec::new()
        };
        let mut names = Vec::new();
        let installed = (|| {
            let mut paths = Vec::new();
            for (chunk, chunk_docs) in inputs.chunks(per_segment).zip(docs.chunks(per_segment)) {
                let name = segment::dir_name(inner.next_segment.fetch_add(1, Ordering::SeqCst));
                names.push(name.clone());
                let after = || inner.options.reach(CrashPoint::SealAfterTempDir);
                paths.push(if from_postings {
                    let lexical = frozen.lexical().segment_file(&order, chunk_docs);
                    segment::write_sealed(&inner.dir, &name, inner.dim, chunk, lexical, &after)?
                } else {
                    segment::write(
                        &inner.dir,
                        &name,
                        inner.dim,
                        chunk,
                        &inner.options.hnsw,
                        GraphBuild::Never,
                        &after,
                    )?
                });
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

    /// At open: a memtable replayed from the WAL past its seal threshold (or a frozen one a
    /// failed seal left) is queued for sealing, and then the compaction it enables, instead
    /// of waiting for the vault's next write: a 100k import restarted before it settled kept
    /// 6,906 memtable records and 11 segments for as long as nobody wrote to it (issue 15,
    /// found by `load.sh`'s restart phase). Segments alone waiting for a merge still wait
    /// for the next seal.
    pub(crate) fn schedule_work_left_at_open(&self) {
        let inner = &self.inner;
        let seal_due = {
            let state = inner.state.read();
            let bytes_max = inner
                .options
                .memtable_bytes_max
                .min(crate::limits::MEMTABLE_BYTES_MAX_CEILING) as u64;
            !state.frozen.is_empty()
                || state.memtable.len() >= inner.options.memtable_records_max
                || state.unsealed_bytes() >= bytes_max
        };
        if seal_due {
            self.schedule_seal();
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

#[cfg(test)]
mod tests {
    use crate::lexical::LexicalBuilder;
    use crate::record::{NewMemory, Role, context_of, indexed_text};
    use crate::vault::Vault;
    use crate::vault::testing::options;

    /// A vault reopened with a memtable past its seal threshold (a restart in the middle of
    /// an import) seals it in the background at open, without waiting for a write.
    #[test]
    fn a_reopened_vault_seals_a_due_memtable_without_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options();
        o.memtable_records_max = 1 << 20;
        let vault = Vault::open(dir.path(), o).unwrap();
        let batch: Vec<NewMemory> = (0..40)
            .map(|i| NewMemory::new("s", Role::User, format!("turn {i} about sunsets"), i))
            .collect();
        assert_eq!(vault.ingest(batch).unwrap().stored.len(), 40);
        drop(vault);

        let mut o = options();
        o.background = true;
        o.memtable_records_max = 16;
        let vault = Vault::open(dir.path(), o).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while (vault.is_busy() || vault.inner.state.read().segments.is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let state = vault.inner.state.read();
        assert!(
            state.memtable.is_empty() && !state.segments.is_empty(),
            "reopened without a write: {} memtable records, {} segments",
            state.memtable.len(),
            state.segments.len()
        );
    }

    /// A seal writes each segment's `lexical.bin` from the frozen memtable's postings. The
    /// file must be byte for byte what analysing the segment's records writes (the path
    /// compaction takes): over several segments per seal, deleted records, chunked messages
    /// (contexts held once) and sessions interleaved.
    #[test]
    fn a_seal_writes_the_lexical_file_analysing_the_records_would() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = options();
        o.memtable_records_max = 7;
        let vault = Vault::open(dir.path(), o).unwrap();
        let long = "Caroline adopted a dog named Bailey after the support group met, ".repeat(45);
        let batch: Vec<NewMemory> = (0..30)
            .map(|i| {
                let text = match i % 9 {
                    4 => format!("{i} {long}"),
                    _ => format!("turn {i}: painted {} sunsets in Cañon city", i % 5),
                };
                NewMemory::new(format!("s{}", i % 3), Role::User, text, i)
            })
            .collect();
        let stored = vault.ingest(batch).unwrap().stored;
        assert!(
            stored.len() > 36,
            "long messages are chunked: {}",
            stored.len()
        );
        for id in stored.iter().step_by(5) {
            assert!(vault.delete(*id).unwrap());
        }
        assert!(vault.seal().unwrap());
        let state = vault.inner.state.read();
        assert!(
            state.segments.len() >= 5,
            "{} segments",
            state.segments.len()
        );
        for seg in &state.segments {
            let mut builder = LexicalBuilder::new();
            for doc in 0..seg.len() {
                let indexed = indexed_text(context_of(seg.context(doc)), seg.text(doc));
                builder.add(doc, &indexed);
            }
            let written = std::fs::read(seg.dir().join("lexical.bin")).unwrap();
            assert_eq!(written, builder.finish(), "segment {}", seg.name());
        }
    }
}
