//! Hybrid ranking: merges the vector and the lexical result lists of one query into one list
//! with scores in `[0, 1]`, plus the caller's small prior (recency, session boost).

use std::collections::HashMap;

/// How two ranked lists become one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusionMethod {
    /// Reciprocal-rank fusion: `Σ wᵢ / (k0 + rankᵢ)` (rank 1-based). Uses ranks only, so it
    /// is immune to the different scales of cosine and BM25.
    Rrf {
        k0: f32,
        vector_weight: f32,
        lexical_weight: f32,
    },
    /// Weighted sum of scores min-max normalised within each list (a list's best is 1, its
    /// worst 0; a single-item list scores 1). Keeps how far ahead the leader is.
    Weighted {
        vector_weight: f32,
        lexical_weight: f32,
    },
}

/// How the weighted fusion scales the vector list's cosines into `[0, 1]` (the BM25 list is
/// always min-max scaled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorNorm {
    /// The list's best cosine is 1, its worst 0.
    MinMax,
    /// Standard scores within the list, `(s − mean) / std`, divided by [`Z_SPAN`] and clamped
    /// to `[0, 1]`: a cosine at or below the list's mean counts 0, one `Z_SPAN` deviations
    /// above it 1. Unlike min-max it does not stretch a list whose cosines all lie close
    /// together (a retrieval model's cosines span a few hundredths) to the full range, nor
    /// let one outlying best cosine squash the rest.
    ZScore,
}

/// Standard deviations above the list's mean that [`VectorNorm::ZScore`] maps to 1.
pub const Z_SPAN: f32 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionParams {
    pub method: FusionMethod,
    /// How the weighted fusion scales cosines (unused by RRF, which reads ranks).
    pub vector_norm: VectorNorm,
    /// The prior is clamped to `[0, prior_max]`; final score = `(fused + prior) / (1 +
    /// prior_max)` so it stays in `[0, 1]` and the prior can only nudge, never dominate.
    pub prior_max: f32,
}

/// The default, chosen by measurement on the LoCoMo dev harness (`docs/benchmarks.md`):
/// with the built-in (lexical) embedder, the vector list mostly repeats BM25 with more noise,
/// so it gets a small weight. Rank fusion with equal weights cost 8–11 points of recall@10
/// there; a weighted sum with vector weight 0.1–0.3 is within a point of BM25 alone and has
/// the best MRR. A semantic embedder would deserve a larger vector weight (re-measure).
pub const DEFAULT_FUSION: FusionParams = FusionParams {
    method: FusionMethod::Weighted {
        vector_weight: 0.2,
        lexical_weight: 0.8,
    },
    vector_norm: VectorNorm::MinMax,
    prior_max: 0.1,
};

/// The fusion of the built-in (lexical) embedder since the recall signals
/// (`policy::Signals`): with them, leave-one-conversation-out tuning on LoCoMo chose a vector
/// weight of 0.05–0.1 in every fold (0.2 in none); the vector list keeps a little weight for
/// the embedder's tolerance of typos and word forms.
pub const LEXICAL_EMBEDDER_FUSION: FusionParams = FusionParams {
    method: FusionMethod::Weighted {
        vector_weight: 0.1,
        lexical_weight: 0.9,
    },
    vector_norm: VectorNorm::MinMax,
    prior_max: 0.1,
};

/// Fuses with [`DEFAULT_FUSION`]. Inputs are `(memory id, score)` sorted best first;
/// returns up to `k` `(id, score)` with score in `[0, 1]`, best first (ties by id).
pub fn fuse(
    vector: &[(u64, f32)],
    lexical: &[(u64, f32)],
    prior: &dyn Fn(u64) -> f32,
    k: usize,
) -> Vec<(u64, f32)> {
    fuse_with(&DEFAULT_FUSION, vector, lexical, prior, k)
}

