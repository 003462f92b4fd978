//! The commands that change the catalog. Each is one Raft log entry.

use serde::{Deserialize, Serialize};

use crate::model::{CheckSpec, CheckStatus, Index, KvEntry, NodeSpec, ServiceSpec, Session};

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
    /// Writes a key; with `cas`, only if its ModifyIndex matches (0: only if absent).
    KvSet {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
        cas: Option<Index>,
    },
    /// Deletes a key, or every key under a prefix; with `cas`, only if the index matches.
    KvDelete {
        key: String,
        recurse: bool,
        cas: Option<Index>,
    },
    /// Takes the key's lock for a session (Consul's `?acquire=`).
    KvAcquire {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    /// Gives the key's lock back (Consul's `?release=`).
    KvRelease {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    /// Creates a session; its ID was chosen by the proposer so every replica agrees.
    SessionCreate(Session),
    /// Destroys (invalidates) a session: by request or on TTL expiry.
    SessionDestroy { id: String },
    /// KV operations applied all or nothing.
    Txn(Vec<TxnOp>),
    /// Forgets the KV tombstones of deletions at or before `up_to`; KV reads keep answering
    /// with at least the newest reaped index (Consul's `Tombstone` reap request, proposed by
    /// the leader once the tombstones are older than their TTL).
    KvReap { up_to: Index },
    /// Names the cluster once, right after it forms; later attempts change nothing.
    InitCluster { id: String },
    /// Replaces the whole catalog with a saved snapshot (`PUT /v1/snapshot`).
    Restore(Box<super::Rows>),
}

/// One client's write: a command and the proposer's wall-clock time, so time-based rules
/// (lock-delay) come out the same on every replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub at_ms: u64,
    pub command: Command,
}

/// What one Raft log entry carries: the writes of concurrent clients (group commit), applied in
/// order at the entry's index, each with its own outcome.
///
/// Encoded once, when proposed: MessagePack with fields by name (so a field added with a default
/// still reads older entries), compressed as one zstd frame. The log, the replication messages
/// and the snapshot of recent entries all carry these bytes as they are, and each server decodes
/// them once, to apply. Compression is for the data dir: the named fields repeat in every
/// registration: with zstd at its fastest level the data dir of 100k instances went from 272 to
/// 20 MB, with no loss of write throughput (`benches/README.md`, `writes`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proposal(bytes::Bytes);

/// A proposal's bytes that do not decode as requests (a corrupt log entry or a foreign format).
#[derive(Debug, thiserror::Error)]
#[error("undecodable proposal: {0}")]
pub struct ProposalError(String);

/// zstd's fastest level: the write path pays for it, and higher levels gained little on
/// MessagePack of catalog writes.
const ZSTD_LEVEL: i32 = 1;

/// The first bytes of every zstd frame (RFC 8878 §3.1.1). A MessagePack array, which an
/// uncompressed proposal is, never starts with 0x28, so entries written before compression
/// still decode.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The largest decompressed proposal accepted: a restore of a large catalog is the biggest
/// entry there is; anything claiming more is corrupt, not a reason to allocate.
const MAX_DECODED: u64 = 1 << 30;

/// Decompresses one zstd frame whose header states its size (as `zstd::bulk` writes them),
/// refusing a stated size over `max`.
fn unzstd(bytes: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(bytes) {
        Ok(Some(size)) if size <= max => size,
        Ok(Some(size)) => return Err(format!("frame claims {size} bytes (at most {max})")),
        Ok(None) => return Err("frame does not state its size".into()),
        Err(_) => return Err("not a zstd frame".into()),
    };
    zstd::bulk::decompress(bytes, size as usize).map_err(|e| e.to_string())
}

