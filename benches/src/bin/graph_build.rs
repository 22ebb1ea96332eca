//! HNSW graph build: `hnsw_rs` (parallel, what builds used before) against our own
//! single-threaded builder (`engine/src/hnsw/insert.rs`, what builds and merges use now:
//! `single` on int8 codes, `f32` on the f32 vectors as before issue 15's second round),
//! and a merge's extend (a base graph over 3/4 of the vectors, the last 1/4 inserted),
//! on the engine bench's vectors: wall time, process CPU time, and recall@10 against the
//! exact neighbours at a few search beams, for the f32 walk and the int8 walk (what vault
//! searches use), printed `f32/int8`. hnswlib on the same vectors:
//! `benches/scripts/hnswlib_compare.py --dir DIR` (delete its cached index to rebuild).
//!
//! ```text
//! cargo bench -p benches --bench engine -- hnsw     # once: writes the vectors and truth
//! cargo run --release -p benches --bin graph_build -- --dir target/bench-data/engine/n100000/latent32-sym1 \
//!     [--m 16] [--ef-construction 100] [--builders rs,single,f32,extend] [--n N]
//! cargo run --release -p benches --bin graph_build -- --vault-texts 100000 [...]
//! ```
//!
//! `--vault-texts N` builds on a vault's own vectors instead: the built-in embedder's
//! vectors of the `settle` bench's N memory texts, 200 query sentences, exact truth.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use engine::Quantized;
use engine::hnsw::{self, BuildSpace, Graph, HnswParams};

const DIM: usize = 384;
const K: usize = 10;
const EFS: [usize; 5] = [24, 32, 48, 64, 96];

fn read_u32s(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_f32s(path: &Path) -> Result<Vec<f32>> {
    Ok(read_u32s(path)?.into_iter().map(f32::from_bits).collect())
}

/// CPU time (user + system) of the whole process.
fn process_cpu() -> Duration {
    benches::cpu_time("/proc/self/stat").unwrap_or_default()
}

/// The built-in embedder's vectors of the `settle` bench's memory texts (same generator,
/// same seed), 200 query sentences, and each query's exact top K.
fn vault_vectors(n: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
    use benches::words::{Rng, sentence};
    use engine::{BuiltinEmbedder, Embedder};
    let embedder = BuiltinEmbedder::new();
    if embedder.dim() != DIM {
        bail!(
            "the built-in embedder's vectors have {} dimensions, not {DIM}",
            embedder.dim()
        );
    }
    let mut rng = Rng::new(0x5e771e);
    let texts: Vec<String> = (0..n)
        .map(|i| format!("{} (#{i})", sentence(&mut rng, 14)))
        .collect();
    let mut base = Vec::with_capacity(n * DIM);
    for chunk in texts.chunks(1000) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        base.extend(embedder.embed_batch(&refs)?.into_iter().flatten());
    }
    let questions: Vec<String> = (0..200).map(|_| sentence(&mut rng, 8)).collect();
    let refs: Vec<&str> = questions.iter().map(String::as_str).collect();
    let queries: Vec<f32> = embedder
        .embed_query_batch(&refs)?
        .into_iter()
        .flatten()
        .collect();
    let truth = exact_truth(&base, &queries);
    Ok((base, queries, truth))
}

/// The exact top `K` of each query in `base`, concatenated.
fn exact_truth(base: &[f32], queries: &[f32]) -> Vec<u32> {
    queries
        .chunks_exact(DIM)
        .flat_map(|q| {
            engine::exact_top_k(base, DIM, q, K, &|_| true)
                .into_iter()
                .map(|r| r.0)
        })
        .collect()
}

