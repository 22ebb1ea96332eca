//! In-process import-then-search benchmark (issue 15): what a user meets right after a bulk
//! import, without HTTP in the way.
//!
//! Imports N memories into a fresh vault in batches (background seals and compactions on, as
//! in the server), then searches in a loop on one thread while the vault seals and compacts,
//! and again once it has settled. Prints, for each phase, the search p50/p99, plus the settle
//! time (from the end of the import to the last compaction), the CPU the background work spent
//! (process CPU minus the searching thread's), and the resident memory after settling.
//!
//! ```text
//! cargo run --release -p benches --bin settle -- [--memories 100000] [--batch 500] [--seconds 10] \
//!     [--search-while-settling true] [--merge-residue false]
//! ```
//!
//! `benches/scripts/load.sh` measures the same phases over HTTP; this one isolates the engine
//! (and is quick to iterate on).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use benches::words::{Rng, sentence};
use engine::{
    BuiltinEmbedder, Filter, MEMTABLE_RECORDS_MAX_DEFAULT, NewMemory, Role, SearchQuery, Vault,
    VaultOptions,
};

struct Args {
    memories: usize,
    batch: usize,
    seconds: u64,
    /// Search while the vault settles (the default); `--search-while-settling false` lets
    /// it settle alone, so the settle time and CPU are the background work's own.
    search_while_settling: bool,
    /// After the reopen, merge every segment into one (`Vault::compact_all`) and search
    /// again: what the graphless residue the absorb policy leaves costs a search at rest.
    merge_residue: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        memories: 100_000,
        batch: 500,
        seconds: 10,
        search_while_settling: true,
        merge_residue: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--memories" => args.memories = value.parse()?,
            "--batch" => args.batch = value.parse::<usize>()?.max(1),
            "--seconds" => args.seconds = value.parse()?,
            "--search-while-settling" => args.search_while_settling = value.parse()?,
            "--merge-residue" => args.merge_residue = value.parse()?,
            other => bail!(
                "unknown flag {other} (--memories N --batch N --seconds N --search-while-settling BOOL --merge-residue BOOL)"
            ),
        }
    }
    Ok(args)
}

/// CPU time (user + system) of the whole process (`/proc/self/stat`) or of the calling thread
/// (`/proc/thread-self/stat`).
fn cpu(stat: &str) -> Duration {
    benches::cpu_time(stat).unwrap_or_default()
}
const PROCESS: &str = "/proc/self/stat";
const THREAD: &str = "/proc/thread-self/stat";

/// `VmRSS` and `RssAnon` of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut lat: Vec<Duration>) {
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<22} searches={:<7} p50={:>7.0} µs  p99={:>7.0} µs",
        lat.len(),
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99)),
    );
}

fn query(rng: &mut Rng) -> SearchQuery {
    SearchQuery {
        text: sentence(rng, 8),
        k: 10,
        filter: Filter::default(),
        boost_session: Some("s7".into()),
        now_ms: 0,
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let vault = Vault::open(
        dir.path(),
        VaultOptions::new(Arc::new(BuiltinEmbedder::new())),
    )?;
    println!(
        "machine: {} cores; importing {} memories in batches of {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.memories,
        args.batch
    );
    let started = Instant::now();
    let mut rng = Rng::new(0x5e771e);
    let mut i = 0usize;
    while i < args.memories {
        let last = (i + args.batch).min(args.memories);
        let batch = (i..last)
            .map(|n| {
                let role = if n % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                NewMemory::new(
                    format!("s{}", n / 50),
                    role,
                    format!("{} (#{n})", sentence(&mut rng, 14)),
                    n as i64 * 1000,
                )
            })
            .collect();
        vault.ingest(batch)?;
        i = last;
    }
    let imported = started.elapsed();
    println!(
        "imported in {:.1} s ({:.0} memories/s)",
        imported.as_secs_f64(),
        args.memories as f64 / imported.as_secs_f64()
    );

    // Phase 1: search while the vault seals and compacts.
    let import_end = Instant::now();
    let cpu_at_import_end = cpu(PROCESS);
    let searcher_cpu_before = cpu(THREAD);
    let mut during = Vec::new();
    while vault.is_busy() || vault.stats()?.memtable as usize > MEMTABLE_RECORDS_MAX_DEFAULT {
        if args.search_while_settling {
            let q = query(&mut rng);
            let t = Instant::now();
            vault.search(&q)?;
            during.push(t.elapsed());
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        if import_end.elapsed() > Duration::from_secs(1800) {
            bail!("not settled after 30 minutes");
        }
    }
    let settle = import_end.elapsed();
    // With searches, the search threads' CPU is in the process's too: only the figure of a
    // run that settles alone (`--search-while-settling false`) is the background work's.
    let background_cpu = cpu(PROCESS)
        .saturating_sub(cpu_at_import_end)
        .saturating_sub(cpu(THREAD).saturating_sub(searcher_cpu_before));
    let stats = vault.stats()?;
    println!(
        "settled {:.1} s after the import: {} segments; CPU while settling {:.1} s",
        settle.as_secs_f64(),
        stats.segments,
        background_cpu.as_secs_f64()
    );
    if args.search_while_settling {
        report("search during settle", during);
    }

    // Phase 2: at rest.
    let mut rest = Vec::new();
    let until = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < until {
        let q = query(&mut rng);
        let t = Instant::now();
        vault.search(&q)?;
        rest.push(t.elapsed());
    }
    report("search settled", rest);
    let (rss, anon) = rss_mib();
    println!("resident after settling: {rss:.0} MiB ({anon:.0} MiB anonymous)");
    drop(vault);
    let vault = Vault::open(
        dir.path(),
        VaultOptions::new(Arc::new(BuiltinEmbedder::new())),
    )?;
    let mut reopened = Vec::new();
    let until = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < until {
        let q = query(&mut rng);
        let t = Instant::now();
        vault.search(&q)?;
        reopened.push(t.elapsed());
    }
    // (Resident memory after a reopen in this process says little: the allocator keeps what
    // the import freed. load.sh compares against a restarted server.)
    report("search reopened", reopened);
    if args.merge_residue {
        let before = vault.stats()?.segments;
        let t = Instant::now();
        vault.compact_all()?;
        println!(
            "merged {before} segments into {} in {:.1} s",
            vault.stats()?.segments,
            t.elapsed().as_secs_f64()
        );
        let mut merged = Vec::new();
        let until = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < until {
            let q = query(&mut rng);
            let t = Instant::now();
            vault.search(&q)?;
            merged.push(t.elapsed());
        }
        report("search all merged", merged);
    }
    Ok(())
}
