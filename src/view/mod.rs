//! The published catalog: the latest applied `State`, read lock-free by DNS and HTTP, and the
//! watchers that wake blocking queries when what they read changes.
//!
//! This is the runtime side of the catalog (atomics, tokio's `Notify`), kept out of `catalog`
//! so the state machine itself stays pure. The store publishes here after each applied batch.

pub mod stream;
pub mod watch;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::catalog::{Change, State};

/// The latest applied catalog, published after every applied batch.
///
/// Readers take an `Arc<State>` (a lock-free load) and keep a consistent picture for as long as
/// they hold it; publishing a new state never waits on them.
#[derive(Clone, Default)]
pub struct View {
    current: Arc<ArcSwap<State>>,
    watchers: Arc<watch::Watchers>,
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
    pub fn publish_changes(&self, state: State, changes: &[Change]) {
        self.publish(state);
        self.watchers.notify(changes);
    }

    pub fn watchers(&self) -> &watch::Watchers {
        &self.watchers
    }
}
