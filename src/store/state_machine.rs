//! The catalog state machine (`RaftStateMachine`): applies committed entries to the catalog in
//! memory and publishes each new state; persists it only as snapshots.
//!
//! A snapshot is built from an O(1) clone of the state (the catalog's maps share structure), so
//! writes never wait for it, then encoded and written to redb in one fsynced transaction before
//! openraft may purge the log it covers. A snapshot that cannot be written is a storage error:
//! openraft stops, the server exits non-zero, and the restart uses the previous snapshot and the
//! log, which was not purged.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::log::{encode, read_meta};
use super::schema::{META, SNAPSHOT_CHUNKS, meta};
use super::{StoreError, blocking, raft_err};
use crate::catalog::ZSTD_MAGIC;
use crate::catalog::{Change, Rows, RowsOf, State};
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

/// The snapshot data format this server writes and reads: MessagePack of `SnapshotData`.
pub const SNAPSHOT_FORMAT: u32 = 2;

/// What a snapshot's bytes hold: the catalog's rows under a format number, so a snapshot of
/// another layout (from a server of another version) is refused rather than misread.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    format: u32,
    rows: Rows,
}

/// The stored snapshot's header (`meta::SNAPSHOT`); its data is in `SNAPSHOT_CHUNKS`.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    format: u32,
    meta: SnapshotMeta,
    len: u64,
    chunks: u64,
}

/// Bytes per stored chunk of snapshot data.
const CHUNK: usize = 4 << 20;

/// zstd's default level: snapshots are built in the background, where the ratio matters more
/// than the speed (100k instances: ~60 MB of MessagePack, a few MB compressed).
const SNAPSHOT_ZSTD_LEVEL: i32 = 3;

/// What a snapshot is written from: `SnapshotData` with the rows borrowed from the state.
#[derive(Serialize)]
struct SnapshotOf<'a> {
    format: u32,
    rows: RowsOf<'a>,
}

impl SnapshotData {
    /// MessagePack, compressed as one zstd frame, written straight from the state's maps.
    fn encode(state: &State) -> Result<Vec<u8>, StoreError> {
        let fail = |e: std::io::Error| StoreError::Db(format!("encode snapshot: {e}"));
        let out =
            zstd::stream::write::Encoder::new(Vec::new(), SNAPSHOT_ZSTD_LEVEL).map_err(fail)?;
        // MessagePack writes a few bytes at a time; zstd should see them in blocks.
        let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
        rmp_serde::encode::write_named(
            &mut out,
            &SnapshotOf {
                format: SNAPSHOT_FORMAT,
                rows: state.rows_of(),
            },
        )
        .map_err(|e| StoreError::Db(format!("encode snapshot: {e}")))?;
        out.into_inner()
            .map_err(|e| fail(e.into_error()))?
            .finish()
            .map_err(fail)
    }

    /// Reads a compressed snapshot, or an uncompressed one written before compression. A
    /// compressed one is decoded as it is decompressed, without holding its MessagePack.
    fn decode(data: &[u8]) -> Result<Rows, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "snapshot",
            detail,
        };
        let decoded: Result<SnapshotData, String> = read(data);
        match decoded {
            Ok(snapshot) if snapshot.format == SNAPSHOT_FORMAT => Ok(snapshot.rows),
            Ok(snapshot) => Err(corrupt(format!(
                "format {} (this server reads {SNAPSHOT_FORMAT})",
                snapshot.format
            ))),
            Err(e) => Err(corrupt(match probe_format(data) {
                Some(format) if format != SNAPSHOT_FORMAT => {
                    format!("format {format} (this server reads {SNAPSHOT_FORMAT})")
                }
                _ => e,
            })),
        }
    }
}

/// The format number of a snapshot that did not decode, to say why.
fn probe_format(data: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Probe {
        format: u32,
    }
    read::<Probe>(data).ok().map(|p| p.format)
}

/// Decodes snapshot bytes, compressed (streamed through the decompressor) or not.
fn read<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T, String> {
    if !data.starts_with(&ZSTD_MAGIC) {
        return crate::model::msgpack::from_slice(data).map_err(|e| e.to_string());
    }
    let z = zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?;
    // MessagePack is read a few bytes at a time; each read of the decoder would run zstd for
    // those bytes alone.
    crate::model::msgpack::from_read(std::io::BufReader::with_capacity(1 << 16, z))
        .map_err(|e| e.to_string())
}

