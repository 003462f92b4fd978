//! The commands that change the catalog. Each is one Raft log entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{CheckDefinition, CheckStatus, TaggedAddress, Weights};

/// A change to the catalog, proposed through Raft and applied identically on every server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates or updates a node and, optionally, one service and some checks on it
    /// (Consul's `Catalog.Register`; the agent endpoints build the same thing).
    Register(Box<Registration>),
    /// Removes a check, a service (with its checks), or a whole node (Consul's `Catalog.Deregister`).
    Deregister {
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    },
    /// Sets a check's status and output. Fails if the check does not exist.
    UpdateCheck {
        node: String,
        check_id: String,
        status: CheckStatus,
        output: Option<String>,
    },
}

/// The node part of a registration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

/// A service instance as registered (without indexes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRegistration {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub kind: String,
}

/// A check as registered. `status` None keeps an existing check's status, or starts a new one
/// critical, as Consul does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckRegistration {
    pub check_id: String,
    pub name: String,
    pub status: Option<CheckStatus>,
    pub notes: String,
    pub output: String,
    pub service_id: String,
    pub definition: CheckDefinition,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeRegistration,
    /// Leave an existing node's address and meta alone (Consul's `SkipNodeUpdate`).
    pub skip_node_update: bool,
    pub service: Option<ServiceRegistration>,
    pub checks: Vec<CheckRegistration>,
    /// Remove the service's checks that this registration does not list
    /// (`?replace-existing-checks`).
    pub replace_existing_checks: bool,
}

/// Why a command was refused. Refusal is deterministic: every replica refuses the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("Missing node registration")]
    MissingNode,
    #[error("Missing service name")]
    MissingServiceName,
    #[error("Unknown node {0:?}")]
    UnknownNode(String),
    #[error("Unknown service ID {0:?} for check")]
    UnknownServiceForCheck(String),
    #[error("Unknown service ID {0:?}")]
    UnknownService(String),
    #[error("Unknown check ID {0:?}")]
    UnknownCheck(String),
}

impl ApplyError {
    /// True when the command named something that does not exist (HTTP 404 rather than 400).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ApplyError::UnknownNode(_)
                | ApplyError::UnknownService(_)
                | ApplyError::UnknownCheck(_)
        )
    }
}

/// What applying one command produced.
pub type Outcome = Result<(), ApplyError>;
