//! The HTTP API of a real server process, driven with a real HTTP client.

mod support;

use serde_json::{Value, json};
use support::*;

async fn get(url: &str) -> reqwest::Response {
    http().get(url).send().await.unwrap()
}

fn index_of(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("X-Consul-Index")
        .expect("every read has X-Consul-Index")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn status_and_self() {
    let s = Server::start(&[]);
    let (st, leader) = get_json(&s.url("/v1/status/leader")).await;
    assert_eq!(st, 200);
    assert!(
        leader.as_str().unwrap().starts_with("127.0.0.1:"),
        "{leader}"
    );
    let (_, peers) = get_json(&s.url("/v1/status/peers")).await;
    assert_eq!(peers, json!([leader]));
    let (_, me) = get_json(&s.url("/v1/agent/self")).await;
    assert_eq!(me["Stats"]["consul"]["leader_addr"], leader);
    for section in ["Config", "DebugConfig", "Member", "Meta", "Stats"] {
        assert!(me.get(section).is_some(), "agent/self has {section}: {me}");
    }
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["NodeName"], "test-node");
    let (_, members) = get_json(&s.url("/v1/agent/members")).await;
    assert_eq!(members[0]["Name"], "test-node");
    let (_, dcs) = get_json(&s.url("/v1/catalog/datacenters")).await;
    assert_eq!(dcs, json!(["dc1"]));
}

