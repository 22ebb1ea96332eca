//! After a failed fsync, the next open must not trust what the page cache holds (issue 12,
//! item 4). Linux marks the pages a failed fsync could not write clean and keeps serving
//! them ("fsyncgate"); a process that reopened the vault would replay a batch the disk never
//! got, answer a client's retry of it as a duplicate (202, nothing stored), and append its
//! next acknowledged writes after bytes the disk does not have — a power cut then leaves a
//! hole before them, and recovery cuts them off.
//!
//! The recorder (`engine::powerloss`) models exactly that: a failed fsync's bytes stay
//! readable in the real directory (the page cache) and are zeros on the modelled disk
//! forever. The WAL's open fsyncs its last segment and drops its cached pages
//! (`wal::Storage::drop_cache`) before reading it, so it replays what the disk has.

use std::sync::Arc;

use engine::powerloss::{Crash, NoSync, PowerLoss};
use engine::{Engine, EngineConfig, Role};

use crate::common::{WordHash, msg};

fn config(root: &std::path::Path, storage: Arc<dyn engine::storage::Storage>) -> EngineConfig {
    let mut c = EngineConfig::new(root.join("vaults"));
    c.embedder = WordHash::shared(16);
    c.storage = storage;
    c
}

fn texts(engine: &Engine, id: &str) -> Vec<String> {
    let mut t: Vec<String> = engine
        .vault(id)
        .unwrap()
        .list(None, usize::MAX, None)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    t.sort();
    t
}

#[test]
fn after_a_failed_fsync_the_next_open_replays_the_disk_not_the_page_cache() {
    let root = tempfile::tempdir().unwrap();
    let pl = PowerLoss::attach(root.path()).unwrap();
    let said = |t: &str| vec![msg("s", Role::User, t, 1)];
    {
        // The first process: A acknowledged; B's fsync fails (not acknowledged, poisoned).
        let engine = Engine::open(config(root.path(), Arc::new(pl.clone()))).unwrap();
        let vault = engine.vault("frank").unwrap();
        vault.ingest(said("A was acknowledged")).unwrap();
        pl.fail_syncs(true);
        assert!(vault.ingest(said("B failed its fsync")).is_err());
        pl.fail_syncs(false);
        assert!(vault.is_poisoned());
    }
    {
        // The next process, same page cache: the client retries B, then writes C.
        let engine = Engine::open(config(root.path(), Arc::new(pl.clone()))).unwrap();
        let vault = engine.vault("frank").unwrap();
        let retried = vault.ingest(said("B failed its fsync")).unwrap();
        assert_eq!(
            retried.stored.len(),
            1,
            "the retry of B was answered as a duplicate of bytes the disk never got"
        );
        vault.ingest(said("C was acknowledged")).unwrap();
    }
    // A power cut now: only what the disk holds.
    let image = tempfile::tempdir().unwrap();
    pl.image(image.path(), Crash::Strict).unwrap();
    let engine = Engine::open(config(image.path(), Arc::new(NoSync))).unwrap();
    assert_eq!(
        texts(&engine, "frank"),
        [
            "A was acknowledged",
            "B failed its fsync",
            "C was acknowledged"
        ],
        "every acknowledged write must survive the power cut"
    );
}
