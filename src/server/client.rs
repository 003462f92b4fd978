//! A client agent: no Raft and no catalog store. It runs the health checks of the services
//! registered with it, keeps its own node in the servers' catalog by anti-entropy, answers DNS
//! for service names from streamed views (`remote::views`, started on first use) and for the
//! rest from a copy of the servers' catalog, serves the agent endpoints itself and forwards the
//! rest of the HTTP API to a server, all found through the gossip pool.
//!
//! The data dir holds the node's ID (`node-id`, as Consul's), its services and checks
//! (`agent::local`) and the gossip keyring.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use super::{
    Bound, DRAIN_DEADLINE, Reload, pool, serve_dns, serve_http, stop_serving, zone_settings,
};
use crate::agent::local::LocalState;
use crate::agent::sync::AntiEntropy;
use crate::agent::{Agent, NodeIdentity};
use crate::catalog::Rows;
use crate::cluster::{Cluster, ClusterError, Gossip, Member, ServerId, WriteError, Writer};
use crate::config::Config;
use crate::dns::{self, DnsHandler};
use crate::http::Api;
use crate::model::Index;
use crate::remote::Servers;
use crate::tasks::Tasks;
use crate::view::View;

/// The node ID's file in the data dir (Consul's `node-id`).
const NODE_ID_FILE: &str = "node-id";

/// Runs a client agent until `shutdown`, a leave, or an essential task's end.
pub async fn run(
    config: Config,
    bound: Bound,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tasks = Tasks::new();
    let started = start(&config, bound, reload, &tasks).await;
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            tasks.drain(DRAIN_DEADLINE).await;
            return Err(e);
        }
    };
    tokio::pin!(shutdown);
    let stop = tasks.stop().clone();
    tokio::select! {
        _ = &mut shutdown => {
            if config.leave_on_terminate {
                tracing::info!("leaving the gossip pool before shutting down (leave_on_terminate)");
                running.gossip.leave().await;
            }
        }
        _ = running.leave.cancelled() => tracing::info!("left the gossip pool"),
        _ = stop.cancelled() => {}
    }
    stop_serving(running.dns, running.http, &tasks).await;
    tracing::info!("stopped");
    match tasks.failure() {
        Some(task) => Err(anyhow::anyhow!("task {task} ended unexpectedly")),
        None => Ok(()),
    }
}

struct Running {
    gossip: Arc<dyn Gossip>,
    dns: dns::DnsServer,
    http: tokio::task::JoinHandle<()>,
    leave: tokio_util::sync::CancellationToken,
}

