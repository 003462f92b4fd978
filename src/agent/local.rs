//! A client agent's local state: the services and checks registered on this agent, the source
//! of truth for its own node (Consul's agent `local.State`).
//!
//! It is a `catalog::State` holding only this node, written through the same `Writer` seam
//! the agent uses on a server, so the agent's code is the same in both modes. Applying touches
//! memory; the node's rows are then saved to `local-state.json` in the data dir (written to a
//! temporary file and renamed, so a crash leaves the old or the new file, never half of one),
//! and restored at start, TTL check states included, as Consul's agent does. Anti-entropy
//! (`agent::sync`) pushes the differences to the servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;

use crate::catalog::{Command, Outcome, State};
use crate::cluster::{WriteError, Writer};
use crate::view::View;

/// The file, in the data dir, holding the agent's services and checks.
pub const FILE: &str = "local-state.json";

/// The agent's own services and checks; see the module doc.
pub struct LocalState {
    /// Held while a write is applied and saved, so saves land in order.
    state: tokio::sync::Mutex<State>,
    view: View,
    path: PathBuf,
    changed: Arc<Notify>,
}

impl LocalState {
    /// Opens the state saved in `data_dir` (none yet: empty) and publishes it in `view`.
    /// An unreadable or corrupt file is an error naming it: it is never silently replaced.
    pub fn open(data_dir: &Path, view: View) -> anyhow::Result<LocalState> {
        let path = data_dir.join(FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let rows = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is corrupt (move it away to start with no local services)",
                        path.display()
                    )
                })?;
                State::from_rows(rows)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        view.publish(state.clone());
        Ok(LocalState {
            state: tokio::sync::Mutex::new(state),
            view,
            path,
            changed: Arc::new(Notify::new()),
        })
    }

    /// Notified after every change (anti-entropy syncs then).
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Writes the state to the file on the blocking pool (the file is fsynced, then renamed
    /// over the old one). Owner-only permissions: check definitions may carry header tokens.
    async fn save(&self, state: &State) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&state.to_rows()).map_err(std::io::Error::other)?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, fsynced and
/// renamed, readable by the owner only.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[async_trait::async_trait]
impl Writer for LocalState {
    async fn write(&self, command: Command) -> Result<Outcome, WriteError> {
        let outcome = {
            let mut state = self.state.lock().await;
            let mut next = state.clone();
            let index = next.indexes().last + 1;
            let mut changes = Vec::new();
            let at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let outcome = next.apply(index, at_ms, &command, &mut changes);
            if outcome.is_ok() {
                self.save(&next).await.map_err(|e| {
                    WriteError::Failed(format!("saving {}: {e}", self.path.display()))
                })?;
                *state = next.clone();
                self.view.publish_changes(next, &changes);
            }
            outcome
        };
        self.changed.notify_one();
        Ok(outcome)
    }
}
