//! Ownership of every spawned task: one `TaskTracker` that drain waits on, and the two signals
//! of a shutdown.
//!
//! Shutdown comes in two steps. [`Tasks::serving`] is cancelled first: listeners close and
//! blocking queries answer, while Raft and the tasks that serve in-flight requests keep going.
//! [`Tasks::stop`] is cancelled next (cancelling it also cancels `serving`): every loop ends.
//!
//! A task spawned with [`Tasks::spawn_essential`] is part of a healthy agent: if it ends or
//! panics before shutdown started, that is logged at error level and the agent shuts down with
//! a failure ([`Tasks::failure`]), rather than running half alive.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The agent's tasks and its shutdown signals. Cheap to clone.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    serving: CancellationToken,
    /// The first essential task that ended unexpectedly.
    failed: Arc<Mutex<Option<String>>>,
}

impl Default for Tasks {
    fn default() -> Self {
        let stop = CancellationToken::new();
        Tasks {
            tracker: TaskTracker::new(),
            serving: stop.child_token(),
            stop,
            failed: Arc::default(),
        }
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when every loop must end (the second step of shutdown, or a failed task).
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Cancelled when the agent stops serving clients (the first step of shutdown).
    pub fn serving(&self) -> &CancellationToken {
        &self.serving
    }

    /// Spawns a task that ends by itself (a request, a batch); drain still waits for it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a task that must run until shutdown. If it returns or panics before shutdown
    /// started, the agent shuts down and [`Tasks::failure`] names it. The handle resolves when
    /// the task is over (either way).
    pub fn spawn_essential<F>(&self, name: &'static str, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = self.tracker.spawn(task);
        let tasks = self.clone();
        // The watcher outlives a panic of the task (it sees it as a `JoinError`).
        self.tracker.spawn(async move {
            let ended = inner.await;
            if tasks.serving.is_cancelled() {
                return;
            }
            match ended {
                Ok(()) => tracing::error!(task = name, "task ended unexpectedly; shutting down"),
                Err(e) => tracing::error!(task = name, error = %e, "task failed; shutting down"),
            }
            tasks
                .failed
                .lock()
                .expect("failed-task lock")
                .get_or_insert_with(|| name.to_string());
            tasks.stop.cancel();
        })
    }

    /// The essential task that ended unexpectedly, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failed.lock().expect("failed-task lock").clone()
    }

    /// Ends every loop and waits up to `deadline` for every task; returns false if some were
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

    async fn stops_the_agent_naming(tasks: &Tasks, name: &str) {
        tokio::time::timeout(Duration::from_secs(5), tasks.stop().cancelled())
            .await
            .expect("the agent is told to stop");
        assert!(tasks.serving().is_cancelled());
        assert_eq!(tasks.failure().as_deref(), Some(name));
        assert!(tasks.drain(Duration::from_secs(5)).await);
    }

    fn sleeper(tasks: &Tasks) {
        let stop = tasks.stop().clone();
        tasks.spawn_essential("sleeper", async move { stop.cancelled().await });
    }

    #[tokio::test]
    async fn an_essential_task_that_ends_stops_the_agent_and_is_named() {
        let tasks = Tasks::new();
        sleeper(&tasks);
        tasks.spawn_essential("quitter", async {});
        stops_the_agent_naming(&tasks, "quitter").await;
    }

    #[tokio::test]
    async fn an_essential_task_that_panics_stops_the_agent_and_is_named() {
        let tasks = Tasks::new();
        sleeper(&tasks);
        tasks.spawn_essential("panicker", async { panic!("boom") });
        stops_the_agent_naming(&tasks, "panicker").await;
    }

    #[tokio::test]
    async fn tasks_that_end_at_shutdown_are_not_failures() {
        let tasks = Tasks::new();
        let serving = tasks.serving().clone();
        let server = tasks.spawn_essential("server", async move { serving.cancelled().await });
        sleeper(&tasks);
        tasks.serving().cancel();
        server.await.unwrap();
        assert!(!tasks.stop().is_cancelled(), "serving ends first");
        assert!(tasks.drain(Duration::from_secs(5)).await);
        assert_eq!(tasks.failure(), None);
    }
}
