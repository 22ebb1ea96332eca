//! Sealing and compaction: turning the memtable into segments, and merging segments while
//! dropping deleted records. Both write a new segment directory first and then swap it in
//! through the manifest, so a crash at any point leaves the old or the new set of segments,
//! never a mix; both run on the rayon pool, off the request path, when the vault runs in
//! background mode.
//!
//! Policy (tiered): segments fall into size tiers of factor [`COMPACTION_FANIN`]; when a tier
//! holds `COMPACTION_FANIN` segments they merge into one of the next tier, so a record is
//! rewritten O(log n) times. A segment whose deleted share reaches
//! [`COMPACTION_DELETED_SHARE_MIN`] is rewritten alone to give the space back. Graphless
//! segments (seals write no graph) that together hold enough live records for a graph are
//! merged into one that gets it, even when no tier is full: each graphless segment costs
//! every search a scan of all its records, so a settled vault must not keep a residue of
//! them below a half-full tier.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::record::{Memory, MemoryId};
use crate::segment::{self, GraphBuild, Segment, SegmentInput};
use crate::vault::{CrashPoint, Inner, Vault, remove_segment_dirs};

/// Segments per tier that trigger a merge (and the size ratio between tiers).
pub const COMPACTION_FANIN: usize = 4;
/// Deleted share of a segment's records that triggers rewriting it.
pub const COMPACTION_DELETED_SHARE_MIN: f64 = 0.3;

fn crash(inner: &Inner, point: CrashPoint) -> Result<()> {
    if inner.options.crash_at == Some(point) {
        return Err(Error::InjectedCrash { point });
    }
    Ok(())
}

fn segment_name(seq: u64) -> String {
    format!("seg-{seq:016x}")
}

/// Chooses segments to merge: indices into `segments`, or `None` when nothing is worth it.
/// `graph_min_records` is the size from which a merged segment gets an HNSW graph.
pub(crate) fn plan(
    segments: &[Arc<Segment>],
    deleted: &HashSet<MemoryId>,
    graph_min_records: usize,
) -> Option<Vec<usize>> {
    let live = |s: &Segment| {
        let dead = deleted.iter().filter(|&&id| s.doc_of(id).is_some()).count();
        (s.len() as usize - dead, dead)
    };
    let mut tiers: Vec<Vec<usize>> = Vec::new();
    let mut graphless: Vec<usize> = Vec::new();
    let mut graphless_alive = 0usize;
    for (i, s) in segments.iter().enumerate() {
        let (alive, dead) = live(s);
        if !s.has_graph() {
            graphless.push(i);
            graphless_alive += alive;
        }
        if dead > 0 && dead as f64 >= COMPACTION_DELETED_SHARE_MIN * s.len() as f64 {
            return Some(vec![i]);
        }
        let mut tier = 0;
        let mut size = alive.max(1);
        while size >= COMPACTION_FANIN {
            size /= COMPACTION_FANIN;
            tier += 1;
        }
        if tiers.len() <= tier {
            tiers.resize(tier + 1, Vec::new());
        }
        tiers[tier].push(i);
    }
    tiers
        .into_iter()
        .find(|t| t.len() >= COMPACTION_FANIN)
        .or_else(|| {
            (graphless.len() >= 2 && graphless_alive >= graph_min_records.max(1))
                .then_some(graphless)
        })
}

