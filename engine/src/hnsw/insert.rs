//! Our own HNSW insertion (Malkov & Yashunin's algorithm with hnswlib's neighbour
//! heuristic), working on the flat vectors of the segment being written.
//!
//! Why not only `hnsw_rs`: it cannot start from a graph we already have. A compaction merge
//! used to rebuild the whole graph of its output, so across seal → merge → merge each record
//! was inserted into a graph two or three times, and graph builds were ~85 % of the CPU a
//! vault spends settling after an import (issue 15, `perf` of the settle bench). With this
//! builder a merge starts from the largest input's graph (its docs renumbered) and inserts
//! only the other inputs' records: each record's graph entry is built about once.
//!
//! Single-threaded on purpose: it runs on one low-priority background thread, so a build
//! never takes both cores from the searches.
//!
//! Distances come from a [`Space`]: the int8 codes of the vectors ([`Int8Space`], what every
//! build uses) or the f32 vectors themselves ([`F32Space`], kept for the `graph_build`
//! bench's recall comparison). The build is bound by memory reads, not arithmetic: at 100k ×
//! 384 the f32 vectors (150 MB) miss every cache, and each insert scores a few thousand of
//! them at random; the codes are a quarter of the bytes (the search walk reads the same
//! codes). Int8 rounding moves a cosine by ~1e-3, far below the gaps the neighbour
//! heuristic compares (recall figures in `docs/benchmarks.md`).
//!
//! The inner loop follows hnswlib's: layer-0 lists in one flat array (a row per doc, as in
//! `graph.bin`), the vectors of the next few neighbours prefetched while one is scored, the
//! next candidate's row prefetched while its predecessor's neighbours are scored, a visited
//! bitset and heaps reused across inserts (no allocation per insert on layer 0).

use std::collections::BinaryHeap;

use super::{Far, HnswParams, LAYERS_MAX, Near, Visited};
use crate::distance::{Quantized, dot};
use crate::mmap::prefetch;

/// While a beam scores one neighbour it prefetches the vector of the one this many places
/// later (the search walk's `FETCH_AHEAD`, same reasoning).
const FETCH_AHEAD: usize = 4;
/// `level` of a doc not inserted yet.
const ABSENT: u8 = u8::MAX;
const _: () = assert!(LAYERS_MAX < ABSENT as usize);

/// Where a build gets its distances between docs.
pub(super) trait Space {
    /// 1 - cosine of docs `a` and `b` (lower is nearer).
    fn dist(&self, a: u32, b: u32) -> f32;
    /// Starts loading what [`Space::dist`] reads for `doc`.
    fn prefetch(&self, doc: u32);
}

/// Distances on the f32 vectors (`n × dim`, unit length).
pub(super) struct F32Space<'a> {
    pub(super) vectors: &'a [f32],
    pub(super) dim: usize,
}

impl F32Space<'_> {
    #[inline]
    fn vector(&self, doc: u32) -> &[f32] {
        let s = doc as usize * self.dim;
        self.vectors.get(s..s + self.dim).unwrap_or(&[])
    }
}

impl Space for F32Space<'_> {
    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        1.0 - dot(self.vector(a), self.vector(b))
    }

    #[inline]
    fn prefetch(&self, doc: u32) {
        prefetch(self.vector(doc));
    }
}

/// Distances on the int8 codes of the vectors (built once per graph build, dropped with it).
pub(super) struct Int8Space(pub(super) Quantized);

impl Space for Int8Space {
    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        1.0 - self.0.score_docs(a, b)
    }

    #[inline]
    fn prefetch(&self, doc: u32) {
        self.0.prefetch(doc);
    }
}

