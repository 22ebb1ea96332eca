//! The recall signals that need no model (`policy::Signals`), applied to the fused
//! candidates of one search: dates named in the query, session-level BM25, neighbour
//! smoothing and the question penalty. Every pass is over the candidates, their sessions'
//! memories near them and the query's postings in those sessions — never over the vault.

use std::collections::HashSet;

use crate::lexical::{BM25_B, BM25_K1, Postings, term_counts};
use crate::policy::Signals;
use crate::record::MemoryId;
use crate::vault::state::{Loc, Source};

use super::dates::{Granularity, Named};

/// Memories of another session skipped, at most, looking for a memory's neighbour in its
/// source (sessions interleave when a user runs two chats at once).
const NEIGHBOUR_SKIP_MAX: u32 = 8;
/// A session scored as one document is its memories within this many positions of a
/// candidate (on each side), so a session of thousands of messages costs no more than this.
const SESSION_SPAN: usize = 16;

/// One candidate being re-ranked.
pub(super) struct Entry {
    pub id: MemoryId,
    pub loc: Loc,
    pub created_at_ms: i64,
    /// The fused score (with priors), in `[0, 1]`; 0 for a neighbour that was no candidate.
    pub fused: f32,
}

/// What the signals read.
pub(super) struct Context<'s, 'a> {
    pub signals: &'s Signals,
    pub sources: &'s [Source<'a>],
    pub deleted: &'s HashSet<MemoryId>,
    /// Whether a doc may be returned (filters and tombstones): asked of neighbours that were
    /// no candidate before they become one.
    pub accept: &'s dyn Fn(usize, u32) -> bool,
    pub query: &'s str,
    /// The dates the query names (`dates::named_dates`).
    pub dates: &'s [Named],
    pub k: usize,
}

impl Context<'_, '_> {
    /// The previous and the next live memory of `loc`'s session in its source.
    fn neighbours(&self, loc: Loc) -> [Option<u32>; 2] {
        let source = self.sources[loc.source];
        let session = source.session(loc.doc);
        let live = |d: u32| self.deleted.is_empty() || !self.deleted.contains(&source.id(d));
        let find = |docs: &mut dyn Iterator<Item = u32>| {
            docs.take(NEIGHBOUR_SKIP_MAX as usize + 1)
                .find(|&d| source.session(d) == session && live(d))
        };
        [
            find(&mut (0..loc.doc).rev()),
            find(&mut (loc.doc + 1..source.len())),
        ]
    }

