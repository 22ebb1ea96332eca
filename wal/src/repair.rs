//! Repairing a damaged log: the operator's way out when `Wal::open` refuses a log whose
//! damage is followed by intact data (a bad sector, a stray write), which recovery must not
//! guess about on its own.
//!
//! [`repair`] copies the whole directory to a backup first, then cuts the log at the end of
//! the last complete batch before the first damage — the damaged segment is truncated there
//! and every later segment removed — and reports exactly what was cut: the first LSN lost,
//! how many records it could still recognise after the cut, and the bytes removed. A cut at
//! or below the checkpoint removes every segment instead: what the checkpoint covers lives
//! elsewhere (the engine's segments), and appends must continue above it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::WalError;
use crate::record::{self, FLAG_END_OF_BATCH};
use crate::recovery::list_segments;
use crate::segment::{self, SEGMENT_HEADER_BYTES};
use crate::{Lsn, verify};

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Where the log was copied before anything was changed.
    pub backup: PathBuf,
    /// `None` when the log verified clean and nothing was changed.
    pub cut: Option<Cut>,
}

/// Where a log was cut and what was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The damaged file and the offset of the first bad byte found.
    pub file: PathBuf,
    pub offset: u64,
    /// What was wrong there (the error `verify` gave).
    pub reason: String,
    /// The first LSN no longer in the log: every record from it on is gone.
    pub first_lost_lsn: Lsn,
    /// Records recognisable (intact frames) in the bytes cut: lost acknowledged records,
    /// unless the damage hid some (then more were lost, and `bytes_removed` bounds them).
    pub records_lost: u64,
    pub bytes_removed: u64,
    /// Whole segment files removed (after the damaged one, or all when the cut fell at or
    /// below the checkpoint).
    pub segments_removed: Vec<PathBuf>,
}

/// Repairs the log in `dir` after copying it to `backup` (a new directory). Does nothing
/// but the copy when `verify` finds no damage. The log must not be open.
pub fn repair(dir: &Path, backup: &Path) -> Result<RepairReport, WalError> {
    copy_dir(dir, backup)?;
    let reason = match verify(dir) {
        Ok(_) => {
            return Ok(RepairReport {
                backup: backup.to_path_buf(),
                cut: None,
            });
        }
        Err(e) => e.to_string(),
    };
    let checkpoint = checkpoint::read(dir)?;
    let segments = list_segments(dir)?;
    // Find the first segment whose frames do not all form complete, valid batches in
    // sequence, and the valid prefix of it.
    let mut expected: Option<Lsn> = None;
    for (i, seg) in segments.iter().enumerate() {
        let bytes = fs::read(&seg.path).map_err(|e| WalError::io("read", &seg.path, e))?;
        let prefix = valid_prefix(&bytes, seg.first_lsn, expected);
        let Some(offset) = prefix.damage else {
            expected = Some(seg.first_lsn + prefix.records);
            continue;
        };
        let first_lost_lsn = expected.unwrap_or(seg.first_lsn) + prefix.records;
        let mut records_lost = recognisable_frames(&bytes, prefix.valid_bytes, prefix.seed);
        let later = &segments[i + 1..];
        for s in later {
            let b = fs::read(&s.path).map_err(|e| WalError::io("read", &s.path, e))?;
            records_lost += recognisable_frames(&b, SEGMENT_HEADER_BYTES, header_seed(&b));
        }
        let size = |p: &Path| fs::metadata(p).map_or(0, |m| m.len());
        let mut removed = Vec::new();
        let bytes_removed;
        if first_lost_lsn <= checkpoint.saturating_add(1) {
            // Everything kept would sit at or below the checkpoint: drop the whole log so
            // the next append continues above it.
            bytes_removed = segments.iter().map(|s| size(&s.path)).sum();
            for s in &segments {
                remove(&s.path)?;
                removed.push(s.path.clone());
            }
        } else {
            bytes_removed = (bytes.len() - prefix.valid_bytes) as u64
                + later.iter().map(|s| size(&s.path)).sum::<u64>();
            truncate(&seg.path, prefix.valid_bytes as u64)?;
            for s in later {
                remove(&s.path)?;
                removed.push(s.path.clone());
            }
        }
        sync_dir(dir)?;
        return Ok(RepairReport {
            backup: backup.to_path_buf(),
            cut: Some(Cut {
                file: seg.path.clone(),
                offset: offset as u64,
                reason,
                first_lost_lsn,
                records_lost,
                bytes_removed,
                segments_removed: removed,
            }),
        });
    }
    // `verify` failed but every segment scans clean in sequence: the damage is elsewhere
    // (the checkpoint file, a gap before the first segment). Nothing here is safe to cut.
    Err(WalError::Corrupt {
        file: dir.to_path_buf(),
        offset: 0,
        detail: "damage that cutting the log cannot repair (see verify)",
    })
}

