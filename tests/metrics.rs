//! `/v1/agent/metrics` and `/v1/operator/autopilot/health` on a real dev agent: Consul's
//! metric names move with what the agent does, the Prometheus text is read by the Prometheus
//! project's own Python parser, and the JSON keeps Consul's shape.

mod support;

use std::collections::HashMap;
use std::process::Command;

use hickory_proto::rr::RecordType;
use serde_json::json;
use support::{Server, eventually, fail, get_json, http, put, register, tcp};

/// Every sample of the Prometheus text as `name{labels}` → value, parsed by
/// `prometheus_client.openmetrics.parser` (the text must be valid OpenMetrics).
fn parse(text: &str) -> HashMap<String, f64> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(support::python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn scrape(s: &Server) -> HashMap<String, f64> {
    let response = http()
        .get(s.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    parse(&response.text().await.unwrap())
}

fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no {name} among {:?}", samples.keys().collect::<Vec<_>>()))
}

#[tokio::test]
async fn metrics_follow_writes_health_blocking_queries_and_dns() {
    let s = Server::start(&[]);
    let before = scrape(&s).await;
    assert_eq!(value(&before, "consul_server_isLeader"), 1.0);
    assert_eq!(value(&before, "consul_state_kv_entries"), 0.0);
    let applied = value(&before, "consul_raft_apply");

    let (status, _) = put(&s.url("/v1/kv/metrics/a"), "1").await;
    assert_eq!(status, 200);
    register(
        &s,
        json!({"Name": "web", "ID": "web-1", "Port": 80,
               "Check": {"CheckID": "web-ttl", "TTL": "10m", "Status": "passing"}}),
    )
    .await;
    fail(&s, "web-ttl").await;

    // A blocking query that waits while the scrape runs.
    let (_, first) = get_json(&s.url("/v1/kv/metrics/a")).await;
    let index = first[0]["ModifyIndex"].as_u64().unwrap();
    let waiting = tokio::spawn({
        let url = s.url(&format!("/v1/kv/metrics/a?index={index}&wait=30s"));
        async move { http().get(url).send().await.unwrap().status() }
    });
    let during = eventually("the blocking query counted", || {
        let s = &s;
        async move {
            let m = scrape(s).await;
            (value(&m, "beacon_http_blocking_queries") == 1.0).then_some(m)
        }
    })
    .await;
    let answer = tcp(
        s.dns,
        &support::query_message("web.service.consul.", RecordType::A, None),
    )
    .await;
    assert!(answer.answers.is_empty(), "critical: not served");

    assert!(value(&during, "consul_raft_apply") >= applied + 3.0);
    assert!(value(&during, "consul_raft_commitTime_count") >= 3.0);
    assert_eq!(value(&during, "consul_state_kv_entries"), 1.0);
    assert_eq!(
        value(
            &during,
            "beacon_catalog_service_instances{status=\"critical\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&during, "beacon_catalog_checks{status=\"critical\"}"),
        1.0
    );
    assert!(value(&during, "consul_state_nodes") >= 1.0);
    assert_eq!(
        value(
            &during,
            "beacon_http_requests_total{code=\"200\",method=\"PUT\",route=\"/v1/kv/{*key}\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &during,
            "beacon_write_endpoint_ms_count{metric=\"consul_kvs_apply\"}"
        ),
        1.0
    );

    // Any token is an HTTP method: unknown ones share one series.
    for method in ["FOO1", "FOO2"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        http()
            .request(m, s.url("/v1/kv/metrics/a"))
            .send()
            .await
            .unwrap();
    }
    let methods = scrape(&s).await;
    assert_eq!(
        value(
            &methods,
            "beacon_http_requests_total{code=\"405\",method=\"other\",route=\"/v1/kv/{*key}\"}"
        ),
        2.0
    );
    assert!(!methods.keys().any(|k| k.contains("FOO")), "{methods:?}");

    let (status, _) = put(&s.url("/v1/kv/metrics/a"), "2").await;
    assert_eq!(status, 200);
    assert_eq!(waiting.await.unwrap(), 200);
    let after = eventually("the DNS query timed and the wait over", || {
        let s = &s;
        async move {
            let m = scrape(s).await;
            (value(&m, "beacon_http_blocking_queries") == 0.0
                && value(&m, "beacon_dns_full_path_duration_seconds_count") >= 1.0)
                .then_some(m)
        }
    })
    .await;
    assert!(value(&after, "beacon_raft_applied_index") >= index as f64);

    // Consul's JSON shape, with the same figures.
    let (status, body) = get_json(&s.url("/v1/agent/metrics")).await;
    assert_eq!(status, 200);
    let stamp = body["Timestamp"].as_str().unwrap();
    assert!(
        stamp.len() == 29 && stamp.ends_with(" +0000 UTC") && stamp.as_bytes()[10] == b' ',
        "Consul's timestamp shape: {stamp}"
    );
    let gauge = body["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == "consul_server_isLeader")
        .expect("isLeader gauge");
    assert_eq!(gauge["Value"], 1.0);
    let sample = body["Samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["Name"] == "consul_raft_commitTime")
        .expect("commitTime sample");
    assert!(sample["Count"].as_f64().unwrap() >= 4.0, "{sample}");
}

#[tokio::test]
async fn autopilot_health_reports_the_servers() {
    let s = Server::start(&[]);
    let (status, body) = get_json(&s.url("/v1/operator/autopilot/health")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Healthy"], true);
    assert_eq!(body["FailureTolerance"], 0);
    let servers = body["Servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["Name"], "test-node");
    assert_eq!(servers[0]["Leader"], true);
    assert_eq!(servers[0]["Healthy"], true);
    assert_eq!(servers[0]["SerfStatus"], "alive");
    let m = scrape(&s).await;
    assert_eq!(value(&m, "consul_autopilot_healthy"), 1.0);
}
