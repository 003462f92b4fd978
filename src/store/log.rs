//! The Raft log and vote (`RaftLogStorage`), with the recent entries kept in memory.
//!
//! The leader replicates what it just appended: `Recent` keeps the newest entries (as proposed,
//! their payload still the encoded bytes) so replication never reads them back from redb nor
//! decodes them. Older entries (a follower far behind) come from redb.
//!
//! Every write goes to one writer task (`Writer`), in order, each run on the blocking pool.
//! `append` hands its entries over and returns at once; the task reports the flush through
//! openraft's callback. So the leader
//! replicates while its own fsync runs (Raft allows the leader's local write in parallel with
//! the followers'), and appends that queue up behind a running fsync share the next one.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorVerb, OptionalSend, RaftLogReader};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::schema::{LOG, META, meta};
use super::{StoreError, raft_err};
use crate::store::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The log half of the store. Cheap to clone: it is the log reader too.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    recent: Arc<Mutex<Recent>>,
    writer: Writer,
    /// The newest committed log id not yet written (encoded): it rides on the next append.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

/// A write transaction for the writer thread to run.
type WriteJob = Box<dyn FnOnce(&Database) -> Result<(), StoreError> + Send>;

/// A write the writer thread runs, in the order given.
enum Job {
    /// Log rows to insert; the callback hears when they are durable.
    Append {
        rows: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Any other write transaction; the answer goes back on the channel.
    Run {
        write: WriteJob,
        done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The handle of the task that runs every write of the log store, one after another. The
/// task ends when the last handle is dropped.
#[derive(Clone)]
struct Writer(tokio::sync::mpsc::UnboundedSender<Job>);

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    fn start(db: Arc<Database>, committed: Arc<Mutex<Option<Vec<u8>>>>) -> Writer {
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_loop(db, queue, committed));
        Writer(jobs)
    }

    /// Runs `write` after every write handed over before it, and waits for its result.
    async fn run(
        &self,
        write: impl FnOnce(&Database) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.0
            .send(Job::Run {
                write: Box::new(write),
                done,
            })
            .map_err(|_| StoreError::Db("the log writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Db("the log writer has stopped".into()))?
    }
}

/// The writer task: one job at a time, on the blocking pool (redb commits block on fsync;
/// a job there also tells a paused test clock that work is in flight). Appends waiting
/// together go into one transaction (one fsync).
async fn write_loop(
    db: Arc<Database>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Job>,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Run { write, done } => {
                let db = db.clone();
                let _ = done.send(super::blocking(move || write(&db)).await);
            }
            Job::Append { mut rows, callback } => {
                let mut callbacks = vec![callback];
                while let Ok(job) = queue.try_recv() {
                    match job {
                        Job::Append {
                            rows: more,
                            callback,
                        } => {
                            rows.extend(more);
                            callbacks.push(callback);
                        }
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                let db = db.clone();
                let committed = committed.lock().expect("committed lock").take();
                let result =
                    super::blocking(move || append_rows(&db, &rows, committed.as_deref())).await;
                for callback in callbacks {
                    callback.log_io_completed(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| std::io::Error::other(e.to_string())),
                    );
                }
                if let Err(e) = result {
                    tracing::error!(error = %e, "writing the raft log failed");
                }
            }
        }
    }
}

/// Inserts log rows, and the committed log id when it changed, in one durable transaction.
fn append_rows(
    db: &Database,
    rows: &[(u64, Vec<u8>)],
    committed: Option<&[u8]>,
) -> Result<(), StoreError> {
    let tx = db.begin_write()?;
    {
        let mut table = tx.open_table(LOG)?;
        for (index, bytes) in rows {
            table.insert(*index, bytes.as_slice())?;
        }
        if let Some(committed) = committed {
            tx.open_table(META)?.insert(meta::COMMITTED, committed)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Bytes of recent entries kept in memory at most (payload sizes; a full batch of 512
/// registrations is ~10 KiB compressed). Enough for followers a few thousand entries behind;
/// one further back reads the log from redb.
const RECENT_BYTES: usize = 4 << 20;
/// Recent entries kept in memory at most.
const RECENT_ENTRIES: usize = 16_384;

/// The newest log entries, contiguous by index.
#[derive(Default)]
struct Recent {
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(p) => p.len() + 64,
        _ => 256,
    }
}

impl Recent {
    fn push(&mut self, entry: Entry) {
        if let Some(last) = self.entries.back()
            && last.log_id.index + 1 != entry.log_id.index
        {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += entry_size(&entry);
        self.entries.push_back(entry);
        while self.bytes > RECENT_BYTES || self.entries.len() > RECENT_ENTRIES {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= entry_size(&e),
                None => break,
            }
        }
    }

    /// Drops entries at `from` and after (a truncated log).
    fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= from) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= entry_size(&e);
            }
        }
    }

    /// Drops entries up to `upto` (a purged log).
    fn purge(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= upto) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= entry_size(&e);
            }
        }
    }

    /// The entries `start..end`, if all of them are here.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        if end <= start {
            return Some(Vec::new());
        }
        let first = self.entries.front()?.log_id.index;
        let last = self.entries.back()?.log_id.index;
        if start < first || end > last + 1 {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        let committed = Arc::default();
        LogStore {
            writer: Writer::start(db.clone(), Arc::clone(&committed)),
            db,
            recent: Arc::default(),
            committed,
        }
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        read_meta(&self.db, key)
    }

    /// Writes one named value in a durable (fsynced) transaction, after the writes before it.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode(value)?;
        self.writer
            .run(move |db| {
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
    rmp_serde::to_vec_named(value).map_err(|e| StoreError::Db(format!("encode: {e}")))
}

pub(super) fn decode<T: DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    crate::model::msgpack::from_slice(bytes).map_err(|e| StoreError::Corrupt {
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
        let (start, end) = to_range(range);
        if let Some(end) = end
            && let Some(entries) = self.recent.lock().expect("recent lock").get(start, end)
        {
            return Ok(entries);
        }
        // Reads are MVCC snapshots that never wait on the writer, so they run inline.
        let read = || -> Result<Vec<Entry>, StoreError> {
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
            let last_purged: Option<LogId> = self
                .read_meta::<Option<LogId>>(meta::LAST_PURGED)?
                .flatten();
            let tx = self.db.begin_read()?;
            let table = tx.open_table(LOG)?;
            let stored = match table.last()? {
                Some((_, v)) => Some(decode::<Entry>("raft_log", v.value())?.log_id),
                None => last_purged,
            };
            // Entries handed to the writer may not be in redb yet.
            let pending = self
                .recent
                .lock()
                .expect("recent lock")
                .entries
                .back()
                .map(|e| e.log_id);
            let last = stored.max(pending);
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
        // A vote must survive a crash: a server that forgets it could vote twice in a term.
        self.write_meta(meta::VOTE, vote)
            .await
            .map_err(|e| raft_err(ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(meta::VOTE)
            .map_err(|e| raft_err(ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only a hint for the restart (re-apply up to here at once): a stale one is safe, since
        // the next leader commits everything again. So it costs no transaction of its own: it
        // is written with the next log append.
        let bytes = encode(&committed).map_err(|e| raft_err(ErrorVerb::Write, e))?;
        *self.committed.lock().expect("committed lock") = Some(bytes);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let pending = self.committed.lock().expect("committed lock").clone();
        if let Some(bytes) = pending {
            return decode::<Option<LogId>>("meta", &bytes)
                .map_err(|e| raft_err(ErrorVerb::Read, e));
        }
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
        let mut rows = Vec::new();
        {
            let mut recent = self.recent.lock().expect("recent lock");
            for entry in entries {
                let bytes = encode(&entry).map_err(|e| raft_err(ErrorVerb::Write, e))?;
                rows.push((entry.log_id.index, bytes));
                recent.push(entry);
            }
        }
        // Returns before the write: the callback tells openraft when the entries are durable.
        self.writer
            .0
            .send(Job::Append { rows, callback })
            .map_err(|_| raft_err(ErrorVerb::Write, "the log writer has stopped"))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent
            .lock()
            .expect("recent lock")
            .truncate(log_id.index);
        self.writer
            .run(move |db| {
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
        self.recent.lock().expect("recent lock").purge(log_id.index);
        self.writer
            .run(move |db| {
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
