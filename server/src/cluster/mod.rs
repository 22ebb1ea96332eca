//! Cluster mode (`serve --cluster etcd://HOST:PORT`): the catalog's log and the placement of
//! vaults in etcd, the node registry, and forwarding a request to the node that owns its
//! vault. Design, key layout and what is not built yet: `docs/scaling.md`.
//!
//! - `etcd`: a small etcd v3 client over its JSON gateway (hyper, no gRPC);
//! - `base64`: the gateway's encoding of keys and values;
//! - `catalog_log`: the catalog's records as a dense sequence of etcd keys;
//! - `node`: this node's registry entry, the placement of vaults, forwarding;
//! - `status`: `memoryrouter cluster status`;
//! - `fence`: requests held while a vault is moved away, and those in flight on it;
//! - `transfer`: the node-to-node routes of a move (`/internal/cluster/…`, token-checked);
//! - `mover`: a vault move, run by its owner;
//! - `commands`: `memoryrouter cluster move | drain | rebalance`.
//!
//! **Invariant**: without `--cluster` none of this runs; a single node's catalog is its
//! two local WAL copies, exactly as before.

mod base64;
mod catalog_log;
mod commands;
pub(crate) mod etcd;
mod fence;
mod mover;
mod node;
mod status;
mod transfer;

pub(crate) use catalog_log::SharedLog;
pub use commands::{drain, move_vault, rebalance};
pub(crate) use node::{Node, Route};
pub use status::status;
pub(crate) use transfer::{hand_over_exchange, handle as internal};

/// What the cluster token is an HMAC of (with the shared secret as the key).
const TOKEN_CONTEXT: &[u8] = b"memoryrouter cluster internal routes v1";

/// The token nodes (and `memoryrouter cluster move`) present on internal routes: an
/// HMAC-SHA256 of a fixed context under the secret every node already shares
/// (`MEMORYROUTER_SECRET_KEY`), so a client of the public port cannot call them and no
/// second secret needs distributing.
pub(crate) fn token(secret: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    crate::secret::to_hex(ring::hmac::sign(&key, TOKEN_CONTEXT).as_ref())
}

/// Compares a presented token with ours in constant time.
pub(crate) fn token_matches(presented: &str, ours: &str) -> bool {
    let (a, b) = (presented.as_bytes(), ours.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The vault a request addresses, when its path is one that reads or writes a vault and its
/// key is valid (the memory API, the proxy, MCP, and a revocation with `?purge=true`, whose
/// vault is the revoked key's); `None` = serve it here (keys, provider
/// keys, admin, health and static paths live in the shared catalog, and a bad key gets its
/// 401 here as anywhere). Only called in cluster mode.
pub(crate) async fn vault_of(
    state: &crate::AppState,
    segments: &[&str],
    req: &http::Request<hyper::body::Incoming>,
) -> Option<String> {
    let query = crate::http::query_params(req.uri().query());
    // Revoking with `?purge=true` deletes the revoked key's vault: served by its owner.
    if let (&http::Method::DELETE, ["v1", "keys", id]) = (req.method(), segments)
        && query.get("purge").is_some_and(|p| p == "true")
    {
        // Only a key of the caller's account names a vault (no placement is ever made for
        // an id a caller invents); anything else gets its 404 or 403 here.
        let record = crate::auth::presented_record(state, req.headers()).await?;
        return state
            .catalog
            .key(id)
            .filter(|k| k.account_id == record.account_id)
            .map(|k| k.id);
    }
    let scoped = matches!(
        segments,
        ["v1", "memory", ..] | ["v1", "chat", "completions"] | ["v1", "messages"] | ["mcp"]
    );
    if !scoped {
        return None;
    }
    let record = crate::auth::presented_record(state, req.headers()).await?;
    match query.get("key_id").filter(|k| !k.is_empty()) {
        Some(target) if record.is_admin => state
            .catalog
            .key(target)
            .filter(|k| k.account_id == record.account_id)
            .map(|k| k.id),
        _ => Some(record.id),
    }
}

/// Appends tried by one catalog change before it gives up (each failure means another node
/// appended first; the change is rebuilt on the new state and tried again).
pub(crate) const APPEND_ATTEMPTS_MAX: usize = 64;
/// The catalog follower reads the shared log at least this often even when its watch is
/// silent, so a revocation reaches every node within this bound plus one etcd round trip
/// even if a watch was lost.
pub(crate) const FOLLOW_POLL_MS: u64 = 500;

/// What cluster mode fails with.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("`{endpoint}` is not an etcd endpoint (etcd://HOST:PORT)")]
    Endpoint { endpoint: String },
    #[error("etcd at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("etcd at {endpoint} refused {path} with status {status}: {answer}")]
    Refused {
        endpoint: String,
        path: String,
        status: u16,
        answer: String,
    },
    #[error("etcd's answer for {path} is not understood: {reason}")]
    Protocol { path: String, reason: String },
    #[error("a catalog change lost the race for the shared log {attempts} times in a row")]
    Contended { attempts: usize },
    #[error("cluster mode needs the server's async runtime")]
    NoRuntime,
    #[error("moving vault {vault}: {reason}")]
    Move { vault: String, reason: String },
    #[error(
        "MEMORYROUTER_SECRET_KEY must hold the cluster's shared secret (64 hex digits): the \
         nodes' internal routes take a token derived from it"
    )]
    NoSecret,
}
