//! A vault move, run by the vault's owner (`POST /internal/cluster/move`, which
//! `memoryrouter cluster move` calls) and reported as JSON lines while it runs:
//!
//! 1. read the placement and its mod revision `R` (the fencing token); refuse unless this
//!    node owns it and the target is live; record `/memoryrouter/moves/<vault>`;
//! 2. copy the listed segments (immutable once listed) while the vault serves;
//! 3. fence: new requests wait at `Node::route`, the ones in flight finish, then the engine
//!    holds the vault still (`Engine::fence`: writes, seal and compaction wait);
//! 4. copy what changed: the manifest, the WAL, segments listed since step 2; the target
//!    checks sizes, syncs and installs its copy;
//! 5. flip the placement with `compare(mod_revision == R) → put({node: target})`;
//! 6. on success, lift the request fence (waiting requests are forwarded to the new owner),
//!    then give the old copy up (`Engine::give_up`: closed, deleted, then the writes waiting
//!    at the engine's gate fail); on failure, abort the target's copy and lift both here.
//!
//! No write is acknowledged here after step 3, so none after the flip; every write
//! acknowledged before step 3 is in the WAL copied in step 4.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::etcd::Compare;
use super::node::{Placement, placement_key};
use super::transfer::{CHUNK_BYTES_MAX, CommitBody, Peer, line, read_chunk};
use crate::AppState;
use crate::error::ApiError;
use crate::http::{Body, error_response};

/// Moves in progress: `/memoryrouter/moves/<vault>` → `{from, to, phase}` (for operators;
/// the fence itself is the placement's revision).
pub(crate) const MOVES_PREFIX: &str = "/memoryrouter/moves/";
/// Progress lines buffered for a slow reader (the move never waits for its reader).
const PROGRESS_LINES_MAX: usize = 256;
/// How often a progress line reports bytes copied.
const PROGRESS_EVERY_BYTES: u64 = 4 * 1024 * 1024;
/// How often the mover looks whether the vault's seal or merge has finished.
const SETTLE_POLL_MS: u64 = 5;
/// Reads of the placement after a flip whose answer was lost, one per second, before the
/// move gives up asking (the vault stays fenced here until it knows).
const FLIP_UNKNOWN_READS_MAX: usize = 600;

#[derive(Deserialize)]
struct MoveBody {
    vault: String,
    to: String,
}

/// The progress stream of a move: JSON lines as a chunked body.
struct Lines(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = crate::http::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(hyper::body::Frame::data(l))))
    }
}

/// Where a move reports.
struct Report(mpsc::Sender<Bytes>);

impl Report {
    fn send(&self, value: Value) {
        // A reader that went away does not stop the move: it runs to its end either way.
        let _ = self.0.try_send(line(&value));
    }
}

