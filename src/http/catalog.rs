//! `/v1/catalog/*`: the whole datacenter's nodes and services.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::dto::{self, CheckIn, Ignored, ServiceIn, TaggedAddressIn, WeightsIn};
use super::filter::schemas;
use super::{Api, ApiError, Params, json, json_true, keep};
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

/// The `Service` of a catalog registration (Consul's `NodeService`): the service's name is
/// under `Service`, and it has no checks of its own (they are the registration's).
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct CatalogService {
    service: String,
    id: String,
    tags: Vec<String>,
    address: String,
    port: u16,
    meta: BTreeMap<String, String>,
    #[serde(rename = "taggedaddresses")]
    tagged_addresses: BTreeMap<String, TaggedAddressIn>,
    weights: Option<WeightsIn>,
    #[serde(rename = "enabletagoverride")]
    enable_tag_override: bool,
    kind: String,
    #[serde(rename = "socketpath")]
    _socket_path: Ignored,
    #[serde(rename = "proxy")]
    _proxy: Ignored,
    #[serde(rename = "connect")]
    _connect: Ignored,
    #[serde(rename = "locality")]
    _locality: Ignored,
    #[serde(rename = "peername")]
    _peer_name: Ignored,
    #[serde(rename = "locallyregisteredassidecar")]
    _sidecar: Ignored,
    #[serde(rename = "createindex")]
    _create_index: Ignored,
    #[serde(rename = "modifyindex")]
    _modify_index: Ignored,
}

impl CatalogService {
    fn into_agent_form(self) -> ServiceIn {
        ServiceIn {
            name: self.service,
            id: self.id,
            tags: self.tags,
            address: self.address,
            port: self.port,
            meta: self.meta,
            tagged_addresses: self.tagged_addresses,
            weights: self.weights,
            enable_tag_override: self.enable_tag_override,
            kind: self.kind,
            ..ServiceIn::default()
        }
    }
}

/// Consul's `structs.RegisterRequest`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
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
    #[serde(rename = "token")]
    _token: Ignored,
    #[serde(rename = "locality")]
    _locality: Ignored,
    #[serde(rename = "createindex")]
    _create_index: Ignored,
    #[serde(rename = "modifyindex")]
    _modify_index: Ignored,
    #[serde(rename = "peername")]
    _peer_name: Ignored,
}

pub async fn register(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let reg: RegisterIn = dto::decode(&body)?;
    api.reaches_datacenter(&reg.datacenter)?;
    let registration = registration(reg, &api.datacenter)?;
    if let Some(s) = &registration.service {
        api.agent.warn_if_undiscoverable(&s.name);
    }
    api.writer
        .write(Command::Register(Box::new(registration)))
        .await??;
    Ok(json_true())
}

/// A catalog registration from Consul's `structs.RegisterRequest`, checked; `datacenter` is
/// this agent's, for a request that names none.
fn registration(reg: RegisterIn, datacenter: &str) -> Result<Registration, ApiError> {
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
            Some(s.into_agent_form().into_registration()?.0)
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
            check_id: id.clone().into(),
            name: if check.name.is_empty() {
                id.into()
            } else {
                check.name.as_str().into()
            },
            status: check.status()?,
            notes: check.notes.clone(),
            output: check.output.clone(),
            service_id: check.service_id.clone().into(),
            definition: crate::model::CheckDefinition {
                // A catalog-registered check is not run by any agent.
                ttl: None,
                ..definition
            },
        });
    }
    let registration = Registration {
        node: NodeSpec {
            id: reg.id.into(),
            name: reg.node.into(),
            address: reg.address.into(),
            datacenter: if reg.datacenter.is_empty() {
                datacenter.into()
            } else {
                reg.datacenter.into()
            },
            tagged_addresses: reg.tagged_addresses.into(),
            meta: reg.node_meta.into(),
        },
        skip_node_update: reg.skip_node_update,
        service,
        checks,
        replace_existing_checks: false,
    };
    Ok(registration)
}

