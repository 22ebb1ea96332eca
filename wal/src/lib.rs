//! `wal`: the write-ahead log under every MemoryRouter vault and the server's catalog.
//!
//! **What it is.** Bytes in, bytes out: callers append `(kind, payload)` records and get back
//! a log sequence number ([`Lsn`]) once the record is durable. Records live in segment files
//! (a checksummed header, then length + kind + flags + payload + crc32 frames, specified to
//! the byte in `docs/format.md`). Concurrent appenders share fsyncs through group commit.
//! On open the log replays every record above the last [`Wal::checkpoint`], cuts off a torn
//! tail (and says how many bytes), and refuses — naming file and offset — any damage that is
//! not a torn tail. [`verify`] checks a log directory read-only.
//!
//! **What it is not.** It knows nothing of vaults, vectors or JSON; it does not index or
//! read back individual records after open (replay hands everything to the caller once); it
//! does not compact (callers checkpoint, the log deletes whole segments); it is not shared:
//! at most one open `Wal` per directory, in any process (nothing enforces this yet, there is
//! no lock file).
//!
//! **Limits.** A payload is at most [`WalOptions::record_bytes_max`] (≤ [`RECORD_BYTES_LIMIT`]);
//! a batch at most [`BATCH_RECORDS_MAX`] records and [`BATCH_BYTES_MAX`] bytes. Segments
//! rotate once the next batch would take them past [`WalOptions::segment_bytes_max`]; a
//! batch never spans two segments, so a single batch larger than that gets a segment of its
//! own. Replay holds one segment and every replayed record in memory.
//!
//! **Failures.** A write that fails for lack of space ([`WalError::NoSpace`]) is undone
//! before it is reported and the log stays open ([`Health::WriteStalled`]); a failed fsync,
//! any other failed write, or a failure while undoing poisons the log until it is reopened
//! ([`Health::Poisoned`]). See the `writer` module.
//!
//! **Modules.** `writer` (the [`Wal`] handle, group commit, stalls and poisoning), `record`
//! (frame codec), `segment` (segment header, naming, scanning), `recovery` (replay on open,
//! [`verify`]), `checkpoint` (the checkpoint file), `file` (the I/O seam that tests use to
//! inject failures), `error` ([`WalError`]). Tests: `fault_tests` (injected write, fsync and
//! truncate failures, full disks), `group_tests` (one fsync for a queued group),
//! `tests/recovery/` (round trips, torn tails, bit flips, golden format, never-panic
//! proptests), `tests/crash.rs` (SIGKILL).
//!
//! # Example
//!
//! ```
//! use wal::{Wal, WalOptions};
//!
//! # fn main() -> Result<(), wal::WalError> {
//! let dir = std::env::temp_dir().join(format!("wal-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let (log, recovery) = Wal::open(&dir, WalOptions::default())?;
//! assert!(recovery.records.is_empty());
//! let first = log.append(1, b"hello")?;
//! let last = log.append_batch(&[(2, b"a".as_slice()), (2, b"".as_slice())])?;
//! assert_eq!((first, last), (1, 3));
//! drop(log);
//!
//! let (log, recovery) = Wal::open(&dir, WalOptions::default())?;
//! assert_eq!(recovery.records.len(), 3);
//! assert_eq!(recovery.records[0].payload, b"hello");
//! log.checkpoint(3)?; // Records 1..=3 now live elsewhere.
//! drop(log);
//! let (_log, recovery) = Wal::open(&dir, WalOptions::default())?;
//! assert!(recovery.records.is_empty());
//! assert_eq!(recovery.checkpoint, 3);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod checkpoint;
mod error;
mod file;
mod record;
mod recovery;
mod repair;
mod segment;
mod writer;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod group_tests;

use std::fmt;
use std::str::FromStr;

pub use error::WalError;
// The I/O seam, for the engine's power-loss harness (see `file.rs`); not a stable API.
#[doc(hidden)]
pub use file::{
    FILE_MODE, FdSync, FileSync, LogFile, OsStorage, Storage, drop_cache_of, truncate_file,
};
pub use recovery::{SegmentReport, VerifyReport, verify};
pub use repair::{Cut, RepairReport, repair};
pub use writer::{SPACE_PROBE_BYTES, Wal};

