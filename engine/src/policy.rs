//! The retrieval policy: every knob that decides how a vault ranks, in one struct — how the
//! vector and BM25 lists are fused and weighted, the recency and session priors, the
//! candidate pool each retriever proposes, the recall signals that need no model (dates
//! named in the query, session-level BM25, neighbour smoothing, the question penalty), and
//! the cosine at which a memory counts as relevant to a prepare. Defaults are per embedder kind ([`RetrievalPolicy::for_kind`]);
//! the server's `[retrieval]` settings override single fields.
//!
//! To try a different fusion: change [`RetrievalPolicy::for_kind`] (defaults) or set
//! `[retrieval]` fields, and measure with the LoCoMo harness (`benches/src/bin/locomo.rs`,
//! `docs/benchmarks.md`); the search itself (`vault/search.rs`) reads only this struct.

use crate::embedder::{Embedder, EmbedderKind};
use crate::fusion::{DEFAULT_FUSION, FusionMethod, FusionParams, LEXICAL_EMBEDDER_FUSION};

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
    /// The recall signals added to the fused score (see [`Signals`]); all 0 = plain fusion.
    pub signals: Signals,
}

/// Signals that need no model, added to a candidate's fused score (which lies in `[0, 1]`)
/// before the final ranking; the sum is rescaled into `[0, 1]`. Chosen and measured on the
/// LoCoMo dev split with one conversation held out at a time (`docs/benchmarks.md`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Signals {
    /// Dates named in the query: a memory created in `[d, d + date_window_days]` of a day
    /// `d` the query names ("on 13 October, 2023", "on May 3") gains `date_boost_day`; of a
    /// named month ("in June 2023", "in June": `d` runs over the month) `date_boost_month`;
    /// of a named year `date_boost_year`. People speak of an event on the day or in the
    /// days after it. The largest applies when the query names several dates.
    pub date_boost_day: f32,
    pub date_boost_month: f32,
    pub date_boost_year: f32,
    pub date_window_days: u32,
    /// Session-level BM25: each session holding a candidate is scored as one document
    /// (its memories near the candidates, up to 16 on each side of one), divided by the best
    /// session's score, times this, and added to every candidate of that session. A session
    /// that talks about the query's subject lifts its turns, also the turns that do not
    /// repeat its words.
    pub session_weight: f32,
    /// Neighbour smoothing: a memory gains this × the higher fused score of the previous and
    /// the next memory of its session (the adjacent memories of the same session, within
    /// the same source); those neighbours become candidates too. An answer is often the
    /// turn after the one that shares the query's words.
    pub neighbour_weight: f32,
    /// A memory whose text ends in "?" loses this: a question shares the query's words but
    /// is rarely what answers it.
    pub question_penalty: f32,
}

impl Signals {
    /// No signal: the search ranks by fusion and priors alone.
    pub const OFF: Signals = Signals {
        date_boost_day: 0.0,
        date_boost_month: 0.0,
        date_boost_year: 0.0,
        date_window_days: DATE_WINDOW_DAYS,
        session_weight: 0.0,
        neighbour_weight: 0.0,
        question_penalty: 0.0,
    };

    /// Whether any signal can change a score.
    pub fn any(&self) -> bool {
        self.date_boost() > 0.0
            || self.session_weight > 0.0
            || self.neighbour_weight > 0.0
            || self.question_penalty > 0.0
    }

    /// The largest date boost.
    pub fn date_boost(&self) -> f32 {
        self.date_boost_day
            .max(self.date_boost_month)
            .max(self.date_boost_year)
    }

    /// The most the signals can add above, and take below, a fused score: final scores are
    /// `(fused + signals + question_penalty) / (1 + span())`, in `[0, 1]`.
    pub fn span(&self) -> f32 {
        self.date_boost() + self.session_weight + self.neighbour_weight + self.question_penalty
    }
}

/// Days after a named date (or the end of a named month or year) that still count as
/// talking about it.
pub const DATE_WINDOW_DAYS: u32 = 7;

