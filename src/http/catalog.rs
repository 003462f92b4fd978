//! `/v1/catalog/*`: the whole datacenter's nodes and services.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::dto::{self, CheckIn, ServiceIn};
use super::{Api, ApiError, Params, json, json_true};
use crate::catalog::{Command, Registration};
use crate::model::Node;
use crate::model::{CheckSpec, NodeSpec};
use std::collections::BTreeMap;

/// True when the node carries every `?node-meta=k:v` pair.
pub fn meta_matches(node: &Node, filters: &[(String, String)]) -> bool {
    filters
        .iter()
        .all(|(k, v)| node.meta.get(k).is_some_and(|x| x == v))
}

/// The `Service` of a catalog registration: an agent service whose name is under `Service`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct CatalogService {
    service: String,
    // Not fields of Consul's `NodeService`: taken here so they are ignored, as Consul ignores
    // them, rather than decoded (and judged) as the agent API's.
    #[serde(rename = "name")]
    _name: Option<serde::de::IgnoredAny>,
    #[serde(rename = "check")]
    _check: Option<serde::de::IgnoredAny>,
    #[serde(rename = "checks")]
    _checks: Option<serde::de::IgnoredAny>,
    #[serde(flatten)]
    fields: ServiceIn,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RegisterIn {
    id: String,
    node: String,
    address: String,
    datacenter: String,
    #[serde(rename = "taggedaddresses")]
    tagged_addresses: BTreeMap<String, String>,
    #[serde(rename = "nodemeta")]
    node_meta: BTreeMap<String, String>,
    service: Option<CatalogService>,
    check: Option<CheckIn>,
    checks: Vec<CheckIn>,
    #[serde(rename = "skipnodeupdate")]
    skip_node_update: bool,
}

pub async fn register(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let reg: RegisterIn = dto::decode(&body)?;
    if reg.node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    if reg.address.is_empty() && !reg.skip_node_update {
        return Err(ApiError::BadRequest("Must provide address".into()));
    }
    let service = match reg.service {
        Some(s) => {
            if s.service.is_empty() {
                return Err(ApiError::BadRequest("Must provide service name".into()));
            }
            // The agent API's `Name`, `Check` and `Checks` were taken above: never set here.
            let svc = ServiceIn {
                name: s.service,
                ..s.fields
            };
            Some(svc.into_registration()?.0)
        }
        None => None,
    };
    let mut checks = Vec::new();
    for check in reg.check.iter().chain(reg.checks.iter()) {
        let id = if check.check_id.is_empty() {
            check.name.clone()
        } else {
            check.check_id.clone()
        };
        if id.is_empty() {
            return Err(ApiError::BadRequest("Missing check ID".into()));
        }
        // Catalog checks are data only: the probe settings, if any, are kept for display.
        let definition = match &check.definition {
            Some(d) => d.definition().unwrap_or_default(),
            None => Default::default(),
        };
        checks.push(CheckSpec {
            check_id: id.clone(),
            name: if check.name.is_empty() {
                id
            } else {
                check.name.clone()
            },
            status: check.status()?,
            notes: check.notes.clone(),
            output: check.output.clone(),
            service_id: check.service_id.clone(),
            definition: crate::model::CheckDefinition {
                // A catalog-registered check is not run by any agent.
                ttl: None,
                ..definition
            },
        });
    }
    let registration = Registration {
        node: NodeSpec {
            id: reg.id,
            name: reg.node,
            address: reg.address,
            datacenter: if reg.datacenter.is_empty() {
                api.datacenter.clone()
            } else {
                reg.datacenter
            },
            tagged_addresses: reg.tagged_addresses,
            meta: reg.node_meta,
        },
        skip_node_update: reg.skip_node_update,
        service,
        checks,
        replace_existing_checks: false,
    };
    api.writer
        .write(Command::Register(Box::new(registration)))
        .await??;
    Ok(json_true())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeregisterIn {
    node: String,
    #[serde(rename = "serviceid")]
    service_id: String,
    #[serde(rename = "checkid")]
    check_id: String,
}

pub async fn deregister(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let d: DeregisterIn = dto::decode(&body)?;
    if d.node.is_empty() {
        return Err(ApiError::BadRequest("Must provide node".into()));
    }
    let some = |s: String| (!s.is_empty()).then_some(s);
    api.writer
        .write(Command::Deregister {
            node: d.node,
            service_id: some(d.service_id),
            check_id: some(d.check_id),
        })
        .await??;
    Ok(json_true())
}

pub async fn services(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let state = api.view.load();
    let filters = params.node_meta()?;
    let out = state.service_names(|node| meta_matches(node, &filters));
    Ok(json(
        state.indexes().services,
        &serde_json::to_value(out).unwrap_or_default(),
        &params,
    ))
}

pub async fn service(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let state = api.view.load();
    let filters = params.node_meta()?;
    let tags = params.all("tag");
    let entries: Vec<Value> = state
        .instances(&name)
        .into_iter()
        .filter(|i| meta_matches(i.node, &filters))
        .filter(|i| {
            tags.iter()
                .all(|t| i.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
        })
        .map(|i| dto::catalog_service_json(i.node, i.service))
        .collect();
    Ok(json(
        state.service_index(&name),
        &Value::Array(entries),
        &params,
    ))
}

pub async fn nodes(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let state = api.view.load();
    let filters = params.node_meta()?;
    let nodes: Vec<Value> = state
        .nodes()
        .filter(|n| meta_matches(n, &filters))
        .map(dto::node_json)
        .collect();
    Ok(json(state.indexes().nodes, &Value::Array(nodes), &params))
}

pub async fn node(State(api): State<Api>, Path(name): Path<String>, params: Params) -> Response {
    let state = api.view.load();
    let index = state.indexes().services.max(state.indexes().nodes);
    // Consul answers 200 with `null` for an unknown node.
    let Some(node) = state.node(&name) else {
        return json(index, &Value::Null, &params);
    };
    let services: Map<String, Value> = state
        .node_services(&name)
        .map(|s| (s.id.clone(), dto::service_json(s)))
        .collect();
    let body = serde_json::json!({"Node": dto::node_json(node), "Services": services});
    json(index, &body, &params)
}

/// `GET /v1/catalog/node-services/:node`: the node and its services as a list (Consul 1.7+);
/// an unknown node answers `{"Node": null, "Services": []}`.
pub async fn node_services(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Response {
    let state = api.view.load();
    let index = state.indexes().services.max(state.indexes().nodes);
    let node = state.node(&name).map(dto::node_json);
    let services: Vec<Value> = state.node_services(&name).map(dto::service_json).collect();
    let body = serde_json::json!({"Node": node, "Services": services});
    json(index, &body, &params)
}

pub async fn datacenters(State(api): State<Api>, params: Params) -> Response {
    json(
        api.view.load().indexes().last,
        &serde_json::json!([api.datacenter]),
        &params,
    )
}
