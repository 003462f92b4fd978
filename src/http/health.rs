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

/// How long a client agent's first `?stale` health query for a name waits for its view's
/// first snapshot before it is forwarded to a server instead.
const FIRST_SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `GET /v1/health/service/:name` on a client agent: with `?stale` or `?cached`, answered from
/// the name's materialized view (`remote::views`), blocking queries included, with the JSON
/// and `X-Consul-Index` a server would give and `X-Consul-Effective-Consistency: stale`
/// (`?cached` adds `X-Cache` and `Age`, as Consul's agent cache). Any other read, a name whose
/// view has no snapshot yet, or a view older than `?max_stale` (or `?max_age` with `?cached`)
/// is forwarded to a server.
pub async fn service_on_client(
    State(api): State<Api>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Response {
    use axum::http::HeaderValue;
    use tower::ServiceExt;
    let params = Params::parse(request.uri().query());
    let cached = params.has("cached");
    // `?cached&consistent` is refused by the read modes, wherever it is answered.
    let local = params.has("stale") || cached;
    let Some(views) = api.views.clone().filter(|_| local) else {
        return super::forward(State(api), request).await;
    };
    // A hit: the view already had its first snapshot (Consul's agent cache says MISS when
    // it had to fetch).
    let hit = views.want(&name) == crate::remote::views::Want::Ready;
    if !hit && !views.ready(&name, FIRST_SNAPSHOT_WAIT).await {
        return super::forward(State(api), request).await;
    }
    let Some(_reading) = views.reading(&name) else {
        return super::forward(State(api), request).await;
    };
    // Older than the caller accepts (`?max_stale`, or `?max_age` with `?cached`): a server
    // answers instead, as Consul retries such a read on the leader. A bad value goes to the
    // server too, which says what is wrong with it.
    let age = views.contact(&name).unwrap_or(std::time::Duration::MAX);
    let limits = [("max_stale", true), ("max_age", cached)];
    for (param, applies) in limits {
        if let Some(value) = params.get(param).filter(|_| applies)
            && crate::model::parse_duration(value)
                .ok()
                .is_none_or(|limit| age > limit)
        {
            return super::forward(State(api), request).await;
        }
    }
    // The server's handler and read modes, over the view instead of a server's catalog.
    let over_view = Api {
        view: views.catalog().clone(),
        views: None,
        ..api
    };
    let one = axum::Router::new()
        .route("/v1/health/service/{*name}", axum::routing::get(service))
        .layer(axum::middleware::from_fn_with_state(
            over_view.clone(),
            super::read::read_modes,
        ))
        .with_state(over_view);
    // Without the outer route's path parameters, which the inner route would see twice.
    let (mut parts, body) = request.into_parts();
    parts.extensions = Default::default();
    let request = axum::extract::Request::from_parts(parts, body);
    let mut response = match one.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let contact = views.contact(&name);
    let headers = response.headers_mut();
    headers.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static("stale"),
    );
    let fresh = contact.is_some_and(|age| age < crate::remote::views::SILENT_FOR)
        && views.leader_known(&name);
    headers.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if fresh { "true" } else { "false" }),
    );
    let age = contact.unwrap_or_default();
    headers.insert(
        "X-Consul-LastContact",
        HeaderValue::from(age.as_millis() as u64),
    );
    if cached && response.status().is_success() {
        let headers = response.headers_mut();
        headers.insert(
            "X-Cache",
            HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
        );
        headers.insert("Age", HeaderValue::from(age.as_secs()));
    }
    response
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