/// The node ID saved in the data dir, or a new one saved there.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(id) => {
            let id = id.trim().to_string();
            uuid::Uuid::parse_str(&id).with_context(|| {
                format!(
                    "{} does not hold a node ID (a UUID); fix or remove it",
                    path.display()
                )
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().to_string();
            crate::agent::local::write_atomically(&path, id.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn start(
    config: &Config,
    bound: Bound,
    reload: Option<Reload>,
    tasks: &Tasks,
) -> anyhow::Result<Running> {
    let settings = config
        .gossip
        .as_ref()
        .context("a client agent needs the gossip pool")?;
    let data_dir = config
        .data_dir
        .as_ref()
        .context("a client agent needs --data-dir")?;
    if data_dir.exists() && !data_dir.is_dir() {
        anyhow::bail!("data dir {} is not a directory", data_dir.display());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let catalog = View::default();
    let handler = DnsHandler::new(catalog.clone(), zone_settings(config))?;
    let id = node_id(data_dir)?;
    let local_view = View::default();
    let local = Arc::new(LocalState::open(data_dir, local_view.clone())?);
    tracing::info!(data_dir = %data_dir.display(), node_id = %id, "opened data dir (client agent)");

    let tags = pool::tags(config, &id, 0);
    let port = pool::PoolPort::new(
        pool::start(
            settings,
            &config.node_name,
            tags,
            data_dir,
            tasks.stop().clone(),
        )
        .await?,
    );
    let leaving = port.leaving();
    let gossip: Arc<dyn Gossip> = Arc::new(port);
    let servers = {
        let (gossip, dc) = (gossip.clone(), config.datacenter.clone());
        Servers::new(
            Arc::new(move || pool::servers(gossip.as_ref(), &dc)),
            bound.tls.clone(),
        )
    };
    let views = crate::remote::views::Views::new(
        servers.clone(),
        View::default(),
        config.dns.view_idle,
        tasks.stop().clone(),
    );
    let handler = Arc::new(handler.with_views(views.clone()));
    tasks.spawn(pool::retry_join(
        gossip.clone(),
        config.join.clone(),
        settings.retry_interval,
        tasks.stop().clone(),
    ));
    tasks.spawn(
        servers
            .clone()
            .replicate(catalog.clone(), tasks.stop().clone()),
    );

    let identity = NodeIdentity {
        id,
        name: config.node_name.clone(),
        address: settings.advertise.ip().to_string(),
        datacenter: config.datacenter.clone(),
    };
    let agent = Agent::new(identity, local.clone(), local_view.clone(), tasks.clone());
    agent
        .start_client()
        .await
        .context("registering this node in the agent's local state")?;
    agent
        .sync_definitions(
            &super::definitions(config).map_err(|e| anyhow::anyhow!(e))?,
            data_dir,
        )
        .await
        .context("registering the config files' services and checks")?;
    let anti_entropy = AntiEntropy {
        node: config.node_name.clone(),
        local: local_view.clone(),
        catalog: catalog.clone(),
        servers: Arc::new(servers.clone()),
        changed: local.changed(),
        ae_interval: config.ae_interval,
        check_update_interval: config.check_update_interval,
        pool_size: {
            let gossip = gossip.clone();
            Arc::new(move || gossip.members().len())
        },
    };
    // Anti-entropy ends when the leave starts: once the servers deregister a node that left,
    // a sync would register it again.
    let stop = tasks.stop().clone();
    tasks.spawn_essential("anti-entropy", async move {
        tokio::select! {
            _ = anti_entropy.run(stop.clone()) => {}
            _ = leaving.cancelled() => stop.cancelled().await,
        }
    });

    let (dns, dns_metrics, reloader) = serve_dns(
        config,
        handler,
        bound.dns,
        reload,
        bound.tls.clone(),
        super::Resync {
            agent: agent.clone(),
            data_dir: data_dir.to_path_buf(),
        },
        tasks,
    )?;
    let leave = tokio_util::sync::CancellationToken::new();
    let writer: Arc<dyn Writer> = local;
    let api = Api {
        view: local_view,
        writer,
        agent,
        cluster: Arc::new(ClientCluster),
        datacenter: config.datacenter.clone(),
        leave: leave.clone(),
        shutdown: tasks.serving().clone(),
        dns_metrics,
        reload: reloader,
        gossip: Some(gossip.clone()),
        forward: Some(Arc::new(servers.clone())),
        views: Some(views),
        ui: config.ui,
    };
    let http = serve_http(bound.http, bound.https.zip(bound.tls), api, tasks);
    tracing::info!(mode = "client", "beacon agent ready");
    Ok(Running {
        gossip,
        dns,
        http,
        leave,
    })
}

/// The cluster port on a client agent: it is in no Raft cluster, so its own reads are local
/// (the agent endpoints) and the rest is forwarded before it gets here.
struct ClientCluster;

fn not_a_server() -> ClusterError {
    ClusterError::Failed("this is a client agent; ask a server".into())
}

#[async_trait::async_trait]
impl Cluster for ClientCluster {
    fn id(&self) -> ServerId {
        0
    }
    fn leader(&self) -> Option<String> {
        None
    }
    fn is_leader(&self) -> bool {
        false
    }
    fn peers(&self) -> Vec<String> {
        Vec::new()
    }
    fn members(&self) -> Vec<Member> {
        Vec::new()
    }
    fn membership_index(&self) -> Index {
        0
    }
    fn stats(&self) -> std::collections::BTreeMap<&'static str, String> {
        Default::default()
    }
    fn last_contact_ms(&self) -> Option<u64> {
        None
    }
    async fn read_barrier(&self, _linearizable: bool) -> Result<(), WriteError> {
        Ok(())
    }
    async fn join(&self, _address: &str) -> Result<(), ClusterError> {
        Err(not_a_server())
    }
    async fn leave(&self) -> Result<(), ClusterError> {
        Ok(())
    }
    async fn remove_server(&self, _id: ServerId) -> Result<(), ClusterError> {
        Err(not_a_server())
    }
    async fn backup(&self, _stale: bool) -> Result<Rows, ClusterError> {
        Err(not_a_server())
    }
    async fn renew_session(&self, _id: &str) -> Result<bool, ClusterError> {
        Err(not_a_server())
    }
}
