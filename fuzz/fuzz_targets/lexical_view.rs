//! A segment's `lexical.bin` (`engine::lexical::LexicalView`): `parse` must refuse hostile
//! bytes with an error, and whatever it accepts must be safe to query — BM25 over it, doc
//! lengths, postings — with postings that keep the invariants parse promises (docs in range
//! and strictly ascending).
//!
//! Input: `flags` (bit 0: the rest is the whole file; otherwise an edit script applied to a
//! valid index of the template's texts; bit 1: recompute the crc32 footer after, so the
//! damage reaches the validation behind it), then the rest.
#![no_main]

use std::sync::OnceLock;

use engine::lexical::{self, Bm25Query, LexicalBuilder, LexicalSource, LexicalView};
use libfuzzer_sys::fuzz_target;
use memoryrouter_fuzz::edit::{self, Cursor};
use memoryrouter_fuzz::template;

const FLAG_RAW: u8 = 1;
const FLAG_RESEAL: u8 = 2;
/// Docs whose length is read back after a successful parse (bounded: a parse may accept
/// millions of empty docs).
const DOC_LENS_READ_MAX: u32 = 4096;

fn valid_index() -> &'static [u8] {
    static INDEX: OnceLock<Vec<u8>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut b = LexicalBuilder::new();
        for (doc, m) in template::batch(0, 40).iter().enumerate() {
            b.add(doc as u32, &m.text);
        }
        b.finish()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8().unwrap_or(0);
    let rest = c.rest();
    let mut bytes = if flags & FLAG_RAW != 0 {
        rest.to_vec()
    } else {
        let mut b = valid_index().to_vec();
        edit::apply(rest, &mut b);
        b
    };
    if flags & FLAG_RESEAL != 0 {
        edit::reseal_footer(&mut bytes);
    }
    let view = match LexicalView::parse(&bytes) {
        Ok(view) => view,
        Err(e) => {
            assert!(
                flags & FLAG_RAW != 0 || !rest.is_empty(),
                "the builder's own output must parse: {e}"
            );
            return;
        }
    };
    let n = view.n_docs();
    for doc in 0..n.min(DOC_LENS_READ_MAX).saturating_add(1) {
        assert_eq!(view.doc_len(doc), view.doc_lens().get(doc));
    }
    let queries = [
        template::WORDS.join(" "),
        "message about the cat near the lamp".into(),
        String::from_utf8_lossy(rest.get(..rest.len().min(64)).unwrap_or_default()).into_owned(),
    ];
    for query in queries {
        for term in lexical::analyze(&query) {
            let postings = view.postings(&term);
            assert_eq!(postings.len(), view.doc_freq(&term) as usize);
            let mut last = None;
            for i in 0..postings.len() {
                let (doc, tf) = postings.get(i);
                assert!(
                    doc < n && tf > 0,
                    "posting {i} of {term:?} outside what parse checked"
                );
                assert!(
                    last.is_none_or(|l| l < doc),
                    "postings of {term:?} not ascending"
                );
                last = Some(doc);
            }
            if let Some(l) = last {
                assert_eq!(postings.seek(0, l), postings.len() - 1);
                if let Some(past) = l.checked_add(1) {
                    assert_eq!(postings.seek(0, past), postings.len());
                }
            }
        }
        let sources: [&dyn LexicalSource; 2] = [&view, &view];
        for k in [1, 10, engine::SEARCH_K_MAX] {
            let hits = lexical::bm25(&sources[..1], &query, k, &|_, _| true);
            assert!(hits.len() <= k && hits.iter().all(|h| h.1 < n && h.2.is_finite()));
            let _ = lexical::bm25(&sources, &query, k, &|s, d| {
                (s + d as usize).is_multiple_of(2)
            });
        }
        if let Some(plan) = Bm25Query::new(&sources, &query) {
            let _ = plan.source_top_k(1, 5, &|d| d.is_multiple_of(3));
        }
    }
});
