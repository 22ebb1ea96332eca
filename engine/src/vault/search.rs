//! Hybrid search over one vault: vector candidates from every source (exact SIMD scans of
//! the memtables and small segments, HNSW walks of large ones), BM25 candidates over all of
//! them as one corpus, fused by `fusion::fuse` with a small recency and session prior.
//! Filters and tombstones are applied inside every scan, walk and posting loop, so deleted or
//! filtered-out records never take a slot and `k` results come back whenever `k` match.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::embedder;
use crate::error::{Error, Result};
use crate::fusion::fuse_with;
use crate::lexical::{Bm25Query, LexicalSource, merge_top_k};
use crate::query::{Filter, Hit, SearchQuery};
use crate::record::MemoryId;

use super::Vault;
use super::state::{Loc, Source};

/// Largest `k` a search may ask for.
pub const SEARCH_K_MAX: usize = 1000;
const MS_PER_DAY: f32 = 86_400_000.0;

/// Vaults with fewer records search on the calling thread: below this, handing the work to
/// the search threads costs about what it saves.
const PARALLEL_SEARCH_RECORDS_MIN: usize = 16_384;

/// Threads that run one large search's parts in parallel (each source's vector and lexical
/// search), so a request's latency is not the sum of its parts. A pool of its
/// own: background seals and compactions occupy rayon's global pool for seconds, and a
/// search must never queue behind them. `None` if the threads cannot be started (then
/// searches run on the caller's thread).
fn search_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("mr-search-{i}"))
            .build()
            .map_err(
                |e| tracing::warn!(error = %e, "search threads unavailable; searching serially"),
            )
            .ok()
    })
    .as_ref()
}

/// Facts the prior needs about one candidate.
struct Candidate {
    loc: Loc,
    created_at_ms: i64,
    in_boost_session: bool,
}

