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
use crate::guard::Guarded;
use crate::limits::MEMORY_ID_END;
use crate::manifest::Manifest;
use crate::record::{self, KIND_DELETE, KIND_INGEST};
use crate::segment::{self, Segment};
use crate::storage::{self, Storage, VaultDir};

use super::state::State;
use super::{Inner, Vault, VaultOptions};

impl Vault {
    /// Opens (or creates) the vault in `dir`: loads the manifest, maps the segments (no index
    /// is rebuilt), removes leftovers of interrupted seals and compactions, and replays the
    /// WAL past the manifest's checkpoint into the memtable.
    ///
    /// A vault whose files contradict each other is refused (`Error::Corrupt`) before
    /// anything on disk is touched: no MANIFEST next to segment directories or WAL records
    /// (a lost manifest is never read as a new vault, whose open would delete every segment
    /// as a leftover), or a WAL that ends before the manifest's checkpoint.
    pub fn open(dir: &Path, options: VaultOptions) -> Result<Vault> {
        let name = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Every write of this vault goes through the guard: the first failed fsync poisons it.
        let guarded = Guarded::new(Arc::clone(&options.storage), name.clone());
        let poisoned = guarded.poisoned();
        let guarded: Arc<dyn Storage> = Arc::new(guarded);
        let storage = &*guarded;
        let embedder_id = options.embedder.id().to_string();
        let dim = options.embedder.dim();
        let wal_dir = dir.join("wal");
        let stored = if dir.is_dir() {
            Manifest::load(dir)?
        } else {
            None
        };
        let is_new = stored.is_none();
        let mut manifest = match stored {
            Some(manifest) => {
                if manifest.checkpoint_lsn > 0 && !holds_wal_files(&wal_dir)? {
                    return Err(Error::corrupt(
                        &wal_dir,
                        format!(
                            "the WAL has no files but the manifest says records up to lsn {} \
                             were written through it: refusing to start a new log below them",
                            manifest.checkpoint_lsn
                        ),
                    ));
                }
                manifest
            }
            None => {
                refuse_if_written(dir)?;
                Manifest {
                    next_id: 1,
                    ..Manifest::default()
                }
            }
        };
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

        // A vault that has never stored a manifest may have been created by a process that
        // died before syncing its directory entry: sync it (again) before anything written
        // inside can be acknowledged. The WAL directory is made here too (owner-only).
        storage::create_dir_durably(storage, dir, is_new)?;
        storage::create_dir_durably(storage, &wal_dir, is_new)?;

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
            crate::background::spawn(move || warm.iter().for_each(|s| s.warm_codes()));
        }
        let wal_options = WalOptions {
            segment_bytes_max: options.wal_segment_bytes_max,
            durability: options.durability,
            ..WalOptions::default()
        };
        let wal_storage: Arc<dyn wal::Storage> = Arc::clone(&guarded) as _;
        let (wal, recovery) = Wal::open_with_storage(&wal_dir, wal_options, wal_storage)?;
        if wal.last_lsn() < manifest.checkpoint_lsn {
            return Err(Error::corrupt(
                &wal_dir,
                format!(
                    "the WAL ends at lsn {} but the manifest says records up to lsn {} were \
                     written through it: WAL files are missing",
                    wal.last_lsn(),
                    manifest.checkpoint_lsn
                ),
            ));
        }
        if !options.keep_leftovers {
            remove_leftovers(storage, dir, &manifest)?;
        }

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
        let vault = Vault {
            inner: Arc::new(Inner {
                name,
                dir: VaultDir::new(dir.to_path_buf(), guarded),
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
                poisoned,
                unreadable: std::sync::OnceLock::new(),
            }),
        };
        if vault.inner.options.background {
            vault.schedule_work_left_at_open();
        }
        Ok(vault)
    }
}

/// Refuses a vault directory without a MANIFEST that holds what only a vault with one can
/// hold: a segment directory, a WAL checkpoint, or a WAL segment with records (the first
/// ingest stores the manifest before its records reach the WAL). Reads only.
fn refuse_if_written(dir: &Path) -> Result<()> {
    let missing = |what: String| {
        Err(Error::corrupt(
            Manifest::path(dir),
            format!(
                "MANIFEST is missing but {what} exists: refusing to open (a lost manifest is \
                 not an empty vault; restore it from a backup or move the vault aside)"
            ),
        ))
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    for entry in entries {
        let name = entry.map_err(Error::io(dir))?.file_name();
        let name = name.to_string_lossy();
        if segment::is_dir_name(&name) {
            return missing(format!("segment directory {name}"));
        }
    }
    let wal_dir = dir.join("wal");
    let entries = match std::fs::read_dir(&wal_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(&wal_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io(&wal_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map_err(Error::io(entry.path()))?.len();
        if name == "checkpoint" || (name.ends_with(".wal") && len > WAL_EMPTY_SEGMENT_BYTES) {
            return missing(format!("WAL file wal/{name}"));
        }
    }
    Ok(())
}

/// Whether the WAL directory holds a checkpoint or a segment file. Reads only.
fn holds_wal_files(wal_dir: &Path) -> Result<bool> {
    let entries = match std::fs::read_dir(wal_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(wal_dir)(e)),
    };
    for entry in entries {
        let name = entry.map_err(Error::io(wal_dir))?.file_name();
        let name = name.to_string_lossy();
        if name == "checkpoint" || name.ends_with(".wal") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Size of a WAL segment holding no record: its header (`docs/format.md`, WAL segment file).
const WAL_EMPTY_SEGMENT_BYTES: u64 = 32;

/// Removes what interrupted seals, compactions and manifest replaces leave behind: temp
/// directories and files, and segment directories the manifest does not name. No sync: a
/// removal that does not reach the disk is redone at the next open.
fn remove_leftovers(storage: &dyn Storage, dir: &Path, manifest: &Manifest) -> Result<()> {
    let live: HashSet<&str> = manifest.segments.iter().map(String::as_str).collect();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if segment::is_dir_name(&name) && !live.contains(name.as_str()) {
            storage.remove_dir_all(&path).map_err(Error::io(&path))?;
        } else if name.ends_with(".tmp") {
            storage.remove(&path).map_err(Error::io(&path))?;
        }
    }
    Ok(())
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
