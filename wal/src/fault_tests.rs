//! Fault injection: fail the Nth write or fsync (segment, directory or checkpoint) and check
//! that the log poisons itself, refuses all later work, and that a reopen over the real file
//! system recovers every acknowledged record intact and nothing that was never attempted.
//!
//! Long (~880 lines): test-only; one scenario per fault, each needing its own setup.
//!
//! Then the full disk: writes failing with `ENOSPC`/`EDQUOT` must stall the log instead
//! (`WalError::NoSpace`, `Health::WriteStalled`), undo the failed group on disk before the
//! error is returned, and let the next append through once there is room. The rule checked:
//! **a batch whose append returned `NoSpace` is wholly absent from the log** — on disk the
//! moment the error is returned, and after any reopen — and every acknowledged batch is
//! present with the LSNs it was given, which stay gap-free (the discarded LSNs are reused).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::file::{FaultPlan, FaultyStorage};
use crate::{Durability, Health, Lsn, Wal, WalError, WalOptions};

fn options(durability: Durability) -> WalOptions {
    WalOptions {
        segment_bytes_max: 300,
        durability,
        ..WalOptions::default()
    }
}

/// The payload the `i`th append of writer `t` carries: recognisable, varied in length.
fn payload(t: u8, i: u32) -> Vec<u8> {
    let mut p = vec![t; (i % 40) as usize];
    p.extend_from_slice(&i.to_le_bytes());
    p
}

/// Checks a reopened log against what was acknowledged: every acked record present with its
/// LSN and bytes; every other record one that some writer really attempted.
fn check_reopen(
    dir: &Path,
    options: &WalOptions,
    acked: &HashMap<Lsn, (u8, Vec<u8>)>,
    writers: u8,
    attempts: u32,
) {
    let (log, recovery) = Wal::open(dir, options.clone()).expect("reopen after fault");
    let by_lsn: HashMap<Lsn, (u8, Vec<u8>)> = recovery
        .records
        .iter()
        .map(|r| (r.lsn, (r.kind, r.payload.clone())))
        .collect();
    for (lsn, want) in acked {
        assert_eq!(
            by_lsn.get(lsn),
            Some(want),
            "acknowledged lsn {lsn} lost or changed"
        );
    }
    for r in &recovery.records {
        let attempted = r.kind < writers && (0..attempts).any(|i| payload(r.kind, i) == r.payload);
        assert!(attempted, "lsn {} holds bytes nobody wrote", r.lsn);
    }
    let lsns: Vec<Lsn> = recovery.records.iter().map(|r| r.lsn).collect();
    assert!(
        lsns.windows(2).all(|w| w[1] == w[0] + 1),
        "lsns not contiguous: {lsns:?}"
    );
    // The reopened log is healthy again.
    let next = log.append(0, b"after").expect("append after reopen");
    assert_eq!(next, lsns.last().copied().unwrap_or(0) + 1);
}

/// One writer appends until the injected fault hits; returns what was acknowledged.
fn run_single(
    dir: &Path,
    options: &WalOptions,
    plan: FaultPlan,
    attempts: u32,
) -> (HashMap<Lsn, (u8, Vec<u8>)>, bool) {
    let storage = Arc::new(FaultyStorage::new(plan));
    let (log, _) = match Wal::open_with(dir, options.clone(), storage) {
        Ok(opened) => opened,
        Err(WalError::Io { .. }) => return (HashMap::new(), true), // The fault hit segment creation.
        Err(other) => panic!("unexpected open error {other}"),
    };
    let mut acked = HashMap::new();
    let mut failed = false;
    for i in 0..attempts {
        let p = payload(0, i);
        match log.append(0, &p) {
            Ok(lsn) => {
                acked.insert(lsn, (0, p));
            }
            Err(WalError::Io { .. }) => {
                failed = true;
                break;
            }
            Err(other) => panic!("first failure must be the I/O error, got {other}"),
        }
    }
    if failed {
        assert!(matches!(log.append(0, b"x"), Err(WalError::Poisoned)));
        assert!(matches!(
            log.append_batch(&[(0, b"y".as_slice())]),
            Err(WalError::Poisoned)
        ));
        assert_sync_when_poisoned(&log);
        assert!(matches!(log.checkpoint(0), Err(WalError::Poisoned)));
    }
    (acked, failed)
}

