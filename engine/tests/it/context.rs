//! Contextual indexing: a record is indexed (BM25 and embedding) together with the previous
//! message of its session, is shown without it, and every index build — memtable, seal,
//! compaction, reopen — indexes the same thing.

use engine::{Filter, Role, Vault};

use crate::common::{WordHash, msg, open, query};

const DIM: usize = 64;

/// Asserts that the vector stored for `id` is the embedding of exactly `indexed`: its score
/// for a probe query is the probe's dot product with that embedding.
fn assert_embedded(v: &Vault, id: u64, indexed: &str) {
    let e = WordHash::shared(DIM);
    for probe in [
        "city move spring",
        "harbour sail porto",
        "zebra weather talk",
        indexed,
    ] {
        let q = e.embed(probe).unwrap();
        let hits = v.search_vectors(&q, 50, &Filter::default()).unwrap();
        let got = hits.iter().find(|h| h.0 == id).unwrap().1;
        let want = engine::dot(&q, &e.embed(indexed).unwrap());
        assert!(
            (got - want).abs() < 1e-5,
            "{id} was not embedded as {indexed:?}"
        );
    }
}

#[test]
fn previous_message_of_the_session_is_indexed_but_not_shown() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), DIM);
    // One ingest per message: the context comes from the stored session, not the batch.
    let ask = v
        .ingest(vec![msg("s", Role::User, "which city did you move to", 1)])
        .unwrap()
        .stored[0];
    let answer = v
        .ingest(vec![msg("s", Role::Assistant, "Lisbon last spring", 2)])
        .unwrap()
        .stored[0];
    // No session, no context.
    let loose = v
        .ingest(vec![
            msg("", Role::User, "which harbour did you sail from", 3),
            msg("", Role::Assistant, "Porto early autumn", 4),
        ])
        .unwrap()
        .stored[1];
    assert_eq!(v.get(answer).unwrap().unwrap().text, "Lisbon last spring");
    let hits = v.search(&query("city move", 2)).unwrap();
    let ids: Vec<u64> = hits.iter().map(|h| h.memory.id).collect();
    assert!(ids.contains(&ask) && ids.contains(&answer), "{ids:?}");
    let answer_hit = hits.iter().find(|h| h.memory.id == answer).unwrap();
    assert_eq!(answer_hit.memory.text, "Lisbon last spring");
    assert_embedded(&v, answer, "which city did you move to\nLisbon last spring");
    assert_embedded(&v, ask, "which city did you move to");
    // A message without a session has no context.
    assert_embedded(&v, loose, "Porto early autumn");
}

#[test]
fn deleted_previous_message_is_not_context() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), DIM);
    let first = v
        .ingest(vec![msg("s", Role::User, "secret passphrase zebra", 1)])
        .unwrap()
        .stored[0];
    assert!(v.delete(first).unwrap());
    let next = v
        .ingest(vec![msg("s", Role::User, "unrelated weather talk", 2)])
        .unwrap()
        .stored[0];
    assert_embedded(&v, next, "unrelated weather talk");
}

#[test]
fn a_chunk_is_indexed_with_the_chunk_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), DIM);
    v.ingest(vec![msg("s", Role::User, "tell me the whole story", 1)])
        .unwrap();
    let long: String = (0..300).map(|i| format!("word{i} ")).collect();
    let chunks = engine::chunk_text(&long);
    assert!(chunks.len() >= 2);
    let ids = v
        .ingest(vec![msg("s", Role::Assistant, &long, 2)])
        .unwrap()
        .stored;
    assert_eq!(ids.len(), chunks.len());
    assert_embedded(
        &v,
        ids[0],
        &format!("tell me the whole story\n{}", chunks[0]),
    );
    for i in 1..chunks.len() {
        assert_embedded(&v, ids[i], &format!("{}\n{}", chunks[i - 1], chunks[i]));
    }
    // The next message's context is the message's last chunk.
    let after = v
        .ingest(vec![msg("s", Role::User, "thanks", 3)])
        .unwrap()
        .stored[0];
    let last = chunks[chunks.len() - 1];
    assert_embedded(&v, after, &format!("{last}\nthanks"));
}

fn ranking(v: &Vault, queries: &[&str]) -> Vec<Vec<(u64, f32)>> {
    queries
        .iter()
        .map(|q| {
            v.search(&query(q, 8))
                .unwrap()
                .into_iter()
                .map(|h| (h.memory.id, h.score))
                .collect()
        })
        .collect()
}

fn assert_same(a: &[Vec<(u64, f32)>], b: &[Vec<(u64, f32)>], stage: &str) {
    for (x, y) in a.iter().zip(b) {
        let ids = |r: &[(u64, f32)]| r.iter().map(|h| h.0).collect::<Vec<_>>();
        assert_eq!(ids(x), ids(y), "ranking changed after {stage}");
        for (p, q) in x.iter().zip(y) {
            assert!((p.1 - q.1).abs() < 1e-4, "score changed after {stage}");
        }
    }
}

#[test]
fn memtable_segment_compaction_and_reopen_rank_alike() {
    const QUERIES: [&str; 4] = [
        "where did the dog go",
        "favourite dinner recipe",
        "piano lessons",
        "trip to the mountains",
    ];
    let dir = tempfile::tempdir().unwrap();
    let topics = ["dog park walk", "dinner recipe soup", "piano lesson scales"];
    let before = {
        let v = open(dir.path(), DIM);
        for i in 0..30i64 {
            let session = format!("s{}", i % 3);
            let text = format!("{} note {i} mountains {}", topics[(i % 3) as usize], i % 5);
            v.ingest(vec![msg(&session, Role::User, &text, i)]).unwrap();
        }
        // A batch: contexts come from earlier messages of the batch.
        v.ingest(vec![
            msg("s0", Role::User, "the dog ran off", 40),
            msg("s0", Role::Assistant, "did it come back", 41),
        ])
        .unwrap();
        let memtable = ranking(&v, &QUERIES);
        assert!(v.seal().unwrap());
        assert_same(&memtable, &ranking(&v, &QUERIES), "seal");
        v.ingest(vec![msg("s1", Role::User, "a new soup recipe", 50)])
            .unwrap();
        assert!(v.seal().unwrap());
        let two_segments = ranking(&v, &QUERIES);
        assert!(v.compact_all().unwrap());
        assert_same(&two_segments, &ranking(&v, &QUERIES), "compaction");
        two_segments
    };
    let v = open(dir.path(), DIM);
    assert_same(&before, &ranking(&v, &QUERIES), "reopen");
}
