//! Storage-engine benchmarks (criterion, medians), with hnswlib measured on the very same
//! vectors in the same run.
//!
//! Long (~690 lines): one criterion binary for every engine bench, so one build serves
//! a same-run comparison.
//!
//! ```text
//! cargo bench -p benches --bench engine                 # everything
//! cargo bench -p benches --bench engine -- hnsw          # one group
//! ENGINE_BENCH_N=20000 cargo bench -p benches --bench engine   # smaller data (quick look)
//! ENGINE_BENCH_HNSW_QUICK=1 cargo bench -p benches --bench engine -- hnsw   # int8 sweep only
//! cargo bench -p benches --bench engine -- race          # searches racing a compaction
//! ```
//! Generated data (vectors, ground truth, graphs, the 100k-memory vault, the 100k empty
//! vaults) is cached under `target/bench-data/engine/` so only the first run pays for it.
//! Figures and the machine they were taken on: `docs/benchmarks.md`, section "engine".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::Quantized;
use engine::hnsw::{self, Graph, HnswParams};
use engine::{
    BuiltinEmbedder, Durability, Embedder, Engine, EngineConfig, Filter, NewMemory, Role,
    SearchQuery, Vault, VaultOptions,
};

const DIM: usize = 384;
const CLUSTERS: usize = 100;
/// Sentence embeddings have a low intrinsic dimension: they vary along a few dozen
/// directions, not 384. The data lives near a random LATENT-dimensional subspace (clusters
/// in it), plus a little isotropic noise in all 384 coordinates.
const LATENT: usize = 32;
/// Spread of a point around its cluster centre, per latent coordinate (centres have 1).
const CLUSTER_SPREAD: f32 = 0.5;
/// Isotropic noise per output coordinate.
const NOISE: f32 = 0.02;
/// Bump when the data generator or the graph builder changes, so caches are rebuilt.
const DATA_VERSION: &str = "latent32-sym1";
const QUERIES: usize = 1000;
const K: usize = 10;
const RECALL_TARGET: f64 = 0.99;
/// Finer around 32-48, where recall crosses `RECALL_TARGET` on the bench data.
const EF_SWEEP: [usize; 9] = [16, 24, 32, 36, 40, 48, 64, 96, 128];

fn n_vectors() -> usize {
    std::env::var("ENGINE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

fn data_dir() -> PathBuf {
    // CARGO_TARGET_DIR if set, else the workspace's target/.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target
        .join("bench-data/engine")
        .join(format!("n{}", n_vectors()));
    std::fs::create_dir_all(&d).expect("create bench data dir");
    d
}

/// splitmix64: deterministic data without a rand dependency.
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum();
        (s - 2.0) * (3.0f32).sqrt()
    }
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

fn clustered(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(42);
    let centres: Vec<f32> = (0..CLUSTERS * LATENT).map(|_| rng.normal()).collect();
    let projection: Vec<f32> = (0..DIM * LATENT)
        .map(|_| rng.normal() / (LATENT as f32).sqrt())
        .collect();
    let mut rng = Rng(seed);
    let mut out = vec![0f32; n * DIM];
    let mut z = [0f32; LATENT];
    for v in out.chunks_exact_mut(DIM) {
        let c = (rng.next_u64() % CLUSTERS as u64) as usize;
        for (j, zj) in z.iter_mut().enumerate() {
            *zj = centres[c * LATENT + j] + CLUSTER_SPREAD * rng.normal();
        }
        for (i, x) in v.iter_mut().enumerate() {
            let row = &projection[i * LATENT..(i + 1) * LATENT];
            *x = row.iter().zip(&z).map(|(p, zj)| p * zj).sum::<f32>() + NOISE * rng.normal();
        }
        normalize(v);
    }
    out
}

fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write f32 file");
}

