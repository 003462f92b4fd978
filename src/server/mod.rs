//! The composition root: runs an agent in four phases.
//!
//! 1. **bind**: every listener (HTTP, HTTPS, DNS UDP, TCP and TLS, server RPC) and the TLS
//!    certificates, before anything is created in the data dir, so a taken port or a bad
//!    certificate fails start-up without side effects;
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

mod client;
pub mod pool;
pub mod port;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::definitions::Definitions;
use crate::agent::{Agent, NodeIdentity};
use crate::cluster::Gossip;
use crate::config::{Config, Mode};
use crate::dns::{self, DnsHandler, DnsServer, ZoneSettings};
use crate::http::{self, Api, Reloader};
use crate::leader::{self, SessionTimers};
use crate::metrics::DnsMetrics;
use crate::raft::{self, RaftNode, formation, rpc};
use crate::store;
use crate::store::types::ServerNode;
use crate::tasks::Tasks;
use crate::tls::Tls;
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
/// learn the addresses. A client agent or a server, by `config.mode`.
pub async fn run_bound(
    config: Config,
    bound: Bound,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.mode == Mode::Client {
        client::run(config, bound, reload, shutdown).await
    } else {
        run_server(config, bound, reload, shutdown).await
    }
}

async fn run_server(
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
    /// None when `ports.http = -1`.
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    dns: dns::Listeners,
    /// None in dev mode without `--rpc-addr`.
    rpc: Option<TcpListener>,
    /// The RPC address this server reports (the bound one, or the configured one).
    rpc_addr: SocketAddr,
    /// The certificates, loaded when any TLS setting is given.
    tls: Option<Arc<Tls>>,
}

impl Bound {
    /// The HTTP API's bound address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.http {
            Some(l) => l.local_addr(),
            None => Err(std::io::Error::other(
                "the HTTP API is off (ports.http = -1)",
            )),
        }
    }

    /// The HTTPS API's bound address, when it is on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The DNS (UDP and TCP) bound address.
    pub fn dns_addr(&self) -> std::io::Result<SocketAddr> {
        self.dns.tcp.local_addr()
    }
}

async fn bind_tcp(what: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))?;
    tracing::info!("listening {what} on {}", listener.local_addr()?);
    Ok(listener)
}

