//! One file of a real vault damaged, then the whole vault used: `Vault::open`, searches,
//! reads, ingest, delete, seal, compaction, reopen (`memoryrouter_fuzz::exercise`) must
//! return errors, never panic, overflow, read out of bounds or hang.
//!
//! Input: `pick` (which file of the template vault, modulo their count), `flags` (bit 0:
//! reseal the file's checksums after the edit, so the damage gets past them and reaches the
//! parsers — what a buggy writer or a hand "repair" leaves; bit 1: delete the file instead),
//! then an edit script (`edit::apply`). The empty script leaves the file intact, so the
//! first runs already open a whole valid vault.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memoryrouter_fuzz::edit::{self, Cursor};
use memoryrouter_fuzz::{exercise, template};

const FLAG_RESEAL: u8 = 1;
const FLAG_DELETE: u8 = 2;

fuzz_target!(|data: &[u8]| {
    let t = template::template();
    let mut c = Cursor::new(data);
    let pick = c.u8().unwrap_or(0);
    let flags = c.u8().unwrap_or(0);
    let script = c.rest();
    let Ok(root) = template::scratch() else {
        return;
    };
    let dir = root.path().join("vault");
    if t.copy_to(&dir).is_err() {
        return;
    }
    let rel = &t.files()[usize::from(pick) % t.files().len()];
    let path = dir.join(rel);
    if flags & FLAG_DELETE != 0 {
        let _ = std::fs::remove_file(&path);
    } else {
        let Ok(mut bytes) = std::fs::read(&path) else {
            return;
        };
        edit::apply(script, &mut bytes);
        if flags & FLAG_RESEAL != 0 {
            if rel.ends_with("lexical.bin") {
                edit::reseal_footer(&mut bytes);
            } else if !rel.starts_with("wal") {
                edit::reseal_header(&mut bytes);
            }
        }
        if std::fs::write(&path, &bytes).is_err() {
            return;
        }
    }
    let opened = exercise(&dir);
    if script.is_empty() && flags & FLAG_DELETE == 0 {
        assert!(
            opened,
            "an undamaged copy of the template must open ({rel:?})"
        );
    }
});
