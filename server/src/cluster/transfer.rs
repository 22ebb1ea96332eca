//! Node-to-node routes of a vault move, under `/internal/cluster/`, each answered only to a
//! caller presenting the cluster token (`x-memoryrouter-cluster-token`, an HMAC of the
//! shared secret every node holds, `super::token`):
//!
//! | route | on | does |
//! |---|---|---|
//! | `POST /internal/cluster/move` `{vault, to}` | the owner | runs the move (`mover.rs`), progress as JSON lines |
//! | `POST …/vaults/{v}/begin` | the target | an empty staging directory `vaults/.incoming-{v}` |
//! | `PUT …/vaults/{v}/files?path=P&offset=N[&last=1]` | the target | appends one chunk (≤ 8 MiB, CRC-32 in `x-memoryrouter-crc32`) to `P`; syncs `P` after its last |
//! | `POST …/vaults/{v}/commit` `{files: [[P, size]…]}` | the target | checks every size, syncs, installs the vault (`Engine::adopt`) |
//! | `POST …/vaults/{v}/abort` | the target | drops the staged (or installed, never flipped) copy |
//! | `POST /internal/cluster/exchange` | the new owner | takes over a proxy exchange the old owner's outbox held |
//!
//! The target never serves the vault because of these calls: it serves it once the
//! placement in etcd names it (the flip), like any node.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Node;
use crate::AppState;
use crate::error::ApiError;
use crate::http::{Body, blocking, error_response, json_response};

/// The header that carries the cluster token.
pub(crate) const TOKEN_HEADER: &str = "x-memoryrouter-cluster-token";
/// The header that carries a chunk's CRC-32 (decimal).
pub(crate) const CRC_HEADER: &str = "x-memoryrouter-crc32";
/// Largest chunk of a file sent in one request.
pub(crate) const CHUNK_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest JSON body of the other internal calls (a commit lists every file of a vault).
pub(crate) const CONTROL_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Longest one internal call may take (a chunk of 8 MiB over a slow link included).
pub(crate) const PEER_CALL_TIMEOUT_MS: u64 = 60_000;
/// Deepest file path in a vault (`seg-7/vectors.bin`).
const PATH_DEPTH_MAX: usize = 2;

/// The staging directory of a vault being received, next to the vaults (same file system,
/// so installing it is a rename; the dot keeps it out of `Engine::vault_ids`).
pub(crate) fn staging_dir(state: &AppState, vault: &str) -> PathBuf {
    state
        .engine
        .config()
        .root
        .join(format!(".incoming-{vault}"))
}

/// A file path inside a vault as sent: relative, at most two plain components.
fn checked_path(path: &str) -> Option<&str> {
    let parts: Vec<&str> = path.split('/').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && *p != "."
            && *p != ".."
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    };
    (parts.len() <= PATH_DEPTH_MAX && parts.iter().all(plain)).then_some(path)
}

fn make_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> ApiError {
    tracing::error!(path = %path.display(), %error, "cluster transfer: {what} failed");
    ApiError::unavailable(format!("The receiving node could not {what}: {error}."))
}

/// Answers an internal call; `None` when the path is not one (it then gets its 404 as any
/// unknown path).
pub(crate) async fn handle(
    state: &Arc<AppState>,
    node: &Node,
    segments: &[&str],
    req: Request<Incoming>,
) -> Option<Response<Body>> {
    if !matches!(segments, ["internal", "cluster", ..]) {
        return None;
    }
    if !node.token_ok(req.headers()) {
        return Some(error_response(&ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_cluster_token",
            "Internal cluster routes need the cluster token.",
        )));
    }
    let result = match (req.method(), &segments[2..]) {
        (&Method::POST, ["move"]) => return Some(super::mover::handle(state, req).await),
        (&Method::POST, ["exchange"]) => exchange(state, req).await,
        (&Method::POST, ["vaults", vault, "begin"]) => begin(state, node, vault).await,
        (&Method::PUT, ["vaults", vault, "files"]) => file(state, vault, req).await,
        (&Method::POST, ["vaults", vault, "commit"]) => commit(state, vault, req).await,
        (&Method::POST, ["vaults", vault, "abort"]) => abort(state, node, vault).await,
        _ => Err(ApiError::not_found("No such internal cluster route.")),
    };
    Some(match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => error_response(&error),
    })
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, ApiError> {
    Limited::new(req.into_body(), max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ApiError::bad_request("invalid_body", format!("Unreadable body: {e}")))
}

