//! Recovery through the public API, as one test binary: round trips, damage (torn tails at
//! every byte, bit flips, sealed segments, versions) and the on-disk format (golden bytes,
//! arbitrary bytes never panic).

mod damage;
mod format;
mod roundtrip;

use std::fs;
use std::path::{Path, PathBuf};

use wal::{Record, Wal, WalOptions};

pub fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes_max: 512,
        ..WalOptions::default()
    }
}

pub fn open(dir: &Path, options: &WalOptions) -> (Wal, wal::Recovery) {
    Wal::open(dir, options.clone()).expect("open")
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

/// A log whose last batches are known: returns the segment path, the records, and for each
/// batch the file length once it was acknowledged (`ends[i]`) with its records' count.
pub struct Written {
    pub segment: PathBuf,
    pub records: Vec<Record>,
    /// (file length after the batch, records so far).
    pub ends: Vec<(u64, usize)>,
}

pub fn write_known_log(dir: &Path) -> Written {
    let (log, _) = open(dir, &WalOptions::default());
    let mut records = Vec::new();
    let mut ends = Vec::new();
    let segment = segment_files(dir).pop().expect("segment");
    let batches: Vec<Vec<(u8, Vec<u8>)>> = vec![
        vec![(1, b"first".to_vec())],
        vec![(2, Vec::new())],
        vec![(3, vec![0xAB; 20])],
        vec![
            (4, b"batch-a".to_vec()),
            (5, Vec::new()),
            (6, b"batch-c".to_vec()),
        ],
        vec![(7, b"second to last".to_vec())],
        vec![(8, b"last".to_vec())],
    ];
    for batch in batches {
        let refs: Vec<(u8, &[u8])> = batch.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        let last = log.append_batch(&refs).expect("append");
        let first = last + 1 - batch.len() as u64;
        for (i, (kind, payload)) in batch.into_iter().enumerate() {
            records.push(Record {
                lsn: first + i as u64,
                kind,
                payload,
            });
        }
        let len = fs::metadata(&segment).expect("stat").len();
        ends.push((len, records.len()));
    }
    Written {
        segment,
        records,
        ends,
    }
}
