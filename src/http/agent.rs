//! `/v1/agent/*`: what this agent registered and runs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::dto::{self, ServiceIn};
use super::filter::schemas;
use super::{Api, ApiError, Params, json, keep};
use crate::agent::SERF_HEALTH;
use crate::catalog::aggregate;
use crate::cluster::{Member, PoolError, PoolMember};
use crate::model::{CheckSpec, CheckStatus, ServiceSpec};

fn ok() -> Response {
    StatusCode::OK.into_response()
}

pub async fn register_service(
    State(api): State<Api>,
    params: Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (service, checks) = service_registration(&body)?;
    let replace = params.bool("replace-existing-checks")?.unwrap_or(false);
    api.agent.register_service(service, checks, replace).await?;
    Ok(ok())
}

pub async fn deregister_service(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api.agent.deregister_service(&id).await?;
    Ok(ok())
}

pub async fn service_maintenance(
    State(api): State<Api>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let enable = params
        .bool("enable")?
        .ok_or_else(|| ApiError::BadRequest("Missing value for enable".into()))?;
    api.agent
        .service_maintenance(&id, enable, params.get("reason").unwrap_or(""))
        .await?;
    Ok(ok())
}

pub async fn node_maintenance(
    State(api): State<Api>,
    params: Params,
) -> Result<Response, ApiError> {
    let enable = params
        .bool("enable")?
        .ok_or_else(|| ApiError::BadRequest("Missing value for enable".into()))?;
    api.agent
        .node_maintenance(enable, params.get("reason").unwrap_or(""))
        .await?;
    Ok(ok())
}

pub async fn services(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let filter = params.filter(&schemas::NODE_SERVICE)?;
    let state = api.view.load();
    let node = &api.agent.node().name;
    let map: Map<String, Value> = state
        .node_services(node)
        .filter(|s| s.id != "consul")
        .map(|s| {
            (
                s.id.to_string(),
                dto::agent_service_json(s, &api.datacenter),
            )
        })
        .filter(|(_, v)| keep(&filter, v))
        .collect();
    Ok(json(state.indexes().services, &Value::Object(map), &params))
}

