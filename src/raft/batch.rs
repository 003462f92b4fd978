//! Group commit on the leader: writes that arrive while earlier ones are being committed wait
//! and then go together in one Raft entry, so they share one log append (one fsync on every
//! server), one replication message and one state machine transaction.
//!
//! At most `IN_FLIGHT` entries are being committed at once. An idle server proposes a lone write
//! at once (no added latency); under load the queue fills while the in-flight entries commit,
//! and the next entry takes everything queued (up to `MAX_BATCH`).
//!
//! The queue is bounded (`MAX_QUEUED`): when it is full a write is refused at once with
//! `WriteError::Busy` (HTTP 429, Consul's rate-limit answer) instead of waiting without limit,
//! and `metrics::WRITES.rejected_busy` counts it.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::catalog::{Outcome, Proposal, Request};
use crate::cluster::WriteError;
use crate::store::types::Raft;
use crate::tasks::Tasks;

/// Entries being committed at once.
const IN_FLIGHT: usize = 2;
/// Writes per entry at most (bounds an entry's size and the work of one apply).
const MAX_BATCH: usize = 512;
/// Writes waiting for an entry at most, beyond which writes are refused (`WriteError::Busy`).
pub const MAX_QUEUED: usize = 8192;

type Reply = oneshot::Sender<Result<(Outcome, u64), WriteError>>;

#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<(Request, Reply)>,
}

impl Batcher {
    /// Starts the proposer; it stops when the agent shuts down.
    pub fn start(raft: Raft, tasks: &Tasks) -> Batcher {
        let (queue, pending) = mpsc::channel(MAX_QUEUED);
        let stop = tasks.stop().clone();
        let batches = tasks.clone();
        tasks.spawn_essential("raft-proposer", async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = propose(raft, pending, batches) => {}
            }
        });
        Batcher { queue }
    }

    pub async fn write(&self, request: Request) -> Result<(Outcome, u64), WriteError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send((request, reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                crate::metrics::WRITES
                    .rejected_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(WriteError::Busy);
            }
            // Not proposed, so safe to retry elsewhere: a forwarding server waits for the next
            // leader.
            Err(TrySendError::Closed(_)) => return Err(WriteError::NoLeader),
        }
        answer
            .await
            .unwrap_or_else(|_| Err(WriteError::Failed("raft is shutting down".into())))
    }
}

async fn propose(raft: Raft, mut pending: mpsc::Receiver<(Request, Reply)>, tasks: Tasks) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = pending.recv().await {
        // Waiting for a slot is what lets the next batch grow.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tasks.spawn(async move {
            let (requests, replies): (Vec<Request>, Vec<Reply>) = batch.into_iter().unzip();
            let proposal = match Proposal::encode(&requests) {
                Ok(p) => p,
                Err(e) => {
                    drop(slot);
                    for reply in replies {
                        let _ = reply.send(Err(WriteError::Failed(e.to_string())));
                    }
                    return;
                }
            };
            let started = std::time::Instant::now();
            let result = raft.client_write(proposal).await;
            drop(slot);
            match result {
                Ok(response) => {
                    let recorded = &*crate::metrics::RECORDED;
                    recorded
                        .raft_commit_time
                        .observe(crate::metrics::ms_since(started));
                    recorded.raft_apply.inc_by(replies.len() as i64);
                    let index = response.log_id.index;
                    for (reply, outcome) in replies.into_iter().zip(response.data) {
                        let _ = reply.send(Ok((outcome, index)));
                    }
                }
                Err(e) => {
                    let error = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            match f.leader_node {
                                Some(node) => WriteError::NotLeader(node.rpc_addr),
                                None => WriteError::NoLeader,
                            }
                        }
                        other => WriteError::Failed(other.to_string()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}
