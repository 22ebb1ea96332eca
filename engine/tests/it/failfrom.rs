//! "Every write fails from operation N" (issue 12, item 5), for N = 1…200 over the engine's
//! whole write path: vault creation, WAL appends and rotations, checkpoints, segment files
//! and directories, MANIFEST replacements, seals, compactions, LRU close and reopen.
//!
//! The recorder (`engine::powerloss`, [`FailFrom`]) makes every write from the Nth operation
//! fail, twice over: as a full disk (`ENOSPC`: creations, renames and writes fail, a write
//! after writing half its buffer; removals and syncs work) and as a dying disk (`EIO`: every
//! operation fails, syncs included). A seeded workload runs on; every call must return (no
//! panic), a vault that opens must keep answering list and search, and:
//!
//! - nothing acknowledged is lost and no acknowledged delete comes back: checked on the
//!   directory as the process left it (reopened) and on the strict power-cut image (only
//!   what was fsynced);
//! - on a full disk, nothing is left behind that only the next open would clean (no
//!   `seg-….tmp`: a failed seal or merge removes what it wrote), and once space is back the
//!   same engine, without a reopen, accepts writes, seals and compacts again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use engine::powerloss::{Crash, FailFrom, NoSync, PowerLoss, SplitMix};
use engine::{Engine, EngineConfig, HnswParams, Role};

use crate::common::{WordHash, msg, query};

const DIM: usize = 16;
const VAULTS: [&str; 2] = ["dora", "eve"];
const N_MAX: u64 = 200;
const STEPS: usize = 60;

fn config(root: &Path, storage: Arc<dyn engine::storage::Storage>) -> EngineConfig {
    let mut c = EngineConfig::new(root.join("vaults"));
    c.embedder = WordHash::shared(DIM);
    // Two vaults, one open: switching vaults closes one and reopens the other.
    c.open_vaults_max = 1;
    c.memtable_records_max = 1 << 30;
    c.hnsw = HnswParams {
        min_records: 6,
        ef_construction: 16,
        ..HnswParams::default()
    };
    c.storage = storage;
    c.wal_segment_bytes_max = 1024;
    c
}

#[derive(Default, Clone, Debug)]
struct Book {
    /// Acknowledged, not deleted: id → text.
    live: BTreeMap<u64, String>,
    /// Texts whose delete was acknowledged.
    deleted: BTreeSet<String>,
    /// Texts of failed ingests: may or may not be stored.
    maybe_stored: BTreeSet<String>,
    /// Texts of failed deletes: may or may not be gone.
    maybe_deleted: BTreeSet<String>,
}

/// Checks the vaults under `root`, opened with the plain file system, against the books.
fn check(root: &Path, books: &BTreeMap<&str, Book>) -> Result<(), String> {
    let engine = Engine::open(config(root, Arc::new(NoSync)))
        .map_err(|e| format!("the engine does not open: {e}"))?;
    for (id, book) in books {
        if book.live.is_empty() && book.deleted.is_empty() {
            continue;
        }
        let vault = engine
            .vault(id)
            .map_err(|e| format!("vault {id} does not open: {e}"))?;
        let present: BTreeMap<u64, String> = vault
            .list(None, usize::MAX, None)
            .map_err(|e| format!("vault {id}: list: {e}"))?
            .into_iter()
            .map(|m| (m.id, m.text))
            .collect();
        for (mid, text) in &book.live {
            if present.get(mid) != Some(text) && !book.maybe_deleted.contains(text) {
                return Err(format!(
                    "vault {id}: acknowledged memory {mid} {text:?} lost"
                ));
            }
        }
        for text in present.values() {
            if book.deleted.contains(text) {
                return Err(format!("vault {id}: deleted memory {text:?} came back"));
            }
            if !book.live.values().any(|t| t == text) && !book.maybe_stored.contains(text) {
                return Err(format!("vault {id}: {text:?} was never acknowledged"));
            }
        }
    }
    Ok(())
}

