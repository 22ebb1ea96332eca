//! `memoryrouter cluster move | drain | rebalance`: read the placements from etcd, ask each
//! vault's owner to move it (`POST /internal/cluster/move`, which streams its progress as
//! JSON lines), and show a progress bar. The caller needs the cluster's shared secret
//! (`MEMORYROUTER_SECRET_KEY`), from which the internal routes' token is derived.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::ClusterError;
use super::etcd::{Etcd, prefix_end};
use super::node::{NODES_PREFIX, NodeInfo, PLACEMENT_PREFIX, Placement, rendezvous};
use super::transfer::TOKEN_HEADER;
use crate::error::Error;
use crate::progress::{Progress, Unit};

/// Placements read per range call.
const PLACEMENTS_BATCH_KEYS: i64 = 10_000;
/// Longest a move's progress stream may stay silent (a large segment file is copied in
/// 8 MiB chunks, each reported; the fence waits at most seconds).
const MOVE_SILENCE_MAX_MS: u64 = 300_000;

fn moving(vault: &str, reason: impl Into<String>) -> ClusterError {
    ClusterError::Move {
        vault: vault.to_owned(),
        reason: reason.into(),
    }
}

/// The token of the internal routes, from `MEMORYROUTER_SECRET_KEY`.
fn token_from_env() -> Result<String, ClusterError> {
    let hex = std::env::var("MEMORYROUTER_SECRET_KEY").map_err(|_| ClusterError::NoSecret)?;
    let secret = crate::secret::from_hex(hex.trim()).ok_or(ClusterError::NoSecret)?;
    Ok(super::token(&secret))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: "runtime".into(),
            source,
        })
}

/// Live nodes: id → advertised address.
async fn live_nodes(etcd: &Etcd) -> Result<BTreeMap<String, String>, ClusterError> {
    let prefix = NODES_PREFIX.as_bytes();
    let mut nodes = BTreeMap::new();
    for kv in etcd.range(prefix, Some(&prefix_end(prefix)), 0).await?.kvs {
        if let Ok(info) = serde_json::from_slice::<NodeInfo>(&kv.value) {
            let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
            nodes.insert(id, info.advertise);
        }
    }
    Ok(nodes)
}

/// Every placement: vault → owner, in key order.
async fn placements(etcd: &Etcd) -> Result<Vec<(String, String)>, ClusterError> {
    let prefix = PLACEMENT_PREFIX.as_bytes();
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    let mut out = Vec::new();
    loop {
        let range = etcd.range(&from, Some(&end), PLACEMENTS_BATCH_KEYS).await?;
        for kv in &range.kvs {
            if let Ok(placement) = serde_json::from_slice::<Placement>(&kv.value) {
                let vault = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
                out.push((vault, placement.node));
            }
        }
        match (range.more, range.kvs.last()) {
            (true, Some(last)) => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// Asks `owner_address` to move `vault` to `to`; `on_line` sees each progress line.
/// Returns the final (`done`) line.
async fn ask_move(
    owner_address: &str,
    token: &str,
    vault: &str,
    to: &str,
    mut on_line: impl FnMut(&Value),
) -> Result<Value, ClusterError> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_millis(
        super::node::FORWARD_CONNECT_TIMEOUT_MS,
    )));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(http);
    let request = Request::post(format!("http://{owner_address}/internal/cluster/move"))
        .header(TOKEN_HEADER, token)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            json!({ "vault": vault, "to": to }).to_string(),
        )))
        .map_err(|e| moving(vault, e.to_string()))?;
    let response = client.request(request).await.map_err(|e| {
        moving(
            vault,
            format!(
                "the owner at {owner_address} did not answer: {}",
                super::etcd::describe(&e)
            ),
        )
    })?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let message = answer
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_owned,
            );
        return Err(moving(
            vault,
            format!("the owner answered {status}: {message}"),
        ));
    }
    let mut buffer = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_millis(MOVE_SILENCE_MAX_MS), body.frame())
            .await
            .map_err(|_| moving(vault, "the owner stopped reporting progress"))?;
        let Some(frame) = frame else {
            return Err(moving(
                vault,
                "the owner's progress stream ended before the move did",
            ));
        };
        let frame = frame.map_err(|e| moving(vault, format!("progress stream: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line = buffer.split_to(end + 1);
            let Ok(value) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match value.get("phase").and_then(Value::as_str) {
                Some("done") => return Ok(value),
                Some("failed") => {
                    let error = value
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    return Err(moving(vault, error));
                }
                _ => on_line(&value),
            }
        }
    }
}

fn summary(done: &Value) -> String {
    let mib = done.get("bytes").and_then(Value::as_u64).unwrap_or(0) as f64 / (1024.0 * 1024.0);
    format!(
        "moved vault {} from {} to {}: {:.1} MiB in {} files, {} ms; writes held {} ms (flipped after {} ms)",
        done["vault"].as_str().unwrap_or("?"),
        done["from"].as_str().unwrap_or("?"),
        done["to"].as_str().unwrap_or("?"),
        mib,
        done["files"],
        done["elapsed_ms"],
        done["fence_ms"],
        done["flip_ms"],
    )
}

