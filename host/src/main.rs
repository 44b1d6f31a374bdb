//! The `steedos-wasm` binary: see `steedos-wasm --help`.
//!
//! It sets up logging and hands the arguments to [`steedos_wasm::cli`];
//! everything else lives in the library, never here.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use steedos_wasm::cli::{Cli, Command, run};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// mimalloc: the host allocates and frees small buffers on every call (JSON,
/// MessagePack, NATS packets); measured 5-10% more calls and events per
/// second than the system allocator (`just bench`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color);
    // The OTLP logs layer does nothing until `[telemetry]` turns logs on.
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(steedos_wasm::telemetry::logs::layer())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
