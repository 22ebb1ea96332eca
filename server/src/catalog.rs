//! The catalog: accounts, Memory Keys (as SHA-256 hashes) and encrypted provider keys.
//!
//! Persisted through its own write-ahead log, exactly like a vault: every change is one WAL
//! record (a kind byte and a JSON payload) appended and fsynced before it is applied to the
//! in-memory maps, and at start the records are replayed into those maps. Nothing is ever
//! rewritten in place, so a crash leaves either the old or the new state. The catalog is
//! small (one record per key or provider-key change) so it is never checkpointed;
//! `last_used_at` is the exception that would grow it per request, so it is kept in memory
//! and written as one batched record by [`Catalog::flush_last_used`] (every minute and at
//! shutdown): a crash may forget the last minute of "last used" times, never a key or a
//! revocation.
//!
//! **Two copies.** The log is kept twice, in `DATA_DIR/catalog/` and
//! `DATA_DIR/catalog-mirror/` ([`mirror_dir`]): every change is appended and fsynced to the
//! first, then to the second, before it is applied and acknowledged. One damaged file must
//! not stop every tenant, so opening reads both and takes the longer intact history: a copy
//! that does not open (damage before intact frames), or is shorter (a tail cut at damage,
//! a crash between the two appends, a deleted file), or disagrees, is rebuilt from the
//! other — the damaged directory is kept aside as `catalog….damaged-<ms>` — and the repair
//! is logged and reported ([`Catalog::repairs`]). Only when neither copy opens does the
//! catalog refuse to open. A data directory from before the mirror gets it built at its
//! first open. If the second append fails after the first succeeded, the change is applied
//! (it is durable in one copy, and the next open would apply it) but answered with an
//! error, and the catalog refuses further changes until a restart reconciles the copies.
//!
//! Catalog writes are always fsynced, whatever `durability` says for memories: a revocation
//! answered 200 must not come back after a power loss. The directories are owner-only and
//! created durably; a failed fsync poisons the catalog ([`Catalog::is_poisoned`]) as it does
//! the log under it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::secret::{self, Cipher, KeyHash};

/// WAL record kinds. Values are on disk: never renumber, only add.
pub(crate) mod kind {
    pub(crate) const ACCOUNT_CREATED: u8 = 1;
    pub(crate) const KEY_CREATED: u8 = 2;
    pub(crate) const KEY_REVOKED: u8 = 3;
    pub(crate) const PROVIDER_KEY_SET: u8 = 4;
    pub(crate) const PROVIDER_KEY_DELETED: u8 = 5;
    pub(crate) const KEYS_USED: u8 = 6;
    /// One revocation of a key and every key it minted, transitively: one record, so a
    /// power cut leaves either the whole subtree revoked or none of it.
    pub(crate) const KEYS_REVOKED: u8 = 7;
}

/// Longest key name accepted.
pub(crate) const KEY_NAME_CHARS_MAX: usize = 256;
/// Longest provider name (`[a-z0-9_-]`).
pub(crate) const PROVIDER_NAME_CHARS_MAX: usize = 64;
/// Longest stored provider API key or base URL.
pub(crate) const PROVIDER_VALUE_CHARS_MAX: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Account {
    pub id: String,
    pub created_at_ms: i64,
}

/// A Memory Key as the catalog knows it. `hash` is SHA-256 of the key text; the key itself
/// is never stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub account_id: String,
    pub name: Option<String>,
    /// Hex SHA-256 of the key text.
    pub hash: String,
    /// First characters of the key (`mk_AbCd`), for recognising it in a list.
    pub hint: String,
    pub is_admin: bool,
    /// The key that minted this one (`POST /v1/keys`), `None` for keys the operator made
    /// (bootstrap, `memoryrouter keys create`) and for keys recorded before lineage existed.
    /// Revoking a key revokes every key below it.
    #[serde(default)]
    pub parent_id: Option<String>,
    pub created_at_ms: i64,
    #[serde(default)]
    pub last_used_at_ms: Option<i64>,
    #[serde(default)]
    pub revoked_at_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct KeyRevoked {
    id: String,
    at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct KeysRevoked {
    ids: Vec<String>,
    at_ms: i64,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredProviderKey {
    account_id: String,
    provider: String,
    /// hex(nonce ‖ ChaCha20-Poly1305 ciphertext ‖ tag), aad = `account_id/provider`.
    sealed: String,
    hint: String,
    base_url: Option<String>,
    updated_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct ProviderKeyDeleted {
    account_id: String,
    provider: String,
}

#[derive(Serialize, Deserialize)]
struct KeysUsed {
    uses: Vec<(String, i64)>,
}

/// A key to mint: whose, named how, minted by which key, under which cap.
pub(crate) struct NewKey<'a> {
    pub account_id: &'a str,
    pub name: Option<String>,
    pub is_admin: bool,
    /// The minting key (lineage); `None` for the operator's keys.
    pub parent_id: Option<&'a str>,
    /// Most active keys the account may hold, this one included; `None` = no cap.
    pub active_max: Option<usize>,
}

/// A decrypted provider key, for the proxy.
#[derive(Clone)]
pub(crate) struct ProviderKey {
    pub api_key: String,
    pub base_url: Option<String>,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("api_key", &"<hidden>")
            .field("base_url", &self.base_url)
            .finish()
    }
}

/// A provider key as listed: masked.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProviderKeyInfo {
    pub provider: String,
    pub hint: String,
    pub base_url: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Default)]
struct State {
    accounts: BTreeMap<String, Account>,
    keys: BTreeMap<String, KeyRecord>,
    /// Active (not revoked) keys by hash: the lookup path of every request.
    by_hash: HashMap<KeyHash, String>,
    provider_keys: BTreeMap<(String, String), StoredProviderKey>,
    /// Cluster mode: the sequence number of the last record of the shared log applied
    /// (records are applied strictly in order, once). Unused by the local log.
    applied_seq: u64,
}