impl Vault {
    /// Pure vector search (no lexical part, no prior): the top `k` live memories passing
    /// `filter` by cosine similarity to `query`, best first. For benchmarks, tests and callers
    /// that bring their own query vector.
    pub fn search_vectors(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(MemoryId, f32)>> {
        self.check_open()?;
        let inner = &*self.inner;
        if query.len() != inner.dim {
            return Err(Error::InvalidArgument {
                name: "query",
                reason: format!(
                    "vector has length {}, vault dim is {}",
                    query.len(),
                    inner.dim
                ),
            });
        }
        let ef = inner.options.hnsw.ef_search.max(k);
        let state = inner.state.read();
        let mut out: Vec<(MemoryId, f32)> = Vec::new();
        for source in state.sources() {
            let accept =
                |d: u32| !state.deleted.contains(&source.id(d)) && source.matches(d, filter);
            for (d, s) in source.vector_search(query, k, ef, filter.session_id.as_deref(), &accept)
            {
                out.push((source.id(d), s));
            }
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        Ok(out)
    }

    /// Hybrid search; hits sorted by score (in [0, 1]) best first.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<Hit>> {
        self.check_open()?;
        if q.k > SEARCH_K_MAX {
            return Err(Error::InvalidArgument {
                name: "k",
                reason: format!("{} is above the limit of {SEARCH_K_MAX}", q.k),
            });
        }
        if q.k == 0 {
            return Ok(Vec::new());
        }
        let inner = &*self.inner;
        let embedder = &*inner.options.embedder;
        let query = embedder::checked(embedder, 1, embedder.embed_batch(&[q.text.as_str()]))?
            .pop()
            .unwrap_or_default();
        // Every ranking knob comes from the vault's policy (`policy.rs`).
        let policy = &inner.options.policy;
        let pool = policy.candidates(q.k);
        let ef = inner.options.hnsw.ef_search.max(pool);
        let state = inner.state.read();
        let filter = &q.filter;
        let boost = q.boost_session.as_deref();
        // Sources in a fixed order (`State::sources`): a hit is (source index, doc).
        let sources: Vec<Source<'_>> = state.sources().collect();
        let n_sources = sources.len();
        let mut cands: HashMap<MemoryId, Candidate> = HashMap::new();
        let mut note = |id: MemoryId, loc: Loc| {
            cands.entry(id).or_insert_with(|| {
                let source = sources[loc.source];
                Candidate {
                    loc,
                    created_at_ms: source.created_at(loc.doc),
                    // Decoding a segment's session string only when a session is boosted.
                    in_boost_session: boost.is_some_and(|b| b == source.session(loc.doc)),
                }
            });
        };

        // Most searches have neither a filter nor tombstones: skip the per-doc checks then
        // (BM25 asks once per posting, which for a common term is most of the vault).
        let everything = filter.is_empty() && state.deleted.is_empty();
        // With a session filter, each segment's session index (its docs in that session,
        // ascending) rejects almost every posting with a binary search of a short slice
        // instead of reading and UTF-8-checking the row's session string: that check was
        // most of a session-filtered search. `matches` still runs on the survivors, so the
        // accepted set is unchanged.
        let session_docs: Vec<Option<&[u32]>> = sources
            .iter()
            .map(|s| {
                filter
                    .session_id
                    .as_deref()
                    .and_then(|id| s.session_docs(id))
            })
            .collect();
        let accept = |src: usize, doc: u32| -> bool {
            if everything {
                return true;
            }
            if session_docs[src].is_some_and(|docs| docs.binary_search(&doc).is_err()) {
                return false;
            }
            let source = sources[src];
            !state.deleted.contains(&source.id(doc)) && source.matches(doc, filter)
        };

        // Vector candidates from every source, and lexical candidates over all of them as one
        // corpus (corpus statistics summed), each as (source, doc, score).
        let vector_of = |src: usize| -> Vec<(u32, f32)> {
            sources[src].vector_search(&query, pool, ef, filter.session_id.as_deref(), &|d| {
                accept(src, d)
            })
        };
        // BM25 is planned once over every source as one corpus (weights and bounds), then
        // scored per source next to that source's vector search.
        let lexical_sources: Vec<&dyn LexicalSource> =
            sources.iter().map(|s| s.lexical()).collect();
        let plan = Bm25Query::new(&lexical_sources, &q.text);
        let lexical_of = |src: usize| -> Vec<(u32, f32)> {
            plan.as_ref()
                .map(|p| p.source_top_k(src, pool, &|d| accept(src, d)))
                .unwrap_or_default()
        };
        // Tasks 0..n are the sources' vector searches, n..2n their lexical ones: separate
        // tasks, so the largest segment's walk and its postings run on different threads.
        let task = |t: usize| {
            if t < n_sources {
                vector_of(t)
            } else {
                lexical_of(t - n_sources)
            }
        };
        let mut results: Vec<Vec<(u32, f32)>> =
            match search_pool().filter(|_| state.records() >= PARALLEL_SEARCH_RECORDS_MIN) {
                Some(threads) => {
                    threads.install(|| (0..2 * n_sources).into_par_iter().map(task).collect())
                }
                None => (0..2 * n_sources).map(task).collect(),
            };
        let lexical_hits = results.split_off(n_sources);
        let mut lexical_raw: Vec<(usize, u32, f32)> = Vec::new();
        for (src, hits) in lexical_hits.iter().enumerate() {
            lexical_raw.extend(hits.iter().map(|&(doc, score)| (src, doc, score)));
        }
        merge_top_k(&mut lexical_raw, pool);

        let mut vector: Vec<(MemoryId, f32)> = Vec::new();
        for (source, hits) in results.into_iter().enumerate() {
            for (doc, score) in hits {
                let id = sources[source].id(doc);
                note(id, Loc { source, doc });
                vector.push((id, score));
            }
        }
        vector.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        vector.truncate(pool);
        let lexical: Vec<(MemoryId, f32)> = lexical_raw
            .into_iter()
            .map(|(source, doc, score)| {
                let id = sources[source].id(doc);
                note(id, Loc { source, doc });
                (id, score)
            })
            .collect();

        let prior = |id: MemoryId| -> f32 {
            let Some(c) = cands.get(&id) else {
                return 0.0;
            };
            // Saturating: a damaged or hostile `created_at` (i64::MIN, say) must not overflow
            // (found by the `wal_payload` fuzz target).
            let age_days = (q.now_ms.saturating_sub(c.created_at_ms).max(0) as f32) / MS_PER_DAY;
            let recency =
                policy.recency_prior_max * 0.5f32.powf(age_days / policy.recency_half_life_days);
            recency
                + if c.in_boost_session {
                    policy.session_boost
                } else {
                    0.0
                }
        };
        let fused = fuse_with(&policy.fusion, &vector, &lexical, &prior, q.k);
        // Whether each hit's own text shares an index term with the query: a caller's
        // relevance gate (prepare) needs it, and only the engine knows the analyzer.
        let query_terms: HashSet<String> = crate::analyzer::analyze(&q.text).into_iter().collect();
        Ok(fused
            .into_iter()
            .filter_map(|(id, score)| {
                cands.get(&id).map(|c| {
                    let source = sources[c.loc.source];
                    let memory = source.memory(c.loc.doc);
                    Hit {
                        shares_query_term: crate::analyzer::analyze(&memory.text)
                            .iter()
                            .any(|t| query_terms.contains(t)),
                        memory,
                        score: score.clamp(0.0, 1.0),
                        similarity: crate::distance::dot(&query, source.vector(c.loc.doc)),
                    }
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use crate::query::{Filter, SearchQuery};
    use crate::record::{NewMemory, Role};
    use crate::{BuiltinEmbedder, Vault, VaultOptions};

    /// The session pre-check must reject only docs of other sessions: a session-filtered
    /// search with a large `k` returns every memory of that session, whether it sits in
    /// either of two sealed segments (interleaved with other sessions) or in the memtable.
    #[test]
    fn session_filter_returns_every_memory_of_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = VaultOptions::new(Arc::new(BuiltinEmbedder::new()));
        options.background = false;
        options.memtable_records_max = usize::MAX;
        let v = Vault::open(dir.path(), options).unwrap();
        let mut ids: Vec<(String, u64)> = Vec::new();
        for round in 0..3 {
            let batch: Vec<NewMemory> = (0..30)
                .map(|i| {
                    NewMemory::new(
                        format!("s{}", (i * 7 + round) % 5),
                        Role::User,
                        format!("garden tomato note {round} {i} extra{}", i % 3),
                        i64::from(round * 100 + i),
                    )
                })
                .collect();
            let sessions: Vec<String> = batch.iter().map(|m| m.session_id.clone()).collect();
            let out = v.ingest(batch).unwrap();
            ids.extend(sessions.into_iter().zip(out.stored));
            if round < 2 {
                v.seal().unwrap();
            }
        }
        for s in 0..5 {
            let session = format!("s{s}");
            let hits = v
                .search(&SearchQuery {
                    text: "tomato extra1".into(),
                    k: 200,
                    filter: Filter {
                        session_id: Some(session.clone()),
                        ..Filter::default()
                    },
                    boost_session: None,
                    now_ms: 0,
                })
                .unwrap();
            let got: BTreeSet<u64> = hits.iter().map(|h| h.memory.id).collect();
            let want: BTreeSet<u64> = ids
                .iter()
                .filter(|(sid, _)| *sid == session)
                .map(|&(_, id)| id)
                .collect();
            assert_eq!(got, want, "session {session}");
        }
    }

    /// Regression (fuzz target `wal_payload`): a memory created at `i64::MIN` (or a query at
    /// `i64::MAX`) made the recency prior overflow `now - created_at`.
    #[test]
    fn extreme_timestamps_do_not_overflow_the_recency_prior() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = VaultOptions::new(Arc::new(BuiltinEmbedder::new()));
        options.background = false;
        let v = Vault::open(dir.path(), options).unwrap();
        for (i, at) in [i64::MIN, i64::MAX, 0].into_iter().enumerate() {
            v.ingest(vec![NewMemory::new(
                "s",
                Role::User,
                format!("tomato garden {i}"),
                at,
            )])
            .unwrap();
        }
        for now_ms in [i64::MIN, i64::MAX, 0] {
            let hits = v
                .search(&SearchQuery {
                    text: "tomato".into(),
                    k: 5,
                    filter: Filter::default(),
                    boost_session: None,
                    now_ms,
                })
                .unwrap();
            assert_eq!(hits.len(), 3);
        }
    }
}
