//! Model test: random sequences of ingest, delete, clear, search, seal, compact, crash and
//! reopen against a reference (a map of live memories + brute-force cosine).

use std::collections::BTreeMap;

use engine::{CrashPoint, Embedder, Filter, Role, Vault};
use proptest::prelude::*;

use crate::common::{WordHash, msg, options};

const DIM: usize = 16;
const WORDS: [&str; 8] = [
    "apple", "river", "stone", "cloud", "tiger", "piano", "green", "seven",
];
const SESSIONS: [&str; 3] = ["", "a", "b"];
const ROLES: [Role; 2] = [Role::User, Role::Assistant];

#[derive(Clone, Debug)]
enum Op {
    /// (session, role, words) per message.
    Ingest(Vec<(usize, usize, Vec<usize>)>),
    Delete(usize),
    Clear(Option<usize>),
    Search(Vec<usize>, usize, Option<usize>),
    Seal,
    Compact,
    Reopen,
    Crash(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let message = (
        0..SESSIONS.len(),
        0..ROLES.len(),
        prop::collection::vec(0..WORDS.len(), 1..4),
    );
    prop_oneof![
        6 => prop::collection::vec(message, 1..6).prop_map(Op::Ingest),
        2 => any::<usize>().prop_map(Op::Delete),
        1 => prop::option::of(0..SESSIONS.len()).prop_map(Op::Clear),
        3 => (prop::collection::vec(0..WORDS.len(), 1..3), 1..8usize, prop::option::of(0..SESSIONS.len()))
            .prop_map(|(w, k, s)| Op::Search(w, k, s)),
        2 => Just(Op::Seal),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => (0..6usize).prop_map(Op::Crash),
    ]
}

const CRASHES: [CrashPoint; 6] = [
    CrashPoint::SealAfterTempDir,
    CrashPoint::SealAfterRename,
    CrashPoint::SealAfterManifest,
    CrashPoint::CompactAfterTempDir,
    CrashPoint::CompactAfterRename,
    CrashPoint::CompactAfterManifest,
];

struct Model {
    /// id → (session, role, text)
    live: BTreeMap<u64, (String, Role, String)>,
    /// id → what the vault embeds: the previous message of the session (earlier in the batch,
    /// else the newest live one), a newline, the text.
    indexed: BTreeMap<u64, String>,
    max_id: u64,
}

fn open(dir: &std::path::Path, crash: Option<CrashPoint>) -> Vault {
    let mut o = options(DIM);
    o.crash_at = crash;
    // Small graphs so the HNSW path is exercised too (exactness is checked on scores with a
    // tolerance only where the graph is not involved; see `Search`).
    o.hnsw.min_records = 12;
    o.hnsw.ef_search = 200;
    Vault::open(dir, o).unwrap()
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let embedder = WordHash {
        dim: DIM,
        id: String::new(),
    };
    let mut v = open(dir.path(), None);
    let mut m = Model {
        live: BTreeMap::new(),
        indexed: BTreeMap::new(),
        max_id: 0,
    };
    for op in ops {
        match op {
            Op::Ingest(batch) => {
                let msgs: Vec<_> = batch
                    .iter()
                    .map(|(s, r, w)| {
                        let text = w.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join(" ");
                        (SESSIONS[*s].to_string(), ROLES[*r], text)
                    })
                    .collect();
                let mut expect_new = Vec::new();
                let mut previous: BTreeMap<String, String> = BTreeMap::new();
                for key in &msgs {
                    let context = if key.0.is_empty() {
                        None
                    } else {
                        previous.get(&key.0).cloned().or_else(|| {
                            m.live
                                .values()
                                .rev()
                                .find(|x| x.0 == key.0)
                                .map(|x| x.2.clone())
                        })
                    };
                    previous.insert(key.0.clone(), key.2.clone());
                    if !m.live.values().any(|x| x == key)
                        && !expect_new.iter().any(|(k, _)| k == key)
                    {
                        let indexed = match context {
                            Some(c) => format!("{c}\n{}", key.2),
                            None => key.2.clone(),
                        };
                        expect_new.push((key.clone(), indexed));
                    }
                }
                let out = v
                    .ingest(msgs.iter().map(|(s, r, t)| msg(s, *r, t, 0)).collect())
                    .unwrap();
                assert_eq!(out.stored.len(), expect_new.len());
                assert_eq!(out.skipped, msgs.len() - expect_new.len());
                for (id, (key, indexed)) in out.stored.iter().zip(expect_new) {
                    assert!(*id > m.max_id, "ids must increase");
                    m.max_id = *id;
                    m.live.insert(*id, key);
                    m.indexed.insert(*id, indexed);
                }
            }
            Op::Delete(pick) => {
                // Half the time a live id, otherwise any id ever issued (maybe deleted).
                let id = if pick % 2 == 0 && !m.live.is_empty() {
                    *m.live.keys().nth(pick / 2 % m.live.len()).unwrap()
                } else {
                    (pick as u64 / 2) % (m.max_id + 2)
                };
                assert_eq!(v.delete(id).unwrap(), m.live.remove(&id).is_some());
            }
            Op::Clear(session) => {
                let s = session.map(|i| SESSIONS[i]);
                let before = m.live.len();
                m.live
                    .retain(|_, (sess, _, _)| s.is_some_and(|s| s != sess));
                assert_eq!(v.clear(s).unwrap(), (before - m.live.len()) as u64);
            }
            Op::Search(words, k, session) => {
                let text = words
                    .iter()
                    .map(|&i| WORDS[i])
                    .collect::<Vec<_>>()
                    .join(" ");
                let filter = Filter {
                    session_id: session.map(|i| SESSIONS[i].to_string()),
                    ..Filter::default()
                };
                let q = embedder.embed(&text).unwrap();
                let mut truth: Vec<f32> = m
                    .live
                    .iter()
                    .filter(|(_, (s, _, _))| filter.session_id.as_ref().is_none_or(|f| f == s))
                    .map(|(id, _)| engine::dot(&q, &embedder.embed(&m.indexed[id]).unwrap()))
                    .collect();
                truth.sort_by(|a, b| b.total_cmp(a));
                truth.truncate(k);
                let got = v.search_vectors(&q, k, &filter).unwrap();
                assert_eq!(got.len(), truth.len(), "k results must come back");
                for ((id, score), t) in got.iter().zip(&truth) {
                    let (s, _, _) = m.live.get(id).expect("search returned a dead memory");
                    assert!(filter.session_id.as_ref().is_none_or(|f| f == s));
                    let indexed = &m.indexed[id];
                    assert!(
                        (engine::dot(&q, &embedder.embed(indexed).unwrap()) - score).abs() < 1e-4
                    );
                    // Graph search is approximate; on these tiny, tie-heavy sets it must
                    // still find results at least almost as good as the exact ones.
                    assert!(*score >= t - 0.35, "score {score} far below exact {t}");
                }
                let hybrid = v
                    .search(&engine::SearchQuery {
                        text,
                        k,
                        filter: filter.clone(),
                        boost_session: None,
                        now_ms: 0,
                    })
                    .unwrap();
                assert!(
                    hybrid
                        .iter()
                        .all(|h| m.live.contains_key(&h.memory.id)
                            && filter.matches_memory(&h.memory))
                );
                assert!(hybrid.len() <= k);
            }
            Op::Seal => {
                v.seal().unwrap();
            }
            Op::Compact => {
                v.compact_all().unwrap();
            }
            Op::Reopen => {
                drop(v);
                v = open(dir.path(), None);
            }
            Op::Crash(i) => {
                drop(v);
                let crashing = open(dir.path(), Some(CRASHES[i]));
                // It stops at the crash point, unless it never reached it (nothing to seal, or
                // every record deleted so no segment file is written).
                let r = if i < 3 {
                    crashing.seal()
                } else {
                    crashing.compact_all()
                };
                assert!(
                    matches!(r, Ok(_) | Err(engine::Error::InjectedCrash { .. })),
                    "{r:?}"
                );
                drop(crashing);
                v = open(dir.path(), None);
            }
        }
        // After every step: the vault holds exactly the live memories.
        let listed: Vec<u64> = v
            .list(None, usize::MAX, None)
            .unwrap()
            .iter()
            .rev()
            .map(|x| x.id)
            .collect();
        assert_eq!(listed, m.live.keys().copied().collect::<Vec<_>>());
        assert_eq!(v.stats().unwrap().memories, m.live.len() as u64);
    }
    for (id, (s, r, t)) in &m.live {
        let got = v.get(*id).unwrap().expect("live memory missing");
        assert_eq!((&got.session_id, got.role, &got.text), (s, *r, t));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn vault_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
