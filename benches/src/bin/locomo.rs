//! LoCoMo retrieval-quality harness (issue 6, item 7).
//!
//! `cargo run -p benches --release --bin locomo -- ../shared/data/locomo-dev.json [--sweep]`
//!
//! For every conversation: one memory per turn (`speaker: text`, plus the image caption if
//! any; session id `session_N`; created_at from `session_N_date_time`), a fresh index, then
//! every category 1–4 question as a query. Reports evidence recall@5, recall@10, MRR@10 and
//! p50/p95 latency of the retrieval call, overall and per category, for BM25 alone, the
//! built-in embedder alone (exact cosine), and the fused ranking — side by side in one run.
//! `--sweep` adds fusion variants (used to choose `engine::fusion::DEFAULT_FUSION`).

use anyhow::{Context, Result, bail};
use benches::locomo::{Conversation, load};
use engine::fusion::{DEFAULT_FUSION, FusionMethod, FusionParams, fuse_with};
use engine::lexical::{LexicalSource, MemLexical, bm25};
use engine::{BuiltinEmbedder, Embedder};
use std::time::Instant;

/// How many candidates each list contributes to fusion (the vault uses the same idea).
const FUSION_CANDIDATES: usize = 50;
const K_MAX: usize = 10;

/// One conversation indexed every way we compare.
struct Indexed<'a> {
    embedder: &'a BuiltinEmbedder,
    vectors: Vec<Vec<f32>>,
    lexical: MemLexical,
}

impl<'a> Indexed<'a> {
    fn new(embedder: &'a BuiltinEmbedder, conv: &Conversation) -> Self {
        let mut lexical = MemLexical::new();
        let mut vectors = Vec::with_capacity(conv.turns.len());
        for (i, turn) in conv.turns.iter().enumerate() {
            lexical.add(i as u32, &turn.text);
            vectors.push(embedder.embed(&turn.text));
        }
        Self {
            embedder,
            vectors,
            lexical,
        }
    }

    fn lexical(&self, query: &str, k: usize) -> Vec<(u64, f32)> {
        let sources: [&dyn LexicalSource; 1] = [&self.lexical];
        bm25(&sources, query, k, &|_, _| true)
            .into_iter()
            .map(|(_, d, s)| (u64::from(d), s))
            .collect()
    }

    fn vector(&self, query: &str, k: usize) -> Vec<(u64, f32)> {
        let q = self.embedder.embed(query);
        let mut hits: Vec<(u64, f32)> = self
            .vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.iter().zip(&q).map(|(a, b)| a * b).sum()))
            .collect();
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }

    fn fused(&self, params: &FusionParams, query: &str, k: usize) -> Vec<(u64, f32)> {
        let v = self.vector(query, FUSION_CANDIDATES);
        let l = self.lexical(query, FUSION_CANDIDATES);
        fuse_with(params, &v, &l, &|_| 0.0, k)
    }
}

/// Accumulated metrics for one method, per category (index 0 = overall, 1..=4).
#[derive(Default, Clone)]
struct Tally {
    questions: [usize; 5],
    recall5: [f64; 5],
    recall10: [f64; 5],
    mrr: [f64; 5],
    latencies_us: Vec<f64>,
}

impl Tally {
    fn add(&mut self, category: usize, evidence: &[usize], ranked: &[u64], micros: f64) {
        let found = |k: usize| {
            evidence
                .iter()
                .filter(|e| ranked.iter().take(k).any(|r| *r == **e as u64))
                .count() as f64
                / evidence.len() as f64
        };
        let rr = ranked
            .iter()
            .take(K_MAX)
            .position(|r| evidence.contains(&(*r as usize)))
            .map_or(0.0, |p| 1.0 / (p as f64 + 1.0));
        for c in [0, category] {
            self.questions[c] += 1;
            self.recall5[c] += found(5);
            self.recall10[c] += found(10);
            self.mrr[c] += rr;
        }
        self.latencies_us.push(micros);
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_us.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        bail!("usage: locomo <locomo-dev.json> [--sweep]");
    };
    let sweep = args.iter().any(|a| a == "--sweep");
    let misses = args.iter().any(|a| a == "--misses");
    let conversations = load(path).with_context(|| format!("loading {path}"))?;
    let embedder = BuiltinEmbedder::new();

