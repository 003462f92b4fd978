//! Server RPC (`--rpc-addr`) over the binary transport (`crate::transport`): the messages, and
//! the handler that answers them: Raft's append/vote/snapshot, and what other servers ask of
//! this one: discovery, forwarded writes and read barriers, membership changes, session
//! renewals for the leader's timers, backups.
//!
//! Every message is MessagePack (fields by name) inside one transport call; a log entry's
//! payload travels as the bytes it was proposed as. Raft's own errors cross as text: the only
//! one append and vote can return is a fatal one (the peer's Raft stopped).

use std::sync::Arc;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::RaftNode;
use crate::catalog::{Outcome, Request};
use crate::cluster::{ClusterError, HttpCall, HttpReply, LocalApi, WriteError};
use crate::store::types::{NodeId, ServerNode, TypeConfig};
use crate::transport::{BoxFuture, CallError, Handler, Pool};
use crate::view::watch::Topic;

/// The leader's session timers, as the RPC listener reaches them (implemented by
/// `leader::SessionTimers`; defined here so `raft` does not depend on `leader`).
pub trait SessionRenewal: Send + Sync + 'static {
    /// Restarts a session's timer on this server, which must lead. Ok(false): no such session.
    fn renew(&self, id: &str) -> Result<bool, ClusterError>;
}

/// The server-RPC methods, as the transport numbers them. Raft's own are below 10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Method {
    /// `AppendEntriesRequest` → `Result<AppendEntriesResponse, String>`.
    Append = 1,
    /// `VoteRequest` → `Result<VoteResponse, String>`.
    Vote = 2,
    /// `InstallSnapshotRequest` (one chunk) → `Result<InstallSnapshotResponse, SnapshotFailure>`.
    InstallSnapshot = 3,
    /// `()` → `ServerInfo`. Answered to servers of any cluster (see `RpcClient::info`).
    Info = 10,
    /// `Request` → `WriteReply`.
    Write = 11,
    /// `bool` (linearizable) → `Result<u64, WriteError>`.
    ReadIndex = 12,
    /// `MembershipChange` → `Result<(), ClusterError>`.
    Membership = 13,
    /// `()` → the catalog's `Rows` (a backup taken through a follower).
    Backup = 14,
    /// session ID → `Result<bool, ClusterError>`.
    SessionRenew = 15,
    /// `HttpCall` → `Result<HttpReply, String>`: a client agent's HTTP request, answered by
    /// this server's API.
    Http = 20,
    /// `CatalogWait` → `Rows` without KV and sessions: this server's nodes, services and
    /// checks once their index passes `after` (or `wait` ends), for a client agent's DNS.
    CatalogRows = 21,
    /// Stream, `ServiceWatch` → pushes of `ServiceEvent`: one service name's snapshots from
    /// this server's applied state (`view::stream`), for a client agent's materialized view.
    ServiceStream = 22,
}

/// A client agent's subscription to one service name (`Method::ServiceStream`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceWatch {
    pub service: String,
    /// The index the subscriber already has (0: none); the first push is above it.
    pub after: u64,
    /// The cluster `after` came from (empty: none yet). A server of another cluster (the
    /// servers lost their data and formed a new one) sends the name at once whatever its
    /// index, since indexes of two clusters do not compare (Consul's clients reset an index
    /// that goes backwards).
    #[serde(default)]
    pub cluster_id: String,
}

/// One push of `Method::ServiceStream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServiceEvent {
    /// The name's instances; its `cluster_id` differing from the one the subscriber named
    /// means the subscriber's history is gone (see [`ServiceWatch::cluster_id`]).
    Snapshot(crate::catalog::ServiceSnapshot),
    /// Nothing changed for [`STREAM_HEARTBEAT`]: the server is still there, and whether it
    /// knows a leader (one that does not may be cut off from the cluster, and behind).
    Heartbeat { known_leader: bool },
}

/// How long a service stream stays silent before a heartbeat; a subscriber that hears nothing
/// for a few of these moves to another server.
pub const STREAM_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// A client agent's long poll for the catalog (`Method::CatalogRows`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogWait {
    /// Answer once the catalog's index is above this (0: at once).
    pub after: u64,
    /// Answer after this long (milliseconds) even if nothing changed.
    pub wait_ms: u64,
    /// The cluster of the caller's copy (empty: none yet); another cluster's copy is answered
    /// at once ([`ServiceWatch::cluster_id`]).
    #[serde(default)]
    pub cluster_id: String,
}

