//! Raft glue: starting the openraft node over the redb store, the `Writer` that proposes catalog
//! commands, and the status the HTTP API reports.
//!
//! Server-to-server RPC arrives with cluster support; a single dev server never sends any.

mod network;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use redb::Database;

use crate::catalog::{Command, Outcome, Request, View, WriteError, Writer};
use crate::store::{LogStore, StateMachineStore, StoreError};
use types::{NodeId, Raft};

/// Raft timing. Consul's default `raft_multiplier` of 5 gives ~5 s elections; these aim under 1 s.
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Snapshot after this many applied entries (Consul's `raft_snapshot_threshold`).
    pub snapshot_threshold: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            snapshot_threshold: 16384,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// A running Raft node with what the rest of the server needs from it.
#[derive(Clone)]
pub struct Cluster {
    raft: Raft,
}

impl Cluster {
    /// Opens the store, loads and publishes the persisted catalog, and starts Raft.
    pub async fn start(
        id: NodeId,
        db: Arc<Database>,
        view: View,
        timing: &Timing,
    ) -> Result<Cluster, StartError> {
        let config = openraft::Config {
            cluster_name: "beacon".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_min.as_millis() as u64,
            election_timeout_max: timing.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_threshold),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::load(db, view)?;
        let raft = Raft::new(id, config, network::Network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        Ok(Cluster { raft })
    }

    /// Makes this server a one-member cluster, unless it already belongs to one (a restart).
    pub async fn bootstrap_single(&self, id: NodeId, rpc_addr: String) -> Result<(), StartError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let members = BTreeMap::from([(id, BasicNode { addr: rpc_addr })]);
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// The leader's server (RPC) address, if there is a leader.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// The voters' server (RPC) addresses.
    pub fn peers(&self) -> Vec<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
            .collect()
    }

    /// Waits until some server is leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await
            .is_ok()
    }

    pub fn writer(&self) -> Arc<dyn Writer> {
        Arc::new(RaftWriter {
            raft: self.raft.clone(),
        })
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// Consul holds a write this long waiting for a leader (`rpc_hold_timeout`).
const LEADER_HOLD: Duration = Duration::from_secs(7);

struct RaftWriter {
    raft: Raft,
}

#[async_trait::async_trait]
impl Writer for RaftWriter {
    async fn write(&self, command: Command) -> Result<Outcome, WriteError> {
        let deadline = tokio::time::Instant::now() + LEADER_HOLD;
        let request = Request {
            at_ms: now_ms(),
            command,
        };
        loop {
            match self.raft.client_write(request.clone()).await {
                Ok(response) => return Ok(response.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    if let Some(node) = f.leader_node {
                        return Err(WriteError::NotLeader(node.addr));
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(WriteError::NoLeader);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(WriteError::Failed(e.to_string())),
            }
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch, stamped on each proposed command.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