/// An HNSW graph under construction over docs `0..n` of a [`Space`].
pub(super) struct Builder<S> {
    space: S,
    /// Neighbours kept per node on upper levels, and chosen for a new node on every level.
    m: usize,
    /// Neighbours kept per node on layer 0 (reverse links fill it up to this).
    m0: usize,
    /// Beam width of the search that finds a new node's neighbours.
    ef: usize,
    /// Layer 0: per doc a row of `1 + m0` words, its neighbour count then its neighbours
    /// (the row layout of `graph.bin`, so a beam reads one contiguous row per node).
    layer0: Vec<u32>,
    /// Per doc, its neighbour lists on levels 1.. (`upper[d][l - 1]`); empty for the ~15/16
    /// of docs that live on layer 0 only.
    upper: Vec<Vec<Vec<u32>>>,
    /// Per doc, its top level, or [`ABSENT`] until it is inserted.
    level: Vec<u8>,
    /// A node of the top level, where every search starts, and that level.
    entry: Option<(u32, usize)>,
    /// xorshift64 state for the level draw (deterministic: same input, same graph).
    rng: u64,
    /// 1 / ln(m): the level distribution's scale, as in the paper.
    level_scale: f64,
    // Scratch reused by every insert (cleared, never shrunk).
    visited: Visited,
    candidates: BinaryHeap<Near>,
    results: BinaryHeap<Far>,
    /// A beam's result, nearest first.
    found: Vec<(f32, u32)>,
    /// Entry points of the next level's beam.
    eps: Vec<(f32, u32)>,
    /// Unvisited neighbours of the node being expanded.
    batch: Vec<u32>,
    /// Output of the heuristic.
    kept: Vec<(f32, u32)>,
    /// Candidates when a full list is pruned.
    pruned: Vec<(f32, u32)>,
    /// The new node's neighbours on the level being linked.
    chosen: Vec<(f32, u32)>,
}