/// The measured defaults of the signals (the same for every embedder kind until a semantic
/// model is measured with them): the values leave-one-conversation-out tuning on the LoCoMo
/// dev split chose for most held-out conversations (`locomo --loco`, `docs/benchmarks.md`).
/// A named day or month lifts a memory of its window above almost any other candidate; a
/// window of a week (not two) is what the folds chose.
pub const DEFAULT_SIGNALS: Signals = Signals {
    date_boost_day: 0.8,
    date_boost_month: 0.8,
    date_boost_year: 0.1,
    date_window_days: DATE_WINDOW_DAYS,
    session_weight: 0.2,
    neighbour_weight: 0.3,
    question_penalty: 0.3,
};

/// The signals' defaults with a retrieval model (multilingual-e5-small): those of
/// [`DEFAULT_SIGNALS`] but the session weight: the leave-one-out folds chose 0.45, 0.45,
/// 0.45 and 0.6 with e5 and the stored vector of `embedder::memory_vector`
/// (`docs/benchmarks.md`); the other knobs stayed near the defaults.
pub const RETRIEVAL_SIGNALS: Signals = Signals {
    session_weight: 0.45,
    ..DEFAULT_SIGNALS
};

/// `similarity_min` of the built-in embedder: above its noise between unrelated sentences
/// (measured up to ~0.18), below its score for a shared rare word.
pub const SIMILARITY_MIN_LEXICAL: f32 = 0.3;
/// `similarity_min` of a transformer model: measured with all-MiniLM-L6-v2 on the LoCoMo
/// dev split (`locomo --cosines`), where 0.4 keeps most evidence turns and admits almost no
/// turn of another conversation.
pub const SIMILARITY_MIN_TRANSFORMER: f32 = 0.4;

/// `similarity_min` of a retrieval model (multilingual-e5-small), from `locomo --cosines`
/// on the vectors the vault stores (`embedder::memory_vector`): e5's cosines sit high for
/// everything (unrelated LoCoMo turns p50 0.748, p99 0.805, p99.9 0.825; evidence p10 0.803,
/// p50 0.839), so 0.8 keeps 92 % of evidence and admits 1.7 % of unrelated turns. Measured
/// for e5 only: a BERT-architecture retrieval model read from a Hugging Face directory
/// (bge-small, e5-base) reports no gate (`LocalModelEmbedder::similarity_min`) — no bge
/// weights could be obtained to measure one — so the server asks for an explicit
/// `retrieval.similarity_min` there.
pub const SIMILARITY_MIN_RETRIEVAL: f32 = 0.8;

/// Fusion for a retrieval model: vector 0.6, BM25 0.4, what LoCoMo leave-one-out tuning with
/// multilingual-e5-small chose in three folds of four, and in all four since the stored
/// vector mixes the two texts' (`embedder::memory_vector`; `docs/benchmarks.md`).
pub const RETRIEVAL_FUSION: FusionParams = FusionParams {
    method: crate::fusion::FusionMethod::Weighted {
        vector_weight: 0.6,
        lexical_weight: 0.4,
    },
    ..DEFAULT_FUSION
};

/// The measured `similarity_min` of an embedder kind: `None` where no default can be given
/// (a static model's cosines sit on a scale of their own).
pub(crate) fn similarity_min_of(kind: EmbedderKind) -> Option<f32> {
    match kind {
        EmbedderKind::Lexical => Some(SIMILARITY_MIN_LEXICAL),
        EmbedderKind::Transformer => Some(SIMILARITY_MIN_TRANSFORMER),
        EmbedderKind::Retrieval => Some(SIMILARITY_MIN_RETRIEVAL),
        EmbedderKind::Static => None,
    }
}

