//! The openraft type configuration: what a log entry carries (a `Proposal` of catalog
//! requests), what it returns, and how servers are named. It lives here, below `raft`, because
//! the store persists these types and must not depend on the Raft glue above it.

use std::io::Cursor;

use crate::catalog::{Outcome, Proposal};

openraft::declare_raft_types!(
    /// Beacon's Raft types: batches of catalog commands in, one outcome per command out.
    pub TypeConfig:
        D = Proposal,
        R = Vec<Outcome>,
        NodeId = NodeId,
        Node = ServerNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;

/// A server as Raft membership records it: where its RPC listens and its node name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerNode {
    pub rpc_addr: String,
    pub name: String,
}
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, ServerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ServerNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
