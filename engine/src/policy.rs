//! The retrieval policy: every knob that decides how a vault ranks, in one struct — how the
//! vector and BM25 lists are fused and weighted, the recency and session priors, the
//! candidate pool each retriever proposes, and the cosine at which a memory counts as
//! relevant to a prepare. Defaults are per embedder kind ([`RetrievalPolicy::for_kind`]);
//! the server's `[retrieval]` settings override single fields.
//!
//! To try a different fusion: change [`RetrievalPolicy::for_kind`] (defaults) or set
//! `[retrieval]` fields, and measure with the LoCoMo harness (`benches/src/bin/locomo.rs`,
//! `docs/benchmarks.md`); the search itself (`vault/search.rs`) reads only this struct.

use crate::embedder::EmbedderKind;
use crate::fusion::{DEFAULT_FUSION, FusionMethod, FusionParams};

/// How a vault ranks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetrievalPolicy {
    /// How the vector and BM25 lists become one, and how much the prior may add.
    pub fusion: FusionParams,
    /// Weight of the recency prior for a memory created now; it halves every
    /// `recency_half_life_days`. Small: it breaks near-ties, it does not outrank relevance.
    pub recency_prior_max: f32,
    pub recency_half_life_days: f32,
    /// Prior added to memories of the query's own session (`SearchQuery::boost_session`).
    pub session_boost: f32,
    /// Each retriever proposes `candidates_per_k × k` candidates to fusion (a memory ranked
    /// low by one retriever but high by the other must still reach the fuser), and at least
    /// `candidates_min`. Not more: the pool is the floor of every HNSW beam, and 4k made a
    /// prepare (k ≈ 31) walk each graph with a beam of 124 for candidates ranked too low in
    /// both lists to matter.
    pub candidates_per_k: usize,
    pub candidates_min: usize,
    /// Cosine (query embedding · stored vector) at which a hit that shares no index term
    /// with the query still counts as relevant in a prepare. `None` where no default can be
    /// given (a static model's cosines sit on a scale of their own; the operator sets it).
    pub similarity_min: Option<f32>,
}

/// `similarity_min` of the built-in embedder: above its noise between unrelated sentences
/// (measured up to ~0.18), below its score for a shared rare word.
pub const SIMILARITY_MIN_LEXICAL: f32 = 0.3;
/// `similarity_min` of a transformer model: measured with all-MiniLM-L6-v2 on the LoCoMo
/// dev split (`locomo --cosines`), where 0.4 keeps most evidence turns and admits almost no
/// turn of another conversation.
pub const SIMILARITY_MIN_TRANSFORMER: f32 = 0.4;

impl RetrievalPolicy {
    /// The measured defaults for an embedder kind. The fusion weights were chosen with the
    /// built-in (lexical) embedder, where the vector list mostly repeats BM25 with more
    /// noise (`fusion::DEFAULT_FUSION`); semantic kinds use the same until re-measured.
    pub fn for_kind(kind: EmbedderKind) -> RetrievalPolicy {
        RetrievalPolicy {
            fusion: DEFAULT_FUSION,
            recency_prior_max: 0.03,
            recency_half_life_days: 30.0,
            session_boost: 0.05,
            candidates_per_k: 2,
            candidates_min: 40,
            similarity_min: match kind {
                EmbedderKind::Lexical => Some(SIMILARITY_MIN_LEXICAL),
                EmbedderKind::Transformer => Some(SIMILARITY_MIN_TRANSFORMER),
                EmbedderKind::Static => None,
            },
        }
    }

    /// Candidates each retriever proposes for a search of `k` results.
    pub fn candidates(&self, k: usize) -> usize {
        (k * self.candidates_per_k).max(self.candidates_min)
    }

    /// Checks every field's range; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let (wv, wl) = match self.fusion.method {
            FusionMethod::Weighted {
                vector_weight,
                lexical_weight,
            } => (vector_weight, lexical_weight),
            FusionMethod::Rrf {
                k0,
                vector_weight,
                lexical_weight,
            } => {
                if !(k0.is_finite() && k0 >= 0.0) {
                    return Err(format!("rrf_k0 {k0} must be a number >= 0"));
                }
                (vector_weight, lexical_weight)
            }
        };
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} is outside 0..=1"))
            }
        };
        unit("vector_weight", wv)?;
        unit("lexical_weight", wl)?;
        if wv + wl <= 0.0 {
            return Err("vector_weight and lexical_weight are both 0".into());
        }
        unit("prior_max", self.fusion.prior_max)?;
        unit("recency_prior_max", self.recency_prior_max)?;
        unit("session_boost", self.session_boost)?;
        if let Some(s) = self.similarity_min {
            unit("similarity_min", s)?;
        }
        if !(self.recency_half_life_days.is_finite() && self.recency_half_life_days > 0.0) {
            return Err(format!(
                "recency_half_life_days {} must be a number > 0",
                self.recency_half_life_days
            ));
        }
        if !(1..=16).contains(&self.candidates_per_k) {
            return Err(format!(
                "candidates_per_k {} is outside 1..=16",
                self.candidates_per_k
            ));
        }
        if !(1..=crate::vault::SEARCH_K_MAX).contains(&self.candidates_min) {
            return Err(format!(
                "candidates_min {} is outside 1..={}",
                self.candidates_min,
                crate::vault::SEARCH_K_MAX
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_embedder_kind() {
        for kind in [
            EmbedderKind::Lexical,
            EmbedderKind::Static,
            EmbedderKind::Transformer,
        ] {
            RetrievalPolicy::for_kind(kind).validate().unwrap();
        }
        assert_eq!(
            RetrievalPolicy::for_kind(EmbedderKind::Lexical).similarity_min,
            Some(SIMILARITY_MIN_LEXICAL)
        );
        assert_eq!(
            RetrievalPolicy::for_kind(EmbedderKind::Static).similarity_min,
            None
        );
        assert_eq!(
            RetrievalPolicy::for_kind(EmbedderKind::Lexical).candidates(10),
            40
        );
        assert_eq!(
            RetrievalPolicy::for_kind(EmbedderKind::Lexical).candidates(31),
            62
        );
    }

    #[test]
    fn validate_names_the_field_out_of_range() {
        let base = RetrievalPolicy::for_kind(EmbedderKind::Lexical);
        let bad = RetrievalPolicy {
            session_boost: 2.0,
            ..base
        };
        assert!(bad.validate().unwrap_err().contains("session_boost"));
        let bad = RetrievalPolicy {
            candidates_per_k: 0,
            ..base
        };
        assert!(bad.validate().unwrap_err().contains("candidates_per_k"));
        let bad = RetrievalPolicy {
            fusion: FusionParams {
                method: FusionMethod::Weighted {
                    vector_weight: 0.0,
                    lexical_weight: 0.0,
                },
                prior_max: 0.1,
            },
            ..base
        };
        assert!(bad.validate().unwrap_err().contains("both 0"));
    }
}
