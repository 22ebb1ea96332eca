//! A segment's HNSW `graph.bin` payload (`engine::hnsw::Graph`): `parse` must refuse a
//! layout it cannot walk safely, and on whatever it accepts both walks (`search` on f32
//! vectors, `search_quantized` on int8 codes) must return at most k accepted docs in range —
//! never index out of bounds, loop, or overflow, whatever the neighbour lists say.
//!
//! Input: `flags` (bit 0: the rest is the whole payload; otherwise an edit script applied to
//! the payload of a real graph of [`GRAPH_DOCS`] vectors), then the rest. The doc count
//! handed to `parse` is the payload's own first word, as a segment would pass its record
//! count, so edits there test the count check too.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use engine::Quantized;
use engine::hnsw::{self, Graph, HnswParams};
use libfuzzer_sys::fuzz_target;
use memoryrouter_fuzz::edit::{self, Cursor};

const DIM: usize = 8;
/// Docs in the template graph.
const GRAPH_DOCS: usize = 64;
/// Docs the test vectors cover; a parsed graph with more is not searched (parse already
/// bounds n by the payload size, so this is only reached by large raw inputs).
const DOCS_MAX: usize = 4096;
const FLAG_RAW: u8 = 1;

/// Deterministic unit vectors (xorshift), and the template graph over the first
/// `GRAPH_DOCS`, built on one thread so it is the same in every process.
fn fixture() -> &'static (Vec<f32>, Vec<u8>) {
    static FIXTURE: OnceLock<(Vec<f32>, Vec<u8>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut vectors = Vec::with_capacity(DOCS_MAX * DIM);
        for _ in 0..DOCS_MAX {
            let v: Vec<f32> = (0..DIM)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            vectors.extend(v.iter().map(|x| x / norm));
        }
        let params = HnswParams {
            m: 4,
            ef_construction: 32,
            ef_search: 16,
            min_records: 1,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("one-thread pool");
        let payload = pool.install(|| hnsw::build(&vectors[..GRAPH_DOCS * DIM], DIM, &params));
        (vectors, payload)
    })
}

fuzz_target!(|data: &[u8]| {
    let (vectors, template) = fixture();
    let mut c = Cursor::new(data);
    let flags = c.u8().unwrap_or(0);
    let rest = c.rest();
    let bytes = if flags & FLAG_RAW != 0 {
        rest.to_vec()
    } else {
        let mut b = template.clone();
        edit::apply(rest, &mut b);
        b
    };
    // A mapped payload is 4-byte aligned (it starts 64 bytes into a page-aligned map); give
    // parse the same, so it is the layout checks that get exercised, not the alignment one.
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
    let payload = &bytemuck::cast_slice::<u32, u8>(&words)[..bytes.len()];
    let n = words.first().copied().unwrap_or(0);
    let graph = match Graph::parse(Path::new("graph.bin"), payload, n) {
        Ok(g) => g,
        Err(e) => {
            assert!(
                flags & FLAG_RAW != 0 || !rest.is_empty(),
                "hnsw::build's own payload must parse: {e}"
            );
            return;
        }
    };
    if n as usize > DOCS_MAX {
        return;
    }
    let vectors = &vectors[..n as usize * DIM];
    let quantized = Quantized::new(vectors, DIM);
    let queries = [&fixture().0[..DIM], &fixture().0[DOCS_MAX * DIM - DIM..]];
    let filters: [&dyn Fn(u32) -> bool; 3] = [&|_| true, &|d| d.is_multiple_of(2), &|_| false];
    for q in queries {
        for (k, ef) in [(1, 1), (10, 16), (engine::SEARCH_K_MAX, 200)] {
            for accept in filters {
                let hits = graph.search(payload, vectors, DIM, q, k, ef, accept);
                let hits_q = graph.search_quantized(payload, &quantized, vectors, q, k, ef, accept);
                for h in [&hits, &hits_q] {
                    assert!(h.len() <= k);
                    assert!(h.iter().all(|&(d, _)| d < n && accept(d)));
                }
            }
        }
    }
});
