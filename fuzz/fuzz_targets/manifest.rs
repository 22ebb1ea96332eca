//! A damaged MANIFEST (valid framing and checksums around hostile JSON: segment names that
//! are missing, repeated or point elsewhere, ids and lsns at their limits, tombstones of
//! nothing) in an otherwise intact vault, then the whole vault used
//! (`memoryrouter_fuzz::exercise`): errors, never panics or hangs.
//!
//! Input: `flags` (bit 0: the rest is the whole JSON payload; otherwise it is an edit script
//! applied to the template's manifest JSON), then the rest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memoryrouter_fuzz::edit::{self, Cursor, HEADER_BYTES};
use memoryrouter_fuzz::{exercise, template};

/// Framing of the manifest (`docs/format.md`, "engine: MANIFEST").
const MAGIC: &[u8; 8] = b"MRVMANIF";
const VERSION: u32 = 1;
const FLAG_RAW: u8 = 1;

fuzz_target!(|data: &[u8]| {
    let t = template::template();
    let mut c = Cursor::new(data);
    let flags = c.u8().unwrap_or(0);
    let rest = c.rest();
    let Ok(root) = template::scratch() else {
        return;
    };
    let dir = root.path().join("vault");
    if t.copy_to(&dir).is_err() {
        return;
    }
    let path = dir.join("MANIFEST");
    let payload = if flags & FLAG_RAW != 0 {
        rest.to_vec()
    } else {
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let mut json = bytes.get(HEADER_BYTES..).unwrap_or_default().to_vec();
        edit::apply(rest, &mut json);
        json
    };
    if std::fs::write(&path, edit::framed(MAGIC, VERSION, &payload)).is_err() {
        return;
    }
    let opened = exercise(&dir);
    if flags & FLAG_RAW == 0 && rest.is_empty() {
        assert!(opened, "the template's own manifest, reframed, must open");
    }
});
