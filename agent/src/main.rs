//! `cluster`: the node daemon and command-line interface.
//!
//! - [`cli`]: argument parsing (clap derive; doc comments are the `--help`);
//! - [`daemon`]: `init`, `join` and `start`: run a node in the foreground;
//! - [`client`]: endpoint list and leader following for client commands;
//! - [`commands`]: the client commands (`status`, `members`, `kv`, …);
//! - [`ipam`]: `cluster network …` and `cluster ip …`;
//! - [`nodes`]: `cluster nodes` and `cluster node …` (the registry);
//! - [`session`]: the agent's registration and heartbeat session, following the leader;
//! - [`resources`]: what the machine offers, and label parsing;
//! - [`bench`]: an etcd v3 load generator that drives cluster and etcd alike;
//! - [`bench_ipam`]: allocation rates through the cluster, and memory of full pools;
//! - [`bench_agents`]: emulated agents against a real cluster (registry scale).

mod bench;
mod bench_agents;
mod bench_ipam;
mod cli;
mod client;
mod commands;
mod daemon;
mod ipam;
mod nodes;
mod output;
mod resources;
mod session;

use clap::Parser;

// glibc malloc took ~10% of a busy leader's CPU profile; mimalloc is cheaper per call.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.default_log_filter()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