impl RetrievalPolicy {
    /// The measured defaults for an embedder kind. The fusion weights were chosen with the
    /// built-in (lexical) embedder, where the vector list mostly repeats BM25 with more
    /// noise (`fusion::LEXICAL_EMBEDDER_FUSION`, re-measured with the recall signals);
    /// semantic kinds keep `fusion::DEFAULT_FUSION` until measured.
    pub fn for_kind(kind: EmbedderKind) -> RetrievalPolicy {
        RetrievalPolicy {
            fusion: match kind {
                EmbedderKind::Lexical => LEXICAL_EMBEDDER_FUSION,
                EmbedderKind::Static | EmbedderKind::Transformer => DEFAULT_FUSION,
                EmbedderKind::Retrieval => RETRIEVAL_FUSION,
            },
            recency_prior_max: 0.03,
            recency_half_life_days: 30.0,
            session_boost: 0.05,
            candidates_per_k: 2,
            candidates_min: 40,
            similarity_min: similarity_min_of(kind),
            signals: match kind {
                EmbedderKind::Retrieval => RETRIEVAL_SIGNALS,
                _ => DEFAULT_SIGNALS,
            },
        }
    }

    /// The measured defaults for `embedder`: those of its kind, with the relevance gate the
    /// embedder reports for its own vectors ([`Embedder::similarity_min`]; a bge model's
    /// cosines do not sit on e5's scale although both are retrieval models).
    pub fn for_embedder(embedder: &dyn Embedder) -> RetrievalPolicy {
        RetrievalPolicy {
            similarity_min: embedder.similarity_min(),
            ..RetrievalPolicy::for_kind(embedder.kind())
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
        let g = &self.signals;
        unit("date_boost_day", g.date_boost_day)?;
        unit("date_boost_month", g.date_boost_month)?;
        unit("date_boost_year", g.date_boost_year)?;
        unit("session_weight", g.session_weight)?;
        unit("neighbour_weight", g.neighbour_weight)?;
        unit("question_penalty", g.question_penalty)?;
        if g.date_window_days > 366 {
            return Err(format!(
                "date_window_days {} is outside 0..=366",
                g.date_window_days
            ));
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

    /// An embedder that reports no gate of its own (as a bge model does).
    struct Unmeasured;

    impl Embedder for Unmeasured {
        fn id(&self) -> &str {
            "unmeasured"
        }
        fn dim(&self) -> usize {
            2
        }
        fn kind(&self) -> EmbedderKind {
            EmbedderKind::Retrieval
        }
        fn embed_batch(&self, texts: &[&str]) -> crate::Result<Vec<Vec<f32>>> {
            Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
        }
        fn similarity_min(&self) -> Option<f32> {
            None
        }
    }

    /// The gate comes from the embedder (its kind's measured value unless it says
    /// otherwise); every other knob from its kind.
    #[test]
    fn the_gate_follows_the_embedder() {
        let builtin = RetrievalPolicy::for_embedder(&crate::BuiltinEmbedder::new());
        assert_eq!(builtin, RetrievalPolicy::for_kind(EmbedderKind::Lexical));
        let unmeasured = RetrievalPolicy::for_embedder(&Unmeasured);
        assert_eq!(unmeasured.similarity_min, None);
        assert_eq!(
            RetrievalPolicy::for_kind(EmbedderKind::Retrieval).similarity_min,
            Some(SIMILARITY_MIN_RETRIEVAL)
        );
        assert_eq!(
            unmeasured.fusion,
            RetrievalPolicy::for_kind(EmbedderKind::Retrieval).fusion
        );
    }

    #[test]
    fn defaults_are_valid_and_follow_the_embedder_kind() {
        for kind in [
            EmbedderKind::Lexical,
            EmbedderKind::Static,
            EmbedderKind::Transformer,
            EmbedderKind::Retrieval,
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
        for (signals, field) in [
            (
                Signals {
                    date_boost_month: 1.5,
                    ..DEFAULT_SIGNALS
                },
                "date_boost_month",
            ),
            (
                Signals {
                    neighbour_weight: f32::NAN,
                    ..DEFAULT_SIGNALS
                },
                "neighbour_weight",
            ),
            (
                Signals {
                    question_penalty: -0.1,
                    ..DEFAULT_SIGNALS
                },
                "question_penalty",
            ),
            (
                Signals {
                    date_window_days: 400,
                    ..DEFAULT_SIGNALS
                },
                "date_window_days",
            ),
        ] {
            let bad = RetrievalPolicy { signals, ..base };
            assert!(bad.validate().unwrap_err().contains(field), "{field}");
        }
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
