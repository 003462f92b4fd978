//! The catalog state machine (`RaftStateMachine`): applies committed entries to the in-memory
//! catalog, persists the touched rows in one transaction per batch, then publishes the new state.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};

use super::log::{decode, encode, read_meta};
use super::schema::{
    CHECKS, KV, KV_TOMBSTONES, LOCK_DELAYS, META, NODES, SERVICE_INDEXES, SERVICES, SESSIONS, meta,
};
use super::{StoreError, blocking, raft_err};
use crate::catalog::{Change, Indexes, Rows, State};
use crate::model::{Check, KvEntry, Node, Service, Session};
use crate::store::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::view::View;

pub struct StateMachineStore {
    db: Arc<Database>,
    /// The working copy; published to `view` after each batch (an O(1) clone).
    state: State,
    applied: Option<LogId>,
    membership: StoredMembership,
    view: View,
}

/// A snapshot in the store: its meta and the JSON of the catalog rows.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The catalog inside a Raft snapshot: its own format version, so a snapshot of another
/// layout is refused (`install_snapshot` fails) rather than misread.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotData {
    format: u32,
    rows: Rows,
}

/// The snapshot data format this server writes and reads.
const SNAPSHOT_FORMAT: u32 = 1;

impl SnapshotData {
    fn encode(rows: Rows) -> Result<Vec<u8>, StoreError> {
        encode(&SnapshotData {
            format: SNAPSHOT_FORMAT,
            rows,
        })
    }

    /// Reads format 1, and the bare rows that snapshots held before formats were numbered.
    fn decode(data: &[u8]) -> Result<Rows, StoreError> {
        /// Only whether a format is named, to choose the shape.
        #[derive(serde::Deserialize)]
        struct Probe {
            format: Option<serde::de::IgnoredAny>,
        }
        if decode::<Probe>("snapshot", data)?.format.is_some() {
            let versioned = decode::<SnapshotData>("snapshot", data)?;
            if versioned.format != SNAPSHOT_FORMAT {
                return Err(StoreError::Corrupt {
                    table: "snapshot",
                    detail: format!(
                        "format {} (this server reads {SNAPSHOT_FORMAT})",
                        versioned.format
                    ),
                });
            }
            return Ok(versioned.rows);
        }
        decode::<Rows>("snapshot", data)
    }
}

/// One row write decided on the async side and executed in the blocking transaction.
enum RowWrite {
    Node(String, Option<Vec<u8>>),
    Service((String, String), Option<Vec<u8>>),
    Check((String, String), Option<Vec<u8>>),
    ServiceIndex(String, Option<u64>),
    Kv(String, Option<Vec<u8>>),
    Session(String, Option<Vec<u8>>),
    LockDelay(String, Option<u64>),
    Tombstone(String, Option<u64>),
    ClusterId(Vec<u8>),
    /// Clear every row table before the writes that follow.
    ClearAll,
}

impl StateMachineStore {
    /// Loads the persisted catalog and publishes it, so a restarted server answers DNS from the
    /// acknowledged state before Raft has even started.
    pub fn load(db: Arc<Database>, view: View) -> Result<Self, StoreError> {
        let applied: Option<LogId> = read_meta::<Option<LogId>>(&db, meta::APPLIED)?.flatten();
        let membership: StoredMembership = read_meta(&db, meta::MEMBERSHIP)?.unwrap_or_default();
        let indexes: Indexes = read_meta(&db, meta::INDEXES)?.unwrap_or_default();
        let cluster_id: String = read_meta(&db, meta::CLUSTER_ID)?.unwrap_or_default();
        let mut rows = Rows {
            indexes,
            cluster_id,
            ..Rows::default()
        };
        {
            let tx = db.begin_read()?;
            for item in tx.open_table(NODES)?.iter()? {
                let (_, v) = item?;
                rows.nodes.push(decode::<Node>("nodes", v.value())?);
            }
            for item in tx.open_table(SERVICES)?.iter()? {
                let (k, v) = item?;
                let (node_key, _) = k.value();
                rows.services.push((
                    node_key.to_string(),
                    decode::<Service>("services", v.value())?,
                ));
            }
            for item in tx.open_table(CHECKS)?.iter()? {
                let (_, v) = item?;
                rows.checks.push(decode::<Check>("checks", v.value())?);
            }
            for item in tx.open_table(SERVICE_INDEXES)?.iter()? {
                let (k, v) = item?;
                rows.service_indexes
                    .push((k.value().to_string(), v.value()));
            }
            for item in tx.open_table(KV)?.iter()? {
                let (_, v) = item?;
                rows.kv.push(decode::<KvEntry>("kv", v.value())?);
            }
            for item in tx.open_table(SESSIONS)?.iter()? {
                let (_, v) = item?;
                rows.sessions
                    .push(decode::<Session>("sessions", v.value())?);
            }
            for item in tx.open_table(LOCK_DELAYS)?.iter()? {
                let (k, v) = item?;
                rows.lock_delays.push((k.value().to_string(), v.value()));
            }
            for item in tx.open_table(KV_TOMBSTONES)?.iter()? {
                let (k, v) = item?;
                rows.kv_tombstones.push((k.value().to_string(), v.value()));
            }
        }
        let state = State::from_rows(rows);
        view.publish(state.clone());
        Ok(StateMachineStore {
            db,
            state,
            applied,
            membership,
            view,
        })
    }

