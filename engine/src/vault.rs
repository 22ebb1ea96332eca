//! A vault: one user's memories in one directory — a WAL, a memtable, immutable segments and
//! the manifest that ties them together.
//!
//! ```text
//! <vault>/MANIFEST          live segments, checkpoint lsn, tombstones, embedder pin
//! <vault>/wal/              the write-ahead log (wal crate)
//! <vault>/seg-<seq>/        immutable segments (segment.rs)
//! ```
//!
//! Lock order (never taken the other way round): `compact_lock` → `seal_lock` → `gate` →
//! `manifest` → `state`. Searches take only `state` (read).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock};
use wal::{Durability, Wal, WalOptions};

use crate::analyzer::{Analysis, TermCounts};
use crate::chunk::chunk_text;
use crate::embedder::Embedder;
use crate::error::{Error, Result};
use crate::file;
use crate::footprint::{self, MemoryGauge};
use crate::hnsw::HnswParams;
use crate::manifest::Manifest;
use crate::memtable::Memtable;
use crate::record::{
    self, KIND_DELETE, KIND_INGEST, Memory, MemoryId, NewMemory, StoredMemory, content_hash,
};
use crate::segment::Segment;

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
/// Most ids one `delete`/`clear` WAL record carries (8 bytes each: 4 MiB).
const DELETE_IDS_PER_RECORD_MAX: usize = WAL_PAYLOAD_BYTES_MAX / 8;
/// Ids are handed out from 1 up and never reused, so no vault comes near this; an id (or a
/// manifest `next_id`) past it can only come from a damaged file, and `open` refuses it.
/// The room left above it keeps `next_id` arithmetic from ever overflowing (the
/// `wal_payload` fuzz target found `open` overflowing on a WAL record with id `u64::MAX`).
pub(crate) const MEMORY_ID_END: MemoryId = 1 << 62;

const _: () = assert!((WAL_PAYLOAD_BYTES_MAX as u64) < WAL_SEGMENT_BYTES_MAX);

/// Where a test can make sealing or compaction stop as if the process died there. The vault
/// returns [`Error::InjectedCrash`] and leaves the disk exactly as a crash would; the test then
/// drops the vault and reopens it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    SealAfterTempDir,
    SealAfterRename,
    SealAfterManifest,
    CompactAfterTempDir,
    CompactAfterRename,
    CompactAfterManifest,
}

/// How a vault is opened.
#[derive(Clone)]
pub struct VaultOptions {
    pub durability: Durability,
    /// Seal the memtable into a segment past this many records.
    pub memtable_records_max: usize,
    pub embedder: Arc<dyn Embedder>,
    pub hnsw: HnswParams,
    /// Seal and compact on the rayon pool when thresholds are crossed. Tests that drive
    /// `seal`/`compact` by hand turn this off.
    pub background: bool,
    #[doc(hidden)]
    pub crash_at: Option<CrashPoint>,
    /// Where this vault adds its heap estimate: the registry's engine-wide total, or a
    /// counter of its own for a vault opened directly.
    pub(crate) memory_total: Arc<AtomicU64>,
}

impl VaultOptions {
    pub fn new(embedder: Arc<dyn Embedder>) -> Self {
        VaultOptions {
            durability: Durability::Fsync,
            memtable_records_max: MEMTABLE_RECORDS_MAX_DEFAULT,
            embedder,
            hnsw: HnswParams::default(),
            background: true,
            crash_at: None,
            memory_total: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// What an ingest did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IngestOutcome {
    /// Ids of the records written (one per chunk).
    pub stored: Vec<MemoryId>,
    /// Messages already present (same session, role and content), not stored again.
    pub skipped: usize,
}

/// Size and shape of a vault.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VaultStats {
    pub memories: u64,
    pub bytes_on_disk: u64,
    pub embedder: String,
    pub dim: u32,
    pub last_write_ms: Option<i64>,
    pub segments: u32,
    pub memtable: u32,
    /// A background seal or compaction is queued or running: the vault's layout (and so
    /// its search cost) is still changing.
    pub busy: bool,
    /// Estimated heap bytes of the open vault ([`Vault::memory_bytes`]); mapped segment files
    /// are not counted.
    pub memory_bytes: u64,
}

/// A message ready to reserve: its hash, the message, and its chunks.
type Embedded = (u64, NewMemory, Vec<EmbeddedChunk>);

/// One chunk of a new message with everything computed outside the vault's locks.
struct EmbeddedChunk {
    text: String,
    /// Its indexing context (see `StoredMemory::context`).
    context: String,
    vector: Vec<f32>,
    /// The BM25 terms of context and text, for the memtable.
    terms: TermCounts,
}

/// Where a live record sits.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loc {
    Memtable(u32),
    Frozen(usize, u32),
    Segment(usize, u32),
}

