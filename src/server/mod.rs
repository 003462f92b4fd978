//! The composition root: runs an agent in four phases.
//!
//! 1. **bind**: every listener (HTTP, DNS UDP and TCP, server RPC), before anything is created
//!    in the data dir, so a taken port fails start-up without side effects;
//! 2. **start**: the store, Raft, the leader supervisor, the agent, DNS and HTTP, every task
//!    owned by one `Tasks` tracker;
//! 3. **serve**: form or join the cluster, register this server, then wait for a shutdown
//!    request, a graceful leave, or an essential task's unexpected end;
//! 4. **drain**: stop serving clients (DNS closes, HTTP stops accepting, blocking queries
//!    answer at once) while Raft still commits the writes in flight; then end every task and
//!    wait for them (each step with a deadline); then stop Raft.
//!
//! A failure in start stops what had started before it is reported.
//!
//! `port` implements the cluster port (`crate::cluster`) over the Raft node.

pub mod port;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, NodeIdentity};
use crate::config::{Config, Mode};
use crate::dns::{self, DnsHandler, DnsServer, ZoneSettings};
use crate::http::{self, Api, Reloader};
use crate::leader::{self, SessionTimers};
use crate::metrics::DnsMetrics;
use crate::raft::{self, RaftNode, formation, rpc};
use crate::store;
use crate::store::types::ServerNode;
use crate::tasks::Tasks;
use crate::transport::{self, Limits};
use crate::view::View;
use port::ServerCluster;

/// Re-reads the configuration (for SIGHUP): flags plus the config file.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// How long drain waits for the agent's tasks before giving up on them.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Runs a server until `shutdown` resolves, it leaves its cluster, or one of its essential tasks
/// ends unexpectedly (then it returns an error naming the task). With `reload`, SIGHUP re-reads
/// the config and applies its DNS part (settings and zone files).
pub async fn run(
    config: Config,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let bound = bind(&config).await?;
    run_bound(config, bound, reload, shutdown).await
}

/// [`run`] on listeners bound by [`bind`]: in-process callers (tests) bind on port 0 first to
/// learn the addresses.
pub async fn run_bound(
    config: Config,
    bound: Bound,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tasks = Tasks::new();
    let running = match start(&config, bound, reload, &tasks).await {
        Ok(running) => running,
        Err(e) => {
            // Whatever did start stops before the error is reported.
            tasks.drain(DRAIN_DEADLINE).await;
            return Err(e);
        }
    };
    let served = serve(&config, &running, &tasks, shutdown).await;
    drain(running, &tasks).await;
    served?;
    match tasks.failure() {
        Some(task) => Err(anyhow::anyhow!("task {task} ended unexpectedly")),
        None => Ok(()),
    }
}

/// Phase 1's result: every listener, bound before the data dir is touched.
pub struct Bound {
    http: TcpListener,
    dns: dns::Listeners,
    /// None in dev mode without `--rpc-addr`.
    rpc: Option<TcpListener>,
    /// The RPC address this server reports (the bound one, or the configured one).
    rpc_addr: SocketAddr,
}

impl Bound {
    /// The HTTP API's bound address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The DNS (UDP and TCP) bound address.
    pub fn dns_addr(&self) -> std::io::Result<SocketAddr> {
        self.dns.tcp.local_addr()
    }
}

/// Phase 1: binds every listener of `config` (port 0 picks a free one), creating nothing on
/// disk. Errors name the listener that could not be bound.
pub async fn bind(config: &Config) -> anyhow::Result<Bound> {
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding http on {}", config.http_addr))?;
    tracing::info!("listening http on {}", http.local_addr()?);
    let dns = dns::bind(config.dns_addr, config.dns.udp_loops())
        .await
        .with_context(|| format!("binding dns on {}", config.dns_addr))?;
    tracing::info!(
        loops = dns.udp.len(),
        "listening dns-udp on {}",
        dns.udp[0].local_addr()?
    );
    tracing::info!("listening dns-tcp on {}", dns.tcp.local_addr()?);
    let rpc = if config.mode == Mode::Server || config.rpc_listen {
        let rpc = TcpListener::bind(config.rpc_addr)
            .await
            .with_context(|| format!("binding rpc on {}", config.rpc_addr))?;
        tracing::info!("listening rpc on {}", rpc.local_addr()?);
        Some(rpc)
    } else {
        None
    };
    let rpc_addr = match &rpc {
        Some(l) => l.local_addr()?,
        None => config.rpc_addr,
    };
    Ok(Bound {
        http,
        dns,
        rpc,
        rpc_addr,
    })
}

