//! The CLI's commands other than `serve`, and the first-start bootstrap they share with it.
//!
//! Offline commands open the data directory themselves, so they take its lock: running one
//! while the server runs is refused with a clear message instead of corrupting a WAL.

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::path::Path;

use crate::catalog::Catalog;
use crate::config::{Config, Flags};
use crate::datadir;
use crate::error::Error;
use crate::progress::{Progress, Unit};
use crate::time::{format_ms, now_ms};

/// First start: creates the account if there is none, and its admin key if it has none.
/// The key is written to `DATA_DIR/admin.key` (0600) *before* the catalog records it, so
/// a crash in between cannot leave an admin key whose text nobody has. Returns the key
/// when one was minted; a restart finds the key and never rotates it.
pub(crate) fn bootstrap(catalog: &Catalog, data_dir: &Path) -> Result<Option<String>, Error> {
    let account = match catalog.accounts().into_iter().next() {
        Some(account) => account,
        None => catalog.create_account(now_ms())?,
    };
    if catalog.keys(&account.id).iter().any(|k| k.is_admin) {
        return Ok(None);
    }
    let key = crate::secret::mint_key()?;
    datadir::write_secret_file(&data_dir.join(datadir::ADMIN_KEY_FILE), &format!("{key}\n"))?;
    catalog.register_key(&key, &account.id, Some("admin".to_owned()), true, now_ms())?;
    Ok(Some(key))
}

/// The first-start message: the key once, where it is saved, and how to use it.
pub(crate) fn admin_key_banner(key: &str, data_dir: &Path, address: &str) -> String {
    let file = data_dir.join(datadir::ADMIN_KEY_FILE);
    format!(
        "\nCreated the account's admin key (shown once; saved to {file} with mode 0600):\n\n    {key}\n\n\
         Mint a Memory Key per user:\n\n    curl -s -X POST http://{address}/v1/keys -H \"Authorization: Bearer $(cat {file})\" \
         -H 'Content-Type: application/json' -d '{{\"name\":\"user:42\"}}'\n",
        file = file.display()
    )
}

fn load(flags: &Flags) -> Result<Config, Error> {
    let env: HashMap<String, String> = std::env::vars().collect();
    Config::load(flags, &env)
}

/// Opens the catalog alone (keys commands do not need the engine).
pub(crate) fn open_catalog_for(config: &Config) -> Result<(datadir::DirLock, Catalog), Error> {
    datadir::ensure(&config.data_dir)?;
    let lock = datadir::lock(&config.data_dir)?;
    let secret =
        datadir::load_or_create_secret(&config.data_dir, config.secret_key_hex.as_deref())?;
    let catalog = Catalog::open(&config.data_dir.join(datadir::CATALOG_DIR), &secret)?;
    if let Some(key) = bootstrap(&catalog, &config.data_dir)? {
        println!(
            "{}",
            admin_key_banner(&key, &config.data_dir, &config.listen.to_string())
        );
    }
    Ok((lock, catalog))
}

pub fn keys_create(flags: &Flags, name: Option<String>, admin: bool) -> Result<(), Error> {
    let config = load(flags)?;
    let (_lock, catalog) = open_catalog_for(&config)?;
    let account = catalog
        .accounts()
        .into_iter()
        .next()
        .ok_or_else(|| Error::KeyNotFound {
            id: "account".into(),
        })?;
    let (record, key) = catalog.create_key(&account.id, name, admin, now_ms())?;
    crate::audit::AuditLog::open(&config.data_dir)?.record(&crate::audit::AuditEntry {
        at_ms: record.created_at_ms,
        account_id: account.id,
        actor: "cli".into(),
        action: "key.create".into(),
        target: record.id.clone(),
        detail: serde_json::json!({"name": record.name, "prefix": record.hint, "admin": admin}),
    })?;
    println!("{key}");
    eprintln!(
        "created {} (shown once; only its hash is stored)",
        record.id
    );
    Ok(())
}

