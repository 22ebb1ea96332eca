//! The write path: ingest (dedupe, chunk, analyse and embed outside locks, one WAL append
//! per batch, memtable apply, ack), delete, clear and reset.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::analyzer::{Analysis, TermCounts};
use crate::chunk::chunk_text;
use crate::embedder;
use crate::error::Result;
use crate::limits::{DELETE_IDS_PER_RECORD_MAX, WAL_PAYLOAD_BYTES_MAX};
use crate::record::{
    self, KIND_DELETE, KIND_INGEST, Memory, MemoryId, NewMemory, StoredMemory, content_hash,
};
use crate::segment;

use super::layout::Change;
use super::state::State;
use super::{IngestOutcome, Vault, now_ms};

/// A message ready to reserve: its hash, the message (its text moved into the chunks), and
/// its chunks.
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

/// Chunks analysed and embedded at once by an ingest: large enough that an embedder batches
/// well (a local model groups by tokens within it anyway), small enough that the analyses
/// and texts with context of a group stay a few MiB whatever the body's size.
/// Tests use 8 so their batches span several groups.
const EMBED_GROUP_CHUNKS: usize = if cfg!(test) { 8 } else { 256 };

impl Vault {
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
        //    feeds both the BM25 index and (for the built-in embedder) the vector. Every
        //    chunk of the request is embedded before anything is written; if one group
        //    fails, nothing has been written and the ingest fails.
        //    On the caller's thread, whatever the batch size: rayon's global pool runs seals
        //    and compactions (graph builds that hold its threads for seconds), and a batch
        //    handed to it waited behind them: bulk import over HTTP fell from ~13k to ~1.5k
        //    memories/s.
        //    Memory: a message's whole text is dropped once chunked, and chunks are analysed
        //    and embedded [`EMBED_GROUP_CHUNKS`] at a time, so the analyses and the texts with
        //    context — several times the text — exist for one group, not the whole body
        //    (heaptrack: ~35× the text for one 8 MiB body when they all lived at once).
        let mut heads: Vec<(u64, NewMemory, usize)> = Vec::with_capacity(fresh.len());
        // Each chunk's text and indexing context (chunk i's is chunk i − 1; the message's
        // first, the previous message's).
        let mut pieces: Vec<(String, String)> = Vec::new();
        for (h, mut m, mut context) in fresh {
            let text = std::mem::take(&mut m.text);
            let chunks = chunk_text(&text);
            heads.push((h, m, chunks.len()));
            for c in chunks {
                let next = record::context_of(c).to_string();
                pieces.push((c.to_string(), std::mem::replace(&mut context, next)));
            }
        }
        let embedder = &*inner.options.embedder;
        let mut done: Vec<EmbeddedChunk> = Vec::with_capacity(pieces.len());
        let mut pieces = pieces.into_iter();
        loop {
            let group: Vec<(String, String)> = pieces.by_ref().take(EMBED_GROUP_CHUNKS).collect();
            if group.is_empty() {
                break;
            }
            let indexed: Vec<String> = group
                .iter()
                .map(|(text, context)| record::indexed_text(context, text).into_owned())
                .collect();
            let analyses: Vec<Analysis> = indexed.iter().map(|t| Analysis::of(t)).collect();
            let vectors = {
                let texts: Vec<&str> = indexed.iter().map(String::as_str).collect();
                let own: Vec<&str> = group.iter().map(|(text, _)| text.as_str()).collect();
                let refs: Vec<&Analysis> = analyses.iter().collect();
                embedder::checked(
                    embedder,
                    texts.len(),
                    embedder.embed_memories(&own, &texts, &refs),
                )?
            };
            drop(indexed);
            for (((text, context), analysis), vector) in
                group.into_iter().zip(&analyses).zip(vectors)
            {
                done.push(EmbeddedChunk {
                    terms: analysis.term_counts(),
                    text,
                    context,
                    vector,
                });
            }
        }
        let mut done = done.into_iter();
        let embedded: Vec<Embedded> = heads
            .into_iter()
            .map(|(h, m, n)| (h, m, done.by_ref().take(n).collect()))
            .collect();

        // 3. Reserve: re-check dedupe under the lock, assign ids, mark hashes pending.
        let _gate = inner.gate.read();
        // Again under the gate: a vault given up to another node while this ingest waited
        // here (`Engine::give_up`) must not take the write.
        self.check_open()?;
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
        let unsealed_bytes = state.unsealed_bytes();
        drop(state);
        drop(_gate);
        // 6. Backpressure on memory: unsealed records past their byte bound are sealed by
        //    the ingest that took them there, before it answers, so large bodies arriving
        //    together cannot keep more unsealed memtables than the background seals away
        //    (each 8 MiB body of long messages holds ~70 MiB until sealed). The records are
        //    durable and applied already: a failed seal is logged, and retried by the next.
        let bytes_max = inner
            .options
            .memtable_bytes_max
            .min(crate::limits::MEMTABLE_BYTES_MAX_CEILING) as u64;
        //    Only where seals run by themselves at all (`background`; tests that drive
        //    seals by hand turn it off).
        if !inner.options.background {
            return Ok(IngestOutcome { stored, skipped });
        }
        if unsealed_bytes >= bytes_max {
            if let Err(e) = self.seal() {
                tracing::warn!(
                    vault = %inner.name,
                    error = %e,
                    "seal past the memtable's byte bound failed"
                );
            }
            // Compaction of the new segments, and whatever a concurrent ingest added.
            self.schedule_seal();
        } else if memtable_len >= inner.options.memtable_records_max {
            self.schedule_seal();
        }
        Ok(IngestOutcome { stored, skipped })
    }

    /// Appends `records` as one atomic WAL batch of payloads of at most
    /// [`WAL_PAYLOAD_BYTES_MAX`] bytes (a lone larger record gets a payload of its own).
    fn append_ingest(&self, records: &[StoredMemory]) -> Result<()> {
        let mut payloads = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            let size = record::encoded_len(r);
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
        self.delete_ids(|state| state.live_ids(session_id))
    }

    /// Resolves ids under the state lock, writes their tombstones through the WAL, applies.
    fn delete_ids(&self, resolve: impl FnOnce(&State) -> Vec<MemoryId>) -> Result<u64> {
        let inner = &*self.inner;
        let _serial = inner.delete_lock.lock();
        let _gate = inner.gate.read();
        // Again under the gate (see `ingest`).
        self.check_open()?;
        let ids = {
            let state = inner.state.read();
            let ids = resolve(&state);
            // Ids resolved from a segment whose page read failed (zeros, `mmap.rs`) are
            // not what the vault holds: write no tombstone from them.
            state.check_segments()?;
            ids
        };
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
        let lsn = inner.wal.last_lsn();
        let removed = self.install(Change::Reset { lsn })?;
        inner.wal.checkpoint(lsn)?;
        segment::remove_dirs(&removed)
    }
}

#[cfg(test)]
mod tests {
    use crate::record::{self, NewMemory};
    use crate::vault::Vault;
    use crate::vault::testing::{options, said};

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
                    let vector = v.inner.options.embedder.embed(&indexed).unwrap();
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