impl Method {
    fn from_u16(n: u16) -> Option<Method> {
        use Method::*;
        [
            Append,
            Vote,
            InstallSnapshot,
            Info,
            Write,
            ReadIndex,
            Membership,
            Backup,
            SessionRenew,
            Http,
            CatalogRows,
            ServiceStream,
        ]
        .into_iter()
        .find(|m| *m as u16 == n)
    }
}

/// Encodes a message body.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| format!("encoding a message: {e}"))
}

/// Decodes a message body; the error says what could not be read.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    crate::model::msgpack::from_slice(bytes).map_err(|e| {
        format!(
            "undecodable {} message: {e}",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("")
        )
    })
}

/// One call of `method` on the server at `addr`: `body` encoded, the reply decoded as `Resp`.
/// A call whose answer was lost drops the connection, so one that went silent (a peer behind a
/// dropped flow) is replaced by the next call instead of timing out again.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    pool: &Pool,
    addr: &str,
    method: Method,
    body: &Req,
    timeout: std::time::Duration,
) -> Result<Resp, CallError> {
    let body = encode(body).map_err(CallError::Remote)?;
    let reply = match pool.call(addr, method as u16, body, timeout).await {
        Ok(reply) => reply,
        Err(e) => {
            if matches!(e, CallError::Lost(_)) {
                pool.forget(addr);
            }
            return Err(e);
        }
    };
    decode(&reply).map_err(|e| CallError::Remote(format!("{addr}: {e}")))
}

/// The reply to a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub enum WriteReply {
    Applied { outcome: Outcome, index: u64 },
    NotLeader(Option<String>),
    Busy,
    Failed(String),
}

/// A membership change asked of the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    Add { id: NodeId, node: ServerNode },
    Remove { id: NodeId },
}

/// Why a snapshot chunk was not installed.
#[derive(Debug, Serialize, Deserialize)]
pub enum SnapshotFailure {
    /// The chunk is not the one expected (openraft restarts the transfer).
    Mismatch(SnapshotMismatch),
    /// The peer's Raft stopped.
    Fatal(String),
}

/// What the listener's handlers share.
#[derive(Clone)]
pub struct Rpc {
    node: RaftNode,
    sessions: Arc<dyn SessionRenewal>,
    /// This server's HTTP API, for client agents' forwarded calls; set once it exists.
    api: Arc<std::sync::OnceLock<LocalApi>>,
}

impl Rpc {
    pub fn new(node: RaftNode, sessions: Arc<dyn SessionRenewal>) -> Rpc {
        Rpc {
            node,
            sessions,
            api: Arc::default(),
        }
    }

    /// Where forwarded HTTP calls go; calls before this is set are refused.
    pub fn set_api(&self, api: LocalApi) {
        let _ = self.api.set(api);
    }

