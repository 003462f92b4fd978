//! Custom broadcasts riding on foca's gossip: leave intents, force-leaves
//! and keyring state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::identity::NodeId;
use super::keyring::Fingerprint;

/// Maps keyed by member name are cleared past this size: names come from
/// the network, and forgetting what was seen only costs a re-broadcast.
const MAX_TRACKED: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Notice {
    /// The member (at this generation) is about to leave: its coming
    /// "down" is a leave, not a failure (Serf's leave intent).
    Leave { name: String, bump: u64 },
    /// Consul's force-leave: treat the member as left.
    ForceLeave {
        name: String,
        bump: u64,
        prune: bool,
    },
    /// Which keys a member holds, primary first, and the version of the
    /// keyring it holds them from (so an agent that restarted, or missed a
    /// change, numbers its next change above every version in the pool).
    KeyReport {
        name: String,
        bump: u64,
        version: u64,
        keys: Vec<Fingerprint>,
        keyring_version: u64,
    },
    /// The pool's keyring after an operator change; the highest
    /// (version, origin) wins everywhere.
    KeySet {
        version: u64,
        origin: String,
        keys: Vec<Vec<u8>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoticeKey {
    Leave(String, u64),
    ForceLeave(String, u64, bool),
    KeyReport(String, u64, u64),
    KeySet(u64, String),
}

impl foca::Invalidates for NoticeKey {
    fn invalidates(&self, other: &Self) -> bool {
        use NoticeKey::*;
        match (self, other) {
            (Leave(a, x), Leave(b, y)) => a == b && x >= y,
            (ForceLeave(a, x, p), ForceLeave(b, y, q)) => a == b && x >= y && (*p || !*q),
            (KeyReport(a, x, v), KeyReport(b, y, w)) => a == b && (x, v) >= (y, w),
            (KeySet(v, o), KeySet(w, p)) => (v, o) >= (w, p),
            _ => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("malformed gossip broadcast: {0}")]
pub(crate) struct NoticeError(String);

/// Decides which broadcasts are news (to apply and keep spreading) and
/// queues them for the driver, which cannot be reached from inside foca.
pub(crate) struct Handler {
    leaves: HashMap<String, u64>,
    force: HashMap<String, (u64, bool)>,
    reports: HashMap<String, (u64, u64)>,
    keyset: (u64, String),
    out: Arc<Mutex<Vec<Notice>>>,
}

impl Handler {
    pub(crate) fn new(out: Arc<Mutex<Vec<Notice>>>) -> Handler {
        Handler {
            leaves: HashMap::new(),
            force: HashMap::new(),
            reports: HashMap::new(),
            keyset: (0, String::new()),
            out,
        }
    }
}

fn bounded<V>(map: &mut HashMap<String, V>) {
    if map.len() >= MAX_TRACKED {
        map.clear();
    }
}

impl foca::BroadcastHandler<NodeId> for Handler {
    type Key = NoticeKey;
    type Error = NoticeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        _sender: Option<&NodeId>,
    ) -> Result<Option<NoticeKey>, NoticeError> {
        let notice: Notice = postcard::from_bytes(data).map_err(|e| NoticeError(e.to_string()))?;
        let key = match &notice {
            Notice::Leave { name, bump } => {
                if self.leaves.get(name).is_some_and(|b| b >= bump) {
                    return Ok(None);
                }
                bounded(&mut self.leaves);
                self.leaves.insert(name.clone(), *bump);
                NoticeKey::Leave(name.clone(), *bump)
            }
            Notice::ForceLeave { name, bump, prune } => {
                if self
                    .force
                    .get(name)
                    .is_some_and(|(b, p)| (b, p) >= (bump, prune))
                {
                    return Ok(None);
                }
                bounded(&mut self.force);
                self.force.insert(name.clone(), (*bump, *prune));
                NoticeKey::ForceLeave(name.clone(), *bump, *prune)
            }
            Notice::KeyReport {
                name,
                bump,
                version,
                ..
            } => {
                if self
                    .reports
                    .get(name)
                    .is_some_and(|seen| *seen >= (*bump, *version))
                {
                    return Ok(None);
                }
                bounded(&mut self.reports);
                self.reports.insert(name.clone(), (*bump, *version));
                NoticeKey::KeyReport(name.clone(), *bump, *version)
            }
            Notice::KeySet {
                version, origin, ..
            } => {
                if (*version, origin) <= (self.keyset.0, &self.keyset.1) {
                    return Ok(None);
                }
                self.keyset = (*version, origin.clone());
                NoticeKey::KeySet(*version, origin.clone())
            }
        };
        if let Ok(mut out) = self.out.lock() {
            // The driver drains after every foca call; the cap only guards
            // against a driver bug turning into unbounded growth.
            if out.len() < MAX_TRACKED {
                out.push(notice);
            }
        }
        Ok(Some(key))
    }
}
