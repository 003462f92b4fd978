//! The agent: the services and checks this server registered for its own node, and the health
//! runner that probes them (TTL, HTTP, TCP).
//!
//! The catalog is the source of truth: check definitions are stored with the checks, so a
//! restarted agent rebuilds its runners from its own node's entries. Check results go through
//! the same `Writer` as any other write, and only when a status changes.

pub mod definitions;
pub mod local;
mod probe;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::catalog::{ApplyError, Command, Registration};
use crate::cluster::{WriteError, Writer};
use crate::model::{CheckDefinition, CheckSpec, CheckStatus, NodeSpec, ServiceSpec};
use crate::tasks::Tasks;
use crate::view::View;
use tokio::sync::watch;
use tokio::time::Instant;

/// The check ID of a node's own health, which Consul's gossip layer maintains (here: the
/// agent itself, while it runs). It belongs to the catalog, not to `/v1/agent/checks`.
pub const SERF_HEALTH: &str = "serfHealth";

/// The shortest interval a probe runs at (Consul's `checks.MinInterval`).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Consul's floor for `DeregisterCriticalServiceAfter`.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// How often the reaper looks for services critical for too long (Consul: 30 s).
const REAP_EVERY: Duration = Duration::from_secs(10);

pub const NODE_MAINTENANCE_CHECK: &str = "_node_maintenance";
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Rejected(#[from] ApplyError),
}

/// Who this agent is in the catalog.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
}

#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeIdentity,
    writer: Arc<dyn Writer>,
    view: View,
    runners: Mutex<HashMap<String, Runner>>,
    /// When each of our checks was first seen critical, for the reaper.
    critical_since: Mutex<HashMap<String, Instant>>,
    /// Built on the first HTTP check: an agent without one never loads TLS and its roots.
    http: std::sync::OnceLock<reqwest::Client>,
    /// For checks with `TLSSkipVerify`.
    http_insecure: std::sync::OnceLock<reqwest::Client>,
    tasks: Tasks,
    /// Service names already warned about as not servable by DNS (bounded).
    undiscoverable: Mutex<std::collections::HashSet<String>>,
    /// Held by one sync of the config files' definitions at a time (start-up, SIGHUP and
    /// `PUT /v1/agent/reload` may overlap), so their records are written in turn.
    definitions: tokio::sync::Mutex<()>,
}

