//! Missing files are never "empty" (issue 12, item 3): a vault with one file deleted either
//! refuses to open and leaves every byte of its directory as it was, or opens with every
//! acknowledged memory. Before, a missing MANIFEST read as a new vault, whose open then
//! deleted every segment directory as a leftover.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::{HnswParams, Role, Vault, VaultOptions};

use crate::common::{WordHash, msg};

const DIM: usize = 16;

fn options() -> VaultOptions {
    let mut o = VaultOptions::new(WordHash::shared(DIM));
    o.background = false;
    o.hnsw = HnswParams {
        min_records: 16,
        ef_construction: 16,
        ..HnswParams::default()
    };
    o
}

/// Every file and directory under `dir` with its bytes (None for directories).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                walk(base, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

#[test]
fn a_vault_missing_any_one_file_refuses_untouched_or_loses_nothing() {
    let original = tempfile::tempdir().unwrap();
    let mut live = BTreeMap::new();
    {
        let vault = Vault::open(original.path(), options()).unwrap();
        for round in 0..3 {
            let batch = (0..12)
                .map(|i| msg("s", Role::User, &format!("round {round} memory {i}"), i))
                .collect();
            let out = vault.ingest(batch).unwrap();
            for (i, id) in out.stored.iter().enumerate() {
                live.insert(*id, format!("round {round} memory {i}"));
            }
            assert!(vault.delete(out.stored[0]).unwrap());
            live.remove(&out.stored[0]);
            vault.seal().unwrap();
            if round == 1 {
                // One graph-backed segment (graph.bin) next to graphless ones.
                assert!(vault.compact_all().unwrap());
            }
        }
    }
    let files: Vec<PathBuf> = tree(original.path())
        .into_iter()
        .filter_map(|(path, bytes)| bytes.map(|_| path))
        .collect();
    for required in ["MANIFEST", "wal/checkpoint"] {
        assert!(files.contains(&PathBuf::from(required)), "{files:?}");
    }
    assert!(files.iter().any(|f| f.ends_with("graph.bin")), "{files:?}");
    let (mut refused, mut opened) = (Vec::new(), Vec::new());
    for file in &files {
        let dir = tempfile::tempdir().unwrap();
        copy(original.path(), dir.path());
        std::fs::remove_file(dir.path().join(file)).unwrap();
        let before = tree(dir.path());
        match Vault::open(dir.path(), options()) {
            Err(e) => {
                assert_eq!(
                    tree(dir.path()),
                    before,
                    "{file:?} missing: the refused open ({e}) changed the directory"
                );
                refused.push(file.clone());
            }
            Ok(vault) => {
                let got: BTreeMap<u64, String> = vault
                    .list(None, usize::MAX, None)
                    .unwrap()
                    .into_iter()
                    .map(|m| (m.id, m.text))
                    .collect();
                assert_eq!(
                    got, live,
                    "{file:?} missing: the vault opened without memories"
                );
                opened.push(file.clone());
            }
        }
    }
    eprintln!("refused without {refused:?}; opened whole without {opened:?}");
    assert!(refused.contains(&PathBuf::from("MANIFEST")));
}

/// No MANIFEST but WAL records (the first ingest stores the manifest before appending):
/// refused, and nothing is touched — not even the WAL's torn-tail cut.
#[test]
fn a_missing_manifest_next_to_wal_records_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    Vault::open(dir.path(), options())
        .unwrap()
        .ingest(vec![msg("s", Role::User, "kept in the WAL only", 1)])
        .unwrap();
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    let before = tree(dir.path());
    let err = Vault::open(dir.path(), options()).unwrap_err();
    assert!(matches!(err, engine::Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("MANIFEST is missing"), "{err}");
    assert_eq!(tree(dir.path()), before);
    // A vault that never stored anything still opens (and stays empty).
    let fresh = tempfile::tempdir().unwrap();
    drop(Vault::open(fresh.path(), options()).unwrap());
    assert!(
        Vault::open(fresh.path(), options())
            .unwrap()
            .list(None, 10, None)
            .unwrap()
            .is_empty()
    );
}
