//! `/v1/session/*`: sessions, the owners of KV locks.

use crate::agent::SERF_HEALTH;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::dto::{self, GoDuration, Ignored};
use super::{Api, ApiError, Params, json, json_true};
use crate::catalog::{ApplyError, Command, SESSION_TTL_MAX, SESSION_TTL_MIN};
use crate::model::{Session, SessionBehavior, format_duration};

/// Consul's default and maximum lock-delay.
const LOCK_DELAY_DEFAULT: Duration = Duration::from_secs(15);
const LOCK_DELAY_MAX: Duration = Duration::from_secs(60);

#[derive(Deserialize, Default)]
#[serde(default)]
#[serde(deny_unknown_fields)]
struct ServiceCheckIn {
    #[serde(rename = "namespace")]
    _namespace: Ignored,
    id: String,
}

/// Consul's `structs.Session` as `PUT /v1/session/create` takes it.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CreateIn {
    #[serde(rename = "id")]
    _id: Ignored,
    #[serde(rename = "createindex")]
    _create_index: Ignored,
    #[serde(rename = "modifyindex")]
    _modify_index: Ignored,
    #[serde(rename = "namespace")]
    _namespace: Ignored,
    #[serde(rename = "partition")]
    _partition: Ignored,
    name: String,
    node: String,
    #[serde(rename = "lockdelay")]
    lock_delay: Option<GoDuration>,
    behavior: String,
    ttl: Option<String>,
    checks: Option<Vec<String>>,
    #[serde(rename = "nodechecks")]
    node_checks: Option<Vec<String>>,
    #[serde(rename = "servicechecks")]
    service_checks: Option<Vec<ServiceCheckIn>>,
}

pub fn session_json(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": s.behavior.as_str(),
        "TTL": s.ttl.map(format_duration).unwrap_or_default(),
        "NodeChecks": s.node_checks,
        "ServiceChecks": s.service_checks.iter().map(|id| json!({"ID": id, "Namespace": ""})).collect::<Vec<_>>(),
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

pub async fn create(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let session = new_session(&body, &api.agent.node().name)?;
    let id = session.id.clone();
    match api.writer.write(Command::SessionCreate(session)).await? {
        Ok(_) => {}
        Err(ApplyError::UnknownNode(n)) => {
            return Err(ApiError::BadRequest(format!(
                "Failed to create session: node {n:?} not found"
            )));
        }
        Err(e) => {
            return Err(ApiError::BadRequest(format!(
                "Failed to create session: {e}"
            )));
        }
    }
    // The leader's timers pick the new session up at their next scan (within 250 ms).
    Ok(json(
        api.view.load().indexes().sessions,
        &json!({"ID": id}),
        &Params::default(),
    ))
}

/// Every request body this module decodes, for `crate::fuzz`: bad input must be refused with
/// an error, never a panic.
pub(crate) fn decode_bodies(body: &[u8]) {
    let _ = new_session(body, "node");
}

/// The session `PUT /v1/session/create`'s body asks for (an empty body: the defaults), on
/// `this_node` unless it names one; checked as Consul checks it.
fn new_session(body: &[u8], this_node: &str) -> Result<Session, ApiError> {
    let input: CreateIn = if body.iter().all(u8::is_ascii_whitespace) {
        CreateIn::default()
    } else {
        dto::decode(body)?
    };
    let behavior = match input.behavior.to_ascii_lowercase().as_str() {
        "" | "release" => SessionBehavior::Release,
        "delete" => SessionBehavior::Delete,
        other => {
            return Err(ApiError::BadRequest(format!(
                "Invalid Behavior setting {other:?}"
            )));
        }
    };
    let ttl = match input.ttl.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(raw) => {
            let ttl = crate::model::parse_duration(raw)
                .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?;
            if ttl != Duration::ZERO && !(SESSION_TTL_MIN..=SESSION_TTL_MAX).contains(&ttl) {
                return Err(ApiError::BadRequest(format!(
                    "Invalid Session TTL '{raw}', must be between [10s=24h0m0s]"
                )));
            }
            (ttl != Duration::ZERO).then_some(ttl)
        }
    };
    let lock_delay = match input.lock_delay {
        None => LOCK_DELAY_DEFAULT,
        // Consul reads small bare numbers as seconds.
        Some(GoDuration(d)) if d > Duration::ZERO && d < Duration::from_nanos(1000) => {
            Duration::from_secs(d.as_nanos() as u64)
        }
        Some(GoDuration(d)) => d,
    }
    .min(LOCK_DELAY_MAX);
    // As Consul: a session that names no checks at all is linked to the node's `serfHealth`,
    // so it is invalidated when the node fails in the gossip pool.
    let node_checks = match (input.node_checks, input.checks, &input.service_checks) {
        (None, None, None) => vec![SERF_HEALTH.to_string()],
        (node_checks, checks, _) => {
            let mut all = node_checks.unwrap_or_default();
            all.extend(checks.unwrap_or_default());
            all
        }
    };
    let session = Session {
        id: uuid::Uuid::new_v4().to_string(),
        name: input.name,
        node: if input.node.is_empty() {
            this_node.into()
        } else {
            input.node
        },
        lock_delay,
        behavior,
        ttl,
        node_checks,
        service_checks: input
            .service_checks
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect(),
        create_index: 0,
        modify_index: 0,
    };
    Ok(session)
}

pub async fn destroy(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, ApiError> {
    api.writer.write(Command::SessionDestroy { id }).await??;
    Ok(json_true())
}

pub async fn renew(
    State(api): State<Api>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    if !api.cluster.renew_session(&id).await? {
        return Err(ApiError::NotFound(format!("Session id '{id}' not found")));
    }
    let state = api.view.load();
    let session = state.session(&id).map(session_json);
    Ok(json(
        state.indexes().sessions,
        &json!(session.into_iter().collect::<Vec<_>>()),
        &params,
    ))
}

pub async fn info(State(api): State<Api>, Path(id): Path<String>, params: Params) -> Response {
    let state = api.view.load();
    let found: Vec<Value> = state.session(&id).map(session_json).into_iter().collect();
    json(state.indexes().sessions, &Value::Array(found), &params)
}

pub async fn list(State(api): State<Api>, params: Params) -> Response {
    let state = api.view.load();
    let all: Vec<Value> = state.sessions().map(session_json).collect();
    json(state.indexes().sessions, &Value::Array(all), &params)
}

pub async fn node(State(api): State<Api>, Path(node): Path<String>, params: Params) -> Response {
    let state = api.view.load();
    let all: Vec<Value> = state
        .sessions()
        .filter(|s| s.node.eq_ignore_ascii_case(&node))
        .map(session_json)
        .collect();
    json(state.indexes().sessions, &Value::Array(all), &params)
}
