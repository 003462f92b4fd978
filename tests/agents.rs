//! Client agents and the LAN gossip pool: three real `beacon` servers and two client agents on
//! loopback, separate processes killed with SIGKILL. Tests run one at a time.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;
use support::*;

static ONE_POOL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fast gossip (failures detected in about a second), frequent anti-entropy, a short
/// dead-server threshold.
const FAST: &str = r#"
ae_interval = "1s"
[gossip_lan]
probe_interval = "200ms"
probe_timeout = "100ms"
gossip_interval = "100ms"
suspicion_mult = 2
[autopilot]
dead_server_threshold = "2s"
"#;

struct Agent {
    server: Server,
    args: Vec<String>,
    dir: PathBuf,
    name: String,
    serf: String,
    rpc: Option<String>,
}

impl Agent {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Starts the same agent again, same data dir and addresses.
    fn restart(&mut self) {
        self.server.kill();
        self.server = Server::launch(&self.args, &self.dir);
    }
}

struct Pool {
    servers: Vec<Agent>,
    clients: Vec<Agent>,
    root: tempfile::TempDir,
    config: PathBuf,
}

fn agent_args(
    name: &str,
    dir: &Path,
    serf: &str,
    rpc: Option<&str>,
    join: &[String],
    config: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--node".into(),
        name.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--serf-lan-addr".into(),
        serf.into(),
        "--http-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--dns-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--config".into(),
        config.display().to_string(),
    ];
    if let Some(rpc) = rpc {
        args.extend(["--server".into(), "--rpc-addr".into(), rpc.into()]);
        args.extend(["--bootstrap-expect".into(), "3".into()]);
    }
    for j in join {
        args.extend(["--retry-join".into(), j.clone()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

impl Pool {
    /// Three servers and `clients` client agents, all joining through the first server.
    fn start(clients: usize, extra_config: &str, extra_args: &[&str]) -> Pool {
        Pool::start_with(clients, |_| extra_config.to_string(), extra_args)
    }

    /// [`Pool::start`] with each agent's own config (by node name: s0…s2, c0…).
    fn start_with(clients: usize, config_of: impl Fn(&str) -> String, extra_args: &[&str]) -> Pool {
        let root = tempfile::tempdir().unwrap();
        let config = root.path().join("beacon.toml");
        std::fs::write(&config, format!("{}\n{FAST}", config_of("s0"))).unwrap();
        let serfs: Vec<String> = (0..3 + clients)
            .map(|_| format!("127.0.0.1:{}", free_udp_port()))
            .collect();
        let join = vec![serfs[0].clone()];
        let mut spawned = Vec::new();
        for (i, serf) in serfs.iter().enumerate() {
            let server = i < 3;
            let name = if server {
                format!("s{i}")
            } else {
                format!("c{}", i - 3)
            };
            let dir = root.path().join(&name);
            let rpc = server.then(|| format!("127.0.0.1:{}", free_port()));
            let own_config = root.path().join(format!("{name}.toml"));
            std::fs::write(&own_config, format!("{}\n{FAST}", config_of(&name))).unwrap();
            let args = agent_args(
                &name,
                &dir,
                serf,
                rpc.as_deref(),
                &join,
                &own_config,
                extra_args,
            );
            let process = Server::spawn(&args, &dir);
            spawned.push(Agent {
                server: process,
                args,
                dir,
                name,
                serf: serf.clone(),
                rpc,
            });
        }
        for a in &mut spawned {
            a.server.wait_ready();
        }
        let clients = spawned.split_off(3);
        Pool {
            servers: spawned,
            clients,
            root,
            config,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Agent> {
        self.servers.iter().chain(&self.clients)
    }
}

/// Member name → status, as an agent's `/v1/agent/members` lists them.
async fn members(agent: &Agent) -> Vec<(String, u64)> {
    let (_, v) = get_json(&agent.url("/v1/agent/members")).await;
    let mut all: Vec<(String, u64)> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["Name"].as_str().unwrap_or("").to_string(),
                        m["Status"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    all.sort();
    all
}

async fn status_of(agent: &Agent, name: &str) -> Option<u64> {
    members(agent)
        .await
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

/// The SRV targets DNS on `agent` answers for `service`.
async fn srv(agent: &Agent, service: &str) -> Vec<String> {
    srv_records(
        &ask(
            agent.server.dns,
            &format!("{service}.service.consul."),
            RecordType::SRV,
        )
        .await,
    )
    .into_iter()
    .map(|(_, target)| target)
    .collect()
}

/// Waits until DNS on every server answers `service` with exactly `targets`.
async fn resolves_everywhere(pool: &Pool, service: &str, targets: &[&str]) {
    for s in &pool.servers {
        eventually(
            &format!("{service} on {} is {targets:?}", s.name),
            || async { (srv(s, service).await == targets).then_some(()) },
        )
        .await;
    }
}

/// Writes `key` through `via` and waits until `to` has it (a stale read there).
async fn write_reaches(via: &Agent, to: &Agent, key: &str, what: &str) {
    let (st, _) = put(&via.url(&format!("/v1/kv/{key}")), "1").await;
    assert_eq!(st, 200);
    let url = to.url(&format!("/v1/kv/{key}?stale&raw"));
    eventually(what, || async {
        let r = http().get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_services_follow_their_agent_through_failures_restarts_and_leaves() {
    let _one = ONE_POOL_AT_A_TIME.lock().await;
    let mut pool = Pool::start(2, "", &[]);
    // Everyone sees five alive members, with Consul's roles.
    for a in pool.all() {
        eventually("five alive members", || async {
            let m = members(a).await;
            (m.len() == 5 && m.iter().all(|(_, s)| *s == 1)).then_some(())
        })
        .await;
    }
    let (_, list) = get_json(&pool.clients[0].url("/v1/agent/members")).await;
    let roles: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Tags"]["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "consul").count(),
        3,
        "{list}"
    );
    assert_eq!(roles.iter().filter(|r| **r == "node").count(), 2, "{list}");

    // A service registered on a client resolves on every server and on the other client.
    let c0 = &pool.clients[0];
    register(
        &c0.server,
        json!({"Name": "web", "Port": 8080, "Check": {"TTL": "1h", "Status": "passing"}}),
    )
    .await;
    resolves_everywhere(&pool, "web", &["c0.node.dc1.consul."]).await;
    eventually("web on the other client", || async {
        (srv(&pool.clients[1], "web").await == ["c0.node.dc1.consul."]).then_some(())
    })
    .await;
    // The client forwards catalog reads and writes to a server.
    let (st, body) = put(&c0.url("/v1/kv/from-client"), "hello").await;
    assert_eq!((st, body.as_str()), (200, "true"));
    let r = http()
        .get(pool.servers[2].url("/v1/kv/from-client?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = http()
        .get(c0.url("/v1/health/service/web"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("X-Consul-Index"));
    let health: serde_json::Value = r.json().await.unwrap();
    let checks: Vec<&str> = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert!(checks.contains(&"serfHealth"), "{health}");
    // The service reached the servers with its check in one write (as Consul's anti-entropy
    // sends them), so it never showed as healthy before its check arrived.
    let check_index = health[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "service:web")
        .map(|c| c["CreateIndex"].clone());
    assert_eq!(
        check_index,
        Some(health[0]["Service"]["CreateIndex"].clone()),
        "{health}"
    );

    // Its check failing on the client removes it from DNS everywhere; passing brings it back.
    fail(&c0.server, "service:web").await;
    resolves_everywhere(&pool, "web", &[]).await;
    pass(&c0.server, "service:web").await;
    resolves_everywhere(&pool, "web", &["c0.node.dc1.consul."]).await;

    // Deleted through the catalog on a server: anti-entropy registers it again (a new
    // CreateIndex shows it is a new registration, not the old one seen before the delete).
    let create_index = || async {
        let (_, v) = get_json(&pool.servers[0].url("/v1/catalog/service/web")).await;
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|i| i["CreateIndex"].as_u64())
    };
    let before = create_index().await.expect("web is in the catalog");
    let (st, _) = put(
        &pool.servers[1].url("/v1/catalog/deregister"),
        json!({"Node": "c0", "ServiceID": "web"}).to_string(),
    )
    .await;
    assert_eq!(st, 200);
    eventually("anti-entropy registered web again", || async {
        (create_index().await? > before).then_some(())
    })
    .await;
    resolves_everywhere(&pool, "web", &["c0.node.dc1.consul."]).await;

    // A blocking query through the client waits on the server, for about its wait, and
    // carries the server's headers.
    let r = http()
        .get(c0.url("/v1/catalog/services"))
        .send()
        .await
        .unwrap();
    let index = r.headers()["X-Consul-Index"].to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let r = http()
        .get(c0.url(&format!("/v1/catalog/services?index={index}&wait=1s")))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "a 1s blocking query through a client took {waited:?}"
    );
    assert_eq!(r.headers()["X-Consul-KnownLeader"], "true");

    // Another agent claiming the node name c0 is not listed and cannot take c0's node away,
    // even when it leaves.
    let dup_dir = pool.root.path().join("dup");
    let dup_args = agent_args(
        "c0",
        &dup_dir,
        &format!("127.0.0.1:{}", free_udp_port()),
        None,
        &[pool.servers[0].serf.clone()],
        &pool.config,
        &[],
    );
    let mut dup = Server::launch(&dup_args, &dup_dir);
    pool.clients[0]
        .server
        .wait_for_line_text("uses this agent's node name");
    let c0_serf = pool.clients[0].serf.clone();
    let (_, listed) = get_json(&pool.servers[0].url("/v1/agent/members")).await;
    let c0_entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Name"] == "c0")
        .unwrap()
        .clone();
    assert_eq!(
        format!(
            "{}:{}",
            c0_entry["Addr"].as_str().unwrap(),
            c0_entry["Port"]
        ),
        c0_serf,
        "{listed}"
    );
    assert!(dup.terminate().success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_of(&pool.servers[0], "c0").await, Some(1));
    resolves_everywhere(&pool, "web", &["c0.node.dc1.consul."]).await;
    let c0 = &pool.clients[0];

    // A session on the client's node (linked to serfHealth by default).
    let (st, created) = put(&c0.url("/v1/session/create"), "{}").await;
    assert_eq!(st, 200, "{created}");
    let session: serde_json::Value = serde_json::from_str(&created).unwrap();
    let session = session["ID"].as_str().unwrap().to_string();
    let (_, info) = get_json(&pool.servers[0].url(&format!("/v1/session/info/{session}"))).await;
    assert_eq!(info[0]["Node"], "c0", "{info}");

    // SIGKILL the client: failed in the pool, its services gone from DNS, its session gone.
    pool.clients[0].server.kill();
    for s in &pool.servers {
        eventually("c0 failed", || async {
            (status_of(s, "c0").await == Some(4)).then_some(())
        })
        .await;
    }
    resolves_everywhere(&pool, "web", &[]).await;
    eventually("the session on c0 is invalidated", || async {
        let (_, info) =
            get_json(&pool.servers[0].url(&format!("/v1/session/info/{session}"))).await;
        info.as_array().is_some_and(|a| a.is_empty()).then_some(())
    })
    .await;

    // Restarted with its data dir: alive again, its service restored without re-registering.
    pool.clients[0].restart();
    for s in &pool.servers {
        eventually("c0 alive again", || async {
            (status_of(s, "c0").await == Some(1)).then_some(())
        })
        .await;
    }
    resolves_everywhere(&pool, "web", &["c0.node.dc1.consul."]).await;
    let (_, services) = get_json(&pool.clients[0].url("/v1/agent/services")).await;
    assert!(services.get("web").is_some(), "{services}");

    // `leave`: the node and its services are deregistered, the member is listed as left.
    let out = cli(&[
        "leave",
        "--http-addr",
        &pool.clients[0].server.http.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(pool.clients[0].server.wait_exit().success());
    eventually("c0 deregistered", || async {
        let (_, nodes) = get_json(&pool.servers[0].url("/v1/catalog/nodes")).await;
        let names: Vec<&str> = nodes
            .as_array()?
            .iter()
            .filter_map(|n| n["Node"].as_str())
            .collect();
        (!names.contains(&"c0")).then_some(())
    })
    .await;
    assert_eq!(status_of(&pool.servers[0], "c0").await, Some(3));
    resolves_everywhere(&pool, "web", &[]).await;

    // force-leave of a killed client: failed → left everywhere, node deregistered.
    pool.clients[1].server.kill();
    eventually("c1 failed", || async {
        (status_of(&pool.servers[0], "c1").await == Some(4)).then_some(())
    })
    .await;
    let http_addr = pool.servers[0].server.http.to_string();
    let out = cli(&["force-leave", "c1", "--http-addr", &http_addr]);
    assert!(out.status.success(), "{out:?}");
    for s in &pool.servers {
        eventually("c1 left", || async {
            (status_of(s, "c1").await == Some(3)).then_some(())
        })
        .await;
    }
    let out = cli(&["force-leave", "nobody", "--http-addr", &http_addr]);
    assert!(
        !out.status.success(),
        "an unknown node is an error: {out:?}"
    );
    let members = cli(&["members", "--http-addr", &http_addr]);
    let text = String::from_utf8_lossy(&members.stdout);
    assert!(text.starts_with("Node"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("c1") && l.contains("left") && l.contains("client")),
        "{text}"
    );
    let _ = pool.root.path();
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_that_left_or_were_removed_come_back_as_voters() {
    let _one = ONE_POOL_AT_A_TIME.lock().await;
    let mut pool = Pool::start(0, "", &[]);
    let voters = |agent: &Agent| {
        let url = agent.url("/v1/operator/raft/configuration");
        async move {
            let (_, config) = get_json(&url).await;
            let mut v: Vec<String> = config["Servers"]
                .as_array()?
                .iter()
                .filter(|s| s["Voter"] == true)
                .map(|s| s["Node"].as_str().unwrap().to_string())
                .collect();
            v.sort();
            Some(v)
        }
    };
    let all = vec!["s0".to_string(), "s1".into(), "s2".into()];
    eventually("three voters", || async {
        (voters(&pool.servers[0]).await? == all).then_some(())
    })
    .await;

    // s2 leaves gracefully, then restarts with its data dir and its join address.
    let out = cli(&[
        "leave",
        "--http-addr",
        &pool.servers[2].server.http.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(pool.servers[2].server.wait_exit().success());
    eventually("two voters after the leave", || async {
        (voters(&pool.servers[0]).await?.len() == 2).then_some(())
    })
    .await;
    pool.servers[2].restart();
    eventually("s2 is a voter again", || async {
        (voters(&pool.servers[0]).await? == all).then_some(())
    })
    .await;
    write_reaches(
        &pool.servers[0],
        &pool.servers[2],
        "after-rejoin",
        "writes replicate to the rejoined server",
    )
    .await;

    // s1 is killed and stays down past the dead-server threshold: autopilot removes it.
    pool.servers[1].server.kill();
    eventually_within(Duration::from_secs(60), "s1 removed", || async {
        let v = voters(&pool.servers[0]).await?;
        (v == ["s0", "s2"]).then_some(())
    })
    .await;
    // Restarted with its data dir: a voter again, caught up.
    pool.servers[1].restart();
    eventually("s1 is a voter again", || async {
        (voters(&pool.servers[0]).await? == all).then_some(())
    })
    .await;
    write_reaches(
        &pool.servers[0],
        &pool.servers[1],
        "after-return",
        "writes replicate to the returned server",
    )
    .await;
    let _ = (&pool.config, &pool.servers[0].rpc);
}

#[tokio::test(flavor = "multi_thread")]
async fn gossip_is_encrypted_and_keys_rotate_across_the_pool() {
    let _one = ONE_POOL_AT_A_TIME.lock().await;
    let key = String::from_utf8(cli(&["keygen"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(
        base64_len(&key),
        32,
        "keygen prints base64 of 32 bytes: {key}"
    );
    let mut pool = Pool::start(1, &format!("encrypt = \"{key}\""), &[]);
    eventually("four alive members", || async {
        (members(&pool.servers[0]).await.len() == 4).then_some(())
    })
    .await;
    let http_addr = pool.servers[0].server.http.to_string();

    // An agent with a wrong key, and one with none, cannot join; both sides say why. (Their
    // config has no key; the pool's has one.)
    let plain = pool.root.path().join("plain.toml");
    std::fs::write(&plain, FAST).unwrap();
    let (root, first) = (pool.root.path().to_path_buf(), pool.servers[0].serf.clone());
    let stranger = |name: &str, extra: &[&str]| {
        let dir = root.join(name);
        let serf = format!("127.0.0.1:{}", free_udp_port());
        let args = agent_args(
            name,
            &dir,
            &serf,
            None,
            std::slice::from_ref(&first),
            &plain,
            extra,
        );
        (args, dir)
    };
    let other_key = String::from_utf8(cli(&["keygen"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    let (args, dir) = stranger("wrongkey", &["--encrypt", &other_key]);
    let mut wrong = Server::spawn(&args, &dir);
    wrong.wait_for_line_text("could not join the gossip pool");
    let (args, dir) = stranger("nokey", &[]);
    let mut none = Server::spawn(&args, &dir);
    none.wait_for_line_text("could not join the gossip pool");
    assert!(
        !members(&pool.servers[0])
            .await
            .iter()
            .any(|(n, _)| n == "wrongkey" || n == "nokey")
    );
    let mut server_log = String::new();
    for _ in 0..50 {
        server_log = pool.servers[0].server.log_text();
        if server_log.contains("wrong gossip key") && server_log.contains("does not encrypt") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server_log.contains("wrong gossip key"), "{server_log}");
    assert!(server_log.contains("does not encrypt"), "{server_log}");
    drop((wrong, none));

    // Rotation: install a new key, make it primary, remove the old one.
    let new_key = String::from_utf8(cli(&["keygen"]).stdout)
        .unwrap()
        .trim()
        .to_string();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--http-addr", &http_addr]);
        let out = cli(&all);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["keyring", "--install", &new_key]);
    eventually("every member holds the new key", || async {
        let (_, list) = get_json(&pool.servers[1].url("/v1/operator/keyring")).await;
        (list[0]["Keys"][&new_key] == 4).then_some(())
    })
    .await;
    // The agent that made the change restarts (its keyring from the data dir) and makes the
    // next one: it must outrank the change it made before its restart.
    pool.servers[0].restart();
    let http_addr = pool.servers[0].server.http.to_string();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--http-addr", &http_addr]);
        let out = cli(&all);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually("the restarted agent hears every member's keys", || async {
        let (_, list) = get_json(&pool.servers[0].url("/v1/operator/keyring")).await;
        (list[0]["Keys"][&new_key] == 4).then_some(())
    })
    .await;
    run(&["keyring", "--use", &new_key]);
    eventually("every member uses the new key", || async {
        let (_, list) = get_json(&pool.servers[0].url("/v1/operator/keyring")).await;
        (list[0]["PrimaryKeys"][&new_key] == 4).then_some(())
    })
    .await;
    run(&["keyring", "--remove", &key]);
    eventually("the old key is gone everywhere", || async {
        let (_, list) = get_json(&pool.servers[0].url("/v1/operator/keyring")).await;
        (list[0]["Keys"].as_object()?.len() == 1 && list[0]["Keys"][&new_key] == 4).then_some(())
    })
    .await;
    let listed = run(&["keyring", "--list"]);
    assert!(listed.contains(&format!("{new_key} [4/4]")), "{listed}");
    // The pool still works on the new key: a service registered on the client resolves.
    register(&pool.clients[0].server, json!({"Name": "api", "Port": 1})).await;
    resolves_everywhere(&pool, "api", &["c0.node.dc1.consul."]).await;
    // A newcomer with only the new key joins.
    let (args, dir) = stranger("newcomer", &["--encrypt", &new_key]);
    let _newcomer = Server::launch(&args, &dir);
    eventually("the newcomer joined", || async {
        (status_of(&pool.servers[0], "newcomer").await == Some(1)).then_some(())
    })
    .await;
}

fn base64_len(key: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .map(|b| b.len())
        .unwrap_or(0)
}

fn beacon_in(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "beacon {args:?}: {out:?}");
}

/// An RPC client with this CA, certificate and key (verify_outgoing, verify_server_hostname).
fn rpc_client(ca: &Path, cert: &Path, key: &Path) -> beacon::transport::Pool {
    let config = beacon::config::TlsConfig {
        rpc: beacon::config::TlsSide {
            ca_file: Some(ca.to_path_buf()),
            cert_file: Some(cert.to_path_buf()),
            key_file: Some(key.to_path_buf()),
            verify_outgoing: true,
            ..Default::default()
        },
        verify_server_hostname: true,
        ..Default::default()
    };
    let tls = beacon::tls::Tls::load(&config, "dc1", "consul.").unwrap();
    beacon::transport::Pool::new(
        std::sync::Arc::new(String::new),
        beacon::transport::Limits::default(),
        Some(std::sync::Arc::new(tls)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_and_client_agents_speak_only_mutual_tls() {
    use beacon::raft::rpc::{Method, encode};
    let _one = ONE_POOL_AT_A_TIME.lock().await;
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    beacon_in(dir, &["tls", "ca", "create"]);
    beacon_in(dir, &["tls", "cert", "create", "-server"]);
    beacon_in(dir, &["tls", "cert", "create", "-client"]);
    let foreign = dir.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    beacon_in(&foreign, &["tls", "ca", "create"]);
    beacon_in(&foreign, &["tls", "cert", "create", "-client"]);
    let file = |name: &str| dir.join(name);
    let config_of = |name: &str| {
        let cert = if name.starts_with('s') {
            "dc1-server-consul-0"
        } else {
            "dc1-client-consul-0"
        };
        format!(
            r#"
tls.defaults.ca_file = "{ca}"
tls.defaults.cert_file = "{dir}/{cert}.pem"
tls.defaults.key_file = "{dir}/{cert}-key.pem"
tls.defaults.verify_incoming = true
tls.defaults.verify_outgoing = true
tls.internal_rpc.verify_server_hostname = true
"#,
            ca = file("consul-agent-ca.pem").display(),
            dir = dir.display(),
        )
    };
    let pool = Pool::start_with(1, config_of, &[]);

    // Raft among the servers and the client's forwarded writes all run over mutual TLS.
    let c0 = &pool.clients[0];
    register(
        &c0.server,
        json!({"Name": "web", "Port": 8080, "Check": {"TTL": "1h", "Status": "passing"}}),
    )
    .await;
    resolves_everywhere(&pool, "web", &["c0.node.dc1.consul."]).await;
    let (st, body) = put(&c0.url("/v1/kv/over-mtls"), "v").await;
    assert_eq!((st, body.as_str()), (200, "true"));

    let target = pool.servers[0].rpc.clone().unwrap();
    let call = |pool: beacon::transport::Pool, method: Method| {
        let target = target.clone();
        async move {
            pool.call(
                &target,
                method as u16,
                encode(&()).unwrap(),
                Duration::from_secs(3),
            )
            .await
        }
    };
    // A plaintext peer is refused at the handshake, with the reason.
    let plain = beacon::transport::Pool::new(
        std::sync::Arc::new(String::new),
        beacon::transport::Limits::default(),
        None,
    );
    let refused = call(plain, Method::Info).await.unwrap_err();
    assert!(refused.to_string().contains("requires TLS"), "{refused}");
    // A certificate from another CA fails the TLS handshake.
    let stranger = rpc_client(
        &file("consul-agent-ca.pem"),
        &foreign.join("dc1-client-consul-0.pem"),
        &foreign.join("dc1-client-consul-0-key.pem"),
    );
    let refused = call(stranger, Method::Info).await.unwrap_err();
    assert!(refused.is_unreachable(), "{refused}");
    // A client certificate is an agent, not a server: it may ask, but not take part in Raft.
    let agent = rpc_client(
        &file("consul-agent-ca.pem"),
        &file("dc1-client-consul-0.pem"),
        &file("dc1-client-consul-0-key.pem"),
    );
    assert!(call(agent.clone(), Method::Info).await.is_ok());
    for method in [Method::Vote, Method::Append, Method::Membership] {
        let refused = call(agent.clone(), method).await.unwrap_err();
        assert!(
            refused.to_string().contains("only servers"),
            "{method:?}: {refused}"
        );
    }
    let log = pool.servers[0].server.log_text();
    assert!(log.contains("RPC TLS handshake failed"), "{log}");
    assert!(log.contains("refusing a plaintext RPC connection"), "{log}");
    assert!(
        log.contains("refusing server-to-server calls from a certificate"),
        "{log}"
    );
}

/// `PUT /v1/catalog/register` of `body` on `agent`, which must accept it.
async fn catalog_register(agent: &Agent, body: serde_json::Value) {
    let (status, reply) = put(&agent.url("/v1/catalog/register"), body.to_string()).await;
    assert_eq!(status, 200, "{reply}");
}

/// The value of a metric on an agent, from its Prometheus page.
async fn metric_on(agent: &Agent, name: &str) -> Option<f64> {
    let page = http()
        .get(agent.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// DNS for service names and `?stale`/`?cached` health queries on a client agent come from its
/// materialized views: the same answers, JSON and index as a server's, DNS through the
/// pre-encoded answers and following health changes, blocking queries waking when a view
/// changes, and still answered once every server is gone (when a forwarded query can only fail).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_answers_dns_and_stale_health_queries_from_its_views() {
    let _one = ONE_POOL_AT_A_TIME.lock().await;
    let client_config = |name: &str| match name {
        // One receive loop, so one answer cache: a stale pre-encoded answer cannot hide behind
        // a loop that has none.
        "c0" => r#"dns_config = { view_idle = "3s", udp_workers = 1 }"#.to_string(),
        _ => String::new(),
    };
    let mut pool = Pool::start_with(1, client_config, &[]);
    let instance = |node: &str, port: u16| {
        json!({"Node": node, "Address": "10.9.0.1",
               "Service": {"ID": format!("api-{port}"), "Service": "api", "Port": port},
               "Check": {"CheckID": format!("api-{port}"), "Name": "c", "Status": "passing",
                         "ServiceID": format!("api-{port}")}})
    };
    catalog_register(&pool.servers[0], instance("ext1", 7001)).await;

    let client = &pool.clients[0];
    // DNS on the client: the name's view starts on the first question.
    eventually("api resolves on the client", || async {
        (srv(client, "api").await == ["ext1.node.dc1.consul."]).then_some(())
    })
    .await;
    let http = http();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let header = |h: &str| {
                r.headers()
                    .get(h)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            };
            let (index, consistency, cache) = (
                header("x-consul-index"),
                header("x-consul-effective-consistency"),
                header("x-cache"),
            );
            let text = r.text().await.unwrap_or_default();
            let body: serde_json::Value =
                serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (status, index, consistency, cache, body)
        }
    };
    let server_view = get(pool.servers[1].url("/v1/health/service/api")).await;
    // Once the client has found a server in the pool and its view has a snapshot: X-Cache
    // says the view answered (a server's answer has none).
    eventually("an answer from the client's view", || async {
        let (status, _, _, cache, _) = get(client.url("/v1/health/service/api?stale&cached")).await;
        (status == 200 && !cache.is_empty()).then_some(())
    })
    .await;
    let (status, index, consistency, cache, body) =
        get(client.url("/v1/health/service/api?stale&cached")).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(consistency, "stale");
    let (status, .., refused) = get(client.url("/v1/health/service/api?cached&consistent")).await;
    assert_eq!(status, 400, "conflicting modes, as Consul: {refused}");
    assert_eq!(
        (index.clone(), body),
        (server_view.1, server_view.4),
        "the view answers as a server does"
    );

    let metrics = http
        .get(client.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l == "beacon_client_views 1"),
        "{metrics}"
    );

    // A blocking query on the view wakes when the view changes.
    let blocked = tokio::spawn(get(client.url(&format!(
        "/v1/health/service/api?cached&index={index}&wait=60s"
    ))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "nothing changed yet");
    catalog_register(&pool.servers[2], instance("ext2", 7002)).await;
    let (status, woke_index, _, cache, body) = blocked.await.unwrap();
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert!(woke_index.parse::<u64>().unwrap() > index.parse::<u64>().unwrap());
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");

    // DNS on the client follows the view through its pre-encoded answers: a new instance, then
    // its check failing and passing again.
    let both = ["ext1.node.dc1.consul.", "ext2.node.dc1.consul."];
    let hits_before = metric_on(client, "beacon_dns_udp_cache_hits_total")
        .await
        .unwrap();
    eventually("both instances in the client's DNS", || async {
        (srv(client, "api").await == both).then_some(())
    })
    .await;
    for (status, targets) in [("critical", &both[..1]), ("passing", &both[..])] {
        let mut flipped = instance("ext2", 7002);
        flipped["Check"]["Status"] = json!(status);
        catalog_register(&pool.servers[1], flipped).await;
        eventually(&format!("ext2 {status} in the client's DNS"), || async {
            (srv(client, "api").await == targets).then_some(())
        })
        .await;
        for _ in 0..5 {
            assert_eq!(srv(client, "api").await, targets, "and it stays so");
        }
    }
    let hits = metric_on(client, "beacon_dns_udp_cache_hits_total")
        .await
        .unwrap();
    assert!(
        hits > hits_before,
        "answered through the pre-encoded answers"
    );

    // No server left: the view still answers, a forwarded read cannot.
    for s in &mut pool.servers {
        s.server.kill();
    }
    let client = &pool.clients[0];
    // DNS keeps answering from the view while it is asked, past view_idle (3 s): pre-encoded
    // answers count as use. A name with no view cannot be answered: SERVFAIL, not "no such name".
    let asked_until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < asked_until {
        assert_eq!(srv(client, "api").await, both, "answered from the view");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let unknown = ask(client.server.dns, "nope.service.consul.", RecordType::SRV).await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    let (status, _, _, cache, body) = get(client.url("/v1/health/service/api?cached")).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
    let (status, ..) = get(client.url("/v1/health/service/api")).await;
    assert_eq!(
        status, 500,
        "a default read is forwarded, and no server answers"
    );
    // A view older than ?max_stale allows is not used.
    let (status, ..) = get(client.url("/v1/health/service/api?stale&max_stale=1h")).await;
    assert_eq!(status, 200);
    let (status, ..) = get(client.url("/v1/health/service/api?stale&max_stale=1ms")).await;
    assert_eq!(status, 500, "too stale: forwarded, and no server answers");
    // Unused for view_idle, the view goes even with no server to follow.
    eventually("the idle view dropped", || async {
        let metrics = http
            .get(client.url("/v1/agent/metrics?format=prometheus"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        metrics
            .lines()
            .any(|l| l == "beacon_client_views 0")
            .then_some(())
    })
    .await;

    // Every server back at once: the client, alone in its pool, finds them again (foca stops
    // announcing to failed members while no member is alive), and a new view catches up.
    for s in &mut pool.servers {
        s.server = Server::spawn(&s.args, &s.dir);
    }
    for s in &mut pool.servers {
        s.server.wait_ready();
    }
    let client = &pool.clients[0];
    eventually("the client sees every server alive again", || async {
        let m = members(client).await;
        (m.iter()
            .filter(|(name, s)| name.starts_with('s') && *s == 1)
            .count()
            == 3)
            .then_some(())
    })
    .await;
    eventually("a view from the restarted servers", || async {
        let (status, _, _, _, body) = get(client.url("/v1/health/service/api?stale")).await;
        (status == 200 && body.as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    eventually("api in the client's DNS again", || async {
        (srv(client, "api").await == both).then_some(())
    })
    .await;

    // Forty more changes to `api` (its answer unchanged), so its index is well above anything
    // a new cluster reaches on its own in this test.
    for i in 0..40 {
        let mut again = instance("ext1", 7001);
        again["Service"]["Meta"] = json!({"round": i.to_string()});
        catalog_register(&pool.servers[0], again).await;
    }
    // A second name, so a restart of the views meets more than one follower.
    let mut db = instance("ext4", 7004);
    db["Service"]["Service"] = json!("db");
    catalog_register(&pool.servers[0], db).await;
    eventually("db on the client", || async {
        (srv(client, "db").await == ["ext4.node.dc1.consul."]).then_some(())
    })
    .await;
    // The servers lose their data: a new cluster, whose indexes start below the client's.
    // The client, asked about `api` and `db` all along (so their views are never idle), drops
    // what it had from the old cluster instead of waiting for the new one to pass its index.
    let dns = client.server.dns;
    let asking = tokio::spawn(async move {
        loop {
            for name in ["api.service.consul.", "db.service.consul."] {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), ask(dns, name, RecordType::SRV))
                        .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    for s in &mut pool.servers {
        s.server.kill();
        std::fs::remove_dir_all(&s.dir).unwrap();
    }
    for s in &mut pool.servers {
        s.server = Server::spawn(&s.args, &s.dir);
    }
    for s in &mut pool.servers {
        s.server.wait_ready();
    }
    eventually("a leader in the new cluster", || async {
        let (_, v) = get_json(&pool.servers[0].url("/v1/status/leader")).await;
        (v.as_str().is_some_and(|l| !l.is_empty())).then_some(())
    })
    .await;
    catalog_register(&pool.servers[0], instance("ext3", 7003)).await;
    let mut db = instance("ext5", 7005);
    db["Service"]["Service"] = json!("db");
    catalog_register(&pool.servers[1], db).await;
    let client = &pool.clients[0];
    eventually("the client's DNS follows the new cluster", || async {
        (srv(client, "api").await == ["ext3.node.dc1.consul."]
            && srv(client, "db").await == ["ext5.node.dc1.consul."])
        .then_some(())
    })
    .await;
    asking.abort();
    eventually("the client's node names follow it too", || async {
        let reply = ask(client.server.dns, "ext3.node.consul.", RecordType::A).await;
        (!reply.answers.is_empty()).then_some(())
    })
    .await;
}