/// Everything searches read; guarded by `Inner::state`.
pub(crate) struct State {
    pub memtable: Memtable,
    /// Memtables being sealed, with the WAL lsn they cover; still searched until their
    /// segment is installed.
    pub frozen: Vec<(Arc<Memtable>, u64)>,
    pub segments: Vec<Arc<Segment>>,
    /// Deleted ids still present in some source above. Applied during every scan and walk.
    pub deleted: HashSet<MemoryId>,
    /// Live content hashes (the dedupe key) → number of live chunks carrying it.
    pub hashes: HashMap<u64, u32>,
    /// Hashes of messages whose ingest is between id assignment and memtable apply, so a
    /// concurrent resend of the same message is skipped too.
    pub pending: HashSet<u64>,
    pub last_write_ms: Option<i64>,
    /// This vault's heap estimate, refreshed by every change to the fields above (see
    /// `footprint.rs`); the registry bounds the sum over open vaults.
    pub memory: Arc<MemoryGauge>,
}

impl State {
    pub fn locate(&self, id: MemoryId) -> Option<Loc> {
        if let Some(d) = self.memtable.doc_of(id) {
            return Some(Loc::Memtable(d));
        }
        for (i, (m, _)) in self.frozen.iter().enumerate() {
            if let Some(d) = m.doc_of(id) {
                return Some(Loc::Frozen(i, d));
            }
        }
        self.segments
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.doc_of(id).map(|d| Loc::Segment(i, d)))
    }

    pub fn memory(&self, loc: Loc) -> Memory {
        match loc {
            Loc::Memtable(d) => self.memtable.memory(d).clone(),
            Loc::Frozen(i, d) => self.frozen[i].0.memory(d).clone(),
            Loc::Segment(i, d) => self.segments[i].memory(d),
        }
    }

    fn hash_at(&self, loc: Loc) -> u64 {
        match loc {
            Loc::Memtable(d) => self.memtable.memory(d).content_hash,
            Loc::Frozen(i, d) => self.frozen[i].0.memory(d).content_hash,
            Loc::Segment(i, d) => self.segments[i].content_hash(d),
        }
    }

    /// Applies one delete; idempotent, and a no-op for ids that are not present.
    pub fn apply_delete(&mut self, id: MemoryId) -> bool {
        let Some(loc) = self.locate(id) else {
            return false;
        };
        if !self.deleted.insert(id) {
            return false;
        }
        let h = self.hash_at(loc);
        if let Some(c) = self.hashes.get_mut(&h) {
            *c -= 1;
            if *c == 0 {
                self.hashes.remove(&h);
            }
        }
        true
    }

    /// Applies replayed records (counting their BM25 terms here); ids already present are
    /// skipped.
    pub fn apply_ingest(&mut self, records: Vec<StoredMemory>) {
        for r in records {
            if self.locate(r.memory.id).is_some() {
                continue;
            }
            *self.hashes.entry(r.memory.content_hash).or_insert(0) += 1;
            self.memtable.insert(r);
        }
    }

    /// [`State::apply_ingest`] of new records with their BM25 terms counted (`terms[i]` is
    /// `records[i]`'s), so the write lock covers only the index updates.
    fn apply_analyzed(&mut self, records: Vec<StoredMemory>, terms: Vec<TermCounts>) {
        for (r, terms) in records.into_iter().zip(terms) {
            if self.locate(r.memory.id).is_some() {
                continue;
            }
            *self.hashes.entry(r.memory.content_hash).or_insert(0) += 1;
            self.memtable.insert_analyzed(r, &terms);
        }
    }

    /// The text of the newest live record of `session`: the indexing context of the session's
    /// next message. A pure function of the live records, so it is the same before and after
    /// a reopen, and a deleted message never becomes anyone's context.
    pub fn session_tail(&self, session: &str) -> Option<String> {
        let live = |id: &MemoryId| !self.deleted.contains(id);
        let in_memtable = |mt: &Memtable| {
            mt.ids_desc(None)
                .find(|(id, d)| live(id) && mt.memory(*d).session_id == session)
                .map(|(id, d)| (id, mt.memory(d).text.clone()))
        };
        let mut best = in_memtable(&self.memtable);
        for (f, _) in &self.frozen {
            if let Some(t) = in_memtable(f)
                && best.as_ref().is_none_or(|b| b.0 < t.0)
            {
                best = Some(t);
            }
        }
        for s in &self.segments {
            if let Some(&d) = s
                .session_docs(session)
                .iter()
                .rev()
                .find(|&&d| live(&s.id(d)))
                && best.as_ref().is_none_or(|b| b.0 < s.id(d))
            {
                best = Some((s.id(d), s.memory(d).text));
            }
        }
        best.map(|b| b.1)
    }

    pub fn is_live(&self, id: MemoryId) -> bool {
        !self.deleted.contains(&id) && self.locate(id).is_some()
    }

    /// Drops tombstones of ids no source holds any more. Seals and compactions call it last,
    /// under the write lock, after swapping sources, so it also refreshes the heap estimate.
    pub fn prune_deleted(&mut self) {
        let deleted = std::mem::take(&mut self.deleted);
        self.deleted = deleted
            .into_iter()
            .filter(|&id| self.locate(id).is_some())
            .collect();
        self.refresh_memory();
    }

    /// Recomputes the heap estimate from lengths and capacities (no pass over records).
    pub fn refresh_memory(&self) {
        self.memory.set(footprint::state_bytes(self));
    }

    /// Tombstones to persist for `segments`: deleted ids that sit in one of them (sorted).
    pub fn tombstones_for(&self, segments: &[Arc<Segment>]) -> Vec<MemoryId> {
        let mut t: Vec<MemoryId> = self
            .deleted
            .iter()
            .copied()
            .filter(|&id| segments.iter().any(|s| s.doc_of(id).is_some()))
            .collect();
        t.sort_unstable();
        t
    }

    pub fn live_count(&self) -> u64 {
        let total = self.memtable.len() as u64
            + self.frozen.iter().map(|(m, _)| m.len() as u64).sum::<u64>()
            + self
                .segments
                .iter()
                .map(|s| u64::from(s.len()))
                .sum::<u64>();
        total.saturating_sub(self.deleted.len() as u64)
    }
}

