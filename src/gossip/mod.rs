//! The LAN gossip pool: which agents are in the datacenter and in what
//! state.
//!
//! This module owns:
//! - membership and failure detection over UDP, with SWIM and suspicion
//!   (the protocol behind HashiCorp memberlist/Serf), through the sans-IO
//!   `foca` crate, which is driven here by one tokio task;
//! - member tags (Serf tags such as `role`, `dc`, `port`, `id`, `vsn`,
//!   `expect`), opaque to this module;
//! - member statuses as Consul/Serf report them (`alive`, `leaving`,
//!   `left`, `failed`), graceful leave, force-leave and reaping;
//! - gossip encryption (Consul's `encrypt`, AES-GCM) and the pool-wide
//!   keyring (`consul keyring -list/-install/-use/-remove`).
//!
//! Nothing here knows about Raft, the catalog or the WAN pool.
//!
//! Wire format: every UDP packet is `[version][payload]`. Version 1 is a
//! plain foca packet; version 2 is `[12-byte nonce][AES-GCM ciphertext +
//! 16-byte tag]` under the primary key, opened with any installed key.
//! Neither is compatible with memberlist's: Beacon agents only gossip with
//! Beacon agents.
//!
//! Where this differs from Serf, and why:
//! - leave intents, force-leaves and keyring changes travel as foca custom
//!   broadcasts, not Serf user events or queries; a keyring change carries
//!   the whole resulting keyring (highest version wins), so members that
//!   see changes out of order still converge;
//! - `keyring -list` counts come from key fingerprints members gossip,
//!   not from a query answered by every member;
//! - after [`Pool::leave`] the agent stays out; rejoining needs a new
//!   [`Pool`];
//! - there is no TCP push/pull of the full state: a newcomer announces to a
//!   few random members for its first seconds, each answer listing about
//!   ten members, and keyring versions are relearned from members' reports
//!   rather than read from disk.

mod driver;
mod identity;
mod keyring;
mod notice;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use keyring::{Keyring, generate_key};

use driver::Command;

/// Settings of the LAN pool. [`Config::lan`] gives Consul's LAN defaults
/// (memberlist's `DefaultLANConfig` plus Serf's timeouts).
#[derive(Clone, Debug)]
pub struct Config {
    /// UDP address to bind. Port 0 picks a free port.
    pub bind: SocketAddr,
    /// Address other members are told to reach this agent at. Must not be
    /// an unspecified address (`0.0.0.0`, `::`); port 0 means "the bound
    /// port".
    pub advertise: SocketAddr,
    /// Node name, unique in the pool.
    pub node_name: String,
    /// Serf tags, gossiped with the member and opaque here. Their encoded
    /// size is bounded (see [`StartError::TagsTooLarge`]).
    pub tags: BTreeMap<String, String>,
    /// How often a random member is probed (memberlist `ProbeInterval`,
    /// LAN: 1 s).
    pub probe_interval: Duration,
    /// How long a direct probe waits for its ack before asking others to
    /// probe indirectly (memberlist `ProbeTimeout`, LAN: 500 ms). Must be
    /// shorter than `probe_interval`.
    pub probe_timeout: Duration,
    /// Suspicion lasts `suspicion_mult × max(1, log10(n)) × probe_interval`
    /// for `n` alive members before a suspect is declared failed
    /// (memberlist `SuspicionMult`, LAN: 4).
    pub suspicion_mult: u32,
    /// How often queued updates are gossiped (memberlist `GossipInterval`,
    /// LAN: 200 ms).
    pub gossip_interval: Duration,
    /// How many random members each gossip round goes to (memberlist
    /// `GossipNodes`, LAN: 3).
    pub gossip_nodes: usize,
    /// Each update is retransmitted `retransmit_mult × ⌈log10(n + 1)⌉`
    /// times (memberlist `RetransmitMult`, LAN: 4).
    pub retransmit_mult: u32,
    /// How long a left member stays listed (Serf `TombstoneTimeout`,
    /// 24 h).
    pub tombstone_timeout: Duration,
    /// How long a failed member stays listed before it is reaped (Serf
    /// `ReconnectTimeout`, Consul default 72 h).
    pub reconnect_timeout: Duration,
    /// How long [`Pool::leave`] gossips the intent to leave before leaving
    /// (Serf `LeavePropagateDelay`, 1 s).
    pub leave_propagate_delay: Duration,
    /// Gossip encryption keys; `None` sends packets in clear.
    pub keyring: Option<Keyring>,
    /// Where the keyring is persisted (rewritten on every change, as
    /// Consul's `serf/local.keyring`); `None` keeps it in memory only.
    pub keyring_file: Option<PathBuf>,
}

