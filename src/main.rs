//! The `beacon` binary: CLI parsing, logging, exit codes. Everything else lives in the library.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
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
    Agent(Box<Flags>),
    /// Read and write the key/value store of a running agent.
    Kv(cli::kv::KvArgs),
    /// Ask the local agent to leave gracefully (a server also leaves Raft), then shut down.
    Leave(cli::ops::AddrArgs),
    /// Ask the local agent to join the gossip pool through the agent at ADDR.
    Join(cli::ops::JoinArgs),
    /// List the members of the gossip pool.
    Members(cli::ops::AddrArgs),
    /// Turn a failed member into left (with -prune, forget it at once).
    ForceLeave(cli::ops::ForceLeaveArgs),
    /// Print a new gossip encryption key (base64 of 32 random bytes).
    Keygen,
    /// Manage the gossip encryption keyring across the pool.
    Keyring(cli::ops::KeyringArgs),
    /// Operator commands.
    Operator(cli::ops::OperatorArgs),
    /// Save, restore or inspect a snapshot of the catalog.
    Snapshot(cli::ops::SnapshotArgs),
    /// Run a command while holding a lock on a KV prefix (Consul's `lock`).
    Lock(cli::lock::LockArgs),
    /// Watch a view of the catalog or KV store, printing it or running a handler on each change.
    Watch(cli::watch::WatchArgs),
    /// Create a CA and agent certificates (Consul's `tls ca create`, `tls cert create`).
    Tls(cli::tls::TlsArgs),
    /// List datacenters, nodes and services of the catalog.
    Catalog(cli::catalog::CatalogArgs),
    /// Print the agent's statistics (`/v1/agent/self` Stats).
    Info(cli::HttpArgs),
    /// Ask the agent to re-read its configuration, zone files and certificates.
    Reload(cli::HttpArgs),
    /// Print Beacon's version.
    Version,
    /// Put the node or a service in maintenance, take it out, or list what is in it.
    Maint(cli::agent::MaintArgs),
    /// Register or deregister services with the local agent.
    Services(cli::agent::ServicesArgs),
    /// Stream the agent's log.
    Monitor(cli::agent::MonitorArgs),
    /// Check config files without starting an agent.
    Validate(cli::agent::ValidateArgs),
}

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc madvises its arenas MADV_HUGEPAGE, and partly used
    // 2 MiB pages cost ~50 MB of RSS after 100k registrations (issue 13). Same effect as
    // MIMALLOC_ALLOW_THP=0, which makes mimalloc call this at its start.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // One crypto provider for every TLS user in the process (HTTPS, server RPC, DNS over TLS,
    // reqwest): aws-lc-rs is the only one compiled, and installing it here keeps a dependency
    // that enables another from making rustls panic at the first handshake.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut command = Cli::command();
    command.build();
    let args = cli::normalize_args(std::env::args().collect(), &command);
    let cli = match Cli::try_parse_from(args) {
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
        Command::Agent(args) => agent(*args),
        Command::Kv(args) => client(cli::kv::run(args)),
        Command::Leave(args) => client(cli::ops::leave(args)),
        Command::Join(args) => client(cli::ops::join(args)),
        Command::Members(args) => client(cli::ops::members(args)),
        Command::ForceLeave(args) => client(cli::ops::force_leave(args)),
        Command::Keygen => {
            println!("{}", beacon::gossip::generate_key());
            ExitCode::SUCCESS
        }
        Command::Keyring(args) => client(cli::ops::keyring(args)),
        Command::Operator(args) => client(cli::ops::operator(args)),
        Command::Snapshot(args) => client(cli::ops::snapshot(args)),
        Command::Lock(args) => client_status(cli::lock::run(args)),
        Command::Watch(args) => client_status(cli::watch::run(args)),
        Command::Catalog(args) => client(cli::catalog::catalog(args)),
        Command::Info(args) => client(cli::agent::info(args)),
        Command::Reload(args) => client(cli::agent::reload(args)),
        Command::Maint(args) => client(cli::agent::maint(args)),
        Command::Services(args) => client(cli::agent::services(args)),
        Command::Monitor(args) => client(cli::agent::monitor(args)),
        Command::Validate(args) => match cli::agent::validate(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            cli::agent::version();
            ExitCode::SUCCESS
        }
        Command::Tls(args) => match cli::tls::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("==> {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs a client subcommand; errors go to stderr with exit status 1, as Consul's CLI does.
fn client(work: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    client_status(async { work.await.map(|()| 0) })
}

/// Runs a client subcommand that chooses its exit status (`lock` passes its child's on);
/// errors go to stderr with exit status 1.
fn client_status(work: impl std::future::Future<Output = Result<u8, String>>) -> ExitCode {
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
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Environment variable naming mimalloc's `arena_eager_commit` option.
const EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// A client agent's heap is a few MB, but mimalloc commits its first arena eagerly, and with
/// transparent huge pages each touched 2 MB of it becomes resident: about 6 of a client's
/// 24 MB RSS. mimalloc reads its options at its first allocation, before `main`, so the agent
/// starts itself again (same PID, same arguments) with the option off. If that fails it goes
/// on as it is.
fn small_arena() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(EAGER_COMMIT).is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(EAGER_COMMIT, "0")
        .exec();
    eprintln!("note: could not restart with a small allocator arena ({err}); continuing");
}

fn agent(flags: Flags) -> ExitCode {
    let config = match config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = beacon::server::definitions(&config) {
        eprintln!("error: invalid configuration: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if config.mode == config::Mode::Client {
        small_arena();
    }
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
    let log_file = match &config.log.file {
        Some(path) => match beacon::logs::file::LogFile::open(&config.log, path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("error: cannot open the log file {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    let json = config.log.json;
    tracing_subscriber::registry()
        .with(filter)
        .with(if json {
            tracing_subscriber::fmt::layer()
                .event_format(beacon::logs::json::Hclog)
                .with_writer(std::io::stderr)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .boxed()
        })
        .with(log_file.map(|file| {
            if json {
                tracing_subscriber::fmt::layer()
                    .event_format(beacon::logs::json::Hclog)
                    .with_writer(file)
                    .boxed()
            } else {
                tracing_subscriber::fmt::layer()
                    .with_writer(file)
                    .with_ansi(false)
                    .boxed()
            }
        }))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(beacon::logs::MonitorWriter)
                .with_ansi(false),
        )
        .init();
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }

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
