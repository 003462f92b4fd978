//! A client agent's calls to the servers, over server RPC (`crate::transport`): forwarded
//! writes, forwarded HTTP requests, and the long poll that keeps the agent's copy of the
//! catalog (for DNS and anti-entropy) current.
//!
//! The servers are whatever the gossip pool currently lists as alive servers of this
//! datacenter (Consul's client-side server manager): one is used until a call cannot reach it,
//! then the next is tried. Connections present no cluster ID (a client belongs to no Raft
//! cluster); with `verify_outgoing` they are TLS, presenting the agent's certificate and
//! checking the server's (`crate::tls`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::catalog::{Change, Outcome, Request, Rows, State};
use crate::cluster::{ClusterError, Forward, HttpCall, HttpReply, WriteError, Writer};
use crate::raft::rpc::{CatalogWait, Method, WriteReply, call};
use crate::transport::{CallError, Limits, Pool};
use crate::view::View;

pub mod views;

/// Lists the servers' RPC addresses as the gossip pool knows them now.
pub type ServerList = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// How long a write may wait for a server and a leader (Consul's `rpc_hold_timeout`).
const HOLD: Duration = Duration::from_secs(7);

/// The least time between two catalog polls of one client: a burst of changes costs the servers
/// one copy per client per step, not one per change.
const MIN_POLL_GAP: Duration = Duration::from_millis(100);

/// Calls to the servers, from a client agent.
#[derive(Clone)]
pub struct Servers {
    pool: Pool,
    list: ServerList,
    /// Index of the server in use, in `list()`'s order.
    preferred: Arc<AtomicUsize>,
}

impl Servers {
    /// Servers from `list`, reached over TLS when `tls` has `verify_outgoing` on.
    pub fn new(list: ServerList, tls: Option<Arc<crate::tls::Tls>>) -> Servers {
        Servers {
            pool: Pool::new(Arc::new(String::new), Limits::default(), tls),
            list,
            preferred: Arc::new(AtomicUsize::new(rand::random::<u32>() as usize)),
        }
    }

    /// The server to try first, then the others, once each.
    fn candidates(&self) -> Vec<SocketAddr> {
        let mut servers = (self.list)();
        if servers.is_empty() {
            return servers;
        }
        servers.sort();
        let first = self.preferred.load(Ordering::Relaxed) % servers.len();
        servers.rotate_left(first);
        servers
    }

    /// Moves on from a server that could not be reached.
    fn skip(&self, failed: SocketAddr) {
        let mut servers = (self.list)();
        servers.sort();
        if let Some(i) = servers.iter().position(|s| *s == failed) {
            self.preferred.store(i + 1, Ordering::Relaxed);
        }
    }

    /// One call on the first server that can be reached. `Err` when none could be reached (each
    /// failure named), when the call was delivered but its answer lost, or when a server
    /// answered with a transport-level error.
    async fn call<Req, Resp>(
        &self,
        method: Method,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let candidates = self.candidates();
        if candidates.is_empty() {
            return Err(CallError::Unreachable(
                "no server is alive in the gossip pool (none joined yet, or all failed)".into(),
            ));
        }
        let mut failures = Vec::new();
        for server in candidates {
            let addr = server.to_string();
            match call(&self.pool, &addr, method, body, timeout).await {
                Ok(reply) => return Ok(reply),
                // Nothing was delivered: the next server may take it.
                Err(e @ CallError::Unreachable(_)) => {
                    self.skip(server);
                    failures.push(format!("{addr}: {e}"));
                }
                // Delivered but unanswered (it may have been applied): not sent again, but the
                // next call starts with another server.
                Err(e @ CallError::Lost(_)) => {
                    self.skip(server);
                    return Err(e);
                }
                // The server could not handle it (say, it has no cluster ID yet): the next
                // call starts with another.
                Err(e) => {
                    self.skip(server);
                    return Err(e);
                }
            }
        }
        Err(CallError::Unreachable(failures.join("; ")))
    }

