//! Three (and four) real `beacon` server processes on loopback, killed with SIGKILL.
//! Cluster tests run one at a time: each takes `ONE_CLUSTER_AT_A_TIME`.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use serde_json::json;
use support::*;

static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME.lock().await
}

struct Node {
    server: Server,
    args: Vec<String>,
    rpc: String,
    /// Its LAN gossip address.
    serf: String,
    dir: std::path::PathBuf,
}

impl Node {
    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    fn restart(&mut self) {
        self.server.kill();
        self.server = Server::launch(&self.args, &self.dir);
    }
}

struct Cluster {
    nodes: Vec<Node>,
    _dirs: tempfile::TempDir,
    config: Option<std::path::PathBuf>,
}

#[allow(clippy::too_many_arguments)]
fn node_args(
    name: &str,
    dir: &std::path::Path,
    rpc: &str,
    serf: &str,
    http: u16,
    join: &[String],
    expect: Option<usize>,
    config: Option<&std::path::Path>,
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--server".into(),
        "--node".into(),
        name.into(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--rpc-addr".into(),
        rpc.into(),
        "--serf-lan-addr".into(),
        serf.into(),
        "--http-addr".into(),
        format!("127.0.0.1:{http}"),
        "--dns-addr".into(),
        "127.0.0.1:0".into(),
    ];
    if let Some(n) = expect {
        args.extend(["--bootstrap-expect".into(), n.to_string()]);
    }
    for j in join {
        args.extend(["--retry-join".into(), j.clone()]);
    }
    if let Some(c) = config {
        args.extend(["--config".into(), c.display().to_string()]);
    }
    args
}

impl Cluster {
    /// Three servers forming a cluster with --bootstrap-expect 3; `config` is TOML for all.
    fn start(config: &str) -> Cluster {
        let dirs = tempfile::tempdir().unwrap();
        let config_path = (!config.is_empty()).then(|| {
            let p = dirs.path().join("beacon.toml");
            std::fs::write(&p, config).unwrap();
            p
        });
        let rpcs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let serfs: Vec<String> = (0..3)
            .map(|_| format!("127.0.0.1:{}", free_udp_port()))
            .collect();
        let mut spawned = Vec::new();
        for (i, (rpc, serf)) in rpcs.iter().zip(&serfs).enumerate() {
            let dir = dirs.path().join(format!("n{i}"));
            let args = node_args(
                &format!("n{i}"),
                &dir,
                rpc,
                serf,
                free_port(),
                &serfs,
                Some(3),
                config_path.as_deref(),
            );
            spawned.push((
                Server::spawn(&args, &dir),
                args,
                rpc.clone(),
                serf.clone(),
                dir,
            ));
        }
        let nodes = spawned
            .into_iter()
            .map(|(mut server, args, rpc, serf, dir)| {
                server.wait_ready();
                Node {
                    server,
                    args,
                    rpc,
                    serf,
                    dir,
                }
            })
            .collect();
        Cluster {
            nodes,
            _dirs: dirs,
            config: config_path,
        }
    }

    /// The servers' RPC addresses.
    fn join_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.rpc.clone()).collect()
    }

    /// The servers' gossip addresses.
    fn serf_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.serf.clone()).collect()
    }

    /// Adds a server that knows no cluster member (its `--retry-join` points nowhere) and is
    /// brought in with `beacon join` (the gossip address of server `via`) run against it, as an
    /// operator would.
    fn add_node_with_cli_join(&mut self, via: usize) -> usize {
        let i = self.nodes.len();
        let dir = self._dirs.path().join(format!("n{i}"));
        let rpc = format!("127.0.0.1:{}", free_port());
        let serf = format!("127.0.0.1:{}", free_udp_port());
        let nowhere = vec![format!("127.0.0.1:{}", free_udp_port())];
        let args = node_args(
            &format!("n{i}"),
            &dir,
            &rpc,
            &serf,
            free_port(),
            &nowhere,
            None,
            self.config.as_deref(),
        );
        let mut server = Server::spawn(&args, &dir);
        // The new server's API may not be up yet: try until it answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
                .args([
                    "join",
                    &self.nodes[via].serf,
                    "--http-addr",
                    &server.http.to_string(),
                ])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "beacon join: {out:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
        server.wait_ready();
        self.nodes.push(Node {
            server,
            args,
            rpc,
            serf,
            dir,
        });
        i
    }
}

