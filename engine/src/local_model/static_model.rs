//! model2vec static embeddings: one learned vector per vocabulary piece; a text's embedding is
//! the mean of its pieces' rows (no special tokens, unknown pieces dropped as model2vec does),
//! L2-normalised. The cheapest semantic embedder there is: a hash lookup and an add per piece.

use super::safetensors::SafeTensors;
use super::wordpiece::WordPiece;
use crate::error::{Error, Result};
use std::path::Path;

/// Name of the one tensor of a model2vec `model.safetensors`, shaped `[vocab, dim]`.
pub(crate) const EMBEDDINGS_TENSOR: &str = "embeddings";
/// Pieces averaged per text; model2vec's own `encode` truncates at the same length.
pub const STATIC_TOKENS_MAX: usize = 512;

#[derive(Debug)]
pub(crate) struct StaticModel {
    tokenizer: WordPiece,
    /// Row-major `[vocab, dim]`.
    rows: Vec<f32>,
    dim: usize,
}

impl StaticModel {
    pub(crate) fn load(
        weights_path: &Path,
        weights: &SafeTensors,
        tokenizer: WordPiece,
    ) -> Result<Self> {
        let shape = weights.shape(EMBEDDINGS_TENSOR).unwrap_or(&[]).to_vec();
        let [vocab, dim] = shape[..] else {
            return Err(Error::model(
                weights_path,
                format!("tensor \"embeddings\" has shape {shape:?}, expected [vocab, dim]"),
            ));
        };
        if dim == 0 || (tokenizer.id_max() as usize) >= vocab {
            return Err(Error::model(
                weights_path,
                format!(
                    "tensor \"embeddings\" has shape {shape:?} but the tokenizer's ids reach {}",
                    tokenizer.id_max()
                ),
            ));
        }
        let rows = weights.tensor(EMBEDDINGS_TENSOR, &shape)?;
        Ok(Self {
            tokenizer,
            rows,
            dim,
        })
    }

    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// The mean of the text's known pieces, or all zeros when it has none (the caller turns a
    /// zero vector into its documented fallback unit vector).
    pub(crate) fn embed(&self, text: &str) -> Vec<f32> {
        let mut ids = Vec::new();
        self.tokenizer.encode(text, STATIC_TOKENS_MAX, &mut ids);
        let unk = self.tokenizer.unk_id();
        let mut sum = vec![0.0f32; self.dim];
        let mut count = 0usize;
        for id in ids.into_iter().filter(|&id| id != unk) {
            let row = &self.rows[id as usize * self.dim..][..self.dim];
            sum.iter_mut().zip(row).for_each(|(s, r)| *s += r);
            count += 1;
        }
        if count > 0 {
            let inv = 1.0 / count as f32;
            sum.iter_mut().for_each(|s| *s *= inv);
        }
        sum
    }
}
