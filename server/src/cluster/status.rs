//! `memoryrouter cluster status`: the nodes in the registry and how many vaults each owns,
//! read from etcd (no node needs to be up). Reading the placements of millions of vaults
//! takes a while, so it shows a progress bar on a terminal.

use std::collections::BTreeMap;

use super::ClusterError;
use super::etcd::{Etcd, prefix_end};
use super::node::{NODES_PREFIX, NodeInfo, PLACEMENT_PREFIX, Placement};
use crate::error::Error;
use crate::progress::{Progress, Unit};

/// Placements read per range call.
const STATUS_BATCH_KEYS: i64 = 10_000;

/// One node's line of the status.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct NodeStatus {
    pub node: String,
    /// `None` = not in the registry (down, or its lease expired): its vaults answer 503.
    pub advertise: Option<String>,
    pub live: bool,
    pub vaults: u64,
}

async fn read(etcd: &Etcd, progress: &Progress) -> Result<Vec<NodeStatus>, ClusterError> {
    let mut nodes: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let prefix = NODES_PREFIX.as_bytes();
    for kv in etcd.range(prefix, Some(&prefix_end(prefix)), 0).await?.kvs {
        let id = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
        let info = serde_json::from_slice::<NodeInfo>(&kv.value).ok();
        nodes.insert(
            id.clone(),
            NodeStatus {
                node: id,
                advertise: info.map(|i| i.advertise),
                live: true,
                vaults: 0,
            },
        );
    }
    let prefix = PLACEMENT_PREFIX.as_bytes();
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    loop {
        let range = etcd.range(&from, Some(&end), STATUS_BATCH_KEYS).await?;
        for kv in &range.kvs {
            if let Ok(placement) = serde_json::from_slice::<Placement>(&kv.value) {
                let entry = nodes
                    .entry(placement.node.clone())
                    .or_insert_with(|| NodeStatus {
                        node: placement.node,
                        ..NodeStatus::default()
                    });
                entry.vaults += 1;
            }
        }
        progress.inc(range.kvs.len() as u64);
        match (range.more, range.kvs.last()) {
            (true, Some(last)) => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok(nodes.into_values().collect())
}

/// Prints the cluster's nodes and their vault counts (a table, or JSON with `json`).
pub fn status(etcd: &str, json: bool, quiet: bool) -> Result<(), Error> {
    let etcd = Etcd::new(etcd)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: "runtime".into(),
            source,
        })?;
    let nodes = runtime.block_on(async {
        let prefix = PLACEMENT_PREFIX.as_bytes();
        let total = etcd
            .range(prefix, Some(&prefix_end(prefix)), 1)
            .await?
            .count;
        let progress = Progress::new(
            "reading placements",
            u64::try_from(total).unwrap_or(0),
            Unit::Items,
            quiet,
        );
        let nodes = read(&etcd, &progress).await;
        progress.finish();
        nodes
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&nodes).map_err(|e| Error::Config {
                field: "status".into(),
                reason: e.to_string(),
            })?
        );
        return Ok(());
    }
    println!("{:<16} {:<6} {:>10}  ADVERTISE", "NODE", "LIVE", "VAULTS");
    for node in &nodes {
        println!(
            "{:<16} {:<6} {:>10}  {}",
            node.node,
            if node.live { "yes" } else { "NO" },
            node.vaults,
            node.advertise.as_deref().unwrap_or("-")
        );
    }
    let total: u64 = nodes.iter().map(|n| n.vaults).sum();
    let down: u64 = nodes.iter().filter(|n| !n.live).map(|n| n.vaults).sum();
    println!(
        "{} node(s), {total} vault(s); {down} on nodes that are down",
        nodes.len()
    );
    Ok(())
}
