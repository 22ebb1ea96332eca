//! Sizes and bounds shared by the vault and the modules under it (segments, HNSW, WAL
//! payloads), here so a lower module never imports the vault to learn them.

use crate::record::MemoryId;

/// Largest WAL payload the engine writes; bigger ingest batches are split into several
/// records appended atomically with one `append_batch`. Well under the WAL's 16 MiB default
/// record limit so a batch never hits `RecordTooLarge`.
pub const WAL_PAYLOAD_BYTES_MAX: usize = 4 << 20;
/// WAL segment file size for a vault: most vaults are small, and 100k of them must not each
/// hold a 64 MiB file.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 8 << 20;
/// Default seal threshold, in records: 4096 × 384 floats is 6 MiB of vectors, scanned
/// exactly in well under a millisecond.
pub const MEMTABLE_RECORDS_MAX_DEFAULT: usize = 4096;
/// Default bound on a vault's unsealed records in heap bytes (`Memtable::heap_bytes`, frozen
/// memtables included): an ingest that takes them past it seals before it returns. A full
/// memtable of chat turns (4096 records of ~450 characters at 384 dimensions) holds ~15 MiB,
/// so ordinary vaults seal by count in the background; this bound is for large bodies — one
/// 8 MiB ingest of long messages holds ~70 MiB until sealed — so that many of them at once
/// cannot pile up unsealed memtables faster than the background seals them.
pub const MEMTABLE_BYTES_MAX_DEFAULT: usize = 32 << 20;
/// Largest `memtable_bytes_max` accepted: the memtable's lexical index counts in `u32`.
pub const MEMTABLE_BYTES_MAX_CEILING: usize = 1 << 30;
const _: () = assert!(MEMTABLE_BYTES_MAX_DEFAULT <= MEMTABLE_BYTES_MAX_CEILING);
/// Most ids one `delete`/`clear` WAL record carries (8 bytes each: 4 MiB).
pub(crate) const DELETE_IDS_PER_RECORD_MAX: usize = WAL_PAYLOAD_BYTES_MAX / 8;
/// Ids are handed out from 1 up and never reused, so no vault comes near this; an id (or a
/// manifest `next_id`) past it can only come from a damaged file, and `open` refuses it.
/// The room left above it keeps `next_id` arithmetic from ever overflowing (the
/// `wal_payload` fuzz target found `open` overflowing on a WAL record with id `u64::MAX`).
pub(crate) const MEMORY_ID_END: MemoryId = 1 << 62;

const _: () = assert!((WAL_PAYLOAD_BYTES_MAX as u64) < WAL_SEGMENT_BYTES_MAX);
