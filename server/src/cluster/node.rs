//! This node in the cluster: its registry entry under a lease, its view of the other live
//! nodes, the placement of vaults (which node owns which), and forwarding a request to the
//! owner of its vault.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::ClusterError;
use super::etcd::{Etcd, Event, describe, prefix_end};
use crate::error::ApiError;
use crate::http::Body;

/// Registry entries: `/memoryrouter/nodes/<node_id>`, each under its node's lease.
pub(crate) const NODES_PREFIX: &str = "/memoryrouter/nodes/";
/// Placements: `/memoryrouter/placement/<vault>` → `{"node": …}`.
pub(crate) const PLACEMENT_PREFIX: &str = "/memoryrouter/placement/";
/// A node whose lease is not renewed for this long is gone from the registry, and its
/// vaults answer 503 on every other node.
pub(crate) const LEASE_TTL_SECS: i64 = 5;
/// How often the lease is renewed (well inside the TTL: two renewals may fail).
pub(crate) const KEEPALIVE_INTERVAL_MS: u64 = 1_000;
/// How often the registry is re-read (it is small: one entry per node).
pub(crate) const NODES_POLL_MS: u64 = 500;
/// A request for a vault on a node this one does not know re-reads the registry first (the
/// owner may have joined since the last poll), at most this often.
const NODES_REREAD_MIN_MS: u64 = 100;
/// The header a forwarded request carries: its receiver serves it or refuses it, and never
/// forwards it again, so a stale placement cannot make a loop.
pub(crate) const HOP_HEADER: &str = "x-memoryrouter-hop";
/// TCP connect timeout to another node.
pub(crate) const FORWARD_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// `Retry-After` of a vault whose node is down: a node restart takes seconds.
pub(crate) const VAULT_UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;
/// Most placements cached; past it the cache is emptied and refilled on demand.
pub(crate) const PLACEMENT_CACHE_MAX: usize = 1_000_000;

/// A registry entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    /// `HOST:PORT` other nodes forward to.
    pub advertise: String,
    pub started_ms: i64,
}

/// A placement's value. Its etcd mod revision is the fencing token a move compares.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Placement {
    pub node: String,
}

/// Where a request goes.
pub(crate) enum Route {
    /// Serve it here, holding the guard until the handler returns (a move waits for it).
    Local(Request<Incoming>, super::fence::InFlight),
    /// Answered already (forwarded, or refused).
    Answered(Response<Body>),
}

pub(crate) struct Node {
    etcd: Etcd,
    pub(crate) id: String,
    /// From the config; `None` = the bound listen address (known at [`Node::start`]).
    advertise: Option<String>,
    /// Live nodes by id, as last read from the registry.
    nodes: RwLock<HashMap<String, NodeInfo>>,
    /// When the registry was last read.
    nodes_read_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Vault → owner node, filled on demand and kept current by a watch on the placement
    /// prefix (emptied whenever that watch restarts, since it may have missed changes).
    placements: RwLock<HashMap<String, String>>,
    client: Client<HttpConnector, Incoming>,
    /// Vaults being moved away from this node, and the requests in flight on each.
    pub(crate) fences: super::fence::Fences,
    /// The cluster token other nodes present on internal routes (`super::token`).
    token: String,
}

fn node_key(id: &str) -> Vec<u8> {
    format!("{NODES_PREFIX}{id}").into_bytes()
}

pub(crate) fn placement_key(vault: &str) -> Vec<u8> {
    format!("{PLACEMENT_PREFIX}{vault}").into_bytes()
}

/// Rendezvous (highest random weight) hashing: every node scores the vault and the highest
/// score wins. It needs no shared counters, every node computes the same answer, and adding
/// or removing a node moves only the vaults that node wins or held (see the simulation in
/// `docs/scaling.md`).
pub(crate) fn rendezvous<'a>(vault: &str, nodes: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    nodes.max_by_key(|node| {
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        hash.update(vault.as_bytes());
        hash.update(b"\0");
        hash.update(node.as_bytes());
        let digest = hash.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_ref()[..8]);
        (u64::from_le_bytes(first), *node)
    })
}