/// Phase 1: binds every listener of `config` (port 0 picks a free one) and loads the TLS
/// certificates, creating nothing on disk. Errors name the listener or file at fault.
pub async fn bind(config: &Config) -> anyhow::Result<Bound> {
    let tls = if config.tls.enabled() {
        let tls = Tls::load(&config.tls, &config.datacenter, &config.domain)
            .context("loading TLS certificates")?;
        let server = matches!(config.mode, Mode::Server);
        if server && config.tls.verify_server_hostname && tls.rpc_cert_names_server() == Some(false)
        {
            tracing::warn!(
                name = tls.server_name(),
                "this server's certificate does not name it as a server: with verify_server_hostname, agents and servers will refuse it (make it with `beacon tls cert create -server`)"
            );
        }
        Some(Arc::new(tls))
    } else {
        None
    };
    let http = match config.http_addr {
        Some(addr) => Some(bind_tcp("http", addr).await?),
        None => None,
    };
    let https = match config.https_addr {
        Some(addr) => Some(bind_tcp("https", addr).await?),
        None => None,
    };
    let mut dns = dns::bind(config.dns_addr, config.dns.udp_loops())
        .await
        .with_context(|| format!("binding dns on {}", config.dns_addr))?;
    tracing::info!(
        loops = dns.udp.len(),
        "listening dns-udp on {}",
        dns.udp[0].local_addr()?
    );
    tracing::info!("listening dns-tcp on {}", dns.tcp.local_addr()?);
    if let (Some(addr), Some(tls)) = (config.dns_tls_addr, &tls) {
        dns.tls = Some((bind_tcp("dns-tls", addr).await?, tls.dot_certs()));
    }
    let rpc = if config.mode == Mode::Server || config.rpc_listen {
        Some(bind_tcp("rpc", config.rpc_addr).await?)
    } else {
        None
    };
    let rpc_addr = match &rpc {
        Some(l) => l.local_addr()?,
        None => config.rpc_addr,
    };
    Ok(Bound {
        http,
        https,
        dns,
        rpc,
        rpc_addr,
        tls,
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
    gossip: Option<Arc<dyn Gossip>>,
    data_dir: PathBuf,
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
    let node = RaftNode::start(
        node_id,
        me,
        db,
        view.clone(),
        &config.raft,
        bound.tls.clone(),
        tasks,
    )
    .await?;
    // The catalog's node ID: kept from the catalog across restarts.
    let catalog_id = view
        .load()
        .node(&config.node_name)
        .map(|n| n.id.to_string())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(new_node_id);
    let gossip: Option<Arc<dyn Gossip>> = match &config.gossip {
        Some(settings) => {
            let tags = pool::tags(config, &catalog_id, bound.rpc_addr.port());
            match pool::start(
                settings,
                &config.node_name,
                tags,
                &data_dir,
                tasks.stop().clone(),
            )
            .await
            {
                Ok(p) => Some(Arc::new(pool::PoolPort::new(p))),
                Err(e) => {
                    node.shutdown().await;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let services = Services {
        view,
        handler,
        rpc: bound.rpc,
        http: bound.http,
        https: bound.https,
        tls: bound.tls,
        dns: bound.dns,
        gossip: gossip.clone(),
        catalog_id,
        data_dir: data_dir.clone(),
    };
    match start_services(config, node.clone(), services, reload, tasks).await {
        Ok((agent, dns, leave, http)) => Ok(Running {
            node,
            agent,
            dns,
            http,
            rpc_addr: bound.rpc_addr,
            leave,
            gossip,
            data_dir,
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
    http: Option<TcpListener>,
    https: Option<TcpListener>,
    tls: Option<Arc<Tls>>,
    dns: dns::Listeners,
    gossip: Option<Arc<dyn Gossip>>,
    /// This server's node ID in the catalog.
    catalog_id: String,
    data_dir: PathBuf,
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
        https: https_listener,
        tls,
        dns: dns_listeners,
        gossip,
        catalog_id,
        data_dir,
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
    let rpc_handler = Arc::new(rpc::Rpc::new(node.clone(), Arc::new(sessions.clone())));
    if let Some(listener) = rpc {
        let cluster = raft::cluster_id(&view);
        let stop = tasks.stop().clone();
        tasks.spawn_essential(
            "rpc-server",
            transport::serve(
                listener,
                rpc_handler.clone(),
                cluster,
                Limits::default(),
                tls.clone(),
                stop,
            ),
        );
    }

    let recorder = node.clone();
    let stop = tasks.stop().clone();
    tasks.spawn(async move { recorder.record_metrics(stop).await });
    let writer = node.writer();
    leader::start(
        leader::Duties {
            node: node.clone(),
            writer: node.leader_writer(),
            autopilot: config.autopilot.clone(),
            sessions: sessions.clone(),
            gossip: gossip.clone(),
            datacenter: config.datacenter.clone(),
            reconnect_timeout: config
                .gossip
                .as_ref()
                .map_or(Duration::MAX, |g| g.reconnect_timeout),
            pool_memory: Arc::default(),
        },
        tasks,
    );
    let identity = NodeIdentity {
        id: catalog_id,
        name: config.node_name.clone(),
        address: advertise_ip(rpc_addr.ip()).to_string(),
        datacenter: config.datacenter.clone(),
    };
    let agent = Agent::new(identity, writer.clone(), view.clone(), tasks.clone());

    let (dns, dns_metrics, reloader) = serve_dns(
        config,
        handler,
        dns_listeners,
        reload,
        tls.clone(),
        Resync {
            agent: agent.clone(),
            data_dir: data_dir.clone(),
        },
        tasks,
    )?;

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
        gossip,
        forward: None,
        views: None,
        ui: config.ui,
    };
    rpc_handler.set_api(http::local_api(api.clone()));
    let http = serve_http(http_listener, https_listener.zip(tls), api, tasks);
    Ok((agent, dns, leave, http))
}

/// The config files' service and check definitions, decoded as the agent API decodes its
/// bodies. Errors name the file and the definition (`web.json: service #2 (web): …`); a
/// standalone check must name a service of the files (as Consul refuses to start otherwise).
pub fn definitions(config: &Config) -> Result<Definitions, String> {
    let fail =
        |kind: &str, i: usize, def: &crate::config::Definition, e: &dyn std::fmt::Display| {
            // The endpoint's wording ("Request decode failed: json: …") says less in a file.
            let e = e.to_string();
            let e = e
                .trim_start_matches("Request decode failed: ")
                .trim_start_matches("json: ");
            format!("{}{kind} #{}{}: {e}", file_of(def), i + 1, name_of(def))
        };
    let mut defs = Definitions::default();
    for (i, def) in config.services.iter().enumerate() {
        let spec = http::service_definition(&def.value).map_err(|e| fail("service", i, def, &e))?;
        defs.services.push(spec);
    }
    for (i, def) in config.checks.iter().enumerate() {
        let spec = http::check_definition(&def.value).map_err(|e| fail("check", i, def, &e))?;
        if !spec.service_id.is_empty()
            && !defs.services.iter().any(|(s, _)| s.id == spec.service_id)
        {
            let e = format!(
                "ServiceID {:?} is not a service of the config files",
                spec.service_id
            );
            return Err(fail("check", i, def, &e));
        }
        defs.checks.push(spec);
    }
    Ok(defs)
}

/// A definition's file, for errors: `web.json: `, or nothing.
fn file_of(def: &crate::config::Definition) -> String {
    def.file
        .as_ref()
        .map_or_else(String::new, |f| format!("{}: ", f.display()))
}

/// A definition's name, for errors: ` (web)`, or nothing.
fn name_of(def: &crate::config::Definition) -> String {
    def.value
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("name")))
        .and_then(|(_, v)| v.as_str())
        .map_or_else(String::new, |n| format!(" ({n})"))
}

/// What a reload changes besides DNS and TLS: the agent's definitions from the config files.
struct Resync {
    agent: Agent,
    data_dir: PathBuf,
}

/// DNS on its listeners, and the reloader of its settings, zone files, certificates and the
/// config files' definitions (SIGHUP and `PUT /v1/agent/reload`): the same on servers and
/// client agents.
fn serve_dns(
    config: &Config,
    handler: Arc<DnsHandler>,
    listeners: dns::Listeners,
    reload: Option<Reload>,
    tls: Option<Arc<Tls>>,
    resync: Resync,
    tasks: &Tasks,
) -> anyhow::Result<(DnsServer, Arc<DnsMetrics>, Option<Reloader>)> {
    let metrics = Arc::new(DnsMetrics::default());
    let dns = dns::serve(
        handler.clone(),
        listeners,
        metrics.clone(),
        config.dns.max_queue_delay,
        tasks,
    )
    .context("starting dns")?;
    let runtime = tokio::runtime::Handle::current();
    let reloader: Option<Reloader> = reload.map(|reload| {
        Arc::new(move || {
            let config = reload().map_err(|e| e.to_string())?;
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let defs = definitions(&config)?;
            // Everything is read and checked before anything changes: a bad certificate or
            // zone file fails the reload and leaves the agent as it was.
            let staged = match &tls {
                Some(tls) => Some(
                    tls.stage(&config.tls)
                        .map_err(|e| format!("reloading TLS certificates: {e}"))?,
                ),
                None if config.tls.enabled() => {
                    return Err("TLS was off at start-up; turning it on needs a restart".into());
                }
                None => None,
            };
            handler
                .reload(zone_settings(&config))
                .map_err(|e| e.to_string())?;
            if let (Some(tls), Some(staged)) = (&tls, staged) {
                tls.commit(staged);
                tracing::info!("reloaded TLS certificates");
            }
            tracing::info!("reloaded DNS configuration and zone files");
            // The definitions were checked above: only a write can fail here (no leader).
            // The reloader runs on the blocking pool, where waiting on the runtime is allowed.
            runtime
                .block_on(resync.agent.sync_definitions(&defs, &resync.data_dir))
                .map_err(|e| {
                    format!(
                        "DNS and TLS settings were reloaded, but registering the config files' \
                         services and checks failed (reload again to retry): {e}"
                    )
                })?;
            Ok(())
        }) as Reloader
    });
    if let Some(reloader) = reloader.clone() {
        tasks.spawn(reload_on_sighup(reloader, tasks.stop().clone()));
    }
    Ok((dns, metrics, reloader))
}

/// The HTTP API on its listener until the agent stops serving; an essential task.
/// The HTTP and HTTPS APIs (either may be off), as one task drained together.
fn serve_http(
    plain: Option<TcpListener>,
    secure: Option<(TcpListener, Arc<Tls>)>,
    api: Api,
    tasks: &Tasks,
) -> JoinHandle<()> {
    let serving = tasks.serving().clone();
    tasks.spawn_essential("http-server", async move {
        let plain = async {
            if let Some(listener) = plain {
                let stop = serving.clone().cancelled_owned();
                if let Err(e) = http::serve(listener, api.clone(), stop).await {
                    tracing::error!(error = %e, "http server failed");
                }
            }
        };
        let secure = async {
            if let Some((listener, tls)) = secure {
                let stop = serving.clone().cancelled_owned();
                http::serve_tls(listener, api.clone(), tls, stop).await;
            }
        };
        tokio::join!(plain, secure);
        // With both off the API is simply absent; the task lives until shutdown.
        serving.cancelled().await;
    })
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
    if let (Some(gossip), Some(settings)) = (&running.gossip, &config.gossip) {
        tasks.spawn(pool::retry_join(
            gossip.clone(),
            config.join.clone(),
            settings.retry_interval,
            stop.clone(),
        ));
    }
    let ready = async {
        match (config.mode, &running.gossip) {
            (Mode::Server, Some(gossip)) => {
                let (gossip, dc) = (gossip.clone(), config.datacenter.clone());
                let servers = move || {
                    pool::servers(gossip.as_ref(), &dc)
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                };
                formation::form(node, &servers, config.bootstrap_expect, stop).await?
            }
            _ => node.bootstrap_single().await?,
        }
        while !node.wait_for_leader(Duration::from_secs(5)).await {
            tracing::info!("waiting for a cluster leader");
        }
        register(
            &running.agent,
            running.rpc_addr.port(),
            &definitions(config).map_err(|e| anyhow::anyhow!(e))?,
            &running.data_dir,
        )
        .await;
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
        _ = &mut shutdown => {
            if config.leave_on_terminate && let Some(gossip) = &running.gossip {
                tracing::info!("leaving the gossip pool before shutting down (leave_on_terminate)");
                gossip.leave().await;
            }
        }
        _ = running.leave.cancelled() => tracing::info!("left the cluster"),
        _ = stop.cancelled() => {}
    }
    Ok(())
}

/// Registers this server in the catalog, then the config files' definitions, each retried
/// until done: both are idempotent (and the definitions were checked at start-up), and a
/// leader lost while a restarted server catches up (the write forwarded to it broke, or no
/// leader came within the hold) must not stop this server. Ends with shutdown.
async fn register(agent: &Agent, server_port: u16, defs: &Definitions, data_dir: &Path) {
    retry("registering this server in the catalog", || {
        agent.start(server_port)
    })
    .await;
    retry("registering the config files' services and checks", || {
        agent.sync_definitions(defs, data_dir)
    })
    .await;
}

async fn retry<F, Fut>(what: &str, attempt: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), crate::agent::AgentError>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    error = %crate::report::chain(&e),
                    retry_in = ?pause,
                    "{what} failed; retrying"
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
    stop_serving(running.dns, running.http, tasks).await;
    running.node.shutdown().await;
    tracing::info!("stopped");
}

/// Stops serving clients (DNS closes, HTTP stops accepting, blocking queries answer at once),
/// then ends every task, each step with a deadline: the same on servers and client agents.
async fn stop_serving(dns: DnsServer, http: JoinHandle<()>, tasks: &Tasks) {
    tracing::info!("shutting down");
    tasks.serving().cancel();
    dns.shutdown().await;
    if tokio::time::timeout(DRAIN_DEADLINE, http).await.is_err() {
        tracing::warn!("http requests still running after {DRAIN_DEADLINE:?}; stopping anyway");
    }
    if !tasks.drain(DRAIN_DEADLINE).await {
        tracing::warn!(
            running = tasks.running(),
            "tasks still running after {DRAIN_DEADLINE:?}; stopping anyway"
        );
    }
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
            // Reading the configuration, certificates and zone files is blocking work.
            let reload = reload.clone();
            match tokio::task::spawn_blocking(move || reload()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reload failed; keeping the previous configuration")
                }
                Err(e) => tracing::error!(error = %e, "reload failed"),
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