    /// Re-ranks `entries` (the fused candidates, best first) with the signals and returns the
    /// best `k` as `(id, score in [0, 1])`. Neighbours that were no candidate are appended to
    /// `entries` (the caller builds its hits from there).
    pub fn rerank(&self, entries: &mut Vec<Entry>) -> Vec<(MemoryId, f32)> {
        let g = self.signals;
        let mut index: foldhash::HashMap<MemoryId, usize> =
            entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        // Neighbours of every candidate, as entry indices; new ones join with a fused 0.
        let mut neighbours: Vec<[Option<usize>; 2]> = Vec::new();
        if g.neighbour_weight > 0.0 {
            let mut i = 0;
            while i < entries.len() {
                let loc = entries[i].loc;
                let source = self.sources[loc.source];
                let mut pair = [None, None];
                for (slot, doc) in self.neighbours(loc).into_iter().enumerate() {
                    let Some(doc) = doc else { continue };
                    let id = source.id(doc);
                    let at = match index.get(&id) {
                        Some(&at) => Some(at),
                        // Only a candidate's neighbour joins (not a neighbour's neighbour),
                        // and only if the query's filters let it through.
                        None if entries[i].fused > 0.0 && (self.accept)(loc.source, doc) => {
                            entries.push(Entry {
                                id,
                                loc: Loc {
                                    source: loc.source,
                                    doc,
                                },
                                created_at_ms: source.created_at(doc),
                                fused: 0.0,
                            });
                            index.insert(id, entries.len() - 1);
                            Some(entries.len() - 1)
                        }
                        None => None,
                    };
                    pair[slot] = at;
                }
                neighbours.push(pair);
                i += 1;
            }
        }
        let sessions = if g.session_weight > 0.0 {
            self.session_scores(entries)
        } else {
            vec![0.0; entries.len()]
        };
        let dates = self.dates;
        let window = i64::from(g.date_window_days);
        let mut raw: Vec<(usize, f32)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let date = dates
                    .iter()
                    .filter(|n| n.covers(e.created_at_ms, window))
                    .map(|n| match n.granularity() {
                        Granularity::Day => g.date_boost_day,
                        Granularity::Month => g.date_boost_month,
                        Granularity::Year => g.date_boost_year,
                    })
                    .fold(0.0f32, f32::max);
                let neighbour = neighbours.get(i).map_or(0.0, |pair| {
                    pair.iter()
                        .flatten()
                        .map(|&j| entries[j].fused)
                        .fold(0.0f32, f32::max)
                });
                let s = e.fused
                    + date
                    + g.session_weight * sessions[i]
                    + g.neighbour_weight * neighbour;
                (i, s)
            })
            .collect();
        raw.sort_unstable_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(entries[a.0].id.cmp(&entries[b.0].id))
        });
        // The question penalty only lowers a score: walk the ranking and read texts only
        // until no later candidate can reach the k best penalised scores.
        let mut best: Vec<(usize, f32)> = Vec::with_capacity(self.k + 4);
        let mut kth = f32::NEG_INFINITY;
        for (i, s) in raw {
            if best.len() >= self.k && s < kth {
                break;
            }
            let s = if g.question_penalty > 0.0 && self.is_question(entries[i].loc) {
                s - g.question_penalty
            } else {
                s
            };
            best.push((i, s));
            if best.len() >= self.k {
                let mut scores: Vec<f32> = best.iter().map(|b| b.1).collect();
                let (_, at, _) = scores.select_nth_unstable_by(self.k - 1, |a, b| b.total_cmp(a));
                kth = *at;
            }
        }
        best.sort_unstable_by(|a, b| {
            b.1.total_cmp(&a.1)
                .then(entries[a.0].id.cmp(&entries[b.0].id))
        });
        best.truncate(self.k);
        let span = g.span();
        best.into_iter()
            .map(|(i, s)| {
                let score = (s + g.question_penalty) / (1.0 + span);
                (
                    entries[i].id,
                    if score.is_finite() {
                        score.clamp(0.0, 1.0)
                    } else {
                        0.0
                    },
                )
            })
            .collect()
    }

    fn is_question(&self, loc: Loc) -> bool {
        self.sources[loc.source]
            .text(loc.doc)
            .trim_end()
            .ends_with('?')
    }

    /// Each entry's session score in `[0, 1]`: BM25 of the query against the session as one
    /// document (the memories within [`SESSION_SPAN`] of the session's candidates in each
    /// source), divided by the best session's. Term weights are the query's idf over the
    /// whole vault, as in the memory-level BM25.
    fn session_scores(&self, entries: &[Entry]) -> Vec<f32> {
        let (terms, _) = term_counts(self.query);
        if terms.is_empty() || entries.is_empty() {
            return vec![0.0; entries.len()];
        }
        // Sessions in first-seen order, and each entry's session.
        let mut session_of: foldhash::HashMap<&str, usize> = foldhash::HashMap::default();
        let mut entry_session: Vec<usize> = Vec::with_capacity(entries.len());
        // (session, source, doc) of every candidate, grouped below by session and source.
        let mut groups: Vec<(usize, usize, u32)> = Vec::with_capacity(entries.len());
        for e in entries {
            let session = self.sources[e.loc.source].session(e.loc.doc);
            let next = session_of.len();
            let s = *session_of.entry(session).or_insert(next);
            groups.push((s, e.loc.source, e.loc.doc));
            entry_session.push(s);
        }
        groups.sort_unstable();
        let n_sessions = session_of.len();
        // Term weights (idf over every source, times the query term's count) and each
        // term's postings per source.
        let n: f64 = self
            .sources
            .iter()
            .map(|s| f64::from(s.lexical().n_docs()))
            .sum();
        let lists: Vec<Vec<Postings<'_>>> = terms
            .iter()
            .map(|(term, _)| {
                self.sources
                    .iter()
                    .map(|s| s.lexical().postings(term))
                    .collect()
            })
            .collect();
        let weights: Vec<f32> = terms
            .iter()
            .zip(&lists)
            .map(|((_, qtf), lists)| {
                let df: f64 = lists.iter().map(|p| p.len() as f64).sum();
                if df == 0.0 {
                    0.0
                } else {
                    (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32 * *qtf as f32
                }
            })
            .collect();
        // Per session: summed term frequencies and length.
        let mut tfs: Vec<Vec<u32>> = vec![vec![0; terms.len()]; n_sessions];
        let mut lens: Vec<u64> = vec![0; n_sessions];
        let mut candidates: Vec<u32> = Vec::new();
        let mut at_group = 0;
        while at_group < groups.len() {
            let (s, src, _) = groups[at_group];
            candidates.clear();
            while at_group < groups.len() && groups[at_group].0 == s && groups[at_group].1 == src {
                candidates.push(groups[at_group].2);
                at_group += 1;
            }
            let source = self.sources[src];
            let members = self.session_members(source, &candidates);
            let doc_lens = source.lexical().doc_lens();
            lens[s] += members
                .iter()
                .map(|&d| u64::from(doc_lens.get(d)))
                .sum::<u64>();
            for (t, lists) in lists.iter().enumerate() {
                if weights[t] == 0.0 {
                    continue;
                }
                let list = lists[src];
                let mut at = 0;
                for &d in &members {
                    at = list.seek(at, d);
                    if at >= list.len() {
                        break;
                    }
                    let (doc, tf) = list.get(at);
                    if doc == d {
                        tfs[s][t] += tf;
                    }
                }
            }
        }
        let avg = (lens.iter().sum::<u64>() as f32 / lens.len() as f32).max(1.0);
        let scores: Vec<f32> = tfs
            .iter()
            .zip(&lens)
            .map(|(tf, &len)| {
                let norm = 1.0 - BM25_B + BM25_B * len as f32 / avg;
                tf.iter()
                    .zip(&weights)
                    .map(|(&tf, &w)| {
                        let tf = tf as f32;
                        w * tf * (BM25_K1 + 1.0) / (tf + BM25_K1 * norm)
                    })
                    .sum()
            })
            .collect();
        let top = scores.iter().copied().fold(0.0f32, f32::max);
        entry_session
            .into_iter()
            .map(|s| if top > 0.0 { scores[s] / top } else { 0.0 })
            .collect()
    }

    /// The live docs of the session of `candidates` (docs of one session in `source`) within
    /// [`SESSION_SPAN`] positions of one of them, ascending.
    fn session_members(&self, source: Source<'_>, candidates: &[u32]) -> Vec<u32> {
        let Some(&first) = candidates.first() else {
            return Vec::new();
        };
        let session = source.session(first);
        let live = |d: u32| self.deleted.is_empty() || !self.deleted.contains(&source.id(d));
        let mut out: Vec<u32> = Vec::new();
        match source.session_docs(session) {
            Some(all) => {
                // A segment's session index: windows of positions around each candidate.
                let mut positions: Vec<usize> = candidates
                    .iter()
                    .filter_map(|d| all.binary_search(d).ok())
                    .collect();
                positions.sort_unstable();
                let mut next = 0usize;
                for p in positions {
                    let lo = p.saturating_sub(SESSION_SPAN).max(next);
                    let hi = (p + SESSION_SPAN + 1).min(all.len());
                    out.extend(all[lo.min(hi)..hi].iter().copied().filter(|&d| live(d)));
                    next = next.max(hi);
                }
            }
            None => {
                // A memtable: walk out from each candidate (ascending), past a few other
                // sessions' docs; a doc a walk from an earlier candidate reached is not
                // walked again.
                let mut sorted = candidates.to_vec();
                sorted.sort_unstable();
                let mut done: Option<u32> = None;
                for c in sorted {
                    if done.is_some_and(|hi| c <= hi) {
                        continue;
                    }
                    for up in [false, true] {
                        let (mut found, mut skipped) = (0usize, 0u32);
                        let mut d = c;
                        loop {
                            d = match (up, d) {
                                (false, 0) => break,
                                (false, d) => d - 1,
                                (true, d) if d + 1 >= source.len() => break,
                                (true, d) => d + 1,
                            };
                            if !up && done.is_some_and(|hi| d <= hi) {
                                break;
                            }
                            if source.session(d) != session {
                                skipped += 1;
                                if skipped > NEIGHBOUR_SKIP_MAX {
                                    break;
                                }
                                continue;
                            }
                            skipped = 0;
                            found += 1;
                            if live(d) {
                                out.push(d);
                            }
                            if found >= SESSION_SPAN {
                                break;
                            }
                        }
                        if up {
                            done = Some(d);
                        }
                    }
                    if live(c) {
                        out.push(c);
                    }
                }
                out.sort_unstable();
                out.dedup();
            }
        }
        out
    }
}
