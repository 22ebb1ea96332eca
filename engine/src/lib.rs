//! The per-vault storage engine of MemoryRouter: it stores each user's memories in a private
//! vault directory and answers "which memories matter for this message?" with hybrid
//! (vector + BM25) retrieval.
//!
//! **Is:** records and their durable write path (WAL → memtable → immutable mmapped segments),
//! dedupe of resent chat history, tombstone deletes, background compaction, HNSW graphs for
//! large segments, SIMD exact search for small ones, BM25, rank fusion, the built-in embedder,
//! local semantic models (model2vec or BERT from a directory, [`LocalModelEmbedder`]) and the
//! registry that opens and closes vaults lazily.
//! **Is not:** aware of HTTP, keys or providers; it never does network I/O.
//!
//! **Limits** (named constants): [`SEARCH_K_MAX`] results per search, [`CHUNK_CHARS_MAX`]
//! characters per record (longer messages are chunked with [`CHUNK_OVERLAP_CHARS`] overlap),
//! [`OPEN_VAULTS_MAX_DEFAULT`] open vaults holding about [`OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT`]
//! of heap between them, vault ids of at most [`VAULT_ID_BYTES_MAX`] bytes of
//! `[A-Za-z0-9_-]`, 4 GiB of text per segment, one embedder (id + dimension) per vault.
//!
//! **Modules:** `vault/` (one folder: `mod.rs` the handle and lock order, `state.rs` the
//! read model with one `Source` reader over memtable, frozen memtables and segments,
//! `open.rs`, `write.rs`, `read.rs`, `search.rs`, `seal.rs`, `compaction.rs`, and
//! `layout.rs`, the one place the segment list changes), `memtable`, `segment` (files of a
//! sealed segment), `hnsw` (graph build via `hnsw_rs`, in-place search), `distance`
//! (simsimd), `manifest`, `file` (common header, durable writes), `storage` (the file-system
//! seam every write goes through; owner-only modes), `guard` (a vault's storage, poisoned by
//! its first failed fsync), `powerloss` (hidden: the recorder the power-loss tests put behind
//! that seam), `mmap` (`unsafe` is there, in `background`'s one
//! `malloc_trim` call and in `local_model/kernel.rs`'s AVX2 calls only), `record` (types, WAL payloads, `encoded_len`),
//! `query`, `chunk`, `limits` (shared sizes), `crash` (test fault points), `registry`
//! ([`Engine`]), `background` (the low-priority threads seals and compactions run on; the heap they
//! freed is given back to the OS when they run out of work),
//! `footprint` (heap estimate of open vaults), `error`; retrieval quality: `policy`
//! ([`RetrievalPolicy`]: every ranking knob), `embedder` (the fallible, batched [`Embedder`]
//! trait), `local_model`, `analyzer`, `lexical`, `fusion`. File formats: `docs/format.md`.
//!
//! ```
//! use engine::{Engine, EngineConfig, Filter, NewMemory, Role, SearchQuery};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::new(dir.path().to_path_buf()))?;
//! let vault = engine.vault("key_0123456789abcdef")?;
//! let said = |text: &str| NewMemory::new("chat-1", Role::User, text, 1_700_000_000_000);
//! vault.ingest(vec![said("My cat is called Miso"), said("I live in Lyon")])?;
//! // Clients resend the whole history: nothing is stored twice.
//! assert_eq!(vault.ingest(vec![said("My cat is called Miso")])?.skipped, 1);
//! let hits = vault.search(&SearchQuery {
//!     text: "what is the name of my cat".into(),
//!     k: 1,
//!     filter: Filter::default(),
//!     boost_session: None,
//!     now_ms: 1_700_000_100_000,
//! })?;
//! assert_eq!(hits[0].memory.text, "My cat is called Miso");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

// Modules public for benches (the LoCoMo harness, criterion) and fuzz targets only: their
// items are not part of the engine's API and may change without notice.
#[doc(hidden)]
pub mod analyzer;
pub mod embedder;
pub mod fusion;
#[doc(hidden)]
pub mod lexical;
pub mod local_model;
mod stem;

mod background;
mod chunk;
mod crash;
mod distance;
mod error;
mod file;
mod footprint;
mod guard;
#[doc(hidden)]
pub mod hnsw;
mod limits;
mod manifest;
mod memtable;
mod mmap;
mod policy;
#[doc(hidden)]
pub mod powerloss;
mod query;
mod record;
mod registry;
mod segment;
#[doc(hidden)]
pub mod storage;
mod vault;

#[doc(hidden)]
pub use background::spawn as spawn_background;
pub use embedder::{BuiltinEmbedder, Embedder, EmbedderKind};
pub use local_model::{LocalModelEmbedder, LocalModelKind};

pub use chunk::{CHUNK_CHARS_MAX, CHUNK_OVERLAP_CHARS, chunk_text};
#[doc(hidden)]
pub use crash::{CrashPoint, PauseHook};
pub use distance::dot;
#[doc(hidden)]
pub use distance::{Quantized, UnitDistance, exact_top_k};
pub use error::{Error, Result};
pub use hnsw::HnswParams;
pub use limits::{MEMTABLE_BYTES_MAX_DEFAULT, MEMTABLE_RECORDS_MAX_DEFAULT};
pub use policy::{
    DATE_WINDOW_DAYS, DEFAULT_SIGNALS, RetrievalPolicy, SIMILARITY_MIN_LEXICAL,
    SIMILARITY_MIN_TRANSFORMER, Signals,
};
pub use query::{Filter, Hit, SearchQuery};
pub use record::{Memory, MemoryId, Metadata, NewMemory, Role, content_hash};
pub use registry::{
    Engine, EngineConfig, FENCE_QUIET_WAIT_MS, Fence, OPEN_VAULTS_MAX_DEFAULT,
    OPEN_VAULTS_MEMORY_BYTES_MAX_DEFAULT, VAULT_ID_BYTES_MAX, validate_vault_id,
};
#[doc(hidden)]
pub use segment::Segment;
pub use vault::{
    COMPACTION_DELETED_SHARE_MIN, COMPACTION_FANIN, IngestOutcome, Leftover, SEARCH_K_MAX, Vault,
    VaultOptions, VaultStats,
};
pub use wal::Durability;
