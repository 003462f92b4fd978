//! `/v1/agent/metrics`: the agent's metrics in Prometheus' text format (OpenMetrics, with
//! `?format=prometheus`) or Consul's JSON summary (without), both from one prometheus-client
//! registry built at each scrape: the recorded metrics (`metrics::RECORDED`) and the values
//! read now (Raft state and indexes, catalog sizes, DNS and gossip counters).
//!
//! Names follow Consul's Prometheus output where Consul has the metric (`consul_raft_apply`,
//! `consul_raft_commitTime`, `consul_state_nodes`, …; timings in ms); Beacon's own are
//! `beacon_*` with Prometheus' conventions. Also `HTTP` request metrics by route and the
//! middleware that records them ([`record`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde_json::json;

use super::Api;
use crate::cluster::PoolMember;
use crate::metrics::{self, EndpointLabels, HttpLabels, RECORDED, RouteLabels};
use crate::model::CheckStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// The registry of one scrape.
fn collect(api: &Api) -> Registry {
    let mut r = Registry::default();
    let recorded = &*RECORDED;
    r.register(
        "consul_raft_apply",
        "Writes committed by this server as leader (a gauge that only grows)",
        recorded.raft_apply.clone(),
    );
    r.register(
        "consul_raft_commitTime",
        "Milliseconds from a leader's proposal to its commit",
        recorded.raft_commit_time.clone(),
    );
    r.register(
        "consul_raft_leader_lastContact",
        "Milliseconds since a quorum last acknowledged the leader, sampled each second",
        recorded.raft_leader_last_contact.clone(),
    );
    r.register(
        "consul_raft_state_leader",
        "Times this server became leader (a gauge that only grows)",
        recorded.raft_state_leader.clone(),
    );
    r.register(
        "consul_raft_state_candidate",
        "Times this server started an election (a gauge that only grows)",
        recorded.raft_state_candidate.clone(),
    );
    r.register(
        "beacon_write_endpoint_ms",
        "Milliseconds per write request, by Consul's metric name (consul_catalog_register, \
         consul_kvs_apply, ...)",
        recorded.endpoint_time.clone(),
    );
    r.register(
        "beacon_http_requests",
        "HTTP requests by route pattern, method and status code",
        recorded.http_requests.clone(),
    );
    r.register(
        "beacon_http_request_duration_seconds",
        "HTTP request time by route pattern (blocking queries included)",
        recorded.http_duration.clone(),
    );
    r.register(
        "beacon_http_blocking_queries",
        "Blocking queries waiting for a change now",
        recorded.blocking_queries.clone(),
    );
    r.register(
        "beacon_dns_full_path_duration_seconds",
        "Time to answer a DNS query on the full handler (TCP, DoT, UDP without a pre-encoded \
         answer)",
        recorded.dns_full_path_duration.clone(),
    );

    raft(&mut r, api);
    catalog(&mut r, api);
    dns(&mut r, api);
    gossip(&mut r, api);
    views(&mut r, api);
    r.register(
        "beacon_raft_writes_rejected",
        "Writes refused with 429 because the leader's write queue was full",
        ConstCounter::new(metrics::WRITES.rejected_busy.load(Ordering::Relaxed)),
    );
    r.register(
        "beacon_process_resident_memory_bytes",
        "Resident memory of the process",
        ConstGauge::new(resident_bytes() as i64),
    );
    r
}

fn gauge(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register(name, help, ConstGauge::new(value as i64));
}

