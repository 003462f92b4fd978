//! Config files as Consul reads them (JSON, HCL, TOML; `-config-file`, `-config-dir`), the
//! services and checks they define, the UI switch and the log file, on the real binary.

mod support;

use std::path::Path;

use hickory_proto::rr::RecordType;
use support::{Server, ask, eventually, free_port, get_json, http, put, run_to_exit};

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn ids(server: &Server, what: &str) -> Vec<String> {
    let (status, body) = get_json(&server.url(&format!("/v1/agent/{what}"))).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    ids.sort();
    ids
}

const BASE_HCL: &str = r#"
datacenter = "east"
telemetry {
  prometheus_retention_time = "60s"
}
service {
  name = "web"
  id   = "web-1"
  port = 8080
  tags = ["v1"]
  check {
    id     = "web-ttl"
    name   = "web ttl"
    ttl    = "10m"
    status = "passing"
  }
}
"#;

#[tokio::test]
async fn a_config_dir_of_json_hcl_and_toml_merges_and_its_services_follow_the_files() {
    let temp = tempfile::tempdir().unwrap();
    let conf = temp.path().join("conf.d");
    std::fs::create_dir(&conf).unwrap();
    write(&conf, "10-base.hcl", BASE_HCL);
    write(
        &conf,
        "20-api.json",
        r#"{"services": [{"name": "api", "port": 9090}],
            "check": {"id": "disk", "name": "disk", "ttl": "10m", "status": "passing"}}"#,
    );
    write(&conf, "30-dc.toml", "datacenter = \"west\"\n");
    write(&conf, "README.md", "not a config file: skipped\n");
    let data = temp.path().join("data");
    let dir_arg = conf.to_str().unwrap().to_string();
    let mut s = Server::start_in(&data, &["--config-dir", &dir_arg]);

    let log = s.log_text();
    assert!(
        log.contains("10-base.hcl: telemetry is a Consul setting Beacon does not use"),
        "{log}"
    );
    assert!(log.contains("README.md: skipped"), "{log}");
    let (_, me) = get_json(&s.url("/v1/agent/self")).await;
    assert_eq!(
        me["Config"]["Datacenter"], "west",
        "a later file's scalar wins"
    );
    let services = eventually("the files' services", || {
        let s = &s;
        async move {
            let ids = ids(s, "services").await;
            (ids.len() == 2).then_some(ids)
        }
    })
    .await;
    assert_eq!(services, ["api", "web-1"]);
    assert_eq!(ids(&s, "checks").await, ["disk", "web-ttl"]);
    let answer = ask(s.dns, "web.service.consul", RecordType::A).await;
    assert_eq!(support::a_records(&answer), ["127.0.0.1"], "{answer:?}");

    // Registered through the API: no reload or restart touches it.
    let (status, body) = put(
        &s.url("/v1/agent/service/register"),
        r#"{"Name": "manual", "Port": 1}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // A reload that fails changes nothing: no service of the bad file is registered.
    write(
        &conf,
        "40-bad.json",
        r#"{"services": [{"name": "newsvc", "port": 1}],
            "check": {"name": "orphan", "ttl": "1m", "service_id": "nope"}}"#,
    );
    let (status, body) = put(&s.url("/v1/agent/reload"), "").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("40-bad.json") && body.contains("\"nope\""),
        "{body}"
    );
    assert_eq!(ids(&s, "services").await, ["api", "manual", "web-1"]);
    std::fs::remove_file(conf.join("40-bad.json")).unwrap();

    // The JSON file loses its service: a reload deregisters it and keeps the rest.
    write(
        &conf,
        "20-api.json",
        r#"{"check": {"id": "disk", "name": "disk", "ttl": "10m", "status": "passing"}}"#,
    );
    let (status, body) = put(&s.url("/v1/agent/reload"), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&s, "services").await, ["manual", "web-1"]);

    // The HCL file loses its service while the agent is down: gone after the restart.
    assert!(s.terminate().success());
    write(&conf, "10-base.hcl", "datacenter = \"east\"\n");
    let s = Server::start_in(&data, &["--config-dir", &dir_arg]);
    let services = eventually("the old config's service deregistered", || {
        let s = &s;
        async move {
            let ids = ids(s, "services").await;
            (ids == ["manual"]).then_some(ids)
        }
    })
    .await;
    assert_eq!(services, ["manual"]);
    assert_eq!(ids(&s, "checks").await, ["disk"]);
}

