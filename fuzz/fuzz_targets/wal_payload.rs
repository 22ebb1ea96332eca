//! The engine's WAL payload codec (`engine/src/record.rs`: ingest and delete batches) and
//! what replay does with what it decodes, reached through the public path: records with
//! valid WAL framing and crcs but hostile payloads are written into a vault's `wal/`, then
//! the vault is used (`memoryrouter_fuzz::exercise`). Decoding must fail cleanly, and
//! whatever decodes (ids at u64::MAX, repeated ids, vectors of another dimension, deletes
//! of nothing) must not panic replay, searches, seals or compaction.
//!
//! Input: `pick` (which of the template's tail records to edit, modulo their count plus
//! one; the extra value appends a new record whose payload is the rest of the input),
//! `kind` (0x00..=0x7f: keep the record's kind; otherwise `kind & 0x7f` replaces it), then
//! an edit script (`edit::apply`) for the picked payload.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use memoryrouter_fuzz::edit::{self, Cursor};
use memoryrouter_fuzz::{exercise, template};
use wal::{Durability, Wal, WalOptions};

const KIND_REPLACE: u8 = 0x80;

/// The template vault's WAL tail (ingests and deletes past its checkpoint), as
/// `(kind, payload)`, read from a copy so the template itself is never opened for writing.
fn tail() -> &'static [(u8, Vec<u8>)] {
    static TAIL: OnceLock<Vec<(u8, Vec<u8>)>> = OnceLock::new();
    TAIL.get_or_init(|| {
        let root = template::scratch().expect("scratch dir");
        let dir = root.path().join("vault");
        template::template()
            .copy_to(&dir)
            .expect("copy of the template");
        let (_, recovery) =
            Wal::open(&dir.join("wal"), WalOptions::default()).expect("template WAL");
        assert!(!recovery.records.is_empty(), "the template has a WAL tail");
        recovery
            .records
            .into_iter()
            .map(|r| (r.kind, r.payload))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut records = tail().to_vec();
    let mut c = Cursor::new(data);
    let pick = usize::from(c.u8().unwrap_or(0)) % (records.len() + 1);
    let kind = c.u8().unwrap_or(0);
    let script = c.rest();
    if pick == records.len() {
        records.push((kind & !KIND_REPLACE, script.to_vec()));
    } else {
        edit::apply(script, &mut records[pick].1);
        if kind & KIND_REPLACE != 0 {
            records[pick].0 = kind & !KIND_REPLACE;
        }
    }
    let Ok(root) = template::scratch() else {
        return;
    };
    let dir = root.path().join("vault");
    // A vault with a MANIFEST (an empty one, stored by `reset`): a WAL with records and no
    // MANIFEST is refused at open as a lost manifest, which is not what this target probes.
    match engine::Vault::open(&dir, template::options()) {
        Ok(vault) if vault.reset().is_ok() => {}
        _ => return,
    }
    let options = WalOptions {
        durability: Durability::Buffered,
        ..WalOptions::default()
    };
    {
        let Ok((log, _)) = Wal::open(&dir.join("wal"), options) else {
            return;
        };
        let batch: Vec<(u8, &[u8])> = records.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        if log.append_batch(&batch).is_err() || log.sync().is_err() {
            return;
        }
    }
    let opened = exercise(&dir);
    if pick < tail().len() && script.is_empty() && kind & KIND_REPLACE == 0 {
        assert!(opened, "the template's own WAL records must replay");
    }
});