/// The valid prefix of one segment: complete batches from the header on, continuing
/// `expected` (the LSN the previous segment ends at).
struct Prefix {
    seed: u32,
    /// Bytes of the header plus the complete batches kept.
    valid_bytes: usize,
    /// Records in those batches.
    records: u64,
    /// Offset of the first damage, `None` if the whole segment is valid.
    damage: Option<usize>,
}

fn valid_prefix(bytes: &[u8], first_lsn: Lsn, expected: Option<Lsn>) -> Prefix {
    let header = match segment::decode_header(bytes, Path::new("")) {
        Ok(h) if h.first_lsn == first_lsn && expected.is_none_or(|e| e == first_lsn) => h,
        // A bad header (or a segment that does not continue the log) loses the whole file.
        _ => {
            return Prefix {
                seed: 0,
                valid_bytes: 0,
                records: 0,
                damage: Some(0),
            };
        }
    };
    let (mut at, mut valid_bytes) = (SEGMENT_HEADER_BYTES, SEGMENT_HEADER_BYTES);
    let (mut records, mut complete) = (0u64, 0u64);
    while at < bytes.len() {
        match record::decode(&bytes[at..], header.seed) {
            Ok(frame) => {
                records += 1;
                at += frame.encoded_len();
                if frame.flags & FLAG_END_OF_BATCH != 0 {
                    complete = records;
                    valid_bytes = at;
                }
            }
            Err(_) => break,
        }
    }
    let damage = if valid_bytes == bytes.len() {
        None
    } else {
        Some(at.min(bytes.len()))
    };
    Prefix {
        seed: header.seed,
        valid_bytes,
        records: complete,
        damage,
    }
}

fn header_seed(bytes: &[u8]) -> u32 {
    segment::decode_header(bytes, Path::new("")).map_or(0, |h| h.seed)
}

/// Intact frames in `bytes[from..]`, resynchronising byte by byte past damage.
fn recognisable_frames(bytes: &[u8], from: usize, seed: u32) -> u64 {
    let mut at = from.max(SEGMENT_HEADER_BYTES);
    let mut n = 0;
    while at < bytes.len() {
        match record::decode(&bytes[at..], seed) {
            Ok(frame) => {
                n += 1;
                at += frame.encoded_len();
            }
            Err(_) => at += 1,
        }
    }
    n
}

fn copy_dir(dir: &Path, backup: &Path) -> Result<(), WalError> {
    fs::create_dir_all(backup).map_err(|e| WalError::io("create", backup, e))?;
    let entries = fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let to = backup.join(entry.file_name());
            fs::copy(entry.path(), &to).map_err(|e| WalError::io("copy", &to, e))?;
            fs::File::open(&to)
                .and_then(|f| f.sync_all())
                .map_err(|e| WalError::io("fsync", &to, e))?;
        }
    }
    sync_dir(backup)
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("open", path, e))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(|e| WalError::io("truncate", path, e))
}

fn remove(path: &Path) -> Result<(), WalError> {
    fs::remove_file(path).map_err(|e| WalError::io("remove", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsync directory", dir, e))
}
