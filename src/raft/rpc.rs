//! The server RPC listener (`--rpc-addr`): Raft's append/vote/snapshot, and the requests other
//! servers make of this one: discovery, forwarded writes and read barriers, membership changes,
//! session renewals for the leader's timers, backups.

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::network::CLUSTER_HEADER;
use super::{RaftNode, ServerInfo};
use crate::catalog::{Outcome, Request};
use crate::cluster::{ClusterError, WriteError};
use crate::store::types::{NodeId, ServerNode, TypeConfig};

/// The leader's session timers, as the RPC listener reaches them (implemented by
/// `leader::SessionTimers`; defined here so `raft` does not depend on `leader`).
pub trait SessionRenewal: Send + Sync + 'static {
    /// Restarts a session's timer on this server, which must lead. Ok(false): no such session.
    fn renew(&self, id: &str) -> Result<bool, ClusterError>;
}

/// What the listener's handlers share.
#[derive(Clone)]
struct Rpc {
    node: RaftNode,
    sessions: std::sync::Arc<dyn SessionRenewal>,
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

pub fn router(node: RaftNode, sessions: std::sync::Arc<dyn SessionRenewal>) -> Router {
    let rpc = Rpc { node, sessions };
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot_chunk))
        .route("/rpc/info", get(info))
        .route("/rpc/write", post(write))
        .route("/rpc/read-index", post(read_index))
        .route("/rpc/membership", post(membership))
        .route("/rpc/snapshot", get(snapshot))
        .route("/rpc/session-renew", post(session_renew))
        .layer(middleware::from_fn_with_state(rpc.clone(), same_cluster))
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(rpc)
}

/// Refuses requests from servers of another cluster.
async fn same_cluster(State(rpc): State<Rpc>, request: HttpRequest, next: Next) -> Response {
    // Discovery answers anyone, so a server of another cluster learns why it cannot join.
    if request.uri().path() == "/rpc/info" {
        return next.run(request).await;
    }
    let theirs = request
        .headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let ours = rpc.node.view().load().cluster_id().to_string();
    if !theirs.is_empty() && !ours.is_empty() && theirs != ours {
        return (
            StatusCode::CONFLICT,
            format!("this server belongs to cluster {ours}, the caller to {theirs}"),
        )
            .into_response();
    }
    next.run(request).await
}

async fn append(
    State(Rpc { node: c, .. }): State<Rpc>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    c.heard_from_leader();
    Json(c.raft().append_entries(req).await)
}

async fn read_index(
    State(Rpc { node: c, .. }): State<Rpc>,
    Json(linearizable): Json<bool>,
) -> Json<Result<u64, WriteError>> {
    if !c.is_leader() {
        return Json(Err(WriteError::NoLeader));
    }
    Json(c.read_index_local(linearizable).await)
}

async fn vote(
    State(Rpc { node: c, .. }): State<Rpc>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(c.raft().vote(req).await)
}

async fn snapshot_chunk(
    State(Rpc { node: c, .. }): State<Rpc>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(c.raft().install_snapshot(req).await)
}

async fn info(State(Rpc { node: c, .. }): State<Rpc>) -> Json<ServerInfo> {
    Json(c.info().await)
}

async fn write(
    State(Rpc { node: c, .. }): State<Rpc>,
    Json(req): Json<Request>,
) -> Json<WriteReply> {
    Json(match c.write_local(req).await {
        Ok((outcome, index)) => WriteReply::Applied { outcome, index },
        Err(WriteError::NotLeader(leader)) => WriteReply::NotLeader(Some(leader)),
        Err(WriteError::NoLeader) => WriteReply::NotLeader(None),
        Err(WriteError::Busy) => WriteReply::Busy,
        Err(WriteError::Failed(e)) => WriteReply::Failed(e),
    })
}

async fn membership(
    State(Rpc { node: c, .. }): State<Rpc>,
    Json(change): Json<MembershipChange>,
) -> Json<Result<(), ClusterError>> {
    if !c.is_leader() {
        return Json(Err(ClusterError::NotLeader));
    }
    Json(match change {
        MembershipChange::Add { id, node } => c.add_server(id, node).await,
        MembershipChange::Remove { id } => c.remove_server(id).await,
    })
}

/// The catalog as JSON rows, for backups taken through a follower.
async fn snapshot(State(Rpc { node: c, .. }): State<Rpc>) -> Response {
    let rows = c.view().load().to_rows();
    match serde_json::to_vec(&rows) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn session_renew(
    State(rpc): State<Rpc>,
    Json(id): Json<String>,
) -> Json<Result<bool, ClusterError>> {
    Json(renew_as_leader(&rpc.node, rpc.sessions.as_ref(), &id).await)
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
