//! One service name as a topic of the event stream: the snapshot a server sends of it
//! ([`State::service_snapshot`]) and how a client agent's materialized view takes one in
//! ([`State::replace_service`], [`State::drop_service`]).
//!
//! A snapshot is everything `GET /v1/health/service/:name` and DNS read for the name: each
//! instance with its node and the checks bearing on its health, at the name's index (Consul's
//! `ServiceHealth` topic, whose events are `CheckServiceNode`s). The stream sends a whole
//! snapshot per change rather than per-instance deltas: a client applies it by replacement, so
//! resuming on another server, or after changes it coalesced, can neither miss nor repeat one.
//!
//! On a client, nodes and node checks are shared between the names it holds (one node may run
//! `web` and `db`), and the snapshots of two names may come from servers at different indexes.
//! Shared rows therefore keep whichever copy is newer by modify index; a node check missing
//! from a snapshot is dropped only if its copy is not newer than the snapshot (it did not exist
//! at the snapshot's index, so it was deleted), and a snapshot older than one already applied
//! for the node cannot bring back a node check absent here; a node goes once no instance held
//! here runs on it. An instance renamed from one name to another belongs to the name its newer row says.

use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::{Change, ItemKey, State, key};
use crate::model::{Check, Index, Node, Service};

/// A service name's instances at `index`: one push of the event stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSnapshot {
    /// The lower-cased service name.
    pub name: CompactString,
    /// The name's index (`State::service_index`) when the snapshot was taken; `X-Consul-Index`
    /// of a health query for it.
    pub index: Index,
    /// In the catalog's order (node, then service ID).
    pub instances: Vec<InstanceRow>,
    /// The cluster whose history `index` belongs to (`State::cluster_id`; empty before the
    /// cluster has one): indexes of two clusters do not compare.
    #[serde(default)]
    pub cluster_id: String,
}

/// One instance with its node and checks: node checks, then the service's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceRow {
    pub node: Node,
    pub service: Service,
    pub checks: Vec<Check>,
}

impl State {
    /// The snapshot of one service name (any case) as this state holds it.
    pub fn service_snapshot(&self, name: &str) -> ServiceSnapshot {
        ServiceSnapshot {
            name: key(name),
            index: self.service_index(name),
            instances: self
                .instances(name)
                .into_iter()
                .map(|i| InstanceRow {
                    node: i.node.clone(),
                    service: i.service.clone(),
                    checks: i.checks.into_iter().cloned().collect(),
                })
                .collect(),
            cluster_id: self.cluster_id().to_string(),
        }
    }

    /// Makes this state's copy of `snapshot.name` the snapshot's: its instances and their
    /// service checks replaced, its nodes and node checks merged (module doc), the name's
    /// index set to the snapshot's. Returns what changed, for the view's watchers.
    pub fn replace_service(&mut self, snapshot: ServiceSnapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        let name = key(&snapshot.name);
        let before = self.unlink_service(&name, &mut changes);
        let mut touched_nodes: Vec<CompactString> = Vec::new();
        for row in snapshot.instances {
            let node_key = key(&row.node.name);
            if self
                .nodes
                .get(&node_key)
                .is_none_or(|n| n.modify_index <= row.node.modify_index)
            {
                self.nodes.insert(node_key.clone(), Arc::new(row.node));
                changes.push(Change::Node(node_key.clone()));
            }
            if !touched_nodes.contains(&node_key) {
                touched_nodes.push(node_key.clone());
                self.drop_deleted_node_checks(&node_key, &row.checks, snapshot.index, &mut changes);
            }
            let floor = self.node_floors.get(&node_key).copied().unwrap_or(0);
            let item: ItemKey = (node_key.clone(), row.service.id.clone());
            if let Some(existing) = self.services.get(&item) {
                // The instance was renamed: the newer row decides which name has it.
                let other = key(&existing.name);
                if existing.modify_index > row.service.modify_index {
                    continue;
                }
                self.unlink_instance(&other, &item);
                changes.push(Change::ServiceIndex(other));
            }
            for check in row.checks {
                let check_key: ItemKey = (node_key.clone(), check.check_id.clone());
                // Absent here, from a snapshot older than one that had this node: deleted
                // since, not new (a newer check would be above that snapshot's index too).
                let newer = match self.checks.get(&check_key) {
                    Some(c) => c.modify_index <= check.modify_index,
                    None => snapshot.index >= floor,
                };
                if !check.service_id.is_empty() || newer {
                    self.checks.insert(check_key.clone(), Arc::new(check));
                    changes.push(Change::Check(check_key));
                }
            }
            self.by_service
                .entry(name.clone())
                .or_default()
                .insert(item.clone());
            self.services.insert(item.clone(), Arc::new(row.service));
            changes.push(Change::Service(item));
        }
        for node_key in touched_nodes {
            let floor = self.node_floors.entry(node_key).or_default();
            *floor = (*floor).max(snapshot.index);
        }
        for node_key in before {
            self.drop_node_if_unused(&node_key, &mut changes);
        }
        self.service_indexes.insert(name.clone(), snapshot.index);
        let i = &mut self.indexes;
        for table in [&mut i.nodes, &mut i.services, &mut i.checks, &mut i.last] {
            *table = (*table).max(snapshot.index);
        }
        changes.push(Change::ServiceIndex(name));
        changes
    }

