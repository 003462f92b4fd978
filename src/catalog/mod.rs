//! The catalog: a pure, deterministic state machine of nodes, services and checks.
//!
//! `State::apply` is the only way the catalog changes; every server applies the same Raft log and
//! reaches the same state. Nothing here knows about DNS, HTTP, Raft, redb or the clock.
//! The maps are persistent (`imbl`), so cloning a `State` is O(1) and shares structure: after
//! each applied batch the store publishes a clone through `view::View`, and readers (DNS, HTTP)
//! never block the writer or each other. No tokio, no clock, no I/O: time reaches `apply` only
//! as the proposer's timestamp inside each `Request`.

mod command;
mod kv;
mod topic;

pub use kv::{SESSION_TTL_MAX, SESSION_TTL_MIN};
pub use topic::{InstanceRow, ServiceSnapshot};

pub use command::{
    Applied, ApplyError, Command, Outcome, Proposal, Registration, Request, TxnError, TxnOp,
    ZSTD_MAGIC,
};

use std::sync::Arc;

use compact_str::CompactString;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::model::{
    Check, CheckSpec, CheckStatus, Index, KvEntry, Node, Service, ServiceSpec, Session,
};

/// Key of a service instance or a check: (lower-cased node name, ID).
pub type ItemKey = (CompactString, CompactString);

/// Per-table modification indexes, the basis of `X-Consul-Index`. Deletions advance them too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indexes {
    /// The last Raft index applied (any entry, including ones that changed nothing).
    pub last: Index,
    pub nodes: Index,
    pub services: Index,
    pub checks: Index,
    pub kv: Index,
    pub sessions: Index,
    /// The least index a KV read answers with: the Raft index of the last snapshot restore,
    /// or of the newest tombstone reaped since. Keeps KV indexes monotonic once tombstones go.
    #[serde(default)]
    pub kv_floor: Index,
}

/// A row the last `apply` touched, so the store persists only what changed.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    Node(CompactString),
    Service(ItemKey),
    Check(ItemKey),
    /// The per-service-name index of this (lower-cased) service name moved.
    ServiceIndex(CompactString),
    Kv(String),
    Session(String),
    LockDelay(String),
    /// A key's tombstone was written or removed.
    Tombstone(String),
    ClusterId,
    /// Everything was replaced (a snapshot restore): rewrite every row.
    Everything,
}

/// A service instance with its node and every check that bears on its health.
#[derive(Clone, Debug)]
pub struct Instance<'a> {
    pub node: &'a Node,
    pub service: &'a Service,
    /// Node checks first, then the service's own checks.
    pub checks: Vec<&'a Check>,
}

impl Instance<'_> {
    /// The worst status among the checks; passing when there are none (as Consul).
    pub fn status(&self) -> CheckStatus {
        aggregate(self.checks.iter().map(|c| c.status))
    }
}

/// Worst of several statuses; passing for none.
pub fn aggregate(statuses: impl IntoIterator<Item = CheckStatus>) -> CheckStatus {
    statuses.into_iter().max().unwrap_or(CheckStatus::Passing)
}

/// The whole catalog.
///
/// Records are held behind `Arc`: a write after a publish copies the map nodes on its path
/// (persistent maps), and copying a node then clones 64 pointers instead of 64 records with
/// their strings and maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    nodes: OrdMap<CompactString, Arc<Node>>,
    services: OrdMap<ItemKey, Arc<Service>>,
    checks: OrdMap<ItemKey, Arc<Check>>,
    /// Lower-cased service name → its instances; what DNS and `/health/service` look up.
    by_service: OrdMap<CompactString, InstanceSet>,
    /// Lower-cased service name → index of the last change to its instances or their health.
    service_indexes: OrdMap<CompactString, Index>,
    kv: OrdMap<String, KvEntry>,
    sessions: OrdMap<String, Session>,
    /// Key → wall-clock ms until which it cannot be acquired (set when a session holding it
    /// is invalidated). Part of the state so every replica decides acquires alike.
    lock_delays: OrdMap<String, u64>,
    /// Deleted key → index of its deletion (Consul's KV graveyard): a prefix read answers with
    /// the highest index under the prefix, removed keys included, so a delete wakes its watchers
    /// and the index never goes back. Reaped by the leader after `leader::TOMBSTONE_TTL`.
    kv_tombstones: OrdMap<String, Index>,
    /// Set once when the cluster forms; a data dir of another cluster is refused by it.
    cluster_id: String,
    /// Only in a client agent's copy (`topic`): per node, the highest index of a snapshot
    /// applied with it, below which a snapshot may not bring back a node check. Empty on a
    /// server, and never persisted.
    node_floors: OrdMap<CompactString, Index>,
    indexes: Indexes,
}

