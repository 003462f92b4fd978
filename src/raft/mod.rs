//! Raft glue: the openraft node ([`RaftNode`]) over the redb store, server-to-server RPC,
//! cluster formation and membership changes, the `Writer` that proposes (and forwards) catalog
//! commands with group commit, and the status the cluster port reports.
//!
//! Nothing above `server` names this module's types: `http`, `dns` and `agent` see only the
//! cluster port (`crate::cluster`), which `server::port` implements over a `RaftNode`.

mod batch;
mod client;
pub mod formation;
mod network;
pub mod rpc;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use redb::Database;
use serde::{Deserialize, Serialize};

use crate::catalog::{Command, Outcome, Request};
use crate::cluster::{ClusterError, Member, ServerHealth, WriteError, Writer};
use crate::config::Timing;
use crate::store::types::{NodeId, Raft, ServerNode};
use crate::store::{LogStore, StateMachineStore, StoreError};
use crate::tasks::Tasks;
use crate::transport::{ClusterId, Limits, Pool};
use crate::view::View;
pub use client::RpcClient;
pub use network::Contacts;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// What a server says about itself over RPC (`/rpc/info`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerInfo {
    pub id: NodeId,
    pub node: ServerNode,
    pub initialized: bool,
    pub cluster_id: String,
    pub leader: Option<String>,
}

/// A running Raft node (this server's member of the Raft group) with what the rest of the
/// server needs from it. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    raft: Raft,
    id: NodeId,
    me: ServerNode,
    view: View,
    contacts: Contacts,
    client: RpcClient,
    /// When this server last heard from a leader (append entries), for `X-Consul-LastContact`.
    leader_contact: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    /// Gathers concurrent writes into shared Raft entries.
    batcher: batch::Batcher,
}

