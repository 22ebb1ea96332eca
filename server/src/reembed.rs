//! `memoryrouter reembed`: rebuilds a vault's vectors with the configured embedder after the
//! operator changed `[embedder]`, offline (the server must be stopped: the command holds the
//! data directory's lock).
//!
//! For each vault pinned to another embedder:
//! 1. the vault is opened for reading with an embedder that only *names* the pinned one
//!    ([`ReadOnlyPin`]: stored vectors are read, nothing is embedded or written);
//! 2. its memories are copied, oldest first, into a new vault under
//!    `DATA_DIR/reembed/new/ID`, embedded by the configured embedder — exactly what `export`
//!    then `import` would store (same texts, sessions, roles, times, metadata; ids renumbered
//!    from 1, as on import);
//! 3. once the new vault is durable, the two directories are swapped with one
//!    `renameat2(RENAME_EXCHANGE)`: at every instant `vaults/ID` is either the whole old vault
//!    or the whole new one, so the old vectors serve until the swap and a crash at any step
//!    leaves a working vault. The old directory is kept as `DATA_DIR/reembed/ID.old-<ms>`
//!    for the operator to delete.
//!
//! A vault already written by the configured embedder, or never pinned, is left alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{Embedder, EmbedderKind};

use crate::config::{Config, Flags};
use crate::error::Error;
use crate::progress::{Progress, Unit};

/// Working directory of `reembed` under the data directory.
pub(crate) const REEMBED_DIR: &str = "reembed";

/// Names the embedder a vault is pinned to, so the vault opens for reading; refuses to
/// embed anything (reembed never searches or writes the old vault).
struct ReadOnlyPin {
    id: String,
    dim: usize,
}

impl Embedder for ReadOnlyPin {
    fn id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn kind(&self) -> EmbedderKind {
        EmbedderKind::Lexical
    }