/// [`fuse`] with explicit parameters (the harness compares methods with this).
pub fn fuse_with(
    params: &FusionParams,
    vector: &[(u64, f32)],
    lexical: &[(u64, f32)],
    prior: &dyn Fn(u64) -> f32,
    k: usize,
) -> Vec<(u64, f32)> {
    let mut fused: HashMap<u64, f32> = HashMap::with_capacity(vector.len() + lexical.len());
    match params.method {
        FusionMethod::Rrf {
            k0,
            vector_weight,
            lexical_weight,
        } => {
            let k0 = k0.max(0.0);
            let (wv, wl) = (vector_weight.max(0.0), lexical_weight.max(0.0));
            // The best possible sum (first in both lists) maps to 1.
            let best = (wv + wl) / (k0 + 1.0);
            for (list, w) in [(vector, wv), (lexical, wl)] {
                for (rank, &(id, _)) in first_occurrences(list).enumerate() {
                    let add = if best > 0.0 {
                        w / (k0 + 1.0 + rank as f32) / best
                    } else {
                        0.0
                    };
                    *fused.entry(id).or_insert(0.0) += add;
                }
            }
        }
        FusionMethod::Weighted {
            vector_weight,
            lexical_weight,
        } => {
            let (wv, wl) = (vector_weight.max(0.0), lexical_weight.max(0.0));
            let total = wv + wl;
            for (list, w, norm) in [
                (vector, wv, params.vector_norm),
                (lexical, wl, VectorNorm::MinMax),
            ] {
                let scale = Scale::of(list, norm);
                for &(id, s) in first_occurrences(list) {
                    let add = if total > 0.0 {
                        w * scale.apply(s) / total
                    } else {
                        0.0
                    };
                    *fused.entry(id).or_insert(0.0) += add;
                }
            }
        }
    }
    let prior_max = params.prior_max.max(0.0);
    let mut out: Vec<(u64, f32)> = fused
        .into_iter()
        .map(|(id, s)| {
            let p = prior(id);
            let p = if p.is_finite() {
                p.clamp(0.0, prior_max)
            } else {
                0.0
            };
            (id, ((s + p) / (1.0 + prior_max)).clamp(0.0, 1.0))
        })
        .collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

/// How one list's scores map into `[0, 1]` (see [`VectorNorm`]); non-finite scores map to 0.
enum Scale {
    MinMax { lo: f32, hi: f32 },
    ZScore { mean: f32, std: f32 },
}

impl Scale {
    fn of(list: &[(u64, f32)], norm: VectorNorm) -> Scale {
        let finite = || list.iter().map(|h| h.1).filter(|s| s.is_finite());
        match norm {
            VectorNorm::MinMax => {
                let (lo, hi) = finite().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), s| {
                    (lo.min(s), hi.max(s))
                });
                Scale::MinMax { lo, hi }
            }
            VectorNorm::ZScore => {
                let n = finite().count().max(1) as f32;
                let mean = finite().sum::<f32>() / n;
                let var = finite().map(|s| (s - mean) * (s - mean)).sum::<f32>() / n;
                Scale::ZScore {
                    mean,
                    std: var.sqrt(),
                }
            }
        }
    }

    fn apply(&self, s: f32) -> f32 {
        if !s.is_finite() {
            return 0.0;
        }
        match *self {
            Scale::MinMax { lo, hi } if hi > lo => (s - lo) / (hi - lo),
            Scale::MinMax { .. } => 1.0,
            // A list of equal scores (or one score): all count as its best, as in min-max.
            Scale::ZScore { std, .. } if !(std > f32::EPSILON) => 1.0,
            Scale::ZScore { mean, std } => ((s - mean) / std / Z_SPAN).clamp(0.0, 1.0),
        }
    }
}