impl Config {
    /// Consul's LAN defaults for everything but the name and addresses.
    pub fn lan(node_name: impl Into<String>, bind: SocketAddr, advertise: SocketAddr) -> Config {
        Config {
            bind,
            advertise,
            node_name: node_name.into(),
            tags: BTreeMap::new(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            retransmit_mult: 4,
            tombstone_timeout: Duration::from_secs(24 * 3600),
            reconnect_timeout: Duration::from_secs(72 * 3600),
            leave_propagate_delay: Duration::from_secs(1),
            keyring: None,
            keyring_file: None,
        }
    }
}

/// A member's status, numbered as Consul's and Serf's `MemberStatus`
/// (0, "none", is never reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Answering probes.
    Alive = 1,
    /// Announced it is leaving; will be `Left` shortly.
    Leaving = 2,
    /// Left gracefully (or was force-left); listed until the tombstone
    /// timeout.
    Left = 3,
    /// Stopped answering probes and did not refute the suspicion; listed
    /// until the reconnect timeout.
    Failed = 4,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Alive => "alive",
            Status::Leaving => "leaving",
            Status::Left => "left",
            Status::Failed => "failed",
        })
    }
}

/// One member of the pool as this agent sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Advertised gossip address.
    pub addr: SocketAddr,
    /// Serf tags.
    pub tags: BTreeMap<String, String>,
    /// Current status.
    pub status: Status,
    /// When this agent saw the current status begin.
    pub since: Instant,
}

/// Keys held across the pool, as `consul keyring -list` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyringStatus {
    /// Each key (base64) with how many alive members hold it. A key this
    /// agent never held is listed as `unknown:<fingerprint hex>`.
    pub keys: BTreeMap<String, usize>,
    /// Each key with how many alive members use it as their primary key.
    pub primary: BTreeMap<String, usize>,
    /// Alive members, this agent included.
    pub members: usize,
}

/// Why [`Pool::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The UDP socket could not be bound.
    #[error("cannot bind gossip socket {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Error from the OS.
        source: std::io::Error,
    },
    /// The advertise address is `0.0.0.0` or `::`: peers could not reach it.
    #[error("gossip advertise address {0} is unspecified; set an address other members can reach")]
    UnspecifiedAdvertise(SocketAddr),
    /// Name plus tags too large to gossip (every packet carries two).
    #[error("node name and tags take {size} bytes encoded; at most {max} fit in gossip packets")]
    TagsTooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// Limit in bytes.
        max: usize,
    },
    /// A setting is out of range.
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
}

/// Why one address of a [`Pool::join`] did not work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinFailure {
    /// Nothing valid came back before the timeout (down, unreachable,
    /// or a different gossip key on one side).
    NoAnswer,
    /// The packet could not be sent.
    Send(String),
    /// The address is this agent's own.
    Ourselves,
}

impl fmt::Display for JoinFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinFailure::NoAnswer => f.write_str(
                "no answer (agent down or unreachable, or gossip encryption keys differ)",
            ),
            JoinFailure::Send(e) => write!(f, "could not send: {e}"),
            JoinFailure::Ourselves => f.write_str("this is the local agent"),
        }
    }
}

