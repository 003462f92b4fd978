//! Ownership of every spawned task: one `TaskTracker` that drain waits on, and one stop token
//! whose cancellation is the agent's shutdown signal.
//!
//! A task spawned with [`Tasks::spawn_essential`] is part of a healthy agent: if it ends while
//! the agent is not shutting down, that is logged at error level and the agent shuts down with
//! a failure, rather than running half alive.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The agent's tasks and its shutdown signal. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    /// The first essential task that ended unexpectedly.
    failed: Arc<Mutex<Option<String>>>,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when the agent starts shutting down (by request or because a task failed).
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Spawns a task that ends by itself (a request, a batch); drain still waits for it.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a task that must run until shutdown. If it returns earlier, the agent shuts down
    /// and [`Tasks::failure`] names it.
    pub fn spawn_essential<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let failed = self.failed.clone();
        self.tracker.spawn(async move {
            task.await;
            if !stop.is_cancelled() {
                tracing::error!(task = name, "task ended unexpectedly; shutting down");
                failed
                    .lock()
                    .expect("failed-task lock")
                    .get_or_insert_with(|| name.to_string());
                stop.cancel();
            }
        });
    }

    /// The essential task that ended unexpectedly, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("failed-task lock").clone()
    }

    /// Starts shutdown and waits up to `deadline` for every task; returns false if some were
    /// still running (they are then abandoned with the runtime).
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// How many tasks are still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_essential_task_that_ends_stops_the_agent_and_is_named() {
        let tasks = Tasks::new();
        tasks.spawn_essential("sleeper", {
            let stop = tasks.stop().clone();
            async move { stop.cancelled().await }
        });
        tasks.spawn_essential("quitter", async {});
        tokio::time::timeout(Duration::from_secs(5), tasks.stop().cancelled())
            .await
            .expect("the agent is told to stop");
        assert_eq!(tasks.failure().as_deref(), Some("quitter"));
        assert!(tasks.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn tasks_that_end_at_shutdown_are_not_failures() {
        let tasks = Tasks::new();
        let stop = tasks.stop().clone();
        tasks.spawn_essential("loop", async move { stop.cancelled().await });
        assert!(tasks.drain(Duration::from_secs(5)).await);
        assert_eq!(tasks.failure(), None);
    }
}