    fn row_writes(&self, changes: Vec<Change>) -> Result<Vec<RowWrite>, StoreError> {
        if changes.contains(&Change::Everything) {
            let mut writes = vec![RowWrite::ClearAll];
            writes.extend(all_rows(&self.state.to_rows())?);
            return Ok(writes);
        }
        let mut changes = changes;
        changes.sort();
        changes.dedup();
        changes
            .into_iter()
            .map(|change| {
                Ok(match change {
                    Change::Node(k) => {
                        let v = self.state.node(&k).map(encode).transpose()?;
                        RowWrite::Node(k, v)
                    }
                    Change::Service(k) => {
                        let v = self.state.service(&k.0, &k.1).map(encode).transpose()?;
                        RowWrite::Service(k, v)
                    }
                    Change::Check(k) => {
                        let v = self.state.check(&k.0, &k.1).map(encode).transpose()?;
                        RowWrite::Check(k, v)
                    }
                    Change::ServiceIndex(name) => {
                        let v = Some(self.state.service_index(&name));
                        RowWrite::ServiceIndex(name, v)
                    }
                    Change::Kv(k) => {
                        let v = self.state.kv_get(&k).map(encode).transpose()?;
                        RowWrite::Kv(k, v)
                    }
                    Change::Session(id) => {
                        let v = self.state.session(&id).map(encode).transpose()?;
                        RowWrite::Session(id, v)
                    }
                    Change::LockDelay(k) => {
                        let v = self.state.lock_delay(&k);
                        RowWrite::LockDelay(k, v)
                    }
                    Change::Tombstone(k) => {
                        let v = self.state.kv_tombstone(&k);
                        RowWrite::Tombstone(k, v)
                    }
                    Change::ClusterId => RowWrite::ClusterId(encode(&self.state.cluster_id())?),
                    Change::Everything => RowWrite::ClearAll,
                })
            })
            .collect()
    }

    fn applied_meta(&self) -> Result<Vec<(&'static str, Vec<u8>)>, StoreError> {
        Ok(vec![
            (meta::APPLIED, encode(&self.applied)?),
            (meta::MEMBERSHIP, encode(&self.membership)?),
            (meta::INDEXES, encode(&self.state.indexes())?),
        ])
    }
}

fn write_rows(tx: &WriteTransaction, writes: &[RowWrite]) -> Result<(), StoreError> {
    let mut nodes = tx.open_table(NODES)?;
    let mut services = tx.open_table(SERVICES)?;
    let mut checks = tx.open_table(CHECKS)?;
    let mut service_indexes = tx.open_table(SERVICE_INDEXES)?;
    let mut kv = tx.open_table(KV)?;
    let mut sessions = tx.open_table(SESSIONS)?;
    let mut lock_delays = tx.open_table(LOCK_DELAYS)?;
    let mut tombstones = tx.open_table(KV_TOMBSTONES)?;
    let mut meta_table = tx.open_table(META)?;
    for w in writes {
        match w {
            RowWrite::ClearAll => {
                nodes.retain(|_, _| false)?;
                services.retain(|_, _| false)?;
                checks.retain(|_, _| false)?;
                service_indexes.retain(|_, _| false)?;
                kv.retain(|_, _| false)?;
                sessions.retain(|_, _| false)?;
                lock_delays.retain(|_, _| false)?;
                tombstones.retain(|_, _| false)?;
            }
            RowWrite::ClusterId(v) => {
                meta_table.insert(meta::CLUSTER_ID, v.as_slice())?;
            }
            RowWrite::Kv(k, Some(v)) => {
                kv.insert(k.as_str(), v.as_slice())?;
            }
            RowWrite::Kv(k, None) => {
                kv.remove(k.as_str())?;
            }
            RowWrite::Session(k, Some(v)) => {
                sessions.insert(k.as_str(), v.as_slice())?;
            }
            RowWrite::Session(k, None) => {
                sessions.remove(k.as_str())?;
            }
            RowWrite::LockDelay(k, Some(v)) => {
                lock_delays.insert(k.as_str(), *v)?;
            }
            RowWrite::LockDelay(k, None) => {
                lock_delays.remove(k.as_str())?;
            }
            RowWrite::Tombstone(k, Some(v)) => {
                tombstones.insert(k.as_str(), *v)?;
            }
            RowWrite::Tombstone(k, None) => {
                tombstones.remove(k.as_str())?;
            }
            RowWrite::Node(k, Some(v)) => {
                nodes.insert(k.as_str(), v.as_slice())?;
            }
            RowWrite::Node(k, None) => {
                nodes.remove(k.as_str())?;
            }
            RowWrite::Service((n, id), Some(v)) => {
                services.insert((n.as_str(), id.as_str()), v.as_slice())?;
            }
            RowWrite::Service((n, id), None) => {
                services.remove((n.as_str(), id.as_str()))?;
            }
            RowWrite::Check((n, id), Some(v)) => {
                checks.insert((n.as_str(), id.as_str()), v.as_slice())?;
            }
            RowWrite::Check((n, id), None) => {
                checks.remove((n.as_str(), id.as_str()))?;
            }
            RowWrite::ServiceIndex(name, Some(i)) => {
                service_indexes.insert(name.as_str(), *i)?;
            }
            RowWrite::ServiceIndex(name, None) => {
                service_indexes.remove(name.as_str())?;
            }
        }
    }
    Ok(())
}