#[test]
fn failed_write_poisons_and_reopen_keeps_exactly_the_acknowledged_records() {
    for n in 1..40 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let options = options(Durability::Fsync);
        let plan = FaultPlan {
            fail_write_at: Some(n),
            ..FaultPlan::default()
        };
        let (acked, failed) = run_single(tmp.path(), &options, plan, 60);
        assert!(failed, "write {n} was never reached");
        // A failed write leaves at most half a frame, which recovery cuts off.
        let (_log, recovery) = Wal::open(tmp.path(), options.clone()).expect("reopen");
        assert_eq!(recovery.records.len(), acked.len(), "write fault {n}");
        drop(_log);
        check_reopen(tmp.path(), &options, &acked, 1, 60);
    }
}

#[test]
fn failed_fsync_poisons_and_reopen_keeps_the_acknowledged_records() {
    for durability in [Durability::Fsync, Durability::Buffered] {
        for n in 1..40 {
            let tmp = tempfile::tempdir().expect("tempdir");
            let options = options(durability);
            let plan = FaultPlan {
                fail_sync_at: Some(n),
                ..FaultPlan::default()
            };
            let (acked, _failed) = run_single(tmp.path(), &options, plan, 30);
            check_reopen(tmp.path(), &options, &acked, 1, 30);
        }
    }
}

#[test]
fn fsync_failure_is_never_retried() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_sync_at: Some(3),
        ..FaultPlan::default()
    }));
    let (log, _) =
        Wal::open_with(tmp.path(), options(Durability::Fsync), storage.clone()).expect("open");
    // Open used two fsyncs (segment header, directory); the first append's fsync fails.
    assert!(matches!(
        log.append(1, b"a"),
        Err(WalError::Io { op: "fsync", .. })
    ));
    let syncs = storage.syncs();
    for _ in 0..3 {
        assert!(matches!(log.append(1, b"b"), Err(WalError::Poisoned)));
    }
    assert_sync_when_poisoned(&log);
    assert_eq!(
        storage.syncs(),
        syncs,
        "a poisoned log must not fsync again"
    );
    assert_eq!(log.last_lsn(), 0);
}

#[test]
fn checkpoint_failure_poisons() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Open: 1 header write. Then five appends (writes 2..=6); the checkpoint's write is the 7th.
    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_write_at: Some(7),
        ..FaultPlan::default()
    }));
    let (log, _) =
        Wal::open_with(tmp.path(), options(Durability::Fsync), storage.clone()).expect("open");
    for i in 0..5 {
        log.append(1, &[i]).expect("append");
    }
    assert_eq!(storage.writes(), 6);
    assert!(matches!(log.checkpoint(3), Err(WalError::Io { .. })));
    assert!(matches!(log.append(1, b"x"), Err(WalError::Poisoned)));
    drop(log);
    let (_log, recovery) = Wal::open(tmp.path(), options(Durability::Fsync)).expect("reopen");
    assert_eq!(
        recovery.checkpoint, 0,
        "the failed checkpoint must not be visible"
    );
    assert_eq!(recovery.records.len(), 5);
}

#[test]
fn concurrent_writers_under_a_write_fault_lose_no_acknowledged_record() {
    const WRITERS: u8 = 4;
    const ATTEMPTS: u32 = 40;
    for n in [3, 8, 15, 30] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let options = options(Durability::Fsync);
        let storage = Arc::new(FaultyStorage::new(FaultPlan {
            fail_write_at: Some(n),
            ..FaultPlan::default()
        }));
        let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage).expect("open");
        let log = Arc::new(log);
        let handles: Vec<_> = (0..WRITERS)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..ATTEMPTS {
                        let p = payload(t, i);
                        match log.append(t, &p) {
                            Ok(lsn) => acked.push((lsn, (t, p))),
                            Err(WalError::Io { .. } | WalError::Poisoned) => break,
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        let acked: HashMap<Lsn, (u8, Vec<u8>)> = handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer"))
            .collect();
        assert!(
            matches!(log.append(0, b"x"), Err(WalError::Poisoned)),
            "write {n} never failed"
        );
        drop(log);
        check_reopen(tmp.path(), &options, &acked, WRITERS, ATTEMPTS);
    }
}

