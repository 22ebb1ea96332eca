//! Opening a vault: the manifest, the segments it names (mapped, no index rebuilt), removal
//! of leftovers of interrupted seals and compactions, and WAL replay past the checkpoint.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};

use parking_lot::{Mutex, RwLock};
use wal::{Wal, WalOptions};

use crate::error::{Error, Result};
use crate::footprint::MemoryGauge;
use crate::limits::{MEMORY_ID_END, WAL_SEGMENT_BYTES_MAX};
use crate::manifest::Manifest;
use crate::record::{self, KIND_DELETE, KIND_INGEST};
use crate::segment::{self, Segment};

use super::state::State;
use super::{Inner, Vault, VaultOptions};

impl Vault {
    /// Opens (or creates) the vault in `dir`: loads the manifest, maps the segments (no index
    /// is rebuilt), removes leftovers of interrupted seals and compactions, and replays the
    /// WAL past the manifest's checkpoint into the memtable.
    pub fn open(dir: &Path, options: VaultOptions) -> Result<Vault> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let embedder_id = options.embedder.id().to_string();
        let dim = options.embedder.dim();
        let mut manifest = Manifest::load(dir)?.unwrap_or(Manifest {
            next_id: 1,
            ..Manifest::default()
        });
        if let Some(stored) = &manifest.embedder
            && (*stored != embedder_id || manifest.dim as usize != dim)
        {
            return Err(Error::EmbedderMismatch {
                stored: stored.clone(),
                stored_dim: manifest.dim,
                configured: embedder_id,
                configured_dim: dim as u32,
            });
        }
        manifest.next_id = manifest.next_id.max(1);

        // Leftovers: temp dirs and segments no manifest names (a crash mid-seal/compaction).
        let live: HashSet<&str> = manifest.segments.iter().map(String::as_str).collect();
        for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
            let entry = entry.map_err(Error::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if segment::is_dir_name(&name) && !live.contains(name.as_str()) {
                std::fs::remove_dir_all(&path).map_err(Error::io(&path))?;
            } else if name.ends_with(".tmp") {
                std::fs::remove_file(&path).map_err(Error::io(&path))?;
            }
        }

        let segments = manifest
            .segments
            .iter()
            .map(|name| Segment::open(&dir.join(name), dim).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        if options.background && !segments.is_empty() {
            // The int8 codes of large segments (tens of ms for 100k records) are built off
            // the open path, so neither the open nor the first search pays for them; a search
            // that arrives first builds them itself (the other waits on the same OnceLock).
            let warm = segments.clone();
            rayon::spawn(move || warm.iter().for_each(|s| s.warm_codes()));
        }
        let wal_options = WalOptions {
            segment_bytes_max: WAL_SEGMENT_BYTES_MAX,
            durability: options.durability,
            ..WalOptions::default()
        };
        let (wal, recovery) = Wal::open(&dir.join("wal"), wal_options)?;

        let mut state = State::new(
            dim,
            Arc::new(MemoryGauge::new(Arc::clone(&options.memory_total))),
        );
        state.segments = segments;
        state.deleted = manifest.tombstones.iter().copied().collect();
        for seg in &state.segments {
            for row in seg.rows() {
                if !state.deleted.contains(&row.id) {
                    *state.hashes.entry(row.content_hash).or_insert(0) += 1;
                }
            }
        }
        let mut max_id = state
            .segments
            .iter()
            .map(|s| s.id_range().1)
            .max()
            .unwrap_or(0);
        for rec in recovery
            .records
            .into_iter()
            .filter(|r| r.lsn > manifest.checkpoint_lsn)
        {
            match rec.kind {
                KIND_INGEST => {
                    let records = record::decode_ingest(&rec.payload)?;
                    if records.iter().any(|r| r.vector.len() != dim) {
                        return Err(Error::corrupt(
                            dir.join("wal"),
                            "WAL vector of another dimension",
                        ));
                    }
                    max_id = max_id.max(records.iter().map(|r| r.memory.id).max().unwrap_or(0));
                    state.apply_ingest(records);
                }
                KIND_DELETE => {
                    for id in record::decode_delete(&rec.payload)? {
                        state.apply_delete(id);
                    }
                }
                kind => {
                    return Err(Error::corrupt(
                        dir.join("wal"),
                        format!("unknown WAL record kind {kind}"),
                    ));
                }
            }
        }
        state.refresh_memory();
        if max_id >= MEMORY_ID_END || manifest.next_id > MEMORY_ID_END {
            return Err(Error::corrupt(
                dir,
                format!(
                    "memory id {} past the id space (ids stay below {MEMORY_ID_END})",
                    max_id.max(manifest.next_id)
                ),
            ));
        }
        let next_id = manifest.next_id.max(max_id + 1);
        let next_segment = manifest.next_segment;
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Vault {
            inner: Arc::new(Inner {
                name,
                dir: dir.to_path_buf(),
                wal,
                options,
                dim,
                gate: RwLock::new(()),
                seal_lock: Mutex::new(()),
                compact_lock: Mutex::new(()),
                delete_lock: Mutex::new(()),
                manifest: Mutex::new(manifest),
                memory: Arc::clone(&state.memory),
                state: RwLock::new(state),
                next_id: AtomicU64::new(next_id),
                next_segment: AtomicU64::new(next_segment),
                closed: AtomicBool::new(false),
                jobs: AtomicUsize::new(0),
                seal_scheduled: AtomicBool::new(false),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::limits::MEMORY_ID_END;
    use crate::manifest::Manifest;
    use crate::record::{self, KIND_INGEST};
    use crate::vault::Vault;
    use crate::vault::testing::{options, said};
    use wal::{Wal, WalOptions};

    /// Regression (fuzz target `wal_payload`): a WAL record with valid framing carrying id
    /// `u64::MAX` made `open` overflow computing the next id (a panic with overflow checks,
    /// a wrapped `next_id` handing out ids already taken without them).
    #[test]
    fn ids_past_the_id_space_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), options()).unwrap();
        vault.ingest(vec![said("kept")]).unwrap();
        drop(vault);
        let wal_dir = dir.path().join("wal");
        let (wal, recovery) = Wal::open(&wal_dir, WalOptions::default()).unwrap();
        let mut forged = record::decode_ingest(&recovery.records[0].payload).unwrap();
        forged[0].memory.id = u64::MAX;
        forged[0].memory.content_hash ^= 1;
        wal.append(KIND_INGEST, &record::encode_ingest(&forged))
            .unwrap();
        drop(wal);
        assert!(matches!(
            Vault::open(dir.path(), options()),
            Err(Error::Corrupt { .. })
        ));
    }

    /// The same bound on a manifest's `next_id`: a value near `u64::MAX` would make ingest
    /// wrap to ids already taken (and silently drop the new memories as duplicates).
    #[test]
    fn a_manifest_next_id_past_the_id_space_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        Vault::open(dir.path(), options())
            .unwrap()
            .ingest(vec![said("kept")])
            .unwrap();
        let mut manifest = Manifest::load(dir.path()).unwrap().unwrap();
        manifest.next_id = u64::MAX;
        manifest.store(dir.path()).unwrap();
        assert!(matches!(
            Vault::open(dir.path(), options()),
            Err(Error::Corrupt { .. })
        ));
        manifest.next_id = MEMORY_ID_END;
        manifest.store(dir.path()).unwrap();
        let vault = Vault::open(dir.path(), options()).unwrap();
        assert_eq!(
            vault.get(1).unwrap().map(|m| m.text).as_deref(),
            Some("kept")
        );
    }
}