pub(crate) struct Inner {
    pub name: String,
    pub dir: PathBuf,
    pub wal: Wal,
    pub options: VaultOptions,
    pub dim: usize,
    /// Ingests and deletes hold it (read) from id assignment until their records are in the
    /// memtable; seal and reset take it (write) to see a point where the WAL and the memtable
    /// agree, which is what makes `checkpoint_lsn` exact.
    pub gate: RwLock<()>,
    /// Serialises seals (one memtable in flight).
    pub seal_lock: Mutex<()>,
    /// Serialises compactions.
    pub compact_lock: Mutex<()>,
    /// Serialises deletes so two concurrent deletes of one id cannot both report `true`.
    pub delete_lock: Mutex<()>,
    /// The manifest as last stored; every writer read-modify-writes it under this lock.
    pub manifest: Mutex<Manifest>,
    pub state: RwLock<State>,
    pub next_id: AtomicU64,
    pub next_segment: AtomicU64,
    pub closed: AtomicBool,
    /// Background jobs queued or running; the registry never closes a busy vault.
    pub jobs: AtomicUsize,
    pub seal_scheduled: AtomicBool,
    /// The same gauge as `State::memory`, readable without the state lock: the registry
    /// reads it under its own lock, where waiting for a vault's lock would stall every vault.
    pub memory: Arc<MemoryGauge>,
}

/// A handle to one open vault. Every method is safe to call concurrently.
pub struct Vault {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn is_segment_name(name: &str) -> bool {
    name.starts_with("seg-")
}

impl Vault {
    /// Opens (or creates) the vault in `dir`: loads the manifest, maps the segments (no index
    /// is rebuilt), removes leftovers of interrupted seals and compactions, and replays the
    /// WAL past the manifest's checkpoint into the memtable.
    pub fn open(dir: &Path, options: VaultOptions) -> Result<Vault> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let embedder_id = options.embedder.id().to_string();
        let dim = options.embedder.dim();
        let mut manifest = Manifest::load(dir)?.unwrap_or(Manifest {
            next_id: 1,
            ..Manifest::default()
        });
        if let Some(stored) = &manifest.embedder
            && (*stored != embedder_id || manifest.dim as usize != dim)
        {
            return Err(Error::EmbedderMismatch {
                stored: stored.clone(),
                stored_dim: manifest.dim,
                configured: embedder_id,
                configured_dim: dim as u32,
            });
        }
        manifest.next_id = manifest.next_id.max(1);