#[test]
fn bad_files_name_the_file_and_the_key_and_start_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let cases = [
        ("bad.json", r#"{"ports": {"htp": 1}}"#, "ports.htp"),
        ("bad.hcl", "ports {\n  http = \n}\n", "bad.hcl"),
        (
            "svc.json",
            r#"{"service": {"name": "x", "port": "eighty"}}"#,
            "service #1 (x)",
        ),
        ("dur.toml", "ae_interval = \"soon\"\n", "ae_interval"),
        (
            "orphan.json",
            r#"{"check": {"name": "c", "ttl": "1m", "service_id": "nope"}}"#,
            "ServiceID \"nope\"",
        ),
        // A dev agent does not gossip without --serf-lan-addr, but its settings are checked.
        (
            "gossip.toml",
            "[gossip_lan]\nprobe_interval = \"bogus\"\n",
            "gossip_lan.probe_interval",
        ),
    ];
    for (name, text, needle) in cases {
        let dir = temp.path().join(name.replace('.', "-"));
        std::fs::create_dir(&dir).unwrap();
        write(&dir, name, text);
        let (code, err) = run_to_exit(&[
            "agent",
            "--dev",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
            "--config-dir",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(code, 64, "{name}: {err}");
        assert!(err.contains(needle), "{name}: {needle:?} not in {err}");
        if needle != name {
            assert!(err.contains(name), "{name} not named in {err}");
        }
    }
}

#[tokio::test]
async fn the_ui_is_on_in_dev_and_off_on_a_server_unless_asked_for() {
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let dev = Server::start(&[]);
    let root = no_redirects.get(dev.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 301);
    assert_eq!(root.headers()["location"], "/ui/");
    let page = http()
        .get(dev.url("/ui/dc1/kv/a/b/edit"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("/ui/assets/app.js"));
    let script = http()
        .get(dev.url("/ui/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    drop(dev);

    for (extra, on) in [(None, false), (Some("--ui"), true)] {
        let temp = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = [
            "agent",
            "--server",
            "--bootstrap-expect",
            "1",
            "--node",
            "ui-server",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--rpc-addr".into());
        args.push(format!("127.0.0.1:{}", free_port()));
        args.push("--serf-lan-addr".into());
        args.push(format!("127.0.0.1:{}", free_port()));
        args.push("--data-dir".into());
        args.push(temp.path().display().to_string());
        args.extend(extra.map(String::from));
        let server = Server::launch(&args, temp.path());
        let root = no_redirects.get(server.url("/")).send().await.unwrap();
        if on {
            assert_eq!(root.status(), 301);
        } else {
            assert_eq!(root.status(), 200);
            let text = root.text().await.unwrap();
            assert!(text.contains("UI disabled"), "{text}");
            assert!(text.contains("ui_config.enabled=true"), "{text}");
            let page = http().get(server.url("/ui/")).send().await.unwrap();
            assert_eq!(page.status(), 404);
        }
    }
}

#[tokio::test]
async fn the_log_goes_to_a_rotated_file_as_json_lines() {
    let temp = tempfile::tempdir().unwrap();
    let logs = temp.path().join("logs");
    let config = temp.path().join("log.json");
    std::fs::write(
        &config,
        r#"{"log_rotate_bytes": 400, "log_rotate_max_files": 0}"#,
    )
    .unwrap();
    let logs_arg = format!("{}/", logs.display());
    let s = Server::start(&[
        "--log-json",
        "--log-file",
        &logs_arg,
        "--config-file",
        config.to_str().unwrap(),
    ]);
    for line in s.log_text().lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "stderr line is not JSON: {line}");
    }
    let active = logs.join("beacon.log");
    let files = eventually("the log rotated", || {
        let logs = logs.clone();
        async move {
            let names: Vec<String> = std::fs::read_dir(&logs)
                .ok()?
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            (names.len() >= 3).then_some(names)
        }
    })
    .await;
    assert!(active.exists(), "{files:?}");
    assert!(
        files
            .iter()
            .all(|n| n == "beacon.log" || n.starts_with("beacon-")),
        "{files:?}"
    );
    let mut all = String::new();
    for name in &files {
        let text = std::fs::read_to_string(logs.join(name)).unwrap();
        // A file passes the limit only by holding one line longer than it.
        assert!(
            text.len() <= 400 || text.lines().count() == 1,
            "{name} passed the limit: {} bytes",
            text.len()
        );
        for line in text.lines() {
            let parsed: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            // hclog's field names, as Consul writes them.
            assert!(parsed["@level"].is_string(), "{line}");
            assert!(parsed["@message"].is_string(), "{line}");
            assert!(parsed["@module"].is_string(), "{line}");
            assert!(parsed["@timestamp"].is_string(), "{line}");
        }
        all.push_str(&text);
    }
    assert!(all.contains("beacon agent ready"), "{all}");
}
