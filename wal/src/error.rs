//! The crate's one error type.
//!
//! Every variant is structured so callers (the engine, the server's 503 mapping, `verify`) can
//! act on it without parsing a message. Corruption errors always name the file and the byte
//! offset where reading stopped, so an operator can inspect the exact spot.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call failed. On the append path this also poisons the log.
    /// (A write that failed for lack of space is [`WalError::NoSpace`] instead.)
    #[error("wal: {op} {path}: {source}")]
    Io {
        /// What we were doing (`"write"`, `"fsync"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A write or file creation failed because the file system is full (`ENOSPC`,
    /// [`io::ErrorKind::StorageFull`]) or the quota is exhausted (`EDQUOT`,
    /// [`io::ErrorKind::QuotaExceeded`]). Retryable: before this error is returned the log has
    /// cut its files back to the last acknowledged record (durably), so nothing of the failed
    /// append — nor of the appends that were queued with it, which get this error too — is on
    /// disk or will ever be replayed, and the log stays open. The next append tries again
    /// (reusing the LSNs the failed ones would have had); [`crate::Wal::health`] reports
    /// [`crate::Health::WriteStalled`] until one succeeds. A checkpoint that runs out of space
    /// returns it too (the previous checkpoint stays). Any other failed write, every failed
    /// fsync, and a failure while cutting back are [`WalError::Io`] and poison the log.
    #[error("wal: {op} {path}: {source} (nothing was kept; retry once there is space)")]
    NoSpace {
        /// What failed (`"write"` or `"create"`).
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error (for appends that were queued behind the failed write, a copy
        /// of its kind).
        #[source]
        source: io::Error,
    },
    /// A checksum did not match before the end of the log: real corruption, not a torn write.
    #[error(
        "wal: checksum mismatch in {file} at offset {offset}: stored {expected:#010x}, computed {actual:#010x}"
    )]
    ChecksumMismatch {
        /// The segment or checkpoint file.
        file: PathBuf,
        /// Byte offset of the header or record whose checksum failed.
        offset: u64,
        /// The checksum stored in the file.
        expected: u32,
        /// The checksum computed over the bytes read.
        actual: u32,
    },
    /// The file was written by a format version this build does not read.
    #[error(
        "wal: {file} has format version {found}; this build reads versions {oldest}..={newest}"
    )]
    UnsupportedVersion {
        /// The file carrying the version.
        file: PathBuf,
        /// The version found in the header.
        found: u16,
        /// Oldest version this build reads.
        oldest: u16,
        /// Newest version this build reads.
        newest: u16,
    },
    /// The file does not start with the expected magic bytes: not a WAL file of ours.
    #[error("wal: {file} does not start with the expected magic bytes (found {found:02x?})")]
    BadMagic {
        /// The offending file.
        file: PathBuf,
        /// The first bytes of the file (fewer if the file is shorter).
        found: Vec<u8>,
    },
    /// A structural inconsistency that is not a checksum failure (a gap between segments, a
    /// record running past the end of a sealed segment, unknown flag bits, ...).
    #[error("wal: {file} at offset {offset}: {detail}")]
    Corrupt {
        /// The offending file.
        file: PathBuf,
        /// Byte offset where the inconsistency was found.
        offset: u64,
        /// What is wrong.
        detail: &'static str,
    },
    /// A payload exceeds `WalOptions::record_bytes_max`.
    #[error("wal: record of {len} bytes exceeds record_bytes_max ({max} bytes)")]
    RecordTooLarge {
        /// Payload length offered.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A batch exceeds `BATCH_RECORDS_MAX` records or `BATCH_BYTES_MAX` bytes.
    #[error("wal: batch of {records} records / {bytes} bytes exceeds the batch limits")]
    BatchTooLarge {
        /// Records in the batch.
        records: usize,
        /// Payload bytes in the batch.
        bytes: u64,
    },
    /// `append_batch` was called with no records.
    #[error("wal: empty batch")]
    EmptyBatch,
    /// An earlier fsync failed, or a write for another reason than lack of space, or undoing a
    /// write that ran out of space: the log refuses further work until it is reopened.
    #[error("wal: poisoned by an earlier I/O failure; reopen the log to recover")]
    Poisoned,
    /// `checkpoint(lsn)` named an LSN that has not been acknowledged yet.
    #[error("wal: checkpoint {lsn} is beyond the last acknowledged lsn {last}")]
    CheckpointBeyondEnd {
        /// The LSN asked for.
        lsn: u64,
        /// The last acknowledged LSN.
        last: u64,
    },
    /// `WalOptions` failed validation.
    #[error("wal: invalid options: {detail}")]
    InvalidOptions {
        /// Which limit was violated.
        detail: &'static str,
    },
}

impl WalError {
    /// Wraps an I/O error with the operation and path it came from.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Wraps the error of a write or a file creation: [`WalError::NoSpace`] if it says the
    /// disk or quota is full, [`WalError::Io`] otherwise. Never use it for an fsync: a failed
    /// fsync means the page cache can no longer be trusted, whatever the errno.
    pub(crate) fn write(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        if is_out_of_space(&source) {
            WalError::NoSpace {
                op,
                path: path.into(),
                source,
            }
        } else {
            WalError::io(op, path, source)
        }
    }

    /// True for [`WalError::NoSpace`]: the log is still open and nothing of the failed call
    /// reached the log; the same call may be retried (after freeing space).
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::NoSpace { .. })
    }
}

/// `ENOSPC` and `EDQUOT` (std maps them to these kinds on every Unix).
pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enospc_and_edquot_count_as_out_of_space() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let err = WalError::write("write", "f", io::Error::from_raw_os_error(errno));
            assert!(err.is_retryable(), "errno {errno}");
        }
        for errno in [
            libc::EIO,
            libc::EROFS,
            libc::EFBIG,
            libc::EBADF,
            libc::EINTR,
        ] {
            let err = WalError::write("write", "f", io::Error::from_raw_os_error(errno));
            assert!(matches!(err, WalError::Io { .. }), "errno {errno}");
        }
        assert!(
            !WalError::io("fsync", "f", io::Error::from_raw_os_error(libc::ENOSPC)).is_retryable()
        );
    }
}
