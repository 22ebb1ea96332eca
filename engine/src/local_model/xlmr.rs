//! An XLM-RoBERTa encoder (multilingual-e5-small and its kin) on 4-bit weights: `<s> pieces
//! </s>` (at most [`XLMR_TOKENS_MAX`] tokens, longer texts truncated as sentence-transformers
//! does), post-LayerNorm layers with exact GELU, then mean pooling over every token,
//! L2-normalised by the caller.
//!
//! Retrieval-trained models embed a question and a passage differently: e5 puts
//! `query: ` / `passage: ` in front of the text ([`Prompts`]). Every matrix product runs on
//! [`kernel`](super::kernel)'s quantised weights and activations; one pass allocates its
//! buffers once for the whole batch, never per token.

use super::encoding::{self, Pooling, Prompts};
use super::kernel::{self, BLOCK, Packed, QActs, QMatrix};
use super::unigram::{Scratch, Unigram};
use std::ops::Range;

/// Tokens per text including `<s>` and `</s>`: multilingual-e5-small's `max_seq_length` (its
/// position table holds 512). Memories and questions are far shorter; a longer text's later
/// tokens do not influence its vector.
pub const XLMR_TOKENS_MAX: usize = 512;

/// Tokens stacked into one forward pass by a batch: bounds the activations (the
/// intermediate layer holds 4096 × 1536 floats, 24 MiB) while each weight block is loaded
/// once for many tokens.
pub const XLMR_BATCH_TOKENS_MAX: usize = 4096;
const _: () = assert!(XLMR_BATCH_TOKENS_MAX >= XLMR_TOKENS_MAX);

/// The hyper-parameters the forward pass needs.
#[derive(Debug, Clone)]
pub(crate) struct XlmrConfig {
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) intermediate: usize,
    pub(crate) eps: f32,
    /// Rows of the position table, first row = the first token (`<s>`).
    pub(crate) positions: usize,
}

#[derive(Debug)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
}