fn checked_vault(vault: &str) -> Result<(), ApiError> {
    engine::validate_vault_id(vault)
        .map_err(|e| ApiError::bad_request("invalid_vault", e.to_string()))
}

/// Starts receiving `vault`: refused if this node owns it already (a move onto its owner
/// would delete the only copy at the end); any earlier staging is dropped.
async fn begin(state: &Arc<AppState>, node: &Node, vault: &str) -> Result<Value, ApiError> {
    checked_vault(vault)?;
    let owner = node.fresh_owner(vault).await.map_err(|e| {
        ApiError::unavailable(format!("The placement store (etcd) did not answer: {e}."))
    })?;
    if owner.as_deref() == Some(node.id.as_str()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "already_owner",
            format!("Node {} already owns vault {vault}.", node.id),
        ));
    }
    let staging = staging_dir(state, vault);
    let st = Arc::clone(state);
    let id = vault.to_owned();
    blocking(move || {
        // A local copy of a vault this node does not own is stale (an earlier move that
        // never flipped): dropped, closed too if something opened it.
        if st.engine.config().root.join(&id).is_dir() {
            st.engine.purge_vault(&id)?;
        }
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("clear the staging directory", &staging, &e)),
        }
        make_dir(&staging).map_err(|e| io_error("create the staging directory", &staging, &e))?;
        Ok(json!({ "staging": true }))
    })
    .await
}

#[derive(Deserialize)]
struct FileQuery {
    path: String,
    offset: u64,
}

/// Appends one chunk at `offset` (which must be the file's current length: a chunk sent
/// twice or out of order is refused, never written twice).
async fn file(
    state: &Arc<AppState>,
    vault: &str,
    req: Request<Incoming>,
) -> Result<Value, ApiError> {
    checked_vault(vault)?;
    let query = crate::http::query_params(req.uri().query());
    let parsed = FileQuery {
        path: query.get("path").cloned().unwrap_or_default(),
        offset: query
            .get("offset")
            .and_then(|o| o.parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_offset", "`offset` is required."))?,
    };
    let path = checked_path(&parsed.path)
        .ok_or_else(|| ApiError::bad_request("invalid_path", "Not a vault file path."))?
        .to_owned();
    let crc: Option<u32> =
        crate::http::header(req.headers(), CRC_HEADER).and_then(|c| c.parse().ok());
    let last = query.get("last").is_some_and(|l| l == "1");
    let bytes = read_body(req, CHUNK_BYTES_MAX).await?;
    if crc != Some(crc32fast::hash(&bytes)) {
        return Err(ApiError::bad_request(
            "checksum_mismatch",
            "The chunk's CRC-32 does not match its bytes (or is missing).",
        ));
    }
    let staging = staging_dir(state, vault);
    blocking(move || {
        if !staging.is_dir() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "not_staging",
                "No transfer of this vault was begun here.",
            ));
        }
        let target = staging.join(&path);
        if let Some(parent) = target.parent() {
            make_dir(parent).map_err(|e| io_error("create a directory", parent, &e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(parsed.offset == 0)
            .open(&target)
            .map_err(|e| io_error("open a file", &target, &e))?;
        let length = file
            .metadata()
            .map_err(|e| io_error("read a file's size", &target, &e))?
            .len();
        if length != parsed.offset {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "offset_mismatch",
                format!("{path} holds {length} bytes here, not {}.", parsed.offset),
            ));
        }
        file.write_all_at(&bytes, parsed.offset)
            .map_err(|e| io_error("write a file", &target, &e))?;
        // The last chunk of a file: synced now, so the commit (under the owner's fence)
        // finds the segments' hundreds of megabytes already on disk.
        if last {
            file.sync_all()
                .map_err(|e| io_error("sync a received file", &target, &e))?;
        }
        Ok(json!({ "length": parsed.offset + bytes.len() as u64 }))
    })
    .await
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CommitBody {
    /// Every file of the vault, relative to its directory, with its size.
    pub files: Vec<(String, u64)>,
}

