//! Persistence in redb: the Raft log and vote, and the latest snapshot of the catalog.
//!
//! One database file per server (`beacon.redb` in the data dir). The catalog state machine
//! lives in memory (as Consul's memdb does); applying an entry touches no disk. Its durable copy
//! is the latest snapshot plus the log after it: a restart loads the snapshot and re-applies
//! the committed entries that follow (openraft's `read_committed`). Log entries are written in
//! one fsynced transaction per append; redb calls that commit run on the blocking pool so they
//! never stall the async workers that run Raft heartbeats and DNS.
//!
//! Encodings: MessagePack (rmp-serde) for log entries, metadata and snapshots, with fields by
//! name so a field added with a default still reads older records; log entries and snapshots
//! are compressed with zstd (`catalog::Proposal`, `state_machine`), the data dir's bulk.

mod log;
mod schema;
mod state_machine;
pub mod types;

pub use log::LogStore;
pub use state_machine::StateMachineStore;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase};

use schema::{META, SCHEMA_VERSION};

/// The database file's name inside the data dir.
pub const DB_FILE: &str = "beacon.redb";

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error(
        "database {path} is in data dir format {found}; this beacon reads format {SCHEMA_VERSION} and leaves the file untouched. To move the data over: take a snapshot with the beacon that wrote it (`beacon snapshot save FILE`), start this beacon on an empty data dir, and restore it (`beacon snapshot restore FILE`)"
    )]
    Schema { path: PathBuf, found: String },
    #[error("database error: {0}")]
    Db(String),
    #[error("corrupt record in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// redb's page cache (its default is 1 GiB). Every page a commit writes stays in it, so with the
/// default the cache grew with the whole file: ~185 MB of RSS after 100k registrations. The
/// catalog is in memory and recent log entries are in `log::Recent`, so redb reads are rare
/// (a lagging follower, a snapshot load) and the hot write path needs only the few pages on
/// the log table's right edge.
const REDB_CACHE: usize = 4 << 20;

/// Opens (or creates) the database in `data_dir` and checks that it is ours.
pub fn open(data_dir: &Path) -> Result<Arc<Database>, StoreError> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    // Opening must not silently replace what is there: if the file exists but cannot be read as
    // a database, `create` fails and we stop with that error.
    let db = Database::builder()
        .set_cache_size(REDB_CACHE)
        .create(&path)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    adopt(db, &path)
}

/// Takes a database opened elsewhere (on another storage backend: tests inject write
/// failures through one) after checking it is ours; `path` names it in errors.
pub fn adopt(db: Database, path: &Path) -> Result<Arc<Database>, StoreError> {
    check_schema(&db, path)?;
    Ok(Arc::new(db))
}

fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let found = {
        let read = db.begin_read()?;
        match read.open_table(META) {
            Ok(table) => table.get("schema_version")?.map(|v| v.value().to_vec()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
    match found {
        Some(v) if v == SCHEMA_VERSION.as_bytes() => {
            // Tables added since (the KV tombstones) are created empty in an older data dir;
            // creating the existing ones changes nothing.
            let write = db.begin_write()?;
            schema::create_all(&write)?;
            write.commit()?;
            Ok(())
        }
        Some(v) => Err(StoreError::Schema {
            path: path.to_path_buf(),
            found: String::from_utf8_lossy(&v).into_owned(),
        }),
        None => {
            let write = db.begin_write()?;
            schema::create_all(&write)?;
            write
                .open_table(META)?
                .insert("schema_version", SCHEMA_VERSION.as_bytes())?;
            write.commit()?;
            Ok(())
        }
    }
}

/// Maps any store failure into openraft's error, which stops the Raft core: a store that cannot
/// write must not keep acknowledging.
pub(crate) fn raft_err(
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> crate::store::types::StorageError {
    openraft::StorageIOError::new(
        openraft::ErrorSubject::Store,
        verb,
        openraft::AnyError::error(e.to_string()),
    )
    .into()
}

/// Runs a blocking redb job off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| StoreError::Db(format!("store task failed: {e}")))?
}

/// This server's Raft node ID: chosen at random on first start and kept in the data dir, so a
/// restarted server is the same member.
pub fn node_id(db: &Database) -> Result<u64, StoreError> {
    if let Some(id) = log::read_meta::<u64>(db, schema::meta::NODE_ID)? {
        return Ok(id);
    }
    let id = loop {
        let candidate: u64 = rand::random::<u64>() >> 1;
        if candidate != 0 {
            break candidate;
        }
    };
    let write = db.begin_write()?;
    write
        .open_table(META)?
        .insert(schema::meta::NODE_ID, log::encode(&id)?.as_slice())?;
    write.commit()?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_of_another_format_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(META)
            .unwrap()
            .insert("schema_version", "1".as_bytes())
            .unwrap();
        write.commit().unwrap();
        drop(db);
        let Err(err) = open(dir.path()) else {
            panic!("format 1 is refused");
        };
        let message = err.to_string();
        assert!(message.contains("format 1"), "{message}");
        assert!(message.contains("snapshot save"), "{message}");
        let db = Database::open(dir.path().join(DB_FILE)).unwrap();
        let read = db.begin_read().unwrap();
        let table = read.open_table(META).unwrap();
        assert_eq!(table.get("schema_version").unwrap().unwrap().value(), b"1");
    }
}
