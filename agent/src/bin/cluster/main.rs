//! `cluster`: the node daemon and command-line interface, as a thin binary over the
//! `agent` library and the `client` crate.
//!
//! - [`cli`]: argument parsing (clap derive; doc comments are the `--help`), and the
//!   dispatch that turns parsed arguments into plain ones;
//! - [`commands`]: the client commands: call `client`, print. They never see clap types.

mod cli;
mod commands;

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
