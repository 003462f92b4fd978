//! Read consistency and blocking queries, as Consul does them, around the read endpoints.
//!
//! - `?stale`: answered from this server's state, even without a leader.
//! - default: this server first catches up to the leader's applied index (Consul reads on the
//!   leader; Beacon serves the same data locally once it is as fresh).
//! - `?consistent`: the leader first confirms it still leads with a quorum round.
//!
//! `?index=N&wait=D` blocks until the endpoint's `X-Consul-Index` exceeds N or the wait (default
//! 5m, max 10m, plus up to wait/16 jitter) runs out. A waiter sleeps on the topics its endpoint
//! reads (a table, a service name, a KV prefix) and is woken only by writes to those.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::Rng;

use super::{Api, ApiError, Params};
use crate::model::parse_duration;
use crate::view::watch::Topic;

const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Stale,
    Leader,
    Consistent,
}

impl Mode {
    fn header(self) -> &'static str {
        match self {
            Mode::Stale => "stale",
            Mode::Leader => "leader",
            Mode::Consistent => "consistent",
        }
    }
}

/// The topics an endpoint's answer depends on; None for endpoints that do not block.
fn topics(path: &str) -> Option<Vec<Topic>> {
    let seg = |prefix: &str| path.strip_prefix(prefix).map(|rest| rest.to_string());
    if path == "/v1/catalog/services" {
        return Some(vec![Topic::Services]);
    }
    if path == "/v1/catalog/nodes" {
        return Some(vec![Topic::Nodes]);
    }
    if let Some(name) = seg("/v1/catalog/service/")
        .or(seg("/v1/health/service/"))
        .or(seg("/v1/health/checks/"))
    {
        return Some(vec![Topic::Service(
            percent_decode(&name).to_ascii_lowercase(),
        )]);
    }
    if path.starts_with("/v1/catalog/node/") || path.starts_with("/v1/catalog/node-services/") {
        return Some(vec![Topic::Nodes, Topic::Services]);
    }
    if path.starts_with("/v1/health/state/") || path.starts_with("/v1/health/node/") {
        return Some(vec![Topic::Checks]);
    }
    if let Some(key) = seg("/v1/kv/") {
        let key = percent_decode(&key);
        return Some(vec![Topic::KvPrefix(key)]);
    }
    if path.starts_with("/v1/session/list")
        || path.starts_with("/v1/session/info/")
        || path.starts_with("/v1/session/node/")
    {
        return Some(vec![Topic::Sessions]);
    }
    None
}

/// A read for `?peer=<name>`: Beacon has no cluster peering, so every peer name is one that
/// does not exist, and the answer is Consul's for such a peer: nothing (never local data).
fn peer_answer(api: &Api, request: &Request) -> Option<Response> {
    let params = Params::parse(request.uri().query());
    let peer = params.get("peer").filter(|p| !p.is_empty())?;
    let path = request.uri().path();
    if !(path.starts_with("/v1/catalog/") || path.starts_with("/v1/health/")) {
        return None;
    }
    tracing::debug!(peer, path, "read for a cluster peer: Beacon has none");
    // Each endpoint's own answer for nothing there.
    let empty = if path == "/v1/catalog/services" {
        serde_json::json!({})
    } else if path.starts_with("/v1/catalog/node/") {
        serde_json::Value::Null
    } else if path.starts_with("/v1/catalog/node-services/") {
        serde_json::json!({"Node": null, "Services": []})
    } else {
        serde_json::json!([])
    };
    Some(super::json(api.view.load().indexes().last, &empty, &params))
}

/// A path's percent-decoding (RFC 3986: `+` is a plus, unlike in a query string).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn response_index(r: &Response) -> u64 {
    r.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn read_modes(State(api): State<Api>, request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let Some(topics) = topics(request.uri().path()) else {
        return next.run(request).await;
    };
    if let Some(empty) = peer_answer(&api, &request) {
        return empty;
    }
    match serve(api, request, next, topics).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    api: Api,
    request: Request,
    next: Next,
    topics: Vec<Topic>,
) -> Result<Response, ApiError> {
    let params = Params::parse(request.uri().query());
    if params.has("cached") && params.has("consistent") {
        // As Consul's `parseConsistency`.
        return Err(ApiError::BadRequest(
            "Cannot specify ?cached with ?consistent, conflicting semantics.".into(),
        ));
    }
    let mode = match (params.has("stale"), params.has("consistent")) {
        (true, true) => {
            return Err(ApiError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ));
        }
        (true, false) => Mode::Stale,
        (false, true) => Mode::Consistent,
        (false, false) => Mode::Leader,
    };
    let min_index = match params.get("index") {
        None | Some("") => 0,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest("Invalid index".into()))?,
    };
    let wait = match params.get("wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(v) => {
            parse_duration(v).map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?
        }
    }
    .min(MAX_WAIT);
    let jitter_ms = (wait.as_millis() as u64 / 16).max(1);
    let deadline = tokio::time::Instant::now()
        + wait
        + Duration::from_millis(rand::rng().random_range(0..jitter_ms));

    let (parts, _) = request.into_parts();
    loop {
        if mode != Mode::Stale {
            tokio::select! {
                fresh = api.cluster.read_barrier(mode == Mode::Consistent) => {
                    fresh.map_err(|_| ApiError::Internal("No cluster leader".into()))?;
                }
                // A fresh read cannot be promised any more; say so rather than hold the drain.
                _ = api.shutdown.cancelled() => {
                    return Err(ApiError::Internal("agent is shutting down".into()));
                }
            }
        }
        // Subscribe before reading, so a write between the read and the wait is not missed.
        let notifies: Vec<_> = topics
            .iter()
            .map(|t| api.view.watchers().subscribe(t.clone()))
            .collect();
        let mut waits: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        let mut response = next
            .clone()
            .run(Request::from_parts(parts.clone(), Body::empty()))
            .await;
        let done = min_index == 0
            || response_index(&response) > min_index
            || tokio::time::Instant::now() >= deadline
            || !(response.status().is_success() || response.status().as_u16() == 404);
        if done {
            decorate(&api, &mut response, mode);
            return Ok(response);
        }
        // Nothing of the stale answer is kept while waiting.
        drop(response);
        let any_change = futures_any(waits);
        let _waiting = crate::metrics::Waiting::start();
        tokio::select! {
            _ = any_change => {}
            // At shutdown (or at the deadline) the waiter gets the current answer at once.
            _ = api.shutdown.cancelled() => {
                let mut response = next.clone().run(Request::from_parts(parts.clone(), Body::empty())).await;
                decorate(&api, &mut response, mode);
                return Ok(response);
            }
            _ = tokio::time::sleep_until(deadline) => {
                let mut response = next.clone().run(Request::from_parts(parts.clone(), Body::empty())).await;
                decorate(&api, &mut response, mode);
                return Ok(response);
            }
        }
    }
}

/// Resolves when any of the notifications fires.
async fn futures_any(waits: Vec<std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>>>) {
    let mut waits = waits;
    std::future::poll_fn(|cx| {
        for w in waits.iter_mut() {
            if w.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

use std::future::Future;

fn decorate(api: &Api, response: &mut Response, mode: Mode) {
    let headers = response.headers_mut();
    headers.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static(mode.header()),
    );
    let known = api.cluster.leader().is_some();
    headers.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if known { "true" } else { "false" }),
    );
    let contact = api.cluster.last_contact_ms().unwrap_or(0);
    headers.insert("X-Consul-LastContact", HeaderValue::from(contact));
}
