//! The serialized lexical index of a sealed segment (`lexical.idx`). Layout, all integers
//! little-endian (the byte-level table is in `docs/format.md`):
//!
//! ```text
//! header    48 B  magic "MRLEXIDX", version u32, n_docs u32, n_terms u32, reserved u32 (0),
//!                 total_len u64, n_postings u64, term_bytes_len u64
//! doc_lens  n_docs × u32                       length of each doc in terms
//! terms     n_terms × {bytes_off u32, bytes_len u32, postings_start u32, df u32}
//!                                              sorted by term bytes, strictly ascending
//! term_bytes term_bytes_len B                  the terms' UTF-8, concatenated in order
//! postings  n_postings × {doc u32, tf u32}     per term, docs strictly ascending
//! footer    crc32 u32                          CRC-32 (IEEE) of every byte before it
//! ```
//!
//! [`LexicalView`] reads this in place (it sits on a read-only mmap): `parse` checks the
//! checksum and then every offset and invariant once, so lookups afterwards can index
//! without further checks and without any path to a panic on hostile bytes.

use super::{DocLens, LexicalError, LexicalSource, Postings, term_counts};
use std::collections::BTreeMap;

/// First eight bytes of every lexical index file.
pub const MAGIC: [u8; 8] = *b"MRLEXIDX";
/// The version this build writes. Version 1: Porter-stemmed analyzer, 32-bit postings.
pub const FORMAT_VERSION: u32 = 1;
/// The oldest version this build reads.
pub const FORMAT_VERSION_OLDEST: u32 = 1;

const HEADER_BYTES: usize = 48;
const FOOTER_BYTES: usize = 4;
const TERM_ENTRY_BYTES: usize = 16;
pub(super) const POSTING_BYTES: usize = 8;

/// Accumulates documents for one segment and serializes them.
#[derive(Debug, Default)]
pub struct LexicalBuilder {
    postings: BTreeMap<String, Vec<(u32, u32)>>,
    doc_lens: Vec<u32>,
}

impl LexicalBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds document `doc`; ids should be dense (gaps become empty documents).
    pub fn add(&mut self, doc: u32, text: &str) {
        let (counts, len) = term_counts(text);
        let slot = doc as usize;
        if self.doc_lens.len() <= slot {
            self.doc_lens.resize(slot + 1, 0);
        }
        self.doc_lens[slot] = self.doc_lens[slot].saturating_add(len);
        for (term, tf) in counts {
            // Duplicates (a doc added twice) are merged in `finish`; searching the list
            // here would make building quadratic in a common term's document count.
            self.postings.entry(term).or_default().push((doc, tf));
        }
    }

    /// Serializes the index (see [`encode`] for its one limit).
    pub fn finish(mut self) -> Vec<u8> {
        for list in self.postings.values_mut() {
            list.sort_unstable();
            list.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    kept.1 = kept.1.saturating_add(later.1);
                }
                same
            });
        }
        encode(
            &self.doc_lens,
            self.postings
                .iter()
                .map(|(term, list)| (term.as_str(), list.as_slice())),
        )
    }
}