/// The instances of one service name, in key order.
///
/// Most services have a handful of instances, and a persistent set allocates a 16-slot node
/// for each (~800 bytes: 16 MB of the catalog's memory at 20k services). Up to `SMALL_SET`
/// instances a shared sorted slice holds them instead, rebuilt on each change (copy-on-write,
/// as the maps are); a larger service keeps a persistent set, so adding an instance to it
/// stays O(log n).
#[derive(Clone, Debug)]
enum InstanceSet {
    Small(Arc<[ItemKey]>),
    Large(OrdSet<ItemKey>),
}

/// Instances held in a sorted slice at most; a set that shrinks to half of it goes back to one.
const SMALL_SET: usize = 16;

impl Default for InstanceSet {
    fn default() -> Self {
        InstanceSet::Small(Arc::new([]))
    }
}

impl PartialEq for InstanceSet {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl InstanceSet {
    fn insert(&mut self, item: ItemKey) {
        match self {
            InstanceSet::Small(items) => match items.binary_search(&item) {
                Ok(_) => {}
                Err(at) if items.len() < SMALL_SET => {
                    let mut grown = Vec::with_capacity(items.len() + 1);
                    grown.extend_from_slice(&items[..at]);
                    grown.push(item);
                    grown.extend_from_slice(&items[at..]);
                    *items = grown.into();
                }
                Err(_) => {
                    let mut set: OrdSet<ItemKey> = items.iter().cloned().collect();
                    set.insert(item);
                    *self = InstanceSet::Large(set);
                }
            },
            InstanceSet::Large(set) => {
                set.insert(item);
            }
        }
    }

