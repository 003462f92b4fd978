//! Session TTL timers, kept in the leader's memory as Consul keeps them.
//!
//! A renew (through any server: followers forward it over RPC) resets the session's deadline
//! without a Raft write; a new leader restarts every session's timer at the full `2 × TTL`
//! (Consul's `SessionTTLMultiplier`); an expired session is destroyed by a Raft command, so
//! every replica invalidates it at the same log index. The catalog never reads a clock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::ClusterError;
use crate::raft::rpc::SessionRenewal;
use crate::view::View;

/// Consul invalidates a session this many TTLs after its last renewal.
pub const TTL_MULTIPLIER: u32 = 2;

/// Deadlines by session ID; `None` while this server does not lead.
#[derive(Clone)]
pub struct SessionTimers {
    deadlines: Arc<Mutex<Option<HashMap<String, Instant>>>>,
    view: View,
}

impl SessionTimers {
    pub fn new(view: View) -> Self {
        SessionTimers {
            deadlines: Arc::new(Mutex::new(None)),
            view,
        }
    }

    /// Called when this server becomes leader: every TTL session gets a full `2 × TTL` from now.
    pub fn start_leading(&self, now: Instant) {
        let state = self.view.load();
        let deadlines = state
            .sessions()
            .filter_map(|s| Some((s.id.clone(), now + s.ttl? * TTL_MULTIPLIER)))
            .collect();
        *self.lock() = Some(deadlines);
    }

    /// Called when this server stops leading: its timers mean nothing any more.
    pub fn stop_leading(&self) {
        *self.lock() = None;
    }

    /// Sessions whose deadline passed by `now`. Sessions seen for the first time (created since
    /// the last scan) get a full `2 × TTL`; destroyed ones are forgotten.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        let state = self.view.load();
        let mut guard = self.lock();
        let Some(deadlines) = guard.as_mut() else {
            return Vec::new();
        };
        let mut live = HashSet::new();
        let mut due = Vec::new();
        for session in state.sessions() {
            let Some(ttl) = session.ttl else { continue };
            live.insert(session.id.as_str());
            let deadline = *deadlines
                .entry(session.id.clone())
                .or_insert(now + ttl * TTL_MULTIPLIER);
            if now >= deadline {
                due.push(session.id.clone());
            }
        }
        deadlines.retain(|id, _| live.contains(id.as_str()));
        due
    }

    /// Forgets a destroyed session's timer.
    pub fn forget(&self, id: &str) {
        if let Some(deadlines) = self.lock().as_mut() {
            deadlines.remove(id);
        }
    }

    fn renew_at(&self, id: &str, now: Instant) -> Result<bool, ClusterError> {
        let mut guard = self.lock();
        let Some(deadlines) = guard.as_mut() else {
            return Err(ClusterError::NotLeader);
        };
        let state = self.view.load();
        let Some(session) = state.session(id) else {
            return Ok(false);
        };
        if let Some(ttl) = session.ttl {
            deadlines.insert(id.to_string(), now + ttl * TTL_MULTIPLIER);
        }
        Ok(true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, Instant>>> {
        self.deadlines.lock().expect("session timers lock")
    }
}

impl SessionRenewal for SessionTimers {
    fn renew(&self, id: &str) -> Result<bool, ClusterError> {
        self.renew_at(id, Instant::now())
    }
}

/// How often the leader looks for expired sessions.
pub const SCAN_EVERY: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Command, Registration, State};
    use crate::model::{NodeSpec, Session};

    fn view_with_session(ttl: Duration) -> View {
        let mut state = State::new();
        let mut changes = Vec::new();
        let register = Command::Register(Box::new(Registration {
            node: NodeSpec {
                name: "n1".into(),
                address: "10.0.0.1".into(),
                ..NodeSpec::default()
            },
            ..Registration::default()
        }));
        state.apply(1, 0, &register, &mut changes).unwrap();
        let create = Command::SessionCreate(Session {
            id: "s1".into(),
            node: "n1".into(),
            ttl: Some(ttl),
            ..Session::default()
        });
        state.apply(2, 0, &create, &mut changes).unwrap();
        View::new(state)
    }

    #[test]
    fn a_new_leader_restarts_every_timer_at_twice_the_ttl() {
        let timers = SessionTimers::new(view_with_session(Duration::from_secs(10)));
        let elected = Instant::now();
        timers.start_leading(elected);
        assert!(timers.expired(elected + Duration::from_secs(19)).is_empty());
        assert_eq!(timers.expired(elected + Duration::from_secs(20)), ["s1"]);
    }

    #[test]
    fn a_renew_restarts_the_timer_and_only_a_leader_takes_renewals() {
        let timers = SessionTimers::new(view_with_session(Duration::from_secs(10)));
        assert_eq!(timers.renew("s1"), Err(ClusterError::NotLeader));
        let elected = Instant::now();
        timers.start_leading(elected);
        let renewed = elected + Duration::from_secs(15);
        assert_eq!(timers.renew_at("s1", renewed), Ok(true));
        assert_eq!(timers.renew_at("nope", renewed), Ok(false));
        assert!(timers.expired(renewed + Duration::from_secs(19)).is_empty());
        assert_eq!(timers.expired(renewed + Duration::from_secs(20)), ["s1"]);
        timers.stop_leading();
        assert!(timers.expired(renewed + Duration::from_secs(60)).is_empty());
    }
}
