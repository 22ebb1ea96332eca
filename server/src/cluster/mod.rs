//! Cluster mode (`serve --cluster etcd://HOST:PORT`): the catalog's log and the placement of
//! vaults in etcd, the node registry, and forwarding a request to the node that owns its
//! vault. Design, key layout and what is not built yet: `docs/scaling.md`.
//!
//! - `etcd`: a small etcd v3 client over its JSON gateway (hyper, no gRPC);
//! - `base64`: the gateway's encoding of keys and values;
//! - `catalog_log`: the catalog's records as a dense sequence of etcd keys;
//! - `node`: this node's registry entry, the placement of vaults, forwarding;
//! - `status`: `memoryrouter cluster status`.
//!
//! **Invariant**: without `--cluster` none of this runs; a single node's catalog is its
//! two local WAL copies, exactly as before.

mod base64;
mod catalog_log;
pub(crate) mod etcd;
mod node;
mod status;

pub(crate) use catalog_log::SharedLog;
pub(crate) use node::{Node, Route};
pub use status::status;

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
}