/// Writes a snapshot (header and data) in one durable transaction, replacing the previous one
/// unless that one is at least as new: a snapshot built in the background can finish after a
/// newer one was installed from the leader, and the log before the newer one may be gone.
fn save_snapshot(db: &Database, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
    if let Some(stored) = read_meta::<SnapshotHeader>(db, meta::SNAPSHOT)?
        && stored.meta.last_log_id.is_some()
        && stored.meta.last_log_id >= meta.last_log_id
    {
        return Ok(());
    }
    let chunks = data.chunks(CHUNK).count() as u64;
    let header = encode(&SnapshotHeader {
        format: SNAPSHOT_FORMAT,
        meta: meta.clone(),
        len: data.len() as u64,
        chunks,
    })?;
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(SNAPSHOT_CHUNKS)?;
        table.retain(|_, _| false)?;
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            table.insert(i as u64, chunk)?;
        }
        tx.open_table(META)?
            .insert(meta::SNAPSHOT, header.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// The stored snapshot, if any: its meta and data.
fn load_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StoreError> {
    let Some(header) = read_meta::<SnapshotHeader>(db, meta::SNAPSHOT)? else {
        return Ok(None);
    };
    if header.format != SNAPSHOT_FORMAT {
        return Err(StoreError::Corrupt {
            table: "snapshot",
            detail: format!(
                "format {} (this server reads {SNAPSHOT_FORMAT})",
                header.format
            ),
        });
    }
    let tx = db.begin_read()?;
    let table = tx.open_table(SNAPSHOT_CHUNKS)?;
    let mut data = Vec::with_capacity(header.len as usize);
    let mut count = 0;
    for item in table.iter()? {
        let (_, v) = item?;
        data.extend_from_slice(v.value());
        count += 1;
    }
    if count != header.chunks || data.len() as u64 != header.len {
        return Err(StoreError::Corrupt {
            table: "snapshot_chunks",
            detail: format!(
                "{count} chunks of {} bytes, the header says {} of {}",
                data.len(),
                header.chunks,
                header.len
            ),
        });
    }
    Ok(Some((header.meta, data)))
}

impl StateMachineStore {
    /// Loads the latest snapshot and publishes it, so a restarted server answers DNS from it
    /// before Raft has even started; openraft then re-applies the committed entries after it.
    pub fn load(db: Arc<Database>, view: View) -> Result<Self, StoreError> {
        let (state, applied, membership) = match load_snapshot(&db)? {
            Some((meta, data)) => (
                State::from_rows(SnapshotData::decode(&data)?),
                meta.last_log_id,
                meta.last_membership,
            ),
            None => (State::default(), None, StoredMembership::default()),
        };
        view.publish(state.clone());
        Ok(StateMachineStore {
            db,
            state,
            applied,
            membership,
            view,
        })
    }
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
                    let requests = proposal
                        .decode()
                        .map_err(|e| raft_err(ErrorVerb::Read, e))?;
                    if requests.is_empty() {
                        self.state.note_applied(index);
                    }
                    let state = &mut self.state;
                    outcomes.push(
                        requests
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
        self.view.publish_changes(self.state.clone(), &changes);
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
        // Durable before it replaces the state: the log before it may be gone on return.
        let db = self.db.clone();
        let stored = meta.clone();
        blocking(move || save_snapshot(&db, &stored, &data))
            .await
            .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state = State::from_rows(rows);
        self.view
            .publish_changes(self.state.clone(), &[Change::Everything]);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let db = self.db.clone();
        let stored = blocking(move || load_snapshot(&db))
            .await
            .map_err(|e| raft_err(ErrorVerb::Read, e))?;
        Ok(stored.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Serializes a point-in-time copy of the catalog and stores it; runs concurrently with `apply`.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    state: State,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let state = self.state.clone();
        let db = self.db.clone();
        let applied = self.applied;
        let membership = self.membership.clone();
        // Encoding a large catalog takes a while: off the async workers, like the write.
        let (meta, data) = blocking(move || {
            let data = SnapshotData::encode(&state)?;
            let snapshot_id = match applied {
                Some(log_id) => format!("{}-{}-{}", log_id.leader_id, log_id.index, data.len()),
                None => format!("empty-{}", data.len()),
            };
            let meta = SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id,
            };
            save_snapshot(&db, &meta, &data)?;
            Ok((meta, data))
        })
        .await
        .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        tracing::debug!(
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            bytes = data.len(),
            "snapshot saved"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_at(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(1, 1),
                index,
            )),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s-{index}"),
        }
    }

    #[test]
    fn a_snapshot_finishing_after_a_newer_one_does_not_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open(dir.path()).unwrap();
        save_snapshot(&db, &meta_at(200), b"newer, installed from the leader").unwrap();
        save_snapshot(&db, &meta_at(100), b"older, built in the background").unwrap();
        let (meta, data) = load_snapshot(&db).unwrap().unwrap();
        assert_eq!(meta.snapshot_id, "s-200");
        assert_eq!(data, b"newer, installed from the leader");
        save_snapshot(&db, &meta_at(300), b"newest").unwrap();
        assert_eq!(load_snapshot(&db).unwrap().unwrap().0.snapshot_id, "s-300");
    }

    #[test]
    fn snapshots_are_compressed_and_uncompressed_ones_still_load() {
        let mut rows = Rows::default();
        for i in 0..500 {
            rows.service_indexes
                .push((format!("service-{i}").into(), i));
        }
        rows.cluster_id = "c1".into();
        let rows = State::from_rows(rows).to_rows();
        let plain = encode(&SnapshotData {
            format: SNAPSHOT_FORMAT,
            rows: rows.clone(),
        })
        .unwrap();
        let packed = SnapshotData::encode(&State::from_rows(rows.clone())).unwrap();
        assert!(packed.starts_with(&ZSTD_MAGIC));
        assert!(
            packed.len() * 3 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(SnapshotData::decode(&packed).unwrap(), rows);
        assert_eq!(SnapshotData::decode(&plain).unwrap(), rows);
        let foreign = encode(&serde_json::json!({"format": 9, "rows": {"tables": []}})).unwrap();
        let err = SnapshotData::decode(&foreign).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");
        let mut cut = packed.clone();
        cut.truncate(packed.len() / 2);
        assert!(matches!(
            SnapshotData::decode(&cut),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
