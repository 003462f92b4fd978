//! The catalog follows the gossip pool (Consul's `leader.reconcileMember` and
//! `reconcileReaped`), on the leader only: after every membership change, after every leader
//! change (the new leader compares the whole pool with the catalog) and every 60 s.
//!
//! - alive member → its node is registered with the member's address and a passing
//!   `serfHealth` check; an alive server of this datacenter missing from Raft is added;
//! - failed → `serfHealth` critical, so its services leave DNS and the sessions linked to the
//!   check are invalidated;
//! - left → the node (services, checks) is deregistered; a server also leaves Raft;
//! - reaped (gone from the pool after `reconnect_timeout`) → a node that has a `serfHealth`
//!   check, and so was put there by the pool, is deregistered. Nodes registered only through
//!   the catalog API have none and are left alone, as in Consul. This server's pool lives in
//!   memory (Consul keeps a Serf snapshot on disk), so a member it never listed (one that failed
//!   before this server started) is reaped only once it has been absent for `reconnect_timeout`.
//!
//! Catalog changes come first in a round; Raft membership changes (which wait for a quorum)
//! after them, so a slow one never delays a failed node leaving DNS. Raft servers are matched by
//! node name, which both the pool and Raft carry.
//!
//! Every step is idempotent: a round that finds the catalog in step writes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::SERF_HEALTH;
use crate::catalog::{Command, Registration, State};
use crate::cluster::{Gossip, PoolMember, Writer};
use crate::model::{CheckSpec, CheckStatus, NodeSpec};
use crate::raft::{LEADER_HOLD, RaftNode};

/// Consul's `reconcile_interval`.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// A leader that has just been elected may not know every member yet (they gossip in over a
/// few probe rounds): absent members are reaped only after it has led this long.
const REAP_GRACE: Duration = Duration::from_secs(30);

const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// What reconciliation remembers from one term to the next: the members this server's pool
/// has listed (lower-cased names), so it knows which absent ones the pool reaped itself.
#[derive(Default)]
pub struct Memory {
    seen: Mutex<HashSet<String>>,
}

/// What reconciliation needs.
pub struct Reconciler {
    pub node: RaftNode,
    pub writer: Arc<dyn Writer>,
    pub gossip: Arc<dyn Gossip>,
    pub datacenter: String,
    pub reconnect_timeout: Duration,
    pub memory: Arc<Memory>,
}

impl Reconciler {
    /// Runs for the whole term: a round now, after every membership change and every 60 s.
    pub async fn run(self) {
        let since = Instant::now();
        let mut changes = self.gossip.changes();
        // Nodes with `serfHealth` that this pool never listed, and since when they are absent.
        let mut absent: HashMap<String, Instant> = HashMap::new();
        loop {
            self.round(since.elapsed() >= REAP_GRACE, &mut absent).await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
            // Membership changes come in bursts (a node and its detection by several
            // members): one round for the burst.
            tokio::time::sleep(Duration::from_millis(50)).await;
            changes.borrow_and_update();
        }
    }

    async fn round(&self, reap: bool, absent: &mut HashMap<String, Instant>) {
        let members: Vec<PoolMember> = self
            .gossip
            .members()
            .into_iter()
            .filter(|m| {
                m.tags
                    .get("dc")
                    .is_none_or(|dc| dc.eq_ignore_ascii_case(&self.datacenter))
            })
            .collect();
        let state = self.node.view().load();
        for member in &members {
            let command = match member.status {
                PoolMember::ALIVE => alive(&state, member),
                PoolMember::FAILED => failed(&state, member),
                PoolMember::LEFT => left(&state, member),
                _ => None,
            };
            if let Some(command) = command {
                self.write(command, &member.name).await;
            }
        }
        if reap {
            for node in self.reapable(&state, &members, absent) {
                tracing::info!(node = %node, "reaping a node that left the gossip pool");
                self.write(
                    Command::Deregister {
                        node: node.clone(),
                        service_id: None,
                        check_id: None,
                    },
                    &node,
                )
                .await;
            }
        }
        for member in members.iter().filter(|m| m.is_server()) {
            match member.status {
                PoolMember::ALIVE => self.add_server(member).await,
                PoolMember::LEFT => self.remove_server(member).await,
                _ => {}
            }
        }
    }

    /// The absent nodes to reap now: those the pool listed before (it reaped them after
    /// `reconnect_timeout`, or they were pruned), and those it never listed once they have been
    /// absent for `reconnect_timeout`.
    fn reapable(
        &self,
        state: &State,
        members: &[PoolMember],
        absent: &mut HashMap<String, Instant>,
    ) -> Vec<String> {
        let mut seen = self.memory.seen.lock().expect("reconcile memory lock");
        seen.extend(members.iter().map(|m| m.name.to_ascii_lowercase()));
        let gone = reaped(state, members);
        absent.retain(|node, _| gone.contains(node));
        gone.into_iter()
            .filter(|node| {
                let key = node.to_ascii_lowercase();
                if seen.remove(&key) {
                    return true;
                }
                let since = *absent.entry(node.clone()).or_insert_with(Instant::now);
                since.elapsed() >= self.reconnect_timeout
            })
            .collect()
    }