/// Checks the staged copy against the owner's list (every file, its exact size; nothing
/// else kept), syncs every file and directory, and installs it as the vault.
async fn commit(
    state: &Arc<AppState>,
    vault: &str,
    req: Request<Incoming>,
) -> Result<Value, ApiError> {
    checked_vault(vault)?;
    let body: CommitBody = crate::http::parse_json(&read_body(req, CONTROL_BYTES_MAX).await?)?;
    let staging = staging_dir(state, vault);
    let st = Arc::clone(state);
    let vault = vault.to_owned();
    blocking(move || {
        let listed: std::collections::HashMap<&str, u64> =
            body.files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        for (path, size) in &body.files {
            let path = checked_path(path)
                .ok_or_else(|| ApiError::bad_request("invalid_path", "Not a vault file path."))?;
            let file_path = staging.join(path);
            let file = std::fs::File::open(&file_path)
                .map_err(|e| io_error("open a received file", &file_path, &e))?;
            let length = file
                .metadata()
                .map_err(|e| io_error("read a file's size", &file_path, &e))?
                .len();
            if length != *size {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "invalid_request_error",
                    "incomplete_transfer",
                    format!("{path} holds {length} bytes here, the owner has {size}."),
                ));
            }
            file.sync_all()
                .map_err(|e| io_error("sync a received file", &file_path, &e))?;
        }
        // The wal directory exists even when it is empty (the vault's open expects it).
        make_dir(&staging.join("wal")).map_err(|e| io_error("create wal/", &staging, &e))?;
        let mut dirs = vec![staging.clone()];
        let entries =
            std::fs::read_dir(&staging).map_err(|e| io_error("list the staging", &staging, &e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if path.is_dir() {
                for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let rel = format!("{name}/{}", inner.file_name().to_string_lossy());
                    if !listed.contains_key(rel.as_str()) {
                        let _ = std::fs::remove_file(inner.path());
                    }
                }
                dirs.push(path);
            } else if !listed.contains_key(name.as_str()) {
                let _ = std::fs::remove_file(&path);
            }
        }
        for dir in &dirs {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error("sync a directory", dir, &e))?;
        }
        st.engine.adopt(&vault, &staging)?;
        // Opened now, off the fence's clock (the owner flips while this runs), so the first
        // requests after the flip do not wait for the open (a manifest read, maps, the WAL
        // replay: hundreds of ms for a large vault). A flip that fails drops it again
        // (`abort` purges it).
        let warm = Arc::clone(&st);
        tokio::task::spawn_blocking(move || {
            // Not once an abort dropped it: opening would create an empty vault.
            if !warm.engine.config().root.join(&vault).is_dir() {
                return;
            }
            if let Err(error) = warm.engine.vault(&vault) {
                tracing::warn!(vault, %error, "cluster: a received vault does not open");
            }
        });
        Ok(json!({ "installed": true }))
    })
    .await
}

/// Drops what a move left here: the staging directory, and an installed copy this node
/// does not own (the flip never happened).
async fn abort(state: &Arc<AppState>, node: &Node, vault: &str) -> Result<Value, ApiError> {
    checked_vault(vault)?;
    let owner = node.fresh_owner(vault).await.ok().flatten();
    let owned = owner.as_deref() == Some(node.id.as_str());
    let staging = staging_dir(state, vault);
    let st = Arc::clone(state);
    let vault = vault.to_owned();
    blocking(move || {
        let _ = std::fs::remove_dir_all(&staging);
        if !owned && owner.is_some() && st.engine.config().root.join(&vault).is_dir() {
            st.engine.purge_vault(&vault)?;
        }
        Ok(json!({ "aborted": true }))
    })
    .await
}

