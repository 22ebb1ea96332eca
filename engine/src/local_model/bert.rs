//! A BERT encoder in plain Rust for sentence-transformers models read from a Hugging Face
//! directory: all-MiniLM-L6-v2, e5-base and bge-small-en-v1.5 (BERT, WordPiece), and
//! multilingual-e5-small (XLM-RoBERTa: the same layers, a SentencePiece Unigram tokenizer,
//! positions counted from `pad_token_id + 1`). `[CLS] pieces [SEP]` (`<s> … </s>`), at most
//! [`BERT_TOKENS_MAX`] tokens (longer texts truncated as sentence-transformers does),
//! post-LayerNorm transformer layers with exact (erf) GELU, then mean pooling over every
//! token including the special ones, or the first token's state (CLS pooling, bge), and L2
//! normalisation by the caller. A retrieval model's prompts (`query: `, a bge query
//! instruction) go in front of the text before tokenizing.
//!
//! Weights are owned `ndarray` matrices; every product goes through `Array2::dot`, which
//! runs `matrixmultiply`'s runtime-dispatched (AVX2/FMA when present) sgemm. One `embed` is
//! single-threaded: the engine already embeds from several threads at once.

use super::encoding::{self, Pooling, Prompts};
use super::safetensors::SafeTensors;
use super::unigram::{Scratch, Unigram};
use super::wordpiece::WordPiece;
use crate::error::{Error, Result};
use ndarray::{Array1, Array2, s};
use serde_json::Value;
use std::ops::Range;
use std::path::Path;

/// Tokens per text including `[CLS]` and `[SEP]`: all-MiniLM-L6-v2's `max_seq_length`, and
/// what keeps one embed of a long message in the tens of milliseconds (attention is
/// quadratic). Later tokens of a longer text do not influence its vector.
pub const BERT_TOKENS_MAX: usize = 256;

/// Tokens stacked into one forward pass by `embed_batch`: bounds the activations (the
/// intermediate layer holds 2048 × 1536 floats, 12 MiB, for MiniLM) while amortising
/// sgemm's weight packing over several texts.
pub const BATCH_TOKENS_MAX: usize = 2048;
const _: () = assert!(BATCH_TOKENS_MAX >= BERT_TOKENS_MAX);

/// The hyper-parameters of `config.json` the forward pass needs.
#[derive(Debug, Clone)]
pub(crate) struct BertConfig {
    pub(crate) hidden: usize,
    layers: usize,
    heads: usize,
    intermediate: usize,
    eps: f32,
    positions: usize,
    type_vocab: usize,
    /// Row of the position table for the first token: 0 for BERT; `pad_token_id + 1` for
    /// (XLM-)RoBERTa, whose position ids skip the padding index.
    position_offset: usize,
}

impl BertConfig {
    pub(crate) fn parse(path: &Path, json: &Value) -> Result<Self> {
        let bad = |reason: String| Error::model(path, reason);
        let size = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(format!("needs a positive integer {key:?}")))
        };
        let act = json
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        if act != "gelu" {
            return Err(bad(format!(
                "hidden_act {act:?} is not supported (only exact \"gelu\")"
            )));
        }
        let position_kind = json
            .get("position_embedding_type")
            .and_then(Value::as_str)
            .unwrap_or("absolute");
        if position_kind != "absolute" {
            return Err(bad(format!(
                "position_embedding_type {position_kind:?} is not supported (only \"absolute\")"
            )));
        }
        let roberta = matches!(
            json.get("model_type").and_then(Value::as_str),
            Some("xlm-roberta" | "roberta")
        );
        let position_offset = if roberta {
            json.get("pad_token_id")
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(1)
                + 1
        } else {
            0
        };
        let config = Self {
            position_offset,
            hidden: size("hidden_size")?,
            layers: size("num_hidden_layers")?,
            heads: size("num_attention_heads")?,
            intermediate: size("intermediate_size")?,
            eps: json
                .get("layer_norm_eps")
                .and_then(Value::as_f64)
                .ok_or_else(|| bad("needs a number \"layer_norm_eps\"".into()))?
                as f32,
            positions: size("max_position_embeddings")?,
            type_vocab: json
                .get("type_vocab_size")
                .and_then(Value::as_u64)
                .map_or(Ok(2), |v| {
                    usize::try_from(v).map_err(|_| bad("bad type_vocab_size".into()))
                })?
                .max(1),
        };
        if config.positions < config.position_offset + 2 {
            return Err(bad(
                "max_position_embeddings must leave room for [CLS] and [SEP]".into(),
            ));
        }
        if !config.hidden.is_multiple_of(config.heads) {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden, config.heads
            )));
        }
        Ok(config)
    }
}