    fn embed_batch(&self, _texts: &[&str]) -> engine::Result<Vec<Vec<f32>>> {
        Err(engine::Error::Embedder {
            embedder: self.id.clone(),
            reason: "reembed reads the old vault only".into(),
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// `memoryrouter reembed --key-id ID` (or `--all`): see the module docs.
pub fn reembed(flags: &Flags, key_id: Option<&str>, all: bool, quiet: bool) -> Result<(), Error> {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(flags, &env)?;
    let (_lock, catalog) = crate::commands::open_catalog_for(&config)?;
    let ids: Vec<String> = match (key_id, all) {
        (Some(id), false) => {
            catalog
                .key(id)
                .ok_or_else(|| Error::KeyNotFound { id: id.to_owned() })?;
            vec![id.to_owned()]
        }
        (None, true) => catalog
            .accounts()
            .iter()
            .flat_map(|a| catalog.keys(&a.id))
            .map(|k| k.id)
            .collect(),
        _ => {
            return Err(Error::Config {
                field: "reembed".into(),
                reason: "give either --key-id ID or --all".into(),
            });
        }
    };
    let mut metrics = crate::metrics::EmbedderMetrics::default();
    let embedder = crate::embedder::open(
        &config.embedder,
        &|n| env.get(n).cloned(),
        &|provider| crate::embedder::first_account_key(&catalog, provider),
        &mut metrics,
    )?;
    let vaults = config.data_dir.join(crate::datadir::VAULTS_DIR);
    let work = config.data_dir.join(REEMBED_DIR);
    let mut done = 0usize;
    for id in &ids {
        if !vaults.join(id).is_dir() {
            continue;
        }
        if reembed_one(&config, &vaults, &work, id, &embedder, quiet)? {
            done += 1;
        }
    }
    eprintln!(
        "reembedded {done} of {} vault(s) with {}",
        ids.len(),
        embedder.id()
    );
    Ok(())
}

fn engine_at(
    config: &Config,
    root: PathBuf,
    embedder: Arc<dyn Embedder>,
) -> Result<engine::Engine, Error> {
    let mut engine_config = engine::EngineConfig::new(root);
    engine_config.durability = config.durability.to_wal();
    engine_config.policy = Some(engine::RetrievalPolicy::for_kind(embedder.kind()));
    engine_config.embedder = embedder;
    Ok(engine::Engine::open(engine_config)?)
}

/// One vault; `false` when it needed nothing.
fn reembed_one(
    config: &Config,
    vaults: &Path,
    work: &Path,
    id: &str,
    embedder: &Arc<dyn Embedder>,
    quiet: bool,
) -> Result<bool, Error> {
    // Opened with the new embedder first: an unpinned or already matching vault is done.
    let probe = engine_at(config, vaults.to_owned(), Arc::clone(embedder))?;
    let (stored, stored_dim) = match probe.vault(id) {
        Ok(_) => {
            if !quiet {
                eprintln!("{id}: already uses {} (or holds nothing)", embedder.id());
            }
            return Ok(false);
        }
        Err(engine::Error::EmbedderMismatch {
            stored, stored_dim, ..
        }) => (stored, stored_dim),
        Err(other) => return Err(other.into()),
    };
    drop(probe);
    let old_engine = engine_at(
        config,
        vaults.to_owned(),
        Arc::new(ReadOnlyPin {
            id: stored.clone(),
            dim: stored_dim as usize,
        }),
    )?;
    let old = old_engine.vault(id)?;
    let total = old.stats()?.memories;
    // Oldest first, as they were ingested: each memory is indexed with the previous one of
    // its session. Held in memory (one `Memory` each) for the copy.
    let mut memories = Vec::new();
    crate::api::transfer::for_each_memory(&old, |m| {
        memories.push(m.clone());
        Ok(())
    })?;
    memories.reverse();

    let staging_root = work.join("new");
    let staged = staging_root.join(id);
    if staged.exists() {
        // A previous run stopped before its swap: its copy is incomplete or stale.
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    }
    std::fs::create_dir_all(&staging_root).map_err(io(&staging_root))?;
    let new_engine = engine_at(config, staging_root.clone(), Arc::clone(embedder))?;
    let new = new_engine.vault(id)?;
    eprintln!(
        "{id}: {total} memories from {stored} ({stored_dim} dims) to {} ({} dims)",
        embedder.id(),
        embedder.dim()
    );
    let progress = Progress::new("reembedding", memories.len() as u64, Unit::Items, quiet);
    let now = crate::time::now_ms();
    let mut batch = Vec::new();
    let mut copied = 0usize;
    for memory in &memories {
        let line = crate::api::transfer::export_line(memory);
        let parsed = crate::api::transfer::import_line(&line, now, "", None).map_err(|reason| {
            Error::ImportLine {
                line: copied + 1,
                reason,
            }
        })?;
        progress.inc(1);
        let Some(parsed) = parsed else { continue };
        batch.push(parsed);
        if batch.len() >= crate::api::transfer::IMPORT_BATCH_MAX {
            copied += new.ingest(std::mem::take(&mut batch))?.stored.len();
        }
    }
    if !batch.is_empty() {
        copied += new.ingest(batch)?.stored.len();
    }
    new_engine.flush()?;
    drop(new);
    drop(new_engine);
    drop(old);
    drop(old_engine);
    progress.finish();

    // The swap: one atomic exchange, then the old directory out of the way.
    let live = vaults.join(id);
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        &live,
        rustix::fs::CWD,
        &staged,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| Error::Io {
        path: live.clone(),
        source: e.into(),
    })?;
    sync_dir(vaults)?;
    sync_dir(&staging_root)?;
    let kept = work.join(format!("{id}.old-{now}"));
    std::fs::rename(&staged, &kept).map_err(io(&kept))?;
    sync_dir(work)?;
    sync_dir(&staging_root)?;
    eprintln!(
        "{id}: {copied} records embedded and swapped in; the old vault is kept at {}",
        kept.display()
    );
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
