//! The agent's side of the LAN gossip pool: starting it with Consul's Serf tags and the
//! keyring from the data dir, `retry_join`, the servers it lists, and the cluster port's
//! `Gossip` over it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Gossip, KeyringReport, PoolError, PoolMember};
use crate::config::{self, Config, Mode};
use crate::gossip::{self, Keyring, Pool, Status};

/// The keyring's file in the data dir (Consul's `serf/local.keyring`).
pub const KEYRING_FILE: &str = "local.keyring";

/// How long `join` waits for an answer from the addresses it was given.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serf's tags for this agent, as Consul sets them (`agent/consul/server_serf.go`,
/// `client_serf.go`): `role` (`consul` for servers, `node` for clients), `dc`, `port` (server
/// RPC), `build`, `id` (node ID), `vsn`, and `expect` on servers bootstrapping.
pub fn tags(config: &Config, node_id: &str, rpc_port: u16) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([
        ("dc".to_string(), config.datacenter.clone()),
        (
            "build".to_string(),
            format!("{}:beacon", env!("CARGO_PKG_VERSION")),
        ),
        ("id".to_string(), node_id.to_string()),
        ("vsn".to_string(), "2".to_string()),
    ]);
    if config.mode == Mode::Client {
        tags.insert("role".into(), "node".into());
    } else {
        tags.insert("role".into(), "consul".into());
        tags.insert("port".into(), rpc_port.to_string());
        if config.bootstrap_expect > 0 {
            tags.insert("expect".into(), config.bootstrap_expect.to_string());
        }
    }
    tags
}

/// Starts the pool: the keyring saved in the data dir wins over `encrypt` (as Consul, which
/// reads `encrypt` only when no keyring file exists yet).
pub async fn start(
    settings: &config::Gossip,
    node_name: &str,
    tags: BTreeMap<String, String>,
    data_dir: &Path,
    stop: CancellationToken,
) -> anyhow::Result<Pool> {
    let keyring_file = data_dir.join(KEYRING_FILE);
    let keyring = match Keyring::load(&keyring_file)
        .with_context(|| format!("reading the gossip keyring {}", keyring_file.display()))?
    {
        Some(keyring) => {
            if settings.encrypt.is_some() {
                tracing::info!(file = %keyring_file.display(), "using the gossip keyring saved in the data dir; the encrypt key is ignored");
            }
            Some(keyring)
        }
        None => match &settings.encrypt {
            Some(key) => Some(Keyring::new(key).context("encrypt")?),
            None => None,
        },
    };
    let mut pool_config =
        gossip::Config::lan(node_name.to_string(), settings.bind, settings.advertise);
    pool_config.tags = tags;
    pool_config.probe_interval = settings.probe_interval;
    pool_config.probe_timeout = settings.probe_timeout;
    pool_config.suspicion_mult = settings.suspicion_mult;
    pool_config.gossip_interval = settings.gossip_interval;
    pool_config.gossip_nodes = settings.gossip_nodes;
    pool_config.retransmit_mult = settings.retransmit_mult;
    pool_config.reconnect_timeout = settings.reconnect_timeout;
    pool_config.keyring_file = keyring.as_ref().map(|_| keyring_file.clone());
    pool_config.keyring = keyring;
    let pool = Pool::start(pool_config, stop)
        .await
        .with_context(|| format!("starting the gossip pool on {}", settings.bind))?;
    tracing::info!(
        bind = %pool.local_addr(),
        advertise = %settings.advertise,
        encrypted = settings.encrypt.is_some() || keyring_file.exists(),
        "listening serf-lan"
    );
    Ok(pool)
}

/// Resolves a `retry_join` entry: `host` or `host:port`, port 8301 by default.
pub async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    let with_port = if addr.parse::<SocketAddr>().is_ok() {
        addr.to_string()
    } else if let Ok(ip) = addr
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    {
        SocketAddr::new(ip, config::DEFAULT_SERF_LAN_PORT).to_string()
    } else if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:{}", config::DEFAULT_SERF_LAN_PORT)
    };
    let found: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{addr:?} resolves to no address"));
    }
    Ok(found)
}