    let mut methods: Vec<(String, Option<FusionParams>)> = vec![
        ("bm25".into(), None),
        ("embedder".into(), None),
        ("fused".into(), Some(DEFAULT_FUSION)),
    ];
    if sweep {
        for k0 in [10.0, 30.0, 60.0] {
            for (wv, wl) in [(1.0, 1.0), (0.7, 1.0), (1.0, 0.7)] {
                let method = FusionMethod::Rrf {
                    k0,
                    vector_weight: wv,
                    lexical_weight: wl,
                };
                methods.push((
                    format!("rrf k0={k0} v={wv} l={wl}"),
                    Some(FusionParams {
                        method,
                        prior_max: 0.1,
                    }),
                ));
            }
        }
        for wv in [0.3, 0.5, 0.7] {
            let method = FusionMethod::Weighted {
                vector_weight: wv,
                lexical_weight: 1.0 - wv,
            };
            methods.push((
                format!("weighted v={wv}"),
                Some(FusionParams {
                    method,
                    prior_max: 0.1,
                }),
            ));
        }
    }
    let mut tallies = vec![Tally::default(); methods.len()];
    let (mut turns, mut dropped_evidence) = (0usize, 0usize);
    let build_start = Instant::now();
    for conv in &conversations {
        let index = Indexed::new(&embedder, conv);
        turns += conv.turns.len();
        for qa in conv
            .questions
            .iter()
            .filter(|q| (1..=4).contains(&q.category))
        {
            dropped_evidence += qa.unknown_evidence;
            if qa.evidence.is_empty() {
                continue;
            }
            for (m, (name, params)) in methods.iter().enumerate() {
                let start = Instant::now();
                let ranked = match (name.as_str(), params) {
                    ("bm25", _) => index.lexical(&qa.question, K_MAX),
                    ("embedder", _) => index.vector(&qa.question, K_MAX),
                    (_, Some(p)) => index.fused(p, &qa.question, K_MAX),
                    (_, None) => unreachable!("every fused method has parameters"),
                };
                let micros = start.elapsed().as_secs_f64() * 1e6;
                let ids: Vec<u64> = ranked.iter().map(|h| h.0).collect();
                if misses && m == 0 && !qa.evidence.iter().all(|e| ids.contains(&(*e as u64))) {
                    println!("MISS [{}] {}", qa.category, qa.question);
                    for e in &qa.evidence {
                        let rank = ids.iter().position(|i| *i == *e as u64);
                        println!("   want {rank:?}: {}", conv.turns[*e].text);
                    }
                    if let Some(top) = ids.first() {
                        println!("   top: {}", conv.turns[*top as usize].text);
                    }
                }
                tallies[m].add(qa.category, &qa.evidence, &ids, micros);
            }
        }
    }
    println!(
        "LoCoMo dev: {} conversations, {turns} turns, {} questions (cat 1-4), {dropped_evidence} evidence ids not found among the turns; indexing {:.0} ms",
        conversations.len(),
        tallies[0].questions[0],
        build_start.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "{:<26} {:>5} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "method", "cat", "R@5", "R@10", "MRR", "p50 µs", "p95 µs"
    );
    for ((name, _), t) in methods.iter().zip(&tallies) {
        for c in 0..5 {
            let n = t.questions[c] as f64;
            if n == 0.0 {
                continue;
            }
            let label = if c == 0 {
                "all".to_string()
            } else {
                c.to_string()
            };
            let (p50, p95) = if c == 0 {
                (t.percentile(0.5), t.percentile(0.95))
            } else {
                (f64::NAN, f64::NAN)
            };
            println!(
                "{name:<26} {label:>5} {:>7.3} {:>7.3} {:>7.3} {p50:>8.1} {p95:>8.1}",
                t.recall5[c] / n,
                t.recall10[c] / n,
                t.mrr[c] / n
            );
            if sweep && c == 0 && !matches!(name.as_str(), "bm25" | "embedder" | "fused") {
                break;
            }
        }
    }
    Ok(())
}
