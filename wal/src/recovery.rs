//! Opening a log directory: replay from the checkpoint, cut a torn tail, and `verify`.
//!
//! Replay reads one segment at a time into memory, checks it with [`segment::scan`], checks
//! that segments continue each other's LSNs without a gap, and keeps records above the
//! checkpoint. Only the last segment may end in a torn write; its length is cut back to the
//! end of its last complete batch and the number of bytes cut is reported.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::error::WalError;
use crate::file::Storage;
use crate::segment::{self, ActiveSegment, Scan, TMP_SUFFIX};
use crate::{Lsn, Record, Recovery};

/// Highest next LSN a log may be opened with. No real log gets near it (2^63 appends); a
/// checkpoint or segment name beyond it is damage, and the headroom keeps the appenders' LSN
/// arithmetic from overflowing.
const LSN_OPEN_MAX: Lsn = u64::MAX >> 1;

/// A segment file found in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// Per-file result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// The segment file.
    pub path: PathBuf,
    /// LSN of its first record.
    pub first_lsn: Lsn,
    /// Records in complete batches.
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Bytes of torn tail after the last complete batch (only ever non-zero in the last file);
    /// the next `Wal::open` cuts them off.
    pub torn_bytes: u64,
}

/// What [`verify`] found: every checksum checked, nothing modified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The persisted checkpoint (0 if none).
    pub checkpoint: Lsn,
    /// One entry per segment file, in LSN order.
    pub segments: Vec<SegmentReport>,
    /// Records in all segments, including those at or below the checkpoint.
    pub records: u64,
    /// The last LSN in the log (the checkpoint if the log holds no later record).
    pub last_lsn: Lsn,
}

/// Lists the segment files of `dir` in LSN order, ignoring every other file.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        let name = entry.file_name();
        if let Some(first_lsn) = name.to_str().and_then(segment::parse_segment_name) {
            segments.push(SegmentFile {
                first_lsn,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Reads and checks every segment, calling `visit` for each with its bytes and scan.
/// Returns the LSN the next record would get (`None` if there are no segments).
fn walk(
    segments: &[SegmentFile],
    checkpoint: Lsn,
    mut visit: impl FnMut(&SegmentFile, &[u8], &Scan, bool) -> Result<(), WalError>,
) -> Result<Option<Lsn>, WalError> {
    let mut next_lsn: Option<Lsn> = None;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let bytes = fs::read(&seg.path).map_err(|e| WalError::io("read", &seg.path, e))?;
        let scan = segment::scan(&bytes, &seg.path, is_last)?;
        let corrupt = |detail| WalError::Corrupt {
            file: seg.path.clone(),
            offset: 0,
            detail,
        };
        if scan.header.first_lsn != seg.first_lsn || seg.first_lsn == 0 {
            return Err(corrupt(
                "segment header's first lsn does not match its file name",
            ));
        }
        match next_lsn {
            Some(expected) if expected != seg.first_lsn => {
                return Err(corrupt("lsn gap or overlap between consecutive segments"));
            }
            None if seg.first_lsn > checkpoint.saturating_add(1) => {
                return Err(corrupt(
                    "records between the checkpoint and this segment are missing",
                ));
            }
            _ => {}
        }
        let end = seg
            .first_lsn
            .checked_add(scan.records.len() as u64)
            .ok_or_else(|| corrupt("segment's lsns overflow u64"))?;
        visit(seg, &bytes, &scan, is_last)?;
        next_lsn = Some(end);
    }
    Ok(next_lsn)
}

/// The state `Wal::open` continues from.
pub(crate) struct Replayed {
    pub recovery: Recovery,
    /// Older segments still on disk (some records above the checkpoint), in LSN order.
    pub sealed: Vec<SegmentFile>,
    /// The segment new records go to.
    pub active: ActiveSegment,
    /// LSN the next appended record gets.
    pub next_lsn: Lsn,
}

fn sync_dir(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("fsync directory", dir, e))
}

/// Creates `dir` if needed, making the new entry durable in its parent.
fn ensure_dir(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    match fs::metadata(dir) {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io("stat", dir, e)),
    }
    fs::create_dir_all(dir).map_err(|e| WalError::io("create directory", dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(storage, parent),
        _ => Ok(()),
    }
}

/// Deletes files left by a crash while creating a segment or a checkpoint.
fn remove_tmp_files(storage: &dyn Storage, dir: &Path) -> Result<(), WalError> {
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(|e| WalError::io("list", dir, e))? {
        let entry = entry.map_err(|e| WalError::io("list", dir, e))?;
        let is_ours = entry.file_name().to_str().is_some_and(|name| {
            name.ends_with(TMP_SUFFIX)
                && (name == checkpoint::CHECKPOINT_TMP_FILE
                    || name == crate::writer::SPACE_PROBE_FILE
                    || segment::parse_segment_name(
                        &name.replace(TMP_SUFFIX, segment::SEGMENT_SUFFIX),
                    )
                    .is_some())
        });
        if is_ours {
            let path = entry.path();
            storage
                .remove(&path)
                .map_err(|e| WalError::io("remove", &path, e))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(storage, dir)?;
    }
    Ok(())
}

/// Cuts the last segment back to `len` bytes and makes the new length durable.
fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io("open", path, e))?;
    file.set_len(len)
        .map_err(|e| WalError::io("truncate", path, e))?;
    file.sync_all().map_err(|e| WalError::io("fsync", path, e))
}

