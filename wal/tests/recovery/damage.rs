//! Damage: torn tails at every byte, every bit flip, sealed segments, versions, leftovers.

use std::fs;

use wal::{Wal, WalError, WalOptions};

use crate::{open, segment_files, small_segments, write_known_log};

#[test]
fn truncation_at_every_byte_of_the_last_records_keeps_exactly_the_whole_batches_before_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let original = tmp.path().join("original");
    let written = write_known_log(&original);
    let bytes = fs::read(&written.segment).expect("read");
    // Every offset from the end of the first batch (cuts inside the last five batches,
    // including the three-record one) to the full length.
    let from = written.ends[0].0;
    for cut in from..=bytes.len() as u64 {
        let dir = tmp.path().join(format!("cut-{cut}"));
        fs::create_dir(&dir).expect("mkdir");
        let name = written.segment.file_name().expect("name");
        fs::write(dir.join(name), &bytes[..cut as usize]).expect("write");
        let (whole_len, whole_records) = written
            .ends
            .iter()
            .copied()
            .rfind(|(len, _)| *len <= cut)
            .expect("the first batch is always whole");
        let (log, recovery) = open(&dir, &WalOptions::default());
        assert_eq!(
            recovery.records,
            written.records[..whole_records],
            "cut at {cut}"
        );
        assert_eq!(recovery.truncated_bytes, cut - whole_len, "cut at {cut}");
        assert_eq!(fs::metadata(dir.join(name)).expect("stat").len(), whole_len);
        // The repaired log continues right after the kept records.
        assert_eq!(
            log.append(9, b"more").expect("append"),
            whole_records as u64 + 1
        );
        drop(log);
        let (_log, again) = open(&dir, &WalOptions::default());
        assert_eq!(again.truncated_bytes, 0);
        assert_eq!(again.records.len(), whole_records + 1);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[test]
fn every_bit_flip_is_detected_never_returned_as_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let original = tmp.path().join("original");
    let written = write_known_log(&original);
    let bytes = fs::read(&written.segment).expect("read");
    let name = written.segment.file_name().expect("name");
    let last_batch_start = written.ends[written.ends.len() - 2].0 as usize;
    let kept = written.ends[written.ends.len() - 2].1;
    // The segment header, a record in the middle (the three-record batch) and the last two
    // records.
    let header = 0..32;
    let middle = written.ends[2].0 as usize..written.ends[3].0 as usize;
    let tail = written.ends[3].0 as usize..bytes.len();
    let dir = tmp.path().join("flipped");
    fs::create_dir(&dir).expect("mkdir");
    for byte in header.chain(middle).chain(tail) {
        for bit in 0..8 {
            let mut bad = bytes.clone();
            bad[byte] ^= 1 << bit;
            fs::write(dir.join(name), &bad).expect("write");
            let context = format!("flip of bit {bit} of byte {byte}");
            match Wal::open(&dir, WalOptions::default()) {
                Ok((_log, recovery)) => {
                    // Only damage to the very last record may be treated as a torn tail.
                    assert!(
                        byte >= last_batch_start,
                        "{context}: damage before the tail was skipped"
                    );
                    assert_eq!(recovery.records, written.records[..kept], "{context}");
                    assert_eq!(
                        recovery.truncated_bytes,
                        (bytes.len() - last_batch_start) as u64
                    );
                }
                Err(err) => {
                    assert!(
                        byte < last_batch_start,
                        "{context}: torn tail reported as {err}"
                    );
                    assert!(
                        matches!(
                            err,
                            WalError::ChecksumMismatch { .. } | WalError::Corrupt { .. }
                        ) || (byte < 32
                            && matches!(
                                err,
                                WalError::BadMagic { .. } | WalError::UnsupportedVersion { .. }
                            )),
                        "{context}: {err}"
                    );
                    if byte >= 32 {
                        let msg = err.to_string();
                        assert!(msg.contains(&name.to_string_lossy().to_string()), "{msg}");
                    }
                }
            }
            assert!(matches!(wal::verify(&dir), Ok(_) | Err(_)));
        }
    }
}

