//! The write path, dedupe, delete, list, filters and reopen on small vaults.

use engine::{Filter, Role};

use crate::common::{msg, open, options, query};

#[test]
fn ingest_search_get_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), 32);
    let out = v
        .ingest(vec![
            msg("s1", Role::User, "I adopted a cat named Miso", 1),
            msg("s1", Role::Assistant, "Miso is a lovely name for a cat", 2),
            msg("s2", Role::User, "my car needs new tyres", 3),
        ])
        .unwrap();
    assert_eq!(out.stored.len(), 3);
    assert_eq!(out.skipped, 0);
    // The client resends the whole history plus one new message.
    let again = v
        .ingest(vec![
            msg("s1", Role::User, "I adopted a cat named Miso", 1),
            msg("s1", Role::Assistant, "Miso is a lovely name for a cat", 2),
            msg("s2", Role::User, "my car needs new tyres", 3),
            msg("s2", Role::User, "my car needs new tyres", 3),
            msg("s1", Role::User, "what is my cat called", 4),
        ])
        .unwrap();
    assert_eq!((again.stored.len(), again.skipped), (1, 4));
    // Same text in another session or role is a different message.
    let other = v
        .ingest(vec![msg("s3", Role::User, "I adopted a cat named Miso", 5)])
        .unwrap();
    assert_eq!(other.stored.len(), 1);

    // "adopted": "what is my cat called" holds "cat Miso" in its context (the previous
    // message), so a query on those words alone would rightly find it too.
    let hits = v.search(&query("adopted cat Miso", 2)).unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.memory.text.contains("Miso")));
    assert!(hits[0].score >= hits[1].score && hits[0].score <= 1.0 && hits[1].score >= 0.0);
    let id = out.stored[2];
    assert_eq!(v.get(id).unwrap().unwrap().text, "my car needs new tyres");
    assert!(v.get(999).unwrap().is_none());
    assert_eq!(v.stats().unwrap().memories, 5);
}

#[test]
fn ids_are_monotonic_and_list_is_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), 16);
    let mut ids = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { "even" } else { "odd" };
        ids.extend(
            v.ingest(vec![msg(s, Role::User, &format!("message {i}"), i)])
                .unwrap()
                .stored,
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ids[0], 1);
    let all = v.list(None, 100, None).unwrap();
    assert_eq!(
        all.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    let page = v.list(Some(ids[5]), 3, None).unwrap();
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3], ids[2]]
    );
    let odd = v.list(None, 100, Some("odd")).unwrap();
    assert_eq!(odd.len(), 5);
    assert!(odd.iter().all(|m| m.session_id == "odd"));
}

#[test]
fn delete_clear_and_reset_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let v = open(dir.path(), 16);
        let ids = v
            .ingest(
                (0..6)
                    .map(|i| {
                        msg(
                            if i < 3 { "a" } else { "b" },
                            Role::User,
                            &format!("fact number {i}"),
                            i,
                        )
                    })
                    .collect(),
            )
            .unwrap()
            .stored;
        assert!(v.delete(ids[0]).unwrap());
        assert!(!v.delete(ids[0]).unwrap());
        assert!(!v.delete(12345).unwrap());
        assert_eq!(v.clear(Some("b")).unwrap(), 3);
        ids
    };
    let v = open(dir.path(), 16);
    assert!(v.get(ids[0]).unwrap().is_none());
    assert_eq!(v.list(None, 10, None).unwrap().len(), 2);
    let hits = v.search(&query("fact number", 10)).unwrap();
    assert_eq!(
        hits.iter()
            .map(|h| h.memory.id)
            .collect::<std::collections::BTreeSet<_>>(),
        [ids[1], ids[2]].into()
    );
    // A deleted message may be stored again (dedupe is against live memories only).
    assert_eq!(
        v.ingest(vec![msg("a", Role::User, "fact number 0", 0)])
            .unwrap()
            .stored
            .len(),
        1
    );
    v.reset().unwrap();
    assert_eq!(v.stats().unwrap().memories, 0);
    let after = v
        .ingest(vec![msg("a", Role::User, "fresh start", 9)])
        .unwrap()
        .stored;
    assert!(after[0] > ids[5], "ids are never reused");
    drop(v);
    let v = open(dir.path(), 16);
    assert_eq!(
        v.list(None, 10, None)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        after
    );
}

#[test]
fn filters_apply_during_search() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), 16);
    let mut batch = Vec::new();
    for i in 0..50 {
        let mut m = msg(
            &format!("s{}", i % 5),
            if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            },
            &format!("shared words item {i}"),
            i,
        );
        let mut md = engine::Metadata::new();
        md.insert("parity".into(), serde_json::json!(i % 2));
        m.metadata = Some(md);
        batch.push(m);
    }
    v.ingest(batch).unwrap();
    v.seal().unwrap();
    v.ingest(vec![msg("s0", Role::User, "shared words late", 100)])
        .unwrap();
    let mut q = query("shared words", 5);
    q.filter = Filter {
        session_id: Some("s0".into()),
        roles: Some(vec![Role::User]),
        created_after_ms: Some(10),
        created_before_ms: Some(101),
        metadata: vec![],
    };
    let hits = v.search(&q).unwrap();
    assert_eq!(hits.len(), 5, "k results come back under a filter");
    for h in &hits {
        assert!(q.filter.matches_memory(&h.memory), "{:?}", h.memory);
    }
    q.filter = Filter {
        metadata: vec![("parity".into(), serde_json::json!(1))],
        ..Filter::default()
    };
    let hits = v.search(&q).unwrap();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.memory.role == Role::Assistant));
}

