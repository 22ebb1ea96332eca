//! The on-disk format: golden bytes rebuilt from `docs/format.md`, and arbitrary bytes as a
//! segment file never panic (the stable twin of `fuzz/fuzz_targets/wal_recovery.rs`).

use std::fs;

use proptest::prelude::*;
use wal::{Wal, WalError, WalOptions};

use crate::{open, segment_files, write_known_log};

fn segment_header(first_lsn: u64, seed: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(b"MRWALSEG");
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&seed.to_le_bytes());
    h.extend_from_slice(&first_lsn.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32_of(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Plain CRC-32 (IEEE), written out here so the test pins the on-disk checksum independently.
fn crc32_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn segment_header_matches_the_documented_layout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(tmp.path(), &WalOptions::default());
    drop(log);
    let segment = segment_files(tmp.path()).pop().expect("segment");
    let bytes = fs::read(&segment).expect("read");
    let seed = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    assert_eq!(bytes, segment_header(1, seed));
}

/// Opens `bytes` as the only segment of a fresh directory; must return, never panic.
fn open_arbitrary(bytes: &[u8]) -> Result<wal::Recovery, WalError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("00000000000000000001.wal"), bytes).expect("write");
    let verified = wal::verify(tmp.path());
    let opened = Wal::open(tmp.path(), WalOptions::default());
    // verify and open agree on whether the directory is readable.
    assert_eq!(
        verified.is_ok(),
        opened.is_ok(),
        "verify {verified:?} vs open {:?}",
        opened.as_ref().map(|(_, r)| r)
    );
    let (log, recovery) = opened?;
    // A readable log accepts the next record right after what it replayed.
    let expected = recovery
        .records
        .last()
        .map_or(recovery.checkpoint, |r| r.lsn)
        + 1;
    assert_eq!(
        log.append(0, b"after").expect("append after recovery"),
        expected
    );
    Ok(recovery)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn recovery_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = open_arbitrary(&bytes);
    }

    #[test]
    fn recovery_never_panics_after_a_valid_header(
        seed in any::<u32>(),
        first_lsn in prop_oneof![Just(1u64), any::<u64>()],
        tail in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = segment_header(first_lsn, seed);
        bytes.extend_from_slice(&tail);
        let _ = open_arbitrary(&bytes);
    }

    #[test]
    fn recovery_never_panics_on_mutated_logs(
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let written = write_known_log(tmp.path());
        let mut bytes = fs::read(&written.segment).expect("read");
        for (at, value) in mutations {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let len = cut.index(bytes.len() + 1);
        bytes.truncate(len);
        if let Ok(recovery) = open_arbitrary(&bytes) {
            // Whatever survives is a prefix of what was written, byte for byte.
            prop_assert!(recovery.records.len() <= written.records.len());
            prop_assert_eq!(&recovery.records[..], &written.records[..recovery.records.len()]);
        }
    }
}

/// CRC-32 continued from `seed`, like `crc32fast::Hasher::new_with_initial(seed)` (and zlib's
/// `crc32(seed, bytes)`).
fn crc32_seeded(seed: u32, bytes: &[u8]) -> u32 {
    let mut crc = !seed;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Golden layout check: rebuild the segment byte for byte from `docs/format.md` and compare.
#[test]
fn segment_bytes_match_the_documented_format() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, _) = open(tmp.path(), &WalOptions::default());
    log.append(0x11, b"hello").expect("append");
    log.append_batch(&[(0x22, b"".as_slice()), (0x33, b"xyz".as_slice())])
        .expect("batch");
    drop(log);
    let segment = segment_files(tmp.path()).pop().expect("segment");
    let bytes = fs::read(&segment).expect("read");
    let seed = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    let mut expected = segment_header(1, seed);
    for (kind, flags, payload) in [
        (0x11u8, 1u8, &b"hello"[..]),
        (0x22, 0, b""),
        (0x33, 1, b"xyz"),
    ] {
        let start = expected.len();
        expected.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        expected.push(kind);
        expected.push(flags);
        let header_crc = crc32_seeded(seed, &expected[start..]);
        expected.extend_from_slice(&header_crc.to_le_bytes());
        expected.extend_from_slice(payload);
        let frame_crc = crc32_seeded(seed, &expected[start..]);
        expected.extend_from_slice(&frame_crc.to_le_bytes());
    }
    assert_eq!(bytes, expected);
    let mut checkpoint = b"MRWALCKP\x01\x00\x00\x00".to_vec();
    checkpoint.extend_from_slice(&3u64.to_le_bytes());
    let crc = crc32_of(&checkpoint);
    checkpoint.extend_from_slice(&crc.to_le_bytes());
    let (log, _) = open(tmp.path(), &WalOptions::default());
    log.checkpoint(3).expect("checkpoint");
    assert_eq!(
        fs::read(tmp.path().join("checkpoint")).expect("read"),
        checkpoint
    );
}
