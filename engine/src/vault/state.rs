//! The read model of a vault: its sources of records (the memtable, frozen memtables waiting
//! for their seal, sealed segments), the tombstones applied over them, and the dedupe set.
//!
//! Every walk over the sources goes through [`Source`]: one reader per kind of source, so
//! reads, deletes and searches never match on where a record sits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::analyzer::TermCounts;
use crate::error::Result;
use crate::footprint::{self, MemoryGauge};
use crate::lexical::LexicalSource;
use crate::memtable::Memtable;
use crate::query::Filter;
use crate::record::{Memory, MemoryId, StoredMemory};
use crate::segment::Segment;

/// One source of records, read in place.
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    /// The live memtable or a frozen one.
    Mem(&'a Memtable),
    Segment(&'a Segment),
}

impl<'a> Source<'a> {
    pub fn len(self) -> u32 {
        match self {
            Source::Mem(m) => m.len() as u32,
            Source::Segment(s) => s.len(),
        }
    }

    /// The doc holding `id`, if this source holds it.
    pub fn doc_of(self, id: MemoryId) -> Option<u32> {
        match self {
            Source::Mem(m) => m.doc_of(id),
            Source::Segment(s) => s.doc_of(id),
        }
    }

    pub fn id(self, doc: u32) -> MemoryId {
        match self {
            Source::Mem(m) => m.memory(doc).id,
            Source::Segment(s) => s.id(doc),
        }
    }

    /// The record, materialised (a segment decodes it from its mapped rows).
    pub fn memory(self, doc: u32) -> Memory {
        match self {
            Source::Mem(m) => m.memory(doc).clone(),
            Source::Segment(s) => s.memory(doc),
        }
    }

    pub fn content_hash(self, doc: u32) -> u64 {
        match self {
            Source::Mem(m) => m.memory(doc).content_hash,
            Source::Segment(s) => s.content_hash(doc),
        }
    }

    pub fn created_at(self, doc: u32) -> i64 {
        match self {
            Source::Mem(m) => m.memory(doc).created_at_ms,
            Source::Segment(s) => s.created_at(doc),
        }
    }

    pub fn session(self, doc: u32) -> &'a str {
        match self {
            Source::Mem(m) => &m.memory(doc).session_id,
            Source::Segment(s) => s.session(doc),
        }
    }

    pub fn text(self, doc: u32) -> &'a str {
        match self {
            Source::Mem(m) => &m.memory(doc).text,
            Source::Segment(s) => s.text(doc),
        }
    }

    pub fn vector(self, doc: u32) -> &'a [f32] {
        match self {
            Source::Mem(m) => m.vector(doc),
            Source::Segment(s) => s.vector(doc),
        }
    }

    /// Whether the doc passes `filter`, without materialising a segment's record.
    pub fn matches(self, doc: u32, filter: &Filter) -> bool {
        match self {
            Source::Mem(m) => filter.matches_memory(m.memory(doc)),
            Source::Segment(s) => s.matches(doc, filter),
        }
    }

    pub fn lexical(self) -> &'a dyn LexicalSource {
        match self {
            Source::Mem(m) => m.lexical(),
            Source::Segment(s) => s.lexical(),
        }
    }

    /// The docs of one session, ascending, where the source keeps such an index (segments);
    /// `None` means "check each doc".
    pub fn session_docs(self, session: &str) -> Option<&'a [u32]> {
        match self {
            Source::Mem(_) => None,
            Source::Segment(s) => Some(s.session_docs(session)),
        }
    }

    /// Top-`k` docs by cosine among those `accept` lets through, best first: an exact scan
    /// of a memtable, or the segment's graph walk or scan (`ef` is the walk's beam).
    pub fn vector_search(
        self,
        query: &[f32],
        k: usize,
        ef: usize,
        session: Option<&str>,
        accept: &dyn Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        match self {
            Source::Mem(m) => m.search(query, k, accept),
            Source::Segment(s) => s.search(query, k, ef, session, accept),
        }
    }

    /// Docs with id below `before` (all when `None`), newest first.
    pub fn docs_desc(self, before: Option<MemoryId>) -> Box<dyn Iterator<Item = u32> + 'a> {
        match self {
            Source::Mem(m) => Box::new(m.ids_desc(before).map(|(_, d)| d)),
            Source::Segment(s) => {
                let rows = s.rows();
                let end = rows.partition_point(|r| before.is_none_or(|b| r.id < b));
                Box::new((0..end as u32).rev())
            }
        }
    }

    /// The newest doc of `session` that `live` accepts.
    fn newest_in_session(self, session: &str, live: &dyn Fn(MemoryId) -> bool) -> Option<u32> {
        match self {
            Source::Mem(m) => m
                .ids_desc(None)
                .find(|&(id, d)| live(id) && m.memory(d).session_id == session)
                .map(|(_, d)| d),
            Source::Segment(s) => s
                .session_docs(session)
                .iter()
                .rev()
                .copied()
                .find(|&d| live(s.id(d))),
        }
    }
}

