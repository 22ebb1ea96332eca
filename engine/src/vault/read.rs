//! Reads that are not searches: one memory by id, newest-first listing, stats, verify.

use std::path::Path;

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::record::{Memory, MemoryId};

use super::{Vault, VaultStats};

impl Vault {
    /// One memory by id, unless deleted.
    pub fn get(&self, id: MemoryId) -> Result<Option<Memory>> {
        self.check_open()?;
        let state = self.inner.state.read();
        if state.deleted.contains(&id) {
            return Ok(None);
        }
        Ok(state.locate(id).map(|loc| state.memory(loc)))
    }

    /// Newest first: up to `limit` memories with id < `before` (of one session, when given).
    pub fn list(
        &self,
        before: Option<MemoryId>,
        limit: usize,
        session_id: Option<&str>,
    ) -> Result<Vec<Memory>> {
        self.check_open()?;
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
        let segments = self.inner.state.read().segments.clone();
        segments.iter().try_for_each(|s| s.verify())
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
