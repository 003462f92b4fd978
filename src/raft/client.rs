//! Calls to another server's RPC listener: discovery, forwarded writes, read barriers,
//! membership changes, session renewals, backups.

use std::time::Duration;

use super::ServerInfo;
use super::rpc::{MembershipChange, Method, WriteReply, call};
use crate::catalog::{Outcome, Request, Rows};
use crate::cluster::{ClusterError, HttpCall, HttpReply, WriteError};
use crate::transport::{CallError, Pool};

/// Server RPC calls, over two pools of connections: `pool` presents this server's cluster ID
/// (a server of another cluster refuses it), `anyone` presents none, for discovery.
#[derive(Clone)]
pub struct RpcClient {
    pool: Pool,
    anyone: Pool,
}

impl RpcClient {
    pub fn new(pool: Pool, anyone: Pool) -> Self {
        RpcClient { pool, anyone }
    }

    /// What the server at `addr` says about itself. Asked without a cluster ID, so a server of
    /// another cluster answers too and the caller learns why it cannot join.
    pub async fn info(&self, addr: &str) -> Result<ServerInfo, CallError> {
        call(
            &self.anyone,
            addr,
            Method::Info,
            &(),
            Duration::from_secs(2),
        )
        .await
    }

    /// An API request answered by the server at `addr` with its own API (`Method::Http`).
    pub async fn http(
        &self,
        addr: &str,
        request: &HttpCall,
        timeout: Duration,
    ) -> Result<HttpReply, CallError> {
        let reply: Result<HttpReply, String> =
            call(&self.pool, addr, Method::Http, request, timeout).await?;
        reply.map_err(CallError::Remote)
    }

    /// Proposes a write on the leader at `addr`; returns its outcome and log index.
    pub async fn forward_write(
        &self,
        addr: &str,
        request: &Request,
    ) -> Result<(Outcome, u64), WriteError> {
        match call(
            &self.pool,
            addr,
            Method::Write,
            request,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(WriteReply::Applied { outcome, index }) => Ok((outcome, index)),
            Ok(WriteReply::NotLeader(_)) => Err(WriteError::NoLeader),
            Ok(WriteReply::Busy) => Err(WriteError::Busy),
            Ok(WriteReply::Failed(e)) => Err(WriteError::Failed(e)),
            // Nothing was delivered: the leader we knew is gone; wait for the next one.
            Err(CallError::Unreachable(_)) => Err(WriteError::NoLeader),
            Err(e) => Err(WriteError::Failed(format!("forwarding to the leader: {e}"))),
        }
    }

    /// Asks the leader at `addr` for the index a read must wait for.
    pub async fn read_index(&self, addr: &str, linearizable: bool) -> Result<u64, WriteError> {
        match call::<_, Result<u64, WriteError>>(
            &self.pool,
            addr,
            Method::ReadIndex,
            &linearizable,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(reply) => reply,
            // Asking for a read index changes nothing, so any failure is worth a retry (on the
            // next leader, if this one is gone or paused).
            Err(_) => Err(WriteError::NoLeader),
        }
    }

    /// Asks the leader at `addr` to change the membership.
    pub async fn membership(
        &self,
        addr: &str,
        change: &MembershipChange,
    ) -> Result<(), ClusterError> {
        call(
            &self.pool,
            addr,
            Method::Membership,
            change,
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| match e {
            CallError::Unreachable(reason) => ClusterError::Unreachable {
                addr: addr.to_string(),
                reason,
            },
            other => ClusterError::Failed(format!("{addr}: {other}")),
        })?
    }

    /// Restarts a session's timer on the leader at `addr`. A renew is idempotent, so any
    /// failure to get an answer (a leader paused mid-call, say) is `Unreachable`: retryable.
    pub async fn renew_session(&self, addr: &str, id: &str) -> Result<bool, ClusterError> {
        call(
            &self.pool,
            addr,
            Method::SessionRenew,
            &id,
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| ClusterError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?
    }

    /// Fetches the catalog from the leader (used by `GET /v1/snapshot` on followers).
    pub async fn snapshot(&self, addr: &str) -> Result<Rows, CallError> {
        call(
            &self.pool,
            addr,
            Method::Backup,
            &(),
            Duration::from_secs(60),
        )
        .await
    }
}