impl State {
    /// `id` and every key minted below it, transitively, that is not revoked yet (`id`
    /// itself whatever its state). Breadth first over a children index built once.
    fn subtree_active(&self, id: &str) -> Vec<String> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        for key in self.keys.values() {
            if let Some(parent) = &key.parent_id {
                children.entry(parent.as_str()).or_default().push(&key.id);
            }
        }
        let mut out = vec![id.to_owned()];
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        seen.insert(id);
        let mut queue = std::collections::VecDeque::from([id]);
        while let Some(next) = queue.pop_front() {
            for child in children.get(next).into_iter().flatten() {
                if seen.insert(child) {
                    queue.push_back(child);
                    if self
                        .keys
                        .get(*child)
                        .is_some_and(|k| k.revoked_at_ms.is_none())
                    {
                        out.push((*child).to_owned());
                    }
                }
            }
        }
        out
    }

    fn active_keys(&self, account_id: &str) -> usize {
        self.keys
            .values()
            .filter(|k| k.account_id == account_id && k.revoked_at_ms.is_none())
            .count()
    }

    fn apply(&mut self, kind: u8, payload: &[u8], lsn: u64) -> Result<(), Error> {
        let corrupt = |reason: String| Error::CorruptCatalog { lsn, kind, reason };
        match kind {
            kind::ACCOUNT_CREATED => {
                let account: Account =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                self.accounts.insert(account.id.clone(), account);
            }
            kind::KEY_CREATED => {
                let key: KeyRecord =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                let hash = secret::from_hex(&key.hash)
                    .and_then(|bytes| <KeyHash>::try_from(bytes).ok())
                    .ok_or_else(|| corrupt("key hash is not 32 hex bytes".into()))?;
                if key.revoked_at_ms.is_none() {
                    self.by_hash.insert(hash, key.id.clone());
                }
                self.keys.insert(key.id.clone(), key);
            }
            kind::KEY_REVOKED => {
                let revoked: KeyRevoked =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                if let Some(key) = self.keys.get_mut(&revoked.id) {
                    key.revoked_at_ms.get_or_insert(revoked.at_ms);
                    self.by_hash.retain(|_, id| *id != revoked.id);
                }
            }
            kind::KEYS_REVOKED => {
                let revoked: KeysRevoked =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                for id in &revoked.ids {
                    if let Some(key) = self.keys.get_mut(id) {
                        key.revoked_at_ms.get_or_insert(revoked.at_ms);
                    }
                }
                let ids: std::collections::HashSet<&String> = revoked.ids.iter().collect();
                self.by_hash.retain(|_, id| !ids.contains(id));
            }
            kind::PROVIDER_KEY_SET => {
                let stored: StoredProviderKey =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                self.provider_keys
                    .insert((stored.account_id.clone(), stored.provider.clone()), stored);
            }
            kind::PROVIDER_KEY_DELETED => {
                let deleted: ProviderKeyDeleted =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                self.provider_keys
                    .remove(&(deleted.account_id, deleted.provider));
            }
            kind::KEYS_USED => {
                let used: KeysUsed =
                    serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                for (id, at_ms) in used.uses {
                    if let Some(key) = self.keys.get_mut(&id) {
                        key.last_used_at_ms = key.last_used_at_ms.max(Some(at_ms));
                    }
                }
            }
            other => {
                return Err(corrupt(format!(
                    "unknown record kind {other} (written by a newer version?)"
                )));
            }
        }
        Ok(())
    }
}

/// Where the catalog's records go: the storage seam between the catalog's logic (records,
/// `apply`, validation) and its log.
enum Log {
    /// One node: two local fsynced copies of the log (see the module docs).
    Local {
        /// The two copies of the log, written in this order (boxed: a `Wal` is large and
        /// the enum would otherwise be as large for the shared log too).
        wals: Box<[wal::Wal; 2]>,
        /// Records the first copy holds and the second missed because the disk was full,
        /// oldest first: appended to the second copy before any later change
        /// (`commit_with`), so the copies keep the same records at the same lsns; a restart
        /// before that rebuilds the short copy from the long one as for any damage.
        mirror_backlog: Mutex<Vec<(u8, Vec<u8>)>>,
    },
    /// Cluster mode: the log shared by every node in etcd (see `docs/scaling.md`), followed
    /// by `follower`, a task that applies other nodes' records as they appear.
    Shared {
        log: crate::cluster::SharedLog,
        follower: tokio::task::JoinHandle<()>,
    },
}

pub struct Catalog {
    log: Log,
    /// Shared with the cluster follower task, which applies other nodes' changes.
    state: Arc<RwLock<State>>,
    /// Held across "append to the WAL, then apply" so the in-memory order of changes is the
    /// WAL's order (two racing revocations/creations replay exactly as they were applied).
    write_lock: Mutex<()>,
    cipher: Cipher,
    /// `last_used_at` updates not yet written to the WAL (see the module docs).
    used: Mutex<HashMap<String, i64>>,
    /// An fsync of the catalog's log failed, or the second copy missed a change the first
    /// has for another reason than a full disk: it refuses changes until the process restarts.
    poisoned: Arc<AtomicBool>,
    /// What opening found damaged and repaired, one sentence each (also logged).
    repairs: Vec<String>,
    /// Cluster mode: the catch-up reads of unknown keys, single-flight (see
    /// [`Catalog::lookup_fresh`]).
    catch_ups: CatchUps,
}

/// Single-flight for the catch-up reads unknown keys trigger: one read at a time, at most
/// one per [`CATCH_UP_INTERVAL_MS`], and a request shares any read that *started after it
/// arrived* (an earlier read may predate the mint of the key it presents, so it is not
/// shared). A flood of forged keys with valid checksums thus costs a node at most
/// 1000 / `CATCH_UP_INTERVAL_MS` etcd reads a second, whatever its rate.
#[derive(Default)]
struct CatchUps {
    /// Catch-up reads started so far (each read's number is this after its start).
    started: AtomicU64,
    /// Held while a read runs (and while it waits for its slot): the number of the last
    /// read that finished, and when the last read started.
    finished: tokio::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

/// Least time between two catch-up reads of unknown keys on one node. A key minted on
/// another node a moment ago waits at most this long more to be known here (its node's
/// follower usually applies it first anyway).
pub(crate) const CATCH_UP_INTERVAL_MS: u64 = 20;

/// The directory of the catalog's second copy, beside `dir`: `catalog` → `catalog-mirror`.
pub(crate) fn mirror_dir(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "catalog".to_owned());
    dir.with_file_name(format!("{name}-mirror"))
}

/// Most records appended in one batch while a copy is rebuilt.
const REBUILD_BATCH_RECORDS: usize = 4096;

/// Opens one copy of the log (creating its directory durably).
fn open_copy(
    dir: &Path,
    storage: &Arc<dyn engine::storage::Storage>,
) -> Result<(wal::Wal, Vec<wal::Record>), Error> {
    engine::storage::create_dir_durably(&**storage, dir, true)?;
    let options = wal::WalOptions {
        durability: wal::Durability::Fsync,
        ..wal::WalOptions::default()
    };
    let (wal, recovery) = wal::Wal::open_with_storage(dir, options, Arc::clone(storage) as _)?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            dir = %dir.display(),
            bytes = recovery.truncated_bytes,
            "catalog: cut a damaged or torn tail"
        );
    }
    Ok((wal, recovery.records))
}

/// Appends `records` to `wal`, in batches, each fsynced.
fn append_all(wal: &wal::Wal, records: &[wal::Record]) -> Result<(), Error> {
    for chunk in records.chunks(REBUILD_BATCH_RECORDS) {
        let batch: Vec<(u8, &[u8])> = chunk.iter().map(|r| (r.kind, &r.payload[..])).collect();
        wal.append_batch(&batch)?;
    }
    Ok(())
}