struct Runner {
    definition: CheckDefinition,
    task: tokio::task::JoinHandle<()>,
    /// For TTL checks: the current expiry, moved forward by every pass/warn/fail.
    ttl_deadline: Option<watch::Sender<Instant>>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Agent {
    pub fn new(node: NodeIdentity, writer: Arc<dyn Writer>, view: View, tasks: Tasks) -> Self {
        Agent {
            inner: Arc::new(Inner {
                node,
                writer,
                view,
                runners: Mutex::new(HashMap::new()),
                undiscoverable: Mutex::new(Default::default()),
                definitions: tokio::sync::Mutex::new(()),
                critical_since: Mutex::new(HashMap::new()),
                http: std::sync::OnceLock::new(),
                http_insecure: std::sync::OnceLock::new(),
                tasks,
            }),
        }
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.inner.node
    }

    pub fn view(&self) -> &View {
        &self.inner.view
    }

    fn node_registration(&self) -> NodeSpec {
        let n = &self.inner.node;
        NodeSpec {
            id: n.id.clone().into(),
            name: n.name.clone().into(),
            address: n.address.clone().into(),
            datacenter: n.datacenter.clone().into(),
            ..NodeSpec::default()
        }
    }

    async fn write(&self, command: Command) -> Result<(), AgentError> {
        self.inner.writer.write(command).await??;
        Ok(())
    }

    /// Registers this node, the `consul` service of a server and its `serfHealth` check, then
    /// starts runners for the checks this node already owns (after a restart).
    pub async fn start(&self, server_port: u16) -> Result<(), AgentError> {
        let registration = Registration {
            node: self.node_registration(),
            service: Some(ServiceSpec {
                id: "consul".into(),
                name: "consul".into(),
                port: server_port,
                ..ServiceSpec::default()
            }),
            checks: vec![CheckSpec {
                check_id: SERF_HEALTH.into(),
                name: "Serf Health Status".into(),
                status: Some(CheckStatus::Passing),
                output: "Agent alive and reachable".into(),
                ..CheckSpec::default()
            }],
            ..Registration::default()
        };
        self.write(Command::Register(Box::new(registration)))
            .await?;
        self.start_runners();
        Ok(())
    }

    /// A client agent's start: registers this node in its local state (anti-entropy takes it
    /// to the servers, and the leader adds `serfHealth` from the gossip pool), then starts
    /// runners for the checks restored from the data dir.
    pub async fn start_client(&self) -> Result<(), AgentError> {
        let registration = Registration {
            node: self.node_registration(),
            ..Registration::default()
        };
        self.write(Command::Register(Box::new(registration)))
            .await?;
        self.start_runners();
        Ok(())
    }

    /// Starts runners for the checks this node owns (after a restart: the ones it had) and the
    /// reaper of services critical for too long.
    fn start_runners(&self) {
        self.reconcile();
        let agent = self.clone();
        self.inner
            .tasks
            .spawn_essential("agent-reaper", async move { agent.reap_loop().await });
    }

    /// Registers (or replaces) a service on this node with its checks.
    pub async fn register_service(
        &self,
        service: ServiceSpec,
        checks: Vec<CheckSpec>,
        replace_existing_checks: bool,
    ) -> Result<(), AgentError> {
        self.warn_if_undiscoverable(&service.name);
        let (id, name) = (service.id.clone(), service.name.clone());
        let registration = Registration {
            node: self.node_registration(),
            service: Some(service),
            checks,
            replace_existing_checks,
            ..Registration::default()
        };
        self.write(Command::Register(Box::new(registration)))
            .await?;
        tracing::info!(service = %name, id = %id, "registered service");
        self.reconcile();
        Ok(())
    }

    /// Logs once per name a warning that DNS cannot serve `service` (a label longer than 63
    /// bytes, or characters outside letters, digits and `-`, RFC 1123): it is registered all
    /// the same, as Consul does.
    pub fn warn_if_undiscoverable(&self, service: &str) {
        let valid = !service.is_empty()
            && service.len() <= 63
            && service
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            return;
        }
        let mut warned = self.inner.undiscoverable.lock().expect("warned names lock");
        if warned.len() < 10_000 && warned.insert(service.to_string()) {
            tracing::warn!(
                service,
                "service name will not be discoverable via DNS: it must be at most 63 \
                 characters of letters, digits and dashes (RFC 1123)"
            );
        }
    }

    pub async fn deregister_service(&self, service_id: &str) -> Result<(), AgentError> {
        if !self.owns_service(service_id) {
            return Err(AgentError::NotFound(format!(
                "Unknown service ID {service_id:?}"
            )));
        }
        self.deregister(Some(service_id), None).await
    }

    fn owns_service(&self, service_id: &str) -> bool {
        let state = self.inner.view.load();
        state.service(&self.inner.node.name, service_id).is_some()
    }