fn main() -> Result<()> {
    let mut dir = None;
    let mut vault_texts = 0usize;
    let mut params = HnswParams::default();
    let mut builders = "rs,single,extend".to_string();
    let mut limit = usize::MAX;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--m" => params.m = value.parse()?,
            "--ef-construction" => params.ef_construction = value.parse()?,
            "--builders" => builders = value,
            "--n" => limit = value.parse()?,
            "--vault-texts" => vault_texts = value.parse()?,
            other => bail!(
                "unknown flag {other} (--dir D | --vault-texts N, --m M --ef-construction E --builders rs,single,f32,extend --n N)"
            ),
        }
    }
    let (mut base, mut queries, mut truth) = if vault_texts > 0 {
        vault_vectors(vault_texts)?
    } else {
        let dir = dir.context("--dir or --vault-texts is required")?;
        (
            read_f32s(&dir.join("base.f32"))?,
            read_f32s(&dir.join("queries.f32"))?,
            read_u32s(&dir.join("truth.u32"))?,
        )
    };
    if limit < base.len() / DIM {
        // A prefix of the vectors: 200 queries, their exact neighbours recomputed.
        base.truncate(limit * DIM);
        queries.truncate(200 * DIM);
        truth = exact_truth(&base, &queries);
    }
    let n = base.len() / DIM;
    println!(
        "{n} x {DIM}, M={} ef_construction={}, {} cores",
        params.m,
        params.ef_construction,
        std::thread::available_parallelism().map_or(0, |c| c.get())
    );
    let codes = Quantized::new(&base, DIM);
    for builder in builders.split(',') {
        let (cpu0, t0) = (process_cpu(), Instant::now());
        let payload = match builder {
            "rs" => hnsw::build_hnsw_rs(&base, DIM, &params),
            "single" => hnsw::build(&base, DIM, &params),
            "f32" => hnsw::build_in(&base, DIM, &params, BuildSpace::F32),
            "extend" => {
                // Base graph over the first 3/4 (not timed), then the merge.
                let keep = n * 3 / 4;
                let first = hnsw::build(&base[..keep * DIM], DIM, &params);
                let g = Graph::parse(Path::new("base"), &first, keep as u32)?;
                let docs: Vec<u32> = (0..keep as u32).collect();
                let (cpu1, t1) = (process_cpu(), Instant::now());
                let p = hnsw::extend(&base, DIM, &params, &g, &first, &docs);
                println!(
                    "  extend inserts {} into a graph of {keep}: {:.1} s wall, {:.1} CPU-s",
                    n - keep,
                    t1.elapsed().as_secs_f64(),
                    (process_cpu() - cpu1).as_secs_f64()
                );
                p
            }
            other => bail!("unknown builder {other}"),
        };
        let (wall, cpu) = (t0.elapsed(), process_cpu() - cpu0);
        let graph = Graph::parse(Path::new(builder), &payload, n as u32)?;
        print!(
            "{builder:<7} build {:>6.1} s wall {:>6.1} CPU-s ",
            wall.as_secs_f64(),
            cpu.as_secs_f64()
        );
        // Recall by id, and "by score": a hit whose cosine reaches the exact k-th best's.
        // The two differ where many docs tie with the k-th (the built-in embedder's hashed
        // bag-of-words vectors of texts drawn from one small vocabulary): any of the tied
        // docs is as right as the one the exact scan happened to keep.
        let kth: Vec<f32> = queries
            .chunks_exact(DIM)
            .zip(truth.chunks_exact(K))
            .map(|(q, t)| {
                let s = t[K - 1] as usize * DIM;
                engine::dot(q, &base[s..s + DIM])
            })
            .collect();
        for ef in EFS {
            let (mut hits, mut hits_q, mut tied, mut tied_q) = (0, 0, 0, 0);
            for ((q, t), &kth) in queries
                .chunks_exact(DIM)
                .zip(truth.chunks_exact(K))
                .zip(&kth)
            {
                let reaches = |r: &&(u32, f32)| r.1 >= kth - 1e-5;
                let found = graph.search(&payload, &base, DIM, q, K, ef, &|_| true);
                hits += found.iter().filter(|r| t.contains(&r.0)).count();
                tied += found.iter().filter(reaches).count();
                let found = graph.search_quantized(&payload, &codes, &base, q, K, ef, &|_| true);
                hits_q += found.iter().filter(|r| t.contains(&r.0)).count();
                tied_q += found.iter().filter(reaches).count();
            }
            let total = truth.len().max(1) as f64;
            print!(
                " ef{ef}={:.4}/{:.4} (by score {:.4}/{:.4})",
                hits as f64 / total,
                hits_q as f64 / total,
                tied as f64 / total,
                tied_q as f64 / total
            );
        }
        println!();
    }
    Ok(())
}
