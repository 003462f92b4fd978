//! `/v1/agent/metrics`: the agent's counters, as Consul's JSON summary or (with
//! `?format=prometheus`) Prometheus' text format.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Api;

struct Metric {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    labels: &'static [(&'static str, &'static str)],
    value: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

fn collect(api: &Api) -> Vec<Metric> {
    let dns = &api.dns_metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counter = |name, help, labels, value| Metric {
        name,
        help,
        kind: Kind::Counter,
        labels,
        value,
    };
    let dropped = "UDP DNS queries dropped without an answer, by reason.";
    vec![
        counter(
            "beacon_raft_writes_rejected_total",
            "Writes refused with 429 because the leader's write queue was full.",
            &[],
            load(&crate::metrics::WRITES.rejected_busy),
        ),
        counter(
            "beacon_gossip_packets_sent_total",
            "LAN gossip UDP packets sent.",
            &[],
            load(&crate::metrics::GOSSIP.packets_sent),
        ),
        counter(
            "beacon_gossip_bytes_sent_total",
            "LAN gossip bytes sent (UDP payloads, encrypted when encryption is on).",
            &[],
            load(&crate::metrics::GOSSIP.bytes_sent),
        ),
        counter(
            "beacon_gossip_packets_received_total",
            "LAN gossip UDP packets received.",
            &[],
            load(&crate::metrics::GOSSIP.packets_received),
        ),
        counter(
            "beacon_gossip_bytes_received_total",
            "LAN gossip bytes received.",
            &[],
            load(&crate::metrics::GOSSIP.bytes_received),
        ),
        counter(
            "beacon_dns_udp_queries_received_total",
            "UDP DNS queries received.",
            &[],
            load(&dns.received),
        ),
        counter(
            "beacon_dns_udp_answered_total",
            "UDP DNS answers sent.",
            &[],
            load(&dns.answered),
        ),
        counter(
            "beacon_dns_udp_cache_hits_total",
            "UDP DNS queries answered from a pre-encoded answer.",
            &[],
            load(&dns.cache_hits),
        ),
        counter(
            "beacon_dns_udp_full_path_total",
            "UDP DNS queries handled by the full handler (other zones, forwarding, errors).",
            &[],
            load(&dns.full_path),
        ),
        counter(
            "beacon_dns_udp_dropped_total",
            dropped,
            &[("reason", "overload")],
            load(&dns.dropped_overload),
        ),
        counter(
            "beacon_dns_udp_dropped_total",
            dropped,
            &[("reason", "receive_buffer")],
            dns.kernel_drops(),
        ),
        counter(
            "beacon_dns_udp_dropped_total",
            dropped,
            &[("reason", "malformed")],
            load(&dns.dropped_malformed),
        ),
        Metric {
            name: "beacon_raft_applied_index",
            help: "The last Raft index applied to the catalog.",
            kind: Kind::Gauge,
            labels: &[],
            value: api.view.load().indexes().last,
        },
        Metric {
            name: "beacon_process_resident_memory_bytes",
            help: "Resident memory of the process.",
            kind: Kind::Gauge,
            labels: &[],
            value: resident_bytes(),
        },
    ]
}

fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

pub async fn metrics(
    State(api): State<Api>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let metrics = collect(&api);
    if params.get("format").map(String::as_str) == Some("prometheus") {
        return (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus(&metrics),
        )
            .into_response();
    }
    let labels = |m: &Metric| {
        m.labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let gauges: Vec<_> = metrics
        .iter()
        .filter(|m| m.kind == Kind::Gauge)
        .map(|m| json!({"Name": m.name, "Value": m.value, "Labels": labels(m)}))
        .collect();
    let counters: Vec<_> = metrics
        .iter()
        .filter(|m| m.kind == Kind::Counter)
        .map(|m| {
            json!({"Name": m.name, "Count": m.value, "Sum": m.value, "Min": 1, "Max": 1,
                   "Mean": 1, "Stddev": 0, "Labels": labels(m)})
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    axum::Json(json!({
        "Timestamp": now.to_string(),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": [],
    }))
    .into_response()
}

fn prometheus(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let mut described = Vec::new();
    for m in metrics {
        if !described.contains(&m.name) {
            described.push(m.name);
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            out.push_str(&format!(
                "# HELP {} {}\n# TYPE {} {kind}\n",
                m.name, m.help, m.name
            ));
        }
        let labels: Vec<String> = m
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        if labels.is_empty() {
            out.push_str(&format!("{} {}\n", m.name, m.value));
        } else {
            out.push_str(&format!("{}{{{}}} {}\n", m.name, labels.join(","), m.value));
        }
    }
    out
}