fn read_f32(path: &Path) -> Option<Vec<f32>> {
    let b = std::fs::read(path).ok()?;
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn cached_f32(path: &Path, make: impl FnOnce() -> Vec<f32>) -> Vec<f32> {
    if let Some(v) = read_f32(path) {
        return v;
    }
    let v = make();
    write_f32(path, &v);
    v
}

/// Exact top-K ids per query, by brute force (parallel over queries).
fn ground_truth(base: &[f32], queries: &[f32]) -> Vec<Vec<u32>> {
    use rayon::prelude::*;
    queries
        .par_chunks_exact(DIM)
        .map(|q| {
            engine::exact_top_k(base, DIM, q, K, &|_| true)
                .into_iter()
                .map(|r| r.0)
                .collect()
        })
        .collect()
}

struct HnswData {
    base: Vec<f32>,
    queries: Vec<f32>,
    truth: Vec<Vec<u32>>,
    graph_payload: Vec<u8>,
    build_secs: f64,
    dir: PathBuf,
}

fn hnsw_data() -> HnswData {
    let dir = data_dir().join(DATA_VERSION);
    std::fs::create_dir_all(&dir).expect("create vector data dir");
    let n = n_vectors();
    let base = cached_f32(&dir.join("base.f32"), || clustered(n, 1));
    let queries = cached_f32(&dir.join("queries.f32"), || clustered(QUERIES, 2));
    let truth_path = dir.join("truth.u32");
    let truth: Vec<Vec<u32>> = match std::fs::read(&truth_path) {
        Ok(b) => b
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect::<Vec<_>>()
            .chunks_exact(K)
            .map(<[u32]>::to_vec)
            .collect(),
        Err(_) => {
            let t = ground_truth(&base, &queries);
            let bytes: Vec<u8> = t.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(&truth_path, bytes).expect("write truth");
            t
        }
    };
    // Named after the builder and its beam: a cache from another build must not be reused.
    let graph_path = dir.join("graph-own-efc100.payload");
    let build_path = dir.join("graph-own-efc100.build_secs");
    let (graph_payload, build_secs) = match (
        std::fs::read(&graph_path),
        std::fs::read_to_string(&build_path),
    ) {
        (Ok(g), Ok(s)) => (g, s.trim().parse().unwrap_or(0.0)),
        _ => {
            eprintln!("building the HNSW graph of {n} x {DIM} (cached afterwards)...");
            let t = Instant::now();
            let g = hnsw::build(&base, DIM, &HnswParams::default());
            let secs = t.elapsed().as_secs_f64();
            std::fs::write(&graph_path, &g).expect("write graph");
            std::fs::write(&build_path, format!("{secs}")).expect("write build time");
            (g, secs)
        }
    };
    HnswData {
        base,
        queries,
        truth,
        graph_payload,
        build_secs,
        dir,
    }
}

fn recall(found: &[(u32, f32)], truth: &[u32]) -> usize {
    found.iter().filter(|r| truth.contains(&r.0)).count()
}

/// One walk under test: `(query, ef) -> top K`.
type Walk<'a> = &'a dyn Fn(&[f32], usize) -> Vec<(u32, f32)>;

/// Recall@K and per-query p50 latency (µs) of `walk` at one ef, over every query.
fn measure(d: &HnswData, ef: usize, walk: Walk<'_>) -> (f64, f64) {
    let mut hits = 0;
    let mut lat = Vec::with_capacity(QUERIES);
    for (q, t) in d.queries.chunks_exact(DIM).zip(&d.truth) {
        let start = Instant::now();
        let r = walk(q, ef);
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        hits += recall(&r, t);
    }
    lat.sort_by(f64::total_cmp);
    (hits as f64 / (QUERIES * K) as f64, lat[lat.len() / 2])
}

/// Sweeps `EF_SWEEP` (after one warm-up pass), printing each row; returns the rows and the
/// cheapest ef reaching `RECALL_TARGET` (the largest if none does).
fn sweep(label: &str, d: &HnswData, walk: Walk<'_>) -> (Vec<EfRow>, usize) {
    let _ = measure(d, 64, walk);
    let mut chosen = None;
    let mut rows = Vec::new();
    for ef in EF_SWEEP {
        let (r, p50) = measure(d, ef, walk);
        println!("  {label:<9} ef={ef:<4} recall@10={r:.4}  p50={p50:.1} us");
        rows.push((ef, r, p50));
        if r >= RECALL_TARGET && chosen.is_none() {
            chosen = Some(ef);
        }
    }
    (rows, chosen.unwrap_or(*EF_SWEEP.last().unwrap_or(&128)))
}

fn bench_hnsw(c: &mut Criterion) {
    let d = hnsw_data();
    let n = d.base.len() / DIM;
    let graph = Graph::parse(Path::new("graph"), &d.graph_payload, n as u32).expect("graph");
    println!(
        "\nengine HNSW on {n} x {DIM} clustered unit vectors (M=16, ef_construction=100, one thread), build {:.1} s",
        d.build_secs
    );
    let f32_walk =
        |q: &[f32], ef: usize| graph.search(&d.graph_payload, &d.base, DIM, q, K, ef, &|_| true);
    // The walk segments run: int8 codes (built once per segment, on first use), f32 rescoring.
    let quantized = Quantized::new(&d.base, DIM);
    let int8_walk = |q: &[f32], ef: usize| {
        graph.search_quantized(&d.graph_payload, &quantized, &d.base, q, K, ef, &|_| true)
    };
    if std::env::var_os("ENGINE_BENCH_HNSW_QUICK").is_some() {
        // A/B of walk changes on a busy machine: many short int8 sweeps, nothing else.
        sweep("engine-i8", &d, &int8_walk);
        return;
    }
    let (ours, chosen) = sweep("engine", &d, &f32_walk);
    let (ours_q, chosen_q) = sweep("engine-i8", &d, &int8_walk);
    hnswlib_side_by_side(&d, &[("f32 walk", &ours), ("int8 walk", &ours_q)]);

    let mut g = c.benchmark_group("hnsw");
    g.sample_size(30);
    for ef in [64, chosen] {
        bench_walk(
            &mut g,
            &format!("search_k10_{n}x{DIM}_ef{ef}"),
            &d,
            ef,
            &f32_walk,
        );
    }
    bench_walk(
        &mut g,
        &format!("search_i8_k10_{n}x{DIM}_ef{chosen_q}"),
        &d,
        chosen_q,
        &int8_walk,
    );
    // Half the points filtered out during the walk (tombstones or a filter).
    let half_filtered = |q: &[f32], ef: usize| {
        graph.search(&d.graph_payload, &d.base, DIM, q, K, ef, &|x| x % 2 == 0)
    };
    bench_walk(
        &mut g,
        &format!("search_k10_{n}x{DIM}_ef{chosen}_half_filtered"),
        &d,
        chosen,
        &half_filtered,
    );
    g.finish();
}

/// Criterion benchmark of one walk at one ef, cycling through the queries.
fn bench_walk(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    d: &HnswData,
    ef: usize,
    walk: Walk<'_>,
) {
    let i = AtomicUsize::new(0);
    g.bench_function(name, |b| {
        b.iter(|| {
            let k = i.fetch_add(1, Ordering::Relaxed) % QUERIES;
            walk(&d.queries[k * DIM..(k + 1) * DIM], ef)
        })
    });
}

/// One ef setting's measurement: (ef, recall@10, p50 µs).
type EfRow = (usize, f64, f64);

/// Runs `benches/scripts/hnswlib_compare.py` on the same files and prints it side by side
/// with each engine walk in `walks` (labelled).
fn hnswlib_side_by_side(d: &HnswData, walks: &[(&str, &[EfRow])]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hnswlib_compare.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--dir")
        .arg(&d.dir)
        .arg("--dim")
        .arg(DIM.to_string())
        .arg("--k")
        .arg(K.to_string())
        .arg("--ef")
        .arg(
            EF_SWEEP
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!(
                "  hnswlib: script failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("  hnswlib: could not run python3: {e}");
            return;
        }
    };
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for row in &rows {
        if let Some(b) = row.get("build_secs") {
            println!(
                "  hnswlib  build {:.1} s (M=16, ef_construction=200, 1 thread per query)",
                b.as_f64().unwrap_or(0.0)
            );
        }
    }
    for (label, ours) in walks {
        println!("  {label}: side by side (same vectors, same queries, per-query p50):");
        println!(
            "  {:>5} | {:>14} {:>10} | {:>14} {:>10} | ratio",
            "ef", "engine recall", "p50 us", "hnswlib recall", "p50 us"
        );
        for row in rows.iter().filter(|r| r.get("ef").is_some()) {
            let ef = row["ef"].as_u64().unwrap_or(0) as usize;
            let (hr, hp) = (
                row["recall"].as_f64().unwrap_or(0.0),
                row["p50_us"].as_f64().unwrap_or(0.0),
            );
            if let Some((_, r, p)) = ours.iter().find(|o| o.0 == ef) {
                println!(
                    "  {ef:>5} | {r:>14.4} {p:>10.1} | {hr:>14.4} {hp:>10.1} | {:.2}",
                    p / hp.max(1e-9)
                );
            }
        }
        // At equal recall: the cheapest setting of each reaching the target.
        let ours_at = ours.iter().find(|o| o.1 >= RECALL_TARGET);
        let theirs_at = rows
            .iter()
            .filter(|r| {
                r.get("ef").is_some() && r["recall"].as_f64().unwrap_or(0.0) >= RECALL_TARGET
            })
            .min_by(|a, b| {
                a["p50_us"]
                    .as_f64()
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b["p50_us"].as_f64().unwrap_or(f64::MAX))
            });
        if let (Some(o), Some(t)) = (ours_at, theirs_at) {
            let tp = t["p50_us"].as_f64().unwrap_or(0.0);
            println!(
                "  at recall >= {RECALL_TARGET}: engine ef={} p50 {:.1} us, hnswlib ef={} p50 {:.1} us, ratio {:.2}",
                o.0,
                o.2,
                t["ef"],
                tp,
                o.2 / tp.max(1e-9)
            );
        }
    }
}

