//! Vector similarity: SIMD dot products (`simsimd`), the exact top-k scan, and the distance
//! `hnsw_rs` uses while building graphs.
//!
//! Every stored vector is unit length (the embedder contract), so cosine similarity is the dot
//! product and we never pay for the norms. (A retrieval model's memory vector is a fixed mix
//! of two unit vectors, norm ≤ 1: its dot product is that mix of two cosines, by design;
//! `embedder::memory_vector`.)

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use hnsw_rs::prelude::Distance;
use simsimd::SpatialSimilarity;

use crate::mmap::prefetch;

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

/// Exact scans of at least this many vectors pre-rank with int8 codes (below it the f32 scan
/// is cheap, and small vaults keep bit-exact scores end to end).
pub(crate) const QUANTIZED_SCAN_MIN: usize = 1024;
/// Candidates rescored in f32 after int8 pre-ranking: `k` plus this many, so a true top-k
/// vector that int8 rounding (error ~1e-3 on a cosine, measured bound < 0.05) ranked a little
/// low is still rescored and kept.
const RESCORE_EXTRA: usize = 32;

/// Int8 codes of a set of unit vectors, one scale per vector (`v ≈ code · scale`): a
/// quarter of the bytes of the f32 originals, so a scan streams 384 B per vector instead of
/// 1.5 KB. Scanning graphless segments was memory-bound: their f32 vectors (up to ~24 MB in
/// a settled 100k vault) do not stay in cache next to the graph walks.
pub struct Quantized {
    dim: usize,
    codes: Codes,
    scales: Vec<f32>,
}

/// Codes of at least this many bytes live in their own anonymous mapping advised to use
/// transparent huge pages. A graph walk reads ~1000 codes at random per search; with 4 KiB
/// pages nearly every one of those also misses the TLB (100k × 384 B is ~9400 pages, more
/// than the TLB holds) and pays a page-table walk on top of the cache miss. Smaller sets
/// stay on the heap: they fit the TLB anyway, and a mapping each would crowd the process's
/// map count with many small vaults open.
const HUGE_PAGE_CODES_MIN_BYTES: usize = 4 << 20;

/// Where the codes live (see [`HUGE_PAGE_CODES_MIN_BYTES`]).
enum Codes {
    Heap(Vec<i8>),
    Mapped(memmap2::MmapMut),
}

impl Codes {
    /// Zeroed storage for `len` codes.
    fn zeroed(len: usize) -> Codes {
        if len >= HUGE_PAGE_CODES_MIN_BYTES
            && let Ok(map) = memmap2::MmapOptions::new().len(len).map_anon()
        {
            // Advice only: without transparent huge pages the mapping still works, on
            // 4 KiB pages. It must come before the first write faults the pages in.
            #[cfg(target_os = "linux")]
            let _ = map.advise(memmap2::Advice::HugePage);
            return Codes::Mapped(map);
        }
        Codes::Heap(vec![0; len])
    }

    #[inline]
    fn as_slice(&self) -> &[i8] {
        match self {
            Codes::Heap(v) => v,
            Codes::Mapped(m) => bytemuck::cast_slice(&m[..]),
        }
    }

    fn as_mut_slice(&mut self) -> &mut [i8] {
        match self {
            Codes::Heap(v) => v,
            Codes::Mapped(m) => bytemuck::cast_slice_mut(&mut m[..]),
        }
    }

    /// `len` more zeroed codes at the end, returned to be filled. Only memtables grow their
    /// codes, and they start on the heap; a mapped set is moved there first.
    fn grow(&mut self, len: usize) -> &mut [i8] {
        if let Codes::Mapped(m) = self {
            *self = Codes::Heap(bytemuck::cast_slice(&m[..]).to_vec());
        }
        match self {
            Codes::Heap(v) => {
                let at = v.len();
                v.resize(at + len, 0);
                &mut v[at..]
            }
            Codes::Mapped(_) => &mut [],
        }
    }

    /// Bytes held: a growing heap set's spare room counts.
    fn bytes(&self) -> usize {
        match self {
            Codes::Heap(v) => v.capacity(),
            Codes::Mapped(m) => m.len(),
        }
    }
}