#[tokio::test]
async fn register_read_back_and_deregister() {
    let s = Server::start(&[]);
    // curl -d sends a form content type; the body is JSON regardless.
    let r = http()
        .put(s.url("/v1/agent/service/register"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"Name":"web","ID":"web1","Address":"10.0.0.1","Port":8080,"Tags":["v1"],"Meta":{"Team":"a"},"Weights":{"Passing":5},"Check":{"TTL":"30s"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    assert_eq!(services["web1"]["Service"], "web");
    assert_eq!(services["web1"]["Meta"]["Team"], "a");
    assert_eq!(services["web1"]["Weights"]["Passing"], 5);
    assert!(
        services.get("consul").is_none(),
        "the server's own service is not an agent service"
    );
    let (st, one) = get_json(&s.url("/v1/agent/service/web1")).await;
    assert_eq!((st, one["Port"].clone()), (200, json!(8080)));

    let r = get(&s.url("/v1/catalog/service/web")).await;
    let index = index_of(&r);
    let entries: Value = r.json().await.unwrap();
    assert_eq!(entries[0]["ServiceID"], "web1");
    assert_eq!(entries[0]["ServiceAddress"], "10.0.0.1");
    assert_eq!(entries[0]["Node"], "test-node");
    assert_eq!(entries[0]["ModifyIndex"].as_u64().unwrap(), index);

    let (_, names) = get_json(&s.url("/v1/catalog/services")).await;
    assert_eq!(names["web"], json!(["v1"]));
    assert_eq!(names["consul"], json!([]));

    let (_, health) = get_json(&s.url("/v1/health/service/web")).await;
    assert_eq!(health[0]["Service"]["ID"], "web1");
    let check_ids: Vec<&str> = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(check_ids, ["serfHealth", "service:web1"]);
    let (_, passing) = get_json(&s.url("/v1/health/service/web?passing")).await;
    assert_eq!(passing, json!([]), "the TTL check starts critical");
    pass(&s, "service:web1").await;
    let (_, passing) = get_json(&s.url("/v1/health/service/web?passing=1&tag=v1")).await;
    assert_eq!(passing.as_array().unwrap().len(), 1);
    let (_, other_tag) = get_json(&s.url("/v1/health/service/web?tag=v2")).await;
    assert_eq!(other_tag, json!([]));

    let (_, checks) = get_json(&s.url("/v1/health/checks/web")).await;
    assert_eq!(checks[0]["ServiceName"], "web");
    assert_eq!(checks[0]["Status"], "passing");
    let (_, critical) = get_json(&s.url("/v1/health/state/critical")).await;
    assert_eq!(critical, json!([]));
    let (_, node_checks) = get_json(&s.url("/v1/health/node/test-node")).await;
    assert_eq!(node_checks.as_array().unwrap().len(), 2);
    let (_, node) = get_json(&s.url("/v1/catalog/node/test-node")).await;
    assert_eq!(node["Node"]["Address"], "127.0.0.1");
    assert!(node["Services"]["web1"].is_object());

    let (st, _) = put(&s.url("/v1/agent/service/deregister/web1"), "").await;
    assert_eq!(st, 200);
    let (_, entries) = get_json(&s.url("/v1/catalog/service/web")).await;
    assert_eq!(entries, json!([]));
    let r = get(&s.url("/v1/catalog/service/web")).await;
    assert!(index_of(&r) > index, "a deregistration advances the index");
}

#[tokio::test]
async fn agent_health_endpoint_maps_status_to_http_codes() {
    let s = Server::start(&[]);
    register(&s, json!({"Name": "web", "Check": {"TTL": "30s"}})).await;
    let url = s.url("/v1/agent/health/service/name/web");
    assert_eq!(get(&url).await.status().as_u16(), 503);
    let (st, _) = put(&s.url("/v1/agent/check/warn/service:web?note=slow"), "").await;
    assert_eq!(st, 200);
    let r = get(&url).await;
    assert_eq!(r.status().as_u16(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body[0]["AggregatedStatus"], "warning");
    // The node's own check counts, but it is not the service's: no service name on it.
    let checks = body[0]["Checks"].as_array().unwrap();
    let serf = checks
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .unwrap();
    assert_eq!(serf["ServiceName"], "", "{serf}");
    let own = checks
        .iter()
        .find(|c| c["CheckID"] == "service:web")
        .unwrap();
    assert_eq!(own["ServiceName"], "web");
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks["service:web"]["Output"], "slow");
    pass(&s, "service:web").await;
    assert_eq!(get(&url).await.status().as_u16(), 200);
    assert_eq!(
        get(&s.url("/v1/agent/health/service/name/nope"))
            .await
            .status()
            .as_u16(),
        404
    );

    let (st, _) = put(
        &s.url("/v1/agent/check/update/service:web"),
        r#"{"Status":"critical","Output":"down"}"#,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(get(&url).await.status().as_u16(), 503);
}

#[tokio::test]
async fn check_register_and_maintenance_mode() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "web", "Address": "10.0.0.1", "Port": 80}),
    )
    .await;
    let (st, text) = put(
        &s.url("/v1/agent/check/register"),
        r#"{"Name":"mem","ServiceID":"web","TTL":"30s","Status":"passing"}"#,
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks["mem"]["Status"], "passing");
    assert_eq!(checks["mem"]["ServiceID"], "web");

    let (st, _) = put(
        &s.url("/v1/agent/service/maintenance/web?enable=true&reason=upgrade"),
        "",
    )
    .await;
    assert_eq!(st, 200);
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks["_service_maintenance:web"]["Status"], "critical");
    assert_eq!(checks["_service_maintenance:web"]["Notes"], "upgrade");
    let (_, passing) = get_json(&s.url("/v1/health/service/web?passing")).await;
    assert_eq!(passing, json!([]));
    let (st, _) = put(&s.url("/v1/agent/service/maintenance/web?enable=false"), "").await;
    assert_eq!(st, 200);
    let (_, passing) = get_json(&s.url("/v1/health/service/web?passing")).await;
    assert_eq!(passing.as_array().unwrap().len(), 1);

    let (st, _) = put(&s.url("/v1/agent/maintenance?enable=true"), "").await;
    assert_eq!(st, 200);
    let (_, passing) = get_json(&s.url("/v1/health/service/web?passing")).await;
    assert_eq!(
        passing,
        json!([]),
        "node maintenance takes every service out"
    );
    let (st, _) = put(&s.url("/v1/agent/maintenance?enable=false"), "").await;
    assert_eq!(st, 200);

    let (st, _) = put(&s.url("/v1/agent/check/deregister/mem"), "").await;
    assert_eq!(st, 200);
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert!(checks.get("mem").is_none());
}

