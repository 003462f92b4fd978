//! Calls to another server's RPC listener: discovery, forwarded writes, membership changes.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ServerInfo;
use super::network::CLUSTER_HEADER;
use super::rpc::{MembershipChange, WriteReply};
use crate::catalog::{Outcome, Request, Rows};
use crate::cluster::{ClusterError, WriteError};
use crate::view::View;

#[derive(Clone)]
pub struct RpcClient {
    http: reqwest::Client,
    view: View,
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was delivered (refused, unreachable): safe to retry.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Failed(String),
}

impl CallError {
    fn into_cluster_error(self, addr: &str) -> ClusterError {
        match self {
            CallError::Unreachable(reason) => ClusterError::Unreachable {
                addr: addr.to_string(),
                reason,
            },
            CallError::Failed(e) => ClusterError::Failed(e),
        }
    }
}

impl RpcClient {
    pub fn new(http: reqwest::Client, view: View) -> Self {
        RpcClient { http, view }
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: Option<&Req>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let url = format!("http://{addr}/rpc/{path}");
        let cluster = self.view.load().cluster_id().to_string();
        let request = match body {
            Some(b) => self.http.post(&url).json(b),
            None => self.http.get(&url),
        };
        let response = request
            .header(CLUSTER_HEADER, cluster)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable(format!("{url}: {e}"))
                } else {
                    CallError::Failed(format!("{url}: {e}"))
                }
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(CallError::Failed(format!("{url}: HTTP {status}: {text}")));
        }
        response
            .json()
            .await
            .map_err(|e| CallError::Failed(format!("{url}: bad reply: {e}")))
    }

    pub async fn info(&self, addr: &str) -> Result<ServerInfo, CallError> {
        self.call::<(), _>(addr, "info", None, Duration::from_secs(2))
            .await
    }

    /// Proposes a write on the leader at `addr`; returns its outcome and log index.
    pub async fn forward_write(
        &self,
        addr: &str,
        request: &Request,
    ) -> Result<(Outcome, u64), WriteError> {
        match self
            .call::<_, WriteReply>(addr, "write", Some(request), Duration::from_secs(10))
            .await
        {
            Ok(WriteReply::Applied { outcome, index }) => Ok((outcome, index)),
            Ok(WriteReply::NotLeader(_)) => Err(WriteError::NoLeader),
            Ok(WriteReply::Busy) => Err(WriteError::Busy),
            Ok(WriteReply::Failed(e)) => Err(WriteError::Failed(e)),
            // The leader we knew is gone; wait for the next one.
            Err(CallError::Unreachable(_)) => Err(WriteError::NoLeader),
            Err(CallError::Failed(e)) => {
                Err(WriteError::Failed(format!("forwarding to the leader: {e}")))
            }
        }
    }

    /// Asks the leader at `addr` for the index a read must wait for.
    pub async fn read_index(&self, addr: &str, linearizable: bool) -> Result<u64, WriteError> {
        match self
            .call::<_, Result<u64, WriteError>>(
                addr,
                "read-index",
                Some(&linearizable),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(Ok(index)) => Ok(index),
            Ok(Err(e)) => Err(e),
            // Asking for a read index changes nothing, so any failure is worth a retry (on the
            // next leader, if this one is gone or paused).
            Err(CallError::Unreachable(_) | CallError::Failed(_)) => Err(WriteError::NoLeader),
        }
    }

    /// Asks the leader at `addr` to change the membership.
    pub async fn membership(
        &self,
        addr: &str,
        change: &MembershipChange,
    ) -> Result<(), ClusterError> {
        self.call(addr, "membership", Some(change), Duration::from_secs(60))
            .await
            .map_err(|e| e.into_cluster_error(addr))?
    }

    /// Restarts a session's timer on the leader at `addr`. A renew is idempotent, so any
    /// failure to get an answer (a leader paused mid-call, say) is `Unreachable`: retryable.
    pub async fn renew_session(&self, addr: &str, id: &str) -> Result<bool, ClusterError> {
        self.call(addr, "session-renew", Some(&id), Duration::from_secs(2))
            .await
            .map_err(|e| ClusterError::Unreachable {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
    }

    /// Fetches the catalog from the leader (used by `GET /v1/snapshot` on followers).
    pub async fn snapshot(&self, addr: &str) -> Result<Rows, CallError> {
        let url = format!("http://{addr}/rpc/snapshot");
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Failed(e.to_string()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::Failed(format!("{url}: leader sent a bad snapshot: {e}")))
    }
}
