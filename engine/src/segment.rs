//! Immutable segments: a directory of files holding sealed records, mapped read-only.
//!
//! Long (~840 lines, 170 of them tests): the writer and the reader of the segment
//! format stay in one file so the byte layout is defined in one place.
//!
//! ```text
//! seg-<seq:016x>/
//!   vectors.bin   MRSEGVEC  n × dim little-endian f32, doc-major, 64-byte aligned
//!   records.bin   MRSEGREC  n fixed 64-byte rows sorted by id + a string heap
//!   lexical.bin   MRLEXIDX  BM25 index (lexical.rs, its own framing and crc)
//!   graph.bin     MRSEGHNS  HNSW neighbour lists (hnsw.rs), only for large segments
//! ```
//! Byte layouts in `docs/format.md` ("engine: segment files"). A segment is written to
//! `<name>.tmp/`, every file fsynced, the directory fsynced, renamed to `<name>/`, the vault
//! directory fsynced; only then does a manifest name it. A directory the manifest does not
//! name is garbage from a crash and is removed at open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use crate::distance::{QUANTIZED_SCAN_MIN, Quantized, quantized_top_k};
use crate::error::{Error, Result};
use crate::file::{self, HEADER_BYTES};
use crate::hnsw::{self, Graph, HnswParams};
use crate::lexical::{LexicalBuilder, LexicalSource};
use crate::mmap::{MappedFile, MappedLexical};
use crate::query::Filter;
use crate::record::{Memory, MemoryId, Metadata, Role, parse_metadata};
use crate::storage::InDir;

const VECTORS_MAGIC: &[u8; 8] = b"MRSEGVEC";
const RECORDS_MAGIC: &[u8; 8] = b"MRSEGREC";
/// Version 2: a row's `context_len` (was reserved, 0) gives the bytes of indexing context
/// stored right before its text in the heap. Version 1 files (no contexts) still open.
const VERSION: u32 = 2;
const VERSION_OLDEST: u32 = 1;
const VECTORS_FILE: &str = "vectors.bin";
const RECORDS_FILE: &str = "records.bin";
const LEXICAL_FILE: &str = "lexical.bin";
const GRAPH_FILE: &str = "graph.bin";
/// Sub-header at the start of the vectors payload (n, dim, zero padding), sized so the floats
/// start 64-byte aligned in the file.
const VECTORS_SUBHEADER_BYTES: usize = 64;
/// Sub-header at the start of the records payload (n, reserved, heap offset).
const RECORDS_SUBHEADER_BYTES: usize = 16;
/// Strings live in one heap addressed by u32 offsets.
const HEAP_BYTES_MAX: usize = u32::MAX as usize;

#[cfg(not(target_endian = "little"))]
compile_error!("segment files are little-endian and mapped as native arrays");

/// One record's fixed-size row in `records.bin`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct Row {
    pub id: u64,
    pub created_at_ms: i64,
    pub content_hash: u64,
    pub chunk: u32,
    pub role: u8,
    pub flags: u8,
    /// Bytes of indexing context, stored in the heap right before `text` (0: none).
    pub context_len: u16,
    pub session: [u32; 2],
    pub text: [u32; 2],
    pub model: [u32; 2],
    pub metadata: [u32; 2],
}

/// Bytes of one row in `records.bin` (docs/format.md): the `Row` struct, read in place.
const ROW_BYTES: usize = 64;
const _: () = assert!(std::mem::size_of::<Row>() == ROW_BYTES);
const ROW_HAS_MODEL: u8 = 1;
const ROW_HAS_METADATA: u8 = 2;

/// A record to write into a new segment.
pub(crate) struct SegmentInput<'a> {
    pub memory: &'a Memory,
    pub vector: &'a [f32],
    /// Indexed before the text, never shown (`StoredMemory::context`).
    pub context: &'a str,
}

/// Whether a new segment may carry an HNSW graph.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GraphBuild<'a> {
    /// Seals: a seal must stay quick so frozen memtables (searched by exact scan) do not pile
    /// up under bulk ingest; compaction builds the graph once segments merge.
    Never,
    /// Compaction merges: a graph when the segment holds at least `HnswParams::min_records`.
    WhenLarge,
    /// A compaction merge whose largest input has a graph and keeps all its records: a graph
    /// when large, starting from that one (`base`'s doc `d` is the new segment's doc
    /// `docs[d]`), so only the other inputs' records are inserted (`hnsw::extend`).
    Extend { base: &'a Segment, docs: &'a [u32] },
}

