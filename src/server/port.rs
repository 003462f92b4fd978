//! The cluster port on a server: `cluster::Cluster` over this server's Raft node and the
//! leader's session timers. The logic lives in `raft` (formation, membership) and `leader`
//! (timers); this adapter only routes each question to it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::catalog::Rows;
use crate::cluster::{
    Cluster, ClusterError, HttpCall, HttpReply, Member, ServerHealth, ServerId, WriteError,
};
use crate::leader::SessionTimers;
use crate::model::Index;
use crate::raft::rpc::renew_as_leader;
use crate::raft::{RaftNode, formation, within_hold};

/// A server's answer to the cluster port.
#[derive(Clone)]
pub struct ServerCluster {
    pub node: RaftNode,
    pub sessions: SessionTimers,
}

#[async_trait::async_trait]
impl Cluster for ServerCluster {
    fn id(&self) -> ServerId {
        self.node.id()
    }

    fn leader(&self) -> Option<String> {
        self.node.leader_addr()
    }

    fn server_health(&self) -> Option<Vec<ServerHealth>> {
        self.node.server_health()
    }

    async fn ask_leader(&self, call: HttpCall) -> Result<HttpReply, ClusterError> {
        let leader = self
            .node
            .leader_addr()
            .ok_or_else(|| ClusterError::Failed("No cluster leader".into()))?;
        self.node
            .client()
            .http(&leader, &call, Duration::from_secs(10))
            .await
            .map_err(|e| ClusterError::Failed(format!("asking the leader: {e}")))
    }

    fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    fn peers(&self) -> Vec<String> {
        self.node.peers()
    }

    fn members(&self) -> Vec<Member> {
        self.node.members()
    }

    fn membership_index(&self) -> Index {
        self.node.membership_index()
    }

    fn stats(&self) -> BTreeMap<&'static str, String> {
        self.node.stats()
    }

    fn last_contact_ms(&self) -> Option<u64> {
        self.node.last_contact_ms()
    }

    async fn read_barrier(&self, linearizable: bool) -> Result<(), WriteError> {
        self.node.read_barrier(linearizable).await
    }

    async fn join(&self, address: &str) -> Result<(), ClusterError> {
        formation::join(&self.node, address).await
    }

    async fn leave(&self) -> Result<(), ClusterError> {
        formation::leave(&self.node).await
    }

    async fn remove_server(&self, id: ServerId) -> Result<(), ClusterError> {
        self.node
            .membership(crate::raft::rpc::MembershipChange::Remove { id })
            .await
    }

    async fn backup(&self, stale: bool) -> Result<Rows, ClusterError> {
        match self.node.leader_addr() {
            Some(leader) if !self.node.is_leader() && !stale => self
                .node
                .client()
                .snapshot(&leader)
                .await
                .map_err(|e| ClusterError::Failed(e.to_string())),
            _ => Ok(self.node.view().load().to_rows()),
        }
    }

    /// On the leader, its own timers; elsewhere, forwarded to the leader. Retried while
    /// leadership moves, up to Consul's hold time.
    async fn renew_session(&self, id: &str) -> Result<bool, ClusterError> {
        let attempt = || async {
            if self.node.is_leader() {
                renew_as_leader(&self.node, &self.sessions, id).await
            } else if let Some(leader) = self.node.leader_addr() {
                self.node.client().renew_session(&leader, id).await
            } else {
                Err(ClusterError::NoLeader)
            }
        };
        within_hold(
            Duration::from_millis(50),
            ClusterError::is_retryable,
            ClusterError::NoLeader,
            attempt,
        )
        .await
    }
}
