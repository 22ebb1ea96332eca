//! Memory records: the public record types, the content hash used for dedupe, and the byte
//! encoding of the two WAL record kinds (an ingest batch and a delete batch).
//!
//! The WAL payloads are specified byte by byte in `docs/format.md` ("engine: WAL records").
//! Vectors travel in the WAL so recovery never re-embeds (the embedder may be slow or remote).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A memory's id: monotonic per vault, starts at 1, never reused (not even after `reset`).
pub type MemoryId = u64;

/// A small JSON object attached to a memory.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Who said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
    Tool,
    Note,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::System => "system",
            Role::Tool => "tool",
            Role::Note => "note",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "system" => Some(Role::System),
            "tool" => Some(Role::Tool),
            "note" => Some(Role::Note),
            _ => None,
        }
    }

    /// The on-disk code (stable: part of the format).
    pub(crate) fn code(self) -> u8 {
        match self {
            Role::User => 0,
            Role::Assistant => 1,
            Role::System => 2,
            Role::Tool => 3,
            Role::Note => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Role> {
        [
            Role::User,
            Role::Assistant,
            Role::System,
            Role::Tool,
            Role::Note,
        ]
        .get(usize::from(code))
        .copied()
    }
}

/// A message to remember.
#[derive(Clone, Debug)]
pub struct NewMemory {
    /// "" means no session.
    pub session_id: String,
    pub role: Role,
    /// The whole message; the engine chunks long texts.
    pub text: String,
    pub created_at_ms: i64,
    pub model: Option<String>,
    pub metadata: Option<Metadata>,
}

impl NewMemory {
    /// A message with no model and no metadata. Every stored field has its place here or in
    /// a `with_*` method, so a new field is added in one constructor, not in every literal.
    pub fn new(
        session_id: impl Into<String>,
        role: Role,
        text: impl Into<String>,
        created_at_ms: i64,
    ) -> NewMemory {
        NewMemory {
            session_id: session_id.into(),
            role,
            text: text.into(),
            created_at_ms,
            model: None,
            metadata: None,
        }
    }

    /// The model that wrote the message (assistant turns through the proxy).
    pub fn with_model(mut self, model: Option<String>) -> NewMemory {
        self.model = model;
        self
    }

    /// A small JSON object stored with the message and usable in search filters.
    pub fn with_metadata(mut self, metadata: Option<Metadata>) -> NewMemory {
        self.metadata = metadata;
        self
    }
}

/// A stored memory (one chunk of a message).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Memory {
    pub id: MemoryId,
    pub session_id: String,
    pub role: Role,
    /// This record's text (a chunk for long messages).
    pub text: String,
    pub created_at_ms: i64,
    pub model: Option<String>,
    pub metadata: Option<Metadata>,
    /// Hash of (session_id, role, whole message text): the dedupe key.
    pub content_hash: u64,
    /// Chunk index within its message, 0 for short texts.
    pub chunk: u32,
}

/// The dedupe key of a message. FNV-1a 64 over length-prefixed fields: stable across builds
/// and platforms because it is stored on disk. Length prefixes keep ("ab","c") and ("a","bc")
/// apart.
pub fn content_hash(session_id: &str, role: Role, text: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    };
    feed(&(session_id.len() as u64).to_le_bytes());
    feed(session_id.as_bytes());
    feed(&[role.code()]);
    feed(&(text.len() as u64).to_le_bytes());
    feed(text.as_bytes());
    hash
}

/// WAL record kind of an ingest batch.
pub(crate) const KIND_INGEST: u8 = 1;
/// WAL record kind of a delete batch.
pub(crate) const KIND_DELETE: u8 = 2;
/// Version byte leading every engine WAL payload. Version 2 added the indexing context to
/// ingest records; version 1 payloads (no context) are still read.
const PAYLOAD_VERSION: u8 = 2;
/// Oldest payload version this build reads.
const PAYLOAD_VERSION_OLDEST: u8 = 1;
/// Longest indexing context kept, in bytes: one chunk of at most `CHUNK_CHARS_MAX` chars is at
/// most 4 bytes a char. Fits the segment row's u16 context length.
pub(crate) const CONTEXT_BYTES_MAX: usize = 4 * crate::chunk::CHUNK_CHARS_MAX;

const _: () = assert!(CONTEXT_BYTES_MAX <= u16::MAX as usize);

const FLAG_MODEL: u8 = 1;
const FLAG_METADATA: u8 = 2;

/// A memory plus its embedding: what an ingest WAL record carries.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoredMemory {
    pub memory: Memory,
    pub vector: Vec<f32>,
    /// Text indexed (BM25 and embedding) in front of `memory.text` but never shown: the
    /// previous record of the same session. Stored so every later index build (seal,
    /// compaction, reopen) indexes exactly what the memtable did.
    pub context: String,
}