/// Serializes a lexical file: `doc_lens` by doc, and `terms` strictly ascending by their
/// bytes, each with its non-empty postings, docs strictly ascending. The one writer of the
/// format: [`LexicalBuilder::finish`] and the seal's build from a memtable's postings
/// (`MemLexical::segment_file`) both go through it. Panics only if a single segment exceeds
/// the format's 32-bit counts (4 G documents, terms, term bytes or postings), far beyond any
/// segment size.
pub(super) fn encode<'t>(
    doc_lens: &[u32],
    terms: impl Iterator<Item = (&'t str, &'t [(u32, u32)])> + Clone,
) -> Vec<u8> {
    let (mut n_terms, mut n_postings, mut term_bytes_len) = (0usize, 0usize, 0usize);
    for (term, list) in terms.clone() {
        n_terms += 1;
        n_postings += list.len();
        term_bytes_len += term.len();
    }
    let fits = |n: usize| u32::try_from(n).is_ok();
    assert!(
        fits(doc_lens.len()) && fits(n_terms) && fits(n_postings) && fits(term_bytes_len),
        "lexical segment exceeds the 32-bit limits of format version {FORMAT_VERSION}"
    );
    let total_len: u64 = doc_lens.iter().map(|&l| u64::from(l)).sum();
    let size = HEADER_BYTES
        + 4 * doc_lens.len()
        + TERM_ENTRY_BYTES * n_terms
        + term_bytes_len
        + POSTING_BYTES * n_postings
        + FOOTER_BYTES;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(doc_lens.len() as u32).to_le_bytes());
    out.extend_from_slice(&(n_terms as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&total_len.to_le_bytes());
    out.extend_from_slice(&(n_postings as u64).to_le_bytes());
    out.extend_from_slice(&(term_bytes_len as u64).to_le_bytes());
    for len in doc_lens {
        out.extend_from_slice(&len.to_le_bytes());
    }
    let (mut bytes_off, mut postings_start) = (0u32, 0u32);
    for (term, list) in terms.clone() {
        for v in [
            bytes_off,
            term.len() as u32,
            postings_start,
            list.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        bytes_off += term.len() as u32;
        postings_start += list.len() as u32;
    }
    for (term, _) in terms.clone() {
        out.extend_from_slice(term.as_bytes());
    }
    for (_, list) in terms {
        for &(doc, tf) in list {
            out.extend_from_slice(&doc.to_le_bytes());
            out.extend_from_slice(&tf.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), size);
    out
}

/// A validated, zero-copy view of a serialized lexical index.
#[derive(Debug, Clone, Copy)]
pub struct LexicalView<'a> {
    n_docs: u32,
    n_terms: u32,
    total_len: u64,
    doc_lens: &'a [u8],
    terms: &'a [u8],
    term_bytes: &'a [u8],
    postings: &'a [u8],
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

impl<'a> LexicalView<'a> {
    /// Validates `bytes` completely (checksum, header, bounds, ordering, postings) and
    /// returns a view on them. Never panics, whatever the input.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, LexicalError> {
        let needed = HEADER_BYTES + FOOTER_BYTES;
        if bytes.len() < needed {
            return Err(LexicalError::TooShort {
                len: bytes.len(),
                needed,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MAGIC {
            return Err(LexicalError::BadMagic { found: magic });
        }
        let version = u32_at(bytes, 8);
        if !(FORMAT_VERSION_OLDEST..=FORMAT_VERSION).contains(&version) {
            return Err(LexicalError::UnsupportedVersion {
                found: version,
                oldest: FORMAT_VERSION_OLDEST,
                newest: FORMAT_VERSION,
            });
        }
        let body_end = bytes.len() - FOOTER_BYTES;
        let expected = u32_at(bytes, body_end);
        let actual = crc32fast::hash(&bytes[..body_end]);
        if expected != actual {
            return Err(LexicalError::ChecksumMismatch { expected, actual });
        }
        let n_docs = u32_at(bytes, 12);
        let n_terms = u32_at(bytes, 16);
        let total_len = u64_at(bytes, 24);
        let n_postings = u64_at(bytes, 32);
        let term_bytes_len = u64_at(bytes, 40);

        // Carve the sections in order, with u64 arithmetic that cannot overflow for any
        // header values (each product is < 2^32 × 16 or a u64 compared before adding).
        let mut cursor = HEADER_BYTES as u64;
        let mut take = |section: &'static str, len: u64| -> Result<&'a [u8], LexicalError> {
            let end = cursor
                .checked_add(len)
                .filter(|&end| end <= body_end as u64)
                .ok_or(LexicalError::SectionOutOfBounds {
                    section,
                    needed: cursor
                        .saturating_add(len)
                        .saturating_add(FOOTER_BYTES as u64),
                    len: bytes.len(),
                })?;
            let slice = &bytes[cursor as usize..end as usize];
            cursor = end;
            Ok(slice)
        };
        let doc_lens = take("doc_lens", 4 * u64::from(n_docs))?;
        let terms = take("terms", TERM_ENTRY_BYTES as u64 * u64::from(n_terms))?;
        let term_bytes = take("term_bytes", term_bytes_len)?;
        let postings = take(
            "postings",
            (POSTING_BYTES as u64).saturating_mul(n_postings),
        )?;
        if cursor != body_end as u64 {
            return Err(LexicalError::BadEntry {
                section: "footer",
                index: cursor,
                reason: "trailing bytes between the postings and the checksum",
            });
        }
        let view = LexicalView {
            n_docs,
            n_terms,
            total_len,
            doc_lens,
            terms,
            term_bytes,
            postings,
        };
        view.validate(n_postings)?;
        Ok(view)
    }

    /// Checks the invariants lookups rely on: contiguous term bytes and postings ranges,
    /// strictly ascending terms and docs, docs in range, lengths summing to `total_len`.
    fn validate(&self, n_postings: u64) -> Result<(), LexicalError> {
        let bad = |section, index: u64, reason| {
            Err(LexicalError::BadEntry {
                section,
                index,
                reason,
            })
        };
        let sum: u64 = (0..self.n_docs).map(|d| u64::from(self.doc_len(d))).sum();
        if sum != self.total_len {
            return bad("header", 0, "total_len differs from the sum of doc_lens");
        }
        let (mut bytes_off, mut postings_start) = (0u64, 0u64);
        let mut previous: Option<&[u8]> = None;
        for i in 0..self.n_terms {
            let (off, len, start, df) = self.entry(i);
            if u64::from(off) != bytes_off || u64::from(start) != postings_start {
                return bad(
                    "terms",
                    u64::from(i),
                    "term bytes or postings are not contiguous",
                );
            }
            bytes_off += u64::from(len);
            postings_start += u64::from(df);
            if bytes_off > self.term_bytes.len() as u64 || postings_start > n_postings {
                return bad("terms", u64::from(i), "term points past its section");
            }
            if df == 0 || len == 0 {
                return bad("terms", u64::from(i), "empty term or posting list");
            }
            let term = &self.term_bytes[off as usize..off as usize + len as usize];
            if std::str::from_utf8(term).is_err() {
                return bad("terms", u64::from(i), "term is not UTF-8");
            }
            if previous.is_some_and(|p| p >= term) {
                return bad("terms", u64::from(i), "terms are not strictly ascending");
            }
            previous = Some(term);
            let mut last_doc: Option<u32> = None;
            for p in u64::from(start)..u64::from(start) + u64::from(df) {
                let (doc, tf) = self.posting(p);
                if doc >= self.n_docs || tf == 0 || last_doc.is_some_and(|l| l >= doc) {
                    return bad("postings", p, "doc out of range, unsorted or tf 0");
                }
                last_doc = Some(doc);
            }
        }
        if bytes_off != self.term_bytes.len() as u64 || postings_start != n_postings {
            return bad(
                "terms",
                u64::from(self.n_terms),
                "sections have unreferenced bytes",
            );
        }
        Ok(())
    }

    /// Number of distinct terms.
    pub fn n_terms(&self) -> u32 {
        self.n_terms
    }

    fn entry(&self, i: u32) -> (u32, u32, u32, u32) {
        let base = i as usize * TERM_ENTRY_BYTES;
        let at = |o| u32_at(self.terms, base + o);
        (at(0), at(4), at(8), at(12))
    }

    fn posting(&self, p: u64) -> (u32, u32) {
        let base = p as usize * POSTING_BYTES;
        (u32_at(self.postings, base), u32_at(self.postings, base + 4))
    }

    fn term(&self, i: u32) -> &'a [u8] {
        let (off, len, _, _) = self.entry(i);
        &self.term_bytes[off as usize..off as usize + len as usize]
    }

    /// Binary search of the sorted term dictionary.
    fn find(&self, term: &str) -> Option<u32> {
        let (mut lo, mut hi) = (0u32, self.n_terms);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.term(mid).cmp(term.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }
}

impl LexicalSource for LexicalView<'_> {
    fn n_docs(&self) -> u32 {
        self.n_docs
    }
    fn total_len(&self) -> u64 {
        self.total_len
    }
    fn doc_freq(&self, term: &str) -> u32 {
        self.find(term).map_or(0, |i| self.entry(i).3)
    }
    fn postings(&self, term: &str) -> Postings<'_> {
        match self.find(term) {
            Some(i) => {
                let (_, _, start, df) = self.entry(i);
                let from = start as usize * POSTING_BYTES;
                let to = from + df as usize * POSTING_BYTES;
                // `parse` checked that every term's postings lie inside the section.
                Postings::Bytes(self.postings.get(from..to).unwrap_or(&[]))
            }
            None => Postings::Bytes(&[]),
        }
    }
    fn doc_len(&self, doc: u32) -> u32 {
        if doc < self.n_docs {
            u32_at(self.doc_lens, doc as usize * 4)
        } else {
            0
        }
    }
    fn doc_lens(&self) -> DocLens<'_> {
        // The section starts 48 bytes into a page-aligned map, so on little-endian hosts
        // it reads as `u32`s in place: scoring looks a length up per posting, and a plain
        // slice index is cheaper than a checked sub-slice and a byte shuffle.
        if cfg!(target_endian = "little")
            && let Ok(words) = bytemuck::try_cast_slice::<u8, u32>(self.doc_lens)
        {
            return DocLens::Words(words);
        }
        DocLens::Bytes(self.doc_lens)
    }
}
