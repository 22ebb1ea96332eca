//! Arbitrary bytes as a WAL segment file: `verify` and `Wal::open` must return (Ok or a
//! structured error) and never panic or loop. The stable twin of this target is the
//! `recovery_never_panics_*` proptests in `wal/tests/recovery.rs`, which CI runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wal::{Wal, WalOptions};

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("00000000000000000001.wal"), data).is_err() {
        return;
    }
    let verified = wal::verify(dir.path());
    let opened = Wal::open(dir.path(), WalOptions::default());
    // Both read the same bytes with the same rules, so they must agree on readability.
    assert_eq!(verified.is_ok(), opened.is_ok());
    if let Ok((log, recovery)) = opened {
        // A readable log must accept the next record right after what it replayed.
        let expected = recovery
            .records
            .last()
            .map_or(recovery.checkpoint, |r| r.lsn)
            + 1;
        assert_eq!(log.append(0, b"after fuzz").ok(), Some(expected));
    }
});
