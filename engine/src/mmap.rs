//! Read-only memory maps of immutable segment files: the crate's only `unsafe`.
//!
//! # Safety
//!
//! `memmap2::Mmap::map` is unsafe because another process (or this one) could modify or
//! truncate the file while it is mapped, which would change bytes under a `&[u8]` (undefined
//! behaviour) or raise SIGBUS. We rule that out by construction:
//!
//! * a file is mapped only after it was written completely to a temporary directory, fsynced,
//!   and renamed into place (`segment.rs`); nothing in the engine ever opens a segment file for
//!   writing again;
//! * segments are removed only by deleting the whole directory after a manifest swap; on
//!   Unix an unlinked file stays valid for existing maps, so in-flight searches are unaffected;
//! * a vault directory belongs to one process (the server holds it exclusively, see
//!   `DESIGN.md`: "nothing else writes there").
//!
//! An operator editing segment files by hand while the server runs is outside this contract,
//! exactly as for any database.
#![allow(
    unsafe_code,
    reason = "the one place that maps files; see the Safety section"
)]

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A whole file mapped read-only.
pub struct MappedFile {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

impl MappedFile {
    /// Maps `path` read-only. The file must be one of our immutable segment files (see the
    /// module's Safety section).
    pub fn open(path: &Path) -> Result<MappedFile> {
        let file = File::open(path).map_err(Error::io(path))?;
        // SAFETY: segment files are immutable once renamed into place and are only ever
        // unlinked, never truncated or rewritten, while mapped (module docs, # Safety).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        Ok(MappedFile {
            map,
            path: path.to_path_buf(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A lexical index parsed once from its mapped file and kept next to the map. Parsing
/// validates the whole file (expensive), so segments do it at open, not per search.
pub struct MappedLexical {
    // Declared before `map` so it is dropped first; it borrows the map's bytes.
    view: crate::lexical::LexicalView<'static>,
    map: MappedFile,
}

impl MappedLexical {
    pub fn open(path: &Path) -> Result<MappedLexical> {
        let map = MappedFile::open(path)?;
        // SAFETY: the bytes live in the kernel mapping owned by `map`, whose address does not
        // change when `map` (the struct) moves; the mapping is released only when `map` drops,
        // which happens after `view` (field order) and never while `&self` is borrowed. The
        // `'static` is never exposed: `view()` shortens it to the borrow of `self`.
        let bytes: &'static [u8] =
            unsafe { std::slice::from_raw_parts(map.bytes().as_ptr(), map.bytes().len()) };
        let view = crate::lexical::LexicalView::parse(bytes)
            .map_err(|e| Error::corrupt(path, e.to_string()))?;
        Ok(MappedLexical { view, map })
    }

    /// The view, borrowed no longer than `self` (covariance shortens `'static`).
    pub fn view(&self) -> &crate::lexical::LexicalView<'_> {
        &self.view
    }

    pub fn file_bytes(&self) -> usize {
        self.map.bytes().len()
    }

    pub fn path(&self) -> &Path {
        self.map.path()
    }
}

/// How much of one vector `prefetch` asks for: a 384-dim f32 vector is 1536 bytes; beyond
/// that the hardware stream prefetcher takes over.
const PREFETCH_BYTES_MAX: usize = 2048;
const CACHE_LINE_BYTES: usize = 64;

/// Asks the CPU to start loading `data` (typically a mapped vector a graph walk is about to
/// score) into cache, so the misses of several neighbours overlap instead of queueing.
/// A no-op on targets without a prefetch instruction.
#[inline]
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let len = std::mem::size_of_val(data).min(PREFETCH_BYTES_MAX);
        let base = data.as_ptr().cast::<i8>();
        let mut offset = 0;
        while offset < len {
            // SAFETY: `base + offset` stays inside `data` (offset < its byte length), and a
            // prefetch is only a hint: it never faults, never writes, and its result is not
            // observable by the program.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    base.add(offset),
                );
            }
            offset += CACHE_LINE_BYTES;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}