/// What the lexical index and the embedder see for a record: the conversational context
/// (a question asked in the previous turn often holds the words of a later query) then the
/// record's own text. On LoCoMo dev the context lifts the vault's recall@10 from 0.606 to
/// 0.708; repeating the own text to outweigh the context raised MRR (+0.05) but cost
/// recall@10 (−0.016), so it is not done (docs/benchmarks.md).
pub(crate) fn indexed_text<'a>(context: &str, text: &'a str) -> std::borrow::Cow<'a, str> {
    if context.is_empty() {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(format!("{context}\n{text}"))
    }
}

/// The context to store: at most [`CONTEXT_BYTES_MAX`] bytes, keeping the end of `text` (the
/// part next to the record), cut at a char boundary.
pub(crate) fn context_of(text: &str) -> &str {
    let mut start = text.len().saturating_sub(CONTEXT_BYTES_MAX);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Bytes of a payload's header: version byte and record count.
const PAYLOAD_HEADER_BYTES: usize = 1 + 4;
/// Bytes of a record's fixed fields: id, created_at, content hash (8 each), chunk (4), role
/// and flags (1 each).
const RECORD_FIXED_BYTES: usize = 8 + 8 + 8 + 4 + 1 + 1;
/// Bytes of the length prefix of each variable field (strings, metadata, vector).
const LEN_PREFIX_BYTES: usize = 4;

/// Exact bytes `r` takes in an ingest payload (`encode_ingest` checks it): the WAL batch
/// split sizes its payloads with it, so every field counts here, metadata included.
pub(crate) fn encoded_len(r: &StoredMemory) -> usize {
    let m = &r.memory;
    let string = |s: &str| LEN_PREFIX_BYTES + s.len();
    RECORD_FIXED_BYTES
        + string(&m.session_id)
        + string(&m.text)
        + string(&r.context)
        + m.model.as_deref().map_or(0, string)
        + m.metadata
            .as_ref()
            .map_or(0, |md| LEN_PREFIX_BYTES + json_len(md))
        + LEN_PREFIX_BYTES
        + r.vector.len() * 4
}

/// Length of `md` serialised as JSON, counted without building the bytes.
fn json_len(md: &Metadata) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A map of JSON values always serialises; on the impossible error the count is a lower
    // bound, which only makes a payload a little larger than planned.
    let _ = serde_json::to_writer(&mut count, md);
    count.0
}