    /// The catalog's nodes, services and checks once its index passes `after` (an index of
    /// cluster `cluster_id`; a server of another cluster answers at once).
    pub async fn catalog(
        &self,
        after: u64,
        cluster_id: &str,
        wait: Duration,
    ) -> Result<Rows, CallError> {
        let body = CatalogWait {
            after,
            wait_ms: wait.as_millis() as u64,
            cluster_id: cluster_id.to_string(),
        };
        self.call(Method::CatalogRows, &body, wait + Duration::from_secs(10))
            .await
    }

    /// Keeps `view` a copy of the servers' catalog (nodes, services, checks) until `stop`:
    /// a long poll per change, so DNS on this agent reads memory and never waits on a server.
    pub async fn replicate(self, view: View, stop: tokio_util::sync::CancellationToken) {
        let mut after = 0;
        let mut cluster_id = String::new();
        let mut pause = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let polled = tokio::select! {
                _ = stop.cancelled() => return,
                polled = self.catalog(after, &cluster_id, Duration::from_secs(300)) => polled,
            };
            match polled {
                Ok(rows) => {
                    let state = State::from_rows(rows);
                    // Kept when a server behind this copy answered at its deadline.
                    if state.catalog_index() >= after || state.cluster_id() != cluster_id {
                        after = state.catalog_index();
                        cluster_id = state.cluster_id().to_string();
                        view.publish_changes(state, &[Change::Everything]);
                        pause = Duration::from_millis(100);
                        if warned {
                            tracing::info!(index = after, "catalog copy current again");
                            warned = false;
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(MIN_POLL_GAP) => {}
                    }
                }
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "cannot fetch the catalog from a server; DNS answers from the last copy; retrying");
                        warned = true;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Writer for Servers {
    /// Proposes on the leader through any server (a follower answers with the leader's
    /// address, which is tried next), waiting up to the hold time for a leader.
    async fn write(&self, command: crate::catalog::Command) -> Result<Outcome, WriteError> {
        let request = Request {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            command,
        };
        let deadline = tokio::time::Instant::now() + HOLD;
        let mut target: Option<String> = None;
        let mut pause = Duration::from_millis(100);
        loop {
            let reply: Result<WriteReply, CallError> = match &target {
                Some(leader) => {
                    call(
                        &self.pool,
                        leader,
                        Method::Write,
                        &request,
                        Duration::from_secs(10),
                    )
                    .await
                }
                None => {
                    self.call(Method::Write, &request, Duration::from_secs(10))
                        .await
                }
            };
            let (retry, unreachable) = match reply {
                Ok(WriteReply::Applied { outcome, .. }) => return Ok(outcome),
                Ok(WriteReply::Busy) => return Err(WriteError::Busy),
                Ok(WriteReply::Failed(e)) => return Err(WriteError::Failed(e)),
                Ok(WriteReply::NotLeader(leader)) => {
                    target = leader;
                    ("no leader", None)
                }
                // Nothing was delivered: safe to try again.
                Err(CallError::Unreachable(reason)) => {
                    target = None;
                    ("unreachable", Some(reason))
                }
                Err(e) => return Err(WriteError::Failed(format!("forwarding a write: {e}"))),
            };
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(reason = retry, "write gave up after the hold time");
                // No server answering at all is not "no leader": say why (a refused TLS
                // handshake, a refused connection).
                return Err(match unreachable {
                    Some(reason) => WriteError::Failed(format!("no server reachable: {reason}")),
                    None => WriteError::NoLeader,
                });
            }
            tokio::time::sleep(pause).await;
            // A server that refuses this agent (TLS settings) refuses it every time.
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

#[async_trait::async_trait]
impl Forward for Servers {
    async fn http(&self, call: HttpCall, timeout: Duration) -> Result<HttpReply, ClusterError> {
        let reply: Result<Result<HttpReply, String>, CallError> =
            self.call(Method::Http, &call, timeout).await;
        match reply {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(ClusterError::Failed(e)),
            Err(CallError::Unreachable(reason)) => Err(ClusterError::Unreachable {
                addr: "every known server".into(),
                reason,
            }),
            Err(e) => Err(ClusterError::Failed(e.to_string())),
        }
    }
}
