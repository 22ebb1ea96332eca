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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusionParams {
    pub method: FusionMethod,
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
            for (list, w) in [(vector, wv), (lexical, wl)] {
                let (lo, hi) = list
                    .iter()
                    .filter(|(_, s)| s.is_finite())
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(_, s)| {
                        (lo.min(s), hi.max(s))
                    });
                for &(id, s) in first_occurrences(list) {
                    let norm = if !s.is_finite() {
                        0.0
                    } else if hi > lo {
                        (s - lo) / (hi - lo)
                    } else {
                        1.0
                    };
                    let add = if total > 0.0 { w * norm / total } else { 0.0 };
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

    fn methods() -> [FusionParams; 2] {
        [
            DEFAULT_FUSION,
            FusionParams {
                method: FusionMethod::Rrf {
                    k0: 60.0,
                    vector_weight: 1.0,
                    lexical_weight: 1.0,
                },
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

    fn list() -> impl Strategy<Value = Vec<(u64, f32)>> {
        prop::collection::vec((0u64..40, -1.0f32..30.0), 0..30).prop_map(|mut v| {
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            v
        })
    }

    proptest! {
        #[test]
        fn scores_in_unit_interval_sorted_unique_and_bounded(
            v in list(), l in list(), k in 0usize..50, prior in 0.0f32..1.0, rrf in any::<bool>(),
        ) {
            let p = methods()[usize::from(!rrf)];
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
        fn the_top_of_both_lists_wins_without_prior(v in list(), rrf in any::<bool>()) {
            prop_assume!(v.len() == 1 || (v.len() > 1 && v[0].1 > v[1].1));
            let p = methods()[usize::from(!rrf)];
            let out = fuse_with(&p, &v, &v, NO_PRIOR, 1);
            prop_assert_eq!(out[0].0, v[0].0);
        }
    }
}