    /// Removes a service (with its checks) or a check of this node, then updates the runners.
    async fn deregister(
        &self,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Result<(), AgentError> {
        self.write(Command::Deregister {
            node: self.inner.node.name.clone(),
            service_id: service_id.map(str::to_string),
            check_id: check_id.map(str::to_string),
        })
        .await?;
        match (service_id, check_id) {
            (Some(service), _) => tracing::info!(id = %service, "deregistered service"),
            (None, Some(check)) => tracing::info!(check = %check, "deregistered check"),
            (None, None) => {}
        }
        self.reconcile();
        Ok(())
    }

    pub async fn register_check(&self, check: CheckSpec) -> Result<(), AgentError> {
        if !check.service_id.is_empty() && !self.owns_service(&check.service_id) {
            // Consul: 404 for a check of a service this agent does not have.
            return Err(AgentError::NotFound(format!(
                "ServiceID {:?} does not exist",
                check.service_id
            )));
        }
        let registration = Registration {
            node: self.node_registration(),
            skip_node_update: true,
            checks: vec![check],
            ..Registration::default()
        };
        let id = registration.checks[0].check_id.clone();
        self.write(Command::Register(Box::new(registration)))
            .await?;
        tracing::info!(check = %id, "registered check");
        self.reconcile();
        Ok(())
    }

    pub async fn deregister_check(&self, check_id: &str) -> Result<(), AgentError> {
        if self
            .inner
            .view
            .load()
            .check(&self.inner.node.name, check_id)
            .is_none()
        {
            return Err(AgentError::NotFound(format!(
                "Unknown check ID {check_id:?}"
            )));
        }
        self.deregister(None, Some(check_id)).await
    }

    /// A TTL check's pass/warn/fail/update: sets the status and restarts its TTL clock.
    pub async fn update_ttl(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: Option<String>,
    ) -> Result<(), AgentError> {
        let state = self.inner.view.load();
        let Some(check) = state.check(&self.inner.node.name, check_id) else {
            return Err(AgentError::NotFound(format!(
                "Unknown check ID {check_id:?}"
            )));
        };
        let Some(ttl) = check.definition.ttl else {
            return Err(AgentError::BadRequest(format!(
                "CheckID {check_id:?} does not have associated TTL"
            )));
        };
        let output = output.unwrap_or_default();
        if check.status != status || check.output != output {
            let transition =
                (check.status != status).then(|| Transition::new(check, status, &output));
            self.write(Command::UpdateCheck {
                node: self.inner.node.name.clone(),
                check_id: check_id.to_string(),
                status,
                output: Some(output),
            })
            .await?;
            if let Some(t) = transition {
                t.log();
            }
        }
        if let Some(runner) = self
            .inner
            .runners
            .lock()
            .expect("runners lock")
            .get(check_id)
            && let Some(deadline) = &runner.ttl_deadline
        {
            deadline.send_replace(Instant::now() + ttl);
        }
        Ok(())
    }

    /// `PUT /v1/agent/service/maintenance/:id`: a critical `_service_maintenance:<id>` check.
    pub async fn service_maintenance(
        &self,
        service_id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), AgentError> {
        if !self.owns_service(service_id) {
            return Err(AgentError::NotFound(format!(
                "Unknown service ID {service_id:?}"
            )));
        }
        let check_id = format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}");
        if enable {
            self.register_check(maintenance_check(
                &check_id,
                "Service Maintenance Mode",
                service_id,
                reason,
            ))
            .await
        } else {
            self.remove_if_present(&check_id).await
        }
    }

    /// `PUT /v1/agent/maintenance`: a critical `_node_maintenance` check.
    pub async fn node_maintenance(&self, enable: bool, reason: &str) -> Result<(), AgentError> {
        if enable {
            self.register_check(maintenance_check(
                NODE_MAINTENANCE_CHECK,
                "Node Maintenance Mode",
                "",
                reason,
            ))
            .await
        } else {
            self.remove_if_present(NODE_MAINTENANCE_CHECK).await
        }
    }

