//! Holding a vault still for a move (`Engine::fence`), then lifting the fence or giving the
//! vault up, and installing a copy elsewhere (`Engine::adopt`).

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use engine::{Engine, EngineConfig, Error, Role};

use crate::common::{WordHash, msg};

/// How long a write held by the fence is given to (wrongly) get through.
const HELD_PROBE_MS: u64 = 300;

fn engine(root: &Path) -> Arc<Engine> {
    let mut c = EngineConfig::new(root.to_path_buf());
    c.embedder = WordHash::shared(16);
    Arc::new(Engine::open(c).unwrap())
}

/// An ingest on its own thread; its outcome arrives on the channel.
fn ingest_later(e: &Arc<Engine>, text: &'static str) -> mpsc::Receiver<Result<usize, Error>> {
    let (tx, rx) = mpsc::channel();
    let e = Arc::clone(e);
    std::thread::spawn(move || {
        let outcome = e
            .vault("v")
            .and_then(|v| v.ingest(vec![msg("s", Role::User, text, 1)]))
            .map(|o| o.stored.len());
        let _ = tx.send(outcome);
    });
    rx
}

/// Copies what the fence lists, as a move does over the network.
fn copy_files(from: &Path, files: &[(String, u64)], to: &Path) {
    for (name, size) in files {
        let target = to.join(name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        assert_eq!(std::fs::copy(from.join(name), &target).unwrap(), *size);
    }
}

#[test]
fn a_fence_holds_writes_and_lifting_it_lets_them_land() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(&dir.path().join("vaults"));
    let v = e.vault("v").unwrap();
    v.ingest(vec![msg("s", Role::User, "before the fence", 1)])
        .unwrap();
    let fence = e.fence("v").unwrap();
    let files = fence.files().unwrap();
    assert!(files.iter().any(|(n, _)| n == "MANIFEST"), "{files:?}");
    assert!(
        files.iter().any(|(n, _)| n.starts_with("wal/")),
        "{files:?}"
    );
    let held = ingest_later(&e, "during the fence");
    assert!(
        held.recv_timeout(Duration::from_millis(HELD_PROBE_MS))
            .is_err(),
        "a write got through the fence"
    );
    // Reads go on meanwhile.
    assert_eq!(v.stats().unwrap().memories, 1);
    fence.lift();
    assert_eq!(held.recv().unwrap().unwrap(), 1);
    assert_eq!(v.stats().unwrap().memories, 2);
}

#[test]
fn a_vault_given_up_takes_no_waiting_write_and_its_copy_holds_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = engine(&dir.path().join("old"));
    let new = engine(&dir.path().join("new"));
    for i in 0..5 {
        old.vault("v")
            .unwrap()
            .ingest(vec![msg("s", Role::User, &format!("fact number {i}"), 1)])
            .unwrap();
    }
    // Settle some into a segment, so the copy has segment files too.
    old.vault("v").unwrap().seal().unwrap();
    old.vault("v")
        .unwrap()
        .ingest(vec![msg("s", Role::User, "in the wal tail", 1)])
        .unwrap();
    let segments = old.segment_files("v").unwrap();
    assert!(!segments.is_empty());
    let fence = old.fence("v").unwrap();
    let held = ingest_later(&old, "waiting at the fence");
    let files = fence.files().unwrap();
    let staged = dir.path().join("new").join(".incoming-v");
    copy_files(&dir.path().join("old").join("v"), &files, &staged);
    old.give_up(fence).unwrap();
    // The waiting write was refused, not acknowledged into a copy that is gone.
    assert!(matches!(
        held.recv().unwrap(),
        Err(Error::VaultClosed { .. })
    ));
    assert!(!dir.path().join("old").join("v").exists());
    assert!(matches!(old.vault("v"), Err(Error::VaultClosed { .. })));
    new.adopt("v", &staged).unwrap();
    let moved = new.vault("v").unwrap();
    assert_eq!(moved.stats().unwrap().memories, 6);
    assert_eq!(moved.list(None, 100, None).unwrap().len(), 6);
    // Adopting a copy back on the first node lifts its refusal there.
    let fence = new.fence("v").unwrap();
    let back = dir.path().join("old").join(".incoming-v");
    copy_files(
        &dir.path().join("new").join("v"),
        &fence.files().unwrap(),
        &back,
    );
    fence.lift();
    assert!(
        new.adopt("v", &back).is_err(),
        "adopted over a vault open here"
    );
    old.adopt("v", &back).unwrap();
    assert_eq!(old.vault("v").unwrap().stats().unwrap().memories, 6);
}
