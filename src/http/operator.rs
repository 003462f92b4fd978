//! `/v1/operator/raft/*` and `/v1/snapshot`: the operator's view of the Raft cluster and
//! catalog backups.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Api, ApiError, Params, json};
use crate::catalog::{Command, Rows};

/// The backup document's format version; `PUT /v1/snapshot` refuses any other.
pub const BACKUP_VERSION: u32 = 1;

/// The backup document of `GET`/`PUT /v1/snapshot`: a format version and the whole catalog.
/// (Consul's is a tar of Raft snapshot files; Beacon's is JSON, named in the README.)
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Backup {
    version: u32,
    catalog: Rows,
}

/// Every request body this module decodes (a backup to restore), for `crate::fuzz`: bad
/// input must be refused with an error, never a panic.
pub(crate) fn decode_bodies(body: &[u8]) {
    let _ = Backup::decode(body);
}

impl Backup {
    /// The catalog of a backup document. Documents of earlier Beacons, which were the bare
    /// catalog without a version, are still read.
    fn decode(body: &[u8]) -> Result<Rows, ApiError> {
        /// Only the version, to check it before reading the rest.
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(rename = "Version")]
            version: Option<u32>,
        }
        let invalid = |e: serde_json::Error| ApiError::BadRequest(format!("Invalid snapshot: {e}"));
        match serde_json::from_slice::<Probe>(body)
            .map_err(invalid)?
            .version
        {
            None => serde_json::from_slice(body).map_err(invalid),
            Some(BACKUP_VERSION) => serde_json::from_slice::<Backup>(body)
                .map(|backup| backup.catalog)
                .map_err(invalid),
            Some(other) => Err(ApiError::BadRequest(format!(
                "Invalid snapshot: format version {other} (this Beacon reads {BACKUP_VERSION})"
            ))),
        }
    }
}

/// Largest snapshot accepted by `PUT /v1/snapshot`.
pub const MAX_SNAPSHOT: usize = 256 << 20;

pub async fn raft_configuration(State(api): State<Api>, params: Params) -> Response {
    let servers: Vec<Value> = api
        .cluster
        .members()
        .iter()
        .map(|m| {
            json!({
                "ID": m.id.to_string(),
                "Node": m.name,
                "Address": m.address,
                "Leader": m.leader,
                "Voter": m.voter,
                "ProtocolVersion": "3",
            })
        })
        .collect();
    let index = api.cluster.membership_index();
    json(index, &json!({"Servers": servers, "Index": index}), &params)
}

/// `DELETE /v1/operator/raft/peer?address=…` (or `?id=`).
pub async fn remove_peer(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let members = api.cluster.members();
    let found = match (params.get("address"), params.get("id")) {
        (Some(addr), _) => members.iter().find(|m| m.address == addr),
        (None, Some(id)) => members.iter().find(|m| m.id.to_string() == id),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "Must specify ?id with the server ID or ?address with IP:port".into(),
            ));
        }
    };
    let Some(member) = found else {
        return Err(ApiError::BadRequest(
            "address or id was not found in the Raft configuration".into(),
        ));
    };
    api.cluster
        .remove_server(member.id)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/snapshot`: the whole catalog as of the latest applied entry (on the leader, unless
/// `?stale`), as a JSON document `PUT /v1/snapshot` restores.
pub async fn save(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let rows = api
        .cluster
        .backup(params.has("stale"))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let index = rows.indexes.last;
    let bytes = serde_json::to_vec(&Backup {
        version: BACKUP_VERSION,
        catalog: rows,
    })
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response();
    response
        .headers_mut()
        .insert("X-Consul-Index", index.max(1).into());
    Ok(response)
}

/// `PUT /v1/snapshot`: replaces the catalog with a saved one, through Raft.
pub async fn restore(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    if body.len() > MAX_SNAPSHOT {
        return Ok((StatusCode::PAYLOAD_TOO_LARGE, "snapshot too large\n").into_response());
    }
    let rows = Backup::decode(&body)?;
    let (nodes, keys) = (rows.nodes.len(), rows.kv.len());
    api.writer.write(Command::Restore(Box::new(rows))).await??;
    tracing::info!(
        nodes,
        keys,
        index = api.view.load().indexes().last,
        "restored the catalog from a snapshot"
    );
    Ok(StatusCode::OK.into_response())
}

/// `POST /v1/operator/raft/transfer-leader`: openraft 0.9 cannot hand leadership over, so this
/// is a 500 saying so; on a single server it is Consul's own error.
pub async fn transfer_leader(State(api): State<Api>) -> ApiError {
    if api.cluster.peers().len() <= 1 {
        ApiError::Internal("cannot find peer to transfer leadership to".into())
    } else {
        ApiError::Internal(
            "leadership transfer is not supported: Beacon's Raft library (openraft 0.9) cannot \
             hand leadership to another server"
                .into(),
        )
    }
}

/// The body of Consul's keyring operations: `{"Key": "<base64>"}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    #[serde(rename = "Key")]
    key: String,
}

