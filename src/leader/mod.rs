//! Leader duties in one place: one task, started when this server becomes the Raft leader and
//! cancelled when it stops leading, runs everything only the leader may do:
//! - cluster naming: the cluster ID is written once, right after the cluster forms;
//! - session expiry: the leader's TTL timers ([`SessionTimers`]) destroy expired sessions;
//! - autopilot: servers the leader has not reached for `dead_server_threshold` are removed, if
//!   a healthy majority remains (Consul's `cleanup_dead_servers`);
//! - reconciliation (`reconcile`): the catalog and the Raft configuration follow the gossip
//!   pool.
//!
//! The supervisor follows Raft's own leadership signal (its metrics), so duties never run on two
//! servers of one term, and a new leader starts them from scratch (Consul's
//! `establishLeadership` / `revokeLeadership`).

mod reconcile;
mod sessions;

pub use reconcile::Memory as PoolMemory;

pub use sessions::{SCAN_EVERY, SessionTimers, TTL_MULTIPLIER};

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::Command;
use crate::cluster::{Gossip, Writer};
use crate::config::Autopilot;
use crate::raft::{LEADER_HOLD, RaftNode};
use crate::tasks::Tasks;

/// How long a deleted key's tombstone is kept before the leader reaps it (Consul's
/// `TombstoneTTL`): a blocking KV read sees the delete through it until then, and its index
/// never drops below a reaped one afterwards (`Indexes::kv_floor`).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(15 * 60);

/// How often the leader looks for tombstones to reap (Consul's `TombstoneTTLGranularity`).
const TOMBSTONE_GRANULARITY: Duration = Duration::from_secs(30);

/// What the leader's duties need.
#[derive(Clone)]
pub struct Duties {
    pub node: RaftNode,
    /// Proposes on this server only (`RaftNode::leader_writer`): never forwarded.
    pub writer: Arc<dyn Writer>,
    pub autopilot: Autopilot,
    pub sessions: SessionTimers,
    /// The LAN gossip pool, when this server runs one.
    pub gossip: Option<Arc<dyn Gossip>>,
    pub datacenter: String,
    /// How long a failed member stays before it is reaped.
    pub reconnect_timeout: Duration,
    /// What reconciliation remembers across terms.
    pub pool_memory: Arc<PoolMemory>,
}

/// Starts the supervisor: it runs the duties for every term this server leads, until shutdown.
pub fn start(duties: Duties, tasks: &Tasks) {
    let inner = tasks.clone();
    tasks.spawn_essential("leader-supervisor", supervise(duties, inner));
}

async fn supervise(duties: Duties, tasks: Tasks) {
    let stop = tasks.stop().clone();
    loop {
        tokio::select! {
            // Shutdown first: a leader shutting down does not start its duties again.
            biased;
            _ = stop.cancelled() => return,
            _ = duties.node.wait_leadership(true) => {}
        }
        tracing::info!(
            term = duties.node.current_term(),
            "leadership gained: starting leader duties"
        );
        let term = stop.child_token();
        let running = tasks.spawn(run(duties.clone(), term.clone()));
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = duties.node.wait_leadership(false) => {
                tracing::info!(
                    term = duties.node.current_term(),
                    leader = %duties.node.leader_addr().unwrap_or_else(|| "none".into()),
                    "leadership lost: stopping leader duties"
                );
            }
        }
        // Renewals stop being taken at once; the duties stop at their next await.
        duties.sessions.stop_leading();
        term.cancel();
        let ended = running.await;
        // Again, now that the duties are over: they may have started the timers just before
        // they saw the cancellation.
        duties.sessions.stop_leading();
        if let Err(e) = ended {
            tracing::error!(error = %e, "leader duties failed");
            return;
        }
    }
}

/// One term's duties; returns when `term` is cancelled.
async fn run(duties: Duties, term: CancellationToken) {
    // As Consul's `establishLeadership` waits on a barrier: the entries committed in earlier
    // terms are applied here before the timers start, so every session created before the
    // election has a timer and a renew of one is never answered "not found".
    if until_cancelled(&term, caught_up(&duties.node))
        .await
        .is_none()
    {
        return;
    }
    let since = Instant::now();
    duties.sessions.start_leading(since);
    // Each duty on its own schedule, so one that waits (a membership change needing a quorum
    // that is not there) never holds up another (session expiry).
    let naming = every(SCAN_EVERY, || name_cluster(&duties));
    let expiry = every(SCAN_EVERY, || expire_sessions(&duties));
    let autopilot = every(SCAN_EVERY, || async {
        if duties.autopilot.cleanup_dead_servers {
            remove_dead_server(&duties.node, since, duties.autopilot.dead_server_threshold).await;
        }
    });
    let graveyard = reap_tombstones(&duties);
    let pool = async {
        match &duties.gossip {
            Some(gossip) => {
                reconcile::Reconciler {
                    node: duties.node.clone(),
                    writer: duties.writer.clone(),
                    gossip: gossip.clone(),
                    datacenter: duties.datacenter.clone(),
                    reconnect_timeout: duties.reconnect_timeout,
                    memory: duties.pool_memory.clone(),
                }
                .run()
                .await
            }
            None => std::future::pending().await,
        }
    };
    let _ = until_cancelled(&term, async {
        tokio::join!(naming, expiry, autopilot, graveyard, pool)
    })
    .await;
}

