//! Placement simulation for cluster mode (issue 18, `docs/scaling.md`): many vaults with a
//! heavy-tailed size distribution placed over N nodes by the placement the server uses
//! (rendezvous hashing over node ids, `server/src/cluster/node.rs`), then:
//!
//! - **balance**: vaults and bytes per node, max/mean and min/mean;
//! - **node added**: vaults and bytes that change owner (rendezvous moves only the vaults
//!   the new node wins; the ideal is 1/(N+1) of the data);
//! - **node removed (drained)**: bytes that must leave it, and the time to copy them at a
//!   given disk bandwidth (the drained node's disk reads everything it sends; its vaults go
//!   to every other node, so the targets are not the bottleneck).
//!
//! Sizes: memories per vault ~ lognormal (median 200, σ = 1.6, so the mean is ~720 and the
//! largest of 10M vaults hold millions), capped at 5M; 2 KiB on disk per memory (a 384-dim
//! f32 vector, its int8 copy, text, lexical postings). Deterministic (fixed seed).
//!
//! ```text
//! cargo run -p benches --release --bin placement_sim -- [VAULTS] [DISK_MB_PER_S]
//! ```

use std::time::Instant;

const VAULTS_DEFAULT: usize = 10_000_000;
const DISK_MB_PER_S_DEFAULT: f64 = 200.0;
const NODE_COUNTS: [usize; 6] = [3, 4, 8, 16, 32, 64];
const MEMORY_BYTES: f64 = 2048.0;
const MEMORIES_MEDIAN: f64 = 200.0;
const MEMORIES_SIGMA: f64 = 1.6;
const MEMORIES_MAX: f64 = 5_000_000.0;

/// splitmix64: a fast, well-mixed 64-bit hash/PRNG step.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform in (0, 1) from a hash.
fn unit(x: u64) -> f64 {
    ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Memories in vault `v`: lognormal by Box-Muller from two hashes.
fn memories(v: u64) -> f64 {
    let (a, b) = (unit(mix(v ^ 0x5151)), unit(mix(v ^ 0xa7a7)));
    let normal = (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos();
    (MEMORIES_MEDIAN * (MEMORIES_SIGMA * normal).exp())
        .clamp(1.0, MEMORIES_MAX)
        .round()
}

/// Rendezvous: the node with the highest score for the vault. Node ids are stable
/// integers (a node keeps its id for life), so adding node N leaves the others' scores alone.
fn owner(vault_hash: u64, nodes: &[u64]) -> u64 {
    let mut best = (0u64, 0u64);
    for &node in nodes {
        let score = mix(vault_hash ^ mix(node));
        if score >= best.0 {
            best = (score, node);
        }
    }
    best.1
}

struct Stats {
    max_over_mean: f64,
    min_over_mean: f64,
}

fn stats(per_node: &[f64]) -> Stats {
    let mean = per_node.iter().sum::<f64>() / per_node.len() as f64;
    let max = per_node.iter().copied().fold(f64::MIN, f64::max);
    let min = per_node.iter().copied().fold(f64::MAX, f64::min);
    Stats {
        max_over_mean: max / mean,
        min_over_mean: min / mean,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let vaults: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(VAULTS_DEFAULT);
    let disk_mb_per_s: f64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DISK_MB_PER_S_DEFAULT);
    let started = Instant::now();
    let sizes: Vec<f64> = (0..vaults as u64)
        .map(|v| memories(v) * MEMORY_BYTES)
        .collect();
    let hashes: Vec<u64> = (0..vaults as u64).map(|v| mix(v ^ 0x1234_5678)).collect();
    let total: f64 = sizes.iter().sum();
    let mut sorted = sizes.clone();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize] / MEMORY_BYTES;
    println!(
        "{vaults} vaults, {:.1} TiB; memories per vault p50 {:.0}, p99 {:.0}, p99.99 {:.0}, max {:.0}; \
         largest vault {:.2} GiB; disk {disk_mb_per_s} MB/s",
        total / (1u64 << 40) as f64,
        at(0.5),
        at(0.99),
        at(0.9999),
        at(1.0),
        sorted[sorted.len() - 1] / (1u64 << 30) as f64
    );
    println!();
    println!(
        "| nodes | vaults max/mean | bytes max/mean | bytes min/mean | add a node: vaults moved | bytes moved (ideal) | drain one node: TiB | drain time |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &NODE_COUNTS {
        let nodes: Vec<u64> = (1..=n as u64).collect();
        let grown: Vec<u64> = (1..=n as u64 + 1).collect();
        let mut count = vec![0f64; n + 1];
        let mut bytes = vec![0f64; n + 1];
        let (mut moved_vaults, mut moved_bytes) = (0usize, 0f64);
        for (hash, size) in hashes.iter().zip(&sizes) {
            let before = owner(*hash, &nodes);
            count[before as usize] += 1.0;
            bytes[before as usize] += size;
            if owner(*hash, &grown) != before {
                moved_vaults += 1;
                moved_bytes += size;
            }
        }
        let (count, bytes) = (&count[1..], &bytes[1..]);
        let (c, b) = (stats(count), stats(bytes));
        // Draining the most loaded node is the slowest case.
        let drained = bytes.iter().copied().fold(f64::MIN, f64::max);
        let drain_secs = drained / (disk_mb_per_s * 1e6);
        println!(
            "| {n} | {:.3} | {:.3} | {:.3} | {:.2} % | {:.2} % ({:.2} %) | {:.2} | {:.0} min |",
            c.max_over_mean,
            b.max_over_mean,
            b.min_over_mean,
            100.0 * moved_vaults as f64 / vaults as f64,
            100.0 * moved_bytes / total,
            100.0 / (n + 1) as f64,
            drained / (1u64 << 40) as f64,
            drain_secs / 60.0
        );
    }
    eprintln!("simulated in {:.1} s", started.elapsed().as_secs_f64());
}
