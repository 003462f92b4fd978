//! Every redb table, in one place, and the data dir's format version.
//!
//! Format 2 (this one): the Raft log, its metadata, and the latest catalog snapshot. The catalog
//! itself lives in memory; its durable copy is the snapshot plus the log after it. Format 1 kept
//! the catalog as rows updated on every apply; a format-1 data dir is refused (see
//! `StoreError::Schema`).

use redb::TableDefinition;

/// Bumped when the on-disk layout changes incompatibly.
pub const SCHEMA_VERSION: &str = "2";

/// Raft log: index → MessagePack-encoded entry (the proposal's bytes as proposed).
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named values: schema version, node ID, vote, committed, last purged, snapshot header.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The latest snapshot's data, in chunks (chunk number → bytes), so no single value is huge.
pub const SNAPSHOT_CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot_chunks");

pub mod meta {
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
    /// The latest snapshot's header (`SnapshotHeader`); its data is in `SNAPSHOT_CHUNKS`.
    pub const SNAPSHOT: &str = "snapshot";
    /// This server's Raft node ID, chosen at first start.
    pub const NODE_ID: &str = "node_id";
}

pub fn create_all(tx: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.open_table(SNAPSHOT_CHUNKS)?;
    Ok(())
}
