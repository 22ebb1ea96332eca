//! The command line (clap derive). `main.rs` parses it and calls [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Flags;

#[derive(Debug, Parser)]
#[command(
    name = "memoryrouter",
    version,
    about = "Self-hosted memory server for AI apps"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the data and the settings are; shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Location {
    /// Data directory (default ./memoryrouter-data; env MEMORYROUTER_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (env MEMORYROUTER_CONFIG).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl Location {
    pub fn flags(&self, listen: Option<String>) -> Flags {
        Flags {
            config: self.config.clone(),
            listen,
            data_dir: self.data_dir.clone(),
            cluster: None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server. Prints `listening on http://ADDR` on stdout once bound.
    Serve {
        /// Address to listen on (default 127.0.0.1:8787; port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Cluster mode: keep the catalog and the vaults' placement in this etcd
        /// (`etcd://HOST:PORT`; see docs/scaling.md). Needs `[cluster] node_id`.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        location: Location,
    },
    /// Manage Memory Keys offline (the server must be stopped: it holds the data directory).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check every checksum of the catalog and every vault (WALs and segment files).
    Verify {
        /// The data directory to check.
        dir: PathBuf,
        /// No progress bar (there is none anyway when stderr is not a terminal).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Repair damaged write-ahead logs offline (the server must be stopped): each log that
    /// `verify` refuses — the catalog's, the proxy outbox's, each vault's — is copied to
    /// `DIR/repair-<unix time>/…`, then cut at the end of the last complete batch before the
    /// first damage; prints exactly what was cut.
    Repair {
        /// The data directory to repair.
        dir: PathBuf,
        /// No progress bar (there is none anyway when stderr is not a terminal).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Write one vault as JSON Lines (offline).
    Export {
        /// The key whose vault to export.
        #[arg(long)]
        key_id: String,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar and no summary line on stderr.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Read JSON Lines (as written by export) into a vault (offline).
    Import {
        /// The key whose vault receives the memories.
        #[arg(long)]
        key_id: String,
        /// JSON Lines file.
        file: PathBuf,
        /// No progress bar and no summary line on stderr.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Rebuild vaults' vectors with the configured embedder after `[embedder]` changed
    /// (offline): each vault pinned to another embedder is copied into a new vault from its
    /// stored texts, then swapped in atomically; the old one is kept under DATA_DIR/reembed.
    Reembed {
        /// The key whose vault to rebuild.
        #[arg(long, conflicts_with = "all")]
        key_id: Option<String>,
        /// Every key's vault.
        #[arg(long)]
        all: bool,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Embedding models the server can run, fetched from the Hugging Face hub.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Cluster mode: status, move, drain, rebalance (see docs/scaling.md).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Ask a running server whether it is ready (`GET /readyz`); exit status 0 when it
    /// answers 200. For container health checks: the image has no curl.
    Health {
        /// The URL to ask (plain http).
        #[arg(long, default_value = "http://127.0.0.1:8787/readyz")]
        url: String,
    },
}

/// Cluster mode (`serve --cluster`): what etcd says about the nodes and vaults.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes in the registry (live or not) and how many vaults each owns.
    Status {
        /// The cluster's etcd (`etcd://HOST:PORT`).
        #[arg(long)]
        etcd: String,
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
        /// No progress bar (there is none anyway when stderr is not a terminal).
        #[arg(long, short)]
        quiet: bool,
    },
    /// Move one vault to another live node, without losing a write (its owner copies it
    /// while serving, holds its writes for the last copy, and flips the placement).
    /// Needs MEMORYROUTER_SECRET_KEY, the nodes' shared secret.
    Move {
        /// The vault (the id of its key).
        vault: String,
        /// The node to move it to.
        node: String,
        #[arg(long)]
        etcd: String,
        /// The final report as one JSON line (bytes, files, fence and flip times, phases).
        #[arg(long)]
        json: bool,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Move every vault off NODE (each to the node rendezvous hashing picks among the
    /// others), one at a time. Needs MEMORYROUTER_SECRET_KEY.
    Drain {
        node: String,
        #[arg(long)]
        etcd: String,
        #[arg(long, short)]
        quiet: bool,
    },
    /// Move each vault whose rendezvous owner among the live nodes is another node (after
    /// a node joined). Needs MEMORYROUTER_SECRET_KEY.
    Rebalance {
        #[arg(long)]
        etcd: String,
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The models `fetch` knows (name, repository and pinned revision).
    List,
    /// Download NAME into DATA_DIR/models/NAME: pinned revision, every file checked against
    /// its pinned SHA-256, an interrupted download resumed; prints the `[embedder]` lines.
    Fetch {
        /// A name from `models list`, e.g. all-MiniLM-L6-v2.
        name: String,
        /// Hub base URL, for a mirror (default https://huggingface.co; env HF_ENDPOINT).
        #[arg(long)]
        hub: Option<String>,
        /// Replaces the pinned table with a JSON file (tests, private mirrors).
        #[arg(long, hide = true)]
        manifest: Option<PathBuf>,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        location: Location,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Mint a key and print it once.
    Create {
        /// A label such as `user:42`.
        #[arg(long)]
        name: Option<String>,
        /// Make it an account-level (admin) key.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        location: Location,
    },
    /// List the account's keys (never the keys themselves).
    List {
        /// One JSON array (the fields of `GET /v1/keys`) instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        location: Location,
    },
    /// Revoke a key by id.
    Revoke {
        id: String,
        /// Also delete the key's vault.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        location: Location,
    },
}