    async fn remove_if_present(&self, check_id: &str) -> Result<(), AgentError> {
        match self.deregister_check(check_id).await {
            Err(AgentError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Makes the running probes match the checks this node owns in the catalog.
    pub fn reconcile(&self) {
        let state = self.inner.view.load();
        let desired: HashMap<String, CheckDefinition> = state
            .node_checks(&self.inner.node.name)
            .filter(|c| !c.definition.kind().is_empty())
            .map(|c| (c.check_id.to_string(), (*c.definition).clone()))
            .collect();
        let mut runners = self.inner.runners.lock().expect("runners lock");
        runners.retain(|id, runner| desired.get(id) == Some(&runner.definition));
        for (check_id, definition) in desired {
            if runners.contains_key(&check_id) {
                continue;
            }
            let runner = self.spawn_runner(check_id.clone(), definition);
            runners.insert(check_id, runner);
        }
    }

    /// Spawns a check runner that ends at shutdown wherever it is (a probe may be waiting on a
    /// slow target for its whole timeout).
    fn spawn_until_stop(
        &self,
        runner: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let stop = self.inner.tasks.stop().clone();
        self.inner.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = runner => {}
            }
        })
    }

    fn spawn_runner(&self, check_id: String, definition: CheckDefinition) -> Runner {
        let agent = self.clone();
        if let Some(ttl) = definition.ttl {
            let (tx, rx) = watch::channel(Instant::now() + ttl);
            let task = self.spawn_until_stop(agent.run_ttl(check_id, rx));
            Runner {
                definition,
                task,
                ttl_deadline: Some(tx),
            }
        } else {
            let def = definition.clone();
            let task = self.spawn_until_stop(agent.run_probe(check_id, def));
            Runner {
                definition,
                task,
                ttl_deadline: None,
            }
        }
    }

