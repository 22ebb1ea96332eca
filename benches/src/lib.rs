//! Benchmarks, load generators and the LoCoMo quality harness.
//!
//! - `benches/*.rs`: criterion benchmarks (`cargo bench -p benches`).
//! - `src/bin/loadgen.rs`: HTTP load on `prepare`/`ingest` (`benches/scripts/load.sh`).
//! - `src/bin/locomo.rs`: retrieval quality on the LoCoMo dev split.
//! - `scripts/`: side-by-side comparisons with other systems, run in the same session.

pub mod locomo;
pub mod words;