#[test]
fn crash_while_recovery_drops_segments_behind_a_checkpoint_leaves_an_openable_log() {
    // Buffered mode after an OS crash: the checkpoint (always fsynced) names LSN 3, but the
    // segment lost its unsynced records. Recovery must resume at LSN 4 and drop the stale
    // segment; a crash at that point (the failed remove) must not leave a log that refuses to
    // open with an LSN gap between the stale segment and a new one.
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = options(Durability::Buffered);
    let (log, _) = Wal::open(tmp.path(), options.clone()).expect("open");
    for i in 0..3 {
        log.append(1, &[i]).expect("append");
    }
    log.checkpoint(3).expect("checkpoint");
    drop(log);
    let segment = crate::segment::segment_path(tmp.path(), 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|f| f.set_len(crate::segment::SEGMENT_HEADER_BYTES as u64))
        .expect("drop the unsynced records");

    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_remove_at: Some(1),
        ..FaultPlan::default()
    }));
    assert!(Wal::open_with(tmp.path(), options.clone(), storage).is_err());

    let (log, recovery) = Wal::open(tmp.path(), options).expect("reopen after the crash");
    assert_eq!(recovery.checkpoint, 3);
    assert!(recovery.records.is_empty());
    assert_eq!(log.append(1, b"next").expect("append"), 4);
}