    /// Forgets a service name (a view that went idle): its instances, their checks, and the
    /// nodes no other name held here runs on.
    pub fn drop_service(&mut self, name: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        let name = key(name);
        for node_key in self.unlink_service(&name, &mut changes) {
            self.drop_node_if_unused(&node_key, &mut changes);
        }
        self.service_indexes.remove(&name);
        changes.push(Change::ServiceIndex(name));
        changes
    }

    /// Removes every instance of `name` with its service checks; the nodes they ran on.
    fn unlink_service(&mut self, name: &str, changes: &mut Vec<Change>) -> Vec<CompactString> {
        let Some(items) = self.by_service.remove(name) else {
            return Vec::new();
        };
        let mut nodes: Vec<CompactString> = Vec::new();
        for item in items.iter() {
            if !nodes.contains(&item.0) {
                nodes.push(item.0.clone());
            }
            // Renamed, and the other name's newer snapshot came first: that row is not ours.
            if self.services.get(item).is_none_or(|s| key(&s.name) != name) {
                continue;
            }
            self.services.remove(item);
            changes.push(Change::Service(item.clone()));
            let own: Vec<ItemKey> = self
                .node_checks(&item.0)
                .filter(|c| c.service_id == item.1)
                .map(|c| (item.0.clone(), c.check_id.clone()))
                .collect();
            for check in own {
                self.checks.remove(&check);
                changes.push(Change::Check(check));
            }
        }
        nodes
    }

    /// Node checks of `node_key` held here but absent from a snapshot at `index` whose copy
    /// is not newer than it: deleted by then.
    fn drop_deleted_node_checks(
        &mut self,
        node_key: &CompactString,
        incoming: &[Check],
        index: Index,
        changes: &mut Vec<Change>,
    ) {
        let gone: Vec<ItemKey> = self
            .node_checks(node_key)
            .filter(|c| c.service_id.is_empty() && c.modify_index <= index)
            .filter(|c| !incoming.iter().any(|i| i.check_id == c.check_id))
            .map(|c| (node_key.clone(), c.check_id.clone()))
            .collect();
        for check in gone {
            self.checks.remove(&check);
            changes.push(Change::Check(check));
        }
    }

    /// Drops a node and its node checks once no instance held here runs on it.
    fn drop_node_if_unused(&mut self, node_key: &CompactString, changes: &mut Vec<Change>) {
        if self.node_services(node_key).next().is_some() {
            return;
        }
        let checks: Vec<ItemKey> = self
            .node_checks(node_key)
            .map(|c| (node_key.clone(), c.check_id.clone()))
            .collect();
        for check in checks {
            self.checks.remove(&check);
            changes.push(Change::Check(check));
        }
        if self.nodes.remove(node_key).is_some() {
            changes.push(Change::Node(node_key.clone()));
        }
        self.node_floors.remove(node_key);
    }
}
