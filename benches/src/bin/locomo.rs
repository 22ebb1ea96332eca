//! LoCoMo retrieval-quality harness (issue 6, item 7).
//!
//! Long (~770 lines): one harness binary, its variants (sweeps, misses, cosines)
//! sharing the loaders and scorers.
//!
//! `cargo run -p benches --release --bin locomo -- PATH/TO/locomo-dev.json [--loco] [--sweep] [--misses] [--model DIR]`
//!
//! `locomo-dev.json` is the LoCoMo dev split; it is not distributed with the project, so pass
//! its path.
//!
//! For every conversation: one memory per turn (`speaker: text`, plus the image caption if
//! any; session id `session_N`; created_at from `session_N_date_time`), a fresh index, then
//! every category 1–4 question as a query. Reports evidence recall@5, recall@10, MRR@10 and
//! p50/p95 latency of the retrieval call, overall and per category, side by side in one run:
//!
//! - `vault`: the product — a fresh `engine::Vault` per conversation (temp dir, default
//!   config except buffered durability), `Vault::search` with `now_ms` one day after the
//!   last turn;
//! - `bm25`, `embedder` (exact cosine), `fused` (`engine::fusion::fuse`): the retrieval
//!   modules alone over the same turns, to see what each contributes;
//! - `bm25+ctx`, `fused+ctx`: the same modules when each turn is indexed together with the
//!   previous turn of its session (speaker name dropped) — what the vault does since WAL /
//!   segment format 2 (it keeps the speaker, which is part of the stored text).
//!
//! - `vault, signals off`: the same vault ranked without the recall signals
//!   (`RetrievalPolicy::signals` = `Signals::OFF`), in the same run (recall and latency
//!   before/after).
//!
//! `--loco` adds leave-one-conversation-out tuning of the fusion weight and the recall
//! signals (tuned on three conversations, scored on the fourth, for each; see
//! `leave_one_out`), the figure to report: tuning on all four overstates recall.
//! `--ablate` (with `--loco`) also scores, held out, each signal removed (the others tuned).
//! `--latency` times the vault's search with each signal alone, all, and none.
//! `--sweep` adds fusion variants (used to choose `engine::fusion::DEFAULT_FUSION`);
//! `--explore` adds other contexts (speaker kept, next turn, own text twice, two previous
//! turns) and pseudo-relevance feedback (RM3-style expansion from the top BM25 docs);
//! `--misses` prints the questions BM25 misses.
//! `--cosines` prints how the embedder's cosine separates evidence from unrelated turns.
//! `--vector-cache DIR` keeps a model's vectors in `DIR` between runs (one file per embedder
//! id; a model takes minutes to embed the dev split on a loaded machine).
//! `--vector-mix M` (with a retrieval model such as multilingual-e5) sets what the vault
//! stores for a turn instead of the product's `Embedder::embed_memories`
//! (`engine::embedder::memory_vector`): `context` (the vector of the text with context alone;
//! also `--one-vector`), `mean` (the unit vector along the sum of that and the own text's
//! vector, the product before), `average:α` (α × context vector + (1 − α) × own vector, not
//! rescaled). `--loco-mixes M1,M2,…` runs leave-one-conversation-out with each fold also
//! choosing among those mixes on its three training conversations.
//! `--skip-embed-timing` skips timing the embedder on every 8th turn.
//! `--model DIR` runs every row (the vault included) with `engine::LocalModelEmbedder` loaded
//! from `DIR` (model2vec or BERT, e.g. all-MiniLM-L6-v2) instead of the built-in embedder.

use anyhow::{Context, Result, bail};
use benches::locomo::{Conversation, load};
use engine::analyzer::analyze;
use engine::fusion::{DEFAULT_FUSION, FusionMethod, FusionParams, fuse_with};
use engine::lexical::{LexicalSource, MemLexical, bm25};
use engine::{
    BuiltinEmbedder, Durability, Embedder, Engine, EngineConfig, Filter, LocalModelEmbedder,
    NewMemory, RetrievalPolicy, Role, SearchQuery, Signals, Vault,
};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Rows of the table with a per-category breakdown (the ones `methods` always lists).
const FIXED_ROWS: usize = 7;
/// How many candidates each list contributes to fusion in the module-level rows.
const FUSION_CANDIDATES: usize = 40;
const K_MAX: usize = 10;
const MS_PER_DAY: i64 = 86_400_000;

/// One conversation indexed by the retrieval modules directly (no vault).
struct Indexed<'a> {
    embedder: &'a dyn Embedder,
    vectors: Vec<Vec<f32>>,
    lexical: MemLexical,
}

