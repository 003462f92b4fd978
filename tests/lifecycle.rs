//! Start-up, shutdown and restart of the real binary.

mod support;

use hickory_proto::rr::RecordType;
use serde_json::json;
use support::*;

#[tokio::test]
async fn restart_with_the_same_data_dir_serves_the_acknowledged_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    for i in 0..5 {
        register(&s, json!({"Name": "web", "ID": format!("web{i}"), "Address": format!("10.0.0.{}", i + 1), "Port": 80, "Check": {"TTL": "1h"}})).await;
    }
    pass(&s, "service:web0").await;
    pass(&s, "service:web3").await;
    let (st, _) = put(&s.url("/v1/agent/service/deregister/web4"), "").await;
    assert_eq!(st, 200);
    let (_, before) = get_json(&s.url("/v1/health/service/web")).await;
    // No clean shutdown: every acknowledged write must already be on disk.
    s.kill();

    let s2 = Server::start_in(dir.path(), &[]);
    let (_, after) = get_json(&s2.url("/v1/health/service/web")).await;
    assert_eq!(after.as_array().unwrap().len(), 4);
    // A dev agent binds a new ephemeral RPC port on restart; what it advertises follows.
    let (_, leader) = get_json(&s2.url("/v1/status/leader")).await;
    let leader: std::net::SocketAddr = leader.as_str().unwrap().parse().unwrap();
    tokio::net::TcpStream::connect(leader)
        .await
        .unwrap_or_else(|e| panic!("the advertised leader {leader} is not listening: {e}"));
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(
        after
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ModifyIndex"].clone())
            .collect::<Vec<_>>(),
        before
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ModifyIndex"].clone())
            .collect::<Vec<_>>(),
        "indexes survive the restart"
    );
    let r = ask(s2.dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(a_records(&r), ["10.0.0.1", "10.0.0.4"]);
    // Writes continue at higher indexes after the restart.
    register(&s2, json!({"Name": "api", "Port": 1})).await;
    let (_, api) = get_json(&s2.url("/v1/catalog/service/api")).await;
    let max_before = before
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ModifyIndex"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(api[0]["ModifyIndex"].as_u64().unwrap() > max_before);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_state_survives() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(dir.path(), &[]);
    register(&s, json!({"Name": "web", "Port": 80})).await;
    let status = s.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(s.log_text().contains("stopped"), "{}", s.log_text());
    let s2 = Server::start_in(dir.path(), &[]);
    let (_, entries) = get_json(&s2.url("/v1/catalog/service/web")).await;
    assert_eq!(entries.as_array().unwrap().len(), 1);
}