/// Every request body this module decodes, for `crate::fuzz`: bad input must be refused with
/// an error, never a panic.
pub(crate) fn decode_bodies(body: &[u8]) {
    let _ = dto::decode::<RegisterIn>(body).and_then(|reg| registration(reg, "dc1"));
    let _ = dto::decode::<DeregisterIn>(body);
}

/// Consul's `structs.DeregisterRequest`.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct DeregisterIn {
    datacenter: String,
    #[serde(rename = "token")]
    _token: Ignored,
    #[serde(rename = "peername")]
    _peer_name: Ignored,
    node: String,
    #[serde(rename = "serviceid")]
    service_id: String,
    #[serde(rename = "checkid")]
    check_id: String,
}

pub async fn deregister(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let d: DeregisterIn = dto::decode(&body)?;
    api.reaches_datacenter(&d.datacenter)?;
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

/// `GET /v1/catalog/services`: service name → the union of its instances' tags. A `?filter=`
/// applies to each instance as a catalog ServiceNode row, as Consul's does.
pub async fn services(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    let state = api.view.load();
    let filters = params.node_meta()?;
    let filter = params.filter(&schemas::SERVICE_NODE)?;
    let out = match &filter {
        None => state.service_names(|node| meta_matches(node, &filters)),
        Some(filter) => {
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (node, service) in state.all_services() {
                if meta_matches(node, &filters)
                    && filter.matches(&dto::catalog_service_json(node, service))
                {
                    let tags = out.entry(service.name.to_string()).or_default();
                    for tag in &service.tags {
                        if !tags.contains(tag) {
                            tags.push(tag.clone());
                        }
                    }
                }
            }
            out
        }
    };
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
    let filter = params.filter(&schemas::SERVICE_NODE)?;
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
        .filter(|v| keep(&filter, v))
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
    let filter = params.filter(&schemas::NODE)?;
    let nodes: Vec<Value> = state
        .nodes()
        .filter(|n| meta_matches(n, &filters))
        .map(dto::node_json)
        .filter(|v| keep(&filter, v))
        .collect();
    Ok(json(state.indexes().nodes, &Value::Array(nodes), &params))
}

pub async fn node(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(&schemas::NODE_SERVICE)?;
    let state = api.view.load();
    let index = state.indexes().services.max(state.indexes().nodes);
    // Consul answers 200 with `null` for an unknown node.
    let Some(node) = state.node(&name) else {
        return Ok(json(index, &Value::Null, &params));
    };
    let services: Map<String, Value> = state
        .node_services(&name)
        .map(|s| (s.id.to_string(), dto::service_json(s)))
        .filter(|(_, v)| keep(&filter, v))
        .collect();
    let body = serde_json::json!({"Node": dto::node_json(node), "Services": services});
    Ok(json(index, &body, &params))
}

/// `GET /v1/catalog/node-services/:node`: the node and its services as a list (Consul 1.7+);
/// an unknown node answers `{"Node": null, "Services": []}`.
pub async fn node_services(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(&schemas::NODE_SERVICE)?;
    let state = api.view.load();
    let index = state.indexes().services.max(state.indexes().nodes);
    let node = state.node(&name).map(dto::node_json);
    let services: Vec<Value> = state
        .node_services(&name)
        .map(dto::service_json)
        .filter(|v| keep(&filter, v))
        .collect();
    let body = serde_json::json!({"Node": node, "Services": services});
    Ok(json(index, &body, &params))
}

pub async fn datacenters(State(api): State<Api>, params: Params) -> Response {
    json(
        api.view.load().indexes().last,
        &serde_json::json!([api.datacenter]),
        &params,
    )
}

/// `GET /v1/catalog/connect/:service`, `/v1/health/connect/:service` and
/// `/v1/health/ingress/:service`: Beacon has no service mesh, so no instance is mesh-capable and
/// the list is empty (Consul's answer for a service without Connect-capable instances). A
/// `?filter=` is still checked.
pub async fn connect(State(api): State<Api>, params: Params) -> Result<Response, ApiError> {
    params.filter(&schemas::SERVICE_NODE)?;
    Ok(json(
        api.view.load().indexes().services,
        &Value::Array(Vec::new()),
        &params,
    ))
}
