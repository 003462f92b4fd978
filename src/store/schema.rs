//! Every redb table, in one place.

use redb::TableDefinition;

/// Bumped when the on-disk layout changes incompatibly.
pub const SCHEMA_VERSION: &str = "1";

/// Raft log: index → JSON-encoded entry.
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small named values: schema version, vote, committed, last purged, applied state, snapshot.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Catalog rows, JSON-encoded model types.
pub const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
pub const SERVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("services");
pub const CHECKS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("checks");
pub const SERVICE_INDEXES: TableDefinition<&str, u64> = TableDefinition::new("service_indexes");
pub const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub const LOCK_DELAYS: TableDefinition<&str, u64> = TableDefinition::new("lock_delays");
/// Deleted key → the index of its deletion (the KV graveyard).
pub const KV_TOMBSTONES: TableDefinition<&str, u64> = TableDefinition::new("kv_tombstones");

pub mod meta {
    pub const VOTE: &str = "vote";
    pub const COMMITTED: &str = "committed";
    pub const LAST_PURGED: &str = "last_purged";
    pub const APPLIED: &str = "sm_applied";
    pub const MEMBERSHIP: &str = "sm_membership";
    pub const INDEXES: &str = "sm_indexes";
    pub const SNAPSHOT: &str = "snapshot";
    pub const CLUSTER_ID: &str = "cluster_id";
    /// This server's Raft node ID, chosen at first start.
    pub const NODE_ID: &str = "node_id";
}

pub fn create_all(tx: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.open_table(NODES)?;
    tx.open_table(SERVICES)?;
    tx.open_table(CHECKS)?;
    tx.open_table(SERVICE_INDEXES)?;
    tx.open_table(KV)?;
    tx.open_table(SESSIONS)?;
    tx.open_table(LOCK_DELAYS)?;
    tx.open_table(KV_TOMBSTONES)?;
    Ok(())
}