fn same_record(a: &wal::Record, b: &wal::Record) -> bool {
    a.kind == b.kind && a.payload == b.payload
}

/// Moves a damaged copy aside (kept for the operator), creates it afresh and fills it with
/// `records`.
fn rebuild_copy(
    dir: &Path,
    records: &[wal::Record],
    storage: &Arc<dyn engine::storage::Storage>,
) -> Result<(wal::Wal, PathBuf), Error> {
    let aside = dir.with_file_name(format!(
        "{}.damaged-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        crate::time::now_ms()
    ));
    if dir.exists() {
        storage.rename(dir, &aside).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        if let Some(parent) = dir.parent() {
            engine::storage::sync_dir(&**storage, parent)?;
        }
    }
    let (wal, found) = open_copy(dir, storage)?;
    debug_assert!(found.is_empty());
    append_all(&wal, records)?;
    Ok((wal, aside))
}

impl Catalog {
    /// Opens (or creates) the catalog in `dir` and replays it. Every change is fsynced before
    /// it is acknowledged, whatever the configured durability (see the module docs).
    pub(crate) fn open(dir: &Path, secret: &[u8; secret::SECRET_KEY_BYTES]) -> Result<Self, Error> {
        Self::open_with(dir, secret, engine::storage::os())
    }

    /// [`Catalog::open`] writing through `storage` (the power-loss tests record it).
    pub(crate) fn open_with(
        dir: &Path,
        secret: &[u8; secret::SECRET_KEY_BYTES],
        storage: Arc<dyn engine::storage::Storage>,
    ) -> Result<Self, Error> {
        let mirror = mirror_dir(dir);
        // A data directory from before the second copy: building it is not a repair.
        let mirror_is_new = !mirror.is_dir();
        let (wals, records, repairs) = match (
            open_copy(dir, &storage),
            open_copy(&mirror, &storage),
        ) {
            (Ok((a, ra)), Ok((b, rb))) => {
                let common = ra
                    .iter()
                    .zip(&rb)
                    .take_while(|(x, y)| same_record(x, y))
                    .count();
                let (long, short) = if rb.len() > ra.len() {
                    (&rb, &ra)
                } else {
                    (&ra, &rb)
                };
                let (short_dir, short_wal) = if rb.len() > ra.len() {
                    (dir, &a)
                } else {
                    (&*mirror, &b)
                };
                let mut repairs = Vec::new();
                if common == short.len() {
                    if long.len() > short.len() {
                        // A prefix: a crash between the two appends, or a tail cut at damage.
                        append_all(short_wal, &long[common..])?;
                        if mirror_is_new && short_dir == mirror {
                            tracing::info!("catalog: wrote its second copy ({})", mirror.display());
                        } else {
                            repairs.push(format!(
                                "{}: {} record(s) missing at the end, copied from the other copy",
                                short_dir.display(),
                                long.len() - short.len()
                            ));
                        }
                    }
                    let long = long.clone();
                    ([a, b], long, repairs)
                } else {
                    // The copies disagree: keep the longer history, rebuild the other.
                    let long = long.clone();
                    let short_dir = short_dir.to_owned();
                    let (keep, _) = if rb.len() > ra.len() { (b, a) } else { (a, b) };
                    let (rebuilt, aside) = rebuild_copy(&short_dir, &long, &storage)?;
                    repairs.push(format!(
                        "{}: disagreed with the other copy from record {}; rebuilt (the old one is kept as {})",
                        short_dir.display(),
                        common + 1,
                        aside.display()
                    ));
                    let wals = if short_dir == dir {
                        [rebuilt, keep]
                    } else {
                        [keep, rebuilt]
                    };
                    (wals, long, repairs)
                }
            }
            (Ok((a, ra)), Err(e)) => {
                let (b, aside) = rebuild_copy(&mirror, &ra, &storage)?;
                let repair = format!(
                    "{}: does not open ({e}); rebuilt from {} (the old one is kept as {})",
                    mirror.display(),
                    dir.display(),
                    aside.display()
                );
                ([a, b], ra, vec![repair])
            }
            (Err(e), Ok((b, rb))) => {
                let (a, aside) = rebuild_copy(dir, &rb, &storage)?;
                let repair = format!(
                    "{}: does not open ({e}); rebuilt from {} (the old one is kept as {})",
                    dir.display(),
                    mirror.display(),
                    aside.display()
                );
                ([a, b], rb, vec![repair])
            }
            (Err(e), Err(_)) => return Err(e),
        };
        for repair in &repairs {
            tracing::error!("catalog: {repair}");
        }
        let mut state = State::default();
        for record in &records {
            state.apply(record.kind, &record.payload, record.lsn)?;
        }
        Ok(Self {
            log: Log::Local {
                wals: Box::new(wals),
                mirror_backlog: Mutex::new(Vec::new()),
            },
            state: Arc::new(RwLock::new(state)),
            write_lock: Mutex::new(()),
            cipher: Cipher::new(secret)?,
            used: Mutex::new(HashMap::new()),
            poisoned: Arc::new(AtomicBool::new(false)),
            repairs,
            catch_ups: CatchUps::default(),
        })
    }

    /// Cluster mode: opens the catalog on the log `log` shares in etcd, replays every record
    /// and starts following it (other nodes' changes are applied within the follower's
    /// poll interval at worst, normally as soon as etcd's watch reports them).
    pub(crate) fn open_shared(
        log: crate::cluster::SharedLog,
        secret: &[u8; secret::SECRET_KEY_BYTES],
    ) -> Result<Self, Error> {
        let state = Arc::new(RwLock::new(State::default()));
        let reader = log.clone();
        let (records, _) = log.block(async move { reader.read_after(0).await })??;
        apply_shared(&state, records)?;
        let poisoned = Arc::new(AtomicBool::new(false));
        let follower = log.spawn(follow(
            log.clone(),
            Arc::clone(&state),
            Arc::clone(&poisoned),
        ));
        Ok(Self {
            log: Log::Shared { log, follower },
            state,
            write_lock: Mutex::new(()),
            cipher: Cipher::new(secret)?,
            used: Mutex::new(HashMap::new()),
            poisoned,
            repairs: Vec::new(),
            catch_ups: CatchUps::default(),
        })
    }

    /// What opening found damaged in one of the two copies and repaired from the other.
    /// Cluster mode: applies every record of the shared log this node has not applied yet
    /// (one linearizable read). Called before a key lookup answers "unknown", so a key
    /// minted through one node works at once through any other. `Ok(false)` on a single
    /// node, where there is nothing to catch up.
    pub(crate) async fn catch_up(&self) -> Result<bool, Error> {
        let Log::Shared { log, .. } = &self.log else {
            return Ok(false);
        };
        let applied = self.state.read().applied_seq;
        let (records, _) = log.read_after(applied).await?;
        let found = !records.is_empty();
        apply_shared(&self.state, records)?;
        Ok(found)
    }