/// Phase 2's result: what serve and drain work with.
struct Running {
    node: RaftNode,
    agent: Agent,
    dns: DnsServer,
    /// The HTTP server task, drained before the rest.
    http: JoinHandle<()>,
    rpc_addr: SocketAddr,
    /// Cancelled when this server has left its cluster.
    leave: CancellationToken,
    /// Dev mode without `--data-dir`: removed when this is dropped, after drain.
    _temp: Option<tempfile::TempDir>,
}

async fn start(
    config: &Config,
    bound: Bound,
    reload: Option<Reload>,
    tasks: &Tasks,
) -> anyhow::Result<Running> {
    // Zone files and DNS settings are checked before the data dir is opened.
    let view = View::default();
    let handler = Arc::new(DnsHandler::new(view.clone(), zone_settings(config))?);
    let (data_dir, temp): (PathBuf, Option<tempfile::TempDir>) = match &config.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("beacon-dev-")
                .tempdir()
                .context("creating a temporary data dir")?;
            (temp.path().to_path_buf(), Some(temp))
        }
    };
    let db = store::open(&data_dir)?;
    let node_id = store::node_id(&db)?;
    tracing::info!(data_dir = %data_dir.display(), node_id, "opened data dir");

    let me = ServerNode {
        rpc_addr: bound.rpc_addr.to_string(),
        name: config.node_name.clone(),
    };
    let node = RaftNode::start(node_id, me, db, view.clone(), &config.raft, tasks).await?;
    let services = Services {
        view,
        handler,
        rpc: bound.rpc,
        http: bound.http,
        dns: bound.dns,
    };
    match start_services(config, node.clone(), services, reload, tasks).await {
        Ok((agent, dns, leave, http)) => Ok(Running {
            node,
            agent,
            dns,
            http,
            rpc_addr: bound.rpc_addr,
            leave,
            _temp: temp,
        }),
        Err(e) => {
            tasks.drain(DRAIN_DEADLINE).await;
            node.shutdown().await;
            Err(e)
        }
    }
}

/// What `start_services` serves on.
struct Services {
    view: View,
    handler: Arc<DnsHandler>,
    rpc: Option<TcpListener>,
    http: TcpListener,
    dns: dns::Listeners,
}