impl RaftNode {
    /// Loads and publishes the persisted catalog, and starts Raft.
    pub async fn start(
        id: NodeId,
        me: ServerNode,
        db: Arc<Database>,
        view: View,
        timing: &Timing,
        tls: Option<Arc<crate::tls::Tls>>,
        tasks: &Tasks,
    ) -> Result<RaftNode, StartError> {
        let config = openraft::Config {
            cluster_name: "beacon".into(),
            heartbeat_interval: timing.heartbeat.as_millis() as u64,
            election_timeout_min: timing.election_min.as_millis() as u64,
            election_timeout_max: timing.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_threshold),
            max_in_snapshot_log_to_keep: timing.trailing_logs,
            // One chunk per transport frame (frames are at most 64 MiB).
            snapshot_max_chunk_size: 16 << 20,
            install_snapshot_timeout: 2000,
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| StartError::Config(e.to_string()))?,
        );
        let mut log = LogStore::new(db.clone());
        restart_as_follower(&mut log, id).await?;
        let sm = StateMachineStore::load(db, view.clone())?;
        let pool = Pool::new(cluster_id(&view), Limits::default(), tls.clone());
        let anyone = Pool::new(Arc::new(String::new), Limits::default(), tls);
        let contacts = Contacts::default();
        let network = network::Network {
            pool: pool.clone(),
            contacts: contacts.clone(),
            outages: network::Outages::default(),
        };
        let raft = Raft::new(id, config, network, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let stop = tasks.stop().clone();
        let snapshots = snapshot_every(raft.clone(), timing.snapshot_interval);
        tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = snapshots => {}
            }
        });
        Ok(RaftNode {
            batcher: batch::Batcher::start(raft.clone(), tasks),
            raft,
            id,
            me,
            client: RpcClient::new(pool, anyone),
            view,
            contacts,
            leader_contact: Arc::default(),
        })
    }

    /// Notes a message from the leader (called by the RPC listener on append entries).
    pub fn heard_from_leader(&self) {
        *self.leader_contact.lock().expect("contact lock") = Some(tokio::time::Instant::now());
    }

    /// Milliseconds since the leader was last heard from: 0 on the leader, None if never.
    pub fn last_contact_ms(&self) -> Option<u64> {
        if self.is_leader() {
            return Some(0);
        }
        let at = (*self.leader_contact.lock().expect("contact lock"))?;
        Some(at.elapsed().as_millis() as u64)
    }

    /// Makes a read on this server at least as fresh as the leader's state: `linearizable`
    /// also confirms leadership with a quorum round (Consul's `?consistent`); otherwise it
    /// matches the leader's applied index (Consul's default, leader reads). Waits up to the
    /// leader hold for a leader.
    pub async fn read_barrier(&self, linearizable: bool) -> Result<(), WriteError> {
        let deadline = tokio::time::Instant::now() + LEADER_HOLD;
        loop {
            let index = if self.is_leader() {
                self.read_index_local(linearizable).await
            } else if let Some(leader) = self.leader_addr() {
                tokio::select! {
                    index = self.client.read_index(&leader, linearizable) => index,
                    // A paused or cut-off leader does not answer until its call times out;
                    // asking changes nothing, so the question moves to its successor at once.
                    () = self.leader_moved_from(&leader) => Err(WriteError::NoLeader),
                }
            } else {
                Err(WriteError::NoLeader)
            };
            match index {
                Ok(index) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    return if self
                        .wait_applied(index, left.max(Duration::from_millis(100)))
                        .await
                    {
                        Ok(())
                    } else {
                        Err(WriteError::Failed(format!(
                            "not caught up to index {index} in time"
                        )))
                    };
                }
                Err(WriteError::NoLeader | WriteError::NotLeader(_)) => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resolves once a leader other than the one at `addr` is known (a newer term elected it),
    /// so a call still waiting on `addr` waits on a deposed, paused or cut-off server.
    async fn leader_moved_from(&self, addr: &str) {
        let mut metrics = self.raft.metrics();
        while self.leader_addr().is_none_or(|now| now == addr) {
            if metrics.changed().await.is_err() {
                // Raft stopped: nothing will move; the call itself ends the wait.
                std::future::pending::<()>().await;
            }
        }
    }

    /// On the leader: the index a read must wait for.
    pub async fn read_index_local(&self, linearizable: bool) -> Result<u64, WriteError> {
        if !linearizable {
            let m = self.raft.metrics().borrow().clone();
            return Ok(m.last_applied.map(|l| l.index).unwrap_or(0));
        }
        match tokio::time::timeout(LEADER_HOLD, self.raft.ensure_linearizable()).await {
            Ok(Ok(read_log_id)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                _,
            )))) => Err(WriteError::NoLeader),
            Ok(Err(e)) => Err(WriteError::Failed(e.to_string())),
            Err(_) => Err(WriteError::NoLeader),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn me(&self) -> &ServerNode {
        &self.me
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Forms a new cluster of exactly these servers. Called once, by one server.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, ServerNode>,
    ) -> Result<(), StartError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(StartError::Raft(e.to_string())),
        }
    }

    /// Makes this server a one-member cluster, unless it already belongs to one (a restart).
    pub async fn bootstrap_single(&self) -> Result<(), StartError> {
        if self.is_initialized().await {
            return self.readdress_single().await;
        }
        self.initialize(BTreeMap::from([(self.id, self.me.clone())]))
            .await
    }

    /// A one-server cluster restarted on another RPC address (a dev agent's ephemeral port)
    /// records the new one, so the leader address it advertises is where it listens. With one
    /// voter there is nobody to disagree, so replacing the node's address (`SetNodes`) is safe.
    async fn readdress_single(&self) -> Result<(), StartError> {
        let recorded = {
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership().clone();
            if membership.voter_ids().count() != 1 {
                return Ok(());
            }
            membership.get_node(&self.id).map(|n| n.rpc_addr.clone())
        };
        if recorded.is_none_or(|addr| addr == self.me.rpc_addr) {
            return Ok(());
        }
        tokio::time::timeout(LEADER_HOLD, self.wait_leadership(true))
            .await
            .map_err(|_| StartError::Raft("the one-server cluster elected no leader".into()))?;
        let nodes = BTreeMap::from([(self.id, self.me.clone())]);
        self.raft
            .change_membership(ChangeMembers::SetNodes(nodes), false)
            .await
            .map_err(|e| StartError::Raft(format!("recording the new RPC address: {e}")))?;
        tracing::info!(rpc = %self.me.rpc_addr, "recorded this server's new RPC address");
        Ok(())
    }

    pub async fn info(&self) -> ServerInfo {
        ServerInfo {
            id: self.id,
            node: self.me.clone(),
            initialized: self.is_initialized().await,
            cluster_id: self.view.load().cluster_id().to_string(),
            leader: self.leader_addr(),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader's server (RPC) address, if there is a leader.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.rpc_addr.clone())
    }

    /// The voters' server (RPC) addresses.
    pub fn peers(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .filter(|m| m.voter)
            .map(|m| m.address)
            .collect()
    }

    /// Every server in the Raft configuration (voters and learners).
    pub fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let is_leader = metrics.state == ServerState::Leader;
        membership
            .nodes()
            .map(|(id, node)| {
                let alive = *id == self.id
                    || !is_leader
                    || self
                        .contacts
                        .last(*id)
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(5));
                Member {
                    id: *id,
                    name: node.name.clone(),
                    address: node.rpc_addr.clone(),
                    voter: voters.contains(id),
                    leader: metrics.current_leader == Some(*id),
                    alive,
                }
            })
            .collect()
    }

    /// Records Raft's metrics until `stop`: elections won and started
    /// (`consul_raft_state_leader`, `consul_raft_state_candidate`) and, on the leader, the
    /// time since a quorum last acknowledged it, each second (`consul_raft_leader_lastContact`).
    pub async fn record_metrics(&self, stop: tokio_util::sync::CancellationToken) {
        let recorded = &*crate::metrics::RECORDED;
        let mut metrics = self.raft.metrics();
        let mut state = metrics.borrow().state;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = metrics.borrow().state;
                    if now != state {
                        match now {
                            ServerState::Leader => recorded.raft_state_leader.inc(),
                            ServerState::Candidate => recorded.raft_state_candidate.inc(),
                            _ => 0,
                        };
                        state = now;
                    }
                }
                _ = tick.tick() => {
                    let m = metrics.borrow();
                    if m.state == ServerState::Leader
                        && let Some(ms) = m.millis_since_quorum_ack
                    {
                        recorded.raft_leader_last_contact.observe(ms as f64);
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// On the leader, each server's replication progress and last answer; None elsewhere.
    pub fn server_health(&self) -> Option<Vec<ServerHealth>> {
        let metrics = self.raft.metrics().borrow().clone();
        let replication = metrics.replication.clone()?;
        let now = tokio::time::Instant::now();
        let health = self
            .members()
            .into_iter()
            .map(|member| {
                let (last_contact, matched) = if member.id == self.id {
                    (Some(Duration::ZERO), metrics.last_applied)
                } else {
                    (
                        self.contacts.last(member.id).map(|t| now.duration_since(t)),
                        replication.get(&member.id).copied().flatten(),
                    )
                };
                ServerHealth {
                    heartbeat: Duration::from_millis(self.raft.config().heartbeat_interval),
                    member,
                    last_contact,
                    last_index: matched.map_or(0, |l| l.index),
                    last_term: matched.map_or(0, |l| l.leader_id.term),
                }
            })
            .collect();
        Some(health)
    }

    /// The Raft log index of the membership configuration in force.
    pub fn membership_index(&self) -> u64 {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .log_id()
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// The Raft term this server is in.
    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Raft counters, as Consul's `/v1/agent/self` `Stats.raft` reports them.
    pub fn stats(&self) -> BTreeMap<&'static str, String> {
        let m = self.raft.metrics().borrow().clone();
        let index =
            |l: Option<openraft::LogId<NodeId>>| l.map(|l| l.index).unwrap_or(0).to_string();
        BTreeMap::from([
            ("state", format!("{:?}", m.state)),
            ("term", m.current_term.to_string()),
            ("last_log_index", m.last_log_index.unwrap_or(0).to_string()),
            ("applied_index", index(m.last_applied)),
            ("last_snapshot_index", index(m.snapshot)),
            ("purged_index", index(m.purged)),
            (
                "num_peers",
                self.peers().len().saturating_sub(1).to_string(),
            ),
        ])
    }

    pub fn contacts(&self) -> &Contacts {
        &self.contacts
    }

    /// Resolves once this server's leadership is `leading` (at once if it already is). Once
    /// Raft has stopped, nobody leads here: `false` resolves, `true` never does.
    pub async fn wait_leadership(&self, leading: bool) {
        let changed = self
            .raft
            .wait(None)
            .metrics(
                |m| (m.state == ServerState::Leader) == leading,
                "leadership",
            )
            .await;
        if changed.is_err() && leading {
            std::future::pending::<()>().await;
        }
    }

    /// Resolves when the Raft core stopped: shut down, or stopped by a fatal error (a store
    /// that cannot write stops it so it never acknowledges what it did not persist).
    pub async fn wait_stopped(&self) {
        // `Err` is Raft's metrics going away: stopped as well.
        let _ = self
            .raft
            .wait(None)
            .metrics(|m| m.state == ServerState::Shutdown, "raft stopped")
            .await;
    }

    /// Waits until some server is leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader elected")
            .await
            .is_ok()
    }

    /// Waits until this server has applied `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read your write")
            .await
            .is_ok()
    }

    /// Leader only: adds a server as a learner, waits until it caught up, then makes it a voter.
    pub async fn add_server(&self, id: NodeId, node: ServerNode) -> Result<(), ClusterError> {
        let members = self.members();
        if members.iter().any(|m| m.id == id && m.voter) {
            return Ok(());
        }
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(membership_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Leader only: removes a server from the configuration entirely.
    pub async fn remove_server(&self, id: NodeId) -> Result<(), ClusterError> {
        let members = self.members();
        let Some(member) = members.iter().find(|m| m.id == id) else {
            return Err(ClusterError::UnknownServer(format!("with ID {id}")));
        };
        let change = if member.voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Runs a membership change on the leader, wherever this server is.
    pub async fn membership(&self, change: rpc::MembershipChange) -> Result<(), ClusterError> {
        let attempt = || async {
            if self.is_leader() {
                match &change {
                    rpc::MembershipChange::Add { id, node } => {
                        self.add_server(*id, node.clone()).await
                    }
                    rpc::MembershipChange::Remove { id } => self.remove_server(*id).await,
                }
            } else if let Some(leader) = self.leader_addr() {
                self.client.membership(&leader, &change).await
            } else {
                Err(ClusterError::NoLeader)
            }
        };
        within_hold(
            Duration::from_millis(100),
            ClusterError::is_retryable,
            ClusterError::NoLeader,
            attempt,
        )
        .await
    }

    /// Proposes on the leader, wherever this server is (forwarding over RPC), waiting up to
    /// the hold for one.
    pub fn writer(&self) -> Arc<dyn Writer> {
        Arc::new(RaftWriter {
            node: self.clone(),
            forward: true,
        })
    }

    /// A writer for the leader's own duties: it proposes only while this server leads and never
    /// forwards, so a deposed leader's duties cannot commit through its successor.
    pub fn leader_writer(&self) -> Arc<dyn Writer> {
        Arc::new(RaftWriter {
            node: self.clone(),
            forward: false,
        })
    }

    /// Proposes a command on this server, which must be the leader; it shares a Raft entry with
    /// the writes proposed at the same time.
    pub async fn write_local(&self, request: Request) -> Result<(Outcome, u64), WriteError> {
        self.batcher.write(request).await
    }

    /// Takes a last snapshot of what was applied since the previous one (so the next start
    /// replays little log), then stops Raft.
    pub async fn shutdown(&self) {
        let (applied, snapshot) = {
            let m = self.raft.metrics().borrow().clone();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        if applied > snapshot && self.raft.trigger().snapshot().await.is_ok() {
            let saved = self
                .raft
                .wait(Some(SHUTDOWN_SNAPSHOT_WAIT))
                .metrics(
                    |m| m.snapshot.map(|l| l.index) >= applied,
                    "snapshot on shutdown",
                )
                .await;
            match saved {
                Ok(_) => tracing::info!(index = applied.unwrap_or(0), "snapshot saved on shutdown"),
                Err(_) => tracing::warn!("no snapshot on shutdown; the next start replays the log"),
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

/// A membership change refused by Raft: `NotLeader` when this server does not lead (the caller
/// retries on the leader).
fn membership_error(
    e: RaftError<NodeId, openraft::error::ClientWriteError<NodeId, ServerNode>>,
) -> ClusterError {
    match e {
        RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(_)) => {
            ClusterError::NotLeader
        }
        other => ClusterError::Failed(other.to_string()),
    }
}

/// This server's cluster ID as the transport's handshake presents and checks it: read at each
/// handshake, since a server learns it when its cluster forms.
pub fn cluster_id(view: &View) -> ClusterId {
    let view = view.clone();
    Arc::new(move || view.load().cluster_id().to_string())
}

/// How long shutdown waits for its last snapshot.
const SHUTDOWN_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// Asks Raft for a snapshot every `interval` when anything was applied since the last one
/// (Consul's `raft_snapshot_interval`); openraft's own policy covers the entry-count threshold.
async fn snapshot_every(raft: Raft, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let m = raft.metrics().borrow().clone();
        if m.state == ServerState::Shutdown {
            return;
        }
        if m.last_applied.map(|l| l.index) > m.snapshot.map(|l| l.index)
            && raft.trigger().snapshot().await.is_err()
        {
            return;
        }
    }
}

/// Consul holds a write this long waiting for a leader (`rpc_hold_timeout`).
pub const LEADER_HOLD: Duration = Duration::from_secs(7);

/// Calls `attempt` until its answer is not `retryable`, pausing `pause` between tries, for up
/// to Consul's hold (`LEADER_HOLD`); then gives `gave_up`. For calls that are safe to repeat
/// while leadership moves: nothing delivered, or idempotent.
pub(crate) async fn within_hold<T, E, Fut>(
    pause: Duration,
    retryable: impl Fn(&E) -> bool,
    gave_up: E,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + LEADER_HOLD;
    loop {
        match attempt().await {
            Err(e) if retryable(&e) => {}
            done => return done,
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(gave_up);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Proposes commands, then waits until this server applied the entry, so the caller reads its
/// own write. With `forward`, on the leader wherever this server is (forwarded over RPC, and
/// retried while there is no leader, up to the hold); without, only while this server leads.
struct RaftWriter {
    node: RaftNode,
    forward: bool,
}

#[async_trait::async_trait]
impl Writer for RaftWriter {
    async fn write(&self, command: Command) -> Result<Outcome, WriteError> {
        let request = Request {
            at_ms: now_ms(),
            command,
        };
        let (outcome, index) = if self.forward {
            let attempt = || async {
                match self.node.write_local(request.clone()).await {
                    // Raft names a leader the metrics already say was replaced: nothing was
                    // sent, so the next attempt goes to the new one.
                    Err(WriteError::NotLeader(leader))
                        if self.node.leader_addr().is_some_and(|now| now != leader) =>
                    {
                        Err(WriteError::NoLeader)
                    }
                    Err(WriteError::NotLeader(leader)) => tokio::select! {
                        outcome = self.node.client.forward_write(&leader, &request) => outcome,
                        // The leader it went to was replaced (paused, cut off, killed): its
                        // answer would come at the call's timeout, if ever. Delivered or not,
                        // the entry may still commit under the new leader, so it is not sent
                        // again (as Consul does not retry a forwarded write): the caller
                        // learns at once that the outcome is unknown.
                        () = self.node.leader_moved_from(&leader) => Err(WriteError::Failed(
                            format!("the leader changed while this write was forwarded to {leader}; it may or may not have been applied"),
                        )),
                    },
                    other => other,
                }
            };
            // Not delivered, or no leader yet: safe to try again until the hold runs out.
            let retryable =
                |e: &WriteError| matches!(e, WriteError::NoLeader | WriteError::NotLeader(_));
            within_hold(
                Duration::from_millis(50),
                retryable,
                WriteError::NoLeader,
                attempt,
            )
            .await?
        } else {
            self.node.write_local(request).await?
        };
        if !self.node.wait_applied(index, LEADER_HOLD).await {
            return Err(WriteError::Failed(format!(
                "committed at index {index} but not applied here in time"
            )));
        }
        Ok(outcome)
    }
}

/// A server that crashed while it led starts as a follower, as a restarted Consul server
/// does. openraft would restore its leadership from the committed vote it persisted
/// (`Engine::startup`) and report itself leader until it heard of the newer term that has
/// usually replaced it by then. The vote stays (same term, for itself: one vote per term, as
/// Raft requires); only its "committed" mark goes, so the server waits for the current leader
/// or wins a new election, a one-server cluster included.
async fn restart_as_follower(log: &mut LogStore, id: NodeId) -> Result<(), StartError> {
    use openraft::storage::RaftLogStorage;
    let store = |e: crate::store::types::StorageError| StartError::Raft(format!("the vote: {e}"));
    let Some(vote) = log.read_vote().await.map_err(store)? else {
        return Ok(());
    };
    if vote.is_committed() && vote.leader_id().voted_for() == Some(id) {
        let uncommitted = openraft::Vote::new(vote.leader_id().get_term(), id);
        log.save_vote(&uncommitted).await.map_err(store)?;
        tracing::info!(
            term = vote.leader_id().get_term(),
            "this server led before it stopped; it starts as a follower"
        );
    }
    Ok(())
}

/// Wall-clock milliseconds since the Unix epoch, stamped on each proposed command.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