fn gossip(api: &Api) -> Result<&std::sync::Arc<dyn crate::cluster::Gossip>, ApiError> {
    api.gossip.as_ref().ok_or_else(|| {
        ApiError::Internal("this agent runs no gossip pool, so it has no keyring".into())
    })
}

fn keyring_error(e: crate::cluster::PoolError) -> ApiError {
    match e {
        crate::cluster::PoolError::BadRequest(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    }
}

fn key_body(body: &[u8]) -> Result<String, ApiError> {
    serde_json::from_slice::<KeyBody>(body)
        .map(|b| b.key)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}

/// `GET /v1/operator/keyring`: the keys installed across the LAN pool, with how many members
/// hold each (Consul's `KeyringResponse` list; Beacon has no WAN pool yet).
pub async fn keyring_list(State(api): State<Api>) -> Result<Response, ApiError> {
    let report = gossip(&api)?.keyring_list().map_err(keyring_error)?;
    let body = serde_json::json!([{
        "WAN": false,
        "Datacenter": api.datacenter,
        "Segment": "",
        "Partition": "",
        "Keys": report.keys,
        "PrimaryKeys": report.primary,
        "NumNodes": report.members,
        "Messages": {},
    }]);
    Ok(axum::Json(body).into_response())
}

/// `POST /v1/operator/keyring`: installs a key on every member.
pub async fn keyring_install(
    State(api): State<Api>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let key = key_body(&body)?;
    let pool = gossip(&api)?.clone();
    // Each member writes its keyring file: blocking work.
    tokio::task::spawn_blocking(move || pool.keyring_install(&key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(keyring_error)?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/operator/keyring`: makes an installed key the primary (encrypting) key everywhere.
pub async fn keyring_use(
    State(api): State<Api>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let key = key_body(&body)?;
    let pool = gossip(&api)?.clone();
    // Each member writes its keyring file: blocking work.
    tokio::task::spawn_blocking(move || pool.keyring_use(&key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(keyring_error)?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /v1/operator/keyring`: removes a key that is not the primary from every member.
pub async fn keyring_remove(
    State(api): State<Api>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let key = key_body(&body)?;
    let pool = gossip(&api)?.clone();
    // Each member writes its keyring file: blocking work.
    tokio::task::spawn_blocking(move || pool.keyring_remove(&key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(keyring_error)?;
    Ok(StatusCode::OK.into_response())
}

/// Consul's autopilot defaults: a server is healthy when it answered the leader within
/// `last_contact_threshold` (or three heartbeats, when `performance.raft_multiplier` makes
/// those longer) and trails its log by at most `max_trailing_logs`.
const LAST_CONTACT_THRESHOLD: std::time::Duration = std::time::Duration::from_millis(200);
const MAX_TRAILING_LOGS: u64 = 250;

/// Marks a request a server forwarded to the leader it knew.
const FORWARDED: &str = "x-beacon-forwarded";

/// One server in `/v1/operator/autopilot/health`.
pub struct AutopilotServer {
    pub healthy: bool,
    pub voter: bool,
    json: Value,
}

/// Every server's health as autopilot judges it (Consul's `autopilot.IsServerHealthy`): alive
/// in the gossip pool, heard from within the threshold, on the leader's term and at most
/// `MAX_TRAILING_LOGS` behind. Only the leader knows; empty elsewhere.
pub fn autopilot_servers(api: &Api) -> Vec<AutopilotServer> {
    let Some(health) = api.cluster.server_health() else {
        return Vec::new();
    };
    let term = api
        .cluster
        .stats()
        .get("term")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let leader_index = health
        .iter()
        .filter(|h| h.member.leader)
        .map(|h| h.last_index)
        .max()
        .unwrap_or(0);
    let pool = api.gossip.as_ref().map(|g| g.members()).unwrap_or_default();
    health
        .into_iter()
        .map(|h| {
            let serf = match pool.iter().find(|m| m.name == h.member.name) {
                Some(m) => match m.status {
                    1 => "alive",
                    2 => "leaving",
                    3 => "left",
                    _ => "failed",
                },
                None if api.gossip.is_none() => "alive",
                None => "none",
            };
            let healthy = serf == "alive"
                && h.last_contact
                    .is_some_and(|c| c <= LAST_CONTACT_THRESHOLD.max(h.heartbeat * 3))
                && h.last_term == term
                && h.last_index + MAX_TRAILING_LOGS >= leader_index;
            let last_contact = h
                .last_contact
                .map_or_else(|| "never".to_string(), crate::model::format_duration);
            AutopilotServer {
                healthy,
                voter: h.member.voter,
                json: json!({
                    "ID": h.member.id.to_string(),
                    "Name": h.member.name,
                    "Address": h.member.address,
                    "SerfStatus": serf,
                    "Version": env!("CARGO_PKG_VERSION"),
                    "Leader": h.member.leader,
                    "LastContact": last_contact,
                    "LastTerm": h.last_term,
                    "LastIndex": h.last_index,
                    "Healthy": healthy,
                    "Voter": h.member.voter,
                }),
            }
        })
        .collect()
}

/// `GET /v1/operator/autopilot/health`: 200 when every server is healthy, 429 otherwise (as
/// Consul). Answered by the leader; a follower asks it.
pub async fn autopilot_health(
    State(api): State<Api>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    if !api.cluster.is_leader() {
        // One hop only: a server asked by another that is not the leader either (an election
        // under way) says so instead of asking on.
        if headers.contains_key(FORWARDED) {
            return ApiError::Internal("No cluster leader".into()).into_response();
        }
        let call = crate::cluster::HttpCall {
            method: "GET".into(),
            uri: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
            headers: vec![(FORWARDED.into(), serde_bytes::ByteBuf::from(b"1".to_vec()))],
            body: serde_bytes::ByteBuf::new(),
        };
        return match api.cluster.ask_leader(call).await {
            Ok(reply) => super::reply_response(reply),
            Err(e) => ApiError::Internal(e.to_string()).into_response(),
        };
    }
    let servers = autopilot_servers(&api);
    let healthy = !servers.is_empty() && servers.iter().all(|s| s.healthy);
    let voters = servers.iter().filter(|s| s.voter).count();
    let healthy_voters = servers.iter().filter(|s| s.voter && s.healthy).count();
    let quorum = voters / 2 + 1;
    let body = json!({
        "Healthy": healthy,
        "FailureTolerance": healthy_voters.saturating_sub(quorum),
        "Servers": servers.into_iter().map(|s| s.json).collect::<Vec<_>>(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    (status, axum::Json(body)).into_response()
}
