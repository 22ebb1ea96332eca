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
//!
//! # I/O errors on a mapped page (SIGBUS containment)
//!
//! What the contract cannot rule out is the disk: a bad sector under a mapped page (or a
//! file truncated under the map after all) makes the page fault fail, and the kernel raises
//! SIGBUS on the reading thread, which would kill the process — every tenant — and the
//! vault's next search would kill it again. On Linux this module contains it instead:
//!
//! * every map is registered (start, length) in a fixed, lock-free table ([`slots`]);
//! * a SIGBUS handler, installed with the first map, looks the faulting address up there.
//!   If a registered map holds it, the handler marks that map *damaged* and replaces the
//!   whole map, in place, by anonymous zero pages (`mmap(MAP_FIXED | MAP_ANONYMOUS)` over
//!   the same range, one system call, no lock, no allocation); the faulting instruction is
//!   then retried and reads zeros. Nothing unwinds or jumps out of the handler, so no Rust
//!   frame is skipped (the `sigsetjmp` designs are not sound in Rust: they skip destructors
//!   and lock releases of every frame between the access and the jump);
//! * any other SIGBUS goes to the handler that was there before (Rust's own stack-overflow
//!   handler, or the default action), so unrelated faults still end the process.
//!
//! Zeros are never served: [`MappedFile::check`] reports the damage, and the segment and
//! vault check their maps after every read (`Segment::check`, `Vault::contained`), so the
//! read answers [`Error::SegmentUnreadable`] (503 for that vault only) and whatever was read
//! from the zero pages is thrown away. A segment parsed from zeros is also well defined:
//! offsets were bounds-checked at open against lengths held on the heap, and reads of
//! zeros stay inside them (a panic, if one slipped through, is caught by the same wrapper).
//! Zero pages keep later reads of the damaged map fault-free (they cost memory only when
//! touched); the vault stays unavailable until the process restarts and the next open
//! re-reads (and re-checks) the files.
//!
//! Cost: nothing per access (no check on the read path, the page cache serves hits as
//! before); one atomic load per map of a searched segment per request, and a table entry per
//! open map (`docs/benchmarks.md`, "SIGBUS containment"). Checked reads (`pread` into a page
//! cache of our own, as redb did when it left mmap) were the alternative: sound without a
//! signal handler, but every graph hop and vector score would go through a cache lookup and
//! a copy, and the segment, HNSW and BM25 readers, written over `&[u8]`, would all change.
#![allow(
    unsafe_code,
    reason = "the one place that maps files; see the Safety section"
)]

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A whole file mapped read-only, registered with the SIGBUS containment while it lives.
pub struct MappedFile {
    // Declared before `map` so the registration ends before the map is unmapped (fields drop
    // in declaration order): the handler never sees a range that is no longer ours.
    slot: Option<slots::Registration>,
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
        // unlinked, never truncated or rewritten, while mapped (module docs, # Safety); an
        // I/O error on a page is contained (module docs, SIGBUS containment).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(Error::io(path))?;
        // An empty map has no pages to fault on.
        let slot = if map.is_empty() {
            None
        } else {
            Some(
                slots::Registration::new(map.as_ptr() as usize, map.len()).ok_or_else(|| {
                    Error::io(path)(std::io::Error::other(
                        "too many mapped segment files for SIGBUS containment",
                    ))
                })?,
            )
        };
        Ok(MappedFile {
            slot,
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

    /// Drops this process's mapping of the pages (`MADV_DONTNEED`), so pages a one-off pass
    /// touched — validation at open, building the int8 codes — stop counting in the
    /// process's RSS: after a seal of a few large ingests that was ~1 GiB of RSS for pages
    /// no search had read. The pages stay in the kernel's page cache, and the next read of
    /// one faults it back from there (a minor fault) with the same bytes. Best effort.
    pub fn release_pages(&self) {
        if self.map.is_empty() {
            return;
        }
        // SAFETY: the map is a read-only view of a file nobody modifies while it is mapped
        // (# Safety above): no page of it was ever written, so dropping the process's
        // mapping of a page loses nothing, and a later access — even through a slice
        // borrowed before this call — reads the same bytes from the file. A map replaced by
        // zero pages after a SIGBUS is marked damaged, and reads zeros again afterwards.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
    }

    /// True once reading a page of this map failed (SIGBUS): its bytes are zeros since.
    pub fn is_damaged(&self) -> bool {
        self.slot
            .as_ref()
            .is_some_and(slots::Registration::is_damaged)
    }

    /// [`Error::SegmentUnreadable`] once a read of this map failed: whatever was read from
    /// it since may be zeros and must not be served.
    pub fn check(&self) -> Result<()> {
        if self.is_damaged() {
            return Err(Error::SegmentUnreadable {
                path: self.path.clone(),
            });
        }
        Ok(())
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

    /// See [`MappedFile::check`].
    pub fn check(&self) -> Result<()> {
        self.map.check()
    }

    /// See [`MappedFile::release_pages`].
    pub fn release_pages(&self) {
        self.map.release_pages();
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

#[cfg(test)]
/// SIGBUS faults on registered maps contained since the process started (each replaced its
/// map by zero pages and marked it damaged).
pub fn contained_faults() -> u64 {
    slots::FAULTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// The table of registered maps the SIGBUS handler searches. Registration and release run in
/// ordinary code and take a mutex for the free list; the handler only loads atomics.
mod slots {
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};
    use std::sync::{Mutex, PoisonError};

    const CHUNK_SLOTS: usize = 1024;
    const CHUNKS_MAX: usize = 256;
    /// Maps open at once (a segment holds up to four): 262,144, far above
    /// `OPEN_VAULTS_MAX_DEFAULT` vaults of a few segments each. Past it a segment does not
    /// open (an I/O error naming the file) rather than open uncontained.
    const SLOTS_MAX: usize = CHUNK_SLOTS * CHUNKS_MAX;

    /// A slot's `state` is `generation << KIND_BITS | kind`. Every registration and release
    /// bumps the generation, so the handler can tell a consistent (start, len) from one torn
    /// by a concurrent re-registration (a seqlock read: state, fields, state again).
    const KIND_BITS: u32 = 2;
    const KIND_MASK: u64 = 3;
    const FREE: u64 = 0;
    const WRITING: u64 = 1;
    const LIVE: u64 = 2;
    /// `LIVE | 1`: the handler marks a map with one `fetch_or`.
    const DAMAGED: u64 = 3;

    #[derive(Default)]
    struct Slot {
        state: AtomicU64,
        start: AtomicUsize,
        len: AtomicUsize,
    }

    /// Chunks are allocated in order, on demand, and never freed: the handler may read any
    /// chunk it sees without synchronising with registration.
    static CHUNKS: [AtomicPtr<[Slot; CHUNK_SLOTS]>; CHUNKS_MAX] =
        [const { AtomicPtr::new(std::ptr::null_mut()) }; CHUNKS_MAX];
    /// Released slot indexes, and how many slots were ever handed out.
    static ALLOC: Mutex<(Vec<u32>, usize)> = Mutex::new((Vec::new(), 0));
    pub(super) static FAULTS: AtomicU64 = AtomicU64::new(0);

    fn slot(index: usize) -> Option<&'static Slot> {
        let chunk = CHUNKS.get(index / CHUNK_SLOTS)?.load(SeqCst);
        // SAFETY: a non-null chunk pointer comes from `Box::into_raw` and is never freed.
        (!chunk.is_null()).then(|| unsafe { &(*chunk)[index % CHUNK_SLOTS] })
    }

    /// One registered map; released (before the map is unmapped) when dropped.
    pub(super) struct Registration {
        index: usize,
    }

    impl Registration {
        /// Registers `len` bytes at `start`; `None` when the table is full.
        pub(super) fn new(start: usize, len: usize) -> Option<Registration> {
            super::handler::install();
            let index = {
                let mut alloc = ALLOC.lock().unwrap_or_else(PoisonError::into_inner);
                match alloc.0.pop() {
                    Some(i) => i as usize,
                    None => {
                        let i = alloc.1;
                        if i >= SLOTS_MAX {
                            return None;
                        }
                        if i.is_multiple_of(CHUNK_SLOTS) {
                            let chunk: Box<[Slot; CHUNK_SLOTS]> =
                                Box::new(std::array::from_fn(|_| Slot::default()));
                            CHUNKS[i / CHUNK_SLOTS].store(Box::into_raw(chunk), SeqCst);
                        }
                        alloc.1 += 1;
                        i
                    }
                }
            };
            let slot = slot(index)?;
            let generation = (slot.state.load(SeqCst) >> KIND_BITS) + 1;
            slot.state.store(generation << KIND_BITS | WRITING, SeqCst);
            slot.start.store(start, SeqCst);
            slot.len.store(len, SeqCst);
            slot.state.store(generation << KIND_BITS | LIVE, SeqCst);
            Some(Registration { index })
        }

        pub(super) fn is_damaged(&self) -> bool {
            slot(self.index).is_some_and(|s| s.state.load(SeqCst) & KIND_MASK == DAMAGED)
        }
    }

    impl Drop for Registration {
        fn drop(&mut self) {
            if let Some(slot) = slot(self.index) {
                let generation = (slot.state.load(SeqCst) >> KIND_BITS) + 1;
                slot.state.store(generation << KIND_BITS | FREE, SeqCst);
            }
            ALLOC
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .0
                .push(self.index as u32);
        }
    }

    /// Marks the registered map holding `addr` damaged and returns its range. Runs in the
    /// signal handler: atomic loads and one `fetch_or`, no lock, no allocation. A map being
    /// read cannot be released meanwhile (its reader borrows it), so the slot found stays
    /// ours; a torn read of another slot fails the generation check and is skipped.
    #[cfg_attr(
        not(any(target_os = "linux", target_os = "android")),
        allow(dead_code, reason = "containment is Linux-only")
    )]
    pub(super) fn damage(addr: usize) -> Option<(usize, usize)> {
        for chunk in &CHUNKS {
            let chunk = chunk.load(SeqCst);
            if chunk.is_null() {
                break;
            }
            // SAFETY: as in `slot`: a leaked box, never freed.
            for slot in unsafe { &*chunk }.iter() {
                let before = slot.state.load(SeqCst);
                if before & KIND_MASK < LIVE {
                    continue;
                }
                let (start, len) = (slot.start.load(SeqCst), slot.len.load(SeqCst));
                let after = slot.state.load(SeqCst);
                if before >> KIND_BITS == after >> KIND_BITS
                    && after & KIND_MASK >= LIVE
                    && addr >= start
                    && addr - start < len
                {
                    slot.state.fetch_or(DAMAGED, SeqCst);
                    return Some((start, len));
                }
            }
        }
        None
    }
}

/// The SIGBUS handler (Linux): registered maps are zero-filled in place, anything else goes
/// to the previous handler.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod handler {
    use std::ffi::{c_int, c_void};
    use std::sync::atomic::Ordering;
    use std::sync::{Once, OnceLock};

    static INSTALL: Once = Once::new();
    /// The disposition before ours (Rust's stack-overflow handler, normally), for faults
    /// outside our maps. Set before ours is installed, read-only after.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    /// Installs the handler once per process (with the first map).
    pub(super) fn install() {
        INSTALL.call_once(|| {
            // SAFETY: plain sigaction calls with zero-initialised, fully set structs; the
            // handler is async-signal-safe (see `on_sigbus`).
            unsafe {
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                    tracing::warn!("cannot read the SIGBUS disposition; I/O errors on mapped segments are not contained");
                    return;
                }
                let _ = PREVIOUS.set(previous);
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_sigbus as *const () as usize;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
                    tracing::warn!("cannot install the SIGBUS handler; I/O errors on mapped segments are not contained");
                }
            }
        });
    }

    /// Async-signal-safe: atomics, `mmap` (a raw system call on Linux) and `errno` saved
    /// around it; no lock, no allocation, no unwinding.
    extern "C" fn on_sigbus(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; for SIGBUS
        // `si_addr` is the faulting address.
        let addr = unsafe { (*info).si_addr() } as usize;
        if let Some((start, len)) = super::slots::damage(addr) {
            // SAFETY: [start, start + len) is a registered read-only file map that its
            // owner keeps mapped while a thread reads it (it is being read right now);
            // MAP_FIXED replaces it atomically by zero pages of the same size and
            // protection, so every pointer into it stays valid.
            let zeros = unsafe {
                let errno = *libc::__errno_location();
                let zeros = libc::mmap(
                    start as *mut c_void,
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
                *libc::__errno_location() = errno;
                zeros
            };
            if zeros != libc::MAP_FAILED {
                super::slots::FAULTS.fetch_add(1, Ordering::Relaxed);
                // Returning retries the faulting access, which now reads zeros.
                return;
            }
        }
        chain(signal, info, context);
    }

    /// Hands a fault that is not ours to the previous handler, or restores the default
    /// action and returns: the access faults again and the process ends as without us.
    fn chain(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
        if let Some(previous) = PREVIOUS.get()
            && previous.sa_sigaction != libc::SIG_DFL
            && previous.sa_sigaction != libc::SIG_IGN
        {
            // SAFETY: the previous disposition is a handler installed by this process, of
            // the kind its flags say.
            unsafe {
                if previous.sa_flags & libc::SA_SIGINFO != 0 {
                    let handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
                        std::mem::transmute(previous.sa_sigaction);
                    handler(signal, info, context);
                } else {
                    let handler: extern "C" fn(c_int) = std::mem::transmute(previous.sa_sigaction);
                    handler(signal);
                }
            }
            return;
        }
        // SAFETY: resetting a disposition to SIG_DFL with a zeroed struct.
        unsafe {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod handler {
    /// No containment off Linux: a SIGBUS there ends the process as before.
    pub(super) fn install() {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The classic reproducible I/O error on a mapped page: the file is truncated under a
    /// live map, so its pages fault with SIGBUS. The process lives, the map reads zeros and
    /// says it is damaged; another map is untouched.
    #[test]
    fn a_fault_on_a_mapped_page_is_contained_to_that_map() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, vec![7u8; 3 * 4096]).unwrap();
        std::fs::write(&b, vec![9u8; 3 * 4096]).unwrap();
        let (map_a, map_b) = (MappedFile::open(&a).unwrap(), MappedFile::open(&b).unwrap());
        assert_eq!(map_a.bytes()[5000], 7);
        let faults = contained_faults();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&a)
            .unwrap()
            .set_len(0)
            .unwrap();
        // Without containment this read kills the test process with SIGBUS.
        let sum: u64 = map_a.bytes().iter().map(|&x| u64::from(x)).sum();
        assert_eq!(sum, 0, "a damaged map reads zeros");
        assert!(map_a.is_damaged());
        assert!(matches!(
            map_a.check(),
            Err(Error::SegmentUnreadable { path }) if path == a
        ));
        assert!(contained_faults() > faults);
        assert!(!map_b.is_damaged());
        assert!(map_b.check().is_ok());
        assert!(map_b.bytes().iter().all(|&x| x == 9));
        // Released and re-registered slots start clean.
        drop(map_a);
        let again = MappedFile::open(&b).unwrap();
        assert!(!again.is_damaged());
    }
}
