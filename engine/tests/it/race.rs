//! Seals and compactions racing each other, made deterministic: one operation is stopped
//! at each of its [`CrashPoint`]s (through `VaultOptions::pause_at`), the other runs to
//! completion, then the first resumes. Whatever the interleaving, every acknowledged memory
//! must be there after a reopen, and the reopened vault must verify.
//!
//! Regression: a kill -9 campaign lost runs of acknowledged writes because a seal stored a
//! MANIFEST with its new segment and checkpointed the WAL *before* adding the segment to the
//! in-memory list, while a merge built its manifest from that list: the merge's manifest
//! dropped the sealed segment, the next open deleted it as a leftover, and the WAL no longer
//! held its records. The segment list now changes in one place, under one lock, together
//! with the manifest.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use engine::{CrashPoint, PauseHook, Role, Vault};

use crate::common::{msg, options, query};

const DIM: usize = 16;

/// A `pause_at` hook that blocks the first time `point` is reached: it reports through
/// `reached` and waits for `resume`.
fn pause_once(point: CrashPoint) -> (PauseHook, Receiver<()>, Sender<()>) {
    let (reached_tx, reached_rx) = channel();
    let (resume_tx, resume_rx) = channel::<()>();
    let armed = Mutex::new(Some((reached_tx, resume_rx)));
    let hook = move |p: CrashPoint| {
        if p != point {
            return;
        }
        let Some((reached, resume)) = armed.lock().unwrap().take() else {
            return;
        };
        reached.send(()).unwrap();
        resume.recv().unwrap();
    };
    (Arc::new(hook), reached_rx, resume_tx)
}

fn populate(v: &Vault, from: usize, n: usize, live: &mut BTreeMap<u64, String>) {
    let texts: Vec<String> = (from..from + n)
        .map(|i| format!("memory {i} about topic {}", i % 7))
        .collect();
    let batch = texts
        .iter()
        .enumerate()
        .map(|(k, t)| msg("s", Role::User, t, (from + k) as i64))
        .collect();
    let out = v.ingest(batch).unwrap();
    live.extend(out.stored.into_iter().zip(texts));
}

fn check(v: &Vault, live: &BTreeMap<u64, String>, when: &str) {
    let got: BTreeMap<u64, String> = v
        .list(None, 100_000, None)
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect();
    let lost: Vec<u64> = live
        .keys()
        .filter(|id| !got.contains_key(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{when}: acknowledged memories lost: {lost:?}"
    );
    assert_eq!(&got, live, "{when}");
    assert_eq!(
        v.search(&query("memory topic", 100)).unwrap().len(),
        live.len().min(100)
    );
    v.verify().unwrap();
}

/// Two sealed segments and a memtable of 20 (replayed from the WAL), enough for a seal and
/// a merge to race; the vault is reopened with `hook`, so the setup's seals do not pause.
fn prepared(dir: &std::path::Path, hook: PauseHook) -> (Arc<Vault>, BTreeMap<u64, String>) {
    let mut live = BTreeMap::new();
    {
        let v = Vault::open(dir, options(DIM)).unwrap();
        for round in 0..2 {
            populate(&v, round * 20, 20, &mut live);
            assert!(v.seal().unwrap());
        }
        populate(&v, 40, 20, &mut live);
    }
    let mut o = options(DIM);
    o.pause_at = Some(hook);
    (Arc::new(Vault::open(dir, o).unwrap()), live)
}

/// Stops `paused` at `point`, runs `racing` to completion, resumes `paused`; then checks
/// the vault in process and after a reopen.
fn interleave(point: CrashPoint, paused: fn(&Vault) -> bool, racing: fn(&Vault) -> bool) {
    let dir = tempfile::tempdir().unwrap();
    let (hook, reached, resume) = pause_once(point);
    let (v, mut live) = prepared(dir.path(), hook);
    let first = {
        let v = Arc::clone(&v);
        std::thread::spawn(move || paused(&v))
    };
    reached
        .recv()
        .expect("the paused operation reaches its point");
    assert!(racing(&v), "{point:?}: the racing operation did nothing");
    resume.send(()).unwrap();
    assert!(
        first.join().unwrap(),
        "{point:?}: the paused operation did nothing"
    );
    // The vault keeps working after the race.
    populate(&v, 60, 5, &mut live);
    check(&v, &live, &format!("{point:?}, in process"));
    drop(v);
    let v = Vault::open(dir.path(), options(DIM)).unwrap();
    check(&v, &live, &format!("{point:?}, after reopen"));
    v.seal().unwrap();
    v.compact_all().unwrap();
    drop(v);
    check(
        &Vault::open(dir.path(), options(DIM)).unwrap(),
        &live,
        &format!("{point:?}, compacted"),
    );
}

fn seal(v: &Vault) -> bool {
    v.seal().unwrap()
}

fn merge_all(v: &Vault) -> bool {
    v.compact_all().unwrap()
}

#[test]
fn a_merge_while_a_seal_is_between_its_steps_keeps_the_sealed_segment() {
    for point in [CrashPoint::SealAfterRename, CrashPoint::SealAfterManifest] {
        interleave(point, seal, merge_all);
    }
}

#[test]
fn a_seal_while_a_merge_is_between_its_steps_keeps_both() {
    for point in [
        CrashPoint::CompactAfterRename,
        CrashPoint::CompactAfterManifest,
    ] {
        interleave(point, merge_all, seal);
    }
}