impl Wal {
    /// [`Wal::open`] with every write, sync, rename and delete going through `storage`
    /// (the engine's power-loss harness records them). Not a stable API.
    #[doc(hidden)]
    pub fn open_with_storage(
        dir: &std::path::Path,
        options: WalOptions,
        storage: std::sync::Arc<dyn Storage>,
    ) -> Result<(Wal, Recovery), WalError> {
        Self::open_with(dir, options, storage)
    }
}

/// Log sequence number: the first record ever appended is 1. Acknowledged LSNs are strictly
/// increasing and gap-free, and never reused. (The LSNs an append was given internally before
/// it failed with [`WalError::NoSpace`] were never returned and never reached the disk; the
/// next appends get them.)
pub type Lsn = u64;

/// Default for [`WalOptions::segment_bytes_max`]: 64 MiB.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// Smallest accepted [`WalOptions::segment_bytes_max`] (room for a header and small records).
pub const SEGMENT_BYTES_MIN: u64 = 256;
/// Default for [`WalOptions::record_bytes_max`]: 16 MiB.
pub const RECORD_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Hard ceiling on any payload, whatever the options: recovery treats longer lengths as
/// damage, so a flipped length bit cannot make it allocate gigabytes.
pub const RECORD_BYTES_LIMIT: u32 = 1 << 30;
/// Most records in one `append_batch`.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;
/// Most payload bytes in one `append_batch`.
pub const BATCH_BYTES_MAX: u64 = 1 << 30;

const _: () = assert!(RECORD_BYTES_MAX_DEFAULT <= RECORD_BYTES_LIMIT);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX_DEFAULT);
const _: () = assert!(RECORD_BYTES_LIMIT < u32::MAX);

/// When `append` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Durability {
    /// After the fsync that covers the record (group commit shares it). The default.
    #[default]
    Fsync,
    /// After `write(2)`: survives a process crash, not an OS crash or power loss, until the
    /// next [`Wal::sync`] or segment rotation. Opt-in.
    Buffered,
}

impl Durability {
    /// The setting's name in config files: `"fsync"` or `"buffered"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Buffered => "buffered",
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Durability {
    type Err = WalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "buffered" => Ok(Durability::Buffered),
            _ => Err(WalError::InvalidOptions {
                detail: "durability must be \"fsync\" or \"buffered\"",
            }),
        }
    }
}

/// How a log is opened; validated by [`Wal::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// Rotate to a new segment file once the next batch would pass this size.
    pub segment_bytes_max: u64,
    /// Larger payloads are refused with [`WalError::RecordTooLarge`].
    pub record_bytes_max: u32,
    /// When appends are acknowledged.
    pub durability: Durability,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            record_bytes_max: RECORD_BYTES_MAX_DEFAULT,
            durability: Durability::Fsync,
        }
    }
}

/// What [`Wal::health`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Appends are being acknowledged.
    Healthy,
    /// The last write failed for lack of space ([`WalError::NoSpace`]) and nothing has been
    /// written since. The log is intact and open; the next append tries again.
    WriteStalled,
    /// An fsync or a write failed in a way that leaves the files' state unknown: every call
    /// fails with [`WalError::Poisoned`] until the log is reopened.
    Poisoned,
}

impl Health {
    /// `"healthy"`, `"write_stalled"` or `"poisoned"` (for readiness reports and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::WriteStalled => "write_stalled",
            Health::Poisoned => "poisoned",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replayed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its log sequence number.
    pub lsn: Lsn,
    /// The caller-defined kind it was appended with.
    pub kind: u8,
    /// The payload, byte for byte.
    pub payload: Vec<u8>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Every record with `lsn > checkpoint`, in order.
    pub records: Vec<Record>,
    /// The last checkpointed LSN (0 if none).
    pub checkpoint: Lsn,
    /// Bytes of torn tail cut off the last segment (0 if it was clean).
    pub truncated_bytes: u64,
    /// Tail cuts made (0 or 1: only the last segment can be cut). Each is also logged with
    /// `tracing::warn!` naming the file, the offset cut at and the bytes cut.
    pub tail_cuts: u32,
}

/// `Wal` is shared across threads as `Arc<Wal>`; keep it that way.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Wal>();
};
