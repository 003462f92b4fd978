//! The `beacon` binary: CLI parsing, logging, exit codes. Everything else lives in the library.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use beacon::config::{self, Flags};

/// mimalloc instead of glibc's malloc: the write path allocates and frees many small objects
/// across threads (catalog records copied on write, messages), and a profile of 64 concurrent
/// writers spent about a third of the servers' CPU in glibc's malloc and free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for bad usage or configuration (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "beacon",
    version,
    about = "DNS-based service discovery, Consul-compatible"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Beacon agent.
    Agent(Flags),
    /// Read and write the key/value store of a running agent.
    Kv(cli::kv::KvArgs),
    /// Ask the local server to leave its cluster gracefully, then shut down.
    Leave(cli::ops::AddrArgs),
    /// Ask the local server to join the cluster of the server at ADDR (its RPC address).
    Join(cli::ops::JoinArgs),
    /// List the servers of the cluster.
    Members(cli::ops::AddrArgs),
    /// Operator commands.
    Operator(cli::ops::OperatorArgs),
    /// Save or restore a snapshot of the catalog.
    Snapshot(cli::ops::SnapshotArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(cli::normalize_flags(std::env::args())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Agent(args) => agent(args),
        Command::Kv(args) => client(cli::kv::run(args)),
        Command::Leave(args) => client(cli::ops::leave(args)),
        Command::Join(args) => client(cli::ops::join(args)),
        Command::Members(args) => client(cli::ops::members(args)),
        Command::Operator(args) => client(cli::ops::operator(args)),
        Command::Snapshot(args) => client(cli::ops::snapshot(args)),
    }
}

/// Runs a client subcommand; errors go to stderr with exit status 1, as Consul's CLI does.
fn client(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn agent(flags: Flags) -> ExitCode {
    let config = match config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            // openraft's replication warns on every failed heartbeat (8 lines a second for one
            // down peer); Beacon's network reports an unreachable server itself, rate-limited,
            // by name. openraft's other warnings stay.
            "{level},openraft=warn,openraft::replication=error,\
             openraft::engine::handler::replication_handler=error,hickory_server=warn,\
             beacon={level}",
            level = config.log_level.to_ascii_lowercase()
        ))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(beacon::logs::MonitorWriter)
                .with_ansi(false),
        )
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload: beacon::server::Reload = Box::new(move || config::load(&flags));
    match runtime.block_on(beacon::server::run(config, Some(reload), shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr (where the log goes too), each cause once.
            eprintln!("error: {}", beacon::report::causes(e.chain()));
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