    async fn write(&self, command: Command, node: &str) {
        match self.writer.write(command).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(node, error = %e, "reconciling a member: refused"),
            Err(e) => tracing::warn!(node, error = %e, "reconciling a member failed; will retry"),
        }
    }

    /// Adds an alive server of this datacenter that Raft does not have (a new server, or one
    /// that left or was removed and came back with its data dir).
    async fn add_server(&self, member: &PoolMember) {
        let Some(rpc) = member.rpc_addr() else { return };
        let rpc = rpc.to_string();
        // A learner is not done: an earlier term may have added it and lost leadership before
        // promoting it.
        if member.name.eq_ignore_ascii_case(&self.node.me().name)
            || self
                .node
                .members()
                .iter()
                .any(|m| m.name.eq_ignore_ascii_case(&member.name) && m.voter)
        {
            return;
        }
        let info = match self.node.client().info(&rpc).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(server = %member.name, error = %e, "cannot ask a new server who it is yet");
                return;
            }
        };
        let ours = self.node.view().load().cluster_id().to_string();
        if !info.cluster_id.is_empty() && !ours.is_empty() && info.cluster_id != ours {
            tracing::warn!(server = %member.name, theirs = %info.cluster_id, "a server of another cluster is in the gossip pool; not adding it");
            return;
        }
        tracing::info!(server = %member.name, addr = %rpc, "adding a server seen in the gossip pool to Raft");
        match tokio::time::timeout(LEADER_HOLD * 4, self.node.add_server(info.id, info.node)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(server = %member.name, error = %e, "could not add a server; will retry")
            }
            Err(_) => {
                tracing::warn!(server = %member.name, "adding a server did not finish in time; will retry")
            }
        }
    }

    /// A server that left the pool leaves Raft (it ran `leave`, or was force-left).
    async fn remove_server(&self, member: &PoolMember) {
        let Some(server) = self
            .node
            .members()
            .into_iter()
            .find(|m| m.name.eq_ignore_ascii_case(&member.name) && m.id != self.node.id())
        else {
            return;
        };
        tracing::info!(server = %member.name, "removing a server that left the gossip pool from Raft");
        if let Ok(Err(e)) =
            tokio::time::timeout(LEADER_HOLD, self.node.remove_server(server.id)).await
        {
            tracing::warn!(server = %member.name, error = %e, "could not remove a server that left");
        }
    }
}

fn serf_check(status: CheckStatus, output: &str) -> CheckSpec {
    CheckSpec {
        check_id: SERF_HEALTH.into(),
        name: "Serf Health Status".into(),
        status: Some(status),
        output: output.into(),
        ..CheckSpec::default()
    }
}

/// The registration an alive member needs, if any: its node at the member's address (meta
/// and tagged addresses as the node has them), with `serfHealth` passing.
fn alive(state: &State, member: &PoolMember) -> Option<Command> {
    let address = member.addr.ip().to_string();
    let node = state.node(&member.name);
    let check = state.check(&member.name, SERF_HEALTH);
    let in_step = node.is_some_and(|n| n.address == address)
        && check.is_some_and(|c| c.status == CheckStatus::Passing);
    if in_step {
        return None;
    }
    let spec = match node {
        Some(n) => NodeSpec {
            address: address.into(),
            ..n.spec.clone()
        },
        None => NodeSpec {
            id: member.tags.get("id").cloned().unwrap_or_default().into(),
            name: member.name.clone().into(),
            address: address.into(),
            datacenter: member.tags.get("dc").cloned().unwrap_or_default().into(),
            ..NodeSpec::default()
        },
    };
    Some(Command::Register(Box::new(Registration {
        node: spec,
        checks: vec![serf_check(CheckStatus::Passing, ALIVE_OUTPUT)],
        ..Registration::default()
    })))
}

/// A failed member's `serfHealth` goes critical (its node is registered if it was not).
fn failed(state: &State, member: &PoolMember) -> Option<Command> {
    let check = state.check(&member.name, SERF_HEALTH);
    if check.is_some_and(|c| c.status == CheckStatus::Critical) {
        return None;
    }
    let spec = match state.node(&member.name) {
        Some(n) => n.spec.clone(),
        None => NodeSpec {
            id: member.tags.get("id").cloned().unwrap_or_default().into(),
            name: member.name.clone().into(),
            address: member.addr.ip().to_string().into(),
            datacenter: member.tags.get("dc").cloned().unwrap_or_default().into(),
            ..NodeSpec::default()
        },
    };
    Some(Command::Register(Box::new(Registration {
        node: spec,
        skip_node_update: true,
        checks: vec![serf_check(CheckStatus::Critical, FAILED_OUTPUT)],
        ..Registration::default()
    })))
}

