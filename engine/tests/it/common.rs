//! Shared test fixtures: a tiny deterministic embedder and vault helpers.

use std::sync::Arc;

use engine::{Embedder, NewMemory, Role, Vault, VaultOptions};

/// Bag-of-words hashed into `dim` signed buckets, unit length: deterministic and cheap, and
/// texts sharing words are near each other, which is all these tests need.
pub struct WordHash {
    pub dim: usize,
    pub id: String,
}

impl WordHash {
    pub fn shared(dim: usize) -> Arc<dyn Embedder> {
        Arc::new(WordHash {
            dim,
            id: format!("test-wordhash-{dim}"),
        })
    }
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Embedder for WordHash {
    fn id(&self) -> &str {
        &self.id
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn kind(&self) -> engine::EmbedderKind {
        engine::EmbedderKind::Lexical
    }
    fn embed_batch(&self, texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

impl WordHash {
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for w in text.split_whitespace() {
            let h = fnv(&w.to_lowercase());
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            v[(h % self.dim as u64) as usize] += sign;
            v[((h >> 20) % self.dim as u64) as usize] += 0.5 * sign;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            v[0] = 1.0;
        } else {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

/// Options for a hand-driven vault: no background work, small memtable.
pub fn options(dim: usize) -> VaultOptions {
    let mut o = VaultOptions::new(WordHash::shared(dim));
    o.background = false;
    o.memtable_records_max = usize::MAX;
    o
}

pub fn msg(session: &str, role: Role, text: &str, at: i64) -> NewMemory {
    NewMemory::new(session, role, text, at)
}

pub fn open(dir: &std::path::Path, dim: usize) -> Vault {
    Vault::open(dir, options(dim)).expect("open vault")
}

pub fn query(text: &str, k: usize) -> engine::SearchQuery {
    engine::SearchQuery {
        text: text.to_string(),
        k,
        filter: engine::Filter::default(),
        boost_session: None,
        now_ms: 0,
    }
}