/// The rest of phase 2, once Raft runs: RPC, the leader supervisor, the agent, DNS, HTTP.
async fn start_services(
    config: &Config,
    node: RaftNode,
    services: Services,
    reload: Option<Reload>,
    tasks: &Tasks,
) -> anyhow::Result<(Agent, DnsServer, CancellationToken, JoinHandle<()>)> {
    let Services {
        view,
        handler,
        rpc,
        http: http_listener,
        dns: dns_listeners,
    } = services;
    let rpc_addr: SocketAddr = node.me().rpc_addr.parse()?;
    // Raft stopping on its own (a storage failure) must not leave a server answering stale data.
    let core = node.clone();
    let stop = tasks.stop().clone();
    tasks.spawn_essential("raft-core", async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = core.wait_stopped() => {}
        }
    });
    let sessions = SessionTimers::new(view.clone());
    if let Some(listener) = rpc {
        let handler = Arc::new(rpc::Rpc::new(node.clone(), Arc::new(sessions.clone())));
        let cluster = raft::cluster_id(&view);
        let stop = tasks.stop().clone();
        tasks.spawn_essential(
            "rpc-server",
            transport::serve(listener, handler, cluster, Limits::default(), stop),
        );
    }

    let writer = node.writer();
    leader::start(
        leader::Duties {
            node: node.clone(),
            writer: node.leader_writer(),
            autopilot: config.autopilot.clone(),
            sessions: sessions.clone(),
        },
        tasks,
    );
    let identity = NodeIdentity {
        id: view
            .load()
            .node(&config.node_name)
            .map(|n| n.id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(new_node_id),
        name: config.node_name.clone(),
        address: advertise_ip(rpc_addr.ip()).to_string(),
        datacenter: config.datacenter.clone(),
    };
    let agent = Agent::new(identity, writer.clone(), view.clone(), tasks.clone());

    let dns_metrics = Arc::new(DnsMetrics::default());
    let dns = dns::serve(
        handler.clone(),
        dns_listeners,
        dns_metrics.clone(),
        config.dns.max_queue_delay,
        tasks,
    )
    .context("starting dns")?;
    let reloader: Option<Reloader> = reload.map(|reload| {
        let handler = handler.clone();
        Arc::new(move || {
            let config = reload().map_err(|e| e.to_string())?;
            handler
                .reload(zone_settings(&config))
                .map_err(|e| e.to_string())?;
            tracing::info!("reloaded DNS configuration and zone files");
            Ok(())
        }) as Reloader
    });
    if let Some(reloader) = reloader.clone() {
        tasks.spawn(reload_on_sighup(reloader, tasks.stop().clone()));
    }

    let leave = CancellationToken::new();
    let api = Api {
        view,
        writer,
        agent: agent.clone(),
        cluster: Arc::new(ServerCluster {
            node: node.clone(),
            sessions,
        }),
        datacenter: config.datacenter.clone(),
        leave: leave.clone(),
        shutdown: tasks.serving().clone(),
        dns_metrics,
        reload: reloader,
    };
    let serving = tasks.serving().clone();
    let http = tasks.spawn_essential("http-server", async move {
        let stop = async move { serving.cancelled().await };
        if let Err(e) = http::serve(http_listener, api, stop).await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((agent, dns, leave, http))
}

/// Phase 3: becomes ready (cluster formed, a leader known, this server registered), then waits
/// for a reason to stop.
async fn serve(
    config: &Config,
    running: &Running,
    tasks: &Tasks,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = &running.node;
    let stop = tasks.stop();
    let ready = async {
        match config.mode {
            Mode::Dev => node.bootstrap_single().await?,
            Mode::Server => {
                formation::form(node, &config.join, config.bootstrap_expect, stop).await?
            }
        }
        while !node.wait_for_leader(Duration::from_secs(5)).await {
            tracing::info!("waiting for a cluster leader");
        }
        register(&running.agent, running.rpc_addr.port()).await;
        tracing::info!(
            leader = %node.leader_addr().unwrap_or_else(|| "none yet".into()),
            rpc = %running.rpc_addr,
            "beacon agent ready"
        );
        anyhow::Ok(())
    };
    tokio::pin!(shutdown);
    tokio::select! {
        result = ready => result?,
        _ = &mut shutdown => return Ok(()),
        _ = stop.cancelled() => return Ok(()),
    }
    tokio::select! {
        _ = &mut shutdown => {}
        _ = running.leave.cancelled() => tracing::info!("left the cluster"),
        _ = stop.cancelled() => {}
    }
    Ok(())
}

/// Registers this server in the catalog, retrying until it is done: the registration is
/// idempotent, and a leader lost while a restarted server catches up (the write forwarded to it
/// broke, or no leader came within the hold) must not stop this server. Ends with shutdown.
async fn register(agent: &Agent, server_port: u16) {
    let mut pause = Duration::from_millis(100);
    loop {
        match agent.start(server_port).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = %crate::report::chain(&e),
                    retry_in = ?pause,
                    "registering this server in the catalog failed; retrying"
                );
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Phase 4: stop serving clients (blocking queries answer at once) while Raft still commits
/// the writes in flight; then end every task; then stop Raft.
async fn drain(running: Running, tasks: &Tasks) {
    tracing::info!("shutting down");
    tasks.serving().cancel();
    running.dns.shutdown().await;
    if tokio::time::timeout(DRAIN_DEADLINE, running.http)
        .await
        .is_err()
    {
        tracing::warn!("http requests still running after {DRAIN_DEADLINE:?}; stopping anyway");
    }
    if !tasks.drain(DRAIN_DEADLINE).await {
        tracing::warn!(
            running = tasks.running(),
            "tasks still running after {DRAIN_DEADLINE:?}; stopping anyway"
        );
    }
    running.node.shutdown().await;
    tracing::info!("stopped");
}

fn zone_settings(config: &Config) -> ZoneSettings {
    ZoneSettings {
        domain: config.domain.clone(),
        datacenter: config.datacenter.clone(),
        dns: config.dns.clone(),
    }
}

async fn reload_on_sighup(reload: Reloader, stop: CancellationToken) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; reload disabled");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            if let Err(e) = reload() {
                tracing::error!(error = %e, "reload failed; keeping the previous DNS configuration");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        stop.cancelled().await;
    }
}

fn advertise_ip(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    }
}

/// A random UUID, Consul's node ID format.
fn new_node_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