/// Prefix of every segment directory in a vault (`seg-` then 16 hex digits of a sequence
/// number the vault never reuses).
const DIR_PREFIX: &str = "seg-";

/// The directory name of segment number `seq`.
pub(crate) fn dir_name(seq: u64) -> String {
    format!("{DIR_PREFIX}{seq:016x}")
}

/// Whether a vault directory entry is a segment directory: listed, leftover, or the temp
/// directory (`seg-….tmp`) of an interrupted write.
pub(crate) fn is_dir_name(name: &str) -> bool {
    name.starts_with(DIR_PREFIX)
}

/// Segments that left a vault's list (`Vault::install`), with the vault directory whose
/// storage removes them.
pub(crate) struct Removed<'a> {
    pub segments: Vec<std::sync::Arc<Segment>>,
    pub dir: &'a dyn InDir,
}

/// Removes segment directories that left the vault's list, then syncs the vault directory.
pub(crate) fn remove_dirs(removed: &Removed<'_>) -> Result<()> {
    let storage = removed.dir.storage();
    let segments = &removed.segments;
    for s in segments {
        match storage.remove_dir_all(s.dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(s.dir())(e)),
        }
    }
    if let Some(parent) = segments.first().and_then(|s| s.dir().parent()) {
        file::sync_dir(storage, parent)?;
    }
    Ok(())
}