impl<'a> Indexed<'a> {
    fn new(embedder: &'a dyn Embedder, texts: &[String]) -> Self {
        let mut lexical = MemLexical::new();
        for (i, text) in texts.iter().enumerate() {
            lexical.add(i as u32, text);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embedder.embed_batch(&refs).expect("embed the turns");
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
        let q = embed_query(self.embedder, query);
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

    /// Pseudo-relevance feedback, RM3-style: the `prf.terms` terms weighing most in the top
    /// `prf.docs` BM25 docs (term share of the doc × the doc's relative score × idf) form a
    /// second query; a doc scores `bm25(query) + prf.lambda × bm25(expansion)`.
    fn prf(&self, texts: &[String], prf: Prf, query: &str, k: usize) -> Vec<(u64, f32)> {
        let first = self.lexical(query, PRF_CANDIDATES);
        let Some(&(_, top)) = first.first() else {
            return first;
        };
        let asked: HashSet<String> = analyze(query).into_iter().collect();
        let mut weight: HashMap<String, f32> = HashMap::new();
        for &(doc, score) in first.iter().take(prf.docs) {
            let terms = analyze(&texts[doc as usize]);
            let len = terms.len().max(1) as f32;
            for t in terms.into_iter().filter(|t| !asked.contains(t)) {
                *weight.entry(t).or_default() += score / top / len;
            }
        }
        let n = self.lexical.n_docs() as f32;
        let mut expansion: Vec<(String, f32)> = weight
            .into_iter()
            // An analyzed term must analyze to itself to be usable as query text.
            .filter(|(t, _)| analyze(t).as_slice() == std::slice::from_ref(t))
            .map(|(t, w)| {
                let df = self.lexical.doc_freq(&t) as f32;
                let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                (t, w * idf)
            })
            .collect();
        expansion.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        expansion.truncate(prf.terms);
        let second_query: Vec<&str> = expansion.iter().map(|(t, _)| t.as_str()).collect();
        let second = self.lexical(&second_query.join(" "), PRF_CANDIDATES);
        let mut scores: HashMap<u64, f32> = first.into_iter().collect();
        for (doc, s) in second {
            *scores.entry(doc).or_default() += prf.lambda * s;
        }
        let mut hits: Vec<(u64, f32)> = scores.into_iter().collect();
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }
}

/// Candidates each pass of pseudo-relevance feedback contributes.
const PRF_CANDIDATES: usize = 100;

/// Pseudo-relevance feedback settings.
#[derive(Clone, Copy, Debug)]
struct Prf {
    docs: usize,
    terms: usize,
    lambda: f32,
}

/// The product path: a fresh vault holding the conversation, and memory id → turn index.
struct VaultIndex {
    _dir: tempfile::TempDir,
    vault: Arc<Vault>,
    turn_of: HashMap<u64, u64>,
    now_ms: i64,
}

impl VaultIndex {
    fn new(conv: &Conversation, embedder: Arc<dyn Embedder>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = EngineConfig::new(dir.path().to_path_buf());
        config.embedder = embedder;
        // Durability does not change what is retrieved; buffered keeps the harness quick.
        config.durability = Durability::Buffered;
        let engine = Engine::open(config)?;
        let vault = engine.vault("locomo")?;
        let mut turn_of = HashMap::new();
        // One ingest per turn so every stored id (one per chunk) maps to its turn.
        for (i, turn) in conv.turns.iter().enumerate() {
            let outcome = vault.ingest(vec![NewMemory::new(
                turn.session_id.as_str(),
                Role::User,
                turn.text.as_str(),
                turn.created_at_ms,
            )])?;
            for id in outcome.stored {
                turn_of.insert(id, i as u64);
            }
        }
        let now_ms = conv
            .turns
            .iter()
            .map(|t| t.created_at_ms)
            .max()
            .unwrap_or(0)
            + MS_PER_DAY;
        Ok(Self {
            _dir: dir,
            vault,
            turn_of,
            now_ms,
        })
    }

    /// The turns `policy` ranks for `query` (the vault's own policy when `None`).
    fn search(
        &self,
        query: &str,
        k: usize,
        policy: Option<&RetrievalPolicy>,
    ) -> Result<Vec<(u64, f32)>> {
        let q = SearchQuery {
            text: query.to_owned(),
            k,
            filter: Filter::default(),
            boost_session: None,
            now_ms: self.now_ms,
        };
        let hits = match policy {
            Some(p) => self.vault.search_with(&q, p)?,
            None => self.vault.search(&q)?,
        };
        let mut out: Vec<(u64, f32)> = Vec::new();
        for hit in hits {
            if let Some(&turn) = self.turn_of.get(&hit.memory.id)
                && !out.iter().any(|(t, _)| *t == turn)
            {
                out.push((turn, hit.score));
            }
        }
        Ok(out)
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

    /// Adds `other`'s questions (latencies are not kept: a merged tally is for recall).
    fn merge(&mut self, other: &Tally) {
        for c in 0..5 {
            self.questions[c] += other.questions[c];
            self.recall5[c] += other.recall5[c];
            self.recall10[c] += other.recall10[c];
            self.mrr[c] += other.mrr[c];
        }
    }

    /// (R@5, R@10, MRR) of category `c` (0 = all).
    fn rates(&self, c: usize) -> (f64, f64, f64) {
        let n = self.questions[c].max(1) as f64;
        (self.recall5[c] / n, self.recall10[c] / n, self.mrr[c] / n)
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

/// What one row of the table runs.
#[derive(Clone, Copy)]
enum Method {
    Vault,
    /// The vault ranked by another policy (`Vault::search_with`).
    VaultWith(RetrievalPolicy),
    Bm25 {
        context: bool,
    },
    Embedder,
    Fused {
        params: FusionParams,
        context: bool,
    },
    /// The own text's vector (no context) fused with BM25 over the previous-turn context:
    /// a semantic embedder's mean pooling may be diluted by the context.
    FusedSplit(FusionParams),
    /// BM25 over the `n`-th `--explore` text variant (see `variants`).
    Bm25Variant(usize),
    /// Pseudo-relevance feedback over the previous-turn context index, or over the
    /// `PRF_VARIANT` index when the flag is set.
    Prf(Prf, bool),
    /// Two vectors per turn (its text with the previous turn, and its own text) and BM25
    /// over the context: each list min-max normalised, summed with these weights
    /// (lexical, context vector, own vector). What issue 13's Python replica found best for
    /// multilingual-e5.
    TwoVectors([f32; 3]),
}

/// [`Method::TwoVectors`]: the weighted sum of the min-max normalised lists.
fn fuse_three(lists: [&[(u64, f32)]; 3], weights: [f32; 3], k: usize) -> Vec<(u64, f32)> {
    let mut fused: HashMap<u64, f32> = HashMap::new();
    for (list, w) in lists.iter().zip(weights) {
        let hi = list.iter().map(|h| h.1).fold(f32::NEG_INFINITY, f32::max);
        let lo = list.iter().map(|h| h.1).fold(f32::INFINITY, f32::min);
        for &(id, score) in *list {
            let norm = if hi > lo {
                (score - lo) / (hi - lo)
            } else {
                1.0
            };
            *fused.entry(id).or_default() += w * norm;
        }
    }
    let mut out: Vec<(u64, f32)> = fused.into_iter().collect();
    out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

/// How each turn is indexed in an `--explore` variant.
#[derive(Clone, Copy)]
struct Variant {
    previous: usize,
    next: bool,
    own_times: usize,
    keep_speaker: bool,
}

const VARIANTS: [(&str, Variant); 6] = [
    (
        "bm25+ctx speaker kept",
        Variant {
            previous: 1,
            next: false,
            own_times: 1,
            keep_speaker: true,
        },
    ),
    (
        "bm25+ctx+next",
        Variant {
            previous: 1,
            next: true,
            own_times: 1,
            keep_speaker: false,
        },
    ),
    (
        "bm25+ctx own×2",
        Variant {
            previous: 1,
            next: false,
            own_times: 2,
            keep_speaker: false,
        },
    ),
    (
        "bm25+ctx 2 previous",
        Variant {
            previous: 2,
            next: false,
            own_times: 1,
            keep_speaker: false,
        },
    ),
    (
        "bm25+ctx own×2 speaker",
        Variant {
            previous: 1,
            next: false,
            own_times: 2,
            keep_speaker: true,
        },
    ),
    (
        "bm25+ctx own×3",
        Variant {
            previous: 1,
            next: false,
            own_times: 3,
            keep_speaker: false,
        },
    ),
];
/// The `VARIANTS` entry pseudo-relevance feedback also runs on (own text twice).
const PRF_VARIANT: usize = 2;

/// Each turn's text as `variant` indexes it.
fn contextual(conv: &Conversation, variant: Variant) -> Vec<String> {
    let turns = &conv.turns;
    let said = |i: usize| {
        let t = &turns[i].text;
        if variant.keep_speaker {
            t.as_str()
        } else {
            t.split_once(": ").map_or(t.as_str(), |(_, s)| s)
        }
    };
    (0..turns.len())
        .map(|i| {
            let same = |j: usize| turns[j].session_id == turns[i].session_id;
            let mut parts: Vec<&str> = Vec::new();
            for back in (1..=variant.previous).rev() {
                if let Some(j) = i.checked_sub(back).filter(|&j| same(j)) {
                    parts.push(said(j));
                }
            }
            for _ in 0..variant.own_times {
                parts.push(&turns[i].text);
            }
            if variant.next && i + 1 < turns.len() && same(i + 1) {
                parts.push(said(i + 1));
            }
            parts.join("\n")
        })
        .collect()
}

/// Each turn's text preceded by the previous turn of the same session, without its speaker.
fn with_previous_turn(conv: &Conversation) -> Vec<String> {
    conv.turns
        .iter()
        .enumerate()
        .map(|(i, turn)| match i.checked_sub(1).map(|p| &conv.turns[p]) {
            Some(prev) if prev.session_id == turn.session_id => {
                let said = prev
                    .text
                    .split_once(": ")
                    .map_or(prev.text.as_str(), |(_, t)| t);
                format!("{said}\n{}", turn.text)
            }
            _ => turn.text.clone(),
        })
        .collect()
}

fn methods(policy: RetrievalPolicy, sweep: bool, explore: bool) -> Vec<(String, Method)> {
    let mut out = vec![
        ("vault (product)".to_string(), Method::Vault),
        (
            "vault, signals off".to_string(),
            Method::VaultWith(RetrievalPolicy {
                signals: Signals::OFF,
                ..policy
            }),
        ),
        ("bm25".into(), Method::Bm25 { context: false }),
        ("embedder".into(), Method::Embedder),
        (
            "fused".into(),
            Method::Fused {
                params: DEFAULT_FUSION,
                context: false,
            },
        ),
        ("bm25+ctx".into(), Method::Bm25 { context: true }),
        (
            "fused+ctx".into(),
            Method::Fused {
                params: DEFAULT_FUSION,
                context: true,
            },
        ),
    ];
    // The semantic-model rows: more vector weight, and two vectors per turn.
    let weighted = |v: f32| FusionParams {
        method: FusionMethod::Weighted {
            vector_weight: v,
            lexical_weight: 1.0 - v,
        },
        ..DEFAULT_FUSION
    };
    for v in [0.4, 0.5, 0.6] {
        out.push((
            format!("fused+ctx v{v}"),
            Method::Fused {
                params: weighted(v),
                context: true,
            },
        ));
        out.push((format!("split v{v}"), Method::FusedSplit(weighted(v))));
    }
    for w in [
        [0.4, 0.3, 0.3],
        [0.5, 0.25, 0.25],
        [0.4, 0.4, 0.2],
        [0.4, 0.2, 0.4],
    ] {
        out.push((
            format!("two vectors {}/{}/{}", w[0], w[1], w[2]),
            Method::TwoVectors(w),
        ));
    }
    if explore {
        for (i, (name, _)) in VARIANTS.iter().enumerate() {
            out.push((name.to_string(), Method::Bm25Variant(i)));
        }
        for docs in [3, 5] {
            for terms in [20, 40] {
                out.push((
                    format!("bm25+ctx own×2 prf d={docs} t={terms} l=0.2"),
                    Method::Prf(
                        Prf {
                            docs,
                            terms,
                            lambda: 0.2,
                        },
                        true,
                    ),
                ));
            }
        }
        for docs in [3, 5, 10] {
            for terms in [5, 10, 20] {
                for lambda in [0.2, 0.5] {
                    out.push((
                        format!("bm25+ctx prf d={docs} t={terms} l={lambda}"),
                        Method::Prf(
                            Prf {
                                docs,
                                terms,
                                lambda,
                            },
                            false,
                        ),
                    ));
                }
            }
        }
    }
    if sweep {
        let mut variants = Vec::new();
        for k0 in [10.0, 60.0] {
            for wv in [1.0, 0.5, 0.3] {
                let method = FusionMethod::Rrf {
                    k0,
                    vector_weight: wv,
                    lexical_weight: 1.0,
                };
                variants.push((format!("rrf k0={k0} v={wv} l=1"), method));
            }
        }
        for wv in [0.1, 0.2, 0.3, 0.5] {
            let method = FusionMethod::Weighted {
                vector_weight: wv,
                lexical_weight: 1.0 - wv,
            };
            variants.push((format!("weighted v={wv}"), method));
        }
        for (name, method) in &variants {
            let params = FusionParams {
                method: *method,
                ..DEFAULT_FUSION
            };
            out.push((
                format!("{name} vec own+bm25 ctx"),
                Method::FusedSplit(params),
            ));
        }
        for (name, method) in variants {
            for context in [false, true] {
                let params = FusionParams {
                    method,
                    ..DEFAULT_FUSION
                };
                let label = if context {
                    format!("{name} +ctx")
                } else {
                    name.clone()
                };
                out.push((label, Method::Fused { params, context }));
            }
        }
    }
    out
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_dir = args
        .iter()
        .position(|a| a == "--model")
        .map(|i| args.get(i + 1).context("--model needs a directory"))
        .transpose()?;
    let Some(path) = args
        .iter()
        .find(|a| !a.starts_with("--") && Some(*a) != model_dir)
    else {
        bail!(
            "usage: locomo <locomo-dev.json> [--loco [--ablate]] [--latency] [--sweep] [--explore] [--misses] [--cosines] [--model DIR]"
        );
    };
    let sweep = args.iter().any(|a| a == "--sweep");
    let explore = args.iter().any(|a| a == "--explore");
    let misses = args.iter().any(|a| a == "--misses");
    let cosines = args.iter().any(|a| a == "--cosines");
    let conversations = load(path).with_context(|| format!("loading {path}"))?;
    let raw: Arc<dyn Embedder> = match model_dir {
        Some(dir) => Arc::new(
            LocalModelEmbedder::open(std::path::Path::new(dir))
                .with_context(|| format!("loading the model in {dir}"))?,
        ),
        None => Arc::new(BuiltinEmbedder::new()),
    };
    let loco = args.iter().any(|a| a == "--loco");
    let defaults = RetrievalPolicy::for_kind(raw.kind());
    let methods = methods(defaults, sweep, explore);
    let vector_cache = args
        .iter()
        .position(|a| a == "--vector-cache")
        .and_then(|i| args.get(i + 1));
    // `--skip-embed-timing`: a loaded machine takes a minute to time a model on every 8th
    // turn, which runs that only compare recall do not need.
    let embed_us = if args.iter().any(|a| a == "--skip-embed-timing") {
        f64::NAN
    } else {
        embed_micros_per_turn(raw.as_ref(), &conversations)
    };
    // Every row embeds the same turns and questions again; a model embeds in milliseconds,
    // so with one all rows share a cache (embedders are deterministic: recall is unchanged,
    // but only the first row, the vault, pays for embedding a question in its latency).
    let mut cache_handle: Option<Arc<Cached>> = None;
    let cached: Arc<dyn Embedder> = if model_dir.is_some() {
        let cached = Arc::new(Cached {
            inner: raw,
            vectors: Mutex::new(HashMap::new()),
            mix: Mutex::new(vector_mix(&args)?),
            stored: Mutex::new(HashMap::new()),
        });
        if let Some(dir) = vector_cache {
            cached.load(&Cached::file(dir, cached.id()))?;
        }
        cache_handle = Some(Arc::clone(&cached));
        cached
    } else {
        raw
    };
    let embedder = cached.as_ref();
    let mut tallies = vec![Tally::default(); methods.len()];
    let mut turn_vectors: Vec<Vec<Vec<f32>>> = Vec::new();
    let (mut turns, mut dropped_evidence) = (0usize, 0usize);
    for conv in &conversations {
        let plain_texts: Vec<String> = conv.turns.iter().map(|t| t.text.clone()).collect();
        let plain = Indexed::new(embedder, &plain_texts);
        let context_texts = with_previous_turn(conv);
        let context = Indexed::new(embedder, &context_texts);
        let variant_texts: Vec<Vec<String>> = if explore {
            VARIANTS.iter().map(|(_, v)| contextual(conv, *v)).collect()
        } else {
            Vec::new()
        };
        let variants: Vec<Indexed<'_>> = variant_texts
            .iter()
            .map(|t| Indexed::new(embedder, t))
            .collect();
        let vault = VaultIndex::new(conv, Arc::clone(&cached))
            .with_context(|| format!("vault for {}", conv.sample_id))?;
        if cosines {
            // The vectors the vault stored (a retrieval model's mix of two texts), else the
            // own text's.
            let stored = cache_handle.as_ref().map(|c| c.stored.lock());
            turn_vectors.push(
                plain_texts
                    .iter()
                    .zip(&plain.vectors)
                    .map(|(t, v)| stored.as_ref().and_then(|s| s.get(t)).unwrap_or(v).clone())
                    .collect(),
            );
        }
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
            for (m, (_, method)) in methods.iter().enumerate() {
                let q = qa.question.as_str();
                let start = Instant::now();
                let ranked = match *method {
                    Method::Vault => vault.search(q, K_MAX, None)?,
                    Method::VaultWith(p) => vault.search(q, K_MAX, Some(&p))?,
                    Method::Bm25 { context: c } => {
                        if c { &context } else { &plain }.lexical(q, K_MAX)
                    }
                    Method::Embedder => plain.vector(q, K_MAX),
                    Method::Fused { params, context: c } => {
                        if c { &context } else { &plain }.fused(&params, q, K_MAX)
                    }
                    Method::FusedSplit(params) => fuse_with(
                        &params,
                        &plain.vector(q, FUSION_CANDIDATES),
                        &context.lexical(q, FUSION_CANDIDATES),
                        &|_| 0.0,
                        K_MAX,
                    ),
                    Method::Bm25Variant(v) => variants[v].lexical(q, K_MAX),
                    Method::TwoVectors(w) => fuse_three(
                        [
                            &context.lexical(q, FUSION_CANDIDATES),
                            &context.vector(q, FUSION_CANDIDATES),
                            &plain.vector(q, FUSION_CANDIDATES),
                        ],
                        w,
                        K_MAX,
                    ),
                    Method::Prf(prf, false) => context.prf(&context_texts, prf, q, K_MAX),
                    Method::Prf(prf, true) => {
                        variants[PRF_VARIANT].prf(&variant_texts[PRF_VARIANT], prf, q, K_MAX)
                    }
                };
                let micros = start.elapsed().as_secs_f64() * 1e6;
                let ids: Vec<u64> = ranked.iter().map(|h| h.0).collect();
                if misses && matches!(method, Method::Bm25 { context: false }) {
                    print_miss(conv, qa, &ids);
                }
                tallies[m].add(qa.category, &qa.evidence, &ids, micros);
            }
        }
    }
    println!(
        "LoCoMo dev: {} conversations, {turns} turns, {} questions (categories 1-4), {dropped_evidence} evidence ids name no turn",
        conversations.len(),
        tallies[0].questions[0],
    );
    println!(
        "embedder {}: {embed_us:.1} µs per turn (mean over every 8th turn, one thread)",
        embedder.id()
    );
    println!(
        "{:<26} {:>5} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "method", "cat", "R@5", "R@10", "MRR", "p50 µs", "p95 µs"
    );
    for (i, ((name, _), t)) in methods.iter().zip(&tallies).enumerate() {
        // The fixed rows get a per-category breakdown; sweep variants one line each.
        let categories = if i < FIXED_ROWS { 0..5 } else { 0..1 };
        for c in categories {
            let n = t.questions[c] as f64;
            if n == 0.0 {
                continue;
            }
            let label = if c == 0 {
                "all".to_string()
            } else {
                c.to_string()
            };
            let latency = if c == 0 {
                format!("{:>8.1} {:>8.1}", t.percentile(0.5), t.percentile(0.95))
            } else {
                String::new()
            };
            println!(
                "{name:<26} {label:>5} {:>7.3} {:>7.3} {:>7.3} {latency}",
                t.recall5[c] / n,
                t.recall10[c] / n,
                t.mrr[c] / n
            );
        }
    }
    if let (Some(dir), Some(cache)) = (vector_cache, &cache_handle) {
        cache.save(&Cached::file(dir, cache.id()))?;
    }
    if cosines {
        print_cosines(embedder, &conversations, &turn_vectors);
    }
    if loco {
        let ablate = args.iter().any(|a| a == "--ablate");
        leave_one_out(&conversations, &cached, defaults, ablate)?;
    }
    let mixes = loco_mixes(&args)?;
    if !mixes.is_empty() {
        let cache = cache_handle
            .as_ref()
            .context("--loco-mixes needs --model")?;
        leave_one_out_mixes(&conversations, cache, defaults, &mixes)?;
    }
    if args.iter().any(|a| a == "--latency") {
        signal_latency(&conversations, &cached, defaults)?;
    }
    Ok(())
}

/// One knob `--loco` tunes: its name, the values tried, and how it is set.
type Knob = (&'static str, &'static [f32], fn(&mut RetrievalPolicy, f32));

/// The knobs `--loco` tunes, by coordinate ascent: the fusion's vector weight (BM25 gets
/// the rest), the candidate pool (`candidates_min`) and every recall signal.
const KNOBS: [Knob; 9] = [
    (
        "vector_weight",
        &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        |p, v| {
            p.fusion.method = FusionMethod::Weighted {
                vector_weight: v,
                lexical_weight: 1.0 - v,
            }
        },
    ),
    ("candidates_min", &[40.0, 60.0, 80.0], |p, v| {
        p.candidates_min = v as usize
    }),
    ("date_boost_day", &[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], |p, v| {
        p.signals.date_boost_day = v
    }),
    (
        "date_boost_month",
        &[0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0],
        |p, v| p.signals.date_boost_month = v,
    ),
    ("date_boost_year", &[0.0, 0.05, 0.1, 0.2, 0.3], |p, v| {
        p.signals.date_boost_year = v
    }),
    ("date_window_days", &[5.0, 7.0, 10.0, 14.0, 21.0], |p, v| {
        p.signals.date_window_days = v as u32
    }),
    (
        "session_weight",
        &[0.0, 0.1, 0.2, 0.3, 0.45, 0.6],
        |p, v| p.signals.session_weight = v,
    ),
    (
        "neighbour_weight",
        &[0.0, 0.1, 0.2, 0.3, 0.45, 0.6],
        |p, v| p.signals.neighbour_weight = v,
    ),
    (
        "question_penalty",
        &[0.0, 0.1, 0.2, 0.3, 0.45, 0.6],
        |p, v| p.signals.question_penalty = v,
    ),
];

/// A signal removed in an `--ablate` run: its name and how its knobs are zeroed.
type Ablation = (&'static str, fn(&mut Signals));

/// What tuning maximises: the mean of R@5 and R@10 over the questions of the tuning
/// conversations (both are targets of issue 13).
fn objective(t: &Tally) -> f64 {
    let (r5, r10, _) = t.rates(0);
    (r5 + r10) / 2.0
}

/// Per-conversation tallies of the vault ranked by one policy, cached by policy.
struct Evaluator<'a> {
    conversations: &'a [Conversation],
    indexes: Vec<VaultIndex>,
    cache: HashMap<String, Vec<Tally>>,
}

impl Evaluator<'_> {
    fn tallies(&mut self, policy: &RetrievalPolicy) -> Result<&[Tally]> {
        let key = format!("{policy:?}");
        if !self.cache.contains_key(&key) {
            let mut out = Vec::with_capacity(self.conversations.len());
            for (conv, index) in self.conversations.iter().zip(&self.indexes) {
                let mut t = Tally::default();
                for qa in conv
                    .questions
                    .iter()
                    .filter(|q| (1..=4).contains(&q.category))
                {
                    if qa.evidence.is_empty() {
                        continue;
                    }
                    let ranked = index.search(&qa.question, K_MAX, Some(policy))?;
                    let ids: Vec<u64> = ranked.iter().map(|h| h.0).collect();
                    t.add(qa.category, &qa.evidence, &ids, 0.0);
                }
                out.push(t);
            }
            self.cache.insert(key.clone(), out);
        }
        Ok(&self.cache[&key])
    }

    /// The pooled tally of `policy` over the conversations `on`.
    fn pooled(&mut self, policy: &RetrievalPolicy, on: &[usize]) -> Result<Tally> {
        let all = self.tallies(policy)?;
        let mut t = Tally::default();
        for &c in on {
            t.merge(&all[c]);
        }
        Ok(t)
    }

    /// Coordinate ascent over [`KNOBS`] from `start`, maximising [`objective`] on the
    /// conversations `on`, until a round changes nothing (at most 3 rounds).
    fn tune(&mut self, start: RetrievalPolicy, on: &[usize]) -> Result<RetrievalPolicy> {
        self.tune_except(start, on, "")
    }

    /// [`Evaluator::tune`] leaving the knobs of the signal an ablation named (`"without
    /// dates"` and so on) as `start` has them.
    fn tune_except(
        &mut self,
        start: RetrievalPolicy,
        on: &[usize],
        ablation: &str,
    ) -> Result<RetrievalPolicy> {
        let skipped = |knob: &str| {
            let signal = knob.split('_').next().unwrap_or(knob);
            !ablation.is_empty()
                && (ablation.contains(signal)
                    || (signal == "date" && ablation.contains("dates"))
                    || (signal == "neighbour" && ablation.contains("neighbours")))
        };
        let mut best = start;
        let mut best_score = objective(&self.pooled(&best, on)?);
        for _ in 0..3 {
            let mut changed = false;
            for (name, values, set) in KNOBS {
                if skipped(name) {
                    continue;
                }
                for &v in values {
                    let mut p = best;
                    set(&mut p, v);
                    let score = objective(&self.pooled(&p, on)?);
                    // Strictly better only: ties keep the current (default-side) value.
                    if score > best_score + 1e-9 {
                        (best, best_score, changed) = (p, score, true);
                    }
                }
            }
            if !changed {
                break;
            }
        }
        Ok(best)
    }
}

/// The knobs of `p` that [`KNOBS`] tunes, on one line.
fn knobs_of(p: &RetrievalPolicy) -> String {
    let wv = match p.fusion.method {
        FusionMethod::Weighted { vector_weight, .. } | FusionMethod::Rrf { vector_weight, .. } => {
            vector_weight
        }
    };
    let g = &p.signals;
    format!(
        "vector {wv} pool {} day {} month {} year {} window {} session {} neighbour {} question {}",
        p.candidates_min,
        g.date_boost_day,
        g.date_boost_month,
        g.date_boost_year,
        g.date_window_days,
        g.session_weight,
        g.neighbour_weight,
        g.question_penalty
    )
}

/// `--loco`: leave-one-conversation-out. For each conversation, the knobs are tuned on the
/// other three (coordinate ascent from the defaults) and the tuned policy is scored on the
/// held-out one; reported per held-out conversation, pooled over all questions (each
/// scored by the policy tuned without its conversation) with a per-category breakdown, and
/// as the mean over the held-out conversations. Then, for comparison, the defaults and a
/// policy tuned on all four, both scored in-sample.
fn leave_one_out(
    conversations: &[Conversation],
    embedder: &Arc<dyn Embedder>,
    defaults: RetrievalPolicy,
    ablate: bool,
) -> Result<()> {
    let indexes = conversations
        .iter()
        .map(|c| VaultIndex::new(c, Arc::clone(embedder)))
        .collect::<Result<Vec<_>>>()?;
    let mut eval = Evaluator {
        conversations,
        indexes,
        cache: HashMap::new(),
    };
    let n = conversations.len();
    let started = Instant::now();
    println!("\nleave-one-conversation-out (tuned on the others, objective (R@5 + R@10) / 2):");
    println!(
        "{:<12} {:>5} {:>7} {:>7} {:>7}   tuned on the others",
        "held out", "n", "R@5", "R@10", "MRR"
    );
    let mut pooled = Tally::default();
    let mut macro_sum = (0.0, 0.0, 0.0);
    for (held, conv) in conversations.iter().enumerate() {
        let train: Vec<usize> = (0..n).filter(|&c| c != held).collect();
        let tuned = eval.tune(defaults, &train)?;
        let t = eval.tallies(&tuned)?[held].clone();
        let (r5, r10, mrr) = t.rates(0);
        macro_sum = (macro_sum.0 + r5, macro_sum.1 + r10, macro_sum.2 + mrr);
        println!(
            "{:<12} {:>5} {r5:>7.3} {r10:>7.3} {mrr:>7.3}   {}",
            conv.sample_id,
            t.questions[0],
            knobs_of(&tuned)
        );
        pooled.merge(&t);
    }
    let nf = n as f64;
    println!(
        "{:<12} {:>5} {:>7.3} {:>7.3} {:>7.3}",
        "mean",
        "",
        macro_sum.0 / nf,
        macro_sum.1 / nf,
        macro_sum.2 / nf
    );
    // Ablations: each signal held at 0 while the rest is tuned the same way.
    let ablations: [Ablation; 4] = [
        ("without dates", |s| {
            s.date_boost_day = 0.0;
            s.date_boost_month = 0.0;
            s.date_boost_year = 0.0;
        }),
        ("without session", |s| s.session_weight = 0.0),
        ("without neighbours", |s| s.neighbour_weight = 0.0),
        ("without question", |s| s.question_penalty = 0.0),
    ];
    let mut ablated: Vec<(String, Tally)> = Vec::new();
    if ablate {
        for (name, clear) in ablations {
            let mut pooled = Tally::default();
            for held in 0..n {
                let train: Vec<usize> = (0..n).filter(|&c| c != held).collect();
                let mut start = defaults;
                clear(&mut start.signals);
                let mut tuned = eval.tune_except(start, &train, name)?;
                clear(&mut tuned.signals);
                pooled.merge(&eval.tallies(&tuned)?[held]);
            }
            ablated.push((format!("held-out {name}"), pooled));
        }
    }
    let all: Vec<usize> = (0..n).collect();
    let in_sample = eval.tune(defaults, &all)?;
    let rows = [
        ("held-out (pooled)".to_string(), pooled),
        (
            "defaults, in-sample".to_string(),
            eval.pooled(&defaults, &all)?,
        ),
        (
            "signals off, in-sample".to_string(),
            eval.pooled(
                &RetrievalPolicy {
                    signals: Signals::OFF,
                    ..defaults
                },
                &all,
            )?,
        ),
        (
            "tuned on all, in-sample".to_string(),
            eval.pooled(&in_sample, &all)?,
        ),
    ];
    println!(
        "{:<26} {:>5} {:>7} {:>7} {:>7}",
        "vault", "cat", "R@5", "R@10", "MRR"
    );
    for (name, t) in rows.iter().chain(&ablated) {
        for c in 0..5 {
            let (r5, r10, mrr) = t.rates(c);
            let label = if c == 0 {
                "all".to_string()
            } else {
                c.to_string()
            };
            println!("{name:<26} {label:>5} {r5:>7.3} {r10:>7.3} {mrr:>7.3}");
        }
    }
    println!("defaults:          {}", knobs_of(&defaults));
    println!("tuned on all four: {}", knobs_of(&in_sample));
    println!(
        "({} policies evaluated in {:.0} s)",
        eval.cache.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--loco-mixes A,B,…`: leave-one-conversation-out where each fold also chooses what the
/// vault stores for a memory (`Mix`) on its three training conversations: for each mix a
/// vault per conversation, the knobs tuned on the three as in [`leave_one_out`], and the
/// mix whose tuned policy scores best on them is the one the held-out conversation is scored
/// with. So the stored-vector rule is chosen held out too.
fn leave_one_out_mixes(
    conversations: &[Conversation],
    cached: &Arc<Cached>,
    defaults: RetrievalPolicy,
    mixes: &[Mix],
) -> Result<()> {
    let started = Instant::now();
    let mut evals = Vec::with_capacity(mixes.len());
    for &mix in mixes {
        *cached.mix.lock() = mix;
        let embedder: Arc<dyn Embedder> = Arc::clone(cached) as Arc<dyn Embedder>;
        let indexes = conversations
            .iter()
            .map(|c| VaultIndex::new(c, Arc::clone(&embedder)))
            .collect::<Result<Vec<_>>>()?;
        evals.push(Evaluator {
            conversations,
            indexes,
            cache: HashMap::new(),
        });
    }
    let n = conversations.len();
    println!("\nleave-one-conversation-out, the stored vector chosen per fold among {mixes:?}:");
    println!(
        "{:<12} {:>5} {:>7} {:>7} {:>7}   chosen on the others",
        "held out", "n", "R@5", "R@10", "MRR"
    );
    let mut pooled = Tally::default();
    let mut macro_sum = (0.0, 0.0, 0.0);
    for (held, conv) in conversations.iter().enumerate() {
        let train: Vec<usize> = (0..n).filter(|&c| c != held).collect();
        let mut best: Option<(f64, usize, RetrievalPolicy)> = None;
        for (m, eval) in evals.iter_mut().enumerate() {
            let tuned = eval.tune(defaults, &train)?;
            let score = objective(&eval.pooled(&tuned, &train)?);
            if best.as_ref().is_none_or(|b| score > b.0 + 1e-9) {
                best = Some((score, m, tuned));
            }
        }
        let (_, m, tuned) = best.context("no mix given")?;
        let t = evals[m].tallies(&tuned)?[held].clone();
        let (r5, r10, mrr) = t.rates(0);
        macro_sum = (macro_sum.0 + r5, macro_sum.1 + r10, macro_sum.2 + mrr);
        println!(
            "{:<12} {:>5} {r5:>7.3} {r10:>7.3} {mrr:>7.3}   {:?}, {}",
            conv.sample_id,
            t.questions[0],
            mixes[m],
            knobs_of(&tuned)
        );
        pooled.merge(&t);
    }
    let nf = n as f64;
    println!(
        "{:<12} {:>5} {:>7.3} {:>7.3} {:>7.3}",
        "mean",
        "",
        macro_sum.0 / nf,
        macro_sum.1 / nf,
        macro_sum.2 / nf
    );
    for c in 0..5 {
        let (r5, r10, mrr) = pooled.rates(c);
        let label = if c == 0 {
            "all".to_string()
        } else {
            c.to_string()
        };
        println!(
            "{:<26} {label:>5} {r5:>7.3} {r10:>7.3} {mrr:>7.3}",
            "held-out (pooled)"
        );
    }
    println!(
        "({} vaults, {:.0} s)",
        mixes.len() * n,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--latency`: search p50/p95 of the vault with the signals off, each signal alone, and
/// all of them (the defaults), interleaved per question so load from other jobs hits every
/// variant alike; 5 runs of each question.
fn signal_latency(
    conversations: &[Conversation],
    embedder: &Arc<dyn Embedder>,
    defaults: RetrievalPolicy,
) -> Result<()> {
    let off = RetrievalPolicy {
        signals: Signals::OFF,
        ..defaults
    };
    let with = |set: fn(&mut Signals, &Signals)| {
        let mut p = off;
        set(&mut p.signals, &defaults.signals);
        p
    };
    let variants: [(&str, RetrievalPolicy); 6] = [
        ("signals off", off),
        (
            "dates only",
            with(|s, d| {
                s.date_boost_day = d.date_boost_day;
                s.date_boost_month = d.date_boost_month;
                s.date_boost_year = d.date_boost_year;
            }),
        ),
        (
            "session only",
            with(|s, d| s.session_weight = d.session_weight),
        ),
        (
            "neighbours only",
            with(|s, d| s.neighbour_weight = d.neighbour_weight),
        ),
        (
            "question only",
            with(|s, d| s.question_penalty = d.question_penalty),
        ),
        ("all (defaults)", defaults),
    ];
    let mut times: Vec<Tally> = vec![Tally::default(); variants.len()];
    for conv in conversations {
        let index = VaultIndex::new(conv, Arc::clone(embedder))?;
        for qa in conv
            .questions
            .iter()
            .filter(|q| (1..=4).contains(&q.category))
        {
            for _ in 0..5 {
                for (i, (_, p)) in variants.iter().enumerate() {
                    let start = Instant::now();
                    index.search(&qa.question, K_MAX, Some(p))?;
                    times[i]
                        .latencies_us
                        .push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
    }
    println!("\nsearch latency by signal (5 runs of each question, interleaved):");
    for ((name, _), t) in variants.iter().zip(&times) {
        println!(
            "{name:<20} p50 {:>7.1} µs   p95 {:>7.1} µs",
            t.percentile(0.5),
            t.percentile(0.95)
        );
    }
    Ok(())
}

/// `--cosines`: how the embedder's cosine between a question and a turn's stored vector
/// (`Hit::similarity`) separates the question's evidence turns from the turns of another
/// conversation (unrelated by construction). Calibrates the server's prepare relevance gate
/// (`similarity_min`).
fn print_cosines(embedder: &dyn Embedder, conversations: &[Conversation], turns: &[Vec<Vec<f32>>]) {
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (mut evidence, mut unrelated) = (Vec::new(), Vec::new());
    for (c, conv) in conversations.iter().enumerate() {
        let other = &turns[(c + 1) % turns.len()];
        for qa in conv
            .questions
            .iter()
            .filter(|q| (1..=4).contains(&q.category))
        {
            let q = embed_query(embedder, &qa.question);
            evidence.extend(qa.evidence.iter().map(|&e| cos(&q, &turns[c][e])));
            unrelated.extend(other.iter().map(|t| cos(&q, t)));
        }
    }
    for (name, values, quantiles) in [
        (
            "evidence turns",
            &mut evidence,
            [0.05, 0.1, 0.25, 0.5, 0.75],
        ),
        (
            "other conversation's turns",
            &mut unrelated,
            [0.5, 0.9, 0.99, 0.999, 1.0],
        ),
    ] {
        values.sort_by(f32::total_cmp);
        let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
        let shown: Vec<String> = quantiles
            .iter()
            .map(|&p| format!("p{}={:.3}", p * 100.0, at(p)))
            .collect();
        println!(
            "cosine(question, {name}) over {} pairs: {}",
            values.len(),
            shown.join(" ")
        );
    }
    for threshold in [0.2f32, 0.25, 0.3, 0.35, 0.4, 0.5, 0.75, 0.78, 0.8, 0.82] {
        let kept =
            evidence.iter().filter(|&&v| v >= threshold).count() as f64 / evidence.len() as f64;
        let leaked =
            unrelated.iter().filter(|&&v| v >= threshold).count() as f64 / unrelated.len() as f64;
        println!(
            "similarity_min {threshold}: keeps {:.1} % of evidence, admits {:.3} % of unrelated turns",
            kept * 100.0,
            leaked * 100.0
        );
    }
}

/// Mean time to embed one turn, over every turn of the file.
fn embed_micros_per_turn(embedder: &dyn Embedder, conversations: &[Conversation]) -> f64 {
    // Every 8th turn: a model takes milliseconds per turn, and the mean settles well before.
    let texts: Vec<&str> = conversations
        .iter()
        .flat_map(|c| c.turns.iter().map(|t| t.text.as_str()))
        .step_by(8)
        .collect();
    let start = Instant::now();
    let dims: usize = texts
        .iter()
        .map(|t| embedder.embed(t).expect("embed a turn").len())
        .sum();
    let micros = start.elapsed().as_secs_f64() * 1e6;
    assert_eq!(dims, texts.len() * embedder.dim());
    micros / texts.len().max(1) as f64
}

/// An embedder that remembers every vector it computed (the harness embeds each text for
/// several rows).
struct Cached {
    inner: Arc<dyn Embedder>,
    vectors: Mutex<HashMap<String, Vec<f32>>>,
    /// What the vault stores for a retrieval model's memory (`--vector-mix`; `--loco-mixes`
    /// changes it between the vaults it builds).
    mix: Mutex<Mix>,
    /// The vector `embed_memories` returned for each own text (what the vault stored, and
    /// what prepare's relevance gate compares a query with): `--cosines` reads these.
    stored: Mutex<HashMap<String, Vec<f32>>>,
}

/// The vector the vault stores for a memory of a retrieval model, from the vector `c` of
/// its text with context and `o` of its own text (`--vector-mix`).
#[derive(Clone, Copy, Debug)]
enum Mix {
    /// What a retrieval model's `embed_memories` returns (the product,
    /// `engine::embedder::memory_vector`).
    Product,
    /// `c` alone (`--one-vector`, `--vector-mix context`).
    Context,
    /// The unit vector along `c + o` (`--vector-mix mean`).
    MeanDirection,
    /// `α·c + (1 − α)·o`, not rescaled (`--vector-mix average:α`): a cosine against it is
    /// exactly that mix of the two texts' cosines, i.e. two vectors per memory fused with
    /// weights α / 1 − α, in one stored vector.
    Average(f32),
}

/// The `--vector-mix` (or `--one-vector`) setting.
fn vector_mix(args: &[String]) -> Result<Mix> {
    if args.iter().any(|a| a == "--one-vector") {
        return Ok(Mix::Context);
    }
    let Some(i) = args.iter().position(|a| a == "--vector-mix") else {
        return Ok(Mix::Product);
    };
    parse_mix(args.get(i + 1).context("--vector-mix needs a value")?)
}

/// The `--loco-mixes` setting: mixes separated by commas, or none.
fn loco_mixes(args: &[String]) -> Result<Vec<Mix>> {
    let Some(i) = args.iter().position(|a| a == "--loco-mixes") else {
        return Ok(Vec::new());
    };
    args.get(i + 1)
        .context("--loco-mixes needs a list")?
        .split(',')
        .map(parse_mix)
        .collect()
}

fn parse_mix(v: &str) -> Result<Mix> {
    Ok(match v {
        "product" => Mix::Product,
        "context" => Mix::Context,
        "mean" => Mix::MeanDirection,
        other => match other.strip_prefix("average:").map(str::parse::<f32>) {
            Some(Ok(a)) if (0.0..=1.0).contains(&a) => Mix::Average(a),
            _ => bail!("--vector-mix takes product, context, mean or average:α (0 ≤ α ≤ 1)"),
        },
    })
}

impl Cached {
    /// Where `--vector-cache` keeps a model's vectors between runs: one file per embedder id.
    fn file(dir: &str, id: &str) -> std::path::PathBuf {
        let name: String = id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::path::Path::new(dir).join(format!("{name}.vectors"))
    }

    /// Loads the vectors a previous run saved (`key`, then `dim` floats, per entry).
    fn load(&self, path: &std::path::Path) -> Result<()> {
        let Ok(bytes) = std::fs::read(path) else {
            return Ok(());
        };
        let dim = self.inner.dim();
        let mut at = 0;
        let mut cache = self.vectors.lock();
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into()?) as usize;
            let key = String::from_utf8(bytes[at + 4..at + 4 + len].to_vec())?;
            at += 4 + len;
            let v = bytes[at..at + 4 * dim]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            at += 4 * dim;
            cache.insert(key, v);
        }
        eprintln!("{} vectors from {}", cache.len(), path.display());
        Ok(())
    }

    fn save(&self, path: &std::path::Path) -> Result<()> {
        let mut out = Vec::new();
        for (key, v) in self.vectors.lock().iter() {
            out.extend((key.len() as u32).to_le_bytes());
            out.extend(key.as_bytes());
            v.iter().for_each(|x| out.extend(x.to_le_bytes()));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, out)?;
        Ok(())
    }

    /// The vectors of `texts`, embedding the ones not yet cached in one batch; `query`
    /// selects the embedder's query side (kept apart in the cache).
    fn get(&self, texts: &[&str], query: bool) -> engine::Result<Vec<Vec<f32>>> {
        let key = |t: &str| format!("{}{t}", if query { "q\0" } else { "p\0" });
        let missing: Vec<&str> = {
            let cache = self.vectors.lock();
            let mut seen = HashSet::new();
            texts
                .iter()
                .copied()
                .filter(|t| !cache.contains_key(&key(t)) && seen.insert(*t))
                .collect()
        };
        if !missing.is_empty() {
            let fresh = if query {
                self.inner.embed_query_batch(&missing)?
            } else {
                self.inner.embed_batch(&missing)?
            };
            let mut cache = self.vectors.lock();
            for (t, v) in missing.iter().zip(fresh) {
                cache.insert(key(t), v);
            }
        }
        let cache = self.vectors.lock();
        Ok(texts.iter().map(|t| cache[&key(t)].clone()).collect())
    }
}

impl Embedder for Cached {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn kind(&self) -> engine::EmbedderKind {
        self.inner.kind()
    }

    fn embed_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        self.get(texts, false)
    }

    fn embed_query_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        self.get(texts, true)
    }

    /// What the model's own `embed_memories` returns, from the cache.
    fn embed_memories(
        &self,
        own: &[&str],
        indexed: &[&str],
        _analyses: &[&engine::analyzer::Analysis],
    ) -> engine::Result<Vec<Vec<f32>>> {
        if self.inner.kind() != engine::EmbedderKind::Retrieval {
            return self.get(indexed, false);
        }
        let mix = *self.mix.lock();
        let with_context = self.get(indexed, false)?;
        let alone = self.get(own, false)?;
        let out: Vec<Vec<f32>> = with_context
            .iter()
            .zip(&alone)
            .zip(own.iter().zip(indexed))
            .map(|((c, a), (o, i))| match mix {
                _ if o == i => c.clone(),
                Mix::Product => engine::embedder::memory_vector(c, a),
                Mix::Context => c.clone(),
                Mix::MeanDirection => engine::embedder::mean_direction(c, a),
                Mix::Average(w) => c
                    .iter()
                    .zip(a)
                    .map(|(x, y)| w * x + (1.0 - w) * y)
                    .collect(),
            })
            .collect();
        let mut stored = self.stored.lock();
        for (o, v) in own.iter().zip(&out) {
            stored.insert((*o).to_owned(), v.clone());
        }
        Ok(out)
    }
}

/// The query-side vector of one question.
fn embed_query(embedder: &dyn Embedder, text: &str) -> Vec<f32> {
    embedder
        .embed_query_batch(&[text])
        .expect("embed a question")
        .pop()
        .expect("one vector")
}

fn print_miss(conv: &Conversation, qa: &benches::locomo::Question, ids: &[u64]) {
    if qa.evidence.iter().all(|e| ids.contains(&(*e as u64))) {
        return;
    }
    println!("MISS [{}] {}", qa.category, qa.question);
    for e in &qa.evidence {
        let rank = ids.iter().position(|i| *i == *e as u64);
        println!("   want {rank:?}: {}", conv.turns[*e].text);
    }
    if let Some(top) = ids.first() {
        println!("   top: {}", conv.turns[*top as usize].text);
    }
}