    /// The key record for `key`; in cluster mode a key this node does not know yet is looked
    /// up again after [`Catalog::catch_up`] (it may have been minted through another node a
    /// moment ago). A failed catch-up answers from what this node has.
    pub(crate) async fn lookup_fresh(&self, key: &str) -> Option<KeyRecord> {
        if let Some(record) = self.lookup(key) {
            return Some(record);
        }
        if !matches!(self.log, Log::Shared { .. }) {
            return None;
        }
        let arrived = self.catch_ups.started.load(Ordering::Acquire);
        let mut last = self.catch_ups.finished.lock().await;
        // A read that started after this request arrived has finished meanwhile: it saw
        // every key minted before the request (a client presents a key only once its mint
        // was answered, i.e. committed), so this request needs no read of its own.
        if last.0 <= arrived {
            // Waiting for the read's slot holds the lock: the requests arriving meanwhile
            // queue behind it and share the read.
            if let Some(previous) = last.1 {
                let slot = previous + std::time::Duration::from_millis(CATCH_UP_INTERVAL_MS);
                tokio::time::sleep_until(slot.into()).await;
            }
            let number = self.catch_ups.started.fetch_add(1, Ordering::AcqRel) + 1;
            last.1 = Some(std::time::Instant::now());
            let _ = self.catch_up().await;
            last.0 = number;
        }
        drop(last);
        self.lookup(key)
    }

    pub(crate) fn repairs(&self) -> &[String] {
        &self.repairs
    }

    /// True once an fsync of the catalog's log failed in this process: every later change
    /// fails (the log is poisoned) until a restart; lookups keep answering.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// True while the catalog's last change ran out of disk space (in either copy) and there
    /// is still no room (probes first, see `wal::Wal::probe_space`); readiness reports it.
    pub(crate) fn is_write_stalled(&self) -> bool {
        match &self.log {
            Log::Local { wals, .. } => wals
                .iter()
                .any(|wal| wal.probe_space() == wal::Health::WriteStalled),
            Log::Shared { .. } => false,
        }
    }

    /// Appends one record durably, then applies it.
    fn commit<T: Serialize>(&self, kind: u8, value: &T) -> Result<(), Error> {
        self.commit_with(kind, |_| Ok(Some(value))).map(|_| ())
    }

    /// Builds the record from the current state under the write lock (so a check such as
    /// the active-key cap, or the subtree a revocation covers, cannot race another change),
    /// then appends it durably and applies it. `Ok(None)` from `build`: nothing to write.
    /// Builds a change from the current state (`build` may refuse it, or find nothing to
    /// do), writes it to the log and applies it. In cluster mode `build` runs again after
    /// another node's change won the race for the next sequence number.
    fn commit_with<T: Serialize, F>(&self, kind: u8, build: F) -> Result<Option<T>, Error>
    where
        F: FnMut(&State) -> Result<Option<T>, Error>,
    {
        let _guard = self.write_lock.lock();
        let (wals, mirror_backlog) = match &self.log {
            Log::Local {
                wals,
                mirror_backlog,
            } => (wals, mirror_backlog),
            Log::Shared { log, .. } => return self.commit_shared(log, kind, build),
        };
        let mut build = build;
        let Some(value) = build(&self.state.read())? else {
            return Ok(None);
        };
        if self.is_poisoned() {
            return Err(Error::CatalogPoisoned);
        }
        let payload = serde_json::to_vec(&value).map_err(|e| Error::CorruptCatalog {
            lsn: 0,
            kind,
            reason: e.to_string(),
        })?;
        let [first, second] = &**wals;
        // A second copy that missed changes on a full disk catches up first (a failure here
        // is again a full disk: nothing new was written anywhere).
        {
            let mut backlog = mirror_backlog.lock();
            while let Some((missed_kind, missed)) = backlog.first() {
                if let Err(e) = second.append(*missed_kind, missed) {
                    if !e.is_retryable() {
                        self.poisoned.store(true, Ordering::Release);
                    }
                    return Err(e.into());
                }
                backlog.remove(0);
            }
        }
        let lsn = first.append(kind, &payload).inspect_err(|e| {
            if matches!(e, wal::WalError::Io { op, .. } if op.starts_with("fsync")) {
                self.poisoned.store(true, Ordering::Release);
            }
        })?;
        if let Err(e) = second.append(kind, &payload) {
            // Durable in the first copy, so the next open applies it: apply it now too, so
            // this process agrees with what a restart would show. On a full disk the second
            // copy catches up before the next change; any other failure refuses further
            // changes until a restart brings the copies back together.
            if e.is_retryable() {
                mirror_backlog.lock().push((kind, payload.clone()));
            } else {
                self.poisoned.store(true, Ordering::Release);
            }
            self.state.write().apply(kind, &payload, lsn)?;
            return Err(e.into());
        }
        self.state.write().apply(kind, &payload, lsn)?;
        Ok(Some(value))
    }

    /// [`Catalog::commit_with`] on the shared log: catch up, build, append at one past the
    /// last record applied with a compare that the slot is free; when another node took it,
    /// start again. Answered only once etcd
    /// acknowledged the append (committed to a quorum), and applied here first, so this
    /// node reads its own writes.
    fn commit_shared<T: Serialize, F>(
        &self,
        log: &crate::cluster::SharedLog,
        kind: u8,
        mut build: F,
    ) -> Result<Option<T>, Error>
    where
        F: FnMut(&State) -> Result<Option<T>, Error>,
    {
        if self.is_poisoned() {
            return Err(Error::CatalogPoisoned);
        }
        for _ in 0..crate::cluster::APPEND_ATTEMPTS_MAX {
            // Catch up first: the change is checked against every record appended so far,
            // wherever it was made (a key minted through another node a moment ago can be
            // revoked here at once).
            let reader = log.clone();
            let applied = self.state.read().applied_seq;
            let (missed, _) = log.block(async move { reader.read_after(applied).await })??;
            apply_shared(&self.state, missed)?;
            let (value, seq) = {
                let state = self.state.read();
                (build(&state)?, state.applied_seq + 1)
            };
            let Some(value) = value else {
                return Ok(None);
            };
            let payload = serde_json::to_vec(&value).map_err(|e| Error::CorruptCatalog {
                lsn: 0,
                kind,
                reason: e.to_string(),
            })?;
            let writer = log.clone();
            let record = payload.clone();
            if log.block(async move { writer.append(seq, kind, &record).await })?? {
                apply_shared(&self.state, vec![(seq, kind, payload)])?;
                return Ok(Some(value));
            }
            // Another node appended `seq` first: catch up and build the change again.
        }
        Err(crate::cluster::ClusterError::Contended {
            attempts: crate::cluster::APPEND_ATTEMPTS_MAX,
        }
        .into())
    }

    pub(crate) fn accounts(&self) -> Vec<Account> {
        self.state.read().accounts.values().cloned().collect()
    }

