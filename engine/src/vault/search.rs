//! Hybrid search over one vault: vector candidates from every source (exact SIMD scans of
//! the memtables and small segments, HNSW walks of large ones), BM25 candidates over all of
//! them as one corpus, fused by `fusion::fuse` with a small recency and session prior, then
//! re-ranked by the recall signals of the policy (`search/signals.rs`: dates named in the
//! query — `search/dates.rs` —, session-level BM25, neighbour smoothing, question penalty).
//! Filters and tombstones are applied inside every scan, walk and posting loop, so deleted or
//! filtered-out records never take a slot and `k` results come back whenever `k` match.

mod dates;
mod signals;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::embedder;
use crate::error::{Error, Result};
use crate::fusion::fuse_with;
use crate::lexical::{Bm25Query, LexicalSource, merge_top_k};
use crate::policy::RetrievalPolicy;
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
        self.contained(|| self.search_vectors_in(query, k, filter))
    }

    fn search_vectors_in(
        &self,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<(MemoryId, f32)>> {
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
        self.search_with(q, &self.inner.options.policy)
    }

    /// [`Vault::search`] ranked by `policy` instead of the vault's own (the LoCoMo harness
    /// compares policies on one vault with it).
    #[doc(hidden)]
    pub fn search_with(&self, q: &SearchQuery, policy: &RetrievalPolicy) -> Result<Vec<Hit>> {
        // Segments read zeros after a contained I/O error (`mmap.rs`): such a search answers
        // `Error::SegmentUnreadable`, never hits computed from them.
        self.contained(|| self.search_in(q, policy))
    }

    /// [`Vault::search`] without the query's embedding: BM25 and the priors only, every
    /// hit's `similarity` 0. For a caller whose embedder failed (a remote endpoint down),
    /// which would rather answer from the words than not at all, and says so.
    pub fn search_lexical(&self, q: &SearchQuery) -> Result<Vec<Hit>> {
        let policy = &self.inner.options.policy;
        self.contained(|| self.search_in_with(q, policy, None))
    }

    fn search_in(&self, q: &SearchQuery, policy: &RetrievalPolicy) -> Result<Vec<Hit>> {
        if q.k == 0 || q.k > SEARCH_K_MAX {
            // Checked (with a clear error) before the embedder is asked for anything.
            return self.search_in_with(q, policy, None);
        }
        let embedder = &*self.inner.options.embedder;
        let query = embedder::checked(embedder, 1, embedder.embed_query_batch(&[q.text.as_str()]))?
            .pop()
            .unwrap_or_default();
        self.search_in_with(q, policy, Some(query))
    }

    /// The search proper; `query` is the query's vector, `None` for a lexical-only search
    /// (no vector candidates, similarity 0).
    fn search_in_with(
        &self,
        q: &SearchQuery,
        policy: &RetrievalPolicy,
        query: Option<Vec<f32>>,
    ) -> Result<Vec<Hit>> {
        policy.validate().map_err(|reason| Error::InvalidArgument {
            name: "policy",
            reason,
        })?;
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
        // Every ranking knob comes from the policy (`policy.rs`).
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
            let Some(query) = query.as_deref() else {
                return Vec::new();
            };
            sources[src].vector_search(query, pool, ef, filter.session_id.as_deref(), &|d| {
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
        // A day or month the query names: the best BM25 matches created in its window join
        // the lexical candidates (the date signal can lift only a candidate), at the cost of
        // one more pass over the query's postings, for such queries only.
        let named = if policy.signals.date_boost() > 0.0 {
            dates::named_dates(&q.text)
        } else {
            Vec::new()
        };
        let windows: Vec<dates::Named> = named
            .iter()
            .copied()
            .filter(|n| n.granularity() != dates::Granularity::Year)
            .collect();
        if let (false, Some(plan)) = (windows.is_empty(), plan.as_ref()) {
            let days = i64::from(policy.signals.date_window_days);
            let mut dated: Vec<(usize, u32, f32)> = Vec::new();
            for (src, source) in sources.iter().enumerate() {
                let in_window = |d: u32| {
                    let at = source.created_at(d);
                    windows.iter().any(|n| n.covers(at, days)) && accept(src, d)
                };
                dated.extend(
                    plan.source_top_k(src, pool, &in_window)
                        .into_iter()
                        .map(|(doc, score)| (src, doc, score)),
                );
            }
            merge_top_k(&mut dated, pool);
            let have: HashSet<(usize, u32)> = lexical_raw.iter().map(|&(s, d, _)| (s, d)).collect();
            lexical_raw.extend(
                dated
                    .into_iter()
                    .filter(|&(s, d, _)| !have.contains(&(s, d))),
            );
            lexical_raw.sort_unstable_by(|a, b| {
                b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
            });
        }

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
        let signals = &policy.signals;
        let all = vector.len() + lexical.len();
        let mut fused = fuse_with(
            &policy.fusion,
            &vector,
            &lexical,
            &prior,
            if signals.any() { all } else { q.k },
        );
        if signals.any() {
            let mut entries: Vec<signals::Entry> = fused
                .iter()
                .filter_map(|&(id, score)| {
                    cands.get(&id).map(|c| signals::Entry {
                        id,
                        loc: c.loc,
                        created_at_ms: c.created_at_ms,
                        fused: score,
                    })
                })
                .collect();
            let n_fused = entries.len();
            fused = signals::Context {
                signals,
                sources: &sources,
                deleted: &state.deleted,
                accept: &accept,
                query: &q.text,
                dates: &named,
                k: q.k,
            }
            .rerank(&mut entries);
            // Neighbours that joined are hits like the others.
            for e in entries.drain(n_fused..) {
                cands.entry(e.id).or_insert(Candidate {
                    loc: e.loc,
                    created_at_ms: e.created_at_ms,
                    in_boost_session: false,
                });
            }
        }
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
                        similarity: query.as_deref().map_or(0.0, |query| {
                            crate::distance::dot(query, source.vector(c.loc.doc))
                        }),
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

    use crate::embedder::EmbedderKind;
    use crate::policy::{RetrievalPolicy, Signals};
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

    /// An embedder that stores like the built-in one but cannot embed a query, as a remote
    /// endpoint that went down after the ingest.
    struct QueryFails(BuiltinEmbedder);

    impl crate::Embedder for QueryFails {
        fn id(&self) -> &str {
            self.0.id()
        }
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn kind(&self) -> EmbedderKind {
            EmbedderKind::Lexical
        }
        fn embed_batch(&self, texts: &[&str]) -> crate::Result<Vec<Vec<f32>>> {
            self.0.embed_batch(texts)
        }
        fn embed_query_batch(&self, _texts: &[&str]) -> crate::Result<Vec<Vec<f32>>> {
            Err(crate::Error::embedder(self.id(), "endpoint down"))
        }
    }

    /// With the query's embedding unavailable, `search` fails and `search_lexical` still
    /// finds by words, sealed segments and memtable alike, with similarity 0.
    #[test]
    fn lexical_search_answers_without_the_embedder() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = VaultOptions::new(Arc::new(QueryFails(BuiltinEmbedder::new())));
        options.background = false;
        let v = Vault::open(dir.path(), options).unwrap();
        let sealed = v
            .ingest(vec![NewMemory::new(
                "s",
                Role::User,
                "my dog is called Rex",
                1,
            )])
            .unwrap()
            .stored;
        v.seal().unwrap();
        let fresh = v
            .ingest(vec![
                NewMemory::new("s", Role::User, "Rex likes the park", 2),
                NewMemory::new("t", Role::User, "tomatoes grow in summer", 3),
            ])
            .unwrap()
            .stored;
        let q = SearchQuery {
            text: "what does Rex like".into(),
            k: 5,
            filter: Filter::default(),
            boost_session: None,
            now_ms: 10,
        };
        assert!(matches!(v.search(&q), Err(crate::Error::Embedder { .. })));
        let hits = v.search_lexical(&q).unwrap();
        // The two memories naming Rex first (the other session's memory may follow as a
        // neighbour: the signals still run), none with a cosine.
        let top: BTreeSet<u64> = hits.iter().take(2).map(|h| h.memory.id).collect();
        assert_eq!(top, BTreeSet::from([sealed[0], fresh[0]]));
        assert!(hits.iter().take(2).all(|h| h.shares_query_term));
        assert!(hits.iter().all(|h| h.similarity == 0.0));
    }

    /// A vault (no background work) holding `turns` as (session, role, text, created_at),
    /// ingested one by one so ids follow the order given; returns the vault and the ids.
    fn vault_of(dir: &std::path::Path, turns: &[(&str, Role, &str, i64)]) -> (Vault, Vec<u64>) {
        let v = Vault::open(dir, crate::vault::testing::options()).unwrap();
        let mut ids = Vec::new();
        for &(session, role, text, at) in turns {
            ids.extend(
                v.ingest(vec![NewMemory::new(session, role, text, at)])
                    .unwrap()
                    .stored,
            );
        }
        (v, ids)
    }

    /// The ids `policy` ranks for `text` (k = 10, no filter), best first.
    fn ranked(v: &Vault, text: &str, policy: &RetrievalPolicy, filter: Filter) -> Vec<u64> {
        v.search_with(
            &SearchQuery {
                text: text.into(),
                k: 10,
                filter,
                boost_session: None,
                now_ms: NOW,
            },
            policy,
        )
        .unwrap()
        .iter()
        .map(|h| h.memory.id)
        .collect()
    }

    /// The default policy with every signal off except those `set` turns on.
    fn only(set: impl FnOnce(&mut Signals)) -> RetrievalPolicy {
        let mut p = RetrievalPolicy::for_kind(EmbedderKind::Lexical);
        p.signals = Signals::OFF;
        set(&mut p.signals);
        p
    }

    const DAY_MS: i64 = 86_400_000;
    /// 2024-01-01 00:00 UTC: the searches' "now".
    const NOW: i64 = 1_704_067_200_000;
    /// 2023-06-10 and 2023-09-10, 12:00 UTC.
    const JUNE_10: i64 = 1_686_398_400_000;
    const SEPT_10: i64 = JUNE_10 + 92 * DAY_MS;

    #[test]
    fn a_date_named_in_the_query_ranks_the_memory_in_its_window_first() {
        let dir = tempfile::tempdir().unwrap();
        let (v, ids) = vault_of(
            dir.path(),
            &[
                ("a", Role::User, "we went camping at the lake", JUNE_10),
                ("b", Role::User, "we went camping at the lake", SEPT_10),
            ],
        );
        let off = ranked(
            &v,
            "When did we go camping?",
            &only(|_| {}),
            Filter::default(),
        );
        assert_eq!(
            off[0], ids[1],
            "without a date the newer wins (recency prior)"
        );
        let dates = only(|g| {
            g.date_boost_day = 0.6;
            g.date_boost_month = 0.3;
            g.date_boost_year = 0.1;
        });
        for query in [
            "When did we go camping in June?",
            "Did we go camping on 3 June, 2023?",
            "camping in June 2023",
        ] {
            let on = ranked(&v, query, &dates, Filter::default());
            assert_eq!(on[0], ids[0], "{query}");
        }
        // Past the window (June 3 + 14 days < June 10 is false; May 20 + 14 is), and a year
        // both lie in: the newer wins again.
        for query in ["camping on May 20, 2023", "camping in 2023"] {
            let on = ranked(&v, query, &dates, Filter::default());
            assert_eq!(on[0], ids[1], "{query}");
        }
        // The defaults carry the date signal.
        let defaults = RetrievalPolicy::for_kind(EmbedderKind::Lexical);
        assert_eq!(
            ranked(
                &v,
                "When did we go camping in June?",
                &defaults,
                Filter::default()
            )[0],
            ids[0]
        );
    }

    #[test]
    fn a_memory_ending_in_a_question_mark_is_demoted() {
        let dir = tempfile::tempdir().unwrap();
        let filler = "the class schedule for the whole week is long and boring today";
        let (v, ids) = vault_of(
            dir.path(),
            &[
                ("a", Role::User, "pottery class?", 1),
                ("b", Role::User, "I loved the pottery class", 1),
                ("c", Role::User, filler, 1),
                ("d", Role::User, filler, 1),
            ],
        );
        let q = "pottery class";
        assert_eq!(
            ranked(&v, q, &only(|_| {}), Filter::default())[..2],
            ids[..2]
        );
        let demoted = ranked(
            &v,
            q,
            &only(|g| g.question_penalty = 0.2),
            Filter::default(),
        );
        assert_eq!(demoted[..2], [ids[1], ids[0]], "demoted, not dropped");
    }

    #[test]
    fn a_neighbour_of_a_match_is_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let mut turns = vec![
            ("a", Role::User, "the zebra crossing story", 1),
            ("a", Role::Assistant, "what happened next", 2),
            ("a", Role::User, "it ended well, we laughed", 3),
            ("a", Role::User, "unrelated chatter later on", 4),
            (
                "b",
                Role::User,
                "a zebra at the zoo among many other animals in a long row of cages",
                5,
            ),
            ("c", Role::User, "a zebu at the fair", 6),
        ];
        let fillers: Vec<String> = (0..20).map(|i| format!("filler note number {i}")).collect();
        turns.extend(fillers.iter().map(|f| ("f", Role::User, f.as_str(), 7)));
        let (v, ids) = vault_of(dir.path(), &turns);
        let top3 = |p: &RetrievalPolicy, filter| {
            let mut r = ranked(&v, "zebra", p, filter);
            r.truncate(3);
            r
        };
        // Turn 2 matches through its context (the turn before it); turn 3 does not match.
        let off = top3(&only(|_| {}), Filter::default());
        assert!(!off.contains(&ids[2]), "{off:?}");
        for (candidates_min, seal) in [(40, false), (1, false), (40, true)] {
            if seal {
                v.seal().unwrap();
            }
            let mut smooth = only(|g| g.neighbour_weight = 1.0);
            smooth.candidates_min = candidates_min;
            let on = top3(&smooth, Filter::default());
            assert!(on.contains(&ids[2]), "the next turn is lifted: {on:?}");
            // A neighbour the filter rejects never joins.
            let users = Filter {
                roles: Some(vec![Role::User]),
                ..Filter::default()
            };
            let filtered = ranked(&v, "zebra", &smooth, users);
            assert!(!filtered.contains(&ids[1]), "{filtered:?}");
        }
    }

    #[test]
    fn a_session_about_the_query_lifts_its_turns() {
        let dir = tempfile::tempdir().unwrap();
        let (v, ids) = vault_of(
            dir.path(),
            &[
                ("b", Role::User, "weather is cold", 1),
                ("b", Role::User, "music tonight", 1),
                ("b", Role::User, "I like tomato", 1),
                ("a", Role::User, "garden plans for spring", 1),
                ("a", Role::User, "the garden beds are dug", 1),
                ("a", Role::User, "compost pile", 1),
                ("a", Role::User, "I like tomato and peppers", 1),
            ],
        );
        let q = "tomato garden";
        let at = |r: &[u64], id| r.iter().position(|&x| x == id).unwrap();
        // In the memtable (sessions found by walking its docs), then in a segment (found by
        // its session index).
        for sealed in [false, true] {
            if sealed {
                v.seal().unwrap();
            }
            let off = ranked(&v, q, &only(|_| {}), Filter::default());
            assert!(at(&off, ids[2]) < at(&off, ids[6]), "{sealed}: {off:?}");
            let on = ranked(&v, q, &only(|g| g.session_weight = 1.0), Filter::default());
            assert!(at(&on, ids[6]) < at(&on, ids[2]), "{sealed}: {on:?}");
        }
    }

    #[test]
    fn scores_stay_in_the_unit_interval_and_sorted_with_every_signal() {
        let dir = tempfile::tempdir().unwrap();
        let (v, _) = vault_of(
            dir.path(),
            &[
                ("a", Role::User, "camping in June?", JUNE_10),
                ("a", Role::User, "camping trip was great", JUNE_10 + 1),
                ("b", Role::User, "camping", SEPT_10),
            ],
        );
        let mut p = RetrievalPolicy::for_kind(EmbedderKind::Lexical);
        p.signals = Signals {
            date_boost_day: 1.0,
            date_boost_month: 1.0,
            date_boost_year: 1.0,
            date_window_days: 366,
            session_weight: 1.0,
            neighbour_weight: 1.0,
            question_penalty: 1.0,
        };
        let hits = v
            .search_with(
                &SearchQuery {
                    text: "camping in June 2023".into(),
                    k: 10,
                    filter: Filter::default(),
                    boost_session: None,
                    now_ms: SEPT_10,
                },
                &p,
            )
            .unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.iter().all(|h| (0.0..=1.0).contains(&h.score)));
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
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