#[test]
fn long_texts_are_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let v = open(dir.path(), 16);
    let text: String = (0..800).map(|i| format!("w{i} ")).collect();
    let out = v.ingest(vec![msg("s", Role::Note, &text, 1)]).unwrap();
    assert!(out.stored.len() > 1);
    let chunks: Vec<_> = out
        .stored
        .iter()
        .map(|&id| v.get(id).unwrap().unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .enumerate()
            .all(|(i, m)| m.chunk == i as u32 && m.content_hash == chunks[0].content_hash)
    );
    assert_eq!(
        v.ingest(vec![msg("s", Role::Note, &text, 1)])
            .unwrap()
            .skipped,
        1
    );
}

#[test]
fn embedder_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open(dir.path(), 16);
        v.ingest(vec![msg("", Role::User, "pin me", 0)]).unwrap();
    }
    let err = engine::Vault::open(dir.path(), options(24)).unwrap_err();
    assert!(
        matches!(
            err,
            engine::Error::EmbedderMismatch {
                stored_dim: 16,
                configured_dim: 24,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_user_error());
    // After a reset the vault accepts another embedder.
    let v = open(dir.path(), 16);
    v.reset().unwrap();
    drop(v);
    let v = engine::Vault::open(dir.path(), options(24)).unwrap();
    v.ingest(vec![msg("", Role::User, "new space", 0)]).unwrap();
}

#[test]
fn segments_serve_reads_after_seal_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = {
        let v = open(dir.path(), 16);
        let ids = v
            .ingest(
                (0..40)
                    .map(|i| msg("s", Role::User, &format!("alpha {i} beta"), i))
                    .collect(),
            )
            .unwrap()
            .stored;
        assert!(v.seal().unwrap());
        assert!(!v.seal().unwrap());
        v.delete(ids[3]).unwrap();
        let more = v
            .ingest(
                (0..5)
                    .map(|i| msg("s", Role::User, &format!("gamma {i}"), 100 + i))
                    .collect(),
            )
            .unwrap()
            .stored;
        assert!(v.seal().unwrap());
        assert_eq!(v.stats().unwrap().segments, 2);
        let mut ids = ids;
        ids.extend(more);
        ids
    };
    let v = open(dir.path(), 16);
    let st = v.stats().unwrap();
    assert_eq!((st.segments, st.memtable, st.memories), (2, 0, 44));
    assert!(v.get(ids[3]).unwrap().is_none());
    assert_eq!(v.get(ids[4]).unwrap().unwrap().text, "alpha 4 beta");
    assert_eq!(
        v.ingest(vec![msg("s", Role::User, "alpha 5 beta", 5)])
            .unwrap()
            .skipped,
        1
    );
    assert!(v.compact_all().unwrap());
    assert_eq!(v.stats().unwrap().segments, 1);
    assert_eq!(v.list(None, 100, None).unwrap().len(), 44);
    v.verify().unwrap();
}

/// An embedder that fails (or breaks its contract) on demand.
struct Flaky {
    inner: std::sync::Arc<dyn engine::Embedder>,
    /// 0 works, 1 fails, 2 returns a NaN, 3 returns too short a vector, 4 too few vectors.
    mode: std::sync::atomic::AtomicU8,
}

impl engine::Embedder for Flaky {
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
        let mut out = self.inner.embed_batch(texts)?;
        match self.mode.load(std::sync::atomic::Ordering::SeqCst) {
            0 => {}
            1 => {
                return Err(engine::Error::Embedder {
                    embedder: "flaky".into(),
                    reason: "endpoint down".into(),
                });
            }
            2 => out[0][0] = f32::NAN,
            3 => {
                out[0].pop();
            }
            _ => {
                out.pop();
            }
        }
        Ok(out)
    }
}

/// A failing embedder is a clear error, never a panic, and the ingest it fails writes
/// nothing: not to the memtable, not to the WAL (a reopen finds only the earlier memory).
#[test]
fn an_embedder_failure_fails_the_ingest_and_writes_nothing() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let flaky = std::sync::Arc::new(Flaky {
        inner: crate::common::WordHash::shared(16),
        mode: std::sync::atomic::AtomicU8::new(0),
    });
    let mut o = engine::VaultOptions::new(flaky.clone());
    o.background = false;
    let v = engine::Vault::open(dir.path(), o.clone()).unwrap();
    v.ingest(vec![msg("s", Role::User, "kept before the outage", 1)])
        .unwrap();
    for mode in 1..=4u8 {
        flaky.mode.store(mode, Ordering::SeqCst);
        let batch = vec![
            msg("s", Role::User, "lost in the outage", 2),
            msg("s", Role::Assistant, "also lost", 3),
        ];
        let err = v.ingest(batch).unwrap_err();
        assert!(
            matches!(err, engine::Error::Embedder { .. }),
            "mode {mode}: {err}"
        );
        assert!(!err.is_user_error(), "an embedder fault is the service's");
        let err = v.search(&query("outage", 5)).unwrap_err();
        assert!(matches!(err, engine::Error::Embedder { .. }), "mode {mode}");
        assert_eq!(v.stats().unwrap().memories, 1, "mode {mode}");
    }
    flaky.mode.store(0, Ordering::SeqCst);
    drop(v);
    let v = engine::Vault::open(dir.path(), o).unwrap();
    let texts: Vec<String> = v
        .list(None, 10, None)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["kept before the outage"]);
    // Once the embedder is back, the same messages are stored (not skipped as duplicates).
    let out = v
        .ingest(vec![msg("s", Role::User, "lost in the outage", 2)])
        .unwrap();
    assert_eq!((out.stored.len(), out.skipped), (1, 0));
}