/// Joins through `addrs` (resolved afresh each attempt), retrying with backoff from 1 s up to
/// `retry_interval` with a warning naming the cause each time, until one attempt succeeds
/// (Consul's `retry_join`) or `stop`.
pub async fn retry_join(
    pool: Arc<dyn Gossip>,
    addrs: Vec<String>,
    retry_interval: Duration,
    stop: CancellationToken,
) {
    if addrs.is_empty() {
        return;
    }
    let mut pause = Duration::from_secs(1);
    loop {
        match pool.join(&addrs).await {
            Ok(n) => {
                tracing::info!(joined = n, addrs = ?addrs, "joined the gossip pool");
                return;
            }
            Err(e) => {
                tracing::warn!(addrs = ?addrs, error = %e, retry_in = ?pause, "could not join the gossip pool; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(retry_interval);
    }
}

/// The alive servers of `datacenter` in the pool, as server RPC addresses.
pub fn servers(gossip: &dyn Gossip, datacenter: &str) -> Vec<SocketAddr> {
    gossip
        .members()
        .iter()
        .filter(|m| m.status == PoolMember::ALIVE && m.is_server())
        .filter(|m| {
            m.tags
                .get("dc")
                .is_some_and(|dc| dc.eq_ignore_ascii_case(datacenter))
        })
        .filter_map(PoolMember::rpc_addr)
        .collect()
}

/// The cluster port's `Gossip` over the pool.
pub struct PoolPort {
    pool: Pool,
    leaving: CancellationToken,
}

impl PoolPort {
    pub fn new(pool: Pool) -> PoolPort {
        PoolPort {
            pool,
            leaving: CancellationToken::new(),
        }
    }

    /// Cancelled when this agent starts leaving the pool: what must not outlive its membership
    /// (a client's anti-entropy, which would register the node again after the servers
    /// deregistered it for leaving) stops on it.
    pub fn leaving(&self) -> CancellationToken {
        self.leaving.clone()
    }
}

fn member(m: &gossip::Member) -> PoolMember {
    PoolMember {
        name: m.name.clone(),
        addr: m.addr,
        tags: m.tags.clone(),
        status: match m.status {
            Status::Alive => PoolMember::ALIVE,
            Status::Leaving => PoolMember::LEAVING,
            Status::Left => PoolMember::LEFT,
            Status::Failed => PoolMember::FAILED,
        },
    }
}

fn key_error(e: impl std::fmt::Display) -> PoolError {
    PoolError::BadRequest(e.to_string())
}

#[async_trait::async_trait]
impl Gossip for PoolPort {
    fn members(&self) -> Vec<PoolMember> {
        self.pool.members().iter().map(member).collect()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pool.changes()
    }

    async fn join(&self, addrs: &[String]) -> Result<usize, PoolError> {
        let mut resolved = Vec::new();
        let mut failures = Vec::new();
        for addr in addrs {
            match resolve(addr).await {
                Ok(found) => resolved.extend(found),
                Err(e) => failures.push(e),
            }
        }
        if resolved.is_empty() {
            return Err(PoolError::Failed(failures.join("; ")));
        }
        // Naming this agent itself (every server listing the same join addresses) is a join
        // that has nothing to do: others join through it.
        let me = self.pool.local_addr();
        let advertised = self
            .pool
            .members()
            .iter()
            .find(|m| m.name == self.pool.local_name())
            .map(|m| m.addr);
        resolved.retain(|a| *a != me && Some(*a) != advertised);
        if resolved.is_empty() {
            return Ok(0);
        }
        self.pool
            .join(&resolved, JOIN_TIMEOUT)
            .await
            .map_err(|e| PoolError::Failed(e.to_string()))
    }

    async fn leave(&self) {
        self.leaving.cancel();
        self.pool.leave().await
    }

    fn force_leave(&self, name: &str, prune: bool) -> Result<(), PoolError> {
        self.pool
            .force_leave(name, prune)
            .map_err(|e| PoolError::NotFound(e.to_string()))
    }

    fn keyring_list(&self) -> Result<KeyringReport, PoolError> {
        let status = self.pool.keyring_list();
        Ok(KeyringReport {
            keys: status.keys,
            primary: status.primary,
            members: status.members,
        })
    }

    fn keyring_install(&self, key: &str) -> Result<(), PoolError> {
        self.pool.keyring_install(key).map_err(key_error)
    }

    fn keyring_use(&self, key: &str) -> Result<(), PoolError> {
        self.pool.keyring_use(key).map_err(key_error)
    }

    fn keyring_remove(&self, key: &str) -> Result<(), PoolError> {
        self.pool.keyring_remove(key).map_err(key_error)
    }
}
