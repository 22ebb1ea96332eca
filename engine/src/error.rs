//! The one error type of the crate.
//!
//! Variants are structured so the server can map each to a status in one place:
//! [`Error::is_user_error`] separates "the request is wrong" (4xx) from "the storage is
//! unhealthy" (503). After an I/O error on the durable path the WAL is poisoned and every later
//! write fails with [`Error::Wal`] until the vault is reopened (fail-stop, never retry an fsync).

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vault id outside `[A-Za-z0-9_-]{1,64}` (it becomes a directory name).
    #[error("invalid vault id {id:?}: expected 1 to 64 characters of [A-Za-z0-9_-]")]
    InvalidVaultId { id: String },

    /// The vault was written with a different embedder or dimension than the configured one.
    /// Mixing vector spaces would silently return garbage, so the vault is refused.
    #[error(
        "vault was written by embedder {stored:?} (dim {stored_dim}) but the configured embedder is \
         {configured:?} (dim {configured_dim}); reset the vault or configure the original embedder"
    )]
    EmbedderMismatch {
        stored: String,
        stored_dim: u32,
        configured: String,
        configured_dim: u32,
    },

    /// A request argument is out of bounds (for example `k` above the search limit).
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument { name: &'static str, reason: String },

    /// The write-ahead log failed (I/O, checksum, poisoned after an earlier fsync failure).
    #[error("write-ahead log: {0}")]
    Wal(#[from] wal::WalError),

    /// An I/O error on a segment, manifest or vault directory.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An fsync of a file or directory failed. What reached the disk is unknown (Linux may
    /// have dropped the dirty pages and cleared the error), so the vault that saw it is
    /// poisoned: its storage refuses every write for the rest of the process's life
    /// ([`crate::Vault::is_poisoned`]).
    #[error("fsync failed on {path}: {source}")]
    SyncFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Reading a mapped segment file failed: the kernel raised SIGBUS on one of its pages (an
    /// I/O error under the map, or the file truncated while mapped). The map now reads zeros
    /// and nothing read from it is served: the vault answers this error (503 for that vault
    /// only) until the process restarts and the next open reads the files again
    /// (`mmap.rs`, "SIGBUS containment").
    #[error("segment file {path} could not be read (I/O error on a mapped page)")]
    SegmentUnreadable { path: PathBuf },

    /// A file whose bytes do not match what `docs/format.md` says they must be.
    #[error("corrupt file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// A file whose payload checksum does not match its header.
    #[error("checksum mismatch in {path}: expected {expected:#010x}, found {actual:#010x}")]
    ChecksumMismatch {
        path: PathBuf,
        expected: u32,
        actual: u32,
    },

    /// A file written by a format version this build cannot read.
    #[error("{path} has format version {found}; this build reads versions {oldest}..={newest}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        oldest: u32,
        newest: u32,
    },

    /// A local embedding model directory (`local_model`) holds a file that is missing,
    /// unreadable or not what the model kind needs (bad JSON, wrong tensor shape or dtype,
    /// an unsupported tokenizer). Raised when the model is opened, never while embedding.
    #[error("embedding model file {path}: {reason}")]
    Model { path: PathBuf, reason: String },

    /// The embedder failed or broke its contract (wrong count, dimension, a NaN): nothing
    /// was stored or searched with its output.
    #[error("embedder {embedder}: {reason}")]
    Embedder { embedder: String, reason: String },

    /// The vault was purged while a caller still held a handle to it.
    #[error("vault {id:?} has been purged")]
    VaultClosed { id: String },

    /// A test-only fault injection point was reached (see [`crate::CrashPoint`]); the operation
    /// stopped as if the process had died there.
    #[error("injected crash at {point:?}")]
    InjectedCrash { point: crate::crash::CrashPoint },
}

impl Error {
    /// True when the caller can fix the request (4xx); false for storage faults (503).
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidVaultId { .. }
                | Error::EmbedderMismatch { .. }
                | Error::InvalidArgument { .. }
                | Error::VaultClosed { .. }
        )
    }

    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn embedder(embedder: &str, reason: impl Into<String>) -> Error {
        Error::Embedder {
            embedder: embedder.to_string(),
            reason: reason.into(),
        }
    }

    /// Wraps a failed fsync with the path it happened on.
    pub(crate) fn sync_failed(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::SyncFailed { path, source }
    }

    /// True for a failed fsync, the engine's or its WAL's: after one, nothing the process
    /// holds about the disk can be trusted (see [`Error::SyncFailed`]).
    pub fn is_failed_sync(&self) -> bool {
        match self {
            Error::SyncFailed { .. } => true,
            Error::Wal(wal::WalError::Io { op, .. }) => op.starts_with("fsync"),
            _ => false,
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Model {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