impl Proposal {
    /// Encodes the requests of one entry.
    pub fn encode(requests: &[Request]) -> Result<Proposal, ProposalError> {
        let raw = rmp_serde::to_vec_named(requests).map_err(|e| ProposalError(e.to_string()))?;
        // Never commit an entry that `decode` would refuse: it would stop every server's state
        // machine, at every restart.
        if raw.len() as u64 > MAX_DECODED {
            return Err(ProposalError(format!(
                "entry of {} bytes (at most {MAX_DECODED})",
                raw.len()
            )));
        }
        let mut packed =
            zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| ProposalError(e.to_string()))?;
        // The buffer was sized for the worst case; recent entries stay in memory for
        // replication (`store::log::Recent`), so they should hold only their bytes.
        packed.shrink_to_fit();
        Ok(Proposal(packed.into()))
    }

    /// The requests, in order.
    pub fn decode(&self) -> Result<Vec<Request>, ProposalError> {
        let raw = if self.0.starts_with(&ZSTD_MAGIC) {
            std::borrow::Cow::Owned(unzstd(&self.0, MAX_DECODED).map_err(ProposalError)?)
        } else {
            std::borrow::Cow::Borrowed(&self.0[..])
        };
        crate::model::msgpack::from_slice(&raw).map_err(|e| ProposalError(e.to_string()))
    }

    /// The encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A KV operation inside a transaction (Consul's `KVTxnOp` verbs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TxnOp {
    Set {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
        index: Index,
    },
    Lock {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Unlock {
        key: String,
        #[serde(with = "crate::model::base64_bytes")]
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Get {
        key: String,
    },
    GetTree {
        key: String,
    },
    CheckIndex {
        key: String,
        index: Index,
    },
    CheckSession {
        key: String,
        session: String,
    },
    CheckNotExists {
        key: String,
    },
    Delete {
        key: String,
    },
    DeleteTree {
        key: String,
    },
    DeleteCas {
        key: String,
        index: Index,
    },
}

/// What a successful command returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    /// `true`/`false` of cas, acquire, release and conditional deletes.
    Bool(bool),
    /// Per-op results of a transaction (entries read or written, in order).
    Txn(Vec<KvEntry>),
}

/// A failed operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

/// Consul's `RegisterRequest`: a node and, optionally, one service and checks on it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub node: NodeSpec,
    /// Leave an existing node's address and meta alone (Consul's `SkipNodeUpdate`).
    pub skip_node_update: bool,
    pub service: Option<ServiceSpec>,
    pub checks: Vec<CheckSpec>,
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
    #[error("invalid session {0:?}")]
    UnknownSession(String),
    #[error("Check {0:?} is in critical state")]
    CriticalCheck(String),
    #[error("Missing check {0:?} for session")]
    MissingSessionCheck(String),
    #[error("transaction failed")]
    Txn(Vec<TxnError>),
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
pub type Outcome = Result<Applied, ApplyError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        (0..20)
            .map(|i| Request {
                at_ms: 1_700_000_000_000 + i,
                command: Command::InitCluster {
                    id: format!("cluster-{i}"),
                },
            })
            .collect()
    }

    #[test]
    fn proposals_are_compressed_and_uncompressed_ones_still_decode() {
        let requests = requests();
        let plain = rmp_serde::to_vec_named(&requests).unwrap();
        let packed = Proposal::encode(&requests).unwrap();
        assert!(packed.0.starts_with(&ZSTD_MAGIC));
        assert!(
            packed.len() * 2 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(packed.decode().unwrap(), requests);
        assert_eq!(Proposal(plain.into()).decode().unwrap(), requests);
    }

    #[test]
    fn a_frame_claiming_too_much_or_cut_short_is_refused() {
        let raw = rmp_serde::to_vec_named(&requests()).unwrap();
        let packed = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
        assert!(unzstd(&packed, 10).unwrap_err().contains("claims"));
        assert!(
            Proposal(packed[..packed.len() - 3].to_vec().into())
                .decode()
                .is_err()
        );
        assert!(Proposal(ZSTD_MAGIC.to_vec().into()).decode().is_err());
    }
}