impl LayerNorm {
    /// `x = LN(x + y)` row by row (biased variance, as PyTorch).
    fn add_apply(&self, x: &mut [f32], y: Option<&[f32]>, eps: f32) {
        let h = self.weight.len();
        for (t, row) in x.chunks_exact_mut(h).enumerate() {
            if let Some(y) = y {
                row.iter_mut()
                    .zip(&y[t * h..(t + 1) * h])
                    .for_each(|(a, b)| *a += b);
            }
            let n = h as f32;
            let mean = kernel::sum(row) / n;
            let var = kernel::sum_squared_deviations(row, mean) / n;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct Layer {
    /// Query, key and value stacked: `[3H, H]`, one product.
    pub(crate) qkv: Packed,
    pub(crate) qkv_bias: Vec<f32>,
    pub(crate) attention_out: Packed,
    pub(crate) attention_out_bias: Vec<f32>,
    pub(crate) attention_norm: LayerNorm,
    pub(crate) intermediate: Packed,
    pub(crate) intermediate_bias: Vec<f32>,
    pub(crate) output: Packed,
    pub(crate) output_bias: Vec<f32>,
    pub(crate) output_norm: LayerNorm,
}

/// A loaded encoder.
#[derive(Debug)]
pub(crate) struct Xlmr {
    pub(crate) config: XlmrConfig,
    pub(crate) tokenizer: Unigram,
    pub(crate) bos: u32,
    pub(crate) eos: u32,
    /// Word embeddings `[vocab, H]`, 4-bit like the layers (the table is most of the model:
    /// 250k rows for multilingual-e5).
    pub(crate) word: QMatrix,
    /// `[positions, H]`.
    pub(crate) position: Vec<f32>,
    /// Row 0 of the token-type table (every token of one text has type 0).
    pub(crate) token_type: Vec<f32>,
    pub(crate) embedding_norm: LayerNorm,
    pub(crate) layers: Vec<Layer>,
    pub(crate) prompts: Prompts,
}

/// Buffers of one forward pass, sized for its token count.
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    projected: Vec<f32>,
    inner: Vec<f32>,
    scores: Vec<f32>,
    acts: QActs,
}

impl Xlmr {
    pub(crate) fn dim(&self) -> usize {
        self.config.hidden
    }

    /// Bytes of weights held in memory.
    pub(crate) fn weight_bytes(&self) -> usize {
        let floats = self.position.len() + self.token_type.len();
        self.word.bytes()
            + 4 * floats
            + self
                .layers
                .iter()
                .map(|l| {
                    l.qkv.bytes()
                        + l.attention_out.bytes()
                        + l.intermediate.bytes()
                        + l.output.bytes()
                })
                .sum::<usize>()
    }

    fn tokens_max(&self) -> usize {
        XLMR_TOKENS_MAX.min(self.config.positions)
    }

    /// The token ids the model reads for `text` with its prompt.
    pub(crate) fn token_ids(&self, text: &str, query: bool, scratch: &mut Scratch) -> Vec<u32> {
        let mut ids = vec![self.bos];
        let prompted = self.prompts.apply(text, query);
        self.tokenizer
            .encode(&prompted, self.tokens_max() - 1, scratch, &mut ids);
        ids.push(self.eos);
        ids
    }

    /// Pooled (not yet normalised) vectors of `texts`, as queries or as stored passages; the
    /// texts run together, at most [`XLMR_BATCH_TOKENS_MAX`] tokens per pass.
    pub(crate) fn embed_batch(&self, texts: &[&str], query: bool) -> Vec<Vec<f32>> {
        let mut scratch = Scratch::default();
        let sequences = texts
            .iter()
            .map(|text| self.token_ids(text, query, &mut scratch));
        encoding::in_groups(sequences, XLMR_BATCH_TOKENS_MAX, |group| {
            self.forward(group)
        })
    }

    fn forward(&self, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.config.hidden;
        let (spans, rows) = encoding::spans(sequences);
        let longest = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut b = Buffers {
            x: vec![0.0; rows * h],
            qkv: vec![0.0; rows * 3 * h],
            context: vec![0.0; rows * h],
            projected: vec![0.0; rows * h],
            inner: vec![0.0; rows * self.config.intermediate],
            scores: vec![0.0; longest],
            acts: QActs::default(),
        };
        for (ids, span) in sequences.iter().zip(&spans) {
            for (i, &id) in ids.iter().enumerate() {
                let row = &mut b.x[(span.start + i) * h..(span.start + i + 1) * h];
                self.word.row_into(id as usize, row);
                let position = &self.position[i * h..(i + 1) * h];
                for ((v, p), t) in row.iter_mut().zip(position).zip(&self.token_type) {
                    *v += p + t;
                }
            }
        }
        self.embedding_norm
            .add_apply(&mut b.x, None, self.config.eps);
        for layer in &self.layers {
            self.layer(layer, &spans, &mut b);
        }
        // Mean pooling over every token, `<s>` and `</s>` included (e5).
        encoding::pool(&b.x, h, &spans, Pooling::Mean)
    }

    fn layer(&self, layer: &Layer, spans: &[Range<usize>], b: &mut Buffers) {
        let h = self.config.hidden;
        let eps = self.config.eps;
        b.acts.quantize(&b.x, h);
        kernel::matmul(&layer.qkv, &layer.qkv_bias, &b.acts, &mut b.qkv);
        self.attention(spans, b);
        b.acts.quantize(&b.context, h);
        kernel::matmul(
            &layer.attention_out,
            &layer.attention_out_bias,
            &b.acts,
            &mut b.projected,
        );
        layer
            .attention_norm
            .add_apply(&mut b.x, Some(&b.projected), eps);
        b.acts.quantize(&b.x, h);
        kernel::matmul(
            &layer.intermediate,
            &layer.intermediate_bias,
            &b.acts,
            &mut b.inner,
        );
        kernel::gelu_in_place(&mut b.inner);
        b.acts.quantize(&b.inner, self.config.intermediate);
        kernel::matmul(&layer.output, &layer.output_bias, &b.acts, &mut b.projected);
        layer
            .output_norm
            .add_apply(&mut b.x, Some(&b.projected), eps);
    }

    /// Scaled dot-product attention of every head, each text attending to its own tokens.
    fn attention(&self, spans: &[Range<usize>], b: &mut Buffers) {
        let h = self.config.hidden;
        let heads = self.config.heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = &b.qkv;
        for span in spans {
            for t in span.clone() {
                for head in 0..heads {
                    let q = &qkv[t * 3 * h + head * d..][..d];
                    let scores = &mut b.scores[..span.len()];
                    let mut max = f32::NEG_INFINITY;
                    for (s, score) in span.clone().zip(scores.iter_mut()) {
                        let k = &qkv[s * 3 * h + h + head * d..][..d];
                        *score = kernel::dot(q, k) * scale;
                        max = max.max(*score);
                    }
                    let mut sum = 0.0;
                    for score in scores.iter_mut() {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    let out = &mut b.context[t * h + head * d..][..d];
                    out.fill(0.0);
                    for (s, &p) in span.clone().zip(scores.iter()) {
                        let v = &qkv[s * 3 * h + 2 * h + head * d..][..d];
                        let p = p / sum;
                        out.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
                    }
                }
            }
        }
    }
}

/// Whether a hidden size fits the kernel's blocks.
pub(crate) fn fits_blocks(n: usize) -> bool {
    n > 0 && n.is_multiple_of(BLOCK)
}
