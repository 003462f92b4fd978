//! Services and checks defined in the config files (Consul's `service`/`services` and
//! `check`/`checks` blocks): registered on the local agent at start and re-synced on reload.
//! A definition removed from the files is deregistered; what was registered through the API
//! is left alone. Which IDs came from the files is recorded in the data dir
//! (`config-definitions.json`), so a definition removed while the agent was down is
//! deregistered at the next start, as Consul's agent removes the services of its old config.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Agent, AgentError};
use crate::model::{CheckSpec, ServiceSpec};

/// The file, in the data dir, naming the services and checks the config files registered.
pub const FILE: &str = "config-definitions.json";

/// The definitions of the config files, decoded (see `http::dto::service_definition`).
#[derive(Clone, Debug, Default)]
pub struct Definitions {
    pub services: Vec<(ServiceSpec, Vec<CheckSpec>)>,
    pub checks: Vec<CheckSpec>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    services: BTreeSet<String>,
    checks: BTreeSet<String>,
}

impl Agent {
    /// Registers `defs` (replacing a service's checks with its definition's) and deregisters
    /// what an earlier config registered and `defs` no longer has. Errors: a write failed, or
    /// the record in `data_dir` is unreadable (it is never silently dropped).
    pub async fn sync_definitions(
        &self,
        defs: &Definitions,
        data_dir: &Path,
    ) -> Result<(), AgentError> {
        let _one_at_a_time = self.inner.definitions.lock().await;
        let path = data_dir.join(FILE);
        let previous: Record = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                AgentError::BadRequest(format!("{} is corrupt: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::default(),
            Err(e) => {
                return Err(AgentError::BadRequest(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        let mut now = Record::default();
        for (service, _) in &defs.services {
            now.services.insert(service.id.to_string());
        }
        now.checks = defs.checks.iter().map(|c| c.check_id.to_string()).collect();
        // Recorded before anything is registered, with what is still to be removed: a sync
        // that fails half-way leaves nothing that a later one would not know came from files.
        let pending = Record {
            services: previous.services.union(&now.services).cloned().collect(),
            checks: previous.checks.union(&now.checks).cloned().collect(),
        };
        save(&path, &pending)?;
        for (service, checks) in &defs.services {
            self.register_service(service.clone(), checks.clone(), true)
                .await?;
        }
        for check in &defs.checks {
            self.register_check(check.clone()).await?;
        }
        for gone in previous.services.difference(&now.services) {
            match self.deregister_service(gone).await {
                Ok(()) | Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        for gone in previous.checks.difference(&now.checks) {
            match self.deregister_check(gone).await {
                Ok(()) | Err(AgentError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        save(&path, &now)
    }
}

fn save(path: &Path, record: &Record) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec(record).map_err(|e| AgentError::BadRequest(e.to_string()))?;
    super::local::write_atomically(path, &bytes)
        .map_err(|e| AgentError::BadRequest(format!("writing {}: {e}", path.display())))
}