    pub(crate) fn create_account(&self, now_ms: i64) -> Result<Account, Error> {
        let account = Account {
            id: secret::random_id("acct_", secret::KEY_ID_DIGITS)?,
            created_at_ms: now_ms,
        };
        self.commit(kind::ACCOUNT_CREATED, &account)?;
        Ok(account)
    }

    /// Mints a key; returns its record and the plaintext, which exists nowhere else.
    pub(crate) fn create_key(
        &self,
        account_id: &str,
        name: Option<String>,
        is_admin: bool,
        now_ms: i64,
    ) -> Result<(KeyRecord, String), Error> {
        self.mint(
            NewKey {
                account_id,
                name,
                is_admin,
                parent_id: None,
                active_max: None,
            },
            now_ms,
        )
    }

    /// Mints a key as `new` describes (its parent, the account's cap on active keys).
    pub(crate) fn mint(&self, new: NewKey<'_>, now_ms: i64) -> Result<(KeyRecord, String), Error> {
        let plaintext = secret::mint_key()?;
        let record = self.register(&plaintext, new, now_ms)?;
        Ok((record, plaintext))
    }

    /// Registers an already minted key (bootstrap saves the admin key to its file before
    /// the catalog knows it, so a crash in between cannot leave a key nobody has).
    pub(crate) fn register_key(
        &self,
        plaintext: &str,
        account_id: &str,
        name: Option<String>,
        is_admin: bool,
        now_ms: i64,
    ) -> Result<KeyRecord, Error> {
        let new = NewKey {
            account_id,
            name,
            is_admin,
            parent_id: None,
            active_max: None,
        };
        self.register(plaintext, new, now_ms)
    }