    async fn run_ttl(self, check_id: String, mut deadline: watch::Receiver<Instant>) {
        loop {
            let at = *deadline.borrow_and_update();
            // Shutdown ends this runner from outside (`spawn_until_stop`).
            tokio::select! {
                changed = deadline.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(at) => {
                    self.set_status(&check_id, CheckStatus::Critical, "TTL expired".into(), true).await;
                    // Wait for the next pass/warn/fail to move the deadline.
                    if deadline.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    async fn run_probe(self, check_id: String, def: CheckDefinition) {
        // As Consul's `checks.MinInterval`: a shorter interval runs at one second.
        let asked = def.interval.unwrap_or(Duration::from_secs(10));
        if asked < MIN_INTERVAL {
            tracing::warn!(check = %check_id, interval = ?asked, "check interval below the minimum; running every 1s");
        }
        let interval = asked.max(MIN_INTERVAL);
        let timeout = def.timeout.unwrap_or(Duration::from_secs(10));
        let mut successes = 0u32;
        let mut failures = 0u32;
        let mut first = true;
        loop {
            let (cell, insecure) = if def.tls_skip_verify {
                (&self.inner.http_insecure, true)
            } else {
                (&self.inner.http, false)
            };
            let client = cell.get_or_init(|| {
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::limited(10))
                    .tls_danger_accept_invalid_certs(insecure)
                    .build()
                    .expect("HTTP client with default TLS builds")
            });
            let (result, output) = probe::run(client, &def, timeout).await;
            let next = match result {
                CheckStatus::Passing => {
                    successes += 1;
                    failures = 0;
                    (successes >= def.success_before_passing).then_some(CheckStatus::Passing)
                }
                CheckStatus::Warning => {
                    successes = 0;
                    failures = 0;
                    Some(CheckStatus::Warning)
                }
                CheckStatus::Critical => {
                    failures += 1;
                    successes = 0;
                    (failures >= def.failures_before_critical).then_some(CheckStatus::Critical)
                }
            };
            if let Some(status) = next {
                self.set_status(&check_id, status, output, first).await;
            } else if first {
                // Below the threshold, but still record why the check is where it is.
                let current = self.current_status(&check_id);
                if let Some(current) = current {
                    self.set_status(&check_id, current, output, true).await;
                }
            }
            first = false;
            // Shutdown ends this runner from outside (`spawn_until_stop`).
            tokio::time::sleep(interval).await;
        }
    }

    fn current_status(&self, check_id: &str) -> Option<CheckStatus> {
        self.inner
            .view
            .load()
            .check(&self.inner.node.name, check_id)
            .map(|c| c.status)
    }

    /// Writes a probe result through Raft, but only when the status changed, or (with
    /// `sync_output`, for a runner's first result) when the recorded output is stale.
    async fn set_status(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: String,
        sync_output: bool,
    ) {
        let state = self.inner.view.load();
        let Some(current) = state.check(&self.inner.node.name, check_id) else {
            return;
        };
        let output_stale = sync_output && current.output != output;
        if current.status == status && !output_stale {
            return;
        }
        let transition =
            (current.status != status).then(|| Transition::new(current, status, &output));
        let result = self
            .write(Command::UpdateCheck {
                node: self.inner.node.name.clone(),
                check_id: check_id.to_string(),
                status,
                output: Some(output),
            })
            .await;
        match result {
            Ok(()) => {
                if let Some(t) = transition {
                    t.log();
                }
            }
            Err(AgentError::Rejected(ApplyError::UnknownCheck(_))) => {}
            Err(e) => tracing::warn!(check = check_id, error = %e, "could not record check status"),
        }
    }

    /// Deregisters services whose check stayed critical longer than its
    /// `DeregisterCriticalServiceAfter`.
    async fn reap_loop(self) {
        loop {
            tokio::select! {
                _ = self.inner.tasks.stop().cancelled() => return,
                _ = tokio::time::sleep(REAP_EVERY) => {}
            }
            for service_id in self.services_to_reap(Instant::now()) {
                tracing::info!(service = %service_id, "deregistering service critical for too long");
                if let Err(e) = self.deregister_service(&service_id).await {
                    tracing::warn!(service = %service_id, error = %e, "reaper could not deregister");
                }
            }
        }
    }

    fn services_to_reap(&self, now: Instant) -> Vec<String> {
        let state = self.inner.view.load();
        let mut since = self.inner.critical_since.lock().expect("critical lock");
        let mut due = Vec::new();
        let mut seen = Vec::new();
        for check in state.node_checks(&self.inner.node.name) {
            let Some(after) = check.definition.deregister_critical_service_after else {
                continue;
            };
            if check.service_id.is_empty() || check.status != CheckStatus::Critical {
                continue;
            }
            seen.push(check.check_id.to_string());
            let first = *since.entry(check.check_id.to_string()).or_insert(now);
            if now.duration_since(first) >= after.max(MIN_DEREGISTER_AFTER)
                && !due.iter().any(|d| d == check.service_id)
            {
                due.push(check.service_id.to_string());
            }
        }
        since.retain(|id, _| seen.contains(id));
        due
    }
}

fn maintenance_check(check_id: &str, name: &str, service_id: &str, reason: &str) -> CheckSpec {
    let notes = if reason.is_empty() {
        "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.".to_string()
    } else {
        reason.to_string()
    };
    CheckSpec {
        check_id: check_id.into(),
        name: name.into(),
        status: Some(CheckStatus::Critical),
        notes,
        service_id: service_id.into(),
        ..CheckSpec::default()
    }
}

/// A check's status change, for the operator's log.
struct Transition {
    check_id: String,
    service_id: String,
    from: CheckStatus,
    to: CheckStatus,
    output: String,
}

impl Transition {
    /// How much of the output the log line carries.
    const EXCERPT: usize = 160;

    fn new(check: &crate::model::Check, to: CheckStatus, output: &str) -> Self {
        let mut end = output.len().min(Self::EXCERPT);
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        Transition {
            check_id: check.check_id.clone().into(),
            service_id: check.service_id.clone().into(),
            from: check.status,
            to,
            output: output[..end].trim().to_string(),
        }
    }

    fn log(self) {
        tracing::info!(
            check = %self.check_id,
            service = %self.service_id,
            output = %self.output,
            "check status {} -> {}",
            self.from,
            self.to
        );
    }
}