impl Quantized {
    pub fn new(vectors: &[f32], dim: usize) -> Quantized {
        let n = vectors.len().checked_div(dim).unwrap_or(0);
        let mut codes = Codes::zeroed(n * dim);
        let mut scales = Vec::with_capacity(n);
        if dim > 0 {
            for (v, out) in vectors
                .chunks_exact(dim)
                .zip(codes.as_mut_slice().chunks_exact_mut(dim))
            {
                scales.push(quantize_into(v, out));
            }
        }
        Quantized { dim, codes, scales }
    }

    /// Codes for no vectors yet, to [`Quantized::push`] onto (a memtable's).
    pub fn empty(dim: usize) -> Quantized {
        Quantized {
            dim,
            codes: Codes::Heap(Vec::new()),
            scales: Vec::new(),
        }
    }

    /// Appends the codes of one vector (ignored unless it has `dim` components, so doc
    /// numbers stay aligned with the caller's vectors only when the caller checks too).
    pub fn push(&mut self, vector: &[f32]) {
        if vector.len() == self.dim && self.dim > 0 {
            let out = self.codes.grow(self.dim);
            self.scales.push(quantize_into(vector, out));
        }
    }

    /// Bytes held (capacity: a growing memtable's spare room counts; codes of large segments
    /// are in their own mapping, see [`HUGE_PAGE_CODES_MIN_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.codes.bytes() + self.scales.capacity() * 4
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// A query's codes and scale, for [`Quantized::score`].
    pub fn query(&self, query: &[f32]) -> (Vec<i8>, f32) {
        let mut codes = vec![0; query.len()];
        let scale = quantize_into(query, &mut codes);
        (codes, scale)
    }

    /// The codes of `doc` (empty past the end).
    #[inline]
    pub fn codes_of(&self, doc: u32) -> &[i8] {
        let s = doc as usize * self.dim;
        self.codes.as_slice().get(s..s + self.dim).unwrap_or(&[])
    }

    /// Starts loading what [`Quantized::score`] reads for `doc` (its codes and its scale),
    /// so a graph walk can overlap the misses of a node's neighbours.
    #[inline]
    pub fn prefetch(&self, doc: u32) {
        prefetch(self.codes_of(doc));
        prefetch(self.scales.get(doc as usize..=doc as usize).unwrap_or(&[]));
    }

    /// Approximate dot product of the query with `doc`.
    #[inline]
    pub fn score(&self, query: &(Vec<i8>, f32), doc: u32) -> f32 {
        let scale = self.scales.get(doc as usize).copied().unwrap_or(0.0);
        raw_dot_i8(&query.0, self.codes_of(doc)) * query.1 * scale
    }
}

impl Quantized {
    /// Approximate dot product of two of the set's own vectors (what a graph build compares).
    #[inline]
    pub fn score_docs(&self, a: u32, b: u32) -> f32 {
        let scale = |d: u32| self.scales.get(d as usize).copied().unwrap_or(0.0);
        raw_dot_i8(self.codes_of(a), self.codes_of(b)) * scale(a) * scale(b)
    }
}

/// Integer dot product of two code vectors (SIMD through `simsimd`), as f32.
#[inline]
fn raw_dot_i8(a: &[i8], b: &[i8]) -> f32 {
    i8::dot(a, b).map_or(0.0, |d| d as f32)
}

