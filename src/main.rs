//! The `beacon` binary: CLI parsing, logging, exit codes. Everything else lives in the library.

mod cli;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use beacon::config::{self, Flags};

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
    Agent(AgentArgs),
    /// Read and write the key/value store of a running agent.
    Kv(cli::kv::KvArgs),
}

#[derive(Args)]
struct AgentArgs {
    /// One-node server that bootstraps its own cluster and elects itself.
    #[arg(long)]
    dev: bool,
    /// Run as a clustered server (not available yet).
    #[arg(long)]
    server: bool,
    /// TOML config file with Consul's key names; flags override it.
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP API address (default 127.0.0.1:8500).
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<String>,
    /// DNS address for UDP and TCP (default 127.0.0.1:8600).
    #[arg(long, value_name = "ADDR")]
    dns_addr: Option<String>,
    /// Server RPC address reported as the leader (default 127.0.0.1:8300).
    #[arg(long, value_name = "ADDR")]
    rpc_addr: Option<String>,
    /// Where the Raft log and catalog persist (dev: a temporary dir unless given).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Node name (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Datacenter (default dc1).
    #[arg(long)]
    datacenter: Option<String>,
    /// DNS domain (default consul.).
    #[arg(long)]
    domain: Option<String>,
    /// trace, debug, info, warn or error (default info).
    #[arg(long)]
    log_level: Option<String>,
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

fn agent(args: AgentArgs) -> ExitCode {
    if !args.dev {
        let why = if args.server {
            "--server (clustered servers) is not available yet"
        } else {
            "beacon agent needs a mode"
        };
        eprintln!("error: {why}; the modes are: --dev (a one-node server that elects itself)");
        return ExitCode::from(EXIT_USAGE);
    }
    let flags = Flags {
        dev: args.dev,
        config_file: args.config,
        http_addr: args.http_addr,
        dns_addr: args.dns_addr,
        rpc_addr: args.rpc_addr,
        data_dir: args.data_dir,
        node: args.node,
        datacenter: args.datacenter,
        domain: args.domain,
        log_level: args.log_level,
    };
    let config = match config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},openraft=warn,hickory_server=warn,beacon={level}",
            level = config.log_level.to_ascii_lowercase()
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(beacon::server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
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
