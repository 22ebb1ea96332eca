//! Vector similarity: SIMD dot products (`simsimd`), the exact top-k scan, and the distance
//! `hnsw_rs` uses while building graphs.
//!
//! Every stored vector is unit length (the embedder contract), so cosine similarity is the dot
//! product and we never pay for the norms.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use hnsw_rs::prelude::Distance;
use simsimd::SpatialSimilarity;

/// Cosine similarity of two unit vectors, in [-1, 1].
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // simsimd returns None only for mismatched lengths; callers always pass vectors of the
    // vault's dimension, and a zero score is the harmless answer if one ever slips through.
    f32::dot(a, b).map_or(0.0, |d| d as f32)
}

/// `hnsw_rs` distance for unit vectors: 1 - dot, in [0, 2], through the same SIMD kernel as
/// search so build and search agree on distances.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitDistance;

impl Distance<f32> for UnitDistance {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// A (score, doc) pair ordered so that a `BinaryHeap` of it is a min-heap on score: the root is
/// the worst of the kept results, ready to be evicted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scored {
    pub score: f32,
    pub doc: u32,
}

impl Eq for Scored {}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: lower score = "greater" so it sits at the heap root. Ties broken by doc so
        // results are deterministic.
        other
            .score
            .total_cmp(&self.score)
            .then_with(|| self.doc.cmp(&other.doc))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Keeps the best `k` scores seen.
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Scored>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    /// Score a candidate must beat to enter (−∞ until full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |s| s.score)
        }
    }

    #[inline]
    pub fn push(&mut self, doc: u32, score: f32) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Scored { score, doc });
        } else if score > self.threshold() {
            self.heap.pop();
            self.heap.push(Scored { score, doc });
        }
    }

    /// Best first.
    pub fn into_sorted(self) -> Vec<(u32, f32)> {
        let mut v: Vec<Scored> = self.heap.into_vec();
        v.sort();
        v.into_iter().map(|s| (s.doc, s.score)).collect()
    }
}

/// Exact top-`k` by dot product over `n` contiguous vectors of `dim` floats, skipping docs
/// `accept` rejects (filters and tombstones are applied during the scan, so `k` accepted
/// results come back whenever that many exist). Best first.
pub fn exact_top_k(
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    accept: &dyn Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    let mut top = TopK::new(k);
    if dim == 0 {
        return Vec::new();
    }
    for (doc, v) in vectors.chunks_exact(dim).enumerate() {
        let doc = doc as u32;
        if accept(doc) {
            top.push(doc, dot(query, v));
        }
    }
    top.into_sorted()
}

/// [`exact_top_k`] restricted to the listed docs (a session's records, say).
pub fn exact_top_k_docs(
    vectors: &[f32],
    dim: usize,
    query: &[f32],
    k: usize,
    docs: &[u32],
    accept: &dyn Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    let mut top = TopK::new(k);
    for &doc in docs {
        let s = doc as usize * dim;
        if let Some(v) = vectors.get(s..s + dim)
            && accept(doc)
        {
            top.push(doc, dot(query, v));
        }
    }
    top.into_sorted()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_scalar() {
        let a: Vec<f32> = (0..384).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..384).map(|i| (i as f32 * 0.11).cos()).collect();
        let scalar: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - scalar).abs() < 1e-3);
    }

    #[test]
    fn exact_top_k_orders_and_filters() {
        let dim = 2;
        let vectors = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8, -1.0, 0.0];
        let q = [1.0, 0.0];
        let all = exact_top_k(&vectors, dim, &q, 3, &|_| true);
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 2, 1]);
        let odd = exact_top_k(&vectors, dim, &q, 3, &|d| d % 2 == 1);
        assert_eq!(odd.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!(exact_top_k(&vectors, dim, &q, 0, &|_| true).is_empty());
    }
}