fn bench_exact(c: &mut Criterion) {
    let base = clustered(10_000, 7);
    let q = clustered(1, 8);
    let mut g = c.benchmark_group("exact");
    g.bench_function("scan_k10_10000x384", |b| {
        b.iter(|| engine::exact_top_k(&base, DIM, &q, K, &|_| true))
    });
    g.finish();
}

/// A deterministic pseudo-English corpus of content words (the analyzer drops stopwords, so
/// those are left out): word ranks follow Zipf's law (s = 1) over ranks 100..20100 of a
/// language, so the commonest word is ~0.2% of tokens, as for real content words. 8-24 words
/// per memory.
fn sentence(rng: &mut Rng) -> String {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ra", "tu", "so", "ve", "di", "pa", "gu", "be", "zo", "fi", "ha",
        "ju", "wen", "tor", "lan", "mar", "sil", "dor", "kin", "vel",
    ];
    const RANK_MIN: f32 = 100.0;
    const RANK_MAX: f32 = 20_100.0;
    let words = 8 + (rng.next_u64() % 17) as usize;
    (0..words)
        .map(|_| {
            // Log-uniform rank = Zipf with exponent 1.
            let w = (RANK_MIN * (RANK_MAX / RANK_MIN).powf(rng.uniform())) as usize;
            format!(
                "{}{}{}",
                SYL[w % 24],
                SYL[(w / 24) % 24],
                SYL[(w / 576) % 24]
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn vault_options(embedder: Arc<dyn Embedder>) -> VaultOptions {
    let mut o = VaultOptions::new(embedder);
    o.background = false;
    o.memtable_records_max = usize::MAX;
    o
}

/// The cached 100k-memory vault: one segment with its HNSW graph, as compaction leaves it.
fn big_vault_dir() -> PathBuf {
    // "-graph": since seals stopped building graphs (compaction does), the vault cached as
    // `vault-zipf1` was one graphless segment, scanned whole by every search.
    let dir = data_dir().join("vault-zipf1-graph");
    if dir.join("READY").exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let n = n_vectors();
    eprintln!("building a {n}-memory vault (cached afterwards)...");
    let v = Vault::open(&dir, vault_options(Arc::new(BuiltinEmbedder::new()))).expect("open");
    let mut rng = Rng(9);
    for chunk in 0..n.div_ceil(1000) {
        let batch: Vec<NewMemory> = (0..1000.min(n - chunk * 1000))
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                NewMemory::new(
                    format!("s{}", (chunk * 1000 + i) / 50),
                    role,
                    sentence(&mut rng),
                    (chunk * 1000 + i) as i64 * 60_000,
                )
            })
            .collect();
        v.ingest(batch).expect("ingest");
    }
    v.seal().expect("seal");
    // Seals write graphless segments; a merge builds the graph, as compaction would.
    v.compact_all().expect("compact");
    drop(v);
    std::fs::write(dir.join("READY"), b"").expect("marker");
    dir
}

fn bench_vault(c: &mut Criterion) {
    let dir = big_vault_dir();
    let mut g = c.benchmark_group("vault");
    g.sample_size(20);
    let embedder: Arc<dyn Embedder> = Arc::new(BuiltinEmbedder::new());
    let n = n_vectors();
    g.bench_function(format!("cold_open_{n}_memories"), |b| {
        b.iter(|| Vault::open(&dir, vault_options(Arc::clone(&embedder))).expect("open"))
    });
    let v = Vault::open(&dir, vault_options(Arc::clone(&embedder))).expect("open");
    let mut rng = Rng(77);
    let queries: Vec<String> = (0..200)
        .map(|_| {
            sentence(&mut rng)
                .split(' ')
                .take(6)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let i = AtomicUsize::new(0);
    g.bench_function(format!("hybrid_search_k10_{n}_memories"), |b| {
        b.iter(|| {
            let k = i.fetch_add(1, Ordering::Relaxed) % queries.len();
            v.search(&SearchQuery {
                text: queries[k].clone(),
                k: 10,
                filter: Filter::default(),
                boost_session: Some("s7".into()),
                now_ms: n as i64 * 60_000,
            })
            .expect("search")
        })
    });
    g.bench_function(
        format!("hybrid_search_k10_{n}_memories_session_filter"),
        |b| {
            b.iter(|| {
                let k = i.fetch_add(1, Ordering::Relaxed) % queries.len();
                v.search(&SearchQuery {
                    text: queries[k].clone(),
                    k: 10,
                    filter: Filter {
                        session_id: Some(format!("s{}", k * 7 % 1000)),
                        ..Filter::default()
                    },
                    boost_session: None,
                    now_ms: 0,
                })
                .expect("search")
            })
        },
    );
    g.finish();
}

/// A search racing a compaction (issue 15), same run: the 100k vault's hybrid search at rest,
/// then beside graph builds (a compaction's CPU: `hnsw_rs`'s parallel insert keeps every core
/// busy) run on the engine's background threads, as compactions are, and beside the same
/// builds at normal priority (where compactions ran before they had threads of their own).
fn bench_race(c: &mut Criterion) {
    let dir = big_vault_dir();
    let v = Vault::open(&dir, vault_options(Arc::new(BuiltinEmbedder::new()))).expect("open");
    let n = n_vectors();
    let mut rng = Rng(78);
    let queries: Vec<String> = (0..200)
        .map(|_| {
            let s = sentence(&mut rng);
            s.split(' ').take(6).collect::<Vec<_>>().join(" ")
        })
        .collect();
    // Small enough that a build stops within a second of being asked to.
    let vectors = Arc::new(clustered(5_000, 3));
    let i = AtomicUsize::new(0);
    let search = |g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
                  name: &str| {
        g.bench_function(name, |b| {
            b.iter(|| {
                let k = i.fetch_add(1, Ordering::Relaxed) % queries.len();
                v.search(&SearchQuery {
                    text: queries[k].clone(),
                    k: 10,
                    filter: Filter::default(),
                    boost_session: Some("s7".into()),
                    now_ms: n as i64 * 60_000,
                })
                .expect("search")
            })
        });
    };
    let mut g = c.benchmark_group("race");
    g.sample_size(30);
    search(&mut g, &format!("hybrid_search_k10_{n}_at_rest"));
    for (label, background) in [("background", true), ("equal_priority", false)] {
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let builds = {
            let (stop, vectors) = (Arc::clone(&stop), Arc::clone(&vectors));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(hnsw::build(&vectors, DIM, &HnswParams::default()));
                }
                let _ = done_tx.send(());
            }
        };
        if background {
            engine::spawn_background(builds);
        } else {
            std::thread::spawn(builds);
        }
        search(
            &mut g,
            &format!("hybrid_search_k10_{n}_beside_{label}_graph_builds"),
        );
        stop.store(true, Ordering::Relaxed);
        done_rx.recv().expect("the builds stop");
    }
    g.finish();
}

/// Durable (fsync) ingest with concurrent writers: each writer sends batches of 16 new
/// memories, like a chat exchange plus a little history; group commit shares the fsyncs.
fn bench_ingest(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingest");
    g.sample_size(10);
    // 8 writers: each write waits for the fsync covering it, so with few writers throughput
    // is bound by fsync latency; 32 shows what group commit does with more clients in flight
    // (the server's ingest requests are such writers).
    for writers in [8, 32] {
        ingest_writers(&mut g, writers);
    }
    g.finish();
}

fn ingest_writers(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    writers: usize,
) {
    const BATCH: usize = 16;
    const BATCHES_PER_WRITER: usize = 8;
    let root = data_dir().join("ingest");
    g.throughput(Throughput::Elements(
        (writers * BATCH * BATCHES_PER_WRITER) as u64,
    ));
    let embedder: Arc<dyn Embedder> = Arc::new(BuiltinEmbedder::new());
    let round = AtomicUsize::new(0);
    g.bench_function(format!("fsync_{writers}_writers_batch{BATCH}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let r = round.fetch_add(1, Ordering::Relaxed);
                let dir = root.join(format!("w{writers}-r{r}"));
                let _ = std::fs::remove_dir_all(&dir);
                let mut o = VaultOptions::new(Arc::clone(&embedder));
                o.durability = Durability::Fsync;
                let v = Arc::new(Vault::open(&dir, o).expect("open"));
                let texts: Vec<Vec<Vec<String>>> = (0..writers)
                    .map(|w| {
                        let mut rng = Rng((r * 1000 + w) as u64);
                        (0..BATCHES_PER_WRITER)
                            .map(|_| (0..BATCH).map(|_| sentence(&mut rng)).collect())
                            .collect()
                    })
                    .collect();
                let start = Instant::now();
                std::thread::scope(|s| {
                    for batches in &texts {
                        let v = Arc::clone(&v);
                        s.spawn(move || {
                            for batch in batches {
                                let msgs = batch
                                    .iter()
                                    .map(|t| NewMemory::new("s", Role::User, t.clone(), 0))
                                    .collect();
                                v.ingest(msgs).expect("ingest");
                            }
                        });
                    }
                });
                total += start.elapsed();
                drop(v);
                let _ = std::fs::remove_dir_all(&dir);
            }
            total
        })
    });
}