pub async fn service(
    State(api): State<Api>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let state = api.view.load();
    let service = state
        .service(&api.agent.node().name, &id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    Ok(json(
        service.modify_index,
        &dto::agent_service_json(service, &api.datacenter),
        &params,
    ))
}

/// `GET /v1/agent/checks`: the checks registered with this agent; the node's `serfHealth`
/// belongs to the catalog, not to the agent, as in Consul.
pub async fn checks(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let filter = params.filter(&schemas::CHECK)?;
    let state = api.view.load();
    let node = &api.agent.node().name;
    let map: Map<String, Value> = state
        .node_checks(node)
        .filter(|c| c.check_id != SERF_HEALTH)
        .map(|c| {
            let service = state.service(node, &c.service_id);
            (c.check_id.to_string(), dto::check_json(c, service))
        })
        .filter(|(_, v)| keep(&filter, v))
        .collect();
    Ok(json(state.indexes().checks, &Value::Object(map), &params))
}

pub async fn register_check(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let registration = dto::check_registration(dto::decode(&body)?)?;
    api.agent.register_check(registration).await?;
    Ok(ok())
}

pub async fn deregister_check(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    api.agent.deregister_check(&id).await?;
    Ok(ok())
}

async fn ttl(
    api: Api,
    id: String,
    status: CheckStatus,
    params: Params,
) -> Result<Response, ApiError> {
    let note = params.get("note").map(str::to_string);
    api.agent.update_ttl(&id, status, note).await?;
    Ok(ok())
}

pub async fn check_pass(
    State(api): State<Api>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ttl(api, id, CheckStatus::Passing, params).await
}

pub async fn check_warn(
    State(api): State<Api>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ttl(api, id, CheckStatus::Warning, params).await
}

pub async fn check_fail(
    State(api): State<Api>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    ttl(api, id, CheckStatus::Critical, params).await
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CheckUpdate {
    status: String,
    output: String,
}

pub async fn check_update(
    State(api): State<Api>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (status, output) = ttl_update(&body)?;
    api.agent.update_ttl(&id, status, Some(output)).await?;
    Ok(ok())
}

/// `PUT /v1/agent/service/register`'s body, checked: the service and its checks.
fn service_registration(body: &[u8]) -> Result<(ServiceSpec, Vec<CheckSpec>), ApiError> {
    let service: ServiceIn = dto::decode(body)?;
    dto::validate_agent_weights(&service)?;
    service.into_registration()
}

/// `PUT /v1/agent/check/update/:id`'s body: the status and output.
fn ttl_update(body: &[u8]) -> Result<(CheckStatus, String), ApiError> {
    let update: CheckUpdate = dto::decode(body)?;
    Ok((dto::parse_status(&update.status)?, update.output))
}

/// Every request body this module decodes, for `crate::fuzz`: bad input must be refused with
/// an error, never a panic.
pub(crate) fn decode_bodies(body: &[u8]) {
    let _ = service_registration(body);
    let _ = dto::decode(body).and_then(dto::check_registration);
    let _ = ttl_update(body);
}

/// 200 passing, 429 warning, 503 critical; the body lists each instance with its checks.
pub async fn health_by_name(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let state = api.view.load();
    let node = &api.agent.node().name;
    let mut worst = Vec::new();
    let entries: Vec<Value> = state
        .instances(&name)
        .into_iter()
        .filter(|i| i.node.name.eq_ignore_ascii_case(node))
        .map(|i| {
            let status = i.status();
            worst.push(status);
            json!({
                "AggregatedStatus": status.as_str(),
                "Service": dto::agent_service_json(i.service, &api.datacenter),
                // Node checks count for the service's health (Consul's `ChecksForService` with
                // the node's), but they are not the service's own: no service name on them.
                "Checks": i.checks.iter().map(|c| {
                    let owner = (!c.service_id.is_empty()).then_some(i.service);
                    dto::check_json(c, owner)
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!("ServiceName {name} Not Found")));
    }
    let code = match aggregate(worst) {
        CheckStatus::Passing => StatusCode::OK,
        CheckStatus::Warning => StatusCode::TOO_MANY_REQUESTS,
        CheckStatus::Critical => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = json(state.service_index(&name), &Value::Array(entries), &params);
    *response.status_mut() = code;
    Ok(response)
}

pub async fn self_info(State(api): State<Api>, params: Params) -> Response {
    let node = api.agent.node();
    let me = match &api.gossip {
        Some(gossip) => gossip
            .members()
            .iter()
            .find(|m| m.name == node.name)
            .map(pool_member_json)
            .unwrap_or(Value::Null),
        None => api
            .cluster
            .members()
            .into_iter()
            .find(|m| m.id == api.cluster.id())
            .map(|m| member_json(&api, &m))
            .unwrap_or(Value::Null),
    };
    let server = api.forward.is_none();
    let meta = api
        .view
        .load()
        .node(&node.name)
        .map(|n| n.meta.clone())
        .unwrap_or_default();
    let body = json!({
        "Config": {
            "Datacenter": api.datacenter,
            "NodeName": node.name,
            "NodeID": node.id,
            "Server": server,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "DebugConfig": {
            "Datacenter": api.datacenter,
            "NodeName": node.name,
            "NodeID": node.id,
            "ServerMode": server,
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": me,
        "Meta": meta,
        "Stats": {
            "raft": api.cluster.stats(),
            "consul": {
                "server": server.to_string(),
                "leader": if api.cluster.is_leader() { "true" } else { "false" },
                "leader_addr": api.cluster.leader().unwrap_or_default(),
                "known_datacenters": "1",
            },
            "agent": {
                "checks": api.view.load().node_checks(&node.name).count().to_string(),
                "services": api.view.load().node_services(&node.name).count().to_string(),
            },
        },
    });
    json(api.view.load().indexes().last, &body, &params)
}

/// A server as Consul's `/v1/agent/members` shows it (Status 1 alive, 4 failed).
fn member_json(api: &Api, m: &Member) -> Value {
    let addr: Option<std::net::SocketAddr> = m.address.parse().ok();
    let ip = addr.map(|a| a.ip().to_string()).unwrap_or_default();
    let port = addr.map(|a| a.port()).unwrap_or(0);
    json!({
        "Name": m.name,
        "Addr": ip,
        "Port": port,
        "Tags": {
            "role": "consul",
            "dc": api.datacenter,
            "port": port.to_string(),
            "id": m.id.to_string(),
            "voter": if m.voter { "1" } else { "0" },
        },
        "Status": if m.alive { 1 } else { 4 },
    })
}

/// A gossip pool member as Consul's `/v1/agent/members` shows it: Serf's tags and statuses
/// (1 alive, 2 leaving, 3 left, 4 failed), memberlist's protocol versions.
fn pool_member_json(m: &PoolMember) -> Value {
    json!({
        "Name": m.name,
        "Addr": m.addr.ip().to_string(),
        "Port": m.addr.port(),
        "Tags": m.tags,
        "Status": m.status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// `GET /v1/agent/members`: the LAN gossip pool (without one, a dev agent lists its Raft
/// servers). With `?wan`, the WAN pool: servers only, named `<node>.<datacenter>`.
pub async fn members(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let filter = params.filter(&schemas::MEMBER)?;
    let wan = params.bool("wan")?.unwrap_or(false);
    let all: Vec<Value> = match &api.gossip {
        Some(gossip) => gossip
            .members()
            .iter()
            .filter(|m| !wan || m.is_server())
            .map(|m| {
                let mut v = pool_member_json(m);
                if wan {
                    v["Name"] = json!(format!("{}.{}", m.name, api.datacenter));
                }
                v
            })
            .collect(),
        None => api
            .cluster
            .members()
            .iter()
            .map(|m| {
                let mut v = member_json(&api, m);
                if wan {
                    v["Name"] = json!(format!("{}.{}", m.name, api.datacenter));
                }
                v
            })
            .collect(),
    };
    let all: Vec<Value> = all.into_iter().filter(|v| keep(&filter, v)).collect();
    Ok(json(
        api.view.load().indexes().last,
        &Value::Array(all),
        &params,
    ))
}

/// `PUT /v1/agent/leave`: a server leaves the voter set gracefully; every agent then leaves
/// the gossip pool (members see it left, not failed) and shuts down.
pub async fn leave(State(api): State<Api>) -> Result<Response, ApiError> {
    if api.forward.is_none() {
        api.cluster
            .leave()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    if let Some(gossip) = &api.gossip {
        gossip.leave().await;
    }
    api.leave.cancel();
    Ok(ok())
}

/// `PUT /v1/agent/join/:address`: joins the gossip pool through the agent at that gossip
/// address (`host` or `host:port`, port 8301 by default); 500 with the reason when it does not
/// answer. A dev agent without a pool keeps the old meaning: a server's RPC address.
pub async fn join(
    State(api): State<Api>,
    Path(address): Path<String>,
) -> Result<Response, ApiError> {
    match &api.gossip {
        Some(gossip) => {
            gossip.join(&[address]).await.map_err(pool_error)?;
        }
        None => api.cluster.join(&address).await?,
    }
    Ok(ok())
}

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::BadRequest(m) => ApiError::BadRequest(m),
        PoolError::NotFound(m) => ApiError::Internal(m),
        other => ApiError::Internal(other.to_string()),
    }
}

/// `PUT /v1/agent/force-leave/:node`: removes a *failed* server from the Raft configuration
/// (with or without `?prune`, since Beacon keeps no list of left members to prune). As in
/// Consul, a live member is not removed (it would refute the leave), and neither is this
/// server; a name that is no member is Consul's 500 "No node found with name".
pub async fn force_leave(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    if let Some(gossip) = &api.gossip {
        let prune = params.bool("prune")?.unwrap_or(false);
        gossip.force_leave(&name, prune).map_err(pool_error)?;
        // A failed server also leaves the Raft configuration (the leader's reconciliation
        // would do it when it sees the member left; doing it here answers at once).
        if api.forward.is_none()
            && let Some(server) = api.cluster.members().into_iter().find(|m| {
                m.name.eq_ignore_ascii_case(&name) && !m.alive && m.id != api.cluster.id()
            })
        {
            let _ = api.cluster.remove_server(server.id).await;
        }
        return Ok(ok());
    }
    let Some(member) = api
        .cluster
        .members()
        .into_iter()
        .find(|m| m.name.eq_ignore_ascii_case(&name))
    else {
        return Err(ApiError::Internal(format!(
            "agent: No node found with name '{name}'"
        )));
    };
    if member.alive || member.id == api.cluster.id() {
        tracing::info!(server = %member.name, "force-leave of a live server: nothing to do");
        return Ok(ok());
    }
    api.cluster
        .remove_server(member.id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ok())
}

/// `PUT /v1/agent/reload`: re-reads the configuration as SIGHUP does.
pub async fn reload(State(api): State<Api>) -> Result<Response, ApiError> {
    let Some(reload) = &api.reload else {
        return Err(ApiError::Internal(
            "Failed to reload configs: this agent was started without a configuration to re-read"
                .into(),
        ));
    };
    // Reading the configuration and zone files is blocking work.
    let reload = reload.clone();
    let outcome = match tokio::task::spawn_blocking(move || reload()).await {
        Ok(outcome) => outcome,
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = outcome {
        tracing::error!(error = %e, "reload failed; keeping the previous configuration");
        return Err(ApiError::Internal(format!("Failed to reload configs: {e}")));
    }
    Ok(ok())
}

/// `/v1/agent/token/*`: Consul's answer while ACLs are disabled.
pub async fn token() -> ApiError {
    ApiError::Unauthorized("ACL support disabled".into())
}

/// `GET /v1/agent/monitor?loglevel=`: streams the agent's log lines at that level and above
/// (Consul's levels: trace, debug, info (default), warn, err/error) until the client goes or
/// the agent stops. Only lines that pass the agent's own log level exist to be streamed.
pub async fn monitor(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    use tracing::Level;
    let wanted = match params
        .get("loglevel")
        .unwrap_or("info")
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "info" => Level::INFO,
        "trace" => Level::TRACE,
        "debug" => Level::DEBUG,
        "warn" => Level::WARN,
        "err" | "error" => Level::ERROR,
        other => return Err(ApiError::BadRequest(format!("Unknown log level: {other}"))),
    };
    // The body is the subscription itself: when the client goes, the response (and with it
    // the subscription) is dropped; at shutdown it ends, so it never holds up the drain.
    let state = (crate::logs::subscribe(), api.shutdown.clone());
    let lines = futures_util::stream::unfold(state, move |(mut lines, shutdown)| async move {
        loop {
            let line = tokio::select! {
                _ = shutdown.cancelled() => return None,
                line = lines.recv() => line,
            };
            match line {
                // A lower `Level` is more severe: ERROR < WARN < INFO < DEBUG < TRACE.
                Ok((level, text)) if level <= wanted => {
                    let bytes = bytes::Bytes::from(format!("{text}\n"));
                    return Some((Ok::<_, std::convert::Infallible>(bytes), (lines, shutdown)));
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let body = axum::body::Body::from_stream(lines);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
