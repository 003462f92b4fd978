//! How the rest of the server reads and writes the catalog without knowing about Raft.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{Command, Outcome, State};

/// The latest applied catalog, published after every applied batch.
///
/// Readers take an `Arc<State>` (a lock-free load) and keep a consistent picture for as long as
/// they hold it; publishing a new state never waits on them.
#[derive(Clone, Default)]
pub struct View {
    current: Arc<ArcSwap<State>>,
    watchers: Arc<super::watch::Watchers>,
}

impl View {
    pub fn new(state: State) -> Self {
        View {
            current: Arc::new(ArcSwap::from_pointee(state)),
            watchers: Arc::default(),
        }
    }

    pub fn load(&self) -> Arc<State> {
        self.current.load_full()
    }

    pub fn publish(&self, state: State) {
        self.current.store(Arc::new(state));
    }

    /// Publishes a new state, then wakes the blocking queries watching what changed.
    pub fn publish_changes(&self, state: State, changes: &[super::Change]) {
        self.publish(state);
        self.watchers.notify(changes);
    }

    pub fn watchers(&self) -> &super::watch::Watchers {
        &self.watchers
    }
}

/// Why a write did not go through (as opposed to being refused by the catalog).
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("No cluster leader")]
    NoLeader,
    #[error("not the leader; the leader is {0}")]
    NotLeader(String),
    #[error("raft write failed: {0}")]
    Failed(String),
}

/// Proposes commands and waits until they are committed and applied locally.
#[async_trait::async_trait]
pub trait Writer: Send + Sync + 'static {
    async fn write(&self, command: Command) -> Result<Outcome, WriteError>;
}