#[test]
fn a_checkpoint_near_the_end_of_the_lsn_space_is_refused_not_a_later_panic() {
    // A damaged or hostile checkpoint that still checksums: appends after it would overflow
    // the LSN counter (a panic in the appender, or wrapped LSNs in release builds).
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(Wal::open(tmp.path(), options(Durability::Fsync)).expect("open"));
    crate::checkpoint::write(&crate::file::OsStorage, tmp.path(), u64::MAX - 1)
        .expect("write checkpoint");
    match Wal::open(tmp.path(), options(Durability::Fsync)) {
        Err(WalError::Corrupt { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok((log, _)) => {
            let appended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                log.append_batch(&[(1, b"a".as_slice()), (1, b"b".as_slice())])
            }));
            panic!("opened a log that cannot take an append: {appended:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Full disk: stall, undo, retry.

/// What a test expects the log to hold: every acknowledged record, by LSN.
type Acked = Vec<(Lsn, u8, Vec<u8>)>;

/// Checks the directory as it is right now (no reopen, nothing modified): exactly the records
/// up to `last` are on disk, nothing torn after them.
fn assert_disk_holds_exactly(dir: &Path, last: Lsn) {
    let report = crate::verify(dir).expect("verify");
    assert_eq!(
        report.last_lsn,
        last.max(report.checkpoint),
        "records on disk"
    );
    for seg in &report.segments {
        assert_eq!(
            seg.torn_bytes,
            0,
            "{} has a tail after a stall",
            seg.path.display()
        );
    }
    for entry in std::fs::read_dir(dir).expect("list") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        assert!(!name.ends_with(".tmp"), "a failed write left {name}");
    }
}

/// Reopens over the real file system: exactly `acked` above the checkpoint, nothing cut.
fn assert_reopen_exact(dir: &Path, options: &WalOptions, acked: &Acked, checkpoint: Lsn) {
    let (log, recovery) = Wal::open(dir, options.clone()).expect("reopen");
    assert_eq!(recovery.checkpoint, checkpoint, "checkpoint");
    let want: Acked = acked
        .iter()
        .filter(|(lsn, _, _)| *lsn > checkpoint)
        .cloned()
        .collect();
    let got: Acked = recovery
        .records
        .iter()
        .map(|r| (r.lsn, r.kind, r.payload.clone()))
        .collect();
    assert_eq!(got, want, "replayed records");
    // Every stall was undone in-process: the reopen finds nothing to cut.
    assert_eq!((recovery.tail_cuts, recovery.truncated_bytes), (0, 0));
    let next = acked.last().map_or(checkpoint, |a| a.0).max(checkpoint) + 1;
    assert_eq!(log.append(9, b"after").expect("append after reopen"), next);
    assert_eq!(log.health(), Health::Healthy);
}

fn no_space_plan() -> FaultPlan {
    FaultPlan {
        write_errno: Some(libc::ENOSPC),
        ..FaultPlan::default()
    }
}

#[test]
fn enospc_fails_that_append_only_and_the_next_append_reuses_its_lsn() {
    for durability in [Durability::Fsync, Durability::Buffered] {
        for (n, errno) in (2..45)
            .map(|n| (n, libc::ENOSPC))
            .chain([(7, libc::EDQUOT)])
        {
            let tmp = tempfile::tempdir().expect("tempdir");
            let options = options(durability);
            let storage = Arc::new(FaultyStorage::new(FaultPlan {
                fail_write_at: Some(n),
                write_errno: Some(errno),
                ..FaultPlan::default()
            }));
            let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage).expect("open");
            let mut acked = Acked::new();
            let mut failures = 0;
            for i in 0..40 {
                let p = payload(0, i);
                match log.append(0, &p) {
                    Ok(lsn) => {
                        // Gap-free: the failed append's LSN went to this one.
                        assert_eq!(lsn, acked.len() as Lsn + 1, "write fault {n}");
                        acked.push((lsn, 0, p));
                        assert_eq!(log.health(), Health::Healthy);
                    }
                    Err(err @ WalError::NoSpace { .. }) => {
                        assert!(err.is_retryable());
                        failures += 1;
                        assert_eq!(log.health(), Health::WriteStalled, "write fault {n}");
                        assert_eq!(log.last_lsn(), acked.len() as Lsn);
                        assert_disk_holds_exactly(tmp.path(), acked.len() as Lsn);
                    }
                    Err(other) => panic!("write fault {n}: unexpected {other}"),
                }
            }
            assert_eq!(failures, 1, "write fault {n} ({durability})");
            assert_eq!(acked.len(), 39);
            drop(log);
            assert_reopen_exact(tmp.path(), &options, &acked, 0);
        }
    }
}

/// A small deterministic PRNG (splitmix64): the workloads are reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Every record of the workload carries its op and index, so each is unique.
fn workload_payload(op: u32, i: u32, len: u64) -> Vec<u8> {
    let mut p = op.to_le_bytes().to_vec();
    p.extend_from_slice(&i.to_le_bytes());
    p.resize(8 + len as usize, op as u8);
    p
}

/// Seeded workload of batches (1..=4 records, 0..=70 payload bytes, in 600-byte segments that
/// rotate every few batches) and checkpoints, on a disk that is full from write `from` on.
/// If `free_after` is set, space comes back after that many failed operations; otherwise the
/// log is dropped while still stalled, after a dozen failed operations.
fn run_disk_full(durability: Durability, from: u64, free_after: Option<u32>, seed: u64) {
    const OPS: u32 = 170;
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        segment_bytes_max: 600,
        ..options(durability)
    };
    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_writes_from: Some(from),
        skip_real_sync: true,
        ..no_space_plan()
    }));
    let ctx = format!("{durability} disk full from write {from}, seed {seed}");
    let mut failed_ops = 0;
    let log = match Wal::open_with(tmp.path(), options.clone(), storage.clone()) {
        Ok((log, _)) => log,
        Err(err) => {
            // The first segment's header could not be written: open fails, retryably, and
            // works once there is room (the leftover temp file is removed).
            assert!(err.is_retryable(), "{ctx}: open failed with {err}");
            failed_ops += 1;
            storage.clear();
            Wal::open_with(tmp.path(), options.clone(), storage.clone())
                .expect("open after space came back")
                .0
        }
    };
    let mut rng = Rng(seed);
    let mut acked = Acked::new();
    let mut refused: Vec<Vec<u8>> = Vec::new();
    let mut checkpoint = 0;
    for op in 0..OPS {
        match free_after {
            Some(k) if failed_ops >= k => storage.clear(),
            None if failed_ops >= 12 => break,
            _ => {}
        }
        let last = acked.last().map_or(0, |a| a.0);
        let result = if rng.below(8) == 0 && last > checkpoint {
            let lsn = checkpoint + 1 + rng.below(last - checkpoint);
            log.checkpoint(lsn).map(|()| checkpoint = lsn)
        } else {
            let batch: Vec<(u8, Vec<u8>)> = (0..=rng.below(4) as u32)
                .map(|i| (op as u8 % 7, workload_payload(op, i, rng.below(71))))
                .collect();
            let borrowed: Vec<(u8, &[u8])> =
                batch.iter().map(|(k, p)| (*k, p.as_slice())).collect();
            match log.append_batch(&borrowed) {
                Ok(lsn) => {
                    assert_eq!(lsn, last + batch.len() as Lsn, "{ctx}: lsns not gap-free");
                    for (i, (kind, p)) in batch.into_iter().enumerate() {
                        acked.push((last + 1 + i as Lsn, kind, p));
                    }
                    Ok(())
                }
                Err(err) => {
                    refused.extend(batch.into_iter().map(|(_, p)| p));
                    Err(err)
                }
            }
        };
        match result {
            Ok(()) => assert_eq!(log.health(), Health::Healthy, "{ctx}: op {op}"),
            Err(err) => {
                assert!(err.is_retryable(), "{ctx}: op {op} failed with {err}");
                assert_eq!(log.health(), Health::WriteStalled, "{ctx}: op {op}");
                // The rule holds the moment the error is returned, not only after a reopen.
                // (Checked for the first few failures: `verify` reads every segment.)
                if failed_ops < 4 {
                    assert_disk_holds_exactly(tmp.path(), acked.last().map_or(0, |a| a.0));
                }
                failed_ops += 1;
            }
        }
    }
    if from <= 200 {
        assert!(failed_ops > 0, "{ctx}: the disk never filled up");
    }
    if free_after.is_some() {
        assert!(
            failed_ops < OPS / 2,
            "{ctx}: the log did not recover once there was room"
        );
    }
    assert_eq!(log.last_lsn(), acked.last().map_or(0, |a| a.0));
    drop(log);
    let (_, recovery) = Wal::open(tmp.path(), options.clone()).expect("reopen");
    for r in &recovery.records {
        assert!(
            !refused.contains(&r.payload),
            "{ctx}: lsn {} is from a batch whose append returned NoSpace",
            r.lsn
        );
    }
    drop(recovery);
    assert_reopen_exact(tmp.path(), &options, &acked, checkpoint);
}