impl Node {
    pub(crate) fn new(etcd: Etcd, id: String, advertise: Option<String>, token: String) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS)));
        http.set_nodelay(true);
        Node {
            etcd,
            id,
            advertise,
            nodes: RwLock::new(HashMap::new()),
            nodes_read_at: parking_lot::Mutex::new(None),
            placements: RwLock::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(http),
            fences: super::fence::Fences::default(),
            token,
        }
    }

    pub(crate) fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The request carries this cluster's token (compared in constant time).
    pub(crate) fn token_ok(&self, headers: &http::HeaderMap) -> bool {
        let presented = crate::http::header(headers, super::transfer::TOKEN_HEADER).unwrap_or("");
        super::token_matches(presented, &self.token)
    }

    /// The advertised address of a live node.
    pub(crate) fn address_of(&self, node: &str) -> Option<String> {
        self.nodes.read().get(node).map(|n| n.advertise.clone())
    }

    /// Records a placement this node just wrote (a move's flip), before its watch tells it.
    pub(crate) fn placed(&self, vault: &str, node: &str) {
        self.placements
            .write()
            .insert(vault.to_owned(), node.to_owned());
    }

    /// The owner of `vault` as etcd says now (`None` = no placement), bypassing the cache.
    pub(crate) async fn fresh_owner(&self, vault: &str) -> Result<Option<String>, ClusterError> {
        let range = self.etcd.range(&placement_key(vault), None, 1).await?;
        let owner = range
            .kvs
            .first()
            .and_then(|kv| serde_json::from_slice::<Placement>(&kv.value).ok())
            .map(|p| p.node);
        if let Some(owner) = &owner {
            self.placed(vault, owner);
        }
        Ok(owner)
    }

    /// Registers this node (a lease kept alive by a task) and starts following the registry
    /// and the placements. Fails if etcd does not answer the first registration.
    pub(crate) async fn start(self: &Arc<Self>, bound: SocketAddr) -> Result<(), ClusterError> {
        let info = NodeInfo {
            advertise: self.advertise.clone().unwrap_or_else(|| bound.to_string()),
            started_ms: crate::time::now_ms(),
        };
        let value = serde_json::to_vec(&info).map_err(|e| ClusterError::Protocol {
            path: "node info".into(),
            reason: e.to_string(),
        })?;
        let lease = self.register(&value).await?;
        self.refresh_nodes().await?;
        tracing::info!(node = %self.id, advertise = %info.advertise, "cluster: registered");
        let node = Arc::clone(self);
        tokio::spawn(async move { node.keep_registered(lease, value).await });
        let node = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(NODES_POLL_MS)).await;
                if let Err(error) = node.refresh_nodes().await {
                    tracing::debug!(%error, "cluster: cannot read the registry");
                }
            }
        });
        let node = Arc::clone(self);
        tokio::spawn(async move { node.follow_placements().await });
        Ok(())
    }

    async fn register(&self, value: &[u8]) -> Result<i64, ClusterError> {
        let lease = self.etcd.grant(LEASE_TTL_SECS).await?;
        self.etcd
            .put(&node_key(&self.id), value, Some(lease))
            .await?;
        Ok(lease)
    }

    /// Renews the lease; when it has expired (etcd away longer than the TTL), registers
    /// again under a new one.
    async fn keep_registered(&self, mut lease: i64, value: Vec<u8>) {
        loop {
            tokio::time::sleep(Duration::from_millis(KEEPALIVE_INTERVAL_MS)).await;
            match self.etcd.keep_alive(lease).await {
                Ok(true) => {}
                Ok(false) => match self.register(&value).await {
                    Ok(new) => {
                        tracing::warn!(node = %self.id, "cluster: lease had expired; registered again");
                        lease = new;
                    }
                    Err(error) => tracing::warn!(%error, "cluster: cannot register again"),
                },
                Err(error) => tracing::warn!(%error, "cluster: cannot renew the lease"),
            }
        }
    }

    async fn refresh_nodes(&self) -> Result<(), ClusterError> {
        let prefix = NODES_PREFIX.as_bytes();
        let range = self
            .etcd
            .range(prefix, Some(&prefix_end(prefix)), 0)
            .await?;
        let mut nodes = HashMap::new();
        for kv in range.kvs {
            let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            if let Ok(info) = serde_json::from_slice::<NodeInfo>(&kv.value) {
                nodes.insert(id, info);
            }
        }
        *self.nodes.write() = nodes;
        *self.nodes_read_at.lock() = Some(std::time::Instant::now());
        Ok(())
    }

    /// The advertised address of `node`, re-reading the registry once (unless it was read
    /// within [`NODES_REREAD_MIN_MS`]) when this node does not know it: a node that joined
    /// after the last poll is not down.
    async fn address_of_fresh(&self, node: &str) -> Option<String> {
        if let Some(address) = self.address_of(node) {
            return Some(address);
        }
        let stale = self
            .nodes_read_at
            .lock()
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(NODES_REREAD_MIN_MS));
        if stale && let Err(error) = self.refresh_nodes().await {
            tracing::debug!(%error, "cluster: cannot read the registry");
        }
        self.address_of(node)
    }

    /// Keeps the placement cache current: each watched change updates it; a watch that
    /// ends (etcd restart, compaction) empties it, since changes may have been missed.
    async fn follow_placements(&self) {
        let prefix = PLACEMENT_PREFIX.as_bytes();
        let end = prefix_end(prefix);
        loop {
            let result = self
                .etcd
                .watch(prefix, &end, 0, |events| {
                    let mut placements = self.placements.write();
                    for event in events {
                        match event {
                            Event::Put(kv) => {
                                let vault = String::from_utf8_lossy(&kv.key[prefix.len()..]);
                                match serde_json::from_slice::<Placement>(&kv.value) {
                                    Ok(p) => placements.insert(vault.into_owned(), p.node),
                                    Err(_) => placements.remove(vault.as_ref()),
                                };
                            }
                            Event::Delete(kv) => {
                                let vault = String::from_utf8_lossy(&kv.key[prefix.len()..]);
                                placements.remove(vault.as_ref());
                            }
                        }
                    }
                })
                .await;
            match result {
                Ok(super::etcd::WatchEnd::Compacted { compact_revision }) => {
                    tracing::debug!(compact_revision, "cluster: placement watch compacted");
                }
                Ok(super::etcd::WatchEnd::Closed) => {}
                Err(error) => tracing::debug!(%error, "cluster: placement watch ended"),
            }
            self.placements.write().clear();
            tokio::time::sleep(Duration::from_millis(super::catalog_log::REWATCH_PAUSE_MS)).await;
        }
    }

    /// The node owning `vault`, placing it (rendezvous over the live nodes) when it has no
    /// owner yet. Two nodes placing the same vault at once both create-if-absent; the one
    /// etcd takes first wins and the other reads it.
    pub(crate) async fn owner(&self, vault: &str) -> Result<String, ClusterError> {
        if let Some(node) = self.placements.read().get(vault) {
            return Ok(node.clone());
        }
        let key = placement_key(vault);
        for _ in 0..2 {
            let range = self.etcd.range(&key, None, 1).await?;
            if let Some(kv) = range.kvs.first() {
                let placement: Placement =
                    serde_json::from_slice(&kv.value).map_err(|e| ClusterError::Protocol {
                        path: String::from_utf8_lossy(&key).into_owned(),
                        reason: e.to_string(),
                    })?;
                let mut placements = self.placements.write();
                if placements.len() >= PLACEMENT_CACHE_MAX {
                    placements.clear();
                }
                placements.insert(vault.to_owned(), placement.node.clone());
                return Ok(placement.node);
            }
            let chosen = {
                let nodes = self.nodes.read();
                let live = nodes.keys().map(String::as_str);
                rendezvous(vault, live.chain(std::iter::once(self.id.as_str())))
                    .unwrap_or(&self.id)
                    .to_owned()
            };
            let value = serde_json::to_vec(&Placement {
                node: chosen.clone(),
            })
            .map_err(|e| ClusterError::Protocol {
                path: "placement".into(),
                reason: e.to_string(),
            })?;
            if self.etcd.create(&key, &value, None).await? {
                tracing::debug!(vault, node = %chosen, "cluster: placed a vault");
                self.placements
                    .write()
                    .insert(vault.to_owned(), chosen.clone());
                return Ok(chosen);
            }
        }
        Err(ClusterError::Contended { attempts: 2 })
    }

    /// Serves `req` here when this node owns `vault`, else forwards it whole to the owner
    /// (body and answer streamed, so SSE passes through), or refuses it with a 503 naming
    /// the owner when that node is down. A request served here waits while a move holds
    /// the vault (`fence.rs`), and is counted in flight until the router drops its guard.
    pub(crate) async fn route(&self, vault: &str, req: Request<Incoming>) -> Route {
        let mut owner = match self.owner(vault).await {
            Ok(owner) => owner,
            Err(error) => return Route::Answered(placement_unanswered(&error)),
        };
        let hop = req.headers().get(HOP_HEADER).map(|h| h.as_bytes().to_vec());
        if owner != self.id && hop.is_some() {
            // Forwarded here by a node whose view of the placement differs from ours: one
            // of the two is behind a move. Ask etcd rather than trust either cache.
            match self.fresh_owner(vault).await {
                Ok(Some(fresh)) => owner = fresh,
                Ok(None) => {}
                Err(error) => return Route::Answered(placement_unanswered(&error)),
            }
        }
        if owner == self.id {
            let Some(in_flight) = self.fences.enter(vault).await else {
                let mut error = vault_unavailable(
                    &self.id,
                    "the vault is being moved to another node and its writes are held",
                );
                error.retry_after_secs = Some(super::fence::FENCE_RETRY_AFTER_SECS);
                return Route::Answered(crate::http::error_response(&error));
            };
            // A move may have taken the vault away while this request waited.
            match self.placements.read().get(vault) {
                Some(now) if *now != self.id => owner = now.clone(),
                _ => return Route::Local(req, in_flight),
            }
        }
        let next_hop = match hop.as_deref() {
            None => "1",
            // A second hop only for a node that was itself sent here by a stale view: a
            // placement that just flipped (the old owner forwards once more to the new).
            Some(b"1") => "2",
            Some(_) => {
                return Route::Answered(crate::http::error_response(&vault_unavailable(
                    &owner,
                    "the request reached a node that does not own this vault (its placement is changing)",
                )));
            }
        };
        let Some(address) = self.address_of_fresh(&owner).await else {
            return Route::Answered(crate::http::error_response(&vault_unavailable(
                &owner,
                "that node is not registered (down or unreachable from etcd)",
            )));
        };
        match self.forward(&address, req, next_hop).await {
            Ok(response) => Route::Answered(response),
            Err(reason) => Route::Answered(crate::http::error_response(&vault_unavailable(
                &owner, &reason,
            ))),
        }
    }

    async fn forward(
        &self,
        address: &str,
        req: Request<Incoming>,
        hop: &'static str,
    ) -> Result<Response<Body>, String> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        parts.uri = format!("http://{address}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())?;
        // Hop-by-hop headers belong to this connection, not the forwarded one.
        for name in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "host",
        ] {
            parts.headers.remove(name);
        }
        parts
            .headers
            .insert(HOP_HEADER, HeaderValue::from_static(hop));
        let response = self
            .client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("forwarding to {address} failed: {}", describe(&e)))?;
        let (mut parts, body) = response.into_parts();
        parts.headers.remove("connection");
        parts.headers.remove("keep-alive");
        parts.headers.remove("transfer-encoding");
        Ok(Response::from_parts(
            parts,
            body.map_err(|e| -> crate::http::BodyError { Box::new(e) })
                .boxed(),
        ))
    }
}