async fn leader_of(node: &Node) -> String {
    let (_, v) = get_json(&node.url("/v1/status/leader")).await;
    v.as_str().unwrap_or("").to_string()
}

/// Index of a server that is not the leader.
async fn follower(c: &Cluster) -> usize {
    let leader = leader_of(&c.nodes[0]).await;
    c.nodes.iter().position(|n| n.rpc != leader).unwrap()
}

async fn leader_index(c: &Cluster, alive: &[usize]) -> usize {
    eventually("a leader among the live servers", || async {
        let leader = leader_of(&c.nodes[alive[0]]).await;
        alive.iter().copied().find(|i| c.nodes[*i].rpc == leader)
    })
    .await
}

async fn kv(node: &Node, key: &str, value: &str) -> (u16, String) {
    put(&node.url(&format!("/v1/kv/{key}")), value.to_string()).await
}

async fn raw(node: &Node, key: &str) -> Option<String> {
    let r = http()
        .get(node.url(&format!("/v1/kv/{key}?raw")))
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 200 {
        return None;
    }
    r.text().await.ok()
}

async fn keys(node: &Node) -> BTreeSet<String> {
    let (st, v) = get_json(&node.url("/v1/kv/?keys")).await;
    if st != 200 {
        return BTreeSet::new();
    }
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_through_a_follower_reach_every_server() {
    let _one = serial().await;
    let c = Cluster::start("");
    let f = follower(&c).await;
    let leader = leader_of(&c.nodes[f]).await;
    for n in &c.nodes {
        assert_eq!(
            leader_of(n).await,
            leader,
            "every server reports the same leader"
        );
    }
    let (_, peers) = get_json(&c.nodes[0].url("/v1/status/peers")).await;
    let mut peers: Vec<String> = peers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    peers.sort();
    let mut expected = c.join_addrs();
    expected.sort();
    assert_eq!(peers, expected);

    let (st, text) = put(&c.nodes[f].url("/v1/agent/service/register"), json!({"Name": "web", "ID": "web1", "Address": "10.0.0.1", "Port": 80, "Check": {"TTL": "1h"}}).to_string()).await;
    assert_eq!(st, 200, "{text}");
    let (st, _) = put(&c.nodes[f].url("/v1/agent/check/pass/service:web1"), "").await;
    assert_eq!(st, 200);
    // Read-your-writes on the server that acknowledged.
    let (_, entries) = get_json(&c.nodes[f].url("/v1/health/service/web?passing")).await;
    assert_eq!(entries.as_array().unwrap().len(), 1);
    for n in &c.nodes {
        eventually("DNS on every server serves the instance", || async {
            (a_records(&ask(n.server.dns, "web.service.consul.", RecordType::A).await)
                == ["10.0.0.1"])
            .then_some(())
        })
        .await;
    }
    let (st, _) = put(&c.nodes[f].url("/v1/agent/check/fail/service:web1"), "").await;
    assert_eq!(st, 200);
    for n in &c.nodes {
        eventually("the failed instance leaves DNS everywhere", || async {
            ask(n.server.dns, "web.service.consul.", RecordType::A)
                .await
                .answers
                .is_empty()
                .then_some(())
        })
        .await;
        let (_, checks) = get_json(&n.url("/v1/health/checks/web")).await;
        let _ = checks;
    }
    // Every server registered itself as service `consul`.
    let (_, consul) = get_json(&c.nodes[0].url("/v1/catalog/service/consul")).await;
    assert_eq!(consul.as_array().unwrap().len(), 3);

    // Autopilot's view, asked of a follower (which asks the leader): three healthy voters.
    let health = eventually("autopilot sees three healthy servers", || async {
        let (status, body) = get_json(&c.nodes[f].url("/v1/operator/autopilot/health")).await;
        (status == 200 && body["Healthy"] == true).then_some(body)
    })
    .await;
    let servers = health["Servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3, "{health}");
    assert_eq!(health["FailureTolerance"], 1, "{health}");
    assert_eq!(
        servers.iter().filter(|s| s["Leader"] == true).count(),
        1,
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_keeps_acknowledged_writes_and_the_killed_server_catches_up() {
    let _one = serial().await;
    let mut c = Cluster::start("");
    let f = follower(&c).await;
    for i in 0..20 {
        assert_eq!(
            kv(&c.nodes[f], &format!("before/{i}"), "v").await,
            (200, "true".into())
        );
    }
    let old_leader = leader_index(&c, &[0, 1, 2]).await;
    c.nodes[old_leader].server.kill();
    let alive: Vec<usize> = (0..3).filter(|i| *i != old_leader).collect();
    let new_leader = leader_index(&c, &alive).await;
    assert_ne!(c.nodes[new_leader].rpc, c.nodes[old_leader].rpc);
    for i in 0..10 {
        let target = &c.nodes[alive[i % 2]];
        assert_eq!(
            kv(target, &format!("after/{i}"), "v").await,
            (200, "true".into())
        );
    }
    for i in &alive {
        let got = eventually("survivors have every acknowledged write", || async {
            let k = keys(&c.nodes[*i]).await;
            (k.len() == 30).then_some(k)
        })
        .await;
        assert!(got.contains("before/0") && got.contains("after/9"));
    }
    // The new leader's log names the dead server by its address, once (openraft alone would
    // have warned several times a second, by numeric id).
    let dead = c.nodes[old_leader].rpc.clone();
    let unreachable = |log: &str| {
        log.lines()
            .filter(|l| l.contains("server unreachable") && l.contains(&dead))
            .count()
    };
    eventually("the leader reports the dead server", || async {
        (unreachable(&c.nodes[new_leader].server.log_text()) > 0).then_some(())
    })
    .await;
    let reports = unreachable(&c.nodes[new_leader].server.log_text());
    assert!(
        reports <= 2,
        "{reports} reports of one outage within seconds"
    );
    c.nodes[old_leader].restart();
    eventually("the restarted server catches up", || async {
        (keys(&c.nodes[old_leader]).await.len() == 30).then_some(())
    })
    .await;
    eventually("the leader reports it back", || async {
        let log = c.nodes[new_leader].server.log_text();
        log.lines()
            .any(|l| l.contains("server reachable again") && l.contains(&dead))
            .then_some(())
    })
    .await;
    assert_eq!(
        raw(&c.nodes[old_leader], "after/9").await.as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn continuous_writes_through_a_leader_kill_lose_nothing_acknowledged() {
    let _one = serial().await;
    let mut c = Cluster::start("");
    let leader = leader_index(&c, &[0, 1, 2]).await;
    let writer_node = (0..3).find(|i| *i != leader).unwrap();
    let url = c.nodes[writer_node].url("/v1/kv/");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let client = http();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("stream/{i:05}");
                if let Ok(r) = client.put(format!("{url}{key}")).body("x").send().await
                    && r.status().as_u16() == 200
                    && r.text().await.unwrap_or_default() == "true"
                {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        })
    };
    eventually("some writes acknowledged before the kill", || async {
        (acked.lock().unwrap().len() >= 20).then_some(())
    })
    .await;
    c.nodes[leader].server.kill();
    let before_kill = acked.lock().unwrap().len();
    eventually("writes acknowledged after the failover", || async {
        (acked.lock().unwrap().len() >= before_kill + 20).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    for i in (0..3).filter(|i| *i != leader) {
        let present = eventually("survivor applied everything acknowledged", || async {
            let k = keys(&c.nodes[i]).await;
            acked.is_subset(&k).then_some(k)
        })
        .await;
        assert!(
            acked.is_subset(&present),
            "server {i} lost acknowledged writes"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_leader_writes_fail_after_the_hold_and_dns_keeps_answering() {
    let _one = serial().await;
    let mut c = Cluster::start("");
    let f = follower(&c).await;
    let (st, _) = put(
        &c.nodes[f].url("/v1/agent/service/register"),
        json!({"Name": "api", "Address": "10.5.0.1", "Port": 1}).to_string(),
    )
    .await;
    assert_eq!(st, 200);
    for i in (0..3).filter(|i| *i != f) {
        c.nodes[i].server.kill();
    }
    let started = std::time::Instant::now();
    let (st, text) = kv(&c.nodes[f], "nope", "x").await;
    assert_eq!(st, 500, "{text}");
    assert!(text.contains("No cluster leader"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "the write was held for a leader first"
    );
    let r = ask(c.nodes[f].server.dns, "api.service.consul.", RecordType::A).await;
    assert_eq!(
        a_records(&r),
        ["10.5.0.1"],
        "DNS answers from the local index without a leader"
    );
    // ?stale answers from the follower's own state; the default (leader) read cannot.
    let stale = http()
        .get(c.nodes[f].url("/v1/catalog/service/api?stale"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 200);
    assert_eq!(stale.headers()["X-Consul-Effective-Consistency"], "stale");
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body[0]["ServiceAddress"], "10.5.0.1");
    let default = http()
        .get(c.nodes[f].url("/v1/catalog/service/api"))
        .send()
        .await
        .unwrap();
    assert_eq!(default.status().as_u16(), 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_reads_on_a_deposed_leader_fail_instead_of_returning_stale_data() {
    let _one = serial().await;
    let mut c = Cluster::start("");
    let leader = leader_index(&c, &[0, 1, 2]).await;
    assert_eq!(kv(&c.nodes[leader], "k", "v1").await.0, 200);
    let r = http()
        .get(c.nodes[leader].url("/v1/kv/k?consistent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["X-Consul-Effective-Consistency"], "consistent");
    // Kill both followers: the old leader can no longer confirm it leads.
    for i in (0..3).filter(|i| *i != leader) {
        c.nodes[i].server.kill();
    }
    let r = http()
        .get(c.nodes[leader].url("/v1/kv/k?consistent"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        500,
        "a leader without a quorum must not serve ?consistent"
    );
    let stale = http()
        .get(c.nodes[leader].url("/v1/kv/k?stale&raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 200);
    assert_eq!(stale.text().await.unwrap(), "v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn join_via_snapshot_leave_and_dead_server_cleanup() {
    let _one = serial().await;
    let config = "raft_snapshot_threshold = 20\nraft_trailing_logs = 5\n[autopilot]\ndead_server_threshold = \"2s\"\n";
    let mut c = Cluster::start(config);
    let f = follower(&c).await;
    // A deleted key's tombstone, compacted into the snapshot the new server is installed from.
    assert_eq!(kv(&c.nodes[f], "gone/x", "v").await.0, 200);
    let r = http()
        .delete(c.nodes[f].url("/v1/kv/gone/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let gone_index = |node: &Node| {
        let url = node.url("/v1/kv/gone/?recurse&stale");
        async move {
            let r = http().get(url).send().await.unwrap();
            r.headers()["X-Consul-Index"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let deleted = gone_index(&c.nodes[f]).await;
    for i in 0..60 {
        assert_eq!(kv(&c.nodes[f], &format!("data/{i}"), "v").await.0, 200);
    }
    let leader = leader_index(&c, &[0, 1, 2]).await;
    let (_, me) = get_json(&c.nodes[leader].url("/v1/agent/self")).await;
    let purged: u64 = me["Stats"]["raft"]["purged_index"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(purged > 0, "the leader compacted its log: {me}");

    let n3 = c.add_node_with_cli_join(f);
    eventually("the new server has all the data", || async {
        (keys(&c.nodes[n3]).await.len() == 60).then_some(())
    })
    .await;
    assert_eq!(
        gone_index(&c.nodes[n3]).await,
        deleted,
        "the tombstone came with the snapshot: the deleted prefix keeps its index"
    );
    let (_, stats) = get_json(&c.nodes[n3].url("/v1/agent/self")).await;
    let snap: u64 = stats["Stats"]["raft"]["last_snapshot_index"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        snap > 0,
        "the new server was installed from a snapshot: {stats}"
    );
    eventually("four voters", || async {
        let (_, peers) = get_json(&c.nodes[0].url("/v1/status/peers")).await;
        (peers.as_array().unwrap().len() == 4).then_some(())
    })
    .await;

    // A server leaves gracefully: it exits and is no longer a voter.
    let leaving = (0..3).find(|i| *i != leader).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args([
            "leave",
            "--http-addr",
            &c.nodes[leaving].server.http.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(c.nodes[leaving].server.wait_exit().success());
    let leaving_rpc = c.nodes[leaving].rpc.clone();
    eventually("the leaver is gone from the peers", || async {
        let (_, peers) = get_json(&c.nodes[leader].url("/v1/status/peers")).await;
        let peers: Vec<&str> = peers
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        (peers.len() == 3 && !peers.contains(&leaving_rpc.as_str())).then_some(())
    })
    .await;

    // A killed server is removed by autopilot once the threshold passes (2 of 3 stay healthy).
    let victim = [0, 1, 2, n3]
        .into_iter()
        .find(|i| *i != leader && *i != leaving)
        .unwrap();
    c.nodes[victim].server.kill();
    let victim_rpc = c.nodes[victim].rpc.clone();
    let live = [0, 1, 2, n3]
        .into_iter()
        .find(|i| *i != victim && *i != leaving)
        .unwrap();
    eventually("autopilot removed the dead server", || async {
        let (_, config) = get_json(&c.nodes[live].url("/v1/operator/raft/configuration")).await;
        let servers = config["Servers"].as_array()?;
        (servers.len() == 2 && servers.iter().all(|s| s["Address"] != victim_rpc.as_str()))
            .then_some(())
    })
    .await;
    // Still writable with the two that remain.
    assert_eq!(
        kv(&c.nodes[live], "still/writable", "yes").await,
        (200, "true".into())
    );

    // The operator surface: members, list-peers, remove-peer.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let http_addr = c.nodes[live].server.http.to_string();
    // The killed server is failed in the gossip pool once suspicion runs out, the leaver left.
    eventually("members shows two alive servers", || async {
        let members = cli(&["members", "--http-addr", &http_addr]);
        let alive = members.lines().filter(|l| l.contains("alive")).count();
        (alive == 2 && members.contains("left") && members.contains("failed")).then_some(())
    })
    .await;
    let peers = cli(&["operator", "raft", "list-peers", "--http-addr", &http_addr]);
    assert_eq!(
        peers.lines().filter(|l| l.contains("leader")).count(),
        1,
        "{peers}"
    );
    let current_leader = leader_of(&c.nodes[live]).await;
    let other = [0, 1, 2, n3]
        .into_iter()
        .find(|i| *i != victim && *i != leaving && c.nodes[*i].rpc != current_leader)
        .unwrap();
    let other_rpc = c.nodes[other].rpc.clone();
    cli(&[
        "operator",
        "raft",
        "remove-peer",
        "--address",
        &other_rpc,
        "--http-addr",
        &http_addr,
    ]);
    let leader_node = [0, 1, 2, n3]
        .into_iter()
        .find(|i| c.nodes[*i].rpc == current_leader)
        .unwrap();
    let (_, config) = get_json(&c.nodes[leader_node].url("/v1/operator/raft/configuration")).await;
    let servers = config["Servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{config}");
    assert_eq!(servers[0]["Address"], current_leader.as_str());
    assert_eq!(
        kv(&c.nodes[leader_node], "alone/writable", "yes").await,
        (200, "true".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_save_and_restore_into_a_fresh_cluster_and_foreign_data_dirs_are_refused() {
    let _one = serial().await;
    let a = Cluster::start("");
    let f = follower(&a).await;
    for i in 0..10 {
        assert_eq!(
            kv(&a.nodes[f], &format!("saved/{i}"), &format!("v{i}"))
                .await
                .0,
            200
        );
    }
    let (st, _) = put(
        &a.nodes[f].url("/v1/agent/service/register"),
        json!({"Name": "db", "Address": "10.7.0.1", "Port": 5432}).to_string(),
    )
    .await;
    assert_eq!(st, 200);
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args([
            "snapshot",
            "save",
            file.path().to_str().unwrap(),
            "--http-addr",
            &a.nodes[f].server.http.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let b = Cluster::start("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_beacon"))
        .args([
            "snapshot",
            "restore",
            file.path().to_str().unwrap(),
            "--http-addr",
            &b.nodes[0].server.http.to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for n in &b.nodes {
        eventually(
            "every server of the new cluster has the restored data",
            || async { (raw(n, "saved/7").await.as_deref() == Some("v7")).then_some(()) },
        )
        .await;
        eventually("restored services resolve", || async {
            (a_records(&ask(n.server.dns, "db.service.consul.", RecordType::A).await)
                == ["10.7.0.1"])
            .then_some(())
        })
        .await;
    }
    // Cluster B has named itself by now (its leader does that as soon as it leads).
    for r in b.join_addrs() {
        eventually("cluster B is named", || async {
            let info = rpc_info(&r).await?;
            (!info.cluster_id.is_empty()).then_some(())
        })
        .await;
    }

    // A data dir of cluster A pointed at cluster B is refused with a clear error.
    let mut a_nodes = a.nodes;
    a_nodes[0].server.kill();
    let mut args = node_args(
        "intruder",
        &a_nodes[0].dir,
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_udp_port()),
        free_port(),
        &b.serf_addrs(),
        None,
        None,
    );
    args.retain(|a| !a.is_empty());
    let mut intruder = Server::spawn(&args, &a_nodes[0].dir);
    let status = intruder.wait_exit();
    assert!(!status.success());
    assert!(
        intruder.log_text().contains("belongs to cluster"),
        "{}",
        intruder.log_text()
    );
}

/// Creates a session with TTL 10s through `node`; returns its ID.
async fn create_ttl_session(node: &Node) -> String {
    let (st, created) = put(
        &node.url("/v1/session/create"),
        json!({"TTL": "10s", "LockDelay": "0s"}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{created}");
    serde_json::from_str::<serde_json::Value>(&created).unwrap()["ID"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Consul keeps session TTL timers on the leader: a renew through any server must reach them,
/// and an unrenewed session is invalidated at twice its TTL.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_renewed_only_through_a_follower_lives_and_expires_at_twice_its_ttl() {
    let _one = serial().await;
    let c = Cluster::start("");
    let f = &c.nodes[follower(&c).await];
    let sid = create_ttl_session(f).await;
    let info = |node: &Node| {
        let url = node.url(&format!("/v1/session/info/{sid}"));
        async move { get_json(&url).await.1 }
    };
    let renew_url = f.url(&format!("/v1/session/renew/{sid}"));

    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(40) {
        let (st, renewed) = put(&renew_url, "").await;
        assert_eq!(st, 200, "renew through a follower: {renewed}");
        assert!(renewed.contains(&sid), "{renewed}");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    for node in &c.nodes {
        assert_ne!(
            info(node).await,
            json!([]),
            "renewed every 3 s through a follower, the session is valid 40 s later"
        );
    }

    let (st, _) = put(&renew_url, "").await;
    let last_renew = std::time::Instant::now();
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_secs(19).saturating_sub(last_renew.elapsed())).await;
    assert_ne!(
        info(f).await,
        json!([]),
        "19 s after its last renew (TTL 10 s) the session is still there"
    );
    let deadline = Duration::from_secs(22).saturating_sub(last_renew.elapsed());
    eventually_within(deadline, "the session is invalidated at 2×TTL", || async {
        (info(f).await == json!([])).then_some(())
    })
    .await;
}

/// A leader paused (SIGSTOP) and replaced must not acknowledge a renew that its successor, who
/// now owns the session timers, never sees.
#[tokio::test(flavor = "multi_thread")]
async fn a_renew_sent_to_a_paused_and_replaced_leader_reaches_the_new_leader() {
    let _one = serial().await;
    let c = Cluster::start("");
    let old = leader_index(&c, &[0, 1, 2]).await;
    let sid = create_ttl_session(&c.nodes[old]).await;

    c.nodes[old].server.signal("-STOP");
    let renew_url = c.nodes[old].url(&format!("/v1/session/renew/{sid}"));
    let renew = tokio::spawn(async move { put(&renew_url, "").await });
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let new = leader_index(&c, &others).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.nodes[old].server.signal("-CONT");
    let (st, renewed) = renew.await.unwrap();
    let answered = std::time::Instant::now();
    assert_eq!(st, 200, "{renewed}");

    let info_url = c.nodes[new].url(&format!("/v1/session/info/{sid}"));
    tokio::time::sleep(Duration::from_secs(19).saturating_sub(answered.elapsed())).await;
    assert_ne!(
        get_json(&info_url).await.1,
        json!([]),
        "the renew acknowledged by the old leader restarted the new leader's timer"
    );
}

/// A write forwarded by a follower to a leader that is then paused gets its answer as soon as a
/// new leader is known, not at the forward's 10 s timeout: a 500 that says its outcome is
/// unknown (it may still commit under the new leader, so it is not sent again).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_forwarded_to_a_paused_leader_ends_once_a_new_leader_is_known() {
    let _one = serial().await;
    let c = Cluster::start("");
    let old = leader_index(&c, &[0, 1, 2]).await;
    let via = (old + 1) % 3;

    c.nodes[old].server.signal("-STOP");
    let (st, body) = kv(&c.nodes[via], "forwarded", "v").await;
    c.nodes[old].server.signal("-CONT");
    assert_eq!(st, 500, "{body}");
    assert!(
        body.contains("may or may not have been applied"),
        "the forward was not abandoned when the leader changed: {body}"
    );
    // The cluster writes again through the same follower.
    let (st, body) = kv(&c.nodes[via], "after", "v").await;
    assert_eq!((st, body.as_str()), (200, "true"));
}

/// A server SIGKILLed while it led restarts as a follower: it must not name itself leader
/// (`/v1/status/leader`) on the strength of its own old term. The other two are paused while it
/// restarts, so nothing could tell it about a newer term; before the fix it claimed leadership
/// from its first answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_restarted_after_crashing_as_leader_does_not_claim_leadership() {
    let _one = serial().await;
    let mut c = Cluster::start("");
    let old = leader_index(&c, &[0, 1, 2]).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let (st, _) = kv(&c.nodes[old], "before", "v").await;
    assert_eq!(st, 200);
    for &i in &others {
        c.nodes[i].server.signal("-STOP");
    }
    c.nodes[old].server.kill();
    c.nodes[old].server = Server::spawn(&c.nodes[old].args, &c.nodes[old].dir);
    // Ten election timeouts and more: a restored leader would answer with itself at once.
    let watched = std::time::Instant::now();
    let mut answers = 0;
    while watched.elapsed() < Duration::from_secs(3) {
        if let Ok(r) = http()
            .get(c.nodes[old].url("/v1/status/leader"))
            .send()
            .await
        {
            let named: String = r.json().await.unwrap();
            assert_eq!(named, "", "the restarted server names a leader alone");
            answers += 1;
        }
        if let Ok(r) = http()
            .get(c.nodes[old].url("/v1/kv/before?stale"))
            .send()
            .await
            && let Some(known) = r.headers().get("X-Consul-KnownLeader")
        {
            assert_eq!(known, "false");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(answers > 10, "the restarted server hardly answered");
    for &i in &others {
        c.nodes[i].server.signal("-CONT");
    }
    // Once the others are back, all three agree on one leader and the write survived.
    let leader = leader_index(&c, &[0, 1, 2]).await;
    eventually("all three name one leader", || async {
        let mut named = BTreeSet::new();
        for n in &c.nodes {
            named.insert(leader_of(n).await);
        }
        (named.len() == 1 && named.contains(&c.nodes[leader].rpc)).then_some(())
    })
    .await;
    eventually("the restarted server has the write", || async {
        raw(&c.nodes[old], "before").await.filter(|v| v == "v")
    })
    .await;
}

/// Garbage, an HTTP request, a frame that is not MessagePack and a caller of another cluster on a
/// server's RPC port: each loses its connection (logged with the peer's address) and nothing
/// else changes: the server keeps replicating and answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rpc_frames_close_their_connection_and_the_server_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    let _one = serial().await;
    let c = Cluster::start("");
    let f = follower(&c).await;
    let target = c.nodes[f].rpc.clone();
    let not_msgpack = {
        let mut frame = 4u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0xc1, 0xc1, 0xc1, 0xc1]);
        frame
    };
    let attempts: [&[u8]; 3] = [
        b"GET /rpc/info HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        &not_msgpack,
    ];
    for bytes in attempts {
        let mut stream = tokio::net::TcpStream::connect(&target).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        assert!(
            closed_by_peer(&mut stream, Duration::from_secs(10)).await,
            "the server kept a connection sending {bytes:?}"
        );
    }
    let foreign = beacon::transport::Pool::new(
        std::sync::Arc::new(|| "another-cluster".to_string()),
        beacon::transport::Limits::default(),
        None,
    );
    let refused = foreign
        .call(
            &target,
            beacon::raft::rpc::Method::Info as u16,
            beacon::raft::rpc::encode(&()).unwrap(),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("belongs to cluster"),
        "{refused}"
    );
    // A member's call whose body nests 100,000 maps: once a stack overflow that aborted the
    // server (fuzz/regressions/rpc_frames/nested-maps), now an undecodable request.
    let member = beacon::transport::Pool::new(
        std::sync::Arc::new(String::new),
        beacon::transport::Limits::default(),
        None,
    );
    let nested_maps = [[0x81, 0xa1, b'a'].repeat(100_000), vec![0xc0]].concat();
    let undecodable = member
        .call(
            &target,
            beacon::raft::rpc::Method::Append as u16,
            nested_maps.into(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(
        undecodable.to_string().contains("depth limit"),
        "{undecodable}"
    );

    // Still a working member: it takes a write and replicates it to the others.
    assert_eq!(
        kv(&c.nodes[f], "after/bad-frames", "v").await,
        (200, "true".into())
    );
    for n in &c.nodes {
        eventually("every server has the write", || async {
            (raw(n, "after/bad-frames").await.as_deref() == Some("v")).then_some(())
        })
        .await;
    }
    assert!(rpc_info(&target).await.is_some());
    let log = c.nodes[f].server.log_text();
    assert!(log.contains("closing RPC connection"), "{log}");
}

/// Bad peers on the server-RPC and gossip ports: a flood of 500 connections that never say
/// hello, a half-open connection (a frame's length, part of it, then silence), and 2,000
/// datagrams of random bytes to the gossip port. The server closes the silent connections after
/// its handshake timeout, ignores the garbage, and stays a working member throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_half_open_connections_and_gossip_garbage_leave_the_server_serving() {
    use tokio::io::AsyncWriteExt;
    let _one = serial().await;
    let c = Cluster::start("");
    let f = follower(&c).await;
    let rpc = c.nodes[f].rpc.clone();

    let mut silent = Vec::new();
    // 500: well inside the default limit of 1,024 open files of this process and the server.
    for _ in 0..500 {
        silent.push(tokio::net::TcpStream::connect(&rpc).await.unwrap());
    }
    let mut half_open = tokio::net::TcpStream::connect(&rpc).await.unwrap();
    half_open.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    silent.push(half_open);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for _ in 0..2000 {
        let len = rand::random_range(1..1400);
        let garbage: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        udp.send_to(&garbage, &c.nodes[f].serf).await.unwrap();
    }

    // Meanwhile a write through that server commits and reaches every server.
    assert_eq!(
        kv(&c.nodes[f], "after/flood", "v").await,
        (200, "true".into())
    );
    for n in &c.nodes {
        eventually("every server has the write", || async {
            (raw(n, "after/flood").await.as_deref() == Some("v")).then_some(())
        })
        .await;
    }
    // The silent connections are closed by the server, not left to pile up.
    for mut stream in silent {
        assert!(
            closed_by_peer(&mut stream, DEADLINE).await,
            "a connection that never said hello stayed open"
        );
    }
    // Gossip still sees every member alive, and the server answers RPC.
    eventually("three alive members", || async {
        let (st, v) = get_json(&c.nodes[f].url("/v1/agent/members")).await;
        let alive = v.as_array()?.iter().filter(|m| m["Status"] == 1).count();
        (st == 200 && alive == 3).then_some(())
    })
    .await;
    assert!(rpc_info(&rpc).await.is_some());
    assert_eq!(
        kv(&c.nodes[f], "after/garbage", "v").await,
        (200, "true".into())
    );
}

/// Whether the other end closes `stream` (end of stream or an error) within `within`; what it
/// sends meanwhile is read and dropped.
async fn closed_by_peer(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        while let Ok(n) = stream.read(&mut buf).await
            && n > 0
        {}
    })
    .await
    .is_ok()
}

/// What the server at `rpc_addr` says about itself over server RPC (as a server would ask it).
async fn rpc_info(rpc_addr: &str) -> Option<beacon::raft::ServerInfo> {
    use beacon::raft::rpc::{Method, decode, encode};
    let pool = beacon::transport::Pool::new(
        std::sync::Arc::new(String::new),
        beacon::transport::Limits::default(),
        None,
    );
    let reply = pool
        .call(
            rpc_addr,
            Method::Info as u16,
            encode(&()).ok()?,
            Duration::from_secs(2),
        )
        .await
        .ok()?;
    decode(&reply).ok()
}