/// Deletes sealed segments whose every record is at or below `checkpoint`, oldest first so
/// a crash midway never leaves a gap. `next_first` is the first LSN of the segment after the
/// last sealed one.
pub(crate) fn delete_covered(
    storage: &dyn Storage,
    dir: &Path,
    sealed: &mut Vec<SegmentFile>,
    next_first: Lsn,
    checkpoint: Lsn,
) -> Result<(), WalError> {
    let mut deleted = 0;
    while deleted < sealed.len() {
        let end = sealed.get(deleted + 1).map_or(next_first, |s| s.first_lsn);
        if end > checkpoint.saturating_add(1) {
            break;
        }
        let path = &sealed[deleted].path;
        storage
            .remove(path)
            .map_err(|e| WalError::io("remove", path, e))?;
        deleted += 1;
    }
    if deleted > 0 {
        sealed.drain(..deleted);
        sync_dir(storage, dir)?;
    }
    Ok(())
}

/// Replays `dir` for `Wal::open`.
pub(crate) fn replay(storage: &dyn Storage, dir: &Path) -> Result<Replayed, WalError> {
    ensure_dir(storage, dir)?;
    remove_tmp_files(storage, dir)?;
    let checkpoint = checkpoint::read(dir)?;
    let mut sealed = list_segments(dir)?;
    // Trust the disk, not the page cache (see `file::drop_cache_of`): only the last segment
    // can hold bytes that were never synced (a rotation syncs the segment it leaves).
    if let Some(last) = sealed.last() {
        storage
            .drop_cache(&last.path)
            .map_err(|e| WalError::io("fsync", &last.path, e))?;
    }
    let mut records = Vec::new();
    let mut truncated_bytes = 0;
    let mut tail_cuts = 0;
    let mut tail = None;
    let tail_next = walk(&sealed, checkpoint, |seg, bytes, scan, is_last| {
        for (i, rec) in scan.records.iter().enumerate() {
            let lsn = seg.first_lsn + i as u64;
            if lsn > checkpoint {
                records.push(Record {
                    lsn,
                    kind: rec.kind,
                    payload: bytes[rec.payload.clone()].to_vec(),
                });
            }
        }
        if is_last {
            if scan.torn_bytes > 0 {
                truncate(&seg.path, scan.valid_bytes)?;
                truncated_bytes = scan.torn_bytes;
                tail_cuts += 1;
                tracing::warn!(
                    file = %seg.path.display(),
                    offset = scan.valid_bytes,
                    bytes = scan.torn_bytes,
                    "wal: cut a torn tail (an unfinished write or batch) off the last segment"
                );
            }
            tail = Some((
                seg.path.clone(),
                scan.header,
                scan.valid_bytes,
                scan.records.len() as u64,
            ));
        }
        Ok(())
    })?;
    let first_free = checkpoint.saturating_add(1);
    let next_lsn = tail_next.map_or(first_free, |n| n.max(first_free));
    if next_lsn > LSN_OPEN_MAX {
        return Err(WalError::Corrupt {
            file: dir.join(checkpoint::CHECKPOINT_FILE),
            offset: 0,
            detail: "the checkpoint or a segment name puts the next lsn near u64::MAX",
        });
    }
    let active = match tail {
        // Continue the last segment unless the checkpoint is past its end (possible after an
        // OS crash in Buffered mode): then LSNs resume after the checkpoint in a new segment.
        Some((path, header, bytes, count)) if tail_next.is_some_and(|end| end >= first_free) => {
            sealed.pop(); // It becomes the active segment.
            let file = storage
                .open_append(&path)
                .map_err(|e| WalError::io("open", &path, e))?;
            ActiveSegment {
                file,
                path,
                header,
                bytes,
                records: count,
            }
        }
        _ => {
            // Every remaining segment ends at or below the checkpoint. Delete them (durably)
            // before the new segment exists: a crash in between must never leave a stale
            // segment next to one that starts after a gap, which replay refuses.
            delete_covered(storage, dir, &mut sealed, next_lsn, checkpoint)?;
            segment::create(storage, dir, next_lsn)?
        }
    };
    delete_covered(
        storage,
        dir,
        &mut sealed,
        active.header.first_lsn,
        checkpoint,
    )?;
    Ok(Replayed {
        recovery: Recovery {
            records,
            checkpoint,
            truncated_bytes,
            tail_cuts,
        },
        sealed,
        active,
        next_lsn,
    })
}

/// Checks every checksum in the log directory `dir` without modifying anything.
///
/// A torn tail in the last segment is reported in its `torn_bytes`, not as an error (the next
/// `Wal::open` repairs it); any other damage is an error naming the file and offset.
pub fn verify(dir: &Path) -> Result<VerifyReport, WalError> {
    let checkpoint = checkpoint::read(dir)?;
    let segments = list_segments(dir)?;
    let mut reports = Vec::with_capacity(segments.len());
    let mut records = 0;
    let next = walk(&segments, checkpoint, |seg, bytes, scan, _| {
        records += scan.records.len() as u64;
        reports.push(SegmentReport {
            path: seg.path.clone(),
            first_lsn: seg.first_lsn,
            records: scan.records.len() as u64,
            bytes: bytes.len() as u64,
            torn_bytes: scan.torn_bytes,
        });
        Ok(())
    })?;
    Ok(VerifyReport {
        checkpoint,
        segments: reports,
        records,
        last_lsn: next.map_or(checkpoint, |n| (n - 1).max(checkpoint)),
    })
}