/// Segment temp directories left in the vault directories.
fn leftovers(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(vaults) = std::fs::read_dir(root.join("vaults")) else {
        return found;
    };
    for vault in vaults.flatten() {
        for entry in std::fs::read_dir(vault.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("seg-") && name.ends_with(".tmp") {
                found.push(format!("{}/{name}", vault.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// One step of the seeded workload; `Err` is a refused operation (expected once writes
/// fail), and the books say what it may have done.
fn step(
    engine: &Engine,
    books: &mut BTreeMap<&'static str, Book>,
    rng: &mut SplitMix,
    counter: &mut u64,
) -> Result<(), engine::Error> {
    let id = VAULTS[rng.below(VAULTS.len() as u64) as usize];
    let vault = engine.vault(id)?;
    let book = books.entry(id).or_default();
    match rng.below(100) {
        0..=54 => {
            let texts: Vec<String> = (0..1 + rng.below(3))
                .map(|_| {
                    *counter += 1;
                    format!("note {counter} on topic {}", *counter % 4)
                })
                .collect();
            let batch = texts
                .iter()
                .map(|t| msg("s", Role::User, t, *counter as i64))
                .collect();
            match vault.ingest(batch) {
                Ok(out) => {
                    assert_eq!(out.stored.len(), texts.len(), "texts are unique");
                    book.live.extend(out.stored.into_iter().zip(texts));
                    Ok(())
                }
                Err(e) => {
                    book.maybe_stored.extend(texts);
                    Err(e)
                }
            }
        }
        55..=69 if !book.live.is_empty() => {
            let (mid, text) = book
                .live
                .iter()
                .nth(rng.below(book.live.len() as u64) as usize)
                .map(|(k, v)| (*k, v.clone()))
                .unwrap();
            match vault.delete(mid) {
                Ok(true) => {
                    book.live.remove(&mid);
                    book.deleted.insert(text);
                    Ok(())
                }
                Ok(false) => panic!("vault {id}: acknowledged memory {mid} missing at delete"),
                Err(e) => {
                    book.maybe_deleted.insert(text);
                    Err(e)
                }
            }
        }
        70..=84 => vault.seal().map(drop),
        _ => vault.compact_all().map(drop),
    }
}

#[derive(Default)]
struct Tally {
    runs: u64,
    refused: u64,
    acknowledged: u64,
}

fn run(n: u64, errno: i32, tally: &mut Tally) -> Result<(), String> {
    let root = tempfile::tempdir().unwrap();
    let pl = PowerLoss::attach(root.path()).unwrap();
    pl.fail_writes_from(Some(FailFrom { op: n, errno }));
    let mut books: BTreeMap<&'static str, Book> = BTreeMap::new();
    let mut rng = SplitMix(n ^ 0xfa11);
    let mut counter = 0;
    let engine = match Engine::open(config(root.path(), Arc::new(pl.clone()))) {
        Ok(e) => e,
        Err(_) => {
            tally.refused += 1;
            return Ok(()); // Refused before anything was acknowledged.
        }
    };
    let full = errno == FailFrom::ENOSPC;
    for _ in 0..STEPS {
        if step(&engine, &mut books, &mut rng, &mut counter).is_err() {
            tally.refused += 1;
            // Checked at once: reopening a vault (the LRU switches them) removes leftovers.
            let left = leftovers(root.path());
            if full && !left.is_empty() {
                return Err(format!("a failed operation left {left:?} behind"));
            }
        }
        // Whatever failed, a vault that opens keeps answering reads.
        for id in VAULTS {
            if let Ok(vault) = engine.vault(id) {
                vault
                    .list(None, 10, None)
                    .map_err(|e| format!("vault {id}: list after failures: {e}"))?;
                vault
                    .search(&query("note topic", 5))
                    .map_err(|e| format!("vault {id}: search after failures: {e}"))?;
            }
        }
    }
    if full {
        // Space is back: the same engine writes, seals and compacts again, no reopen.
        pl.fail_writes_from(None);
        for id in VAULTS {
            let vault = engine
                .vault(id)
                .map_err(|e| format!("vault {id} after space came back: {e}"))?;
            counter += 1;
            let text = format!("note {counter} after space came back");
            let out = vault
                .ingest(vec![msg("s", Role::User, &text, 0)])
                .map_err(|e| format!("vault {id}: ingest after space came back: {e}"))?;
            books
                .entry(id)
                .or_default()
                .live
                .extend(out.stored.into_iter().map(|m| (m, text.clone())));
            vault
                .seal()
                .and_then(|_| vault.compact_all())
                .map_err(|e| format!("vault {id}: seal/compact after space came back: {e}"))?;
        }
    }
    tally.acknowledged += books.values().map(|b| b.live.len() as u64).sum::<u64>();
    // The power-cut image: only what was fsynced.
    let image = tempfile::tempdir().unwrap();
    pl.image(image.path(), Crash::Strict).unwrap();
    check(image.path(), &books).map_err(|e| format!("power-cut image: {e}"))?;
    drop(engine);
    // The directory as the process left it.
    pl.fail_writes_from(None);
    check(root.path(), &books).map_err(|e| format!("reopened: {e}"))?;
    tally.runs += 1;
    Ok(())
}

fn campaign(errno: i32) {
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    for n in 1..=N_MAX {
        if let Err(e) = run(n, errno, &mut tally) {
            failures.push(format!("errno {errno}, writes failing from op {n}: {e}"));
        }
    }
    eprintln!(
        "errno {errno}: N = 1..={N_MAX}: {} runs checked, {} refused operations, {} acknowledged records kept, {} failures",
        tally.runs,
        tally.refused,
        tally.acknowledged,
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn a_disk_that_fills_from_operation_n_loses_nothing_and_writes_resume() {
    campaign(FailFrom::ENOSPC);
}

#[test]
fn a_disk_that_fails_every_write_from_operation_n_loses_nothing() {
    campaign(FailFrom::EIO);
}
