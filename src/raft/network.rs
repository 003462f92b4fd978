//! The Raft network: Raft's RPCs to each peer's `--rpc-addr` over the binary transport, one
//! persistent connection per peer.
//!
//! The connection's handshake carries this server's cluster ID, so a server of another cluster
//! is refused instead of being merged. Nothing delivered (refused, unreachable, another
//! cluster) is `Unreachable` (openraft backs off); a call whose answer was lost is a `Network`
//! error; every call is bounded by openraft's deadline.

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

use super::rpc::{self, Method, SnapshotFailure};
use crate::store::types::{NodeId, ServerNode, TypeConfig};
use crate::transport::{CallError, Pool};

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
    pub pool: Pool,
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

/// A call's answer, or why there is none, as openraft's error for an RPC without a remote error.
type Answer<T, E> = Result<T, RPCError<NodeId, ServerNode, E>>;

impl Peer {
    /// One call; the answer decoded as `Resp` (the peer's own result).
    async fn call<Req, Resp, E>(
        &self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Answer<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error,
    {
        match rpc::call(
            &self.net.pool,
            &self.addr,
            method,
            request,
            option.hard_ttl(),
        )
        .await
        {
            Ok(reply) => {
                self.net.contacts.record(self.target);
                self.net.outages.answered(self);
                Ok(reply)
            }
            Err(e) => {
                self.net.outages.failed(self, &e);
                Err(match e {
                    CallError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                })
            }
        }
    }

    /// A Raft call whose only remote error is a fatal one (the peer's Raft stopped): treated as
    /// unreachable, so openraft backs off.
    async fn raft_call<Req, Resp>(
        &self,
        method: Method,
        request: &Req,
        option: &RPCOption,
    ) -> Answer<Resp, RaftError<NodeId>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        match self
            .call::<_, Result<Resp, String>, _>(method, request, option)
            .await?
        {
            Ok(r) => Ok(r),
            Err(fatal) => Err(RPCError::Unreachable(Unreachable::new(&Message(format!(
                "{}: {fatal}",
                self.addr
            ))))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Answer<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.raft_call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Answer<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        let reply: Result<InstallSnapshotResponse<NodeId>, SnapshotFailure> =
            self.call(Method::InstallSnapshot, &rpc, &option).await?;
        reply.map_err(|failure| match failure {
            SnapshotFailure::Mismatch(m) => RPCError::RemoteError(RemoteError::new(
                self.target,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m)),
            )),
            SnapshotFailure::Fatal(fatal) => RPCError::Unreachable(Unreachable::new(&Message(
                format!("{}: {fatal}", self.addr),
            ))),
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Answer<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.raft_call(Method::Vote, &rpc, &option).await
    }
}