/// Why [`Pool::join`] failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No address was given.
    #[error("no address to join")]
    NoAddresses,
    /// This agent has left the pool.
    #[error("this agent has left the gossip pool")]
    Left,
    /// The driver task has ended (stop token cancelled).
    #[error("gossip pool is stopped")]
    Stopped,
    /// No address answered.
    #[error("failed to join any address: {}", list_failures(.0))]
    Failed(Vec<(SocketAddr, JoinFailure)>),
}

fn list_failures(failures: &[(SocketAddr, JoinFailure)]) -> String {
    failures
        .iter()
        .map(|(addr, why)| format!("{addr}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why [`Pool::force_leave`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ForceLeaveError {
    /// No member has this name.
    #[error("no member named {0:?}")]
    Unknown(String),
    /// The member is alive: force-leave would be refuted at once.
    #[error("member {0:?} is alive; force-leave only applies to failed or left members")]
    Alive(String),
    /// The driver task has ended (stop token cancelled).
    #[error("gossip pool is stopped")]
    Stopped,
}

/// Errors about gossip keys and keyring operations.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not standard base64.
    #[error("gossip key is not valid base64: {0}")]
    Base64(String),
    /// Decoded to a size AES does not take.
    #[error("gossip key must decode to 16, 24 or 32 bytes (AES-128/192/256), got {0} bytes")]
    Length(usize),
    /// The keyring file could not be read or written.
    #[error("keyring file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Error from the OS.
        source: std::io::Error,
    },
    /// The keyring file is not a JSON array of base64 strings.
    #[error("keyring file {path} is not a JSON array of base64 keys: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A keyring needs at least one key.
    #[error("keyring holds no key")]
    Empty,
    /// Too many keys installed.
    #[error("keyring is full: at most {0} keys")]
    TooMany(usize),
    /// Keyring operations need encryption enabled.
    #[error("gossip encryption is not enabled: no keyring to change")]
    NotEnabled,
    /// `use`/`remove` of a key that is not installed.
    #[error("key {0} is not installed")]
    NotInstalled(String),
    /// `remove` of the primary key.
    #[error("removing the primary key is not allowed; make another key primary first")]
    RemovePrimary,
    /// `use` of a key some alive members do not hold yet.
    #[error(
        "key is installed on {holding} of {members} alive members; install it everywhere first"
    )]
    NotEverywhere {
        /// Alive members holding the key.
        holding: usize,
        /// Alive members.
        members: usize,
    },
    /// The driver task has ended (stop token cancelled).
    #[error("gossip pool is stopped")]
    Stopped,
}

/// State shared between the [`Pool`] handles and the driver task.
pub(crate) struct Shared {
    members: ArcSwap<Vec<Member>>,
    changes: watch::Sender<u64>,
    keyring: ArcSwapOption<Keyring>,
    keys: Mutex<KeyState>,
    /// Serialises operator keyring changes (read, change, write back).
    key_ops: Mutex<()>,
    keyring_file: Option<PathBuf>,
    /// Version of the keyring last written to `keyring_file`, so writes
    /// finishing out of order never leave an older keyring on disk.
    persisted: Arc<Mutex<(u64, String)>>,
}

/// Keyring bookkeeping; behind one lock so operator changes and gossiped
/// ones are applied one at a time.
pub(crate) struct KeyState {
    /// (version, origin) of the keyring in use; gossiped changes apply
    /// only when newer.
    version: (u64, String),
    /// The highest keyring version any member has reported: a change made
    /// here is numbered above it, so it wins everywhere even when this
    /// agent has just restarted (versions are not kept on disk).
    floor: u64,
    /// Base64 of every key ever seen, by fingerprint, to name the keys
    /// members report.
    known: BTreeMap<keyring::Fingerprint, String>,
    /// Fingerprints each member reports, primary first.
    reports: BTreeMap<String, Vec<keyring::Fingerprint>>,
}

/// Handle to the LAN gossip pool. Cheap to clone; every clone drives the
/// same pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    name: String,
}