#[test]
fn every_write_failing_from_operation_n_keeps_exactly_the_acknowledged_batches() {
    for durability in [Durability::Fsync, Durability::Buffered] {
        for from in 1..=200 {
            // Odd n: space comes back after a few failures; even n: dropped while stalled.
            let free_after = (from % 2 == 1).then_some((from % 5) as u32 + 1);
            run_disk_full(durability, from, free_after, from * 7919 + 1);
        }
    }
}

fn wait_until(mut condition: impl FnMut() -> bool) {
    // Bounded so a broken protocol fails instead of hanging the test run.
    for _ in 0..50_000_000u64 {
        if condition() {
            return;
        }
        std::thread::yield_now();
    }
    panic!("gave up waiting");
}

#[test]
fn a_group_that_rotated_is_undone_across_its_new_segments() {
    // A group of ten batches of 54 bytes behind a leader's record, in 300-byte segments: it
    // writes batches 1-3 to the first segment (write 1), creates a second (header: write 2),
    // writes batches 4-7 to it (3), creates a third (4) and writes batches 8-10 (5); each
    // rotation fsyncs complete, unacknowledged batches into the segment it leaves. The disk
    // fills up at write `fail_at`. All ten appends must fail, the new segments must be gone
    // and the first one cut back to the leader's record; then LSN 2 is handed out again.
    for fail_at in 1..=5 {
        let tmp = tempfile::tempdir().expect("tempdir");
        let options = options(Durability::Fsync);
        let storage = Arc::new(FaultyStorage::new(no_space_plan()));
        let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage.clone()).expect("open");
        let log = Arc::new(log);
        let release = storage.hold_next_sync();
        let leader = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || log.append(1, &[0u8; 40]).expect("leader"))
        };
        wait_until(|| storage.sync_held());
        let followers: Vec<_> = (0..10u8)
            .map(|i| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || log.append(2, &[i; 40]))
            })
            .collect();
        wait_until(|| log.queued_records() == 10);
        let (writes, creates) = (storage.writes(), storage.creates());
        storage.fail_writes_from_now(fail_at);
        release.send(()).expect("release");
        assert_eq!(leader.join().expect("leader"), 1);
        for f in followers {
            match f.join().expect("follower") {
                Err(WalError::NoSpace { .. }) => {}
                other => panic!("fail_at {fail_at}: a follower got {other:?}"),
            }
        }
        // The group stopped where it was planned to, having created what it should have.
        assert_eq!(storage.writes(), writes + fail_at, "fail_at {fail_at}");
        assert_eq!(
            storage.creates(),
            creates + fail_at / 2,
            "fail_at {fail_at}"
        );
        assert_eq!(log.health(), Health::WriteStalled);
        assert_eq!(log.last_lsn(), 1);
        assert_disk_holds_exactly(tmp.path(), 1);
        let report = crate::verify(tmp.path()).expect("verify");
        assert_eq!(report.segments.len(), 1, "fail_at {fail_at}: segments left");
        assert!(matches!(
            log.append(3, b"full"),
            Err(WalError::NoSpace { .. })
        ));
        storage.clear();
        assert_eq!(log.append(3, b"again").expect("append after the stall"), 2);
        assert_eq!(log.health(), Health::Healthy);
        drop(log);
        let acked = vec![(1, 1, vec![0u8; 40]), (2, 3, b"again".to_vec())];
        assert_reopen_exact(tmp.path(), &options, &acked, 0);
    }
}

