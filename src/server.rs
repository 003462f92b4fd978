//! The composition root: opens the store, starts Raft, binds and serves RPC, DNS and HTTP,
//! forms or joins the cluster, starts the agent and the leader's duties, and shuts everything
//! down in order when told to (or when this server leaves the cluster).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, NodeIdentity};
use crate::catalog::{Command, View, Writer};
use crate::config::{Autopilot, Config, Mode};
use crate::dns::{self, DnsHandler, DnsMetrics, ZoneSettings};
use crate::http::{self, Api};
use crate::raft::types::ServerNode;
use crate::raft::{Cluster, formation, rpc};
use crate::sessions::SessionTimers;
use crate::store;

/// Re-reads the configuration (for SIGHUP): flags plus the config file.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// Runs a server until `shutdown` resolves or it leaves its cluster. With `reload`, SIGHUP
/// re-reads the config and applies its DNS part (settings and zone files).
pub async fn run(
    config: Config,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Dev mode without --data-dir keeps its state in a directory removed at exit.
    let (data_dir, _temp): (PathBuf, Option<tempfile::TempDir>) = match &config.data_dir {
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

    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding http on {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    tracing::info!("listening http on {http_addr}");
    let dns_listeners = dns::bind(config.dns_addr, config.dns.udp_loops())
        .await
        .with_context(|| format!("binding dns on {}", config.dns_addr))?;
    tracing::info!(
        loops = dns_listeners.udp.len(),
        "listening dns-udp on {}",
        dns_listeners.udp[0].local_addr()?
    );
    tracing::info!("listening dns-tcp on {}", dns_listeners.tcp.local_addr()?);
    let rpc_listener = if config.mode == Mode::Server || config.rpc_listen {
        let rpc = TcpListener::bind(config.rpc_addr)
            .await
            .with_context(|| format!("binding rpc on {}", config.rpc_addr))?;
        tracing::info!("listening rpc on {}", rpc.local_addr()?);
        Some(rpc)
    } else {
        None
    };
    let rpc_addr = match &rpc_listener {
        Some(l) => l.local_addr()?,
        None => config.rpc_addr,
    };

    let view = View::default();
    let me = ServerNode {
        rpc_addr: rpc_addr.to_string(),
        name: config.node_name.clone(),
    };
    let cluster = Cluster::start(node_id, me, db, view.clone(), &config.raft).await?;
    let token = CancellationToken::new();
    if let Some(listener) = rpc_listener {
        let router = rpc::router(cluster.clone());
        let stop = token.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "rpc server failed");
            }
        });
    }

    let writer = cluster.writer();
    let node = NodeIdentity {
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
    let agent = Agent::new(node, writer.clone(), view.clone(), token.child_token());
    let leader_check = cluster.clone();
    let sessions = SessionTimers::start(
        view.clone(),
        writer.clone(),
        Box::new(move || leader_check.is_leader()),
        token.child_token(),
    );

    let handler = DnsHandler::new(
        view.clone(),
        ZoneSettings {
            domain: config.domain.clone(),
            datacenter: config.datacenter.clone(),
            dns: config.dns.clone(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let handler = Arc::new(handler);
    let dns_metrics = Arc::new(DnsMetrics::default());
    let dns_server = dns::serve(
        handler.clone(),
        dns_listeners,
        dns_metrics.clone(),
        config.dns.max_queue_delay,
    )
    .context("starting dns")?;
    if let Some(reload) = reload {
        tokio::spawn(reload_on_sighup(handler, reload, token.child_token()));
    }

    let leave = CancellationToken::new();
    let api = Api {
        view: view.clone(),
        writer: writer.clone(),
        agent: agent.clone(),
        cluster: cluster.clone(),
        sessions,
        datacenter: config.datacenter.clone(),
        leave: leave.clone(),
        dns_metrics,
    };
    let http_token = token.clone();
    let http_task = tokio::spawn(async move {
        let stop = async move { http_token.cancelled().await };
        if let Err(e) = http::serve(http_listener, api, stop).await {
            tracing::error!(error = %e, "http server failed");
        }
    });

    let ready = async {
        match config.mode {
            Mode::Dev => cluster.bootstrap_single().await?,
            Mode::Server => {
                formation::form(&cluster, &config.join, config.bootstrap_expect, &token).await?
            }
        }
        while !cluster.wait_for_leader(Duration::from_secs(5)).await {
            tracing::info!("waiting for a cluster leader");
        }
        tokio::spawn(leader_duties(
            cluster.clone(),
            writer.clone(),
            config.autopilot.clone(),
            token.child_token(),
        ));
        agent
            .start(rpc_addr.port())
            .await
            .context("registering this server in the catalog")?;
        tracing::info!(leader = ?cluster.leader_addr(), "beacon agent ready");
        anyhow::Ok(())
    };
    tokio::pin!(shutdown);
    let stopped_early = tokio::select! {
        result = ready => { result?; false }
        _ = &mut shutdown => true,
    };
    if !stopped_early {
        tokio::select! {
            _ = &mut shutdown => {}
            _ = leave.cancelled() => tracing::info!("left the cluster"),
        }
    }
    tracing::info!("shutting down");
    token.cancel();
    dns_server.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    cluster.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn reload_on_sighup(handler: Arc<DnsHandler>, reload: Reload, stop: CancellationToken) {
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
            let result = reload().map_err(|e| e.to_string()).and_then(|config| {
                handler.reload(ZoneSettings {
                    domain: config.domain.clone(),
                    datacenter: config.datacenter.clone(),
                    dns: config.dns,
                })
            });
            match result {
                Ok(()) => tracing::info!("reloaded DNS configuration and zone files"),
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; keeping the previous DNS configuration")
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (handler, reload);
        stop.cancelled().await;
    }
}

/// What only the leader does: name the cluster once, and remove servers that stay dead.
async fn leader_duties(
    cluster: Cluster,
    writer: Arc<dyn Writer>,
    autopilot: Autopilot,
    stop: CancellationToken,
) {
    let mut leader_since: Option<Instant> = None;
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        first = false;
        if !cluster.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        if cluster.view().load().cluster_id().is_empty() {
            let id = uuid::Uuid::new_v4().to_string();
            if let Err(e) = writer.write(Command::InitCluster { id }).await {
                tracing::warn!(error = %e, "could not name the cluster");
            }
        }
        if autopilot.cleanup_dead_servers {
            remove_dead_server(&cluster, since, autopilot.dead_server_threshold).await;
        }
    }
}

/// Removes one voter the leader has not reached for `threshold`, if the voters that remain
/// healthy still form a majority of the current configuration.
async fn remove_dead_server(cluster: &Cluster, leader_since: Instant, threshold: Duration) {
    let members = cluster.members();
    let voters: Vec<_> = members.iter().filter(|m| m.voter).collect();
    let dead: Vec<_> = voters
        .iter()
        .filter(|m| m.id != cluster.id())
        .filter(|m| {
            let last = cluster
                .contacts()
                .last(m.id)
                .unwrap_or(leader_since)
                .max(leader_since);
            last.elapsed() > threshold
        })
        .collect();
    let Some(victim) = dead.first() else { return };
    let healthy = voters.len() - dead.len();
    if healthy * 2 <= voters.len() {
        tracing::warn!(
            dead = dead.len(),
            voters = voters.len(),
            "dead servers, but removing them would lose the majority"
        );
        return;
    }
    tracing::info!(server = %victim.node.name, addr = %victim.node.rpc_addr, "autopilot: removing dead server");
    if let Err(e) = cluster.remove_server(victim.id).await {
        tracing::warn!(error = %e, "autopilot could not remove a dead server");
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
