//! Seals stay small and graphless under bulk ingest; compaction builds the graphs.

use engine::{Role, Segment, Vault};

use crate::common::{msg, options};

const DIM: usize = 16;
const MEMTABLE_RECORDS_MAX: usize = 50;

/// The segments the vault's directory holds (sealed and installed ones; a seal leaves no
/// temporary directory behind on success).
fn segments_on_disk(v: &Vault) -> Vec<Segment> {
    let mut dirs: Vec<_> = std::fs::read_dir(v.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && !n.ends_with(".tmp"))
        })
        .collect();
    dirs.sort();
    dirs.iter()
        .map(|d| Segment::open(d, DIM).unwrap())
        .collect()
}

#[test]
fn seals_are_capped_and_graphless_until_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(DIM);
    o.memtable_records_max = MEMTABLE_RECORDS_MAX;
    // Small enough that every sealed segment would get a graph if the seal built one.
    o.hnsw.min_records = 10;
    let v = Vault::open(dir.path(), o).unwrap();
    // Several memtables' worth arrives before any seal runs (as when ingest outpaces seals).
    let total = 4 * MEMTABLE_RECORDS_MAX + 30;
    for batch in 0..(total / 46 + 1) {
        let msgs = (batch * 46..((batch + 1) * 46).min(total))
            .map(|i| msg("s", Role::User, &format!("word{i} alpha beta"), i as i64))
            .collect();
        v.ingest(msgs).unwrap();
    }
    assert_eq!(v.stats().unwrap().memtable as usize, total);

    assert!(v.seal().unwrap());
    let st = v.stats().unwrap();
    assert_eq!((st.memtable, st.memories), (0, total as u64));
    let sealed = segments_on_disk(&v);
    assert_eq!(sealed.len(), total.div_ceil(MEMTABLE_RECORDS_MAX));
    assert_eq!(st.segments as usize, sealed.len());
    for s in &sealed {
        assert!(s.len() as usize <= MEMTABLE_RECORDS_MAX, "{s:?}");
        assert!(!s.has_graph(), "{s:?}");
    }
    assert_eq!(
        sealed.iter().map(|s| s.len() as usize).sum::<usize>(),
        total
    );

    // The tiered policy merges the small segments into one graph-backed segment.
    assert!(v.compact().unwrap());
    let merged = segments_on_disk(&v);
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].len() as usize, total);
    assert!(merged[0].has_graph());
    assert_eq!(v.list(None, total + 1, None).unwrap().len(), total);
    v.verify().unwrap();
}

#[test]
fn compact_all_gives_a_lone_sealed_segment_its_graph() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(DIM);
    o.hnsw.min_records = 10;
    let v = Vault::open(dir.path(), o).unwrap();
    v.ingest(
        (0..20)
            .map(|i| msg("s", Role::User, &format!("word{i} gamma"), i))
            .collect(),
    )
    .unwrap();
    assert!(v.seal().unwrap());
    assert!(!segments_on_disk(&v)[0].has_graph());
    assert!(v.compact_all().unwrap());
    assert!(segments_on_disk(&v)[0].has_graph());
}

#[test]
fn graphless_segments_merge_into_a_graph_once_they_hold_enough_records() {
    // Three seals in three different size tiers: no tier fills, but together they are big
    // enough for a graph, so compaction merges them rather than leaving every search to
    // scan them one by one.
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(DIM);
    o.hnsw.min_records = 100;
    let v = Vault::open(dir.path(), o).unwrap();
    let mut next = 0i64;
    let mut seal_of = |n: i64| {
        v.ingest(
            (next..next + n)
                .map(|i| msg("s", Role::User, &format!("word{i} delta"), i))
                .collect(),
        )
        .unwrap();
        next += n;
        assert!(v.seal().unwrap());
    };
    seal_of(70);
    seal_of(20);
    assert!(
        !v.compact().unwrap(),
        "90 records are not enough for a graph"
    );
    seal_of(15);
    assert_eq!(segments_on_disk(&v).len(), 3);
    assert!(v.compact().unwrap());
    let merged = segments_on_disk(&v);
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].len(), 105);
    assert!(merged[0].has_graph());
    assert!(!v.compact().unwrap());
    v.verify().unwrap();
}