impl Pool {
    /// Binds the UDP socket and starts the driver task(s); they end when
    /// `stop` is cancelled.
    ///
    /// # Errors
    /// [`StartError`] when the socket cannot be bound, the advertise
    /// address is unspecified, the tags are too large or a setting is
    /// out of range.
    pub async fn start(config: Config, stop: CancellationToken) -> Result<Pool, StartError> {
        driver::start(config, stop).await
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This agent's node name.
    pub fn local_name(&self) -> &str {
        &self.inner.name
    }

    /// Every member known, this agent included: alive, leaving, failed
    /// (until `reconnect_timeout`) and left (until `tombstone_timeout`),
    /// sorted by name. Cheap: a shared snapshot.
    pub fn members(&self) -> Arc<Vec<Member>> {
        self.inner.shared.members.load_full()
    }

    /// A counter bumped on every change of [`Pool::members`] (new member,
    /// status change, reaped member).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.shared.changes.subscribe()
    }

    /// Announces this agent to each address and waits up to `timeout`
    /// for answers. Announces are repeated while waiting, since UDP may
    /// drop them. Returns once every address answered or failed, a short
    /// grace (one probe interval) after the first answer, or at the
    /// timeout.
    ///
    /// Returns how many addresses answered.
    ///
    /// # Errors
    /// [`JoinError::Failed`] when none answered, with the reason for each
    /// address; [`JoinError::Left`] after [`Pool::leave`];
    /// [`JoinError::Stopped`] once stopped.
    pub async fn join(&self, addrs: &[SocketAddr], timeout: Duration) -> Result<usize, JoinError> {
        if addrs.is_empty() {
            return Err(JoinError::NoAddresses);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Join {
                addrs: addrs.to_vec(),
                timeout,
                reply,
            })
            .map_err(|_| JoinError::Stopped)?;
        answer.await.map_err(|_| JoinError::Stopped)?
    }

    /// Graceful leave: members see this agent as leaving, then left (not
    /// failed). Gossips the intent for `leave_propagate_delay`, then
    /// leaves and returns. The agent no longer takes part in the pool
    /// afterwards.
    pub async fn leave(&self) {
        let (reply, done) = oneshot::channel();
        if self.inner.commands.send(Command::Leave { reply }).is_ok() {
            let _ = done.await;
        }
    }

