//! The catalog: accounts, Memory Keys (as SHA-256 hashes) and encrypted provider keys.
//!
//! Persisted through its own write-ahead log in `DATA_DIR/catalog/`, exactly like a vault:
//! every change is one WAL record (a kind byte and a JSON payload) appended and fsynced
//! before it is applied to the in-memory maps, and at start the records are replayed into
//! those maps. Nothing is ever rewritten in place, so a crash leaves either the old or the
//! new state. The catalog is small (one record per key or provider-key change) so it is
//! never checkpointed; `last_used_at` is the exception that would grow it per request, so
//! it is kept in memory and written as one batched record by [`Catalog::flush_last_used`]
//! (every minute and at shutdown): a crash may forget the last minute of "last used" times,
//! never a key or a revocation.
//!
//! Catalog writes are always fsynced, whatever `durability` says for memories: a revocation
//! answered 200 must not come back after a power loss. The directory is owner-only and
//! created durably; a failed fsync poisons the catalog ([`Catalog::is_poisoned`]) as it does
//! the log under it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl State {
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

pub struct Catalog {
    wal: wal::Wal,
    state: RwLock<State>,
    /// Held across "append to the WAL, then apply" so the in-memory order of changes is the
    /// WAL's order (two racing revocations/creations replay exactly as they were applied).
    write_lock: Mutex<()>,
    cipher: Cipher,
    /// `last_used_at` updates not yet written to the WAL (see the module docs).
    used: Mutex<HashMap<String, i64>>,
    /// An fsync of the catalog's log failed: it refuses changes until the process restarts.
    poisoned: AtomicBool,
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
        engine::storage::create_dir_durably(&*storage, dir, true)?;
        let options = wal::WalOptions {
            durability: wal::Durability::Fsync,
            ..wal::WalOptions::default()
        };
        let (wal, recovery) = wal::Wal::open_with_storage(dir, options, storage)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                "catalog: cut a torn tail left by a crash"
            );
        }
        let mut state = State::default();
        for record in &recovery.records {
            state.apply(record.kind, &record.payload, record.lsn)?;
        }
        Ok(Self {
            wal,
            state: RwLock::new(state),
            write_lock: Mutex::new(()),
            cipher: Cipher::new(secret)?,
            used: Mutex::new(HashMap::new()),
            poisoned: AtomicBool::new(false),
        })
    }

    /// True once an fsync of the catalog's log failed in this process: every later change
    /// fails (the log is poisoned) until a restart; lookups keep answering.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// True while the catalog's last change ran out of disk space and there is still no room
    /// (probes first, see `wal::Wal::probe_space`); readiness reports it.
    pub(crate) fn is_write_stalled(&self) -> bool {
        self.wal.probe_space() == wal::Health::WriteStalled
    }

    /// Appends one record durably, then applies it.
    fn commit<T: Serialize>(&self, kind: u8, value: &T) -> Result<(), Error> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::CorruptCatalog {
            lsn: 0,
            kind,
            reason: e.to_string(),
        })?;
        let _guard = self.write_lock.lock();
        let lsn = self.wal.append(kind, &payload).inspect_err(|e| {
            if matches!(e, wal::WalError::Io { op, .. } if op.starts_with("fsync")) {
                self.poisoned.store(true, Ordering::Release);
            }
        })?;
        self.state.write().apply(kind, &payload, lsn)
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
        let plaintext = secret::mint_key()?;
        let record = self.register_key(&plaintext, account_id, name, is_admin, now_ms)?;
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
        let record = KeyRecord {
            id: secret::random_id("key_", secret::KEY_ID_DIGITS)?,
            account_id: account_id.to_owned(),
            name,
            hash: secret::to_hex(&secret::hash_key(plaintext)),
            hint: secret::key_hint(plaintext),
            is_admin,
            created_at_ms: now_ms,
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        self.commit(kind::KEY_CREATED, &record)?;
        Ok(record)
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

    /// Revokes a key; `Ok(false)` if it was already revoked.
    pub(crate) fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, Error> {
        match self.state.read().keys.get(id) {
            None => return Err(Error::KeyNotFound { id: id.to_owned() }),
            Some(key) if key.revoked_at_ms.is_some() => return Ok(false),
            Some(_) => {}
        }
        self.commit(
            kind::KEY_REVOKED,
            &KeyRevoked {
                id: id.to_owned(),
                at_ms: now_ms,
            },
        )?;
        Ok(true)
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
        self.wal.sync()?;
        Ok(())
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
        assert!(catalog.revoke_key(&user.id, 5).unwrap());
        assert!(!catalog.revoke_key(&user.id, 6).unwrap());
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