/// Moves one vault, with a byte progress bar; runs inside a runtime.
async fn move_one(
    etcd: &Etcd,
    token: &str,
    vault: &str,
    to: &str,
    quiet: bool,
) -> Result<Value, ClusterError> {
    engine::validate_vault_id(vault).map_err(|e| moving(vault, e.to_string()))?;
    let key = super::node::placement_key(vault);
    let range = etcd.range(&key, None, 1).await?;
    let owner = range
        .kvs
        .first()
        .and_then(|kv| serde_json::from_slice::<Placement>(&kv.value).ok())
        .ok_or_else(|| moving(vault, "it has no placement (never used)"))?
        .node;
    let nodes = live_nodes(etcd).await?;
    let address = nodes
        .get(&owner)
        .ok_or_else(|| moving(vault, format!("its owner {owner} is not live")))?;
    if !nodes.contains_key(to) {
        return Err(moving(vault, format!("node {to} is not live")));
    }
    let mut bar: Option<Progress> = None;
    let done = ask_move(address, token, vault, to, |line| {
        if let Some(total) = line.get("total").and_then(Value::as_u64) {
            bar = Some(Progress::new("copying segments", total, Unit::Bytes, quiet));
        }
        if let (Some(bar), Some(bytes)) = (&bar, line.get("bytes").and_then(Value::as_u64)) {
            bar.set_position(bytes);
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish();
    }
    done
}

/// `memoryrouter cluster move VAULT NODE` (`json`: the owner's final report as one JSON
/// line instead of the summary: bytes, files, fence and flip times, each fenced phase).
pub fn move_vault(etcd: &str, vault: &str, to: &str, json: bool, quiet: bool) -> Result<(), Error> {
    let etcd = Etcd::new(etcd)?;
    let token = token_from_env()?;
    let done = runtime()?.block_on(move_one(&etcd, &token, vault, to, quiet))?;
    if json {
        println!("{done}");
    } else {
        println!("{}", summary(&done));
    }
    Ok(())
}

/// Moves each `(vault, to)`, one at a time, with a bar over the vaults; a failed move is
/// reported and the rest go on. Fails at the end if any did.
async fn move_all(
    etcd: &Etcd,
    token: &str,
    moves: Vec<(String, String)>,
    what: &'static str,
    quiet: bool,
) -> Result<(), ClusterError> {
    let bar = Progress::new(what, moves.len() as u64, Unit::Items, quiet);
    let mut failed = 0usize;
    for (vault, to) in &moves {
        match move_one(etcd, token, vault, to, true).await {
            Ok(done) => bar.suspend(|| println!("{}", summary(&done))),
            Err(error) => {
                failed += 1;
                bar.suspend(|| eprintln!("{error}"));
            }
        }
        bar.inc(1);
    }
    bar.finish();
    println!("{} vault(s) moved, {failed} failed", moves.len() - failed);
    if failed > 0 {
        return Err(moving(
            "(several)",
            format!("{failed} of {} moves failed", moves.len()),
        ));
    }
    Ok(())
}

/// `memoryrouter cluster drain NODE`: moves each of its vaults to the live node rendezvous
/// hashing picks among the others (where it would have been placed without NODE).
pub fn drain(etcd: &str, node: &str, quiet: bool) -> Result<(), Error> {
    let etcd = Etcd::new(etcd)?;
    let token = token_from_env()?;
    runtime()?.block_on(async {
        let nodes = live_nodes(&etcd).await?;
        if !nodes.contains_key(node) {
            return Err(moving(
                "(all)",
                format!("node {node} is not live: its vaults cannot be copied from it"),
            ));
        }
        let others: Vec<&str> = nodes
            .keys()
            .map(String::as_str)
            .filter(|n| *n != node)
            .collect();
        if others.is_empty() {
            return Err(moving("(all)", "no other live node to move to"));
        }
        let moves: Vec<(String, String)> = placements(&etcd)
            .await?
            .into_iter()
            .filter(|(_, owner)| owner == node)
            .filter_map(|(vault, _)| {
                let to = rendezvous(&vault, others.iter().copied())?.to_owned();
                Some((vault, to))
            })
            .collect();
        move_all(&etcd, &token, moves, "draining", quiet).await
    })?;
    Ok(())
}

/// `memoryrouter cluster rebalance`: moves each vault whose rendezvous owner among the live
/// nodes is not its owner (after a node joined), skipping vaults whose owner is down.
pub fn rebalance(etcd: &str, quiet: bool) -> Result<(), Error> {
    let etcd = Etcd::new(etcd)?;
    let token = token_from_env()?;
    runtime()?.block_on(async {
        let nodes = live_nodes(&etcd).await?;
        let moves: Vec<(String, String)> = placements(&etcd)
            .await?
            .into_iter()
            .filter(|(_, owner)| nodes.contains_key(owner))
            .filter_map(|(vault, owner)| {
                let best = rendezvous(&vault, nodes.keys().map(String::as_str))?;
                (best != owner).then(|| (vault.clone(), best.to_owned()))
            })
            .collect();
        move_all(&etcd, &token, moves, "rebalancing", quiet).await
    })?;
    Ok(())
}