#[derive(Debug)]
struct LayerNorm {
    weight: Array1<f32>,
    bias: Array1<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(st: &SafeTensors, name: &str, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            weight: Array1::from(st.tensor(&format!("{name}.weight"), &[dim])?),
            bias: Array1::from(st.tensor(&format!("{name}.bias"), &[dim])?),
            eps,
        })
    }

    /// Normalises each row in place (biased variance, as PyTorch).
    fn apply(&self, x: &mut Array2<f32>) {
        for mut row in x.rows_mut() {
            let n = row.len() as f32;
            let mean = row.sum() / n;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

/// `y = x Wᵀ + b` for PyTorch's `[out, in]` weight `W` (kept transposed).
#[derive(Debug)]
struct Linear {
    weight: Array2<f32>,
    bias: Array1<f32>,
}

impl Linear {
    fn load(
        st: &SafeTensors,
        path: &Path,
        names: &[String],
        out: usize,
        inp: usize,
    ) -> Result<Self> {
        // Several names are stacked row-wise: query, key and value become one product.
        let mut weight = Vec::with_capacity(names.len() * out * inp);
        let mut bias = Vec::with_capacity(names.len() * out);
        for name in names {
            weight.extend(st.tensor(&format!("{name}.weight"), &[out, inp])?);
            bias.extend(st.tensor(&format!("{name}.bias"), &[out])?);
        }
        let weight = Array2::from_shape_vec((names.len() * out, inp), weight)
            .map_err(|e| Error::model(path, format!("{}: {e}", names.join("+"))))?;
        Ok(Self {
            // Stored as `[in, out]` row-major: sgemm packs the right-hand matrix on every
            // call, and packing contiguous rows is about twice as fast as gathering the
            // columns of a transposed view (packing was half of a short text's time).
            weight: weight.t().as_standard_layout().into_owned(),
            bias: Array1::from(bias),
        })
    }

    fn forward(&self, x: &Array2<f32>) -> Array2<f32> {
        let mut y = x.dot(&self.weight);
        y += &self.bias;
        y
    }
}

#[derive(Debug)]
struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The tokenizers a Hugging Face directory may hold.
#[derive(Debug)]
pub(crate) enum Tokenizer {
    WordPiece(WordPiece),
    Unigram(Unigram),
}

impl Tokenizer {
    /// Largest id the tokenizer can produce.
    fn id_max(&self) -> u32 {
        match self {
            Tokenizer::WordPiece(t) => t.id_max(),
            Tokenizer::Unigram(t) => t.vocab_size().saturating_sub(1) as u32,
        }
    }

    /// The ids that open and close every sequence: `[CLS]`/`[SEP]` or `<s>`/`</s>`.
    fn specials(&self) -> Option<(u32, u32)> {
        match self {
            Tokenizer::WordPiece(t) => t.token_id("[CLS]").zip(t.token_id("[SEP]")),
            Tokenizer::Unigram(t) => t.token_id("<s>").zip(t.token_id("</s>")),
        }
    }

    fn encode(&self, text: &str, len_max: usize, scratch: &mut Scratch, out: &mut Vec<u32>) {
        match self {
            Tokenizer::WordPiece(t) => t.encode(text, len_max, out),
            Tokenizer::Unigram(t) => t.encode(text, len_max, scratch, out),
        }
    }
}

/// A loaded encoder.
#[derive(Debug)]
pub(crate) struct Bert {
    config: BertConfig,
    tokenizer: Tokenizer,
    pooling: Pooling,
    prompts: Prompts,
    cls: u32,
    sep: u32,
    word: Array2<f32>,
    position: Array2<f32>,
    /// Row 0 of the token-type table: every token of a single sentence has type 0.
    token_type: Array1<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    tokens_max: usize,
}

impl Bert {
    pub(crate) fn load(
        path: &Path,
        st: &SafeTensors,
        config: BertConfig,
        tokenizer: Tokenizer,
        pooling: Pooling,
        prompts: Prompts,
    ) -> Result<Self> {
        let bad = |reason: String| Error::model(path, reason);
        // Checkpoints saved from `BertModel` / `XLMRobertaModel` name tensors
        // `embeddings.…`; from a task model (`BertForMaskedLM`, …) they carry a prefix.
        let Some(prefix) = ["", "bert.", "roberta."]
            .into_iter()
            .find(|p| st.contains(&format!("{p}embeddings.word_embeddings.weight")))
        else {
            let names = st.names();
            return Err(bad(format!(
                "no \"embeddings.word_embeddings.weight\" (nor with a \"bert.\" or \"roberta.\" prefix); tensors: {}",
                names[..names.len().min(8)].join(", ")
            )));
        };
        let name = |rest: &str| format!("{prefix}{rest}");
        let h = config.hidden;
        let vocab = st
            .shape(&name("embeddings.word_embeddings.weight"))
            .and_then(|s| s.first().copied())
            .unwrap_or(0);
        if (tokenizer.id_max() as usize) >= vocab {
            return Err(bad(format!(
                "word embeddings have {vocab} rows but the tokenizer's ids reach {}",
                tokenizer.id_max()
            )));
        }
        let (cls, sep) = tokenizer.specials().ok_or_else(|| {
            bad("the tokenizer has no [CLS] and [SEP] (or <s> and </s>) tokens".into())
        })?;
        let matrix = |n: &str, rows: usize| -> Result<Array2<f32>> {
            Array2::from_shape_vec((rows, h), st.tensor(&name(n), &[rows, h])?)
                .map_err(|e| bad(format!("{n}: {e}")))
        };
        let word = matrix("embeddings.word_embeddings.weight", vocab)?;
        let position = matrix("embeddings.position_embeddings.weight", config.positions)?;
        let token_type = matrix("embeddings.token_type_embeddings.weight", config.type_vocab)?
            .row(0)
            .to_owned();
        let embedding_norm = LayerNorm::load(st, &name("embeddings.LayerNorm"), h, config.eps)?;
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let at = |rest: &str| name(&format!("encoder.layer.{l}.{rest}"));
            let one = |rest: &str| vec![at(rest)];
            layers.push(Layer {
                qkv: Linear::load(
                    st,
                    path,
                    &[
                        at("attention.self.query"),
                        at("attention.self.key"),
                        at("attention.self.value"),
                    ],
                    h,
                    h,
                )?,
                attention_out: Linear::load(st, path, &one("attention.output.dense"), h, h)?,
                attention_norm: LayerNorm::load(
                    st,
                    &at("attention.output.LayerNorm"),
                    h,
                    config.eps,
                )?,
                intermediate: Linear::load(
                    st,
                    path,
                    &one("intermediate.dense"),
                    config.intermediate,
                    h,
                )?,
                output: Linear::load(st, path, &one("output.dense"), h, config.intermediate)?,
                output_norm: LayerNorm::load(st, &at("output.LayerNorm"), h, config.eps)?,
            });
        }
        let tokens_max = BERT_TOKENS_MAX.min(config.positions - config.position_offset);
        Ok(Self {
            config,
            tokenizer,
            pooling,
            prompts,
            cls,
            sep,
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            tokens_max,
        })
    }

    pub(crate) fn dim(&self) -> usize {
        self.config.hidden
    }

    /// Whether the encoder is (XLM-)RoBERTa (the multilingual-e5 family) rather than BERT.
    pub(crate) fn roberta(&self) -> bool {
        self.config.position_offset != 0
    }

    /// Whether questions and stored texts get different prompts.
    pub(crate) fn asymmetric(&self) -> bool {
        !self.prompts.is_empty()
    }

    /// The pooled last hidden state of each text (not yet normalised), as a question
    /// (`query`) or a stored text, the texts stacked into groups of at most
    /// [`BATCH_TOKENS_MAX`] tokens so each weight matrix is packed for sgemm once per group
    /// instead of once per text (attention stays within each text).
    pub(crate) fn embed_batch(&self, texts: &[&str], query: bool) -> Vec<Vec<f32>> {
        let mut scratch = Scratch::default();
        let sequences = texts
            .iter()
            .map(|text| self.token_ids(text, query, &mut scratch));
        encoding::in_groups(sequences, BATCH_TOKENS_MAX, |group| self.forward(group))
    }

    /// The token ids the model reads for `text` with its prompt.
    pub(crate) fn token_ids(&self, text: &str, query: bool, scratch: &mut Scratch) -> Vec<u32> {
        let mut ids = vec![self.cls];
        let prompted = self.prompts.apply(text, query);
        self.tokenizer
            .encode(&prompted, self.tokens_max - 1, scratch, &mut ids);
        ids.push(self.sep);
        ids
    }

    /// The pooled outputs of one group of token sequences.
    fn forward(&self, sequences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let (spans, rows) = encoding::spans(sequences);
        let mut x = Array2::<f32>::zeros((rows, self.config.hidden));
        for (ids, span) in sequences.iter().zip(&spans) {
            let mut block = x.slice_mut(s![span.clone(), ..]);
            for (i, (mut row, &id)) in block.rows_mut().into_iter().zip(ids).enumerate() {
                row.assign(&self.word.row(id as usize));
                row += &self.position.row(self.config.position_offset + i);
                row += &self.token_type;
            }
        }
        self.embedding_norm.apply(&mut x);
        for layer in &self.layers {
            x = self.layer(layer, &x, &spans);
        }
        let x = x.as_standard_layout();
        let hidden = x.as_slice().unwrap_or_default();
        encoding::pool(hidden, self.config.hidden, &spans, self.pooling)
    }

    fn layer(&self, layer: &Layer, x: &Array2<f32>, spans: &[Range<usize>]) -> Array2<f32> {
        let h = self.config.hidden;
        let d = h / self.config.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let qkv = layer.qkv.forward(x);
        let mut context = Array2::<f32>::zeros(x.raw_dim());
        for span in spans {
            for head in 0..self.config.heads {
                let cols = head * d..(head + 1) * d;
                let rows = span.clone();
                let q = qkv.slice(s![rows.clone(), cols.clone()]);
                let k = qkv.slice(s![rows.clone(), h + cols.start..h + cols.end]);
                let v = qkv.slice(s![rows.clone(), 2 * h + cols.start..2 * h + cols.end]);
                let mut scores = q.dot(&k.t());
                for mut row in scores.rows_mut() {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
                    let mut sum = 0.0;
                    row.mapv_inplace(|v| {
                        let e = (v * scale - max).exp();
                        sum += e;
                        e
                    });
                    row /= sum;
                }
                context.slice_mut(s![rows, cols]).assign(&scores.dot(&v));
            }
        }
        let mut attended = layer.attention_out.forward(&context);
        attended += x;
        layer.attention_norm.apply(&mut attended);
        let mut inner = layer.intermediate.forward(&attended);
        inner.mapv_inplace(gelu);
        let mut out = layer.output.forward(&inner);
        out += &attended;
        layer.output_norm.apply(&mut out);
        out
    }
}

/// Exact GELU, `x Φ(x) = x (1 + erf(x / √2)) / 2`, as BERT's `"gelu"`.
fn gelu(x: f32) -> f32 {
    let x = f64::from(x);
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, well under `f32`'s
/// resolution of GELU's output), odd-extended to negative arguments.
pub(super) fn erf(x: f64) -> f64 {
    const P: f64 = 0.327_591_1;
    const A: [f64; 5] = [
        0.254_829_592,
        -0.284_496_736,
        1.421_413_741,
        -1.453_152_027,
        1.061_405_429,
    ];
    let t = 1.0 / (1.0 + P * x.abs());
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * (-x * x).exp();
    if x < 0.0 { -y } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_gelu_match_known_values() {
        // erf values from tables; GELU(1) = 0.8413447, GELU(-1) = -0.1586553.
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_3).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
    }
}
