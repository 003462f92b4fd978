//! The identity foca gossips for each member.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A member as foca sees it. Every packet header carries two of these, so
/// they stay small: tags are the only variable part and `Pool::start`
/// bounds their encoded size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    /// Generation: milliseconds since the epoch when this identity was
    /// made. A restarted agent (same name and address) or one refuting a
    /// false "down" gets a larger one, so its new identity wins the
    /// address conflict and the pool sees it alive again.
    pub bump: u64,
    pub tags: Vec<(String, String)>,
}

// Tags are fixed for one generation, so they do not take part in equality:
// this keeps comparisons (done on every packet) cheap.
impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        self.bump == other.bump && self.addr == other.addr && self.name == other.name
    }
}

impl Eq for NodeId {}

impl NodeId {
    pub(crate) fn new(name: String, addr: SocketAddr, tags: &BTreeMap<String, String>) -> Self {
        NodeId {
            name,
            addr,
            bump: now_ms(),
            tags: tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    /// A stand-in for a peer we only know by address: foca accepts an
    /// announce addressed to any identity sharing its address.
    pub(crate) fn placeholder(addr: SocketAddr) -> Self {
        NodeId {
            name: String::new(),
            addr,
            bump: 0,
            tags: Vec::new(),
        }
    }

    pub(crate) fn tag_map(&self) -> BTreeMap<String, String> {
        self.tags.iter().cloned().collect()
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    // Serf refutes a false "dead" by rejoining with a higher incarnation;
    // foca needs a new identity instead, which must win the conflict.
    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: now_ms().max(self.bump + 1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.bump, &self.name) > (adversary.bump, &adversary.name)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