/// Raft's state on a server (nothing on a client agent).
fn raft(r: &mut Registry, api: &Api) {
    let stats = api.cluster.stats();
    if stats.is_empty() {
        return;
    }
    let number = |key: &str| {
        stats
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    gauge(
        r,
        "consul_server_isLeader",
        "1 when this server is the Raft leader",
        u64::from(api.cluster.is_leader()),
    );
    gauge(
        r,
        "beacon_raft_term",
        "The current Raft term",
        number("term"),
    );
    gauge(
        r,
        "beacon_raft_last_log_index",
        "The last index in this server's Raft log",
        number("last_log_index"),
    );
    gauge(
        r,
        "beacon_raft_applied_index",
        "The last Raft index applied to the catalog",
        number("applied_index"),
    );
    gauge(
        r,
        "beacon_raft_snapshot_index",
        "The Raft index of this server's latest snapshot",
        number("last_snapshot_index"),
    );
    gauge(
        r,
        "beacon_raft_peers",
        "Servers in the Raft configuration",
        api.cluster.peers().len() as u64,
    );
    if let Some(ms) = api.cluster.last_contact_ms() {
        gauge(
            r,
            "beacon_raft_last_contact_ms",
            "Milliseconds since this server last heard from the leader (0 on the leader)",
            ms,
        );
    }
    let healthy = api.cluster.is_leader() && autopilot_healthy(api);
    if api.cluster.is_leader() {
        gauge(
            r,
            "consul_autopilot_healthy",
            "1 when every server is healthy (autopilot), on the leader",
            u64::from(healthy),
        );
    }
}

/// Whether every server of the Raft configuration is healthy, as `/v1/operator/autopilot/
/// health` reports it.
fn autopilot_healthy(api: &Api) -> bool {
    super::operator::autopilot_servers(api)
        .iter()
        .all(|s| s.healthy)
}

/// Catalog sizes, instances by health and checks by status, from the applied state.
fn catalog(r: &mut Registry, api: &Api) {
    let state = api.view.load();
    let mut node_health: HashMap<&str, CheckStatus> = HashMap::new();
    let mut service_health: HashMap<(&str, &str), CheckStatus> = HashMap::new();
    let mut checks: BTreeMap<CheckStatus, u64> = BTreeMap::new();
    for check in state.all_checks() {
        *checks.entry(check.status).or_default() += 1;
        let slot = if check.service_id.is_empty() {
            node_health
                .entry(&check.node)
                .or_insert(CheckStatus::Passing)
        } else {
            service_health
                .entry((&check.node, &check.service_id))
                .or_insert(CheckStatus::Passing)
        };
        *slot = (*slot).max(check.status);
    }
    let mut names = std::collections::HashSet::new();
    let mut by_health: BTreeMap<CheckStatus, u64> = BTreeMap::new();
    for (node, service) in state.all_services() {
        names.insert(service.spec.name.to_ascii_lowercase());
        let health = [
            node_health.get(node.name.as_str()),
            service_health.get(&(node.name.as_str(), service.spec.id.as_str())),
        ]
        .into_iter()
        .flatten()
        .copied()
        .max()
        .unwrap_or(CheckStatus::Passing);
        *by_health.entry(health).or_default() += 1;
    }
    gauge(
        r,
        "consul_state_nodes",
        "Nodes in the catalog",
        state.nodes().count() as u64,
    );
    gauge(
        r,
        "consul_state_services",
        "Distinct service names in the catalog",
        names.len() as u64,
    );
    gauge(
        r,
        "consul_state_service_instances",
        "Service instances in the catalog",
        by_health.values().sum(),
    );
    gauge(
        r,
        "consul_state_kv_entries",
        "Keys in the KV store",
        state.kv_prefix("").count() as u64,
    );
    gauge(
        r,
        "beacon_catalog_sessions",
        "Sessions in the catalog",
        state.sessions().count() as u64,
    );
    let statuses = [
        CheckStatus::Passing,
        CheckStatus::Warning,
        CheckStatus::Critical,
    ];
    let instances = Family::<StatusLabels, Gauge>::default();
    let check_family = Family::<StatusLabels, Gauge>::default();
    for status in statuses {
        let labels = StatusLabels {
            status: status.as_str(),
        };
        instances
            .get_or_create(&labels)
            .set(by_health.get(&status).copied().unwrap_or(0) as i64);
        check_family
            .get_or_create(&labels)
            .set(checks.get(&status).copied().unwrap_or(0) as i64);
    }
    r.register(
        "beacon_catalog_service_instances",
        "Service instances by health (the worst of their node's and their own checks)",
        instances,
    );
    r.register(
        "beacon_catalog_checks",
        "Health checks in the catalog by status",
        check_family,
    );
}

fn dns(r: &mut Registry, api: &Api) {
    let dns = &api.dns_metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counter = |r: &mut Registry, name: &str, help: &str, value: u64| {
        r.register(name, help, ConstCounter::new(value));
    };
    counter(
        r,
        "beacon_dns_udp_queries_received",
        "UDP DNS queries received",
        load(&dns.received),
    );
    counter(
        r,
        "beacon_dns_udp_answered",
        "UDP DNS answers sent",
        load(&dns.answered),
    );
    counter(
        r,
        "beacon_dns_udp_cache_hits",
        "UDP DNS queries answered from a pre-encoded answer",
        load(&dns.cache_hits),
    );
    counter(
        r,
        "beacon_dns_udp_full_path",
        "UDP DNS queries handled by the full handler (other zones, forwarding, errors)",
        load(&dns.full_path),
    );
    let dropped = Family::<ReasonLabels, Counter>::default();
    for (reason, value) in [
        ("overload", load(&dns.dropped_overload)),
        ("receive_buffer", dns.kernel_drops()),
        ("malformed", load(&dns.dropped_malformed)),
    ] {
        dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(value);
    }
    r.register(
        "beacon_dns_udp_dropped",
        "UDP DNS queries dropped without an answer, by reason",
        dropped,
    );
}

fn gossip(r: &mut Registry, api: &Api) {
    let g = &metrics::GOSSIP;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    for (name, help, value) in [
        (
            "beacon_gossip_packets_sent",
            "LAN gossip UDP packets sent",
            load(&g.packets_sent),
        ),
        (
            "beacon_gossip_bytes_sent",
            "LAN gossip bytes sent (UDP payloads, encrypted when encryption is on)",
            load(&g.bytes_sent),
        ),
        (
            "beacon_gossip_packets_received",
            "LAN gossip UDP packets received",
            load(&g.packets_received),
        ),
        (
            "beacon_gossip_bytes_received",
            "LAN gossip bytes received",
            load(&g.bytes_received),
        ),
    ] {
        r.register(name, help, ConstCounter::new(value));
    }
    let Some(pool) = &api.gossip else { return };
    let members = pool.members();
    let alive = |role: &str| {
        members
            .iter()
            .filter(|m| {
                m.status == PoolMember::ALIVE
                    && m.tags.get("role").map(String::as_str) == Some(role)
            })
            .count() as u64
    };
    gauge(
        r,
        "consul_members_servers",
        "Alive servers in the LAN gossip pool",
        alive("consul"),
    );
    gauge(
        r,
        "consul_members_clients",
        "Alive client agents in the LAN gossip pool",
        alive("node"),
    );
}

/// A client agent's materialized views (`remote::views`).
fn views(r: &mut Registry, api: &Api) {
    let Some(views) = &api.views else { return };
    gauge(
        r,
        "beacon_client_views",
        "Service names this client agent holds a streamed view of",
        views.held() as u64,
    );
    r.register(
        "beacon_client_view_resubscriptions",
        "Times a view moved to another server or subscribed again",
        ConstCounter::new(views.resubscriptions()),
    );
    gauge(
        r,
        "beacon_client_view_staleness_ms",
        "Milliseconds since the least recently heard-from view heard from a server that knew a \
         leader",
        views.oldest_contact().map_or(0, |d| d.as_millis() as u64),
    );
}

fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Records each request's route, method, status and time; a write endpoint's time also under
/// Consul's metric for it.
pub async fn record(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // A fixed set: any token is a valid HTTP method, and each would be a series kept forever.
    let method = match request.method().as_str() {
        m @ ("GET" | "PUT" | "POST" | "DELETE" | "HEAD" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let recorded = &*RECORDED;
    if let Some(metric) = metrics::consul_endpoint(&route, &method) {
        recorded
            .endpoint_time
            .get_or_create(&EndpointLabels { metric })
            .observe(metrics::ms_since(start));
    }
    recorded
        .http_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(metrics::seconds_since(start));
    recorded
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            code: response.status().as_u16(),
        })
        .inc();
    response
}

pub async fn metrics(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let registry = collect(&api);
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return super::ApiError::Internal(format!("encoding metrics: {e}")).into_response();
    }
    if params.get("format").map(String::as_str) == Some("prometheus") {
        return (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response();
    }
    axum::Json(consul_json(&text)).into_response()
}

/// Consul's JSON summary (`Gauges`, `Counters`, `Samples`) of the registry's text: counters
/// with their totals, histograms as samples (count, sum, mean), everything else a gauge.
fn consul_json(text: &str) -> serde_json::Value {
    let mut kinds: HashMap<&str, &str> = HashMap::new();
    let mut gauges = Vec::new();
    let mut counters = Vec::new();
    let mut samples: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name, kind);
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        let family = |suffix: &str| name.strip_suffix(suffix).filter(|f| kinds.contains_key(f));
        if family("_total").is_some_and(|f| kinds[f] == "counter") {
            let v = number(value);
            counters.push(
                json!({"Name": name, "Count": v, "Sum": v, "Min": v, "Max": v,
                "Mean": v, "Stddev": 0, "Rate": 0, "Labels": label_map(labels)}),
            );
        } else if let Some(f) = family("_sum").filter(|f| kinds[f] == "histogram") {
            samples
                .entry((f.to_string(), labels.to_string()))
                .or_default()
                .1 = value;
        } else if let Some(f) = family("_count").filter(|f| kinds[f] == "histogram") {
            samples
                .entry((f.to_string(), labels.to_string()))
                .or_default()
                .0 = value;
        } else if kinds.get(name).is_some_and(|k| *k == "gauge") {
            gauges.push(json!({"Name": name, "Value": number(value), "Labels": label_map(labels)}));
        }
    }
    let samples: Vec<_> = samples
        .into_iter()
        .map(|((name, labels), (count, sum))| {
            let mean = if count > 0.0 { sum / count } else { 0.0 };
            json!({"Name": name, "Count": number(count), "Sum": sum, "Mean": mean, "Rate": 0,
                   "Labels": label_map(&labels)})
        })
        .collect();
    // Go's time.Time String() at second precision, in UTC, as Consul prints it.
    let now = time::OffsetDateTime::now_utc();
    let timestamp = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} +0000 UTC",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    json!({
        "Timestamp": timestamp,
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": samples,
    })
}

/// A whole number as an integer in JSON (counts), anything else as it is.
fn number(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && (0.0..9.0e15).contains(&v) {
        json!(v as u64)
    } else {
        json!(v)
    }
}

/// `a="1",b="2"` → `{"a": "1", "b": "2"}`. Label values are Beacon's own (route patterns,
/// a fixed set of methods, codes, statuses), never with a quote to escape.
fn label_map(labels: &str) -> serde_json::Map<String, serde_json::Value> {
    labels
        .split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k.to_string(), json!(v.trim_end_matches('"'))))
        })
        .collect()
}
