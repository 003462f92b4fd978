//! The server RPC listener (`--rpc-addr`): Raft's append/vote/snapshot, and the requests other
//! servers make of this one: discovery, forwarded writes, membership changes.

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
use super::types::{NodeId, ServerNode, TypeConfig};
use super::{Cluster, ServerInfo};
use crate::catalog::{Outcome, Request, WriteError};

/// The reply to a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub enum WriteReply {
    Applied { outcome: Outcome, index: u64 },
    NotLeader(Option<String>),
    Failed(String),
}

/// A membership change asked of the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    Add { id: NodeId, node: ServerNode },
    Remove { id: NodeId },
}

pub fn router(cluster: Cluster) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot_chunk))
        .route("/rpc/info", get(info))
        .route("/rpc/write", post(write))
        .route("/rpc/read-index", post(read_index))
        .route("/rpc/membership", post(membership))
        .route("/rpc/snapshot", get(snapshot))
        .layer(middleware::from_fn_with_state(
            cluster.clone(),
            same_cluster,
        ))
        .layer(DefaultBodyLimit::max(64 << 20))
        .with_state(cluster)
}

/// Refuses requests from servers of another cluster.
async fn same_cluster(
    State(cluster): State<Cluster>,
    request: HttpRequest,
    next: Next,
) -> Response {
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
    let ours = cluster.view().load().cluster_id().to_string();
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
    State(c): State<Cluster>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    c.heard_from_leader();
    Json(c.raft().append_entries(req).await)
}

async fn read_index(
    State(c): State<Cluster>,
    Json(linearizable): Json<bool>,
) -> Json<Result<u64, String>> {
    if !c.is_leader() {
        return Json(Err("not the leader".into()));
    }
    Json(
        c.read_index_local(linearizable)
            .await
            .map_err(|e| e.to_string()),
    )
}

async fn vote(
    State(c): State<Cluster>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(c.raft().vote(req).await)
}

async fn snapshot_chunk(
    State(c): State<Cluster>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(c.raft().install_snapshot(req).await)
}

async fn info(State(c): State<Cluster>) -> Json<ServerInfo> {
    Json(c.info().await)
}

async fn write(State(c): State<Cluster>, Json(req): Json<Request>) -> Json<WriteReply> {
    Json(match c.write_local(req).await {
        Ok((outcome, index)) => WriteReply::Applied { outcome, index },
        Err(WriteError::NotLeader(leader)) => WriteReply::NotLeader(Some(leader)),
        Err(WriteError::NoLeader) => WriteReply::NotLeader(None),
        Err(WriteError::Failed(e)) => WriteReply::Failed(e),
    })
}

async fn membership(
    State(c): State<Cluster>,
    Json(change): Json<MembershipChange>,
) -> Json<Result<(), String>> {
    if !c.is_leader() {
        return Json(Err("not the leader".into()));
    }
    Json(match change {
        MembershipChange::Add { id, node } => c.add_server(id, node).await,
        MembershipChange::Remove { id } => c.remove_server(id).await,
    })
}

/// The catalog as JSON rows, for backups taken through a follower.
async fn snapshot(State(c): State<Cluster>) -> Response {
    let rows = c.view().load().to_rows();
    match serde_json::to_vec(&rows) {
        Ok(bytes) => bytes.into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