/// Takes over a proxy exchange whose vault moved here while the old owner's outbox held it:
/// queued in this node's outbox (answered once it is in the log), then stored.
async fn exchange(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Value, ApiError> {
    let exchange: crate::proxy::outbox::PendingExchange =
        crate::http::parse_json(&read_body(req, CONTROL_BYTES_MAX).await?)?;
    let appended = crate::proxy::state::schedule_ingest(Arc::clone(state), exchange);
    let _ = appended.await;
    Ok(json!({ "queued": true }))
}

/// Hands a proxy exchange to its vault's owner when that is another node (the vault moved
/// away while the exchange waited in this node's outbox); `None` = the vault is this
/// node's (or this is not a cluster): store it here.
pub(crate) async fn hand_over_exchange(
    state: &AppState,
    exchange: &crate::proxy::outbox::PendingExchange,
) -> Option<Result<(), String>> {
    let node = state.cluster.as_ref()?;
    let owner = node.owner(&exchange.key_id).await.ok()?;
    if owner == node.id {
        return None;
    }
    let Some(address) = node.address_of(&owner) else {
        return Some(Err(format!("node {owner} is not live")));
    };
    let body = match serde_json::to_value(exchange) {
        Ok(body) => body,
        Err(e) => return Some(Err(e.to_string())),
    };
    Some(
        Peer::new(&address, node.token())
            .post("/internal/cluster/exchange", &body)
            .await
            .map(|_| ()),
    )
}

/// A client for another node's internal routes.
#[derive(Clone)]
pub(crate) struct Peer {
    client: Client<HttpConnector, Full<Bytes>>,
    /// `http://HOST:PORT`.
    base: String,
    token: String,
}

impl Peer {
    pub(crate) fn new(address: &str, token: &str) -> Peer {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(
            super::node::FORWARD_CONNECT_TIMEOUT_MS,
        )));
        http.set_nodelay(true);
        Peer {
            client: Client::builder(TokioExecutor::new()).build(http),
            base: format!("http://{address}"),
            token: token.to_owned(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Value, String> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(TOKEN_HEADER, &self.token)
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        let call = async {
            let response = self.client.request(request).await.map_err(|e| {
                format!(
                    "{} did not answer: {}",
                    self.base,
                    super::etcd::describe(&e)
                )
            })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), CONTROL_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| format!("reading {}'s answer: {e}", self.base))?
                .to_bytes();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status != StatusCode::OK {
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map_or_else(
                        || String::from_utf8_lossy(&bytes).into_owned(),
                        str::to_owned,
                    );
                return Err(format!("{} answered {status}: {message}", self.base));
            }
            Ok(value)
        };
        tokio::time::timeout(Duration::from_millis(PEER_CALL_TIMEOUT_MS), call)
            .await
            .unwrap_or_else(|_| Err(format!("{} did not answer {path} in time", self.base)))
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call(Method::POST, path, &[], Bytes::from(body.to_string()))
            .await
    }

    /// Sends one chunk of `path` at `offset`; `last` = the file ends with it (the target
    /// syncs the file).
    pub(crate) async fn put_chunk(
        &self,
        vault: &str,
        path: &str,
        offset: u64,
        chunk: Bytes,
        last: bool,
    ) -> Result<(), String> {
        let crc = crc32fast::hash(&chunk).to_string();
        // Vault file paths are `[A-Za-z0-9._-]` and `/` (`checked_path`): nothing to escape.
        let last = if last { "&last=1" } else { "" };
        let uri =
            format!("/internal/cluster/vaults/{vault}/files?path={path}&offset={offset}{last}");
        self.call(Method::PUT, &uri, &[(CRC_HEADER, crc)], chunk)
            .await
            .map(|_| ())
    }
}

/// Reads `len` bytes of `path` at `offset` (blocking pool).
pub(crate) async fn read_chunk(path: PathBuf, offset: u64, len: usize) -> Result<Bytes, String> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buffer = vec![0u8; len];
        file.read_exact_at(&mut buffer, offset)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Bytes::from(buffer))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Writes a line of progress (JSON) for the mover's caller; unused when nobody listens.
pub(crate) fn line(value: &Value) -> Bytes {
    let mut out = Vec::with_capacity(128);
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_vault_paths_are_accepted() {
        for good in ["MANIFEST", "wal/00000001.wal", "seg-3/vectors.bin"] {
            assert_eq!(checked_path(good), Some(good));
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "seg-1/../../x",
            "a/b/c",
            "wal/",
            "a b",
            "./x",
        ] {
            assert_eq!(checked_path(bad), None, "{bad:?}");
        }
    }
}
