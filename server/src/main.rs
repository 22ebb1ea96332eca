//! The `memoryrouter` binary: parses the command line, sets up logging, and hands over to
//! the `server` library.

use std::collections::HashMap;

use anyhow::Context as _;
use clap::Parser as _;
use server::Config;
use server::{Cli, ClusterCommand, Command, KeysCommand, ModelsCommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr so stdout carries only what scripts read (the listen line, keys).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMORYROUTER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve {
            listen,
            cluster,
            location,
        } => serve(server::Flags {
            cluster,
            ..location.flags(listen)
        }),
        Command::Keys {
            command:
                KeysCommand::Create {
                    name,
                    admin,
                    location,
                },
        } => Ok(server::keys_create(&location.flags(None), name, admin)?),
        Command::Keys {
            command: KeysCommand::List { json, location },
        } => Ok(server::keys_list(&location.flags(None), json)?),
        Command::Keys {
            command:
                KeysCommand::Revoke {
                    id,
                    purge,
                    location,
                },
        } => Ok(server::keys_revoke(&location.flags(None), &id, purge)?),
        Command::Verify { dir, quiet } => Ok(server::verify(&dir, quiet)?),
        Command::Repair { dir, quiet } => Ok(server::repair(&dir, quiet)?),
        Command::Export {
            key_id,
            out,
            quiet,
            location,
        } => Ok(server::export(
            &location.flags(None),
            &key_id,
            out.as_deref(),
            quiet,
        )?),
        Command::Import {
            key_id,
            file,
            quiet,
            location,
        } => Ok(server::import(
            &location.flags(None),
            &key_id,
            &file,
            quiet,
        )?),
        Command::Health { url } => Ok(server::health(&url)?),
        Command::Reembed {
            key_id,
            all,
            quiet,
            location,
        } => Ok(server::reembed(
            &location.flags(None),
            key_id.as_deref(),
            all,
            quiet,
        )?),
        Command::Models {
            command: ModelsCommand::List,
        } => Ok(server::models_list()?),
        Command::Models {
            command:
                ModelsCommand::Fetch {
                    name,
                    hub,
                    manifest,
                    quiet,
                    location,
                },
        } => Ok(server::models_fetch(
            &location.flags(None),
            &name,
            hub.as_deref(),
            manifest.as_deref(),
            quiet,
        )?),
        Command::Cluster {
            command: ClusterCommand::Status { etcd, json, quiet },
        } => Ok(server::cluster_status(&etcd, json, quiet)?),
        Command::Cluster {
            command:
                ClusterCommand::Move {
                    vault,
                    node,
                    etcd,
                    json,
                    quiet,
                },
        } => Ok(server::cluster_move(&etcd, &vault, &node, json, quiet)?),
        Command::Cluster {
            command: ClusterCommand::Drain { node, etcd, quiet },
        } => Ok(server::cluster_drain(&etcd, &node, quiet)?),
        Command::Cluster {
            command: ClusterCommand::Rebalance { etcd, quiet },
        } => Ok(server::cluster_rebalance(&etcd, quiet)?),
    }
}

fn serve(flags: server::Flags) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(&flags, &env)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        // Machine-readable: tests and scripts that pass port 0 read the port from this line.
        println!("listening on http://{}", listener.local_addr()?);
        server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