pub fn keys_list(flags: &Flags, json: bool) -> Result<(), Error> {
    let config = load(flags)?;
    let (_lock, catalog) = open_catalog_for(&config)?;
    if json {
        let keys: Vec<serde_json::Value> = catalog
            .accounts()
            .iter()
            .flat_map(|account| catalog.keys(&account.id))
            .map(|key| crate::api::keys::key_json(&key))
            .collect();
        println!("{}", serde_json::Value::Array(keys));
        return Ok(());
    }
    println!(
        "{:<22} {:<8} {:<6} {:<25} {:<8} NAME",
        "ID", "PREFIX", "ADMIN", "CREATED", "REVOKED"
    );
    for account in catalog.accounts() {
        for key in catalog.keys(&account.id) {
            println!(
                "{:<22} {:<8} {:<6} {:<25} {:<8} {}",
                key.id,
                key.hint,
                key.is_admin,
                format_ms(key.created_at_ms),
                key.revoked_at_ms.is_some(),
                key.name.unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub fn keys_revoke(flags: &Flags, id: &str, purge: bool) -> Result<(), Error> {
    let config = load(flags)?;
    let (lock, catalog) = open_catalog_for(&config)?;
    let account_id = catalog
        .key(id)
        .map(|k| k.account_id)
        .ok_or_else(|| Error::KeyNotFound { id: id.to_owned() })?;
    let revoked = catalog.revoke_key(id, now_ms())?;
    catalog.sync()?;
    let audit = crate::audit::AuditLog::open(&config.data_dir)?;
    let entry = |action: &str, detail| crate::audit::AuditEntry {
        at_ms: now_ms(),
        account_id: account_id.clone(),
        actor: "cli".into(),
        action: action.into(),
        target: id.to_owned(),
        detail,
    };
    audit.record(&entry(
        "key.revoke",
        serde_json::json!({"revoked_keys": revoked}),
    ))?;
    if purge {
        let engine = open_engine(&config)?;
        engine.purge_vault(id)?;
        audit.record(&entry("vault.purge", serde_json::Value::Null))?;
    }
    drop(lock);
    match revoked {
        0 => println!("{id} was already revoked"),
        1 => println!("{id} revoked"),
        n => println!("{id} revoked with the {} keys it minted", n - 1),
    }
    Ok(())
}

fn open_engine(config: &Config) -> Result<engine::Engine, Error> {
    let mut engine_config = engine::EngineConfig::new(config.data_dir.join(datadir::VAULTS_DIR));
    engine_config.durability = config.durability.to_wal();
    Ok(engine::Engine::open(engine_config)?)
}

/// Checks the catalog WAL, every vault WAL (read-only), then opens each vault and checks
/// every segment file's checksums. Prints one line per part; fails on the first fault.
pub fn verify(dir: &Path, quiet: bool) -> Result<(), Error> {
    // Both copies: serving survives one damaged copy (and repairs it), verify reports it.
    let catalog_dir = dir.join(datadir::CATALOG_DIR);
    for (name, copy) in [
        ("catalog", catalog_dir.clone()),
        ("catalog mirror", crate::catalog::mirror_dir(&catalog_dir)),
    ] {
        if !copy.is_dir() && name == "catalog mirror" {
            println!("{name}: not written yet (the next start writes it)");
            continue;
        }
        let report = wal::verify(&copy)?;
        println!(
            "{name}: {} records in {} segment(s): ok",
            report.records,
            report.segments.len()
        );
    }
    let vaults_dir = dir.join(datadir::VAULTS_DIR);
    if !vaults_dir.exists() {
        println!("no vaults");
        return Ok(());
    }
    let engine = engine::Engine::open(engine::EngineConfig::new(vaults_dir.clone()))?;
    let ids = engine.vault_ids()?;
    // Segments the MANIFEST lost, before any normal open: it would delete them as leftovers.
    let mut lost: Vec<String> = Vec::new();
    for id in &ids {
        let (missing, leftovers) = engine.audit_segments(id)?;
        for name in missing {
            println!(
                "vault {id}: LOST: MANIFEST lists segment {name} but its directory is missing; \
                 the memories it held are gone"
            );
            lost.push(format!("{id}/{name}"));
        }
        for leftover in leftovers {
            let engine::Leftover {
                name,
                records,
                accounted,
                id_range: (first, last),
                unopenable,
            } = &leftover;
            if leftover.is_lost() {
                println!(
                    "vault {id}: LOST: segment {name} ({records} memories, ids {first}..={last}) \
                     is not in the MANIFEST and neither the listed segments nor the WAL hold \
                     any of them; the next start would delete it (copy it aside first)"
                );
                lost.push(format!("{id}/{name}"));
            } else if let Some(why) = unopenable {
                println!("vault {id}: leftover {name} (removed at the next start): {why}");
            } else {
                println!(
                    "vault {id}: leftover {name} ({accounted} of {records} memories held \
                     elsewhere; removed at the next start)"
                );
            }
        }
    }
    if !lost.is_empty() {
        return Err(engine::Error::Corrupt {
            path: vaults_dir,
            reason: format!(
                "{} segment(s) lost from their vault's MANIFEST: {}",
                lost.len(),
                lost.join(", ")
            ),
        }
        .into());
    }
    let progress = Progress::new("verifying vaults", ids.len() as u64, Unit::Items, quiet);
    for id in &ids {
        let wal_dir = vaults_dir.join(id).join("wal");
        let report = if wal_dir.exists() {
            Some(wal::verify(&wal_dir)?)
        } else {
            None
        };
        let torn: u64 = report
            .iter()
            .flat_map(|r| &r.segments)
            .map(|s| s.torn_bytes)
            .sum();
        let vault = engine.vault(id)?;
        vault.verify()?;
        let stats = vault.stats()?;
        progress.suspend(|| {
            println!(
                "vault {id}: {} memories, {} segment(s), wal {} records{}: ok",
                stats.memories,
                stats.segments,
                report.map(|r| r.records).unwrap_or(0),
                if torn > 0 {
                    format!(" (cut a torn tail of {torn} bytes)")
                } else {
                    String::new()
                }
            )
        });
        progress.inc(1);
    }
    progress.finish();
    println!("verified {} vault(s): every checksum matches", ids.len());
    Ok(())
}

/// `memoryrouter repair DIR`: every log `verify` refuses is backed up and cut at its first
/// damage (`wal::repair`); clean logs are left alone. Holds the data-directory lock, so it
/// refuses to run beside a server.
pub fn repair(dir: &Path, quiet: bool) -> Result<(), Error> {
    let _lock = datadir::lock(dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let backup_root = dir.join(format!("repair-{stamp}"));
    let mut logs: Vec<(String, std::path::PathBuf)> = vec![
        ("catalog".into(), dir.join(datadir::CATALOG_DIR)),
        (
            "catalog mirror".into(),
            crate::catalog::mirror_dir(&dir.join(datadir::CATALOG_DIR)),
        ),
        (
            "proxy outbox".into(),
            dir.join(crate::proxy::state::OUTBOX_DIR),
        ),
    ];
    let vaults_dir = dir.join(datadir::VAULTS_DIR);
    if let Ok(entries) = std::fs::read_dir(&vaults_dir) {
        let mut ids: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| engine::validate_vault_id(id).is_ok())
            .collect();
        ids.sort();
        logs.extend(
            ids.into_iter()
                .map(|id| (format!("vault {id}"), vaults_dir.join(&id).join("wal"))),
        );
    }
    let mut repaired = 0;
    let progress = Progress::new("checking logs", logs.len() as u64, Unit::Items, quiet);
    for (name, wal_dir) in logs {
        progress.inc(1);
        if !wal_dir.is_dir() || wal::verify(&wal_dir).is_ok() {
            continue;
        }
        let relative = wal_dir.strip_prefix(dir).unwrap_or(&wal_dir);
        let report = wal::repair(&wal_dir, &backup_root.join(relative))?;
        let Some(cut) = report.cut else { continue };
        repaired += 1;
        progress.suspend(|| println!(
            "{name}: {} at byte {}: {}
  cut from lsn {} on: {} intact record(s) after the damage lost, {} bytes and {} whole segment file(s) removed
  backup: {}",
            cut.file.display(),
            cut.offset,
            cut.reason,
            cut.first_lost_lsn,
            cut.records_lost,
            cut.bytes_removed,
            cut.segments_removed.len(),
            report.backup.display()
        ));
    }
    progress.finish();
    if repaired == 0 {
        println!("no damaged log: nothing changed");
    } else {
        println!("repaired {repaired} log(s); run `memoryrouter verify` next");
    }
    Ok(())
}

pub fn export(flags: &Flags, key_id: &str, out: Option<&Path>, quiet: bool) -> Result<(), Error> {
    let config = load(flags)?;
    let (_lock, catalog) = open_catalog_for(&config)?;
    catalog.key(key_id).ok_or_else(|| Error::KeyNotFound {
        id: key_id.to_owned(),
    })?;
    let engine = open_engine(&config)?;
    let vault = engine.vault(key_id)?;
    let mut sink: Box<dyn std::io::Write> = match out {
        // Memories in plain text: owner-only, like the data directory.
        Some(path) => Box::new(
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true),
                datadir::SECRET_FILE_MODE,
            )
            .open(path)
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let io = |source| Error::Io {
        path: out.map(Path::to_owned).unwrap_or_else(|| "stdout".into()),
        source,
    };
    let total = vault.stats()?.memories;
    let progress = Progress::new("exporting", total, Unit::Items, quiet);
    let mut count = 0usize;
    crate::api::transfer::for_each_memory(&vault, |memory| {
        count += 1;
        progress.inc(1);
        writeln!(sink, "{}", crate::api::transfer::export_line(memory)).map_err(io)
    })?;
    sink.flush().map_err(io)?;
    progress.finish();
    if !quiet {
        eprintln!("exported {count} memories from {key_id}");
    }
    Ok(())
}

pub fn import(flags: &Flags, key_id: &str, file: &Path, quiet: bool) -> Result<(), Error> {
    let config = load(flags)?;
    let (_lock, catalog) = open_catalog_for(&config)?;
    let account_id = catalog
        .key(key_id)
        .ok_or_else(|| Error::KeyNotFound {
            id: key_id.to_owned(),
        })?
        .account_id;
    let engine = open_engine(&config)?;
    let vault = engine.vault(key_id)?;
    let opened = std::fs::File::open(file).map_err(|source| Error::Io {
        path: file.to_owned(),
        source,
    })?;
    let total_bytes = opened.metadata().map_or(0, |m| m.len());
    let progress = Progress::new("importing", total_bytes, Unit::Bytes, quiet);
    let mut bytes_read = 0u64;
    let reader = std::io::BufReader::new(opened);
    let (mut stored, mut skipped) = (0usize, 0usize);
    let mut batch = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| Error::Io {
            path: file.to_owned(),
            source,
        })?;
        // The line and its newline: the bar counts bytes of the file.
        bytes_read += line.len() as u64 + 1;
        progress.set_position(bytes_read.min(total_bytes));
        if line.trim().is_empty() {
            continue;
        }
        let memory =
            crate::api::transfer::import_line(&line, now_ms(), "", None).map_err(|reason| {
                Error::ImportLine {
                    line: index + 1,
                    reason,
                }
            })?;
        // A record of nothing but white space holds nothing to import (as on ingest).
        let Some(memory) = memory else {
            skipped += 1;
            continue;
        };
        batch.push(memory);
        if batch.len() >= crate::api::transfer::IMPORT_BATCH_MAX {
            let outcome = vault.ingest(std::mem::take(&mut batch))?;
            stored += outcome.stored.len();
            skipped += outcome.skipped;
        }
    }
    if !batch.is_empty() {
        let outcome = vault.ingest(batch)?;
        stored += outcome.stored.len();
        skipped += outcome.skipped;
    }
    engine.flush()?;
    crate::audit::AuditLog::open(&config.data_dir)?.record(&crate::audit::AuditEntry {
        at_ms: now_ms(),
        account_id,
        actor: "cli".into(),
        action: "memory.import".into(),
        target: key_id.to_owned(),
        detail: serde_json::json!({"imported": stored, "failed": 0}),
    })?;
    progress.finish();
    if !quiet {
        eprintln!("imported into {key_id}: {stored} stored, {skipped} already present");
    }
    Ok(())
}

/// `memoryrouter health`: one `GET` over plain HTTP/1.1 with a short timeout; `Ok` only for
/// a `200`. Hand-rolled on `std::net` so the container image needs no curl and the command
/// no runtime.
pub fn health(url: &str) -> Result<(), Error> {
    use std::io::Read as _;
    use std::net::ToSocketAddrs as _;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    const ANSWER_BYTES_MAX: u64 = 64 * 1024;
    let failed = |reason: String| Error::Health {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| failed("only http:// URLs are supported".into()))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, "/"),
    };
    let address = authority
        .to_socket_addrs()
        .map_err(|e| failed(format!("cannot resolve {authority}: {e}")))?
        .next()
        .ok_or_else(|| failed(format!("{authority} has no address")))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|e| failed(e.to_string()))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| failed(e.to_string()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| failed(e.to_string()))?;
    let mut answer = String::new();
    stream
        .take(ANSWER_BYTES_MAX)
        .read_to_string(&mut answer)
        .map_err(|e| failed(e.to_string()))?;
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(failed(format!("answered {status:?}")))
    }
}
