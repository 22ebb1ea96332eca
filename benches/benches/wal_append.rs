//! WAL group commit against an fsync-per-record baseline, in one run.
//!
//! Every configuration appends 256-byte records in `Durability::Fsync` mode, so each append
//! returns only once an fsync covers it. `baseline` is what a log without group commit costs:
//! one thread, a plain file, `write` + `fdatasync` per record. `wal/N` is `N` threads appending
//! concurrently to one `Wal`.
//!
//! Before criterion's own measurement the bench prints a summary table: appends/s, p50/p99
//! acknowledgement latency, and the ratio to the baseline, from a fixed number of appends per
//! configuration (`SUMMARY_APPENDS_PER_WRITER`). Run:
//! `cargo bench -p benches --bench wal_append`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use wal::{Durability, Wal, WalOptions};

/// Payload size the issue asks for.
const RECORD_BYTES: usize = 256;
/// Writer counts measured.
const WRITERS: [usize; 3] = [1, 8, 64];
/// Appends each writer performs in one summary run (the baseline does the same as one writer).
const SUMMARY_APPENDS_PER_WRITER: usize = 300;
/// Summary runs per configuration; the table shows the median of each figure.
const SUMMARY_RUNS: usize = 3;

/// Per-append acknowledgement latencies and the wall time of one run.
struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
}

/// Baseline: one thread, a plain file, write + fdatasync per record.
fn run_baseline(dir: &Path, appends: usize) -> Run {
    let path = dir.join("baseline.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open baseline file");
    let record = [0x5Au8; RECORD_BYTES];
    let mut latencies = Vec::with_capacity(appends);
    let start = Instant::now();
    for _ in 0..appends {
        let t = Instant::now();
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
        latencies.push(t.elapsed());
    }
    Run {
        wall: start.elapsed(),
        latencies,
    }
}

/// `writers` threads share one `Wal`; `appends` in total, split evenly.
fn run_wal(dir: &Path, writers: usize, appends: usize) -> Run {
    let options = WalOptions {
        durability: Durability::Fsync,
        ..WalOptions::default()
    };
    let (log, _) = Wal::open(dir, options).expect("open wal");
    let log = Arc::new(log);
    let per_writer = appends.div_ceil(writers);
    let barrier = Arc::new(Barrier::new(writers + 1));
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let log = Arc::clone(&log);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let record = [w as u8; RECORD_BYTES];
                let mut latencies = Vec::with_capacity(per_writer);
                barrier.wait();
                for _ in 0..per_writer {
                    let t = Instant::now();
                    log.append(1, &record).expect("append");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(per_writer * writers);
    for t in threads {
        latencies.extend(t.join().expect("writer"));
    }
    Run {
        wall: start.elapsed(),
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Summary {
    name: String,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(name: String, mut run: Run) -> Summary {
    run.latencies.sort_unstable();
    Summary {
        per_sec: run.latencies.len() as f64 / run.wall.as_secs_f64(),
        p50: percentile(&run.latencies, 0.50),
        p99: percentile(&run.latencies, 0.99),
        name,
    }
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs one configuration `SUMMARY_RUNS` times and keeps the median of each figure.
fn summarize_runs(name: String, mut run: impl FnMut(&Path) -> Run) -> Summary {
    let runs: Vec<Summary> = (0..SUMMARY_RUNS)
        .map(|_| {
            let dir = tempfile::tempdir().expect("tempdir");
            summarize(name.clone(), run(dir.path()))
        })
        .collect();
    let secs = |d: Duration| d.as_secs_f64();
    Summary {
        per_sec: median_of(runs.iter().map(|r| r.per_sec).collect()),
        p50: Duration::from_secs_f64(median_of(runs.iter().map(|r| secs(r.p50)).collect())),
        p99: Duration::from_secs_f64(median_of(runs.iter().map(|r| secs(r.p99)).collect())),
        name,
    }
}

/// The summary pass: every configuration, in the same process, baseline first.
fn print_summary() {
    let mut rows = vec![summarize_runs(
        "baseline (write+fsync per record)".into(),
        |dir| run_baseline(dir, SUMMARY_APPENDS_PER_WRITER),
    )];
    for writers in WRITERS {
        rows.push(summarize_runs(format!("wal, {writers} writers"), |dir| {
            run_wal(dir, writers, SUMMARY_APPENDS_PER_WRITER * writers)
        }));
    }
    let base = rows[0].per_sec;
    println!(
        "\nwal_append summary: {RECORD_BYTES}-byte records, fsync mode, {SUMMARY_APPENDS_PER_WRITER} appends per writer, median of {SUMMARY_RUNS} runs"
    );
    println!(
        "{:<36} {:>12} {:>10} {:>10} {:>8}",
        "config", "appends/s", "p50 ms", "p99 ms", "ratio"
    );
    for row in &rows {
        println!(
            "{:<36} {:>12.0} {:>10.3} {:>10.3} {:>7.1}x",
            row.name,
            row.per_sec,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
            row.per_sec / base
        );
    }
    println!();
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group.bench_function("baseline_fsync_per_record", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().expect("tempdir");
            run_baseline(dir.path(), iters as usize).wall
        });
    });
    for writers in WRITERS {
        group.bench_with_input(BenchmarkId::new("wal", writers), &writers, |b, &writers| {
            b.iter_custom(|iters| {
                let dir = tempfile::tempdir().expect("tempdir");
                // At least one append per writer so every thread takes part.
                let appends = (iters as usize).max(writers);
                let run = run_wal(dir.path(), writers, appends);
                // Report the time for `iters` appends even if we rounded up.
                run.wall.mul_f64(iters as f64 / run.latencies.len() as f64)
            });
        });
    }
    group.finish();
}

fn main() {
    print_summary();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