/// The list without repeated ids (a caller merging segments might repeat one); the first,
/// best-ranked occurrence counts.
fn first_occurrences(list: &[(u64, f32)]) -> impl Iterator<Item = &(u64, f32)> {
    let mut seen = std::collections::HashSet::new();
    list.iter().filter(move |(id, _)| seen.insert(*id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NO_PRIOR: &dyn Fn(u64) -> f32 = &|_| 0.0;

    fn methods() -> [FusionParams; 3] {
        [
            DEFAULT_FUSION,
            FusionParams {
                vector_norm: VectorNorm::ZScore,
                ..DEFAULT_FUSION
            },
            FusionParams {
                method: FusionMethod::Rrf {
                    k0: 60.0,
                    vector_weight: 1.0,
                    lexical_weight: 1.0,
                },
                vector_norm: VectorNorm::MinMax,
                prior_max: 0.1,
            },
        ]
    }

    #[test]
    fn agreement_beats_a_single_list() {
        for p in methods() {
            let v = [(1, 0.9), (2, 0.8), (3, 0.1)];
            let l = [(2, 12.0), (4, 11.0), (1, 1.0)];
            let out = fuse_with(&p, &v, &l, NO_PRIOR, 10);
            assert_eq!(out.len(), 4);
            assert!(out[0].0 == 1 || out[0].0 == 2, "{p:?}: {out:?}");
            let pos = |id| out.iter().position(|h| h.0 == id).expect("present");
            assert!(pos(2) < pos(4) && pos(2) < pos(3));
        }
    }

    #[test]
    fn prior_breaks_ties_but_stays_small() {
        let v = [(1, 0.5), (2, 0.5)];
        let out = fuse(&v, &[], &|id| if id == 2 { 0.05 } else { 0.0 }, 2);
        assert_eq!(
            out[0].0, 2,
            "a prior lifts the runner-up of a near tie: {out:?}"
        );
        assert!(out[1].1 > 0.0);
        // A huge prior is clamped: it cannot lift a 50th-ranked item over the leader.
        let many: Vec<(u64, f32)> = (1..=50).map(|i| (i, 1.0 - i as f32 / 100.0)).collect();
        let out = fuse(&many, &many, &|id| if id == 50 { 1e9 } else { 0.0 }, 1);
        assert_eq!(out[0].0, 1);
    }

    #[test]
    fn empty_and_degenerate_inputs() {
        for p in methods() {
            assert!(fuse_with(&p, &[], &[], NO_PRIOR, 10).is_empty());
            assert!(fuse_with(&p, &[(1, 1.0)], &[], NO_PRIOR, 0).is_empty());
            let out = fuse_with(
                &p,
                &[(1, f32::NAN), (2, 0.3)],
                &[(1, 0.0)],
                &|_| f32::NAN,
                5,
            );
            assert!(out.iter().all(|h| (0.0..=1.0).contains(&h.1)));
        }
    }

    /// Z-scored cosines: at or below the list's mean count 0, the rest rise with their
    /// standard score, so a close runner-up stays close to the leader (min-max would put
    /// the list's worst at 0 and spread the rest over the whole range).
    #[test]
    fn z_scored_cosines() {
        let z = FusionParams {
            vector_norm: VectorNorm::ZScore,
            ..DEFAULT_FUSION
        };
        let v = [
            (1, 0.86),
            (2, 0.85),
            (3, 0.80),
            (4, 0.80),
            (5, 0.79),
            (6, 0.79),
        ];
        let only_vector = |p: &FusionParams| -> Vec<(u64, f32)> {
            let p = FusionParams {
                method: FusionMethod::Weighted {
                    vector_weight: 1.0,
                    lexical_weight: 0.0,
                },
                prior_max: 0.0,
                ..*p
            };
            fuse_with(&p, &v, &[], NO_PRIOR, 10)
        };
        let out = only_vector(&z);
        let score = |out: &[(u64, f32)], id| out.iter().find(|h| h.0 == id).expect("present").1;
        // Mean 0.815, std ≈ 0.029: 0.86 is 1.55 deviations up, 0.80 below the mean.
        assert!((score(&out, 1) - 1.55 / Z_SPAN).abs() < 0.02, "{out:?}");
        assert!(score(&out, 2) > 0.75 * score(&out, 1), "{out:?}");
        for id in 3..=6 {
            assert_eq!(score(&out, id), 0.0, "{out:?}");
        }
        let min_max = only_vector(&DEFAULT_FUSION);
        assert_eq!(score(&min_max, 1), 1.0);
        assert!(score(&min_max, 3) > 0.0, "{min_max:?}");
    }

    fn list() -> impl Strategy<Value = Vec<(u64, f32)>> {
        prop::collection::vec((0u64..40, -1.0f32..30.0), 0..30).prop_map(|mut v| {
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        })
    }

    proptest! {
        #[test]
        fn scores_in_unit_interval_sorted_unique_and_bounded(
            v in list(), l in list(), k in 0usize..50, prior in 0.0f32..1.0, m in 0usize..3,
        ) {
            let p = methods()[m];
            let out = fuse_with(&p, &v, &l, &|id| prior * (id % 3) as f32, k);
            let mut ids: Vec<u64> = v.iter().chain(&l).map(|h| h.0).collect();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(out.len(), k.min(ids.len()));
            for h in &out {
                prop_assert!((0.0..=1.0).contains(&h.1));
                prop_assert!(ids.binary_search(&h.0).is_ok());
            }
            for w in out.windows(2) {
                prop_assert!(w[0].1 >= w[1].1);
                prop_assert!(w[0].0 != w[1].0);
            }
        }

        #[test]
        fn the_top_of_both_lists_wins_without_prior(v in list(), m in 0usize..3) {
            prop_assume!(v.len() == 1 || (v.len() > 1 && v[0].1 > v[1].1));
            let p = methods()[m];
            let out = fuse_with(&p, &v, &v, NO_PRIOR, 1);
            prop_assert_eq!(out[0].0, v[0].0);
        }
    }
}