/// Writes a segment directory `dir/name` from records sorted by id. Returns its path.
/// `after_temp_dir` runs once the files are complete and synced under the temp name (a
/// test's crash point; production passes `|| Ok(())`).
pub(crate) fn write<D: InDir + ?Sized>(
    vault: &D,
    name: &str,
    dim: usize,
    inputs: &[SegmentInput<'_>],
    hnsw: &HnswParams,
    graph: GraphBuild<'_>,
    after_temp_dir: &dyn Fn() -> Result<()>,
) -> Result<PathBuf> {
    write_files(
        vault,
        name,
        dim,
        inputs,
        None,
        (hnsw, graph),
        after_temp_dir,
    )
}

/// [`write`] for a seal: no graph, and the lexical file already built from the memtable's
/// postings (`MemLexical::segment_file`: the bytes analysing `inputs` again would give,
/// without the analysis — it was ~20 % of ingest CPU).
pub(crate) fn write_sealed<D: InDir + ?Sized>(
    vault: &D,
    name: &str,
    dim: usize,
    inputs: &[SegmentInput<'_>],
    lexical: Vec<u8>,
    after_temp_dir: &dyn Fn() -> Result<()>,
) -> Result<PathBuf> {
    let hnsw = HnswParams::default();
    let graph = (&hnsw, GraphBuild::Never);
    write_files(
        vault,
        name,
        dim,
        inputs,
        Some(lexical),
        graph,
        after_temp_dir,
    )
}

/// [`write`], with the lexical file given or (`None`) built by analysing the inputs.
fn write_files<D: InDir + ?Sized>(
    vault: &D,
    name: &str,
    dim: usize,
    inputs: &[SegmentInput<'_>],
    lexical: Option<Vec<u8>>,
    (hnsw, graph): (&HnswParams, GraphBuild<'_>),
    after_temp_dir: &dyn Fn() -> Result<()>,
) -> Result<PathBuf> {
    debug_assert!(inputs.windows(2).all(|w| w[0].memory.id < w[1].memory.id));
    let (storage, vault_dir) = (vault.storage(), vault.path());
    let tmp = vault_dir.join(format!("{name}.tmp"));
    if tmp.exists() {
        storage.remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    storage.create_dir(&tmp).map_err(Error::io(&tmp))?;

    // Vectors.
    let n = inputs.len();
    let mut vectors = Vec::with_capacity(VECTORS_SUBHEADER_BYTES + n * dim * 4);
    vectors.extend_from_slice(&(n as u32).to_le_bytes());
    vectors.extend_from_slice(&(dim as u32).to_le_bytes());
    vectors.resize(VECTORS_SUBHEADER_BYTES, 0);
    let mut flat = Vec::with_capacity(n * dim);
    for input in inputs {
        if input.vector.len() != dim {
            return Err(Error::corrupt(&tmp, "vector of the wrong dimension"));
        }
        flat.extend_from_slice(input.vector);
    }
    vectors.extend_from_slice(bytemuck::cast_slice(&flat));
    file::write_new(
        storage,
        &tmp.join(VECTORS_FILE),
        VECTORS_MAGIC,
        VERSION,
        &vectors,
    )?;
    drop(vectors);

    // Records.
    let mut rows: Vec<Row> = Vec::with_capacity(n);
    let mut heap: Vec<u8> = Vec::new();
    let mut put = |bytes: &[u8]| -> Result<[u32; 2]> {
        let off = heap.len();
        if off + bytes.len() > HEAP_BYTES_MAX {
            return Err(Error::corrupt(&tmp, "segment string heap above 4 GiB"));
        }
        heap.extend_from_slice(bytes);
        Ok([off as u32, bytes.len() as u32])
    };
    for input in inputs {
        let m = input.memory;
        let mut flags = 0;
        let model = match &m.model {
            Some(s) => {
                flags |= ROW_HAS_MODEL;
                put(s.as_bytes())?
            }
            None => [0, 0],
        };
        let metadata = match &m.metadata {
            Some(md) => {
                flags |= ROW_HAS_METADATA;
                put(&serde_json::to_vec(md).unwrap_or_default())?
            }
            None => [0, 0],
        };
        let session = put(m.session_id.as_bytes())?;
        // The context goes right before the text: the row finds it from the text's offset.
        let context = crate::record::context_of(input.context);
        put(context.as_bytes())?;
        rows.push(Row {
            id: m.id,
            created_at_ms: m.created_at_ms,
            content_hash: m.content_hash,
            chunk: m.chunk,
            role: m.role.code(),
            flags,
            context_len: context.len() as u16,
            session,
            text: put(m.text.as_bytes())?,
            model,
            metadata,
        });
    }
    let mut records = Vec::with_capacity(RECORDS_SUBHEADER_BYTES + n * ROW_BYTES + heap.len());
    records.extend_from_slice(&(n as u32).to_le_bytes());
    records.extend_from_slice(&0u32.to_le_bytes());
    let heap_offset = (RECORDS_SUBHEADER_BYTES + n * ROW_BYTES) as u64;
    records.extend_from_slice(&heap_offset.to_le_bytes());
    records.extend_from_slice(bytemuck::cast_slice(&rows));
    records.extend_from_slice(&heap);
    file::write_new(
        storage,
        &tmp.join(RECORDS_FILE),
        RECORDS_MAGIC,
        VERSION,
        &records,
    )?;
    drop(records);

    // Lexical index (carries its own magic, version and crc).
    let lexical = lexical.unwrap_or_else(|| {
        let mut lex = LexicalBuilder::new();
        for (doc, input) in inputs.iter().enumerate() {
            let context = crate::record::context_of(input.context);
            lex.add(
                doc as u32,
                &crate::record::indexed_text(context, &input.memory.text),
            );
        }
        lex.finish()
    });
    file::write_raw(storage, &tmp.join(LEXICAL_FILE), &lexical)?;
    drop(lexical);

    // Graph, only where it beats a scan (and never on the seal path).
    let graph = match graph {
        _ if n < hnsw.min_records => None,
        GraphBuild::Never => None,
        GraphBuild::WhenLarge => Some(hnsw::build(&flat, dim, hnsw)),
        GraphBuild::Extend { base, docs } => Some(match &base.graph {
            Some((map, g)) => hnsw::extend(&flat, dim, hnsw, g, &map.bytes()[HEADER_BYTES..], docs),
            None => hnsw::build(&flat, dim, hnsw),
        }),
    };
    if let Some(graph) = graph {
        file::write_new(
            storage,
            &tmp.join(GRAPH_FILE),
            hnsw::MAGIC,
            hnsw::VERSION,
            &graph,
        )?;
    }
    file::sync_dir(storage, &tmp)?;
    // A test's crash point: the temp dir is complete, nothing names it yet.
    after_temp_dir()?;
    let dest = vault_dir.join(name);
    storage.rename(&tmp, &dest).map_err(Error::io(&dest))?;
    file::sync_dir(storage, vault_dir)?;
    Ok(dest)
}

/// An open, immutable, mapped segment.
pub struct Segment {
    name: String,
    dir: PathBuf,
    n: u32,
    dim: usize,
    vectors: MappedFile,
    records: MappedFile,
    lexical: MappedLexical,
    graph: Option<(MappedFile, Graph)>,
    /// Session id → its docs, built on the first session-filtered search (not at open, which
    /// must stay cheap): a session filter then scans only that session's vectors instead of
    /// walking a graph where almost every node is rejected.
    /// With its heap bytes, measured once when built (for the registry's memory bound).
    sessions: OnceLock<(HashMap<String, Vec<u32>>, u64)>,
    /// Int8 codes of the vectors, built on the first graph walk or scan of at least
    /// `QUANTIZED_SCAN_MIN` records (not at open, which must stay cheap): walks and scans
    /// then read a quarter of the bytes, and rescore their best candidates in f32.
    quantized: OnceLock<Quantized>,
    min_id: MemoryId,
    max_id: MemoryId,
    bytes_on_disk: u64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("n", &self.n)
            .field("hnsw", &self.graph.is_some())
            .finish()
    }
}

impl Segment {
    /// Maps and validates a segment directory. Headers, sizes, row bounds and the lexical
    /// index are checked; the payload crcs of vectors and graph are not (they are the bulk of
    /// the bytes and checking them would turn a millisecond open into a full read) — see
    /// [`Segment::verify`].
    pub fn open(dir: &Path, expected_dim: usize) -> Result<Segment> {
        let name = dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let vectors = MappedFile::open(&dir.join(VECTORS_FILE))?;
        let (_, vp) = file::parse(
            vectors.path(),
            vectors.bytes(),
            VECTORS_MAGIC,
            VERSION_OLDEST,
            VERSION,
            false,
        )?;
        if vp.len() < VECTORS_SUBHEADER_BYTES {
            return Err(Error::corrupt(vectors.path(), "vectors sub-header missing"));
        }
        let n = file::u32_at(vp, 0);
        let dim = file::u32_at(vp, 4) as usize;
        if dim != expected_dim {
            return Err(Error::corrupt(
                vectors.path(),
                format!("dim {dim}, vault dim {expected_dim}"),
            ));
        }
        if vp.len() != VECTORS_SUBHEADER_BYTES + n as usize * dim * 4 {
            return Err(Error::corrupt(
                vectors.path(),
                "vector count does not match the size",
            ));
        }

        let records = MappedFile::open(&dir.join(RECORDS_FILE))?;
        let (_, rp) = file::parse(
            records.path(),
            records.bytes(),
            RECORDS_MAGIC,
            VERSION_OLDEST,
            VERSION,
            true,
        )?;
        if rp.len() < RECORDS_SUBHEADER_BYTES || file::u32_at(rp, 0) != n {
            return Err(Error::corrupt(
                records.path(),
                "record count differs from vector count",
            ));
        }
        let heap_offset = u64::from_le_bytes(
            rp[8..16]
                .try_into()
                .map_err(|_| Error::corrupt(records.path(), "sub-header"))?,
        ) as usize;
        if heap_offset != RECORDS_SUBHEADER_BYTES + n as usize * ROW_BYTES || heap_offset > rp.len()
        {
            return Err(Error::corrupt(records.path(), "heap offset"));
        }
        let lexical = MappedLexical::open(&dir.join(LEXICAL_FILE))?;
        let graph_path = dir.join(GRAPH_FILE);
        let graph = if graph_path.exists() {
            let map = MappedFile::open(&graph_path)?;
            let (_, gp) = file::parse(
                &graph_path,
                map.bytes(),
                hnsw::MAGIC,
                hnsw::VERSION,
                hnsw::VERSION,
                false,
            )?;
            let graph = Graph::parse(&graph_path, gp, n)?;
            Some((map, graph))
        } else {
            None
        };
        let mut seg = Segment {
            name,
            dir: dir.to_path_buf(),
            n,
            dim,
            bytes_on_disk: 0,
            sessions: OnceLock::new(),
            quantized: OnceLock::new(),
            vectors,
            records,
            lexical,
            graph,
            min_id: 0,
            max_id: 0,
        };
        // Validate every row once so later accessors can slice without checks failing.
        let heap_len = seg.heap().len();
        let mut prev = None;
        for row in seg.rows() {
            for [off, len] in [row.session, row.text, row.model, row.metadata] {
                if off as usize + len as usize > heap_len {
                    return Err(Error::corrupt(
                        seg.records.path(),
                        format!("row {} points past the heap", row.id),
                    ));
                }
            }
            if row.text[0] < u32::from(row.context_len) {
                return Err(Error::corrupt(
                    seg.records.path(),
                    format!("row {} context starts before the heap", row.id),
                ));
            }
            if Role::from_code(row.role).is_none() || prev.is_some_and(|p| p >= row.id) {
                return Err(Error::corrupt(
                    seg.records.path(),
                    "rows unsorted or bad role",
                ));
            }
            prev = Some(row.id);
        }
        if seg.lexical.view().n_docs() > n {
            return Err(Error::corrupt(
                seg.lexical.path(),
                "more lexical docs than records",
            ));
        }
        seg.min_id = seg.rows().first().map_or(0, |r| r.id);
        seg.max_id = seg.rows().last().map_or(0, |r| r.id);
        seg.bytes_on_disk = (seg.vectors.bytes().len()
            + seg.records.bytes().len()
            + seg.lexical.file_bytes()
            + seg.graph.as_ref().map_or(0, |g| g.0.bytes().len()))
            as u64;
        // A page that failed while the rows were validated reads zeros now (`mmap.rs`).
        seg.check()?;
        // Validation read every lexical page and every row: searches fault back what they
        // use (from the page cache), the rest no longer counts as this process's memory.
        seg.release_pages();
        Ok(seg)
    }

    /// Unmaps from the process the pages of every file of the segment that a one-off pass
    /// touched ([`MappedFile::release_pages`]); they stay in the page cache.
    pub(crate) fn release_pages(&self) {
        self.vectors.release_pages();
        self.records.release_pages();
        self.lexical.release_pages();
        if let Some((map, _)) = &self.graph {
            map.release_pages();
        }
    }

    /// [`Error::SegmentUnreadable`] once reading a page of any of the segment's files failed
    /// (SIGBUS contained by `mmap.rs`): anything read from the segment since may be zeros.
    /// One atomic load per file; the search path calls it once per request.
    pub fn check(&self) -> Result<()> {
        self.vectors.check()?;
        self.records.check()?;
        self.lexical.check()?;
        self.graph.as_ref().map_or(Ok(()), |(map, _)| map.check())
    }

    /// Checks every payload checksum (the vectors and graph too).
    pub fn verify(&self) -> Result<()> {
        // A page that fails while checksumming reads zeros: report the I/O error, not a
        // checksum mismatch.
        let verified = self.verify_checksums();
        self.check()?;
        verified
    }

    fn verify_checksums(&self) -> Result<()> {
        for (map, magic) in [
            (&self.vectors, VECTORS_MAGIC),
            (&self.records, RECORDS_MAGIC),
        ] {
            file::parse(
                map.path(),
                map.bytes(),
                magic,
                VERSION_OLDEST,
                VERSION,
                true,
            )?;
        }
        if let Some((map, _)) = &self.graph {
            file::parse(
                map.path(),
                map.bytes(),
                hnsw::MAGIC,
                hnsw::VERSION,
                hnsw::VERSION,
                true,
            )?;
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> u32 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn has_graph(&self) -> bool {
        self.graph.is_some()
    }

    pub fn bytes_on_disk(&self) -> u64 {
        self.bytes_on_disk
    }

    pub fn id_range(&self) -> (MemoryId, MemoryId) {
        (self.min_id, self.max_id)
    }

    fn records_payload(&self) -> &[u8] {
        &self.records.bytes()[HEADER_BYTES..]
    }

    pub(crate) fn rows(&self) -> &[Row] {
        let start = RECORDS_SUBHEADER_BYTES;
        bytemuck::cast_slice(&self.records_payload()[start..start + self.n as usize * ROW_BYTES])
    }

    fn heap(&self) -> &[u8] {
        &self.records_payload()[RECORDS_SUBHEADER_BYTES + self.n as usize * ROW_BYTES..]
    }

    fn str_at(&self, [off, len]: [u32; 2]) -> &str {
        // Validated as in-bounds at open; written from `String`s, so UTF-8 unless the disk
        // lies, in which case the lossy fallback is an empty string, not a panic.
        std::str::from_utf8(&self.heap()[off as usize..off as usize + len as usize]).unwrap_or("")
    }

    /// Heap bytes of the int8 codes (0 until the first walk or large scan);
    /// the mapped files are page cache, not heap.
    pub fn quantized_bytes(&self) -> usize {
        self.quantized.get().map_or(0, Quantized::bytes)
    }

    /// Heap bytes of the session index (0 until the first session lookup).
    pub fn session_index_bytes(&self) -> u64 {
        self.sessions.get().map_or(0, |(_, bytes)| *bytes)
    }

    pub fn vectors(&self) -> &[f32] {
        let start = HEADER_BYTES + VECTORS_SUBHEADER_BYTES;
        bytemuck::cast_slice(&self.vectors.bytes()[start..start + self.n as usize * self.dim * 4])
    }

    pub fn vector(&self, doc: u32) -> &[f32] {
        let s = doc as usize * self.dim;
        &self.vectors()[s..s + self.dim]
    }

    pub fn lexical(&self) -> &crate::lexical::LexicalView<'_> {
        self.lexical.view()
    }

    pub fn id(&self, doc: u32) -> MemoryId {
        self.rows()[doc as usize].id
    }

    /// The doc holding `id`, by binary search over the sorted rows.
    pub fn doc_of(&self, id: MemoryId) -> Option<u32> {
        if id < self.min_id || id > self.max_id {
            return None;
        }
        self.rows()
            .binary_search_by_key(&id, |r| r.id)
            .ok()
            .map(|d| d as u32)
    }

    /// The record's text, read in place (no other field decoded).
    pub fn text(&self, doc: u32) -> &str {
        self.str_at(self.rows()[doc as usize].text)
    }

    pub fn session(&self, doc: u32) -> &str {
        self.str_at(self.rows()[doc as usize].session)
    }

    /// The record's indexing context ("" for none and for version 1 files).
    pub fn context(&self, doc: u32) -> &str {
        let row = &self.rows()[doc as usize];
        let len = u32::from(row.context_len);
        self.str_at([row.text[0] - len, len])
    }

    pub fn content_hash(&self, doc: u32) -> u64 {
        self.rows()[doc as usize].content_hash
    }

    fn metadata(&self, row: &Row) -> Option<Metadata> {
        (row.flags & ROW_HAS_METADATA != 0)
            .then(|| parse_metadata(self.str_at(row.metadata).as_bytes()).ok())
            .flatten()
    }

    /// Evaluates `filter` on a doc without materialising the memory.
    pub fn matches(&self, doc: u32, filter: &Filter) -> bool {
        let row = &self.rows()[doc as usize];
        let role = Role::from_code(row.role).unwrap_or(Role::Note);
        filter.matches(self.str_at(row.session), role, row.created_at_ms, || {
            self.metadata(row)
        })
    }

    pub fn created_at(&self, doc: u32) -> i64 {
        self.rows()[doc as usize].created_at_ms
    }

    pub fn memory(&self, doc: u32) -> Memory {
        let row = &self.rows()[doc as usize];
        Memory {
            id: row.id,
            session_id: self.str_at(row.session).to_string(),
            role: Role::from_code(row.role).unwrap_or(Role::Note),
            text: self.str_at(row.text).to_string(),
            created_at_ms: row.created_at_ms,
            model: (row.flags & ROW_HAS_MODEL != 0).then(|| self.str_at(row.model).to_string()),
            metadata: self.metadata(row),
            content_hash: row.content_hash,
            chunk: row.chunk,
        }
    }

    /// The docs of one session, ascending.
    pub fn session_docs(&self, session_id: &str) -> &[u32] {
        let (index, _) = self.sessions.get_or_init(|| {
            let mut m: HashMap<String, Vec<u32>> = HashMap::new();
            for doc in 0..self.n {
                m.entry(self.session(doc).to_string())
                    .or_default()
                    .push(doc);
            }
            // Keys and lists by capacity, plus each bucket (key and list headers, control
            // byte): one pass over the sessions, paid once beside the pass over the docs.
            let bucket = std::mem::size_of::<(String, Vec<u32>)>() + 1;
            let bytes = m.capacity() * bucket
                + m.iter()
                    .map(|(k, v)| k.capacity() + v.capacity() * 4)
                    .sum::<usize>();
            (m, bytes as u64)
        });
        index.get(session_id).map_or(&[], Vec::as_slice)
    }

    /// Top-`k` by cosine among accepted docs, best first: with a session filter an exact
    /// scan of that session's docs; otherwise the HNSW graph when there is one (falling back
    /// to a scan when the filter starves it of results), else an exact scan.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        session: Option<&str>,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        if let Some(s) = session {
            let docs = self.session_docs(s);
            return crate::distance::exact_top_k_docs(
                self.vectors(),
                self.dim,
                query,
                k,
                docs,
                accept,
            );
        }
        if let Some((map, graph)) = &self.graph {
            let payload = &map.bytes()[HEADER_BYTES..];
            let hits = graph.search_quantized(
                payload,
                self.quantized(),
                self.vectors(),
                query,
                k,
                ef,
                accept,
            );
            if hits.len() >= k.min(self.n as usize) {
                return hits;
            }
            // A selective filter can leave the graph walk with fewer than k accepted docs even
            // though more exist; the scan is exact and, for a selective filter, cheap enough.
        }
        if self.graph.is_some() || self.n as usize >= QUANTIZED_SCAN_MIN {
            return quantized_top_k(self.quantized(), self.vectors(), query, k, accept);
        }
        crate::distance::exact_top_k(self.vectors(), self.dim, query, k, accept)
    }

    /// Builds the int8 codes now if searches will use them, so the first search after a seal
    /// or compaction (which run in the background) does not pay for them. Segments opened
    /// with the vault are warmed by a background task instead: opening must stay cheap.
    pub(crate) fn warmed(self) -> Segment {
        self.warm_codes();
        self
    }

    /// Builds the int8 codes now if searches will use them (a no-op once built).
    pub(crate) fn warm_codes(&self) {
        if (self.graph.is_some() || self.n as usize >= QUANTIZED_SCAN_MIN)
            && self.quantized.get().is_none()
        {
            let _ = self.quantized();
            // Building the codes read every vector; searches read the codes (and rescore
            // a few vectors, which they fault back).
            self.vectors.release_pages();
        }
    }

    /// The int8 codes, built on first use.
    fn quantized(&self) -> &Quantized {
        self.quantized
            .get_or_init(|| Quantized::new(self.vectors(), self.dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(id: u64, text: &str, model: bool) -> Memory {
        let mut md = Metadata::new();
        md.insert("k".into(), serde_json::json!("v"));
        Memory {
            id,
            session_id: "s".into(),
            role: Role::Assistant,
            text: text.into(),
            created_at_ms: 1_700_000_000_000 + id as i64,
            model: model.then(|| "gpt".to_string()),
            metadata: model.then_some(md),
            content_hash: id * 31,
            chunk: 0,
        }
    }

    /// Golden bytes: a fixed input must produce exactly these files, so any change to the
    /// layout shows up here (and must come with a version bump in docs/format.md).
    #[test]
    fn format_v2_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (memory(3, "hello", true), memory(9, "wörld", false));
        let (va, vb) = ([0.6f32, 0.8], [1.0f32, 0.0]);
        let inputs = [
            SegmentInput {
                memory: &a,
                vector: &va,
                context: "",
            },
            SegmentInput {
                memory: &b,
                vector: &vb,
                context: "before",
            },
        ];
        let path = write(
            dir.path(),
            "seg-0000000000000001",
            2,
            &inputs,
            &HnswParams::default(),
            GraphBuild::WhenLarge,
            &|| Ok(()),
        )
        .unwrap();
        let crc = |f: &str| crc32fast::hash(&std::fs::read(path.join(f)).unwrap());
        assert_eq!(
            (crc(VECTORS_FILE), crc(RECORDS_FILE)),
            (GOLDEN_VECTORS_CRC, GOLDEN_RECORDS_CRC),
            "segment format drifted: bump VERSION and document it"
        );
        let seg = Segment::open(&path, 2).unwrap();
        assert_eq!(seg.memory(0), a);
        assert_eq!(seg.memory(1), b);
        assert_eq!((seg.context(0), seg.context(1)), ("", "before"));
        assert_eq!(seg.doc_of(9), Some(1));
        assert_eq!(seg.doc_of(4), None);
        assert_eq!(seg.vector(0), &va);
        assert!(!seg.has_graph());
        seg.verify().unwrap();
        assert!(
            Segment::open(&path, 3).is_err(),
            "dimension mismatch must be refused"
        );
    }

    /// Version 1 files (written before indexing contexts; row bytes 30..32 were zero) still
    /// open, as records without context; a version from the future is refused.
    #[test]
    fn version_1_opens_and_future_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = memory(3, "hello", true);
        let va = [0.6f32, 0.8];
        let inputs = [SegmentInput {
            memory: &a,
            vector: &va,
            context: "",
        }];
        let path = write(
            dir.path(),
            "seg-1",
            2,
            &inputs,
            &HnswParams::default(),
            GraphBuild::WhenLarge,
            &|| Ok(()),
        )
        .unwrap();
        let set_version = |version: u32| {
            for (f, magic) in [(VECTORS_FILE, VECTORS_MAGIC), (RECORDS_FILE, RECORDS_MAGIC)] {
                let bytes = std::fs::read(path.join(f)).unwrap();
                let payload = &bytes[HEADER_BYTES..];
                let mut out = file::header(magic, version, payload).to_vec();
                out.extend_from_slice(payload);
                std::fs::write(path.join(f), out).unwrap();
            }
        };
        set_version(1);
        let seg = Segment::open(&path, 2).unwrap();
        assert_eq!((seg.memory(0), seg.context(0)), (a.clone(), ""));
        seg.verify().unwrap();
        drop(seg);
        set_version(VERSION + 1);
        assert!(matches!(
            Segment::open(&path, 2),
            Err(Error::UnsupportedVersion { .. })
        ));
    }

    fn hits_top(seg: &Segment, q: &[f32]) -> u32 {
        crate::distance::exact_top_k(seg.vectors(), 2, q, 1, &|_| true)[0].0
    }

    const GOLDEN_VECTORS_CRC: u32 = 2_081_677_409;
    const GOLDEN_RECORDS_CRC: u32 = 3_863_198_789;

    #[test]
    fn graph_is_built_past_the_threshold_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let mems: Vec<Memory> = (1..=300)
            .map(|i| memory(i, &format!("text {i}"), false))
            .collect();
        let vecs: Vec<[f32; 2]> = (1..=300)
            .map(|i| {
                let t = i as f32 * 0.01;
                [t.cos(), t.sin()]
            })
            .collect();
        let inputs: Vec<SegmentInput<'_>> = mems
            .iter()
            .zip(&vecs)
            .map(|(m, v)| SegmentInput {
                memory: m,
                vector: v,
                context: "",
            })
            .collect();
        let params = HnswParams {
            min_records: 100,
            ..HnswParams::default()
        };
        let path = write(
            dir.path(),
            "seg-0000000000000002",
            2,
            &inputs,
            &params,
            GraphBuild::WhenLarge,
            &|| Ok(()),
        )
        .unwrap();
        let seg = Segment::open(&path, 2).unwrap();
        assert!(seg.has_graph());
        seg.verify().unwrap();
        let q = [(1.5f32).cos(), (1.5f32).sin()];
        let hits = seg.search(&q, 3, 64, None, &|_| true);
        assert_eq!(seg.id(hits[0].0), 150);
        // A filter that accepts only two docs still returns both (scan fallback).
        let hits = seg.search(&q, 5, 64, None, &|d| d == 7 || d == 290);
        assert_eq!(hits.len(), 2);
        assert_eq!(seg.session_docs("s").len(), 300);
        assert!(seg.session_docs("t").is_empty());
        assert_eq!(
            seg.search(&q, 5, 64, Some("s"), &|_| true)[0].0,
            hits_top(&seg, &q)
        );
    }
}
