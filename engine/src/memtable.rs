//! The memtable: records acknowledged since the last seal, in memory, searched exactly.
//!
//! Records are appended in WAL order (which is not always id order: concurrent ingests take
//! ids first and append later), so a `BTreeMap` gives id order for `get` and `list`. A record's
//! position ("doc") is dense from 0 and shared by the vector array and the lexical index.
//! Deletes never remove anything here: the vault's tombstone set filters every source alike,
//! and sealing drops tombstoned records.
//!
//! The memtable also estimates its own heap footprint ([`Memtable::heap_bytes`]) for the
//! registry's memory bound and the vault's seal trigger (`VaultOptions::memtable_bytes_max`):
//! the strings each insert adds are summed as they arrive, and the arrays and the lexical
//! index's arenas are counted from their capacities, so the estimate costs O(1).
//!
//! Held compactly, as a memtable lives until its seal: the lexical index keeps its terms and
//! postings in arenas (`lexical/mem.rs`), and a record whose indexing context is the text of
//! the record before it — every chunk of a long message after the first, and a session's
//! turns ingested together — does not keep a second copy of that text.

use std::collections::BTreeMap;

use crate::analyzer::TermCounts;
use crate::distance::{QUANTIZED_SCAN_MIN, Quantized, exact_top_k, quantized_top_k};
use crate::lexical::MemLexical;
use crate::record::{Memory, MemoryId, StoredMemory, indexed_text};

/// Heap bytes per entry of the id → doc `BTreeMap`: 12 bytes of key and value in nodes of
/// 11 slots that are about two thirds full, plus node headers and child pointers.
const ID_INDEX_ENTRY_BYTES: usize = 32;
/// Heap bytes per JSON object entry besides its key and value payloads: the key `String`
/// header, the `Value` slot and the `BTreeMap` node share.
const JSON_ENTRY_BYTES: usize = 24 + std::mem::size_of::<serde_json::Value>() + 16;

/// Mutable in-memory records of one vault.
pub struct Memtable {
    dim: usize,
    records: Vec<Memory>,
    /// Each record's indexing context (`StoredMemory::context`), by doc.
    contexts: Vec<Context>,
    /// `records.len() * dim` floats, doc-major.
    vectors: Vec<f32>,
    /// The same vectors' int8 codes: a scan of a full memtable reads 1.5 MB instead of 6 MB.
    codes: Quantized,
    by_id: BTreeMap<MemoryId, u32>,
    lexical: MemLexical,
    /// Heap bytes owned by the records' strings (text, session, model, metadata, context),
    /// summed at insert; see [`Memtable::heap_bytes`].
    payload_bytes: usize,
}

/// A record's indexing context.
enum Context {
    /// The text of the record right before it (doc − 1): not stored twice.
    Previous,
    Own(String),
}

impl Memtable {
    pub fn new(dim: usize) -> Self {
        Memtable {
            dim,
            records: Vec::new(),
            contexts: Vec::new(),
            vectors: Vec::new(),
            codes: Quantized::empty(dim),
            by_id: BTreeMap::new(),
            lexical: MemLexical::new(),
            payload_bytes: 0,
        }
    }

    /// Adds a record. A duplicate id (a WAL record replayed twice) is ignored.
    pub fn insert(&mut self, record: StoredMemory) {
        // Replay hands records already here (WAL replayed twice): skip them before counting.
        if self.by_id.contains_key(&record.memory.id) {
            return;
        }
        let terms = TermCounts::of(&indexed_text(&record.context, &record.memory.text));
        self.insert_analyzed(record, &terms);
    }

