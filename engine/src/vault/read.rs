//! Reads that are not searches: one memory by id, newest-first listing, stats, verify.

use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::record::{Memory, MemoryId};
use crate::segment::{self, Segment};

use super::{Vault, VaultStats};

impl Vault {
    /// One memory by id, unless deleted.
    pub fn get(&self, id: MemoryId) -> Result<Option<Memory>> {
        self.contained(|| {
            let state = self.inner.state.read();
            if state.deleted.contains(&id) {
                return Ok(None);
            }
            Ok(state.locate(id).map(|loc| state.memory(loc)))
        })
    }

    /// Newest first: up to `limit` memories with id < `before` (of one session, when given).
    pub fn list(
        &self,
        before: Option<MemoryId>,
        limit: usize,
        session_id: Option<&str>,
    ) -> Result<Vec<Memory>> {
        self.contained(|| {
            let state = self.inner.state.read();
            let wanted = |s: &str| session_id.is_none_or(|x| x == s);
            let mut out: Vec<Memory> = Vec::new();
            // Each source yields its newest `limit` matches; the merge keeps the newest overall.
            for source in state.sources() {
                out.extend(
                    source
                        .docs_desc(before)
                        .filter(|&d| {
                            !state.deleted.contains(&source.id(d)) && wanted(source.session(d))
                        })
                        .take(limit)
                        .map(|d| source.memory(d)),
                );
            }
            out.sort_by_key(|m| std::cmp::Reverse(m.id));
            out.truncate(limit);
            Ok(out)
        })
    }

    pub fn stats(&self) -> Result<VaultStats> {
        self.check_open()?;
        let inner = &*self.inner;
        let state = inner.state.read();
        let mut bytes = state
            .segments
            .iter()
            .map(|s| s.bytes_on_disk())
            .sum::<u64>();
        bytes += dir_bytes(&inner.dir.join("wal"))?;
        bytes += std::fs::metadata(Manifest::path(&inner.dir)).map_or(0, |m| m.len());
        Ok(VaultStats {
            memories: state.live_count(),
            bytes_on_disk: bytes,
            embedder: inner.options.embedder.id().to_string(),
            dim: inner.dim as u32,
            last_write_ms: state.last_write_ms,
            segments: state.segments.len() as u32,
            // Frozen memtables are unsealed too: without them a vault mid-seal looks settled.
            memtable: state.unsealed() as u32,
            busy: self.is_busy(),
            memory_bytes: {
                state.refresh_memory();
                state.memory.get()
            },
        })
    }

    /// Checks every checksum of every segment file (the vectors and graphs too).
    pub fn verify(&self) -> Result<()> {
        self.check_open()?;
        let segments = self.inner.state.read().segments.clone();
        segments.iter().try_for_each(|s| s.verify())
    }
}

/// A `seg-*` directory of the vault that its manifest does not list, as
/// [`Vault::audit_leftovers`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub name: String,
    /// Records in it (0 if it does not open: a removal or write cut short).
    pub records: u32,
    /// Of those, how many the vault holds elsewhere (a listed segment or the WAL), live or
    /// deleted.
    pub accounted: u32,
    pub id_range: (MemoryId, MemoryId),
    /// Why it does not open, if it does not.
    pub unopenable: Option<String>,
}

impl Leftover {
    /// Records the vault holds nowhere else: the directory is the only copy of memories the
    /// manifest lost (the seal/merge race of issue 12), and the next normal open would delete
    /// it. A merge's inputs left by a crash before their removal hold ids the merged segment
    /// holds too (those it dropped were deleted), an interrupted seal's ids are still in the
    /// WAL: neither is lost.
    pub fn is_lost(&self) -> bool {
        self.records > 0 && self.accounted == 0
    }
}

impl Vault {
    /// The unlisted `seg-*` directories of a vault opened with
    /// [`VaultOptions::keep_leftovers`](super::VaultOptions), each opened read-only and its ids
    /// compared with what the vault holds. `memoryrouter verify` fails on a lost one.
    pub fn audit_leftovers(&self) -> Result<Vec<Leftover>> {
        self.check_open()?;
        let dir = &self.inner.dir;
        let state = self.inner.state.read();
        let listed: std::collections::HashSet<&str> =
            state.segments.iter().map(|s| s.name()).collect();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&**dir).map_err(Error::io(&**dir))? {
            let entry = entry.map_err(Error::io(&**dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !segment::is_dir_name(&name) || name.ends_with(".tmp") || listed.contains(&*name) {
                continue;
            }
            let mut leftover = Leftover {
                name,
                records: 0,
                accounted: 0,
                id_range: (0, 0),
                unopenable: None,
            };
            match Segment::open(&entry.path(), self.inner.dim) {
                Ok(seg) => {
                    leftover.records = seg.len();
                    leftover.id_range = seg.id_range();
                    leftover.accounted = seg
                        .rows()
                        .iter()
                        .filter(|r| state.deleted.contains(&r.id) || state.locate(r.id).is_some())
                        .count() as u32;
                }
                Err(e) => leftover.unopenable = Some(e.to_string()),
            }
            out.push(leftover);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir)(e)),
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use crate::manifest::Manifest;
    use crate::vault::Vault;
    use crate::vault::testing::{options, said};

    fn sealed(vault: &Vault, round: usize) {
        let batch = (0..10)
            .map(|i| said(&format!("round {round} memo {i}")))
            .collect();
        vault.ingest(batch).unwrap();
        assert!(vault.seal().unwrap());
    }

    fn audit(dir: &std::path::Path) -> Vec<super::Leftover> {
        let mut o = options();
        o.keep_leftovers = true;
        Vault::open(dir, o).unwrap().audit_leftovers().unwrap()
    }

    /// The seal/merge race of issue 12 left a segment out of the MANIFEST whose records the
    /// WAL no longer held: the audit calls it lost, while a merge's leftover input (its ids
    /// held by the listed segments) is not.
    #[test]
    fn a_segment_the_manifest_lost_is_found_and_a_merge_leftover_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), options()).unwrap();
        sealed(&vault, 0);
        sealed(&vault, 1);
        drop(vault);
        assert!(audit(dir.path()).is_empty());

        // A merge's input left behind: a copy of a listed segment under an unlisted name.
        let mut manifest = Manifest::load(dir.path()).unwrap().unwrap();
        let (first, second) = (manifest.segments[0].clone(), manifest.segments[1].clone());
        let copy = dir.path().join("seg-00000000000000ff");
        std::fs::create_dir(&copy).unwrap();
        for f in std::fs::read_dir(dir.path().join(&first))
            .unwrap()
            .flatten()
        {
            std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
        }
        let found = audit(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].records, found[0].accounted), (10, 10));
        assert!(!found[0].is_lost());

        // The race: the stored list drops the second segment, whose records were
        // checkpointed out of the WAL by its seal.
        manifest.segments.retain(|s| *s != second);
        manifest.store(dir.path()).unwrap();
        let found = audit(dir.path());
        let lost: Vec<_> = found.iter().filter(|l| l.is_lost()).collect();
        assert_eq!(lost.len(), 1, "{found:?}");
        assert_eq!(
            (lost[0].name.as_str(), lost[0].records),
            (second.as_str(), 10)
        );
        // The audit kept it: nothing was deleted.
        assert!(dir.path().join(&second).is_dir());
    }
}