    /// Consul's force-leave: turns a failed member into left everywhere in
    /// the pool (so it is reaped after `tombstone_timeout`, not
    /// `reconnect_timeout`). With `prune`, it is removed from every
    /// member list at once. Takes effect asynchronously, through gossip.
    ///
    /// # Errors
    /// [`ForceLeaveError::Unknown`] for a name not listed,
    /// [`ForceLeaveError::Alive`] for an alive member (Consul's force-leave
    /// has no lasting effect on those: they refute it).
    pub fn force_leave(&self, name: &str, prune: bool) -> Result<(), ForceLeaveError> {
        let members = self.members();
        let member = members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| ForceLeaveError::Unknown(name.to_string()))?;
        if member.status == Status::Alive {
            return Err(ForceLeaveError::Alive(name.to_string()));
        }
        self.inner
            .commands
            .send(Command::ForceLeave {
                name: name.to_string(),
                prune,
            })
            .map_err(|_| ForceLeaveError::Stopped)
    }

    /// The keys held across the pool (`consul keyring -list`), from the
    /// reports members gossip.
    pub fn keyring_list(&self) -> KeyringStatus {
        let shared = &self.inner.shared;
        let alive: Vec<String> = self
            .members()
            .iter()
            .filter(|m| m.status == Status::Alive)
            .map(|m| m.name.clone())
            .collect();
        let mut status = KeyringStatus {
            members: alive.len(),
            ..KeyringStatus::default()
        };
        let local = shared.keyring.load_full();
        let Ok(keys) = shared.keys.lock() else {
            return status;
        };
        let name_of = |fp: &keyring::Fingerprint| {
            keys.known.get(fp).cloned().unwrap_or_else(|| {
                let hex: String = fp.iter().map(|b| format!("{b:02x}")).collect();
                format!("unknown:{hex}")
            })
        };
        for name in &alive {
            let held = if *name == self.inner.name {
                local.as_ref().map(|k| k.fingerprints())
            } else {
                keys.reports.get(name).cloned()
            };
            let Some(held) = held else { continue };
            for (i, fp) in held.iter().enumerate() {
                let key = name_of(fp);
                if i == 0 {
                    *status.primary.entry(key.clone()).or_default() += 1;
                }
                *status.keys.entry(key).or_default() += 1;
            }
        }
        status
    }

    /// Installs a key on every member (`consul keyring -install`), without
    /// making it primary. Persisted to `keyring_file` by each member; here
    /// before returning (a small blocking write: call from
    /// `spawn_blocking` where that matters), elsewhere off the runtime.
    ///
    /// # Errors
    /// A bad key, [`KeyError::NotEnabled`] without encryption,
    /// [`KeyError::TooMany`], or [`KeyError::Io`] when the keyring file
    /// cannot be written (nothing changes then).
    pub fn keyring_install(&self, key: &str) -> Result<(), KeyError> {
        self.change_keyring(|ring| ring.with_installed(key))
    }

    /// Makes an installed key the primary key everywhere (`consul keyring
    /// -use`).
    ///
    /// # Errors
    /// [`KeyError::NotInstalled`] when this agent does not hold the key,
    /// [`KeyError::NotEverywhere`] when some alive member does not report
    /// holding it (switching then would cut that member off), plus the
    /// errors of [`Pool::keyring_install`].
    pub fn keyring_use(&self, key: &str) -> Result<(), KeyError> {
        let ring = self
            .inner
            .shared
            .keyring
            .load_full()
            .ok_or(KeyError::NotEnabled)?;
        let canonical = ring.with_primary(key)?.primary();
        let status = self.keyring_list();
        let holding = status.keys.get(&canonical).copied().unwrap_or(0);
        if holding < status.members {
            return Err(KeyError::NotEverywhere {
                holding,
                members: status.members,
            });
        }
        self.change_keyring(|ring| ring.with_primary(key))
    }

    /// Removes a key from every member (`consul keyring -remove`).
    ///
    /// # Errors
    /// [`KeyError::RemovePrimary`] for the primary key,
    /// [`KeyError::NotInstalled`] for a key not installed, plus the errors
    /// of [`Pool::keyring_install`].
    pub fn keyring_remove(&self, key: &str) -> Result<(), KeyError> {
        self.change_keyring(|ring| ring.without(key))
    }

    fn change_keyring(
        &self,
        change: impl FnOnce(&Keyring) -> Result<Keyring, KeyError>,
    ) -> Result<(), KeyError> {
        let shared = &self.inner.shared;
        if self.inner.commands.is_closed() {
            return Err(KeyError::Stopped);
        }
        let _op = shared.key_ops.lock().map_err(|_| KeyError::Stopped)?;
        let current = shared.keyring.load_full().ok_or(KeyError::NotEnabled)?;
        let next = change(&current)?;
        if next.same_keys(&current) {
            return Ok(());
        }
        // Held across the write: the driver persists gossiped keyrings to
        // the same file from the blocking pool.
        let mut persisted = shared.persisted.lock().map_err(|_| KeyError::Stopped)?;
        // Written before anything changes, so a failed write changes nothing.
        if let Some(path) = &shared.keyring_file {
            next.save(path)?;
        }
        let raw = next.raw_keys();
        let version = {
            let mut keys = shared.keys.lock().map_err(|_| KeyError::Stopped)?;
            keys.version = (keys.version.0.max(keys.floor) + 1, self.inner.name.clone());
            keys.known.extend(next.known());
            shared.keyring.store(Some(Arc::new(next)));
            keys.version.clone()
        };
        *persisted = persisted.clone().max(version.clone());
        drop(persisted);
        let notice = notice::Notice::KeySet {
            version: version.0,
            origin: version.1,
            keys: raw,
        };
        self.inner
            .commands
            .send(Command::Broadcast(notice))
            .map_err(|_| KeyError::Stopped)
    }
}
