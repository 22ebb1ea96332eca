//! Owner-only data whatever the umask (issue 12, item 9): every directory a vault creates
//! (the vault, wal/, seg-*/) is 0700 and every file (MANIFEST, WAL segments and checkpoint,
//! segment files, graph included) 0600. The server's own files are checked on the real
//! binary (`server/tests/smoke.rs`).

use std::os::unix::fs::PermissionsExt as _;

use engine::{HnswParams, Role, Vault, VaultOptions};

use crate::common::{WordHash, msg};

#[test]
#[allow(
    unsafe_code,
    reason = "umask(2) is the one way to set the process umask"
)]
fn a_vault_is_owner_only_under_umask_022() {
    // SAFETY: umask only swaps the process's file-mode mask; 022 is the usual default, so
    // tests running alongside see what they would see anyway.
    unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vault");
    let mut options = VaultOptions::new(WordHash::shared(16));
    options.background = false;
    options.hnsw = HnswParams {
        min_records: 8,
        ef_construction: 16,
        ..HnswParams::default()
    };
    let vault = Vault::open(&root, options).unwrap();
    for round in 0..2 {
        let batch = (0..10)
            .map(|i| msg("s", Role::User, &format!("round {round} note {i}"), i))
            .collect();
        vault.ingest(batch).unwrap();
        vault.seal().unwrap();
    }
    assert!(vault.compact_all().unwrap());
    vault
        .ingest(vec![msg("s", Role::User, "in the WAL", 99)])
        .unwrap();
    let mut loose = Vec::new();
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            loose.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(loose.is_empty(), "not owner-only: {loose:#?}");
    for expected in [
        "MANIFEST",
        "checkpoint",
        "graph.bin",
        "lexical.bin",
        "records.bin",
    ] {
        assert!(
            files.iter().any(|f| f == expected),
            "{expected} in {files:?}"
        );
    }
}