#[test]
fn damage_in_a_sealed_segment_is_an_error_naming_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let options = small_segments();
    let (log, _) = open(tmp.path(), &options);
    for i in 0..60u32 {
        log.append(1, &i.to_le_bytes()).expect("append");
    }
    drop(log);
    let first = segment_files(tmp.path()).remove(0);
    let mut bytes = fs::read(&first).expect("read");
    // Damage the last record of the first (sealed) segment: no valid data follows it in that
    // file, but the segment is sealed, so this cannot be a torn write.
    let len = bytes.len();
    bytes[len - 5] ^= 0x10;
    fs::write(&first, &bytes).expect("write");
    let err = Wal::open(tmp.path(), options.clone()).expect_err("must refuse");
    match &err {
        WalError::ChecksumMismatch { file, offset, .. } => {
            assert_eq!(file, &first);
            assert!(*offset > 32 && *offset < len as u64);
        }
        other => panic!("expected ChecksumMismatch, got {other}"),
    }
    assert!(matches!(
        wal::verify(tmp.path()),
        Err(WalError::ChecksumMismatch { .. })
    ));
    // Removing a middle segment is a gap, also refused.
    let tmp2 = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(tmp2.path(), &options);
    for i in 0..60u32 {
        log.append(1, &i.to_le_bytes()).expect("append");
    }
    drop(log);
    fs::remove_file(&segment_files(tmp2.path())[1]).expect("remove");
    assert!(matches!(
        Wal::open(tmp2.path(), options),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn unknown_versions_and_foreign_files_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(tmp.path(), &WalOptions::default());
    log.append(1, b"x").expect("append");
    log.checkpoint(1).expect("checkpoint");
    drop(log);
    let segment = segment_files(tmp.path()).pop().expect("segment");
    let good = fs::read(&segment).expect("read");
    let mut future = good.clone();
    future[8] = 9;
    fs::write(&segment, &future).expect("write");
    assert!(matches!(
        Wal::open(tmp.path(), WalOptions::default()),
        Err(WalError::UnsupportedVersion { found: 9, .. })
    ));
    fs::write(&segment, b"not a wal segment at all, no").expect("write");
    assert!(matches!(
        Wal::open(tmp.path(), WalOptions::default()),
        Err(WalError::BadMagic { .. })
    ));
    fs::write(&segment, &good).expect("write");
    let checkpoint = tmp.path().join("checkpoint");
    let mut ckpt = fs::read(&checkpoint).expect("read");
    ckpt[14] ^= 1;
    fs::write(&checkpoint, &ckpt).expect("write");
    assert!(matches!(
        Wal::open(tmp.path(), WalOptions::default()),
        Err(WalError::ChecksumMismatch { .. })
    ));
}

#[test]
fn leftover_temp_files_are_removed_and_unrelated_files_ignored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(tmp.path(), &WalOptions::default());
    log.append(1, b"x").expect("append");
    drop(log);
    fs::write(tmp.path().join("checkpoint.tmp"), b"half").expect("write");
    fs::write(tmp.path().join("00000000000000000002.tmp"), b"MRWA").expect("write");
    fs::write(tmp.path().join("notes.txt"), b"mine").expect("write");
    let (_log, recovery) = open(tmp.path(), &WalOptions::default());
    assert_eq!(recovery.records.len(), 1);
    assert!(!tmp.path().join("checkpoint.tmp").exists());
    assert!(!tmp.path().join("00000000000000000002.tmp").exists());
    assert!(tmp.path().join("notes.txt").exists());
}

/// `repair` turns every refusal into an open log holding exactly the whole batches before
/// the damage, reports the first lost LSN and every recognisable lost record, and keeps a
/// byte-identical backup. A flip in every byte of the middle and tail records, and damage in
/// the first of several segments (the later ones are removed and counted).
#[test]
fn repair_cuts_at_the_first_damage_and_reports_exactly_what_was_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let original = tmp.path().join("original");
    let written = write_known_log(&original);
    let bytes = fs::read(&written.segment).expect("read");
    let name = written.segment.file_name().expect("name");
    let mut repaired = 0;
    for byte in written.ends[0].0 as usize..bytes.len() {
        let dir = tmp.path().join(format!("flip-{byte}"));
        fs::create_dir(&dir).expect("mkdir");
        let mut bad = bytes.clone();
        bad[byte] ^= 0x10;
        fs::write(dir.join(name), &bad).expect("write");
        if Wal::open(&dir, WalOptions::default()).is_ok() {
            // A torn tail: open cuts it itself; nothing for repair to do.
            fs::remove_dir_all(&dir).expect("cleanup");
            continue;
        }
        let backup = tmp.path().join(format!("backup-{byte}"));
        let report = wal::repair(&dir, &backup).expect("repair");
        assert_eq!(
            fs::read(backup.join(name)).expect("backup"),
            bad,
            "byte {byte}"
        );
        let cut = report.cut.expect("a refused log is cut");
        let (kept_len, kept) = written
            .ends
            .iter()
            .copied()
            .rfind(|(len, _)| *len as usize <= byte)
            .expect("the first batch is whole");
        assert_eq!(cut.first_lost_lsn, kept as u64 + 1, "byte {byte}");
        assert_eq!(
            cut.bytes_removed,
            bytes.len() as u64 - kept_len,
            "byte {byte}"
        );
        // Frames after the damaged one are intact and counted; the damaged one is not.
        assert_eq!(
            cut.records_lost as usize,
            written.records.len() - kept - 1,
            "byte {byte}"
        );
        assert_eq!(fs::metadata(dir.join(name)).expect("stat").len(), kept_len);
        let (log, recovery) = open(&dir, &WalOptions::default());
        assert_eq!(recovery.records, written.records[..kept], "byte {byte}");
        assert_eq!(
            recovery.truncated_bytes, 0,
            "repair left a tail for open to cut"
        );
        assert_eq!(log.append(9, b"after").expect("append"), kept as u64 + 1);
        repaired += 1;
        fs::remove_dir_all(&dir).expect("cleanup");
    }
    assert!(repaired > 20, "only {repaired} damaged logs were exercised");

    // Damage in the first of several segments: the later ones are removed and counted.
    let dir = tmp.path().join("many");
    let (log, _) = open(&dir, &small_segments());
    for i in 0..60u32 {
        log.append(1, &i.to_le_bytes().repeat(8)).expect("append");
    }
    drop(log);
    let files = segment_files(&dir);
    assert!(files.len() >= 3, "{} segments", files.len());
    let mut first = fs::read(&files[0]).expect("read");
    let at = first.len() - 10;
    first[at] ^= 0xff;
    fs::write(&files[0], &first).expect("write");
    assert!(Wal::open(&dir, small_segments()).is_err());
    let report = wal::repair(&dir, &tmp.path().join("many-backup")).expect("repair");
    let cut = report.cut.expect("cut");
    assert_eq!(cut.segments_removed.len(), files.len() - 1);
    let (_log, recovery) = open(&dir, &small_segments());
    let kept = recovery.records.len() as u64;
    assert_eq!(cut.first_lost_lsn, kept + 1);
    // The damaged frame is the only one not counted.
    assert_eq!(cut.records_lost, 60 - kept - 1);

    // A clean log is copied and left alone.
    let report = wal::repair(&dir, &tmp.path().join("clean-backup")).expect("repair");
    assert!(report.cut.is_none());
}
