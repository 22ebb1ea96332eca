//! Crash consistency at seal and compaction boundaries: the vault stops at an injected
//! failure point exactly as a dead process would (temp dir written; renamed but not in the
//! manifest; manifest written but WAL not checkpointed), is dropped, and reopened. Every
//! acknowledged memory must be there exactly once and nothing deleted may come back.

use std::collections::BTreeMap;

use engine::{CrashPoint, Error, Role, Vault};

use crate::common::{msg, options, query};

const DIM: usize = 16;

fn open_with(dir: &std::path::Path, crash: Option<CrashPoint>) -> Vault {
    let mut o = options(DIM);
    o.crash_at = crash;
    Vault::open(dir, o).unwrap()
}

/// Ingests `n` messages starting at `from`, deletes every fifth; returns the live id → text.
fn populate(v: &Vault, from: usize, n: usize, live: &mut BTreeMap<u64, String>) {
    let batch = (from..from + n)
        .map(|i| {
            msg(
                "s",
                Role::User,
                &format!("memory {i} about topic {}", i % 7),
                i as i64,
            )
        })
        .collect();
    let out = v.ingest(batch).unwrap();
    for (k, id) in out.stored.iter().enumerate() {
        live.insert(
            *id,
            format!("memory {} about topic {}", from + k, (from + k) % 7),
        );
    }
    for id in out.stored.iter().step_by(5) {
        assert!(v.delete(*id).unwrap());
        live.remove(id);
    }
}

fn check(v: &Vault, live: &BTreeMap<u64, String>) {
    let listed = v.list(None, 100_000, None).unwrap();
    let got: Vec<(u64, String)> = listed
        .iter()
        .rev()
        .map(|m| (m.id, m.text.clone()))
        .collect();
    let want: Vec<(u64, String)> = live.iter().map(|(k, t)| (*k, t.clone())).collect();
    assert_eq!(
        got, want,
        "listed memories differ from the acknowledged ones"
    );
    assert_eq!(v.stats().unwrap().memories, live.len() as u64);
    let hits = v.search(&query("memory topic", 50)).unwrap();
    assert_eq!(hits.len(), live.len().min(50));
    assert!(
        hits.iter().all(|h| live.contains_key(&h.memory.id)),
        "a deleted memory came back"
    );
    // Dedupe state survived too: resending an acknowledged message stores nothing.
    if let Some((_, text)) = live.iter().next() {
        let i: i64 = text.split(' ').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            v.ingest(vec![msg("s", Role::User, text, i)])
                .unwrap()
                .skipped,
            1
        );
    }
    v.verify().unwrap();
}

fn seal_crash(point: CrashPoint) {
    let dir = tempfile::tempdir().unwrap();
    let mut live = BTreeMap::new();
    {
        let v = open_with(dir.path(), None);
        populate(&v, 0, 30, &mut live);
        assert!(v.seal().unwrap());
        populate(&v, 30, 30, &mut live);
    }
    {
        let v = open_with(dir.path(), Some(point));
        let err = v.seal().unwrap_err();
        assert!(
            matches!(err, Error::InjectedCrash { point: p } if p == point),
            "{err}"
        );
    }
    let v = open_with(dir.path(), None);
    check(&v, &live);
    // The vault keeps working: seal what was replayed, add more, compact, reopen.
    v.seal().unwrap();
    populate(&v, 60, 10, &mut live);
    v.compact_all().unwrap();
    check(&v, &live);
    drop(v);
    check(&open_with(dir.path(), None), &live);
}

fn compaction_crash(point: CrashPoint) {
    let dir = tempfile::tempdir().unwrap();
    let mut live = BTreeMap::new();
    {
        let v = open_with(dir.path(), None);
        for round in 0..3 {
            populate(&v, round * 20, 20, &mut live);
            assert!(v.seal().unwrap());
        }
        // Deletes after sealing live as tombstones in the WAL/manifest.
        let victim = *live.keys().nth(3).unwrap();
        assert!(v.delete(victim).unwrap());
        live.remove(&victim);
        populate(&v, 60, 10, &mut live);
    }
    {
        let v = open_with(dir.path(), Some(point));
        let err = v.compact_all().unwrap_err();
        assert!(
            matches!(err, Error::InjectedCrash { point: p } if p == point),
            "{err}"
        );
    }
    let v = open_with(dir.path(), None);
    check(&v, &live);
    v.compact_all().unwrap();
    assert_eq!(v.stats().unwrap().segments, 1);
    check(&v, &live);
    drop(v);
    check(&open_with(dir.path(), None), &live);
}

#[test]
fn crash_after_seal_temp_dir() {
    seal_crash(CrashPoint::SealAfterTempDir);
}

#[test]
fn crash_after_seal_rename() {
    seal_crash(CrashPoint::SealAfterRename);
}

#[test]
fn crash_after_seal_manifest() {
    seal_crash(CrashPoint::SealAfterManifest);
}

#[test]
fn crash_after_compaction_temp_dir() {
    compaction_crash(CrashPoint::CompactAfterTempDir);
}

#[test]
fn crash_after_compaction_rename() {
    compaction_crash(CrashPoint::CompactAfterRename);
}

#[test]
fn crash_after_compaction_manifest() {
    compaction_crash(CrashPoint::CompactAfterManifest);
}

#[test]
fn damaged_segment_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let v = open_with(dir.path(), None);
        populate(&v, 0, 10, &mut BTreeMap::new());
        v.seal().unwrap();
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .unwrap();
    let records = seg.join("records.bin");
    let mut bytes = std::fs::read(&records).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&records, bytes).unwrap();
    let err = Vault::open(dir.path(), options(DIM)).unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(!err.is_user_error());
}