    /// [`Memtable::insert`] given the BM25 terms of the record's indexed text: ingest counts
    /// them before taking the vault's lock, so the lock covers only the index update.
    pub fn insert_analyzed(&mut self, record: StoredMemory, terms: &TermCounts) {
        if self.by_id.contains_key(&record.memory.id) || record.vector.len() != self.dim {
            return;
        }
        let doc = self.records.len() as u32;
        self.by_id.insert(record.memory.id, doc);
        self.lexical.add_counts(doc, terms);
        let context = match self.records.last() {
            Some(previous) if !record.context.is_empty() && previous.text == record.context => {
                Context::Previous
            }
            _ => Context::Own(record.context),
        };
        self.payload_bytes += record_payload_bytes(&record.memory)
            + match &context {
                Context::Previous => 0,
                Context::Own(c) => c.capacity(),
            };
        self.vectors.extend_from_slice(&record.vector);
        self.codes.push(&record.vector);
        self.records.push(record.memory);
        self.contexts.push(context);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Estimated heap bytes held by this memtable: the record, context and vector arrays by
    /// capacity (a grown `Vec` holds its spare room), the id index, the lexical index's
    /// tables and arenas by capacity, and the strings summed at insert. O(1).
    pub fn heap_bytes(&self) -> u64 {
        let arrays = self.records.capacity() * std::mem::size_of::<Memory>()
            + self.contexts.capacity() * std::mem::size_of::<Context>()
            + self.vectors.capacity() * std::mem::size_of::<f32>()
            + self.codes.bytes();
        let indexes = self.by_id.len() * ID_INDEX_ENTRY_BYTES + self.lexical.heap_bytes();
        (arrays + indexes + self.payload_bytes) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn doc_of(&self, id: MemoryId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    #[cfg(test)]
    pub fn get(&self, id: MemoryId) -> Option<&Memory> {
        self.doc_of(id).map(|d| &self.records[d as usize])
    }

    pub fn memory(&self, doc: u32) -> &Memory {
        &self.records[doc as usize]
    }

    pub fn context(&self, doc: u32) -> &str {
        match &self.contexts[doc as usize] {
            Context::Previous => &self.records[doc as usize - 1].text,
            Context::Own(c) => c,
        }
    }

    pub fn vector(&self, doc: u32) -> &[f32] {
        let start = doc as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    pub fn lexical(&self) -> &MemLexical {
        &self.lexical
    }

    /// Ids in descending order, below `before` when given.
    pub fn ids_desc(&self, before: Option<MemoryId>) -> impl Iterator<Item = (MemoryId, u32)> + '_ {
        self.by_id
            .range(..before.unwrap_or(MemoryId::MAX))
            .rev()
            .map(|(&id, &doc)| (id, doc))
    }

    #[cfg(test)]
    pub fn max_id(&self) -> Option<MemoryId> {
        self.by_id.keys().next_back().copied()
    }

    /// Exact top-`k` by cosine among docs `accept` lets through. Best first.
    /// Past [`QUANTIZED_SCAN_MIN`] records the scan ranks by int8 codes and rescores the best
    /// in f32 (scores stay exact), as graphless segments do.
    pub fn search(&self, query: &[f32], k: usize, accept: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
        if self.records.len() >= QUANTIZED_SCAN_MIN {
            return quantized_top_k(&self.codes, &self.vectors, query, k, accept);
        }
        exact_top_k(&self.vectors, self.dim, query, k, accept)
    }
}

/// Heap bytes of one record's own strings and metadata (not its slot in the array).
fn record_payload_bytes(m: &Memory) -> usize {
    m.text.capacity()
        + m.session_id.capacity()
        + m.model.as_ref().map_or(0, String::capacity)
        + m.metadata.as_ref().map_or(0, json_object_bytes)
}

fn json_object_bytes(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    map.iter()
        .map(|(k, v)| JSON_ENTRY_BYTES + k.capacity() + json_value_bytes(v))
        .sum()
}

/// Heap bytes below a JSON value (metadata is bounded by the request body limit, so the
/// recursion is too).
fn json_value_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity(),
        Value::Array(a) => {
            a.capacity() * std::mem::size_of::<Value>()
                + a.iter().map(json_value_bytes).sum::<usize>()
        }
        Value::Object(o) => json_object_bytes(o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Role;

    fn rec(id: u64, v: [f32; 2]) -> StoredMemory {
        StoredMemory {
            memory: Memory {
                id,
                session_id: String::new(),
                role: Role::User,
                text: format!("text {id}"),
                created_at_ms: 0,
                model: None,
                metadata: None,
                content_hash: id,
                chunk: 0,
            },
            vector: v.to_vec(),
            context: String::new(),
        }
    }

    #[test]
    fn insert_get_list_search() {
        let mut m = Memtable::new(2);
        m.insert(rec(5, [1.0, 0.0]));
        m.insert(rec(3, [0.0, 1.0]));
        m.insert(rec(5, [0.0, 1.0])); // replayed twice: ignored
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(3).unwrap().text, "text 3");
        assert_eq!(
            m.ids_desc(None).map(|x| x.0).collect::<Vec<_>>(),
            vec![5, 3]
        );
        assert_eq!(
            m.ids_desc(Some(5)).map(|x| x.0).collect::<Vec<_>>(),
            vec![3]
        );
        let hits = m.search(&[0.0, 1.0], 1, &|_| true);
        assert_eq!(m.memory(hits[0].0).id, 3);
        assert_eq!(m.max_id(), Some(5));
    }

    #[test]
    fn a_large_memtable_scans_int8_codes_and_still_returns_the_exact_top_k() {
        // Clustered 3-d unit vectors with a filter: the int8 pre-rank plus f32 rescoring
        // must give exactly what the plain f32 scan gives, scores included.
        let dim = 3;
        let mut m = Memtable::new(dim);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for id in 0..(QUANTIZED_SCAN_MIN as u64 + 500) {
            let mut r = rec(id, [0.0, 0.0]);
            let v: Vec<f32> = (0..dim).map(|_| next()).collect();
            let norm = v.iter().map(|c| c * c).sum::<f32>().sqrt().max(1e-6);
            r.vector = v.iter().map(|c| c / norm).collect();
            m.insert(r);
        }
        let odd = |d: u32| d % 2 == 1;
        for q in [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [-0.6, 0.0, 0.8]] {
            let exact = exact_top_k(&m.vectors, dim, &q, 10, &odd);
            assert_eq!(m.search(&q, 10, &odd), exact);
        }
        assert!(m.heap_bytes() as usize >= m.codes.bytes() + m.vectors.len() * 4);
    }

    #[test]
    fn a_context_that_is_the_previous_text_is_held_once() {
        let mut m = Memtable::new(2);
        let mut a = rec(1, [1.0, 0.0]);
        a.memory.text = "x".repeat(900);
        m.insert(a);
        let one = m.heap_bytes();
        let mut b = rec(2, [0.0, 1.0]);
        b.context = "x".repeat(900);
        m.insert(b);
        let mut c = rec(3, [0.0, 1.0]);
        c.context = "another context".to_string();
        m.insert(c);
        assert_eq!(m.context(0), "");
        assert_eq!(m.context(1), "x".repeat(900));
        assert_eq!(m.context(2), "another context");
        assert!(matches!(m.contexts[1], Context::Previous));
        assert!(matches!(m.contexts[2], Context::Own(_)));
        // The second record's context added no 900 bytes.
        assert!(m.heap_bytes() < one + 900, "{one} -> {}", m.heap_bytes());
    }

    #[test]
    fn heap_estimate_counts_texts_metadata_and_vectors() {
        let mut m = Memtable::new(2);
        assert_eq!(m.heap_bytes(), 0);
        m.insert(rec(1, [1.0, 0.0]));
        let one = m.heap_bytes();
        let mut long = rec(2, [0.0, 1.0]);
        long.memory.text = "word ".repeat(1000);
        let mut meta = serde_json::Map::new();
        meta.insert("tag".into(), serde_json::Value::String("x".repeat(500)));
        long.memory.metadata = Some(meta);
        m.insert(long);
        let two = m.heap_bytes();
        // The text, its postings (one per word, at most) and the metadata string.
        assert!(two >= one + 5000 + 500, "{one} -> {two}");
        // A replayed duplicate adds nothing.
        m.insert(rec(2, [0.0, 1.0]));
        assert_eq!(m.heap_bytes(), two);
    }
}