#[test]
fn concurrent_writers_on_a_disk_that_fills_and_empties_keep_exactly_what_was_acknowledged() {
    const WRITERS: u8 = 4;
    const ATTEMPTS: u32 = 50;
    for (from, until) in [(2, 6), (5, 30), (12, 20), (30, 60)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let options = options(Durability::Fsync);
        let storage = Arc::new(FaultyStorage::new(FaultPlan {
            fail_writes_from: Some(from),
            fail_writes_until: Some(until),
            ..no_space_plan()
        }));
        let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage).expect("open");
        let log = Arc::new(log);
        let handles: Vec<_> = (0..WRITERS)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut acked = Acked::new();
                    let mut refused = Vec::new();
                    for i in 0..ATTEMPTS {
                        let batch: Vec<Vec<u8>> =
                            (0..=i % 3).map(|j| payload(t, i * 3 + j)).collect();
                        let records: Vec<(u8, &[u8])> =
                            batch.iter().map(|p| (t, p.as_slice())).collect();
                        match log.append_batch(&records) {
                            Ok(last) => {
                                let first = last + 1 - batch.len() as Lsn;
                                for (k, p) in batch.into_iter().enumerate() {
                                    acked.push((first + k as Lsn, t, p));
                                }
                            }
                            Err(WalError::NoSpace { .. }) => refused.extend(batch),
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                    (acked, refused)
                })
            })
            .collect();
        let mut acked = Acked::new();
        let mut refused = Vec::new();
        for h in handles {
            let (a, r) = h.join().expect("writer");
            acked.extend(a);
            refused.extend(r);
        }
        acked.sort();
        assert!(
            !refused.is_empty(),
            "writes {from}..{until}: nothing failed"
        );
        assert_eq!(log.health(), Health::Healthy);
        let lsns: Vec<Lsn> = acked.iter().map(|a| a.0).collect();
        assert_eq!(
            lsns,
            (1..=acked.len() as Lsn).collect::<Vec<_>>(),
            "gap-free"
        );
        drop(log);
        assert_reopen_exact(tmp.path(), &options, &acked, 0);
    }
}