    fn remove(&mut self, item: &ItemKey) {
        match self {
            InstanceSet::Small(items) => {
                if let Ok(at) = items.binary_search(item) {
                    let (before, after) = (&items[..at], &items[at + 1..]);
                    *items = before.iter().chain(after).cloned().collect();
                }
            }
            InstanceSet::Large(set) => {
                set.remove(item);
                if set.len() <= SMALL_SET / 2 {
                    *self = InstanceSet::Small(set.iter().cloned().collect());
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            InstanceSet::Small(items) => items.is_empty(),
            InstanceSet::Large(set) => set.is_empty(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &ItemKey> {
        let (small, large) = match self {
            InstanceSet::Small(items) => (Some(items.iter()), None),
            InstanceSet::Large(set) => (None, Some(set.iter())),
        };
        small
            .into_iter()
            .flatten()
            .chain(large.into_iter().flatten())
    }
}

/// The catalog as plain rows: what the store persists and snapshots carry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    pub nodes: Vec<Node>,
    pub services: Vec<(CompactString, Service)>,
    pub checks: Vec<Check>,
    pub service_indexes: Vec<(CompactString, Index)>,
    #[serde(default)]
    pub kv: Vec<KvEntry>,
    #[serde(default)]
    pub sessions: Vec<Session>,
    #[serde(default)]
    pub lock_delays: Vec<(String, u64)>,
    #[serde(default)]
    pub kv_tombstones: Vec<(String, Index)>,
    #[serde(default)]
    pub cluster_id: String,
    pub indexes: Indexes,
}

/// A state serialized as its `Rows` are, straight from the maps: what snapshots are written
/// from, so a snapshot of a large catalog does not first copy every record (at 100k
/// instances the copy was ~70 MB that the allocator kept after each snapshot).
pub struct RowsOf<'a>(&'a State);

/// Serializes an iterator of known length as a sequence.
struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I> Seq<I> {
    fn of(iter: I) -> Self {
        Seq(std::cell::Cell::new(Some(iter)))
    }
}

impl<I> Serialize for Seq<I>
where
    I: ExactSizeIterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let iter = self
            .0
            .take()
            .ok_or_else(|| serde::ser::Error::custom("sequence serialized twice"))?;
        let mut seq = serializer.serialize_seq(Some(iter.len()))?;
        for item in iter {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

impl Serialize for RowsOf<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let state = self.0;
        // The fields of `Rows`, in its order, under its names.
        let mut rows = serializer.serialize_struct("Rows", 10)?;
        rows.serialize_field("nodes", &Seq::of(state.nodes.values().map(|n| &**n)))?;
        rows.serialize_field(
            "services",
            &Seq::of(state.services.iter().map(|((n, _), s)| (n, &**s))),
        )?;
        rows.serialize_field("checks", &Seq::of(state.checks.values().map(|c| &**c)))?;
        rows.serialize_field("service_indexes", &Seq::of(state.service_indexes.iter()))?;
        rows.serialize_field("kv", &Seq::of(state.kv.values()))?;
        rows.serialize_field("sessions", &Seq::of(state.sessions.values()))?;
        rows.serialize_field("lock_delays", &Seq::of(state.lock_delays.iter()))?;
        rows.serialize_field("kv_tombstones", &Seq::of(state.kv_tombstones.iter()))?;
        rows.serialize_field("cluster_id", &state.cluster_id)?;
        rows.serialize_field("indexes", &state.indexes)?;
        rows.end()
    }
}

/// Lower-cases a node or service name into its key.
pub fn key(name: &str) -> CompactString {
    let mut key = CompactString::from(name);
    key.make_ascii_lowercase();
    key
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a state from its rows (store load, snapshot install).
    pub fn from_rows(rows: Rows) -> Self {
        let mut state = State {
            indexes: rows.indexes,
            ..State::default()
        };
        for node in rows.nodes {
            state.nodes.insert(key(&node.name), Arc::new(node));
        }
        for (node_key, service) in rows.services {
            let item = (node_key, service.id.clone());
            state
                .by_service
                .entry(key(&service.name))
                .or_default()
                .insert(item.clone());
            state.services.insert(item, Arc::new(service));
        }
        for check in rows.checks {
            state
                .checks
                .insert((key(&check.node), check.check_id.clone()), Arc::new(check));
        }
        state.service_indexes = rows.service_indexes.into_iter().collect();
        state.kv = rows.kv.into_iter().map(|e| (e.key.clone(), e)).collect();
        state.sessions = rows
            .sessions
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        state.lock_delays = rows.lock_delays.into_iter().collect();
        state.kv_tombstones = rows.kv_tombstones.into_iter().collect();
        state.cluster_id = rows.cluster_id;
        state
    }

    /// The rows to serialize, borrowed: serializes exactly as `to_rows()` does.
    pub fn rows_of(&self) -> RowsOf<'_> {
        RowsOf(self)
    }

    pub fn to_rows(&self) -> Rows {
        Rows {
            kv: self.kv.values().cloned().collect(),
            sessions: self.sessions.values().cloned().collect(),
            lock_delays: self
                .lock_delays
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            kv_tombstones: self
                .kv_tombstones
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            ..self.catalog_rows()
        }
    }

    /// The nodes, services and checks only (no KV, sessions or tombstones): what a client
    /// agent's copy of the catalog holds.
    pub fn catalog_rows(&self) -> Rows {
        Rows {
            nodes: self.nodes.values().map(|n| (**n).clone()).collect(),
            services: self
                .services
                .iter()
                .map(|((n, _), s)| (n.clone(), (**s).clone()))
                .collect(),
            checks: self.checks.values().map(|c| (**c).clone()).collect(),
            service_indexes: self
                .service_indexes
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            kv: Vec::new(),
            sessions: Vec::new(),
            lock_delays: Vec::new(),
            kv_tombstones: Vec::new(),
            cluster_id: self.cluster_id.clone(),
            indexes: self.indexes,
        }
    }

    // === reads ===

    pub fn indexes(&self) -> Indexes {
        self.indexes
    }

    /// The index of the catalog proper (nodes, services, checks; not KV or sessions): what a
    /// client agent's copy of it follows (`remote::Servers::replicate`).
    pub fn catalog_index(&self) -> Index {
        let i = &self.indexes;
        i.nodes.max(i.services).max(i.checks)
    }

    /// The cluster's name, empty until the first leader sets it.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Names the cluster a client agent's views came from (`remote::views`); a server's
    /// is set only by its log (`Command::InitCluster`).
    pub fn set_cluster_id(&mut self, id: &str) {
        id.clone_into(&mut self.cluster_id);
    }

    /// Index of the last change to the instances (or health) of a service name; falls back to
    /// the services table index for a name never seen.
    pub fn service_index(&self, name: &str) -> Index {
        self.service_index_of_key(&key(name))
    }

    /// [`State::service_index`] of a name already lower-cased ([`key`]), without copying it.
    pub fn service_index_of_key(&self, key: &str) -> Index {
        self.recorded_service_index_of_key(key)
            .unwrap_or(self.indexes.services)
    }

    /// The index recorded for a service name, without the fallback of
    /// [`State::service_index`]: on a client agent's views, `Some` exactly while the name's view
    /// holds a snapshot (`catalog::topic`).
    pub fn recorded_service_index(&self, name: &str) -> Option<Index> {
        self.recorded_service_index_of_key(&key(name))
    }

    /// [`State::recorded_service_index`] of a name already lower-cased ([`key`]), without
    /// copying it: the DNS cache asks on every hit.
    pub fn recorded_service_index_of_key(&self, key: &str) -> Option<Index> {
        self.service_indexes.get(key).copied()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(&key(name)).map(Arc::as_ref)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(Arc::as_ref)
    }

    pub fn service(&self, node: &str, service_id: &str) -> Option<&Service> {
        self.services
            .get(&(key(node), CompactString::from(service_id)))
            .map(Arc::as_ref)
    }

    pub fn check(&self, node: &str, check_id: &str) -> Option<&Check> {
        self.checks
            .get(&(key(node), CompactString::from(check_id)))
            .map(Arc::as_ref)
    }

    /// Services registered on a node, by ID.
    pub fn node_services(&self, node: &str) -> impl Iterator<Item = &Service> {
        let node_key = key(node);
        self.services
            .range((node_key.clone(), CompactString::default())..)
            .take_while(move |((n, _), _)| *n == node_key)
            .map(|(_, s)| s.as_ref())
    }

    /// Checks on a node (node-level and service-level), by ID.
    pub fn node_checks(&self, node: &str) -> impl Iterator<Item = &Check> {
        let node_key = key(node);
        self.checks
            .range((node_key.clone(), CompactString::default())..)
            .take_while(move |((n, _), _)| *n == node_key)
            .map(|(_, c)| c.as_ref())
    }

    pub fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values().map(Arc::as_ref)
    }

