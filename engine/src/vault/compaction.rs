//! Compaction: merging segments while dropping deleted records. A merge writes its new
//! segment directory first and then swaps it in (`layout.rs`), so a crash at any point
//! leaves the old or the new set of segments, never a mix; it runs on the background threads
//! (`background.rs`, low CPU priority), off the request path, after a background seal.
//!
//! Policy (see [`plan`]): graphless segments (seals write no graph) are absorbed into the
//! largest graph-backed segment once they hold enough live records, and the merge extends
//! that segment's graph instead of rebuilding it, so each record is inserted into a graph
//! about once; graph-backed segments past [`ABSORB_BASE_RECORDS_MAX`] merge in size tiers
//! of factor [`COMPACTION_FANIN`], and so do graphless ones (a vault below a graph's size).
//! A segment whose deleted share reaches
//! [`COMPACTION_DELETED_SHARE_MIN`] is rewritten alone to give the space back (its graph
//! rebuilt: a graph is only extended from an input that keeps every record).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::crash::CrashPoint;
use crate::error::Result;
use crate::record::{Memory, MemoryId};
use crate::segment::{self, GraphBuild, Segment, SegmentInput};

use super::Vault;
use super::layout::Change;

/// Segments per tier that trigger a merge of graph-backed segments (and the size ratio
/// between tiers).
pub const COMPACTION_FANIN: usize = 4;
/// Deleted share of a segment's records that triggers rewriting it.
pub const COMPACTION_DELETED_SHARE_MIN: f64 = 0.3;
/// A graph-backed segment up to this size absorbs the graphless ones (seals): past it, the
/// rewrite of its other files on every absorb costs more than the graph inserts it saves,
/// and a new graph-backed segment starts.
pub const ABSORB_BASE_RECORDS_MAX: usize = 1 << 18;
/// Graphless records wait until they are at least the absorbing segment's size over this
/// (and at least `HnswParams::min_records`): each absorb rewrites the absorbing segment's
/// vectors, records and lexical index, so absorbs must not come more often than the
/// segment grows by a fixed share; and graphless records cost every search a scan, so not
/// much rarer.
pub const ABSORB_GROWTH_DIVISOR: usize = 8;
const _: () = assert!(ABSORB_BASE_RECORDS_MAX / ABSORB_GROWTH_DIVISOR >= 4096);

/// Chooses segments to merge: indices into `segments`, or `None` when nothing is worth it.
/// `graph_min_records` is the size from which a merged segment gets an HNSW graph.
///
/// Graphless segments (seals) are merged into the largest graph-backed segment of at most
/// [`ABSORB_BASE_RECORDS_MAX`] records, whose graph the merge extends (`hnsw::extend`):
/// each record is inserted into a graph once, where size tiers of rebuilt graphs inserted
/// it once per tier (two or three times in a 100k vault; graph builds were ~85 % of the CPU
/// of settling). Graph-backed segments past that size merge in tiers of
/// [`COMPACTION_FANIN`], again extending the largest one's graph.
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
    // The absorbing segment: (index, records).
    let mut base: Option<(usize, usize)> = None;
    for (i, s) in segments.iter().enumerate() {
        let (alive, dead) = live(s);
        if dead > 0 && dead as f64 >= COMPACTION_DELETED_SHARE_MIN * s.len() as f64 {
            return Some(vec![i]);
        }
        if !s.has_graph() {
            graphless.push(i);
            graphless_alive += alive;
        } else if dead == 0
            && alive <= ABSORB_BASE_RECORDS_MAX
            && base.is_none_or(|(_, n)| alive > n)
        {
            base = Some((i, alive));
        }
        let mut tier = 0;
        let mut size = alive.max(1);
        while size >= COMPACTION_FANIN {
            size /= COMPACTION_FANIN;
            tier += 1;
        }
        // Graph-backed and graphless segments tier apart: a tier merge of graphless ones is
        // cheap (small segments of a vault below a graph's size), of graph-backed ones not.
        let tier = 2 * tier + usize::from(s.has_graph());
        if tiers.len() <= tier {
            tiers.resize(tier + 1, Vec::new());
        }
        tiers[tier].push(i);
    }
    let wanted = graph_min_records
        .max(1)
        .max(base.map_or(0, |(_, n)| n / ABSORB_GROWTH_DIVISOR));
    if !graphless.is_empty() && graphless_alive >= wanted {
        if let Some((b, _)) = base {
            graphless.push(b);
            graphless.sort_unstable();
            return Some(graphless);
        }
        if graphless.len() >= 2 {
            return Some(graphless);
        }
    }
    // Graph-backed tiers first (odd indices), then graphless ones, but only into a segment
    // below a graph's size: a graph built there would be rebuilt at the absorb.
    let full = |t: &&Vec<usize>| t.len() >= COMPACTION_FANIN;
    let graph_tier = tiers.iter().skip(1).step_by(2).find(full).cloned();
    graph_tier.or_else(|| {
        tiers
            .iter()
            .step_by(2)
            .filter(full)
            .find(|t| {
                t.iter().map(|&i| segments[i].len() as usize).sum::<usize>() < graph_min_records
            })
            .cloned()
    })
}