#[tokio::test]
async fn catalog_register_and_deregister() {
    let s = Server::start(&[]);
    let body = json!({
        "Datacenter": "dc1", "Node": "ext", "Address": "192.0.2.10", "NodeMeta": {"rack": "r1"},
        "Service": {"Service": "db", "Port": 5432, "Tags": ["primary"]},
        "Check": {"CheckID": "db-ok", "Name": "db", "Status": "passing", "ServiceID": "db"}
    });
    let (st, text) = put(&s.url("/v1/catalog/register"), body.to_string()).await;
    assert_eq!((st, text.as_str()), (200, "true"));
    let (_, nodes) = get_json(&s.url("/v1/catalog/nodes?node-meta=rack:r1")).await;
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["Node"], "ext");
    let (_, none) = get_json(&s.url("/v1/catalog/nodes?node-meta=rack:r2")).await;
    assert_eq!(none, json!([]));
    let (_, passing) = get_json(&s.url("/v1/health/service/db?passing")).await;
    assert_eq!(passing[0]["Node"]["Address"], "192.0.2.10");

    let (st, _) = put(&s.url("/v1/catalog/deregister"), r#"{"Node":"ext"}"#).await;
    assert_eq!(st, 200);
    let (_, node) = get_json(&s.url("/v1/catalog/node/ext")).await;
    assert_eq!(node, Value::Null);
}