/// Where a record sits: the index of its source in [`State::sources`] order, and its doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub source: usize,
    pub doc: u32,
}

/// A memtable being sealed, with the WAL lsn it covers; still searched until its segments
/// are installed.
pub(crate) struct Frozen {
    pub memtable: Arc<Memtable>,
    pub lsn: u64,
}

/// Everything reads and searches see; guarded by `Inner::state`.
///
/// `segments` changes only in `Vault::install` (layout.rs), under the manifest lock, so the
/// list searched and the list the manifest stores are the same list.
pub(crate) struct State {
    pub memtable: Memtable,
    pub frozen: Vec<Frozen>,
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
    pub fn new(dim: usize, memory: Arc<MemoryGauge>) -> State {
        State {
            memtable: Memtable::new(dim),
            frozen: Vec::new(),
            segments: Vec::new(),
            deleted: HashSet::new(),
            hashes: HashMap::new(),
            pending: HashSet::new(),
            last_write_ms: None,
            memory,
        }
    }

    /// Every source in a fixed order: the memtable, frozen memtables (oldest first), then
    /// segments. A [`Loc`]'s `source` indexes this order.
    pub fn sources(&self) -> impl Iterator<Item = Source<'_>> + Clone + '_ {
        std::iter::once(Source::Mem(&self.memtable))
            .chain(self.frozen.iter().map(|f| Source::Mem(&f.memtable)))
            .chain(self.segments.iter().map(|s| Source::Segment(s)))
    }

    pub fn source(&self, i: usize) -> Source<'_> {
        let frozen = self.frozen.len();
        if i == 0 {
            Source::Mem(&self.memtable)
        } else if i <= frozen {
            Source::Mem(&self.frozen[i - 1].memtable)
        } else {
            Source::Segment(&self.segments[i - 1 - frozen])
        }
    }

    /// Records in every source, tombstoned ones included.
    /// [`Error::SegmentUnreadable`] if reading one of the segments failed (`mmap.rs`):
    /// whatever was read from it may be zeros and must not be served or acted on.
    pub fn check_segments(&self) -> Result<()> {
        self.segments.iter().try_for_each(|s| s.check())
    }

    pub fn records(&self) -> usize {
        self.sources().map(|s| s.len() as usize).sum()
    }

    pub fn locate(&self, id: MemoryId) -> Option<Loc> {
        self.sources()
            .enumerate()
            .find_map(|(source, s)| s.doc_of(id).map(|doc| Loc { source, doc }))
    }

    pub fn memory(&self, loc: Loc) -> Memory {
        self.source(loc.source).memory(loc.doc)
    }

    pub fn is_live(&self, id: MemoryId) -> bool {
        !self.deleted.contains(&id) && self.locate(id).is_some()
    }

    /// Applies one delete; idempotent, and a no-op for ids that are not present.
    pub fn apply_delete(&mut self, id: MemoryId) -> bool {
        let Some(loc) = self.locate(id) else {
            return false;
        };
        if !self.deleted.insert(id) {
            return false;
        }
        let h = self.source(loc.source).content_hash(loc.doc);
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
    pub fn apply_analyzed(&mut self, records: Vec<StoredMemory>, terms: Vec<TermCounts>) {
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
        let live = |id: MemoryId| !self.deleted.contains(&id);
        self.sources()
            .filter_map(|s| s.newest_in_session(session, &live).map(|d| (s.id(d), s, d)))
            .max_by_key(|&(id, _, _)| id)
            .map(|(_, s, d)| s.text(d).to_owned())
    }

    /// Live ids (of one session, when given), in source order.
    pub fn live_ids(&self, session: Option<&str>) -> Vec<MemoryId> {
        let mut ids = Vec::new();
        for s in self.sources() {
            for doc in 0..s.len() {
                let id = s.id(doc);
                if session.is_none_or(|x| x == s.session(doc)) && !self.deleted.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
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
        self.memory.set(self.heap_bytes());
    }

    /// Estimated heap bytes of the state: O(1 + frozen + segments), see `footprint.rs`.
    fn heap_bytes(&self) -> u64 {
        let memtables = self.unsealed_bytes();
        let segments = self
            .segments
            .iter()
            .map(|s| footprint::segment_bytes(s))
            .sum::<u64>();
        memtables
            + segments
            + footprint::sets_bytes(
                self.hashes.capacity(),
                self.deleted.capacity() + self.pending.capacity(),
            )
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
        (self.records() as u64).saturating_sub(self.deleted.len() as u64)
    }

    /// Heap bytes of the records not yet in a segment (the memtable and frozen ones).
    pub fn unsealed_bytes(&self) -> u64 {
        self.memtable.heap_bytes()
            + self
                .frozen
                .iter()
                .map(|f| f.memtable.heap_bytes())
                .sum::<u64>()
    }

    /// Records not yet in a segment (the memtable and frozen ones).
    pub fn unsealed(&self) -> usize {
        self.memtable.len() + self.frozen.iter().map(|f| f.memtable.len()).sum::<usize>()
    }
}
