//! The Raft log and vote (`RaftLogStorage`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorVerb, OptionalSend, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::schema::{LOG, META, meta};
use super::{StoreError, blocking, raft_err};
use crate::store::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log half of the store. Cheap to clone: it is the log reader too.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        read_meta(&self.db, key)
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode(value)?;
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert(key, bytes.as_slice())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

pub(super) fn read_meta<T: DeserializeOwned>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let tx = db.begin_read()?;
    let table = tx.open_table(META)?;
    match table.get(key)? {
        Some(v) => decode("meta", v.value()).map(Some),
        None => Ok(None),
    }
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Db(format!("encode: {e}")))
}

pub(super) fn decode<T: DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn to_range(range: impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Some(e + 1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        // Reads are MVCC snapshots that never wait on the writer, so they run inline.
        let read = || -> Result<Vec<Entry>, StoreError> {
            let (start, end) = to_range(range);
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let iter = match end {
                Some(end) if end <= start => return Ok(Vec::new()),
                Some(end) => table.range(start..end)?,
                None => table.range(start..)?,
            };
            let mut out = Vec::new();
            for item in iter {
                let (_, v) = item?;
                out.push(decode("raft_log", v.value())?);
            }
            Ok(out)
        };
        read().map_err(|e| raft_err(ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let read = || -> Result<LogState<TypeConfig>, StoreError> {
            let last_purged: Option<LogId> = self.read_meta(meta::LAST_PURGED)?;
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let last = match table.last()? {
                Some((_, v)) => Some(decode::<Entry>("raft_log", v.value())?.log_id),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| raft_err(ErrorVerb::Read, e))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(meta::VOTE, vote)
            .await
            .map_err(|e| raft_err(ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(meta::VOTE)
            .map_err(|e| raft_err(ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(meta::COMMITTED, &committed)
            .await
            .map_err(|e| raft_err(ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(meta::COMMITTED)
            .map_err(|e| raft_err(ErrorVerb::Read, e))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|e| encode(&e).map(|bytes| (e.log_id.index, bytes)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| raft_err(ErrorVerb::Write, e))?;
        let db = self.db.clone();
        // One transaction (one fsync) for the whole batch.
        let result = blocking(move || {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(raft_err(ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            tx.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&Some(log_id)).map_err(|e| raft_err(ErrorVerb::Write, e))?;
        let db = self.db.clone();
        blocking(move || {
            let tx = db.begin_write()?;
            tx.open_table(META)?
                .insert(meta::LAST_PURGED, bytes.as_slice())?;
            tx.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| raft_err(ErrorVerb::Delete, e))
    }
}
