//! `/v1/health/*`: instances and checks with their health.

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::catalog::meta_matches;
use super::filter::schemas;
use super::{Api, ApiError, Params, dto, json, keep};
use crate::model::CheckStatus;

/// Every instance with its node and checks; `?passing` keeps only instances whose checks all
/// pass, `?tag=` (repeatable) keeps instances carrying every tag.
pub async fn service(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let state = api.view.load();
    let passing = params.bool("passing")?.unwrap_or(false);
    let filters = params.node_meta()?;
    let filter = params.filter(&schemas::CHECK_SERVICE_NODE)?;
    let tags = params.all("tag");
    let entries: Vec<Value> = state
        .instances(&name)
        .into_iter()
        .filter(|i| meta_matches(i.node, &filters))
        .filter(|i| {
            tags.iter()
                .all(|t| i.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
        })
        .filter(|i| !passing || i.status() == CheckStatus::Passing)
        .map(|i| {
            json!({
                "Node": dto::node_json(i.node),
                "Service": dto::service_json(i.service),
                "Checks": i.checks.iter().map(|c| {
                    let owner = (!c.service_id.is_empty()).then_some(i.service);
                    dto::check_json(c, owner)
                }).collect::<Vec<_>>(),
            })
        })
        .filter(|v| keep(&filter, v))
        .collect();
    Ok(json(
        state.service_index(&name),
        &Value::Array(entries),
        &params,
    ))
}

/// The service-level checks of every instance of a service.
pub async fn checks(
    State(api): State<Api>,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let state = api.view.load();
    let filters = params.node_meta()?;
    let filter = params.filter(&schemas::CHECK)?;
    let out: Vec<Value> = state
        .instances(&name)
        .into_iter()
        .filter(|i| meta_matches(i.node, &filters))
        .flat_map(|i| {
            i.checks
                .iter()
                .filter(|c| c.service_id == i.service.id)
                .map(|c| dto::check_json(c, Some(i.service)))
                .collect::<Vec<_>>()
        })
        .filter(|v| keep(&filter, v))
        .collect();
    Ok(json(
        state.service_index(&name),
        &Value::Array(out),
        &params,
    ))
}

pub async fn state(
    State(api): State<Api>,
    Path(wanted): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let wanted_status: Option<CheckStatus> = match wanted.as_str() {
        "any" => None,
        other => Some(
            other
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("Invalid check state {other:?}")))?,
        ),
    };
    let state = api.view.load();
    let filters = params.node_meta()?;
    let filter = params.filter(&schemas::CHECK)?;
    let out: Vec<Value> = state
        .all_checks()
        .filter(|c| wanted_status.is_none_or(|s| c.status == s))
        .filter(|c| {
            state
                .node(&c.node)
                .is_some_and(|n| meta_matches(n, &filters))
        })
        .map(|c| dto::check_json(c, state.service(&c.node, &c.service_id)))
        .filter(|v| keep(&filter, v))
        .collect();
    Ok(json(state.indexes().checks, &Value::Array(out), &params))
}

pub async fn node(
    State(api): State<Api>,
    Path(node): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    let filter = params.filter(&schemas::CHECK)?;
    let state = api.view.load();
    let out: Vec<Value> = state
        .node_checks(&node)
        .map(|c| dto::check_json(c, state.service(&node, &c.service_id)))
        .filter(|v| keep(&filter, v))
        .collect();
    Ok(json(state.indexes().checks, &Value::Array(out), &params))
}
