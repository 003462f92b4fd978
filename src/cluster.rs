//! The cluster port: everything `http`, `dns` and `agent` may ask of the servers, without
//! naming Raft, the store or the transport.
//!
//! Two seams: [`Writer`] proposes catalog commands (acknowledged once a majority committed them
//! and this server applied them), and [`Cluster`] answers the operator's questions (status,
//! peers, members), changes membership (join, leave, remove), makes reads fresh (read barrier)
//! and renews sessions on the leader's timers. On a server, `server::port` implements both over
//! the Raft node; a client agent will implement them over server RPC.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{Command, Outcome, Rows};
use crate::model::Index;

/// A server's Raft ID: chosen at random on first start and kept in its data dir.
pub type ServerId = u64;

/// Why a write (or a read barrier) did not go through, as opposed to being refused by the
/// catalog (that is an `ApplyError` inside the `Outcome`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    /// No leader was known within Consul's `rpc_hold_timeout` (7 s).
    #[error("No cluster leader")]
    NoLeader,
    /// This server does not lead; the leader's server (RPC) address.
    #[error("not the leader; the leader is {0}")]
    NotLeader(String),
    /// The leader's queue of writes is full (Consul's rate limit): nothing was proposed.
    #[error("rate limit exceeded: too many writes waiting for the leader, try again later")]
    Busy,
    #[error("raft write failed: {0}")]
    Failed(String),
}

/// Proposes commands and waits until they are committed and applied locally, so the caller
/// reads its own write.
#[async_trait::async_trait]
pub trait Writer: Send + Sync + 'static {
    async fn write(&self, command: Command) -> Result<Outcome, WriteError>;
}

/// Why a membership change, a join or a leader-side call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// No leader was known within the hold time.
    #[error("No cluster leader")]
    NoLeader,
    /// The call reached a server that does not lead (retried on the leader).
    #[error("not the leader")]
    NotLeader,
    /// Nothing was delivered to the server at `addr`.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The server at `addr` belongs to another cluster than this one.
    #[error(
        "{addr} belongs to another cluster ({theirs}); a server leaves its cluster before joining another"
    )]
    OtherCluster { addr: String, theirs: String },
    /// No server with this ID or address is in the Raft configuration.
    #[error("no server {0} in the configuration")]
    UnknownServer(String),
    /// Raft refused or failed the change.
    #[error("{0}")]
    Failed(String),
}

impl ClusterError {
    /// Whether the call may succeed if made again once leadership settles (nothing was done).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader | ClusterError::NotLeader | ClusterError::Unreachable { .. }
        )
    }
}

/// One server of the Raft configuration, for `/v1/agent/members` and `/v1/operator/raft/*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: ServerId,
    /// The server's node name.
    pub name: String,
    /// Its server (RPC) address, `ip:port`.
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    /// Whether this server has heard from it recently (always true for itself and, on
    /// followers, for every member: only the leader talks to everyone).
    pub alive: bool,
}

/// One server's replication as the leader sees it: the inputs of Consul's autopilot health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHealth {
    pub member: Member,
    /// Since the server last answered the leader (zero for the leader itself); None if never.
    pub last_contact: Option<std::time::Duration>,
    /// The last log index and its term known to be on the server.
    pub last_index: Index,
    pub last_term: u64,
    /// The leader's heartbeat interval: how often a healthy server hears from it.
    pub heartbeat: std::time::Duration,
}

/// What the API may ask of the cluster. Implemented by `server::port::ServerCluster`.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This server's ID.
    fn id(&self) -> ServerId;
    /// The leader's server (RPC) address, if a leader is known (`/v1/status/leader`).
    fn leader(&self) -> Option<String>;
    fn is_leader(&self) -> bool;
    /// The voters' server (RPC) addresses (`/v1/status/peers`).
    fn peers(&self) -> Vec<String>;
    /// Every server in the configuration, voters and non-voters.
    fn members(&self) -> Vec<Member>;
    /// On the leader, every server's replication (Consul's autopilot inputs); None elsewhere.
    fn server_health(&self) -> Option<Vec<ServerHealth>> {
        None
    }
    /// Sends an API request to the leader and returns its answer (for what only the leader
    /// knows, as Consul forwards it).
    async fn ask_leader(&self, _call: HttpCall) -> Result<HttpReply, ClusterError> {
        Err(ClusterError::Failed("no leader to ask".into()))
    }
    /// The Raft index of the configuration in force (`/v1/operator/raft/configuration`).
    fn membership_index(&self) -> Index;
    /// Raft counters, as Consul's `/v1/agent/self` `Stats.raft` reports them.
    fn stats(&self) -> BTreeMap<&'static str, String>;
    /// Milliseconds since the leader was last heard from: 0 on the leader, None if never
    /// (`X-Consul-LastContact`).
    fn last_contact_ms(&self) -> Option<u64>;
    /// Makes a read on this server at least as fresh as the leader's state: `linearizable`
    /// also confirms leadership with a quorum round (Consul's `?consistent`); otherwise it
    /// catches up to the leader's applied index (Consul's default mode).
    async fn read_barrier(&self, linearizable: bool) -> Result<(), WriteError>;
    /// Joins the cluster of the server at `address` (its RPC address), or, when that server is
    /// new and this one leads, brings it into ours (`PUT /v1/agent/join/:address`).
    async fn join(&self, address: &str) -> Result<(), ClusterError>;
    /// Leaves the voter set gracefully (`PUT /v1/agent/leave`); the caller then shuts down.
    async fn leave(&self) -> Result<(), ClusterError>;
    /// Removes a server from the configuration, on the leader wherever this server is.
    async fn remove_server(&self, id: ServerId) -> Result<(), ClusterError>;
    /// The whole catalog as the leader has it (for `GET /v1/snapshot`); with `stale`, this
    /// server's own.
    async fn backup(&self, stale: bool) -> Result<Rows, ClusterError>;
    /// Restarts a session's TTL timer on the leader. Ok(false): no such session.
    async fn renew_session(&self, id: &str) -> Result<bool, ClusterError>;
}