#[tokio::test]
async fn reads_carry_index_and_pretty_formats() {
    let s = Server::start(&[]);
    for path in [
        "/v1/catalog/services",
        "/v1/catalog/nodes",
        "/v1/health/state/any",
        "/v1/agent/checks",
    ] {
        let r = get(&s.url(path)).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(index_of(&r) >= 1, "{path}");
    }
    // Status endpoints are not queries in Consul: no query headers, so no leader claimed.
    for path in ["/v1/status/leader", "/v1/status/peers"] {
        let r = get(&s.url(path)).await;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        for header in [
            "X-Consul-Index",
            "X-Consul-KnownLeader",
            "X-Consul-LastContact",
        ] {
            assert!(r.headers().get(header).is_none(), "{path} has {header}");
        }
    }
    let r = get(&s.url("/v1/catalog/datacenters?pretty")).await;
    let text = r.text().await.unwrap();
    assert!(text.contains("\n"), "pretty output is indented: {text:?}");
    // Tokens are accepted and ignored until ACLs exist.
    let r = http()
        .get(s.url("/v1/catalog/services?token=abc"))
        .header("X-Consul-Token", "x")
        .bearer_auth("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn other_datacenters_have_no_path() {
    let s = Server::start(&[]);
    let r = get(&s.url("/v1/catalog/services?dc=dc2")).await;
    assert_eq!(r.status().as_u16(), 500);
    assert!(r.text().await.unwrap().contains("No path to datacenter"));
    assert_eq!(
        get(&s.url("/v1/catalog/services?dc=dc1"))
            .await
            .status()
            .as_u16(),
        200
    );
}

/// Every bad request gets a 4xx with a message and leaves the catalog as it was.
#[tokio::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let s = Server::start(&[]);
    let before = get(&s.url("/v1/catalog/services")).await;
    let before_index = index_of(&before);
    let before_body: Value = before.json().await.unwrap();

    let bad_bodies: &[(&str, &str)] = &[
        ("{not json", "Request decode failed"),
        (r#"{"Name":"web","Port":"eighty"}"#, "Request decode failed"),
        (r#"{"Name":"web","Tags":"v1"}"#, "Request decode failed"),
        (
            r#"{"Name":"web","Check":{"TTL":"thirty"}}"#,
            "invalid duration",
        ),
        (
            r#"{"Name":"web","Check":{"Interval":"10s"}}"#,
            "Invalid check",
        ),
        (
            r#"{"Name":"web","Check":{"HTTP":"http://x"}}"#,
            "Interval must be > 0",
        ),
        (
            r#"{"Name":"web","Check":{"TTL":"5s","Status":"fine"}}"#,
            "Invalid check status",
        ),
        (r#"{"Port":80}"#, "Missing service name"),
        (
            r#"{"Name":"web","Address":"0.0.0.0"}"#,
            "Invalid service address",
        ),
        (r#"["Name"]"#, "Request decode failed"),
    ];
    for (body, message) in bad_bodies {
        let (st, text) = put(&s.url("/v1/agent/service/register"), *body).await;
        assert_eq!(st, 400, "{body} → {text}");
        assert!(text.contains(message), "{body}: {text:?} lacks {message:?}");
    }

    let huge = format!(
        r#"{{"Name":"web","Meta":{{"k":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let (st, _) = put(&s.url("/v1/agent/service/register"), huge).await;
    assert_eq!(st, 413);

    let (st, text) = put(&s.url("/v1/agent/check/pass/nope"), "").await;
    assert_eq!(st, 404, "{text}");
    let (st, _) = put(
        &s.url("/v1/agent/check/update/nope"),
        r#"{"Status":"passing"}"#,
    )
    .await;
    assert_eq!(st, 404);
    let (st, _) = put(&s.url("/v1/agent/service/deregister/nope"), "").await;
    assert_eq!(st, 404);
    let (st, _) = put(&s.url("/v1/agent/check/deregister/nope"), "").await;
    assert_eq!(st, 404);
    let (st, _) = put(&s.url("/v1/agent/service/maintenance/nope?enable=true"), "").await;
    assert_eq!(st, 404);
    let (st, _) = put(&s.url("/v1/agent/maintenance"), "").await;
    assert_eq!(st, 400, "enable is required");
    let (st, _) = put(
        &s.url("/v1/agent/check/register"),
        r#"{"Name":"c","TTL":"5s","ServiceID":"ghost"}"#,
    )
    .await;
    assert_eq!(st, 404, "a check for an unknown service: Consul's 404");
    let (st, _) = put(&s.url("/v1/catalog/register"), r#"{"Address":"1.2.3.4"}"#).await;
    assert_eq!(st, 400);
    let (st, _) = put(
        &s.url("/v1/catalog/register"),
        r#"{"Node":"x","Address":"1.2.3.4","Check":{"CheckID":"c","ServiceID":"ghost"}}"#,
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        get(&s.url("/v1/health/state/bogus"))
            .await
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        get(&s.url("/v1/catalog/nodes?node-meta=nocolon"))
            .await
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        get(&s.url("/v1/agent/service/nope"))
            .await
            .status()
            .as_u16(),
        404
    );

    let after = get(&s.url("/v1/catalog/services")).await;
    assert_eq!(index_of(&after), before_index, "nothing was written");
    let after_body: Value = after.json().await.unwrap();
    assert_eq!(after_body, before_body);
    let (_, nodes) = get_json(&s.url("/v1/catalog/nodes")).await;
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "no node 'x' was created"
    );
}

#[tokio::test]
async fn request_bodies_are_decoded_as_consul_decodes_them() {
    let s = Server::start(&[]);
    // Unknown fields, at any depth and on every endpoint with a body: 400 naming the field as
    // written, and nothing stored.
    let refused = [
        (
            "/v1/agent/service/register",
            r#"{"ID":"1","Name":"svc","Port":8080,"ServiceWeights":{"Passing":1,"Warning":5}}"#,
            "ServiceWeights",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name":"svc","Check":{"TTL":"5s","Intervall":"1s"}}"#,
            "Intervall",
        ),
        (
            "/v1/agent/service/register",
            r#"{"Name":"svc","Weights":{"Passing":1,"Critical":1}}"#,
            "Critical",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name":"c","TTL":"5s","Servce":"x"}"#,
            "Servce",
        ),
        (
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"1.1.1.1","Service":{"Service":"svc","Name":"svc"}}"#,
            "Name",
        ),
        (
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"1.1.1.1","Nodemeta2":{}}"#,
            "Nodemeta2",
        ),
        (
            "/v1/catalog/deregister",
            r#"{"Node":"n","ServiceName":"svc"}"#,
            "ServiceName",
        ),
        (
            "/v1/session/create",
            r#"{"Name":"s","TTL":"10s","Behaviour":"delete"}"#,
            "Behaviour",
        ),
        (
            "/v1/txn",
            r#"[{"KV":{"Verb":"set","Key":"k","Value":"dg==","Sesion":"x"}}]"#,
            "Sesion",
        ),
    ];
    for (path, body, field) in refused {
        let (st, text) = put(&s.url(path), body).await;
        assert_eq!(st, 400, "{path} {body}: {text}");
        assert!(
            text.contains(&format!("json: unknown field \"{field}\"")),
            "{path} {body}: {text}"
        );
    }
    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    assert_eq!(services, json!({}), "nothing stored on a 400");
    let (_, nodes) = get_json(&s.url("/v1/catalog/nodes")).await;
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "only the agent's node: {nodes}"
    );
    let (st, _) = get_json(&s.url("/v1/kv/k")).await;
    assert_eq!(st, 404);

    // Names match case-insensitively, Consul's snake_case aliases are accepted, the body is
    // JSON whatever the Content-Type, and an empty `Check` is no check.
    let r = http()
        .put(s.url("/v1/agent/service/register"))
        .header("Content-Type", "text/plain")
        .body(
            r#"{"name":"api","PORT":81,"enable_tag_override":true,"tagged_addresses":{"lan":{"address":"10.0.0.1","port":81}},"Check":{},"Weights":{"passing":3,"warning":1},"Connect":null,"Proxy":{}}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    let api = &services["api"];
    assert_eq!(api["Port"], 81);
    assert_eq!(api["EnableTagOverride"], true);
    assert_eq!(api["TaggedAddresses"]["lan"]["Address"], "10.0.0.1");
    assert_eq!(api["Weights"]["Passing"], 3);
    let (_, checks) = get_json(&s.url("/v1/agent/checks")).await;
    assert_eq!(checks, json!({}), "the empty Check registered nothing");
    let (st, text) = put(
        &s.url("/v1/agent/check/register"),
        r#"{"name":"t","ttl":"5s","service_id":"api","deregister_critical_service_after":"90s"}"#,
    )
    .await;
    assert_eq!(st, 200, "{text}");

    // Weights.Passing below 1 is refused; a write for another datacenter has no path.
    let (st, text) = put(
        &s.url("/v1/agent/service/register"),
        r#"{"Name":"w","Weights":{"Passing":0,"Warning":1}}"#,
    )
    .await;
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("Passing"), "{text}");
    for (path, body) in [
        (
            "/v1/catalog/register",
            r#"{"Datacenter":"dc2","Node":"far","Address":"1.1.1.1"}"#,
        ),
        (
            "/v1/catalog/deregister",
            r#"{"Datacenter":"dc2","Node":"far"}"#,
        ),
    ] {
        let (st, text) = put(&s.url(path), body).await;
        assert_eq!((st, text.trim()), (500, "No path to datacenter"), "{path}");
    }
    let (st, text) = put(
        &s.url("/v1/catalog/register"),
        r#"{"Datacenter":"DC1","Node":"near","Address":"1.1.1.1"}"#,
    )
    .await;
    assert_eq!(st, 200, "its own datacenter, in any case: {text}");
    let (_, nodes) = get_json(&s.url("/v1/catalog/nodes")).await;
    assert!(!nodes.to_string().contains("\"far\""), "{nodes}");
}

#[tokio::test]
async fn agent_monitor_streams_operator_events_from_the_log() {
    let s = Server::start(&[]);
    let (st, text) = put(&s.url("/v1/agent/monitor?loglevel=loud"), "").await;
    assert_eq!(st, 405, "monitor is a GET: {text}");
    let r = http()
        .get(s.url("/v1/agent/monitor?loglevel=loud"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("Unknown log level"));

    let mut stream = reqwest::Client::new()
        .get(s.url("/v1/agent/monitor?loglevel=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // A registration, a check turning passing and a reload are each logged at info.
    register(
        &s,
        json!({"Name": "web", "ID": "web-1", "Port": 80, "Check": {"TTL": "30s"}}),
    )
    .await;
    pass(&s, "service:web-1").await;
    let (st, text) = put(&s.url("/v1/agent/reload"), "").await;
    assert_eq!(st, 200, "{text}");
    let wanted = [
        "registered service",
        "check status critical -> passing",
        "reloaded DNS configuration",
    ];
    let mut seen = String::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if wanted.iter().all(|w| seen.contains(w)) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "monitor output lacks one of {wanted:?}:\n{seen}"
    );
    assert!(seen.contains("web-1"), "{seen}");
}

#[tokio::test]
async fn ids_and_names_in_paths_are_taken_whole() {
    let s = Server::start(&[]);
    register(
        &s,
        json!({"Name": "team/web", "ID": "team/web/2", "Port": 80, "Check": {"TTL": "30s"}}),
    )
    .await;
    let (st, service) = get_json(&s.url("/v1/agent/service/team/web/2")).await;
    assert_eq!((st, &service["ID"]), (200, &json!("team/web/2")));
    let (st, _) = put(&s.url("/v1/agent/check/pass/service:team/web/2"), "").await;
    assert_eq!(st, 200);
    for path in [
        "/v1/catalog/service/team/web",
        "/v1/health/service/team/web?passing",
        "/v1/health/checks/team/web",
    ] {
        let (st, body) = get_json(&s.url(path)).await;
        assert_eq!(st, 200, "{path}");
        assert_eq!(body.as_array().unwrap().len(), 1, "{path}: {body}");
    }
    let (st, text) = put(&s.url("/v1/agent/service/deregister/team/web/2"), "").await;
    assert_eq!(st, 200, "{text}");
    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    assert_eq!(services, json!({}));
}

#[tokio::test]
async fn filter_expressions_select_items_and_bad_ones_are_refused() {
    let s = Server::start(&[]);
    for (id, tags, env) in [("a", ["blue", "v1"], "prod"), ("b", ["green", "v2"], "dev")] {
        register(
            &s,
            json!({"Name": "web", "ID": id, "Port": 80, "Tags": tags, "Meta": {"env": env}}),
        )
        .await;
    }
    let ids = |body: &serde_json::Value| -> Vec<String> {
        let mut v: Vec<String> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.get("ServiceID")
                    .or(e.pointer("/Service/ID"))
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    let q = |expr: &str| form_urlencoded::byte_serialize(expr.as_bytes()).collect::<String>();
    let (_, body) = get_json(&s.url(&format!(
        "/v1/catalog/service/web?filter={}",
        q(r#"ServiceMeta.env == "prod""#)
    )))
    .await;
    assert_eq!(ids(&body), ["a"]);
    let (_, body) = get_json(&s.url(&format!(
        "/v1/health/service/web?filter={}",
        q(r#""v2" in Service.Tags and not (Service.Meta.env == prod)"#)
    )))
    .await;
    assert_eq!(ids(&body), ["b"]);
    let (_, body) = get_json(&s.url(&format!(
        "/v1/agent/services?filter={}",
        q("Tags contains blue or Meta.env matches \"^de\"")
    )))
    .await;
    let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    for bad in ["ServiceMeta.env ==", "Nope == 1", "(ServiceName == web"] {
        let r = http()
            .get(s.url(&format!("/v1/catalog/service/web?filter={}", q(bad))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("Failed to create boolean expression evaluator"),
            "{bad}: {text}"
        );
    }
}
