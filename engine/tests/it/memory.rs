//! Memory accounting of open vaults: the heap estimate follows the vault's contents, and the
//! registry's byte bound closes least recently used idle vaults without losing data or
//! closing a vault someone holds.

use std::sync::Arc;

use engine::{Engine, EngineConfig, Role, Vault};

use crate::common::{WordHash, msg, options};

const DIM: usize = 16;

fn engine(root: &std::path::Path, bytes_max: u64) -> Engine {
    let mut c = EngineConfig::new(root.to_path_buf());
    c.embedder = WordHash::shared(DIM);
    c.open_vaults_max = 1000;
    c.open_vaults_memory_bytes_max = bytes_max;
    Engine::open(c).unwrap()
}

fn note(vault: usize, n: usize) -> String {
    format!(
        "vault {vault} note {n}: {}",
        "some words to give it weight ".repeat(8)
    )
}

/// Ingests `count` notes numbered from `from`.
fn fill(v: &Vault, vault: usize, from: usize, count: usize) {
    let batch = (from..from + count)
        .map(|n| msg("s", Role::Note, &note(vault, n), n as i64))
        .collect();
    assert_eq!(v.ingest(batch).unwrap().stored.len(), count);
}

#[test]
fn estimate_grows_with_ingest_and_drops_after_seal() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), options(64)).unwrap();
    let empty = v.memory_bytes();
    fill(&v, 0, 0, 100);
    let full = v.memory_bytes();
    // At least the vectors and the texts of the hundred records.
    let payload = 100 * (64 * 4 + note(0, 0).len()) as u64;
    assert!(
        full >= empty + payload,
        "{empty} -> {full}, payload {payload}"
    );
    assert_eq!(v.stats().unwrap().memory_bytes, full);
    fill(&v, 0, 100, 100);
    let fuller = v.memory_bytes();
    assert!(fuller >= full + payload, "{full} -> {fuller}");
    // Sealed records live in the mapped segment, which is not heap.
    assert!(v.seal().unwrap());
    let sealed = v.memory_bytes();
    assert!(sealed < fuller / 2, "{fuller} -> {sealed}");
    assert_eq!(v.stats().unwrap().memory_bytes, sealed);
    // Reopening rebuilds the same kind of state: still far below the unsealed vault.
    drop(v);
    let v = Vault::open(dir.path(), options(64)).unwrap();
    assert!(v.memory_bytes() > 0);
    assert!(v.memory_bytes() < fuller / 2);
}

/// The heap estimate of one vault holding `notes` notes, measured on its own engine.
fn one_vault_bytes(notes: usize) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), u64::MAX);
    let v = e.vault("probe").unwrap();
    fill(&v, 0, 0, notes);
    assert_eq!(e.memory_bytes(), v.memory_bytes());
    v.memory_bytes()
}

#[test]
fn byte_bound_closes_lru_idle_vaults_and_they_reopen_with_their_data() {
    const VAULTS: usize = 10;
    const ROUNDS: usize = 3;
    const NOTES: usize = 20;
    // Room for about three vaults at their final size.
    let bound = one_vault_bytes(NOTES * ROUNDS) * 7 / 2;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), bound);
    let mut most_open = 0;
    for round in 0..ROUNDS {
        for i in 0..VAULTS {
            let v = e.vault(&format!("v{i}")).unwrap();
            assert!(e.memory_bytes() <= bound, "{} > {bound}", e.memory_bytes());
            fill(&v, i, round * NOTES, NOTES);
            most_open = most_open.max(e.open_vault_count());
        }
    }
    // The bound, not the count (1000), closed vaults, and only as many as it had to.
    assert!(e.open_vault_count() < VAULTS);
    assert!(most_open >= 3, "{most_open}");
    for i in 0..VAULTS {
        let v = e.vault(&format!("v{i}")).unwrap();
        assert!(e.memory_bytes() <= bound);
        let texts: Vec<String> = v
            .list(None, 1000, None)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts.len(), NOTES * ROUNDS, "vault {i}");
        for n in 0..NOTES * ROUNDS {
            assert!(texts.contains(&note(i, n)), "vault {i} lost note {n}");
        }
    }
}

#[test]
fn a_held_vault_is_never_closed_by_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Every vault is bigger than this bound.
    let e = engine(dir.path(), 1);
    let held = e.vault("held").unwrap();
    fill(&held, 0, 0, 10);
    for i in 1..8 {
        let other = e.vault(&format!("other{i}")).unwrap();
        fill(&other, i, 0, 10);
        drop(other);
        // Still the registered instance: it was not closed and reopened behind its holder.
        assert!(Arc::ptr_eq(&held, &e.vault("held").unwrap()));
        // The held vault and at most the one just handed out (the next call closes it).
        assert!(e.open_vault_count() <= 2);
        fill(&held, 0, i * 10, 10);
    }
    assert_eq!(held.list(None, 1000, None).unwrap().len(), 80);
    // Once idle, the oversized vault is closed like any other when another vault is asked for.
    drop(held);
    let _next = e.vault("other1").unwrap();
    assert_eq!(e.open_vault_count(), 1);
    assert_eq!(e.memory_bytes(), _next.memory_bytes());
    assert_eq!(
        e.vault("held")
            .unwrap()
            .list(None, 1000, None)
            .unwrap()
            .len(),
        80
    );
}