impl Vault {
    /// Runs one compaction step now (synchronously) if the policy finds one; returns whether
    /// it merged anything.
    pub fn compact(&self) -> Result<bool> {
        self.check_open()?;
        let inner = &*self.inner;
        let _compact = inner.compact_lock.lock();
        // Again under the lock: a vault given up while this merge waited for it is gone.
        self.check_open()?;
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

    /// Runs compaction steps until the policy is satisfied (bounded: each step removes at
    /// least one segment or one segment's worth of tombstones).
    pub(super) fn compact_while_planned(&self) -> Result<()> {
        const STEPS_MAX: usize = 16;
        for _ in 0..STEPS_MAX {
            if !self.compact()? {
                break;
            }
        }
        Ok(())
    }

    /// Writes the live records of `chosen` (those not in `deleted`) as one segment and
    /// installs it in their place. The caller holds `compact_lock`.
    fn merge(&self, chosen: &[Arc<Segment>], deleted: &HashSet<MemoryId>) -> Result<()> {
        let inner = &*self.inner;
        // Live records of the chosen segments, in id order. Ids never repeat across segments
        // the engine wrote, but a damaged (resealed) records.bin can repeat one (found by the
        // `vault_files` fuzz target); a segment must hold each id once or its own open refuses
        // it, so the first copy — the one reads already resolve to (`State::locate`) — is kept.
        // Each with where it comes from (input, doc), to carry a graph over.
        type Live<'s> = (Memory, &'s [f32], &'s str, usize, u32);
        let memories: Vec<Live<'_>> = {
            let mut v: Vec<Live<'_>> = chosen
                .iter()
                .enumerate()
                .flat_map(|(i, s)| (0..s.len()).map(move |d| (i, s, d)))
                .filter(|(_, s, d)| !deleted.contains(&s.id(*d)))
                .map(|(i, s, d)| (s.memory(d), s.vector(d), s.context(d), i, d))
                .collect();
            v.sort_by_key(|l| l.0.id);
            v.dedup_by_key(|l| l.0.id);
            v
        };
        // The largest input with a graph, if every one of its records survives: the new
        // graph starts from it and only the other inputs' records are inserted, instead of
        // rebuilding a graph over records that already had one (each record's graph entry
        // is then built about once, not once per merge it goes through).
        let base = chosen
            .iter()
            .enumerate()
            .filter(|(_, s)| s.has_graph())
            .max_by_key(|(_, s)| s.len())
            .and_then(|(b, s)| {
                let mut docs = vec![u32::MAX; s.len() as usize];
                for (new, l) in memories.iter().enumerate() {
                    if l.3 == b {
                        docs[l.4 as usize] = new as u32;
                    }
                }
                (!docs.contains(&u32::MAX)).then_some((s, docs))
            });
        let graph = match &base {
            Some((base, docs)) => GraphBuild::Extend { base, docs },
            None => GraphBuild::WhenLarge,
        };
        // An input whose page read failed read zeros (`mmap.rs`): merging them would make
        // the garbage durable and delete the only copy of the records.
        for s in chosen {
            s.check()?;
        }
        let inputs: Vec<SegmentInput<'_>> = memories
            .iter()
            .map(|(m, v, c, _, _)| SegmentInput {
                memory: m,
                vector: v,
                context: c,
            })
            .collect();
        let mut names = Vec::new();
        let installed = (|| {
            let output = if inputs.is_empty() {
                None
            } else {
                let name = segment::dir_name(inner.next_segment.fetch_add(1, Ordering::SeqCst));
                names.push(name.clone());
                let path = segment::write(
                    &inner.dir,
                    &name,
                    inner.dim,
                    &inputs,
                    &inner.options.hnsw,
                    graph,
                    &|| inner.options.reach(CrashPoint::CompactAfterTempDir),
                )?;
                inner.options.reach(CrashPoint::CompactAfterRename)?;
                Some(Arc::new(Segment::open(&path, inner.dim)?.warmed()))
            };
            self.install(Change::Merge {
                inputs: chosen,
                output,
            })
        })();
        drop(inputs);
        drop(memories);
        let removed = match installed {
            Ok(removed) => removed,
            Err(e) => {
                self.discard_uninstalled(&names, &e);
                return Err(e);
            }
        };
        inner.options.reach(CrashPoint::CompactAfterManifest)?;
        segment::remove_dirs(&removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedder::{BuiltinEmbedder, Embedder};
    use crate::hnsw::HnswParams;
    use crate::manifest::Manifest;
    use crate::record::Role;
    use crate::vault::VaultOptions;

    /// Seals are absorbed into the graph-backed segment (its graph extended), not merged into
    /// a second graph-backed one: after two rounds of import the vault holds one segment,
    /// with a graph, holding every record.
    #[test]
    fn seals_are_absorbed_into_the_graph_backed_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = VaultOptions::new(Arc::new(BuiltinEmbedder::new()));
        options.background = false;
        options.memtable_records_max = 50;
        options.hnsw.min_records = 100;
        let vault = Vault::open(dir.path(), options).unwrap();
        let mut next = 0;
        for _round in 0..2 {
            for _ in 0..2 {
                let batch = (next..next + 50)
                    .map(|i| {
                        crate::NewMemory::new("s", Role::User, format!("memory number {i}"), i)
                    })
                    .collect();
                next += 50;
                vault.ingest(batch).unwrap();
                vault.seal().unwrap();
            }
            vault.compact_while_planned().unwrap();
            let state = vault.inner.state.read();
            assert_eq!(state.segments.len(), 1, "after {next} records");
            assert!(state.segments[0].has_graph());
            assert_eq!(state.segments[0].len() as i64, next);
        }
    }

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
        let vector = embedder.vector("x");
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
                &|| Ok(()),
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