    pub fn all_services(&self) -> impl Iterator<Item = (&Node, &Service)> {
        self.services
            .iter()
            .filter_map(|((n, _), s)| self.nodes.get(n).map(|node| (node.as_ref(), s.as_ref())))
    }

    /// True when any instance of this service name is registered (healthy or not).
    pub fn has_service(&self, name: &str) -> bool {
        self.by_service
            .get(&key(name))
            .is_some_and(|set| !set.is_empty())
    }

    /// Every instance of a service name (case-insensitive), with its checks.
    pub fn instances(&self, name: &str) -> Vec<Instance<'_>> {
        let Some(keys) = self.by_service.get(&key(name)) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|item| {
                let service = self.services.get(item)?.as_ref();
                let node = self.nodes.get(&item.0)?.as_ref();
                let checks = self
                    .node_checks(&item.0)
                    .filter(|c| c.service_id.is_empty() || c.service_id == service.id)
                    .collect();
                Some(Instance {
                    node,
                    service,
                    checks,
                })
            })
            .collect()
    }

    /// Service name → the union of its instances' tags, as `/v1/catalog/services` lists them.
    /// Only services on nodes `keep_node` accepts are listed (`?node-meta=` filters).
    pub fn service_names(
        &self,
        keep_node: impl Fn(&Node) -> bool,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (node, service) in self.all_services() {
            if !keep_node(node) {
                continue;
            }
            let tags = out.entry(service.name.to_string()).or_default();
            for tag in &service.tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
        }
        out
    }

    // === writes ===

    /// Applies one command at Raft index `index`, proposed at wall-clock `at_ms`, recording
    /// every touched row in `changes`. A refused command changes nothing.
    pub fn apply(
        &mut self,
        index: Index,
        at_ms: u64,
        command: &Command,
        changes: &mut Vec<Change>,
    ) -> Outcome {
        self.indexes.last = self.indexes.last.max(index);
        let outcome = match command {
            Command::Register(reg) => self.register(index, reg, changes).map(|()| Applied::Done),
            Command::Deregister {
                node,
                service_id,
                check_id,
            } => {
                self.deregister(
                    index,
                    node,
                    service_id.as_deref(),
                    check_id.as_deref(),
                    changes,
                );
                Ok(Applied::Done)
            }
            Command::UpdateCheck {
                node,
                check_id,
                status,
                output,
            } => self
                .update_check(index, node, check_id, *status, output.as_deref(), changes)
                .map(|()| Applied::Done),
            Command::KvSet {
                key,
                value,
                flags,
                cas,
            } => Ok(Applied::Bool(
                self.kv_set(index, key, value, *flags, *cas, changes),
            )),
            Command::KvDelete { key, recurse, cas } => Ok(Applied::Bool(
                self.kv_delete(index, key, *recurse, *cas, changes),
            )),
            Command::KvAcquire {
                key,
                value,
                flags,
                session,
            } => self
                .kv_acquire(index, at_ms, key, value, *flags, session, changes)
                .map(Applied::Bool),
            Command::KvRelease {
                key,
                value,
                flags,
                session,
            } => self
                .kv_release(index, key, value, *flags, session, changes)
                .map(Applied::Bool),
            Command::SessionCreate(session) => self
                .session_create(index, session, changes)
                .map(|()| Applied::Done),
            Command::SessionDestroy { id } => {
                self.session_destroy(index, at_ms, id, changes);
                Ok(Applied::Done)
            }
            Command::Txn(ops) => self.txn(index, at_ms, ops, changes).map(Applied::Txn),
            Command::KvReap { up_to } => {
                self.kv_reap(*up_to, changes);
                Ok(Applied::Done)
            }
            Command::InitCluster { id } => {
                if self.cluster_id.is_empty() {
                    self.cluster_id = id.clone();
                    changes.push(Change::ClusterId);
                }
                Ok(Applied::Done)
            }
            Command::Restore(rows) => {
                self.restore(index, rows, changes);
                Ok(Applied::Done)
            }
        };
        if matches!(
            command,
            Command::Register(_) | Command::Deregister { .. } | Command::UpdateCheck { .. }
        ) {
            // A linked check that went critical or away (or a node that left) invalidates
            // its sessions.
            self.invalidate_unhealthy_sessions(index, at_ms, changes);
        }
        outcome
    }

    /// Replaces the catalog with saved rows. The cluster keeps its own identity, and every
    /// index moves to this entry's so blocking clients see the change.
    fn restore(&mut self, index: Index, rows: &Rows, changes: &mut Vec<Change>) {
        let cluster_id = std::mem::take(&mut self.cluster_id);
        let mut restored = State::from_rows(rows.clone());
        restored.cluster_id = cluster_id;
        restored.indexes = Indexes {
            last: index,
            nodes: index,
            services: index,
            checks: index,
            kv: index,
            sessions: index,
            kv_floor: index,
        };
        let names: Vec<CompactString> = restored.service_indexes.keys().cloned().collect();
        for name in names {
            restored.service_indexes.insert(name, index);
        }
        *self = restored;
        changes.push(Change::Everything);
    }

    /// Marks the last applied index for entries that carry no command (blank, membership).
    pub fn note_applied(&mut self, index: Index) {
        self.indexes.last = self.indexes.last.max(index);
    }

    fn register(
        &mut self,
        index: Index,
        reg: &Registration,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if reg.node.name.is_empty() {
            return Err(ApplyError::MissingNode);
        }
        let node_key = key(&reg.node.name);
        if let Some(service) = &reg.service
            && service.name.is_empty()
        {
            return Err(ApplyError::MissingServiceName);
        }
        // Validate everything before touching anything, so a refusal changes nothing.
        for check in &reg.checks {
            let sid = &check.service_id;
            let in_this_reg = reg.service.as_ref().is_some_and(|s| s.id == *sid);
            if !sid.is_empty()
                && !in_this_reg
                && !self.services.contains_key(&(node_key.clone(), sid.clone()))
            {
                return Err(ApplyError::UnknownServiceForCheck(sid.to_string()));
            }
        }

        self.upsert_node(index, &node_key, reg, changes);

        if let Some(svc) = &reg.service {
            self.upsert_service(index, &node_key, svc, changes);
            if reg.replace_existing_checks {
                let keep: Vec<&str> = reg.checks.iter().map(|c| c.check_id.as_str()).collect();
                let stale: Vec<ItemKey> = self
                    .node_checks(&node_key)
                    .filter(|c| c.service_id == svc.id && !keep.contains(&c.check_id.as_str()))
                    .map(|c| (node_key.clone(), c.check_id.clone()))
                    .collect();
                for item in stale {
                    self.remove_check(index, &item, changes);
                }
            }
        }
        for check in &reg.checks {
            self.upsert_check(index, &node_key, &reg.node.name, check, changes);
        }
        Ok(())
    }

    fn upsert_node(
        &mut self,
        index: Index,
        node_key: &str,
        reg: &Registration,
        changes: &mut Vec<Change>,
    ) {
        let existing = self.nodes.get(node_key);
        if existing.is_some() && reg.skip_node_update {
            return;
        }
        let mut node = Node {
            spec: reg.node.clone(),
            create_index: index,
            modify_index: index,
        };
        if let Some(old) = existing {
            if node.id.is_empty() {
                node.spec.id = old.id.clone();
            }
            node.create_index = old.create_index;
            node.modify_index = old.modify_index;
            if **old == node {
                return;
            }
            node.modify_index = index;
        }
        self.nodes.insert(node_key.into(), Arc::new(node));
        self.indexes.nodes = index;
        changes.push(Change::Node(node_key.into()));
        self.touch_node_services(index, node_key, changes);
    }

    fn upsert_service(
        &mut self,
        index: Index,
        node_key: &str,
        svc: &ServiceSpec,
        changes: &mut Vec<Change>,
    ) {
        let item = (CompactString::from(node_key), svc.id.clone());
        let mut service = Service {
            spec: svc.clone(),
            create_index: index,
            modify_index: index,
        };
        if let Some(old) = self.services.get(&item) {
            service.create_index = old.create_index;
            service.modify_index = old.modify_index;
            if **old == service {
                return;
            }
            service.modify_index = index;
            if key(&old.name) != key(&service.name) {
                let old_name = key(&old.name);
                self.unlink_instance(&old_name, &item);
                self.bump_service(index, &old_name, changes);
            }
        }
        let name = key(&service.name);
        self.by_service
            .entry(name.clone())
            .or_default()
            .insert(item.clone());
        self.services.insert(item.clone(), Arc::new(service));
        self.indexes.services = index;
        changes.push(Change::Service(item));
        self.bump_service(index, &name, changes);
    }

    fn upsert_check(
        &mut self,
        index: Index,
        node_key: &str,
        node_name: &str,
        reg: &CheckSpec,
        changes: &mut Vec<Change>,
    ) {
        let item = (CompactString::from(node_key), reg.check_id.clone());
        let old = self.checks.get(&item);
        let status = reg
            .status
            .or(old.map(|c| c.status))
            .unwrap_or(CheckStatus::Critical);
        let output = match old {
            Some(old) if reg.output.is_empty() && reg.status.is_none() => old.output.clone(),
            _ => reg.output.clone(),
        };
        let mut check = Check {
            node: old
                .map(|c| c.node.clone())
                .unwrap_or_else(|| node_name.into()),
            check_id: reg.check_id.clone(),
            name: reg.name.clone(),
            status,
            notes: reg.notes.clone(),
            output,
            service_id: reg.service_id.clone(),
            definition: reg.definition.clone().shared(),
            create_index: index,
            modify_index: index,
        };
        if let Some(old) = old {
            check.create_index = old.create_index;
            check.modify_index = old.modify_index;
            if **old == check {
                return;
            }
            check.modify_index = index;
            if old.service_id != check.service_id {
                let previous = old.clone();
                self.bump_check_owner(index, &previous, changes);
            }
        }
        let owner = check.clone();
        self.checks.insert(item.clone(), Arc::new(check));
        self.indexes.checks = index;
        changes.push(Change::Check(item));
        self.bump_check_owner(index, &owner, changes);
    }

    fn update_check(
        &mut self,
        index: Index,
        node: &str,
        check_id: &str,
        status: CheckStatus,
        output: Option<&str>,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let item = (key(node), CompactString::from(check_id));
        let Some(old) = self.checks.get(&item) else {
            return Err(ApplyError::UnknownCheck(check_id.to_string()));
        };
        let output = output
            .map(str::to_string)
            .unwrap_or_else(|| old.output.clone());
        if old.status == status && old.output == output {
            return Ok(());
        }
        let mut check = (**old).clone();
        check.status = status;
        check.output = output;
        check.modify_index = index;
        let owner = check.clone();
        self.checks.insert(item.clone(), Arc::new(check));
        self.indexes.checks = index;
        changes.push(Change::Check(item));
        self.bump_check_owner(index, &owner, changes);
        Ok(())
    }

    fn deregister(
        &mut self,
        index: Index,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
        changes: &mut Vec<Change>,
    ) {
        let node_key = key(node);
        if !self.nodes.contains_key(&node_key) {
            return;
        }
        match (service_id, check_id) {
            (Some(sid), _) => self.remove_service(index, &(node_key, sid.into()), changes),
            (None, Some(cid)) => self.remove_check(index, &(node_key, cid.into()), changes),
            (None, None) => {
                let services: Vec<ItemKey> = self
                    .node_services(&node_key)
                    .map(|s| (node_key.clone(), s.id.clone()))
                    .collect();
                for item in services {
                    self.remove_service(index, &item, changes);
                }
                let checks: Vec<ItemKey> = self
                    .node_checks(&node_key)
                    .map(|c| (node_key.clone(), c.check_id.clone()))
                    .collect();
                for item in checks {
                    self.remove_check(index, &item, changes);
                }
                self.nodes.remove(&node_key);
                self.indexes.nodes = index;
                changes.push(Change::Node(node_key));
            }
        }
    }

    fn remove_service(&mut self, index: Index, item: &ItemKey, changes: &mut Vec<Change>) {
        let Some(service) = self.services.remove(item) else {
            return;
        };
        let name = key(&service.name);
        self.unlink_instance(&name, item);
        self.indexes.services = index;
        changes.push(Change::Service(item.clone()));
        self.bump_service(index, &name, changes);
        let checks: Vec<ItemKey> = self
            .node_checks(&item.0)
            .filter(|c| c.service_id == item.1)
            .map(|c| (item.0.clone(), c.check_id.clone()))
            .collect();
        for check in checks {
            self.remove_check(index, &check, changes);
        }
    }

    fn remove_check(&mut self, index: Index, item: &ItemKey, changes: &mut Vec<Change>) {
        if let Some(check) = self.checks.remove(item) {
            self.indexes.checks = index;
            changes.push(Change::Check(item.clone()));
            self.bump_check_owner(index, &check, changes);
        }
    }

    fn unlink_instance(&mut self, name: &str, item: &ItemKey) {
        if let Some(set) = self.by_service.get_mut(name) {
            set.remove(item);
            if set.is_empty() {
                self.by_service.remove(name);
            }
        }
    }

    fn bump_service(&mut self, index: Index, name: &str, changes: &mut Vec<Change>) {
        self.service_indexes.insert(name.into(), index);
        changes.push(Change::ServiceIndex(name.into()));
    }

    /// A check changed: the health of its service, or of every service on its node, moved.
    fn bump_check_owner(&mut self, index: Index, check: &Check, changes: &mut Vec<Change>) {
        let node_key = key(&check.node);
        if check.service_id.is_empty() {
            self.touch_node_services(index, &node_key, changes);
        } else if let Some(service) = self.services.get(&(node_key, check.service_id.clone())) {
            let name = key(&service.name);
            self.bump_service(index, &name, changes);
        }
    }

    fn touch_node_services(&mut self, index: Index, node_key: &str, changes: &mut Vec<Change>) {
        let names: Vec<CompactString> =
            self.node_services(node_key).map(|s| key(&s.name)).collect();
        for name in names {
            self.bump_service(index, &name, changes);
        }
    }
}

#[cfg(test)]
mod tests;