#[test]
fn agent_without_a_complete_mode_exits_64() {
    let (code, err) = run_to_exit(&["agent"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("--dev") && err.contains("--server"),
        "names the modes: {err}"
    );
    let (code, err) = run_to_exit(&["agent", "--server"]);
    assert_eq!(code, 64);
    assert!(err.contains("--data-dir"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run_to_exit(&[
        "agent",
        "--server",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("--bootstrap-expect"), "{err}");
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[dns_config]\nnot_a_key = 1\n", "not_a_key"),
        (
            "[dns_config]\nnode_ttl = \"later\"\n",
            "dns_config.node_ttl",
        ),
        (
            "[dns_config]\nudp_answer_limit = -1\n",
            "dns_config.udp_answer_limit",
        ),
        ("datacenter = 5\n", "datacenter"),
    ];
    for (text, key) in cases {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let (code, err) = run_to_exit(&[
            "agent",
            "--dev",
            "--config",
            file.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 64, "{text}: {err}");
        assert!(err.contains(key), "{text}: {err:?} does not name {key}");
    }
    let (code, err) = run_to_exit(&["agent", "--dev", "--http-addr", "nonsense"]);
    assert_eq!(code, 64);
    assert!(err.contains("http-addr"), "{err}");
}

#[test]
fn corrupt_or_unusable_data_dir_is_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("beacon.redb");
    let garbage = b"this is not a database, and it must not be replaced".repeat(100);
    std::fs::write(&db, &garbage).unwrap();
    let (code, err) = run_to_exit(&[
        "agent",
        "--dev",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("beacon.redb"),
        "the error names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the file was not touched"
    );

    // A data dir that is a regular file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (code, err) = run_to_exit(&[
        "agent",
        "--dev",
        "--data-dir",
        file.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("not-a-dir"), "{err}");
}

#[test]
fn a_taken_port_fails_start_up_before_the_data_dir_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, err) = run_to_exit(&[
        "agent",
        "--dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--http-addr",
        &format!("127.0.0.1:{port}"),
        "--dns-addr",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("binding http"), "{err}");
    assert!(
        !data.exists(),
        "nothing was created in the data dir before every socket was bound"
    );
}

#[tokio::test]
async fn a_blocking_query_answers_when_shutdown_starts() {
    let mut s = Server::start(&[]);
    register(&s, json!({"Name": "web", "Port": 80})).await;
    let first = http()
        .get(s.url("/v1/health/service/web"))
        .send()
        .await
        .unwrap();
    let index = first.headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .to_string();
    let url = s.url(&format!("/v1/health/service/web?index={index}&wait=5m"));
    let waiter = tokio::spawn(async move { http().get(url).send().await });
    // Nothing observable says the query is parked; give it a moment on loopback to arrive.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "nothing changed, so the query waits");
    let status = tokio::task::spawn_blocking(move || {
        let status = s.terminate();
        (status, s)
    });
    let answer = waiter
        .await
        .unwrap()
        .expect("the waiter gets an answer, not a dropped connection");
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    let (status, _s) = status.await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Each `: `-separated part of an error line appears once.
fn causes_once(line: &str) {
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} repeated in {line:?}");
    }
}

#[test]
fn a_fatal_error_is_printed_once_with_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let (code, err) = run_to_exit(&[
        "agent",
        "--dev",
        "--data-dir",
        file.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--dns-addr",
        "127.0.0.1:0",
    ]);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("not-a-dir")).collect();
    assert_eq!(lines.len(), 1, "the error is printed once: {err}");
    causes_once(lines[0]);
}

#[test]
fn dev_refuses_bootstrap_expect() {
    let (code, err) = run_to_exit(&["agent", "--dev", "--bootstrap-expect", "3"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("bootstrap_expect"), "{err}");
}

#[tokio::test]
async fn dev_agents_advertise_an_rpc_address_they_listen_on_and_run_side_by_side() {
    let mut first = Server::start(&[]);
    let second = Server::start(&[]);
    for s in [&first, &second] {
        let (_, leader) = get_json(&s.url("/v1/status/leader")).await;
        let leader: std::net::SocketAddr = leader.as_str().unwrap().parse().unwrap();
        assert_ne!(
            leader.port(),
            8300,
            "not Consul's default port, which nobody binds"
        );
        tokio::net::TcpStream::connect(leader)
            .await
            .unwrap_or_else(|e| panic!("the advertised leader {leader} is not listening: {e}"));
        let (_, consul) = get_json(&s.url("/v1/catalog/service/consul")).await;
        assert_eq!(consul[0]["ServicePort"], leader.port(), "{consul}");
    }
    // The operator's log says who leads, in which term, and where, in plain words.
    let log = first.wait_for_line_text("beacon agent ready");
    assert!(!log.contains("Some("), "no Rust debug formatting: {log}");
    first.wait_for_line_text("leadership gained");
    assert!(first.log_text().contains("term=1"), "{}", first.log_text());
}

#[tokio::test]
async fn a_service_name_dns_cannot_serve_is_accepted_with_one_warning() {
    let mut s = Server::start(&[]);
    for _ in 0..2 {
        register(&s, json!({"Name": "my service_v1", "Port": 80})).await;
    }
    let (_, services) = get_json(&s.url("/v1/agent/services")).await;
    assert!(services.get("my service_v1").is_some(), "{services}");
    s.wait_for_line_text("will not be discoverable via DNS");
    let warnings = s
        .log_text()
        .matches("will not be discoverable via DNS")
        .count();
    assert_eq!(warnings, 1, "once per name");
}