fn placement_unanswered(error: &ClusterError) -> Response<Body> {
    tracing::warn!(%error, "cluster: placement lookup failed");
    crate::http::error_response(&ApiError::unavailable(
        "The cluster's placement store (etcd) did not answer; retry shortly.",
    ))
}

/// The 503 of a vault whose owner cannot serve it, naming the node: the API's
/// `vault_unavailable` (as for a vault whose files cannot be read), with a longer
/// `Retry-After` since a node restart takes seconds.
pub(crate) fn vault_unavailable(node: &str, reason: &str) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "vault_unavailable",
        format!(
            "This vault lives on node {node}, which cannot serve it now: {reason}. Retry later."
        ),
    );
    error.retry_after_secs = Some(VAULT_UNAVAILABLE_RETRY_AFTER_SECS);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_only_what_it_must() {
        let three = ["n1", "n2", "n3"];
        let four = ["n1", "n2", "n3", "n4"];
        let mut counts = HashMap::new();
        let mut moved = 0;
        for v in 0..3000 {
            let vault = format!("key_{v}");
            let before = rendezvous(&vault, three.iter().copied()).unwrap();
            let after = rendezvous(&vault, four.iter().copied()).unwrap();
            assert_eq!(
                before,
                rendezvous(&vault, three.iter().rev().copied()).unwrap()
            );
            if before != after {
                assert_eq!(after, "n4", "a vault moved between two old nodes");
                moved += 1;
            }
            *counts.entry(before).or_insert(0) += 1;
        }
        // Each node gets about a third; about a quarter moves to the new node.
        for node in three {
            assert!((800..1200).contains(&counts[node]), "{counts:?}");
        }
        assert!((600..900).contains(&moved), "{moved}");
        assert_eq!(rendezvous("v", std::iter::empty()), None);
    }

    #[test]
    fn the_unavailable_error_names_the_node() {
        let error = vault_unavailable("n2", "connection refused");
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.code, "vault_unavailable");
        assert!(error.message.contains("node n2"), "{}", error.message);
        assert_eq!(
            error.retry_after_secs,
            Some(VAULT_UNAVAILABLE_RETRY_AFTER_SECS)
        );
    }
}
