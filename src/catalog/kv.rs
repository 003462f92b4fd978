//! The key/value store and sessions (Consul's lock semantics) inside the catalog state machine.

use std::time::Duration;

use super::{ApplyError, Change, State, TxnError, TxnOp};
use crate::model::{CheckStatus, Index, KvEntry, Session, SessionBehavior};

impl State {
    // === reads ===

    pub fn kv_get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key)
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn kv_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e)
    }

    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// The `X-Consul-Index` of a KV read of `prefix` (a whole key for a single-key read that
    /// found nothing): the highest ModifyIndex under it, tombstones included, never below
    /// `Indexes::kv_floor`; the KV table's index when nothing was ever there (Consul's
    /// `kvsListTxn`).
    pub fn kv_prefix_index(&self, prefix: &str) -> Index {
        let live = self.kv_prefix(prefix).map(|e| e.modify_index).max();
        let dead = self
            .kv_tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max();
        match live.max(dead) {
            Some(index) if index > 0 => index.max(self.indexes.kv_floor),
            _ => self.indexes.kv,
        }
    }

    /// The `X-Consul-Index` of a read of one existing entry: its ModifyIndex, never below
    /// `Indexes::kv_floor`.
    pub fn kv_entry_index(&self, entry: &KvEntry) -> Index {
        entry.modify_index.max(self.indexes.kv_floor)
    }

    /// Whether a tombstone of a deletion at or before `up_to` is kept.
    pub fn kv_has_tombstones_up_to(&self, up_to: Index) -> bool {
        self.kv_tombstones.values().any(|i| *i <= up_to)
    }

    /// The index at which `key` was deleted, while its tombstone is kept.
    pub fn kv_tombstone(&self, key: &str) -> Option<Index> {
        self.kv_tombstones.get(key).copied()
    }

    /// Wall-clock ms until which `key` cannot be acquired, if a lock-delay is recorded.
    pub fn lock_delay(&self, key: &str) -> Option<u64> {
        self.lock_delays.get(key).copied()
    }

    // === writes ===

    fn put_kv(&mut self, index: Index, entry: KvEntry, changes: &mut Vec<Change>) {
        changes.push(Change::Kv(entry.key.clone()));
        if self.kv_tombstones.remove(&entry.key).is_some() {
            changes.push(Change::Tombstone(entry.key.clone()));
        }
        self.kv.insert(entry.key.clone(), entry);
        self.indexes.kv = index;
    }

    fn remove_kv(&mut self, index: Index, key: &str, changes: &mut Vec<Change>) -> bool {
        if self.kv.remove(key).is_some() {
            changes.push(Change::Kv(key.to_string()));
            changes.push(Change::Tombstone(key.to_string()));
            self.kv_tombstones.insert(key.to_string(), index);
            self.indexes.kv = index;
            true
        } else {
            false
        }
    }

    /// A new or updated entry with `value` and `flags`, keeping lock state.
    fn updated(&self, index: Index, key: &str, value: &[u8], flags: u64) -> KvEntry {
        match self.kv.get(key) {
            Some(old) => KvEntry {
                value: value.to_vec(),
                flags,
                modify_index: index,
                ..old.clone()
            },
            None => KvEntry {
                key: key.to_string(),
                value: value.to_vec(),
                flags,
                lock_index: 0,
                session: String::new(),
                create_index: index,
                modify_index: index,
            },
        }
    }

    fn cas_matches(&self, key: &str, cas: Index) -> bool {
        match self.kv.get(key) {
            None => cas == 0,
            Some(e) => e.modify_index == cas,
        }
    }

    fn require_session(&self, session: &str) -> Result<(), ApplyError> {
        if self.sessions.contains_key(session) {
            Ok(())
        } else {
            Err(ApplyError::UnknownSession(session.to_string()))
        }
    }

    pub(super) fn kv_set(
        &mut self,
        index: Index,
        key: &str,
        value: &[u8],
        flags: u64,
        cas: Option<Index>,
        changes: &mut Vec<Change>,
    ) -> bool {
        if let Some(cas) = cas
            && !self.cas_matches(key, cas)
        {
            return false;
        }
        let entry = self.updated(index, key, value, flags);
        self.put_kv(index, entry, changes);
        true
    }

    pub(super) fn kv_delete(
        &mut self,
        index: Index,
        key: &str,
        recurse: bool,
        cas: Option<Index>,
        changes: &mut Vec<Change>,
    ) -> bool {
        if let Some(cas) = cas {
            if self.kv.get(key).is_none_or(|e| e.modify_index != cas) {
                return false;
            }
            self.remove_kv(index, key, changes);
            return true;
        }
        if recurse {
            let keys: Vec<String> = self.kv_prefix(key).map(|e| e.key.clone()).collect();
            for k in keys {
                self.remove_kv(index, &k, changes);
            }
        } else {
            self.remove_kv(index, key, changes);
        }
        // Deleting advances the index even when nothing was there (Consul's tombstone index).
        self.indexes.kv = index;
        true
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn kv_acquire(
        &mut self,
        index: Index,
        at_ms: u64,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
        changes: &mut Vec<Change>,
    ) -> Result<bool, ApplyError> {
        self.require_session(session)?;
        let mut entry = self.updated(index, key, value, flags);
        if entry.session == session {
            // Re-acquiring a held lock updates the value without bumping LockIndex.
            self.put_kv(index, entry, changes);
            return Ok(true);
        }
        if !entry.session.is_empty() {
            return Ok(false);
        }
        if self
            .lock_delays
            .get(key)
            .is_some_and(|until| at_ms < *until)
        {
            return Ok(false);
        }
        entry.session = session.to_string();
        entry.lock_index += 1;
        self.put_kv(index, entry, changes);
        Ok(true)
    }

    pub(super) fn kv_release(
        &mut self,
        index: Index,
        key: &str,
        value: &[u8],
        flags: u64,
        session: &str,
        changes: &mut Vec<Change>,
    ) -> Result<bool, ApplyError> {
        // As Consul's `kvsUnlockTxn`: a session that does not hold the key (or does not exist)
        // releases nothing, and that is an answer (`false`), not an error.
        match self.kv.get(key) {
            Some(e) if e.session == session => {
                let mut entry = self.updated(index, key, value, flags);
                entry.session.clear();
                self.put_kv(index, entry, changes);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    pub(super) fn session_create(
        &mut self,
        index: Index,
        session: &Session,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        if self.node(&session.node).is_none() {
            return Err(ApplyError::UnknownNode(session.node.clone()));
        }
        for check_id in session.node_checks.iter().chain(&session.service_checks) {
            match self.check(&session.node, check_id) {
                None => return Err(ApplyError::MissingSessionCheck(check_id.clone())),
                Some(c) if c.status == CheckStatus::Critical => {
                    return Err(ApplyError::CriticalCheck(check_id.clone()));
                }
                Some(_) => {}
            }
        }
        let session = Session {
            create_index: index,
            modify_index: index,
            ..session.clone()
        };
        changes.push(Change::Session(session.id.clone()));
        self.sessions.insert(session.id.clone(), session);
        self.indexes.sessions = index;
        Ok(())
    }

    /// Invalidates a session: its locks are released (or its keys deleted) and each such key
    /// gets the session's lock-delay. Destroying an unknown session is a no-op, as in Consul.
    pub(super) fn session_destroy(
        &mut self,
        index: Index,
        at_ms: u64,
        id: &str,
        changes: &mut Vec<Change>,
    ) {
        let Some(session) = self.sessions.remove(id) else {
            return;
        };
        changes.push(Change::Session(id.to_string()));
        self.indexes.sessions = index;
        let held: Vec<String> = self
            .kv
            .values()
            .filter(|e| e.session == id)
            .map(|e| e.key.clone())
            .collect();
        for key in held {
            if !session.lock_delay.is_zero() {
                let until = at_ms.saturating_add(session.lock_delay.as_millis() as u64);
                self.lock_delays.insert(key.clone(), until);
                changes.push(Change::LockDelay(key.clone()));
            }
            match session.behavior {
                SessionBehavior::Release => {
                    if let Some(old) = self.kv.get(&key) {
                        let entry = KvEntry {
                            session: String::new(),
                            modify_index: index,
                            ..old.clone()
                        };
                        self.put_kv(index, entry, changes);
                    }
                }
                SessionBehavior::Delete => {
                    self.remove_kv(index, &key, changes);
                }
            }
        }
        // Expired lock-delays are dropped here, deterministically, so the table stays small.
        let expired: Vec<String> = self
            .lock_delays
            .iter()
            .filter(|(_, until)| **until <= at_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.lock_delays.remove(&key);
            changes.push(Change::LockDelay(key));
        }
    }

    pub(super) fn invalidate_unhealthy_sessions(
        &mut self,
        index: Index,
        at_ms: u64,
        changes: &mut Vec<Change>,
    ) {
        if self.sessions.is_empty() {
            return;
        }
        let doomed: Vec<String> = self
            .sessions
            .values()
            .filter(|s| {
                self.node(&s.node).is_none()
                    || s.node_checks.iter().chain(&s.service_checks).any(|c| {
                        self.check(&s.node, c)
                            .is_none_or(|c| c.status == CheckStatus::Critical)
                    })
            })
            .map(|s| s.id.clone())
            .collect();
        for id in doomed {
            self.session_destroy(index, at_ms, &id, changes);
        }
    }

    /// Forgets the tombstones at or below `up_to`, raising `kv_floor` to the newest of them.
    pub(super) fn kv_reap(&mut self, up_to: Index, changes: &mut Vec<Change>) {
        let reaped: Vec<(String, Index)> = self
            .kv_tombstones
            .iter()
            .filter(|(_, i)| **i <= up_to)
            .map(|(k, i)| (k.clone(), *i))
            .collect();
        for (key, index) in reaped {
            self.kv_tombstones.remove(&key);
            self.indexes.kv_floor = self.indexes.kv_floor.max(index);
            changes.push(Change::Tombstone(key));
        }
    }

    /// Applies `ops` all or nothing: on any failure the state is left exactly as it was.
    pub(super) fn txn(
        &mut self,
        index: Index,
        at_ms: u64,
        ops: &[TxnOp],
        changes: &mut Vec<Change>,
    ) -> Result<Vec<KvEntry>, ApplyError> {
        // Work on a copy (O(1) with persistent maps) and keep it only if every op succeeds.
        let mut work = self.clone();
        let mut work_changes = Vec::new();
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            let fail = |what: String| TxnError { op_index, what };
            let result: Result<Vec<KvEntry>, TxnError> = match op {
                TxnOp::Set { key, value, flags } => {
                    work.kv_set(index, key, value, *flags, None, &mut work_changes);
                    Ok(work.kv_get(key).cloned().into_iter().collect())
                }
                TxnOp::Cas {
                    key,
                    value,
                    flags,
                    index: cas,
                } => {
                    if work.kv_set(index, key, value, *flags, Some(*cas), &mut work_changes) {
                        Ok(work.kv_get(key).cloned().into_iter().collect())
                    } else {
                        Err(fail(format!("failed to set key {key:?}, index is stale")))
                    }
                }
                TxnOp::Lock {
                    key,
                    value,
                    flags,
                    session,
                } => {
                    match work.kv_acquire(
                        index,
                        at_ms,
                        key,
                        value,
                        *flags,
                        session,
                        &mut work_changes,
                    ) {
                        Ok(true) => Ok(work.kv_get(key).cloned().into_iter().collect()),
                        Ok(false) => Err(fail(format!(
                            "failed to lock key {key:?}, lock is already held"
                        ))),
                        Err(e) => Err(fail(e.to_string())),
                    }
                }
                TxnOp::Unlock {
                    key,
                    value,
                    flags,
                    session,
                } => match work.kv_release(index, key, value, *flags, session, &mut work_changes) {
                    Ok(true) => Ok(work.kv_get(key).cloned().into_iter().collect()),
                    Ok(false) => Err(fail(format!(
                        "failed to unlock key {key:?}, lock isn't held"
                    ))),
                    Err(e) => Err(fail(e.to_string())),
                },
                TxnOp::Get { key } => match work.kv_get(key) {
                    Some(e) => Ok(vec![e.clone()]),
                    None => Err(fail(format!("key {key:?} doesn't exist"))),
                },
                TxnOp::GetTree { key } => Ok(work.kv_prefix(key).cloned().collect()),
                TxnOp::CheckIndex { key, index: want } => match work.kv_get(key) {
                    Some(e) if e.modify_index == *want => Ok(vec![e.clone()]),
                    Some(_) => Err(fail(format!(
                        "current modify index for key {key:?} is not {want}"
                    ))),
                    None => Err(fail(format!("key {key:?} doesn't exist"))),
                },
                TxnOp::CheckSession { key, session } => match work.kv_get(key) {
                    Some(e) if e.session == *session => Ok(vec![e.clone()]),
                    Some(_) => Err(fail(format!(
                        "key {key:?} is not locked by session {session:?}"
                    ))),
                    None => Err(fail(format!("key {key:?} doesn't exist"))),
                },
                TxnOp::CheckNotExists { key } => match work.kv_get(key) {
                    Some(_) => Err(fail(format!("key {key:?} exists"))),
                    None => Ok(Vec::new()),
                },
                TxnOp::Delete { key } => {
                    work.kv_delete(index, key, false, None, &mut work_changes);
                    Ok(Vec::new())
                }
                TxnOp::DeleteTree { key } => {
                    work.kv_delete(index, key, true, None, &mut work_changes);
                    Ok(Vec::new())
                }
                TxnOp::DeleteCas { key, index: cas } => {
                    if work.kv_delete(index, key, false, Some(*cas), &mut work_changes) {
                        Ok(Vec::new())
                    } else {
                        Err(fail(format!(
                            "failed to delete key {key:?}, index is stale"
                        )))
                    }
                }
            };
            match result {
                Ok(entries) => results.extend(entries),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(ApplyError::Txn(errors));
        }
        *self = work;
        changes.extend(work_changes);
        Ok(results)
    }
}

/// Consul's session TTL bounds.
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(10);
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86400);