/// Writes `v`'s int8 codes into `out` (same length); returns the scale.
fn quantize_into(v: &[f32], out: &mut [i8]) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    };
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// [`exact_top_k`] in two stages: every accepted doc ranked by its int8 codes, then the best
/// `k + RESCORE_EXTRA` rescored with their f32 vectors. Scores returned are the exact f32
/// dot products.
pub(crate) fn quantized_top_k(
    quantized: &Quantized,
    vectors: &[f32],
    query: &[f32],
    k: usize,
    accept: &dyn Fn(u32) -> bool,
) -> Vec<(u32, f32)> {
    let dim = quantized.dim;
    if dim == 0 || query.len() != dim {
        return Vec::new();
    }
    let (query_codes, query_scale) = quantized.query(query);
    let mut pre = TopK::new(k + RESCORE_EXTRA);
    for (doc, (codes, &scale)) in quantized
        .codes
        .as_slice()
        .chunks_exact(dim)
        .zip(&quantized.scales)
        .enumerate()
    {
        let doc = doc as u32;
        if accept(doc) {
            pre.push(doc, raw_dot_i8(&query_codes, codes) * query_scale * scale);
        }
    }
    let mut top = TopK::new(k);
    for (doc, _) in pre.into_sorted() {
        let start = doc as usize * dim;
        if let Some(v) = vectors.get(start..start + dim) {
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

    fn unit(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let v: Vec<f32> = (0..dim)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect();
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            out.extend(v.iter().map(|a| a / norm));
        }
        out
    }

    #[test]
    fn quantized_scan_returns_the_exact_top_k_with_exact_scores() {
        let dim = 384;
        let vectors = unit(3000, dim, 7);
        let queries = unit(20, dim, 99);
        let q = Quantized::new(&vectors, dim);
        assert_eq!(q.bytes(), 3000 * (dim + 4));
        for query in queries.chunks_exact(dim) {
            for k in [1, 10, 62] {
                let exact = exact_top_k(&vectors, dim, query, k, &|_| true);
                let fast = quantized_top_k(&q, &vectors, query, k, &|_| true);
                assert_eq!(fast, exact, "k={k}");
                let odd = |d: u32| d % 2 == 1;
                assert_eq!(
                    quantized_top_k(&q, &vectors, query, k, &odd),
                    exact_top_k(&vectors, dim, query, k, &odd)
                );
            }
        }
    }

    #[test]
    fn large_code_sets_are_mapped_and_score_like_heap_ones() {
        let dim = 64;
        let n = HUGE_PAGE_CODES_MIN_BYTES / dim + 1;
        let vectors = unit(n, dim, 3);
        let big = Quantized::new(&vectors, dim);
        assert!(matches!(big.codes, Codes::Mapped(_)));
        assert_eq!(big.bytes(), n * (dim + 4));
        let mut small = Quantized::empty(dim);
        for v in vectors.chunks_exact(dim).take(100) {
            small.push(v);
        }
        assert!(matches!(small.codes, Codes::Heap(_)));
        let q = big.query(&vectors[dim..2 * dim]);
        for doc in 0..100 {
            assert_eq!(big.codes_of(doc), small.codes_of(doc));
            assert_eq!(big.score(&q, doc), small.score(&q, doc));
        }
        // Growing a mapped set moves it to the heap with its codes intact.
        let mut grown = big;
        grown.push(&vectors[..dim]);
        assert!(matches!(grown.codes, Codes::Heap(_)));
        assert_eq!(grown.codes_of(n as u32), small.codes_of(0));
        assert_eq!(grown.codes_of(99), small.codes_of(99));
        assert!(grown.codes_of(n as u32 + 1).is_empty());
    }

    #[test]
    fn doc_to_doc_scores_approximate_the_dot_product() {
        let dim = 384;
        let vectors = unit(200, dim, 11);
        let q = Quantized::new(&vectors, dim);
        for a in 0..20u32 {
            for b in 0..200u32 {
                let (va, vb) = (a as usize * dim, b as usize * dim);
                let exact = dot(&vectors[va..va + dim], &vectors[vb..vb + dim]);
                assert!((q.score_docs(a, b) - exact).abs() < 0.01, "{a} {b}");
            }
        }
        assert_eq!(q.score_docs(0, 200), 0.0, "past the end scores nothing");
    }

    #[test]
    fn quantize_handles_zero_and_non_finite_vectors() {
        let q = Quantized::new(&[0.0, 0.0, f32::NAN, 1.0], 2);
        assert_eq!(q.scales.len(), 2);
        let hits = quantized_top_k(&q, &[0.0, 0.0, f32::NAN, 1.0], &[1.0, 0.0], 2, &|_| true);
        assert_eq!(hits.len(), 2);
    }
}
