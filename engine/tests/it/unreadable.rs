//! An I/O error on one vault's mapped segment (issue 12, item 7): the classic reproducible
//! one is a file truncated under a live map, whose pages then fault with SIGBUS. Without
//! containment the read kills the process (this test binary); with it, that vault answers
//! `SegmentUnreadable` for every call, stays open and reported, and every other vault keeps
//! answering.

use engine::{Engine, EngineConfig, Error, Role};

use crate::common::{WordHash, msg, query};

fn engine(root: &std::path::Path, open_max: usize) -> Engine {
    let mut c = EngineConfig::new(root.to_path_buf());
    c.embedder = WordHash::shared(16);
    c.open_vaults_max = open_max;
    Engine::open(c).unwrap()
}

/// Truncates every file of every sealed segment of `vault_dir` to zero bytes.
fn truncate_segments(vault_dir: &std::path::Path) -> usize {
    let mut files = 0;
    for entry in std::fs::read_dir(vault_dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("seg-") {
            continue;
        }
        for file in std::fs::read_dir(entry.path()).unwrap().flatten() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(file.path())
                .unwrap()
                .set_len(0)
                .unwrap();
            files += 1;
        }
    }
    files
}

fn unreadable<T: std::fmt::Debug>(result: Result<T, Error>) -> bool {
    matches!(result, Err(Error::SegmentUnreadable { .. }))
}

#[test]
fn an_io_error_on_one_vaults_segment_fails_that_vault_only() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 2);
    let (sick, well) = (e.vault("sick").unwrap(), e.vault("well").unwrap());
    for v in [&sick, &well] {
        let batch = (0..40)
            .map(|i| {
                msg(
                    "s",
                    Role::User,
                    &format!("memo {i} about trains and cats"),
                    1,
                )
            })
            .collect();
        v.ingest(batch).unwrap();
        assert!(v.seal().unwrap());
        assert_eq!(v.stats().unwrap().segments, 1);
    }
    assert!(truncate_segments(sick.dir()) >= 3);

    // The first read touches the truncated pages: contained, answered as an error.
    let err = sick.search(&query("trains", 5)).unwrap_err();
    assert!(matches!(err, Error::SegmentUnreadable { .. }), "{err}");
    assert!(!err.is_user_error(), "a storage fault, 503");
    // Every later call of that vault refuses at once, reads and writes alike.
    assert!(unreadable(sick.search(&query("cats", 5))));
    assert!(unreadable(sick.get(1)));
    assert!(unreadable(sick.list(None, 10, None)));
    assert!(unreadable(sick.delete(1)));
    assert!(unreadable(sick.clear(Some("s"))));
    assert!(unreadable(sick.ingest(vec![msg(
        "s",
        Role::User,
        "more",
        2
    )])));
    assert!(unreadable(sick.search_vectors(
        &[0.0; 16],
        5,
        &Default::default()
    )));
    assert!(sick.is_unreadable());

    // The other vault is untouched.
    let hits = well.search(&query("trains", 5)).unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(well.list(None, 100, None).unwrap().len(), 40);
    well.ingest(vec![msg("s", Role::User, "still writable", 2)])
        .unwrap();
    assert_eq!(e.unreadable_vaults(), vec!["sick".to_string()]);

    // Reported until the process ends: the registry never closes it to make room.
    drop((sick, well));
    for i in 0..4 {
        e.vault(&format!("other{i}")).unwrap();
    }
    assert_eq!(e.unreadable_vaults(), vec!["sick".to_string()]);
    drop(e);

    // The next process does not trust the files: the open refuses the truncated segment
    // (a storage fault, never a panic), and the healthy vault opens with its data.
    let e = engine(dir.path(), 2);
    let err = e.vault("sick").unwrap_err();
    assert!(!err.is_user_error(), "{err}");
    assert_eq!(e.vault("well").unwrap().stats().unwrap().memories, 41);
}

/// A merge never makes zeros durable: compaction of a damaged segment fails and leaves the
/// segment list as it was.
#[test]
fn compaction_refuses_a_segment_that_could_not_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), 2);
    let v = e.vault("sick").unwrap();
    for round in 0..2 {
        let batch = (0..20)
            .map(|i| msg("s", Role::User, &format!("round {round} memo {i}"), 1))
            .collect();
        v.ingest(batch).unwrap();
        assert!(v.seal().unwrap());
    }
    let manifest = std::fs::read(v.dir().join("MANIFEST")).unwrap();
    truncate_segments(v.dir());
    assert!(unreadable(v.compact_all()));
    assert_eq!(
        std::fs::read(v.dir().join("MANIFEST")).unwrap(),
        manifest,
        "no segment list was stored from zeros"
    );
}

/// A segment with an HNSW graph (the path large vaults search: int8 codes, graph walk, f32
/// rescoring) read from zeros after its files were truncated: contained the same way.
#[test]
fn a_graph_segment_that_cannot_be_read_is_contained_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = EngineConfig::new(dir.path().to_path_buf());
    c.embedder = WordHash::shared(16);
    c.hnsw = engine::HnswParams {
        min_records: 64,
        ..engine::HnswParams::default()
    };
    let e = Engine::open(c).unwrap();
    let v = e.vault("sick").unwrap();
    for round in 0..2 {
        let batch = (0..100)
            .map(|i| {
                msg(
                    "s",
                    Role::User,
                    &format!("round {round} memo {i} trains"),
                    1,
                )
            })
            .collect();
        v.ingest(batch).unwrap();
        assert!(v.seal().unwrap());
    }
    assert!(v.compact_all().unwrap());
    assert_eq!(v.search(&query("trains", 5)).unwrap().len(), 5);
    assert!(
        std::fs::read_dir(v.dir())
            .unwrap()
            .flatten()
            .any(|d| d.path().join("graph.bin").exists()),
        "the merged segment has a graph"
    );
    truncate_segments(v.dir());
    assert!(unreadable(v.search(&query("trains", 5))));
    assert!(unreadable(v.search_vectors(
        &[0.25; 16],
        5,
        &Default::default()
    )));
    assert_eq!(e.unreadable_vaults(), vec!["sick".to_string()]);
}