        // Leftovers: temp dirs and segments no manifest names (a crash mid-seal/compaction).
        let live: HashSet<&str> = manifest.segments.iter().map(String::as_str).collect();
        for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if is_segment_name(&name) && !live.contains(name.as_str()) {
                std::fs::remove_dir_all(&path).map_err(Error::io(&path))?;
            } else if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(Error::io(&path))?;
            }
        }

        let segments = manifest
            .segments
            .iter()
            .map(|name| Segment::open(&dir.join(name), dim).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        if options.background && !segments.is_empty() {
            // The int8 codes of large segments (tens of ms for 100k records) are built off
            // the open path, so neither the open nor the first search pays for them; a search
            // that arrives first builds them itself (the other waits on the same OnceLock).
            let warm = segments.clone();
            rayon::spawn(move || warm.iter().for_each(|s| s.warm_codes()));
        }
        let wal_options = WalOptions {
            segment_bytes_max: WAL_SEGMENT_BYTES_MAX,
            durability: options.durability,
            ..WalOptions::default()
        };
        let (wal, recovery) = Wal::open(&dir.join("wal"), wal_options)?;

        let mut state = State {
            memtable: Memtable::new(dim),
            frozen: Vec::new(),
            segments,
            deleted: manifest.tombstones.iter().copied().collect(),
            hashes: HashMap::new(),
            pending: HashSet::new(),
            last_write_ms: None,
            memory: Arc::new(MemoryGauge::new(Arc::clone(&options.memory_total))),
        };
        for seg in &state.segments {
            for row in seg.rows() {
                if !state.deleted.contains(&row.id) {
                    *state.hashes.entry(row.content_hash).or_insert(0) += 1;
                }
            }
        }
        let mut max_id = state
            .segments
            .iter()
            .map(|s| s.id_range().1)
            .max()
            .unwrap_or(0);
        for rec in recovery
            .records
            .into_iter()
            .filter(|r| r.lsn > manifest.checkpoint_lsn)
        {
            match rec.kind {
                KIND_INGEST => {
                    let records = record::decode_ingest(&rec.payload)?;
                    if records.iter().any(|r| r.vector.len() != dim) {
                        return Err(Error::corrupt(
                            dir.join("wal"),
                            "WAL vector of another dimension",
                        ));
                    }
                    max_id = max_id.max(records.iter().map(|r| r.memory.id).max().unwrap_or(0));
                    state.apply_ingest(records);
                }
                KIND_DELETE => {
                    for id in record::decode_delete(&rec.payload)? {
                        state.apply_delete(id);
                    }
                }
                kind => {
                    return Err(Error::corrupt(
                        dir.join("wal"),
                        format!("unknown WAL record kind {kind}"),
                    ));
                }
            }
        }
        state.refresh_memory();
        if max_id >= MEMORY_ID_END || manifest.next_id > MEMORY_ID_END {
            return Err(Error::corrupt(
                dir,
                format!(
                    "memory id {} past the id space (ids stay below {MEMORY_ID_END})",
                    max_id.max(manifest.next_id)
                ),
            ));
        }
        let next_id = manifest.next_id.max(max_id + 1);
        let next_segment = manifest.next_segment;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Vault {
            inner: Arc::new(Inner {
                name,
                dir: dir.to_path_buf(),
                wal,
                options,
                dim,
                gate: RwLock::new(()),
                seal_lock: Mutex::new(()),
                compact_lock: Mutex::new(()),
                delete_lock: Mutex::new(()),
                manifest: Mutex::new(manifest),
                memory: Arc::clone(&state.memory),
                state: RwLock::new(state),
                next_id: AtomicU64::new(next_id),
                next_segment: AtomicU64::new(next_segment),
                closed: AtomicBool::new(false),
                jobs: AtomicUsize::new(0),
                seal_scheduled: AtomicBool::new(false),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::VaultClosed {
                id: self.inner.name.clone(),
            });
        }
        Ok(())
    }

    /// Stores a batch of messages. `Ok` means durable (per the durability setting) and visible
    /// to the next search. Messages already present — same session, role and whole text —
    /// are skipped, so resending a whole chat history stores nothing twice.
    pub fn ingest(&self, batch: Vec<NewMemory>) -> Result<IngestOutcome> {
        self.check_open()?;
        let inner = &*self.inner;
        // 1. Drop messages already stored (or repeated within the batch) before paying for
        //    embeddings: clients resend the whole history on every call.
        //    Each message's indexing context is the previous message of its session: earlier
        //    in this batch (skipped duplicates included, as clients resend history) or else
        //    the session's newest stored record.
        let mut seen = HashSet::new();
        let mut fresh = Vec::with_capacity(batch.len());
        let mut skipped = 0;
        {
            let state = inner.state.read();
            let mut previous: HashMap<String, String> = HashMap::new();
            for m in batch {
                let h = content_hash(&m.session_id, m.role, &m.text);
                let context = if m.session_id.is_empty() {
                    String::new()
                } else {
                    let before = previous
                        .get(&m.session_id)
                        .cloned()
                        .or_else(|| state.session_tail(&m.session_id))
                        .map(|t| record::context_of(&t).to_string())
                        .unwrap_or_default();
                    let last = chunk_text(&m.text).last().map_or("", |c| c).to_string();
                    previous.insert(m.session_id.clone(), last);
                    before
                };
                if state.hashes.contains_key(&h) || state.pending.contains(&h) || !seen.insert(h) {
                    skipped += 1;
                } else {
                    fresh.push((h, m, context));
                }
            }
        }
        if fresh.is_empty() {
            return Ok(IngestOutcome {
                stored: Vec::new(),
                skipped,
            });
        }
        // 2. Chunk, analyse and embed outside every lock: the one analysis of each chunk
        //    feeds both the BM25 index and (for the built-in embedder) the vector.
        let embedder = &*inner.options.embedder;
        let embed = |(h, m, context): (u64, NewMemory, String)| -> Embedded {
            // Chunk i's context is chunk i - 1 (the message's first: the previous message).
            let mut context = context;
            let chunks = chunk_text(&m.text)
                .into_iter()
                .map(|c| {
                    let indexed = record::indexed_text(&context, c);
                    let analysis = Analysis::of(&indexed);
                    let vector = embedder.embed_analyzed(&indexed, &analysis);
                    let next = record::context_of(c).to_string();
                    EmbeddedChunk {
                        text: c.to_string(),
                        context: std::mem::replace(&mut context, next),
                        vector,
                        terms: analysis.term_counts(),
                    }
                })
                .collect();
            (h, m, chunks)
        };
        // On the caller's thread, whatever the batch size: rayon's global pool runs seals and
        // compactions (graph builds that hold its threads for seconds), and a batch handed to
        // it waited behind them: bulk import over HTTP fell from ~13k to ~1.5k memories/s.
        let embedded: Vec<Embedded> = fresh.into_iter().map(embed).collect();
        if embedded
            .iter()
            .flat_map(|e| &e.2)
            .any(|c| c.vector.len() != inner.dim)
        {
            return Err(Error::InvalidArgument {
                name: "embedder",
                reason: format!(
                    "embedder returned a vector whose length is not {}",
                    inner.dim
                ),
            });
        }

        // 3. Reserve: re-check dedupe under the lock, assign ids, mark hashes pending.
        let _gate = inner.gate.read();
        self.ensure_pinned()?;
        let mut records = Vec::new();
        let mut terms = Vec::new();
        let mut hashes = Vec::new();
        {
            let mut state = inner.state.write();
            for (h, m, chunks) in embedded {
                if state.hashes.contains_key(&h) || !state.pending.insert(h) {
                    skipped += 1;
                    continue;
                }
                hashes.push(h);
                let first = inner
                    .next_id
                    .fetch_add(chunks.len() as u64, Ordering::SeqCst);
                for (i, chunk) in chunks.into_iter().enumerate() {
                    terms.push(chunk.terms);
                    records.push(StoredMemory {
                        memory: Memory {
                            id: first + i as u64,
                            session_id: m.session_id.clone(),
                            role: m.role,
                            text: chunk.text,
                            created_at_ms: m.created_at_ms,
                            model: m.model.clone(),
                            metadata: m.metadata.clone(),
                            content_hash: h,
                            chunk: i as u32,
                        },
                        vector: chunk.vector,
                        context: chunk.context,
                    });
                }
            }
        }
        if records.is_empty() {
            return Ok(IngestOutcome {
                stored: Vec::new(),
                skipped,
            });
        }

        // 4. One atomic WAL append for the whole batch (split into payloads of bounded size).
        let appended = self.append_ingest(&records);
        let mut state = inner.state.write();
        for h in &hashes {
            state.pending.remove(h);
        }
        appended?;
        // 5. Apply and acknowledge.
        let stored: Vec<MemoryId> = records.iter().map(|r| r.memory.id).collect();
        state.last_write_ms = Some(now_ms());
        state.apply_analyzed(records, terms);
        state.refresh_memory();
        let memtable_len = state.memtable.len();
        drop(state);
        drop(_gate);
        if inner.options.background && memtable_len >= inner.options.memtable_records_max {
            self.schedule_seal();
        }
        Ok(IngestOutcome { stored, skipped })
    }

    fn append_ingest(&self, records: &[StoredMemory]) -> Result<()> {
        let mut payloads = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            let size = 68 + r.memory.text.len() + r.context.len() + r.vector.len() * 4;
            if i > start && bytes + size > WAL_PAYLOAD_BYTES_MAX {
                payloads.push(record::encode_ingest(&records[start..i]));
                (start, bytes) = (i, 0);
            }
            bytes += size;
        }
        payloads.push(record::encode_ingest(&records[start..]));
        let batch: Vec<(u8, &[u8])> = payloads
            .iter()
            .map(|p| (KIND_INGEST, p.as_slice()))
            .collect();
        self.inner.wal.append_batch(&batch)?;
        Ok(())
    }

    /// Records the embedder in the manifest before the first vector is written.
    fn ensure_pinned(&self) -> Result<()> {
        let mut manifest = self.inner.manifest.lock();
        if manifest.embedder.is_none() {
            let mut next = manifest.clone();
            next.embedder = Some(self.inner.options.embedder.id().to_string());
            next.dim = self.inner.dim as u32;
            next.store(&self.inner.dir)?;
            *manifest = next;
        }
        Ok(())
    }

    /// Deletes one memory; `Ok(false)` if it does not exist (or is already deleted).
    pub fn delete(&self, id: MemoryId) -> Result<bool> {
        self.check_open()?;
        Ok(self.delete_ids(|state| {
            if state.is_live(id) {
                vec![id]
            } else {
                Vec::new()
            }
        })? == 1)
    }

    /// Deletes every memory (of one session, when given); returns how many.
    pub fn clear(&self, session_id: Option<&str>) -> Result<u64> {
        self.check_open()?;
        self.delete_ids(|state| {
            let mut ids = Vec::new();
            let wanted = |s: &str| session_id.is_none_or(|x| x == s);
            for m in state.memtable.records() {
                if wanted(&m.session_id) && !state.deleted.contains(&m.id) {
                    ids.push(m.id);
                }
            }
            for (f, _) in &state.frozen {
                for m in f.records() {
                    if wanted(&m.session_id) && !state.deleted.contains(&m.id) {
                        ids.push(m.id);
                    }
                }
            }
            for s in &state.segments {
                for doc in 0..s.len() {
                    let id = s.id(doc);
                    if wanted(s.session(doc)) && !state.deleted.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            ids
        })
    }

    /// Resolves ids under the state lock, writes their tombstones through the WAL, applies.
    fn delete_ids(&self, resolve: impl FnOnce(&State) -> Vec<MemoryId>) -> Result<u64> {
        let inner = &*self.inner;
        let _serial = inner.delete_lock.lock();
        let _gate = inner.gate.read();
        let ids = resolve(&inner.state.read());
        if ids.is_empty() {
            return Ok(0);
        }
        let payloads: Vec<Vec<u8>> = ids
            .chunks(DELETE_IDS_PER_RECORD_MAX)
            .map(record::encode_delete)
            .collect();
        let batch: Vec<(u8, &[u8])> = payloads
            .iter()
            .map(|p| (KIND_DELETE, p.as_slice()))
            .collect();
        inner.wal.append_batch(&batch)?;
        let mut state = inner.state.write();
        let n = ids.iter().filter(|&&id| state.apply_delete(id)).count();
        state.last_write_ms = Some(now_ms());
        state.refresh_memory();
        Ok(n as u64)
    }

    /// Deletes everything and forgets the embedder pin (the next ingest pins again). Ids keep
    /// increasing: an id is never reused.
    pub fn reset(&self) -> Result<()> {
        self.check_open()?;
        let inner = &*self.inner;
        let _c = inner.compact_lock.lock();
        let _s = inner.seal_lock.lock();
        let _g = inner.gate.write();
        let mut manifest = inner.manifest.lock();
        let lsn = inner.wal.last_lsn();
        let next = Manifest {
            embedder: None,
            dim: 0,
            next_id: inner.next_id.load(Ordering::SeqCst),
            next_segment: inner.next_segment.load(Ordering::SeqCst),
            checkpoint_lsn: lsn,
            segments: Vec::new(),
            tombstones: Vec::new(),
        };
        next.store(&inner.dir)?;
        *manifest = next;
        inner.wal.checkpoint(lsn)?;
        let old = {
            let mut state = inner.state.write();
            state.memtable = Memtable::new(inner.dim);
            state.frozen.clear();
            state.deleted.clear();
            state.hashes.clear();
            state.last_write_ms = Some(now_ms());
            let old = std::mem::take(&mut state.segments);
            state.refresh_memory();
            old
        };
        remove_segment_dirs(&old)
    }

    /// One memory by id, unless deleted.
    pub fn get(&self, id: MemoryId) -> Result<Option<Memory>> {
        self.check_open()?;
        let state = self.inner.state.read();
        if state.deleted.contains(&id) {
            return Ok(None);
        }
        Ok(state.locate(id).map(|loc| state.memory(loc)))
    }

    /// Newest first: up to `limit` memories with id < `before` (of one session, when given).
    pub fn list(
        &self,
        before: Option<MemoryId>,
        limit: usize,
        session_id: Option<&str>,
    ) -> Result<Vec<Memory>> {
        self.check_open()?;
        let state = self.inner.state.read();
        let wanted = |s: &str| session_id.is_none_or(|x| x == s);
        let mut out: Vec<Memory> = Vec::new();
        let mut take_from = |mt: &Memtable| {
            mt.ids_desc(before)
                .filter(|(id, d)| !state.deleted.contains(id) && wanted(&mt.memory(*d).session_id))
                .take(limit)
                .for_each(|(_, d)| out.push(mt.memory(d).clone()));
        };
        take_from(&state.memtable);
        for (f, _) in &state.frozen {
            take_from(f);
        }
        for s in &state.segments {
            let rows = s.rows();
            let end = rows.partition_point(|r| before.is_none_or(|b| r.id < b));
            let docs = (0..end as u32).rev();
            for d in docs
                .filter(|&d| !state.deleted.contains(&rows[d as usize].id) && wanted(s.session(d)))
                .take(limit)
            {
                out.push(s.memory(d));
            }
        }
        out.sort_by_key(|m| std::cmp::Reverse(m.id));
        out.truncate(limit);
        Ok(out)
    }

    pub fn stats(&self) -> Result<VaultStats> {
        self.check_open()?;
        let inner = &*self.inner;
        let state = inner.state.read();
        let mut bytes = state
            .segments
            .iter()
            .map(|s| s.bytes_on_disk())
            .sum::<u64>();
        bytes += dir_bytes(&inner.dir.join("wal"))?;
        bytes += std::fs::metadata(Manifest::path(&inner.dir)).map_or(0, |m| m.len());
        Ok(VaultStats {
            memories: state.live_count(),
            bytes_on_disk: bytes,
            embedder: inner.options.embedder.id().to_string(),
            dim: inner.dim as u32,
            last_write_ms: state.last_write_ms,
            segments: state.segments.len() as u32,
            // Frozen memtables are unsealed too: without them a vault mid-seal looks settled.
            memtable: (state.memtable.len()
                + state.frozen.iter().map(|(m, _)| m.len()).sum::<usize>())
                as u32,
            busy: self.is_busy(),
            memory_bytes: {
                state.refresh_memory();
                state.memory.get()
            },
        })
    }

    /// Estimated heap bytes this vault holds while open: memtables, dedupe and tombstone
    /// sets, segments' in-memory side. Mapped segment files are page cache and not counted
    /// (`footprint.rs` says why). Recomputed from lengths and capacities under the read lock
    /// (O(1 + segments)), which also brings in indexes searches built lazily since the last
    /// write, and passed on to the registry's total.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.state.read().refresh_memory();
        self.inner.memory.get()
    }

    /// The estimate as last refreshed, without the state lock.
    pub(crate) fn memory_estimate(&self) -> u64 {
        self.inner.memory.get()
    }

    /// Refreshes the estimate unless a writer holds or waits for the state lock (the next
    /// change refreshes it anyway); never blocks.
    pub(crate) fn try_refresh_memory(&self) {
        if let Some(state) = self.inner.state.try_read() {
            state.refresh_memory();
        }
    }

    /// Flushes the WAL to disk (matters in `Buffered` durability; a no-op cost otherwise).
    pub fn sync(&self) -> Result<()> {
        self.inner.wal.sync()?;
        Ok(())
    }

    /// Checks every checksum of every segment file (the vectors and graphs too).
    pub fn verify(&self) -> Result<()> {
        let segments = self.inner.state.read().segments.clone();
        segments.iter().try_for_each(|s| s.verify())
    }

    /// True while a background seal or compaction is queued or running.
    pub fn is_busy(&self) -> bool {
        self.inner.jobs.load(Ordering::Acquire) > 0
    }

    pub(crate) fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

pub(crate) fn remove_segment_dirs(segments: &[Arc<Segment>]) -> Result<()> {
    for s in segments {
        match std::fs::remove_dir_all(s.dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(s.dir())(e)),
        }
    }
    if let Some(parent) = segments.first().and_then(|s| s.dir().parent()) {
        file::sync_dir(parent)?;
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir)(e)),
    }
    Ok(total)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedder::BuiltinEmbedder;
    use crate::record::Role;

    fn options() -> VaultOptions {
        let mut o = VaultOptions::new(Arc::new(BuiltinEmbedder::new()));
        o.background = false;
        o
    }

    fn said(text: &str) -> NewMemory {
        NewMemory {
            session_id: "s".into(),
            role: Role::User,
            text: text.into(),
            created_at_ms: 1,
            model: None,
            metadata: None,
        }
    }

    /// Regression (fuzz target `wal_payload`): a WAL record with valid framing carrying id
    /// `u64::MAX` made `open` overflow computing the next id (a panic with overflow checks,
    /// a wrapped `next_id` handing out ids already taken without them).
    #[test]
    fn ids_past_the_id_space_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), options()).unwrap();
        vault.ingest(vec![said("kept")]).unwrap();
        drop(vault);
        let wal_dir = dir.path().join("wal");
        let (wal, recovery) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
        let mut forged = record::decode_ingest(&recovery.records[0].payload).unwrap();
        forged[0].memory.id = u64::MAX;
        forged[0].memory.content_hash ^= 1;
        wal.append(KIND_INGEST, &record::encode_ingest(&forged))
            .unwrap();
        drop(wal);
        assert!(matches!(
            Vault::open(dir.path(), options()),
            Err(Error::Corrupt { .. })
        ));
    }

    /// The same bound on a manifest's `next_id`: a value near `u64::MAX` would make ingest
    /// wrap to ids already taken (and silently drop the new memories as duplicates).
    #[test]
    fn a_manifest_next_id_past_the_id_space_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        Vault::open(dir.path(), options())
            .unwrap()
            .ingest(vec![said("kept")])
            .unwrap();
        let mut manifest = Manifest::load(dir.path()).unwrap().unwrap();
        manifest.next_id = u64::MAX;
        manifest.store(dir.path()).unwrap();
        assert!(matches!(
            Vault::open(dir.path(), options()),
            Err(Error::Corrupt { .. })
        ));
        manifest.next_id = MEMORY_ID_END;
        manifest.store(dir.path()).unwrap();
        let vault = Vault::open(dir.path(), options()).unwrap();
        assert_eq!(
            vault.get(1).unwrap().map(|m| m.text).as_deref(),
            Some("kept")
        );
    }

    /// Ingest analyses each chunk once, outside the lock, and hands the counts to the memtable; WAL replay counts them in `Memtable::insert`.
    /// Both must index exactly the same terms, and the shared analysis must give the vector
    /// `embed` gives.
    #[test]
    fn live_ingest_indexes_and_embeds_what_replay_and_embed_do() {
        use crate::lexical::{LexicalSource, Postings};
        let snapshot = |v: &Vault| {
            let state = v.inner.state.read();
            let m = &state.memtable;
            (0..m.len() as u32)
                .map(|d| {
                    let indexed = record::indexed_text(m.context(d), &m.memory(d).text);
                    let postings: Vec<(String, Vec<(u32, u32)>)> =
                        crate::analyzer::analyze(&indexed)
                            .into_iter()
                            .map(|t| match m.lexical().postings(&t) {
                                Postings::Pairs(p) => (t, p.to_vec()),
                                Postings::Bytes(_) => panic!("the memtable index hands out pairs"),
                            })
                            .collect();
                    let vector = v.inner.options.embedder.embed(&indexed);
                    assert_eq!(m.vector(d), vector.as_slice(), "doc {d}");
                    (m.memory(d).id, m.lexical().doc_len(d), postings)
                })
                .collect::<Vec<_>>()
        };
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), options()).unwrap();
        let long = "Melanie's painting of sunrises by the lake, ".repeat(40);
        let big: Vec<NewMemory> = (0..35)
            .map(|i| match i {
                5 => said(&long),
                _ => said(&format!("message {i}: we painted {} sunsets", i % 7)),
            })
            .collect();
        vault.ingest(big).unwrap();
        vault
            .ingest(vec![
                said("I'm going to the LGBTQ support group"),
                said("painting"),
            ])
            .unwrap();
        let live = snapshot(&vault);
        assert!(live.len() > 37, "{} records", live.len());
        drop(vault);
        let vault = Vault::open(dir.path(), options()).unwrap();
        assert_eq!(snapshot(&vault), live);
    }
}
