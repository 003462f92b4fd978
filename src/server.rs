//! The composition root: opens the store, starts Raft, binds and serves DNS and HTTP, starts the
//! agent, and shuts everything down in order when told to.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, NodeIdentity};
use crate::catalog::View;
use crate::config::Config;
use crate::dns::{self, DnsHandler, ZoneSettings};
use crate::http::{self, Api};
use crate::raft::Cluster;
use crate::sessions::SessionTimers;
use crate::store;

/// The single server's Raft node ID (cluster support assigns real ones).
const SINGLE_NODE_ID: u64 = 1;

/// Runs a dev server until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
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
    tracing::info!(data_dir = %data_dir.display(), "opened data dir");

    let view = View::default();
    let cluster = Cluster::start(SINGLE_NODE_ID, db, view.clone(), &config.raft).await?;

    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding http on {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    tracing::info!("listening http on {http_addr}");
    let (udp, tcp) = dns::bind(config.dns_addr)
        .await
        .with_context(|| format!("binding dns on {}", config.dns_addr))?;
    tracing::info!("listening dns-udp on {}", udp.local_addr()?);
    tracing::info!("listening dns-tcp on {}", tcp.local_addr()?);
    let rpc_addr = if config.rpc_listen {
        // Reserved for server-to-server RPC; a single server receives none yet.
        let rpc = TcpListener::bind(config.rpc_addr)
            .await
            .with_context(|| format!("binding rpc on {}", config.rpc_addr))?;
        let addr = rpc.local_addr()?;
        tracing::info!("listening rpc on {addr}");
        tokio::spawn(async move { while rpc.accept().await.is_ok() {} });
        addr
    } else {
        config.rpc_addr
    };

    cluster
        .bootstrap_single(SINGLE_NODE_ID, rpc_addr.to_string())
        .await?;

    let token = CancellationToken::new();
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
    let writer_for_sessions = writer.clone();

    let handler = DnsHandler::new(
        view.clone(),
        ZoneSettings {
            domain: config.domain.clone(),
            datacenter: config.datacenter.clone(),
            dns: config.dns.clone(),
        },
    )
    .map_err(anyhow::Error::msg)?;
    let mut dns_server = dns::serve(handler, udp, tcp);

    let api = Api {
        view: view.clone(),
        writer,
        agent: agent.clone(),
        status: Arc::new(cluster.clone()),
        sessions: SessionTimers::start(view.clone(), writer_for_sessions, token.child_token()),
        datacenter: config.datacenter.clone(),
        server_addr: rpc_addr,
    };
    let http_token = token.clone();
    let http_task = tokio::spawn(async move {
        let stop = async move { http_token.cancelled().await };
        if let Err(e) = http::serve(http_listener, api, stop).await {
            tracing::error!(error = %e, "http server failed");
        }
    });

    if !cluster.wait_for_leader(Duration::from_secs(30)).await {
        anyhow::bail!("no leader elected within 30s");
    }
    agent
        .start(rpc_addr.port())
        .await
        .context("registering this server in the catalog")?;
    tracing::info!(leader = ?cluster.leader_addr(), "beacon agent ready");

    shutdown.await;
    tracing::info!("shutting down");
    token.cancel();
    if let Err(e) = dns_server.shutdown_gracefully().await {
        tracing::warn!(error = %e, "dns shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http_task).await;
    cluster.shutdown().await;
    tracing::info!("stopped");
    Ok(())
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
    let b: [u8; 16] = rand::random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-4{:01x}{:02x}-{:01x}{:01x}{:02x}-{}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6] & 0x0f,
        b[7],
        8 | (b[8] & 0x3),
        b[8] >> 4,
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}