/// Runs `round` now and then every `period` after the previous round ended; never returns.
async fn every<F, Fut>(period: Duration, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        round().await;
    }
}

/// Waits until this leader has applied everything committed before it was elected (a
/// linearizable read barrier), trying again until it succeeds or the term ends.
async fn caught_up(node: &RaftNode) {
    while node.read_barrier(true).await.is_err() {
        tokio::time::sleep(SCAN_EVERY).await;
    }
}

async fn until_cancelled<T>(term: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = term.cancelled() => None,
        done = work => Some(done),
    }
}

/// Names the cluster once, right after it forms.
async fn name_cluster(duties: &Duties) {
    if !duties.node.view().load().cluster_id().is_empty() {
        return;
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = duties.writer.write(Command::InitCluster { id }).await {
        tracing::warn!(error = %e, "could not name the cluster");
    }
}

async fn expire_sessions(duties: &Duties) {
    for id in duties.sessions.expired(Instant::now()) {
        tracing::info!(session = %id, "session TTL expired");
        match duties
            .writer
            .write(Command::SessionDestroy { id: id.clone() })
            .await
        {
            Ok(_) => duties.sessions.forget(&id),
            Err(e) => tracing::warn!(session = %id, error = %e, "could not expire session"),
        }
    }
}

/// Reaps the KV tombstones older than `TOMBSTONE_TTL`, as Consul's leader does: it samples the
/// applied index every `TOMBSTONE_GRANULARITY` and, once a sample is older than the TTL,
/// proposes to forget every tombstone at or below it. A new leader starts sampling afresh, so
/// a tombstone is never reaped early. Never returns.
async fn reap_tombstones(duties: &Duties) {
    let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(TOMBSTONE_GRANULARITY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let state = duties.node.view().load();
        samples.push_back((now, state.indexes().last));
        let mut up_to = None;
        while let Some(&(at, index)) = samples.front() {
            if now.duration_since(at) < TOMBSTONE_TTL {
                break;
            }
            up_to = Some(index);
            samples.pop_front();
        }
        let Some(up_to) = up_to else { continue };
        if !state.kv_has_tombstones_up_to(up_to) {
            continue;
        }
        if let Err(e) = duties.writer.write(Command::KvReap { up_to }).await {
            tracing::warn!(error = %e, up_to, "could not reap KV tombstones; will retry");
        }
    }
}

/// Removes one voter the leader has not reached for `threshold`, if the voters that remain
/// healthy still form a majority of the current configuration.
async fn remove_dead_server(node: &RaftNode, leader_since: Instant, threshold: Duration) {
    let members = node.members();
    let voters: Vec<_> = members.iter().filter(|m| m.voter).collect();
    let dead: Vec<_> = voters
        .iter()
        .filter(|m| m.id != node.id())
        .filter(|m| {
            let last = node
                .contacts()
                .last(m.id)
                .unwrap_or(leader_since)
                .max(leader_since);
            last.elapsed() > threshold
        })
        .collect();
    let Some(victim) = dead.first() else { return };
    let healthy = voters.len() - dead.len();
    if healthy * 2 <= voters.len() {
        tracing::warn!(
            dead = dead.len(),
            voters = voters.len(),
            "dead servers, but removing them would lose the majority"
        );
        return;
    }
    tracing::info!(server = %victim.name, addr = %victim.address, "autopilot: removing dead server");
    // A change waits for its commit; without a quorum for the new configuration it would wait
    // forever, so give up and look again.
    match tokio::time::timeout(LEADER_HOLD, node.remove_server(victim.id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "autopilot could not remove a dead server"),
        Err(_) => tracing::warn!(
            server = %victim.name,
            "autopilot: removing a dead server did not commit in time; will retry"
        ),
    }
}