impl Vault {
    /// Seals the memtable into segments of at most `memtable_records_max` records, none with
    /// a graph, now (synchronously). Returns false when there was nothing to seal.
    pub fn seal(&self) -> Result<bool> {
        self.check_open()?;
        let inner = &*self.inner;
        let _seal = inner.seal_lock.lock();
        // Freeze: with the gate closed no ingest or delete is between its WAL append and its
        // memtable apply, so `last_lsn` covers exactly what the frozen memtable and the
        // tombstone set hold. A frozen memtable left by a failed seal is retried first.
        let existing = inner.state.read().frozen.first().cloned();
        let (frozen, lsn) = match existing {
            Some(f) => f,
            None => {
                let _gate = inner.gate.write();
                let mut state = inner.state.write();
                if state.memtable.is_empty() {
                    return Ok(false);
                }
                let mt = Arc::new(std::mem::replace(
                    &mut state.memtable,
                    crate::memtable::Memtable::new(inner.dim),
                ));
                let lsn = inner.wal.last_lsn();
                state.frozen.push((Arc::clone(&mt), lsn));
                (mt, lsn)
            }
        };

        // Write the segment from the live records, in id order.
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
        let crash_at = inner
            .options
            .crash_at
            .filter(|p| *p == CrashPoint::SealAfterTempDir);
        let mut new_segments = Vec::new();
        for chunk in inputs.chunks(per_segment) {
            let name = segment_name(inner.next_segment.fetch_add(1, Ordering::SeqCst));
            let path = segment::write(
                &inner.dir,
                &name,
                inner.dim,
                chunk,
                &inner.options.hnsw,
                GraphBuild::Never,
                crash_at,
            )?;
            new_segments.push(path);
        }
        crash(inner, CrashPoint::SealAfterRename)?;
        let new_segments = new_segments
            .iter()
            .map(|path| {
                Segment::open(path, inner.dim)
                    .map(Segment::warmed)
                    .map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        drop(inputs);

        // Swap in through the manifest, then let the WAL forget what the segment holds.
        {
            let mut manifest = inner.manifest.lock();
            let mut next = manifest.clone();
            let state = inner.state.read();
            let mut segments = state.segments.clone();
            for s in &new_segments {
                segments.push(Arc::clone(s));
                next.segments.push(s.name().to_string());
            }
            next.checkpoint_lsn = lsn;
            next.next_id = inner.next_id.load(Ordering::SeqCst);
            next.next_segment = inner.next_segment.load(Ordering::SeqCst);
            next.tombstones = state.tombstones_for(&segments);
            drop(state);
            next.store(&inner.dir)?;
            *manifest = next;
        }
        crash(inner, CrashPoint::SealAfterManifest)?;
        inner.wal.checkpoint(lsn)?;
        let mut state = inner.state.write();
        state.frozen.retain(|(m, _)| !Arc::ptr_eq(m, &frozen));
        state.segments.extend(new_segments);
        state.prune_deleted();
        Ok(true)
    }

    /// Runs one compaction step now (synchronously) if the policy finds one; returns whether
    /// it merged anything.
    pub fn compact(&self) -> Result<bool> {
        self.check_open()?;
        let inner = &*self.inner;
        let _compact = inner.compact_lock.lock();
        let (chosen, deleted): (Vec<Arc<Segment>>, HashSet<MemoryId>) = {
            let state = inner.state.read();
            match plan(
                &state.segments,
                &state.deleted,
                inner.options.hnsw.min_records,
            ) {
                Some(idx) => (
                    idx.iter()
                        .map(|&i| Arc::clone(&state.segments[i]))
                        .collect(),
                    state.deleted.clone(),
                ),
                None => return Ok(false),
            }
        };
        self.merge(&chosen, &deleted)?;
        Ok(true)
    }

    /// Merges every segment into one, whatever the policy says (tests and benches).
    pub fn compact_all(&self) -> Result<bool> {
        self.check_open()?;
        let inner = &*self.inner;
        let _compact = inner.compact_lock.lock();
        let (chosen, deleted) = {
            let state = inner.state.read();
            (state.segments.clone(), state.deleted.clone())
        };
        // A lone graphless segment is left alone unless it is big enough for a graph (seals
        // never build one).
        let settled =
            |s: &Segment| !s.has_graph() && (s.len() as usize) < inner.options.hnsw.min_records;
        if chosen.is_empty() || (chosen.len() == 1 && settled(&chosen[0]) && deleted.is_empty()) {
            return Ok(false);
        }
        self.merge(&chosen, &deleted)?;
        Ok(true)
    }

    fn merge(&self, chosen: &[Arc<Segment>], deleted: &HashSet<MemoryId>) -> Result<()> {
        let inner = &*self.inner;
        // Live records of the chosen segments, in id order. Ids never repeat across segments
        // the engine wrote, but a damaged (resealed) records.bin can repeat one (found by the
        // `vault_files` fuzz target); a segment must hold each id once or its own open refuses
        // it, so the first copy — the one reads already resolve to (`State::locate`) — is kept.
        let memories: Vec<(Memory, &[f32], &str)> = {
            let mut v: Vec<(Memory, &[f32], &str)> = chosen
                .iter()
                .flat_map(|s| (0..s.len()).map(move |d| (s, d)))
                .filter(|(s, d)| !deleted.contains(&s.id(*d)))
                .map(|(s, d)| (s.memory(d), s.vector(d), s.context(d)))
                .collect();
            v.sort_by_key(|(m, _, _)| m.id);
            v.dedup_by_key(|(m, _, _)| m.id);
            v
        };
        let inputs: Vec<SegmentInput<'_>> = memories
            .iter()
            .map(|(m, v, c)| SegmentInput {
                memory: m,
                vector: v,
                context: c,
            })
            .collect();
        let output = if inputs.is_empty() {
            None
        } else {
            let name = segment_name(inner.next_segment.fetch_add(1, Ordering::SeqCst));
            let crash_at = inner
                .options
                .crash_at
                .filter(|p| *p == CrashPoint::CompactAfterTempDir);
            let path = segment::write(
                &inner.dir,
                &name,
                inner.dim,
                &inputs,
                &inner.options.hnsw,
                GraphBuild::WhenLarge,
                crash_at,
            )?;
            crash(inner, CrashPoint::CompactAfterRename)?;
            Some(Arc::new(Segment::open(&path, inner.dim)?.warmed()))
        };
        drop(inputs);
        drop(memories);
        let is_chosen = |s: &Arc<Segment>| chosen.iter().any(|c| Arc::ptr_eq(c, s));
        {
            let mut manifest = inner.manifest.lock();
            let state = inner.state.read();
            let mut segments: Vec<Arc<Segment>> = state
                .segments
                .iter()
                .filter(|s| !is_chosen(s))
                .cloned()
                .collect();
            segments.extend(output.iter().cloned());
            let mut next = manifest.clone();
            next.segments = segments.iter().map(|s| s.name().to_string()).collect();
            next.next_segment = inner.next_segment.load(Ordering::SeqCst);
            next.tombstones = state.tombstones_for(&segments);
            drop(state);
            next.store(&inner.dir)?;
            *manifest = next;
        }
        crash(inner, CrashPoint::CompactAfterManifest)?;
        {
            let mut state = inner.state.write();
            state.segments.retain(|s| !is_chosen(s));
            state.segments.extend(output);
            state.prune_deleted();
        }
        remove_segment_dirs(chosen)
    }

    /// Queues a seal (and then any compaction it enables) on the rayon pool, once.
    pub(crate) fn schedule_seal(&self) {
        let inner = &self.inner;
        if inner.seal_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.jobs.fetch_add(1, Ordering::AcqRel);
        let vault = Vault {
            inner: Arc::clone(inner),
        };
        rayon::spawn(move || {
            vault.inner.seal_scheduled.store(false, Ordering::Release);
            let result = vault.seal().and_then(|_| while_compacting(&vault));
            if let Err(e) = result {
                tracing::error!(vault = %vault.inner.name, error = %e, "background seal/compaction failed");
            }
            vault.inner.jobs.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Runs compaction steps until the policy is satisfied (bounded: each step removes at least
/// one segment or one segment's worth of tombstones).
fn while_compacting(vault: &Vault) -> Result<()> {
    const STEPS_MAX: usize = 16;
    for _ in 0..STEPS_MAX {
        if !vault.compact()? {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedder::{BuiltinEmbedder, Embedder};
    use crate::hnsw::HnswParams;
    use crate::manifest::Manifest;
    use crate::record::Role;
    use crate::vault::VaultOptions;

    /// Regression (fuzz target `vault_files`): a resealed records.bin repeating an id of
    /// another segment made compaction write that id twice (a debug assertion; without it, a
    /// segment its own open refuses, so every later compaction failed).
    #[test]
    fn an_id_repeated_across_segments_is_merged_once() {
        let dir = tempfile::tempdir().unwrap();
        let embedder = Arc::new(BuiltinEmbedder::new());
        let dim = embedder.dim();
        let memory = |id, text: &str| Memory {
            id,
            session_id: "s".into(),
            role: Role::User,
            text: text.into(),
            created_at_ms: 1,
            model: None,
            metadata: None,
            content_hash: id,
            chunk: 0,
        };
        let (one, two, again) = (memory(1, "one"), memory(2, "two"), memory(2, "again"));
        let vector = embedder.embed("x");
        let input = |m| SegmentInput {
            memory: m,
            vector: &vector,
            context: "",
        };
        let names = ["seg-0000000000000001", "seg-0000000000000002"];
        for (name, inputs) in names
            .iter()
            .zip([vec![input(&one), input(&two)], vec![input(&again)]])
        {
            let params = HnswParams::default();
            segment::write(
                dir.path(),
                name,
                dim,
                &inputs,
                &params,
                GraphBuild::Never,
                None,
            )
            .unwrap();
        }
        Manifest {
            embedder: Some(embedder.id().into()),
            dim: dim as u32,
            next_id: 3,
            next_segment: 3,
            checkpoint_lsn: 0,
            segments: names.iter().map(|n| n.to_string()).collect(),
            tombstones: Vec::new(),
        }
        .store(dir.path())
        .unwrap();
        let mut options = VaultOptions::new(embedder);
        options.background = false;
        let vault = Vault::open(dir.path(), options).unwrap();
        assert!(vault.compact_all().unwrap());
        let texts: Vec<String> = vault
            .list(None, 10, None)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["two", "one"]);
    }
}