/// Engine start-up and first use with 100k vaults on disk.
fn bench_startup(c: &mut Criterion) {
    const VAULTS: usize = 100_000;
    let root = data_dir().join("../many-vaults");
    if !root.join("READY").exists() {
        eprintln!("creating {VAULTS} small vaults (cached afterwards)...");
        let _ = std::fs::remove_dir_all(&root);
        let template = root.join("template");
        {
            let mut o = vault_options(Arc::new(BuiltinEmbedder::new()));
            o.durability = Durability::Buffered;
            let v = Vault::open(&template, o).expect("template");
            v.ingest(vec![NewMemory::new(
                String::new(),
                Role::Note,
                "a small vault",
                0,
            )])
            .expect("ingest");
            v.sync().expect("sync");
        }
        let files: Vec<PathBuf> = walk(&template);
        for i in 0..VAULTS {
            let dir = root.join(format!("key_{i:016}"));
            for f in &files {
                let rel = f.strip_prefix(&template).expect("prefix");
                let to = dir.join(rel);
                std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
                std::fs::copy(f, &to).expect("copy");
            }
        }
        std::fs::remove_dir_all(&template).expect("rm template");
        std::fs::write(root.join("READY"), b"").expect("marker");
    }
    let mut g = c.benchmark_group("startup");
    g.sample_size(10);
    let i = AtomicUsize::new(0);
    g.bench_function(
        format!("engine_open_and_first_vault_{VAULTS}_vaults_on_disk"),
        |b| {
            b.iter(|| {
                let e = Engine::open(EngineConfig::new(root.clone())).expect("engine");
                let k = i.fetch_add(7919, Ordering::Relaxed) % VAULTS;
                let v = e.vault(&format!("key_{k:016}")).expect("vault");
                assert_eq!(v.stats().expect("stats").memories, 1);
            })
        },
    );
    g.finish();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

criterion_group!(
    benches,
    bench_race,
    bench_exact,
    bench_hnsw,
    bench_vault,
    bench_ingest,
    bench_startup
);
criterion_main!(benches);