    async fn dispatch(self, method: u16, body: Bytes) -> Result<Bytes, String> {
        let method = Method::from_u16(method).ok_or_else(|| format!("unknown method {method}"))?;
        let node = &self.node;
        match method {
            Method::Append => {
                let request: AppendEntriesRequest<TypeConfig> = decode(&body)?;
                node.heard_from_leader();
                let reply: Result<AppendEntriesResponse<NodeId>, String> = node
                    .raft()
                    .append_entries(request)
                    .await
                    .map_err(|e| e.to_string());
                encode(&reply)
            }
            Method::Vote => {
                let request: VoteRequest<NodeId> = decode(&body)?;
                let reply: Result<VoteResponse<NodeId>, String> =
                    node.raft().vote(request).await.map_err(|e| e.to_string());
                encode(&reply)
            }
            Method::InstallSnapshot => {
                let request: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
                node.heard_from_leader();
                let reply: Result<InstallSnapshotResponse<NodeId>, SnapshotFailure> =
                    match node.raft().install_snapshot(request).await {
                        Ok(r) => Ok(r),
                        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                            Err(SnapshotFailure::Mismatch(m))
                        }
                        Err(e) => Err(SnapshotFailure::Fatal(e.to_string())),
                    };
                encode(&reply)
            }
            Method::Info => encode(&node.info().await),
            Method::Write => {
                let request: Request = decode(&body)?;
                encode(&match node.write_local(request).await {
                    Ok((outcome, index)) => WriteReply::Applied { outcome, index },
                    Err(WriteError::NotLeader(leader)) => WriteReply::NotLeader(Some(leader)),
                    Err(WriteError::NoLeader) => WriteReply::NotLeader(None),
                    Err(WriteError::Busy) => WriteReply::Busy,
                    Err(WriteError::Failed(e)) => WriteReply::Failed(e),
                })
            }
            Method::ReadIndex => {
                let linearizable: bool = decode(&body)?;
                let reply = if node.is_leader() {
                    node.read_index_local(linearizable).await
                } else {
                    Err(WriteError::NoLeader)
                };
                encode(&reply)
            }
            Method::Membership => {
                let change: MembershipChange = decode(&body)?;
                let reply = if !node.is_leader() {
                    Err(ClusterError::NotLeader)
                } else {
                    match change {
                        MembershipChange::Add { id, node: server } => {
                            node.add_server(id, server).await
                        }
                        MembershipChange::Remove { id } => node.remove_server(id).await,
                    }
                };
                encode(&reply)
            }
            Method::Backup => encode(&node.view().load().to_rows()),
            Method::SessionRenew => {
                let id: String = decode(&body)?;
                encode(&renew_as_leader(node, self.sessions.as_ref(), &id).await)
            }
            Method::Http => {
                let call: HttpCall = decode(&body)?;
                let reply: Result<HttpReply, String> = match self.api.get() {
                    Some(api) => Ok(api(call).await),
                    None => Err("this server's HTTP API is not running yet".into()),
                };
                encode(&reply)
            }
            Method::CatalogRows => {
                let mut wait: CatalogWait = decode(&body)?;
                match cluster_of(node, &wait.cluster_id) {
                    Cluster::Same => {}
                    // The caller replaces its copy with what this answer holds.
                    Cluster::Another => wait.after = 0,
                    Cluster::Unknown => return Err("this server has no cluster ID yet".into()),
                }
                encode(&catalog_rows(node.view(), wait).await)
            }
            Method::ServiceStream => Err("ServiceStream is a stream: subscribe to it".into()),
        }
    }
}

/// Decodes `body` as `method`'s request, and the proposals in an append's entries as the state
/// machine would; whether it all decoded. The server-RPC fuzz target's way in (`crate::fuzz`):
/// bad bytes must give an error, never a panic.
pub(crate) fn decode_request(method: u16, body: &[u8]) -> bool {
    match Method::from_u16(method) {
        Some(Method::Append) => decode::<AppendEntriesRequest<TypeConfig>>(body).is_ok_and(|a| {
            a.entries.iter().all(|entry| match &entry.payload {
                openraft::EntryPayload::Normal(proposal) => proposal.decode().is_ok(),
                _ => true,
            })
        }),
        Some(Method::Vote) => decode::<VoteRequest<NodeId>>(body).is_ok(),
        Some(Method::InstallSnapshot) => decode::<InstallSnapshotRequest<TypeConfig>>(body).is_ok(),
        Some(Method::Info | Method::Backup) => decode::<()>(body).is_ok(),
        Some(Method::Write) => decode::<Request>(body).is_ok(),
        Some(Method::ReadIndex) => decode::<bool>(body).is_ok(),
        Some(Method::Membership) => decode::<MembershipChange>(body).is_ok(),
        Some(Method::SessionRenew) => decode::<String>(body).is_ok(),
        Some(Method::Http) => decode::<HttpCall>(body).is_ok(),
        Some(Method::CatalogRows) => decode::<CatalogWait>(body).is_ok(),
        Some(Method::ServiceStream) => decode::<ServiceWatch>(body).is_ok(),
        None => false,
    }
}

impl Handler for Rpc {
    /// Raft's own calls, membership changes and full backups need a server's certificate
    /// when `verify_server_hostname` is in force; client agents forward writes and HTTP.
    fn server_only(&self, method: u16) -> bool {
        use Method::*;
        matches!(
            Method::from_u16(method),
            Some(Append | Vote | InstallSnapshot | Membership | Backup)
        )
    }

