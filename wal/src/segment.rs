//! Segment files: a 32-byte header followed by record frames (see `record.rs`).
//!
//! A segment is named after the LSN of its first record, `{first_lsn:020}.wal`, so a
//! lexical listing is LSN order. LSNs are not stored per record: the record at index `i` of a
//! segment has LSN `first_lsn + i`. Segments are created under a `.tmp` name, given their
//! header, fsynced and renamed, so a segment file never has a torn header. A batch never spans
//! two segments, and a segment is fsynced before the next one is created, so only the last
//! segment can end in a torn write.

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::Lsn;
use crate::error::WalError;
use crate::file::{LogFile, Storage};
use crate::record::{self, FLAG_END_OF_BATCH, FrameError};

/// Identifies a segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"MRWALSEG";
/// Oldest segment format version this build reads.
pub(crate) const SEGMENT_VERSION_OLDEST: u16 = 1;
/// Segment format version this build writes (and the newest it reads).
pub(crate) const SEGMENT_VERSION_NEWEST: u16 = 1;
/// Size of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: usize = 32;
/// File name suffix of a segment.
pub(crate) const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a file being created; leftovers are deleted on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The decoded header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub seed: u32,
    pub first_lsn: Lsn,
}

/// The path of the segment starting at `first_lsn`.
pub(crate) fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{first_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Parses a segment file name back into its first LSN; `None` for any other file.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn header_crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(&bytes[..SEGMENT_HEADER_BYTES - 4])
}

/// Encodes a version-`SEGMENT_VERSION_NEWEST` header.
pub(crate) fn encode_header(header: SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..10].copy_from_slice(&SEGMENT_VERSION_NEWEST.to_le_bytes());
    // 10..12 flags and 24..28 reserved stay zero in version 1.
    out[12..16].copy_from_slice(&header.seed.to_le_bytes());
    out[16..24].copy_from_slice(&header.first_lsn.to_le_bytes());
    let crc = header_crc(&out);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and checks a segment header: magic, then version, then checksum.
pub(crate) fn decode_header(bytes: &[u8], file: &Path) -> Result<SegmentHeader, WalError> {
    let magic_len = bytes.len().min(SEGMENT_MAGIC.len());
    if bytes[..magic_len] != SEGMENT_MAGIC[..magic_len] || bytes.len() < SEGMENT_MAGIC.len() {
        return Err(WalError::BadMagic {
            file: file.to_path_buf(),
            found: bytes[..magic_len].to_vec(),
        });
    }
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(WalError::Corrupt {
            file: file.to_path_buf(),
            offset: 0,
            detail: "segment header is truncated",
        });
    }
    let le16 = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let le32 =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = le16(8);
    if !(SEGMENT_VERSION_OLDEST..=SEGMENT_VERSION_NEWEST).contains(&version) {
        return Err(WalError::UnsupportedVersion {
            file: file.to_path_buf(),
            found: version,
            oldest: SEGMENT_VERSION_OLDEST,
            newest: SEGMENT_VERSION_NEWEST,
        });
    }
    let expected = le32(28);
    let actual = header_crc(bytes);
    if expected != actual {
        return Err(WalError::ChecksumMismatch {
            file: file.to_path_buf(),
            offset: 0,
            expected,
            actual,
        });
    }
    if le16(10) != 0 || le32(24) != 0 {
        return Err(WalError::Corrupt {
            file: file.to_path_buf(),
            offset: 0,
            detail: "segment header sets reserved bits",
        });
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[16..24]);
    Ok(SegmentHeader {
        seed: le32(12),
        first_lsn: u64::from_le_bytes(lsn),
    })
}

/// One record found by [`scan`]: its kind and where its payload lies in the scanned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScannedRecord {
    pub kind: u8,
    pub payload: Range<usize>,
}

/// The result of checking a whole segment.
#[derive(Debug)]
pub(crate) struct Scan {
    pub header: SegmentHeader,
    /// Records of complete batches, in order.
    pub records: Vec<ScannedRecord>,
    /// Length of the valid prefix: the header plus every complete batch.
    pub valid_bytes: u64,
    /// Bytes after `valid_bytes` (a torn write or an unfinished batch); 0 unless `is_last`.
    pub torn_bytes: u64,
}

