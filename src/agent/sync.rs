//! Anti-entropy on a client agent (Consul's `agent/ae`): the agent's local state
//! (`agent::local`) is the truth for its own node, and the servers' catalog is made to match.
//!
//! Each round compares the local node, services and checks with the agent's copy of the
//! servers' catalog and pushes the differences: missing or altered entries are registered
//! again, entries of this node the agent no longer has are deregistered. A round runs at once
//! after every local change and fully every `ae_interval` (scaled up with the pool's size, as
//! Consul does), so entries deleted or altered on the servers come back. `serfHealth` belongs
//! to the leader (it follows the gossip pool) and is left alone. A check whose output changed
//! without a status change is pushed at most every `check_update_interval`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::SERF_HEALTH;
use crate::catalog::{Command, Registration};
use crate::cluster::Writer;
use crate::model::{Check, CheckSpec, NodeSpec};
use crate::view::View;

/// What anti-entropy works with.
pub struct AntiEntropy {
    /// This agent's node name.
    pub node: String,
    /// The agent's own state (the truth).
    pub local: View,
    /// The agent's copy of the servers' catalog.
    pub catalog: View,
    /// Writes to the servers.
    pub servers: Arc<dyn Writer>,
    /// Notified on every local change.
    pub changed: Arc<Notify>,
    pub ae_interval: Duration,
    pub check_update_interval: Duration,
    /// The number of members in the gossip pool, for scaling `ae_interval`.
    pub pool_size: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// Consul's `ae.scaleFactor`: the interval grows with log2 of the pool's size beyond 128 nodes.
fn scaled(interval: Duration, nodes: usize) -> Duration {
    const THRESHOLD: f64 = 128.0;
    if nodes as f64 <= THRESHOLD {
        return interval;
    }
    let factor = ((nodes as f64 / THRESHOLD).log2().ceil() + 1.0) as u32;
    interval * factor
}

impl AntiEntropy {
    /// Runs until `stop`: a round after each local change, a full one every interval, and a
    /// retry with backoff after a round that could not reach the servers.
    pub async fn run(self, stop: tokio_util::sync::CancellationToken) {
        // When each check's output was last pushed without a status change.
        let mut output_synced: HashMap<String, Instant> = HashMap::new();
        let mut next_full = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            let full = Instant::now() >= next_full;
            match self.round(&mut output_synced).await {
                Ok(pushed) => {
                    if pushed > 0 {
                        tracing::debug!(pushed, full, "anti-entropy synced this node");
                    }
                    pause = Duration::from_millis(200);
                    if full {
                        next_full = Instant::now()
                            + scaled(self.ae_interval, (self.pool_size)())
                            // Consul staggers full syncs so agents do not all sync at once.
                            + Duration::from_millis(rand::random::<u64>() % 1000);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?pause, "anti-entropy could not sync this node with the servers");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(next_full) => {}
            }
        }
    }

    /// One comparison and the writes it calls for; the number of writes.
    async fn round(&self, output_synced: &mut HashMap<String, Instant>) -> Result<usize, String> {
        let local = self.local.load();
        let remote = self.catalog.load();
        let mut writes = Vec::new();
        let mut pushed_checks = Vec::new();
        let Some(node) = local.node(&self.node) else {
            // Not registered locally yet (start-up).
            return Ok(0);
        };
        let node_spec = node.spec.clone();
        let remote_node = remote.node(&self.node);
        if remote_node.is_none_or(|n| !same_node(&n.spec, &node_spec)) {
            writes.push(Command::Register(Box::new(Registration {
                node: node_spec.clone(),
                ..Registration::default()
            })));
        }
        for service in local.node_services(&self.node) {
            let differs = remote
                .service(&self.node, &service.id)
                .is_none_or(|r| r.spec != service.spec);
            if differs {
                // With its checks, in one write, as Consul's `syncService`: written apart, a
                // new service would be healthy (no checks) until its checks' write landed.
                let checks: Vec<&Check> = local
                    .node_checks(&self.node)
                    .filter(|c| c.service_id == service.id)
                    .collect();
                pushed_checks.extend(checks.iter().map(|c| c.check_id.clone()));
                writes.push(Command::Register(Box::new(Registration {
                    node: node_spec.clone(),
                    skip_node_update: true,
                    service: Some(service.spec.clone()),
                    checks: checks.into_iter().map(spec_of).collect(),
                    replace_existing_checks: false,
                })));
            }
        }
        for check in local.node_checks(&self.node) {
            if pushed_checks.contains(&check.check_id) {
                continue;
            }
            let push = match remote.check(&self.node, &check.check_id) {
                None => true,
                Some(r) if !same_check(r, check) => true,
                Some(r) if r.output != check.output => {
                    // Output alone: at most every check_update_interval.
                    output_synced
                        .get(check.check_id.as_str())
                        .is_none_or(|at| at.elapsed() >= self.check_update_interval)
                }
                Some(_) => false,
            };
            if push {
                pushed_checks.push(check.check_id.clone());
                writes.push(Command::Register(Box::new(Registration {
                    node: node_spec.clone(),
                    skip_node_update: true,
                    service: None,
                    checks: vec![spec_of(check)],
                    replace_existing_checks: false,
                })));
            }
        }
        for service in remote.node_services(&self.node) {
            if local.service(&self.node, &service.id).is_none() {
                writes.push(Command::Deregister {
                    node: self.node.clone(),
                    service_id: Some(service.id.to_string()),
                    check_id: None,
                });
            }
        }
        for check in remote.node_checks(&self.node) {
            if check.check_id != SERF_HEALTH && local.check(&self.node, &check.check_id).is_none() {
                writes.push(Command::Deregister {
                    node: self.node.clone(),
                    service_id: None,
                    check_id: Some(check.check_id.to_string()),
                });
            }
        }
        let count = writes.len();
        for command in writes {
            match self.servers.write(command).await {
                Ok(Ok(_)) => {}
                Ok(Err(refused)) => {
                    tracing::warn!(error = %refused, "the servers refused an anti-entropy write")
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        // Only once they were written: an output held back by a failed round goes next time.
        let now = Instant::now();
        for check in pushed_checks {
            output_synced.insert(check.into(), now);
        }
        Ok(count)
    }
}

fn same_node(remote: &NodeSpec, local: &NodeSpec) -> bool {
    remote.name == local.name
        && remote.address == local.address
        && (local.id.is_empty() || remote.id == local.id)
        && remote.tagged_addresses == local.tagged_addresses
        && remote.meta == local.meta
}

/// Equal but for the output (and the indexes, which differ between the two states).
fn same_check(remote: &Check, local: &Check) -> bool {
    remote.name == local.name
        && remote.status == local.status
        && remote.notes == local.notes
        && remote.service_id == local.service_id
        && remote.definition == local.definition
}

fn spec_of(check: &Check) -> CheckSpec {
    CheckSpec {
        check_id: check.check_id.clone(),
        name: check.name.clone(),
        status: Some(check.status),
        notes: check.notes.clone(),
        output: check.output.clone(),
        service_id: check.service_id.clone(),
        definition: (*check.definition).clone(),
    }
}
