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

use std::collections::BinaryHeap;

use super::{Far, HnswParams, LAYERS_MAX, Near};
use crate::distance::dot;

/// An HNSW graph under construction over `vectors` (`n × dim`, unit length), docs `0..n`.
pub(super) struct Builder<'a> {
    vectors: &'a [f32],
    dim: usize,
    /// Neighbours kept per node on upper levels, and chosen for a new node on every level.
    m: usize,
    /// Neighbours kept per node on layer 0 (reverse links fill it up to this).
    m0: usize,
    /// Beam width of the search that finds a new node's neighbours.
    ef: usize,
    /// Per doc, its neighbour list on each level it lives on; empty until the doc is inserted.
    pub(super) lists: Vec<Vec<Vec<u32>>>,
    /// A node of the top level, where every search starts, and that level.
    entry: Option<(u32, usize)>,
    /// Visited marks: `visited[d] == epoch` means seen in the current search (no clearing).
    visited: Vec<u32>,
    epoch: u32,
    /// xorshift64 state for the level draw (deterministic: same input, same graph).
    rng: u64,
    /// 1 / ln(m): the level distribution's scale, as in the paper.
    level_scale: f64,
}

impl<'a> Builder<'a> {
    pub(super) fn new(vectors: &'a [f32], dim: usize, params: &HnswParams) -> Builder<'a> {
        let n = vectors.len().checked_div(dim).unwrap_or(0);
        let m = params.m.clamp(2, 128);
        Builder {
            vectors,
            dim,
            m,
            m0: 2 * m,
            ef: params.ef_construction.max(m),
            lists: vec![Vec::new(); n],
            entry: None,
            visited: vec![0; n],
            epoch: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            level_scale: 1.0 / (m as f64).ln(),
        }
    }

    /// Starts from an existing graph: `lists[d]` are the per-level neighbour lists of its doc
    /// `d`, which is doc `docs[d]` here; `entry` is its entry doc. Every `docs[d]` must be
    /// distinct and below `n` (the caller builds `docs` from a strictly increasing merge).
    pub(super) fn seed(&mut self, lists: Vec<Vec<Vec<u32>>>, entry: u32, docs: &[u32]) {
        // A link on level l must point at a node that lives on level l (the descent indexes
        // the target's level-l list); `hnsw_rs`'s graphs do not always keep to that, so such
        // links are dropped.
        let levels: Vec<usize> = lists.iter().map(Vec::len).collect();
        for (old, layers) in lists.into_iter().enumerate() {
            let Some(&new) = docs.get(old) else { continue };
            self.lists[new as usize] = layers
                .into_iter()
                .enumerate()
                .map(|(l, list)| {
                    list.into_iter()
                        .filter(|&d| levels.get(d as usize).is_some_and(|&n| n > l))
                        .filter_map(|d| docs.get(d as usize).copied())
                        .collect()
                })
                .collect();
        }
        if let Some(&e) = docs.get(entry as usize) {
            let top = self.lists[e as usize].len().saturating_sub(1);
            self.entry = Some((e, top));
        }
    }

    /// Whether `doc` is in the graph already.
    pub(super) fn contains(&self, doc: u32) -> bool {
        !self.lists[doc as usize].is_empty()
    }

    #[inline]
    fn vector(&self, doc: u32) -> &[f32] {
        let s = doc as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    #[inline]
    fn dist(&self, a: u32, b: u32) -> f32 {
        1.0 - dot(self.vector(a), self.vector(b))
    }

    fn random_level(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        // Uniform in (0, 1]: never ln(0).
        let u = ((self.rng >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_scale) as usize).min(LAYERS_MAX - 1)
    }

    /// Inserts `doc` (once; a second call is ignored).
    pub(super) fn insert(&mut self, doc: u32) {
        if self.contains(doc) {
            return;
        }
        let level = self.random_level();
        self.lists[doc as usize] = vec![Vec::new(); level + 1];
        let Some((entry, top)) = self.entry else {
            self.entry = Some((doc, level));
            return;
        };
        // Greedy descent through the levels above the new node's.
        let (mut ep, mut d_ep) = (entry, self.dist(doc, entry));
        for l in (level + 1..=top).rev() {
            loop {
                let (cur, mut moved) = (ep, false);
                for i in 0..self.lists[cur as usize][l].len() {
                    let nb = self.lists[cur as usize][l][i];
                    let d = self.dist(doc, nb);
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
        let mut eps = vec![(d_ep, ep)];
        for l in (0..=level.min(top)).rev() {
            let found = self.search_layer(doc, &eps, l);
            let chosen = self.select(&found, self.m);
            self.lists[doc as usize][l] = chosen.iter().map(|c| c.1).collect();
            let cap = if l == 0 { self.m0 } else { self.m };
            for &(d, nb) in &chosen {
                self.link(nb, doc, d, l, cap);
            }
            eps = found;
        }
        if level > top {
            self.entry = Some((doc, level));
        }
    }

    /// The `ef` nearest nodes of level `l` to `doc` found by a beam search from `eps`, nearest
    /// first.
    fn search_layer(&mut self, doc: u32, eps: &[(f32, u32)], l: usize) -> Vec<(f32, u32)> {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.visited.fill(0);
            self.epoch = 1;
        }
        let ef = self.ef;
        let mut candidates: BinaryHeap<Near> = BinaryHeap::with_capacity(ef * 2);
        let mut results: BinaryHeap<Far> = BinaryHeap::with_capacity(ef + 1);
        for &(d, e) in eps {
            if self.visited[e as usize] != self.epoch {
                self.visited[e as usize] = self.epoch;
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
            for i in 0..self.lists[c as usize][l].len() {
                let nb = self.lists[c as usize][l][i];
                if self.visited[nb as usize] == self.epoch {
                    continue;
                }
                self.visited[nb as usize] = self.epoch;
                let dn = self.dist(doc, nb);
                if results.len() < ef || results.peek().is_some_and(|f| dn < f.0) {
                    candidates.push(Near(dn, nb));
                    results.push(Far(dn, nb));
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
        let mut out: Vec<(f32, u32)> = results.into_iter().map(|Far(d, n)| (d, n)).collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        out
    }

    /// hnswlib's heuristic: walking the candidates nearest first, keep one only if it is
    /// nearer to the base than to every one kept so far — neighbours in different
    /// directions, which keeps the graph navigable between clusters. At most `m`.
    fn select(&self, sorted: &[(f32, u32)], m: usize) -> Vec<(f32, u32)> {
        let mut kept: Vec<(f32, u32)> = Vec::with_capacity(m);
        for &(d, c) in sorted {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|&(_, k)| self.dist(c, k) >= d) {
                kept.push((d, c));
            }
        }
        kept
    }

    /// Adds `doc` (at distance `d`) to `node`'s list on level `l`; a full list is pruned
    /// back to `cap` with the same heuristic.
    fn link(&mut self, node: u32, doc: u32, d: f32, l: usize, cap: usize) {
        let list = &mut self.lists[node as usize][l];
        if list.contains(&doc) {
            return;
        }
        if list.len() < cap {
            list.push(doc);
            return;
        }
        let mut cands: Vec<(f32, u32)> = self.lists[node as usize][l]
            .iter()
            .map(|&x| (self.dist(node, x), x))
            .collect();
        cands.push((d, doc));
        cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let kept = self.select(&cands, cap);
        self.lists[node as usize][l] = kept.into_iter().map(|c| c.1).collect();
    }
}
