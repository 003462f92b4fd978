//! The Consul-compatible HTTP API (axum): Consul's paths, PascalCase JSON, `X-Consul-Index` on
//! every read, bodies decoded with Go `encoding/json` leniency (see `dto`).

mod agent;
mod catalog;
mod dto;
mod error;
mod filter;
mod health;
mod kv;
mod metrics;
mod operator;
mod read;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::Value;

pub use error::ApiError;

use crate::agent::Agent;
use crate::cluster::{Cluster, Writer};
use crate::metrics::DnsMetrics;
use crate::view::View;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 1 << 20;

/// Everything handlers need.
#[derive(Clone)]
pub struct Api {
    pub view: View,
    pub writer: Arc<dyn Writer>,
    pub agent: Agent,
    /// The cluster port: status, members, membership, read barriers, session renewals.
    pub cluster: Arc<dyn Cluster>,
    pub datacenter: String,
    /// Cancelled when this server has left its cluster: the process then shuts down.
    pub leave: tokio_util::sync::CancellationToken,
    /// Cancelled when the agent starts shutting down: blocking queries answer at once.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub dns_metrics: Arc<DnsMetrics>,
    /// Re-reads the configuration and applies what can change at run time (SIGHUP and
    /// `PUT /v1/agent/reload`); None when the agent was started without one to re-read.
    pub reload: Option<Reloader>,
}

