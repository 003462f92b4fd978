//! The Raft network: server-to-server RPC as JSON over HTTP to each peer's `--rpc-addr`.
//!
//! Every request carries the sender's cluster ID so a server of another cluster is refused
//! instead of being merged. A refused connection is reported as `Unreachable` (openraft backs
//! off), and every call is bounded by openraft's deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::store::types::{NodeId, ServerNode, TypeConfig};
use crate::view::View;

/// Header naming the sender's cluster.
pub const CLUSTER_HEADER: &str = "X-Beacon-Cluster";

/// When each peer last answered an RPC (what autopilot and `members` judge liveness by).
#[derive(Clone, Default)]
pub struct Contacts(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl Contacts {
    pub fn record(&self, id: NodeId) {
        self.0
            .lock()
            .expect("contacts lock")
            .insert(id, Instant::now());
    }

    pub fn last(&self, id: NodeId) -> Option<Instant> {
        self.0.lock().expect("contacts lock").get(&id).copied()
    }
}

/// How often an unreachable peer is reported in the log while it stays unreachable.
const UNREACHABLE_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Peers that stopped answering: when it started and when it was last reported, so the log
/// says so once per `UNREACHABLE_REPORT_EVERY` (openraft's own per-heartbeat warnings are
/// filtered out of the default log) and once more when the peer answers again.
#[derive(Clone, Default)]
pub struct Outages(Arc<Mutex<HashMap<NodeId, (Instant, Instant)>>>);

impl Outages {
    fn failed(&self, peer: &Peer, error: &(dyn std::error::Error + 'static)) {
        let now = Instant::now();
        let mut outages = self.0.lock().expect("outages lock");
        let (since, reported) = outages.entry(peer.target).or_insert((now, now));
        if *reported == now || now.duration_since(*reported) >= UNREACHABLE_REPORT_EVERY {
            *reported = now;
            tracing::warn!(
                server = %peer.name,
                addr = %peer.addr,
                down_for = ?now.duration_since(*since),
                error = %crate::report::chain(error),
                "server unreachable"
            );
        }
    }

    fn answered(&self, peer: &Peer) {
        let mut outages = self.0.lock().expect("outages lock");
        if let Some((since, _)) = outages.remove(&peer.target) {
            tracing::info!(
                server = %peer.name,
                addr = %peer.addr,
                down_for = ?since.elapsed(),
                "server reachable again"
            );
        }
    }
}

#[derive(Clone)]
pub struct Network {
    pub http: reqwest::Client,
    pub view: View,
    pub contacts: Contacts,
    pub outages: Outages,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

pub struct Peer {
    target: NodeId,
    name: String,
    addr: String,
    net: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &ServerNode) -> Peer {
        Peer {
            target,
            name: node.name.clone(),
            addr: node.rpc_addr.clone(),
            net: self.clone(),
        }
    }
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ServerNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("http://{}/raft/{path}", self.addr);
        let cluster = self.net.view.load().cluster_id().to_string();
        let sent = self
            .net
            .http
            .post(&url)
            .header(CLUSTER_HEADER, cluster)
            .timeout(option.hard_ttl())
            .json(request)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() || e.is_timeout() => {
                self.net.outages.failed(self, &e);
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(e) => {
                self.net.outages.failed(self, &e);
                return Err(RPCError::Network(NetworkError::new(&e)));
            }
        };
        if response.status() == reqwest::StatusCode::CONFLICT {
            let why = response.text().await.unwrap_or_default();
            self.net.outages.failed(self, &Message(why.clone()));
            return Err(RPCError::Unreachable(Unreachable::new(&Message(why))));
        }
        if !response.status().is_success() {
            let why = format!("{url}: HTTP {}", response.status());
            return Err(RPCError::Network(NetworkError::new(&Message(why))));
        }
        let result: Result<Resp, E> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.net.contacts.record(self.target);
        self.net.outages.answered(self);
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>>
    {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ServerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ServerNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