impl<S: Space> Builder<S> {
    pub(super) fn new(space: S, n: usize, params: &HnswParams) -> Builder<S> {
        let m = params.m.clamp(2, 128);
        let ef = params.ef_construction.max(m);
        Builder {
            space,
            m,
            m0: 2 * m,
            ef,
            layer0: vec![0; n * (1 + 2 * m)],
            upper: vec![Vec::new(); n],
            level: vec![ABSENT; n],
            entry: None,
            rng: 0x9e37_79b9_7f4a_7c15,
            level_scale: 1.0 / (m as f64).ln(),
            visited: Visited { bits: Vec::new() },
            candidates: BinaryHeap::with_capacity(2 * ef),
            results: BinaryHeap::with_capacity(ef + 1),
            found: Vec::with_capacity(ef),
            eps: Vec::with_capacity(ef),
            batch: Vec::with_capacity(2 * m),
            kept: Vec::with_capacity(2 * m),
            pruned: Vec::with_capacity(2 * m + 1),
            chosen: Vec::with_capacity(m),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.level.len()
    }

    /// Starts from an existing graph: `lists[d]` are the per-level neighbour lists of its doc
    /// `d`, which is doc `docs[d]` here; `entry` is its entry doc. Every `docs[d]` must be
    /// distinct and below `n` (the caller builds `docs` from a strictly increasing merge).
    pub(super) fn seed(&mut self, lists: Vec<Vec<Vec<u32>>>, entry: u32, docs: &[u32]) {
        // A link on level l must point at a node that lives on level l (the descent indexes
        // the target's level-l list); `hnsw_rs`'s graphs do not always keep to that, so such
        // links are dropped.
        let levels: Vec<usize> = lists.iter().map(Vec::len).collect();
        let n = self.len();
        for (old, layers) in lists.into_iter().enumerate() {
            let Some(&new) = docs.get(old) else { continue };
            if new as usize >= n || layers.is_empty() {
                continue;
            }
            let mut mapped: Vec<Vec<u32>> = layers
                .into_iter()
                .enumerate()
                .map(|(l, list)| {
                    list.into_iter()
                        .filter(|&d| levels.get(d as usize).is_some_and(|&n| n > l))
                        .filter_map(|d| docs.get(d as usize).copied())
                        .collect()
                })
                .collect();
            mapped.truncate(LAYERS_MAX);
            self.level[new as usize] = (mapped.len() - 1) as u8;
            let row0 = mapped.remove(0);
            self.set_list(new, 0, row0.into_iter());
            self.upper[new as usize] = mapped;
        }
        if let Some(&e) = docs.get(entry as usize)
            && self.contains(e)
        {
            self.entry = Some((e, self.level[e as usize] as usize));
        }
    }

    /// Whether `doc` is in the graph already.
    pub(super) fn contains(&self, doc: u32) -> bool {
        self.level.get(doc as usize).is_some_and(|&l| l != ABSENT)
    }

    /// The graph as each doc's per-level neighbour lists (what `hnsw::encode` writes).
    pub(super) fn into_lists(self) -> Vec<Vec<Vec<u32>>> {
        let width = 1 + self.m0;
        self.upper
            .into_iter()
            .enumerate()
            .map(|(d, upper)| {
                if self.level[d] == ABSENT {
                    return Vec::new();
                }
                let row = &self.layer0[d * width..(d + 1) * width];
                let mut lists = Vec::with_capacity(1 + upper.len());
                lists.push(row[1..1 + row[0] as usize].to_vec());
                lists.extend(upper);
                lists
            })
            .collect()
    }

    /// `doc`'s neighbours on level `l`.
    #[inline]
    fn list(&self, doc: u32, l: usize) -> &[u32] {
        list_of(&self.layer0, &self.upper, self.m0, doc, l)
    }

    /// Replaces `doc`'s list on level `l` (cut to the level's width).
    fn set_list(&mut self, doc: u32, l: usize, list: impl Iterator<Item = u32>) {
        if l == 0 {
            let width = 1 + self.m0;
            let row = &mut self.layer0[doc as usize * width..(doc as usize + 1) * width];
            let mut len = 0;
            for (slot, id) in row[1..].iter_mut().zip(list) {
                *slot = id;
                len += 1;
            }
            row[0] = len;
        } else if let Some(slot) = self.upper[doc as usize].get_mut(l - 1) {
            slot.clear();
            slot.extend(list.take(self.m));
        }
    }

    fn random_level(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Uniform in (0, 1]: never ln(0).
        let u = ((self.rng >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_scale) as usize).min(LAYERS_MAX - 1)
    }

    /// Inserts `doc` (once; a second call, or a doc past the end, is ignored).
    pub(super) fn insert(&mut self, doc: u32) {
        if doc as usize >= self.len() || self.contains(doc) {
            return;
        }
        let level = self.random_level();
        self.level[doc as usize] = level as u8;
        self.upper[doc as usize] = vec![Vec::new(); level];
        let Some((entry, top)) = self.entry else {
            self.entry = Some((doc, level));
            return;
        };
        // Greedy descent through the levels above the new node's.
        let (mut ep, mut d_ep) = (entry, self.space.dist(doc, entry));
        for l in (level + 1..=top).rev() {
            loop {
                let mut moved = false;
                for &nb in self.list(ep, l) {
                    let d = self.space.dist(doc, nb);
                    if d < d_ep {
                        (ep, d_ep, moved) = (nb, d, true);
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        // On each of its levels: find candidates, keep a diverse few, link both ways.
        self.eps.clear();
        self.eps.push((d_ep, ep));
        let mut chosen = std::mem::take(&mut self.chosen);
        for l in (0..=level.min(top)).rev() {
            self.search_layer(doc, l);
            select(&self.space, &self.found, self.m, &mut chosen);
            self.set_list(doc, l, chosen.iter().map(|c| c.1));
            let cap = if l == 0 { self.m0 } else { self.m };
            for &(d, nb) in &chosen {
                self.link(nb, doc, d, l, cap);
            }
            std::mem::swap(&mut self.eps, &mut self.found);
        }
        self.chosen = chosen;
        if level > top {
            self.entry = Some((doc, level));
        }
    }

    /// Leaves in `self.found` the `ef` nearest nodes of level `l` to `doc` found by a beam
    /// search from `self.eps`, nearest first.
    fn search_layer(&mut self, doc: u32, l: usize) {
        let Builder {
            space,
            m0,
            ef,
            layer0,
            upper,
            visited,
            candidates,
            results,
            found,
            eps,
            batch,
            ..
        } = self;
        let eps: &[(f32, u32)] = eps;
        let (m0, ef) = (*m0, *ef);
        let width = 1 + m0;
        visited.reset(upper.len());
        candidates.clear();
        results.clear();
        for &(d, e) in eps {
            if visited.insert(e) {
                candidates.push(Near(d, e));
                results.push(Far(d, e));
                if results.len() > ef {
                    results.pop();
                }
            }
        }
        while let Some(Near(d, c)) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|f| d > f.0) {
                break;
            }
            batch.clear();
            batch.extend(
                list_of(layer0, upper, m0, c, l)
                    .iter()
                    .copied()
                    .filter(|&nb| visited.insert(nb)),
            );
            batch
                .iter()
                .take(FETCH_AHEAD)
                .for_each(|&nb| space.prefetch(nb));
            // The next node to expand is the nearest candidate, or one of this batch that
            // beats it: start loading its row while the batch is scored.
            let mut next = candidates.peek().map_or(f32::INFINITY, |c| {
                if l == 0 {
                    prefetch(
                        layer0
                            .get(c.1 as usize * width..)
                            .unwrap_or(&[])
                            .get(..width)
                            .unwrap_or(&[]),
                    );
                }
                c.0
            });
            for (i, &nb) in batch.iter().enumerate() {
                if let Some(&ahead) = batch.get(i + FETCH_AHEAD) {
                    space.prefetch(ahead);
                }
                let dn = space.dist(doc, nb);
                if results.len() < ef || results.peek().is_some_and(|f| dn < f.0) {
                    candidates.push(Near(dn, nb));
                    results.push(Far(dn, nb));
                    if results.len() > ef {
                        results.pop();
                    }
                    if l == 0 && dn < next {
                        next = dn;
                        prefetch(
                            layer0
                                .get(nb as usize * width..)
                                .unwrap_or(&[])
                                .get(..width)
                                .unwrap_or(&[]),
                        );
                    }
                }
            }
        }
        found.clear();
        found.extend(results.drain().map(|Far(d, n)| (d, n)));
        found.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    }

    /// Adds `doc` (at distance `d`) to `node`'s list on level `l`; a full list is pruned
    /// back to `cap` with the heuristic.
    fn link(&mut self, node: u32, doc: u32, d: f32, l: usize, cap: usize) {
        let list = self.list(node, l);
        if list.contains(&doc) {
            return;
        }
        if list.len() < cap {
            if l == 0 {
                let width = 1 + self.m0;
                let row = &mut self.layer0[node as usize * width..(node as usize + 1) * width];
                let len = row[0] as usize;
                row[1 + len] = doc;
                row[0] += 1;
            } else if let Some(slot) = self.upper[node as usize].get_mut(l - 1) {
                slot.push(doc);
            }
            return;
        }
        let mut pruned = std::mem::take(&mut self.pruned);
        pruned.clear();
        pruned.extend(
            list_of(&self.layer0, &self.upper, self.m0, node, l)
                .iter()
                .map(|&x| (self.space.dist(node, x), x)),
        );
        pruned.push((d, doc));
        pruned.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut kept = std::mem::take(&mut self.kept);
        select(&self.space, &pruned, cap, &mut kept);
        self.set_list(node, l, kept.iter().map(|c| c.1));
        self.kept = kept;
        self.pruned = pruned;
    }
}

/// `doc`'s neighbours on level `l`, from the builder's storage.
#[inline]
fn list_of<'a>(
    layer0: &'a [u32],
    upper: &'a [Vec<Vec<u32>>],
    m0: usize,
    doc: u32,
    l: usize,
) -> &'a [u32] {
    if l == 0 {
        let s = doc as usize * (1 + m0);
        match layer0.get(s) {
            Some(&count) => layer0.get(s + 1..s + 1 + count as usize).unwrap_or(&[]),
            None => &[],
        }
    } else {
        upper
            .get(doc as usize)
            .and_then(|u| u.get(l - 1))
            .map_or(&[], Vec::as_slice)
    }
}

/// hnswlib's heuristic: walking the candidates nearest first, keep one only if it is
/// nearer to the base than to every one kept so far — neighbours in different directions,
/// which keeps the graph navigable between clusters. At most `m`, into `kept`.
fn select<S: Space>(space: &S, sorted: &[(f32, u32)], m: usize, kept: &mut Vec<(f32, u32)>) {
    kept.clear();
    for &(d, c) in sorted {
        if kept.len() >= m {
            break;
        }
        if kept.iter().all(|&(_, k)| space.dist(c, k) >= d) {
            kept.push((d, c));
        }
    }
}