#[test]
fn a_failed_fsync_or_truncate_while_undoing_a_stall_poisons() {
    // Open: write 1, fsyncs 1-2. Appends a and b: writes 2-3, fsyncs 3-4. Append c: write 4
    // fails with ENOSPC; the undo truncates (truncate 1) and fsyncs (fsync 5).
    for plan in [
        FaultPlan {
            fail_sync_at: Some(5),
            ..no_space_plan()
        },
        FaultPlan {
            fail_truncate_at: Some(1),
            ..no_space_plan()
        },
    ] {
        let plan = FaultPlan {
            fail_write_at: Some(4),
            ..plan
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let options = options(Durability::Fsync);
        let storage = Arc::new(FaultyStorage::new(plan));
        let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage.clone()).expect("open");
        log.append(1, b"a").expect("a");
        log.append(1, b"b").expect("b");
        match log.append(1, b"c") {
            Err(WalError::Io { op, .. }) => assert!(op == "fsync" || op == "truncate"),
            other => panic!("{plan:?}: expected the undo's failure, got {other:?}"),
        }
        assert_eq!(log.health(), Health::Poisoned);
        let syncs = storage.syncs();
        assert!(matches!(log.append(1, b"d"), Err(WalError::Poisoned)));
        assert_sync_when_poisoned(&log);
        assert!(matches!(log.checkpoint(1), Err(WalError::Poisoned)));
        assert_eq!(
            storage.syncs(),
            syncs,
            "a poisoned log must not fsync again"
        );
        assert_eq!(log.health(), Health::Poisoned);
        drop(log);
        // The reopen cuts c's half frame (if the truncate never ran, or its size change was
        // not synced) and keeps a and b.
        let (_log, recovery) = Wal::open(tmp.path(), options).expect("reopen");
        let payloads: Vec<&[u8]> = recovery.records.iter().map(|r| &r.payload[..]).collect();
        assert_eq!(payloads, [b"a", b"b"]);
    }
}

#[test]
fn an_fsync_failure_poisons_even_with_an_out_of_space_errno_and_health_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_sync_at: Some(3),
        ..FaultPlan::default()
    }));
    let (log, _) = Wal::open_with(tmp.path(), options(Durability::Fsync), storage).expect("open");
    assert_eq!(log.health(), Health::Healthy);
    assert!(matches!(
        log.append(1, b"a"),
        Err(WalError::Io { op: "fsync", .. })
    ));
    assert_eq!(log.health(), Health::Poisoned);
    // fsync errors never become retryable, whatever errno they carry.
    let err = WalError::io(
        "fsync",
        tmp.path(),
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    );
    assert!(!err.is_retryable());
}

#[test]
fn a_checkpoint_that_runs_out_of_space_stalls_without_poisoning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Open: write 1. Appends: writes 2-4. The checkpoint's temp file: write 5.
    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_write_at: Some(5),
        ..no_space_plan()
    }));
    let options = options(Durability::Fsync);
    let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage).expect("open");
    for i in 0..3 {
        log.append(1, &[i]).expect("append");
    }
    assert!(matches!(log.checkpoint(2), Err(WalError::NoSpace { .. })));
    assert_eq!(log.health(), Health::WriteStalled);
    log.checkpoint(2).expect("checkpoint once there is room");
    assert_eq!(log.health(), Health::Healthy);
    assert_eq!(log.append(1, &[3]).expect("append"), 4);
    drop(log);
    let acked = (0..4u8).map(|i| (Lsn::from(i) + 1, 1, vec![i])).collect();
    assert_reopen_exact(tmp.path(), &options, &acked, 2);
}

