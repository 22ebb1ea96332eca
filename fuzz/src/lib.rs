//! Shared parts of the fuzz targets: edit scripts that damage a valid file ([`edit`]), a small
//! real vault to damage ([`template`]), a tiny deterministic embedder, and [`exercise`], the
//! public-API workout every vault-level target runs on the damaged copy.
//!
//! The contract every target checks: whatever the bytes on disk, the engine returns `Ok` or an
//! error — never a panic, an overflow, an out-of-bounds access (ASan) or a hang (libFuzzer's
//! `-timeout`).

pub mod edit;
pub mod template;

use std::path::Path;

use engine::{Embedder, Filter, Role, SearchQuery, Vault};

/// Vector dimension of [`TinyEmbedder`]: small, so segment files stay a few KiB and each run
/// copies and parses little.
pub const TINY_DIM: usize = 8;

/// Hashes words into [`TINY_DIM`] buckets, then normalises: enough for searches to rank
/// something, deterministic, and fast.
pub struct TinyEmbedder;

impl Embedder for TinyEmbedder {
    fn id(&self) -> &str {
        "fuzz-tiny-8"
    }

    fn dim(&self) -> usize {
        TINY_DIM
    }

    fn kind(&self) -> engine::EmbedderKind {
        engine::EmbedderKind::Lexical
    }

    fn embed_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| tiny_vector(t)).collect())
    }
}

/// [`TinyEmbedder`]'s vector of one text.
fn tiny_vector(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; TINY_DIM];
    for word in text.split_whitespace() {
        let h = word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        v[(h % TINY_DIM as u64) as usize] += if h & 0x100 == 0 { 1.0 } else { -1.0 };
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    } else {
        v[0] = 1.0;
    }
    v
}

/// Queries over the template's words, plus ones no record holds.
const QUERIES: [&str; 4] = [
    "what is the name of my cat miso",
    "coffee in lyon by the river",
    "zzz unknown words only",
    "",
];

/// Opens the vault in `dir` and uses every read and write path on it: searches (plain,
/// filtered, large k), get/list/stats/verify, ingest, delete, seal, compaction, then a reopen
/// and a search. Errors are fine; panics are what the fuzzer looks for. Returns whether the
/// first open succeeded (targets use it for sanity checks on undamaged input).
pub fn exercise(dir: &Path) -> bool {
    let Ok(vault) = Vault::open(dir, template::options()) else {
        return false;
    };
    search_all(&vault);
    for id in [0, 1, 3, 30, 36, u64::MAX] {
        let _ = vault.get(id);
    }
    let _ = vault.list(None, 10, None);
    let _ = vault.list(Some(20), 5, Some("chat-1"));
    let _ = vault.stats();
    let _ = vault.verify();
    let _ = vault.memory_bytes();
    let fresh = (0..template::MEMTABLE_RECORDS_MAX + 2)
        .map(|i| {
            let text = format!("new fact {i} about the cat miso and the piano");
            template::message("chat-9", Role::User, &text, i % 2 == 0)
        })
        .collect();
    let _ = vault.ingest(fresh);
    let _ = vault.delete(2);
    let _ = vault.delete(33);
    let _ = vault.seal();
    let _ = vault.compact();
    let _ = vault.compact_all();
    search_all(&vault);
    let _ = vault.clear(Some("chat-2"));
    drop(vault);
    if let Ok(again) = Vault::open(dir, template::options()) {
        search_all(&again);
    }
    true
}

fn search_all(vault: &Vault) {
    for text in QUERIES {
        for (k, filter) in [
            (5, Filter::default()),
            (engine::SEARCH_K_MAX, Filter::default()),
            (
                3,
                Filter {
                    session_id: Some("chat-1".into()),
                    ..Filter::default()
                },
            ),
            (
                4,
                Filter {
                    roles: Some(vec![Role::Assistant]),
                    metadata: vec![("topic".into(), serde_json::json!("pets"))],
                    ..Filter::default()
                },
            ),
        ] {
            let _ = vault.search(&SearchQuery {
                text: text.into(),
                k,
                filter,
                boost_session: Some("chat-0".into()),
                now_ms: template::CREATED_AT_MS + 1000,
            });
        }
    }
}
