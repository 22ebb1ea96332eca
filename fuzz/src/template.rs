//! A small real vault, written once per fuzzing process through the engine's public API, that
//! the vault-level targets copy and then damage. It holds every kind of file a vault has:
//! a MANIFEST with tombstones, a compacted segment with an HNSW graph, a sealed segment
//! without one, and a WAL tail of ingests and deletes past the manifest's checkpoint.
//!
//! Deterministic: fixed texts and timestamps, the tiny hash embedder, and the graph built on
//! a one-thread pool (`hnsw_rs` seeds its level generator; only thread interleaving could
//! change the graph). So a crashing input reproduces in a new process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use engine::{Durability, HnswParams, NewMemory, Role, Vault, VaultOptions};

use crate::TinyEmbedder;

/// Records per sealed segment in the template (and in the vaults the targets open): small, so
/// a few ingests in `exercise` seal and compact.
pub const MEMTABLE_RECORDS_MAX: usize = 8;
/// A compaction of the template's first three seals (24 records) builds a graph.
pub const HNSW_MIN_RECORDS: usize = 16;
/// Creation time of every template record (fixed, for determinism).
pub const CREATED_AT_MS: i64 = 1_700_000_000_000;

/// How every fuzzed vault is opened: tiny embedder, small memtable and graph threshold, no
/// background jobs (the target drives seal and compaction itself, so a run is deterministic),
/// no fsync per write (tmpfs; durability is not what these targets check).
pub fn options() -> VaultOptions {
    let mut o = VaultOptions::new(Arc::new(TinyEmbedder));
    o.durability = Durability::Buffered;
    o.memtable_records_max = MEMTABLE_RECORDS_MAX;
    o.background = false;
    o.hnsw = HnswParams {
        m: 4,
        ef_construction: 16,
        ef_search: 16,
        min_records: HNSW_MIN_RECORDS,
    };
    o
}

/// One message of the template's chats.
pub fn message(session: &str, role: Role, text: &str, tagged: bool) -> NewMemory {
    let metadata = tagged.then(|| {
        let mut m = serde_json::Map::new();
        m.insert("topic".into(), serde_json::json!("pets"));
        m
    });
    NewMemory::new(session, role, text, CREATED_AT_MS)
        .with_model(tagged.then(|| "fuzz/model".to_string()))
        .with_metadata(metadata)
}

/// Words the template's messages are made of, mixed so BM25 and the vectors have something
/// to rank.
pub const WORDS: [&str; 16] = [
    "cat", "miso", "lyon", "coffee", "train", "garden", "piano", "river", "winter", "bread",
    "violet", "rust", "memory", "vault", "ocean", "lamp",
];

/// Messages `first..first + n` of the template's chats (three sessions, two roles, every
/// fourth with a model and metadata).
pub fn batch(first: usize, n: usize) -> Vec<NewMemory> {
    (first..first + n)
        .map(|i| {
            let text = format!(
                "message {i} about {} and {} near the {}",
                WORDS[i % 16],
                WORDS[(i * 7 + 3) % 16],
                WORDS[(i * 5 + 1) % 16]
            );
            let role = if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            };
            message(&format!("chat-{}", i % 3), role, &text, i % 4 == 0)
        })
        .collect()
}

/// The template vault on disk, and the files in it (relative paths, sorted).
pub struct Template {
    _root: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<PathBuf>,
}

impl Template {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Copies the template vault into `dest` (created).
    pub fn copy_to(&self, dest: &Path) -> std::io::Result<()> {
        for rel in &self.files {
            let to = dest.join(rel);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(self.dir.join(rel), to)?;
        }
        Ok(())
    }
}

/// A scratch directory on tmpfs when there is one: the targets write several files per run.
pub fn scratch() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
}

/// The process-wide template, built on first use. Panics if the engine cannot write a
/// vault at all: then every run would be meaningless, and a fuzzer should stop loudly.
pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| build().expect("the engine writes the template vault"))
}

fn build() -> Result<Template, Box<dyn std::error::Error>> {
    let root = scratch()?;
    let dir = root.path().join("vault");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    pool.install(|| -> Result<(), engine::Error> {
        let vault = Vault::open(&dir, options())?;
        for first in [0, 8, 16] {
            vault.ingest(batch(first, 8))?;
            vault.seal()?;
        }
        // Three small segments merge into one of 24 records, over the graph threshold.
        vault.compact_all()?;
        vault.ingest(batch(24, 8))?;
        vault.delete(3)?;
        vault.delete(27)?;
        vault.seal()?;
        // The WAL tail: replayed on open, past the manifest's checkpoint.
        vault.ingest(batch(32, 5))?;
        vault.delete(34)?;
        vault.delete(5)?;
        vault.sync()?;
        Ok(())
    })?;
    let mut files = Vec::new();
    collect(&dir, Path::new(""), &mut files)?;
    files.sort();
    Ok(Template {
        _root: root,
        dir,
        files,
    })
}

fn collect(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(base.join(rel))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect(base, &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}
