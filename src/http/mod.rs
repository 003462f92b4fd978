//! The Consul-compatible HTTP API (axum): Consul's paths, PascalCase JSON, `X-Consul-Index` on
//! every read, bodies decoded with Go `encoding/json` leniency (see `dto`).

mod agent;
mod catalog;
mod dto;
pub use dto::{check_definition, service_definition};
mod error;
mod filter;
mod health;
mod kv;
mod metrics;
mod operator;
mod read;
mod session;
mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::Value;

pub(crate) use dto::GoDuration;
pub use error::ApiError;

/// Gives `body` to every JSON request-body decoder of the API (with the checks that need no
/// agent), and parses it as a `?filter=` expression against every endpoint's schema, matching
/// each parsed filter against a sample item: the fuzz targets' way in (`crate::fuzz`). Bad input
/// must be refused with an error, never a panic.
pub(crate) fn decode_bodies(body: &[u8]) {
    agent::decode_bodies(body);
    catalog::decode_bodies(body);
    kv::decode_bodies(body);
    session::decode_bodies(body);
    operator::decode_bodies(body);
}

/// Parses `expr` as a `?filter=` expression for every endpoint's schema and matches each filter
/// that parses against a sample item (see [`decode_bodies`]).
pub(crate) fn parse_filters(expr: &str) {
    use filter::{Filter, schemas};
    let sample = serde_json::json!({
        "Node": "n1", "Address": "10.0.0.1", "ServiceName": "web", "ServiceTags": ["a", "b"],
        "ServiceMeta": {"k": "v"}, "NodeMeta": {"rack": "r1"}, "Status": "passing",
        "ServicePort": 80, "Checks": [{"Status": "critical"}], "Tags": {"role": "node"}
    });
    for schema in [
        &*schemas::CHECK,
        &*schemas::NODE,
        &*schemas::NODE_SERVICE,
        &*schemas::SERVICE_NODE,
        &*schemas::CHECK_SERVICE_NODE,
        &*schemas::MEMBER,
    ] {
        if let Ok(filter) = Filter::parse(expr, schema) {
            filter.matches(&sample);
        }
    }
}

use crate::agent::Agent;
use crate::cluster::{Cluster, Forward, Gossip, HttpCall, HttpReply, LocalApi, Writer};
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
    /// The LAN gossip pool; None for a dev agent without one.
    pub gossip: Option<Arc<dyn Gossip>>,
    /// On a client agent: where everything but the agent's own endpoints goes (a server).
    /// None on a server.
    pub forward: Option<Arc<dyn Forward>>,
    /// On a client agent: the materialized views that answer `?stale` and `?cached` health
    /// queries without a request to a server. None on a server.
    pub views: Option<crate::remote::views::Views>,
    /// Serve the web UI at `/ui/` (`ui_config.enabled`).
    pub ui: bool,
}

/// See `Api::reload`; the error is the reason, for the log and the HTTP answer.
pub type Reloader = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The API: on a server, every endpoint; on a client agent (`Api::forward`), the agent's own
/// endpoints, with everything else forwarded to a server.
pub fn router(api: Api) -> Router {
    let routes = if api.forward.is_some() {
        // Read modes and blocking apply to what this agent answers itself; a forwarded request
        // gets them on the server, whose answer (and `X-Consul-*` headers) comes back as it is.
        agent_routes()
            .layer(middleware::from_fn_with_state(
                api.clone(),
                read::read_modes,
            ))
            .route("/v1/health/service/{*name}", get(health::service_on_client))
            .fallback(forward)
    } else {
        agent_routes()
            .merge(server_routes())
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(
                api.clone(),
                read::read_modes,
            ))
    };
    finish(routes, api)
}

