//! Session TTL expiry, driven by the server through Raft.
//!
//! Consul keeps session TTL timers in the leader's memory: a renew resets the timer without a
//! Raft write, a new leader restarts every timer from the full TTL, and an expired session is
//! destroyed by a Raft command, so every replica invalidates it at the same log index. Consul
//! waits twice the TTL before invalidating (`SessionTTLMultiplier`); so does Beacon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Command, View, Writer};

/// Consul invalidates a session this many TTLs after its last renewal.
pub const TTL_MULTIPLIER: u32 = 2;
const SCAN_EVERY: Duration = Duration::from_millis(250);

/// Tells whether this server currently leads (only the leader expires sessions).
pub type LeaderCheck = Box<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
pub struct SessionTimers {
    deadlines: Arc<Mutex<HashMap<String, Instant>>>,
    view: View,
}

impl SessionTimers {
    /// Starts the expiry loop; it stops when `shutdown` is cancelled.
    pub fn start(
        view: View,
        writer: Arc<dyn Writer>,
        is_leader: LeaderCheck,
        shutdown: CancellationToken,
    ) -> Self {
        let timers = SessionTimers {
            deadlines: Arc::new(Mutex::new(HashMap::new())),
            view,
        };
        let runner = timers.clone();
        tokio::spawn(async move { runner.run(writer, is_leader, shutdown).await });
        timers
    }

    /// Restarts a session's timer. Returns false if the session does not exist.
    pub fn renew(&self, id: &str) -> bool {
        let state = self.view.load();
        let Some(session) = state.session(id) else {
            return false;
        };
        if let Some(ttl) = session.ttl {
            self.deadlines
                .lock()
                .expect("session timers lock")
                .insert(id.to_string(), Instant::now() + ttl * TTL_MULTIPLIER);
        }
        true
    }

    /// Sessions whose deadline passed; sessions seen for the first time get a full TTL.
    fn expired(&self, now: Instant) -> Vec<String> {
        let state = self.view.load();
        let mut deadlines = self.deadlines.lock().expect("session timers lock");
        let mut live = Vec::new();
        let mut due = Vec::new();
        for session in state.sessions() {
            let Some(ttl) = session.ttl else { continue };
            live.push(session.id.clone());
            let deadline = *deadlines
                .entry(session.id.clone())
                .or_insert(now + ttl * TTL_MULTIPLIER);
            if now >= deadline {
                due.push(session.id.clone());
            }
        }
        deadlines.retain(|id, _| live.contains(id));
        due
    }

    async fn run(
        self,
        writer: Arc<dyn Writer>,
        is_leader: LeaderCheck,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SCAN_EVERY) => {}
            }
            if !is_leader() {
                // A new leader restarts every timer from the full TTL, as Consul's does.
                self.deadlines.lock().expect("session timers lock").clear();
                continue;
            }
            for id in self.expired(Instant::now()) {
                tracing::info!(session = %id, "session TTL expired");
                match writer
                    .write(Command::SessionDestroy { id: id.clone() })
                    .await
                {
                    Ok(_) => {
                        self.deadlines
                            .lock()
                            .expect("session timers lock")
                            .remove(&id);
                    }
                    Err(e) => tracing::warn!(session = %id, error = %e, "could not expire session"),
                }
            }
        }
    }
}