/// See `Api::reload`; the error is the reason, for the log and the HTTP answer.
pub type Reloader = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(agent::register_service))
        .route(
            "/v1/agent/service/deregister/{*id}",
            put(agent::deregister_service),
        )
        .route(
            "/v1/agent/service/maintenance/{*id}",
            put(agent::service_maintenance),
        )
        .route("/v1/agent/maintenance", put(agent::node_maintenance))
        .route("/v1/agent/service/{*id}", get(agent::service))
        .route("/v1/agent/services", get(agent::services))
        .route("/v1/agent/checks", get(agent::checks))
        .route("/v1/agent/check/register", put(agent::register_check))
        .route(
            "/v1/agent/check/deregister/{*id}",
            put(agent::deregister_check),
        )
        .route("/v1/agent/check/pass/{*id}", put(agent::check_pass))
        .route("/v1/agent/check/warn/{*id}", put(agent::check_warn))
        .route("/v1/agent/check/fail/{*id}", put(agent::check_fail))
        .route("/v1/agent/check/update/{*id}", put(agent::check_update))
        .route(
            "/v1/agent/health/service/name/{*name}",
            get(agent::health_by_name),
        )
        .route("/v1/agent/self", get(agent::self_info))
        .route("/v1/agent/metrics", get(metrics::metrics))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{*name}", get(catalog::service))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/node/{*node}", get(catalog::node))
        .route(
            "/v1/catalog/node-services/{*node}",
            get(catalog::node_services),
        )
        // Service mesh (Connect) is not in Beacon: no instance is mesh-capable.
        .route("/v1/catalog/connect/{*service}", get(catalog::connect))
        .route("/v1/health/connect/{*service}", get(catalog::connect))
        .route("/v1/health/ingress/{*service}", get(catalog::connect))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/health/service/{*name}", get(health::service))
        .route("/v1/health/checks/{*name}", get(health::checks))
        .route("/v1/health/state/{*state}", get(health::state))
        .route("/v1/health/node/{*node}", get(health::node))
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(kv::txn))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{*id}", put(session::destroy))
        .route("/v1/session/renew/{*id}", put(session::renew))
        .route("/v1/session/info/{*id}", get(session::info))
        .route("/v1/session/list", get(session::list))
        .route("/v1/session/node/{*node}", get(session::node))
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/force-leave/{*node}", put(agent::force_leave))
        .route("/v1/agent/reload", put(agent::reload))
        .route("/v1/agent/monitor", get(agent::monitor))
        .route("/v1/agent/token/{*kind}", put(agent::token))
        .route(
            "/v1/operator/raft/transfer-leader",
            axum::routing::post(operator::transfer_leader),
        )
        .route("/v1/agent/join/{*address}", put(agent::join))
        .route(
            "/v1/operator/raft/configuration",
            get(operator::raft_configuration),
        )
        .route(
            "/v1/operator/raft/peer",
            axum::routing::delete(operator::remove_peer),
        )
        .route(
            "/v1/snapshot",
            get(operator::save)
                .put(operator::restore)
                .layer(DefaultBodyLimit::max(operator::MAX_SNAPSHOT)),
        )
        .route("/v1/status/leader", get(status_leader))
        .route("/v1/status/peers", get(status_peers))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            api.clone(),
            read::read_modes,
        ))
        .layer(middleware::from_fn_with_state(
            api.clone(),
            check_datacenter,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

impl Api {
    /// A request for `datacenter` (`?dc=` or a body's `Datacenter`): ours (or none named) is
    /// served; any other has no path yet (Consul's answer for one it cannot reach).
    pub(crate) fn reaches_datacenter(&self, datacenter: &str) -> Result<(), ApiError> {
        if datacenter.is_empty() || datacenter.eq_ignore_ascii_case(&self.datacenter) {
            Ok(())
        } else {
            Err(ApiError::Internal("No path to datacenter".into()))
        }
    }
}

/// `?dc=`: see `Api::reaches_datacenter`.
async fn check_datacenter(State(api): State<Api>, request: Request, next: Next) -> Response {
    let params = Params::parse(request.uri().query());
    if let Err(e) = api.reaches_datacenter(params.get("dc").unwrap_or("")) {
        return e.into_response();
    }
    next.run(request).await
}

async fn status_leader(State(api): State<Api>, params: Params) -> Response {
    let index = api.view.load().indexes().last;
    json(
        index,
        &Value::String(api.cluster.leader().unwrap_or_default()),
        &params,
    )
}

async fn status_peers(State(api): State<Api>, params: Params) -> Response {
    let index = api.view.load().indexes().last;
    json(index, &serde_json::json!(api.cluster.peers()), &params)
}

/// The query string, parsed once. Consul's flags are presence-only (`?passing`, `?pretty`).
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        Params(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The `?filter=` expression for items of `schema`, if given (an empty one matches all);
    /// a malformed expression or unknown selector is a 400 with go-bexpr's message.
    pub fn filter(&self, schema: &filter::Schema) -> Result<Option<filter::Filter>, ApiError> {
        match self.get("filter") {
            None | Some("") => Ok(None),
            Some(expr) => filter::Filter::parse(expr, schema)
                .map(Some)
                .map_err(|e| ApiError::BadRequest(e.to_string())),
        }
    }

    /// `?node-meta=key:value` filters (repeatable; all must match).
    pub fn node_meta(&self) -> Result<Vec<(String, String)>, ApiError> {
        self.all("node-meta")
            .into_iter()
            .map(|pair| match pair.split_once(':') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(ApiError::BadRequest(format!(
                    "Invalid node-meta filter {pair:?}: expected key:value"
                ))),
            })
            .collect()
    }

    /// A boolean parameter; a present flag with no value counts as true.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("") => Ok(Some(true)),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(ApiError::BadRequest(format!(
                    "Invalid value for {key}: {v:?}"
                ))),
            },
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Params::parse(parts.uri.query()))
    }
}

/// A JSON read response with Consul's headers. The index is never below 1.
pub fn json(index: u64, body: &Value, params: &Params) -> Response {
    let text = if params.has("pretty") {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    .unwrap_or_else(|_| "null".into());
    let mut response = (StatusCode::OK, text).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    response
}

/// The `true` that Consul's write endpoints answer with.
pub fn json_true() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "true",
    )
        .into_response()
}

/// Serves the API on a bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Api,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api).into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Whether `item` passes the request's `?filter=` (no filter: every item does).
pub(crate) fn keep(filter: &Option<filter::Filter>, item: &Value) -> bool {
    filter.as_ref().is_none_or(|f| f.matches(item))
}