/// The layers every router shares, and its state.
fn finish(routes: Router<Api>, api: Api) -> Router {
    routes
        .layer(middleware::from_fn_with_state(
            api.clone(),
            check_datacenter,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(metrics::record))
        .with_state(api)
}

/// What every agent answers itself: its services and checks, its view of the gossip pool,
/// its configuration, metrics and logs.
fn agent_routes() -> Router<Api> {
    Router::new()
        .route("/", get(ui::root))
        .route("/ui", get(ui::bare))
        .route("/ui/", get(ui::page))
        .route("/ui/{*path}", get(ui::page))
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
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/force-leave/{*node}", put(agent::force_leave))
        .route("/v1/agent/reload", put(agent::reload))
        .route("/v1/agent/monitor", get(agent::monitor))
        .route("/v1/agent/token/{*kind}", put(agent::token))
        .route("/v1/agent/join/{*address}", put(agent::join))
        .route(
            "/v1/operator/keyring",
            get(operator::keyring_list)
                .post(operator::keyring_install)
                .put(operator::keyring_use)
                .delete(operator::keyring_remove),
        )
}

/// What only servers answer (a client agent forwards these).
fn server_routes() -> Router<Api> {
    Router::new()
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
        .route(
            "/v1/operator/raft/transfer-leader",
            axum::routing::post(operator::transfer_leader),
        )
        .route(
            "/v1/operator/autopilot/health",
            get(operator::autopilot_health),
        )
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
}

/// Headers that describe one hop's connection, not the request (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// A client agent's fallback: the request goes to a server over server RPC, and the server's
/// answer comes back as it is (status, `X-Consul-*` headers, body). A blocking query may wait
/// up to its `wait` (Consul caps it at 10 minutes) plus Consul's jitter.
async fn forward(State(api): State<Api>, request: Request) -> Response {
    let Some(forward) = api.forward.clone() else {
        return not_found().await.into_response();
    };
    let (parts, body) = request.into_parts();
    let limit = if parts.uri.path() == "/v1/snapshot" {
        operator::MAX_SNAPSHOT
    } else {
        MAX_BODY
    };
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Request body too large: {e}"),
            )
                .into_response();
        }
    };
    // A session is created for the agent's own node unless the body names one (Consul's
    // client agent fills it in before forwarding).
    let body = if parts.uri.path() == "/v1/session/create" {
        with_node(&body, &api.agent.node().name)
    } else {
        body.to_vec()
    };
    let call = HttpCall {
        method: parts.method.to_string(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| parts.uri.path().to_string()),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
            .map(|(name, value)| {
                (
                    name.to_string(),
                    serde_bytes::ByteBuf::from(value.as_bytes().to_vec()),
                )
            })
            .collect(),
        body: serde_bytes::ByteBuf::from(body),
    };
    let params = Params::parse(parts.uri.query());
    let blocking = params.get("index").is_some();
    let timeout = if blocking {
        std::time::Duration::from_secs(11 * 60)
    } else {
        std::time::Duration::from_secs(60)
    };
    match forward.http(call, timeout).await {
        Ok(reply) => reply_response(reply),
        Err(e) => ApiError::Internal(format!("rpc error: {e}")).into_response(),
    }
}

/// The session-create body with `Node` set to `node` when it names none; a body that is not a
/// JSON object goes as it is (the server answers it).
fn with_node(body: &[u8], node: &str) -> Vec<u8> {
    let mut object = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            _ => return body.to_vec(),
        }
    };
    let named = object
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("node") && v.as_str().is_some_and(|s| !s.is_empty()));
    if !named {
        object.retain(|k, _| !k.eq_ignore_ascii_case("node"));
        object.insert("Node".into(), Value::String(node.to_string()));
    }
    serde_json::to_vec(&Value::Object(object)).unwrap_or_else(|_| body.to_vec())
}

