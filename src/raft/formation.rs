//! Cluster formation and membership by request: `--bootstrap-expect` and `--join` at start,
//! `join` and `leave` asked of a running server.
//!
//! The servers to ask come from the gossip pool (its alive servers of this datacenter), read
//! afresh each round. A new server asks each of them who it is. If one already belongs to a cluster, this
//! server asks that cluster's leader to add it (as a learner, then a voter once caught up).
//! Otherwise, once `bootstrap_expect` uninitialized servers know each other, the one with the
//! lowest RPC address initializes the cluster with all of them — exactly one server does, with
//! one membership, so the cluster forms exactly once. A restarted server is already in its
//! cluster and only checks that its peers belong to the same one.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::rpc::MembershipChange;
use super::{RaftNode, ServerInfo};
use crate::cluster::ClusterError;

const RETRY: Duration = Duration::from_millis(300);

/// How long a restarted server waits for the gossip pool to name another server before it
/// starts without having checked that they share its cluster.
const PEERS_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum FormationError {
    #[error(
        "this data dir belongs to cluster {ours}, but the server at {addr} belongs to cluster {theirs}; refusing to mix them (use a fresh --data-dir to join that cluster)"
    )]
    OtherCluster {
        ours: String,
        theirs: String,
        addr: String,
    },
    #[error("shut down before the cluster formed")]
    Cancelled,
}

/// Returns once this server belongs to a cluster. `servers` lists the other servers' RPC
/// addresses as currently known (from the gossip pool).
pub async fn form(
    cluster: &RaftNode,
    servers: &(dyn Fn() -> Vec<String> + Send + Sync),
    bootstrap_expect: usize,
    shutdown: &CancellationToken,
) -> Result<(), FormationError> {
    let me = cluster.me().clone();
    let mut logged_wait = false;
    // When a refused join was last logged: it is retried every round, logged every 30 s.
    let mut join_warned: Option<tokio::time::Instant> = None;
    // When each join address last had its failure logged: once at first, then every 30 s.
    let mut warned: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let started = tokio::time::Instant::now();
    loop {
        let ours = cluster.view().load().cluster_id().to_string();
        let mut peers: Vec<(String, ServerInfo)> = Vec::new();
        let join = servers();
        for addr in join.iter().filter(|a| **a != me.rpc_addr) {
            let probed = cluster.client().info(addr).await;
            if let Err(e) = &probed {
                let due = warned
                    .get(addr)
                    .is_none_or(|at| at.elapsed() >= Duration::from_secs(30));
                if due {
                    warned.insert(addr.clone(), tokio::time::Instant::now());
                    tracing::warn!(server = %addr, error = %e, "cannot reach a server to join; retrying");
                }
            }
            if let Ok(info) = probed {
                if !ours.is_empty() && !info.cluster_id.is_empty() && info.cluster_id != ours {
                    return Err(FormationError::OtherCluster {
                        ours,
                        theirs: info.cluster_id,
                        addr: addr.clone(),
                    });
                }
                peers.push((addr.clone(), info));
            }
        }
        // A restarted server checks its peers' cluster before serving: give the gossip pool
        // a moment to list them.
        if cluster.is_initialized().await && (!peers.is_empty() || started.elapsed() >= PEERS_GRACE)
        {
            return Ok(());
        }

        if let Some((addr, info)) = peers
            .iter()
            .find(|(_, i)| i.initialized && i.id != cluster.id())
        {
            let target = info.leader.clone().unwrap_or_else(|| addr.clone());
            let change = MembershipChange::Add {
                id: cluster.id(),
                node: me.clone(),
            };
            match cluster.client().membership(&target, &change).await {
                Ok(()) => {
                    tracing::info!(cluster = %target, "joined the cluster");
                    wait_initialized(cluster, shutdown).await?;
                    return Ok(());
                }
                Err(e) => {
                    if join_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                        tracing::warn!(target = %target, error = %e, "join failed, retrying (logged every 30 s)");
                        join_warned = Some(tokio::time::Instant::now());
                    }
                }
            }
        } else if bootstrap_expect > 0 && !cluster.is_initialized().await {
            let mut known = BTreeMap::from([(cluster.id(), me.clone())]);
            for (_, info) in &peers {
                known.insert(info.id, info.node.clone());
            }
            if known.len() >= bootstrap_expect {
                let lowest = known.values().map(|n| n.rpc_addr.as_str()).min();
                if lowest == Some(me.rpc_addr.as_str()) {
                    tracing::info!(servers = known.len(), "bootstrapping the cluster");
                    match cluster.initialize(known).await {
                        // This server formed the cluster: there is no other one to check.
                        Ok(()) => return Ok(()),
                        Err(e) => tracing::warn!(error = %e, "bootstrap failed, retrying"),
                    }
                } else if !logged_wait {
                    tracing::info!(
                        "bootstrap-expect reached; waiting for the lowest-addressed server to bootstrap"
                    );
                    logged_wait = true;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(FormationError::Cancelled),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn wait_initialized(
    cluster: &RaftNode,
    shutdown: &CancellationToken,
) -> Result<(), FormationError> {
    while !cluster.is_initialized().await {
        tokio::select! {
            _ = shutdown.cancelled() => return Err(FormationError::Cancelled),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    Ok(())
}

/// Joins the cluster of the server at `address` (its RPC address); or, when that server is new
/// (uninitialized), adds it to this server's cluster through the leader. Joining the cluster
/// this server already belongs to succeeds and changes nothing.
pub async fn join(node: &RaftNode, address: &str) -> Result<(), ClusterError> {
    let info = node
        .client()
        .info(address)
        .await
        .map_err(|e| ClusterError::Unreachable {
            addr: address.to_string(),
            reason: e.to_string(),
        })?;
    let ours = node.view().load().cluster_id().to_string();
    if info.initialized && !ours.is_empty() && info.cluster_id == ours {
        return Ok(());
    }
    if info.initialized && node.members().len() > 1 {
        return Err(ClusterError::OtherCluster {
            addr: address.to_string(),
            theirs: info.cluster_id,
        });
    }
    if info.initialized {
        let change = MembershipChange::Add {
            id: node.id(),
            node: node.me().clone(),
        };
        let target = info.leader.unwrap_or_else(|| address.to_string());
        node.client().membership(&target, &change).await
    } else {
        node.membership(MembershipChange::Add {
            id: info.id,
            node: info.node,
        })
        .await
    }
}

/// Removes this server from its cluster's configuration (through the leader), unless it is the
/// only member.
pub async fn leave(node: &RaftNode) -> Result<(), ClusterError> {
    if node.members().len() > 1 {
        node.membership(MembershipChange::Remove { id: node.id() })
            .await?;
    }
    Ok(())
}