/// Appends the encoding of `records` as one ingest payload.
pub(crate) fn encode_ingest(records: &[StoredMemory]) -> Vec<u8> {
    let len = PAYLOAD_HEADER_BYTES + records.iter().map(encoded_len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.push(PAYLOAD_VERSION);
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        let m = &r.memory;
        let metadata = m
            .metadata
            .as_ref()
            .map(|md| serde_json::to_vec(md).unwrap_or_default());
        out.extend_from_slice(&m.id.to_le_bytes());
        out.extend_from_slice(&m.created_at_ms.to_le_bytes());
        out.extend_from_slice(&m.content_hash.to_le_bytes());
        out.extend_from_slice(&m.chunk.to_le_bytes());
        out.push(m.role.code());
        let mut flags = 0;
        if m.model.is_some() {
            flags |= FLAG_MODEL;
        }
        if metadata.is_some() {
            flags |= FLAG_METADATA;
        }
        out.push(flags);
        put_bytes(&mut out, m.session_id.as_bytes());
        put_bytes(&mut out, m.text.as_bytes());
        put_bytes(&mut out, r.context.as_bytes());
        if let Some(model) = &m.model {
            put_bytes(&mut out, model.as_bytes());
        }
        if let Some(md) = &metadata {
            put_bytes(&mut out, md);
        }
        out.extend_from_slice(&(r.vector.len() as u32).to_le_bytes());
        for x in &r.vector {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    debug_assert_eq!(out.len(), len, "encoded_len disagrees with encode_ingest");
    out
}

/// Decodes an ingest payload.
pub(crate) fn decode_ingest(payload: &[u8]) -> Result<Vec<StoredMemory>> {
    let mut r = Reader::new(payload);
    let version = r.version()?;
    let count = r.u32()? as usize;
    let mut out = Vec::with_capacity(count.min(payload.len() / 32));
    for _ in 0..count {
        let id = r.u64()?;
        let created_at_ms = r.u64()? as i64;
        let content_hash = r.u64()?;
        let chunk = r.u32()?;
        let role = Role::from_code(r.u8()?).ok_or_else(|| bad("unknown role code"))?;
        let flags = r.u8()?;
        let session_id = r.string()?;
        let text = r.string()?;
        let context = if version >= 2 {
            r.string()?
        } else {
            String::new()
        };
        let model = if flags & FLAG_MODEL != 0 {
            Some(r.string()?)
        } else {
            None
        };
        let metadata = if flags & FLAG_METADATA != 0 {
            Some(parse_metadata(r.bytes()?)?)
        } else {
            None
        };
        let dim = r.u32()? as usize;
        let raw = r.take(dim.checked_mul(4).ok_or_else(|| bad("dim overflow"))?)?;
        let vector = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push(StoredMemory {
            memory: Memory {
                id,
                session_id,
                role,
                text,
                created_at_ms,
                model,
                metadata,
                content_hash,
                chunk,
            },
            vector,
            context,
        });
    }
    r.end()?;
    Ok(out)
}

/// Encodes a delete payload.
pub(crate) fn encode_delete(ids: &[MemoryId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + ids.len() * 8);
    out.push(PAYLOAD_VERSION);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Decodes a delete payload.
pub(crate) fn decode_delete(payload: &[u8]) -> Result<Vec<MemoryId>> {
    let mut r = Reader::new(payload);
    r.version()?;
    let count = r.u32()? as usize;
    let mut ids = Vec::with_capacity(count.min(payload.len() / 8));
    for _ in 0..count {
        ids.push(r.u64()?);
    }
    r.end()?;
    Ok(ids)
}

pub(crate) fn parse_metadata(bytes: &[u8]) -> Result<Metadata> {
    serde_json::from_slice(bytes).map_err(|e| bad(&format!("metadata is not a JSON object: {e}")))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn bad(reason: &str) -> Error {
    Error::corrupt("<wal record>", reason)
}

/// A bounds-checked little-endian cursor: a corrupt payload is an error, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| bad("payload ends early"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }

    fn version(&mut self) -> Result<u8> {
        match self.u8()? {
            v @ PAYLOAD_VERSION_OLDEST..=PAYLOAD_VERSION => Ok(v),
            v => Err(bad(&format!(
                "unknown payload version {v} (this build reads {PAYLOAD_VERSION_OLDEST}..={PAYLOAD_VERSION})"
            ))),
        }
    }

    fn end(&self) -> Result<()> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(bad("trailing bytes after payload"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, metadata: bool) -> StoredMemory {
        let mut md = Metadata::new();
        md.insert("k".into(), serde_json::json!(1));
        StoredMemory {
            memory: Memory {
                id,
                session_id: "s".into(),
                role: Role::Tool,
                text: "héllo".into(),
                created_at_ms: -5,
                model: metadata.then(|| "m".to_string()),
                metadata: metadata.then_some(md),
                content_hash: content_hash("s", Role::Tool, "héllo"),
                chunk: 2,
            },
            vector: vec![0.5, -0.25, 1.0],
            context: if metadata {
                "prev ü".into()
            } else {
                String::new()
            },
        }
    }

    #[test]
    fn ingest_round_trips() {
        let recs = vec![sample(1, true), sample(2, false)];
        let bytes = encode_ingest(&recs);
        assert_eq!(decode_ingest(&bytes).unwrap(), recs);
        for cut in 0..bytes.len() {
            assert!(decode_ingest(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A version 1 payload (written before contexts existed) still decodes, with no context.
    #[test]
    fn ingest_v1_still_decodes() {
        let rec = sample(4, true);
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&1u32.to_le_bytes());
        let m = &rec.memory;
        for x in [m.id, m.created_at_ms as u64, m.content_hash] {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        v1.extend_from_slice(&m.chunk.to_le_bytes());
        v1.extend_from_slice(&[m.role.code(), FLAG_MODEL | FLAG_METADATA]);
        put_bytes(&mut v1, b"s");
        put_bytes(&mut v1, "héllo".as_bytes());
        put_bytes(&mut v1, b"m");
        put_bytes(&mut v1, br#"{"k":1}"#);
        v1.extend_from_slice(&3u32.to_le_bytes());
        for x in &rec.vector {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        let expected = StoredMemory {
            context: String::new(),
            ..rec
        };
        assert_eq!(decode_ingest(&v1).unwrap(), vec![expected]);
        v1[0] = 3;
        assert!(decode_ingest(&v1).is_err(), "a future version is refused");
    }

    #[test]
    fn context_is_bounded_at_a_char_boundary() {
        let long = "é".repeat(CONTEXT_BYTES_MAX);
        let c = context_of(&long);
        assert!(c.len() <= CONTEXT_BYTES_MAX && c.len() >= CONTEXT_BYTES_MAX - 1);
        assert_eq!(context_of("short"), "short");
        assert_eq!(indexed_text("", "t"), "t");
        assert_eq!(indexed_text("c", "t"), "c\nt");
    }

    #[test]
    fn delete_round_trips() {
        let bytes = encode_delete(&[3, 9, u64::MAX]);
        assert_eq!(decode_delete(&bytes).unwrap(), vec![3, 9, u64::MAX]);
        assert!(decode_delete(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn hash_separates_fields() {
        let a = content_hash("ab", Role::User, "c");
        assert_ne!(a, content_hash("a", Role::User, "bc"));
        assert_ne!(a, content_hash("ab", Role::Assistant, "c"));
        assert_eq!(a, content_hash("ab", Role::User, "c"));
        for r in [
            Role::User,
            Role::Assistant,
            Role::System,
            Role::Tool,
            Role::Note,
        ] {
            assert_eq!(Role::from_code(r.code()), Some(r));
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
    }
}