pub(super) fn reply_response(reply: HttpReply) -> Response {
    let mut response = Response::new(axum::body::Body::from(reply.body.into_vec()));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (name, value) in reply.headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The largest answer a server sends back for a forwarded call (the transport's frame limit
/// is 64 MiB; the rest is room for the envelope).
const MAX_FORWARDED_REPLY: usize = 60 << 20;

/// Answers client agents' forwarded calls with this server's own API: the server endpoints
/// only (a client answers its agent endpoints itself), with the same read modes and limits.
pub fn local_api(api: Api) -> LocalApi {
    let router = finish(
        server_routes()
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(
                api.clone(),
                read::read_modes,
            )),
        api,
    );
    Arc::new(move |call: HttpCall| {
        let router = router.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            let mut builder = axum::http::Request::builder()
                .method(call.method.as_str())
                .uri(call.uri.as_str());
            for (name, value) in &call.headers {
                builder = builder.header(name.as_str(), value.as_slice());
            }
            let request = match builder.body(axum::body::Body::from(call.body.into_vec())) {
                Ok(r) => r,
                Err(e) => {
                    return HttpReply {
                        status: 400,
                        headers: Vec::new(),
                        body: serde_bytes::ByteBuf::from(format!("bad forwarded request: {e}")),
                    };
                }
            };
            let response = match router.oneshot(request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            // Blocking queries end on their own (10 minutes at most); streaming endpoints are
            // agent endpoints, which are not served here.
            let body = match axum::body::to_bytes(body, MAX_FORWARDED_REPLY).await {
                Ok(b) => b.to_vec(),
                Err(e) => {
                    return HttpReply {
                        status: 500,
                        headers: Vec::new(),
                        body: serde_bytes::ByteBuf::from(format!(
                            "the answer is too large to forward to a client agent: {e}"
                        )),
                    };
                }
            };
            HttpReply {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.to_string(),
                            serde_bytes::ByteBuf::from(v.as_bytes().to_vec()),
                        )
                    })
                    .collect(),
                body: serde_bytes::ByteBuf::from(body),
            }
        }) as futures_util::future::BoxFuture<'static, HttpReply>
    })
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

// Consul's status endpoints are not queries: no index, leader or contact headers
// (`agent/status_endpoint.go` sets no query meta), so none claims a leader it does not know.
async fn status_leader(State(api): State<Api>, params: Params) -> Response {
    json_body(
        &Value::String(api.cluster.leader().unwrap_or_default()),
        &params,
    )
}

async fn status_peers(State(api): State<Api>, params: Params) -> Response {
    json_body(&serde_json::json!(api.cluster.peers()), &params)
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

/// A JSON read response with Consul's query headers. The index is never below 1.
pub fn json(index: u64, body: &Value, params: &Params) -> Response {
    let mut response = json_body(body, params);
    let headers = response.headers_mut();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    response
}

/// A 200 with `body` as JSON (indented under `?pretty`) and no query headers.
pub fn json_body(body: &Value, params: &Params) -> Response {
    let text = if params.has("pretty") {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    .unwrap_or_else(|_| "null".into());
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
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

const PLAIN_HTTP_ON_HTTPS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// How long a client may take over its TLS handshake before the HTTPS listener drops it.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the same API over HTTPS (HTTP/1.1 and HTTP/2 by ALPN) until `shutdown`, then lets
/// open connections finish. Each connection takes the certificates current when it arrives
/// (`Tls::https`), so a reload reaches new connections without dropping open ones. A failed
/// handshake (no client certificate where `verify_incoming` asks for one, a foreign CA) closes
/// that connection only, logged at debug.
///
/// axum's `serve` takes only plain TCP, so the accept loop is hyper-util's, as axum's own
/// TLS example does.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    api: Api,
    tls: std::sync::Arc<crate::tls::Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let app = router(api);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(
        crate::transport::MAX_HANDSHAKES,
    ));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically out of file descriptors: pause rather than spin.
                    tracing::warn!(error = %e, "https accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(config) = tls.https() else {
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many HTTPS connections in their handshake; closing this one");
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // Plain HTTP on the HTTPS port gets Go's answer (as Consul gives it), not silence.
            let mut first = [0u8; 1];
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
                Ok(Ok(1)) if first[0] != 0x16 => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut tcp = tcp;
                    // The request is read first: closing with it unread would reset the
                    // connection before the client reads the answer.
                    let mut request = [0u8; 4096];
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        tcp.read(&mut request),
                    )
                    .await;
                    let _ = tcp.write_all(PLAIN_HTTP_ON_HTTPS).await;
                    let _ = tcp.shutdown().await;
                    return;
                }
                Ok(Ok(1)) => {}
                _ => return,
            }
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await;
            drop(permit);
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "https handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "https connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// Whether `item` passes the request's `?filter=` (no filter: every item does).
pub(crate) fn keep(filter: &Option<filter::Filter>, item: &Value) -> bool {
    filter.as_ref().is_none_or(|f| f.matches(item))
}