fn frame_error(err: FrameError, file: &Path, offset: usize) -> WalError {
    let file = file.to_path_buf();
    let offset = offset as u64;
    match err {
        FrameError::HeaderChecksum { expected, actual }
        | FrameError::Checksum { expected, actual } => WalError::ChecksumMismatch {
            file,
            offset,
            expected,
            actual,
        },
        FrameError::Truncated => WalError::Corrupt {
            file,
            offset,
            detail: "record runs past the end of a sealed segment",
        },
        FrameError::TooLong => WalError::Corrupt {
            file,
            offset,
            detail: "record length exceeds RECORD_BYTES_LIMIT",
        },
        FrameError::UnknownFlags => WalError::Corrupt {
            file,
            offset,
            detail: "record sets unknown flag bits",
        },
    }
}

/// Checks every frame of a segment held in memory.
///
/// A damaged frame is a *torn tail* only if the segment is the last one and no valid frame
/// starts anywhere after it; then it and any unfinished batch before it are reported in
/// `torn_bytes`. Damage followed by intact data, or any damage in a sealed segment, is an
/// error naming the offset. The scan is bounded by `bytes.len()` and never panics.
pub(crate) fn scan(bytes: &[u8], file: &Path, is_last: bool) -> Result<Scan, WalError> {
    let header = decode_header(bytes, file)?;
    let mut records = Vec::new();
    let mut complete_records = 0;
    let mut valid_bytes = SEGMENT_HEADER_BYTES;
    let mut at = SEGMENT_HEADER_BYTES;
    while at < bytes.len() {
        match record::decode(&bytes[at..], header.seed) {
            Ok(frame) => {
                let start = at + record::FRAME_HEADER_BYTES;
                records.push(ScannedRecord {
                    kind: frame.kind,
                    payload: start..start + frame.payload.len(),
                });
                at += frame.encoded_len();
                if frame.flags & FLAG_END_OF_BATCH != 0 {
                    complete_records = records.len();
                    valid_bytes = at;
                }
            }
            Err(err) => {
                if !is_last || record::any_valid_frame(&bytes[at + 1..], header.seed) {
                    return Err(frame_error(err, file, at));
                }
                break;
            }
        }
    }
    if valid_bytes < bytes.len() && !is_last {
        return Err(WalError::Corrupt {
            file: file.to_path_buf(),
            offset: valid_bytes as u64,
            detail: "sealed segment ends inside a batch",
        });
    }
    records.truncate(complete_records);
    Ok(Scan {
        header,
        records,
        valid_bytes: valid_bytes as u64,
        torn_bytes: (bytes.len() - valid_bytes) as u64,
    })
}

/// A fresh random-enough seed: distinct per segment and per process run, so frames from an
/// older incarnation of a file never validate against a new header.
pub(crate) fn new_seed(first_lsn: Lsn) -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&first_lsn.to_le_bytes());
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.finalize()
}

/// A segment open for appending.
pub(crate) struct ActiveSegment {
    pub file: Box<dyn LogFile>,
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// Bytes in the file, header included (and, inside a leader's group, bytes encoded for it).
    pub bytes: u64,
    /// Records in the file.
    pub records: u64,
}

/// Creates the segment whose first record will be `first_lsn`: header written to a temporary
/// name, fsynced, renamed into place, directory fsynced.
pub(crate) fn create(
    storage: &dyn Storage,
    dir: &Path,
    first_lsn: Lsn,
) -> Result<ActiveSegment, WalError> {
    let path = segment_path(dir, first_lsn);
    let tmp = path.with_extension(&TMP_SUFFIX[1..]);
    let header = SegmentHeader {
        seed: new_seed(first_lsn),
        first_lsn,
    };
    let file = crate::file::create_durably(storage, &tmp, &path, &encode_header(header))?;
    Ok(ActiveSegment {
        file,
        path,
        header,
        bytes: SEGMENT_HEADER_BYTES as u64,
        records: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_lsn_order() {
        let dir = Path::new("/x");
        let a = segment_path(dir, 9);
        let b = segment_path(dir, 10);
        assert!(a.file_name() < b.file_name());
        let name = b.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        assert_eq!(parse_segment_name(name), Some(10));
        assert_eq!(parse_segment_name("checkpoint"), None);
        assert_eq!(parse_segment_name("1.wal"), None);
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let file = Path::new("seg");
        let header = SegmentHeader {
            seed: 0xdead_beef,
            first_lsn: 77,
        };
        let bytes = encode_header(header);
        assert_eq!(decode_header(&bytes, file).ok(), Some(header));
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_header(&bad, file).is_err(), "bit {bit}");
        }
        let mut future = bytes;
        future[8] = 2;
        assert!(matches!(
            decode_header(&future, file),
            Err(WalError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            decode_header(b"MRWA", file),
            Err(WalError::BadMagic { .. })
        ));
    }
}