    fn register(&self, plaintext: &str, new: NewKey<'_>, now_ms: i64) -> Result<KeyRecord, Error> {
        let record = KeyRecord {
            id: secret::random_id("key_", secret::KEY_ID_DIGITS)?,
            account_id: new.account_id.to_owned(),
            name: new.name,
            hash: secret::to_hex(&secret::hash_key(plaintext)),
            hint: secret::key_hint(plaintext),
            is_admin: new.is_admin,
            parent_id: new.parent_id.map(str::to_owned),
            created_at_ms: now_ms,
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        let out = record.clone();
        self.commit_with(kind::KEY_CREATED, |state| {
            if let Some(max) = new.active_max
                && state.active_keys(new.account_id) >= max
            {
                return Err(Error::ActiveKeysMax { max });
            }
            if let Some(parent) = new.parent_id
                && state
                    .keys
                    .get(parent)
                    .is_none_or(|k| k.revoked_at_ms.is_some())
            {
                // Revoked while this request was on its way: its subtree is closed.
                return Err(Error::KeyNotFound {
                    id: parent.to_owned(),
                });
            }
            Ok(Some(record.clone()))
        })?;
        Ok(out)
    }

    /// The active key whose text is `key` (no suffix), if any. The hash map finds the
    /// candidate; the stored hash is then compared in constant time.
    pub(crate) fn lookup(&self, key: &str) -> Option<KeyRecord> {
        let hash = secret::hash_key(key);
        let state = self.state.read();
        let id = state.by_hash.get(&hash)?;
        let record = state.keys.get(id)?;
        let stored = secret::from_hex(&record.hash)?;
        (secret::constant_time_eq(&stored, &hash) && record.revoked_at_ms.is_none())
            .then(|| record.clone())
    }

    pub fn key(&self, id: &str) -> Option<KeyRecord> {
        let mut record = self.state.read().keys.get(id).cloned()?;
        if let Some(at) = self.used.lock().get(id) {
            record.last_used_at_ms = record.last_used_at_ms.max(Some(*at));
        }
        Some(record)
    }

    /// Whether `ancestor` minted `id`, directly or through keys it minted.
    pub(crate) fn minted_by(&self, ancestor: &str, id: &str) -> bool {
        let state = self.state.read();
        let mut at = state.keys.get(id).and_then(|k| k.parent_id.as_deref());
        // Bounded by the number of keys: lineage has no cycles (a parent exists before its
        // child), but a damaged record must not loop forever.
        for _ in 0..state.keys.len() {
            match at {
                None => return false,
                Some(parent) if parent == ancestor => return true,
                Some(parent) => at = state.keys.get(parent).and_then(|k| k.parent_id.as_deref()),
            }
        }
        false
    }

    /// Every key of the account, oldest first, with in-memory `last_used_at` merged in.
    pub(crate) fn keys(&self, account_id: &str) -> Vec<KeyRecord> {
        let used = self.used.lock().clone();
        let mut keys: Vec<KeyRecord> = self
            .state
            .read()
            .keys
            .values()
            .filter(|k| k.account_id == account_id)
            .cloned()
            .map(|mut k| {
                if let Some(at) = used.get(&k.id) {
                    k.last_used_at_ms = k.last_used_at_ms.max(Some(*at));
                }
                k
            })
            .collect();
        keys.sort_by(|a, b| {
            a.created_at_ms
                .cmp(&b.created_at_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        keys
    }

    /// Revokes a key and every key minted below it, transitively, in one record. Returns
    /// how many keys this revoked (0: the key and its subtree were revoked already).
    pub(crate) fn revoke_key(&self, id: &str, now_ms: i64) -> Result<usize, Error> {
        let revoked = self.commit_with(kind::KEYS_REVOKED, |state| {
            let Some(key) = state.keys.get(id) else {
                return Err(Error::KeyNotFound { id: id.to_owned() });
            };
            let mut ids = state.subtree_active(id);
            if key.revoked_at_ms.is_some() {
                ids.retain(|k| k != id);
            }
            Ok((!ids.is_empty()).then_some(KeysRevoked { ids, at_ms: now_ms }))
        })?;
        Ok(revoked.map_or(0, |r| r.ids.len()))
    }

    /// Records that a key was used; persisted later in one batch.
    pub(crate) fn touch(&self, id: &str, now_ms: i64) {
        let mut used = self.used.lock();
        match used.get_mut(id) {
            Some(at) => *at = (*at).max(now_ms),
            None => {
                used.insert(id.to_owned(), now_ms);
            }
        }
    }

    /// Writes pending `last_used_at` times as one record.
    pub(crate) fn flush_last_used(&self) -> Result<(), Error> {
        let pending: Vec<(String, i64)> =
            std::mem::take(&mut *self.used.lock()).into_iter().collect();
        if pending.is_empty() {
            return Ok(());
        }
        self.commit(kind::KEYS_USED, &KeysUsed { uses: pending })
    }

    pub(crate) fn set_provider_key(
        &self,
        account_id: &str,
        provider: &str,
        api_key: &str,
        base_url: Option<String>,
        now_ms: i64,
    ) -> Result<ProviderKeyInfo, Error> {
        let stored = StoredProviderKey {
            account_id: account_id.to_owned(),
            provider: provider.to_owned(),
            sealed: self
                .cipher
                .seal(api_key, &format!("{account_id}/{provider}"))?,
            hint: secret::mask(api_key),
            base_url,
            updated_at_ms: now_ms,
        };
        self.commit(kind::PROVIDER_KEY_SET, &stored)?;
        Ok(info(&stored))
    }

    /// The decrypted provider key stored for `provider`, if any.
    pub(crate) fn provider_key(
        &self,
        account_id: &str,
        provider: &str,
    ) -> Result<Option<ProviderKey>, Error> {
        let state = self.state.read();
        let Some(stored) = state
            .provider_keys
            .get(&(account_id.to_owned(), provider.to_owned()))
        else {
            return Ok(None);
        };
        let api_key = self
            .cipher
            .open(&stored.sealed, &format!("{account_id}/{provider}"))
            .ok_or_else(|| Error::Decrypt {
                provider: provider.to_owned(),
            })?;
        Ok(Some(ProviderKey {
            api_key,
            base_url: stored.base_url.clone(),
        }))
    }

    pub(crate) fn provider_keys(&self, account_id: &str) -> Vec<ProviderKeyInfo> {
        self.state
            .read()
            .provider_keys
            .values()
            .filter(|p| p.account_id == account_id)
            .map(info)
            .collect()
    }

    pub(crate) fn delete_provider_key(
        &self,
        account_id: &str,
        provider: &str,
    ) -> Result<bool, Error> {
        if !self
            .state
            .read()
            .provider_keys
            .contains_key(&(account_id.to_owned(), provider.to_owned()))
        {
            return Ok(false);
        }
        let deleted = ProviderKeyDeleted {
            account_id: account_id.to_owned(),
            provider: provider.to_owned(),
        };
        self.commit(kind::PROVIDER_KEY_DELETED, &deleted)?;
        Ok(true)
    }

    /// Flushes `last_used_at` and syncs the WAL (shutdown, buffered durability).
    pub(crate) fn sync(&self) -> Result<(), Error> {
        self.flush_last_used()?;
        if let Log::Local { wals, .. } = &self.log {
            for wal in wals.iter() {
                wal.sync()?;
            }
        }
        Ok(())
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        if let Log::Shared { follower, .. } = &self.log {
            follower.abort();
        }
    }
}

/// Applies records of the shared log in sequence order, each once: records at or below
/// the last applied one are skipped (the writer and the follower may both see a record),
/// and a gap stops the batch (the next read starts again after the last applied record).
fn apply_shared(state: &RwLock<State>, records: Vec<(u64, u8, Vec<u8>)>) -> Result<(), Error> {
    let mut state = state.write();
    for (seq, kind, payload) in records {
        if seq <= state.applied_seq {
            continue;
        }
        if seq != state.applied_seq + 1 {
            break;
        }
        state.apply(kind, &payload, seq)?;
        state.applied_seq = seq;
    }
    Ok(())
}

/// The follower task of a shared catalog: reads the records after the last applied one,
/// applies them, and waits for the log's next change (a watch) or the poll interval,
/// whichever comes first. An error (etcd away) is logged once per outage and retried.
/// A record it cannot apply stops it and poisons the catalog (`/readyz` 503, changes
/// refused): a node that cannot follow must say so rather than serve a stale catalog.
async fn follow(
    log: crate::cluster::SharedLog,
    state: Arc<RwLock<State>>,
    poisoned: Arc<AtomicBool>,
) {
    let changed = log.watch_changes();
    let mut failing = false;
    loop {
        let applied = state.read().applied_seq;
        match log.read_after(applied).await {
            Ok((records, _)) => {
                if failing {
                    tracing::info!("catalog: following the shared log again");
                    failing = false;
                }
                if let Err(error) = apply_shared(&state, records) {
                    // A record this version cannot apply (a newer writer): stop following
                    // rather than skip it, so no revocation is ever skipped silently.
                    tracing::error!(%error, "catalog: cannot apply a shared record; following stopped");
                    poisoned.store(true, Ordering::Release);
                    return;
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "catalog: cannot read the shared log; retrying");
                    failing = true;
                }
            }
        }
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(crate::cluster::FOLLOW_POLL_MS),
            changed.notified(),
        )
        .await;
    }
}

fn info(stored: &StoredProviderKey) -> ProviderKeyInfo {
    ProviderKeyInfo {
        provider: stored.provider.clone(),
        hint: stored.hint.clone(),
        base_url: stored.base_url.clone(),
        updated_at_ms: stored.updated_at_ms,
    }
}

/// True for provider names the store accepts: `[a-z0-9_-]{1,64}`.
pub(crate) fn valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PROVIDER_NAME_CHARS_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [3; 32];

    fn open(dir: &Path) -> Catalog {
        Catalog::open(dir, &SECRET).unwrap()
    }

    #[test]
    fn keys_survive_reopen_and_revocation_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let (account, admin, user, user_key) = {
            let catalog = open(dir.path());
            let account = catalog.create_account(1).unwrap();
            let (admin, _) = catalog.create_key(&account.id, None, true, 2).unwrap();
            let (user, user_key) = catalog
                .create_key(&account.id, Some("user:42".into()), false, 3)
                .unwrap();
            assert_eq!(catalog.lookup(&user_key).unwrap().id, user.id);
            catalog.touch(&user.id, 99);
            catalog.sync().unwrap();
            (account, admin, user, user_key)
        };
        let catalog = open(dir.path());
        assert_eq!(catalog.accounts().len(), 1);
        let found = catalog.lookup(&user_key).unwrap();
        assert_eq!(found.name.as_deref(), Some("user:42"));
        assert_eq!(found.last_used_at_ms, Some(99));
        assert_eq!(catalog.revoke_key(&user.id, 5).unwrap(), 1);
        assert_eq!(catalog.revoke_key(&user.id, 6).unwrap(), 0);
        assert!(catalog.lookup(&user_key).is_none());
        drop(catalog);
        let catalog = open(dir.path());
        assert!(catalog.lookup(&user_key).is_none());
        assert_eq!(catalog.keys(&account.id).len(), 2);
        assert!(catalog.key(&admin.id).unwrap().is_admin);
        assert!(matches!(
            catalog.revoke_key("key_nope", 1),
            Err(Error::KeyNotFound { .. })
        ));
    }

