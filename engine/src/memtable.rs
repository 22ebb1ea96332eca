//! The memtable: records acknowledged since the last seal, in memory, searched exactly.
//!
//! Records are appended in WAL order (which is not always id order: concurrent ingests take
//! ids first and append later), so a `BTreeMap` gives id order for `get` and `list`. A record's
//! position ("doc") is dense from 0 and shared by the vector array and the lexical index.
//! Deletes never remove anything here: the vault's tombstone set filters every source alike,
//! and sealing drops tombstoned records.

use std::collections::BTreeMap;

use crate::distance::exact_top_k;
use crate::lexical::MemLexical;
use crate::record::{Memory, MemoryId, StoredMemory, indexed_text};

/// Mutable in-memory records of one vault.
pub struct Memtable {
    dim: usize,
    records: Vec<Memory>,
    /// Each record's indexing context (`StoredMemory::context`), by doc.
    contexts: Vec<String>,
    /// `records.len() * dim` floats, doc-major.
    vectors: Vec<f32>,
    by_id: BTreeMap<MemoryId, u32>,
    lexical: MemLexical,
}

impl Memtable {
    pub fn new(dim: usize) -> Self {
        Memtable {
            dim,
            records: Vec::new(),
            contexts: Vec::new(),
            vectors: Vec::new(),
            by_id: BTreeMap::new(),
            lexical: MemLexical::new(),
        }
    }

    /// Adds a record. A duplicate id (a WAL record replayed twice) is ignored.
    pub fn insert(&mut self, record: StoredMemory) {
        if self.by_id.contains_key(&record.memory.id) || record.vector.len() != self.dim {
            return;
        }
        let doc = self.records.len() as u32;
        self.by_id.insert(record.memory.id, doc);
        self.lexical
            .add(doc, &indexed_text(&record.context, &record.memory.text));
        self.vectors.extend_from_slice(&record.vector);
        self.records.push(record.memory);
        self.contexts.push(record.context);
    }

    pub fn len(&self) -> usize {
        self.records.len()
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
        &self.contexts[doc as usize]
    }

    pub fn vector(&self, doc: u32) -> &[f32] {
        let start = doc as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    pub fn records(&self) -> &[Memory] {
        &self.records
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
    pub fn search(&self, query: &[f32], k: usize, accept: &dyn Fn(u32) -> bool) -> Vec<(u32, f32)> {
        exact_top_k(&self.vectors, self.dim, query, k, accept)
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
}