    fn call(&self, method: u16, body: Bytes) -> BoxFuture<'static, Result<Bytes, String>> {
        Box::pin(self.clone().dispatch(method, body))
    }

    fn subscribe(
        &self,
        method: u16,
        body: Bytes,
    ) -> BoxFuture<'static, Result<tokio::sync::mpsc::Receiver<Bytes>, String>> {
        let opened = match Method::from_u16(method) {
            Some(Method::ServiceStream) => decode::<ServiceWatch>(&body).map(|watch| {
                // Two in flight: one being written while the next is taken.
                let (tx, rx) = tokio::sync::mpsc::channel(2);
                let view = self.node.view().clone();
                let node = self.node.clone();
                tokio::spawn(async move {
                    let after = match cluster_of(&node, &watch.cluster_id) {
                        Cluster::Same => watch.after,
                        Cluster::Another => 0,
                        // Ending the stream sends the client to another server.
                        Cluster::Unknown => return,
                    };
                    let pushed = crate::view::stream::follow_service(
                        view,
                        &watch.service,
                        after,
                        STREAM_HEARTBEAT,
                        tx,
                        |snapshot| match snapshot {
                            Some(s) => encode(&ServiceEvent::Snapshot(s.clone())),
                            None => encode(&ServiceEvent::Heartbeat {
                                known_leader: node.leader_addr().is_some(),
                            }),
                        },
                    )
                    .await;
                    if let Err(e) = pushed {
                        tracing::warn!(service = %watch.service, error = %e, "service stream ended");
                    }
                });
                rx
            }),
            _ => Err(format!("no stream for method {method}")),
        };
        Box::pin(async move { opened })
    }
}

/// How a client's `cluster_id` compares with this server's.
#[derive(Debug, PartialEq, Eq)]
enum Cluster {
    /// The same, or the client has none yet: its index compares with ours.
    Same,
    /// Another: its indexes belong to a history these servers do not have.
    Another,
    /// The client names one and this server has none yet (a new cluster still forming, or a
    /// new server not caught up), or names another while this server knows no leader: it
    /// cannot tell, so the client should ask another server.
    Unknown,
}

/// `Another` only from a server that knows a leader: a server of the old cluster still up
/// during a staggered wipe would otherwise send the client back and forth.
fn cluster_of(node: &RaftNode, theirs: &str) -> Cluster {
    let state = node.view().load();
    let ours = state.cluster_id();
    match (theirs.is_empty(), ours.is_empty()) {
        (true, _) => Cluster::Same,
        (false, true) => Cluster::Unknown,
        (false, false) if theirs == ours => Cluster::Same,
        (false, false) if node.leader_addr().is_some() => Cluster::Another,
        (false, false) => Cluster::Unknown,
    }
}

/// Waits until the catalog's index passes `wait.after` (or the wait ends), then returns the
/// nodes, services and checks.
async fn catalog_rows(view: &crate::view::View, wait: CatalogWait) -> crate::catalog::Rows {
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_millis(wait.wait_ms.min(10 * 60 * 1000));
    let topics =
        [Topic::Nodes, Topic::Services, Topic::Checks].map(|t| view.watchers().subscribe(t));
    loop {
        let notified = topics
            .iter()
            .map(|n| Box::pin(n.notified()))
            .collect::<Vec<_>>();
        let state = view.load();
        if state.catalog_index() > wait.after || tokio::time::Instant::now() >= deadline {
            return state.catalog_rows();
        }
        tokio::select! {
            _ = futures_util::future::select_all(notified) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Restarts a session's timer here, after confirming with a quorum that this server still
/// leads: a leader that was paused and replaced must not acknowledge a renew its successor
/// never sees. `NotLeader` otherwise (the caller retries on the leader).
pub async fn renew_as_leader(
    node: &RaftNode,
    sessions: &dyn SessionRenewal,
    id: &str,
) -> Result<bool, ClusterError> {
    if !node.is_leader() || node.read_index_local(true).await.is_err() {
        return Err(ClusterError::NotLeader);
    }
    sessions.renew(id)
}