/// Every row of a catalog, as writes (snapshot install and restore rewrite everything).
fn all_rows(rows: &Rows) -> Result<Vec<RowWrite>, StoreError> {
    let mut writes = Vec::new();
    for node in &rows.nodes {
        writes.push(RowWrite::Node(
            crate::catalog::key(&node.name),
            Some(encode(node)?),
        ));
    }
    for (node_key, service) in &rows.services {
        writes.push(RowWrite::Service(
            (node_key.clone(), service.id.clone()),
            Some(encode(service)?),
        ));
    }
    for check in &rows.checks {
        writes.push(RowWrite::Check(
            (crate::catalog::key(&check.node), check.check_id.clone()),
            Some(encode(check)?),
        ));
    }
    for (name, index) in &rows.service_indexes {
        writes.push(RowWrite::ServiceIndex(name.clone(), Some(*index)));
    }
    for entry in &rows.kv {
        writes.push(RowWrite::Kv(entry.key.clone(), Some(encode(entry)?)));
    }
    for session in &rows.sessions {
        writes.push(RowWrite::Session(
            session.id.clone(),
            Some(encode(session)?),
        ));
    }
    for (key, until) in &rows.lock_delays {
        writes.push(RowWrite::LockDelay(key.clone(), Some(*until)));
    }
    for (key, index) in &rows.kv_tombstones {
        writes.push(RowWrite::Tombstone(key.clone(), Some(*index)));
    }
    writes.push(RowWrite::ClusterId(encode(&rows.cluster_id)?));
    Ok(writes)
}

fn write_meta(tx: &WriteTransaction, values: &[(&'static str, Vec<u8>)]) -> Result<(), StoreError> {
    let mut table = tx.open_table(META)?;
    for (k, v) in values {
        table.insert(*k, v.as_slice())?;
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Vec<crate::catalog::Outcome>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut changes = Vec::new();
        let mut outcomes = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => {
                    self.state.note_applied(index);
                    outcomes.push(Vec::new());
                }
                EntryPayload::Normal(proposal) => {
                    if proposal.0.is_empty() {
                        self.state.note_applied(index);
                    }
                    let state = &mut self.state;
                    outcomes.push(
                        proposal
                            .0
                            .iter()
                            .map(|r| state.apply(index, r.at_ms, &r.command, &mut changes))
                            .collect(),
                    );
                }
                EntryPayload::Membership(m) => {
                    self.state.note_applied(index);
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    outcomes.push(Vec::new());
                }
            }
        }
        let touched = changes.clone();
        let writes = self
            .row_writes(changes)
            .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        let meta_rows = self
            .applied_meta()
            .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write()?;
            // No fsync of its own: the entries are already durable in the log (same database),
            // and the next log append's fsync persists this commit too. After a crash the state
            // machine is at an older applied index and openraft applies the rest from the log.
            tx.set_durability(Durability::None)
                .map_err(|e| StoreError::Db(e.to_string()))?;
            write_rows(&tx, &writes)?;
            write_meta(&tx, &meta_rows)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        self.view.publish_changes(self.state.clone(), &touched);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
            applied: self.applied,
            membership: self.membership.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let rows = SnapshotData::decode(&data).map_err(|e| raft_err(ErrorVerb::Read, e))?;
        let new_state = State::from_rows(rows.clone());
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data,
        })
        .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state = new_state;
        let mut writes = vec![RowWrite::ClearAll];
        writes.extend(all_rows(&rows).map_err(|e| raft_err(ErrorVerb::Write, e))?);
        let mut meta_rows = self
            .applied_meta()
            .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        meta_rows.push((meta::SNAPSHOT, stored));
        let db = self.db.clone();
        blocking(move || {
            let mut tx = db.begin_write()?;
            // No fsync of its own: the entries are already durable in the log (same database),
            // and the next log append's fsync persists this commit too. After a crash the state
            // machine is at an older applied index and openraft applies the rest from the log.
            tx.set_durability(Durability::None)
                .map_err(|e| StoreError::Db(e.to_string()))?;
            write_rows(&tx, &writes)?;
            write_meta(&tx, &meta_rows)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        self.view
            .publish_changes(self.state.clone(), &[Change::Everything]);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored: Option<StoredSnapshot> =
            read_meta(&self.db, meta::SNAPSHOT).map_err(|e| raft_err(ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Serializes a point-in-time copy of the catalog; runs concurrently with `apply`.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: State,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let data = SnapshotData::encode(self.state.to_rows())
            .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        let snapshot_id = match self.applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        })
        .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            write_meta(&tx, &[(meta::SNAPSHOT, stored)])?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
