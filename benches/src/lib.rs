//! Benchmarks, load generators and the LoCoMo quality harness.
//!
//! - `benches/*.rs`: criterion benchmarks (`cargo bench -p benches`).
//! - `src/bin/loadgen.rs`: HTTP load on `prepare`/`ingest` (`benches/scripts/load.sh`).
//! - `src/bin/locomo.rs`: retrieval quality on the LoCoMo dev split.
//! - `scripts/`: side-by-side comparisons with other systems, run in the same session.

pub mod locomo;
pub mod words;

use std::time::Duration;

/// CPU time (user + system) from a `/proc` stat file — `/proc/self/stat`,
/// `/proc/thread-self/stat` or `/proc/PID/stat` — at the kernel's 100 Hz tick; `None` if it
/// cannot be read.
pub fn cpu_time(stat: &str) -> Option<Duration> {
    const TICKS_PER_SEC: u64 = 100;
    let text = std::fs::read_to_string(stat).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')')?.1;
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SEC))
}