#[test]
fn every_tail_cut_at_open_is_logged_and_counted() {
    use std::fmt::Write as _;
    use std::sync::Mutex;

    /// Collects every event's fields as text.
    struct Capture(Arc<Mutex<Vec<String>>>);
    struct Fields(String);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            let _ = write!(self.0, "{}={:?} ", field.name(), value);
        }
    }
    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(format!("{} ", event.metadata().level()));
            event.record(&mut fields);
            self.0.lock().expect("capture").push(fields.0);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let options = options(Durability::Fsync);
    let (log, _) = Wal::open(tmp.path(), options.clone()).expect("open");
    log.append(1, b"kept").expect("append");
    drop(log);
    let segment = crate::segment::segment_path(tmp.path(), 1);
    let clean = std::fs::metadata(&segment).expect("stat").len();
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes.extend_from_slice(&[0xAB; 9]); // A torn frame.
    std::fs::write(&segment, &bytes).expect("write");

    let events = Arc::new(Mutex::new(Vec::new()));
    let (_log, recovery) = tracing::subscriber::with_default(Capture(Arc::clone(&events)), || {
        Wal::open(tmp.path(), options.clone())
    })
    .expect("reopen");
    assert_eq!((recovery.tail_cuts, recovery.truncated_bytes), (1, 9));
    assert_eq!(recovery.records.len(), 1);
    let events = events.lock().expect("capture");
    let cut: Vec<&String> = events.iter().filter(|e| e.contains("torn tail")).collect();
    assert_eq!(cut.len(), 1, "{events:?}");
    assert!(cut[0].starts_with("WARN"), "{}", cut[0]);
    assert!(cut[0].contains(&format!("offset={clean}")), "{}", cut[0]);
    assert!(cut[0].contains("bytes=9"), "{}", cut[0]);
    assert!(cut[0].contains("00000000000000000001.wal"), "{}", cut[0]);
}

#[test]
fn many_writers_on_a_disk_that_keeps_filling_never_get_ok_for_a_discarded_batch() {
    // Every 3rd write fails: stalls come in quick succession while more writers than cores
    // contend, so discarded appenders are often still asleep when the next group is written.
    // None of them may mistake a later group's acknowledgement (of their reused LSNs) for
    // their own.
    const WRITERS: u8 = 12;
    const ATTEMPTS: u32 = 150;
    for _round in 0..5 {
        many_writers_round(WRITERS, ATTEMPTS);
    }
}

fn many_writers_round(writers: u8, attempts: u32) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = WalOptions {
        segment_bytes_max: 4096,
        ..options(Durability::Fsync)
    };
    let storage = Arc::new(FaultyStorage::new(FaultPlan {
        fail_every_nth_write: Some(3),
        skip_real_sync: true,
        ..no_space_plan()
    }));
    let (log, _) = Wal::open_with(tmp.path(), options.clone(), storage).expect("open");
    let log = Arc::new(log);
    let handles: Vec<_> = (0..writers)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut acked = Acked::new();
                for i in 0..attempts {
                    let p = payload(t, i);
                    match log.append(t, &p) {
                        Ok(lsn) => acked.push((lsn, t, p)),
                        Err(WalError::NoSpace { .. }) => {}
                        Err(other) => panic!("unexpected error {other}"),
                    }
                }
                acked
            })
        })
        .collect();
    let mut acked: Acked = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer"))
        .collect();
    acked.sort();
    let wrong = acked
        .iter()
        .enumerate()
        .find(|(i, a)| a.0 != *i as Lsn + 1)
        .map(|(i, a)| (i + 1, a.0));
    assert_eq!(
        wrong, None,
        "(position, lsn): two appends were acknowledged with one lsn, or one was skipped"
    );
    drop(log);
    assert_reopen_exact(tmp.path(), &options, &acked, 0);
}

/// A poisoned log's `sync`: `Ok` without an fsync in Fsync durability (every acknowledged
/// record was synced already; shutdown after a failed fsync is clean), `Poisoned` in Buffered
/// durability (acknowledged records may never reach the disk).
fn assert_sync_when_poisoned(log: &Wal) {
    match log.durability() {
        Durability::Fsync => assert!(log.sync().is_ok()),
        Durability::Buffered => assert!(matches!(log.sync(), Err(WalError::Poisoned))),
    }
}
