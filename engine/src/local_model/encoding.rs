//! What the two transformer encoders (`bert.rs` on `f32` weights, `xlmr.rs` on 4-bit ones)
//! share around their forward pass: the prompts a retrieval model puts in front of a text,
//! stacking several texts into one pass, and pooling each text's token states into one
//! vector.

use std::borrow::Cow;
use std::ops::Range;

/// What goes in front of a question and of a stored text (both empty for a symmetric
/// model).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prompts {
    pub(crate) query: String,
    pub(crate) passage: String,
}

impl Prompts {
    /// e5's prefixes (model cards of intfloat's e5 family: `query: ` for questions,
    /// `passage: ` for what is searched).
    pub(crate) fn e5() -> Self {
        Self {
            query: "query: ".into(),
            passage: "passage: ".into(),
        }
    }

    /// bge-en v1.5's instruction for short queries looking for passages (model card of
    /// BAAI/bge-small-en-v1.5); passages go in bare.
    pub(crate) fn bge_en() -> Self {
        Self {
            query: "Represent this sentence for searching relevant passages: ".into(),
            passage: String::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.query.is_empty() && self.passage.is_empty()
    }

    /// `text` with the prompt of its role in front.
    pub(crate) fn apply<'a>(&self, text: &'a str, query: bool) -> Cow<'a, str> {
        let prompt = if query { &self.query } else { &self.passage };
        if prompt.is_empty() {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(format!("{prompt}{text}"))
        }
    }
}

/// How a text's token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// The mean over every token, the special ones included (sentence-transformers'
    /// `pooling_mode_mean_tokens`; MiniLM, e5).
    Mean,
    /// The first token's state (`pooling_mode_cls_token`; bge).
    Cls,
}

/// Runs `forward` over `sequences` stacked into groups of at most `tokens_max` tokens (a
/// longer sequence alone), and returns its vectors in order.
pub(crate) fn in_groups(
    sequences: impl Iterator<Item = Vec<u32>>,
    tokens_max: usize,
    mut forward: impl FnMut(&[Vec<u32>]) -> Vec<Vec<f32>>,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut group: Vec<Vec<u32>> = Vec::new();
    let mut group_tokens = 0;
    for ids in sequences {
        if group_tokens + ids.len() > tokens_max && !group.is_empty() {
            out.extend(forward(&group));
            group.clear();
            group_tokens = 0;
        }
        group_tokens += ids.len();
        group.push(ids);
    }
    if !group.is_empty() {
        out.extend(forward(&group));
    }
    out
}

/// The rows each sequence occupies when they are stacked, and the total.
pub(crate) fn spans(sequences: &[Vec<u32>]) -> (Vec<Range<usize>>, usize) {
    let mut spans = Vec::with_capacity(sequences.len());
    let mut rows = 0;
    for ids in sequences {
        spans.push(rows..rows + ids.len());
        rows += ids.len();
    }
    (spans, rows)
}

/// One vector per span of the row-major `hidden` (`dim` floats per row); an empty span
/// gives zeros.
pub(crate) fn pool(
    hidden: &[f32],
    dim: usize,
    spans: &[Range<usize>],
    pooling: Pooling,
) -> Vec<Vec<f32>> {
    spans
        .iter()
        .map(|span| {
            let rows = hidden
                .get(span.start * dim..span.end * dim)
                .unwrap_or_default();
            match pooling {
                Pooling::Cls => rows
                    .get(..dim)
                    .map_or_else(|| vec![0.0; dim], <[f32]>::to_vec),
                Pooling::Mean => {
                    let mut mean = vec![0.0f32; dim];
                    for row in rows.chunks_exact(dim) {
                        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                    }
                    let n = span.len().max(1) as f32;
                    mean.iter_mut().for_each(|m| *m /= n);
                    mean
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_order_and_bound_tokens() {
        let seqs = vec![vec![1; 3], vec![2; 3], vec![3; 5], vec![4; 1]];
        let mut sizes = Vec::new();
        let out = in_groups(seqs.into_iter(), 6, |g| {
            sizes.push(g.iter().map(Vec::len).sum::<usize>());
            g.iter().map(|s| vec![s[0] as f32]).collect()
        });
        assert_eq!(out, vec![vec![1.0], vec![2.0], vec![3.0], vec![4.0]]);
        assert_eq!(sizes, vec![6, 6]);
    }

    #[test]
    fn mean_and_cls_pooling() {
        let hidden = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let (spans, rows) = spans(&[vec![0, 0], vec![0]]);
        assert_eq!(rows, 3);
        assert_eq!(
            pool(&hidden, 2, &spans, Pooling::Mean),
            vec![vec![2.0, 3.0], vec![5.0, 6.0]]
        );
        assert_eq!(
            pool(&hidden, 2, &spans, Pooling::Cls),
            vec![vec![1.0, 2.0], vec![5.0, 6.0]]
        );
        assert_eq!(Prompts::e5().apply("hi", true), "query: hi");
        assert_eq!(Prompts::bge_en().apply("hi", false), "hi");
    }
}
