//! Fault injection: fail the Nth write or fsync (segment, directory or checkpoint) and check
//! that the log poisons itself, refuses all later work, and that a reopen over the real file
//! system recovers every acknowledged record intact and nothing that was never attempted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::file::{FaultPlan, FaultyStorage};
use crate::{Durability, Lsn, Wal, WalError, WalOptions};

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
        assert!(matches!(log.sync(), Err(WalError::Poisoned)));
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
    assert!(matches!(log.sync(), Err(WalError::Poisoned)));
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