    /// Lineage: revoking a key revokes what it minted, transitively, in one record that
    /// survives a reopen; siblings and the rest of the tree stay.
    #[test]
    fn revoking_a_key_revokes_every_key_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = open(dir.path());
        let account = catalog.create_account(1).unwrap().id;
        let mint = |parent: Option<&str>| {
            let new = NewKey {
                account_id: &account,
                name: None,
                is_admin: false,
                parent_id: parent,
                active_max: None,
            };
            catalog.mint(new, 2).unwrap()
        };
        let (a, a_key) = mint(None);
        let (b, b_key) = mint(Some(&a.id));
        let (c, c_key) = mint(Some(&b.id));
        let (d, d_key) = mint(Some(&a.id));
        let (e, e_key) = mint(None);
        assert!(catalog.minted_by(&a.id, &c.id) && !catalog.minted_by(&c.id, &a.id));
        assert_eq!(catalog.revoke_key(&b.id, 3).unwrap(), 2, "b and c");
        assert_eq!(
            catalog.revoke_key(&a.id, 4).unwrap(),
            2,
            "a and d, not b again"
        );
        assert_eq!(catalog.revoke_key(&a.id, 5).unwrap(), 0);
        drop(catalog);
        let catalog = open(dir.path());
        for key in [&a_key, &b_key, &c_key, &d_key] {
            assert!(catalog.lookup(key).is_none());
        }
        assert_eq!(catalog.lookup(&e_key).unwrap().id, e.id);
        assert_eq!(
            catalog.key(&c.id).unwrap().parent_id.as_deref(),
            Some(&*b.id)
        );
        assert_eq!(catalog.key(&d.id).unwrap().revoked_at_ms, Some(4));
        // A revoked key cannot mint.
        let orphan = NewKey {
            account_id: &account,
            name: None,
            is_admin: false,
            parent_id: Some(&a.id),
            active_max: None,
        };
        assert!(matches!(
            catalog.mint(orphan, 6),
            Err(Error::KeyNotFound { .. })
        ));
    }

    #[test]
    fn the_active_key_cap_counts_only_active_keys_of_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = open(dir.path());
        let new = |account: &'static str| NewKey {
            account_id: account,
            name: None,
            is_admin: false,
            parent_id: None,
            active_max: Some(2),
        };
        let (first, _) = catalog.mint(new("acct_a"), 1).unwrap();
        catalog.mint(new("acct_a"), 1).unwrap();
        assert!(matches!(
            catalog.mint(new("acct_a"), 1),
            Err(Error::ActiveKeysMax { max: 2 })
        ));
        catalog.mint(new("acct_b"), 1).unwrap();
        catalog.revoke_key(&first.id, 2).unwrap();
        catalog.mint(new("acct_a"), 3).unwrap();
    }

    /// A catalog written before lineage existed (no `parent_id` in its key records, a
    /// single-key revocation record) opens, and its keys work and revoke as before.
    #[test]
    fn a_catalog_from_before_lineage_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let plaintext = "mk_legacykeylegacykeylegacykeylegacykeylegacyk";
        {
            let options = wal::WalOptions {
                durability: wal::Durability::Fsync,
                ..wal::WalOptions::default()
            };
            let (log, _) = wal::Wal::open(dir.path(), options).unwrap();
            let account = br#"{"id":"acct_old","created_at_ms":1}"#;
            log.append(kind::ACCOUNT_CREATED, account).unwrap();
            for (id, text) in [("key_old", plaintext), ("key_gone", "mk_gone")] {
                let hash = secret::to_hex(&secret::hash_key(text));
                let key = format!(
                    r#"{{"id":"{id}","account_id":"acct_old","name":null,"hash":"{hash}","hint":"mk_lega","is_admin":false,"created_at_ms":2}}"#
                );
                log.append(kind::KEY_CREATED, key.as_bytes()).unwrap();
            }
            log.append(kind::KEY_REVOKED, br#"{"id":"key_gone","at_ms":3}"#)
                .unwrap();
        }
        let catalog = open(dir.path());
        let old = catalog.lookup(plaintext).unwrap();
        assert_eq!((old.id.as_str(), old.parent_id), ("key_old", None));
        assert!(catalog.key("key_gone").unwrap().revoked_at_ms.is_some());
        assert_eq!(catalog.revoke_key("key_old", 4).unwrap(), 1);
        assert!(catalog.lookup(plaintext).is_none());
    }

    /// Every way one file of one copy can be damaged — a flipped byte in its middle, cut to
    /// half, emptied, deleted — leaves a catalog that opens with every key and revocation,
    /// says what it repaired, and has both copies whole again afterwards.
    #[test]
    fn one_damaged_catalog_file_is_repaired_from_the_other_copy() {
        let dir = tempfile::tempdir().unwrap();
        let catalog_dir = dir.path().join("catalog");
        let (live, revoked) = {
            let catalog = open(&catalog_dir);
            let account = catalog.create_account(1).unwrap().id;
            let mut live = Vec::new();
            for i in 0..20 {
                live.push(catalog.create_key(&account, None, false, i).unwrap().1);
            }
            let (gone, gone_key) = catalog.create_key(&account, None, false, 30).unwrap();
            catalog.revoke_key(&gone.id, 31).unwrap();
            (live, gone_key)
        };
        let files: Vec<PathBuf> = [catalog_dir.clone(), mirror_dir(&catalog_dir)]
            .iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(files.len() >= 2, "{files:?}");
        let pristine = tempfile::tempdir().unwrap();
        copy_tree(dir.path(), pristine.path());
        for file in &files {
            for damage in ["flip", "half", "empty", "delete"] {
                let _ = std::fs::remove_dir_all(dir.path());
                copy_tree(pristine.path(), dir.path());
                let len = std::fs::metadata(file).unwrap().len() as usize;
                match damage {
                    "flip" => {
                        let mut bytes = std::fs::read(file).unwrap();
                        bytes[len / 2] ^= 0x40;
                        std::fs::write(file, bytes).unwrap();
                    }
                    "half" => {
                        std::fs::write(file, &std::fs::read(file).unwrap()[..len / 2]).unwrap()
                    }
                    "empty" => std::fs::write(file, b"").unwrap(),
                    _ => std::fs::remove_file(file).unwrap(),
                }
                let what = format!("{damage} {}", file.display());
                let catalog = Catalog::open(&catalog_dir, &SECRET)
                    .unwrap_or_else(|e| panic!("{what}: the catalog does not open: {e}"));
                assert!(!catalog.repairs().is_empty(), "{what}: no repair reported");
                for key in &live {
                    assert!(catalog.lookup(key).is_some(), "{what}: a key is lost");
                }
                assert!(
                    catalog.lookup(&revoked).is_none(),
                    "{what}: a revoked key is back"
                );
                drop(catalog);
                let again = open(&catalog_dir);
                assert!(again.repairs().is_empty(), "{what}: {:?}", again.repairs());
                assert_eq!(again.keys(&again.accounts()[0].id).len(), 21);
            }
        }
    }

    /// Copies that disagree (neither a prefix of the other: nothing the catalog writes, but
    /// a hand-edited or mixed-up directory) open with the longer history; the other copy is
    /// kept aside and rebuilt.
    #[test]
    fn copies_that_disagree_open_with_the_longer_history() {
        let dir = tempfile::tempdir().unwrap();
        let catalog_dir = dir.path().join("catalog");
        drop(open(&catalog_dir));
        let options = wal::WalOptions {
            durability: wal::Durability::Fsync,
            ..wal::WalOptions::default()
        };
        let account = |id: &str| format!(r#"{{"id":"{id}","created_at_ms":1}}"#);
        {
            let (a, _) = wal::Wal::open(&catalog_dir, options.clone()).unwrap();
            a.append(kind::ACCOUNT_CREATED, account("acct_a1").as_bytes())
                .unwrap();
            a.append(kind::ACCOUNT_CREATED, account("acct_a2").as_bytes())
                .unwrap();
            let (b, _) = wal::Wal::open(&mirror_dir(&catalog_dir), options).unwrap();
            b.append(kind::ACCOUNT_CREATED, account("acct_b1").as_bytes())
                .unwrap();
        }
        let catalog = open(&catalog_dir);
        let ids: Vec<String> = catalog.accounts().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["acct_a1", "acct_a2"]);
        assert!(
            catalog.repairs()[0].contains("disagreed"),
            "{:?}",
            catalog.repairs()
        );
        drop(catalog);
        let again = open(&catalog_dir);
        assert!(again.repairs().is_empty(), "{:?}", again.repairs());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy()
                    .starts_with("catalog-mirror.damaged-")
            })
            .count();
        assert_eq!(aside, 1, "the disagreeing copy is kept for the operator");
    }

    /// The real file system, except that fsyncs of files in the mirror fail once armed.
    struct FailingMirror(Arc<std::sync::atomic::AtomicBool>);

    struct MaybeFailing(
        Box<dyn wal::LogFile>,
        Option<Arc<std::sync::atomic::AtomicBool>>,
    );

    impl wal::LogFile for MaybeFailing {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0.write_all(buf)
        }
        fn sync_data(&mut self) -> std::io::Result<()> {
            if self
                .1
                .as_ref()
                .is_some_and(|armed| armed.load(Ordering::Acquire))
            {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            self.0.sync_data()
        }
        fn truncate(&mut self, len: u64) -> std::io::Result<u64> {
            self.0.truncate(len)
        }
        fn sync_all(&mut self) -> std::io::Result<()> {
            self.0.sync_all()
        }
    }

    impl FailingMirror {
        fn wrap(&self, path: &Path, file: Box<dyn wal::LogFile>) -> Box<dyn wal::LogFile> {
            let in_mirror = path.to_string_lossy().contains("-mirror");
            Box::new(MaybeFailing(file, in_mirror.then(|| Arc::clone(&self.0))))
        }
    }

    impl wal::Storage for FailingMirror {
        fn create(&self, path: &Path) -> std::io::Result<Box<dyn wal::LogFile>> {
            Ok(self.wrap(path, engine::storage::OsStorage.create(path)?))
        }
        fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn wal::LogFile>> {
            Ok(self.wrap(path, engine::storage::OsStorage.open_append(path)?))
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            wal::Storage::rename(&engine::storage::OsStorage, from, to)
        }
        fn remove(&self, path: &Path) -> std::io::Result<()> {
            wal::Storage::remove(&engine::storage::OsStorage, path)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            wal::Storage::sync_dir(&engine::storage::OsStorage, dir)
        }
        fn drop_cache(&self, path: &Path) -> std::io::Result<()> {
            wal::Storage::drop_cache(&engine::storage::OsStorage, path)
        }
    }

    impl engine::storage::Storage for FailingMirror {
        fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn wal::LogFile>> {
            Ok(self.wrap(path, engine::storage::OsStorage.create_new(path)?))
        }
        fn create_dir(&self, path: &Path) -> std::io::Result<()> {
            engine::storage::OsStorage.create_dir(path)
        }
        fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
            engine::storage::OsStorage.remove_dir_all(path)
        }
    }

    /// When the mirror's append fails after the first copy's succeeded, the change is
    /// applied (a restart would apply it: it is durable in the first copy) but answered
    /// with an error, later changes are refused, and the next open makes the copies agree.
    #[test]
    fn a_failed_mirror_append_poisons_the_catalog_until_a_restart_reconciles_it() {
        let dir = tempfile::tempdir().unwrap();
        let catalog_dir = dir.path().join("catalog");
        let armed = Arc::new(AtomicBool::new(false));
        let storage = Arc::new(FailingMirror(Arc::clone(&armed)));
        let catalog = Catalog::open_with(&catalog_dir, &SECRET, storage).unwrap();
        let account = catalog.create_account(1).unwrap().id;
        let (user, user_key) = catalog.create_key(&account, None, false, 2).unwrap();
        armed.store(true, Ordering::Release);
        assert!(
            catalog.revoke_key(&user.id, 3).is_err(),
            "answered as failed"
        );
        assert!(catalog.is_poisoned());
        assert!(
            catalog.lookup(&user_key).is_none(),
            "yet applied, as a restart would"
        );
        assert!(matches!(
            catalog.create_key(&account, None, false, 4),
            Err(Error::CatalogPoisoned)
        ));
        drop(catalog);
        let reopened = open(&catalog_dir);
        assert!(reopened.lookup(&user_key).is_none());
        assert!(!reopened.is_poisoned());
        // (Here the page cache kept the mirror's unsynced record, so there may be nothing
        // to repair; the power-loss run covers the case where it is lost.)
        drop(reopened);
        assert!(open(&catalog_dir).repairs().is_empty());
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }

    #[test]
    fn provider_keys_are_encrypted_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let catalog = open(dir.path());
            let info = catalog
                .set_provider_key("acct_a", "openai", "sk-live-very-secret-1234", None, 1)
                .unwrap();
            assert_eq!(info.hint, "sk-…1234");
            catalog.sync().unwrap();
        }
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(path).unwrap();
            assert!(
                !bytes.windows(11).any(|w| w == b"very-secret"),
                "plaintext on disk"
            );
        }
        {
            let wrong = Catalog::open(dir.path(), &[9; 32]).unwrap();
            assert!(matches!(
                wrong.provider_key("acct_a", "openai"),
                Err(Error::Decrypt { .. })
            ));
        }
        let catalog = open(dir.path());
        assert_eq!(
            catalog
                .provider_key("acct_a", "openai")
                .unwrap()
                .unwrap()
                .api_key,
            "sk-live-very-secret-1234"
        );
        assert!(catalog.provider_key("acct_b", "openai").unwrap().is_none());
        assert!(catalog.delete_provider_key("acct_a", "openai").unwrap());
        assert!(!catalog.delete_provider_key("acct_a", "openai").unwrap());
        assert!(catalog.provider_keys("acct_a").is_empty());
    }

    #[test]
    fn provider_names_are_checked() {
        assert!(valid_provider_name("openai"));
        assert!(valid_provider_name("my-vllm_2"));
        assert!(!valid_provider_name("OpenAI"));
        assert!(!valid_provider_name("../etc"));
        assert!(!valid_provider_name(""));
    }
}