/// A member of the LAN gossip pool, as `/v1/agent/members` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolMember {
    pub name: String,
    /// Its gossip address.
    pub addr: std::net::SocketAddr,
    /// Serf tags: `role` (`consul` for servers, `node` for clients), `dc`, `port` (server
    /// RPC), `build`, `id`, `vsn`, `expect`.
    pub tags: BTreeMap<String, String>,
    /// Serf's numbering: 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
}

impl PoolMember {
    pub const ALIVE: u8 = 1;
    pub const LEAVING: u8 = 2;
    pub const LEFT: u8 = 3;
    pub const FAILED: u8 = 4;

    /// Whether this member is a server (Serf tag `role=consul`).
    pub fn is_server(&self) -> bool {
        self.tags.get("role").map(String::as_str) == Some("consul")
    }

    /// The member's server RPC address: its gossip IP and its `port` tag (Consul's
    /// `metadata.IsConsulServer`).
    pub fn rpc_addr(&self) -> Option<std::net::SocketAddr> {
        let port = self.tags.get("port")?.parse().ok()?;
        Some(std::net::SocketAddr::new(self.addr.ip(), port))
    }
}

/// Why a gossip operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// This agent runs no gossip pool (a dev agent without `--serf-lan-addr`).
    #[error("this agent runs no gossip pool (start it with --serf-lan-addr)")]
    NoPool,
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
}

/// The keyring as the pool holds it (`/v1/operator/keyring`, `beacon keyring -list`).
#[derive(Clone, Debug, Default)]
pub struct KeyringReport {
    /// Each installed key (base64) and how many alive members hold it.
    pub keys: BTreeMap<String, usize>,
    /// Each primary key in use and how many alive members use it.
    pub primary: BTreeMap<String, usize>,
    /// Alive members.
    pub members: usize,
}

/// The LAN gossip pool as the API sees it: membership, join/leave, force-leave, the keyring.
#[async_trait::async_trait]
pub trait Gossip: Send + Sync + 'static {
    /// Every member this agent knows, itself included (left and failed ones until reaped).
    fn members(&self) -> Vec<PoolMember>;
    /// Changes (to a new value) whenever `members()` does.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Joins the pool through these agents' gossip addresses (`host` or `host:port`, port 8301
    /// by default); the number that answered, or why none did.
    async fn join(&self, addrs: &[String]) -> Result<usize, PoolError>;
    /// Leaves the pool gracefully: members see this agent leave, not fail.
    async fn leave(&self);
    /// Turns a failed member into left (with `prune`, forgets it at once).
    fn force_leave(&self, name: &str, prune: bool) -> Result<(), PoolError>;
    fn keyring_list(&self) -> Result<KeyringReport, PoolError>;
    fn keyring_install(&self, key: &str) -> Result<(), PoolError>;
    fn keyring_use(&self, key: &str) -> Result<(), PoolError>;
    fn keyring_remove(&self, key: &str) -> Result<(), PoolError>;
}

/// An HTTP request a client agent forwards to a server over server RPC: the server answers it
/// with its own API, so read modes, blocking queries and `X-Consul-*` headers are the server's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    /// Path and query, as received.
    pub uri: String,
    pub headers: Vec<(String, serde_bytes::ByteBuf)>,
    pub body: serde_bytes::ByteBuf,
}

/// A server's answer to an `HttpCall`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, serde_bytes::ByteBuf)>,
    pub body: serde_bytes::ByteBuf,
}

/// Answers forwarded HTTP calls on a server with its own API (set once the API exists).
pub type LocalApi =
    Arc<dyn Fn(HttpCall) -> futures_util::future::BoxFuture<'static, HttpReply> + Send + Sync>;

/// A client agent's way to the servers for what it does not answer itself.
#[async_trait::async_trait]
pub trait Forward: Send + Sync + 'static {
    /// Sends the call to a server (another one if that one cannot be reached); `timeout`
    /// covers a blocking query's whole wait.
    async fn http(
        &self,
        call: HttpCall,
        timeout: std::time::Duration,
    ) -> Result<HttpReply, ClusterError>;
}