/// A member that left is deregistered with everything on it.
fn left(state: &State, member: &PoolMember) -> Option<Command> {
    state.node(&member.name)?;
    Some(Command::Deregister {
        node: member.name.clone(),
        service_id: None,
        check_id: None,
    })
}

/// Nodes put in the catalog by the pool (they have `serfHealth`) whose member is gone.
fn reaped(state: &State, members: &[PoolMember]) -> Vec<String> {
    state
        .all_checks()
        .filter(|c| c.check_id == SERF_HEALTH)
        .filter(|c| !members.iter().any(|m| m.name.eq_ignore_ascii_case(&c.node)))
        .map(|c| c.node.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Applied;

    fn member(name: &str, ip: &str, status: u8) -> PoolMember {
        PoolMember {
            name: name.into(),
            addr: format!("{ip}:8301").parse().unwrap(),
            tags: [("role", "node"), ("dc", "dc1"), ("id", "a-b-c")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            status,
        }
    }

    fn apply(state: &mut State, command: &Command) {
        let index = state.indexes().last + 1;
        let outcome = state.apply(index, 0, command, &mut Vec::new());
        assert_eq!(outcome, Ok(Applied::Done), "{command:?}");
    }

    #[test]
    fn an_alive_member_is_registered_once_with_a_passing_serf_health() {
        let mut state = State::new();
        let m = member("web-1", "10.0.0.5", PoolMember::ALIVE);
        let register = alive(&state, &m).expect("a new member is registered");
        apply(&mut state, &register);
        let node = state.node("web-1").unwrap();
        assert_eq!(node.address, "10.0.0.5");
        assert_eq!(node.id, "a-b-c");
        let check = state.check("web-1", SERF_HEALTH).unwrap();
        assert_eq!(check.status, CheckStatus::Passing);
        assert!(alive(&state, &m).is_none(), "in step: nothing to write");
    }

    #[test]
    fn an_alive_member_keeps_its_node_meta_and_moves_to_its_new_address() {
        let mut state = State::new();
        apply(
            &mut state,
            &Command::Register(Box::new(Registration {
                node: NodeSpec {
                    name: "web-1".into(),
                    address: "10.0.0.5".into(),
                    meta: [("rack".to_string(), "r1".to_string())]
                        .into_iter()
                        .collect(),
                    ..NodeSpec::default()
                },
                ..Registration::default()
            })),
        );
        let moved = member("web-1", "10.0.0.9", PoolMember::ALIVE);
        let command = alive(&state, &moved).unwrap();
        apply(&mut state, &command);
        let node = state.node("web-1").unwrap();
        assert_eq!(node.address, "10.0.0.9");
        assert_eq!(node.meta.get("rack").map(String::as_str), Some("r1"));
    }

    #[test]
    fn failed_turns_serf_health_critical_and_left_deregisters() {
        let mut state = State::new();
        let m = member("web-1", "10.0.0.5", PoolMember::ALIVE);
        let command = alive(&state, &m).unwrap();
        apply(&mut state, &command);
        let failed_member = PoolMember {
            status: PoolMember::FAILED,
            ..m.clone()
        };
        let command = failed(&state, &failed_member).unwrap();
        apply(&mut state, &command);
        let check = state.check("web-1", SERF_HEALTH).unwrap();
        assert_eq!(check.status, CheckStatus::Critical);
        assert_eq!(check.output, FAILED_OUTPUT);
        assert!(failed(&state, &failed_member).is_none(), "already critical");
        let left_member = PoolMember {
            status: PoolMember::LEFT,
            ..m
        };
        let command = left(&state, &left_member).unwrap();
        apply(&mut state, &command);
        assert!(state.node("web-1").is_none());
        assert!(left(&state, &left_member).is_none(), "already gone");
    }

    #[test]
    fn only_nodes_the_pool_put_there_are_reaped() {
        let mut state = State::new();
        let pooled = member("web-1", "10.0.0.5", PoolMember::ALIVE);
        let command = alive(&state, &pooled).unwrap();
        apply(&mut state, &command);
        // An external node, registered through the catalog API: no serfHealth.
        apply(
            &mut state,
            &Command::Register(Box::new(Registration {
                node: NodeSpec {
                    name: "external".into(),
                    address: "192.0.2.1".into(),
                    ..NodeSpec::default()
                },
                ..Registration::default()
            })),
        );
        assert!(reaped(&state, std::slice::from_ref(&pooled)).is_empty());
        assert_eq!(reaped(&state, &[]), ["web-1"]);
    }
}
