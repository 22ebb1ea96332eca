//! The vault manifest: the one file that says which segments are live, up to which WAL
//! sequence number they hold everything, which of their records are deleted, and which
//! embedder wrote the vault. Replaced atomically (temp file, fsync, rename, fsync dir), so a
//! crash leaves either the old or the new manifest, never a mix.
//!
//! Format: the common 64-byte header (`file.rs`, magic `MRVMANIF`) followed by a JSON object;
//! see `docs/format.md`, "engine: MANIFEST". JSON because it is small, rewritten rarely (at
//! seal, compaction, reset and first ingest) and worth being readable by an operator.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file;
use crate::record::MemoryId;
use crate::storage::InDir;

pub const MAGIC: &[u8; 8] = b"MRVMANIF";
pub const VERSION: u32 = 1;
pub const VERSION_OLDEST: u32 = 1;
pub const FILE_NAME: &str = "MANIFEST";

/// The live state of a vault's durable, non-WAL part.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Embedder id that wrote the vault's vectors; `None` until the first ingest (or after a
    /// reset), when any embedder may claim it.
    pub embedder: Option<String>,
    /// Vector dimension of that embedder (0 when `embedder` is `None`).
    pub dim: u32,
    /// Every id below this was handed out at some point; ids are never reused.
    pub next_id: MemoryId,
    /// Sequence number for the next segment directory name.
    pub next_segment: u64,
    /// Every WAL record with an lsn at or below this is reflected in `segments` and
    /// `tombstones`; recovery replays only records above it. This, not the WAL's own
    /// checkpoint, is authoritative: a crash between writing the manifest and checkpointing
    /// the WAL leaves extra records that recovery skips.
    pub checkpoint_lsn: u64,
    /// Live segment directory names, in creation order.
    pub segments: Vec<String>,
    /// Deleted ids that still sit in some live segment (sorted). Compaction drops both.
    pub tombstones: Vec<MemoryId>,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads the manifest; `Ok(None)` when the vault has none yet.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path)(e)),
        };
        let (_, payload) = file::parse(&path, &bytes, MAGIC, VERSION_OLDEST, VERSION, true)?;
        let m: Manifest = serde_json::from_slice(payload)
            .map_err(|e| Error::corrupt(&path, format!("manifest JSON: {e}")))?;
        m.check_segments(&path)?;
        Ok(Some(m))
    }

    /// Every live segment is named once, as a directory right inside the vault. The vault
    /// opens segments by these names, removes every other `seg-*` directory as a leftover,
    /// and deletes merged ones, so a name listed twice (found by the `manifest` fuzz target:
    /// compaction merged the segment with itself and tripped on the repeated ids) or one
    /// reaching outside the vault (`../`, an absolute path: the real directory would be
    /// removed as a leftover) must stop the open before anything is touched.
    fn check_segments(&self, path: &Path) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for name in &self.segments {
            if !crate::segment::is_dir_name(name) || name.contains(['/', '\\']) {
                return Err(Error::corrupt(
                    path,
                    format!("segment name {name:?} is not a seg-* directory of the vault"),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(Error::corrupt(
                    path,
                    format!("segment {name} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// Durably replaces the vault's manifest with `self`, through the storage of `dir`.
    pub fn store<D: InDir + ?Sized>(&self, dir: &D) -> Result<()> {
        let path = Self::path(dir.path());
        let payload = serde_json::to_vec(self)
            .map_err(|e| Error::corrupt(&path, format!("encoding manifest: {e}")))?;
        file::replace_atomically(dir.storage(), &path, MAGIC, VERSION, &payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), None);
        let m = Manifest {
            embedder: Some("e".into()),
            dim: 3,
            next_id: 10,
            next_segment: 2,
            checkpoint_lsn: 7,
            segments: vec!["seg-0000000000000001".into()],
            tombstones: vec![4],
        };
        m.store(dir.path()).unwrap();
        m.store(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Some(m));
    }

    /// Regression (fuzz target `manifest`): repeated or path-like segment names are refused
    /// at load, before the vault removes or merges anything.
    #[test]
    fn repeated_or_outside_segment_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let with = |segments: &[&str]| Manifest {
            segments: segments.iter().map(|s| s.to_string()).collect(),
            ..Manifest::default()
        };
        for bad in [
            &["seg-0000000000000001", "seg-0000000000000001"][..],
            &["../other/seg-0000000000000001"],
            &["seg-1/../../x"],
            &["/tmp"],
            &["wal"],
        ] {
            with(bad).store(dir.path()).unwrap();
            assert!(
                matches!(Manifest::load(dir.path()), Err(Error::Corrupt { .. })),
                "{bad:?}"
            );
        }
        let good = with(&["seg-0000000000000001", "seg-0000000000000002"]);
        good.store(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Some(good));
    }
}