pub(crate) async fn handle(state: &Arc<AppState>, req: Request<Incoming>) -> Response<Body> {
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error_response(&ApiError::bad_request(
                "invalid_body",
                format!("Unreadable body: {e}"),
            ));
        }
    };
    let request: MoveBody = match crate::http::parse_json(&body) {
        Ok(r) => r,
        Err(error) => return error_response(&error),
    };
    if let Err(e) = engine::validate_vault_id(&request.vault) {
        return error_response(&ApiError::bad_request("invalid_vault", e.to_string()));
    }
    let (tx, rx) = mpsc::channel(PROGRESS_LINES_MAX);
    let state = Arc::clone(state);
    tokio::spawn(async move {
        let report = Report(tx);
        let started = Instant::now();
        match run(&state, &request.vault, &request.to, &report).await {
            Ok(mut done) => {
                done["phase"] = json!("done");
                done["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
                tracing::info!(vault = %request.vault, to = %request.to, %done, "cluster: vault moved");
                report.send(done);
            }
            Err(error) => {
                tracing::warn!(vault = %request.vault, to = %request.to, %error, "cluster: move failed");
                report.send(json!({ "phase": "failed", "error": error }));
            }
        }
    });
    let mut response = Response::new(Lines(rx).boxed());
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// Copies `files` (relative to the vault's directory) to the target, skipping those in
/// `sent`, and adds them there.
async fn copy(
    state: &AppState,
    peer: &Peer,
    vault: &str,
    files: &[(String, u64)],
    sent: &mut HashSet<String>,
    copied: &mut u64,
    report: &Report,
) -> Result<(), String> {
    let dir = state.engine.config().root.join(vault);
    let mut last_report = *copied;
    for (path, size) in files {
        if sent.contains(path) {
            continue;
        }
        let mut offset = 0u64;
        // An empty file is sent as one empty chunk, so it exists on the target.
        loop {
            let len = (size - offset).min(CHUNK_BYTES_MAX as u64) as usize;
            let chunk = read_chunk(dir.join(path), offset, len).await?;
            let last = offset + len as u64 >= *size;
            peer.put_chunk(vault, path, offset, chunk, last).await?;
            offset += len as u64;
            *copied += len as u64;
            if *copied - last_report >= PROGRESS_EVERY_BYTES {
                last_report = *copied;
                report.send(json!({ "phase": "copying", "bytes": *copied }));
            }
            if offset >= *size {
                break;
            }
        }
        sent.insert(path.clone());
    }
    Ok(())
}

async fn run(
    state: &Arc<AppState>,
    vault: &str,
    to: &str,
    report: &Report,
) -> Result<Value, String> {
    let node = state.cluster.as_ref().ok_or("not in cluster mode")?;
    let etcd = node.etcd();
    let key = placement_key(vault);
    // 1. The placement and its revision: the token the flip compares.
    let range = etcd.range(&key, None, 1).await.map_err(|e| e.to_string())?;
    let Some(kv) = range.kvs.first() else {
        return Err(format!(
            "vault {vault} has no placement (it was never used)"
        ));
    };
    let placement: Placement = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    let revision = kv.mod_revision;
    if placement.node != node.id {
        return Err(format!(
            "vault {vault} is owned by node {}, not by {} (ask that node)",
            placement.node, node.id
        ));
    }
    if to == node.id {
        return Err(format!("vault {vault} is already on node {to}"));
    }
    let address = node
        .address_of(to)
        .ok_or_else(|| format!("node {to} is not live (not in the registry)"))?;
    if !state.engine.config().root.join(vault).is_dir() {
        return Err(format!("vault {vault} has no files on node {}", node.id));
    }
    let peer = Peer::new(&address, node.token());
    let moves_key = format!("{MOVES_PREFIX}{vault}").into_bytes();
    let record = |phase: &str| {
        json!({ "from": node.id, "to": to, "phase": phase, "revision": revision }).to_string()
    };
    etcd.put(&moves_key, record("copying").as_bytes(), None)
        .await
        .map_err(|e| e.to_string())?;
    let outcome = copy_and_flip(state, &peer, vault, to, &key, revision, report).await;
    let _ = etcd.delete(&moves_key).await;
    if outcome.is_err() {
        // The vault stays here; the target drops whatever it received.
        if let Err(error) = peer
            .post(
                &format!("/internal/cluster/vaults/{vault}/abort"),
                &json!({}),
            )
            .await
        {
            tracing::warn!(vault, %error, "cluster: the target did not drop its partial copy");
        }
    }
    outcome
}

async fn copy_and_flip(
    state: &Arc<AppState>,
    peer: &Peer,
    vault: &str,
    to: &str,
    key: &[u8],
    revision: i64,
    report: &Report,
) -> Result<Value, String> {
    let node = state.cluster.as_ref().ok_or("not in cluster mode")?;
    peer.post(
        &format!("/internal/cluster/vaults/{vault}/begin"),
        &json!({}),
    )
    .await?;
    // 2. The listed segments, while the vault serves.
    let st = Arc::clone(state);
    let v = vault.to_owned();
    let segments = tokio::task::spawn_blocking(move || st.engine.segment_files(&v))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let total: u64 = segments.iter().map(|(_, s)| s).sum();
    report.send(json!({ "phase": "copying", "bytes": 0, "total": total }));
    let mut sent = HashSet::new();
    let mut copied = 0u64;
    copy(
        state,
        peer,
        vault,
        &segments,
        &mut sent,
        &mut copied,
        report,
    )
    .await?;
    // A seal or merge running now would make the fence wait for it (the engine holds the
    // vault still only between them): let it finish while the vault serves, and copy what
    // it listed, so the fenced copy is the WAL tail and little else.
    let st = Arc::clone(state);
    let v = vault.to_owned();
    let settled = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_millis(engine::FENCE_QUIET_WAIT_MS);
        let handle = st.engine.vault(&v)?;
        // The memtable sealed now, while serving, checkpoints the WAL: what the fence copies
        // is then only what was written since (the WAL of a full memtable is megabytes).
        if let Err(error) = handle.seal() {
            tracing::warn!(vault = %v, %error, "cluster: the pre-move seal failed; the fence copies the whole WAL");
        }
        while handle.is_busy() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(SETTLE_POLL_MS));
        }
        drop(handle);
        st.engine.segment_files(&v)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    copy(state, peer, vault, &settled, &mut sent, &mut copied, report).await?;

    // 3. The fence: requests first, then the engine.
    let fenced_at = Instant::now();
    let fenced_at_ms = crate::time::now_ms();
    report.send(json!({ "phase": "fencing", "bytes": copied }));
    let mut phases = serde_json::Map::new();
    let mut mark = |name: &str| {
        phases.insert(
            name.to_owned(),
            json!(fenced_at.elapsed().as_millis() as u64),
        );
    };
    if !node.fences.fence(vault).await {
        node.fences.lift(vault);
        return Err(format!(
            "requests on vault {vault} did not finish within {} ms; nothing moved",
            super::fence::FENCE_DRAIN_MS
        ));
    }
    mark("drained");
    let st = Arc::clone(state);
    let v = vault.to_owned();
    let fence = match tokio::task::spawn_blocking(move || st.engine.fence(&v)).await {
        Ok(Ok(fence)) => fence,
        Ok(Err(e)) => {
            node.fences.lift(vault);
            return Err(format!("the vault could not be held still: {e}"));
        }
        Err(e) => {
            node.fences.lift(vault);
            return Err(e.to_string());
        }
    };
    let lift = |fence: engine::Fence| {
        let st = Arc::clone(state);
        let v = vault.to_owned();
        async move {
            let _ = tokio::task::spawn_blocking(move || fence.lift()).await;
            if let Some(node) = st.cluster.as_ref() {
                node.fences.lift(&v);
            }
        }
    };

    // 4. What changed since step 2, then the target installs its copy.
    mark("engine_fenced");
    // A directory listing of a vault held still (a few dozen entries): done in place.
    let listed = fence.files().map_err(|e| e.to_string());
    let tail = async {
        let files = listed?;
        copy(state, peer, vault, &files, &mut sent, &mut copied, report).await?;
        peer.post(
            &format!("/internal/cluster/vaults/{vault}/commit"),
            &serde_json::to_value(CommitBody {
                files: files.clone(),
            })
            .map_err(|e| e.to_string())?,
        )
        .await?;
        Ok::<usize, String>(files.len())
    }
    .await;
    let files = match tail {
        Ok(files) => files,
        Err(error) => {
            lift(fence).await;
            return Err(error);
        }
    };

    mark("copied_and_committed");
    // 5. The flip, compared against the revision read in step 1.
    report.send(json!({ "phase": "flipping", "bytes": copied }));
    let value = serde_json::to_vec(&Placement {
        node: to.to_owned(),
    })
    .map_err(|e| e.to_string())?;
    let flipped = match node
        .etcd()
        .txn(
            &[Compare::ModRevision(key, revision)],
            &[(key, &value)],
            None,
        )
        .await
    {
        Ok(flipped) => flipped,
        // The transaction may have committed: the placement says which.
        Err(error) => {
            tracing::warn!(vault, %error, "cluster: the flip's answer was lost; reading the placement");
            match flip_outcome(node, key, to).await {
                Ok(flipped) => flipped,
                Err(error) => {
                    // Either owner is possible: keep the vault held here (its engine fence
                    // too) rather than let a write land on what may be the old copy.
                    std::mem::forget(fence);
                    return Err(error);
                }
            }
        }
    };
    if !flipped {
        lift(fence).await;
        return Err(format!(
            "the placement of vault {vault} changed since the move began (revision {revision}); nothing moved"
        ));
    }
    // 6. Ours no more: forward from now on, drop the copy, let the waiting requests go.
    let flip_ms = fenced_at.elapsed().as_millis() as u64;
    node.placed(vault, to);
    // Requests held here go on now: routed again, they find the new owner (the cache says
    // so) and are forwarded; none reaches this engine. Writes that do not come through a
    // request (the outbox) stay held by the engine's fence until the vault is closed.
    node.fences.lift(vault);
    let fence_ms = fenced_at.elapsed().as_millis() as u64;
    let st = Arc::clone(state);
    let given_up = tokio::task::spawn_blocking(move || st.engine.give_up(fence)).await;
    mark("given_up");
    match given_up {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(vault, error = %e, "cluster: the moved vault's old copy could not be deleted")
        }
        Err(e) => tracing::error!(vault, error = %e, "cluster: giving the moved vault up failed"),
    }
    Ok(json!({
        "vault": vault, "from": node.id, "to": to, "bytes": copied, "files": files,
        "fence_ms": fence_ms, "flip_ms": flip_ms, "phases_ms": phases,
        "fenced_at_ms": fenced_at_ms,
    }))
}

/// Whether a flip whose answer was lost committed: the placement names the target (yes) or
/// still this node (no). Asked again each second while etcd does not answer; the fence
/// stays up meanwhile, since either answer is possible.
async fn flip_outcome(node: &super::Node, key: &[u8], to: &str) -> Result<bool, String> {
    for _ in 0..FLIP_UNKNOWN_READS_MAX {
        if let Ok(range) = node.etcd().range(key, None, 1).await
            && let Some(kv) = range.kvs.first()
            && let Ok(placement) = serde_json::from_slice::<Placement>(&kv.value)
        {
            return Ok(placement.node == to);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err("etcd did not say whether the flip committed; the vault stays fenced on this node until a restart".into())
}
